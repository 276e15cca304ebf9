//! What this node knows of other origins' logs, per partition: the safe times causal reads wait on
//! (`meridian_replication::safe_time`), persisted so a restart does not forget what it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use meridian_crdt::NodeId;
use meridian_replication::hash::stable_hash_u64s;
use meridian_replication::{SafeReport, SafeTimes};

use crate::layout;
use crate::storage::{decode_u64_be, Batch, Engine, Space, StorageError};

/// The safe times of one node, over its engine (which holds the version vectors they rest on).
pub struct SafeTimeBook {
    engine: Arc<dyn Engine>,
    local: NodeId,
    times: Mutex<SafeTimes>,
    /// Per origin, the positions its last reports named for every partition: the baseline its
    /// compact gossip names changes to (in memory: after a restart the origin is asked for all).
    reported: Mutex<HashMap<NodeId, Vec<u64>>>,
}

impl SafeTimeBook {
    /// Restores what the node knew before it stopped: it is about data it holds durably, so it
    /// still holds (and a session's causal reads need not wait for the origin).
    pub fn open(engine: Arc<dyn Engine>, local: NodeId) -> Result<SafeTimeBook, StorageError> {
        let mut times = SafeTimes::new();
        let end = layout::prefix_end(layout::SAFE_PREFIX);
        for (key, value) in engine.scan(Space::Meta, layout::SAFE_PREFIX, end.as_deref(), usize::MAX)? {
            if let Some((partition, origin)) = layout::parse_safe_key(&key) {
                times.restore(partition, origin, decode_u64_be(&value)?);
            }
        }
        Ok(SafeTimeBook { engine, local, times: Mutex::new(times), reported: Mutex::new(HashMap::new()) })
    }

    /// This node's gap-free position of `origin` in `partition` (its version-vector entry).
    fn held_position(&self, partition: u16, origin: NodeId) -> u64 {
        match self.engine.get(Space::Meta, &layout::vv_key(partition, origin)) {
            Ok(Some(bytes)) => decode_u64_be(&bytes).unwrap_or(0),
            _ => 0,
        }
    }

    /// The packed HLC up to which this node holds `origin`'s writes to `partition`.
    pub fn known_safe(&self, partition: u16, origin: NodeId) -> u64 {
        let held = self.held_position(partition, origin);
        self.times.lock().expect("safe times lock").known(partition, origin, held)
    }

    /// What this node can vouch for about `origin`'s log of `partition`: the position it holds and
    /// the HLC that position is known to cover (`None`: it knows nothing). A node that took over
    /// from `origin` under a new log epoch hears it from the nodes that do
    /// (`region::gossip::vouch_for_successors`).
    pub fn vouch(&self, partition: u16, origin: NodeId) -> Option<SafeReport> {
        let held = self.held_position(partition, origin);
        self.times.lock().expect("safe times lock").vouch(partition, origin, held)
    }

    /// Takes in what another node says about an origin's log of `partition`.
    pub fn take_report(&self, partition: u16, report: SafeReport) {
        if report.origin == self.local {
            return;
        }
        let held = self.held_position(partition, report.origin);
        self.times.lock().expect("safe times lock").report(partition, report, held);
    }

    /// Takes in `origin`'s reports about its own log, for every partition: its frontier `safe` and
    /// the last durable position of its log in each (`seqs`, indexed by partition). They become
    /// the baseline its compact reports change.
    pub fn take_all_reports_of(&self, origin: NodeId, safe: u64, seqs: &[u64]) {
        for (partition, seq) in seqs.iter().enumerate().take(usize::from(layout::PARTITIONS)) {
            self.take_report(partition as u16, SafeReport { origin, seq: *seq, safe });
        }
        // Positions only grow: an older report taken late must not lower the baseline.
        let mut reported = self.reported.lock().expect("reported lock");
        let baseline = reported.entry(origin).or_insert_with(|| vec![0; usize::from(layout::PARTITIONS)]);
        for (held, seq) in baseline.iter_mut().zip(seqs) {
            *held = (*held).max(*seq);
        }
    }

