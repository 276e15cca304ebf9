//! [`anytime_causal_order`]: a read at a causal level shows every acknowledged add in its causal
//! past, across keys and across the regions a session fails over between.
//!
//! ## Algorithm
//!
//! The causal past of an operation is represented by a *vector clock* over sessions: for each
//! process `q`, how many of `q`'s ok operations (in the order recorded) are in the past. That is
//! exact, not an approximation, because a past is closed under session order: if the `i`-th ok
//! operation of `q` is in it, so are all of `q`'s earlier ones. So an ok add by `q` at position `i`
//! is in the past of a read with clock `c` iff `i < c[q]`.
//!
//! Each ok operation `o` gets the clock of its past *including itself*, `after(o)`:
//!
//! * `after(o)` = `after(previous ok op of o's process)` ⊔ the reads-from sources if `o` is a
//!   read, with `o`'s own component set to its position + 1;
//! * a read that returned element `e` (of its key) takes from the add of `e`: `after(add)` if the
//!   add was ok, or `after(the add's previous ok op)` if it failed (its causes count, it does
//!   not). Clocks grow along a session, so of all the adds a read takes from in one process only
//!   the latest matters: a read costs `O(its elements + processes²)`, not `O(elements ×
//!   processes)`. An element added more than once (a re-issued add) is only known to come from one
//!   of its adds that had started by the read's end, so the read takes the component-wise minimum
//!   of their clocks.
//!
//! Clocks are computed in dependency order by an iterative depth-first walk. Reads-from edges can
//! only form a cycle in a history that is already wrong or degenerate (equal timestamps, reads
//! from the future); an edge closing a cycle is dropped, which only shrinks pasts, so it can hide a
//! violation but never invent one.
//!
//! A read `r` at a checked level with clock `c` must then contain every ok add of its key at a
//! position below `c[q]` in its process `q`. Counted rather than listed: the number required is a
//! binary search per process in that key's adds, and the number present is one walk of `r`'s
//! distinct elements (each names its add; it counts if that add is in the past). Equal counts mean
//! nothing is missing; only otherwise (a violation, or an element added twice) are the adds
//! listed. Total cost: `O(n·P + E + R·P·log n)` time for `n` events, `P` processes, `E` elements
//! read and `R` reads, and `O(n·P)` memory for the clocks (20,000 operations of 16 processes: 1.3
//! MB).
//!
//! A violation names the read, the missing adds, and how the first of them got into the read's
//! past: the chain of session and reads-from links, found backwards from the read by jumping, in
//! each session, to the earliest operation whose clock has the add (a binary search, clocks grow
//! along a session), which has it through a reads-from link (or is in the add's own session).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{
    finish, op_counts, op_ref, sessions, validate_all, Summary, Violation, ViolationKind, NAMED_PER_VIOLATION,
};
use crate::history::Event;

/// Links of a chain printed before it is cut short.
const MAX_LINKS: usize = 12;

/// Where a read takes a clock from: the source add (for messages) and the ok operation whose
/// `after` clock it joins; `None` for a failed add with no ok operation before it (nothing to take).
#[derive(Debug, Clone)]
struct Source {
    add: usize,
    ok_op: Option<usize>,
}

/// One reads-from dependency of a read: a single source, or the minimum over the several adds of
/// a re-issued element.
#[derive(Debug, Clone)]
enum Dep {
    One(Source),
    Min(Vec<Source>),
}

/// One key's ok adds: process number -> (position in its session, event), in session order.
type OkAdds = BTreeMap<u32, Vec<(u32, usize)>>;

/// The sessions, numbered, and each event's place in them.
struct Sessions<'h> {
    /// Process names by number.
    names: Vec<&'h str>,
    /// Per process, its ok events in the order recorded.
    ok_ops: Vec<Vec<usize>>,
    /// Per event: its process number.
    process: Vec<u32>,
    /// Per event: how many ok events its process recorded before it. For an ok event, its position.
    before: Vec<u32>,
}

impl Sessions<'_> {
    /// The last ok event recorded by `event`'s process before it.
    fn previous_ok(&self, event: usize) -> Option<usize> {
        let before = self.before[event] as usize;
        before.checked_sub(1).map(|i| self.ok_ops[self.process[event] as usize][i])
    }
}

