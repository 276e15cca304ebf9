//! Leaderless coordination in a region: any node accepts any request and coordinates it.
//!
//! * **Routing.** Only replicas coordinate writes (every write's origin holds its partition's log):
//!   a node that is not a replica of the key forwards the whole request to the first reachable
//!   replica in placement order and relays the reply.
//! * **Writes.** The coordinating replica makes the write durable locally (its log position,
//!   version vector and state in one batch), then pushes the log record to the other replicas at
//!   once and acknowledges per the level ([`AckRound`](meridian_replication::AckRound)): `eventual`/`causal` after the local write,
//!   `local_quorum`/`quorum` once a majority of the partition's replicas hold it durably. A replica
//!   that fails or is down gets a durable hint ([`crate::region::hints`]), replayed when it answers again.
//! * **Reads.** `eventual`/`causal` read the coordinating replica. `local_quorum`/`quorum` read a
//!   majority ([`ReadRound`](meridian_replication::ReadRound)), join the states, and write the joined state back to stale replicas
//!   until a majority holds it *before* returning — so a later quorum read, which intersects that
//!   majority, never returns less, and every write acknowledged at a quorum level before the read
//!   began is in the answer. Replicas beyond the majority that answered stale are repaired too
//!   (read repair), without waiting for them.
//!
//! When too few replicas answer within the peer timeout the client gets `quorum_unavailable`,
//! saying how many answered; a write refused this way may still have been applied on the replicas
//! that did acknowledge (and will spread from them): retry it with the same idempotency id.

use std::sync::Arc;
use std::time::Duration;

use meridian_client::proto::{Consistency, RequestV1};
use meridian_crdt::NodeId;
use meridian_replication::antientropy::LogRecord as SyncRecord;
use meridian_replication::QuorumSets;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::error::Error;
use crate::layout;
use crate::peer::protocol::{decode_reply, encode_request, PeerCallError, PeerMessageV1, PeerReplyV1, Pushed};
use crate::peer::PeerPool;
use crate::region::cluster::Cluster;
use crate::region::hints::Hints;
use crate::region::sync_threads::SyncThreads;
use crate::replica::Replica;
use crate::residency::Residency;
use crate::store::sync_store::EngineSyncStore;

mod moves;
pub use moves::MoveRefused;
mod push;
mod read;
mod routing;
mod upkeep;
mod write;

/// Hints replayed per request, at most.
const HINT_BATCH: usize = 4096;
/// Bytes of hints replayed per request, at most (well under the peer frame cap).
const HINT_BATCH_BYTES: usize = 2 << 20;
/// Pushes to replicas in flight at once; beyond, writes leave hints instead.
const MAX_PUSHES_IN_FLIGHT: usize = 8192;
/// Pushes queued per entry point in another region before further ones become hints.
const SHIP_QUEUE: usize = 65_536;
/// Requests in flight per entry point in another region.
const SHIP_IN_FLIGHT: usize = 16;
/// Bytes of records a shipper puts in one request, about (well under the peer frame cap).
const SHIP_BATCH_BYTES: usize = 1 << 20;
/// Time between hint replay passes.
const HINT_REPLAY_INTERVAL: Duration = Duration::from_millis(500);

/// The region-side half of a node: talks to the other replicas.
pub struct Coordinator {
    local: NodeId,
    /// The local replica: every write this node coordinates is made durable there first.
    replica: Arc<Replica>,
    cluster: Arc<Cluster>,
    pool: Arc<PeerPool>,
    store: EngineSyncStore,
    hints: Arc<Hints>,
    /// How long a replica may take to answer one request.
    peer_timeout: Duration,
    /// The anti-entropy threads (for their progress).
    sync_threads: Arc<SyncThreads>,
    /// Pushes to this region's replicas queued or in flight (each a write waiting on a replica), bounded.
    push_slots: Arc<tokio::sync::Semaphore>,
    /// Pushes in flight to other regions, bounded separately: a slow region must not use up the
    /// slots this region's quorums need.
    remote_push_slots: Arc<tokio::sync::Semaphore>,
    /// Replication lag from every other region.
    lag: crate::region::lag::LagStats,
    /// Per entry point in another region, the queue of its shipper ([`Coordinator::ship_to_region`]).
    shippers: std::sync::Mutex<std::collections::HashMap<NodeId, mpsc::Sender<Pushed>>>,
    /// Per replica this node pushes writes to, the queue of its pusher (`push.rs`).
    pushers: std::sync::Mutex<std::collections::HashMap<NodeId, mpsc::UnboundedSender<push::PushJob>>>,
    /// Writes pushed in a request shared with other writes, since start.
    batched_pushes: std::sync::atomic::AtomicU64,
    /// Set at shutdown ([`Coordinator::stop_shipping`]): queues started later are dropped at once.
    stopping: std::sync::atomic::AtomicBool,
    /// The node's residency rules: every request to a peer is screened by the peer's region.
    residency: Arc<Residency>,
}

pub(crate) fn unavailable(message: String) -> Error {
    Error::QuorumUnavailable(message)
}

