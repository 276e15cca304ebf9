//! Delta-log truncation: the log keeps a bounded past.
//!
//! Anti-entropy ships a peer the log records its version vector lacks. Kept forever, the log grows
//! with every write the node ever saw; truncated, a peer that asks for records below the log's floor
//! is answered `Truncated` and catches up through the digest fallback (states of the keys that
//! differ, then a vector raise; `meridian_replication::antientropy`). So truncation trades log bytes
//! for a costlier catch-up of a replica that was away longer than the retention — never correctness.
//!
//! What is cut, per `(partition, origin)`:
//! - records every node that reads this log holds (causal stability, `store/stability.rs`): no
//!   peer will ask for them again, so the log of a healthy cluster stays about as short as its
//!   anti-entropy interval. Redactions stay until the retention: a residency backfill compares
//!   them with what its sources hold (`region/residency_jobs.rs`);
//! - records timestamped before `now − retention`, where retention is `storage.log_retention_s`,
//!   shortened by [`RetentionController`] while the log takes more than `storage.log_retention_mb`:
//!   that is what bounds the log while a reader is down or cut off;
//! - **never the newest record held** (the one at the vector's entry): the group committer resumes
//!   this node's positions, and its clock, from the newest record of its own log after a restart
//!   (`Replica::open`), so deleting it would hand out a position twice;
//! - never a record above the vector's entry (records pushed ahead of a gap wait there for it).
//!
//! Each cut deletes the records and raises the floor marker (`layout::log_floor_key`) in one batch,
//! so [`SyncStore::log_floor`] answers the first record kept without scanning over the deleted ones,
//! and a session that read the floor before the cut sees the hole and reports `Truncated` as well
//! (`antientropy::serve`).

use meridian_crdt::{NodeId, VersionVector};
use meridian_replication::antientropy::{PartitionId, SyncStore};

use crate::layout::{self, log_cut_key, log_floor_key, LogContent, LogRecord, PARTITIONS};
use crate::storage::{Batch, Space};
use crate::store::stability::Stable;
use crate::store::sync_store::{EngineSyncStore, SyncStoreError};

/// Records looked at per scan of one origin's log.
const PAGE: usize = 512;

/// What one pass over every partition's log did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Log records deleted.
    pub deleted: u64,
    /// Log records read to find the cuts (the pass's cost).
    pub examined: u64,
    /// Partitions visited whose readers had all reported what they hold (cut by stability too).
    pub stable_partitions: u64,
    /// Where the pass stopped at its budget: the partition the next step starts from (`None`: the
    /// pass reached the last partition).
    pub resume_at: Option<u16>,
}

/// Which records of one origin's log of a partition may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutRule {
    /// Records timestamped (wall-clock ms) before this go: the retention.
    pub older_than_ms: u64,
    /// Records at or below this position go, redactions excepted: every reader holds them
    /// (0: nothing is known to be held).
    pub held_upto: u64,
}

impl CutRule {
    /// Records older than `cutoff_ms` go, whatever the readers hold.
    pub fn by_age(cutoff_ms: u64) -> CutRule {
        CutRule { older_than_ms: cutoff_ms, held_upto: 0 }
    }

    fn cuts(&self, seq: u64, content: &LogContent, ts: meridian_crdt::Hlc) -> bool {
        ts.wall_ms < self.older_than_ms || (seq <= self.held_upto && !matches!(content, LogContent::Redacted(_)))
    }
}

