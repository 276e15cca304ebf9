//! Every checker on a known-good history and on hand-written histories that break exactly one
//! claim, plus the sweep against the pairwise definition and the `check-history` CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Instant;

use meridian_geo_tests::check::{
    anytime_causal_order, anytime_counter_within_bounds, anytime_no_future_reads, anytime_quorum_visibility,
    anytime_session_guarantees, eventually_converged, final_states_by_key, finally_no_lost_writes, quorum_reads,
    quorum_reads_by_region, FinalStates, NodeStates,
};
use meridian_geo_tests::history::{write_history, OP_ADD, OP_INCR, OP_READ, OP_READ_COUNTER, RESULT_OK};
use meridian_geo_tests::{Event, Violation, ViolationKind};
use serde_json::json;

const LQ: &str = "local_quorum";
const CAUSAL: &str = "causal";
const Q: &str = "quorum";

fn add(process: &str, key: &str, element: &str, level: &str, node: &str, span: (u64, u64), result: &str) -> Event {
    Event {
        process: process.into(),
        op: OP_ADD.into(),
        key: key.into(),
        value: json!(element),
        consistency: level.into(),
        node: node.into(),
        region: None,
        start_us: span.0,
        end_us: span.1,
        result: result.into(),
    }
}

fn read(process: &str, key: &str, elements: &[&str], level: &str, node: &str, span: (u64, u64)) -> Event {
    Event {
        process: process.into(),
        op: OP_READ.into(),
        key: key.into(),
        value: json!(elements),
        consistency: level.into(),
        node: node.into(),
        region: None,
        start_us: span.0,
        end_us: span.1,
        result: RESULT_OK.into(),
    }
}

fn failed_read(process: &str, key: &str, level: &str, node: &str, span: (u64, u64), result: &str) -> Event {
    Event { value: serde_json::Value::Null, result: result.into(), ..read(process, key, &[], level, node, span) }
}

fn set(elements: &[&str]) -> BTreeSet<String> {
    elements.iter().map(|e| e.to_string()).collect()
}

/// A key's replicas as (node, elements).
type Replicas<'a> = &'a [(&'a str, &'a [&'a str])];

/// key -> [(node, elements)].
fn states(keys: &[(&str, Replicas<'_>)]) -> FinalStates {
    keys.iter()
        .map(|(key, replicas)| {
            (key.to_string(), replicas.iter().map(|(node, elements)| (node.to_string(), set(elements))).collect())
        })
        .collect()
}

fn kinds(violations: &[Violation]) -> Vec<ViolationKind> {
    violations.iter().map(|v| v.kind).collect()
}

/// Two keys, three nodes, two workers, an indeterminate add that did land and one that did not,
/// a failed read, and reads that are concurrent with adds and with each other.
fn good_history() -> Vec<Event> {
    vec![
        add("w1", "a", "w1-1", LQ, "n1", (0, 10), RESULT_OK),
        add("w2", "a", "w2-1", LQ, "n2", (5, 30), RESULT_OK),
        // Concurrent with the add of w2-1 (ends after it starts), so may or may not see it.
        read("w1", "a", &["w1-1"], LQ, "n1", (12, 20)),
        add("w1", "a", "w1-2", LQ, "n1", (21, 40), "timeout"),
        read("w2", "a", &["w1-1", "w2-1", "w1-2"], LQ, "n3", (35, 50)),
        // Ends at 50 like the read above and starts at 50: touching intervals are concurrent.
        read("w1", "a", &["w1-1", "w2-1", "w1-2"], LQ, "n2", (50, 60)),
        failed_read("w3", "a", LQ, "n3", (55, 90), "quorum_unavailable"),
        add("w2", "a", "w2-2", LQ, "n3", (61, 70), "quorum_unavailable"),
        read("w1", "a", &["w1-1", "w2-1", "w1-2"], LQ, "n1", (71, 80)),
        add("w1", "b", "w1-3", "eventual", "n1", (81, 85), RESULT_OK),
        read("w2", "b", &[], "eventual", "n3", (86, 87)),
        read("w2", "b", &["w1-3"], LQ, "n2", (88, 95)),
    ]
}

fn good_final_states() -> FinalStates {
    let a: &[&str] = &["w1-1", "w2-1", "w1-2"];
    let b: &[&str] = &["w1-3"];
    states(&[("a", &[("n1", a), ("n2", a), ("n3", a)]), ("b", &[("n1", b), ("n2", b), ("n3", b)])])
}

#[test]
fn good_history_passes_every_checker() {
    let history = good_history();
    let finals = good_final_states();

    let lost = finally_no_lost_writes(&history, &finals).unwrap();
    assert_eq!(lost.keys, 2);
    assert_eq!(lost.replica_states, 6);
    assert_eq!(lost.ops["add"]["ok"], 3);
    assert_eq!(lost.ops["add"]["timeout"], 1);
    assert_eq!(lost.ops["read"]["quorum_unavailable"], 1);

    let converged = eventually_converged(&finals).unwrap();
    assert_eq!((converged.keys, converged.replica_states, converged.elements_checked), (2, 6, 12));

    let quorum = quorum_reads(&history, LQ).unwrap();
    assert_eq!(quorum.check, "quorum_reads");
    assert_eq!(quorum.keys, 2);
    assert_eq!(quorum.reads_checked, 5);
    // Key a: add-read pairs 1 + 2 + 2 + 2, read-read pairs 0 + 1 + 1 + 3; key b: none at this level
    // (the add of w1-3 was eventual).
    assert_eq!(quorum.pairs_checked, 12);

    let future = anytime_no_future_reads(&history).unwrap();
    assert_eq!(future.reads_checked, 6);
    assert_eq!(future.check, "anytime_no_future_reads");

    // No region recorded: local_quorum is judged as one region, exactly like quorum_reads.
    let visibility = anytime_quorum_visibility(&history).unwrap();
    assert_eq!(visibility.check, "anytime_quorum_visibility");
    assert_eq!((visibility.keys, visibility.reads_checked, visibility.pairs_checked), (2, 5, 12));
    // Nothing in it is causal, and at local_quorum the sessions and causality hold too.
    assert_eq!(anytime_causal_order(&history, &[CAUSAL]).unwrap().reads_checked, 0);
    assert_eq!(anytime_causal_order(&history, &[LQ]).unwrap().reads_checked, 5);
    assert_eq!(anytime_session_guarantees(&history, &[LQ, "eventual"]).unwrap().reads_checked, 6);

    let printed = quorum.to_string();
    assert!(printed.contains("5 reads checked") && printed.contains("add ok=3 quorum_unavailable=1 timeout=1"));
}

#[test]
fn lost_write_is_reported() {
    let history = good_history();
    let mut finals = good_final_states();
    finals.get_mut("a").unwrap().get_mut("n2").unwrap().remove("w2-1");
    let violations = finally_no_lost_writes(&history, &finals).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::LostWrite]);
    let v = &violations[0];
    assert_eq!(v.key, "a");
    assert_eq!(v.events, [1]);
    assert!(v.message.contains("replica n2") && v.message.contains("#2 w2 add \"w2-1\" via n2"), "{v}");
    assert!(v.message.contains("[5..30]us"), "{v}");
}

#[test]
fn indeterminate_adds_may_be_missing_but_not_invented() {
    let history = good_history();
    let mut finals = good_final_states();
    // w1-2 (timeout) missing everywhere, w2-2 (quorum_unavailable) present everywhere: both fine.
    for replica in finals.get_mut("a").unwrap().values_mut() {
        replica.remove("w1-2");
        replica.insert("w2-2".into());
    }
    finally_no_lost_writes(&history, &finals).unwrap();
}

#[test]
fn invented_value_in_final_state_is_reported() {
    let history = good_history();
    let mut finals = good_final_states();
    finals.get_mut("b").unwrap().get_mut("n3").unwrap().insert("w9-9".into());
    // An element added to another key is invented for this one.
    finals.get_mut("b").unwrap().get_mut("n1").unwrap().insert("w1-1".into());
    let violations = finally_no_lost_writes(&history, &finals).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::InventedValue, ViolationKind::InventedValue]);
    assert!(violations[0].message.contains("replica n1") && violations[0].message.contains("w1-1"));
    assert!(violations[1].message.contains("replica n3") && violations[1].message.contains("w9-9"));
}

#[test]
fn missing_state_for_acknowledged_key_is_reported() {
    let history = good_history();
    let mut finals = good_final_states();
    finals.remove("b");
    let violations = finally_no_lost_writes(&history, &finals).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::MissingState]);
    assert_eq!(violations[0].key, "b");
}

