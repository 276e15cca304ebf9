//! The node's side of the peer protocol (`crate::peer::protocol`): answers every request another
//! node sends over the mutual-TLS peer transport. Any successful request counts as a heartbeat from
//! its sender.

use std::sync::Arc;

use meridian_crdt::{codec, NodeId};
use meridian_replication::antientropy::{KeyState, LogRecord as SyncRecord, PartitionId, SyncConfig, SyncMessage};
use meridian_replication::SafeReport;

use crate::api::node::Node;
use crate::layout::PARTITIONS;
use crate::peer::protocol::{
    combined_digest, partitions_of_bitmap, shared_digest, PeerMessageV1, PeerRefusal, PeerReplyV1, PeerRequest,
    PeerResponse, Pushed, MAX_PEER_MESSAGE_BYTES,
};
use crate::peer::{PeerHandler, PeerIdentity, TraceContext};
use crate::region::cluster::{Cluster, MergeRefused};
use crate::store::sync_store::{EngineSyncStore, SyncStoreError};
use tracing::Instrument as _;

/// Serves every peer request of one node.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<Node>,
    cluster: Option<Arc<Cluster>>,
    store: EngineSyncStore,
    sync: SyncConfig,
    /// Blocking tasks applying pushed records, node-wide, at most [`MAX_APPLY_TASKS`]: a request
    /// applies its partitions side by side, and many requests at once must not take the whole
    /// blocking pool (a lane waiting on a key lock whose holder needs a blocking thread too).
    apply_tasks: Arc<tokio::sync::Semaphore>,
}

impl PeerService {
    /// Answers anti-entropy `messages` from `from` (one `Sync`, or a `SyncBatch` when `batched`),
    /// each with a fresh session over this node's store as the peer's region may see it.
    async fn answer_sync(
        &self,
        peer: &PeerIdentity,
        from: NodeId,
        messages: Vec<SyncMessage>,
        batched: bool,
    ) -> Result<PeerReplyV1, PeerRefusal> {
        for message in &messages {
            check_partition(message.partition().0)?;
        }
        let region = peer.region.clone();
        let (replica, store, sync) = (
            self.node.replica().clone(),
            self.store.clone().with_sender(from).for_peer_region(&region),
            self.sync.clone(),
        );
        blocking(move || {
            use crate::region::peer_sync::{answer_sync, answer_sync_batch};
            let residency = Some((replica.residency().as_ref(), region.as_str()));
            if batched {
                return answer_sync_batch(store, sync, replica.id(), from, messages, residency);
            }
            let message = messages.into_iter().next().ok_or_else(|| PeerRefusal::Sync("no message".into()))?;
            answer_sync(store, sync, replica.id(), from, message, residency)
        })
        .await
    }

    /// A service over `node`'s storage through `store` (share one store among everything that writes
    /// replicated state: its clones serialise writes per partition). Without `cluster`, gossip is refused.
    pub fn new(node: Arc<Node>, cluster: Option<Arc<Cluster>>, store: EngineSyncStore, sync: SyncConfig) -> Self {
        PeerService { node, cluster, store, sync, apply_tasks: Arc::new(tokio::sync::Semaphore::new(MAX_APPLY_TASKS)) }
    }

    /// Answers one request; also names its kind (`peer.undecodable` if it could not be read).
    async fn answer(
        &self,
        peer: &PeerIdentity,
        trace: Option<TraceContext>,
        request: &[u8],
    ) -> (&'static str, Result<PeerReplyV1, PeerRefusal>) {
        let (from, message) = match codec::decode(request, MAX_PEER_MESSAGE_BYTES) {
            Ok(PeerRequest::V1 { from, message }) => (from, message),
            Err(e) => return ("peer.undecodable", Err(PeerRefusal::Undecodable(e.to_string()))),
        };
        let kind = message.kind();
        (kind, self.answer_decoded(peer, trace, from, message).await)
    }

    async fn answer_decoded(
        &self,
        peer: &PeerIdentity,
        trace: Option<TraceContext>,
        from: NodeId,
        message: PeerMessageV1,
    ) -> Result<PeerReplyV1, PeerRefusal> {
        if let Some(cluster) = &self.cluster {
            // The id a request names as its sender must be the certified peer's (or a first contact):
            // everything below trusts `from`.
            cluster
                .check_sender(from, &peer.name, message.gossiped_membership())
                .map_err(|source| PeerRefusal::NotTheSender { name: peer.name.clone(), source })?;
            self.check_certified_region(cluster, peer, from, &message)?;
            cluster.heartbeat(from);
        }
        let span = crate::telemetry::peer_span(message.kind(), &from, trace.as_ref());
        self.serve_message(peer, from, message).instrument(span).await
    }