impl EngineSyncStore {
    /// The first position of `origin`'s log of `partition` to keep under `rule`: the first record
    /// the rule keeps, or the newest record held. Reads at most `budget` records; returns the cut
    /// found so far and how many it read.
    pub fn cut_point(
        &self,
        partition: u16,
        origin: NodeId,
        rule: CutRule,
        budget: usize,
    ) -> Result<(u64, usize), SyncStoreError> {
        let newest = self.vv_entry(partition, origin)?;
        let mut next = self.log_floor(PartitionId(partition), origin)?;
        let end = layout::log_key(partition, origin, newest);
        let mut examined = 0;
        while next < newest && examined < budget {
            let want = PAGE.min(budget - examined);
            let page = self.engine().scan(Space::Log, &layout::log_key(partition, origin, next), Some(&end), want)?;
            if page.is_empty() {
                return Ok((newest, examined));
            }
            for (key, value) in &page {
                examined += 1;
                let Some((_, _, seq)) = layout::parse_log_key(key) else { continue };
                let (content, ts) = layout::decode::<LogRecord>(value)
                    .map_err(|e| SyncStoreError::Corrupt {
                        what: format!("log record {partition}/{origin}/{seq}"),
                        detail: e.to_string(),
                    })?
                    .into_parts();
                if !rule.cuts(seq, &content, ts) {
                    return Ok((seq, examined));
                }
                next = seq.saturating_add(1);
            }
            if page.len() < want {
                return Ok((newest, examined));
            }
        }
        Ok((next.min(newest), examined))
    }

    /// Deletes the records of `origin` in `partition` below `below` that `rule` cuts, up to the
    /// first one it keeps, never the newest held nor any above the vector, and raises the floor
    /// marker to the first record kept: one batch, under the partition's lock. Starts where the
    /// last cut ended ([`layout::log_cut_key`]), so records a fallback's floor hid are collected
    /// too. Deletes at most `budget` records; returns how many it deleted.
    ///
    /// `rule` is checked again here, under the lock, although `below` came from
    /// [`EngineSyncStore::cut_point`]: a residency purge may have rewritten a record as a redaction
    /// since, and a redaction must stay until the retention.
    pub fn truncate_log(
        &self,
        partition: u16,
        origin: NodeId,
        below: u64,
        rule: CutRule,
        budget: usize,
    ) -> Result<usize, SyncStoreError> {
        let _serial = self.lock(partition);
        let newest = self.vv_entry(partition, origin)?;
        let cut = below.min(newest);
        let from = self.meta_u64(&log_cut_key(partition, origin))?.max(1);
        if cut <= from {
            return Ok(0);
        }
        let start = layout::log_key(partition, origin, from);
        let end = layout::log_key(partition, origin, cut);
        let mut doomed = self.engine().scan(Space::Log, &start, Some(&end), budget)?;
        // Stopped at the budget: the cut and the marker rise only past what this batch deletes.
        let mut reached = match doomed.last() {
            Some((key, _)) if doomed.len() == budget => {
                layout::parse_log_key(key).map_or(from, |(_, _, seq)| seq.saturating_add(1))
            }
            _ => cut,
        };
        if let Some(kept) = doomed.iter().position(|(key, value)| !cuts(rule, key, value)) {
            reached = layout::parse_log_key(&doomed[kept].0).map_or(from, |(_, _, seq)| seq);
            doomed.truncate(kept);
        }
        let mut batch = Batch::new();
        for (key, _) in &doomed {
            batch.delete(Space::Log, key.clone());
        }
        batch.max_u64(Space::Meta, log_cut_key(partition, origin), reached);
        batch.max_u64(Space::Meta, log_floor_key(partition, origin), reached);
        self.engine().write(batch)?;
        Ok(doomed.len())
    }

    /// One pass over every partition's log: each origin's records older than `cutoff_ms` are cut
    /// (see the module docs). Reads and deletes at most about `budget` records; see
    /// [`EngineSyncStore::truncate_from`] to go on where a step stopped, and to cut below what
    /// the log's readers hold too.
    pub fn truncate_older_than(&self, cutoff_ms: u64, budget: usize) -> Result<PassSummary, SyncStoreError> {
        self.truncate_from(cutoff_ms, |_, _| None, budget, 0)
    }

