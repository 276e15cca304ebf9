//! Checkers: judge a run from its [history](crate::history) and the replicas' final state.
//!
//! ## Data model
//!
//! Every key in a fault test is an add-only set of strings, and each add writes one element nobody
//! else writes (see the [history rules](crate::history#a-line)). So every property below is a set
//! inclusion, and the element itself says which add wrote it.
//!
//! ## The checkers and their exact claims
//!
//! Each returns `Ok(`[`Summary`]`)` when its claim holds, or every [`Violation`] found (all of them,
//! not just the first, so one run shows the whole extent of a bug). Events that fail
//! [`Event::validate`] are reported as [`ViolationKind::Malformed`] and otherwise skipped. Events of
//! kinds other than [`OP_ADD`] and [`OP_READ`] are counted and otherwise ignored.
//!
//! * [`no_lost_writes`]`(history, final_states)`: for every key, on every replica state given for it:
//!   1. every element of an add whose result is ok is present ([`ViolationKind::LostWrite`]);
//!   2. every element present was added by some add of that key in the history, ok or
//!      indeterminate ([`ViolationKind::InventedValue`]);
//!   3. a key with an ok add has at least one replica state given, so a harness that forgot to
//!      collect a key cannot pass vacuously ([`ViolationKind::MissingState`]).
//!
//!   Adds at every consistency level count: once the cluster is healed and quiet, even an eventual
//!   add that was acknowledged must have reached every replica.
//! * [`convergence`]`(final_states)`: for every key, all replica states given are equal
//!   ([`ViolationKind::Divergence`]).
//! * [`quorum_reads`]`(history, level)`: for the ok reads at consistency `level`, per key:
//!   1. *visibility* ([`ViolationKind::StaleRead`]): a read contains every element whose add at the
//!      same `level` was ok and ended (`end_us`) before the read started (`start_us`);
//!   2. *monotonic reads* ([`ViolationKind::NonMonotonicRead`]): if read `r1` ended before read `r2`
//!      started, `r1 ⊆ r2`, whichever processes and nodes issued them;
//!   3. *no reads from the future* ([`ViolationKind::FutureRead`]): every element a read returns was
//!      added by an add (any level, any result) that started no later than the read ended. An
//!      element no add wrote fails this too.
//!
//!   Only adds and reads at exactly `level` are related by 1 and 2: an add at another level makes
//!   no promise to a read at this one. [`quorum_reads_by_region`] is the same with 1 and 2 applied
//!   only within each region, which is the claim `local_quorum` actually makes: a local quorum in
//!   one region does not intersect a local quorum in another. [`quorum_reads`] treats all nodes as
//!   one region, which is right for `quorum` and for single-region clusters.
//! * [`no_future_reads`]`(history)`: claim 3 of [`quorum_reads`] for ok reads at every level, since
//!   no level may return an element nobody had started to add.
//!
//! The history-only checkers ([`quorum_reads`], [`quorum_reads_by_region`], [`no_future_reads`])
//! are what `check-history` runs on a history file.
//!
//! ## Cost
//!
//! Checking is linear in the size of the input (events plus the elements they carry) after a sort
//! by time: 50,000 events whose reads carry 3 million elements in all check in about a second
//! (`tests/checkers.rs`, `fifty_thousand_events_check_quickly`). Only a violating read costs more:
//! naming what it misses walks the union below. The pairwise claims are checked with a sweep: per key, reads in start order are compared against
//! the union of everything that ended before they started (the acknowledged adds for visibility,
//! the earlier reads for monotonicity). `A ⊆ r` for every earlier `A` if and only if
//! `⋃A ⊆ r`, so this is exactly the pairwise claim, and `|⋃A ∩ r| = |⋃A|` is tested by walking
//! `r` only, never the union.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::history::{Event, OP_ADD, OP_READ};

