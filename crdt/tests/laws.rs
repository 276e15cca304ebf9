//! The CRDT laws, proved with proptest for every Meridian type over states *reachable by real
//! operations*.
//!
//! A run is a random sequence of steps by three replicas (`NodeId` 1..=3). Each replica keeps its own
//! state and its own [`HlcClock`], fed with arbitrary (often backwards) physical times. An operation step
//! computes a delta with the crate's delta mutators against the replica's *own* state, joins it locally
//! and records it; a sync step joins another replica's whole state (and lets the receiving clock observe
//! the sender's); a delivery step joins one earlier delta of any replica, out of order or again, as delta
//! shipping does. Every state any replica passes through is a candidate for the laws:
//!
//! * join is commutative, associative and idempotent, and the empty state is its identity;
//! * the deltas of a run, applied to a fresh state in any order and with duplicates, give the same state
//!   (and the same read value) as applied in order, and the same state as joining every replica's;
//!
//! plus codec round-trips and the types' semantics (counter sums, add-wins, multi-value siblings, LWW).
//!
//! The laws hold across types too: when replicas that had not heard from each other create a key (or a
//! map field) with different types, their states join by the type-conflict order
//! ([`CrdtType::conflict_rank`]), the highest-ranked type's state winning whole; the empty state of the
//! lowest-ranked type is the identity.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use meridian_crdt::codec::{decode, encode};
use meridian_crdt::{
    AwSet, Body, CrdtError, CrdtType, DocCrdt, Dot, DotContext, Entry, Hlc, HlcClock, Lattice, LwwRegister, Mutation,
    MvRegister, NodeId, PnCounter, Presence, Value, VersionVector, WriteContext,
};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::json;

const REPLICAS: usize = 3;
const MAX_DRIFT_MS: u64 = 500;
const STEPS: usize = 40;
const DOC_STEPS: usize = 24;

fn node(replica: usize) -> NodeId {
    NodeId(replica as u64 + 1)
}

// ---------------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Step<O> {
    /// Replica `at` performs `op` at physical time `now_ms`.
    Op { at: usize, now_ms: u64, op: O },
    /// Replica `to` receives replica `from`'s whole state at physical time `now_ms`.
    Sync { from: usize, to: usize, now_ms: u64 },
    /// Replica `to` receives one delta produced earlier by any replica (possibly again, possibly before
    /// the deltas it follows): delta shipping, out of order and duplicated.
    Deliver { to: usize, delta: Index },
}

/// Physical times: mostly a narrow window (shared milliseconds, clocks going backwards), sometimes a jump
/// ahead that other replicas' drift checks may refuse.
fn physical_time() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 0u64..16, 1 => 1_000u64..1_004, 1 => Just(u64::MAX / 2)]
}

fn steps<O: Clone + Debug + 'static>(
    op: impl Strategy<Value = O> + 'static,
    max: usize,
) -> impl Strategy<Value = Vec<Step<O>>> {
    let step = prop_oneof![
        3 => (0..REPLICAS, physical_time(), op).prop_map(|(at, now_ms, op)| Step::Op { at, now_ms, op }),
        1 => (0..REPLICAS, 0..REPLICAS, physical_time()).prop_map(|(from, to, now_ms)| Step::Sync { from, to, now_ms }),
        1 => (0..REPLICAS, any::<Index>()).prop_map(|(to, delta)| Step::Deliver { to, delta }),
    ];
    prop::collection::vec(step, 0..max)
}

/// A CRDT under test: its bottom, its join, its delta mutators, its read view.
trait Model {
    type State: Clone + Debug + PartialEq;
    type Op: Clone + Debug;
    type Read: Debug + PartialEq;
    fn bottom(&self) -> Self::State;
    fn join(&self, into: &mut Self::State, other: &Self::State);
    /// The delta of `op` computed by replica `at` against its own state `states[at]` (other replicas'
    /// states are visible only for ops that model a client carrying data read elsewhere).
    fn delta(&self, states: &[Self::State], at: usize, w: WriteContext, op: &Self::Op) -> Self::State;
    fn read(&self, state: &Self::State) -> Self::Read;

    fn joined(&self, a: &Self::State, b: &Self::State) -> Self::State {
        let mut out = a.clone();
        self.join(&mut out, b);
        out
    }

    fn join_all<'a>(&self, states: impl IntoIterator<Item = &'a Self::State>) -> Self::State
    where
        Self::State: 'a,
    {
        let mut out = self.bottom();
        for s in states {
            self.join(&mut out, s);
        }
        out
    }
}

struct Run<S> {
    /// Each replica's state at the end.
    finals: Vec<S>,
    /// Every state any replica held, in order (the empty state first).
    snapshots: Vec<S>,
    /// Every delta, in the order produced.
    deltas: Vec<S>,
    /// The write context of each delta.
    writes: Vec<WriteContext>,
    /// Each replica's clock at the end.
    clocks: Vec<HlcClock>,
}

fn run<M: Model>(model: &M, steps: &[Step<M::Op>]) -> Run<M::State> {
    run_on(model, steps, 0)
}

/// A run whose replicas are the nodes after the first `skip` (runs on disjoint nodes are independent
/// histories of one key, as on replicas that have not heard from each other).
fn run_on<M: Model>(model: &M, steps: &[Step<M::Op>], skip: usize) -> Run<M::State> {
    let mut states = vec![model.bottom(); REPLICAS];
    let mut clocks = vec![HlcClock::new(MAX_DRIFT_MS); REPLICAS];
    let mut out = Run {
        finals: Vec::new(),
        snapshots: vec![model.bottom()],
        deltas: Vec::new(),
        writes: Vec::new(),
        clocks: Vec::new(),
    };
    for step in steps {
        match step {
            Step::Op { at, now_ms, op } => {
                let w = WriteContext { node: node(skip + *at), ts: clocks[*at].tick(*now_ms) };
                let delta = model.delta(&states, *at, w, op);
                model.join(&mut states[*at], &delta);
                out.deltas.push(delta);
                out.writes.push(w);
                out.snapshots.push(states[*at].clone());
            }
            Step::Sync { from, to, now_ms } => {
                if from == to {
                    continue;
                }
                // A refused (too far ahead) timestamp leaves the clock alone; the state still merges.
                let remote = clocks[*from].last();
                let _ = clocks[*to].observe(remote, *now_ms);
                let theirs = states[*from].clone();
                model.join(&mut states[*to], &theirs);
                out.snapshots.push(states[*to].clone());
            }
            Step::Deliver { to, delta } => {
                if out.deltas.is_empty() {
                    continue;
                }
                model.join(&mut states[*to], &out.deltas[delta.index(out.deltas.len())]);
                out.snapshots.push(states[*to].clone());
            }
        }
    }
    out.finals = states;
    out.clocks = clocks;
    out
}

/// A deterministic permutation of `items` with some of them duplicated.
fn shuffled_with_duplicates<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut state = seed;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = items.to_vec();
    for item in items {
        if next() % 3 == 0 {
            out.push(item.clone());
        }
    }
    for i in (1..out.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        out.swap(i, j);
    }
    out
}

fn check_join_laws<M: Model>(model: &M, a: &M::State, b: &M::State, c: &M::State) -> Result<(), TestCaseError> {
    prop_assert_eq!(model.joined(a, b), model.joined(b, a), "join is not commutative");
    prop_assert_eq!(
        model.joined(&model.joined(a, b), c),
        model.joined(a, &model.joined(b, c)),
        "join is not associative"
    );
    prop_assert_eq!(&model.joined(a, a), a, "join is not idempotent");
    prop_assert_eq!(&model.joined(a, &model.bottom()), a, "the empty state is not an identity");
    prop_assert_eq!(&model.joined(&model.bottom(), a), a, "the empty state is not an identity");
    Ok(())
}

/// Every law, for one run: on three snapshots picked at random, on the three final states, and on the
/// run's deltas delivered out of order and duplicated.
fn check_laws<M: Model>(model: &M, steps: &[Step<M::Op>], picks: [Index; 3], seed: u64) -> Result<(), TestCaseError> {
    let run = run(model, steps);
    let [a, b, c] = picks.map(|i| &run.snapshots[i.index(run.snapshots.len())]);
    check_join_laws(model, a, b, c)?;
    check_join_laws(model, &run.finals[0], &run.finals[1], &run.finals[2])?;

    let in_order = model.join_all(&run.deltas);
    let shuffled = model.join_all(&shuffled_with_duplicates(&run.deltas, seed));
    prop_assert_eq!(&shuffled, &in_order, "deltas out of order and duplicated give another state");
    prop_assert_eq!(model.read(&shuffled), model.read(&in_order), "deltas out of order give another value");
    let everything = model.join_all(&run.finals);
    prop_assert_eq!(&everything, &in_order, "the replicas' states do not add up to their deltas");
    prop_assert_eq!(model.read(&everything), model.read(&in_order));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Models of the standalone types
// ---------------------------------------------------------------------------------------------------

fn small_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..4, 0..3)
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![8 => -100i64..=100, 1 => Just(0), 1 => -1_000_000i64..=1_000_000]
}