#[test]
fn final_states_by_key_keeps_only_dumped_replicas() {
    let history = good_history();
    let mut by_node = NodeStates::new();
    by_node.insert("n1".into(), BTreeMap::from([("a".into(), set(&["w1-1"])), ("b".into(), set(&["w1-3"]))]));
    // n2 holds nothing for b; n3 was not dumped; n4 is not a replica of a.
    by_node.insert("n2".into(), BTreeMap::from([("a".into(), set(&["w1-1"]))]));
    by_node.insert("n4".into(), BTreeMap::from([("a".into(), set(&["junk"]))]));
    let finals = final_states_by_key(&history, &by_node, |key| match key {
        "a" => vec!["n1".into(), "n2".into(), "n3".into()],
        _ => vec!["n1".into(), "n2".into()],
    });
    assert_eq!(finals["a"], BTreeMap::from([("n1".into(), set(&["w1-1"])), ("n2".into(), set(&["w1-1"]))]));
    assert_eq!(finals["b"], BTreeMap::from([("n1".into(), set(&["w1-3"])), ("n2".into(), set(&[]))]));
    let violations = finally_no_lost_writes(&history, &finals).unwrap_err();
    // a lacks w2-1 on n1 and n2, b lacks w1-3 on n2; n4's junk is not looked at.
    assert_eq!(kinds(&violations), [ViolationKind::LostWrite; 3]);
}

#[test]
fn divergent_replicas_are_reported() {
    let mut finals = good_final_states();
    finals.get_mut("a").unwrap().get_mut("n3").unwrap().remove("w1-2");
    let violations = eventually_converged(&finals).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::Divergence]);
    let message = &violations[0].message;
    assert!(message.contains("n3: 2 elements, lacks 1") && message.contains("w1-2"), "{message}");
    assert!(message.contains("n1: all 3 elements"), "{message}");
}

#[test]
fn stale_quorum_read_is_reported() {
    let history = vec![
        add("w1", "a", "w1-1", LQ, "n1", (0, 10), RESULT_OK),
        add("w1", "a", "w1-2", LQ, "n1", (11, 20), RESULT_OK),
        // Started after both adds were acknowledged, sees only the first.
        read("w2", "a", &["w1-1"], LQ, "n3", (21, 30)),
    ];
    let violations = quorum_reads(&history, LQ).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::StaleRead]);
    let v = &violations[0];
    assert_eq!(v.events, [2, 1]);
    assert!(v.message.starts_with("#3 w2 read via n3 at local_quorum [21..30]us -> ok (1 elements)"), "{v}");
    assert!(v.message.contains("misses 1 element") && v.message.contains("\"w1-2\" from #2"), "{v}");
    // Eventual reads promise no visibility, and quorum_reads at another level ignores these.
    quorum_reads(&history, "quorum").unwrap();
    anytime_no_future_reads(&history).unwrap();
}

#[test]
fn visibility_only_relates_adds_and_reads_at_the_same_level() {
    let history = vec![
        add("w1", "a", "w1-1", "eventual", "n1", (0, 10), RESULT_OK),
        add("w1", "a", "w1-2", "quorum", "n1", (11, 20), RESULT_OK),
        read("w2", "a", &[], LQ, "n3", (21, 30)),
    ];
    quorum_reads(&history, LQ).unwrap();
}

#[test]
fn failed_and_concurrent_adds_need_not_be_visible() {
    let history = vec![
        add("w1", "a", "w1-1", LQ, "n1", (0, 10), "timeout"),
        add("w1", "a", "w1-2", LQ, "n1", (11, 25), RESULT_OK),
        read("w2", "a", &[], LQ, "n3", (25, 30)),
    ];
    quorum_reads(&history, LQ).unwrap();
}

