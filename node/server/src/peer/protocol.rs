//! The node-to-node protocol carried by the mutual-TLS peer transport (the handler that answers it is
//! `crate::api::peer_service`).
//!
//! Every request travels in a versioned envelope naming the sender's node id; every reply is a
//! versioned `Result`, so a refusal reaches the caller as a message, never as a dropped stream.
//!
//! | request | answered with | used by |
//! |---|---|---|
//! | `Hello` | the node id | anti-entropy threads |
//! | `Gossip { membership, handoff }` | ours (push-pull) | nodes of the previous version |
//! | `GossipReports { membership, handoff, reports }` | ours, with our safe-time reports | [`crate::region::gossip`]; doubles as a heartbeat |
//! | `PartitionVv { partition }` | our vector of the partition | a draining node measuring its handoff |
//! | `Sync(message)` | the anti-entropy session's replies | [`crate::region::peer_sync`] |
//! | `Replicate { partition, records }` | `Applied` once durable | nodes of an earlier version (fan-out and hint replay now send `Push` / `PushBatch`) |
//! | `ReadKey { key }` | the key's stored state | quorum reads |
//! | `Repair { partition, key, state }` | `Applied` once durable | quorum read write-back, read repair |
//! | `Forward(request)` | the client reply | a node that is not a replica of the key |
//! | `PushBatch { pushes, relay }` | `Applied` once all are durable | a shipper to another region's entry point; hint replay; without records, reports only: vouches for the successor of a removed id (`region/gossip.rs`) |
//! | `VvDigests { partitions }` | a digest of our vector of each | anti-entropy, to skip partitions already in sync |
//! | `Push { partition, records, reports, relay }` | `Applied` once durable | write fan-out (in a region, and to one entry point per other region, which relays it in its region) |
//! | `Auth { state }` | our authentication metadata, after joining theirs | [`crate::region::gossip`], and at once after an `auth` change |
//! | `VvCombined { partitions, digest }` (version 3) | `VvDigests`: empty when all match | anti-entropy, before `VvDigests` |
//! | `GossipCompact { digest, membership, handoff, reports }` (version 3) | our membership digest, ours only if the digests differ | [`crate::region::gossip`] over `meridian-peer/3` connections; doubles as a heartbeat |
//! | `SyncBatch(offers)` (version 5) | `Sync`: the answers that fit its budget | anti-entropy passes: the offers of many partitions' sessions in one round trip (the digest fallback's requests still go one per `Sync`) |
//! | `PushIdempotent { push, id, record }` (version 4) | `Applied` once durable | write fan-out of a write with an idempotency id: the replicas keep its record, so a retry on any of them is applied once (from version 5 the record travels inside the pushed record's delta, and a plain `Push` is sent) |
//!
//! Any successful request counts as a heartbeat from its sender.

use meridian_client::proto::{ErrorReply, Reply, RequestV1};
use meridian_crdt::{codec, NodeId};
use meridian_replication::antientropy::{KeyState, LogRecord as SyncRecord, SyncMessage};
use meridian_replication::{Membership, SafeReport};
use serde::{Deserialize, Serialize};

use crate::storage::StorageError;
use crate::store::sync_store::SyncStoreError;

/// Records of one partition on their way to another replica, with what they prove about their
/// origins' logs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pushed {
    /// The partition.
    pub partition: u16,
    /// The records, each under its origin's position.
    pub records: Vec<SyncRecord>,
    /// Safe-time reports about the records' origins.
    pub reports: Vec<SafeReport>,
}

/// Most anti-entropy offers in one `SyncBatch` (one per partition a pass runs a round of).
pub const MAX_SYNC_BATCH: usize = 64;