/// The dots a context holds (its vector's prefixes and its cloud).
fn dots_of(ctx: &DotContext) -> Vec<Dot> {
    let mut dots: Vec<Dot> =
        ctx.version_vector().iter().flat_map(|(node, max)| (1..=max).map(move |seq| Dot::new(node, seq))).collect();
    dots.extend(ctx.cloud());
    dots
}

#[derive(Clone, Debug)]
enum CounterOp {
    Add(i64),
    Reset,
}

struct CounterM;

impl Model for CounterM {
    type State = PnCounter;
    type Op = CounterOp;
    type Read = i64;
    fn bottom(&self) -> PnCounter {
        PnCounter::default()
    }
    fn join(&self, into: &mut PnCounter, other: &PnCounter) {
        into.join(other);
    }
    fn delta(&self, states: &[PnCounter], at: usize, w: WriteContext, op: &CounterOp) -> PnCounter {
        match op {
            CounterOp::Add(amount) => states[at].add_delta(w.node, *amount).expect("no overflow at these amounts"),
            CounterOp::Reset => states[at].reset_delta(),
        }
    }
    fn read(&self, state: &PnCounter) -> i64 {
        state.value()
    }
}

fn counter_ops() -> impl Strategy<Value = CounterOp> {
    prop_oneof![5 => amount().prop_map(CounterOp::Add), 1 => Just(CounterOp::Reset)]
}

struct LwwM;

impl Model for LwwM {
    type State = LwwRegister;
    type Op = Option<Vec<u8>>;
    type Read = Option<Vec<u8>>;
    fn bottom(&self) -> LwwRegister {
        LwwRegister::default()
    }
    fn join(&self, into: &mut LwwRegister, other: &LwwRegister) {
        into.join(other);
    }
    fn delta(&self, _: &[LwwRegister], _: usize, w: WriteContext, op: &Option<Vec<u8>>) -> LwwRegister {
        LwwRegister::set_delta(w.node, w.ts, op.clone())
    }
    fn read(&self, state: &LwwRegister) -> Option<Vec<u8>> {
        state.value.clone()
    }
}

fn lww_ops() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::weighted(0.8, small_bytes())
}

/// Which siblings a multi-value write claims to have read.
#[derive(Clone, Debug)]
enum SeenContext {
    /// Everything the coordinator holds (what a client that just read from it passes back).
    Full,
    /// Nothing: a blind write.
    Blind,
    /// Some of the coordinator's siblings (bit `i` keeps the `i`-th dot).
    Partial(u8),
    /// What a client read from another replica.
    ReadFrom(usize),
}

#[derive(Clone, Debug)]
enum MvOp {
    Write { value: Option<Vec<u8>>, seen: SeenContext },
    Reset,
}

struct MvM;

impl Model for MvM {
    type State = MvRegister;
    type Op = MvOp;
    type Read = Vec<Vec<u8>>;
    fn bottom(&self) -> MvRegister {
        MvRegister::default()
    }
    fn join(&self, into: &mut MvRegister, other: &MvRegister) {
        into.join(other);
    }
    fn delta(&self, states: &[MvRegister], at: usize, w: WriteContext, op: &MvOp) -> MvRegister {
        let me = &states[at];
        match op {
            MvOp::Reset => me.reset_delta(),
            MvOp::Write { value, seen } => {
                let seen = match seen {
                    SeenContext::Full => me.read_context(),
                    SeenContext::Blind => DotContext::new(),
                    SeenContext::Partial(mask) => DotContext::from_dots(
                        dots_of(&me.read_context())
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| mask >> (i % 8) & 1 == 1)
                            .map(|(_, d)| d),
                    ),
                    SeenContext::ReadFrom(other) => states[*other].read_context(),
                };
                me.set_delta(w.node, value.clone(), &seen)
            }
        }
    }
    fn read(&self, state: &MvRegister) -> Vec<Vec<u8>> {
        state.values().map(<[u8]>::to_vec).collect()
    }
}

fn seen_context() -> impl Strategy<Value = SeenContext> {
    prop_oneof![
        4 => Just(SeenContext::Full),
        1 => Just(SeenContext::Blind),
        1 => any::<u8>().prop_map(SeenContext::Partial),
        1 => (0..REPLICAS).prop_map(SeenContext::ReadFrom),
    ]
}

fn mv_ops() -> impl Strategy<Value = MvOp> {
    prop_oneof![
        5 => (prop::option::weighted(0.9, small_bytes()), seen_context()).prop_map(|(value, seen)| MvOp::Write { value, seen }),
        1 => Just(MvOp::Reset),
    ]
}

/// Multi-value writes as the node crate issues them: the client passes back what it read from the
/// coordinator (or nothing, and the coordinator uses its own siblings).
fn mv_ops_reading_first() -> impl Strategy<Value = MvOp> {
    prop_oneof![
        5 => prop::option::weighted(0.9, small_bytes()).prop_map(|value| MvOp::Write { value, seen: SeenContext::Full }),
        1 => Just(MvOp::Reset),
    ]
}

#[derive(Clone, Debug)]
enum SetOp {
    Add(Vec<u8>),
    Remove(Vec<u8>),
    Reset,
}

struct SetM;

impl Model for SetM {
    type State = AwSet<u8>;
    type Op = SetOp;
    type Read = Vec<u8>;
    fn bottom(&self) -> AwSet<u8> {
        AwSet::default()
    }
    fn join(&self, into: &mut AwSet<u8>, other: &AwSet<u8>) {
        into.join(other);
    }
    fn delta(&self, states: &[AwSet<u8>], at: usize, w: WriteContext, op: &SetOp) -> AwSet<u8> {
        let me = &states[at];
        match op {
            SetOp::Add(elements) => me.add_delta(w.node, elements),
            SetOp::Remove(elements) => me.remove_delta(elements),
            SetOp::Reset => me.reset_delta(),
        }
    }
    fn read(&self, state: &AwSet<u8>) -> Vec<u8> {
        state.elements().copied().collect()
    }
}

fn set_elements() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..5, 0..4)
}

fn set_ops() -> impl Strategy<Value = SetOp> {
    prop_oneof![
        4 => set_elements().prop_map(SetOp::Add),
        3 => set_elements().prop_map(SetOp::Remove),
        1 => Just(SetOp::Reset),
    ]
}

struct PresenceM;

impl Model for PresenceM {
    type State = Presence;
    type Op = bool;
    type Read = bool;
    fn bottom(&self) -> Presence {
        Presence::default()
    }
    fn join(&self, into: &mut Presence, other: &Presence) {
        into.join(other);
    }
    fn delta(&self, states: &[Presence], at: usize, w: WriteContext, enable: &bool) -> Presence {
        if *enable {
            states[at].enable_delta(w.node)
        } else {
            states[at].disable_delta()
        }
    }
    fn read(&self, state: &Presence) -> bool {
        state.is_enabled()
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<i8>().prop_map(|n| json!(n)),
        any::<bool>().prop_map(|b| json!(b)),
        select(vec!["", "x", "hello"]).prop_map(|s| json!(s)),
        prop::collection::vec(any::<i8>(), 0..3).prop_map(|v| json!(v)),
        (any::<i8>(), any::<bool>()).prop_map(|(n, b)| json!({"n": n, "b": b})),
    ]
}