/// Says, in a refusal, that the key's partition is moving (a majority of its old and of its new
/// replicas is needed).
pub(crate) fn moving_note(replicas: &QuorumSets) -> &'static str {
    if replicas.is_moving() {
        " (its partition is moving: a majority of both its old and its new replicas)"
    } else {
        ""
    }
}

impl Coordinator {
    /// The coordinator of `replica` in `cluster`.
    pub fn new(
        replica: Arc<Replica>,
        cluster: Arc<Cluster>,
        pool: Arc<PeerPool>,
        hints: Arc<Hints>,
        peer_timeout: Duration,
        sync_threads: Arc<SyncThreads>,
    ) -> Coordinator {
        Coordinator {
            residency: replica.residency().clone(),
            store: replica.sync_store(),
            replica,
            local: cluster.local(),
            cluster,
            pool,
            hints,
            peer_timeout,
            sync_threads,
            push_slots: Arc::new(tokio::sync::Semaphore::new(MAX_PUSHES_IN_FLIGHT)),
            remote_push_slots: Arc::new(tokio::sync::Semaphore::new(MAX_PUSHES_IN_FLIGHT)),
            lag: crate::region::lag::LagStats::default(),
            shippers: std::sync::Mutex::new(std::collections::HashMap::new()),
            pushers: std::sync::Mutex::new(std::collections::HashMap::new()),
            batched_pushes: std::sync::atomic::AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The local replica.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// The replicas a request for `data_key` at `level` counts: those of regions its residency rule
    /// allows (quorums count only allowed replicas), as old and new sets while the key's partition
    /// moves ([`Cluster::quorum_sets`]).
    fn counted_replicas(&self, level: Consistency, data_key: &[u8]) -> QuorumSets {
        let rule = self.residency.rule_for(data_key);
        let partition = layout::partition_of(data_key);
        self.cluster.quorum_sets(level, partition, rule.as_ref().map(|r| r.spec.regions.as_slice()))
    }

    /// Where a keyed request goes when this node holds no replica of its key: the key's replicas.
    /// `None`: run it here.
    pub fn route(&self, request: &RequestV1) -> Option<Vec<NodeId>> {
        // An invalid key is refused here, not forwarded.
        let data_key = layout::keyed_data_key(&request.op)?;
        let replicas = self.cluster.replicas(layout::partition_of(&data_key));
        if replicas.is_empty() || replicas.contains(&self.local) {
            return None;
        }
        Some(replicas)
    }

    /// The pool of connections to peers.
    pub fn pool(&self) -> &Arc<PeerPool> {
        &self.pool
    }

    /// Sends this node's authentication metadata to every peer now (after an admin changed it), in
    /// the background; gossip repeats it anyway.
    pub fn spread_auth(&self) {
        let (replica, cluster, pool) = (self.replica.clone(), self.cluster.clone(), self.pool.clone());
        tokio::spawn(async move {
            crate::region::gossip::exchange_auth(&replica, &cluster, &pool, std::time::Duration::from_secs(2)).await;
        });
    }

    /// Ends the cross-region shippers and the replicas' pushers once what they hold is sent: each
    /// is a task that owns a clone of this coordinator and waits on its queue, whose sender this
    /// coordinator holds — without dropping the senders at shutdown, the coordinator (and the
    /// storage under it) would never be freed, and a node restarted in the same process could not
    /// open its data directory. A write still finishing afterwards queues its push on a new queue
    /// that is dropped again at once (`Coordinator::end_queues_if_stopping`): its task sends the
    /// push, then ends.
    pub fn stop_shipping(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_queues();
    }

    /// Drops the shippers' and pushers' queues if shutdown began: called after a push was queued,
    /// since the write may have started a queue again after [`Coordinator::stop_shipping`].
    fn end_queues_if_stopping(&self) {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            self.drop_queues();
        }
    }

    /// Drops every shipper's and pusher's queue: each task ends once it has sent what it holds.
    fn drop_queues(&self) {
        self.shippers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.pushers.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The anti-entropy threads.
    pub fn sync_threads(&self) -> &Arc<SyncThreads> {
        &self.sync_threads
    }

    /// The region view.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Replication lag from every other region.
    pub fn lag(&self) -> &crate::region::lag::LagStats {
        &self.lag
    }

    /// Notes records made durable here: those of another region's origins count towards the lag
    /// from that region.
    pub fn note_applied(&self, records: &[SyncRecord]) {
        let mut last: Option<(NodeId, Option<String>)> = None;
        for record in records {
            let region = match &last {
                Some((origin, region)) if *origin == record.origin => region.clone(),
                _ => {
                    let region = self.cluster.region_of(record.origin).filter(|r| r != self.cluster.region());
                    last = Some((record.origin, region.clone()));
                    region
                }
            };
            if let Some(region) = region {
                self.lag.record(&region, meridian_crdt::Hlc::unpack(record.hlc).wall_ms);
            }
        }
    }

    /// The hint store.
    pub fn hints(&self) -> &Arc<Hints> {
        &self.hints
    }

    fn name(&self, node: NodeId) -> String {
        self.cluster.member(node).map_or_else(|| node.to_string(), |m| m.name)
    }

    /// Sends one request to `target` and decodes its reply; a reply of any kind is a heartbeat.
    ///
    /// Every request goes through here, so this is where residency is enforced on the way out: the
    /// target's region is the one in its certificate (a member whose membership entry claims
    /// another is refused), and the message is screened for it (`Coordinator::screen_for`).
    pub async fn call(
        &self,
        target: NodeId,
        message: PeerMessageV1,
        timeout: Duration,
    ) -> Result<PeerReplyV1, PeerCallError> {
        let kind = message.kind();
        self.call_versioned(target, kind, |_| message, timeout).await
    }

    /// [`Coordinator::call`] with the message built for the protocol version of the very
    /// connection it is sent on (`build` gets it): a variant newer than the peer agreed to is never
    /// sent. `kind` names the call's span (the message's kind, whatever the version).
    pub async fn call_versioned(
        &self,
        target: NodeId,
        kind: &'static str,
        build: impl FnOnce(u8) -> PeerMessageV1,
        timeout: Duration,
    ) -> Result<PeerReplyV1, PeerCallError> {
        let addr = self.cluster.peer_addr(target).ok_or(PeerCallError::NoAddress(target))?;
        let screened = !self.residency.rules().rules.is_empty();
        let build = |version: u8, peer: &crate::peer::PeerIdentity| -> Result<Vec<u8>, PeerCallError> {
            let message = build(version).for_version(version);
            let message = if screened {
                let certified = peer.region.as_str();
                if let Some(claimed) = self.cluster.region_of(target).filter(|claimed| claimed != certified) {
                    self.residency.note_rejected(
                        0,
                        &format!("node {target} claims region {claimed} but its certificate says {certified}"),
                    );
                    return Err(PeerCallError::NotSent(format!(
                        "node {target} claims region {claimed} but its certificate was issued for region {certified}"
                    )));
                }
                self.screen_for(certified, message)?
            } else {
                message
            };
            Ok(encode_request(self.local, message))
        };
        // A client span of the call (child of the request being served, if any): the peer's span
        // for it is its child, through the stream header.
        let span = crate::telemetry::peer_call_span(kind, &target);
        let (_, _, reply) = self
            .pool
            .request_built(addr, None, build, timeout)
            .instrument(span)
            .await
            .map_err(|e| PeerCallError::Transport(e.to_string()))??;
        self.cluster.heartbeat(target);
        decode_reply(&reply)
    }

    /// `message` as a node of `region` may receive it: records of keys it may not hold redacted
    /// ([`Residency::for_region`]); a key's state, a read of it or a client request for it refused.
    fn screen_for(&self, region: &str, message: PeerMessageV1) -> Result<PeerMessageV1, PeerCallError> {
        let residency = &self.residency;
        let refuse = |data_key: &[u8]| -> Result<(), PeerCallError> {
            match residency.rule_for(data_key).filter(|rule| !meridian_replication::residency::allows(rule, region)) {
                Some(rule) => Err(PeerCallError::NotSent(format!(
                    "residency rule {} keeps this key out of region {region}",
                    rule.id
                ))),
                None => Ok(()),
            }
        };
        Ok(match message {
            PeerMessageV1::Replicate { partition, records } => {
                PeerMessageV1::Replicate { partition, records: residency.for_region(region, records) }
            }
            PeerMessageV1::Push { partition, records, reports, relay } => {
                PeerMessageV1::Push { partition, records: residency.for_region(region, records), reports, relay }
            }
            PeerMessageV1::PushBatch { pushes, relay } => PeerMessageV1::PushBatch {
                pushes: pushes
                    .into_iter()
                    .map(|push| Pushed { records: residency.for_region(region, push.records), ..push })
                    .collect(),
                relay,
            },
            PeerMessageV1::PushIdempotent { push, id, record } => {
                // The idempotency record names the key and the reply: it goes only where the key may.
                let allowed = push.records.iter().all(|r| refuse(&r.key).is_ok());
                let push = Pushed { records: residency.for_region(region, push.records), ..push };
                if allowed {
                    PeerMessageV1::PushIdempotent { push, id, record }
                } else {
                    PeerMessageV1::Push {
                        partition: push.partition,
                        records: push.records,
                        reports: push.reports,
                        relay: false,
                    }
                }
            }
            PeerMessageV1::Repair { partition, key, state } => {
                refuse(&key)?;
                PeerMessageV1::Repair { partition, key, state }
            }
            PeerMessageV1::ReadKey { key } => {
                refuse(&key)?;
                PeerMessageV1::ReadKey { key }
            }
            PeerMessageV1::Forward(request) => {
                if let Some(data_key) = layout::keyed_data_key(&request.op) {
                    refuse(&data_key)?;
                }
                PeerMessageV1::Forward(request)
            }
            other => other,
        })
    }
}