/// Largest peer message decoded (a hint, one record such a message carried, is bounded by the same
/// figure: `crate::layout::MAX_HINT_BYTES`).
pub const MAX_PEER_MESSAGE_BYTES: usize = crate::layout::MAX_HINT_BYTES;

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
    /// Log records of one partition to make durable here. Sent by nodes of an earlier version
    /// (today's fan-out sends `Push`, hint replay `PushBatch`); still answered.
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
        pushes: Vec<Pushed>,
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
    /// The sender's authentication metadata (users, grants, hashed tokens): the receiver joins it and
    /// answers with the join.
    Auth {
        /// The metadata.
        state: crate::auth::state::AuthRecord,
    },
    /// `GossipReports` sending only what changed (protocol version 3, `meridian-peer/3`: never sent
    /// on a connection that negotiated less). The membership travels only while the two digests
    /// differ; the reports name only the partitions whose position changed since the last
    /// exchange the sender saw answered. Answered with `GossipCompact`.
    GossipCompact {
        /// [`shared_digest`] of the sender's membership.
        digest: u64,
        /// The sender's membership, unless the receiver's last answer named the same digest.
        membership: Option<Membership>,
        /// Partitions to hand off.
        handoff: Vec<u16>,
        /// The sender's frontier and changed positions.
        reports: CompactReports,
        /// [`shared_digest`] of the sender's residency rules: the rules themselves are exchanged
        /// (`Residency`) only while the two nodes' digests differ.
        rules_digest: u64,
        /// [`shared_digest`] of the sender's authentication metadata (`Auth` likewise).
        auth_digest: u64,
    },
    /// `VvDigests` in one number (protocol version 3): the partitions as a bitmap (bit `p % 8` of
    /// byte `p / 8`) and [`combined_digest`] of the sender's digests of them, in ascending order.
    /// Answered with `VvDigests`: empty if the receiver's combined digest is the same (every
    /// partition in sync), else one digest per partition, ascending.
    VvCombined {
        /// The partitions, as a bitmap of at most 32 bytes.
        partitions: Vec<u8>,
        /// The combined digest of the sender's vectors of them.
        digest: u64,
    },
    /// A write's `Push` to another replica with the write's idempotency record (protocol version
    /// 4): the receiver keeps the record, so a retry of the write that lands on it (its
    /// coordinator died before answering) is recognised and answered as the first attempt was.
    /// Answered `Applied` once durable.
    PushIdempotent {
        /// The push (one record of `partition`, with its report).
        push: Pushed,
        /// The write's idempotency id.
        id: u128,
        /// What the coordinator recorded for it.
        record: crate::layout::IdempotencyRecord,
    },
    /// Anti-entropy offers of several partitions in one request (protocol version 5): each is
    /// answered as a `Sync` of its own would be, all in one `Sync` reply (at most
    /// [`MAX_SYNC_BATCH`] offers, one per partition; other requests are refused). A pass over many
    /// partitions then costs a few round trips instead of one per partition. From the first answer
    /// that would take the reply past its byte budget on, answers are left out; the sender asks
    /// for them again.
    SyncBatch(Vec<SyncMessage>),
}

impl PeerMessageV1 {
    /// The sender's membership, for the gossip variants that carry it.
    pub fn gossiped_membership(&self) -> Option<&Membership> {
        match self {
            PeerMessageV1::Gossip { membership, .. } | PeerMessageV1::GossipReports { membership, .. } => {
                Some(membership)
            }
            PeerMessageV1::GossipCompact { membership, .. } => membership.as_ref(),
            _ => None,
        }
    }