#[test]
fn backwards_read_is_reported_across_processes() {
    let history = vec![
        add("w1", "a", "w1-1", LQ, "n1", (0, 100), "timeout"),
        // The indeterminate add shows up at one read, then is gone at a later read by another
        // worker through another node: not stale (the add failed), but backwards.
        read("w2", "a", &["w1-1"], LQ, "n2", (101, 110)),
        read("w3", "a", &[], LQ, "n3", (111, 120)),
        // Concurrent with the first read: free to miss it.
        read("w4", "a", &[], LQ, "n3", (105, 130)),
    ];
    let violations = quorum_reads(&history, LQ).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::NonMonotonicRead]);
    let v = &violations[0];
    assert_eq!(v.events, [2, 1]);
    assert!(v.message.contains("#3 w3 read") && v.message.contains("\"w1-1\" from #2 w2 read via n2"), "{v}");
}

#[test]
fn read_showing_a_future_add_is_reported() {
    let history = vec![
        read("w2", "a", &["w1-1"], LQ, "n2", (0, 10)),
        add("w1", "a", "w1-1", LQ, "n1", (11, 20), RESULT_OK),
        read("w2", "a", &["w1-1"], "eventual", "n2", (5, 10)),
        // Starting exactly when the read ends is concurrent, not future.
        read("w3", "a", &["w1-1"], LQ, "n2", (6, 11)),
    ];
    let violations = quorum_reads(&history, LQ).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::FutureRead]);
    assert_eq!(violations[0].events, [0, 1]);
    assert!(violations[0].message.contains("first added by #2 w1 add \"w1-1\" via n1 at local_quorum [11..20]us"));

    // no_future_reads looks at every level.
    let violations = anytime_no_future_reads(&history).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::FutureRead; 2]);
    assert_eq!(violations[1].events, [2, 1]);
}

#[test]
fn read_of_a_value_nobody_added_is_reported() {
    let history = vec![
        add("w1", "a", "w1-1", LQ, "n1", (0, 10), RESULT_OK),
        // w1-1 exists, but under key a; w9-9 nowhere.
        read("w2", "b", &["w1-1", "w9-9"], "eventual", "n2", (20, 30)),
    ];
    let violations = anytime_no_future_reads(&history).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::FutureRead]);
    let message = &violations[0].message;
    assert!(message.contains("2 element(s)") && message.contains("\"w9-9\", which no add wrote"), "{message}");
}

#[test]
fn repeated_element_counts_from_its_earliest_add() {
    // A worker re-issuing a failed add with the same element: the element may exist from the
    // first attempt on, and is acknowledged by the second.
    let history = vec![
        add("w1", "a", "w1-1", LQ, "n1", (0, 10), "timeout"),
        read("w2", "a", &["w1-1"], LQ, "n2", (11, 15)),
        add("w1", "a", "w1-1", LQ, "n1", (20, 30), RESULT_OK),
        read("w2", "a", &["w1-1"], LQ, "n2", (31, 40)),
    ];
    quorum_reads(&history, LQ).unwrap();
    anytime_no_future_reads(&history).unwrap();
    let finals = states(&[("a", &[("n1", &["w1-1"]), ("n2", &[])])]);
    assert_eq!(kinds(&finally_no_lost_writes(&history, &finals).unwrap_err()), [ViolationKind::LostWrite]);
}

#[test]
fn regions_scope_local_quorum_claims() {
    let history = vec![
        add("w1", "a", "w1-1", LQ, "eu1", (0, 10), RESULT_OK),
        // A local quorum in us need not intersect one in eu: neither stale nor backwards there.
        read("w2", "a", &[], LQ, "us1", (20, 30)),
        read("w3", "a", &["w1-1"], LQ, "eu2", (40, 50)),
        read("w4", "a", &[], LQ, "us2", (60, 70)),
    ];
    let region = |event: &Event| event.node.trim_end_matches(char::is_numeric).to_string();
    let summary = quorum_reads_by_region(&history, LQ, region).unwrap();
    assert_eq!(summary.reads_checked, 3);
    // Without regions every read in us is both stale and (the last) backwards.
    let violations = quorum_reads(&history, LQ).unwrap_err();
    assert_eq!(
        kinds(&violations),
        [ViolationKind::StaleRead, ViolationKind::StaleRead, ViolationKind::NonMonotonicRead]
    );
    // Within a region the claims still hold.
    let mut stale = history.clone();
    stale.push(read("w5", "a", &[], LQ, "eu1", (80, 90)));
    let violations = quorum_reads_by_region(&stale, LQ, region).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::StaleRead, ViolationKind::NonMonotonicRead]);
    assert!(violations.iter().all(|v| v.events[0] == 4));
}

#[test]
fn failed_reads_and_other_ops_are_ignored() {
    let mut history = good_history();
    history.push(failed_read("w3", "a", LQ, "n1", (100, 110), "timeout"));
    history.push(Event { op: "remove".into(), ..add("w3", "a", "w1-1", LQ, "n1", (111, 120), RESULT_OK) });
    let summary = quorum_reads(&history, LQ).unwrap();
    assert_eq!(summary.reads_checked, 5);
    assert_eq!(summary.ops["remove"]["ok"], 1);
    finally_no_lost_writes(&history, &good_final_states()).unwrap();
}

#[test]
fn malformed_event_is_reported() {
    let mut history = good_history();
    history.push(Event { value: json!(42), ..read("w3", "a", &[], LQ, "n1", (100, 110)) });
    history.push(add("w3", "a", "w3-1", LQ, "n1", (120, 119), RESULT_OK));
    let violations = quorum_reads(&history, LQ).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::Malformed; 2]);
    assert!(violations[0].message.contains("array of strings"), "{}", violations[0]);
    assert!(violations[1].message.contains("before start_us"), "{}", violations[1]);
    assert_eq!(
        kinds(&finally_no_lost_writes(&history, &good_final_states()).unwrap_err()),
        [ViolationKind::Malformed; 2]
    );
}

