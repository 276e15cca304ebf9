//! Writes the seed corpora of the fuzz targets (this crate's and `client/fuzz`'s `decode_frame`):
//! valid encodings of every message and record kind they decode, built with the real types, so the
//! fuzzers start from the formats rather than from nothing. Run it after a format change
//! (docs/fuzzing.md):
//!
//! ```text
//! cd node/fuzz && cargo run --example seeds            # into node/fuzz/corpus and client/fuzz/corpus
//! cd node/fuzz && cargo run --example seeds -- /tmp/x  # into /tmp/x/node and /tmp/x/client
//! ```
//!
//! Each file is named `seed-<what it holds>`; rerunning overwrites them with the same bytes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use meridian_client::proto::{
    CausalToken, Consistency, ErrorCode, ErrorReply, IdempotencyId, Key, Operation, Reply, ReplyBody, Request,
    RequestV1, Response, RuleSpec,
};
use meridian_crdt::{codec, Body, Dot, DotContext, Entry, Hlc, Mutation, NodeId, VersionVector, WriteContext};
use meridian_replication::antientropy::{
    HashRange, KeyState, LogRecord as SyncRecord, PartitionId, Resume, SyncMessage, SyncMessageV1,
};
use meridian_replication::residency::RuleSet;
use meridian_replication::{Member, MemberState, MemberVersion, Membership, SafeReport};
use meridian_server::layout::{
    self, DotIndexRecord, ElementRecord, FieldRecord, IdempotencyRecord, KeptIdempotency, LogRecord, SplitHeader, Stored, StoredEntry,
};
use meridian_server::peer::protocol::{encode_request, CompactReports, PeerMessageV1, PeerReplyV1, PeerResponse, Pushed};

fn main() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (out, client) = match std::env::args().nth(1).map(PathBuf::from) {
        Some(root) => (root.join("node"), root.join("client")),
        None => (here.join("corpus"), here.join("../../client/fuzz/corpus")),
    };
    decode_frame(&client.join("decode_frame"));
    stored_record(&out.join("stored_record"));
    peer_message(&out.join("peer_message"));
    sync_message(&out.join("sync_message"));
    doc_changes(&out.join("doc_changes"));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the corpus folder");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
}

fn w(node: u64, wall_ms: u64) -> WriteContext {
    WriteContext { node: NodeId(node), ts: Hlc { wall_ms, logical: 0 } }
}

