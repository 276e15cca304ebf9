//! Checkers: judge a run from its [history](crate::history) and the replicas' final state.
//!
//! ## Data model
//!
//! A set key is an add-only set of strings, and each add writes one element nobody else writes
//! (see the [history rules](crate::history#a-line)), so every set property below is a set
//! inclusion, and the element itself says which add wrote it. A counter key only goes up by
//! positive incrs, so a counter property is a bound on the value read.
//!
//! ## Names
//!
//! A checker's name says when its claim holds:
//!
//! * `anytime_*`: at every moment of the run, faults or not; judged from the history alone, so
//!   `check-history` re-checks them from the file.
//! * `eventually_*`: once the cluster is healed and quiet, whatever happened before.
//! * `finally_*`: about the final state against the whole history.
//!
//! ## The checkers and their exact claims
//!
//! Each returns `Ok(`[`Summary`]`)` when its claim holds, or every [`Violation`] found (all of them,
//! not just the first, so one run shows the whole extent of a bug). Events that fail
//! [`Event::validate`] are reported as [`ViolationKind::Malformed`] and otherwise skipped. Events of
//! kinds a checker does not look at are counted in the summary and otherwise ignored. "Before"
//! always means `a.end_us < b.start_us` (touching or overlapping intervals are concurrent), except
//! within one session, whose operations are sequential and ordered as recorded.
//!
//! * [`finally_no_lost_writes`]`(history, final_states)`: for every set key, on every replica state
//!   given for it:
//!   1. every element of an add whose result is ok is present ([`ViolationKind::LostWrite`]);
//!   2. every element present was added by some add of that key in the history, ok or
//!      indeterminate ([`ViolationKind::InventedValue`]);
//!   3. a key with an ok add has at least one replica state given, so a harness that forgot to
//!      collect a key cannot pass vacuously ([`ViolationKind::MissingState`]).
//!
//!   Adds at every consistency level count: once the cluster is healed and quiet, even an eventual
//!   add that was acknowledged must have reached every replica.
//! * [`eventually_converged`]`(final_states)`: for every key, all replica states given are equal
//!   ([`ViolationKind::Divergence`]).
//! * [`anytime_quorum_visibility`]`(history)`: for the ok set reads at `quorum` across all regions,
//!   and for those at `local_quorum` within each region (the events' `region`; events without one
//!   count as one region), per key:
//!   1. *visibility* ([`ViolationKind::StaleRead`]): a read contains every element whose add at the
//!      same level (and, for `local_quorum`, in the same region) was ok and ended before the read
//!      started;
//!   2. *monotonic reads* ([`ViolationKind::NonMonotonicRead`]): if read `r1` ended before read `r2`
//!      started (same level, and region for `local_quorum`), `r1 ⊆ r2`, whichever processes and
//!      nodes issued them;
//!   3. *no reads from the future* ([`ViolationKind::FutureRead`]): every element a read returns was
//!      added by an add (any level, any result) that started no later than the read ended. An
//!      element no add wrote fails this too.
//!
//!   Only adds and reads at exactly the same level are related by 1 and 2: an add at another level
//!   makes no promise to a read at this one; and a local quorum in one region does not intersect a
//!   local quorum in another. Its parts are public for one level at a time: [`quorum_reads`]`(history,
//!   level)` (one region) and [`quorum_reads_by_region`]`(history, level, region_of)`.
//! * [`anytime_no_future_reads`]`(history)`: claim 3 above for ok set reads at every level, since
//!   no level may return an element nobody had started to add.
//! * [`anytime_causal_order`]`(history, levels)`: every ok set read at one of `levels` (normally
//!   `["causal"]`) contains every ok add to its key in its *causal past*
//!   ([`ViolationKind::CausalViolation`]). The causal past of an operation is the transitive
//!   closure of
//!   1. *session order*: every ok operation (any kind, any level: the session's token carries
//!      them) of the same process recorded before it, wherever it ran, so a session that failed
//!      over to another region keeps its past; and
//!   2. *reads-from*: an ok read (any level) that returned element `e` depends on the add of `e`
//!      and everything in that add's past. An add that failed still brings its past (if a read saw
//!      it, it was applied, with its dependencies); the add itself is only required if it was ok.
//!
//!   Across keys: p1 adds x to A; p2 reads A and sees x, then adds y to B; p3 reads B and sees y;
//!   from then on p3's causal reads of A must contain x. This covers *monotonic writes* (a session's
//!   earlier add is in the past of its later add) and *writes-follow-reads* (what a session read is
//!   in the past of what it writes next), which is why those two have no checker of their own.
//! * [`anytime_session_guarantees`]`(history, levels)`: per process, every ok set read at one of
//!   `levels` contains every element the same process added (ok, any level) to the key before it
//!   (*read-your-writes*, [`ViolationKind::ReadYourWrites`]), and every element the same process's
//!   earlier ok reads (any level) of the key returned (*monotonic reads*,
//!   [`ViolationKind::MonotonicReads`]; unlike the causal checker this also holds an indeterminate
//!   add to being visible once the session has seen it). Monotonic writes and writes-follow-reads
//!   are checked by [`anytime_causal_order`]. A read missing an element may break both guarantees
//!   and is then reported under each.
//! * [`anytime_counter_within_bounds`]`(history)`: every ok counter read's value `v` satisfies
//!   `lower ≤ v ≤ upper` ([`ViolationKind::CounterOutOfRange`]), where `upper` is the sum of the
//!   amounts of every incr of the key (any level, any result: a failed incr may have been applied)
//!   that started no later than the read ended, and `lower` the sum of the ok incrs that must be
//!   visible to it: at `quorum`, the ok `quorum` incrs that ended before the read started; at
//!   `local_quorum`, the ok `local_quorum` incrs in the read's region that ended before it started;
//!   at `causal`, the same process's ok incrs (any level) recorded before it; at any other level, 0.
//!   A failed incr thus widens the upper bound but never raises the lower one.
//!
//! The `anytime_*` checkers are what `check-history` runs on a history file.
//!
//! ## Cost
//!
//! Checking is linear in the size of the input (events plus the elements they carry) after a sort
//! by time, times the number of processes for the causal checker: 50,000 events whose reads carry 3
//! million elements in all check in about a second (`tests/checkers.rs`,
//! `fifty_thousand_events_check_quickly`). Only a violating read costs more: naming what it misses
//! walks the adds it should have seen. The quorum claims are checked with a sweep: per key, reads
//! in start order are compared against the union of everything that ended before they started (the
//! acknowledged adds for visibility, the earlier reads for monotonicity). `A ⊆ r` for every earlier
//! `A` if and only if `⋃A ⊆ r`, so this is exactly the pairwise claim, and `|⋃A ∩ r| = |⋃A|` is
//! tested by walking `r` only, never the union. The causal checker's algorithm is described in
//! [`causal`]'s docs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::history::Event;