/// A tiny deterministic PRNG (xorshift64*), so the randomized tests need no dependency and a
/// failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Reads of one key with random, often overlapping intervals. Each returns a prefix of the
/// elements that lies between what existed when it started and when it ended, which is monotonic;
/// in two seeds out of three, about one read in ten then drops a random element, which may or may
/// not break monotonicity depending on what ran before it.
fn random_reads(rng: &mut Rng, seed: u64, count: usize) -> Vec<Event> {
    let universe = ["e0", "e1", "e2", "e3", "e4", "e5"];
    let mut history: Vec<Event> =
        universe.iter().map(|e| add("w0", "k", e, "eventual", "n1", (0, 0), "timeout")).collect();
    let existing = |t: u64| (t / 20).min(universe.len() as u64);
    for i in 0..count {
        let start = rng.below(100);
        let end = start + rng.below(20);
        let len = existing(start) + rng.below(existing(end) - existing(start) + 1);
        let mut elements: Vec<&str> = universe[..len as usize].to_vec();
        if seed % 3 != 0 && !elements.is_empty() && rng.below(10) == 0 {
            elements.remove(rng.below(elements.len() as u64) as usize);
        }
        history.push(read(&format!("w{}", i % 4), "k", &elements, LQ, "n1", (start, end)));
    }
    history
}

#[test]
fn sweep_matches_the_pairwise_definition() {
    let (mut passing, mut failing) = (0, 0);
    for seed in 1..=300 {
        let mut rng = Rng(seed);
        let count = 1 + rng.below(30) as usize;
        let history = random_reads(&mut rng, seed, count);
        // The definition, quadratically: r2 is flagged iff some r1 ended before it started and
        // returned an element r2 lacks.
        let elements =
            |e: &Event| -> BTreeSet<String> { e.read_elements().unwrap().iter().map(|s| s.to_string()).collect() };
        let reads: Vec<usize> = (0..history.len()).filter(|&i| history[i].op == OP_READ).collect();
        let mut expected = BTreeSet::new();
        let mut pairs = 0;
        for &r2 in &reads {
            for &r1 in &reads {
                if history[r1].end_us < history[r2].start_us {
                    pairs += 1;
                    if !elements(&history[r1]).is_subset(&elements(&history[r2])) {
                        expected.insert(r2);
                    }
                }
            }
        }
        let (flagged, counted) = match quorum_reads(&history, LQ) {
            Ok(summary) => (BTreeSet::new(), summary.pairs_checked),
            Err(violations) => {
                assert!(violations.iter().all(|v| v.kind == ViolationKind::NonMonotonicRead), "seed {seed}");
                // Each named witness really is an earlier read holding an element the read lacks.
                for v in &violations {
                    let (r2, witnesses) = (v.events[0], &v.events[1..]);
                    assert!(!witnesses.is_empty());
                    for &r1 in witnesses {
                        assert!(history[r1].end_us < history[r2].start_us, "seed {seed}: {v}");
                        assert!(!elements(&history[r1]).is_subset(&elements(&history[r2])), "seed {seed}: {v}");
                    }
                }
                (violations.iter().map(|v| v.events[0]).collect(), pairs)
            }
        };
        assert_eq!(flagged, expected, "seed {seed}");
        assert_eq!(counted, pairs, "seed {seed}");
        if expected.is_empty() {
            passing += 1;
        } else {
            failing += 1;
        }
    }
    // Both outcomes were exercised, not just one.
    assert!(passing > 20 && failing > 20, "{passing} passing, {failing} failing");
}

/// 50,000 events: 25,000 acknowledged adds to one hot key, and 25,000 reads, one in a hundred of
/// the hot key (returning everything added so far, ~3 million elements in all) and the rest of a
/// quiet key. Every hot read starts after every add so far, so the visibility and monotonicity
/// unions are as large as they get: the shape that makes a quadratic checker crawl.
#[test]
fn fifty_thousand_events_check_quickly() {
    let mut history = Vec::new();
    let mut acked: Vec<String> = Vec::new();
    let mut t = 0;
    for i in 0..25_000u64 {
        let worker = format!("w{}", i % 16);
        let element = format!("{worker}-{i}");
        history.push(add(&worker, "hot", &element, LQ, "n1", (t, t + 5), RESULT_OK));
        acked.push(element);
        t += 6;
        if i % 100 == 0 {
            let elements: Vec<&str> = acked.iter().map(String::as_str).collect();
            history.push(read(&worker, "hot", &elements, LQ, "n2", (t, t + 5)));
        } else {
            history.push(read(&worker, "quiet", &[], LQ, "n2", (t, t + 5)));
        }
        t += 6;
    }
    let hot: BTreeSet<String> = acked.into_iter().collect();
    let finals: FinalStates = BTreeMap::from([("hot".to_string(), BTreeMap::from([("n1".to_string(), hot)]))]);
    let started = Instant::now();
    let summary = quorum_reads(&history, LQ).unwrap();
    anytime_no_future_reads(&history).unwrap();
    finally_no_lost_writes(&history, &finals).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(summary.reads_checked, 25_000);
    // Generous: it takes well under a second, but CI machines are shared.
    assert!(elapsed.as_secs() < 20, "checking 50k events took {elapsed:?}");
    eprintln!("checked 50k events in {elapsed:?}");
}

/// `event` as recorded by a harness that knows the node's region.
fn in_region(region: &str, event: Event) -> Event {
    Event { region: Some(region.into()), ..event }
}

fn incr(process: &str, key: &str, amount: u64, level: &str, span: (u64, u64), result: &str) -> Event {
    Event { op: OP_INCR.into(), value: json!(amount), ..add(process, key, "", level, "n1", span, result) }
}

fn read_counter(process: &str, key: &str, value: i64, level: &str, span: (u64, u64)) -> Event {
    Event { op: OP_READ_COUNTER.into(), value: json!(value), ..read(process, key, &[], level, "n1", span) }
}

/// p1 adds x to A; p2 reads A and sees x, then adds y to B; p3 reads B and sees y, then reads A at
/// `last_level` and sees `last` (x is in its causal past only through the two reads-from links).
fn cross_key(last: &[&str], last_level: &str) -> Vec<Event> {
    vec![
        add("p1", "A", "x", CAUSAL, "n1", (0, 10), RESULT_OK),
        read("p2", "A", &["x"], CAUSAL, "n2", (20, 30)),
        add("p2", "B", "y", CAUSAL, "n2", (31, 40), RESULT_OK),
        read("p3", "B", &["y"], CAUSAL, "n3", (50, 60)),
        read("p3", "A", last, last_level, "n3", (61, 70)),
    ]
}