    /// Takes in `origin`'s compact reports: its frontier `safe`, and the positions that changed
    /// since the baseline whose digest is `base`. Every partition gets the frontier with its
    /// baseline position (a position unchanged since then still bounds every write up to the new
    /// frontier). Without that baseline only the changed partitions can be reported: returns
    /// false, and the origin is asked for all.
    pub fn take_changed_reports_of(&self, origin: NodeId, safe: u64, base: u64, changed: &[(u16, u64)]) -> bool {
        let seqs = {
            let mut reported = self.reported.lock().expect("reported lock");
            // Only over the very baseline the origin computed the changes from: over another, a
            // partition that moved in between would get the new frontier at its old position.
            match reported.get_mut(&origin).filter(|baseline| stable_hash_u64s(baseline) == base) {
                Some(baseline) => {
                    for &(partition, seq) in changed {
                        if let Some(held) = baseline.get_mut(usize::from(partition)) {
                            *held = (*held).max(seq);
                        }
                    }
                    Some(baseline.clone())
                }
                None => None,
            }
        };
        match seqs {
            Some(seqs) => {
                for (partition, seq) in seqs.into_iter().enumerate() {
                    self.take_report(partition as u16, SafeReport { origin, seq, safe });
                }
                true
            }
            None => {
                for &(partition, seq) in changed.iter().filter(|(p, _)| *p < layout::PARTITIONS) {
                    self.take_report(partition, SafeReport { origin, seq, safe });
                }
                false
            }
        }
    }

    /// Persists the knowledge gained since the last call (one small batch; blocks). Written after
    /// the data it is about, so a restart never restores a claim about data it lost.
    pub fn persist(&self) -> Result<(), StorageError> {
        let changed = self.times.lock().expect("safe times lock").take_changed();
        if changed.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (partition, origin, known) in changed {
            batch.max_u64(Space::Meta, layout::safe_key(partition, origin), known);
        }
        self.engine.write(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;

    #[test]
    fn compact_reports_apply_the_frontier_to_every_partition_only_over_a_baseline() {
        let book = SafeTimeBook::open(Arc::new(MemoryEngine::new()), NodeId(1)).unwrap();
        let (origin, stranger) = (NodeId(2), NodeId(3));
        // A full report: partition 3 has a write this node does not hold yet (position 5).
        let mut seqs = vec![0; usize::from(layout::PARTITIONS)];
        seqs[3] = 5;
        book.take_all_reports_of(origin, 100, &seqs);
        assert_eq!(book.known_safe(0, origin), 100);
        assert_eq!(book.known_safe(3, origin), 0, "position 5 is not held here");
        // Nothing changed since: the new frontier reaches every partition at its old position.
        assert!(book.take_changed_reports_of(origin, 200, stable_hash_u64s(&seqs), &[]));
        assert_eq!(book.known_safe(0, origin), 200);
        assert_eq!(book.known_safe(255, origin), 200);
        assert_eq!(book.known_safe(3, origin), 0, "still behind position 5");
        // A change moves only its partition's position.
        assert!(book.take_changed_reports_of(origin, 300, stable_hash_u64s(&seqs), &[(7, 2)]));
        assert_eq!(book.known_safe(7, origin), 200, "position 2 is not held: the newer frontier waits");
        assert_eq!(book.known_safe(8, origin), 300);
        // Changes computed from another baseline (the origin believes partition 9 is at 4 here):
        // only what they name is taken, and the origin is asked for all.
        seqs[7] = 2;
        let mut believed = seqs.clone();
        believed[9] = 4;
        assert!(!book.take_changed_reports_of(origin, 350, stable_hash_u64s(&believed), &[(8, 0)]));
        assert_eq!(book.known_safe(9, origin), 300, "no claim over a baseline the origin did not mean");
        assert_eq!(book.known_safe(8, origin), 350);
        // An older full report taken late does not lower the baseline.
        book.take_all_reports_of(origin, 50, &vec![0; usize::from(layout::PARTITIONS)]);
        assert!(book.take_changed_reports_of(origin, 360, stable_hash_u64s(&seqs), &[]));
        // Without a baseline, only the partitions named can be reported, and the caller learns it.
        assert!(!book.take_changed_reports_of(stranger, 400, 0, &[(1, 0)]));
        assert_eq!(book.known_safe(1, stranger), 400);
        assert_eq!(book.known_safe(0, stranger), 0, "no claim about a partition not named");
    }
}
