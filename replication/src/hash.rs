//! The cluster's one stable 64-bit hash.
//!
//! Every node must compute the *same* number for the same bytes — on every platform, in every process,
//! under every Rust version — because placement (which nodes hold a key), partitioning and membership
//! digests are decided independently on each node and compared. `std`'s `DefaultHasher` and
//! `RandomState` promise none of that (they are seeded per process and their algorithm may change), so
//! this module defines its own, small enough to re-implement in any language from this description:
//!
//! 1. **FNV-1a, 64-bit**, over the input bytes: `h = 0xcbf29ce484222325`; for each byte `b`:
//!    `h = (h XOR b) * 0x00000100000001b3 (mod 2^64)`.
//! 2. **The splitmix64 finaliser** over `h`:
//!    `z = (h XOR (h >> 30)) * 0xbf58476d1ce4e5b9; z = (z XOR (z >> 27)) * 0x94d049bb133111eb;
//!    z XOR (z >> 31)`.
//!
//! FNV-1a alone is cheap and byte-streamable but mixes poorly (its low output bits depend only on the
//! low bits of the input bytes); the finaliser is a bijection with full avalanche, so every input bit
//! affects every output bit with probability about one half, which is what rendezvous scoring needs.
//!
//! Multi-part inputs are hashed as the plain concatenation of their bytes; integers are written
//! big-endian ([`StableHasher::write_u64`]). Callers that hash several variable-length fields write a
//! length before each so that field boundaries are unambiguous.
//!
//! Not a cryptographic hash and not keyed: it offers no resistance to inputs chosen to collide.
//! Golden vectors in the tests pin the outputs; changing them changes where every key lives.

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable hash of `bytes`: FNV-1a 64 followed by the splitmix64 finaliser (see the module docs).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hasher = StableHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// The stable hash of a list of numbers, in order (each fed as 8 big-endian bytes): a digest of
/// per-partition values that two nodes compare without sending them.
pub fn stable_hash_u64s(values: &[u64]) -> u64 {
    let mut hasher = StableHasher::new();
    for value in values {
        hasher.write_u64(*value);
    }
    hasher.finish()
}

/// The splitmix64 finaliser: a bijection on `u64` with full avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A streaming [`stable_hash`]: feeding parts one after another gives the hash of their concatenation.
///
/// Deliberately does not implement [`std::hash::Hasher`]: that trait's integer methods default to
/// native-endian bytes and `#[derive(Hash)]` writes platform-sized lengths, either of which would make
/// the output platform-dependent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StableHasher {
    state: u64,
}

impl Default for StableHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl StableHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        StableHasher { state: FNV_OFFSET }
    }

    /// Feeds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state = (self.state ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
    }

    /// Feeds `value` as 8 big-endian bytes.
    pub fn write_u64(&mut self, value: u64) {
        self.write(&value.to_be_bytes());
    }

    /// Feeds `bytes` preceded by their length (as [`StableHasher::write_u64`]), so that consecutive
    /// variable-length fields cannot be confused with a different split of the same bytes.
    pub fn write_field(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        self.write(bytes);
    }

    /// The hash of everything fed so far (the hasher can keep being fed afterwards).
    pub fn finish(&self) -> u64 {
        mix64(self.state)
    }

    /// The raw FNV-1a state, before the finaliser (for the reference-vector tests).
    #[cfg(test)]
    fn fnv(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fnv1a(bytes: &[u8]) -> u64 {
        let mut h = StableHasher::new();
        h.write(bytes);
        h.fnv()
    }

    /// Published FNV-1a 64 test vectors (from the FNV reference test suite), so the first stage is the
    /// real FNV-1a and not a look-alike.
    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// splitmix64 seeded with 0 first outputs `mix64(0x9e3779b97f4a7c15)` = 0xe220a8397b1dcdaf, the
    /// published first value of the generator.
    #[test]
    fn finaliser_matches_splitmix64() {
        assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix64(0), 0);
    }

    /// Golden vectors: these pin where every key of every cluster lives. Never change them.
    #[test]
    fn stable_hash_golden_vectors() {
        let got: Vec<u64> = [&b""[..], b"a", b"foobar", b"shop/visits", &[0u8; 8], &[0xff; 3]]
            .iter()
            .map(|input| stable_hash(input))
            .collect();
        assert_eq!(got, GOLDEN, "{}", got.iter().map(|h| format!("{h:#018x}")).collect::<Vec<_>>().join(", "));
    }

    const GOLDEN: [u64; 6] = [
        0xf52a_15e9_a9b5_e89b,
        0x02c0_bdbf_4814_20f8,
        0x404d_a9e3_b740_78c2,
        0x5e42_4bdf_2d46_efd6,
        0x813f_0174_a236_7c13,
        0x3899_e489_d898_6d44,
    ];

    #[test]
    fn streaming_equals_concatenation() {
        let mut h = StableHasher::new();
        h.write(b"shop/");
        h.write(b"");
        h.write(b"visits");
        assert_eq!(h.finish(), stable_hash(b"shop/visits"));
        let mut n = StableHasher::new();
        n.write_u64(0x0102_0304_0506_0708);
        assert_eq!(n.finish(), stable_hash(&[1, 2, 3, 4, 5, 6, 7, 8]));
    }

    #[test]
    fn fields_are_length_prefixed() {
        let mut ab_c = StableHasher::new();
        ab_c.write_field(b"ab");
        ab_c.write_field(b"c");
        let mut a_bc = StableHasher::new();
        a_bc.write_field(b"a");
        a_bc.write_field(b"bc");
        assert_ne!(ab_c.finish(), a_bc.finish());
    }
}