    /// Answers one decoded request of `from` (whose claims were checked).
    async fn serve_message(
        &self,
        peer: &PeerIdentity,
        from: NodeId,
        message: PeerMessageV1,
    ) -> Result<PeerReplyV1, PeerRefusal> {
        match message {
            PeerMessageV1::Hello => Ok(PeerReplyV1::Hello { node_id: self.node.id() }),
            PeerMessageV1::Sync(message) => self.answer_sync(peer, from, vec![message], false).await,
            PeerMessageV1::SyncBatch(messages) => {
                if messages.len() > crate::peer::protocol::MAX_SYNC_BATCH {
                    return Err(PeerRefusal::Sync(format!(
                        "a batch of {} anti-entropy messages (at most {})",
                        messages.len(),
                        crate::peer::protocol::MAX_SYNC_BATCH
                    )));
                }
                if !messages.iter().all(crate::region::peer_sync::is_offer) {
                    // The digest fallback's requests scan a partition each: one per `Sync`.
                    return Err(PeerRefusal::Sync("a batch of anti-entropy messages carries offers only".into()));
                }
                self.answer_sync(peer, from, messages, true).await
            }
            PeerMessageV1::Gossip { membership, handoff } => {
                let cluster = self.gossip_with(peer, from, &membership, handoff)?;
                Ok(PeerReplyV1::Gossip {
                    node_id: self.node.id(),
                    membership: cluster.snapshot(),
                    handoff: cluster.local_handoff(),
                })
            }
            PeerMessageV1::GossipReports { membership, handoff, reports } => {
                let cluster = self.gossip_with(peer, from, &membership, handoff)?;
                let replica = self.node.replica().clone();
                tokio::task::spawn_blocking(move || replica.take_reports_of(from, &reports))
                    .await
                    .map_err(|e| PeerRefusal::Failed(e.to_string()))?;
                Ok(PeerReplyV1::GossipReports {
                    node_id: self.node.id(),
                    membership: cluster.snapshot(),
                    handoff: cluster.local_handoff(),
                    reports: self.node.replica().own_reports(),
                })
            }
            PeerMessageV1::GossipCompact { digest, membership, handoff, reports, .. } => {
                let cluster = match &membership {
                    Some(membership) => self.gossip_with(peer, from, membership, handoff)?,
                    None => self.handoff_of(peer, from, handoff)?,
                };
                let replica = self.node.replica().clone();
                let had_earlier = tokio::task::spawn_blocking(move || {
                    replica.take_compact_reports_of(from, reports.safe, reports.full, reports.base, &reports.changed)
                })
                .await
                .map_err(|e| PeerRefusal::Failed(e.to_string()))?;
                let ours = cluster.snapshot();
                let our_digest = shared_digest(&ours);
                Ok(PeerReplyV1::GossipCompact {
                    node_id: self.node.id(),
                    digest: our_digest,
                    membership: (our_digest != digest).then_some(ours),
                    handoff: cluster.local_handoff(),
                    needs_full_reports: !had_earlier,
                    rules_digest: shared_digest(&*self.node.residency().rules()),
                    auth_digest: shared_digest(&*self.node.auth().state()),
                })
            }
            PeerMessageV1::PartitionVv { partition } => {
                check_partition(partition)?;
                use meridian_replication::antientropy::SyncStore as _;
                let vv = self.store.partition_vv(PartitionId(partition))?;
                Ok(PeerReplyV1::Vv(vv))
            }
            // An earlier version's fan-out: records without reports, never relayed.
            PeerMessageV1::Replicate { partition, records } => {
                self.accept_pushes(peer, from, vec![Pushed { partition, records, reports: Vec::new() }], false).await
            }
            PeerMessageV1::Push { partition, records, reports, relay } => {
                self.accept_pushes(peer, from, vec![Pushed { partition, records, reports }], relay).await
            }
            PeerMessageV1::PushBatch { pushes, relay } => self.accept_pushes(peer, from, pushes, relay).await,
            PeerMessageV1::PushIdempotent { push, id, record } => {
                check_idempotency_of(&push, from, &record)?;
                let crate::layout::IdempotencyRecord::V1 { created_ms, key, request_digest, reply } = record;
                // Its age is this node's to judge (the sweep expires records by it): never in the future.
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
                let created_ms = created_ms.min(now as u64);
                let data_key = crate::layout::data_key(&key);
                let record = crate::layout::IdempotencyRecord::V1 { created_ms, key, request_digest, reply };
                let encoded = crate::layout::encode(&record);
                let store = self.store.clone().keeping_idempotency(data_key, id.to_be_bytes().to_vec(), encoded);
                self.accept_pushes_into(store, peer, from, vec![push], false).await
            }
            PeerMessageV1::ReadKey { key } => {
                // Neither region may hold a key its rules keep away from the asker's region.
                if !self.node.residency().allowed_in(&peer.region, &key) {
                    return Ok(PeerReplyV1::State(None));
                }
                // A set kept per element is assembled: the asker joins whole states.
                let engine = self.node.replica().engine().clone();
                blocking(move || {
                    let state = crate::states::load_whole(engine.as_ref(), &key).map_err(SyncStoreError::from)?;
                    Ok(PeerReplyV1::State(state.map(|state| crate::layout::encode_stored(&state))))
                })
                .await
            }
            PeerMessageV1::PrefixStates { partition, rule, namespace, prefix, after, limit } => {
                check_partition(partition)?;
                let replica = self.node.replica().clone();
                let region = peer.region.clone();
                blocking(move || {
                    let asked =
                        crate::region::residency_jobs::PrefixAsk { partition, rule, namespace, prefix, after, limit };
                    crate::region::residency_jobs::serve_prefix_states(&replica, &region, asked)
                })
                .await
            }
            PeerMessageV1::Residency { rules } => {
                rules.check_shape().map_err(|e| PeerRefusal::MalformedRules(e.to_string()))?;
                if let Some(cluster) = &self.cluster {
                    check_rule_regions(cluster, &rules)?;
                }
                let residency = self.node.residency().clone();
                let theirs = rules.clone();
                tokio::task::spawn_blocking(move || residency.adopt(&theirs))
                    .await
                    .map_err(|e| PeerRefusal::Failed(e.to_string()))?
                    .map_err(|source| PeerRefusal::Storage { what: "storing the residency rules", source })?;
                Ok(PeerReplyV1::Residency { rules: (*self.node.residency().rules()).clone() })
            }
            PeerMessageV1::Auth { state: crate::auth::state::AuthRecord::V1(theirs) } => {
                theirs.check_shape().map_err(PeerRefusal::MalformedAuth)?;
                let auth = self.node.auth().clone();
                tokio::task::spawn_blocking(move || auth.adopt(&theirs))
                    .await
                    .map_err(|e| PeerRefusal::Failed(e.to_string()))?
                    .map_err(|source| PeerRefusal::Storage { what: "storing the authentication metadata", source })?;
                let ours = (*self.node.auth().state()).clone();
                Ok(PeerReplyV1::Auth { state: crate::auth::state::AuthRecord::V1(ours) })
            }
            PeerMessageV1::Repair { partition, key, state } => {
                check_partition(partition)?;
                let mut store = self.store.clone();
                blocking(move || {
                    use meridian_replication::antientropy::SyncStore as _;
                    store.apply_states(PartitionId(partition), &[KeyState { key, state }], None)?;
                    Ok(PeerReplyV1::Applied)
                })
                .await
            }
            PeerMessageV1::Forward(request) => {
                Ok(PeerReplyV1::Forwarded(self.node.clone().execute_forwarded(request).await))
            }
            PeerMessageV1::VvDigests { partitions } => {
                if let Some(bad) = partitions.iter().find(|p| **p >= PARTITIONS) {
                    return Err(PeerRefusal::NoPartition(*bad));
                }
                let store = self.store.clone();
                blocking(move || Ok(PeerReplyV1::VvDigests(crate::region::peer_sync::vv_digests(&store, &partitions)?)))
                    .await
            }
            PeerMessageV1::VvCombined { partitions, digest } => {
                let partitions = partitions_of_bitmap(&partitions)
                    .ok_or_else(|| PeerRefusal::Undecodable("a partition bitmap longer than 32 bytes".into()))?;
                let store = self.store.clone();
                blocking(move || {
                    use crate::region::peer_sync::{note_matching_vectors, vectors_and_digests};
                    let (vectors, ours) = vectors_and_digests(&store, &partitions)?;
                    let same = combined_digest(&ours) == digest;
                    if same {
                        // The asker holds what these vectors name: what this node's log need not keep for it.
                        note_matching_vectors(&store, from, &partitions, &vectors);
                    }
                    Ok(PeerReplyV1::VvDigests(if same { Vec::new() } else { ours }))
                })
                .await
            }
        }
    }