#[test]
fn causal_history_that_sees_its_past_passes() {
    let mut history = cross_key(&["x"], CAUSAL);
    // More traffic: a failed add nobody saw, a concurrent read that may miss y, eventual reads.
    history.push(add("p1", "B", "z", CAUSAL, "n1", (71, 80), "timeout"));
    history.push(read("p1", "B", &[], "eventual", "n2", (81, 85)));
    history.push(read("p1", "B", &["y"], CAUSAL, "n1", (86, 90)));
    history.push(read("p2", "A", &["x"], CAUSAL, "n1", (41, 95)));
    let summary = anytime_causal_order(&history, &[CAUSAL]).unwrap();
    assert_eq!(summary.check, "anytime_causal_order");
    assert_eq!((summary.keys, summary.reads_checked), (2, 5));
    // Adds required: x at #2, y at #4, x at #5, y at #8 (a read's own sources are in its past) and
    // x at #9; not z, whose add failed.
    assert_eq!(summary.pairs_checked, 5);
    anytime_session_guarantees(&history, &[CAUSAL]).unwrap();
    anytime_no_future_reads(&history).unwrap();
}

#[test]
fn causal_read_missing_an_add_reached_only_through_reads_from_is_reported() {
    let history = cross_key(&[], CAUSAL);
    let violations = anytime_causal_order(&history, &[CAUSAL]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::CausalViolation]);
    let v = &violations[0];
    assert_eq!(v.key, "A");
    assert_eq!(v.events[..2], [4, 0], "{v}");
    assert!(v.message.starts_with("#5 p3 read via n3 at causal"), "{v}");
    assert!(v.message.contains("misses 1 ok add(s) in its causal past: #1 p1 add \"x\""), "{v}");
    // The whole chain, read back to the add.
    for link in [
        "#5 follows #4 p3 read",
        "#4 returned \"y\" added by #3 p2 add \"y\"",
        "#3 follows #2 p2 read",
        "#2 returned \"x\" added by #1 p1 add \"x\"",
    ] {
        assert!(v.message.contains(link), "{link:?} not in {v}");
    }
    // No session broke anything, and at quorum levels nothing is promised.
    anytime_session_guarantees(&history, &[CAUSAL]).unwrap();
    anytime_quorum_visibility(&history).unwrap();
}

#[test]
fn only_causal_levels_are_held_to_causal_order() {
    // The same miss at eventual is allowed.
    let history = cross_key(&[], "eventual");
    assert_eq!(anytime_causal_order(&history, &[CAUSAL]).unwrap().reads_checked, 2);
    // A history with only eventual reads has nothing to check.
    let eventual: Vec<Event> =
        cross_key(&[], CAUSAL).into_iter().map(|e| Event { consistency: "eventual".into(), ..e }).collect();
    let summary = anytime_causal_order(&eventual, &[CAUSAL]).unwrap();
    assert_eq!(summary.reads_checked, 0);
    anytime_session_guarantees(&eventual, &[CAUSAL]).unwrap();
    // But eventual reads still carry causality into a later causal read.
    let mut history = cross_key(&[], CAUSAL);
    history[1].consistency = "eventual".into();
    history[3].consistency = "eventual".into();
    assert_eq!(kinds(&anytime_causal_order(&history, &[CAUSAL]).unwrap_err()), [ViolationKind::CausalViolation]);
}

#[test]
fn monotonic_writes_break_is_a_causal_violation() {
    let history = vec![
        add("p1", "A", "x", CAUSAL, "n1", (0, 10), RESULT_OK),
        add("p1", "B", "y", CAUSAL, "n1", (11, 20), RESULT_OK),
        read("p2", "B", &["y"], CAUSAL, "n2", (30, 40)),
        read("p2", "A", &[], CAUSAL, "n2", (41, 50)),
    ];
    let violations = anytime_causal_order(&history, &[CAUSAL]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::CausalViolation]);
    let message = &violations[0].message;
    assert!(message.contains("#3 returned \"y\" added by #2") && message.contains("#2 follows #1"), "{message}");
}

#[test]
fn a_failed_add_that_was_seen_brings_its_causes() {
    let history = vec![
        add("p1", "A", "x", CAUSAL, "n1", (0, 10), RESULT_OK),
        // Timed out, but applied: p2 sees it, so it must see what p1 did before it too.
        add("p1", "B", "y", CAUSAL, "n1", (11, 20), "timeout"),
        read("p2", "B", &["y"], CAUSAL, "n2", (30, 40)),
        read("p2", "A", &[], CAUSAL, "n2", (41, 50)),
        // The failed add itself is not required of another session.
        read("p3", "B", &[], CAUSAL, "n2", (60, 70)),
    ];
    let violations = anytime_causal_order(&history, &[CAUSAL]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::CausalViolation]);
    assert_eq!(violations[0].events[..2], [3, 0]);
    assert!(violations[0].message.contains("added (indeterminate, but seen) by #2"), "{}", violations[0]);
}

#[test]
fn a_session_that_changed_region_is_still_checked() {
    let history = vec![
        in_region("eu", add("p1", "A", "x", CAUSAL, "eu1", (0, 10), RESULT_OK)),
        in_region("eu", read("p1", "A", &["x"], CAUSAL, "eu1", (11, 20))),
        // Failed over to us: the token still carries x.
        in_region("us", read("p1", "A", &[], CAUSAL, "us1", (21, 30))),
    ];
    assert_eq!(history[2].to_string(), "p1 read via us1 (us) at causal [21..30]us -> ok (0 elements)");
    let violations = anytime_session_guarantees(&history, &[CAUSAL]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::ReadYourWrites, ViolationKind::MonotonicReads]);
    assert!(violations.iter().all(|v| v.events[0] == 2));
    assert_eq!(kinds(&anytime_causal_order(&history, &[CAUSAL]).unwrap_err()), [ViolationKind::CausalViolation]);
    // A local_quorum read in us makes no promise about a write in eu; the same in eu does.
    let lq: Vec<Event> = history.iter().map(|e| Event { consistency: LQ.into(), ..e.clone() }).collect();
    anytime_quorum_visibility(&lq).unwrap();
    let mut lq_eu = lq.clone();
    lq_eu.push(in_region("eu", read("p2", "A", &[], LQ, "eu2", (40, 50))));
    assert_eq!(
        kinds(&anytime_quorum_visibility(&lq_eu).unwrap_err()),
        [ViolationKind::StaleRead, ViolationKind::NonMonotonicRead]
    );
}