pub mod causal;
pub mod counter;
pub mod final_state;
pub mod future;
pub mod quorum;
pub mod session;

pub use causal::anytime_causal_order;
pub use counter::anytime_counter_within_bounds;
pub use final_state::{eventually_converged, final_states_by_key, finally_no_lost_writes, FinalStates, NodeStates};
pub use future::anytime_no_future_reads;
pub use quorum::{anytime_quorum_visibility, quorum_reads, quorum_reads_by_region};
pub use session::anytime_session_guarantees;

/// What kind of claim a [`Violation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// An event fails [`Event::validate`] (it is skipped by the checks).
    Malformed,
    /// A key with ok adds has no replica state to check against.
    MissingState,
    /// An ok add's element is missing from a replica's final state.
    LostWrite,
    /// A replica's final state holds an element no add in the history wrote.
    InventedValue,
    /// Two replicas of a key ended with different sets.
    Divergence,
    /// A read at a quorum level misses an ok add at that level that ended before the read started.
    StaleRead,
    /// A read misses an element that a read ended before it started had returned.
    NonMonotonicRead,
    /// A read returned an element whose add started after the read ended, or that no add wrote.
    FutureRead,
    /// A read at a causal level misses an acknowledged add in its causal past.
    CausalViolation,
    /// Read-your-writes broke: a read misses an element its own session added (ok) before it.
    ReadYourWrites,
    /// Monotonic reads broke within a session: a read misses an element an earlier read of the same
    /// session returned.
    MonotonicReads,
    /// A counter read is below what must be visible to it or above everything that was started.
    CounterOutOfRange,
}

impl ViolationKind {
    /// The snake_case name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::Malformed => "malformed",
            ViolationKind::MissingState => "missing_state",
            ViolationKind::LostWrite => "lost_write",
            ViolationKind::InventedValue => "invented_value",
            ViolationKind::Divergence => "divergence",
            ViolationKind::StaleRead => "stale_read",
            ViolationKind::NonMonotonicRead => "non_monotonic_read",
            ViolationKind::FutureRead => "future_read",
            ViolationKind::CausalViolation => "causal_violation",
            ViolationKind::ReadYourWrites => "read_your_writes",
            ViolationKind::MonotonicReads => "monotonic_reads",
            ViolationKind::CounterOutOfRange => "counter_out_of_range",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken claim, with enough in its message (key, operations, timestamps) to find it in the
/// history and the node logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Violation {
    /// Which claim.
    pub kind: ViolationKind,
    /// The key it is about.
    pub key: String,
    /// Indices into the history (0-based; messages print them as `#index+1`, the line number in the
    /// history file) of the events involved: the offending operation first, then the witnesses for
    /// the elements the message names. Empty for violations about final states only.
    pub events: Vec<usize>,
    /// Human-readable explanation naming the operations and their times.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on key {:?}: {}", self.kind, self.key, self.message)
    }
}