/// Final state per key: key → node → the set that replica holds. Give each key only its own
/// replicas (a node that is not a replica of the key may legitimately hold nothing, or a stale
/// hinted copy). A replica that holds nothing for the key is an empty set, not a missing entry.
/// [`final_states_by_key`] builds this from per-node dumps.
pub type FinalStates = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Final state per node, as a harness dumps it: node → key → set.
pub type NodeStates = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Turns per-node dumps into [`FinalStates`]. The keys are those of `history` plus those any node
/// holds. For each key, every node in `replicas_of(key)` that appears in `by_node` contributes its
/// set for the key, or an empty set if it holds nothing for it (which [`no_lost_writes`] then
/// reports if the key had ok adds). A replica absent from `by_node` (say, a node the test killed for
/// good) is left out rather than treated as empty, so only nodes actually dumped are judged.
pub fn final_states_by_key(
    history: &[Event],
    by_node: &NodeStates,
    replicas_of: impl Fn(&str) -> Vec<String>,
) -> FinalStates {
    let keys: BTreeSet<&str> = history
        .iter()
        .map(|e| e.key.as_str())
        .chain(by_node.values().flat_map(|keys| keys.keys().map(String::as_str)))
        .collect();
    keys.into_iter()
        .map(|key| {
            let replicas = replicas_of(key)
                .into_iter()
                .filter_map(|node| {
                    let set = by_node.get(&node)?.get(key).cloned().unwrap_or_default();
                    Some((node, set))
                })
                .collect();
            (key.to_string(), replicas)
        })
        .collect()
}

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
    /// Events in the history, by `op` then `result` (empty for [`convergence`], which has none).
    pub ops: BTreeMap<String, BTreeMap<String, u64>>,
    /// Keys examined.
    pub keys: u64,
    /// (key, replica) final states examined.
    pub replica_states: u64,
    /// Ok reads checked.
    pub reads_checked: u64,
    /// Ordered pairs whose order a claim relates, checked through the sweep: (ok add, later read)
    /// for visibility plus (read, later read) for monotonicity.
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
const NAMED_PER_VIOLATION: usize = 5;

/// `#n <event>`, n being the event's line in the history file.
fn op_ref(history: &[Event], index: usize) -> String {
    format!("#{} {}", index + 1, history[index])
}

/// Reports invalid events and says which ones the checks may use.
fn validate_all(history: &[Event], violations: &mut Vec<Violation>) -> Vec<bool> {
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

fn finish(summary: Summary, mut violations: Vec<Violation>) -> Result<Summary, Vec<Violation>> {
    if violations.is_empty() {
        Ok(summary)
    } else {
        // Stable order for diffing two runs' reports: by key, then by the offending event.
        violations.sort_by(|a, b| (&a.key, a.events.first()).cmp(&(&b.key, b.events.first())));
        Err(violations)
    }
}

/// Checks that no acknowledged add is missing from, and no unwritten element is present in, any
/// replica's final state. See the [module docs](self) for the exact claim; `final_states` must hold,
/// for each key, only the states of that key's replicas (see [`FinalStates`]).
pub fn no_lost_writes(history: &[Event], final_states: &FinalStates) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "no_lost_writes", ops: op_counts(history), ..Summary::default() };

    // Per key: element -> its first ok add, and every element any add (ok or not) wrote.
    let mut acknowledged: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut written: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (index, event) in history.iter().enumerate().filter(|&(i, _)| valid[i]) {
        let Some(element) = event.added_element() else { continue };
        written.entry(&event.key).or_default().insert(element);
        if event.is_ok() {
            acknowledged.entry(&event.key).or_default().entry(element).or_insert(index);
        }
    }

    let keys: BTreeSet<&str> = acknowledged.keys().copied().chain(final_states.keys().map(String::as_str)).collect();
    let no_replicas = BTreeMap::new();
    let no_elements = HashSet::new();
    for key in keys {
        summary.keys += 1;
        let acked = acknowledged.get(key);
        let replicas = final_states.get(key).unwrap_or(&no_replicas);
        if replicas.is_empty() {
            if let Some(acked) = acked {
                let named: Vec<usize> = acked.values().copied().take(NAMED_PER_VIOLATION).collect();
                let examples: Vec<String> = named.iter().map(|&i| op_ref(history, i)).collect();
                violations.push(Violation {
                    kind: ViolationKind::MissingState,
                    key: key.to_string(),
                    events: named,
                    message: format!(
                        "{} acknowledged adds but no replica state was given to check them against, e.g. {}",
                        acked.len(),
                        examples.join("; ")
                    ),
                });
            }
            continue;
        }
        let written = written.get(key).unwrap_or(&no_elements);
        for (node, state) in replicas {
            summary.replica_states += 1;
            if let Some(acked) = acked {
                summary.elements_checked += acked.len() as u64;
                let missing: Vec<(&str, usize)> =
                    acked.iter().filter(|(element, _)| !state.contains(**element)).map(|(e, &i)| (*e, i)).collect();
                if !missing.is_empty() {
                    let named = &missing[..missing.len().min(NAMED_PER_VIOLATION)];
                    let lines: Vec<String> = named.iter().map(|&(_, i)| op_ref(history, i)).collect();
                    violations.push(Violation {
                        kind: ViolationKind::LostWrite,
                        key: key.to_string(),
                        events: named.iter().map(|&(_, i)| i).collect(),
                        message: format!(
                            "replica {node} ({} elements) lacks {} of {} acknowledged adds: {}",
                            state.len(),
                            missing.len(),
                            acked.len(),
                            lines.join("; ")
                        ),
                    });
                }
            }
            summary.elements_checked += state.len() as u64;
            let invented: Vec<&String> = state.iter().filter(|e| !written.contains(e.as_str())).collect();
            if !invented.is_empty() {
                let named = &invented[..invented.len().min(NAMED_PER_VIOLATION)];
                violations.push(Violation {
                    kind: ViolationKind::InventedValue,
                    key: key.to_string(),
                    events: Vec::new(),
                    message: format!(
                        "replica {node} holds {} elements no add in the history wrote: {named:?}",
                        invented.len()
                    ),
                });
            }
        }
    }
    finish(summary, violations)
}