#[test]
fn read_your_writes_break_is_reported() {
    let history = vec![
        add("p1", "A", "x", LQ, "n1", (0, 10), RESULT_OK),
        add("p1", "A", "z", CAUSAL, "n1", (11, 20), "timeout"),
        // Misses its own ok add; the failed one may be missing.
        read("p1", "A", &[], CAUSAL, "n2", (21, 30)),
        // Another session may miss x (concurrent enough at causal: nothing links it to p1).
        read("p2", "A", &[], CAUSAL, "n2", (21, 30)),
    ];
    let violations = anytime_session_guarantees(&history, &[CAUSAL]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::ReadYourWrites]);
    let v = &violations[0];
    assert_eq!(v.events, [2, 0]);
    assert!(v.message.contains("its own session added (ok) before it: \"x\" from #1"), "{v}");
    // Not checked at a level not asked for.
    anytime_session_guarantees(&history, &["eventual"]).unwrap();
}

#[test]
fn monotonic_read_break_is_reported() {
    let history = vec![
        add("p1", "A", "x", CAUSAL, "n1", (0, 10), "timeout"),
        read("p2", "A", &["x"], CAUSAL, "n2", (11, 20)),
        read("p2", "A", &[], CAUSAL, "n3", (21, 30)),
    ];
    let violations = anytime_session_guarantees(&history, &[CAUSAL]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::MonotonicReads]);
    assert_eq!(violations[0].events, [2, 1]);
    assert!(violations[0].message.contains("earlier reads returned: \"x\" from #2"), "{}", violations[0]);
    // The add failed, so causal order alone does not require x: only the session guarantee does.
    anytime_causal_order(&history, &[CAUSAL]).unwrap();
}

#[test]
fn re_issued_elements_raise_no_false_alarm() {
    let history = vec![
        add("p1", "A", "x", CAUSAL, "n1", (0, 10), "timeout"),
        add("p1", "A", "x", CAUSAL, "n1", (11, 20), RESULT_OK),
        add("p1", "B", "y", CAUSAL, "n1", (21, 30), RESULT_OK),
        read("p2", "B", &["y"], CAUSAL, "n2", (31, 40)),
        read("p2", "A", &["x"], CAUSAL, "n2", (41, 50)),
        read("p1", "A", &["x"], CAUSAL, "n2", (51, 60)),
    ];
    anytime_causal_order(&history, &[CAUSAL]).unwrap();
    anytime_session_guarantees(&history, &[CAUSAL]).unwrap();
}

#[test]
fn overlapping_operations_of_one_session_are_malformed() {
    let history = vec![
        add("p1", "A", "x", CAUSAL, "n1", (0, 10), RESULT_OK),
        read("p1", "A", &["x"], CAUSAL, "n1", (5, 15)),
        read("p1", "A", &["x"], CAUSAL, "n1", (6, 16)),
    ];
    let violations = anytime_causal_order(&history, &[CAUSAL]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::Malformed]);
    assert!(violations[0].message.contains("must be sequential"), "{}", violations[0]);
}

/// Random small histories against the definition of the causal past computed the slow way: the
/// transitive closure of session order and reads-from over explicit edges.
#[test]
fn causal_order_matches_the_definition() {
    let (mut passing, mut failing) = (0, 0);
    for seed in 1..=300 {
        let mut rng = Rng(seed * 7919);
        let history = random_causal_history(&mut rng);
        let n = history.len();
        // Direct predecessors of each event in the causal order.
        let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
        for j in 0..n {
            for i in 0..j {
                if history[i].process == history[j].process && history[i].is_ok() {
                    preds[j].push(i);
                }
            }
            if let Some(elements) = history[j].read_elements() {
                for element in elements {
                    let source = (0..n)
                        .find(|&i| history[i].key == history[j].key && history[i].added_element() == Some(element));
                    let source = source.unwrap();
                    if history[source].is_ok() {
                        preds[j].push(source);
                    } else {
                        // A failed add is not itself in the past, its session's ok ops before it are.
                        preds[j].extend(
                            (0..source)
                                .filter(|&i| history[i].process == history[source].process && history[i].is_ok()),
                        );
                    }
                }
            }
        }
        let mut expected = BTreeSet::new();
        for r in 0..n {
            let Some(elements) = history[r].read_elements() else { continue };
            if history[r].consistency != CAUSAL {
                continue;
            }
            let mut past = BTreeSet::new();
            let mut todo = preds[r].clone();
            while let Some(i) = todo.pop() {
                if past.insert(i) {
                    todo.extend(preds[i].iter().copied());
                }
            }
            let missing = past.iter().any(|&i| {
                history[i].key == history[r].key
                    && history[i].is_ok()
                    && history[i].added_element().is_some_and(|e| !elements.contains(&e))
            });
            if missing {
                expected.insert(r);
            }
        }
        let flagged: BTreeSet<usize> = match anytime_causal_order(&history, &[CAUSAL]) {
            Ok(_) => BTreeSet::new(),
            Err(violations) => {
                assert!(
                    violations.iter().all(|v| v.kind == ViolationKind::CausalViolation),
                    "seed {seed}: {violations:?}"
                );
                violations.iter().map(|v| v.events[0]).collect()
            }
        };
        assert_eq!(flagged, expected, "seed {seed}: {history:#?}");
        if expected.is_empty() {
            passing += 1;
        } else {
            failing += 1;
        }
    }
    assert!(passing > 20 && failing > 20, "{passing} passing, {failing} failing");
}

