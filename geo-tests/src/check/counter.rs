//! [`anytime_counter_within_bounds`]: every counter read lies between what must be visible to it
//! and everything that could have been applied by then.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    finish, op_counts, op_ref, sessions, validate_all, Summary, Violation, ViolationKind, NAMED_PER_VIOLATION,
};
use crate::history::Event;

/// A bound on one read: the sum of the incrs it counts, how many, and the last few of them (in
/// the order counted) to name in a message.
#[derive(Debug, Clone, Default)]
struct Bound {
    sum: u128,
    count: usize,
    last: Vec<usize>,
}

impl Bound {
    fn add(&mut self, incr: usize, amount: u64) {
        self.sum += u128::from(amount);
        self.count += 1;
        if self.last.len() == NAMED_PER_VIOLATION {
            self.last.remove(0);
        }
        self.last.push(incr);
    }
}

/// Folds `incrs` (event indices) into a running bound as each of `reads` (event indices) comes up,
/// and returns each read's bound. `incr_time` and `read_time` give the instants compared: an incr
/// counts for a read when `incr_time(incr) < read_time(read)`, or `<=` when `inclusive`.
fn sweep(
    history: &[Event],
    mut incrs: Vec<usize>,
    mut reads: Vec<usize>,
    incr_time: impl Fn(&Event) -> u64,
    read_time: impl Fn(&Event) -> u64,
    inclusive: bool,
    bounds: &mut HashMap<usize, Bound>,
) {
    incrs.sort_by_key(|&i| (incr_time(&history[i]), i));
    reads.sort_by_key(|&i| (read_time(&history[i]), i));
    let mut bound = Bound::default();
    let mut folded = 0;
    for read in reads {
        let until = read_time(&history[read]);
        while let Some(&incr) = incrs.get(folded) {
            let at = incr_time(&history[incr]);
            if at > until || (at == until && !inclusive) {
                break;
            }
            bound.add(incr, history[incr].incr_amount().unwrap_or(0));
            folded += 1;
        }
        bounds.insert(read, bound.clone());
    }
}

/// Checks that every ok counter read is within its bounds (see the [module docs](super) for the
/// exact claim): at most the sum of every incr of the key started by the time it ended, at least
/// the sum of the ok incrs its level must show it.
pub fn anytime_counter_within_bounds(history: &[Event]) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "anytime_counter_within_bounds", ops: op_counts(history), ..Summary::default() };

    // key -> every incr and every ok read; (key, region) -> ok local_quorum incrs and reads; key ->
    // ok quorum incrs and reads.
    type Groups<'h, K> = BTreeMap<K, (Vec<usize>, Vec<usize>)>;
    let mut all: Groups<'_, &str> = BTreeMap::new();
    let mut local: Groups<'_, (&str, &str)> = BTreeMap::new();
    let mut global: Groups<'_, &str> = BTreeMap::new();
    for (index, event) in history.iter().enumerate().filter(|&(i, _)| valid[i]) {
        let is_incr = event.incr_amount().is_some();
        if !is_incr && event.counter_value().is_none() {
            continue;
        }
        let pick = |group: &mut (Vec<usize>, Vec<usize>)| {
            if is_incr {
                group.0.push(index)
            } else {
                group.1.push(index)
            }
        };
        pick(all.entry(&event.key).or_default());
        if event.is_ok() {
            match event.consistency.as_str() {
                "local_quorum" => pick(local.entry((&event.key, event.region_or_default())).or_default()),
                "quorum" => pick(global.entry(&event.key).or_default()),
                _ => {}
            }
        }
    }

    let mut upper = HashMap::new();
    for (incrs, reads) in all.values() {
        sweep(history, incrs.clone(), reads.clone(), |e| e.start_us, |e| e.end_us, true, &mut upper);
    }
    let mut lower = HashMap::new();
    for (incrs, reads) in local.into_values().chain(global.into_values()) {
        sweep(history, incrs, reads, |e| e.end_us, |e| e.start_us, false, &mut lower);
    }
    // Causal: the session's own ok incrs of the key before the read, in the order recorded.
    for session in sessions(history, &valid, &mut violations).into_values() {
        let mut own: HashMap<&str, Bound> = HashMap::new();
        for index in session {
            let event = &history[index];
            if let Some(amount) = event.incr_amount().filter(|_| event.is_ok()) {
                own.entry(&event.key).or_default().add(index, amount);
            } else if event.counter_value().is_some() && event.consistency == "causal" {
                lower.insert(index, own.get(event.key.as_str()).cloned().unwrap_or_default());
            }
        }
    }

    let mut keys = BTreeSet::new();
    for (key, (_, reads)) in &all {
        if !reads.is_empty() {
            keys.insert(*key);
        }
        for &read in reads {
            let event = &history[read];
            let value = event.counter_value().unwrap_or_default();
            summary.reads_checked += 1;
            let (low, high) = (lower.get(&read).cloned().unwrap_or_default(), &upper[&read]);
            summary.pairs_checked += (low.count + high.count) as u64;
            let (bound, what) = if i128::from(value) > high.sum as i128 {
                (
                    high,
                    format!(
                        "above {}, the sum of the {} incr(s) of any result started by its end",
                        high.sum, high.count
                    ),
                )
            } else if (i128::from(value)) < low.sum as i128 {
                let scope = match event.consistency.as_str() {
                    "quorum" => "ok quorum incr(s) that ended before it started".to_string(),
                    "local_quorum" => format!(
                        "ok local_quorum incr(s) in region {:?} that ended before it started",
                        event.region_or_default()
                    ),
                    _ => "ok incr(s) of its own session before it".to_string(),
                };
                (&low, format!("below {}, the sum of the {} {scope}", low.sum, low.count))
            } else {
                continue;
            };
            let mut named: Vec<String> = bound.last.iter().rev().map(|&i| op_ref(history, i)).collect();
            if named.is_empty() {
                named.push("none".into());
            }
            let mut events = vec![read];
            events.extend(bound.last.iter().rev());
            violations.push(Violation {
                kind: ViolationKind::CounterOutOfRange,
                key: key.to_string(),
                events,
                message: format!(
                    "{}: read {value}, {what}; the last counted: {}",
                    op_ref(history, read),
                    named.join("; ")
                ),
            });
        }
    }
    summary.keys = keys.len() as u64;
    finish(summary, violations)
}
