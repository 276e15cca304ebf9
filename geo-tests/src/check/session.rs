//! [`anytime_session_guarantees`]: per session, read-your-writes and monotonic reads, wherever the
//! session's operations ran.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{finish, missing_violation, op_counts, sessions, validate_all, Summary, Violation, ViolationKind};
use crate::history::Event;

/// What one session must see in one key: element -> the event that first required it (its own ok
/// add, or an earlier read that returned it), plus the elements in the order required so that the
/// elements a message names do not depend on hash order.
#[derive(Default)]
struct Required<'h> {
    by: HashMap<&'h str, usize>,
    order: Vec<&'h str>,
}

impl<'h> Required<'h> {
    fn insert(&mut self, element: &'h str, event: usize) {
        self.by.entry(element).or_insert_with(|| {
            self.order.push(element);
            event
        });
    }

    /// The required elements `read` lacks (the earliest required first, up to
    /// [`super::NAMED_PER_VIOLATION`]) and how many it lacks in all, or `None` if it has them all.
    /// Linear in the read, not in what is required.
    fn missing_from(&self, read: &HashSet<&str>) -> Option<(Vec<(&'h str, usize)>, usize)> {
        let covered = read.iter().filter(|e| self.by.contains_key(*e)).count();
        if covered == self.by.len() {
            return None;
        }
        let named = self
            .order
            .iter()
            .filter(|e| !read.contains(*e))
            .take(super::NAMED_PER_VIOLATION)
            .map(|&e| (e, self.by[e]))
            .collect();
        Some((named, self.by.len() - covered))
    }
}

/// Checks read-your-writes and monotonic reads for every process's ok set reads at one of `levels`
/// (see the [module docs](super) for the exact claims). A session is a `process`: its operations
/// count wherever they ran (any node, any region) and at any level.
pub fn anytime_session_guarantees(history: &[Event], levels: &[&str]) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "anytime_session_guarantees", ops: op_counts(history), ..Summary::default() };
    let mut keys = BTreeSet::new();
    for session in sessions(history, &valid, &mut violations).into_values() {
        // key -> (own ok adds, elements of earlier ok reads).
        let mut required: HashMap<&str, (Required<'_>, Required<'_>)> = HashMap::new();
        for index in session {
            let event = &history[index];
            if let Some(element) = event.added_element().filter(|_| event.is_ok()) {
                required.entry(&event.key).or_default().0.insert(element, index);
                continue;
            }
            let Some(elements) = event.read_elements() else { continue };
            let (written, seen) = required.entry(&event.key).or_default();
            if levels.contains(&event.consistency.as_str()) {
                keys.insert(event.key.as_str());
                summary.reads_checked += 1;
                summary.pairs_checked += (written.by.len() + seen.by.len()) as u64;
                summary.elements_checked += elements.len() as u64;
                let set: HashSet<&str> = elements.iter().copied().collect();
                if let Some((named, total)) = written.missing_from(&set) {
                    violations.push(missing_violation(
                        history,
                        ViolationKind::ReadYourWrites,
                        index,
                        &named,
                        format!("misses {total} element(s) its own session added (ok) before it:"),
                    ));
                }
                if let Some((named, total)) = seen.missing_from(&set) {
                    violations.push(missing_violation(
                        history,
                        ViolationKind::MonotonicReads,
                        index,
                        &named,
                        format!("misses {total} element(s) its own session's earlier reads returned:"),
                    ));
                }
            }
            for element in elements {
                seen.insert(element, index);
            }
        }
    }
    summary.keys = keys.len() as u64;
    finish(summary, violations)
}
