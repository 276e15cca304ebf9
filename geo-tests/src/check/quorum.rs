//! The quorum checkers: [`anytime_quorum_visibility`] (and its parts [`quorum_reads`],
//! [`quorum_reads_by_region`]): reads at a quorum level see every earlier acknowledged write at
//! that level in their scope and never go backwards.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::future::{check_origins, earliest_adds, Origins};
use super::{
    finish, missing_violation, op_counts, validate_all, Summary, Violation, ViolationKind, NAMED_PER_VIOLATION,
};
use crate::history::{Event, OP_ADD, OP_READ};

/// The level whose claims hold across all regions.
const QUORUM: &str = "quorum";
/// The level whose claims hold within one region.
const LOCAL_QUORUM: &str = "local_quorum";

/// Checks visibility, monotonicity and no-future-reads for the ok reads at `quorum` across all
/// regions, and for the ok reads at `local_quorum` within each region (the event's `region`; events
/// without one count as one region). See the [module docs](super) for the exact claims.
pub fn anytime_quorum_visibility(history: &[Event]) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "anytime_quorum_visibility", ops: op_counts(history), ..Summary::default() };
    let origins = earliest_adds(history, &valid);
    let mut keys = BTreeSet::new();
    let mut check = |level: &str, region_of: &dyn Fn(&Event) -> String| {
        visibility(history, &valid, &origins, level, region_of, &mut summary, &mut violations, &mut keys);
    };
    check(QUORUM, &|_| String::new());
    check(LOCAL_QUORUM, &|event| event.region_or_default().to_string());
    summary.keys = keys.len() as u64;
    finish(summary, violations)
}

/// [`quorum_reads_by_region`] with every event in one region: the claim for `quorum`, and for
/// `local_quorum` when the cluster has a single region.
pub fn quorum_reads(history: &[Event], level: &str) -> Result<Summary, Vec<Violation>> {
    let mut summary = quorum_reads_by_region(history, level, |_| String::new())?;
    summary.check = "quorum_reads";
    Ok(summary)
}

/// Checks visibility, monotonicity and no-future-reads for the ok reads at `level` (see the
/// [module docs](super)), relating operations by visibility and monotonicity only when
/// `region_of(event)` gives them the same region. [`anytime_quorum_visibility`] is this at
/// `quorum` with one region plus at `local_quorum` by each event's `region`.
pub fn quorum_reads_by_region(
    history: &[Event],
    level: &str,
    region_of: impl Fn(&Event) -> String,
) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "quorum_reads_by_region", ops: op_counts(history), ..Summary::default() };
    let origins = earliest_adds(history, &valid);
    let mut keys = BTreeSet::new();
    visibility(history, &valid, &origins, level, &region_of, &mut summary, &mut violations, &mut keys);
    summary.keys = keys.len() as u64;
    finish(summary, violations)
}

/// The claims at one `level`: groups the ok adds and reads at `level` by (key, region) and checks
/// each group, adding the keys with reads to `keys`.
#[allow(clippy::too_many_arguments)]
fn visibility<'h>(
    history: &'h [Event],
    valid: &[bool],
    origins: &Origins<'h>,
    level: &str,
    region_of: &dyn Fn(&Event) -> String,
    summary: &mut Summary,
    violations: &mut Vec<Violation>,
    keys: &mut BTreeSet<&'h str>,
) {
    // (key, region) -> the ok adds and ok reads at `level` there.
    #[derive(Default)]
    struct Group {
        adds: Vec<usize>,
        reads: Vec<usize>,
    }
    let mut groups: BTreeMap<(&str, String), Group> = BTreeMap::new();
    for (index, event) in history.iter().enumerate() {
        if !valid[index] || !event.is_ok() || event.consistency != level {
            continue;
        }
        let is_add = event.op == OP_ADD;
        if !is_add && event.op != OP_READ {
            continue;
        }
        let group = groups.entry((&event.key, region_of(event))).or_default();
        if is_add {
            group.adds.push(index);
        } else {
            group.reads.push(index);
        }
    }

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
        sweep(history, &by_start, &sets, &adds, summary, |read, missing, total| {
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
        sweep(history, &by_start, &sets, &reads, summary, |read, missing, total| {
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
            check_origins(history, read, &returned[&read], origins, violations);
        }
    }
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
