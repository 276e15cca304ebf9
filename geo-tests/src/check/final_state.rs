//! The final-state checkers: [`finally_no_lost_writes`] and [`eventually_converged`] judge the
//! replicas' states once the cluster is healed and quiet, against the history.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{finish, op_counts, op_ref, validate_all, Summary, Violation, ViolationKind, NAMED_PER_VIOLATION};
use crate::history::Event;

/// Final state per key: key → node → the set that replica holds. Give each key only its own
/// replicas (a node that is not a replica of the key may legitimately hold nothing, or a stale
/// hinted copy). A replica that holds nothing for the key is an empty set, not a missing entry.
/// [`final_states_by_key`] builds this from per-node dumps.
pub type FinalStates = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Final state per node, as a harness dumps it: node → key → set.
pub type NodeStates = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Turns per-node dumps into [`FinalStates`]. The keys are those of `history` plus those any node
/// holds. For each key, every node in `replicas_of(key)` that appears in `by_node` contributes its
/// set for the key, or an empty set if it holds nothing for it (which [`finally_no_lost_writes`] then
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

/// Checks that no acknowledged add is missing from, and no unwritten element is present in, any
/// replica's final state. See the [module docs](self) for the exact claim; `final_states` must hold,
/// for each key, only the states of that key's replicas (see [`FinalStates`]).
pub fn finally_no_lost_writes(history: &[Event], final_states: &FinalStates) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "finally_no_lost_writes", ops: op_counts(history), ..Summary::default() };

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
pub fn eventually_converged(final_states: &FinalStates) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut summary = Summary { check: "eventually_converged", ..Summary::default() };
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
