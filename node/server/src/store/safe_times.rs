//! What this node knows of other origins' logs, per partition: the safe times causal reads wait on
//! (`meridian_replication::safe_time`), persisted so a restart does not forget what it holds.

use std::sync::{Arc, Mutex};

use meridian_crdt::NodeId;
use meridian_replication::{SafeReport, SafeTimes};

use crate::layout;
use crate::storage::{decode_u64_be, Batch, Engine, Space, StorageError};

/// The safe times of one node, over its engine (which holds the version vectors they rest on).
pub struct SafeTimeBook {
    engine: Arc<dyn Engine>,
    local: NodeId,
    times: Mutex<SafeTimes>,
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
        Ok(SafeTimeBook { engine, local, times: Mutex::new(times) })
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

    /// Takes in what another node says about an origin's log of `partition`.
    pub fn take_report(&self, partition: u16, report: SafeReport) {
        if report.origin == self.local {
            return;
        }
        let held = self.held_position(partition, report.origin);
        self.times.lock().expect("safe times lock").report(partition, report, held);
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