/// The `after` clocks of the ok events, in one flat arena of `processes` columns.
struct Clocks {
    processes: usize,
    /// Ok event -> its row.
    row: HashMap<usize, usize>,
    cells: Vec<u32>,
}

impl Clocks {
    fn of(&self, ok_op: usize) -> &[u32] {
        let row = self.row[&ok_op];
        &self.cells[row * self.processes..(row + 1) * self.processes]
    }

    /// Whether the add at `position` of `process` is in `ok_op`'s past (itself included).
    fn has(&self, ok_op: usize, process: u32, position: u32) -> bool {
        self.of(ok_op)[process as usize] > position
    }
}

/// Checks that every ok set read at one of `levels` (normally `["causal"]`) contains every ok add
/// to its key in its causal past. See the [module docs](self) for the algorithm and the
/// [checkers' docs](super) for the claim.
pub fn anytime_causal_order(history: &[Event], levels: &[&str]) -> Result<Summary, Vec<Violation>> {
    let mut violations = Vec::new();
    let valid = validate_all(history, &mut violations);
    let mut summary = Summary { check: "anytime_causal_order", ops: op_counts(history), ..Summary::default() };

    // Number the sessions and place every event in its session.
    let by_process = sessions(history, &valid, &mut violations);
    let mut s = Sessions {
        names: by_process.keys().copied().collect(),
        ok_ops: Vec::with_capacity(by_process.len()),
        process: vec![0; history.len()],
        before: vec![0; history.len()],
    };
    for (number, events) in by_process.values().enumerate() {
        let mut ok = Vec::new();
        for &index in events {
            s.process[index] = number as u32;
            s.before[index] = ok.len() as u32;
            if history[index].is_ok() {
                ok.push(index);
            }
        }
        s.ok_ops.push(ok);
    }

    // Per key: element -> every add of it (any result), and per process its ok adds in order as
    // (position, event).
    let mut adds_of: HashMap<&str, HashMap<&str, Vec<usize>>> = HashMap::new();
    let mut ok_adds: HashMap<&str, OkAdds> = HashMap::new();
    for (index, event) in history.iter().enumerate().filter(|&(i, _)| valid[i]) {
        let Some(element) = event.added_element() else { continue };
        adds_of.entry(&event.key).or_default().entry(element).or_default().push(index);
        if event.is_ok() {
            ok_adds.entry(&event.key).or_default().entry(s.process[index]).or_default().push((s.before[index], index));
        }
    }

    // Each ok read's reads-from dependencies.
    let no_adds = HashMap::new();
    let source = |add: usize| Source { add, ok_op: if history[add].is_ok() { Some(add) } else { s.previous_ok(add) } };
    let mut deps: HashMap<usize, Vec<Dep>> = HashMap::new();
    for (index, event) in history.iter().enumerate().filter(|&(i, _)| valid[i]) {
        let Some(elements) = event.read_elements() else { continue };
        let adds = adds_of.get(event.key.as_str()).unwrap_or(&no_adds);
        // Per process, the latest single add read from (clocks grow along a session).
        let mut latest: BTreeMap<u32, usize> = BTreeMap::new();
        let mut read_deps = Vec::new();
        for element in elements {
            let Some(candidates) = adds.get(element) else { continue };
            let possible: Vec<usize> =
                candidates.iter().copied().filter(|&a| history[a].start_us <= event.end_us).collect();
            match possible[..] {
                [] => {} // a read from the future: anytime_no_future_reads reports it
                [add] => {
                    let slot = latest.entry(s.process[add]).or_insert(add);
                    if s.before[add] > s.before[*slot] || (s.before[add] == s.before[*slot] && add > *slot) {
                        *slot = add;
                    }
                }
                _ => read_deps.push(Dep::Min(possible.into_iter().map(source).collect())),
            }
        }
        read_deps.extend(latest.into_values().map(|add| Dep::One(source(add))));
        if !read_deps.is_empty() {
            deps.insert(index, read_deps);
        }
    }

    let clocks = compute_clocks(&s, &deps);

    // Check the reads at the levels asked for.
    let no_ok_adds = BTreeMap::new();
    let mut keys = BTreeSet::new();
    for (index, event) in history.iter().enumerate().filter(|&(i, _)| valid[i]) {
        if !levels.contains(&event.consistency.as_str()) {
            continue;
        }
        let Some(elements) = event.read_elements() else { continue };
        keys.insert(event.key.as_str());
        summary.reads_checked += 1;
        summary.elements_checked += elements.len() as u64;
        let clock = clocks.of(index);
        let key_adds = ok_adds.get(event.key.as_str()).unwrap_or(&no_ok_adds);
        let required: usize =
            key_adds.iter().map(|(&q, adds)| adds.partition_point(|&(position, _)| position < clock[q as usize])).sum();
        summary.pairs_checked += required as u64;
        let set: HashSet<&str> = elements.iter().copied().collect();
        let adds = adds_of.get(event.key.as_str()).unwrap_or(&no_adds);
        let in_past = |add: usize| history[add].is_ok() && clock[s.process[add] as usize] > s.before[add];
        let covered = set
            .iter()
            .filter(|e| adds.get(*e).is_some_and(|candidates| candidates.iter().any(|&a| in_past(a))))
            .count();
        if covered == required {
            continue;
        }
        // Something is missing, or an element was added twice: list the adds in the past.
        let mut missing: Vec<usize> = Vec::new();
        let mut named_elements = HashSet::new();
        for (&q, key_adds) in key_adds {
            let end = key_adds.partition_point(|&(position, _)| position < clock[q as usize]);
            for &(_, add) in &key_adds[..end] {
                let element = history[add].added_element().unwrap_or_default();
                if !set.contains(element) && named_elements.insert(element) {
                    missing.push(add);
                }
            }
        }
        if missing.is_empty() {
            continue;
        }
        missing.sort_by_key(|&a| (history[a].end_us, a));
        violations.push(violation(history, &s, &clocks, &deps, index, &missing));
    }
    summary.keys = keys.len() as u64;
    finish(summary, violations)
}