/// A JSON object with a few root fields out of a small key space, so concurrent puts collide.
fn json_object() -> impl Strategy<Value = serde_json::Value> {
    prop::collection::btree_map(select(vec!["a", "b", "c", "d"]), json_value(), 0..4)
        .prop_map(|fields| serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// The changes of `doc` kept by `mask` (bit `i % 32` keeps the `i`-th): a peer may send any subset,
/// including changes whose dependencies it does not send.
fn some_changes(doc: &DocCrdt, mask: u32) -> Vec<Vec<u8>> {
    let all = doc.materialize().expect("materialize").changes_since(&[]).expect("changes");
    all.into_iter().enumerate().filter(|(i, _)| mask >> (i % 32) & 1 == 1).map(|(_, c)| c).collect()
}

#[derive(Clone, Debug)]
enum DocOp {
    Put(serde_json::Value),
    Reset,
    ApplyFrom { from: usize, mask: u32 },
}

struct DocM;

impl Model for DocM {
    type State = DocCrdt;
    type Op = DocOp;
    type Read = (serde_json::Value, Vec<String>);
    fn bottom(&self) -> DocCrdt {
        DocCrdt::default()
    }
    fn join(&self, into: &mut DocCrdt, other: &DocCrdt) {
        into.join(other);
    }
    fn delta(&self, states: &[DocCrdt], at: usize, w: WriteContext, op: &DocOp) -> DocCrdt {
        let me = &states[at];
        match op {
            DocOp::Put(fields) => me.put_root_delta(w.node, fields).expect("put"),
            DocOp::Reset => me.reset_delta(w.node).expect("reset"),
            DocOp::ApplyFrom { from, mask } => {
                DocCrdt::apply_delta(&some_changes(&states[*from], *mask)).expect("apply")
            }
        }
    }
    fn read(&self, state: &DocCrdt) -> (serde_json::Value, Vec<String>) {
        let doc = state.materialize().expect("materialize");
        (doc.to_json().expect("to JSON"), doc.heads())
    }
}

fn doc_ops() -> impl Strategy<Value = DocOp> {
    prop_oneof![
        4 => json_object().prop_map(DocOp::Put),
        1 => Just(DocOp::Reset),
        2 => (0..REPLICAS, any::<u32>()).prop_map(|(from, mask)| DocOp::ApplyFrom { from, mask }),
    ]
}

// ---------------------------------------------------------------------------------------------------
// Entries (keys and map fields) of every type
// ---------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum EntryOp {
    /// A client mutation, coordinated by the replica.
    Mutate(Mutation),
    /// A delete of the whole entry (`Entry::reset_delta`).
    Delete,
    /// A multi-value write passing back the context a client read from replica `from`.
    MvWriteReadFrom { value: Vec<u8>, from: usize },
    /// An automerge peer sending some of the changes held by replica `from`.
    DocApplyFrom { from: usize, mask: u32 },
}

struct EntryM(CrdtType);

impl Model for EntryM {
    type State = Entry;
    type Op = EntryOp;
    type Read = Option<Value>;
    fn bottom(&self) -> Entry {
        Entry::empty(self.0)
    }
    fn join(&self, into: &mut Entry, other: &Entry) {
        into.try_join(other).expect("entries of one type always join");
    }
    fn delta(&self, states: &[Entry], at: usize, w: WriteContext, op: &EntryOp) -> Entry {
        let me = &states[at];
        if let EntryOp::Delete = op {
            return me.reset_delta(&w).expect("delete");
        }
        match Entry::mutation_delta(Some(me), &client_mutation(states, op), &w) {
            // A relay of another replica's doc changes this one does not hold is refused (they
            // could collide with that replica's own next change): it arrives by replication instead.
            Err(CrdtError::InvalidDocChange(why))
                if matches!(op, EntryOp::DocApplyFrom { .. }) && why.contains("reserved") =>
            {
                Entry::empty(me.crdt_type())
            }
            delta => delta.expect("mutation"),
        }
    }
    fn read(&self, state: &Entry) -> Option<Value> {
        state.read().expect("read")
    }
}

/// The client mutation `op` (not a delete) stands for, given every replica's state.
fn client_mutation(states: &[Entry], op: &EntryOp) -> Mutation {
    match op {
        EntryOp::Delete => unreachable!("a delete is not a client mutation"),
        EntryOp::Mutate(mutation) => mutation.clone(),
        EntryOp::MvWriteReadFrom { value, from } => {
            let context = match states[*from].read().expect("read") {
                Some(Value::MvRegister { context, .. }) => context,
                _ => DotContext::new(),
            };
            Mutation::MvRegisterSet { value: value.clone(), context: Some(context) }
        }
        EntryOp::DocApplyFrom { from, mask } => {
            // (A peer holding another type, after a type conflict, has no changes to send.)
            let changes = match states[*from].body() {
                Body::Doc(doc) => some_changes(doc, *mask),
                _ => Vec::new(),
            };
            Mutation::DocApply { changes }
        }
    }
}

fn map_update(field: &str, mutation: Mutation) -> Mutation {
    Mutation::MapUpdate { field: field.to_owned(), mutation: Box::new(mutation) }
}

fn map_remove(field: &str) -> Mutation {
    Mutation::MapRemove { field: field.to_owned() }
}

fn members() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(small_bytes(), 0..3)
}

/// Mutations of a map with a counter, a register, a multi-value register, a set and a nested map (of a
/// counter and a set) as fields.
fn map_mutation() -> BoxedStrategy<Mutation> {
    let nested = prop_oneof![
        amount().prop_map(|amount| map_update("c", Mutation::CounterAdd { amount })),
        members().prop_map(|members| map_update("t", Mutation::SetAdd { members })),
        members().prop_map(|members| map_update("t", Mutation::SetRemove { members })),
        select(vec!["c", "t"]).prop_map(map_remove),
    ];
    prop_oneof![
        2 => amount().prop_map(|amount| map_update("count", Mutation::CounterAdd { amount })),
        2 => small_bytes().prop_map(|value| map_update("reg", Mutation::RegisterSet { value })),
        2 => small_bytes().prop_map(|value| map_update("mv", Mutation::MvRegisterSet { value, context: None })),
        2 => members().prop_map(|members| map_update("tags", Mutation::SetAdd { members })),
        1 => members().prop_map(|members| map_update("tags", Mutation::SetRemove { members })),
        3 => nested.prop_map(|m| map_update("sub", m)),
        2 => select(vec!["count", "reg", "mv", "tags", "sub", "never-written"]).prop_map(map_remove),
    ]
    .boxed()
}

fn entry_ops(crdt_type: CrdtType) -> BoxedStrategy<EntryOp> {
    let mutate = match crdt_type {
        CrdtType::Counter => amount().prop_map(|amount| Mutation::CounterAdd { amount }).boxed(),
        CrdtType::Register => small_bytes().prop_map(|value| Mutation::RegisterSet { value }).boxed(),
        CrdtType::MvRegister => {
            small_bytes().prop_map(|value| Mutation::MvRegisterSet { value, context: None }).boxed()
        }
        CrdtType::Set => prop_oneof![
            2 => members().prop_map(|members| Mutation::SetAdd { members }),
            1 => members().prop_map(|members| Mutation::SetRemove { members }),
        ]
        .boxed(),
        CrdtType::Map => map_mutation(),
        CrdtType::Doc => json_object().prop_map(|v| Mutation::DocPut { json: v.to_string() }).boxed(),
    };
    let mutate = mutate.prop_map(EntryOp::Mutate);
    match crdt_type {
        CrdtType::MvRegister => prop_oneof![
            4 => mutate,
            2 => (small_bytes(), 0..REPLICAS).prop_map(|(value, from)| EntryOp::MvWriteReadFrom { value, from }),
            1 => Just(EntryOp::Delete),
        ]
        .boxed(),
        CrdtType::Doc => prop_oneof![
            4 => mutate,
            2 => (0..REPLICAS, any::<u32>()).prop_map(|(from, mask)| EntryOp::DocApplyFrom { from, mask }),
            1 => Just(EntryOp::Delete),
        ]
        .boxed(),
        _ => prop_oneof![5 => mutate, 1 => Just(EntryOp::Delete)].boxed(),
    }
}

fn picks() -> impl Strategy<Value = [Index; 3]> {
    any::<[Index; 3]>()
}