    /// A step of a pass from partition `from` on: each origin's records older than `cutoff_ms`
    /// are cut, and those every reader holds, where `stable(partition, vector)` says what that is
    /// (`None`: not known). A step cut short by its budget says where the next one starts
    /// ([`PassSummary::resume_at`]), so every partition is reached whatever the budget.
    pub fn truncate_from(
        &self,
        cutoff_ms: u64,
        stable: impl Fn(u16, &VersionVector) -> Option<Stable>,
        budget: usize,
        from: u16,
    ) -> Result<PassSummary, SyncStoreError> {
        let mut summary = PassSummary::default();
        let mut work = 0usize;
        for partition in from..PARTITIONS {
            // A partition is started only within the budget and then visited whole (each origin's
            // deletes budgeted): every step moves on, and the remainder waits for the next pass.
            if work >= budget {
                summary.resume_at = Some(partition);
                return Ok(summary);
            }
            let vv = self.partition_vv(PartitionId(partition))?;
            let held = stable(partition, &vv);
            summary.stable_partitions += u64::from(held.is_some());
            for (origin, _) in vv.iter() {
                let left = budget.saturating_sub(work).max(1);
                let held_upto = held.as_ref().map_or(0, |held| held.upto(origin));
                let rule = CutRule { older_than_ms: cutoff_ms, held_upto };
                let (cut, examined) = self.cut_point(partition, origin, rule, left)?;
                let deleted = self.truncate_log(partition, origin, cut, rule, left)?;
                work = work.saturating_add(examined.max(1)).saturating_add(deleted);
                summary.examined += examined as u64;
                summary.deleted += deleted as u64;
            }
        }
        Ok(summary)
    }
}

/// Whether `rule` cuts the stored log record `value` under `key` (one that cannot be read is cut:
/// nothing could ever ship it).
fn cuts(rule: CutRule, key: &[u8], value: &[u8]) -> bool {
    match (layout::parse_log_key(key), layout::decode::<LogRecord>(value)) {
        (Some((_, _, seq)), Ok(record)) => {
            let (content, ts) = record.into_parts();
            rule.cuts(seq, &content, ts)
        }
        _ => true,
    }
}

/// How long the log keeps records: the configured retention, halved while the log takes more than
/// its byte budget, and doubled back (up to the configured retention) once it takes less than half
/// of it. A byte budget alone cannot say which records to cut; an age can, and the oldest records
/// are the ones a peer is least likely to still need. The idempotency records' TTL is held to their
/// own budget the same way (`limits.idempotency_max_mb`, `serve.rs`).
///
/// Deleted records free their bytes only when RocksDB flushes and compacts, so the measure lags the
/// cut: the retention changes at most once per [`RETENTION_STEP_MS`], and never below
/// [`MIN_RETENTION_MS`] (unless configured lower), so a lagging measure cannot drive it to nothing.
#[derive(Clone, Debug)]
pub struct RetentionController {
    configured_ms: u64,
    max_bytes: u64,
    current_ms: u64,
    /// When the retention last changed (0: never).
    changed_at_ms: u64,
}

/// The shortest retention the byte budget can force: a peer restarted within it still catches up
/// from the log (and a client's retry within it is still recognised).
pub const MIN_RETENTION_MS: u64 = 60_000;

/// The retention changes at most this often.
pub const RETENTION_STEP_MS: u64 = 60_000;

impl RetentionController {
    /// Keeps records for `configured_ms` while the log stays under `max_bytes`.
    pub fn new(configured_ms: u64, max_bytes: u64) -> RetentionController {
        RetentionController { configured_ms, max_bytes, current_ms: configured_ms, changed_at_ms: 0 }
    }

