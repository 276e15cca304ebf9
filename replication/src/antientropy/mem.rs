//! [`MemStore`]: an in-memory [`SyncStore`] over a toy lattice, for tests and as a reference
//! implementation of the trait's contract.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use meridian_crdt::codec::{self, CodecError};
use meridian_crdt::{NodeId, VersionVector};

use super::digest::{key_hash, HashRange, RangeDigest};
use super::{KeyPage, KeyState, LogPosition, LogRecord, PartitionId, SyncStore};

/// Largest encoded set the store decodes.
const MAX_SET_BYTES: usize = 16 << 20;

/// What [`MemStore`] refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemStoreError {
    /// A delta or state that does not decode as a set.
    #[error("undecodable set: {0}")]
    Malformed(#[from] CodecError),
    /// A record that does not extend the vector (the session must never pass one).
    #[error("record {seq} of origin {origin} does not follow {have}")]
    Gap {
        /// The origin.
        origin: NodeId,
        /// What the vector holds.
        have: u64,
        /// The record's seq.
        seq: u64,
    },
}

/// One replica's storage of every partition it holds, in memory.
///
/// A key's state is a `BTreeSet<u64>` (join = union), encoded with the codec module — canonical,
/// because the set is ordered. A write's delta is the set of elements it adds. The log keeps every
/// record from the floor up, and can be truncated per origin ([`MemStore::truncate_log`]).
#[derive(Clone, Debug)]
pub struct MemStore {
    node: NodeId,
    partitions: BTreeMap<PartitionId, Partition>,
}

#[derive(Clone, Debug, Default)]
struct Partition {
    vv: VersionVector,
    floors: BTreeMap<NodeId, u64>,
    log: BTreeMap<(NodeId, u64), LogRecord>,
    /// Keyed by (key hash, key): the order ranges are scanned in.
    data: BTreeMap<(u64, Vec<u8>), BTreeSet<u64>>,
    safe_hlc: u64,
}

impl Partition {
    fn floor(&self, origin: NodeId) -> u64 {
        self.floors.get(&origin).copied().unwrap_or(1)
    }

    fn join(&mut self, key: &[u8], elements: &BTreeSet<u64>) {
        self.data.entry((key_hash(key), key.to_vec())).or_default().extend(elements);
    }

    /// The keys of `range` in (key hash, key) order, strictly after `after` if given.
    fn range(&self, range: HashRange, after: Option<&[u8]>) -> impl Iterator<Item = (&(u64, Vec<u8>), &BTreeSet<u64>)> {
        let start = match after {
            Some(key) if key_hash(key) >= range.lo() => Bound::Excluded((key_hash(key), key.to_vec())),
            _ => Bound::Included((range.lo(), Vec::new())),
        };
        self.data.range((start, Bound::Unbounded)).take_while(move |((h, _), _)| *h <= range.hi())
    }
}

/// Encodes a set as the store keeps and ships it.
pub fn encode_set(set: &BTreeSet<u64>) -> Vec<u8> {
    codec::encode(set)
}

/// Decodes a set written by [`encode_set`].
pub fn decode_set(bytes: &[u8]) -> Result<BTreeSet<u64>, CodecError> {
    codec::decode(bytes, MAX_SET_BYTES)
}

impl MemStore {
    /// An empty store for replica `node`.
    pub fn new(node: NodeId) -> Self {
        MemStore { node, partitions: BTreeMap::new() }
    }

    /// The replica.
    pub fn node(&self) -> NodeId {
        self.node
    }

    fn part(&mut self, partition: PartitionId) -> &mut Partition {
        self.partitions.entry(partition).or_default()
    }

    /// A local write: adds `elements` to `key` as this replica's next log record in `partition`,
    /// with HLC `hlc` (which also becomes the partition's safe time: writes here are synchronous).
    pub fn write(&mut self, partition: PartitionId, key: &[u8], elements: &BTreeSet<u64>, hlc: u64) -> LogPosition {
        let node = self.node;
        let part = self.part(partition);
        let seq = part.vv.get(node) + 1;
        let record = LogRecord { origin: node, seq, key: key.to_vec(), delta: encode_set(elements), hlc };
        part.log.insert((node, seq), record);
        part.join(key, elements);
        part.vv.observe(node, seq);
        part.safe_hlc = part.safe_hlc.max(hlc);
        LogPosition { partition, origin: node, seq }
    }

    /// Writes `elements` into `key` without a log record or a vector change (to build a large
    /// partition quickly in tests, as if by an earlier fallback).
    pub fn seed_state(&mut self, partition: PartitionId, key: &[u8], elements: &BTreeSet<u64>) {
        self.part(partition).join(key, elements);
    }

    /// Raises the safe time of `partition` (time passes with no write in flight).
    pub fn set_safe_hlc(&mut self, partition: PartitionId, hlc: u64) {
        let part = self.part(partition);
        part.safe_hlc = part.safe_hlc.max(hlc);
    }

    /// Drops the records of `origin` below `below_seq` (never above what the vector holds).
    pub fn truncate_log(&mut self, partition: PartitionId, origin: NodeId, below_seq: u64) {
        let part = self.part(partition);
        let floor = below_seq.min(part.vv.get(origin) + 1).max(part.floor(origin));
        part.floors.insert(origin, floor);
        part.log.retain(|(o, seq), _| *o != origin || *seq >= floor);
    }