    /// A node's region is the one in its certificate: a member claiming another one (in its
    /// membership entry) is refused outright, before any of its data is looked at.
    fn check_certified_region(
        &self,
        cluster: &Cluster,
        peer: &PeerIdentity,
        from: NodeId,
        message: &PeerMessageV1,
    ) -> Result<(), PeerRefusal> {
        let gossiped = match message {
            PeerMessageV1::Gossip { membership, .. } | PeerMessageV1::GossipReports { membership, .. } => {
                membership.get(from).map(|m| m.region.clone())
            }
            PeerMessageV1::GossipCompact { membership: Some(membership), .. } => {
                membership.get(from).map(|m| m.region.clone())
            }
            _ => None,
        };
        let claimed = gossiped.or_else(|| cluster.region_of(from));
        match claimed.filter(|claimed| *claimed != peer.region) {
            Some(claimed) => {
                self.node.residency().note_rejected(
                    0,
                    &format!("node {} claims region {claimed} but its certificate says {}", peer.name, peer.region),
                );
                Err(PeerRefusal::WrongRegion { name: peer.name.clone(), claimed, certified: peer.region.clone() })
            }
            None => Ok(()),
        }
    }

    /// Merges a gossiped membership and the sender's handoff announcement.
    fn gossip_with(
        &self,
        peer: &PeerIdentity,
        from: NodeId,
        membership: &meridian_replication::Membership,
        handoff: Vec<u16>,
    ) -> Result<&Arc<Cluster>, PeerRefusal> {
        let cluster = self.cluster.as_ref().ok_or(PeerRefusal::NoCluster)?;
        cluster.merge_claimed(from, peer, membership).map_err(|refused| match refused {
            MergeRefused::Claim(source) => PeerRefusal::ForgedMembership { name: peer.name.clone(), source },
            MergeRefused::Storage(source) => PeerRefusal::Storage { what: "storing the membership", source },
        })?;
        cluster.set_peer_handoff(from, handoff);
        Ok(cluster)
    }