/// The `after` clock of every ok event, dependencies first (an iterative depth-first walk; an edge
/// back to an event still being walked closes a cycle and is dropped).
fn compute_clocks(s: &Sessions<'_>, deps: &HashMap<usize, Vec<Dep>>) -> Clocks {
    let processes = s.names.len();
    let ok_count: usize = s.ok_ops.iter().map(Vec::len).sum();
    let mut clocks = Clocks { processes, row: HashMap::with_capacity(ok_count), cells: Vec::new() };
    // The ok events an ok event's clock joins: its session predecessor and its sources.
    let inputs = |event: usize| -> Vec<usize> {
        let mut inputs: Vec<usize> = s.previous_ok(event).into_iter().collect();
        for dep in deps.get(&event).into_iter().flatten() {
            match dep {
                Dep::One(source) => inputs.extend(source.ok_op),
                Dep::Min(sources) => inputs.extend(sources.iter().filter_map(|s| s.ok_op)),
            }
        }
        inputs
    };
    let mut on_stack: HashSet<usize> = HashSet::new();
    for root in s.ok_ops.iter().flatten().copied() {
        if clocks.row.contains_key(&root) {
            continue;
        }
        // (event, its inputs, how many of them have been visited)
        let mut stack: Vec<(usize, Vec<usize>, usize)> = vec![(root, inputs(root), 0)];
        on_stack.insert(root);
        while let Some((event, event_inputs, next)) = stack.last_mut() {
            if let Some(&input) = event_inputs.get(*next) {
                *next += 1;
                if !clocks.row.contains_key(&input) && on_stack.insert(input) {
                    let input_inputs = inputs(input);
                    stack.push((input, input_inputs, 0));
                }
                continue;
            }
            let event = *event;
            stack.pop();
            on_stack.remove(&event);
            let mut clock = vec![0u32; processes];
            let mut join = |other: &[u32]| clock.iter_mut().zip(other).for_each(|(c, &o)| *c = (*c).max(o));
            let known = |op: &Option<usize>| op.filter(|op| clocks.row.contains_key(op));
            if let Some(previous) = known(&s.previous_ok(event)) {
                join(clocks.of(previous));
            }
            for dep in deps.get(&event).into_iter().flatten() {
                match dep {
                    Dep::One(source) => {
                        if let Some(op) = known(&source.ok_op) {
                            join(clocks.of(op));
                        }
                    }
                    Dep::Min(sources) => {
                        // Nothing is certain unless every candidate has a clock.
                        let Some(ops) = sources.iter().map(|s| known(&s.ok_op)).collect::<Option<Vec<usize>>>() else {
                            continue;
                        };
                        let mut min = clocks.of(ops[0]).to_vec();
                        for &op in &ops[1..] {
                            min.iter_mut().zip(clocks.of(op)).for_each(|(m, &o)| *m = (*m).min(o));
                        }
                        join(&min);
                    }
                }
            }
            let process = s.process[event] as usize;
            clock[process] = clock[process].max(s.before[event] + 1);
            clocks.row.insert(event, clocks.cells.len() / processes.max(1));
            clocks.cells.extend(clock);
        }
    }
    clocks
}

