//! The node-to-node protocol carried by the mutual-TLS peer transport, and the node's side of it.
//!
//! Every request travels in a versioned envelope naming the sender's node id; every reply is a
//! versioned `Result`, so a refusal reaches the caller as a message, never as a dropped stream.
//!
//! | request | answered with | used by |
//! |---|---|---|
//! | `Hello` | the node id | anti-entropy threads |
//! | `Gossip { membership, handoff }` | ours (push-pull) | nodes of the previous version |
//! | `GossipReports { membership, handoff, reports }` | ours, with our safe-time reports | [`crate::gossip`]; doubles as a heartbeat |
//! | `PartitionVv { partition }` | our vector of the partition | a draining node measuring its handoff |
//! | `Sync(message)` | the anti-entropy session's replies | [`crate::peer_sync`] |
//! | `Replicate { partition, records }` | `Applied` once durable | write fan-out and hint replay |
//! | `ReadKey { key }` | the key's stored state | quorum reads |
//! | `Repair { partition, key, state }` | `Applied` once durable | quorum read write-back, read repair |
//! | `Forward(request)` | the client reply | a node that is not a replica of the key |
//! | `PushBatch { pushes, relay }` | `Applied` once all are durable | a shipper to another region's entry point |
//! | `VvDigests { partitions }` | a digest of our vector of each | anti-entropy, to skip partitions already in sync |
//! | `Push { partition, records, reports, relay }` | `Applied` once durable | write fan-out (in a region, and to one entry point per other region, which relays it in its region) |
//!
//! Any successful request counts as a heartbeat from its sender.

use std::sync::Arc;

use meridian_client::proto::{ErrorReply, Reply, RequestV1};
use meridian_crdt::{codec, NodeId};
use meridian_replication::antientropy::{KeyState, LogRecord as SyncRecord, PartitionId, SyncConfig, SyncMessage};
use meridian_replication::{Membership, SafeReport};
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::keyspace::PARTITIONS;
use crate::node::Node;
use crate::peer::{PeerHandler, PeerIdentity};
use crate::sync_store::EngineSyncStore;

/// Largest peer message decoded.
pub const MAX_PEER_MESSAGE_BYTES: usize = 8 << 20;

/// A request between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Version 1.
    V1 {
        /// The sender's node id.
        from: NodeId,
        /// What it asks.
        message: PeerMessageV1,
    },
}

/// Version-1 peer requests.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerMessageV1 {
    /// Who are you?
    Hello,
    /// One anti-entropy message for the receiver's side of the partition's session.
    Sync(SyncMessage),
    /// The sender's membership (the receiver merges it and answers with its own), and the
    /// partitions the sender holds data of without being their replica (their owners pull them).
    Gossip {
        /// The membership.
        membership: Membership,
        /// Partitions to hand off.
        handoff: Vec<u16>,
    },
    /// This node's version vector of one partition.
    PartitionVv {
        /// The partition.
        partition: u16,
    },
    /// Log records of one partition to make durable here (a write's fan-out, or replayed hints).
    Replicate {
        /// The partition.
        partition: u16,
        /// The records, each under its origin's position.
        records: Vec<SyncRecord>,
    },
    /// The stored state of one key.
    ReadKey {
        /// The data key.
        key: Vec<u8>,
    },
    /// A state to join into one key (a quorum read's write-back).
    Repair {
        /// The key's partition.
        partition: u16,
        /// The data key.
        key: Vec<u8>,
        /// The state, encoded as stored.
        state: Vec<u8>,
    },
    /// A client request to coordinate here (the sender holds no replica of its key).
    Forward(RequestV1),
    /// Digests of the receiver's version vectors of `partitions` (anti-entropy skips the partitions
    /// where both sides' are equal).
    VvDigests {
        /// The partitions.
        partitions: Vec<u16>,
    },
    /// A write's records pushed by its coordinator (or by its region's entry point), with safe-time
    /// reports about their origins; `relay`: the sender is in another region and this node spreads
    /// the records to its own region's other replicas.
    Push {
        /// The partition.
        partition: u16,
        /// The records, each under its origin's position.
        records: Vec<SyncRecord>,
        /// What the records prove about their origins' logs (see `meridian_replication::safe_time`).
        reports: Vec<SafeReport>,
        /// Spread them in this region.
        relay: bool,
    },
    /// Several `Push`es at once (a shipper to another region batches what queued up during a round
    /// trip); answered `Applied` once all are durable here.
    PushBatch {
        /// The pushes, each of one partition.
        pushes: Vec<crate::coordinator::Pushed>,
        /// Spread them in this region.
        relay: bool,
    },
    /// `Gossip` plus the sender's safe-time report for every partition (its frontier and each
    /// partition's last durable position of its own log); answered with `GossipReports`. A new
    /// variant rather than a new field, so nodes of the previous version still decode `Gossip`.
    GossipReports {
        /// The membership.
        membership: Membership,
        /// Partitions to hand off.
        handoff: Vec<u16>,
        /// The sender's reports.
        reports: OwnReports,
    },
    /// The states of the keys of `partition` under a residency rule's namespace and prefix, after
    /// `after` (a data key), at most `limit`: a region a rule was widened to backfills with it. The
    /// receiver answers only keys the sender's certified region may hold.
    PrefixStates {
        /// The partition.
        partition: u16,
        /// The rule (the receiver answers only if its own rules agree on it).
        rule: u32,
        /// The rule's namespace.
        namespace: String,
        /// The rule's key prefix.
        prefix: String,
        /// Resume after this data key.
        after: Option<Vec<u8>>,
        /// At most this many keys.
        limit: u32,
    },
    /// The sender's residency rules (the receiver adopts them if newer and answers with its own).
    Residency {
        /// The rules.
        rules: meridian_replication::residency::RuleSet,
    },
}