    /// The message's name, as spans and logs show it.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMessageV1::Hello => "peer.hello",
            PeerMessageV1::Sync(_) => "peer.sync",
            PeerMessageV1::Gossip { .. } => "peer.gossip",
            PeerMessageV1::PartitionVv { .. } => "peer.partition_vv",
            PeerMessageV1::Replicate { .. } => "peer.replicate",
            PeerMessageV1::ReadKey { .. } => "peer.read_key",
            PeerMessageV1::Repair { .. } => "peer.repair",
            PeerMessageV1::Forward(_) => "peer.forward",
            PeerMessageV1::VvDigests { .. } => "peer.vv_digests",
            PeerMessageV1::Push { .. } => "peer.push",
            PeerMessageV1::PushBatch { .. } => "peer.push_batch",
            PeerMessageV1::GossipReports { .. } => "peer.gossip_reports",
            PeerMessageV1::PrefixStates { .. } => "peer.prefix_states",
            PeerMessageV1::Residency { .. } => "peer.residency",
            PeerMessageV1::Auth { .. } => "peer.auth",
            PeerMessageV1::GossipCompact { .. } => "peer.gossip_compact",
            PeerMessageV1::VvCombined { .. } => "peer.vv_combined",
            // A push like any other (one name in traces and request counts), with one more record.
            PeerMessageV1::PushIdempotent { .. } => "peer.push",
            PeerMessageV1::SyncBatch(_) => "peer.sync_batch",
        }
    }

    /// The message as a peer speaking protocol `version` decodes it: before version 5, the deltas
    /// of the records it carries go without their writes' idempotency records
    /// ([`crate::layout::strip_idempotency`]).
    pub fn for_version(mut self, version: u8) -> PeerMessageV1 {
        if version < super::IDEMPOTENT_RECORDS_VERSION {
            match &mut self {
                PeerMessageV1::Replicate { records, .. } | PeerMessageV1::Push { records, .. } => {
                    strip_records(records)
                }
                PeerMessageV1::PushBatch { pushes, .. } => {
                    pushes.iter_mut().for_each(|p| strip_records(&mut p.records))
                }
                PeerMessageV1::PushIdempotent { push, .. } => strip_records(&mut push.records),
                PeerMessageV1::Sync(message) => message.records_mut().into_iter().for_each(|r| strip_records(r)),
                PeerMessageV1::SyncBatch(messages) => {
                    messages.iter_mut().filter_map(SyncMessage::records_mut).for_each(|r| strip_records(r))
                }
                _ => {}
            }
        }
        self
    }
}

impl PeerReplyV1 {
    /// The reply as a peer speaking protocol `version` decodes it (see
    /// [`PeerMessageV1::for_version`]).
    pub fn for_version(mut self, version: u8) -> PeerReplyV1 {
        if version < super::IDEMPOTENT_RECORDS_VERSION {
            if let PeerReplyV1::Sync(messages) = &mut self {
                for message in messages {
                    message.records_mut().into_iter().for_each(|r| strip_records(r));
                }
            }
        }
        self
    }
}

/// Re-encodes the deltas of `records` that carry an idempotency record without it.
fn strip_records(records: &mut [SyncRecord]) {
    for record in records {
        if let Some(stripped) = crate::layout::strip_idempotency(&record.delta) {
            record.delta = stripped;
        }
    }
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
    /// The receiver's authentication metadata after the join.
    Auth {
        /// The metadata.
        state: crate::auth::state::AuthRecord,
    },
    /// The answer to `GossipCompact`.
    GossipCompact {
        /// Its id.
        node_id: NodeId,
        /// [`shared_digest`] of its membership (after merging the sender's).
        digest: u64,
        /// Its membership, when the digests differed.
        membership: Option<Membership>,
        /// Partitions to hand off.
        handoff: Vec<u16>,
        /// Whether it holds no earlier report of the sender to apply changes to (it restarted, or
        /// never had one): the sender's next request carries every partition.
        needs_full_reports: bool,
        /// [`shared_digest`] of its residency rules.
        rules_digest: u64,
        /// [`shared_digest`] of its authentication metadata.
        auth_digest: u64,
    },
}

/// A node's safe-time report about its own log, for every partition: its causal frontier (a
/// packed HLC) and, per partition, the last durable position of its log there.
pub type OwnReports = (u64, Vec<u64>);