/// Checks that, for every key, all the replica states given are equal.
pub fn convergence(final_states: &FinalStates) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut summary = Summary { check: "convergence", ..Summary::default() };
    for (key, replicas) in final_states {
        summary.keys += 1;
        summary.replica_states += replicas.len() as u64;
        summary.elements_checked += replicas.values().map(|s| s.len() as u64).sum::<u64>();
        let mut states = replicas.values();
        let Some(first) = states.next() else { continue };
        if states.all(|state| state == first) {
            continue;
        }
        // Describe each replica against the union, the state they should all reach by merging.
        let union: BTreeSet<&String> = replicas.values().flatten().collect();
        let described: Vec<String> = replicas
            .iter()
            .map(|(node, state)| {
                let missing: Vec<&&String> = union.iter().filter(|e| !state.contains(**e)).collect();
                let named = &missing[..missing.len().min(NAMED_PER_VIOLATION)];
                if missing.is_empty() {
                    format!("{node}: all {} elements", state.len())
                } else {
                    format!("{node}: {} elements, lacks {} e.g. {named:?}", state.len(), missing.len())
                }
            })
            .collect();
        violations.push(Violation {
            kind: ViolationKind::Divergence,
            key: key.clone(),
            events: Vec::new(),
            message: format!(
                "{} replicas differ (union {} elements): {}",
                replicas.len(),
                union.len(),
                described.join("; ")
            ),
        });
    }
    finish(summary, violations)
}

/// [`quorum_reads_by_region`] with every node in one region: the claim for `quorum`, and for
/// `local_quorum` when the cluster has a single region.
pub fn quorum_reads(history: &[Event], level: &str) -> Result<Summary, Vec<Violation>> {
    let mut summary = quorum_reads_by_region(history, level, |_| String::new())?;
    summary.check = "quorum_reads";
    Ok(summary)
}

