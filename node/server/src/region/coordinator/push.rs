//! Coalesced pushes: one queue per replica, drained into as few requests as the load allows.
//!
//! A write's record goes to each of its partition's other replicas. Sent one request per record,
//! every write costs each replica a stream, a request to decode, a blocking task and a commit of
//! its own, and under load those per-request costs — not the disk, whose fsyncs group commit
//! already shares — bound a region's `local_quorum` rate. So each target has a *pusher*: a queue,
//! and at most [`PUSH_IN_FLIGHT`] requests in flight to it. A request carries the first push
//! waiting and whatever queued behind it (up to [`PUSH_BATCH_MAX`] pushes or about
//! [`PUSH_BATCH_BYTES`]): at low load that is one push, sent at once as a plain `Push`, as before;
//! under load it is what queued while the earlier requests were in flight — group commit's shape,
//! on the wire. The replica applies a batch's partitions side by side, so their commits share
//! its group commits (`api/peer_service.rs`, `accept_pushes_into`).
//!
//! Each write still hears about its own push: a batch's verdict goes to every write in it, and a
//! batch that is not applied leaves a hint of each of its records, exactly as a single push does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use meridian_crdt::NodeId;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use super::Coordinator;
use crate::layout::IDEMPOTENT_RECORDS_VERSION;
use crate::peer::protocol::{PeerMessageV1, Pushed};
use crate::replica::Kept;

/// Requests in flight to one target at once; what arrives meanwhile waits for the next one.
const PUSH_IN_FLIGHT: usize = 4;
/// Pushes in one request, at most.
const PUSH_BATCH_MAX: usize = 256;
/// Bytes of records in one request, about (well under the peer frame cap).
const PUSH_BATCH_BYTES: usize = 1 << 20;

/// One write's push, waiting in its target's queue.
pub(super) struct PushJob {
    push: Pushed,
    /// The write's idempotency record, for a target that speaks version 4 only (from version 5 it
    /// travels inside the pushed record).
    kept: Option<Kept>,
    /// Where the verdict goes: the write's acknowledgement round.
    done: mpsc::UnboundedSender<(NodeId, bool)>,
    /// The write's slot among the pushes in flight, held until the verdict.
    _slot: OwnedSemaphorePermit,
    /// The write's span: a request carrying this push first is traced under it.
    span: tracing::Span,
}

impl Coordinator {
    /// Writes this node pushed in a request shared with other writes, since it started.
    pub fn batched_pushes(&self) -> u64 {
        self.batched_pushes.load(Ordering::Relaxed)
    }

    /// Queues `push` for `target`; its verdict goes to `done`, and a push that is not applied
    /// leaves a hint first. Returns false — after leaving the hint, durable before the caller
    /// hears — when the push was not queued: the target is down, or too many pushes are in flight.
    pub(super) async fn spawn_push(
        self: &Arc<Self>,
        target: NodeId,
        push: &Pushed,
        kept: Option<Kept>,
        done: mpsc::UnboundedSender<(NodeId, bool)>,
    ) -> bool {
        let remote = self.cluster.region_of(target).is_some_and(|r| r != self.cluster.region());
        let slots = if remote { &self.remote_push_slots } else { &self.push_slots };
        let slot = slots.clone().try_acquire_owned().ok();
        let Some(slot) = slot.filter(|_| self.cluster.reachable(target)) else {
            self.hint_all(target, std::slice::from_ref(push)).await;
            return false;
        };
        let job = PushJob { push: push.clone(), kept, done, _slot: slot, span: tracing::Span::current() };
        let sent = self.pusher_of(target).send(job);
        self.end_queues_if_stopping();
        match sent {
            Ok(()) => true,
            // The pusher ended: only when the runtime is shutting down.
            Err(refused) => {
                self.hint_all(target, std::slice::from_ref(&refused.0.push)).await;
                false
            }
        }
    }