/// Three sessions over two keys, each a sequence of adds (unique elements, one in five failing)
/// and reads (at causal or eventual) that return a random subset of the elements whose adds had
/// started; recorded in end order as a shared writer would, so a session's order is its time order.
fn random_causal_history(rng: &mut Rng) -> Vec<Event> {
    let mut sessions: Vec<Vec<Event>> = Vec::new();
    let mut clock = [0u64; 3];
    let mut all: Vec<Event> = Vec::new();
    // Generate in a global random interleaving so reads can see earlier-started adds of others.
    let mut counter = 0;
    for _ in 0..(4 + rng.below(14)) {
        let p = rng.below(3) as usize;
        let key = ["A", "B"][rng.below(2) as usize];
        let start = clock[p].max(clock.iter().copied().min().unwrap()) + rng.below(5);
        let end = start + 1 + rng.below(8);
        clock[p] = end + 1;
        let process = format!("p{p}");
        let event = if rng.below(2) == 0 {
            counter += 1;
            let result = if rng.below(5) == 0 { "timeout" } else { RESULT_OK };
            add(&process, key, &format!("e{counter}"), CAUSAL, "n1", (start, end), result)
        } else {
            let candidates: Vec<String> = all
                .iter()
                .filter(|e| e.key == key && e.start_us <= end)
                .filter_map(|e| e.added_element().map(str::to_string))
                .collect();
            let chosen: Vec<&str> = candidates.iter().filter(|_| rng.below(4) != 0).map(String::as_str).collect();
            let level = if rng.below(4) == 0 { "eventual" } else { CAUSAL };
            read(&process, key, &chosen, level, "n1", (start, end))
        };
        all.push(event);
    }
    sessions.push(all);
    let mut history = sessions.pop().unwrap();
    history.sort_by_key(|e| e.end_us);
    history
}

/// 20,000 events of 16 sessions over 20 keys, sequential, every read returning everything added to
/// its key so far (about 2.5 million elements read in all): causal order and the session
/// guarantees hold, and checking them is quick.
#[test]
fn twenty_thousand_causal_events_check_quickly() {
    let mut rng = Rng(42);
    let mut history = Vec::new();
    let mut sets: Vec<Vec<String>> = vec![Vec::new(); 20];
    for i in 0..20_000u64 {
        let process = format!("w{}", rng.below(16));
        let k = rng.below(20) as usize;
        let key = format!("k{k}");
        let span = (i * 10, i * 10 + 5);
        if rng.below(2) == 0 {
            let element = format!("{process}-{i}");
            history.push(add(&process, &key, &element, CAUSAL, "n1", span, RESULT_OK));
            sets[k].push(element);
        } else {
            let elements: Vec<&str> = sets[k].iter().map(String::as_str).collect();
            history.push(read(&process, &key, &elements, CAUSAL, "n1", span));
        }
    }
    let started = Instant::now();
    let causal = anytime_causal_order(&history, &[CAUSAL]).unwrap();
    let sessions = anytime_session_guarantees(&history, &[CAUSAL]).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(causal.reads_checked, sessions.reads_checked);
    assert!(causal.pairs_checked > 1_000_000, "{causal}");
    assert!(elapsed.as_secs() < 20, "checking 20k causal events took {elapsed:?}");
    eprintln!("checked 20k causal events in {elapsed:?}: {causal}");
    // And one stale read among them is found.
    let last = history.iter().rposition(|e| e.op == OP_READ && e.read_elements().unwrap().len() > 2).unwrap();
    history[last].value = json!(history[last].read_elements().unwrap()[1..]);
    let violations = anytime_causal_order(&history, &[CAUSAL]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::CausalViolation]);
    assert_eq!(violations[0].events[0], last);
}

#[test]
fn counter_reads_within_bounds_pass() {
    let history = vec![
        in_region("eu", incr("p1", "c", 2, Q, (0, 10), RESULT_OK)),
        in_region("eu", incr("p1", "c", 3, LQ, (11, 20), RESULT_OK)),
        in_region("us", incr("p2", "c", 4, CAUSAL, (0, 30), RESULT_OK)),
        // Concurrent with the causal incr, so 5 (without it) and 9 (with it) are both fine.
        in_region("eu", read_counter("p3", "c", 5, LQ, (21, 31))),
        in_region("eu", read_counter("p3", "c", 9, Q, (32, 40))),
        // In us, the local_quorum incr in eu need not show; the quorum one must.
        in_region("us", read_counter("p4", "c", 2, LQ, (41, 50))),
        in_region("us", read_counter("p4", "c", 2, Q, (51, 60))),
        in_region("eu", read_counter("p2", "c", 4, CAUSAL, (61, 70))),
        in_region("eu", read_counter("p5", "c", 0, "eventual", (61, 70))),
    ];
    let summary = anytime_counter_within_bounds(&history).unwrap();
    assert_eq!(summary.check, "anytime_counter_within_bounds");
    assert_eq!((summary.keys, summary.reads_checked), (1, 6));
    assert_eq!(history[4].to_string(), "p3 read_counter via n1 (eu) at quorum [32..40]us -> ok = 9");
    assert_eq!(history[0].to_string(), "p1 incr +2 via n1 (eu) at quorum [0..10]us -> ok");
}

#[test]
fn counter_above_its_upper_bound_is_reported() {
    let history = vec![
        incr("p1", "c", 3, "eventual", (0, 10), RESULT_OK),
        read_counter("p2", "c", 4, "eventual", (11, 20)),
        // An incr started after the read ended cannot explain it either.
        incr("p1", "c", 1, "eventual", (21, 30), RESULT_OK),
    ];
    let violations = anytime_counter_within_bounds(&history).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::CounterOutOfRange]);
    let v = &violations[0];
    assert_eq!(v.events, [1, 0]);
    assert!(v.message.contains("read 4, above 3, the sum of the 1 incr(s) of any result started by its end"), "{v}");
}

#[test]
fn counter_below_its_lower_bound_at_quorum_is_reported() {
    let history = vec![
        in_region("eu", incr("p1", "c", 2, Q, (0, 10), RESULT_OK)),
        in_region("us", read_counter("p2", "c", 0, Q, (20, 30))),
        // Concurrent with the incr, or not at quorum: may miss it.
        in_region("us", read_counter("p3", "c", 0, Q, (5, 30))),
        in_region("us", read_counter("p4", "c", 0, LQ, (20, 30))),
    ];
    let violations = anytime_counter_within_bounds(&history).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::CounterOutOfRange]);
    let v = &violations[0];
    assert_eq!(v.events, [1, 0]);
    assert!(
        v.message.contains("read 0, below 2, the sum of the 1 ok quorum incr(s) that ended before it started"),
        "{v}"
    );
}

