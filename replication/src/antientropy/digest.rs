//! Range digests for the fallback path: which keys fall in which range, and what a range hashes to.
//!
//! # Ranges
//!
//! A partition's keys are cut by their *key hash* ([`key_hash`]), not by their bytes: keys cluster
//! under a few namespace prefixes, hashes do not, so halving a range in hash space halves its keys
//! whatever the key names look like. A [`HashRange`] is a prefix of the 64-bit key hash — `bits` high
//! bits equal to `index` — so ranges form a complete `2^split_bits`-ary tree whose root
//! ([`HashRange::ROOT`], `bits = 0`) is the whole partition.
//!
//! # Digests
//!
//! A key's *entry hash* is [`entry_hash`]`(key, state)`, and a range's digest is the wrapping sum
//! (mod 2^64) of the entry hashes of its keys, with the number of keys beside it ([`RangeDigest`]).
//! A sum rather than a hash of the sorted list, for two reasons:
//!
//! * a store can maintain digests incrementally — on every write, subtract the key's old entry hash
//!   from its bucket and add the new one — and compose any prefix range from finer buckets, instead
//!   of rescanning the partition for every comparison;
//! * a parent's digest is the sum of its children's, so a peer that already knows the parent need
//!   only be sent `fanout - 1` children; the last is inferred ([`infer_last_child`]). That saves a
//!   quarter of the digest bytes at the default fanout of 4.
//!
//! Both hashes are [`crate::hash::StableHasher`] (the cluster's one stable hash) over
//! length-prefixed fields behind a domain tag, so they differ from the partition hash of the same key
//! and are identical on every node, platform and build.
//!
//! Two ranges with equal digests are taken to hold equal states. A false match needs a 64-bit sum
//! collision between honestly produced entry hashes (probability about 2^-64 per comparison); the
//! hash is not keyed, so inputs *crafted* to collide are not resisted. State bytes should be a
//! canonical encoding (equal states, equal bytes) — a non-canonical one costs bytes shipped, never
//! correctness, because a differing range is fetched and joined, and a join is always safe.

use serde::{Deserialize, Serialize};

use crate::hash::StableHasher;

/// Domain tag of [`key_hash`].
const KEY_TAG: &[u8] = b"meridian/antientropy/key";
/// Domain tag of [`entry_hash`].
const ENTRY_TAG: &[u8] = b"meridian/antientropy/entry";

/// Where a key sits in its partition's range tree: the stable hash of `("meridian/antientropy/key",
/// key)`, both fields length-prefixed.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = StableHasher::new();
    h.write_field(KEY_TAG);
    h.write_field(key);
    h.finish()
}

/// A key's contribution to its range's digest: the stable hash of `("meridian/antientropy/entry",
/// key, state)`, each field length-prefixed.
pub fn entry_hash(key: &[u8], state: &[u8]) -> u64 {
    let mut h = StableHasher::new();
    h.write_field(ENTRY_TAG);
    h.write_field(key);
    h.write_field(state);
    h.finish()
}

/// A range of a partition's key-hash space: the keys whose [`key_hash`] has `index` as its top
/// `bits` bits. Wire layout: `bits` (one byte) then `index` (varint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HashRange {
    bits: u8,
    index: u64,
}

impl HashRange {
    /// The whole partition.
    pub const ROOT: HashRange = HashRange { bits: 0, index: 0 };

    /// The range of hashes whose top `bits` bits are `index`; `None` if `bits > 64` or `index` does
    /// not fit in `bits` bits.
    pub fn new(bits: u8, index: u64) -> Option<HashRange> {
        let range = HashRange { bits, index };
        range.is_valid().then_some(range)
    }

    /// Whether the fields describe a range (always true for ranges built here; a peer's may not be).
    pub fn is_valid(&self) -> bool {
        self.bits <= 64 && (self.bits == 64 || self.index >> self.bits == 0)
    }

    /// How many high bits of the hash this range fixes (its depth in a binary tree).
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// The value of those bits.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The lowest hash in the range.
    pub fn lo(&self) -> u64 {
        self.index.checked_shl(64 - u32::from(self.bits)).unwrap_or(0)
    }

    /// The highest hash in the range (inclusive).
    pub fn hi(&self) -> u64 {
        self.lo() | u64::MAX.checked_shr(u32::from(self.bits)).unwrap_or(0)
    }

    /// Whether a key with hash `hash` is in the range.
    pub fn contains_hash(&self, hash: u64) -> bool {
        hash.checked_shr(64 - u32::from(self.bits)).unwrap_or(0) == self.index
    }

    /// Whether `key` is in the range.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.contains_hash(key_hash(key))
    }

    /// The `2^split_bits` children, in hash order; empty if they would be deeper than 64 bits.
    pub fn children(&self, split_bits: u8) -> impl Iterator<Item = HashRange> + '_ {
        let bits = self.bits.checked_add(split_bits).filter(|b| *b <= 64 && split_bits < 64);
        let count = bits.map_or(0, |_| 1u64 << split_bits);
        let base = self.index.checked_shl(u32::from(split_bits)).unwrap_or(0);
        (0..count).map(move |i| HashRange { bits: bits.unwrap_or(0), index: base | i })
    }
}