    /// The queue of `target`'s pusher, started on first use (and again should it have ended).
    fn pusher_of(self: &Arc<Self>, target: NodeId) -> mpsc::UnboundedSender<PushJob> {
        let mut pushers = self.pushers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = pushers.get(&target).filter(|sender| !sender.is_closed()) {
            return sender.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().push_to(target, rx));
        pushers.insert(target, tx.clone());
        tx
    }

    /// The pusher of `target`: sends what has queued, a batch per request, with up to
    /// [`PUSH_IN_FLIGHT`] requests in flight. The queue is bounded by the push slots its jobs hold.
    /// It ends once its queue is dropped (at shutdown) and empty.
    async fn push_to(self: Arc<Self>, target: NodeId, mut queue: mpsc::UnboundedReceiver<PushJob>) {
        let in_flight = Arc::new(Semaphore::new(PUSH_IN_FLIGHT));
        // Whether the target's connection was last seen speaking a version whose pushed records
        // carry their idempotency records: only then may several writes share a request. Before
        // it (a connection not yet seen, or a peer of version 4 or earlier), a write's record went
        // beside its push: each push is sent at once in a request of its own, as many in flight
        // as the push slots allow, as before batching.
        let batches = Arc::new(AtomicBool::new(false));
        loop {
            let Some(first) = queue.recv().await else { return };
            let permit = if batches.load(Ordering::Relaxed) {
                // What queues while this waits goes in the same request.
                let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
                Some(permit)
            } else {
                None
            };
            let mut bytes = records_len(&first.push);
            let mut jobs = vec![first];
            while permit.is_some() && jobs.len() < PUSH_BATCH_MAX && bytes < PUSH_BATCH_BYTES {
                let Ok(next) = queue.try_recv() else { break };
                bytes += records_len(&next.push);
                jobs.push(next);
            }
            let span = jobs[0].span.clone();
            let (me, batches) = (self.clone(), batches.clone());
            tokio::spawn(
                async move {
                    let _permit = permit;
                    me.send_pushes(target, jobs, &batches).await;
                }
                .instrument(span),
            );
        }
    }

    /// Sends `jobs` to `target` in one request (hinting every record if it is not applied) and
    /// tells each write the verdict. Notes in `batches` whether the connection speaks a version
    /// that takes batches of writes.
    async fn send_pushes(&self, target: NodeId, jobs: Vec<PushJob>, batches: &AtomicBool) {
        let note_version = |version: u8| batches.store(version >= IDEMPOTENT_RECORDS_VERSION, Ordering::Relaxed);
        let pushes: Vec<Pushed> = jobs.iter().map(|job| job.push.clone()).collect();
        let applied = if let [job] = jobs.as_slice() {
            let message = |version: u8| {
                note_version(version);
                match job.kept.clone() {
                    Some((id, record)) if version == 4 => {
                        PeerMessageV1::PushIdempotent { push: job.push.clone(), id: id.0, record }
                    }
                    _ => PeerMessageV1::Push {
                        partition: job.push.partition,
                        records: job.push.records.clone(),
                        reports: job.push.reports.clone(),
                        relay: false,
                    },
                }
            };
            self.deliver_or_hint(target, "peer.push", message, &pushes).await
        } else {
            metrics::counter!("meridian_push_batches_total").increment(1);
            metrics::counter!("meridian_push_batched_writes_total").increment(jobs.len() as u64);
            self.batched_pushes.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            // A connection that came back at a version before 5 (a peer downgraded meanwhile)
            // gets this one batch with the records' idempotency records stripped, as hint replay
            // sends them; the pusher sends one push per request from then on.
            let message = |version: u8| {
                note_version(version);
                PeerMessageV1::PushBatch { pushes: pushes.clone(), relay: false }
            };
            self.deliver_or_hint(target, "peer.push_batch", message, &pushes).await
        };
        for job in jobs {
            let _ = job.done.send((target, applied));
        }
    }
}

/// The wire size of a push's records.
fn records_len(push: &Pushed) -> usize {
    push.records.iter().map(|record| record.wire_len()).sum()
}