/// What a checker looked at when its claim held. Counts a checker has no use for stay 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The checker's name.
    pub check: &'static str,
    /// Events in the history, by `op` then `result` (empty for [`eventually_converged`], which has
    /// none).
    pub ops: BTreeMap<String, BTreeMap<String, u64>>,
    /// Keys examined.
    pub keys: u64,
    /// (key, replica) final states examined.
    pub replica_states: u64,
    /// Ok reads checked.
    pub reads_checked: u64,
    /// Ordered pairs whose order a claim relates: for the quorum checkers, (ok add, later read) for
    /// visibility plus (read, later read) for monotonicity, checked through the sweep; for the
    /// causal and session checkers, (ok add in the read's past, read).
    pub pairs_checked: u64,
    /// Element memberships tested (an element in a replica state, or in a read).
    pub elements_checked: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ok; {} keys", self.check, self.keys)?;
        for (name, count) in [
            ("replica states", self.replica_states),
            ("reads checked", self.reads_checked),
            ("pairs checked", self.pairs_checked),
            ("elements checked", self.elements_checked),
        ] {
            if count > 0 {
                write!(f, ", {count} {name}")?;
            }
        }
        for (op, results) in &self.ops {
            write!(f, "; {op}")?;
            for (result, count) in results {
                write!(f, " {result}={count}")?;
            }
        }
        Ok(())
    }
}

/// Events of `history` by `op` then `result`.
pub fn op_counts(history: &[Event]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for event in history {
        *counts.entry(event.op.clone()).or_default().entry(event.result.clone()).or_default() += 1;
    }
    counts
}

/// How many offending elements a message names; the rest are only counted, so one catastrophic
/// read does not produce a megabyte message.
pub(crate) const NAMED_PER_VIOLATION: usize = 5;

/// `#n <event>`, n being the event's line in the history file.
pub(crate) fn op_ref(history: &[Event], index: usize) -> String {
    format!("#{} {}", index + 1, history[index])
}

/// Reports invalid events and says which ones the checks may use.
pub(crate) fn validate_all(history: &[Event], violations: &mut Vec<Violation>) -> Vec<bool> {
    history
        .iter()
        .enumerate()
        .map(|(index, event)| match event.validate() {
            Ok(()) => true,
            Err(why) => {
                violations.push(Violation {
                    kind: ViolationKind::Malformed,
                    key: event.key.clone(),
                    events: vec![index],
                    message: format!("{why}: {}", op_ref(history, index)),
                });
                false
            }
        })
        .collect()
}

pub(crate) fn finish(summary: Summary, mut violations: Vec<Violation>) -> Result<Summary, Vec<Violation>> {
    if violations.is_empty() {
        Ok(summary)
    } else {
        // Stable order for diffing two runs' reports: by key, then by the offending event.
        violations.sort_by(|a, b| (&a.key, a.events.first()).cmp(&(&b.key, b.events.first())));
        Err(violations)
    }
}

/// A violation for `read` missing `missing` (element, the event that put it in the required set),
/// with `what` between the read and the list.
pub(crate) fn missing_violation(
    history: &[Event],
    kind: ViolationKind,
    read: usize,
    missing: &[(&str, usize)],
    what: String,
) -> Violation {
    let lines: Vec<String> =
        missing.iter().map(|&(element, source)| format!("{element:?} from {}", op_ref(history, source))).collect();
    let mut events = vec![read];
    for &(_, source) in missing {
        if !events.contains(&source) {
            events.push(source);
        }
    }
    Violation {
        kind,
        key: history[read].key.clone(),
        events,
        message: format!("{}: {what} {}", op_ref(history, read), lines.join("; ")),
    }
}

/// Each process's valid events in the order recorded: its session, whose operations are
/// sequential. Reports, as [`ViolationKind::Malformed`], a process whose consecutive operations
/// overlap in time (a harness that shares one process name between concurrent tasks), since the
/// session checks rely on the order recorded being the order issued; the events are still used.
pub(crate) fn sessions<'h>(
    history: &'h [Event],
    valid: &[bool],
    violations: &mut Vec<Violation>,
) -> BTreeMap<&'h str, Vec<usize>> {
    let mut sessions: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    // Reported once per process: the first overlap is enough to find the harness bug.
    let mut reported = BTreeSet::new();
    for (index, event) in history.iter().enumerate().filter(|&(i, _)| valid[i]) {
        let session = sessions.entry(&event.process).or_default();
        if let Some(&previous) = session.last() {
            if history[previous].end_us > event.start_us && reported.insert(event.process.as_str()) {
                violations.push(Violation {
                    kind: ViolationKind::Malformed,
                    key: String::new(),
                    events: vec![index, previous],
                    message: format!(
                        "process {}'s operations overlap, but a session's must be sequential: {} starts before {} ended",
                        event.process,
                        op_ref(history, index),
                        op_ref(history, previous)
                    ),
                });
            }
        }
        session.push(index);
    }
    sessions
}
