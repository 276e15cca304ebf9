//! The partition index ([`Space::PartitionIndex`](super::Space::PartitionIndex)): every `Data` key
//! again, keyed `[partition: u16 BE][key hash: u64 BE][data key]` with an empty value, so that one
//! partition's keys sit together in the order of the anti-entropy range tree (by
//! [`key_hash`], then by key). [`super::Batch`]
//! writes an entry beside every `Data` put, merge and delete, in the same batch, so the index holds
//! exactly the keys of `Data` whichever code path wrote them; the one exception is
//! `Batch::put_present`, an overwrite of a key read from `Data` under its lock, whose
//! entry is there already. The digest fallback reads a partition,
//! or one hash range of it, through it instead of scanning every key of the node.
//!
//! The partition function lives here because the index is keyed by it; `crate::layout` re-exports
//! it for everyone else.

use meridian_replication::antientropy::key_hash;
use meridian_replication::hash::stable_hash;

/// Number of partitions the keyspace is cut into (fixed; see `docs/design/replication.md`).
pub const PARTITIONS: u16 = 256;

/// The partition of a data key.
pub fn partition_of(data_key: &[u8]) -> u16 {
    (stable_hash(data_key) % u64::from(PARTITIONS)) as u16
}

/// The index entry of a data key.
pub fn entry_key(data_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + data_key.len());
    out.extend_from_slice(&partition_of(data_key).to_be_bytes());
    out.extend_from_slice(&key_hash(data_key).to_be_bytes());
    out.extend_from_slice(data_key);
    out
}

/// The first index key of the hashes `lo..` in `partition`.
pub fn range_start(partition: u16, lo: u64) -> [u8; 10] {
    let mut out = [0u8; 10];
    out[..2].copy_from_slice(&partition.to_be_bytes());
    out[2..].copy_from_slice(&lo.to_be_bytes());
    out
}

/// The end (exclusive) of the index keys of the hashes `..=hi` in `partition` (`None`: the end of
/// the index).
pub fn range_end(partition: u16, hi: u64) -> Option<Vec<u8>> {
    match hi.checked_add(1) {
        Some(next) => Some(range_start(partition, next).to_vec()),
        None => partition.checked_add(1).map(|next| next.to_be_bytes().to_vec()),
    }
}

/// The key hash and the data key of an index entry ([`entry_key`]).
pub fn parse_entry_key(index_key: &[u8]) -> Option<(u64, &[u8])> {
    let hash = u64::from_be_bytes(index_key.get(2..10)?.try_into().ok()?);
    Some((hash, &index_key[10..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_sort_by_partition_then_hash_then_key_and_ranges_bound_them() {
        let keys: Vec<Vec<u8>> = (0..2000u32).map(|i| format!("\x02ns/k{i}").into_bytes()).collect();
        let mut entries: Vec<Vec<u8>> = keys.iter().map(|k| entry_key(k)).collect();
        entries.sort();
        let order: Vec<(u16, u64, &[u8])> = entries
            .iter()
            .map(|e| {
                let (hash, key) = parse_entry_key(e).unwrap();
                (partition_of(key), hash, key)
            })
            .collect();
        let mut expected = order.clone();
        expected.sort();
        assert_eq!(order, expected, "bytewise order is (partition, hash, key) order");
        for key in &keys {
            let (p, h) = (partition_of(key), key_hash(key));
            let entry = entry_key(key);
            assert!(entry.as_slice() >= range_start(p, h).as_slice());
            assert!(range_end(p, h).is_none_or(|end| entry < end));
            assert!(range_end(p, h.wrapping_sub(1)).is_none_or(|end| entry >= end) || h == 0);
            assert!(entry < range_start(p + 1, 0).to_vec());
        }
        assert_eq!(range_end(3, u64::MAX), Some(vec![0, 4]));
        assert_eq!(range_end(u16::MAX, u64::MAX), None);
        assert_eq!(parse_entry_key(b"short"), None);
    }
}