    /// The retention to apply in the pass starting at `now_ms`, given what the log takes now.
    pub fn next(&mut self, log_bytes: u64, now_ms: u64) -> u64 {
        if self.changed_at_ms != 0 && now_ms < self.changed_at_ms.saturating_add(RETENTION_STEP_MS) {
            return self.current_ms;
        }
        let before = self.current_ms;
        if log_bytes > self.max_bytes {
            self.current_ms = (self.current_ms / 2).max(MIN_RETENTION_MS.min(self.configured_ms));
        } else if log_bytes < self.max_bytes / 2 {
            self.current_ms = self.current_ms.saturating_mul(2).min(self.configured_ms);
        }
        if self.current_ms != before {
            self.changed_at_ms = now_ms.max(1);
        }
        self.current_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use meridian_client::proto::Key;
    use meridian_crdt::{Entry, Hlc, Mutation, WriteContext};
    use meridian_replication::antientropy::{
        HashRange, LogRecord as SyncRecord, SyncConfig, SyncEvent, SyncMessageV1, SyncSession,
    };

    use crate::storage::MemoryEngine;

    const P: u16 = 3;

    fn counter(amount: i64) -> Entry {
        let write = WriteContext { node: NodeId(9), ts: Hlc { wall_ms: 1, logical: 0 } };
        Entry::mutation_delta(None, &Mutation::CounterAdd { amount }, &write).unwrap()
    }

    /// A key of partition `P` per index.
    fn keys(count: usize) -> Vec<Key> {
        (0..)
            .map(|i| Key::new("t", format!("k{i}")).unwrap())
            .filter(|k| layout::partition_of(&layout::data_key(k)) == P)
            .take(count)
            .collect()
    }

    /// Records `1..=count` of `origin` in partition `P`, record `seq` timestamped at `seq` × 1000 ms,
    /// each adding `seq` to the counter of one of `keys`, applied as a peer's would be.
    fn written(store: &mut EngineSyncStore, origin: NodeId, count: u64, keys: &[Key]) {
        let records: Vec<SyncRecord> = (1..=count)
            .map(|seq| SyncRecord {
                origin,
                seq,
                key: layout::data_key(&keys[seq as usize % keys.len()]),
                delta: layout::encode_stored(&layout::Stored::bare(counter(seq as i64))),
                hlc: Hlc { wall_ms: seq * 1000, logical: 0 }.pack(),
            })
            .collect();
        store.apply_remote(PartitionId(P), &records).unwrap();
    }

    fn log_seqs(store: &EngineSyncStore, origin: NodeId) -> Vec<u64> {
        let start = layout::log_key(P, origin, 0);
        let end = layout::log_key(P, origin, u64::MAX);
        store
            .engine()
            .scan(Space::Log, &start, Some(&end), usize::MAX)
            .unwrap()
            .iter()
            .map(|(k, _)| layout::parse_log_key(k).unwrap().2)
            .collect()
    }

    #[test]
    fn cuts_by_age_keep_the_newest_record_and_raise_the_floor() {
        let mut store = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let origin = NodeId(2);
        written(&mut store, origin, 10, &keys(4));
        assert_eq!(
            store.cut_point(P, origin, CutRule::by_age(4_500), usize::MAX).unwrap(),
            (5, 5),
            "records 1..=4 are older"
        );
        let summary = store.truncate_older_than(4_500, usize::MAX).unwrap();
        assert_eq!((summary.deleted, summary.resume_at), (4, None));
        assert_eq!(log_seqs(&store, origin), (5..=10).collect::<Vec<_>>());
        assert_eq!(store.log_floor(PartitionId(P), origin).unwrap(), 5);
        // Everything is older than the cutoff: only the newest record stays.
        store.truncate_older_than(u64::MAX, usize::MAX).unwrap();
        assert_eq!(log_seqs(&store, origin), [10]);
        assert_eq!(store.log_floor(PartitionId(P), origin).unwrap(), 10);
        assert_eq!(store.partition_vv(PartitionId(P)).unwrap().get(origin), 10, "the vector is untouched");
        // Nothing to do twice.
        assert_eq!(store.truncate_older_than(u64::MAX, usize::MAX).unwrap().deleted, 0);
    }

    #[test]
    fn records_every_reader_holds_are_cut_before_the_retention_but_redactions_wait_for_it() {
        let mut store = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let (origin, other) = (NodeId(2), NodeId(3));
        written(&mut store, origin, 10, &keys(4));
        // `other`'s record 4 is a redaction (a key this node may not hold).
        written(&mut store, other, 6, &keys(4));
        let redacted = LogRecord::Redacted { ts: Hlc { wall_ms: 4_000, logical: 0 }, rule: 1 };
        let mut batch = Batch::new();
        batch.put(Space::Log, layout::log_key(P, other, 4).to_vec(), layout::encode(&redacted));
        store.engine().write(batch).unwrap();

        // A cut decided before a purge rewrote record 4 as a redaction still stops at it.
        let rule = CutRule { older_than_ms: 0, held_upto: 6 };
        assert_eq!(store.truncate_log(P, other, 6, rule, usize::MAX).unwrap(), 3);
        assert_eq!(log_seqs(&store, other), [4, 5, 6]);
        assert_eq!(store.log_floor(PartitionId(P), other).unwrap(), 4);

        let held: meridian_crdt::VersionVector = [(origin, 7), (other, 6)].into_iter().collect();
        let stable = |p: u16, _: &meridian_crdt::VersionVector| (p == P).then(|| Stable::Upto(held.clone()));
        let summary = store.truncate_from(0, stable, usize::MAX, 0).unwrap();
        assert_eq!((summary.deleted, summary.stable_partitions), (7, 1));
        assert_eq!(log_seqs(&store, origin), [8, 9, 10], "what a reader lacks stays");
        assert_eq!(log_seqs(&store, other), [4, 5, 6], "the cut stops at the redaction");
        assert_eq!(store.log_floor(PartitionId(P), origin).unwrap(), 8);

        // Alone in its cluster, nobody reads the log: all but the newest may go, redactions excepted.
        store.truncate_from(0, |_, _| Some(Stable::Everything), usize::MAX, 0).unwrap();
        assert_eq!(log_seqs(&store, origin), [10]);
        assert_eq!(log_seqs(&store, other), [4, 5, 6]);
        // Past the retention the redaction goes too; the newest record never does.
        store.truncate_from(u64::MAX, |_, _| Some(Stable::Everything), usize::MAX, 0).unwrap();
        assert_eq!(log_seqs(&store, other), [6]);
        // Nothing known, nothing old: nothing is cut.
        written(&mut store, origin, 12, &keys(4));
        assert_eq!(store.truncate_from(0, |_, _| None, usize::MAX, 0).unwrap().deleted, 0);
    }

    #[test]
    fn a_budget_cuts_part_of_the_log_and_the_next_pass_goes_on() {
        let mut store = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let origin = NodeId(2);
        written(&mut store, origin, 20, &keys(3));
        assert_eq!(store.truncate_log(P, origin, 15, CutRule::by_age(u64::MAX), 4).unwrap(), 4);
        assert_eq!(store.log_floor(PartitionId(P), origin).unwrap(), 5);
        let mut passes = 0;
        while log_seqs(&store, origin) != [20] {
            store.truncate_older_than(u64::MAX, 6).unwrap();
            passes += 1;
            assert!(passes < 20, "truncation made no progress: {:?}", log_seqs(&store, origin));
        }
        assert_eq!(store.log_floor(PartitionId(P), origin).unwrap(), 20);
    }

    #[test]
    fn records_a_fallback_hid_below_its_floor_are_collected() {
        let mut store = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let origin = NodeId(2);
        written(&mut store, origin, 10, &keys(2));
        // A fallback raised the vector to 20 (records 11..=20 came as states): 1..=10 are hidden.
        let raised: meridian_crdt::VersionVector = [(origin, 20)].into_iter().collect();
        store.apply_states(PartitionId(P), &[], Some(&raised)).unwrap();
        assert_eq!(store.log_floor(PartitionId(P), origin).unwrap(), 21);
        assert_eq!(log_seqs(&store, origin).len(), 10);
        assert_eq!(store.truncate_older_than(u64::MAX, usize::MAX).unwrap().deleted, 10);
        assert!(log_seqs(&store, origin).is_empty());
        assert_eq!(store.log_floor(PartitionId(P), origin).unwrap(), 21, "the floor never falls");
        assert!(!log_cut_key(P, origin).starts_with(b"vv/"), "cut keys stay out of vector scans");
    }

    #[test]
    fn records_pushed_ahead_of_a_gap_are_never_cut() {
        let store = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let origin = NodeId(2);
        let key = keys(1).remove(0);
        let mut batch = Batch::new();
        for seq in [1, 2, 3, 7] {
            let record = LogRecord::V1 { key: key.clone(), delta: counter(1), ts: Hlc { wall_ms: 1, logical: 0 } };
            batch.put(Space::Log, layout::log_key(P, origin, seq).to_vec(), layout::encode(&record));
        }
        batch.max_u64(Space::Meta, layout::vv_key(P, origin), 3);
        store.engine().write(batch).unwrap();
        store.truncate_older_than(u64::MAX, usize::MAX).unwrap();
        assert_eq!(log_seqs(&store, origin), [3, 7]);
    }

    /// A replica that missed records now truncated catches up through the digest fallback, and
    /// ends with the same states and vector.
    #[test]
    fn a_replica_behind_the_floor_catches_up_by_states() {
        let keys = keys(6);
        let mut ahead = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let mut behind = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(5));
        let origin = NodeId(2);
        written(&mut ahead, origin, 30, &keys);
        ahead.truncate_older_than(u64::MAX, usize::MAX).unwrap();
        assert_eq!(log_seqs(&ahead, origin), [30]);

        let config = SyncConfig::default();
        let mut session = SyncSession::new(config.clone(), PartitionId(P), NodeId(5), NodeId(1), 1).unwrap();
        let mut truncated = false;
        let mut now = 0;
        for _ in 0..100 {
            now += 1_000;
            session.tick(&mut behind, now).unwrap();
            let mut progressed = false;
            while let Some(message) = session.poll_outbound() {
                progressed = true;
                let mut server = SyncSession::new(config.clone(), PartitionId(P), NodeId(1), NodeId(5), 2).unwrap();
                server.step(&mut ahead, now, message).unwrap();
                while let Some(reply) = server.poll_outbound() {
                    let meridian_replication::antientropy::SyncMessage::V1(inner) = &reply;
                    truncated |= matches!(inner, SyncMessageV1::Truncated { .. });
                    session.step(&mut behind, now, reply).unwrap();
                }
            }
            while let Some(event) = session.poll_event() {
                let _: SyncEvent = event;
            }
            if !progressed
                && behind.partition_vv(PartitionId(P)).unwrap() == ahead.partition_vv(PartitionId(P)).unwrap()
            {
                break;
            }
        }
        assert!(truncated, "the peer's log was cut: the fallback must have run");
        assert_eq!(behind.partition_vv(PartitionId(P)).unwrap(), ahead.partition_vv(PartitionId(P)).unwrap());
        assert_eq!(
            behind.range_digests(PartitionId(P), &[HashRange::ROOT]).unwrap(),
            ahead.range_digests(PartitionId(P), &[HashRange::ROOT]).unwrap(),
            "same states"
        );
    }