/// A node's safe-time reports in `GossipCompact`: its frontier, and the positions that changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactReports {
    /// The sender's causal frontier (a packed HLC), for every partition.
    pub safe: u64,
    /// Whether `changed` names every partition (the receiver may hold no earlier report).
    pub full: bool,
    /// Unless `full`: `stable_hash_u64s` of the positions the changes are relative to, as the
    /// sender believes the receiver holds them. A receiver holding others (it answered a request
    /// whose answer was lost, or it is another node behind the same address) applies only the
    /// named partitions and asks for every partition.
    pub base: u64,
    /// `(partition, last durable position)` for each partition whose position changed.
    pub changed: Vec<(u16, u64)>,
}

/// A digest of state every node holds a copy of (membership, residency rules, authentication
/// metadata), to tell whether two nodes hold the same without sending it: the stable hash of its
/// encoding (each is made of ordered maps, so equal states encode the same on every node).
pub fn shared_digest<T: Serialize>(state: &T) -> u64 {
    meridian_replication::hash::stable_hash(&codec::encode(state))
}

/// The partitions as the bitmap `VvCombined` carries.
pub fn partition_bitmap(partitions: &[u16]) -> Vec<u8> {
    let mut bitmap = vec![0u8; usize::from(crate::layout::PARTITIONS).div_ceil(8)];
    for &p in partitions.iter().filter(|p| **p < crate::layout::PARTITIONS) {
        bitmap[usize::from(p / 8)] |= 1 << (p % 8);
    }
    bitmap
}

/// The partitions a `VvCombined` bitmap names, ascending; `None` if it is longer than the
/// partitions there are.
pub fn partitions_of_bitmap(bitmap: &[u8]) -> Option<Vec<u16>> {
    if bitmap.len() > usize::from(crate::layout::PARTITIONS).div_ceil(8) {
        return None;
    }
    let set = |p: u16| bitmap.get(usize::from(p / 8)).is_some_and(|byte| byte & (1 << (p % 8)) != 0);
    Some((0..crate::layout::PARTITIONS).filter(|p| set(*p)).collect())
}

/// One digest for a list of per-partition vector digests (in the order given).
pub fn combined_digest(digests: &[u64]) -> u64 {
    meridian_replication::hash::stable_hash_u64s(digests)
}

/// Encodes a request from `from`.
pub fn encode_request(from: NodeId, message: PeerMessageV1) -> Vec<u8> {
    codec::encode(&PeerRequest::V1 { from, message })
}

/// Decodes a reply: the answer, or the peer's refusal as [`PeerCallError::Refused`].
pub fn decode_reply(bytes: &[u8]) -> Result<PeerReplyV1, PeerCallError> {
    let PeerResponse::V1(answer) =
        codec::decode(bytes, MAX_PEER_MESSAGE_BYTES).map_err(|e| PeerCallError::Undecodable(e.to_string()))?;
    answer.map_err(PeerCallError::Refused)
}

/// Why a request to a peer got no answer to use. On the wire a refusal is the peer's reason as text
/// (`PeerResponse::V1(Err(reason))`); every other case arises on the caller's side. All are
/// retryable later or elsewhere except [`PeerCallError::NotSent`], which a retry to the same
/// target meets again.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// No address is known for the node.
    #[error("no address known for node {0}")]
    NoAddress(NodeId),
    /// The transport failed: connecting, a timeout, a reset stream.
    #[error("{0}")]
    Transport(String),
    /// The reply did not decode.
    #[error("undecodable peer reply: {0}")]
    Undecodable(String),
    /// The peer refused the request, saying why.
    #[error("{0}")]
    Refused(String),
    /// This node did not send it: the target's certified region may not receive the message, or
    /// the target claims another region than its certificate.
    #[error("{0}")]
    NotSent(String),
    /// The peer answered with a reply of another kind than the request calls for.
    #[error("unexpected reply {0}")]
    Unexpected(String),
}

/// How the text of a [`PeerRefusal::Undecodable`] begins — in this release and the ones before it, so
/// a caller can tell "the peer does not know this request" from other refusals.
pub const UNDECODABLE_REFUSAL: &str = "undecodable request: ";

