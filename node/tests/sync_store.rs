//! Anti-entropy between two nodes' storage: [`EngineSyncStore`]s over RocksDB under real
//! [`SyncSession`]s, every message encoded through the codec and delivered in memory, in FIFO order,
//! without loss. Writes and reads go through `Node::execute_v1`, so "converged" means what a client
//! would see.
//!
//! The pump is deterministic (node ids fixed, one FIFO queue, the clock frozen at 0 so nothing times
//! out) and bounded ([`MAX_STEPS`] deliveries per partition).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use meridian_client::proto::{Consistency, Key, Operation, ReplyBody, RequestV1};
use meridian_crdt::{codec, Mutation, NodeId, Value, VersionVector};
use meridian_replication::antientropy::{
    HashRange, LogRecord as SyncRecord, PartitionId, RoundOutcome, SyncConfig, SyncEvent, SyncMessage, SyncSession,
    SyncStore, MIN_MAX_BYTES,
};
use meridian_server::api::Node;
use meridian_server::config::Config;
use meridian_server::layout::{self, PARTITIONS};
use meridian_server::storage::{Batch, Engine, RocksEngine, RocksOptions, Space};
use meridian_server::store::sync_store::{EngineSyncStore, SyncStoreError};

/// Most message deliveries one partition's sync may take before the test fails.
const MAX_STEPS: usize = 20_000;

const A: u64 = 0xA;
const B: u64 = 0xB;

/// Small messages, so that rounds paginate.
fn sync_config() -> SyncConfig {
    SyncConfig { max_records: 3, max_bytes: MIN_MAX_BYTES, ..SyncConfig::default() }
}

/// Opens (or reopens) a node with id `id` over RocksDB at `path`, and its sync store.
fn open(path: &Path, id: u64) -> (Arc<Node>, EngineSyncStore) {
    let engine = RocksEngine::open(path, RocksOptions::default()).expect("open RocksDB");
    if engine.get(Space::Meta, layout::META_NODE_ID).unwrap().is_none() {
        // A fixed id instead of a random one: the test is deterministic.
        let mut batch = Batch::new();
        batch.put(Space::Meta, layout::META_NODE_ID, id.to_be_bytes().to_vec());
        engine.write(batch).unwrap();
    }
    let config = Config { data_dir: path.to_path_buf(), ..Config::default() };
    let node = Node::open(config, Arc::new(engine)).expect("open the node");
    assert_eq!(node.id(), NodeId(id));
    let store = node.sync_store();
    (node, store)
}

fn key(name: &str) -> Key {
    name.parse().unwrap()
}

fn partition(name: &str) -> PartitionId {
    PartitionId(layout::partition_of(&layout::data_key(&key(name))))
}

fn request(op: Operation) -> RequestV1 {
    RequestV1 { consistency: Some(Consistency::Eventual), causal_token: None, timeout_ms: 0, op }
}

/// Writes through the node; returns the write's packed HLC.
async fn write(node: &Arc<Node>, name: &str, mutation: Mutation) -> u64 {
    let op = Operation::Write { key: key(name), mutation, idempotency_id: None };
    let reply = node.execute_v1(request(op)).await.unwrap_or_else(|e| panic!("write {name}: {e:?}"));
    reply.causal_token.0.get(node.id())
}

async fn delete(node: &Arc<Node>, name: &str) -> u64 {
    let op = Operation::Delete { key: key(name), idempotency_id: None };
    let reply = node.execute_v1(request(op)).await.unwrap_or_else(|e| panic!("delete {name}: {e:?}"));
    assert!(matches!(reply.body, ReplyBody::Deleted { existed: true }));
    reply.causal_token.0.get(node.id())
}

async fn read(node: &Arc<Node>, name: &str) -> Option<Value> {
    let reply = node
        .execute_v1(request(Operation::Read { key: key(name), expected: None }))
        .await
        .unwrap_or_else(|e| panic!("read {name}: {e:?}"));
    match reply.body {
        ReplyBody::Value(value) => value,
        other => panic!("read {name}: {other:?}"),
    }
}

