//! How Meridian's records are laid out in the storage engine's spaces, and their versioned formats.
//!
//! | space | key | value |
//! |---|---|---|
//! | `Data` | `[ns len: u8][ns][name]` | [`StoredEntry`]: the key's merged CRDT state |
//! | `Log` | `[origin: u64 BE][seq: u64 BE]` | [`LogRecord`]: the delta one write produced, with its dot |
//! | `Meta` | `node_id` | this node's id, `u64 BE` |
//! | `Meta` | `vv/[origin: u64 BE]` | highest log seq of `origin` stored here, `u64 BE` (max-merged) |
//! | `Idempotency` | `[id: u128 BE]` | [`IdempotencyRecord`]: the reply the first attempt got |
//!
//! Data keys sort by namespace then name, so listing a namespace by prefix is one range scan. Log keys
//! sort by origin then sequence, so "everything from origin X after seq N" — what anti-entropy ships —
//! is one range scan too. Every value is a versioned enum encoded by the one codec module.

use meridian_client::proto::{Key, Reply};
use meridian_crdt::{codec, Entry, Hlc, NodeId};
use serde::{Deserialize, Serialize};

/// Largest stored record we will decode (guards against a corrupt length inside a record).
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// The data key of `key`.
pub fn data_key(key: &Key) -> Vec<u8> {
    let mut out = namespace_prefix(&key.namespace);
    out.extend_from_slice(key.name.as_bytes());
    out
}

/// The prefix shared by every data key of `namespace`.
pub fn namespace_prefix(namespace: &str) -> Vec<u8> {
    let len = u8::try_from(namespace.len()).expect("namespaces are validated to at most 128 bytes");
    let mut out = Vec::with_capacity(1 + namespace.len());
    out.push(len);
    out.extend_from_slice(namespace.as_bytes());
    out
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The log key of write `seq` by `origin`.
pub fn log_key(origin: NodeId, seq: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&origin.0.to_be_bytes());
    out[8..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// Splits a log key.
pub fn parse_log_key(bytes: &[u8]) -> Option<(NodeId, u64)> {
    let bytes: &[u8; 16] = bytes.try_into().ok()?;
    let origin = u64::from_be_bytes(bytes[..8].try_into().ok()?);
    let seq = u64::from_be_bytes(bytes[8..].try_into().ok()?);
    Some((NodeId(origin), seq))
}

/// Meta key of this node's id.
pub const META_NODE_ID: &[u8] = b"node_id";

/// Meta key of `origin`'s version-vector entry.
pub fn vv_key(origin: NodeId) -> Vec<u8> {
    let mut out = b"vv/".to_vec();
    out.extend_from_slice(&origin.0.to_be_bytes());
    out
}

/// Meta prefix of all version-vector entries.
pub const VV_PREFIX: &[u8] = b"vv/";

/// A key's state as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StoredEntry {
    /// Version 1.
    V1(Entry),
}

/// One write in the delta log: enough for a peer to apply it without the rest of the key's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    /// Version 1.
    V1 {
        /// The key written.
        key: Key,
        /// The delta (join it into the key's state).
        delta: Entry,
        /// The coordinator's HLC timestamp for the write.
        ts: Hlc,
    },
}

/// What a write with an idempotency id got, kept so that a retry gets the same answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum IdempotencyRecord {
    /// Version 1.
    V1 {
        /// When the first attempt was applied (ms since the Unix epoch).
        created_ms: u64,
        /// The key it wrote (a retry naming another key is refused).
        key: Key,
        /// Fingerprint of the operation (a retry of another operation is refused).
        request_digest: u64,
        /// The reply of the first attempt.
        reply: Reply,
    },
}

/// Encodes a record.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    codec::encode(record)
}

/// Decodes a stored record; failure means corruption.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, codec::CodecError> {
    codec::decode(bytes, MAX_RECORD_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_scans_do_not_leak_into_longer_namespaces() {
        let a = data_key(&Key::new("ab", "c").unwrap());
        let b = data_key(&Key::new("abc", "").unwrap_or(Key { namespace: "abc".into(), name: String::new() }));
        let prefix = namespace_prefix("ab");
        assert!(a.starts_with(&prefix));
        assert!(!b.starts_with(&prefix));
    }

    #[test]
    fn prefix_end_bounds_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
    }

    #[test]
    fn log_keys_round_trip_and_sort_by_origin_then_seq() {
        assert_eq!(parse_log_key(&log_key(NodeId(3), 9)), Some((NodeId(3), 9)));
        assert!(log_key(NodeId(1), 300) < log_key(NodeId(2), 1));
        assert!(log_key(NodeId(1), 2) < log_key(NodeId(1), 256));
    }
}