#[test]
fn counter_lower_bounds_at_local_quorum_and_causal() {
    let history = vec![
        in_region("eu", incr("p1", "c", 2, LQ, (0, 10), RESULT_OK)),
        in_region("eu", read_counter("p2", "c", 1, LQ, (20, 30))),
        // The session's own incr at eventual, read at causal after failing over to us.
        in_region("eu", incr("p3", "c", 5, "eventual", (0, 10), RESULT_OK)),
        in_region("us", read_counter("p3", "c", 2, CAUSAL, (20, 30))),
    ];
    let violations = anytime_counter_within_bounds(&history).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::CounterOutOfRange; 2]);
    assert!(violations[0].message.contains("below 2, the sum of the 1 ok local_quorum incr(s) in region \"eu\""));
    assert!(violations[1].message.contains("below 5, the sum of the 1 ok incr(s) of its own session before it"));
}

#[test]
fn failed_incrs_widen_the_upper_bound_but_never_the_lower() {
    let history = vec![
        incr("p1", "c", 5, Q, (0, 10), "timeout"),
        incr("p1", "c", 1, Q, (11, 20), RESULT_OK),
        // Between 1 (the ok incr) and 6 (both): the failed incr may or may not have landed.
        read_counter("p2", "c", 1, Q, (30, 40)),
        read_counter("p2", "c", 6, Q, (41, 50)),
        read_counter("p1", "c", 1, CAUSAL, (51, 60)),
    ];
    anytime_counter_within_bounds(&history).unwrap();
    for (value, bound) in [(0, "below 1"), (7, "above 6")] {
        let mut bad = history.clone();
        bad.push(read_counter("p3", "c", value, Q, (61, 70)));
        let violations = anytime_counter_within_bounds(&bad).unwrap_err();
        assert_eq!(kinds(&violations), [ViolationKind::CounterOutOfRange]);
        assert!(violations[0].message.contains(bound), "{}", violations[0]);
    }
}

#[test]
fn bad_counter_events_are_malformed() {
    let negative = incr("p1", "c", 1, Q, (0, 10), RESULT_OK);
    let negative = Event { value: json!(-1), ..negative };
    let zero = Event { value: json!(0), ..negative.clone() };
    let text = Event { value: json!("3"), ..read_counter("p1", "c", 0, Q, (11, 20)) };
    for bad in [&negative, &zero, &text] {
        assert!(bad.validate().is_err(), "{bad}");
    }
    let violations = anytime_counter_within_bounds(&[negative, zero, text]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::Malformed; 3]);
    // A negative value read is valid, and out of range.
    let violations = anytime_counter_within_bounds(&[read_counter("p1", "c", -1, "eventual", (0, 1))]).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::CounterOutOfRange]);
}

#[test]
fn check_history_cli_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cli = env!("CARGO_BIN_EXE_check-history");

    let good = dir.path().join("good.jsonl");
    write_history(&good, &good_history()).unwrap();
    let out = Command::new(cli).arg(&good).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "anytime_quorum_visibility: ok",
        "anytime_no_future_reads: ok",
        "anytime_causal_order: not run (no ok set reads at --level)",
        "anytime_counter_within_bounds: not run (no ok counter reads)",
    ] {
        assert!(stdout.contains(line), "{line:?} not in {stdout}");
    }
    // Held to causal order at local_quorum on request.
    let out = Command::new(cli).args([good.to_str().unwrap(), "--level", LQ]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("anytime_causal_order: ok") && stdout.contains("anytime_session_guarantees: ok"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.jsonl");
    let mut history = good_history();
    history.push(read("w3", "a", &["w1-1"], LQ, "n2", (200, 210)));
    history.push(read("w3", "a", &["zz"], LQ, "n2", (220, 230)));
    write_history(&bad, &history).unwrap();
    let out = Command::new(cli).arg(&bad).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("VIOLATION stale_read on key \"a\": #13 w3 read"), "{stdout}");
    assert!(stdout.contains("VIOLATION future_read on key \"a\": #14"), "{stdout}");
    // The future read is found by both checkers but printed once: 2 stale, 2 backwards, 1 future.
    assert!(stdout.contains("\n5 violations"), "{stdout}");
    let out = Command::new(cli).args([bad.to_str().unwrap(), "--max-violations", "1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("... and 4 more"));

    // Causal and counter histories: each checker that applies runs and reports.
    let causal = dir.path().join("causal.jsonl");
    let mut history = cross_key(&[], CAUSAL);
    history.push(incr("p4", "c", 3, Q, (0, 10), RESULT_OK));
    history.push(read_counter("p5", "c", 0, Q, (20, 30)));
    write_history(&causal, &history).unwrap();
    let out = Command::new(cli).arg(&causal).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("VIOLATION causal_violation on key \"A\": #5 p3 read"), "{stdout}");
    assert!(stdout.contains("VIOLATION counter_out_of_range on key \"c\": #7"), "{stdout}");
    assert!(stdout.contains("anytime_session_guarantees: ok"), "{stdout}");
    assert!(stdout.contains("\n2 violations"), "{stdout}");

    // Regions fill in events without one, and must cover every such node.
    let out = Command::new(cli).args([good.to_str().unwrap(), "--region", "n1=eu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"n2\""));
    let regions = ["--region", "n1=eu", "--region", "n2=eu", "--region", "n3=eu"];
    let out = Command::new(cli).arg(&good).args(regions).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    // In separate regions, the good history's local_quorum reads make fewer promises: still fine.
    let regions = ["--region", "n1=eu", "--region", "n2=us", "--region", "n3=ap"];
    let out = Command::new(cli).arg(&good).args(regions).output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    let malformed = dir.path().join("malformed.jsonl");
    std::fs::write(&malformed, "{}\n").unwrap();
    let out = Command::new(cli).arg(&malformed).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
    assert_eq!(Command::new(cli).output().unwrap().status.code(), Some(2));
    assert_eq!(Command::new(cli).arg("--bogus").output().unwrap().status.code(), Some(2));
}