    /// Takes the handoff announcement of a gossip that carried no membership (the sender's is the
    /// same as ours): the sender may not use another member's id (`Cluster::check_sender`; an id
    /// not yet known is a first contact, as for every request).
    fn handoff_of(&self, peer: &PeerIdentity, from: NodeId, handoff: Vec<u16>) -> Result<&Arc<Cluster>, PeerRefusal> {
        let cluster = self.cluster.as_ref().ok_or(PeerRefusal::NoCluster)?;
        cluster
            .check_sender(from, &peer.name, None)
            .map_err(|source| PeerRefusal::NotTheSender { name: peer.name.clone(), source })?;
        cluster.set_peer_handoff(from, handoff);
        Ok(cluster)
    }

    /// Makes pushed records durable here (answered `Applied` once all are), takes in the safe-time
    /// reports that came with them, and — when `relay` is set (this node is its region's entry point
    /// for another region's writes) — spreads them to this region's other replicas afterwards.
    ///
    /// Every record's origin must be a member of the cluster or the sender itself (checked by the
    /// store, which also refuses timestamps beyond the drift bound); a relay (`relay`) must come from
    /// another region than this node's, and carry only records of origins of the sender's certified
    /// region (a region's entry point relays what was written in the sender's region).
    async fn accept_pushes(
        &self,
        peer: &PeerIdentity,
        from: NodeId,
        pushes: Vec<Pushed>,
        relay: bool,
    ) -> Result<PeerReplyV1, PeerRefusal> {
        self.accept_pushes_into(self.store.clone(), peer, from, pushes, relay).await
    }