/// Why this node refuses a peer's request. It travels as its text (`PeerResponse::V1(Err(..))`),
/// which the caller gets back as [`PeerCallError::Refused`].
#[derive(Debug, thiserror::Error)]
pub enum PeerRefusal {
    /// The request does not decode.
    #[error("undecodable request: {0}")]
    Undecodable(String),
    /// The request names a partition that does not exist.
    #[error("no partition {0}")]
    NoPartition(u16),
    /// Gossip reached a node that runs without a cluster.
    #[error("this node runs without a cluster")]
    NoCluster,
    /// The sender claims a region its certificate was not issued for.
    #[error(
        "node {name} claims region {claimed} in its membership but its certificate was issued for region {certified}"
    )]
    WrongRegion {
        /// The sender's certified name.
        name: String,
        /// The region its membership entry claims.
        claimed: String,
        /// The region of its certificate.
        certified: String,
    },
    /// The request's sender id is not the one the certified peer is known under.
    #[error("refusing node {name}'s request: {source}")]
    NotTheSender {
        /// The sender's certified name.
        name: String,
        /// Why.
        source: meridian_replication::ClaimError,
    },
    /// The gossiped membership says what its sender may not say (about itself or about others).
    #[error("refusing node {name}'s membership: {source}")]
    ForgedMembership {
        /// The sender's certified name.
        name: String,
        /// The first claim refused.
        source: meridian_replication::ClaimError,
    },
    /// Pushed records claim a relay the sender may not make.
    #[error("refusing node {name}'s push: {reason}")]
    ForgedRelay {
        /// The sender's certified name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Residency rules naming regions no member of the cluster is in.
    #[error("refusing residency rules naming unknown regions {unknown:?} (the cluster's regions: {known:?})")]
    UnknownRegions {
        /// The regions named that no member is in.
        unknown: Vec<String>,
        /// The regions known here.
        known: Vec<String>,
    },
    /// The residency rules sent are malformed.
    #[error("refusing malformed residency rules: {0}")]
    MalformedRules(String),
    /// The authentication metadata sent is malformed.
    #[error("refusing malformed authentication metadata: {0}")]
    MalformedAuth(String),
    /// An idempotency record pushed with a write that does not belong to it.
    #[error("refusing an idempotency record: {0}")]
    MalformedIdempotency(String),
    /// The replicated store refused or failed (a gap, a malformed record, storage).
    #[error(transparent)]
    Store(#[from] SyncStoreError),
    /// Storing what the request carries failed.
    #[error("{what}: {source}")]
    Storage {
        /// What was being stored.
        what: &'static str,
        /// Why it failed.
        source: StorageError,
    },
    /// Reading or scanning failed.
    #[error(transparent)]
    Read(StorageError),
    /// The anti-entropy session refused the message.
    #[error("{0}")]
    Sync(String),
    /// A backfill asked about a rule this node does not agree on, or is backfilling itself.
    #[error("{0}")]
    NotNow(String),
    /// The handler itself failed (a panicked task).
    #[error("the peer handler failed: {0}")]
    Failed(String),
}

impl PeerRefusal {
    /// The `reason` label a refusal of a peer's claim is counted under in
    /// `meridian_peer_refused_total` (`None`: not a claim refused, or counted where it was found).
    pub fn claim_reason(&self) -> Option<&'static str> {
        match self {
            PeerRefusal::NotTheSender { .. } => Some("from_mismatch"),
            PeerRefusal::WrongRegion { .. } => Some("wrong_region"),
            PeerRefusal::ForgedRelay { .. } => Some("forged_relay"),
            PeerRefusal::UnknownRegions { .. } => Some("unknown_region_rules"),
            PeerRefusal::MalformedIdempotency(_) => Some("forged_idempotency"),
            // Counted by `Cluster::merge_claimed` and the store, which also see gossip replies and
            // anti-entropy records.
            _ => None,
        }
    }
}

