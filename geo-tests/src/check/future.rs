//! [`anytime_no_future_reads`]: no read, at any level, returns an element nobody had started to
//! add; and the origins table it shares with the quorum checker.

use std::collections::{BTreeSet, HashMap};

use super::{finish, op_counts, op_ref, validate_all, Summary, Violation, ViolationKind, NAMED_PER_VIOLATION};
use crate::history::Event;

/// Checks that no ok read, at any level, returned an element whose add started after the read
/// ended or that no add wrote.
pub fn anytime_no_future_reads(history: &[Event]) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "anytime_no_future_reads", ops: op_counts(history), ..Summary::default() };
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
pub(super) type Origins<'h> = HashMap<&'h str, HashMap<&'h str, usize>>;

pub(super) fn earliest_adds<'h>(history: &'h [Event], valid: &[bool]) -> Origins<'h> {
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
pub(super) fn check_origins(
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