/// A reply between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Version 1: the answer, or why there is none.
    V1(Result<PeerReplyV1, String>),
}

/// Version-1 peer replies.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReplyV1 {
    /// The receiver's node id.
    Hello {
        /// Its id.
        node_id: NodeId,
    },
    /// The messages the receiver's session answered with.
    Sync(Vec<SyncMessage>),
    /// The receiver's membership after the merge, and its partitions to hand off.
    Gossip {
        /// Its id.
        node_id: NodeId,
        /// Its membership.
        membership: Membership,
        /// Partitions to hand off.
        handoff: Vec<u16>,
    },
    /// A partition's version vector.
    Vv(meridian_crdt::VersionVector),
    /// Durable here.
    Applied,
    /// A key's stored state (`None`: never written here).
    State(Option<Vec<u8>>),
    /// The reply to a forwarded client request.
    Forwarded(Result<Reply, ErrorReply>),
    /// Version-vector digests, one per partition asked for, in order.
    VvDigests(Vec<u64>),
    /// The answer to `GossipReports`: `Gossip` plus the receiver's reports.
    GossipReports {
        /// Its id.
        node_id: NodeId,
        /// Its membership.
        membership: Membership,
        /// Partitions to hand off.
        handoff: Vec<u16>,
        /// Its safe-time reports.
        reports: OwnReports,
    },
    /// The answer to `PrefixStates`: states, and the data key to resume after (`None`: done).
    PrefixStates {
        /// The keys' states, as stored.
        states: Vec<KeyState>,
        /// Where the next page starts.
        next: Option<Vec<u8>>,
        /// The answering node's version vector of the partition, read before the states: the
        /// states reflect every write it covers.
        vv: meridian_crdt::VersionVector,
    },
    /// The receiver's residency rules after the merge.
    Residency {
        /// The rules.
        rules: meridian_replication::residency::RuleSet,
    },
}

/// A node's safe-time report about its own log, for every partition: its causal frontier (a
/// packed HLC) and, per partition, the last durable position of its log there.
pub type OwnReports = (u64, Vec<u64>);

/// Takes in `from`'s reports about its own log (see [`OwnReports`]).
pub fn take_own_reports(node: &Node, from: NodeId, (safe, seqs): &OwnReports) {
    for (partition, seq) in seqs.iter().enumerate().take(usize::from(PARTITIONS)) {
        node.take_report(partition as u16, SafeReport { origin: from, seq: *seq, safe: *safe });
    }
}

/// Encodes a request from `from`.
pub fn encode_request(from: NodeId, message: PeerMessageV1) -> Vec<u8> {
    codec::encode(&PeerRequest::V1 { from, message })
}

/// Decodes a reply (transport-level errors are the caller's).
pub fn decode_reply(bytes: &[u8]) -> Result<PeerReplyV1, String> {
    let PeerResponse::V1(answer) =
        codec::decode(bytes, MAX_PEER_MESSAGE_BYTES).map_err(|e| format!("undecodable peer reply: {e}"))?;
    answer
}

