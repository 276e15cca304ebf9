//! Reads in a region: `eventual`/`causal` from the local replica; `local_quorum`/`quorum` from a
//! majority of the key's replicas, joined and written back to a majority before returning.
use std::sync::Arc;

use crate::telemetry::stage;
use meridian_client::proto::{CausalToken, Consistency, Key};
use meridian_crdt::Entry;
use meridian_replication::antientropy::{KeyState, PartitionId, SyncStore as _};
use meridian_replication::{Outcome, QuorumSets, ReadRound};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::{moving_note, unavailable, Coordinator};
use crate::error::Error;
use crate::layout::{self, Stored};
use crate::peer::protocol::{PeerCallError, PeerMessageV1, PeerReplyV1};

impl Coordinator {
    /// Reads a key for a client: at `local_quorum`/`quorum` from a majority of the replicas the level
    /// counts (the token gains the key's dependencies only: a read depends on what it shows, not on
    /// everything this node wrote), at the other levels from the local replica.
    pub async fn read_entry(
        self: &Arc<Self>,
        key: &Key,
        token: CausalToken,
        level: Consistency,
    ) -> Result<(Option<Entry>, CausalToken), Error> {
        if !matches!(level, Consistency::LocalQuorum | Consistency::Quorum) {
            return self.replica.read_entry(key, token, level).await;
        }
        let data_key = layout::data_key(key);
        let mut after = token;
        let replicas = self.counted_replicas(level, &data_key);
        let stored = self.quorum_read(&data_key, level, &replicas).instrument(stage("quorum_read")).await?;
        if let Some(stored) = &stored {
            after.0.merge(&stored.deps);
        }
        Ok((stored.map(|s| s.entry), after))
    }

    /// A quorum read of `data_key` with write-back (see the module docs).
    pub async fn quorum_read(
        self: &Arc<Self>,
        data_key: &[u8],
        level: Consistency,
        replicas: &QuorumSets,
    ) -> Result<Option<Stored>, Error> {
        let partition = layout::partition_of(data_key);
        let mut round: ReadRound<Stored> = ReadRound::over(level, replicas);
        if replicas.contains(self.local) {
            round.reply(self.local, self.replica.load_stored(data_key)?);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        for target in replicas.all().into_iter().filter(|r| *r != self.local) {
            if !self.cluster.reachable(target) {
                round.fail(target);
                continue;
            }
            let (me, tx, key) = (self.clone(), tx.clone(), data_key.to_vec());
            tokio::spawn(
                async move {
                    let state = match me.call(target, PeerMessageV1::ReadKey { key }, me.peer_timeout).await {
                        Ok(PeerReplyV1::State(None)) => Ok(None),
                        Ok(PeerReplyV1::State(Some(bytes))) => layout::decode_stored(&bytes)
                            .map(Some)
                            .map_err(|e| PeerCallError::Undecodable(format!("state: {e}"))),
                        Ok(other) => Err(PeerCallError::unexpected(&other)),
                        Err(e) => Err(e),
                    };
                    let _ = tx.send((target, state));
                }
                .in_current_span(),
            );
        }
        drop(tx);
        let deadline = tokio::time::sleep(self.peer_timeout);
        tokio::pin!(deadline);
        while round.outcome() == Outcome::Pending {
            tokio::select! {
                answer = rx.recv() => match answer {
                    Some((target, Ok(state))) => round.reply(target, state),
                    Some((target, Err(e))) => {
                        tracing::debug!(target = %target, error = %e, "quorum read: replica failed");
                        round.fail(target);
                    }
                    None => round.expire(),
                },
                _ = &mut deadline => round.expire(),
            }
        }
        if let Outcome::Unavailable { acked, needed } = round.outcome() {
            return Err(unavailable(format!(
                "{level} read needs {needed} of the key's {} replicas{}; {acked} answered in time",
                replicas.all().len(),
                moving_note(replicas)
            )));
        }
        let merged = round
            .merged(|acc: &mut Stored, other: &Stored| acc.try_join(other))
            .map_err(|e| Error::Internal(format!("replicas disagree on the key's type: {e}")))?;
        let stale = round.stale(&merged);
        let mut repair = round.repair(&merged);
        if let (Some(state), false) = (&merged, stale.is_empty()) {
            metrics::counter!("meridian_read_repairs_total").increment(stale.len() as u64);
            let encoded = layout::encode_stored(state);
            let (tx, mut rx) = mpsc::unbounded_channel();
            for target in stale {
                let (me, tx, key, state) = (self.clone(), tx.clone(), data_key.to_vec(), encoded.clone());
                tokio::spawn(
                    async move {
                        let ok = if target == me.local {
                            let mut store = me.store.clone();
                            tokio::task::spawn_blocking(move || {
                                store.apply_states(PartitionId(partition), &[KeyState { key, state }], None)
                            })
                            .await
                            .is_ok_and(|applied| applied.is_ok())
                        } else {
                            let message = PeerMessageV1::Repair { partition, key, state };
                            matches!(me.call(target, message, me.peer_timeout).await, Ok(PeerReplyV1::Applied))
                        };
                        let _ = tx.send((target, ok));
                    }
                    .in_current_span(),
                );
            }
            drop(tx);
            self.settle(&mut repair, &mut rx).await;
        }
        match repair.outcome() {
            Outcome::Satisfied => Ok(merged),
            _ => Err(unavailable(format!(
                "{level} read could not write the merged state back to a majority of the key's {} replicas{} \
                 ({} of {} needed write-backs succeeded)",
                replicas.all().len(),
                moving_note(replicas),
                repair.acked(),
                repair.needed()
            ))),
        }
    }
}
