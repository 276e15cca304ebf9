//! Deterministic simulation of leaderless `local_quorum` writes and reads driven by [`AckRound`] and
//! [`ReadRound`].
//!
//! Every seed builds 5 nodes and a few keys, each replicated on 3 of them, with a grow-only set of
//! `u64` per key per replica (join = union). Four clients each issue a fixed number of operations,
//! one at a time, through a random coordinator node:
//!
//! * **write** — a fresh value is sent to every replica of the key; acks feed
//!   [`AckRound::for_write`]; the write is ok once satisfied, unavailable (indeterminate) when its
//!   deadline passes or too many replicas are reported unreachable first;
//! * **read** — every replica is asked for its state; once the [`ReadRound`] is satisfied the
//!   coordinator merges the replies, sends the merge to the stale repliers and returns it only when
//!   [`ReadRound::repair`] is satisfied; replies that arrive later get a fire-and-forget read repair.
//!
//! The network drops, delays (so reorders) and duplicates messages, replies included, and timed
//! partitions cut a set of nodes off from the rest and later heal; a request blocked by a partition
//! is sometimes reported back to its sender as unreachable (a refused connection).
//!
//! Checked over the recorded history: (1) every ok read contains every value whose write was ok
//! before the read started; (2) of two ok reads of a key, the one that ended before the other started
//! is a subset of it; (3) an ok write is on a majority of its replicas when acked and still at the end
//! of the run, and on every replica after a final anti-entropy pass; no read or replica holds a value
//! that nobody wrote.
//!
//! All randomness comes from one seeded splitmix64, time is a tick counter and events sit in an
//! ordered queue, so a seed replays exactly: on failure the seed is printed, and
//! `MERIDIAN_SIM_SEED=<seed>` runs that seed alone (printing its history); `MERIDIAN_SIM_SEEDS=<n>`
//! changes how many seeds run (default 500). The coordinator's shortcuts are a parameter ([`Mode`]),
//! so the same checkers are shown to catch a coordinator that skips the read write-back or acks a
//! write after one replica.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::time::Instant;

use meridian_crdt::NodeId;
use meridian_proto::Consistency;
use meridian_replication::quorum::{majority, Outcome};
use meridian_replication::{AckRound, ReadRound};

type Set = BTreeSet<u64>;

mod common;
use common::Rng;

const NODES: usize = 5;
const RF: usize = 3;
const CLIENTS: usize = 4;
/// Far beyond any run (ops are bounded and each has a deadline), so reaching it means a livelock.
const MAX_TICK: u64 = 1_000_000;
const DEFAULT_SEEDS: u64 = 500;

/// How faithfully the coordinator follows the protocol. Only [`Mode::CORRECT`] is expected to pass;
/// the others exist to prove the checkers can fail.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// Return a quorum read's merge at once, with only a fire-and-forget read repair.
    skip_read_write_back: bool,
    /// Acknowledge a write after one replica instead of a majority.
    single_ack_writes: bool,
}

impl Mode {
    const CORRECT: Mode = Mode { skip_read_write_back: false, single_ack_writes: false };
}

