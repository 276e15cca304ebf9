//! Leaderless coordination in a region: any node accepts any request and coordinates it.
//!
//! * **Routing.** Only replicas coordinate writes (every write's origin holds its partition's log):
//!   a node that is not a replica of the key forwards the whole request to the first reachable
//!   replica in placement order and relays the reply.
//! * **Writes.** The coordinating replica makes the write durable locally (its log position,
//!   version vector and state in one batch), then pushes the log record to the other replicas at
//!   once and acknowledges per the level ([`AckRound`]): `eventual`/`causal` after the local write,
//!   `local_quorum`/`quorum` once a majority of the partition's replicas hold it durably. A replica
//!   that fails or is down gets a durable hint ([`crate::hints`]), replayed when it answers again.
//! * **Reads.** `eventual`/`causal` read the coordinating replica. `local_quorum`/`quorum` read a
//!   majority ([`ReadRound`]), join the states, and write the joined state back to stale replicas
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

use meridian_client::proto::{Consistency, ErrorCode, ErrorReply, Reply, RequestV1};
use meridian_crdt::NodeId;
use meridian_replication::antientropy::{KeyState, LogRecord as SyncRecord, PartitionId, SyncStore as _};
use meridian_replication::{AckRound, Liveness, Outcome, ReadRound, SafeReport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::gossip::SyncThreads;
use crate::hints::Hints;
use crate::keyspace::{self, Stored};
use crate::node::Node;
use crate::peer::PeerPool;
use crate::peer_service::{decode_reply, encode_request, PeerMessageV1, PeerReplyV1};
use crate::residency::Residency;
use crate::sync_store::EngineSyncStore;

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

/// Records of one partition on their way to another replica, with what they prove about their
/// origins' logs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Pushed {
    /// The partition.
    pub partition: u16,
    /// The records, each under its origin's position.
    pub records: Vec<SyncRecord>,
    /// Safe-time reports about the records' origins.
    pub reports: Vec<SafeReport>,
}

/// The region-side half of a node: talks to the other replicas.
pub struct Coordinator {
    local: NodeId,
    cluster: Arc<Cluster>,
    pool: Arc<PeerPool>,
    store: EngineSyncStore,
    hints: Arc<Hints>,
    /// How long a replica may take to answer one request.
    peer_timeout: Duration,
    /// The anti-entropy threads (for their progress).
    sync_threads: Arc<SyncThreads>,
    /// Pushes in flight to this region's replicas (each a task waiting on a replica), bounded.
    push_slots: Arc<tokio::sync::Semaphore>,
    /// Pushes in flight to other regions, bounded separately: a slow region must not use up the
    /// slots this region's quorums need.
    remote_push_slots: Arc<tokio::sync::Semaphore>,
    /// Replication lag from every other region.
    lag: crate::lag::LagStats,
    /// Per entry point in another region, the queue of its shipper ([`Coordinator::ship_to_region`]).
    shippers: std::sync::Mutex<std::collections::HashMap<NodeId, mpsc::Sender<Pushed>>>,
    /// The node's residency rules: every request to a peer is screened by the peer's region.
    residency: Arc<Residency>,
}

fn unavailable(message: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::QuorumUnavailable, message)
}