/// Checks visibility, monotonicity and no-future-reads for the ok reads at `level` (see the
/// [module docs](self)), relating operations by visibility and monotonicity only when
/// `region_of(node)` gives their nodes the same region.
pub fn quorum_reads_by_region(
    history: &[Event],
    level: &str,
    region_of: impl Fn(&str) -> String,
) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "quorum_reads_by_region", ops: op_counts(history), ..Summary::default() };
    let origins = earliest_adds(history, &valid);

    // (key, region) -> the ok adds and ok reads at `level` there.
    #[derive(Default)]
    struct Group {
        adds: Vec<usize>,
        reads: Vec<usize>,
    }
    let mut groups: BTreeMap<(&str, String), Group> = BTreeMap::new();
    let mut region_cache: HashMap<&str, String> = HashMap::new();
    for (index, event) in history.iter().enumerate() {
        if !valid[index] || !event.is_ok() || event.consistency != level {
            continue;
        }
        let is_add = event.op == OP_ADD;
        if !is_add && event.op != OP_READ {
            continue;
        }
        let region = region_cache.entry(&event.node).or_insert_with(|| region_of(&event.node)).clone();
        let group = groups.entry((&event.key, region)).or_default();
        if is_add {
            group.adds.push(index);
        } else {
            group.reads.push(index);
        }
    }

    let mut keys = BTreeSet::new();
    for ((key, _region), group) in &groups {
        if group.reads.is_empty() {
            continue;
        }
        keys.insert(*key);
        // Each read's elements as returned (the history's order, so messages are deterministic),
        // and as a set for membership tests.
        let returned: HashMap<usize, Vec<&str>> =
            group.reads.iter().map(|&i| (i, history[i].read_elements().unwrap_or_default())).collect();
        let sets: HashMap<usize, HashSet<&str>> =
            returned.iter().map(|(&i, elements)| (i, elements.iter().copied().collect())).collect();
        let mut by_start = group.reads.clone();
        by_start.sort_by_key(|&i| (history[i].start_us, i));
        summary.reads_checked += by_start.len() as u64;

        // Visibility: ok adds in end order, folded into `visible` as reads start after them.
        let mut adds: Vec<(usize, Vec<&str>)> =
            group.adds.iter().map(|&i| (i, history[i].added_element().into_iter().collect())).collect();
        adds.sort_by_key(|&(i, _)| (history[i].end_us, i));
        sweep(history, &by_start, &sets, &adds, &mut summary, |read, missing, total| {
            violations.push(missing_violation(
                history,
                ViolationKind::StaleRead,
                read,
                &missing,
                format!("misses {total} element(s) of ok {level} adds that ended before it started:"),
            ));
        });

        // Monotonicity: earlier reads in end order, folded into `seen` as later reads start.
        let mut reads: Vec<(usize, Vec<&str>)> = returned.iter().map(|(&i, elements)| (i, elements.clone())).collect();
        reads.sort_by_key(|&(i, _)| (history[i].end_us, i));
        sweep(history, &by_start, &sets, &reads, &mut summary, |read, missing, total| {
            violations.push(missing_violation(
                history,
                ViolationKind::NonMonotonicRead,
                read,
                &missing,
                format!("misses {total} element(s) returned by {level} reads that ended before it started:"),
            ));
        });

        for &read in &group.reads {
            summary.elements_checked += sets[&read].len() as u64;
            check_origins(history, read, &returned[&read], &origins, &mut violations);
        }
    }
    summary.keys = keys.len() as u64;
    finish(summary, violations)
}

/// Checks that no ok read, at any level, returned an element whose add started after the read
/// ended or that no add wrote.
pub fn no_future_reads(history: &[Event]) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "no_future_reads", ops: op_counts(history), ..Summary::default() };
    let origins = earliest_adds(history, &valid);
    let mut keys = BTreeSet::new();
    for (index, event) in history.iter().enumerate() {
        let Some(elements) = event.read_elements().filter(|_| valid[index]) else { continue };
        keys.insert(event.key.as_str());
        summary.reads_checked += 1;
        summary.elements_checked += elements.len() as u64;
        check_origins(history, index, &elements, &origins, &mut violations);
    }
    summary.keys = keys.len() as u64;
    finish(summary, violations)
}

