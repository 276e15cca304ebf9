//! Writes in a region: the local replica makes the write durable, then it is pushed to the
//! partition's other replicas (and shipped once to each other region's entry point), acknowledged
//! per its level; a replica that does not take it gets a durable hint.

use std::sync::Arc;

use crate::telemetry::stage;
use meridian_client::proto::{CausalToken, Consistency, IdempotencyId, Key, Reply};
use meridian_crdt::NodeId;
use meridian_replication::antientropy::{KeyState, LogRecord as SyncRecord, PartitionId, SyncStore as _};
use meridian_replication::{AckRound, Outcome, QuorumSets};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument as _;

use super::{moving_note, unavailable, Coordinator, SHIP_BATCH_BYTES, SHIP_IN_FLIGHT, SHIP_QUEUE};
use crate::error::Error;
use crate::layout::{self, Stored};
use crate::peer::protocol::{PeerMessageV1, PeerReplyV1, Pushed};
use crate::replica::{Change, Kept};

impl Coordinator {
    /// A client write in the region: causal precondition on the local replica; at a quorum level a
    /// delete or remove first joins what a majority holds; then the write is made durable on the
    /// local replica, pushed to the other replicas and acknowledged per `level` (module docs).
    #[allow(clippy::too_many_arguments)] // a write's parts, as the replica takes them
    pub async fn write(
        self: &Arc<Self>,
        key: Key,
        change: Change,
        idempotency_id: Option<IdempotencyId>,
        token: CausalToken,
        level: Consistency,
        permit: OwnedSemaphorePermit,
    ) -> Result<Reply, Error> {
        let data_key = layout::data_key(&key);
        let partition = layout::partition_of(&data_key);
        self.replica.before_write(&token, level, partition).await?;
        let at_quorum = matches!(level, Consistency::LocalQuorum | Consistency::Quorum);
        // A delete or a remove takes away what its coordinator has observed; at a quorum level
        // that must include everything a majority holds (every write acknowledged at quorum
        // before it), so the coordinator first joins a quorum read of the key into its copy.
        if at_quorum && change.removes_observed() {
            let replicas = self.counted_replicas(level, &data_key);
            if let Some(merged) = self.quorum_read(&data_key, level, &replicas).instrument(stage("quorum_read")).await?
            {
                self.join_locally(&data_key, &merged).await?;
            }
        }
        let durable = self
            .replica
            .write_durably(key, change, idempotency_id, token, permit)
            .instrument(stage("local_write"))
            .await?;
        // The in-flight slot is held through the fan-out too: a write waiting on replicas is in flight.
        let _permit = durable.permit;
        let replicas = self.counted_replicas(level, &data_key);
        match durable.record {
            Some((partition, record)) => {
                let report = self.replica.own_report(partition);
                let push = Pushed { partition, records: vec![record], reports: vec![report] };
                let replicating = std::time::Instant::now();
                let replicated =
                    self.replicate(push, durable.kept, level, &replicas).instrument(stage("replicate")).await;
                crate::telemetry::write_stage("replicate", replicating);
                replicated?
            }
            None if at_quorum => {
                self.ensure_on_quorum(&data_key, level, &replicas).instrument(stage("ensure_on_quorum")).await?
            }
            None => {}
        }
        Ok(durable.reply)
    }

    /// Keeps `record` for `target` (a replica that did not take it). The hint is a durable write:
    /// off the reactor.
    ///
    /// A hint for a node of a region that may not hold the record's key is stored redacted (this
    /// node may hold the key; the hint is kept for the position, which the target needs).
    async fn hint(&self, target: NodeId, partition: u16, record: &SyncRecord) {
        let record = match self.cluster.region_of(target) {
            Some(region) => {
                self.residency.for_region(&region, vec![record.clone()]).pop().unwrap_or_else(|| record.clone())
            }
            None => record.clone(),
        };
        let hints = self.hints.clone();
        let stored = tokio::task::spawn_blocking(move || hints.add(target, partition, &record)).await;
        if !matches!(stored, Ok(Ok(_))) {
            tracing::warn!(target = %target, "could not store a hint; anti-entropy will repair the replica");
        }
    }

