//! Bearer tokens: their string form, and how a node checks one without storing its secret.
//!
//! A token is `mrd_<id>_<secret>`: `id` is 16 hex digits (8 random bytes) that name the token in
//! listings, revocations and the audit log; `secret` is 32 random bytes in unpadded URL-safe base64.
//! Nodes keep only the SHA-256 of the secret. A fast hash is enough here (no bcrypt/argon2): the
//! secret is 256 random bits, not a password a person chose, so there is no dictionary to try.
//! Comparison is constant-time so timing reveals nothing about how much of a guess matched.

use base64::Engine as _;
use meridian_client::proto::auth::{MAX_TOKEN_STRING_BYTES, TOKEN_PREFIX};
use subtle::ConstantTimeEq as _;

/// A freshly made token: its id, the hash to store, and the string to hand out once.
pub struct NewToken {
    /// The public id.
    pub id: String,
    /// SHA-256 of the secret: what the cluster stores.
    pub secret_sha256: [u8; 32],
    /// `mrd_<id>_<secret>`: shown to the operator once, never stored.
    pub string: String,
}

/// Makes a new token from the operating system's random source.
pub fn generate() -> NewToken {
    let id_bytes: [u8; 8] = rand::random();
    let secret: [u8; 32] = rand::random();
    let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    NewToken { secret_sha256: hash(&secret), string: format!("{TOKEN_PREFIX}{id}_{secret}"), id }
}

/// Splits a token string into its id and secret; the error says what is wrong with its shape
/// (never echoing the secret).
pub fn parse(token: &str) -> Result<(&str, &str), &'static str> {
    if token.len() > MAX_TOKEN_STRING_BYTES {
        return Err("the token is longer than any token this node issues");
    }
    let rest = token.strip_prefix(TOKEN_PREFIX).ok_or("a token starts with mrd_")?;
    let (id, secret) = rest.split_once('_').ok_or("a token is mrd_<id>_<secret>")?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a token id is 16 hex digits");
    }
    if secret.is_empty() {
        return Err("the token has no secret");
    }
    Ok((id, secret))
}

/// SHA-256 of a token's secret.
pub fn hash(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Whether `secret` hashes to `stored`, in time independent of where they differ.
pub fn matches(secret: &str, stored: &[u8; 32]) -> bool {
    bool::from(hash(secret).ct_eq(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_match_only_their_own_hash() {
        let a = generate();
        let b = generate();
        assert_ne!(a.string, b.string);
        let (id, secret) = parse(&a.string).unwrap();
        assert_eq!(id, a.id);
        assert!(matches(secret, &a.secret_sha256));
        assert!(!matches(secret, &b.secret_sha256));
        assert!(!a.string.contains(&format!("{:?}", a.secret_sha256)));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in ["", "abc", "mrd_", "mrd_xyz_secret", "mrd_0123456789abcdef_", &"x".repeat(300)] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse("mrd_0123456789abcdef_s3cret").is_ok());
    }
}