/// Key -> element -> the add of it that started first, at any level and with any result: the
/// earliest moment the element could have existed anywhere. (Nested by key so that a read hashes
/// its key once, not once per element.)
type Origins<'h> = HashMap<&'h str, HashMap<&'h str, usize>>;

fn earliest_adds<'h>(history: &'h [Event], valid: &[bool]) -> Origins<'h> {
    let mut origins: Origins<'h> = HashMap::new();
    for (index, event) in history.iter().enumerate().filter(|&(i, _)| valid[i]) {
        let Some(element) = event.added_element() else { continue };
        origins
            .entry(&event.key)
            .or_default()
            .entry(element)
            .and_modify(|first| {
                if event.start_us < history[*first].start_us {
                    *first = index;
                }
            })
            .or_insert(index);
    }
    origins
}

/// Reports the elements of `read` that no add had started to write by the time the read ended.
fn check_origins(
    history: &[Event],
    read: usize,
    elements: &[&str],
    origins: &Origins<'_>,
    violations: &mut Vec<Violation>,
) {
    let event = &history[read];
    let no_adds = HashMap::new();
    let added = origins.get(event.key.as_str()).unwrap_or(&no_adds);
    let mut bad: Vec<(&str, Option<usize>)> = elements
        .iter()
        .filter_map(|&element| match added.get(element) {
            None => Some((element, None)),
            Some(&add) if history[add].start_us > event.end_us => Some((element, Some(add))),
            Some(_) => None,
        })
        .collect();
    if bad.is_empty() {
        return;
    }
    bad.sort_unstable();
    bad.dedup();
    let named = &bad[..bad.len().min(NAMED_PER_VIOLATION)];
    let lines: Vec<String> = named
        .iter()
        .map(|&(element, add)| match add {
            None => format!("{element:?}, which no add wrote"),
            Some(add) => format!("{element:?}, first added by {}", op_ref(history, add)),
        })
        .collect();
    let mut events = vec![read];
    events.extend(named.iter().filter_map(|&(_, add)| add));
    violations.push(Violation {
        kind: ViolationKind::FutureRead,
        key: event.key.clone(),
        events,
        message: format!(
            "{}: returned {} element(s) not yet added when it ended: {}",
            op_ref(history, read),
            bad.len(),
            lines.join("; ")
        ),
    });
}

/// The shared sweep: walks `reads` (sorted by start) and, before each, folds into a union the
/// elements of every source in `sources` (event index and its elements, sorted by the event's end)
/// that ended strictly before the read started. Calls `report(read, named, total_missing)` for each
/// read that lacks part of the union, naming up to [`NAMED_PER_VIOLATION`] missing elements (the
/// earliest folded first) with the first source that had them.
fn sweep<'h>(
    history: &[Event],
    reads: &[usize],
    sets: &HashMap<usize, HashSet<&'h str>>,
    sources: &[(usize, Vec<&'h str>)],
    summary: &mut Summary,
    mut report: impl FnMut(usize, Vec<(&'h str, usize)>, usize),
) {
    // Element -> the first source that had it, plus the elements in the order they were folded so
    // that the elements a message names do not depend on hash order.
    let mut union: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut folded = 0;
    for &read in reads {
        let start = history[read].start_us;
        while let Some((source, elements)) = sources.get(folded).filter(|(s, _)| history[*s].end_us < start) {
            for &element in elements {
                union.entry(element).or_insert_with(|| {
                    order.push(element);
                    *source
                });
            }
            folded += 1;
        }
        summary.pairs_checked += folded as u64;
        // |union ∩ read| == |union| iff union ⊆ read. Walking the read rather than the union keeps
        // this linear in the history's size; walking the union would be quadratic on a busy key.
        let set = &sets[&read];
        let covered = set.iter().filter(|e| union.contains_key(*e)).count();
        if covered == union.len() {
            continue;
        }
        let named =
            order.iter().filter(|e| !set.contains(*e)).take(NAMED_PER_VIOLATION).map(|&e| (e, union[e])).collect();
        report(read, named, union.len() - covered);
    }
}

fn missing_violation(
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