impl Coordinator {
    /// A coordinator for the node `local` of `cluster`.
    pub fn new(
        cluster: Arc<Cluster>,
        pool: Arc<PeerPool>,
        store: EngineSyncStore,
        hints: Arc<Hints>,
        peer_timeout: Duration,
        sync_threads: Arc<SyncThreads>,
        residency: Arc<Residency>,
    ) -> Coordinator {
        Coordinator {
            residency,
            local: cluster.local(),
            cluster,
            pool,
            store,
            hints,
            peer_timeout,
            sync_threads,
            push_slots: Arc::new(tokio::sync::Semaphore::new(MAX_PUSHES_IN_FLIGHT)),
            remote_push_slots: Arc::new(tokio::sync::Semaphore::new(MAX_PUSHES_IN_FLIGHT)),
            lag: crate::lag::LagStats::default(),
            shippers: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The pool of connections to peers.
    pub fn pool(&self) -> &Arc<PeerPool> {
        &self.pool
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
    pub fn lag(&self) -> &crate::lag::LagStats {
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
    pub async fn call(&self, target: NodeId, message: PeerMessageV1, timeout: Duration) -> Result<PeerReplyV1, String> {
        let addr = self.cluster.peer_addr(target).ok_or_else(|| format!("no address known for node {target}"))?;
        let message = if self.residency.rules().rules.is_empty() {
            message
        } else {
            let connection = tokio::time::timeout(timeout, self.pool.get(addr, None))
                .await
                .map_err(|_| format!("connecting to node {target}: timed out"))?
                .map_err(|e| e.to_string())?;
            let certified = connection.peer().region.clone();
            if let Some(claimed) = self.cluster.region_of(target).filter(|claimed| *claimed != certified) {
                self.residency.note_rejected(
                    0,
                    &format!("node {target} claims region {claimed} but its certificate says {certified}"),
                );
                return Err(format!(
                    "node {target} claims region {claimed} but its certificate was issued for region {certified}"
                ));
            }
            self.screen_for(&certified, message)?
        };
        let reply = self
            .pool
            .request(addr, None, encode_request(self.local, message), timeout)
            .await
            .map_err(|e| e.to_string())?;
        self.cluster.heartbeat(target);
        decode_reply(&reply)
    }

    /// `message` as a node of `region` may receive it: records of keys it may not hold redacted
    /// ([`Residency::for_region`]); a key's state, a read of it or a client request for it refused.
    fn screen_for(&self, region: &str, message: PeerMessageV1) -> Result<PeerMessageV1, String> {
        let residency = &self.residency;
        let refuse = |data_key: &[u8]| -> Result<(), String> {
            match residency.rule_for(data_key).filter(|rule| !meridian_replication::residency::allows(rule, region)) {
                Some(rule) => Err(format!("residency rule {} keeps this key out of region {region}", rule.id)),
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
            PeerMessageV1::Repair { partition, key, state } => {
                refuse(&key)?;
                PeerMessageV1::Repair { partition, key, state }
            }
            PeerMessageV1::ReadKey { key } => {
                refuse(&key)?;
                PeerMessageV1::ReadKey { key }
            }
            PeerMessageV1::Forward(request) => {
                if let Some(data_key) = crate::node::keyed_data_key(&request.op) {
                    refuse(&data_key)?;
                }
                PeerMessageV1::Forward(request)
            }
            other => other,
        })
    }

    /// Runs a client request for a key this region may not hold in the nearest region that may:
    /// the rule's home region first (if set), then the allowed regions by measured round trip. The
    /// request goes to the key's replicas there and is coordinated by one of them; this node only
    /// passes it on (it never stores the key). If no allowed region answers, the error is a
    /// retryable `quorum_unavailable` that names the rule.
    pub async fn proxy(
        &self,
        node: &Node,
        request: RequestV1,
        rule: &meridian_client::proto::Rule,
        data_key: &[u8],
        timeout: Duration,
    ) -> Result<Reply, ErrorReply> {
        let residency = node.residency();
        let partition = keyspace::partition_of(data_key);
        let mut regions: Vec<(bool, Duration, String, Vec<NodeId>)> = Vec::new();
        for (region, replicas) in self.cluster.remote_replicas(partition) {
            if !meridian_replication::residency::allows(rule, &region) || replicas.is_empty() {
                continue;
            }
            let home = rule.spec.home.as_deref() == Some(region.as_str());
            let mut rtt = Duration::MAX;
            for replica in replicas.iter().filter(|r| self.cluster.reachable(**r)) {
                if let Some(addr) = self.cluster.peer_addr(*replica) {
                    if let Ok(Ok(connection)) =
                        tokio::time::timeout(Duration::from_millis(200), self.pool.get(addr, None)).await
                    {
                        rtt = rtt.min(connection.rtt());
                    }
                }
            }
            regions.push((!home, rtt, region, replicas));
        }
        regions.sort();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut failures = Vec::new();
        for (_, _, region, replicas) in &regions {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.forward(request.clone(), replicas, left).await {
                Err(e) if e.code == ErrorCode::QuorumUnavailable && !request.op.is_write() => {
                    failures.push(format!("{region}: {}", e.message));
                }
                result => {
                    residency.note_proxied(rule, region);
                    return result;
                }
            }
        }
        // Not a refusal by the rule: the regions it allows are unreachable from here for now, so
        // the error is a retryable unavailability that still names the rule.
        let why = if regions.is_empty() {
            "no node of an allowed region is known".to_string()
        } else {
            format!("no allowed region answered ({})", failures.join("; "))
        };
        residency.audit().record("proxy", rule.id, &format!("failed: {why}"));
        Err(ErrorReply::new(
            ErrorCode::QuorumUnavailable,
            crate::node::residency_refusal(rule, residency.region(), &format!("{why}; retry later")),
        ))
    }

    /// Relays a client request to a replica of its key: replicas heard from recently first.
    ///
    /// A read that fails on one replica is tried on the next. A write is sent to one replica only:
    /// after a timeout it may have been applied there, and its idempotency record lives on the
    /// replica that coordinated it — so the client retries (same idempotency id), and the retry goes
    /// to the same first live replica, which recognises it.
    pub async fn forward(
        &self,
        mut request: RequestV1,
        replicas: &[NodeId],
        timeout: Duration,
    ) -> Result<Reply, ErrorReply> {
        let mut failures = Vec::new();
        let mut targets: Vec<NodeId> =
            replicas.iter().copied().filter(|r| *r != self.local && self.cluster.reachable(*r)).collect();
        targets.sort_by_key(|r| self.cluster.liveness(*r) != Liveness::Alive);
        let is_write = request.op.is_write();
        if is_write {
            targets.truncate(1);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for (i, &target) in targets.iter().enumerate() {
            metrics::counter!("meridian_forwarded_requests_total").increment(1);
            // Every replica but the last gets half of what is left, so one that died a moment ago
            // (not yet suspected) cannot take the whole budget; the replica is told its share, less
            // a margin for the way back, so it answers before we give up on it.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let budget = if i + 1 == targets.len() { left } else { left / 2 };
            let remote_ms = budget.saturating_sub(budget / 10).as_millis();
            request.timeout_ms = u32::try_from(remote_ms).unwrap_or(u32::MAX).max(1);
            match self.call(target, PeerMessageV1::Forward(request.clone()), budget).await {
                Ok(PeerReplyV1::Forwarded(result)) => return result,
                Ok(other) => failures.push(format!("{}: unexpected reply {other:?}", self.name(target))),
                Err(e) => failures.push(format!("{}: {e}", self.name(target))),
            }
        }
        Err(unavailable(format!(
            "this node holds no replica of the key and no replica answered ({} of {} tried: {}){}",
            targets.len(),
            replicas.len(),
            if failures.is_empty() { "all are down".to_string() } else { failures.join("; ") },
            if is_write { "; the write may have been applied: retry with the same idempotency id" } else { "" }
        )))
    }

    /// A page of a key listing across this region: each serving node lists its own keys (every
    /// partition it holds) and the pages are merged. A key lives on several replicas, so a node
    /// that does not answer is tolerated as long as every partition has a replica that did.
    ///
    /// Each node's page is complete only up to its own cursor (a node may stop early, after many
    /// deleted keys), so the merged page is cut at the smallest cursor any node returned.
    pub async fn list_keys(&self, node: &Arc<Node>, request: RequestV1, limit: usize) -> Result<Reply, ErrorReply> {
        let targets: Vec<NodeId> = self
            .cluster
            .members()
            .into_iter()
            .filter(|m| m.id != self.local && m.member.state.serves() && self.cluster.reachable(m.id))
            // Every region holds every partition: this region's nodes answer without a WAN trip.
            .filter(|m| m.member.region == self.cluster.region())
            .map(|m| m.id)
            .collect();
        let remote = targets.iter().map(|&target| {
            let request = request.clone();
            async move {
                match self.call(target, PeerMessageV1::Forward(request), self.peer_timeout).await {
                    Ok(PeerReplyV1::Forwarded(result)) => (target, result),
                    Ok(other) => {
                        (target, Err(ErrorReply::new(ErrorCode::Internal, format!("unexpected reply {other:?}"))))
                    }
                    Err(e) => (target, Err(unavailable(e))),
                }
            }
        });
        let (local, remote) = tokio::join!(node.list_local(&request), futures::future::join_all(remote));
        let mut answered = std::collections::BTreeSet::new();
        let mut names: std::collections::BTreeMap<String, meridian_client::proto::KeyInfo> = Default::default();
        let mut cut: Option<String> = None;
        let mut token = None;
        for (from, result) in std::iter::once((self.local, local)).chain(remote) {
            let Ok(reply) = result else { continue };
            let meridian_client::proto::ReplyBody::Keys { keys, next } = reply.body else { continue };
            answered.insert(from);
            token.get_or_insert(reply.causal_token);
            for key in keys {
                names.entry(key.name.clone()).or_insert(key);
            }
            if let Some(next) = next {
                cut = Some(cut.map_or(next.clone(), |c: String| c.min(next)));
            }
        }
        let placements = self.cluster.all_placements();
        if let Some(p) = placements.iter().position(|replicas| !replicas.iter().any(|r| answered.contains(r))) {
            return Err(unavailable(format!(
                "no replica of partition {p} answered the listing ({} of {} nodes answered)",
                answered.len(),
                targets.len() + 1
            )));
        }
        let mut keys: Vec<_> =
            names.into_values().filter(|k| cut.as_ref().is_none_or(|c| k.name <= *c)).take(limit + 1).collect();
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next = if more || cut.is_some() {
            Some(keys.last().map_or_else(|| cut.clone().unwrap_or_default(), |k| k.name.clone()))
        } else {
            None
        };
        Ok(Reply {
            causal_token: token.unwrap_or_default(),
            body: meridian_client::proto::ReplyBody::Keys { keys, next },
        })
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
    pub async fn join_locally(&self, data_key: &[u8], state: &Stored) -> Result<(), ErrorReply> {
        let partition = keyspace::partition_of(data_key);
        let key_state = KeyState { key: data_key.to_vec(), state: keyspace::encode_stored(state) };
        let mut store = self.store.clone();
        tokio::task::spawn_blocking(move || store.apply_states(PartitionId(partition), &[key_state], None))
            .await
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))
    }

    /// Pushes a record this node just made durable to the partition's other replicas and waits until
    /// `level` is met (or cannot be). `replicas` are the ones `level` counts: this region's, or every
    /// region's for a global `quorum`. Below `quorum` the record also goes to one replica in each other
    /// region, which spreads it in its own region (a write crosses each WAN link once); the client
    /// does not wait for those. `report` tells the receivers which of this node's timestamps the
    /// record's position covers (for causal reads there).
    pub async fn replicate(
        self: &Arc<Self>,
        partition: u16,
        record: SyncRecord,
        level: Consistency,
        replicas: &[NodeId],
        report: SafeReport,
    ) -> Result<(), ErrorReply> {
        let mut round = AckRound::for_write(level, replicas);
        round.ack(self.local);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let push = Pushed { partition, records: vec![record], reports: vec![report] };
        for &target in replicas.iter().filter(|r| **r != self.local) {
            if !self.spawn_push(target, &push, false, Some(tx.clone())).await {
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
                "{level} needs {} of the key's {} replicas; {} acknowledged in time (the write is durable on those and \
                 will reach the rest by hinted handoff and anti-entropy; retry with the same idempotency id)",
                round.needed(),
                replicas.len(),
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
        if let Some(push) = refused {
            let me = self.clone();
            tokio::spawn(async move {
                for record in &push.records {
                    me.hint(target, push.partition, record).await;
                }
            });
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
                let ok = matches!(me.call(target, message, me.peer_timeout).await, Ok(PeerReplyV1::Applied));
                if !ok {
                    for push in &batch {
                        for record in &push.records {
                            me.hint(target, push.partition, record).await;
                        }
                    }
                }
            });
        }
    }

    /// Spreads a batch another region's shipper sent here to this region's other replicas of each
    /// push's partition: one request per replica, hints for what it does not take.
    pub async fn fan_out_batch_in_region(self: &Arc<Self>, pushes: Vec<Pushed>) {
        let mut by_target: std::collections::BTreeMap<NodeId, Vec<Pushed>> = Default::default();
        for push in pushes {
            for target in self.cluster.replicas(push.partition) {
                if target != self.local {
                    by_target.entry(target).or_default().push(push.clone());
                }
            }
        }
        let sends = by_target.into_iter().map(|(target, batch)| {
            let me = self.clone();
            async move {
                let ok = me.cluster.reachable(target) && {
                    let message = PeerMessageV1::PushBatch { pushes: batch.clone(), relay: false };
                    matches!(me.call(target, message, me.peer_timeout).await, Ok(PeerReplyV1::Applied))
                };
                if !ok {
                    for push in &batch {
                        for record in &push.records {
                            me.hint(target, push.partition, record).await;
                        }
                    }
                }
            }
        });
        futures::future::join_all(sends).await;
    }

    /// Spreads records that another region's node pushed here to this region's other replicas of
    /// the partition (this node is the region's entry point for them).
    pub async fn fan_out_in_region(self: &Arc<Self>, push: Pushed) {
        for target in self.cluster.replicas(push.partition) {
            if target != self.local {
                self.spawn_push(target, &push, false, None).await;
            }
        }
    }

    /// Starts pushing `push` to `target` in its own task, which runs to completion (hinting on
    /// failure) whether or not anyone waits; its verdict goes to `done`. Returns false — after
    /// leaving hints — when the push was not started: the target is down, or too many pushes are
    /// in flight.
    async fn spawn_push(
        self: &Arc<Self>,
        target: NodeId,
        push: &Pushed,
        relay: bool,
        done: Option<mpsc::UnboundedSender<(NodeId, bool)>>,
    ) -> bool {
        let remote = self.cluster.region_of(target).is_some_and(|r| r != self.cluster.region());
        let slots = if remote { &self.remote_push_slots } else { &self.push_slots };
        let slot = slots.clone().try_acquire_owned().ok();
        let Some(slot) = slot.filter(|_| self.cluster.reachable(target)) else {
            if done.is_some() {
                // Someone waits on this push's verdict: the hint is durable before it hears.
                for record in &push.records {
                    self.hint(target, push.partition, record).await;
                }
            } else {
                // A relay to another region nobody waits on: keep its hint off the write's path.
                let (me, push) = (self.clone(), push.clone());
                tokio::spawn(async move {
                    for record in &push.records {
                        me.hint(target, push.partition, record).await;
                    }
                });
            }
            return false;
        };
        let (me, push) = (self.clone(), push.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let partition = push.partition;
            let message =
                PeerMessageV1::Push { partition, records: push.records.clone(), reports: push.reports, relay };
            let ok = match me.call(target, message, me.peer_timeout).await {
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
            if !ok {
                for record in &push.records {
                    me.hint(target, partition, record).await;
                }
            }
            if let Some(done) = done {
                let _ = done.send((target, ok));
            }
        });
        true
    }

    /// Makes sure the key's state here is durable on enough replicas for `level`, by writing it back
    /// to the others. For a write answered without a new record — a retry replayed from its
    /// idempotency record — whose first attempt may have reached fewer replicas than its level
    /// needs: the state here contains that write, so once a quorum holds the state, it holds the write.
    pub async fn ensure_on_quorum(
        self: &Arc<Self>,
        node: &Arc<Node>,
        data_key: &[u8],
        level: Consistency,
        replicas: &[NodeId],
    ) -> Result<(), ErrorReply> {
        let Some(state) = node.stored_state(data_key)? else { return Ok(()) };
        let partition = keyspace::partition_of(data_key);
        let mut round = AckRound::for_write(level, replicas);
        round.ack(self.local);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for &target in replicas.iter().filter(|r| **r != self.local && self.cluster.reachable(**r)) {
            let (me, tx, key, state) = (self.clone(), tx.clone(), data_key.to_vec(), state.clone());
            tokio::spawn(async move {
                let message = PeerMessageV1::Repair { partition, key, state };
                let ok = matches!(me.call(target, message, me.peer_timeout).await, Ok(PeerReplyV1::Applied));
                let _ = tx.send((target, ok));
            });
        }
        drop(tx);
        self.settle(&mut round, &mut rx).await;
        match round.outcome() {
            Outcome::Satisfied => Ok(()),
            _ => Err(unavailable(format!(
                "{level} needs {} of the key's {} replicas; {} hold the retried write",
                round.needed(),
                replicas.len(),
                round.acked()
            ))),
        }
    }

    /// Feeds answers into `round` until it is decided or the peer timeout passes.
    async fn settle(&self, round: &mut AckRound, rx: &mut mpsc::UnboundedReceiver<(NodeId, bool)>) {
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

    /// A quorum read of `data_key` with write-back (see the module docs).
    pub async fn quorum_read(
        self: &Arc<Self>,
        node: &Arc<Node>,
        data_key: &[u8],
        level: Consistency,
        replicas: &[NodeId],
    ) -> Result<Option<Stored>, ErrorReply> {
        let partition = keyspace::partition_of(data_key);
        let mut round: ReadRound<Stored> = ReadRound::new(level, replicas);
        if replicas.contains(&self.local) {
            round.reply(self.local, node.load_stored(data_key)?);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        for &target in replicas.iter().filter(|r| **r != self.local) {
            if !self.cluster.reachable(target) {
                round.fail(target);
                continue;
            }
            let (me, tx, key) = (self.clone(), tx.clone(), data_key.to_vec());
            tokio::spawn(async move {
                let state = match me.call(target, PeerMessageV1::ReadKey { key }, me.peer_timeout).await {
                    Ok(PeerReplyV1::State(None)) => Ok(None),
                    Ok(PeerReplyV1::State(Some(bytes))) => {
                        keyspace::decode_stored(&bytes).map(Some).map_err(|e| format!("undecodable state: {e}"))
                    }
                    Ok(other) => Err(format!("unexpected reply {other:?}")),
                    Err(e) => Err(e),
                };
                let _ = tx.send((target, state));
            });
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
                "{level} read needs {needed} of the key's {} replicas; {acked} answered in time",
                replicas.len()
            )));
        }
        let merged = round
            .merged(|acc: &mut Stored, other: &Stored| acc.try_join(other))
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("replicas disagree on the key's type: {e}")))?;
        let stale = round.stale(&merged);
        let mut repair = round.repair(&merged);
        if let (Some(state), false) = (&merged, stale.is_empty()) {
            metrics::counter!("meridian_read_repairs_total").increment(stale.len() as u64);
            let encoded = keyspace::encode_stored(state);
            let (tx, mut rx) = mpsc::unbounded_channel();
            for target in stale {
                let (me, tx, key, state) = (self.clone(), tx.clone(), data_key.to_vec(), encoded.clone());
                tokio::spawn(async move {
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
                });
            }
            drop(tx);
            self.settle(&mut repair, &mut rx).await;
        }
        match repair.outcome() {
            Outcome::Satisfied => Ok(merged),
            _ => Err(unavailable(format!(
                "{level} read could not write the merged state back to a majority of the key's {} replicas \
                 ({} of {} needed write-backs succeeded)",
                replicas.len(),
                repair.acked(),
                repair.needed()
            ))),
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
                    if !self.cluster.reachable(owner) {
                        covered = false;
                        break;
                    }
                    let answer =
                        self.call(owner, PeerMessageV1::PartitionVv { partition: *partition }, self.peer_timeout);
                    match answer.await {
                        Ok(PeerReplyV1::Vv(theirs)) if theirs.dominates(vv) => {}
                        _ => {
                            covered = false;
                            break;
                        }
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

    async fn replay_to(&self, target: NodeId) -> Result<(), String> {
        loop {
            let hints = self.hints.clone();
            let batch = tokio::task::spawn_blocking(move || hints.peek(target, HINT_BATCH))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
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
                    other => return Err(format!("unexpected reply {other:?}")),
                }
                let keys: Vec<Vec<u8>> = batch[start..end].iter().map(|h| h.key.clone()).collect();
                metrics::counter!("meridian_hints_replayed_total").increment(keys.len() as u64);
                let hints = self.hints.clone();
                tokio::task::spawn_blocking(move || hints.remove(target, &keys))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                start = end;
            }
        }
    }
}