    /// The state of `key` in `partition`.
    pub fn get(&self, partition: PartitionId, key: &[u8]) -> Option<&BTreeSet<u64>> {
        self.partitions.get(&partition)?.data.get(&(key_hash(key), key.to_vec()))
    }

    /// Every key of `partition` with its state, by key.
    pub fn snapshot(&self, partition: PartitionId) -> BTreeMap<Vec<u8>, BTreeSet<u64>> {
        let Some(part) = self.partitions.get(&partition) else { return BTreeMap::new() };
        part.data.iter().map(|((_, k), v)| (k.clone(), v.clone())).collect()
    }

    /// The partitions this store has seen.
    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.partitions.keys().copied()
    }

    /// Log records held for `partition`.
    pub fn log_len(&self, partition: PartitionId) -> usize {
        self.partitions.get(&partition).map_or(0, |p| p.log.len())
    }
}

impl SyncStore for MemStore {
    type Error = MemStoreError;

    fn partition_vv(&self, partition: PartitionId) -> Result<VersionVector, MemStoreError> {
        Ok(self.partitions.get(&partition).map(|p| p.vv.clone()).unwrap_or_default())
    }

    fn safe_hlc(&self, partition: PartitionId) -> Result<u64, MemStoreError> {
        Ok(self.partitions.get(&partition).map_or(0, |p| p.safe_hlc))
    }

    fn log_floor(&self, partition: PartitionId, origin: NodeId) -> Result<u64, MemStoreError> {
        Ok(self.partitions.get(&partition).map_or(1, |p| p.floor(origin)))
    }

    fn read_log(
        &self,
        partition: PartitionId,
        origin: NodeId,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, MemStoreError> {
        let Some(part) = self.partitions.get(&partition) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let mut bytes = 0;
        let range = (origin, after_seq.saturating_add(1))..=(origin, u64::MAX);
        for record in part.log.range(range).map(|(_, r)| r).take(max_records) {
            bytes += record.wire_len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(record.clone());
        }
        Ok(out)
    }

    fn apply_remote(&mut self, partition: PartitionId, records: &[LogRecord]) -> Result<(), MemStoreError> {
        // Decode everything first, so a bad record leaves the partition untouched (one batch).
        let deltas = records.iter().map(|r| decode_set(&r.delta)).collect::<Result<Vec<_>, _>>()?;
        let part = self.part(partition);
        let mut vv = part.vv.clone();
        for record in records {
            let have = vv.get(record.origin);
            if record.seq > have + 1 {
                return Err(MemStoreError::Gap { origin: record.origin, have, seq: record.seq });
            }
            vv.observe(record.origin, record.seq);
        }
        for (record, delta) in records.iter().zip(deltas) {
            if record.seq <= part.vv.get(record.origin) {
                continue;
            }
            part.join(&record.key, &delta);
            part.log.insert((record.origin, record.seq), record.clone());
            part.vv.observe(record.origin, record.seq);
        }
        Ok(())
    }

    fn range_digests(&self, partition: PartitionId, ranges: &[HashRange]) -> Result<Vec<RangeDigest>, MemStoreError> {
        let Some(part) = self.partitions.get(&partition) else { return Ok(vec![RangeDigest::default(); ranges.len()]) };
        Ok(ranges
            .iter()
            .map(|range| {
                let mut digest = RangeDigest::default();
                part.range(*range, None).for_each(|((_, key), set)| digest.add(key, &encode_set(set)));
                digest
            })
            .collect())
    }

    fn keys_in_range(
        &self,
        partition: PartitionId,
        range: HashRange,
        after_key: Option<&[u8]>,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<KeyPage, MemStoreError> {
        let Some(part) = self.partitions.get(&partition) else { return Ok(KeyPage::default()) };
        let mut page = KeyPage::default();
        let mut bytes = 0;
        for ((_, key), set) in part.range(range, after_key) {
            let state = KeyState { key: key.clone(), state: encode_set(set) };
            bytes += state.wire_len();
            if page.states.len() == max_keys || (bytes > max_bytes && !page.states.is_empty()) {
                page.more = true;
                break;
            }
            page.states.push(state);
        }
        Ok(page)
    }

    fn apply_states(
        &mut self,
        partition: PartitionId,
        states: &[KeyState],
        raise_vv_to: Option<&VersionVector>,
    ) -> Result<(), MemStoreError> {
        let sets = states.iter().map(|s| decode_set(&s.state)).collect::<Result<Vec<_>, _>>()?;
        let part = self.part(partition);
        for (state, set) in states.iter().zip(&sets) {
            part.join(&state.key, set);
        }
        if let Some(target) = raise_vv_to {
            for (origin, seq) in target.iter() {
                if seq > part.vv.get(origin) {
                    part.vv.observe(origin, seq);
                    part.floors.insert(origin, seq + 1);
                    part.log.retain(|(o, s), _| *o != origin || *s > seq);
                }
            }
        }
        Ok(())
    }
}
