//! The data census: what the node's `Data` space holds that a read shows, and what it keeps only
//! as a tombstone — a deleted key whose state stays (its causal context is what makes the delete
//! stick; `docs/design/replication.md`, "Why tombstone collection is not built yet"), or a removed
//! map field whose record stays. Nothing
//! collects tombstones yet, so "tombstones pending" is what a workload of deletes leaves behind;
//! it is the figure an operator watches to see whether deletes are what grows the disk.
//!
//! A census walks the space in steps of at most [`CENSUS_STEP`] records (each step one scan, off
//! the reactor), so it never holds a snapshot or the CPU for long; counts from one pass are
//! published together at its end. Bytes are the encoded sizes the key caps count (a collection's
//! parts included), not disk use. Fields removed inside nested maps, and maps still stored whole
//! (storage format 1), are not counted as removed fields; a deleted map's kept fields count in its
//! deleted bytes (`meridian_data_keys{state}`, `meridian_data_bytes{state}`,
//! `meridian_tombstones_pending{kind}`).

use meridian_client::proto::CensusReport;

use crate::layout::{self, StateRecord};
use crate::storage::{Engine, Space, StorageError};

/// Data records read per census step: a step holds its records' values in memory (up to
/// `limits.max_merged_key_bytes` each), so it takes as few as the other full scans' pages do.
pub const CENSUS_STEP: usize = 1_024;

/// Undecodable records a pass names in the log (by hash); the rest are only counted.
const UNREADABLE_LOGGED: u64 = 3;

/// What one census pass counted (the protocol's report, `taken_ms` set when the pass ends).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census(pub CensusReport);

impl Census {
    /// Adds the `Data` record `value` of `key` (a key's whole state, or a collection's header).
    fn count(&mut self, key: &[u8], value: &[u8]) {
        let (exists, bytes, removed_fields) = match layout::decode_state(value) {
            Ok(StateRecord::Whole(stored)) => (stored.entry.exists(), value.len() as u64, 0),
            Ok(StateRecord::Split(header)) => (
                header.stored.entry.exists(),
                value.len() as u64 + header.element_bytes,
                header.elements.saturating_sub(header.present),
            ),
            Err(e) => {
                self.0.unreadable += 1;
                if self.0.unreadable <= UNREADABLE_LOGGED {
                    tracing::warn!(key = %layout::show_data_key(key), error = %e, "data census: a record does not decode");
                }
                return;
            }
        };
        let counts = &mut self.0;
        if exists {
            counts.live_keys += 1;
            counts.live_bytes += bytes;
            counts.removed_fields += removed_fields;
        } else {
            counts.deleted_keys += 1;
            counts.deleted_bytes += bytes;
        }
    }

    /// Counts up to `limit` `Data` records from `start` on; returns where the next step starts
    /// (`None`: the space is done).
    pub fn step(&mut self, engine: &dyn Engine, start: &[u8], limit: usize) -> Result<Option<Vec<u8>>, StorageError> {
        let records = engine.scan_uncached(Space::Data, start, limit.max(1))?;
        for (key, value) in &records {
            self.count(key, value);
        }
        Ok(match records.last() {
            Some((key, _)) if records.len() >= limit.max(1) => {
                // The smallest key after the last one read.
                let mut next = key.clone();
                next.push(0);
                Some(next)
            }
            _ => None,
        })
    }

    /// The counts as the protocol reports them, for a pass that ended at `taken_ms`.
    pub fn report(&self, taken_ms: u64) -> CensusReport {
        CensusReport { taken_ms, ..self.0.clone() }
    }

    /// Publishes the pass's counts as gauges.
    pub fn publish(&self) {
        let counts = &self.0;
        metrics::gauge!("meridian_data_keys", "state" => "live").set(counts.live_keys as f64);
        metrics::gauge!("meridian_data_keys", "state" => "deleted").set(counts.deleted_keys as f64);
        metrics::gauge!("meridian_data_bytes", "state" => "live").set(counts.live_bytes as f64);
        metrics::gauge!("meridian_data_bytes", "state" => "deleted").set(counts.deleted_bytes as f64);
        metrics::gauge!("meridian_tombstones_pending", "kind" => "key").set(counts.deleted_keys as f64);
        metrics::gauge!("meridian_tombstones_pending", "kind" => "map_field").set(counts.removed_fields as f64);
        metrics::gauge!("meridian_census_unreadable_records").set(counts.unreadable as f64);
    }
}

/// One whole census pass over `engine`, in steps of `step` records (tests; the node runs its steps
/// off the reactor, `serve.rs`).
pub fn census(engine: &dyn Engine, step: usize) -> Result<Census, StorageError> {
    let mut census = Census::default();
    let mut start = Vec::new();
    while let Some(next) = census.step(engine, &start, step)? {
        start = next;
    }
    Ok(census)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Node;
    use crate::config::Config;
    use crate::storage::MemoryEngine;
    use meridian_client::proto::{Operation, RequestV1};
    use meridian_crdt::Mutation;
    use std::sync::Arc;

    async fn run(node: &Arc<Node>, op: Operation) {
        let request = RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op };
        node.execute_v1(request).await.unwrap();
    }

    async fn write(node: &Arc<Node>, key: &str, mutation: Mutation) {
        run(node, Operation::Write { key: key.parse().unwrap(), mutation, idempotency_id: None }).await;
    }

    async fn delete(node: &Arc<Node>, key: &str) {
        run(node, Operation::Delete { key: key.parse().unwrap(), idempotency_id: None }).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_census_counts_live_keys_tombstones_and_removed_fields_in_steps() {
        let node = Node::open(Config::default(), Arc::new(MemoryEngine::new())).unwrap();
        for n in 0..7 {
            write(&node, &format!("app/r{n}"), Mutation::RegisterSet { value: vec![b'x'; 100] }).await;
        }
        write(&node, "app/s", Mutation::SetAdd { members: vec![b"a".to_vec(), b"b".to_vec()] }).await;
        let field = |field: &str| Mutation::MapUpdate {
            field: field.into(),
            mutation: Box::new(Mutation::CounterAdd { amount: 1 }),
        };
        for name in ["f", "g", "h"] {
            write(&node, "app/m", field(name)).await;
        }
        write(&node, "app/m", Mutation::MapRemove { field: "g".into() }).await;
        for n in 0..3 {
            delete(&node, &format!("app/r{n}")).await;
        }
        delete(&node, "app/s").await;

        for step in [1, 2, 3, CENSUS_STEP] {
            let counted = census(node.engine().as_ref(), step).unwrap();
            assert_eq!(
                (counted.0.live_keys, counted.0.deleted_keys, counted.0.removed_fields, counted.0.unreadable),
                (5, 4, 1, 0),
                "step {step}: {counted:?}"
            );
            assert!(counted.0.live_bytes >= 4 * 100, "{counted:?}");
            assert!(counted.0.deleted_bytes > 0, "{counted:?}");
        }
    }
}