    /// [`PeerService::accept_pushes`] through `store` (a clone of the node's that may carry an
    /// idempotency record to keep with the write, `EngineSyncStore::keeping_idempotency`).
    async fn accept_pushes_into(
        &self,
        store: EngineSyncStore,
        peer: &PeerIdentity,
        from: NodeId,
        pushes: Vec<Pushed>,
        relay: bool,
    ) -> Result<PeerReplyV1, PeerRefusal> {
        if let Some(bad) = pushes.iter().find(|p| p.partition >= PARTITIONS) {
            return Err(PeerRefusal::NoPartition(bad.partition));
        }
        if let (true, Some(cluster)) = (relay, &self.cluster) {
            check_relay(cluster, peer, from, &pushes)?;
        }
        let (store, replica) = (store.with_sender(from), self.node.replica().clone());
        // The partitions are applied in up to `APPLY_LANES` blocking tasks side by side: their
        // commits then share the node's group commits, where applying the pushes one after
        // another would wait for a commit each.
        let mut lanes: Vec<Vec<PartitionPushes>> = vec![Vec::new(); APPLY_LANES];
        for (i, group) in by_partition(&pushes).into_iter().enumerate() {
            lanes[i % APPLY_LANES].push(group);
        }
        let applies = lanes.into_iter().filter(|lane| !lane.is_empty()).map(|lane| {
            let (store, replica, tasks) = (store.clone(), replica.clone(), self.apply_tasks.clone());
            async move {
                let Ok(_task) = tasks.acquire_owned().await else {
                    return Err(PeerRefusal::Failed("the node is shutting down".into()));
                };
                blocking(move || {
                    for (partition, records, reports) in lane {
                        store.clone().accept_pushed(PartitionId(partition), &records)?;
                        for report in reports {
                            replica.take_report(partition, report);
                        }
                    }
                    Ok(PeerReplyV1::Applied)
                })
                .await
            }
        });
        let mut reply = Ok(PeerReplyV1::Applied);
        for applied in futures::future::join_all(applies).await {
            if applied.is_err() && reply.is_ok() {
                reply = applied;
            }
        }
        let reply = reply?;
        if let (true, Some(coordinator)) = (relay, self.node.coordinator()) {
            let coordinator = coordinator.clone();
            tokio::spawn(async move { coordinator.fan_out_batch_in_region(pushes).await });
        }
        Ok(reply)
    }
}

/// Blocking tasks one request's pushes are applied in, at most.
const APPLY_LANES: usize = 8;
/// Blocking tasks applying pushes on the node at once, at most.
const MAX_APPLY_TASKS: usize = 64;

/// A partition's records and reports in a request.
type PartitionPushes = (u16, Vec<SyncRecord>, Vec<SafeReport>);

/// The records and reports of `pushes`, one group per partition (ascending), each group's records
/// in log order (by origin, then position): a batch of one partition's pushes is applied as one
/// run of its log.
fn by_partition(pushes: &[Pushed]) -> Vec<PartitionPushes> {
    let mut groups: std::collections::BTreeMap<u16, (Vec<SyncRecord>, Vec<SafeReport>)> = Default::default();
    for push in pushes {
        let (records, reports) = groups.entry(push.partition).or_default();
        records.extend(push.records.iter().cloned());
        reports.extend(push.reports.iter().copied());
    }
    groups
        .into_iter()
        .map(|(partition, (mut records, reports))| {
            records.sort_by_key(|record| (record.origin, record.seq));
            records.dedup_by_key(|record| (record.origin, record.seq));
            (partition, records, reports)
        })
        .collect()
}

/// An idempotency record travels with the one write it is about: the push carries one record, of
/// a write the sender coordinated, to the key the idempotency record names.
fn check_idempotency_of(
    push: &Pushed,
    from: NodeId,
    record: &crate::layout::IdempotencyRecord,
) -> Result<(), PeerRefusal> {
    let crate::layout::IdempotencyRecord::V1 { key, .. } = record;
    match push.records.as_slice() {
        [written] if written.origin == from && written.key == crate::layout::data_key(key) => Ok(()),
        [_] => Err(PeerRefusal::MalformedIdempotency(
            "the push carries another key's write than the record names, or one another node coordinated".into(),
        )),
        records => Err(PeerRefusal::MalformedIdempotency(format!("a push of {} records, not one", records.len()))),
    }
}