fn add(amount: i64) -> Mutation {
    Mutation::CounterAdd { amount }
}

fn members(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|m| m.as_bytes().to_vec()).collect()
}

/// Everything stored, space by space (the format marker included: it never changes).
fn dump(engine: &Arc<dyn Engine>) -> BTreeMap<(Space, Vec<u8>), Vec<u8>> {
    let mut out = BTreeMap::new();
    for space in Space::ALL {
        for (k, v) in engine.scan(space, &[], None, usize::MAX).unwrap() {
            out.insert((space, k), v);
        }
    }
    out
}

fn vvs(store: &EngineSyncStore) -> Vec<VersionVector> {
    (0..PARTITIONS).map(|p| store.partition_vv(PartitionId(p)).unwrap()).collect()
}

/// What the sessions of one side reported, summed over partitions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Side {
    rounds_completed: u64,
    fallbacks_started: u64,
    fallbacks_completed: u64,
    records_applied: u64,
    states_applied: u64,
    /// Highest safe time the peer claimed, over every partition.
    peer_safe_hlc: u64,
}

impl Side {
    fn absorb(&mut self, other: &Side) {
        self.rounds_completed += other.rounds_completed;
        self.fallbacks_started += other.fallbacks_started;
        self.fallbacks_completed += other.fallbacks_completed;
        self.records_applied += other.records_applied;
        self.states_applied += other.states_applied;
        self.peer_safe_hlc = self.peer_safe_hlc.max(other.peer_safe_hlc);
    }
}

/// Queues a session's outbound messages (encoded, size-checked) for the other side and checks its
/// events: every round must complete.
fn drain(session: &mut SyncSession, to: usize, wire: &mut VecDeque<(usize, Vec<u8>)>, side: &mut Side) {
    let max_bytes = sync_config().max_bytes;
    while let Some(message) = session.poll_outbound() {
        let bytes = codec::encode(&message);
        assert_eq!(bytes.len(), message.wire_len());
        assert!(bytes.len() <= max_bytes, "{} bytes > max_bytes", bytes.len());
        wire.push_back((to, bytes));
    }
    while let Some(event) = session.poll_event() {
        match event {
            SyncEvent::RoundDone(report) => {
                assert_eq!(report.outcome, RoundOutcome::Completed, "{}: {report:?}", session.partition());
            }
            SyncEvent::PeerSafeTime { hlc, .. } => side.peer_safe_hlc = side.peer_safe_hlc.max(hlc),
        }
    }
}

/// Runs `f` where it may block: a store next to a live node applies under the node's key locks and
/// commits through its group committer, which blocks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs one session on each side for `partition` until both are idle with nothing in flight.
fn sync_partition(a: &mut EngineSyncStore, b: &mut EngineSyncStore, partition: PartitionId) -> [Side; 2] {
    blocking(|| sync_partition_blocking(a, b, partition))
}

fn sync_partition_blocking(a: &mut EngineSyncStore, b: &mut EngineSyncStore, partition: PartitionId) -> [Side; 2] {
    let config = sync_config();
    let mut sa = SyncSession::new(config.clone(), partition, a.local(), b.local(), 1).unwrap();
    let mut sb = SyncSession::new(config, partition, b.local(), a.local(), 1 << 40).unwrap();
    let mut sides = [Side::default(), Side::default()];
    let mut wire = VecDeque::new();
    let now = 0;
    for _ in 0..MAX_STEPS {
        // The first tick starts each side's first round; later ones start a round only when the
        // peer's offer showed it holds something this side lacks.
        sa.tick(a, now).unwrap_or_else(|e| panic!("{partition}: a: {e}"));
        sb.tick(b, now).unwrap_or_else(|e| panic!("{partition}: b: {e}"));
        drain(&mut sa, 1, &mut wire, &mut sides[0]);
        drain(&mut sb, 0, &mut wire, &mut sides[1]);
        let Some((to, bytes)) = wire.pop_front() else {
            assert!(sa.is_idle() && sb.is_idle(), "{partition}: a round waits, but nothing is in flight");
            for (side, session) in sides.iter_mut().zip([&sa, &sb]) {
                let stats = session.stats();
                assert_eq!(stats.rounds_abandoned, 0, "{partition}: {stats:?}");
                side.rounds_completed = stats.rounds_completed;
                side.fallbacks_started = stats.fallbacks_started;
                side.fallbacks_completed = stats.fallbacks_completed;
                side.records_applied = stats.records_applied;
                side.states_applied = stats.states_applied;
            }
            return sides;
        };
        let message: SyncMessage = codec::decode(&bytes, usize::MAX).unwrap();
        let result = if to == 0 { sa.step(a, now, message) } else { sb.step(b, now, message) };
        result.unwrap_or_else(|e| panic!("{partition}: delivering to {}: {e}", ["a", "b"][to]));
    }
    panic!("{partition}: not idle after {MAX_STEPS} deliveries");
}