/// The violation for `read` missing `missing` (ok adds in its past, earliest first), with the
/// chain that put the first one in its past.
fn violation(
    history: &[Event],
    s: &Sessions<'_>,
    clocks: &Clocks,
    deps: &HashMap<usize, Vec<Dep>>,
    read: usize,
    missing: &[usize],
) -> Violation {
    let named = &missing[..missing.len().min(NAMED_PER_VIOLATION)];
    let list: Vec<String> = named.iter().map(|&a| op_ref(history, a)).collect();
    let (chain, links) = chain(history, s, clocks, deps, read, named[0]);
    let mut events = vec![read];
    for event in named.iter().chain(&links) {
        if !events.contains(event) {
            events.push(*event);
        }
    }
    Violation {
        kind: ViolationKind::CausalViolation,
        key: history[read].key.clone(),
        events,
        message: format!(
            "{}: misses {} ok add(s) in its causal past: {}; #{} is in its past through: {}",
            op_ref(history, read),
            missing.len(),
            list.join("; "),
            named[0] + 1,
            chain.join("; ")
        ),
    }
}

/// How `add` got into `read`'s past: the links from the read back to the add, as messages, and the
/// events they name (other than the read).
fn chain(
    history: &[Event],
    s: &Sessions<'_>,
    clocks: &Clocks,
    deps: &HashMap<usize, Vec<Dep>>,
    read: usize,
    add: usize,
) -> (Vec<String>, Vec<usize>) {
    let (target, position) = (s.process[add], s.before[add]);
    let mut links = Vec::new();
    let mut events = Vec::new();
    let mut current = read;
    while links.len() < MAX_LINKS {
        let process = s.process[current];
        let name = s.names[process as usize];
        if process == target {
            if current != add {
                links.push(format!("#{} follows #{} in {name}'s session", current + 1, add + 1));
            }
            return (links, events);
        }
        // The earliest op of this session, up to `current`, whose past has the add: it got it
        // through a reads-from link.
        let ops = &s.ok_ops[process as usize][..=s.before[current] as usize];
        let first = ops.partition_point(|&op| !clocks.has(op, target, position));
        let via = ops.get(first).copied().unwrap_or(current);
        if via != current {
            links.push(format!("#{} follows {} in {name}'s session", current + 1, op_ref(history, via)));
            events.push(via);
        }
        let found = deps.get(&via).into_iter().flatten().find_map(|dep| {
            let sources: &[Source] = match dep {
                Dep::One(source) => std::slice::from_ref(source),
                Dep::Min(sources) => sources,
            };
            let mut has = sources.iter().map(|source| source.ok_op.filter(|&op| clocks.has(op, target, position)));
            // A minimum has the add only if every candidate has it; name the first.
            let first = has.next()??;
            has.all(|op| op.is_some()).then_some((sources[0].add, first))
        });
        let Some((source, next)) = found else {
            links.push(format!("#{} ... (the rest of the chain is in a cycle of the history)", via + 1));
            return (links, events);
        };
        let element = history[source].added_element().unwrap_or_default();
        let how = if history[source].is_ok() { "" } else { " (indeterminate, but seen)" };
        links.push(format!("#{} returned {element:?} added{how} by {}", via + 1, op_ref(history, source)));
        events.push(source);
        if source == add {
            return (links, events);
        }
        current = next;
        if next != source {
            // A failed add brings its session's past: continue from its last ok predecessor.
            links.push(format!(
                "#{} follows {} in {}'s session",
                source + 1,
                op_ref(history, next),
                s.names[s.process[next] as usize]
            ));
            events.push(next);
        }
    }
    links.push("...".into());
    (links, events)
}
