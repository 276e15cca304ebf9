//! Hinted handoff: a write a replica did not acknowledge is kept here, durably and bounded, and
//! replayed to that replica once it answers again.
//!
//! A hint is the write's log record, stored in the `hints` space under
//! `[target: u64 BE][partition: u16 BE][origin: u64 BE][seq: u64 BE]`, so one target's hints are one
//! range, replayed in log order, and the same record hinted twice is stored once. Replaying is
//! idempotent (the receiver joins the delta; a record it already holds is skipped).
//!
//! Hints are an accelerator, not the safety net: anti-entropy between the partition's replicas ships
//! every missing record anyway. That is what makes the bound safe — beyond `max_per_node` hints for one
//! target, new hints are dropped (and counted), and the target catches up by anti-entropy instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use meridian_crdt::{codec, NodeId};
use meridian_replication::antientropy::LogRecord as SyncRecord;

use crate::layout::{self, HINT_KEY_LEN};
use crate::storage::{Batch, Engine, Space, StorageError};

/// A stored hint.
#[derive(Clone, Debug, PartialEq)]
pub struct Hint {
    /// Its key in the `hints` space.
    pub key: Vec<u8>,
    /// The partition of the record.
    pub partition: u16,
    /// The record to replay.
    pub record: SyncRecord,
}

/// The node's hints.
pub struct Hints {
    engine: Arc<dyn Engine>,
    max_per_node: usize,
    /// Hints held per target (counted at open, kept in step with every add and remove).
    depth: Mutex<BTreeMap<NodeId, usize>>,
}

impl Hints {
    /// Opens the hints of `engine`, counting what is queued per target.
    pub fn open(engine: Arc<dyn Engine>, max_per_node: usize) -> Result<Hints, StorageError> {
        let mut depth: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut start = Vec::new();
        loop {
            let page = engine.scan(Space::Hints, &start, None, 4096)?;
            for (key, _) in &page {
                if let Some(target) = key.get(..8) {
                    let target = NodeId(u64::from_be_bytes(target.try_into().expect("8 bytes")));
                    *depth.entry(target).or_default() += 1;
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == 4096 => start = [last.as_slice(), &[0]].concat(),
                _ => break,
            }
        }
        Ok(Hints { engine, max_per_node, depth: Mutex::new(depth) })
    }

    fn depths(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, usize>> {
        self.depth.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `record` for `target`. Returns `false` when the target's queue is full (the hint is
    /// dropped; anti-entropy will repair the target).
    pub fn add(&self, target: NodeId, partition: u16, record: &SyncRecord) -> Result<bool, StorageError> {
        {
            let mut depths = self.depths();
            let depth = depths.entry(target).or_default();
            if *depth >= self.max_per_node {
                metrics::counter!("meridian_hints_dropped_total").increment(1);
                return Ok(false);
            }
            *depth += 1;
        }
        let key = layout::hint_key(target, partition, record.origin, record.seq);
        // The same record hinted twice overwrites itself: count it once.
        if self.engine.get(Space::Hints, &key)?.is_some() {
            self.adjust(target, -1);
            return Ok(true);
        }
        let mut batch = Batch::default();
        batch.put(Space::Hints, key, codec::encode(record));
        if let Err(e) = self.engine.write(batch) {
            self.adjust(target, -1);
            return Err(e);
        }
        metrics::counter!("meridian_hints_written_total").increment(1);
        metrics::gauge!("meridian_hints_queued").set(self.total() as f64);
        Ok(true)
    }

    fn adjust(&self, target: NodeId, by: isize) {
        let mut depths = self.depths();
        let depth = depths.entry(target).or_default();
        *depth = depth.saturating_add_signed(by);
        if *depth == 0 {
            depths.remove(&target);
        }
    }

    /// Up to `max` of `target`'s hints, in log order.
    pub fn peek(&self, target: NodeId, max: usize) -> Result<Vec<Hint>, StorageError> {
        let start = target.0.to_be_bytes().to_vec();
        let end = crate::layout::prefix_end(&start);
        let mut out = Vec::new();
        for (key, value) in self.engine.scan(Space::Hints, &start, end.as_deref(), max)? {
            if key.len() != HINT_KEY_LEN {
                continue;
            }
            let partition = u16::from_be_bytes([key[8], key[9]]);
            match codec::decode::<SyncRecord>(&value, crate::layout::MAX_HINT_BYTES) {
                Ok(record) => out.push(Hint { key, partition, record }),
                Err(e) => {
                    // An unreadable hint can never be replayed: drop it (anti-entropy covers it).
                    tracing::warn!(error = %e, "dropping an unreadable hint");
                    self.remove(target, std::slice::from_ref(&key))?;
                }
            }
        }
        Ok(out)
    }

    /// Deletes replayed hints of `target`.
    pub fn remove(&self, target: NodeId, keys: &[Vec<u8>]) -> Result<(), StorageError> {
        let mut batch = Batch::default();
        for key in keys {
            batch.delete(Space::Hints, key.clone());
        }
        self.engine.write(batch)?;
        self.adjust(target, -(keys.len() as isize));
        metrics::gauge!("meridian_hints_queued").set(self.total() as f64);
        Ok(())
    }

    /// Hints queued for `target`.
    pub fn depth(&self, target: NodeId) -> usize {
        self.depths().get(&target).copied().unwrap_or(0)
    }

    /// Targets with hints queued.
    pub fn targets(&self) -> Vec<NodeId> {
        self.depths().keys().copied().collect()
    }

    /// Hints queued for every target.
    pub fn total(&self) -> usize {
        self.depths().values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;

    fn record(seq: u64) -> SyncRecord {
        SyncRecord { origin: NodeId(9), seq, key: b"\x01ak".to_vec(), delta: vec![1, 2, 3], hlc: seq }
    }

    #[test]
    fn hints_are_durable_ordered_deduplicated_and_bounded() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let hints = Hints::open(engine.clone(), 3).unwrap();
        let target = NodeId(5);
        assert!(hints.add(target, 7, &record(2)).unwrap());
        assert!(hints.add(target, 7, &record(1)).unwrap());
        assert!(hints.add(target, 7, &record(1)).unwrap(), "the same record twice is one hint");
        assert_eq!(hints.depth(target), 2);
        assert!(hints.add(target, 8, &record(3)).unwrap());
        assert!(!hints.add(target, 8, &record(4)).unwrap(), "the bound drops new hints");
        assert!(hints.add(NodeId(6), 8, &record(4)).unwrap(), "the bound is per target");

        let reopened = Hints::open(engine, 3).unwrap();
        assert_eq!(reopened.depth(target), 3, "hints survive a restart");
        let queued = reopened.peek(target, 10).unwrap();
        let order: Vec<(u16, u64)> = queued.iter().map(|h| (h.partition, h.record.seq)).collect();
        assert_eq!(order, [(7, 1), (7, 2), (8, 3)], "replayed in log order");
        reopened.remove(target, &queued.iter().map(|h| h.key.clone()).collect::<Vec<_>>()).unwrap();
        assert_eq!(reopened.depth(target), 0);
        assert_eq!(reopened.targets(), [NodeId(6)]);
    }
}