/// Syncs every partition, both ways.
fn sync_all(a: &mut EngineSyncStore, b: &mut EngineSyncStore) -> [Side; 2] {
    let mut total = [Side::default(), Side::default()];
    for p in 0..PARTITIONS {
        let sides = sync_partition(a, b, PartitionId(p));
        total[0].absorb(&sides[0]);
        total[1].absorb(&sides[1]);
    }
    total
}

/// Asserts both nodes read the same value for every key, and hold the same vectors.
async fn assert_converged(a: (&Arc<Node>, &EngineSyncStore), b: (&Arc<Node>, &EngineSyncStore), keys: &[String]) {
    for name in keys {
        assert_eq!(read(a.0, name).await, read(b.0, name).await, "{name}");
    }
    assert_eq!(vvs(a.1), vvs(b.1));
}

/// The mixed workload of the two-node tests. Returns every key written and each node's number of
/// log records (writes and deletes).
struct Workload {
    keys: Vec<String>,
    a_records: u64,
    b_records: u64,
    a_max_hlc: u64,
}

async fn populate(a: &Arc<Node>, b: &Arc<Node>) -> Workload {
    let mut a_hlcs = Vec::new();
    let mut b_hlcs = Vec::new();
    // A counter written on both nodes.
    a_hlcs.push(write(a, "t/visits", add(5)).await);
    b_hlcs.push(write(b, "t/visits", add(7)).await);
    a_hlcs.push(write(a, "t/visits", add(1)).await);
    // A set: adds on both, a remove on one.
    a_hlcs.push(write(a, "t/tags", Mutation::SetAdd { members: members(&["a", "b"]) }).await);
    b_hlcs.push(write(b, "t/tags", Mutation::SetAdd { members: members(&["c"]) }).await);
    a_hlcs.push(write(a, "t/tags", Mutation::SetRemove { members: members(&["a"]) }).await);
    // A map with a field from each node.
    let name = Mutation::RegisterSet { value: b"ann".to_vec() };
    a_hlcs.push(write(a, "t/profile", Mutation::MapUpdate { field: "name".into(), mutation: Box::new(name) }).await);
    let age = add(3);
    b_hlcs.push(write(b, "t/profile", Mutation::MapUpdate { field: "age".into(), mutation: Box::new(age) }).await);
    // A register, a deleted key, a document, concurrent multi-value writes.
    b_hlcs.push(write(b, "t/color", Mutation::RegisterSet { value: b"blue".to_vec() }).await);
    a_hlcs.push(write(a, "t/gone", Mutation::RegisterSet { value: b"x".to_vec() }).await);
    a_hlcs.push(delete(a, "t/gone").await);
    a_hlcs.push(write(a, "t/doc", Mutation::DocPut { json: r#"{"title":"hi"}"#.into() }).await);
    a_hlcs.push(write(a, "t/mv", Mutation::MvRegisterSet { value: b"one".to_vec(), context: None }).await);
    b_hlcs.push(write(b, "t/mv", Mutation::MvRegisterSet { value: b"two".to_vec(), context: None }).await);
    // Counters spread over many partitions, written on both nodes.
    for i in 0..24 {
        a_hlcs.push(write(a, &format!("t/c{i}"), add(i)).await);
        b_hlcs.push(write(b, &format!("t/c{i}"), add(1)).await);
    }
    let mut keys: Vec<String> =
        ["t/visits", "t/tags", "t/profile", "t/color", "t/gone", "t/doc", "t/mv"].map(String::from).into();
    keys.extend((0..24).map(|i| format!("t/c{i}")));
    Workload {
        keys,
        a_records: a_hlcs.len() as u64,
        b_records: b_hlcs.len() as u64,
        a_max_hlc: a_hlcs.into_iter().max().unwrap(),
    }
}

fn sum_of(vvs: &[VersionVector], origin: u64) -> u64 {
    vvs.iter().map(|vv| vv.get(NodeId(origin))).sum()
}

/// `count` key names in namespace `f` that share one partition.
fn keys_in_one_partition(count: usize) -> (PartitionId, Vec<String>) {
    let target = partition("f/k0");
    let names: Vec<String> =
        (0..).map(|i| format!("f/k{i}")).filter(|name| partition(name) == target).take(count).collect();
    (target, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_converge_through_the_log_path() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (node_a, mut a) = open(dir_a.path(), A);
    let (node_b, mut b) = open(dir_b.path(), B);
    let work = populate(&node_a, &node_b).await;

    let [side_a, side_b] = sync_all(&mut a, &mut b);
    assert_converged((&node_a, &a), (&node_b, &b), &work.keys).await;

    // What a client sees on either node.
    for node in [&node_a, &node_b] {
        assert_eq!(read(node, "t/visits").await, Some(Value::Counter(13)), "increments of both nodes");
        assert_eq!(read(node, "t/tags").await, Some(Value::Set(members(&["b", "c"]))));
        let Some(Value::Map(profile)) = read(node, "t/profile").await else { panic!("a map") };
        assert_eq!(profile.get("name"), Some(&Value::Register(Some(b"ann".to_vec()))));
        assert_eq!(profile.get("age"), Some(&Value::Counter(3)));
        assert_eq!(read(node, "t/color").await, Some(Value::Register(Some(b"blue".to_vec()))));
        assert_eq!(read(node, "t/gone").await, None, "the delete replicated");
        let Some(Value::Doc { json, .. }) = read(node, "t/doc").await else { panic!("a doc") };
        assert_eq!(json, r#"{"title":"hi"}"#);
        let Some(Value::MvRegister { values, .. }) = read(node, "t/mv").await else { panic!("an mvregister") };
        assert_eq!(values.len(), 2, "concurrent writes are both kept: {values:?}");
        for i in 0..24 {
            assert_eq!(read(node, &format!("t/c{i}")).await, Some(Value::Counter(i + 1)));
        }
    }

    // Every record travelled once, on the log path; the vectors count every write of each origin.
    let vv = vvs(&b);
    assert_eq!((sum_of(&vv, A), sum_of(&vv, B)), (work.a_records, work.b_records));
    assert_eq!(side_b.records_applied, work.a_records, "b pulled all of a's records");
    assert_eq!(side_a.records_applied, work.b_records, "a pulled all of b's records");
    assert_eq!(side_a.fallbacks_started + side_b.fallbacks_started, 0);
    assert_eq!(side_a.states_applied + side_b.states_applied, 0);
    // Each node logs the other's records under the other's positions.
    for store in [&a, &b] {
        for p in 0..PARTITIONS {
            let partition = PartitionId(p);
            let vv = store.partition_vv(partition).unwrap();
            for origin in [NodeId(A), NodeId(B)] {
                assert_eq!(store.log_floor(partition, origin).unwrap(), 1, "{partition} {origin}");
                let log = store.read_log(partition, origin, 0, usize::MAX, usize::MAX).unwrap();
                assert_eq!(log.len() as u64, vv.get(origin), "{partition} {origin}");
            }
        }
    }
    // B heard a's safe time, and it covers every write a made.
    assert!(side_b.peer_safe_hlc >= work.a_max_hlc, "{} < {}", side_b.peer_safe_hlc, work.a_max_hlc);
    assert_eq!(a.safe_hlc(PartitionId(0)).unwrap(), node_a.version_vector().get(NodeId(A)));
    assert_eq!(EngineSyncStore::new(node_a.engine().clone(), NodeId(A)).safe_hlc(PartitionId(0)).unwrap(), 0);

    // Local writes after sync take the node's own next positions, next to the remote records.
    let p = partition("t/visits");
    let before = b.partition_vv(p).unwrap();
    write(&node_b, "t/visits", add(100)).await;
    let after = b.partition_vv(p).unwrap();
    assert_eq!(after.get(NodeId(B)), before.get(NodeId(B)) + 1);
    assert_eq!(after.get(NodeId(A)), before.get(NodeId(A)));
    sync_all(&mut a, &mut b);
    assert_eq!(read(&node_a, "t/visits").await, Some(Value::Counter(113)));
    assert_converged((&node_a, &a), (&node_b, &b), &work.keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_log_falls_back_to_digests_and_converges() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (node_a, mut a) = open(dir_a.path(), A);
    let (node_b, mut b) = open(dir_b.path(), B);
    let (p, names) = keys_in_one_partition(9);

    // Seqs 1..=6 of a, and one write of b; b learns a's first six records.
    for name in &names[..6] {
        write(&node_a, name, add(1)).await;
    }
    write(&node_b, &names[6], Mutation::SetAdd { members: members(&["b"]) }).await;
    let [_, first] = sync_partition(&mut a, &mut b, p);
    assert_eq!((first.records_applied, first.fallbacks_started), (6, 0));

    // Seqs 7..=12 of a, then a truncates its log of p below 11: b needs 7.., which is gone.
    for name in &names[..3] {
        write(&node_a, name, add(10)).await;
    }
    write(&node_a, &names[7], Mutation::SetAdd { members: members(&["x"]) }).await;
    write(&node_a, &names[8], Mutation::RegisterSet { value: b"r".to_vec() }).await;
    delete(&node_a, &names[1]).await;
    assert_eq!(a.partition_vv(p).unwrap().get(NodeId(A)), 12);
    let mut truncate = Batch::new();
    for seq in 1..=10 {
        truncate.delete(Space::Log, layout::log_key(p.0, NodeId(A), seq).to_vec());
    }
    node_a.engine().write(truncate).unwrap();
    assert_eq!(a.log_floor(p, NodeId(A)).unwrap(), 11);

    let [side_a, side_b] = sync_partition(&mut a, &mut b, p);
    assert_eq!(side_b.fallbacks_started, 1, "b's pull hit a's truncated log");
    assert_eq!(side_b.fallbacks_completed, 1);
    assert!(side_b.states_applied > 0);
    assert_eq!(side_a.fallbacks_started, 0, "b's log is whole");
    assert_converged((&node_a, &a), (&node_b, &b), &names).await;
    assert_eq!(read(&node_b, &names[0]).await, Some(Value::Counter(11)));
    assert_eq!(read(&node_b, &names[1]).await, None, "the delete arrived as state");
    assert_eq!(read(&node_b, &names[7]).await, Some(Value::Set(members(&["x"]))));
    assert_eq!(read(&node_a, &names[6]).await, Some(Value::Set(members(&["b"]))));
    // B's vector was raised to a's, and its log does not pretend to hold what it skipped.
    assert_eq!(b.partition_vv(p).unwrap().get(NodeId(A)), 12);
    assert_eq!(b.log_floor(p, NodeId(A)).unwrap(), 13);
    assert!(b.read_log(p, NodeId(A), 6, 100, usize::MAX).unwrap().is_empty());

    // Again: nothing left to do, no fallback, nothing written.
    let (before_a, before_b) = (dump(node_a.engine()), dump(node_b.engine()));
    let [again_a, again_b] = sync_partition(&mut a, &mut b, p);
    for side in [&again_a, &again_b] {
        assert_eq!((side.fallbacks_started, side.records_applied, side.states_applied), (0, 0, 0), "{side:?}");
    }
    assert_eq!(dump(node_a.engine()), before_a);
    assert_eq!(dump(node_b.engine()), before_b);

    // Both sides go on with the log path: a new write of a reaches b as record 13.
    write(&node_a, &names[0], add(1)).await;
    let [_, next] = sync_partition(&mut a, &mut b, p);
    assert_eq!((next.records_applied, next.fallbacks_started), (1, 0));
    assert_eq!(read(&node_b, &names[0]).await, Some(Value::Counter(12)));
    assert_eq!(b.log_floor(p, NodeId(A)).unwrap(), 13, "record 13 is now in b's log");
    assert_eq!(b.read_log(p, NodeId(A), 12, 10, usize::MAX).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncing_again_changes_nothing() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (node_a, mut a) = open(dir_a.path(), A);
    let (node_b, mut b) = open(dir_b.path(), B);
    let work = populate(&node_a, &node_b).await;
    sync_all(&mut a, &mut b);
    let (before_a, before_b) = (dump(node_a.engine()), dump(node_b.engine()));

    let [side_a, side_b] = sync_all(&mut a, &mut b);
    for side in [&side_a, &side_b] {
        assert_eq!((side.records_applied, side.states_applied, side.fallbacks_started), (0, 0, 0), "{side:?}");
    }
    assert_eq!(side_a.rounds_completed, u64::from(PARTITIONS), "one round per partition, nothing to pull");
    assert_eq!(dump(node_a.engine()), before_a);
    assert_eq!(dump(node_b.engine()), before_b);

    // Re-applying records and states directly is harmless too.
    for p in 0..PARTITIONS {
        let partition = PartitionId(p);
        for origin in [NodeId(A), NodeId(B)] {
            let records = a.read_log(partition, origin, 0, usize::MAX, usize::MAX).unwrap();
            blocking(|| b.apply_remote(partition, &records)).unwrap();
        }
        let page = a.keys_in_range(partition, HashRange::ROOT, None, usize::MAX, usize::MAX).unwrap();
        assert!(!page.more);
        let vv = a.partition_vv(partition).unwrap();
        blocking(|| b.apply_states(partition, &page.states, Some(&vv))).unwrap();
        assert_eq!(
            a.range_digests(partition, &[HashRange::ROOT]).unwrap(),
            b.range_digests(partition, &[HashRange::ROOT]).unwrap(),
            "{partition}: equal states, equal digests"
        );
    }
    assert_eq!(dump(node_b.engine()), before_b);
    assert_converged((&node_a, &a), (&node_b, &b), &work.keys).await;
}

/// Node `A` at `dir` increments `t/n` three times; returns the key's partition and its three log records.
async fn three_increments_logged_on_a(dir: &Path) -> (PartitionId, Vec<SyncRecord>) {
    let (node_a, a) = open(dir, A);
    let p = partition("t/n");
    for _ in 0..3 {
        write(&node_a, "t/n", add(1)).await;
    }
    (p, a.read_log(p, NodeId(A), 0, 10, 1 << 20).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_and_bad_records_are_refused_whole() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (node_b, mut b) = open(dir_b.path(), B);
    let (p, records) = three_increments_logged_on_a(dir_a.path()).await;
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(records.iter().all(|r| r.key == layout::data_key(&key("t/n")) && r.hlc > 0));
    let [r1, r2, r3] = [records[0].clone(), records[1].clone(), records[2].clone()];
    let untouched = dump(node_b.engine());
    let refused = |b: &mut EngineSyncStore, batch: &[SyncRecord]| {
        let error = blocking(|| b.apply_remote(p, batch)).expect_err("refused");
        assert_eq!(dump(node_b.engine()), untouched, "{error}: nothing applied");
        error
    };

    // 1 and 3 without 2; 2 without 1.
    let gap = refused(&mut b, &[r1.clone(), r3.clone()]);
    assert!(matches!(gap, SyncStoreError::Gap { have: 1, seq: 3, .. }), "{gap}");
    assert!(gap.is_peer_fault());
    assert!(matches!(refused(&mut b, std::slice::from_ref(&r2)), SyncStoreError::Gap { have: 0, seq: 2, .. }));

    // An undecodable delta after a good record.
    let garbage = SyncRecord { delta: b"garbage".to_vec(), ..r2.clone() };
    assert!(matches!(refused(&mut b, &[r1.clone(), garbage]), SyncStoreError::Malformed { what: "delta", .. }));

    // A key of another partition; an undecodable key.
    let elsewhere = (0..).map(|i| format!("t/x{i}")).find(|name| partition(name) != p).unwrap();
    let moved = SyncRecord { key: layout::data_key(&key(&elsewhere)), ..r1.clone() };
    let error = refused(&mut b, &[moved]);
    assert!(matches!(error, SyncStoreError::WrongPartition { .. }));
    assert!(!error.to_string().contains(&elsewhere), "errors (logged, sent to peers) never name keys: {error}");
    let bad_key = SyncRecord { key: vec![200, b'x'], ..r1.clone() };
    assert!(matches!(refused(&mut b, &[bad_key]), SyncStoreError::Malformed { what: "key", .. }));

    // Records of b's own log that b does not hold: never stored next to its committer.
    let own = SyncRecord { origin: NodeId(B), ..r1.clone() };
    let error = refused(&mut b, &[own]);
    assert!(matches!(error, SyncStoreError::OwnOriginAhead { have: 0, got: 1, .. }), "{error}");
    assert!(!error.is_peer_fault());
    let raise_own: VersionVector = [(NodeId(B), 5)].into_iter().collect();
    let error = blocking(|| b.apply_states(p, &[], Some(&raise_own))).expect_err("refused");
    assert!(matches!(error, SyncStoreError::OwnOriginAhead { have: 0, got: 5, .. }), "{error}");
    assert_eq!(dump(node_b.engine()), untouched);

    // The whole run applies, once.
    blocking(|| b.apply_remote(p, &[r1.clone(), r2.clone(), r3.clone()])).unwrap();
    assert_eq!(b.partition_vv(p).unwrap().get(NodeId(A)), 3);
    assert_eq!(read(&node_b, "t/n").await, Some(Value::Counter(3)));
    let applied = dump(node_b.engine());
    blocking(|| b.apply_remote(p, &[r1, r2, r3])).unwrap();
    assert_eq!(dump(node_b.engine()), applied, "re-applying is a no-op");
    assert_eq!(b.read_log(p, NodeId(A), 0, 10, 1 << 20).unwrap(), records, "stored under a's positions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_data_survives_a_restart() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (node_a, mut a) = open(dir_a.path(), A);
    let (node_b, mut b) = open(dir_b.path(), B);
    let work = populate(&node_a, &node_b).await;
    sync_all(&mut a, &mut b);
    let mut values = Vec::new();
    for name in &work.keys {
        values.push(read(&node_b, name).await);
    }
    let (vectors, contents) = (vvs(&b), dump(node_b.engine()));

    // Close b (the node and its store hold the only handles on the database) and reopen it.
    drop((node_b, b));
    let (node_b, mut b) = open(dir_b.path(), B);
    for (name, value) in work.keys.iter().zip(&values) {
        assert_eq!(&read(&node_b, name).await, value, "{name}");
    }
    assert_eq!(vvs(&b), vectors);
    assert_eq!(dump(node_b.engine()), contents);

    // The reopened node resumes its own log after its own last record, not after a's.
    let p = partition("t/visits");
    let own = vectors[usize::from(p.0)].get(NodeId(B));
    write(&node_b, "t/visits", add(1)).await;
    let vv = b.partition_vv(p).unwrap();
    assert_eq!((vv.get(NodeId(B)), vv.get(NodeId(A))), (own + 1, vectors[usize::from(p.0)].get(NodeId(A))));
    let [side_a, _] = sync_all(&mut a, &mut b);
    assert_eq!(side_a.records_applied, 1);
    assert_eq!(read(&node_a, "t/visits").await, Some(Value::Counter(14)));
    assert_converged((&node_a, &a), (&node_b, &b), &work.keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_next_to_live_writes_loses_no_update() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (node_a, mut a) = open(dir_a.path(), A);
    let (node_b, mut b) = open(dir_b.path(), B);
    const ROUNDS: i64 = 20;
    // Node B keeps incrementing the same counter while A's increments of it are synced in: without
    // the key locks, a remote join racing a local write would drop one of them.
    let writer = {
        let node_b = node_b.clone();
        tokio::spawn(async move {
            for _ in 0..ROUNDS {
                write(&node_b, "t/hot", add(1)).await;
            }
        })
    };
    let p = partition("t/hot");
    for _ in 0..ROUNDS {
        write(&node_a, "t/hot", add(100)).await;
        sync_partition(&mut a, &mut b, p);
    }
    writer.await.unwrap();
    sync_partition(&mut a, &mut b, p);
    let expected = Some(Value::Counter(ROUNDS * 100 + ROUNDS));
    assert_eq!(read(&node_b, "t/hot").await, expected, "every increment of both nodes counted on b");
    assert_eq!(read(&node_a, "t/hot").await, expected, "and on a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_ahead_of_a_gap_are_durable_at_once_and_logged_when_the_gap_fills() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (node_b, mut b) = open(dir_b.path(), B);
    let (p, records) = three_increments_logged_on_a(dir_a.path()).await;
    let [r1, r2, r3] = [records[0].clone(), records[1].clone(), records[2].clone()];

    // Pushes race: 3 arrives first. Its effect is durable at once, but the vector claims nothing.
    blocking(|| b.accept_pushed(p, std::slice::from_ref(&r3))).unwrap();
    // A counter delta carries its origin's running total: 3 alone already reads 3.
    assert_eq!(read(&node_b, "t/n").await, Some(Value::Counter(3)));
    assert_eq!(b.partition_vv(p).unwrap().get(NodeId(A)), 0);
    assert!(b.read_log(p, NodeId(A), 0, 10, 1 << 20).unwrap().is_empty(), "nothing offered past the gap");

    blocking(|| b.accept_pushed(p, std::slice::from_ref(&r1))).unwrap();
    assert_eq!(b.partition_vv(p).unwrap().get(NodeId(A)), 1, "1 fills nothing beyond itself");
    // 2 fills the gap: the vector now covers 3, stored earlier.
    blocking(|| b.accept_pushed(p, std::slice::from_ref(&r2))).unwrap();
    assert_eq!(b.partition_vv(p).unwrap().get(NodeId(A)), 3);
    assert_eq!(read(&node_b, "t/n").await, Some(Value::Counter(3)));
    assert_eq!(b.read_log(p, NodeId(A), 0, 10, 1 << 20).unwrap(), records, "the whole log, under a's positions");
    // Replays change nothing.
    let applied = dump(node_b.engine());
    blocking(|| b.accept_pushed(p, &[r1, r2, r3])).unwrap();
    assert_eq!(dump(node_b.engine()), applied);
}

/// A push that fills a gap and skips a position stored ahead by an earlier push (a hint replay of
/// [1, 3] after 2 arrived alone) leaves every record logged: the vector must cover them all, or it
/// stays behind records this replica holds until anti-entropy ships them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_fills_one_gap_and_skips_a_stored_position_raises_the_vector_over_all() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (node_b, mut b) = open(dir_b.path(), B);
    let (p, records) = three_increments_logged_on_a(dir_a.path()).await;
    let [r1, r2, r3] = [records[0].clone(), records[1].clone(), records[2].clone()];
    blocking(|| b.accept_pushed(p, std::slice::from_ref(&r2))).unwrap();
    assert_eq!(b.partition_vv(p).unwrap().get(NodeId(A)), 0);
    blocking(|| b.accept_pushed(p, &[r1, r3])).unwrap();
    assert_eq!(b.partition_vv(p).unwrap().get(NodeId(A)), 3, "1, 2 and 3 are all logged here");
    assert_eq!(b.read_log(p, NodeId(A), 0, 10, 1 << 20).unwrap(), records);
    assert_eq!(read(&node_b, "t/n").await, Some(Value::Counter(3)));
}
