//! Golden byte vectors for every peer message: one sample of each request and reply variant,
//! encoded and compared with the bytes this release writes. A layout change — a field added to a
//! variant, variants reordered — fails here, because a node of the previous release could no
//! longer decode it (new variants go at the end and must be negotiated; `docs/operations.md`,
//! "Upgrades"). The `match`es are exhaustive: a new variant does not compile until it has a sample.
//! To print the vectors after an intended change: `GOLDEN_PRINT=1 cargo test -p meridian-server golden`.

use meridian_client::proto::{Operation, Reply, ReplyBody, RequestV1};
use meridian_crdt::{codec, NodeId, VersionVector};
use meridian_replication::antientropy::{KeyState, LogRecord, PartitionId, SyncMessage, SyncMessageV1};
use meridian_replication::residency::RuleSet;
use meridian_replication::{Membership, SafeReport};

use super::protocol::{CompactReports, PeerMessageV1, PeerReplyV1, PeerRequest, PeerResponse, Pushed};
use crate::auth::state::{AuthRecord, AuthState};

fn vv() -> VersionVector {
    [(NodeId(1), 2)].into_iter().collect()
}

fn record() -> LogRecord {
    LogRecord { origin: NodeId(1), seq: 2, key: vec![3], delta: vec![4], hlc: 5 }
}

fn report() -> SafeReport {
    SafeReport { origin: NodeId(1), seq: 2, safe: 3 }
}

fn offer() -> SyncMessage {
    SyncMessage::V1(SyncMessageV1::Offer { partition: PartitionId(3), request: 7, vv: vv(), safe_hlc: 9 })
}

/// One sample of every request variant, named.
fn requests() -> Vec<(&'static str, PeerMessageV1)> {
    let samples = vec![
        PeerMessageV1::Hello,
        PeerMessageV1::Sync(offer()),
        PeerMessageV1::Gossip { membership: Membership::new(), handoff: vec![1] },
        PeerMessageV1::PartitionVv { partition: 2 },
        PeerMessageV1::Replicate { partition: 2, records: vec![record()] },
        PeerMessageV1::ReadKey { key: vec![1, 2] },
        PeerMessageV1::Repair { partition: 2, key: vec![1], state: vec![2] },
        PeerMessageV1::Forward(RequestV1 {
            consistency: None,
            causal_token: None,
            timeout_ms: 5,
            op: Operation::Status,
        }),
        PeerMessageV1::VvDigests { partitions: vec![1, 2] },
        PeerMessageV1::Push { partition: 2, records: vec![record()], reports: vec![report()], relay: true },
        PeerMessageV1::PushBatch {
            pushes: vec![Pushed { partition: 2, records: vec![record()], reports: vec![report()] }],
            relay: false,
        },
        PeerMessageV1::GossipReports { membership: Membership::new(), handoff: vec![], reports: (7, vec![1, 2]) },
        PeerMessageV1::PrefixStates {
            partition: 2,
            rule: 1,
            namespace: "ns".into(),
            prefix: "p/".into(),
            after: Some(vec![9]),
            limit: 10,
        },
        PeerMessageV1::Residency { rules: RuleSet::default() },
        PeerMessageV1::Auth { state: AuthRecord::V1(AuthState::default()) },
        PeerMessageV1::GossipCompact {
            digest: 5,
            membership: None,
            handoff: vec![1],
            reports: CompactReports { safe: 7, full: false, base: 6, changed: vec![(2, 3)] },
            rules_digest: 8,
            auth_digest: 9,
        },
        PeerMessageV1::VvCombined { partitions: vec![0b101], digest: 4 },
        PeerMessageV1::PushIdempotent {
            push: Pushed { partition: 2, records: vec![record()], reports: vec![report()] },
            id: 6,
            record: crate::layout::IdempotencyRecord::V1 {
                created_ms: 7,
                key: "ns/k".parse().expect("a valid key"),
                request_digest: 8,
                reply: Reply { causal_token: Default::default(), body: ReplyBody::Written { counter: Some(9) } },
            },
        },
        PeerMessageV1::SyncBatch(vec![offer(), offer()]),
    ];
    samples.into_iter().map(|m| (request_name(&m), m)).collect()
}

fn request_name(message: &PeerMessageV1) -> &'static str {
    match message {
        PeerMessageV1::Hello => "Hello",
        PeerMessageV1::Sync(_) => "Sync",
        PeerMessageV1::Gossip { .. } => "Gossip",
        PeerMessageV1::PartitionVv { .. } => "PartitionVv",
        PeerMessageV1::Replicate { .. } => "Replicate",
        PeerMessageV1::ReadKey { .. } => "ReadKey",
        PeerMessageV1::Repair { .. } => "Repair",
        PeerMessageV1::Forward(_) => "Forward",
        PeerMessageV1::VvDigests { .. } => "VvDigests",
        PeerMessageV1::Push { .. } => "Push",
        PeerMessageV1::PushBatch { .. } => "PushBatch",
        PeerMessageV1::GossipReports { .. } => "GossipReports",
        PeerMessageV1::PrefixStates { .. } => "PrefixStates",
        PeerMessageV1::Residency { .. } => "Residency",
        PeerMessageV1::Auth { .. } => "Auth",
        PeerMessageV1::GossipCompact { .. } => "GossipCompact",
        PeerMessageV1::VvCombined { .. } => "VvCombined",
        PeerMessageV1::PushIdempotent { .. } => "PushIdempotent",
        PeerMessageV1::SyncBatch(_) => "SyncBatch",
    }
}