/// What a store reports for a range: the digest the peers compare and the key count the requester
/// uses to decide between splitting a differing range and fetching it whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeDigest {
    /// Wrapping sum of [`entry_hash`] over the range's keys (0 for an empty range).
    pub digest: u64,
    /// Number of keys in the range.
    pub count: u64,
}

impl RangeDigest {
    /// Adds one key with its (canonically encoded) state.
    pub fn add(&mut self, key: &[u8], state: &[u8]) {
        self.add_entry_hash(entry_hash(key, state));
    }

    /// Adds a precomputed [`entry_hash`] (for stores that keep them).
    pub fn add_entry_hash(&mut self, hash: u64) {
        self.digest = self.digest.wrapping_add(hash);
        self.count += 1;
    }

    /// Removes a key's previous entry hash (incremental maintenance on overwrite).
    pub fn remove_entry_hash(&mut self, hash: u64) {
        self.digest = self.digest.wrapping_sub(hash);
        self.count = self.count.saturating_sub(1);
    }

    /// Folds in a disjoint range (a parent's digest is the sum of its children's).
    pub fn merge(&mut self, other: &RangeDigest) {
        self.digest = self.digest.wrapping_add(other.digest);
        self.count += other.count;
    }
}

/// The digest of a parent's last child, from the parent's digest and its other children's.
pub fn infer_last_child(parent: u64, others: impl IntoIterator<Item = u64>) -> u64 {
    others.into_iter().fold(parent, u64::wrapping_sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_hash_space() {
        assert!(HashRange::ROOT.contains_hash(0) && HashRange::ROOT.contains_hash(u64::MAX));
        assert_eq!((HashRange::ROOT.lo(), HashRange::ROOT.hi()), (0, u64::MAX));
        let kids: Vec<_> = HashRange::ROOT.children(2).collect();
        assert_eq!(kids.len(), 4);
        assert_eq!((kids[1].lo(), kids[1].hi()), (1 << 62, (1 << 63) - 1));
        for h in [0u64, 1 << 62, u64::MAX, 0x8000_0000_0000_0000, 12345] {
            assert_eq!(kids.iter().filter(|k| k.contains_hash(h)).count(), 1, "{h:#x}");
        }
        let leaf = HashRange::new(64, u64::MAX).unwrap();
        assert!(leaf.contains_hash(u64::MAX) && !leaf.contains_hash(u64::MAX - 1));
        assert_eq!((leaf.lo(), leaf.hi()), (u64::MAX, u64::MAX));
        assert_eq!(leaf.children(1).count(), 0);
        assert!(HashRange::new(2, 4).is_none() && HashRange::new(65, 0).is_none());
        assert!(!HashRange { bits: 3, index: 8 }.is_valid() && !HashRange { bits: 70, index: 0 }.is_valid());
    }

    #[test]
    fn digests_are_order_free_and_composable() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            (0..50u32).map(|i| (format!("k{i}").into_bytes(), vec![i as u8; i as usize % 7])).collect();
        let mut forward = RangeDigest::default();
        entries.iter().for_each(|(k, s)| forward.add(k, s));
        let mut backward = RangeDigest::default();
        entries.iter().rev().for_each(|(k, s)| backward.add(k, s));
        assert_eq!(forward, backward);
        // Children sum to the parent; the last child is inferable.
        let kids: Vec<_> = HashRange::ROOT.children(2).collect();
        let per_kid: Vec<RangeDigest> = kids
            .iter()
            .map(|r| {
                let mut d = RangeDigest::default();
                entries.iter().filter(|(k, _)| r.contains_key(k)).for_each(|(k, s)| d.add(k, s));
                d
            })
            .collect();
        let mut sum = RangeDigest::default();
        per_kid.iter().for_each(|d| sum.merge(d));
        assert_eq!(sum, forward);
        assert_eq!(infer_last_child(forward.digest, per_kid[..3].iter().map(|d| d.digest)), per_kid[3].digest);
        // A changed state changes the digest; removing then re-adding restores it.
        let mut changed = forward;
        changed.remove_entry_hash(entry_hash(&entries[0].0, &entries[0].1));
        changed.add(&entries[0].0, b"other");
        assert_ne!(changed.digest, forward.digest);
        assert_eq!(changed.count, forward.count);
    }

    #[test]
    fn fields_are_separated_and_domains_differ() {
        assert_ne!(entry_hash(b"ab", b"c"), entry_hash(b"a", b"bc"));
        assert_ne!(key_hash(b"k"), crate::hash::stable_hash(b"k"));
        assert_ne!(key_hash(b"k"), entry_hash(b"k", b""));
    }
}
