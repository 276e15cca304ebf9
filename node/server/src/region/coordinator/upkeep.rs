//! The coordinator's background work: measuring the handoff of partitions this node no longer
//! owns, replaying hints to replicas that answer again, and writing back in the region the states
//! that digest fallbacks from other regions brought in.
use std::sync::Arc;
use std::time::Duration;

use meridian_crdt::NodeId;
use meridian_replication::antientropy::{PartitionId, SyncStore as _};
use meridian_replication::Liveness;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, HINT_BATCH, HINT_BATCH_BYTES, HINT_REPLAY_INTERVAL};
use crate::peer::protocol::{PeerCallError, PeerMessageV1, PeerReplyV1, Pushed};
use crate::storage::StorageError;

/// Why a hint replay stopped for now (it resumes at the next tick).
#[derive(Debug, thiserror::Error)]
enum ReplayPaused {
    /// Reading or removing hints failed.
    #[error(transparent)]
    Hints(#[from] StorageError),
    /// The target did not take the batch.
    #[error(transparent)]
    Peer(#[from] PeerCallError),
    /// The blocking task that touches the hints did not finish.
    #[error("the hints task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Coordinator {
    /// Until `shutdown`, once a second: writes the states that digest fallbacks from other regions
    /// joined here back to this region's other replicas of their partitions, as a quorum read
    /// writes back what it merged
    /// ([`crate::store::sync_store::EngineSyncStore::take_fetched_elsewhere`]).
    pub async fn write_back_fetched(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            let store = self.store.clone();
            let engine = store.engine().clone();
            let states = tokio::task::spawn_blocking(move || {
                store
                    .take_fetched_elsewhere()
                    .into_iter()
                    .filter_map(|(p, key)| {
                        let state = crate::states::load_whole(engine.as_ref(), &key).ok().flatten()?;
                        Some((p, key, crate::layout::encode_stored(&state)))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            // A key whose write-back did not reach every other replica is tried again next tick
            // (its state is read afresh then).
            let mut again = Vec::new();
            for (partition, key, state) in states {
                let mut delivered = true;
                for target in self.cluster.replicas(partition) {
                    if target == self.local {
                        continue;
                    }
                    if !self.cluster.reachable(target) {
                        delivered = false;
                        continue;
                    }
                    let message = PeerMessageV1::Repair { partition, key: key.clone(), state: state.clone() };
                    let ok = matches!(self.call(target, message, self.peer_timeout).await, Ok(PeerReplyV1::Applied));
                    metrics::counter!("meridian_sync_write_backs_total", "result" => if ok { "ok" } else { "failed" })
                        .increment(1);
                    delivered &= ok;
                }
                if !delivered {
                    again.push((partition, key));
                }
            }
            self.store.note_fetched_elsewhere(again);
        }
    }

    /// Until `shutdown`, once a second: finds the partitions this node holds data of without owning
    /// them (announced in gossip, so their owners pull them), and, while draining, measures the
    /// handoff — a partition is handed off once the version vector of each of its new owners
    /// covers this node's.
    pub async fn track_handoff(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            let (store, cluster) = (self.store.clone(), self.cluster.clone());
            let held = tokio::task::spawn_blocking(move || {
                let placements = cluster.all_placements();
                let mut held = Vec::new();
                for (p, replicas) in placements.iter().enumerate() {
                    let p = p as u16;
                    if replicas.contains(&cluster.local()) {
                        continue;
                    }
                    if let Ok(vv) = store.partition_vv(PartitionId(p)) {
                        if !vv.is_empty() {
                            held.push((p, vv));
                        }
                    }
                }
                held
            })
            .await
            .unwrap_or_default();
            self.cluster.set_local_handoff(held.iter().map(|(p, _)| *p).collect());
            if self.cluster.local_state() != meridian_replication::MemberState::Draining {
                self.cluster.set_handoff_progress(None);
                continue;
            }
            let mut synced = 0;
            for (partition, vv) in &held {
                let mut covered = true;
                for owner in self.cluster.replicas(*partition) {
                    if !self.partition_vv_on(owner, *partition).await.is_some_and(|theirs| theirs.dominates(vv)) {
                        covered = false;
                        break;
                    }
                }
                if covered {
                    synced += 1;
                }
            }
            self.cluster.set_handoff_progress(Some((synced, held.len())));
            metrics::gauge!("meridian_handoff_partitions_pending").set((held.len() - synced) as f64);
        }
    }

    /// Replays hints to targets that answer again, until `shutdown`.
    pub async fn replay_hints(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(HINT_REPLAY_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            for target in self.hints.targets() {
                if self.cluster.liveness(target) != Liveness::Alive {
                    continue;
                }
                if let Err(e) = self.replay_to(target).await {
                    tracing::debug!(target = %target, error = %e, "hint replay paused");
                }
            }
        }
    }

    async fn replay_to(&self, target: NodeId) -> Result<(), ReplayPaused> {
        loop {
            let hints = self.hints.clone();
            let batch = tokio::task::spawn_blocking(move || hints.peek(target, HINT_BATCH)).await??;
            if batch.is_empty() {
                return Ok(());
            }
            // One request per batch of hints, cut by size, each partition's hints in log order (one
            // hint alone always fits: it was a write the peer frame cap admitted). Across a WAN a
            // request costs a round trip: many partitions share one.
            let mut start = 0;
            while start < batch.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < batch.len() {
                    bytes += batch[end].record.wire_len();
                    if end > start && bytes > HINT_BATCH_BYTES {
                        break;
                    }
                    end += 1;
                }
                let mut pushes: Vec<Pushed> = Vec::new();
                for hint in &batch[start..end] {
                    match pushes.last_mut() {
                        Some(last) if last.partition == hint.partition => last.records.push(hint.record.clone()),
                        _ => pushes.push(Pushed {
                            partition: hint.partition,
                            records: vec![hint.record.clone()],
                            reports: Vec::new(),
                        }),
                    }
                }
                match self.call(target, PeerMessageV1::PushBatch { pushes, relay: false }, self.peer_timeout).await? {
                    PeerReplyV1::Applied => {}
                    other => return Err(PeerCallError::unexpected(&other).into()),
                }
                let keys: Vec<Vec<u8>> = batch[start..end].iter().map(|h| h.key.clone()).collect();
                metrics::counter!("meridian_hints_replayed_total").increment(keys.len() as u64);
                let hints = self.hints.clone();
                tokio::task::spawn_blocking(move || hints.remove(target, &keys)).await??;
                start = end;
            }
        }
    }
}