/// A relay comes from another region, with records written there: the sender's certified region is
/// not ours, and every record's origin is the sender or a member of the sender's certified region.
fn check_relay(cluster: &Cluster, peer: &PeerIdentity, from: NodeId, pushes: &[Pushed]) -> Result<(), PeerRefusal> {
    let refuse = |reason: String| Err(PeerRefusal::ForgedRelay { name: peer.name.clone(), reason });
    if peer.region == cluster.region() {
        return refuse(format!("a relay from region {}, this node's own", peer.region));
    }
    for record in pushes.iter().flat_map(|p| &p.records) {
        if record.origin == from {
            continue;
        }
        match cluster.region_of(record.origin) {
            Some(region) if region == peer.region => {}
            Some(region) => {
                return refuse(format!(
                    "record {} of origin {} (region {region}) relayed from region {}",
                    record.seq, record.origin, peer.region
                ))
            }
            None => return refuse(format!("record {} of origin {}, which is not a member", record.seq, record.origin)),
        }
    }
    Ok(())
}

/// Residency rules may name only regions the cluster has (a member's region, this node's
/// included): a rule naming a region no node is in would keep data from everywhere it may go.
fn check_rule_regions(cluster: &Cluster, rules: &meridian_replication::residency::RuleSet) -> Result<(), PeerRefusal> {
    match cluster.unknown_regions(rules) {
        (unknown, _) if unknown.is_empty() => Ok(()),
        (unknown, known) => Err(PeerRefusal::UnknownRegions { unknown, known }),
    }
}

fn check_partition(partition: u16) -> Result<(), PeerRefusal> {
    if partition < PARTITIONS {
        Ok(())
    } else {
        Err(PeerRefusal::NoPartition(partition))
    }
}

/// Runs storage work (which blocks, and may take key locks) off the reactor.
async fn blocking(
    work: impl FnOnce() -> Result<PeerReplyV1, PeerRefusal> + Send + 'static,
) -> Result<PeerReplyV1, PeerRefusal> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(PeerRefusal::Failed(e.to_string())))
}

impl PeerHandler for PeerService {
    async fn handle(&self, peer: &PeerIdentity, version: u8, trace: Option<TraceContext>, request: Vec<u8>) -> Vec<u8> {
        let (kind, answer) = self.answer(peer, trace, &request).await;
        let answer = answer.map(|reply| reply.for_version(version));
        if let Err(reason) = &answer {
            if let Some(label) = reason.claim_reason() {
                metrics::counter!("meridian_peer_refused_total", "reason" => label).increment(1);
            }
            tracing::warn!(peer = %peer.name, %reason, "refused a peer request");
        }
        let reply = codec::encode(&PeerResponse::V1(answer.map_err(|refusal| refusal.to_string())));
        // Payload bytes per message kind, both ways (QUIC and UDP headers not included): what the
        // peer traffic is made of.
        metrics::counter!("meridian_peer_requests_received_total", "kind" => kind).increment(1);
        metrics::counter!("meridian_peer_request_bytes_received_total", "kind" => kind).increment(request.len() as u64);
        metrics::counter!("meridian_peer_reply_bytes_sent_total", "kind" => kind).increment(reply.len() as u64);
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(origin: u64, seq: u64) -> SyncRecord {
        SyncRecord { origin: NodeId(origin), seq, key: vec![seq as u8], delta: Vec::new(), hlc: seq }
    }

    fn report(origin: u64, seq: u64) -> SafeReport {
        SafeReport { origin: NodeId(origin), seq, safe: seq }
    }

    #[test]
    fn a_batch_is_applied_as_one_run_of_each_partitions_log() {
        let pushes = vec![
            Pushed { partition: 9, records: vec![record(2, 5)], reports: vec![report(2, 5)] },
            Pushed { partition: 3, records: vec![record(1, 7)], reports: vec![] },
            // Queued out of order behind each other, and one pushed twice.
            Pushed { partition: 9, records: vec![record(1, 4), record(2, 4)], reports: vec![report(1, 4)] },
            Pushed { partition: 9, records: vec![record(2, 5)], reports: vec![] },
        ];
        let groups = by_partition(&pushes);
        let positions = |records: &[SyncRecord]| records.iter().map(|r| (r.origin.0, r.seq)).collect::<Vec<_>>();
        assert_eq!(groups.iter().map(|g| g.0).collect::<Vec<_>>(), vec![3, 9], "one group per partition, ascending");
        assert_eq!(positions(&groups[0].1), vec![(1, 7)]);
        assert_eq!(positions(&groups[1].1), vec![(1, 4), (2, 4), (2, 5)], "in log order, each position once");
        assert_eq!(groups[1].2, vec![report(2, 5), report(1, 4)], "every report of the partition, as sent");
    }
}