impl PeerCallError {
    /// The reply `reply`, which is not the kind the request called for.
    pub fn unexpected(reply: &PeerReplyV1) -> PeerCallError {
        PeerCallError::Unexpected(format!("{reply:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coordinator tells a peer of an older release by this text (`Coordinator::forward`).
    #[test]
    fn an_undecodable_request_is_refused_with_the_known_prefix() {
        let refusal = PeerRefusal::Undecodable("malformed: unexpected variant".into()).to_string();
        assert!(refusal.starts_with(UNDECODABLE_REFUSAL), "{refusal}");
    }

    #[test]
    fn partition_bitmaps_round_trip_and_refuse_what_is_too_long() {
        for partitions in [vec![], vec![0], vec![0, 7, 8, 200, 255], (0..crate::layout::PARTITIONS).collect()] {
            let bitmap = partition_bitmap(&partitions);
            assert_eq!(bitmap.len(), 32);
            assert_eq!(partitions_of_bitmap(&bitmap), Some(partitions));
        }
        assert_eq!(partitions_of_bitmap(&[0b11]), Some(vec![0, 1]), "a shorter bitmap names fewer");
        assert_eq!(partitions_of_bitmap(&[0; 33]), None);
    }

    #[test]
    fn combined_digests_tell_lists_apart() {
        assert_eq!(combined_digest(&[1, 2]), combined_digest(&[1, 2]));
        assert_ne!(combined_digest(&[1, 2]), combined_digest(&[2, 1]));
        assert_ne!(combined_digest(&[1]), combined_digest(&[1, 0]));
    }

    #[test]
    fn records_lose_their_idempotency_records_only_for_peers_before_version_5() {
        use crate::layout::{self, IdempotencyRecord, KeptIdempotency, Stored};
        use meridian_client::proto::{Key, Reply, ReplyBody};
        use meridian_replication::antientropy::SyncMessageV1;
        let key = Key::new("app", "visits").unwrap();
        let stored = Stored::bare(meridian_crdt::Entry::empty(meridian_crdt::CrdtType::Counter));
        let reply = Reply { causal_token: Default::default(), body: ReplyBody::Written { counter: None } };
        let kept = KeptIdempotency {
            id: 7,
            record: IdempotencyRecord::V1 { created_ms: 1, key: key.clone(), request_digest: 2, reply },
        };
        let carrying = SyncRecord {
            origin: NodeId(1),
            seq: 1,
            key: layout::data_key(&key),
            delta: layout::encode_delta(&stored, Some(&kept)),
            hlc: 1,
        };
        let plain = SyncRecord { delta: layout::encode_stored(&stored), ..carrying.clone() };
        let records_of_push = |m: &PeerMessageV1| match m {
            PeerMessageV1::Push { records, .. } => records.clone(),
            other => panic!("{other:?}"),
        };
        let push =
            || PeerMessageV1::Push { partition: 0, records: vec![carrying.clone()], reports: vec![], relay: false };
        assert_eq!(records_of_push(&push().for_version(5)), vec![carrying.clone()]);
        assert_eq!(records_of_push(&push().for_version(4)), vec![plain.clone()]);

        let batch = PeerMessageV1::PushBatch {
            pushes: vec![Pushed { partition: 0, records: vec![carrying.clone()], reports: vec![] }],
            relay: true,
        };
        let PeerMessageV1::PushBatch { pushes, .. } = batch.for_version(3) else { unreachable!() };
        assert_eq!(pushes[0].records, vec![plain.clone()]);

        let answer = || {
            PeerReplyV1::Sync(vec![SyncMessage::V1(SyncMessageV1::Records {
                partition: meridian_replication::antientropy::PartitionId(0),
                request: 1,
                records: vec![carrying.clone()],
                more: false,
            })])
        };
        let records_of_answer = |reply: PeerReplyV1| match reply {
            PeerReplyV1::Sync(mut messages) => messages[0].records_mut().unwrap().clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(records_of_answer(answer().for_version(5)), vec![carrying.clone()]);
        assert_eq!(records_of_answer(answer().for_version(4)), vec![plain]);
    }
}