/// Serves every peer request of one node.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<Node>,
    cluster: Option<Arc<Cluster>>,
    store: EngineSyncStore,
    sync: SyncConfig,
}

impl PeerService {
    /// A service over `node`'s storage through `store` (share one store among everything that writes
    /// replicated state: its clones serialise writes per partition). Without `cluster`, gossip is refused.
    pub fn new(node: Arc<Node>, cluster: Option<Arc<Cluster>>, store: EngineSyncStore, sync: SyncConfig) -> Self {
        PeerService { node, cluster, store, sync }
    }

    async fn answer(&self, peer: &PeerIdentity, request: &[u8]) -> Result<PeerReplyV1, String> {
        let PeerRequest::V1 { from, message } =
            codec::decode(request, MAX_PEER_MESSAGE_BYTES).map_err(|e| format!("undecodable request: {e}"))?;
        if let Some(cluster) = &self.cluster {
            // A node's region is the one in its certificate: a member claiming another one (in its
            // membership entry) is refused outright, before any of its data is looked at.
            let gossiped = match &message {
                PeerMessageV1::Gossip { membership, .. } | PeerMessageV1::GossipReports { membership, .. } => {
                    membership.get(from).map(|m| m.region.clone())
                }
                _ => None,
            };
            let claimed = gossiped.or_else(|| cluster.region_of(from));
            if let Some(claimed) = claimed.filter(|claimed| *claimed != peer.region) {
                let residency = self.node.residency();
                residency.note_rejected(
                    0,
                    &format!("node {} claims region {claimed} but its certificate says {}", peer.name, peer.region),
                );
                return Err(format!(
                    "node {} claims region {claimed} in its membership but its certificate was issued for region {}",
                    peer.name, peer.region
                ));
            }
            cluster.heartbeat(from);
        }
        match message {
            PeerMessageV1::Hello => Ok(PeerReplyV1::Hello { node_id: self.node.id() }),
            PeerMessageV1::Sync(message) => {
                check_partition(message.partition().0)?;
                let (node, store, sync) = (self.node.clone(), self.store.clone(), self.sync.clone());
                let region = peer.region.clone();
                blocking(move || {
                    let residency = Some((node.residency().as_ref(), region.as_str()));
                    crate::peer_sync::answer_sync(store, sync, node.id(), from, message, residency)
                })
                .await
            }
            PeerMessageV1::Gossip { membership, handoff } => {
                let cluster = self.cluster.as_ref().ok_or("this node runs without a cluster")?;
                cluster.merge(&membership).map_err(|e| format!("storing the membership: {e}"))?;
                cluster.set_peer_handoff(from, handoff);
                Ok(PeerReplyV1::Gossip {
                    node_id: self.node.id(),
                    membership: cluster.snapshot(),
                    handoff: cluster.local_handoff(),
                })
            }
            PeerMessageV1::GossipReports { membership, handoff, reports } => {
                let cluster = self.cluster.as_ref().ok_or("this node runs without a cluster")?;
                cluster.merge(&membership).map_err(|e| format!("storing the membership: {e}"))?;
                cluster.set_peer_handoff(from, handoff);
                let node = self.node.clone();
                tokio::task::spawn_blocking(move || take_own_reports(&node, from, &reports))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(PeerReplyV1::GossipReports {
                    node_id: self.node.id(),
                    membership: cluster.snapshot(),
                    handoff: cluster.local_handoff(),
                    reports: self.node.own_reports(),
                })
            }
            PeerMessageV1::PartitionVv { partition } => {
                check_partition(partition)?;
                use meridian_replication::antientropy::SyncStore as _;
                let vv = self.store.partition_vv(PartitionId(partition)).map_err(|e| e.to_string())?;
                Ok(PeerReplyV1::Vv(vv))
            }
            PeerMessageV1::Replicate { partition, records } => {
                check_partition(partition)?;
                let mut store = self.store.clone();
                blocking(move || {
                    store.accept_pushed(PartitionId(partition), &records).map_err(|e| e.to_string())?;
                    Ok(PeerReplyV1::Applied)
                })
                .await
            }
            PeerMessageV1::ReadKey { key } => {
                // Neither region may hold a key its rules keep away from the asker's region.
                if !self.node.residency().allowed_in(&peer.region, &key) {
                    return Ok(PeerReplyV1::State(None));
                }
                let state = self.node.stored_state(&key).map_err(|e| e.message)?;
                Ok(PeerReplyV1::State(state))
            }
            PeerMessageV1::PrefixStates { partition, rule, namespace, prefix, after, limit } => {
                check_partition(partition)?;
                let node = self.node.clone();
                let region = peer.region.clone();
                blocking(move || {
                    let asked =
                        crate::residency::changes::PrefixAsk { partition, rule, namespace, prefix, after, limit };
                    crate::residency::changes::serve_prefix_states(&node, &region, asked)
                })
                .await
            }
            PeerMessageV1::Residency { rules } => {
                rules.check_shape().map_err(|e| format!("refusing malformed residency rules: {e}"))?;
                let residency = self.node.residency().clone();
                let theirs = rules.clone();
                tokio::task::spawn_blocking(move || residency.adopt(&theirs))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("storing the residency rules: {e}"))?;
                Ok(PeerReplyV1::Residency { rules: (*self.node.residency().rules()).clone() })
            }
            PeerMessageV1::Repair { partition, key, state } => {
                check_partition(partition)?;
                let mut store = self.store.clone();
                blocking(move || {
                    use meridian_replication::antientropy::SyncStore as _;
                    store
                        .apply_states(PartitionId(partition), &[KeyState { key, state }], None)
                        .map_err(|e| e.to_string())?;
                    Ok(PeerReplyV1::Applied)
                })
                .await
            }
            PeerMessageV1::Forward(request) => {
                Ok(PeerReplyV1::Forwarded(self.node.clone().execute_forwarded(request).await))
            }
            PeerMessageV1::PushBatch { pushes, relay } => {
                if let Some(bad) = pushes.iter().find(|p| p.partition >= PARTITIONS) {
                    return Err(format!("no partition {}", bad.partition));
                }
                let (store, node) = (self.store.clone(), self.node.clone());
                let applied = pushes.clone();
                let reply = blocking(move || {
                    for push in &applied {
                        let mut store = store.clone();
                        store.accept_pushed(PartitionId(push.partition), &push.records).map_err(|e| e.to_string())?;
                        for report in &push.reports {
                            node.take_report(push.partition, *report);
                        }
                    }
                    Ok(PeerReplyV1::Applied)
                })
                .await?;
                if relay {
                    if let Some(coordinator) = self.node.coordinator() {
                        let coordinator = coordinator.clone();
                        tokio::spawn(async move { coordinator.fan_out_batch_in_region(pushes).await });
                    }
                }
                Ok(reply)
            }
            PeerMessageV1::VvDigests { partitions } => {
                if let Some(bad) = partitions.iter().find(|p| **p >= PARTITIONS) {
                    return Err(format!("no partition {bad}"));
                }
                let store = self.store.clone();
                blocking(move || crate::peer_sync::vv_digests(&store, &partitions).map(PeerReplyV1::VvDigests)).await
            }
            PeerMessageV1::Push { partition, records, reports, relay } => {
                check_partition(partition)?;
                let (mut store, node) = (self.store.clone(), self.node.clone());
                let (applied, taken) = (records.clone(), reports.clone());
                let reply = blocking(move || {
                    store.accept_pushed(PartitionId(partition), &applied).map_err(|e| e.to_string())?;
                    for report in &taken {
                        node.take_report(partition, *report);
                    }
                    Ok(PeerReplyV1::Applied)
                })
                .await?;
                if relay {
                    if let Some(coordinator) = self.node.coordinator() {
                        let coordinator = coordinator.clone();
                        let push = crate::coordinator::Pushed { partition, records, reports };
                        tokio::spawn(async move { coordinator.fan_out_in_region(push).await });
                    }
                }
                Ok(reply)
            }
        }
    }
}

fn check_partition(partition: u16) -> Result<(), String> {
    if partition < PARTITIONS {
        Ok(())
    } else {
        Err(format!("no partition {partition}"))
    }
}

/// Runs storage work (which blocks, and may take key locks) off the reactor.
async fn blocking(work: impl FnOnce() -> Result<PeerReplyV1, String> + Send + 'static) -> Result<PeerReplyV1, String> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(format!("the peer handler failed: {e}")))
}

impl PeerHandler for PeerService {
    async fn handle(&self, peer: &PeerIdentity, request: Vec<u8>) -> Vec<u8> {
        let answer = self.answer(peer, &request).await;
        if let Err(reason) = &answer {
            tracing::warn!(peer = %peer.name, %reason, "refused a peer request");
        }
        codec::encode(&PeerResponse::V1(answer))
    }
}