    /// Joins a key's state into this node's copy (a quorum read's merge, before a delete or remove
    /// that must see everything a majority has).
    pub async fn join_locally(&self, data_key: &[u8], state: &Stored) -> Result<(), Error> {
        let partition = layout::partition_of(data_key);
        let key_state = KeyState { key: data_key.to_vec(), state: layout::encode_stored(state) };
        let mut store = self.store.clone();
        tokio::task::spawn_blocking(move || store.apply_states(PartitionId(partition), &[key_state], None))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Pushes a record this node just made durable to the partition's other replicas and waits until
    /// `level` is met (or cannot be). `replicas` are the ones `level` counts: this region's, or every
    /// region's for a global `quorum`. Below `quorum` the record also goes to one replica in each other
    /// region, which spreads it in its own region (a write crosses each WAN link once); the client
    /// does not wait for those. The push's report tells the receivers which of this node's
    /// timestamps the record's position covers (for causal reads there); `kept`, the write's
    /// idempotency record, goes with it to the replicas `level` counts (version-4 peers), so a
    /// retry on any of them is applied once.
    pub async fn replicate(
        self: &Arc<Self>,
        push: Pushed,
        kept: Option<Kept>,
        level: Consistency,
        replicas: &QuorumSets,
    ) -> Result<(), Error> {
        let mut round = AckRound::for_write_in(level, replicas);
        round.ack(self.local);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let partition = push.partition;
        for target in replicas.all().into_iter().filter(|r| *r != self.local) {
            if !self.spawn_push(target, &push, kept.clone(), tx.clone()).await {
                round.fail(target);
            }
        }
        if level != Consistency::Quorum {
            for (_, entry) in self.cluster.remote_entry_points(partition) {
                if let Some(target) = entry {
                    self.ship_to_region(target, push.clone());
                }
            }
        }
        drop(tx);
        self.settle(&mut round, &mut rx).await;
        match round.outcome() {
            Outcome::Satisfied => Ok(()),
            _ => Err(unavailable(format!(
                "{level} needs {} of the key's {} replicas{}; {} acknowledged in time (the write is durable on those \
                 and will reach the rest by hinted handoff and anti-entropy; retry with the same idempotency id)",
                round.needed(),
                replicas.all().len(),
                moving_note(replicas),
                round.acked()
            ))),
        }
    }

    /// Hands `push` to the shipper of `target` (an entry point in another region), which sends what
    /// has queued up in one `PushBatch` per request, with a few requests in flight. One request per
    /// record would cap a WAN link at (streams per connection ÷ round trip) records per second; a
    /// batch carries everything that queued during the previous round trip. A full queue, or a
    /// target that is down, turns the push into a hint.
    fn ship_to_region(self: &Arc<Self>, target: NodeId, push: Pushed) {
        let sender = {
            let mut shippers = self.shippers.lock().unwrap_or_else(|p| p.into_inner());
            shippers
                .entry(target)
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(SHIP_QUEUE);
                    tokio::spawn(self.clone().ship(target, rx));
                    tx
                })
                .clone()
        };
        let refused = if self.cluster.reachable(target) {
            sender.try_send(push).err().map(|e| e.into_inner())
        } else {
            Some(push)
        };
        self.end_queues_if_stopping();
        if let Some(push) = refused {
            let me = self.clone();
            tokio::spawn(async move { me.hint_all(target, std::slice::from_ref(&push)).await });
        }
    }

    /// The shipper of one entry point in another region (see [`Coordinator::ship_to_region`]).
    async fn ship(self: Arc<Self>, target: NodeId, mut queue: mpsc::Receiver<Pushed>) {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(SHIP_IN_FLIGHT));
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
            let Some(first) = queue.recv().await else { return };
            let mut bytes: usize = first.records.iter().map(|r| r.wire_len()).sum();
            let mut batch = vec![first];
            while bytes < SHIP_BATCH_BYTES {
                let Ok(next) = queue.try_recv() else { break };
                bytes += next.records.iter().map(|r| r.wire_len()).sum::<usize>();
                batch.push(next);
            }
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                metrics::counter!("meridian_region_batches_total").increment(1);
                let message = PeerMessageV1::PushBatch { pushes: batch.clone(), relay: true };
                me.deliver_or_hint(target, "peer.push_batch", |_| message, &batch).await;
            });
        }
    }

    /// Spreads a batch another region's shipper sent here to this region's other replicas of each
    /// push's partition: one request per replica, hints for what it does not take.
    pub async fn fan_out_batch_in_region(self: &Arc<Self>, pushes: Vec<Pushed>) {
        let mut by_target: std::collections::BTreeMap<NodeId, Vec<Pushed>> = Default::default();
        for push in pushes {
            // Moving partitions' old and new replicas alike (a joining node takes writes too).
            for target in self.cluster.quorum_sets(Consistency::LocalQuorum, push.partition, None).all() {
                if target != self.local {
                    by_target.entry(target).or_default().push(push.clone());
                }
            }
        }
        let sends = by_target.into_iter().map(|(target, batch)| {
            let me = self.clone();
            async move {
                if me.cluster.reachable(target) {
                    let message = PeerMessageV1::PushBatch { pushes: batch.clone(), relay: false };
                    me.deliver_or_hint(target, "peer.push_batch", |_| message, &batch).await;
                } else {
                    me.hint_all(target, &batch).await;
                }
            }
        });
        futures::future::join_all(sends).await;
    }

    /// Sends the message `build` makes for the connection's protocol version (of kind `kind`), which
    /// carries `pushes`, to `target`; when it is not applied there, keeps a hint of every record for it.
    /// Returns whether it was applied.
    pub(super) async fn deliver_or_hint(
        &self,
        target: NodeId,
        kind: &'static str,
        build: impl FnOnce(u8) -> PeerMessageV1,
        pushes: &[Pushed],
    ) -> bool {
        let applied = match self.call_versioned(target, kind, build, self.peer_timeout).await {
            Ok(PeerReplyV1::Applied) => true,
            Ok(other) => {
                tracing::warn!(target = %target, "replica refused a write: {other:?}");
                false
            }
            Err(e) => {
                tracing::debug!(target = %target, error = %e, "push failed");
                false
            }
        };
        if !applied {
            self.hint_all(target, pushes).await;
        }
        applied
    }

    /// Keeps a hint for `target` of every record in `pushes` (see [`Coordinator::hint`]).
    pub(super) async fn hint_all(&self, target: NodeId, pushes: &[Pushed]) {
        for push in pushes {
            for record in &push.records {
                self.hint(target, push.partition, record).await;
            }
        }
    }

    /// Makes sure the key's state here is durable on enough replicas for `level`, by writing it back
    /// to the others. For a write answered without a new record — a retry replayed from its
    /// idempotency record — whose first attempt may have reached fewer replicas than its level
    /// needs: the state here contains that write, so once a quorum holds the state, it holds the write.
    pub async fn ensure_on_quorum(
        self: &Arc<Self>,
        data_key: &[u8],
        level: Consistency,
        replicas: &QuorumSets,
    ) -> Result<(), Error> {
        let Some(state) = self.replica.stored_state(data_key)? else { return Ok(()) };
        let partition = layout::partition_of(data_key);
        let mut round = AckRound::for_write_in(level, replicas);
        round.ack(self.local);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for target in replicas.all().into_iter().filter(|r| *r != self.local && self.cluster.reachable(*r)) {
            let (me, tx, key, state) = (self.clone(), tx.clone(), data_key.to_vec(), state.clone());
            tokio::spawn(
                async move {
                    let message = PeerMessageV1::Repair { partition, key, state };
                    let ok = matches!(me.call(target, message, me.peer_timeout).await, Ok(PeerReplyV1::Applied));
                    let _ = tx.send((target, ok));
                }
                .in_current_span(),
            );
        }
        drop(tx);
        self.settle(&mut round, &mut rx).await;
        match round.outcome() {
            Outcome::Satisfied => Ok(()),
            _ => Err(unavailable(format!(
                "{level} needs {} of the key's {} replicas{}; {} hold the retried write",
                round.needed(),
                replicas.all().len(),
                moving_note(replicas),
                round.acked()
            ))),
        }
    }

    /// Feeds answers into `round` until it is decided or the peer timeout passes.
    pub(super) async fn settle(&self, round: &mut AckRound, rx: &mut mpsc::UnboundedReceiver<(NodeId, bool)>) {
        let deadline = tokio::time::sleep(self.peer_timeout);
        tokio::pin!(deadline);
        while round.outcome() == Outcome::Pending {
            tokio::select! {
                answer = rx.recv() => match answer {
                    Some((target, true)) => round.ack(target),
                    Some((target, false)) => round.fail(target),
                    None => round.expire(),
                },
                _ = &mut deadline => round.expire(),
            }
        }
    }
}