/// One sample of every reply variant, named.
fn replies() -> Vec<(&'static str, PeerReplyV1)> {
    let samples = vec![
        PeerReplyV1::Hello { node_id: NodeId(1) },
        PeerReplyV1::Sync(vec![offer()]),
        PeerReplyV1::Gossip { node_id: NodeId(1), membership: Membership::new(), handoff: vec![2] },
        PeerReplyV1::Vv(vv()),
        PeerReplyV1::Applied,
        PeerReplyV1::State(Some(vec![1])),
        PeerReplyV1::Forwarded(Ok(Reply { causal_token: Default::default(), body: ReplyBody::Value(None) })),
        PeerReplyV1::VvDigests(vec![3]),
        PeerReplyV1::GossipReports {
            node_id: NodeId(1),
            membership: Membership::new(),
            handoff: vec![],
            reports: (7, vec![1]),
        },
        PeerReplyV1::PrefixStates { states: vec![KeyState { key: vec![1], state: vec![2] }], next: None, vv: vv() },
        PeerReplyV1::Residency { rules: RuleSet::default() },
        PeerReplyV1::Auth { state: AuthRecord::V1(AuthState::default()) },
        PeerReplyV1::GossipCompact {
            node_id: NodeId(1),
            digest: 5,
            membership: Some(Membership::new()),
            handoff: vec![],
            needs_full_reports: true,
            rules_digest: 8,
            auth_digest: 9,
        },
    ];
    samples.into_iter().map(|m| (reply_name(&m), m)).collect()
}

fn reply_name(reply: &PeerReplyV1) -> &'static str {
    match reply {
        PeerReplyV1::Hello { .. } => "Hello",
        PeerReplyV1::Sync(_) => "Sync",
        PeerReplyV1::Gossip { .. } => "Gossip",
        PeerReplyV1::Vv(_) => "Vv",
        PeerReplyV1::Applied => "Applied",
        PeerReplyV1::State(_) => "State",
        PeerReplyV1::Forwarded(_) => "Forwarded",
        PeerReplyV1::VvDigests(_) => "VvDigests",
        PeerReplyV1::GossipReports { .. } => "GossipReports",
        PeerReplyV1::PrefixStates { .. } => "PrefixStates",
        PeerReplyV1::Residency { .. } => "Residency",
        PeerReplyV1::Auth { .. } => "Auth",
        PeerReplyV1::GossipCompact { .. } => "GossipCompact",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares each encoding with its golden vector (or prints them all with `GOLDEN_PRINT=1`).
fn check(kind: &str, encoded: Vec<(&'static str, Vec<u8>)>, golden: &[(&str, &str)]) {
    if std::env::var_os("GOLDEN_PRINT").is_some() {
        for (name, bytes) in &encoded {
            println!("        (\"{name}\", \"{}\"),", hex(bytes));
        }
        return;
    }
    assert_eq!(encoded.len(), golden.len(), "{kind}: one golden vector per variant");
    for ((name, bytes), (golden_name, golden_hex)) in encoded.iter().zip(golden) {
        assert_eq!(name, golden_name, "{kind}: variants in order");
        assert_eq!(&hex(bytes), golden_hex, "{kind} {name}: the wire layout changed");
    }
}

#[test]
fn golden_peer_requests() {
    let encoded = requests()
        .into_iter()
        .map(|(name, m)| (name, codec::encode(&PeerRequest::V1 { from: NodeId(42), message: m })))
        .collect();
    check("request", encoded, GOLDEN_REQUESTS);
}

#[test]
fn golden_peer_replies() {
    let mut encoded: Vec<_> =
        replies().into_iter().map(|(name, r)| (name, codec::encode(&PeerResponse::V1(Ok(r))))).collect();
    // A refusal travels as text.
    encoded.push(("Refused", codec::encode(&PeerResponse::V1(Err("no".into())))));
    check("reply", encoded, GOLDEN_REPLIES);
}

const GOLDEN_REQUESTS: &[(&str, &str)] = &[
    ("Hello", "01002a00"),
    ("Sync", "01002a010000030701010209"),
    ("Gossip", "01002a02000101"),
    ("PartitionVv", "01002a0302"),
    ("Replicate", "01002a04020101020103010405"),
    ("ReadKey", "01002a05020102"),
    ("Repair", "01002a060201010102"),
    ("Forward", "01002a0700000505"),
    ("VvDigests", "01002a08020102"),
    ("Push", "01002a090201010201030104050101020301"),
    ("PushBatch", "01002a0a010201010201030104050101020300"),
    ("GossipReports", "01002a0b000007020102"),
    ("PrefixStates", "01002a0c0201026e7302702f0101090a"),
    ("Residency", "01002a0d00000000"),
    ("Auth", "01002a0e0000000000"),
    ("GossipCompact", "01002a0f050001010700060102030809"),
    ("VvCombined", "01002a10010504"),
    ("PushIdempotent", "01002a1102010102010301040501010203060007026e73016b0800000112"),
    ("SyncBatch", "01002a120200000307010102090000030701010209"),
];
const GOLDEN_REPLIES: &[(&str, &str)] = &[
    ("Hello", "0100000001"),
    ("Sync", "01000001010000030701010209"),
    ("Gossip", "0100000201000102"),
    ("Vv", "01000003010102"),
    ("Applied", "01000004"),
    ("State", "01000005010101"),
    ("Forwarded", "0100000600000200"),
    ("VvDigests", "010000070103"),
    ("GossipReports", "01000008010000070101"),
    ("PrefixStates", "01000009010101010200010102"),
    ("Residency", "0100000a00000000"),
    ("Auth", "0100000b0000000000"),
    ("GossipCompact", "0100000c0105010000010809"),
    ("Refused", "010001026e6f"),
];