fn node(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

#[derive(Clone, Debug)]
enum Msg {
    Apply {
        op: usize,
        key: usize,
        value: u64,
    },
    Applied {
        op: usize,
    },
    Read {
        op: usize,
        key: usize,
    },
    State {
        op: usize,
        state: Option<Set>,
    },
    /// `op` is `None` for fire-and-forget read repair, which nobody waits for.
    Join {
        op: Option<usize>,
        key: usize,
        state: Set,
    },
    Joined {
        op: usize,
    },
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    /// Tells the sender of `msg` that it did not get through to `to`.
    Unreachable {
        to: usize,
        msg: Msg,
    },
    Deadline {
        op: usize,
    },
    ClientNext {
        client: usize,
    },
    Partition,
    Heal,
}

enum Phase {
    Write(AckRound),
    Read(ReadRound<Set>),
    Repair {
        read: ReadRound<Set>,
        merged: Option<Set>,
        round: AckRound,
        repaired: BTreeSet<usize>,
    },
    /// Finished; a read keeps its round so late replies can still be read-repaired.
    Done {
        read: Option<(ReadRound<Set>, Option<Set>, BTreeSet<usize>)>,
    },
}

struct Op {
    client: usize,
    coordinator: usize,
    key: usize,
    write: Option<u64>,
    start: u64,
    start_tick: u64,
    phase: Phase,
}

#[derive(Clone, Debug, PartialEq)]
enum OpResult {
    WriteOk,
    ReadOk(Set),
    Unavailable,
}

/// One finished operation. `start` and `end` come from one counter, so they order real time exactly
/// even within a tick.
struct Record {
    op: usize,
    client: usize,
    key: usize,
    write: Option<u64>,
    start: u64,
    end: u64,
    start_tick: u64,
    end_tick: u64,
    result: OpResult,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.write {
            Some(value) => format!("write({value})"),
            None => "read".to_string(),
        };
        write!(
            f,
            "op {} client {} key {} {what} [{}..{}] ticks {}..{} -> {:?}",
            self.op, self.client, self.key, self.start, self.end, self.start_tick, self.end_tick, self.result
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    /// (1) an ok read missed a write that was ok before it started.
    Visibility,
    /// (2) an ok read lost values an earlier ok read of the key returned.
    Monotonic,
    /// (3) a write was acked while fewer than a majority of its replicas held it.
    AckedBeforeMajority,
    /// (3) an ok write was on fewer than a majority of its replicas at the end of the run.
    MinorityAtEnd,
    /// (3) an ok write was missing from a replica after the final anti-entropy pass.
    LostAfterAntiEntropy,
    /// A read or a replica held a value no write produced.
    Invented,
}

#[derive(Default, Debug)]
struct Totals {
    seeds: u64,
    ops: u64,
    writes_ok: u64,
    reads_ok: u64,
    writes_unavailable: u64,
    reads_unavailable: u64,
    messages: u64,
    dropped: u64,
    duplicated: u64,
    blocked_by_partition: u64,
    unreachable_reports: u64,
    partitions: u64,
    /// Reads whose blocking write-back needed at least one ack.
    reads_with_write_back: u64,
    write_back_joins: u64,
    fire_and_forget_repairs: u64,
    max_ticks: u64,
}

impl Totals {
    fn add(&mut self, run: &Totals) {
        self.seeds += run.seeds;
        self.ops += run.ops;
        self.writes_ok += run.writes_ok;
        self.reads_ok += run.reads_ok;
        self.writes_unavailable += run.writes_unavailable;
        self.reads_unavailable += run.reads_unavailable;
        self.messages += run.messages;
        self.dropped += run.dropped;
        self.duplicated += run.duplicated;
        self.blocked_by_partition += run.blocked_by_partition;
        self.unreachable_reports += run.unreachable_reports;
        self.partitions += run.partitions;
        self.reads_with_write_back += run.reads_with_write_back;
        self.write_back_joins += run.write_back_joins;
        self.fire_and_forget_repairs += run.fire_and_forget_repairs;
        self.max_ticks = self.max_ticks.max(run.max_ticks);
    }
}

struct Sim {
    seed: u64,
    mode: Mode,
    rng: Rng,
    now: u64,
    /// Real-time order of operation starts and ends.
    order: u64,
    queue: BTreeMap<(u64, u64), Event>,
    next_event: u64,
    drop_p: f64,
    dup_p: f64,
    unreachable_p: f64,
    max_delay: u64,
    deadline: u64,
    replicas: Vec<Vec<usize>>,
    stores: Vec<BTreeMap<usize, Set>>,
    cut: Option<BTreeSet<usize>>,
    ops_left: Vec<u64>,
    ops: Vec<Op>,
    next_value: u64,
    history: Vec<Record>,
    violations: Vec<(Check, String)>,
    totals: Totals,
}

impl Sim {
    fn new(seed: u64, mode: Mode) -> Sim {
        let mut rng = Rng(seed);
        let keys = rng.range(2, 4) as usize;
        let replicas = (0..keys)
            .map(|_| {
                let mut nodes: Vec<usize> = (0..NODES).collect();
                let mut chosen = Vec::new();
                while chosen.len() < RF {
                    chosen.push(nodes.remove(rng.below(nodes.len() as u64) as usize));
                }
                chosen.sort_unstable();
                chosen
            })
            .collect();
        let ops_left = (0..CLIENTS).map(|_| rng.range(12, 24)).collect();
        Sim {
            seed,
            mode,
            drop_p: rng.range(0, 15) as f64 / 100.0,
            dup_p: rng.range(0, 10) as f64 / 100.0,
            unreachable_p: rng.range(0, 100) as f64 / 100.0,
            max_delay: rng.range(5, 50),
            deadline: rng.range(100, 300),
            rng,
            now: 0,
            order: 0,
            queue: BTreeMap::new(),
            next_event: 0,
            replicas,
            stores: vec![BTreeMap::new(); NODES],
            cut: None,
            ops_left,
            ops: Vec::new(),
            next_value: 1,
            history: Vec::new(),
            violations: Vec::new(),
            totals: Totals { seeds: 1, ..Totals::default() },
        }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.queue.insert((at, self.next_event), event);
        self.next_event += 1;
    }

    fn violation(&mut self, check: Check, what: String) {
        self.violations.push((check, what));
    }

    fn blocked(&self, a: usize, b: usize) -> bool {
        self.cut.as_ref().is_some_and(|side| side.contains(&a) != side.contains(&b))
    }

    fn clients_done(&self) -> bool {
        self.ops_left.iter().all(|&left| left == 0) && self.ops.iter().all(|op| matches!(op.phase, Phase::Done { .. }))
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to {
            // The coordinator's own replica is a function call, not a network hop.
            self.schedule(self.now, Event::Deliver { from, to, msg });
            return;
        }
        self.totals.messages += 1;
        if self.rng.chance(self.dup_p) {
            self.totals.duplicated += 1;
            let at = self.now + self.rng.range(1, self.max_delay);
            self.schedule(at, Event::Deliver { from, to, msg: msg.clone() });
        }
        if self.rng.chance(self.drop_p) {
            self.totals.dropped += 1;
            return;
        }
        let at = self.now + self.rng.range(1, self.max_delay);
        self.schedule(at, Event::Deliver { from, to, msg });
    }

    fn run(mut self) -> Sim {
        for client in 0..CLIENTS {
            let at = self.rng.range(0, 20);
            self.schedule(at, Event::ClientNext { client });
        }
        let at = self.rng.range(0, 200);
        self.schedule(at, Event::Partition);
        while let Some(((at, _), event)) = self.queue.pop_first() {
            assert!(at <= MAX_TICK, "seed {}: still running at tick {at}", self.seed);
            self.now = at;
            match event {
                Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
                Event::Unreachable { to, msg } => self.unreachable(to, msg),
                Event::Deadline { op } => self.expire(op),
                Event::ClientNext { client } => self.start_op(client),
                Event::Partition => self.partition(),
                Event::Heal => self.heal(),
            }
        }
        self.totals.max_ticks = self.now;
        assert!(self.clients_done(), "seed {}: the queue drained with operations unfinished", self.seed);
        self.check_history();
        self.check_replicas();
        self
    }

    fn partition(&mut self) {
        if self.clients_done() {
            return;
        }
        let size = self.rng.range(1, 2) as usize;
        let mut side = BTreeSet::new();
        while side.len() < size {
            side.insert(self.rng.below(NODES as u64) as usize);
        }
        self.cut = Some(side);
        self.totals.partitions += 1;
        let at = self.now + self.rng.range(30, 400);
        self.schedule(at, Event::Heal);
    }

    fn heal(&mut self) {
        self.cut = None;
        if !self.clients_done() {
            let at = self.now + self.rng.range(20, 300);
            self.schedule(at, Event::Partition);
        }
    }

    fn start_op(&mut self, client: usize) {
        if self.ops_left[client] == 0 {
            return;
        }
        self.ops_left[client] -= 1;
        self.totals.ops += 1;
        let id = self.ops.len();
        let coordinator = self.rng.below(NODES as u64) as usize;
        let key = self.rng.below(self.replicas.len() as u64) as usize;
        let replicas = self.replicas[key].clone();
        let ids: Vec<NodeId> = replicas.iter().map(|&r| node(r)).collect();
        self.order += 1;
        let (write, phase) = if self.rng.chance(0.5) {
            let value = self.next_value;
            self.next_value += 1;
            let round = if self.mode.single_ack_writes {
                AckRound::new(ids, 1)
            } else {
                AckRound::for_write(Consistency::LocalQuorum, &ids)
            };
            (Some(value), Phase::Write(round))
        } else {
            (None, Phase::Read(ReadRound::new(Consistency::LocalQuorum, &ids)))
        };
        self.ops.push(Op { client, coordinator, key, write, start: self.order, start_tick: self.now, phase });
        for &replica in &replicas {
            let msg = match write {
                Some(value) => Msg::Apply { op: id, key, value },
                None => Msg::Read { op: id, key },
            };
            self.send(coordinator, replica, msg);
        }
        self.schedule(self.now + self.deadline, Event::Deadline { op: id });
        self.advance(id);
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        if self.blocked(from, to) {
            self.totals.blocked_by_partition += 1;
            let expects_reply = matches!(msg, Msg::Apply { .. } | Msg::Read { .. } | Msg::Join { op: Some(_), .. });
            if expects_reply && self.rng.chance(self.unreachable_p) {
                let at = self.now + self.rng.range(1, 5);
                self.schedule(at, Event::Unreachable { to, msg });
            }
            return;
        }
        match msg {
            Msg::Apply { op, key, value } => {
                self.stores[to].entry(key).or_default().insert(value);
                self.send(to, from, Msg::Applied { op });
            }
            Msg::Read { op, key } => {
                let state = self.stores[to].get(&key).cloned();
                self.send(to, from, Msg::State { op, state });
            }
            Msg::Join { op, key, state } => {
                self.stores[to].entry(key).or_default().extend(state);
                if let Some(op) = op {
                    self.send(to, from, Msg::Joined { op });
                }
            }
            Msg::Applied { op } => {
                if let Phase::Write(round) = &mut self.ops[op].phase {
                    round.ack(node(from));
                    self.advance(op);
                }
            }
            Msg::Joined { op } => {
                if let Phase::Repair { round, .. } = &mut self.ops[op].phase {
                    round.ack(node(from));
                    self.advance(op);
                }
            }
            Msg::State { op, state } => self.state_reply(op, from, to, state),
        }
    }

    fn state_reply(&mut self, op: usize, from: usize, coordinator: usize, state: Option<Set>) {
        let key = self.ops[op].key;
        let late = match &mut self.ops[op].phase {
            Phase::Read(read) => {
                read.reply(node(from), state);
                None
            }
            Phase::Repair { read, merged, repaired, .. } | Phase::Done { read: Some((read, merged, repaired)) } => {
                read.reply(node(from), state);
                let stale = read.stale(merged).contains(&node(from)) && repaired.insert(from);
                merged.clone().filter(|_| stale)
            }
            Phase::Write(_) | Phase::Done { read: None } => None,
        };
        if let Some(state) = late {
            self.totals.fire_and_forget_repairs += 1;
            self.send(coordinator, from, Msg::Join { op: None, key, state });
        }
        self.advance(op);
    }

    fn unreachable(&mut self, target: usize, msg: Msg) {
        self.totals.unreachable_reports += 1;
        let op = match msg {
            Msg::Apply { op, .. } | Msg::Read { op, .. } | Msg::Join { op: Some(op), .. } => op,
            _ => return,
        };
        // A report about an earlier phase's request says nothing about the current round's targets.
        match (&msg, &mut self.ops[op].phase) {
            (Msg::Apply { .. }, Phase::Write(round)) | (Msg::Join { .. }, Phase::Repair { round, .. }) => {
                round.fail(node(target))
            }
            (Msg::Read { .. }, Phase::Read(read)) => read.fail(node(target)),
            _ => return,
        }
        self.advance(op);
    }

    fn expire(&mut self, op: usize) {
        match &mut self.ops[op].phase {
            Phase::Write(round) | Phase::Repair { round, .. } => round.expire(),
            Phase::Read(read) => read.expire(),
            Phase::Done { .. } => return,
        }
        self.advance(op);
    }

    /// Acts on the op's current verdict: finishes it, or moves a read on to its write-back.
    fn advance(&mut self, op: usize) {
        let phase = std::mem::replace(&mut self.ops[op].phase, Phase::Done { read: None });
        let phase = match phase {
            Phase::Write(round) => match round.outcome() {
                Outcome::Pending => Phase::Write(round),
                Outcome::Satisfied => {
                    self.check_write_durable(op);
                    self.finish(op, OpResult::WriteOk);
                    Phase::Done { read: None }
                }
                Outcome::Unavailable { .. } => {
                    self.finish(op, OpResult::Unavailable);
                    Phase::Done { read: None }
                }
            },
            Phase::Read(read) => match read.outcome() {
                Outcome::Pending => Phase::Read(read),
                Outcome::Unavailable { .. } => {
                    self.finish(op, OpResult::Unavailable);
                    Phase::Done { read: None }
                }
                Outcome::Satisfied => self.write_back(op, read),
            },
            Phase::Repair { read, merged, round, repaired } => match round.outcome() {
                Outcome::Pending => Phase::Repair { read, merged, round, repaired },
                Outcome::Satisfied => {
                    self.finish(op, OpResult::ReadOk(merged.clone().unwrap_or_default()));
                    Phase::Done { read: Some((read, merged, repaired)) }
                }
                Outcome::Unavailable { .. } => {
                    self.finish(op, OpResult::Unavailable);
                    Phase::Done { read: Some((read, merged, repaired)) }
                }
            },
            done @ Phase::Done { .. } => done,
        };
        self.ops[op].phase = phase;
    }

    fn write_back(&mut self, op: usize, read: ReadRound<Set>) -> Phase {
        let (key, coordinator) = (self.ops[op].key, self.ops[op].coordinator);
        let merged = read.merged(|acc: &mut Set, other: &Set| -> Result<(), Infallible> {
            acc.extend(other);
            Ok(())
        });
        let Ok(merged) = merged;
        let stale = read.stale(&merged);
        let repaired: BTreeSet<usize> = stale.iter().map(|n| n.0 as usize - 1).collect();
        if self.mode.skip_read_write_back {
            for &replica in &repaired {
                self.totals.fire_and_forget_repairs += 1;
                let state = merged.clone().unwrap_or_default();
                self.send(coordinator, replica, Msg::Join { op: None, key, state });
            }
            self.finish(op, OpResult::ReadOk(merged.clone().unwrap_or_default()));
            return Phase::Done { read: Some((read, merged, repaired)) };
        }
        let round = read.repair(&merged);
        if round.needed() > 0 {
            self.totals.reads_with_write_back += 1;
        }
        if let Some(state) = &merged {
            for &replica in &repaired {
                self.totals.write_back_joins += 1;
                self.send(coordinator, replica, Msg::Join { op: Some(op), key, state: state.clone() });
            }
        }
        match round.outcome() {
            Outcome::Satisfied => {
                self.finish(op, OpResult::ReadOk(merged.clone().unwrap_or_default()));
                Phase::Done { read: Some((read, merged, repaired)) }
            }
            Outcome::Unavailable { .. } => {
                self.finish(op, OpResult::Unavailable);
                Phase::Done { read: Some((read, merged, repaired)) }
            }
            Outcome::Pending => Phase::Repair { read, merged, round, repaired },
        }
    }

    fn finish(&mut self, op: usize, result: OpResult) {
        match (&result, self.ops[op].write.is_some()) {
            (OpResult::Unavailable, true) => self.totals.writes_unavailable += 1,
            (OpResult::Unavailable, false) => self.totals.reads_unavailable += 1,
            (_, true) => self.totals.writes_ok += 1,
            (_, false) => self.totals.reads_ok += 1,
        }
        self.order += 1;
        let o = &self.ops[op];
        let record = Record {
            op,
            client: o.client,
            key: o.key,
            write: o.write,
            start: o.start,
            end: self.order,
            start_tick: o.start_tick,
            end_tick: self.now,
            result,
        };
        let client = record.client;
        self.history.push(record);
        let at = self.now + self.rng.range(0, 30);
        self.schedule(at, Event::ClientNext { client });
    }

    fn holders(&self, key: usize, value: u64) -> usize {
        self.replicas[key].iter().filter(|&&r| self.stores[r].get(&key).is_some_and(|s| s.contains(&value))).count()
    }

    /// Checks the replicas themselves, not the coordinator's count of acks.
    fn check_write_durable(&mut self, op: usize) {
        let (key, value) = (self.ops[op].key, self.ops[op].write.expect("a write"));
        let holders = self.holders(key, value);
        if holders < majority(RF) {
            self.violation(
                Check::AckedBeforeMajority,
                format!(
                    "op {op}: write({value}) of key {key} acked at tick {} on {holders} of {RF} replicas",
                    self.now
                ),
            );
        }
    }

    fn check_history(&mut self) {
        let mut found = Vec::new();
        let written: BTreeMap<u64, usize> = self.history.iter().filter_map(|r| r.write.map(|v| (v, r.key))).collect();
        let ok_writes: Vec<&Record> = self.history.iter().filter(|r| r.result == OpResult::WriteOk).collect();
        let ok_reads: Vec<(&Record, &Set)> = self
            .history
            .iter()
            .filter_map(|r| match &r.result {
                OpResult::ReadOk(set) => Some((r, set)),
                _ => None,
            })
            .collect();
        for &(read, set) in &ok_reads {
            for value in set {
                if written.get(value) != Some(&read.key) {
                    found
                        .push((Check::Invented, format!("{read} returned {value}, never written to key {}", read.key)));
                }
            }
            for write in ok_writes.iter().filter(|w| w.key == read.key && w.end < read.start) {
                let value = write.write.expect("a write");
                if !set.contains(&value) {
                    found.push((Check::Visibility, format!("{read} misses {value} of earlier ok {write}")));
                }
            }
            for &(earlier, seen) in ok_reads.iter().filter(|(r, _)| r.key == read.key && r.end < read.start) {
                if !seen.is_subset(set) {
                    let lost: Vec<&u64> = seen.difference(set).collect();
                    found.push((Check::Monotonic, format!("{read} lost {lost:?} that earlier {earlier} returned")));
                }
            }
        }
        self.violations.extend(found);
    }

    fn check_replicas(&mut self) {
        let written: BTreeMap<u64, usize> = self.history.iter().filter_map(|r| r.write.map(|v| (v, r.key))).collect();
        let ok: Vec<(usize, u64)> =
            self.history.iter().filter(|r| r.result == OpResult::WriteOk).map(|r| (r.key, r.write.unwrap())).collect();
        for &(key, value) in &ok {
            let holders = self.holders(key, value);
            if holders < majority(RF) {
                self.violation(Check::MinorityAtEnd, format!("ok write({value}) of key {key} on {holders} of {RF}"));
            }
        }
        // Heal everything and converge every key's replicas, as anti-entropy eventually would.
        self.cut = None;
        for key in 0..self.replicas.len() {
            let union: Set =
                self.replicas[key].iter().filter_map(|&r| self.stores[r].get(&key)).flatten().copied().collect();
            for &r in &self.replicas[key] {
                self.stores[r].insert(key, union.clone());
            }
            for value in &union {
                if written.get(value) != Some(&key) {
                    self.violation(Check::Invented, format!("key {key} holds {value}, never written to it"));
                }
            }
        }
        for &(key, value) in &ok {
            let holders = self.holders(key, value);
            if holders < RF {
                self.violation(
                    Check::LostAfterAntiEntropy,
                    format!("ok write({value}) of key {key} on {holders} of {RF} after anti-entropy"),
                );
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

/// Names the seed whenever a run panics, whatever the cause.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", replay_hint(self.0));
        }
    }
}

fn replay_hint(seed: u64) -> String {
    format!("seed {seed} failed; replay: MERIDIAN_SIM_SEED={seed} cargo test -p meridian-replication --test coordination_sim")
}

struct Sweep {
    totals: Totals,
    /// Seeds with at least one violation, per check.
    caught: BTreeMap<Check, u64>,
    replay: bool,
}

impl Sweep {
    /// Whether the sweep is big enough that faults and the checkers' catches must have turned up; a
    /// replay or a short sweep is for exploring and asserts only the safety checks.
    fn conclusive(&self) -> bool {
        !self.replay && self.totals.seeds >= DEFAULT_SEEDS / 2
    }
}

/// Runs every seed (or the replayed one) in `mode`; `each` sees every finished run.
fn sweep(mode: Mode, mut each: impl FnMut(&Sim)) -> Sweep {
    let (seeds, replay): (Vec<u64>, bool) = match env_u64("MERIDIAN_SIM_SEED") {
        Some(seed) => (vec![seed], true),
        None => ((0..env_u64("MERIDIAN_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(), false),
    };
    let mut sweep = Sweep { totals: Totals::default(), caught: BTreeMap::new(), replay };
    for seed in seeds {
        let guard = SeedGuard(seed);
        let sim = Sim::new(seed, mode).run();
        drop(guard);
        if replay {
            println!("seed {seed}, {mode:?}: keys on {:?}", sim.replicas);
            for record in &sim.history {
                println!("  {record}");
            }
            for (check, what) in &sim.violations {
                println!("  {check:?}: {what}");
            }
        }
        let checks: BTreeSet<Check> = sim.violations.iter().map(|(check, _)| *check).collect();
        for check in checks {
            *sweep.caught.entry(check).or_default() += 1;
        }
        sweep.totals.add(&sim.totals);
        each(&sim);
    }
    sweep
}

#[test]
fn quorum_reads_see_acked_writes_and_never_go_backwards_under_faults() {
    let started = Instant::now();
    let sweep = sweep(Mode::CORRECT, |sim| {
        if !sim.violations.is_empty() {
            let shown: Vec<String> = sim.violations.iter().take(5).map(|(c, w)| format!("  {c:?}: {w}")).collect();
            panic!("{} violations:\n{}\n{}", sim.violations.len(), shown.join("\n"), replay_hint(sim.seed));
        }
    });
    let t = &sweep.totals;
    println!("{t:#?}\nin {:?}", started.elapsed());
    if sweep.conclusive() {
        // Without these the run above proves nothing about faults.
        assert!(t.dropped > 0, "no message was dropped");
        assert!(t.duplicated > 0, "no message was duplicated");
        assert!(t.partitions > 0 && t.blocked_by_partition > 0, "no partition cut a message");
        assert!(t.unreachable_reports > 0, "no failure was reported to a coordinator");
        assert!(t.writes_unavailable > 0 && t.reads_unavailable > 0, "no operation ended unavailable");
        assert!(t.reads_with_write_back > 0 && t.fire_and_forget_repairs > 0, "no read repaired a replica");
        assert!(t.writes_ok > t.writes_unavailable && t.reads_ok > t.reads_unavailable, "mostly unavailable");
    }
}

#[test]
fn checkers_catch_a_read_that_skips_the_write_back() {
    let mode = Mode { skip_read_write_back: true, ..Mode::CORRECT };
    let sweep = sweep(mode, |_| {});
    println!("{mode:?}: seeds caught per check {:?}", sweep.caught);
    if sweep.conclusive() {
        assert!(sweep.caught.get(&Check::Monotonic).is_some_and(|&n| n > 0), "monotonic reads never failed");
    }
}

#[test]
fn checkers_catch_a_write_acked_by_one_replica() {
    let mode = Mode { single_ack_writes: true, ..Mode::CORRECT };
    let sweep = sweep(mode, |_| {});
    println!("{mode:?}: seeds caught per check {:?}", sweep.caught);
    if sweep.conclusive() {
        for check in [Check::Visibility, Check::AckedBeforeMajority, Check::MinorityAtEnd] {
            assert!(sweep.caught.get(&check).is_some_and(|&n| n > 0), "{check:?} never failed");
        }
    }
}