// ---------------------------------------------------------------------------------------------------
// The laws
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn pn_counter_laws(steps in steps(counter_ops(), STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&CounterM, &steps, picks, seed)?;
    }

    #[test]
    fn lww_register_laws(steps in steps(lww_ops(), STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&LwwM, &steps, picks, seed)?;
    }

    #[test]
    fn mv_register_laws(steps in steps(mv_ops(), STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&MvM, &steps, picks, seed)?;
    }

    #[test]
    fn aw_set_laws(steps in steps(set_ops(), STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&SetM, &steps, picks, seed)?;
    }

    #[test]
    fn presence_laws(steps in steps(any::<bool>(), STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&PresenceM, &steps, picks, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn entry_counter_laws(steps in steps(entry_ops(CrdtType::Counter), STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&EntryM(CrdtType::Counter), &steps, picks, seed)?;
    }

    #[test]
    fn entry_register_laws(steps in steps(entry_ops(CrdtType::Register), STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&EntryM(CrdtType::Register), &steps, picks, seed)?;
    }

    #[test]
    fn entry_mvregister_laws(
        steps in steps(entry_ops(CrdtType::MvRegister), STEPS), picks in picks(), seed in any::<u64>()
    ) {
        check_laws(&EntryM(CrdtType::MvRegister), &steps, picks, seed)?;
    }

    #[test]
    fn entry_set_laws(steps in steps(entry_ops(CrdtType::Set), STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&EntryM(CrdtType::Set), &steps, picks, seed)?;
    }

    #[test]
    fn entry_map_laws(steps in steps(entry_ops(CrdtType::Map), STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&EntryM(CrdtType::Map), &steps, picks, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn doc_laws(steps in steps(doc_ops(), DOC_STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&DocM, &steps, picks, seed)?;
    }

    #[test]
    fn entry_doc_laws(steps in steps(entry_ops(CrdtType::Doc), DOC_STEPS), picks in picks(), seed in any::<u64>()) {
        check_laws(&EntryM(CrdtType::Doc), &steps, picks, seed)?;
    }
}

// ---------------------------------------------------------------------------------------------------
// Type conflicts: one key (or map field) created with different types by replicas that had not seen
// each other's writes
// ---------------------------------------------------------------------------------------------------

/// The state of a replica that holds nothing for the key: the lowest-ranked type's empty entry, which
/// is the identity of the join across all types.
fn no_state() -> Entry {
    Entry::empty(CrdtType::Counter)
}

fn type_index(crdt_type: CrdtType) -> usize {
    CrdtType::ALL.iter().position(|t| *t == crdt_type).expect("every type is in ALL")
}

/// A client mutation of `crdt_type`, to check that a key holding another type refuses it.
fn probe(crdt_type: CrdtType) -> Mutation {
    match crdt_type {
        CrdtType::Counter => Mutation::CounterAdd { amount: 1 },
        CrdtType::Register => Mutation::RegisterSet { value: vec![1] },
        CrdtType::MvRegister => Mutation::MvRegisterSet { value: vec![1], context: None },
        CrdtType::Set => Mutation::SetAdd { members: vec![vec![1]] },
        CrdtType::Map => map_update("p", Mutation::CounterAdd { amount: 1 }),
        CrdtType::Doc => Mutation::DocPut { json: "{}".to_owned() },
    }
}

/// One step of a client of a key whose type no replica has fixed yet.
#[derive(Clone, Debug)]
struct MixedOp {
    /// The type the client creates the key with when its coordinator holds no state for it.
    create: CrdtType,
    /// One op per type, in [`CrdtType::ALL`] order: the coordinator applies the one of the type it
    /// holds (a client that has read the key writes its type).
    by_type: Vec<EntryOp>,
}

/// Entries of any type, created concurrently with different types. A coordinator holding no state
/// creates the key with the client's type; one holding a state applies ops of that state's type and
/// refuses the client's type if it differs; map fields, too, are created with whatever type a write
/// names and refused when they hold another.
struct MixedM;

impl Model for MixedM {
    type State = Entry;
    type Op = MixedOp;
    type Read = Option<Value>;
    fn bottom(&self) -> Entry {
        no_state()
    }
    fn join(&self, into: &mut Entry, other: &Entry) {
        into.try_join(other).expect("entries of any types join");
    }
    fn delta(&self, states: &[Entry], at: usize, w: WriteContext, op: &MixedOp) -> Entry {
        let me = &states[at];
        let fresh = *me == no_state();
        let crdt_type = if fresh { op.create } else { me.crdt_type() };
        if crdt_type != op.create {
            // The client-facing rule: writing another type to an existing key is refused.
            let refused = Entry::mutation_delta(Some(me), &probe(op.create), &w);
            assert_eq!(refused, Err(CrdtError::WrongType { actual: crdt_type, requested: op.create }));
        }
        let entry_op = &op.by_type[type_index(crdt_type)];
        if let EntryOp::Delete = entry_op {
            return if fresh { no_state() } else { me.reset_delta(&w).expect("delete") };
        }
        let state = if fresh { None } else { Some(me) };
        match Entry::mutation_delta(state, &client_mutation(states, entry_op), &w) {
            Ok(delta) => delta,
            // A write to a map field that holds another type: refused, nothing to ship.
            Err(CrdtError::WrongType { .. }) if crdt_type == CrdtType::Map => no_state(),
            // A relay of another replica's doc changes this one lacks: refused (see `EntryM`).
            Err(CrdtError::InvalidDocChange(why))
                if matches!(entry_op, EntryOp::DocApplyFrom { .. }) && why.contains("reserved") =>
            {
                no_state()
            }
            Err(e) => panic!("mutation refused: {e}"),
        }
    }
    fn read(&self, state: &Entry) -> Option<Value> {
        state.read().expect("read")
    }
}

/// Map writes that create field `x` (at the top and inside `sub`) with any type a map field can hold,
/// so replicas that have not seen each other's writes create it with different types.
fn conflicting_field_mutation() -> BoxedStrategy<Mutation> {
    let field = prop_oneof![
        amount().prop_map(|amount| Mutation::CounterAdd { amount }),
        small_bytes().prop_map(|value| Mutation::RegisterSet { value }),
        small_bytes().prop_map(|value| Mutation::MvRegisterSet { value, context: None }),
        members().prop_map(|members| Mutation::SetAdd { members }),
        members().prop_map(|members| Mutation::SetRemove { members }),
        amount().prop_map(|amount| map_update("c", Mutation::CounterAdd { amount })),
        members().prop_map(|members| map_update("t", Mutation::SetAdd { members })),
    ]
    .boxed();
    prop_oneof![
        4 => field.clone().prop_map(|m| map_update("x", m)),
        2 => field.prop_map(|m| map_update("sub", map_update("x", m))),
        1 => Just(map_remove("x")),
    ]
    .boxed()
}

/// Client steps creating the key with one of `create` (and, in maps, fields of any type).
fn mixed_ops(create: Vec<CrdtType>) -> BoxedStrategy<MixedOp> {
    let map_ops = prop_oneof![
        1 => entry_ops(CrdtType::Map),
        1 => conflicting_field_mutation().prop_map(EntryOp::Mutate),
    ];
    let by_type = (
        entry_ops(CrdtType::Counter),
        entry_ops(CrdtType::Register),
        entry_ops(CrdtType::MvRegister),
        entry_ops(CrdtType::Set),
        map_ops,
        entry_ops(CrdtType::Doc),
    )
        .prop_map(|(counter, register, mv, set, map, doc)| vec![counter, register, mv, set, map, doc]);
    (select(create), by_type).prop_map(|(create, by_type)| MixedOp { create, by_type }).boxed()
}

/// A single-type run's state or delta as a replica that may hold any type sees it: an empty entry of
/// the run's type is no state at all (a replica that has nothing for a key holds no entry, and a write
/// that changes nothing ships nothing).
fn held(entry: &Entry) -> Entry {
    if *entry == Entry::empty(entry.crdt_type()) {
        no_state()
    } else {
        entry.clone()
    }
}

/// Three independent runs, each of one type (often different): states no replica of one run has
/// seen from another.
fn three_kinds_and_steps() -> impl Strategy<Value = [(CrdtType, Vec<Step<EntryOp>>); 3]> {
    (entry_kind_and_steps(), entry_kind_and_steps(), entry_kind_and_steps()).prop_map(|(a, b, c)| [a, b, c])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// States of different types (each reached by real operations of its type) join commutatively,
    /// associatively and idempotently; the deltas of all of them, in any order and duplicated, give
    /// one state, whose body is exactly the highest-ranked type's, and which a replica holding any of
    /// the states reaches by receiving them.
    #[test]
    fn entry_laws_across_types(runs in three_kinds_and_steps(), picks in picks(), seed in any::<u64>()) {
        // Each run on its own nodes: replicas that had not heard from each other.
        let runs: Vec<(CrdtType, Run<Entry>)> =
            runs.iter().enumerate().map(|(i, (t, steps))| (*t, run_on(&EntryM(*t), steps, i * REPLICAS))).collect();
        let [a, b, c] = [0, 1, 2].map(|i| &runs[i].1.snapshots[picks[i].index(runs[i].1.snapshots.len())]);
        check_join_laws(&MixedM, a, b, c)?;
        check_join_laws(&MixedM, c, a, b)?;
        let [a, b, c] = [0, 1, 2].map(|i| &runs[i].1.finals[i]);
        check_join_laws(&MixedM, a, b, c)?;
        check_join_laws(&MixedM, b, c, a)?;

        let deltas: Vec<Vec<Entry>> = runs.iter().map(|(_, r)| r.deltas.iter().map(held).collect()).collect();
        let all: Vec<Entry> = deltas.concat();
        let in_order = MixedM.join_all(&all);
        let shuffled = MixedM.join_all(&shuffled_with_duplicates(&all, seed));
        prop_assert_eq!(&shuffled, &in_order, "mixed deltas out of order and duplicated give another state");
        prop_assert_eq!(MixedM.read(&shuffled), MixedM.read(&in_order));
        let finals: Vec<Entry> = runs.iter().flat_map(|(_, r)| r.finals.iter().map(held)).collect();
        prop_assert_eq!(&MixedM.join_all(&finals), &in_order, "the replicas' states do not add up to their deltas");

        // The highest-ranked type that was written wins, with exactly its own runs' state.
        let written = |i: &usize| deltas[*i].iter().any(|d| *d != no_state());
        let winner = (0..runs.len()).filter(written).map(|i| runs[i].0).max_by_key(|t| t.conflict_rank());
        if let Some(winner) = winner {
            let model = EntryM(winner);
            let alone = model.join_all((0..runs.len()).filter(|i| runs[*i].0 == winner).flat_map(|i| &deltas[i]));
            prop_assert_eq!(in_order.crdt_type(), winner);
            prop_assert_eq!(in_order.body(), alone.body(), "the winner's body is not kept whole");
            if alone.exists() {
                prop_assert_eq!(model.read(&in_order), model.read(&alone));
            }
        } else {
            prop_assert_eq!(&in_order, &no_state());
        }

        // A replica holding any one of the states (the loser's included) converges by receiving the
        // deltas, in any order.
        for (i, (_, r)) in runs.iter().enumerate() {
            let mut here = held(&r.finals[i]);
            for delta in shuffled_with_duplicates(&all, seed.wrapping_add(i as u64)) {
                MixedM.join(&mut here, &delta);
            }
            prop_assert_eq!(&here, &in_order);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every law, for runs in which replicas create the key (and map fields, nested too) with
    /// different types concurrently, then keep writing the type they hold.
    #[test]
    fn entry_concurrent_creation_laws(
        steps in steps(mixed_ops(CrdtType::ALL.into_iter().filter(|t| *t != CrdtType::Doc).collect()), STEPS),
        picks in picks(),
        seed in any::<u64>(),
    ) {
        check_laws(&MixedM, &steps, picks, seed)?;
    }

    /// The same for map fields: every replica creates the key as a map, and fields `x` and `sub.x` get
    /// created with different types (a counter here, a set there, a nested map elsewhere).
    #[test]
    fn entry_concurrent_map_field_creation_laws(
        steps in steps(mixed_ops(vec![CrdtType::Map]), STEPS),
        picks in picks(),
        seed in any::<u64>(),
    ) {
        check_laws(&MixedM, &steps, picks, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The same, with documents among the types.
    #[test]
    fn entry_concurrent_creation_laws_with_docs(
        steps in steps(mixed_ops(CrdtType::ALL.to_vec()), DOC_STEPS),
        picks in picks(),
        seed in any::<u64>(),
    ) {
        check_laws(&MixedM, &steps, picks, seed)?;
    }
}

/// Applies a client write at a coordinator holding `state` (`None`: nothing yet) and returns its delta.
fn write(state: &mut Option<Entry>, mutation: Mutation, node_id: u64, wall_ms: u64) -> Entry {
    let w = WriteContext { node: NodeId(node_id), ts: Hlc { wall_ms, logical: 0 } };
    let delta = Entry::mutation_delta(state.as_ref(), &mutation, &w).expect("write");
    match state {
        Some(s) => s.try_join(&delta).expect("join"),
        None => *state = Some(delta.clone()),
    }
    delta
}

fn joined(a: &Entry, b: &Entry) -> Entry {
    let mut out = a.clone();
    out.try_join(b).expect("entries of any types join");
    out
}

fn bytes(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// The order is part of the stored data's semantics: it must never change.
#[test]
fn type_conflict_order_is_fixed() {
    let ranks: Vec<(CrdtType, u8)> = CrdtType::ALL.iter().map(|t| (*t, t.conflict_rank())).collect();
    assert_eq!(
        ranks,
        [
            (CrdtType::Counter, 0),
            (CrdtType::Register, 1),
            (CrdtType::MvRegister, 2),
            (CrdtType::Set, 3),
            (CrdtType::Map, 4),
            (CrdtType::Doc, 5),
        ]
    );
}

/// A counter and a set created concurrently under one key: every replica ends with the set, whatever
/// it held and in whatever order the deltas arrive; counter deltas arriving later change nothing of the
/// body, and a counter write at a replica holding the set is refused.
#[test]
fn concurrent_counter_and_set_creation_converges_to_the_set() {
    let (mut a, mut b) = (None, None);
    let counter = [
        write(&mut a, Mutation::CounterAdd { amount: 5 }, 1, 10),
        write(&mut a, Mutation::CounterAdd { amount: 2 }, 1, 11),
    ];
    let set = [
        write(&mut b, Mutation::SetAdd { members: bytes(&["x"]) }, 2, 10),
        write(&mut b, Mutation::SetAdd { members: bytes(&["y"]) }, 2, 11),
        write(&mut b, Mutation::SetRemove { members: bytes(&["x"]) }, 2, 12),
    ];
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.read().unwrap(), Some(Value::Counter(7)));
    assert_eq!(b.read().unwrap(), Some(Value::Set(bytes(&["y"]))));

    // Full states, either way round: the set.
    let merged = joined(&a, &b);
    assert_eq!(merged, joined(&b, &a));
    assert_eq!(merged.crdt_type(), CrdtType::Set);
    assert_eq!(merged.body(), b.body());
    assert_eq!(merged.read().unwrap(), Some(Value::Set(bytes(&["y"]))));

    // A replica holding the counter receives only the set's deltas, in order or not: the first one
    // replaces the counter, the rest keep joining, and it ends with the set's full state.
    for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0]] {
        let mut here = a.clone();
        for i in order {
            here.try_join(&set[i]).unwrap();
            assert_eq!(here.crdt_type(), CrdtType::Set);
        }
        assert_eq!(here.body(), b.body());
        assert_eq!(here.read().unwrap(), b.read().unwrap());
        assert_eq!(here, merged);
    }

    // A replica holding the set receives the counter's deltas: absorbed.
    let mut here = b.clone();
    for delta in &counter {
        here.try_join(delta).unwrap();
        assert_eq!(here.body(), b.body());
    }
    assert_eq!(here, merged);

    // A counter write accepted where the set had not arrived yet is absorbed too; one at a replica
    // holding the set is refused; set writes go on everywhere.
    let mut behind = Some(a.clone());
    let late = write(&mut behind, Mutation::CounterAdd { amount: 100 }, 1, 20);
    let w = WriteContext { node: NodeId(3), ts: Hlc { wall_ms: 20, logical: 0 } };
    assert_eq!(
        Entry::mutation_delta(Some(&merged), &Mutation::CounterAdd { amount: 1 }, &w),
        Err(CrdtError::WrongType { actual: CrdtType::Set, requested: CrdtType::Counter })
    );
    let mut ahead = Some(merged.clone());
    let add_z = write(&mut ahead, Mutation::SetAdd { members: bytes(&["z"]) }, 3, 21);
    let (behind, ahead) = (behind.unwrap(), ahead.unwrap());
    let everything = joined(&joined(&behind, &ahead), &late);
    assert_eq!(everything, joined(&joined(&late, &ahead), &behind));
    assert_eq!(everything, joined(&joined(&b, &add_z), &joined(&a, &late)));
    assert_eq!(everything.read().unwrap(), Some(Value::Set(bytes(&["y", "z"]))));
}

/// A map field created as a counter at one replica and as a set at another ends as the set at every
/// replica; the map's other fields merge as usual.
#[test]
fn map_field_created_as_counter_and_as_set_converges_to_the_set() {
    let (mut a, mut b) = (None, None);
    let counter = [
        write(&mut a, map_update("f", Mutation::CounterAdd { amount: 3 }), 1, 10),
        write(&mut a, map_update("n", Mutation::CounterAdd { amount: 1 }), 1, 11),
    ];
    let set = [
        write(&mut b, map_update("f", Mutation::SetAdd { members: bytes(&["x"]) }), 2, 10),
        write(&mut b, map_update("f", Mutation::SetAdd { members: bytes(&["y"]) }), 2, 11),
    ];
    let (a, b) = (a.unwrap(), b.unwrap());
    let expected = Value::Map(BTreeMap::from([
        ("f".to_owned(), Value::Set(bytes(&["x", "y"]))),
        ("n".to_owned(), Value::Counter(1)),
    ]));

    let merged = joined(&a, &b);
    assert_eq!(merged, joined(&b, &a));
    assert_eq!(merged.read().unwrap(), Some(expected.clone()));

    // Only deltas, in either order, at a replica holding either side.
    for (start, deltas) in [(&a, &set[..]), (&b, &counter[..])] {
        for reversed in [false, true] {
            let mut here = start.clone();
            let mut deltas = deltas.to_vec();
            if reversed {
                deltas.reverse();
            }
            for delta in &deltas {
                here.try_join(delta).unwrap();
            }
            assert_eq!(here, merged);
        }
    }
    let mut fresh = no_state();
    for delta in counter.iter().chain(&set).rev() {
        fresh.try_join(delta).unwrap();
    }
    assert_eq!(fresh, merged);

    // A counter write to the field is now refused; the key itself is still a map.
    let w = WriteContext { node: NodeId(1), ts: Hlc { wall_ms: 20, logical: 0 } };
    assert_eq!(
        Entry::mutation_delta(Some(&merged), &map_update("f", Mutation::CounterAdd { amount: 1 }), &w),
        Err(CrdtError::WrongType { actual: CrdtType::Set, requested: CrdtType::Counter })
    );
    assert!(Entry::mutation_delta(Some(&merged), &map_update("n", Mutation::CounterAdd { amount: 1 }), &w).is_ok());
}

// ---------------------------------------------------------------------------------------------------
// Codec round-trips
// ---------------------------------------------------------------------------------------------------

fn round_trips<T>(value: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode(value);
    let back: T = decode(&bytes, usize::MAX).map_err(|e| TestCaseError::fail(format!("{e} decoding {value:?}")))?;
    prop_assert_eq!(&back, value);
    Ok(())
}

fn any_node() -> impl Strategy<Value = NodeId> {
    prop_oneof![(0u64..4).prop_map(NodeId), any::<u64>().prop_map(NodeId)]
}

fn any_seq() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..12, Just(250), Just(251), Just(65_535), Just(65_536), Just(u64::MAX), any::<u64>()]
}

fn entry_kind_and_steps() -> impl Strategy<Value = (CrdtType, Vec<Step<EntryOp>>)> {
    select(CrdtType::ALL.to_vec()).prop_flat_map(|t| {
        let max = if t == CrdtType::Doc { DOC_STEPS } else { STEPS };
        (Just(t), steps(entry_ops(t), max))
    })
}

/// A run of some entry type, plus one more client mutation of that type.
fn entry_kind_steps_and_mutation() -> impl Strategy<Value = (CrdtType, Vec<Step<EntryOp>>, Mutation)> {
    select(CrdtType::ALL.to_vec()).prop_flat_map(|t| {
        let max = if t == CrdtType::Doc { DOC_STEPS } else { STEPS };
        let mutation = entry_ops(t).prop_filter_map("a client mutation", |op| match op {
            EntryOp::Mutate(m) => Some(m),
            _ => None,
        });
        (Just(t), steps(entry_ops(t), max), mutation)
    })
}

/// A value without what names particular events (multi-value contexts, document heads).
fn without_causality(value: Value) -> Value {
    match value {
        Value::MvRegister { values, .. } => Value::MvRegister { values, context: DotContext::new() },
        Value::Doc { json, .. } => Value::Doc { json, heads: Vec::new() },
        Value::Map(fields) => Value::Map(fields.into_iter().map(|(k, v)| (k, without_causality(v))).collect()),
        other => other,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn codec_round_trips_version_vectors(entries in prop::collection::vec((any_node(), any_seq()), 0..8)) {
        let vv: VersionVector = entries.into_iter().collect();
        round_trips(&vv)?;
    }

    #[test]
    fn codec_round_trips_dot_contexts(
        dots in prop::collection::vec((any_node(), any_seq()), 0..16),
        more in prop::collection::vec((0u64..4, 1u64..12), 0..16),
    ) {
        let mut ctx = DotContext::from_dots(dots.into_iter().map(|(n, s)| Dot::new(n, s)));
        round_trips(&ctx)?;
        ctx.merge(&DotContext::from_dots(more.into_iter().map(|(n, s)| Dot::new(NodeId(n), s))));
        round_trips(&ctx)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every state and delta of a run of every entry type, and every value read from them.
    #[test]
    fn codec_round_trips_entries_and_values((crdt_type, steps) in entry_kind_and_steps()) {
        let model = EntryM(crdt_type);
        let run = run(&model, &steps);
        for entry in run.snapshots.iter().chain(&run.deltas) {
            round_trips(entry)?;
            if let Some(value) = entry.read().map_err(|e| TestCaseError::fail(format!("read: {e}")))? {
                round_trips(&value)?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Semantics
// ---------------------------------------------------------------------------------------------------

fn added_total<O>(steps: &[Step<O>], amount: impl Fn(&O) -> i64) -> i64 {
    steps.iter().map(|s| if let Step::Op { op, .. } = s { amount(op) } else { 0 }).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Without deletes, a counter's value is the sum of every increment minus every decrement, once all
    /// replicas have merged — and at each replica, the sum of what it has seen.
    #[test]
    fn counter_value_is_sum_of_increments_minus_decrements(steps in steps(amount(), STEPS)) {
        let adds: Vec<Step<CounterOp>> = steps
            .iter()
            .map(|s| match s {
                Step::Op { at, now_ms, op } => Step::Op { at: *at, now_ms: *now_ms, op: CounterOp::Add(*op) },
                Step::Sync { from, to, now_ms } => Step::Sync { from: *from, to: *to, now_ms: *now_ms },
                Step::Deliver { to, delta } => Step::Deliver { to: *to, delta: *delta },
            })
            .collect();
        let total = added_total(&steps, |a| *a);
        let counters = run(&CounterM, &adds);
        prop_assert_eq!(CounterM.join_all(&counters.finals).value(), total);
        prop_assert_eq!(CounterM.join_all(&counters.deltas).value(), total);
        // Each replica's value is the sum of the amounts it has seen, directly or through syncs.
        // A counter delta carries its origin's running total of increments (or of decrements), so
        // receiving one means receiving every earlier increment (or decrement) of that origin too.
        let mut seen_ops: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); REPLICAS];
        let mut amounts: Vec<(usize, i64)> = Vec::new();
        for step in &steps {
            match step {
                Step::Op { at, op, .. } => {
                    seen_ops[*at].insert(amounts.len());
                    amounts.push((*at, *op));
                }
                Step::Sync { from, to, .. } => {
                    let theirs = seen_ops[*from].clone();
                    seen_ops[*to].extend(theirs);
                }
                Step::Deliver { to, delta } => {
                    if !amounts.is_empty() {
                        let k = delta.index(amounts.len());
                        let (origin, sign) = (amounts[k].0, amounts[k].1 >= 0);
                        seen_ops[*to].extend((0..=k).filter(|j| amounts[*j] .0 == origin && (amounts[*j].1 >= 0) == sign));
                    }
                }
            }
        }
        let seen: Vec<i64> = seen_ops.iter().map(|ops| ops.iter().map(|i| amounts[*i].1).sum()).collect();
        let values: Vec<i64> = counters.finals.iter().map(PnCounter::value).collect();
        prop_assert_eq!(values, seen);

        let entries: Vec<Step<EntryOp>> = steps
            .iter()
            .map(|s| match s {
                Step::Op { at, now_ms, op } => {
                    Step::Op { at: *at, now_ms: *now_ms, op: EntryOp::Mutate(Mutation::CounterAdd { amount: *op }) }
                }
                Step::Sync { from, to, now_ms } => Step::Sync { from: *from, to: *to, now_ms: *now_ms },
                Step::Deliver { to, delta } => Step::Deliver { to: *to, delta: *delta },
            })
            .collect();
        let model = EntryM(CrdtType::Counter);
        let entries = run(&model, &entries);
        let expected = if entries.deltas.is_empty() { None } else { Some(Value::Counter(total)) };
        prop_assert_eq!(model.read(&model.join_all(&entries.finals)), expected);
    }

    /// A remove concurrent with an add of the same element loses; a remove after it wins.
    #[test]
    fn aw_set_add_wins_over_concurrent_remove(
        steps in steps(set_ops(), STEPS),
        remover in 0..REPLICAS,
        offset in 1..REPLICAS,
        element in 0u8..5,
    ) {
        let run = run(&SetM, &steps);
        let adder = (remover + offset) % REPLICAS;
        let (r, a) = (&run.finals[remover], &run.finals[adder]);
        let remove = r.remove_delta([&element]);
        let add = a.add_delta(node(adder), [&element]);

        let mut removed = r.clone();
        removed.join(&remove);
        prop_assert!(!removed.contains(&element));

        let mut x = removed.clone();
        x.join(a);
        x.join(&add);
        let mut y = a.clone();
        y.join(&add);
        y.join(&remove);
        y.join(r);
        prop_assert!(x.contains(&element), "the concurrent add must win");
        prop_assert_eq!(&x, &y);

        // The remover sees the add, then removes: the remove wins.
        let mut z = x.clone();
        z.join(&z.remove_delta([&element]));
        prop_assert!(!z.contains(&element));
    }

    /// A write concurrent with a delete of the key, or with a removal of the map field it writes,
    /// survives it; the delete alone removes the key.
    #[test]
    fn entry_write_survives_concurrent_delete(
        steps in steps(entry_ops(CrdtType::Map), STEPS),
        deleter in 0..REPLICAS,
        offset in 1..REPLICAS,
        mutation in map_mutation().prop_filter("a write", |m| matches!(m, Mutation::MapUpdate { .. })),
        now_ms in physical_time(),
    ) {
        let mut run = run(&EntryM(CrdtType::Map), &steps);
        let writer = (deleter + offset) % REPLICAS;
        let (d, w) = (&run.finals[deleter], &run.finals[writer]);
        let Mutation::MapUpdate { field, .. } = &mutation else { unreachable!() };
        let dw = WriteContext { node: node(deleter), ts: run.clocks[deleter].tick(now_ms) };
        let ww = WriteContext { node: node(writer), ts: run.clocks[writer].tick(now_ms) };

        let delete = d.reset_delta(&dw).unwrap();
        let mut deleted = d.clone();
        deleted.try_join(&delete).unwrap();
        prop_assert!(!deleted.exists());
        prop_assert_eq!(deleted.read().unwrap(), None);

        let write = Entry::mutation_delta(Some(w), &mutation, &ww).unwrap();
        let mut merged = deleted.clone();
        merged.try_join(w).unwrap();
        merged.try_join(&write).unwrap();
        prop_assert!(merged.exists(), "the concurrent write must keep the key");
        let Some(Value::Map(fields)) = merged.read().unwrap() else { panic!("a map reads as a map") };
        prop_assert!(fields.contains_key(field), "the concurrent write must keep its field");

        // Removing the field concurrently with the write keeps it too.
        let remove = Entry::mutation_delta(Some(d), &map_remove(field), &dw).unwrap();
        let mut merged = d.clone();
        merged.try_join(&remove).unwrap();
        merged.try_join(w).unwrap();
        merged.try_join(&write).unwrap();
        let Some(Value::Map(fields)) = merged.read().unwrap() else { panic!("a map reads as a map") };
        prop_assert!(fields.contains_key(field));
    }

    /// Concurrent writes by every replica survive as siblings, exactly; a write whose context covers
    /// them replaces them all, and one covering only some replaces only those.
    #[test]
    fn mv_register_keeps_concurrent_writes_as_siblings(steps in steps(mv_ops(), STEPS)) {
        let run = run(&MvM, &steps);
        let writes: Vec<MvRegister> = run
            .finals
            .iter()
            .enumerate()
            .map(|(i, s)| s.set_delta(node(i), Some(vec![100 + i as u8]), &s.read_context()))
            .collect();
        let mut merged = MvM.join_all(run.finals.iter().chain(&writes));
        let siblings: BTreeSet<Vec<u8>> = merged.values().map(<[u8]>::to_vec).collect();
        prop_assert_eq!(siblings, BTreeSet::from([vec![100], vec![101], vec![102]]));
        prop_assert_eq!(merged.values().count(), REPLICAS);

        // Covering only replica 1's sibling (dot of node 2) replaces only it.
        let covered = DotContext::from_dots(dots_of(&merged.read_context()).into_iter().filter(|d| d.node == node(1)));
        let mut partial = merged.clone();
        partial.join(&partial.set_delta(node(0), Some(vec![7]), &covered));
        let siblings: BTreeSet<Vec<u8>> = partial.values().map(<[u8]>::to_vec).collect();
        prop_assert_eq!(siblings, BTreeSet::from([vec![7], vec![100], vec![102]]));

        // Covering everything replaces everything.
        merged.join(&merged.set_delta(node(2), Some(vec![9]), &merged.read_context()));
        prop_assert_eq!(MvM.read(&merged), vec![vec![9]]);
    }

    /// When writers pass back what they read, no state ever holds more siblings than there are writers,
    /// nor more than one sibling per writer.
    #[test]
    fn mv_register_siblings_never_exceed_concurrent_writers(steps in steps(mv_ops_reading_first(), STEPS)) {
        let run = run(&MvM, &steps);
        let writers: BTreeSet<NodeId> = run.writes.iter().map(|w| w.node).collect();
        for state in &run.snapshots {
            let dots = dots_of(&state.read_context());
            prop_assert_eq!(dots.len(), state.values().count());
            prop_assert!(dots.len() <= writers.len());
            let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
            for dot in dots {
                *per_node.entry(dot.node).or_default() += 1;
            }
            prop_assert!(per_node.values().all(|n| *n <= 1), "one writer, several siblings: {:?}", state);
        }
    }

    /// A key deleted and written again reads as if the write were its first: nothing from before the
    /// delete shows through, whatever the type.
    #[test]
    fn entry_recreated_after_delete_starts_empty(
        (crdt_type, steps, mutation) in entry_kind_steps_and_mutation(),
        replica in 0..REPLICAS,
        now_ms in physical_time(),
    ) {
        let model = EntryM(crdt_type);
        let mut run = run(&model, &steps);
        let clock = &mut run.clocks[replica];
        let mut state = run.finals[replica].clone();
        let w = WriteContext { node: node(replica), ts: clock.tick(now_ms) };
        state.try_join(&state.reset_delta(&w).unwrap()).unwrap();
        prop_assert_eq!(state.read().unwrap(), None);
        let w = WriteContext { node: node(replica), ts: clock.tick(now_ms) };
        state.try_join(&Entry::mutation_delta(Some(&state), &mutation, &w).unwrap()).unwrap();

        let mut fresh = Entry::empty(crdt_type);
        fresh.try_join(&Entry::mutation_delta(None, &mutation, &w).unwrap()).unwrap();
        prop_assert_eq!(
            state.read().unwrap().map(without_causality),
            fresh.read().unwrap().map(without_causality)
        );
    }

    /// A register write, or a delete, wins over every write its coordinator has seen, even when the
    /// coordinator's clock lags behind those writes' timestamps.
    #[test]
    fn register_write_wins_over_every_write_its_coordinator_saw(
        steps in steps(entry_ops(CrdtType::Register), STEPS),
        map_steps in steps(entry_ops(CrdtType::Map), STEPS),
        replica in 0..REPLICAS,
        value in small_bytes(),
        now_ms in physical_time(),
    ) {
        let mut regs = run(&EntryM(CrdtType::Register), &steps);
        let mut state = regs.finals[replica].clone();
        let w = WriteContext { node: node(replica), ts: regs.clocks[replica].tick(now_ms) };
        state.try_join(&Entry::mutation_delta(Some(&state), &Mutation::RegisterSet { value: value.clone() }, &w).unwrap()).unwrap();
        prop_assert_eq!(state.read().unwrap(), Some(Value::Register(Some(value.clone()))));
        let w = WriteContext { node: node(replica), ts: regs.clocks[replica].tick(now_ms) };
        let Body::Register(before) = state.body().clone() else { unreachable!() };
        state.try_join(&state.reset_delta(&w).unwrap()).unwrap();
        let Body::Register(after) = state.body() else { unreachable!() };
        prop_assert!(after.ts > before.ts && after.value.is_none(), "the delete lost to an earlier write");

        // The same for a register nested in a map.
        let mut maps = run(&EntryM(CrdtType::Map), &map_steps);
        let mut state = maps.finals[replica].clone();
        let w = WriteContext { node: node(replica), ts: maps.clocks[replica].tick(now_ms) };
        let set = map_update("reg", Mutation::RegisterSet { value: value.clone() });
        state.try_join(&Entry::mutation_delta(Some(&state), &set, &w).unwrap()).unwrap();
        let Some(Value::Map(fields)) = state.read().unwrap() else { panic!("a map reads as a map") };
        prop_assert_eq!(fields.get("reg"), Some(&Value::Register(Some(value))));
    }

    /// Deltas are shipped per origin, not in causal order. A replica that has received only one
    /// replica's deltas, in order, including its delete of the key, shows the key deleted — nothing that
    /// replica had seen overwritten or removed comes back — and after that replica writes the key again,
    /// shows exactly what that replica shows.
    #[test]
    fn delete_holds_at_a_replica_that_has_only_the_deleters_deltas(
        (crdt_type, steps, mutation) in entry_kind_steps_and_mutation(),
        replica in 0..REPLICAS,
        now_ms in physical_time(),
    ) {
        let model = EntryM(crdt_type);
        let mut run = run(&model, &steps);
        let own = run.deltas.iter().zip(&run.writes).filter(|(_, w)| w.node == node(replica)).map(|(d, _)| d);
        let mut elsewhere = model.join_all(own);
        let mut here = run.finals[replica].clone();

        let w = WriteContext { node: node(replica), ts: run.clocks[replica].tick(now_ms) };
        let delete = here.reset_delta(&w).unwrap();
        here.try_join(&delete).unwrap();
        elsewhere.try_join(&delete).unwrap();
        prop_assert!(!elsewhere.exists(), "the deleted key came back: {:?}", elsewhere);

        let w = WriteContext { node: node(replica), ts: run.clocks[replica].tick(now_ms) };
        let write = Entry::mutation_delta(Some(&here), &mutation, &w).unwrap();
        here.try_join(&write).unwrap();
        elsewhere.try_join(&write).unwrap();
        // (A doc's changes wait for the changes they depend on, which this replica has not received.)
        if crdt_type != CrdtType::Doc {
            prop_assert_eq!(
                elsewhere.read().unwrap().map(without_causality),
                here.read().unwrap().map(without_causality)
            );
        }
    }

    /// Once merged, a last-writer-wins register holds the write with the greatest (timestamp, node).
    #[test]
    fn lww_register_keeps_the_greatest_write(steps in steps(lww_ops(), STEPS)) {
        let run = run(&LwwM, &steps);
        let merged = LwwM.join_all(&run.finals);
        let latest = run.deltas.iter().max_by(|a, b| (a.ts, a.node, &a.value).cmp(&(b.ts, b.node, &b.value)));
        let expected = latest.cloned().unwrap_or_default();
        prop_assert_eq!(&merged, &expected);
        // One replica never issues one timestamp twice.
        let stamps: BTreeSet<(NodeId, Hlc)> = run.writes.iter().map(|w| (w.node, w.ts)).collect();
        prop_assert_eq!(stamps.len(), run.writes.len());
    }

    /// A clock's timestamps strictly increase whatever physical time does, and order after every remote
    /// timestamp it accepted.
    #[test]
    fn hlc_never_runs_backwards(
        events in prop::collection::vec((physical_time(), prop::option::of((physical_time(), any::<u32>()))), 0..64)
    ) {
        let mut clock = HlcClock::new(MAX_DRIFT_MS);
        let mut floor = Hlc::default();
        for (now_ms, remote) in events {
            if let Some((wall_ms, logical)) = remote {
                let remote = Hlc { wall_ms, logical };
                let before = clock.last();
                if clock.observe(remote, now_ms).is_ok() {
                    floor = floor.max(remote);
                } else {
                    prop_assert!(wall_ms > now_ms + MAX_DRIFT_MS);
                    prop_assert_eq!(clock.last(), before, "a refused timestamp moved the clock");
                }
            }
            let ts = clock.tick(now_ms);
            prop_assert!(ts > floor, "{:?} is not after {:?}", ts, floor);
            prop_assert!(ts.wall_ms >= now_ms);
            floor = ts;
        }
    }
}

#[test]
fn counter_overflow_is_refused() {
    let n = NodeId(1);
    let mut c = PnCounter::default();
    c.join(&c.add_delta(n, i64::MAX).unwrap());
    c.join(&c.add_delta(n, i64::MAX).unwrap());
    assert!(c.add_delta(n, 2).is_err());
    assert!(c.add_delta(n, 1).is_ok());
}

// ---------------------------------------------------------------------------------------------------
// Multi-value register: the sibling bound
// ---------------------------------------------------------------------------------------------------

proptest! {
    /// Writes with any contexts (none, empty, a read's, a stale read's) from three replicas that
    /// merge now and then: a write that would leave more than `MAX_SIBLINGS` siblings at its
    /// coordinator is refused (and changes nothing), every other is taken; a replica never holds
    /// more than `replicas × MAX_SIBLINGS`; a write with no context always succeeds and leaves one
    /// sibling at its coordinator.
    #[test]
    fn mvregister_siblings_stay_bounded(
        ops in proptest::collection::vec((0..3usize, 0..4u8, any::<bool>()), 1..400),
    ) {
        use meridian_crdt::mvregister::MAX_SIBLINGS;
        let mut states = vec![Entry::empty(CrdtType::MvRegister); 3];
        let mut stale: Vec<Option<DotContext>> = vec![None; 3];
        for (i, (at, context_kind, merge)) in ops.into_iter().enumerate() {
            let read = match states[at].read().expect("read") {
                Some(Value::MvRegister { context, .. }) => context,
                _ => DotContext::new(),
            };
            let context = match context_kind {
                0 => None,
                1 => Some(DotContext::new()),
                2 => Some(read.clone()),
                _ => stale[at].clone().or(Some(DotContext::new())),
            };
            stale[at].get_or_insert(read);
            let before = states[at].clone();
            let w = WriteContext { node: node(at), ts: Hlc { wall_ms: 1 + i as u64, logical: 0 } };
            let write = Mutation::MvRegisterSet { value: vec![i as u8], context: context.clone() };
            match Entry::mutation_delta(Some(&states[at]), &write, &w) {
                Ok(delta) => states[at].try_join(&delta).expect("join"),
                Err(CrdtError::InvalidMutation(why)) => {
                    prop_assert!(context.is_some(), "a write without context is never refused: {why}");
                    prop_assert!(why.contains("siblings"), "{why}");
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected refusal: {e}"))),
            }
            let siblings = |e: &Entry| match e.read().expect("read") {
                Some(Value::MvRegister { values, .. }) => values.len(),
                _ => 0,
            };
            if context.is_none() {
                prop_assert_eq!(siblings(&states[at]), 1);
            }
            prop_assert!(siblings(&states[at]) <= siblings(&before).max(MAX_SIBLINGS));
            if merge {
                let from = states[(at + 1) % 3].clone();
                states[at].try_join(&from).expect("join");
            }
            prop_assert!(siblings(&states[at]) <= 3 * MAX_SIBLINGS);
        }
    }
}

#[test]
fn mvregister_writes_that_resolve_nothing_stop_at_max_siblings() {
    use meridian_crdt::mvregister::MAX_SIBLINGS;
    let mut state = Entry::empty(CrdtType::MvRegister);
    let write = |state: &Entry, i: usize, context: Option<DotContext>| {
        let w = WriteContext { node: node(0), ts: Hlc { wall_ms: 1 + i as u64, logical: 0 } };
        Entry::mutation_delta(Some(state), &Mutation::MvRegisterSet { value: vec![i as u8], context }, &w)
    };
    for i in 0..MAX_SIBLINGS {
        let delta = write(&state, i, Some(DotContext::new())).expect("under the bound");
        state.try_join(&delta).unwrap();
    }
    let err = write(&state, MAX_SIBLINGS, Some(DotContext::new())).unwrap_err();
    assert!(matches!(&err, CrdtError::InvalidMutation(m) if m.contains("siblings")), "{err:?}");
    // A write that passes what it read (or no context) replaces them all.
    let delta = write(&state, MAX_SIBLINGS + 1, None).unwrap();
    state.try_join(&delta).unwrap();
    assert!(matches!(state.read().unwrap(), Some(Value::MvRegister { values, .. }) if values.len() == 1));
}