    #[test]
    fn the_retention_halves_while_over_budget_and_recovers_under_half() {
        let day = 86_400_000;
        let mut retention = RetentionController::new(day, 1_000);
        let now = std::cell::Cell::new(1_000_000);
        let step = |retention: &mut RetentionController, bytes: u64| {
            now.set(now.get() + RETENTION_STEP_MS);
            retention.next(bytes, now.get())
        };
        assert_eq!(step(&mut retention, 900), day, "under budget: as configured");
        assert_eq!(step(&mut retention, 1_001), day / 2);
        assert_eq!(retention.next(1_001, now.get() + 1), day / 2, "at most one change per step");
        assert_eq!(step(&mut retention, 1_001), day / 4);
        assert_eq!(step(&mut retention, 800), day / 4, "between half and the budget: held");
        assert_eq!(step(&mut retention, 400), day / 2);
        assert_eq!(step(&mut retention, 400), day);
        assert_eq!(step(&mut retention, 0), day, "never beyond the configured retention");
        for _ in 0..64 {
            step(&mut retention, u64::MAX);
        }
        assert_eq!(step(&mut retention, u64::MAX), MIN_RETENTION_MS, "never below the minimum");
        // A retention configured below the minimum is kept as configured.
        let mut short = RetentionController::new(1_000, 10);
        assert_eq!(short.next(u64::MAX, 5), 1_000);
    }
}