/// One state of every CRDT type, each built by the mutations a client sends.
fn entries() -> Vec<(&'static str, Entry)> {
    let mutations: Vec<(&str, Vec<Mutation>)> = vec![
        ("counter", vec![Mutation::CounterAdd { amount: 5 }, Mutation::CounterAdd { amount: -2 }]),
        ("register", vec![Mutation::RegisterSet { value: b"hello".to_vec() }]),
        (
            "mvregister",
            vec![Mutation::MvRegisterSet {
                value: b"v".to_vec(),
                context: Some(DotContext::from_dots([Dot::new(NodeId(2), 1)])),
            }],
        ),
        (
            "set",
            vec![
                Mutation::SetAdd { members: vec![b"a".to_vec(), b"b".to_vec()] },
                Mutation::SetRemove { members: vec![b"a".to_vec()] },
            ],
        ),
        (
            "map",
            vec![
                Mutation::MapUpdate {
                    field: "n".into(),
                    mutation: Box::new(Mutation::MapUpdate {
                        field: "c".into(),
                        mutation: Box::new(Mutation::CounterAdd { amount: 1 }),
                    }),
                },
                Mutation::MapUpdate { field: "r".into(), mutation: Box::new(Mutation::RegisterSet { value: vec![1] }) },
                Mutation::MapRemove { field: "r".into() },
            ],
        ),
        (
            "doc",
            vec![
                Mutation::DocPut { json: r#"{"title":"t","tags":["a","b"],"n":1}"#.into() },
                Mutation::DocPut { json: r#"{"title":"u","nested":{"x":true}}"#.into() },
            ],
        ),
    ];
    mutations
        .into_iter()
        .map(|(name, mutations)| {
            let mut state: Option<Entry> = None;
            for (i, mutation) in mutations.iter().enumerate() {
                let delta = Entry::mutation_delta(state.as_ref(), mutation, &w(1 + i as u64 % 2, 1_000 + i as u64))
                    .expect("seed mutations apply");
                match &mut state {
                    Some(s) => s.try_join(&delta).expect("same type"),
                    None => state = Some(delta),
                }
            }
            (name, state.expect("at least one mutation"))
        })
        .collect()
}

fn vv(pairs: &[(u64, u64)]) -> VersionVector {
    pairs.iter().map(|&(n, s)| (NodeId(n), s)).collect()
}

fn key() -> Key {
    Key::new("shop", "cart/1").expect("valid key")
}

fn stored(entry: &Entry) -> Stored {
    Stored { entry: entry.clone(), deps: vv(&[(1, 1_000 << 16), (2, 900 << 16)]) }
}

fn reply() -> Reply {
    Reply { causal_token: CausalToken(vv(&[(1, 7)])), body: ReplyBody::Written { counter: Some(3) } }
}

fn membership() -> Membership {
    let mut membership = Membership::new();
    for (id, region, state) in
        [(1, "eu", MemberState::Active), (2, "us", MemberState::Joining), (3, "eu", MemberState::Removed)]
    {
        let member = Member {
            name: format!("n{id}"),
            region: region.into(),
            zone: "z1".into(),
            peer_addr: format!("127.0.0.1:70{id}0"),
            client_addr: format!("127.0.0.1:70{id}1"),
            http_addr: format!("127.0.0.1:70{id}2"),
            state,
            version: MemberVersion { incarnation: id, hlc: Hlc { wall_ms: 1_000 + id, logical: 1 } },
        };
        membership.upsert(NodeId(id), member).expect("seed members are valid");
    }
    membership
}

fn rules() -> RuleSet {
    let regions: BTreeSet<String> = ["eu".to_string(), "us".to_string()].into();
    let spec = RuleSpec {
        namespace: "pii".into(),
        prefix: "user/".into(),
        regions: vec!["eu".into()],
        replicas_per_region: None,
        home: Some("eu".into()),
        strict: false,
    };
    let (rules, _) = RuleSet::default().with_added(spec, None, 1, &regions).expect("a valid rule");
    let strict = RuleSpec {
        namespace: "logs".into(),
        prefix: String::new(),
        regions: vec!["us".into(), "eu".into()],
        replicas_per_region: None,
        home: None,
        strict: true,
    };
    rules.with_added(strict, Some(0), 2, &regions).expect("a valid rule").0
}

fn sync_record(entry: &Entry, seq: u64) -> SyncRecord {
    SyncRecord {
        origin: NodeId(2),
        seq,
        key: layout::data_key(&key()),
        delta: layout::encode_stored(&stored(entry)),
        hlc: (1_000 + seq) << 16,
    }
}

fn stored_record(dir: &Path) {
    let tagged = |kind: u8, bytes: Vec<u8>| [vec![kind], bytes].concat();
    for (name, entry) in entries() {
        write(dir, &format!("state-v2-{name}"), &tagged(0, layout::encode_stored(&stored(&entry))));
        let ts = Hlc { wall_ms: 2_000, logical: 3 };
        let v2 = LogRecord::V2 { key: key(), delta: entry.clone(), ts, deps: vv(&[(1, 4)]) };
        write(dir, &format!("log-v2-{name}"), &tagged(1, layout::encode(&v2)));
        write(dir, &format!("hint-{name}"), &tagged(3, codec::encode(&sync_record(&entry, 4))));
    }
    let (_, counter) = entries().remove(0);
    write(dir, "state-v1-counter", &tagged(0, layout::encode(&StoredEntry::V1(counter.clone()))));
    let ts = Hlc { wall_ms: 2_000, logical: 3 };
    write(dir, "log-v1", &tagged(1, layout::encode(&LogRecord::V1 { key: key(), delta: counter.clone(), ts })));
    write(dir, "log-redacted", &tagged(1, layout::encode(&LogRecord::Redacted { ts, rule: 2 })));
    let idempotency =
        IdempotencyRecord::V1 { created_ms: 1_700_000_000_000, key: key(), request_digest: 0xfeed, reply: reply() };
    write(dir, "idempotency", &tagged(2, layout::encode(&idempotency)));
    // A write made with an idempotency id: its log record and its shipped delta carry the record.
    let kept = KeptIdempotency { id: 0x1d3e, record: idempotency };
    let v3 = LogRecord::V3 { key: key(), delta: counter.clone(), ts, deps: vv(&[(1, 4)]), kept: Box::new(kept.clone()) };
    write(dir, "log-v3", &tagged(1, layout::encode(&v3)));
    write(dir, "delta-v3", &tagged(0, layout::encode_delta(&stored(&counter), Some(&kept))));
    // A set kept one record per element: its header, an element's dots, a dot's element.
    let (_, set) = entries().into_iter().find(|(name, _)| *name == "set").expect("a set entry");
    let mut header = stored(&set);
    if let Some(set) = header.entry.set_mut() {
        set.take_tagged();
    }
    let header = SplitHeader { stored: header, elements: 2, present: 2, element_bytes: 24, writes: 3 };
    write(dir, "state-split-header", &tagged(0, layout::encode_split(&header)));
    let dots = vec![Dot::new(NodeId(1), 1), Dot::new(NodeId(2), 7)];
    write(dir, "element", &tagged(0, layout::encode(&ElementRecord::V1(dots))));
    write(dir, "dot-index", &tagged(0, layout::encode(&DotIndexRecord::V1(b"member".to_vec()))));
    write(dir, "map-field", &tagged(0, layout::encode(&FieldRecord::V1(counter.clone()))));
    write(dir, "membership", &tagged(4, codec::encode(&membership())));
    write(dir, "rules", &tagged(5, codec::encode(&rules())));
    write(dir, "covered-vv", &tagged(6, codec::encode(&vv(&[(1, 3), (300, 1), (u64::MAX, u64::MAX)]))));
    write(dir, "u64", &tagged(7, 42u64.to_be_bytes().to_vec()));
    write(dir, "log-key", &tagged(7, layout::log_key(5, NodeId(3), 9).to_vec()));
    write(dir, "safe-key", &tagged(7, layout::safe_key(5, NodeId(3))));
    write(dir, "data-key", &tagged(7, layout::data_key(&key())));
}

fn peer_message(dir: &Path) {
    let entries = entries();
    let (_, counter) = &entries[0];
    let records = vec![sync_record(counter, 1), sync_record(counter, 2)];
    let reports = vec![SafeReport { origin: NodeId(2), seq: 2, safe: 1_002 << 16 }];
    let request = RequestV1 {
        consistency: Some(Consistency::LocalQuorum),
        causal_token: Some(CausalToken(vv(&[(1, 3)]))),
        timeout_ms: 500,
        op: Operation::Write {
            key: key(),
            mutation: Mutation::SetAdd { members: vec![b"x".to_vec()] },
            idempotency_id: Some(IdempotencyId(7)),
        },
    };
    let requests: Vec<(&str, PeerMessageV1)> = vec![
        ("hello", PeerMessageV1::Hello),
        ("sync", PeerMessageV1::Sync(offer(1))),
        ("gossip", PeerMessageV1::Gossip { membership: membership(), handoff: vec![3, 200] }),
        ("partition-vv", PeerMessageV1::PartitionVv { partition: 9 }),
        ("replicate", PeerMessageV1::Replicate { partition: 4, records: records.clone() }),
        ("read-key", PeerMessageV1::ReadKey { key: layout::data_key(&key()) }),
        (
            "repair",
            PeerMessageV1::Repair {
                partition: 4,
                key: layout::data_key(&key()),
                state: layout::encode_stored(&stored(counter)),
            },
        ),
        ("forward", PeerMessageV1::Forward(request)),
        ("vv-digests", PeerMessageV1::VvDigests { partitions: vec![0, 1, 255] }),
        ("push", PeerMessageV1::Push { partition: 4, records: records.clone(), reports: reports.clone(), relay: true }),
        (
            "push-batch",
            PeerMessageV1::PushBatch {
                pushes: vec![Pushed { partition: 4, records: records.clone(), reports: reports.clone() }],
                relay: false,
            },
        ),
        (
            "gossip-reports",
            PeerMessageV1::GossipReports { membership: membership(), handoff: vec![], reports: (77, vec![1, 2, 3]) },
        ),
        (
            "prefix-states",
            PeerMessageV1::PrefixStates {
                partition: 4,
                rule: 1,
                namespace: "pii".into(),
                prefix: "user/".into(),
                after: Some(b"\x03piiuser/1".to_vec()),
                limit: 100,
            },
        ),
        ("residency", PeerMessageV1::Residency { rules: rules() }),
        (
            "gossip-compact",
            PeerMessageV1::GossipCompact {
                digest: 7,
                membership: Some(membership()),
                handoff: vec![3],
                reports: CompactReports { safe: 77, full: false, base: 5, changed: vec![(1, 2), (200, 9)] },
                rules_digest: 8,
                auth_digest: 9,
            },
        ),
        ("vv-combined", PeerMessageV1::VvCombined { partitions: vec![0b1011, 0, 1], digest: 42 }),
        (
            "push-idempotent",
            PeerMessageV1::PushIdempotent {
                push: Pushed { partition: 4, records: records[..1].to_vec(), reports: reports.clone() },
                id: 0x1d3e,
                record: IdempotencyRecord::V1 {
                    created_ms: 1_700_000_000_000,
                    key: key(),
                    request_digest: 5,
                    reply: reply(),
                },
            },
        ),
    ];
    for (name, message) in requests {
        write(dir, &format!("request-{name}"), &encode_request(NodeId(2), message));
    }
    let state = layout::encode_stored(&stored(counter));
    let replies: Vec<(&str, Result<PeerReplyV1, String>)> = vec![
        ("hello", Ok(PeerReplyV1::Hello { node_id: NodeId(1) })),
        ("sync", Ok(PeerReplyV1::Sync(vec![records_reply(records.clone()), offer(2)]))),
        ("gossip", Ok(PeerReplyV1::Gossip { node_id: NodeId(1), membership: membership(), handoff: vec![1] })),
        ("vv", Ok(PeerReplyV1::Vv(vv(&[(1, 3), (2, 9)])))),
        ("applied", Ok(PeerReplyV1::Applied)),
        ("state", Ok(PeerReplyV1::State(Some(state.clone())))),
        ("state-none", Ok(PeerReplyV1::State(None))),
        ("forwarded", Ok(PeerReplyV1::Forwarded(Ok(reply())))),
        (
            "forwarded-error",
            Ok(PeerReplyV1::Forwarded(Err(ErrorReply::new(ErrorCode::WrongType, "key holds a counter")))),
        ),
        ("vv-digests", Ok(PeerReplyV1::VvDigests(vec![1, u64::MAX]))),
        (
            "gossip-reports",
            Ok(PeerReplyV1::GossipReports {
                node_id: NodeId(1),
                membership: membership(),
                handoff: vec![],
                reports: (5, vec![0; 4]),
            }),
        ),
        (
            "prefix-states",
            Ok(PeerReplyV1::PrefixStates {
                states: vec![KeyState { key: layout::data_key(&key()), state }],
                next: None,
                vv: vv(&[(1, 1)]),
            }),
        ),
        ("residency", Ok(PeerReplyV1::Residency { rules: rules() })),
        ("refused", Err("no partition 999".into())),
    ];
    for (name, answer) in replies {
        write(dir, &format!("reply-{name}"), &codec::encode(&PeerResponse::V1(answer)));
    }
}

const PARTITION: PartitionId = PartitionId(7);

fn offer(request: u64) -> SyncMessage {
    SyncMessage::V1(SyncMessageV1::Offer { partition: PARTITION, request, vv: vv(&[(1, 1), (2, 2)]), safe_hlc: 5 })
}

fn records_reply(records: Vec<SyncRecord>) -> SyncMessage {
    SyncMessage::V1(SyncMessageV1::Records { partition: PARTITION, request: 1, records, more: false })
}

/// Message lists as the `sync_message` target reads them, against the session it builds (a round
/// started with request id 1 between node 1 and peer 2, partition 7).
fn sync_message(dir: &Path) {
    let set = |elements: &[u64]| codec::encode(&elements.iter().copied().collect::<BTreeSet<u64>>());
    let record =
        |seq: u64| SyncRecord { origin: NodeId(2), seq, key: b"k".to_vec(), delta: set(&[seq]), hlc: seq << 16 };
    let m = |message: SyncMessageV1| SyncMessage::V1(message);
    let p = PARTITION;
    let root = HashRange::ROOT;
    let children: Vec<HashRange> = root.children(2).collect();
    let lists: Vec<(&str, Vec<SyncMessage>)> = vec![
        ("offer", vec![offer(9)]),
        ("records", vec![records_reply(vec![record(1), record(2)])]),
        (
            "records-more",
            vec![
                m(SyncMessageV1::Records { partition: p, request: 1, records: vec![record(1)], more: true }),
                m(SyncMessageV1::Records { partition: p, request: 2, records: vec![record(2)], more: false }),
            ],
        ),
        (
            "truncated-then-digests",
            vec![
                m(SyncMessageV1::Truncated {
                    partition: p,
                    request: 1,
                    origin: NodeId(2),
                    floor: 5,
                    vv: vv(&[(2, 9)]),
                }),
                m(SyncMessageV1::DigestReply { partition: p, request: 2, digests: vec![0; 8 * 3] }),
                m(SyncMessageV1::States {
                    partition: p,
                    request: 3,
                    states: vec![KeyState { key: b"k".to_vec(), state: set(&[1, 2]) }],
                    resume: Some(Resume { done_ranges: 0, after_key: Some(b"k".to_vec()) }),
                }),
            ],
        ),
        (
            "digest-request",
            vec![m(SyncMessageV1::DigestRequest {
                partition: p,
                request: 4,
                split_bits: 2,
                full: true,
                parents: children.clone(),
            })],
        ),
        (
            "states-request",
            vec![m(SyncMessageV1::StatesRequest { partition: p, request: 5, ranges: vec![root], after_key: None })],
        ),
        (
            "wrong-partition",
            vec![SyncMessage::V1(SyncMessageV1::Offer {
                partition: PartitionId(8),
                request: 1,
                vv: VersionVector::new(),
                safe_hlc: 0,
            })],
        ),
    ];
    for (name, list) in lists {
        write(dir, name, &codec::encode(&list));
    }
}

/// Automerge changes as the `doc_changes` target reads them: a control byte (how many changes are
/// already in the key's state), then the changes back to back.
fn doc_changes(dir: &Path) {
    let entries = entries();
    let (_, doc) = entries.iter().find(|(name, _)| *name == "doc").expect("a doc entry");
    let Body::Doc(crdt) = doc.body() else { unreachable!("a doc") };
    let changes = crdt.materialize().expect("the seed doc reads").changes_since(&[]).expect("all changes");
    let all: Vec<u8> = changes.concat();
    write(dir, "all-new", &[&[0u8][..], &all].concat());
    write(dir, "one-in-state", &[&[1u8][..], &all].concat());
    write(dir, "all-in-state", &[&[255u8][..], &all].concat());
    write(dir, "first-only", &[&[0u8][..], &changes[0]].concat());
    // The second change without the first: its dependency is missing.
    write(dir, "missing-dependency", &[&[0u8][..], &changes[changes.len() - 1]].concat());
}

/// Client frame bodies (requests and responses) and causal token strings, as `decode_frame` reads them.
fn decode_frame(dir: &Path) {
    let request = |op: Operation| {
        Request::V1(RequestV1 {
            consistency: Some(Consistency::Causal),
            causal_token: Some(CausalToken(vv(&[(1, 3), (2, 5)]))),
            timeout_ms: 0,
            op,
        })
    };
    let entries = entries();
    let mutations = [
        ("counter", Mutation::CounterAdd { amount: -3 }),
        ("set", Mutation::SetAdd { members: vec![b"a".to_vec()] }),
        ("mvregister", Mutation::MvRegisterSet { value: b"v".to_vec(), context: Some(DotContext::new()) }),
        (
            "map",
            Mutation::MapUpdate { field: "f".into(), mutation: Box::new(Mutation::RegisterSet { value: vec![7] }) },
        ),
        ("doc-put", Mutation::DocPut { json: r#"{"a":1}"#.into() }),
    ];
    for (name, mutation) in mutations {
        let op = Operation::Write { key: key(), mutation, idempotency_id: Some(IdempotencyId(u128::MAX)) };
        write(dir, &format!("request-write-{name}"), &codec::encode(&request(op)));
    }
    let ops = [
        ("delete", Operation::Delete { key: key(), idempotency_id: None }),
        ("read", Operation::Read { key: key(), expected: None }),
        ("doc-changes", Operation::DocChanges { key: key(), since_heads: vec!["00".repeat(32)] }),
        (
            "list-keys",
            Operation::ListKeys { namespace: "shop".into(), prefix: "cart/".into(), start_after: None, limit: 10 },
        ),
        ("status", Operation::Status),
    ];
    for (name, op) in ops {
        write(dir, &format!("request-{name}"), &codec::encode(&request(op)));
    }
    for (name, entry) in &entries {
        let reply = Reply {
            causal_token: CausalToken(vv(&[(1, 9)])),
            body: ReplyBody::Value(entry.read().expect("seed entries read")),
        };
        write(dir, &format!("response-value-{name}"), &codec::encode(&Response::V1(Ok(reply))));
    }
    write(dir, "response-written", &codec::encode(&Response::V1(Ok(reply()))));
    let error = ErrorReply::new(ErrorCode::BadRequest, "bad key");
    write(dir, "response-error", &codec::encode(&Response::V1(Err(error))));
    write(dir, "token", CausalToken(vv(&[(1, 3), (2, 5)])).to_string().as_bytes());
}
