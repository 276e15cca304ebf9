//! Every checker on a known-good history and on hand-written histories that break exactly one
//! claim, plus the sweep against the pairwise definition and the `check-history` CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Instant;

use meridian_geo_tests::check::{
    convergence, final_states_by_key, no_future_reads, no_lost_writes, quorum_reads, quorum_reads_by_region,
    FinalStates, NodeStates,
};
use meridian_geo_tests::history::{write_history, OP_ADD, OP_READ, RESULT_OK};
use meridian_geo_tests::{Event, Violation, ViolationKind};
use serde_json::json;

const LQ: &str = "local_quorum";

fn add(process: &str, key: &str, element: &str, level: &str, node: &str, span: (u64, u64), result: &str) -> Event {
    Event {
        process: process.into(),
        op: OP_ADD.into(),
        key: key.into(),
        value: json!(element),
        consistency: level.into(),
        node: node.into(),
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
        failed_read("w2", "a", LQ, "n3", (55, 90), "quorum_unavailable"),
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

    let lost = no_lost_writes(&history, &finals).unwrap();
    assert_eq!(lost.keys, 2);
    assert_eq!(lost.replica_states, 6);
    assert_eq!(lost.ops["add"]["ok"], 3);
    assert_eq!(lost.ops["add"]["timeout"], 1);
    assert_eq!(lost.ops["read"]["quorum_unavailable"], 1);

    let converged = convergence(&finals).unwrap();
    assert_eq!((converged.keys, converged.replica_states, converged.elements_checked), (2, 6, 12));

    let quorum = quorum_reads(&history, LQ).unwrap();
    assert_eq!(quorum.check, "quorum_reads");
    assert_eq!(quorum.keys, 2);
    assert_eq!(quorum.reads_checked, 5);
    // Key a: add-read pairs 1 + 2 + 2 + 2, read-read pairs 0 + 1 + 1 + 3; key b: none at this level
    // (the add of w1-3 was eventual).
    assert_eq!(quorum.pairs_checked, 12);

    let future = no_future_reads(&history).unwrap();
    assert_eq!(future.reads_checked, 6);

    let printed = quorum.to_string();
    assert!(printed.contains("5 reads checked") && printed.contains("add ok=3 quorum_unavailable=1 timeout=1"));
}

#[test]
fn lost_write_is_reported() {
    let history = good_history();
    let mut finals = good_final_states();
    finals.get_mut("a").unwrap().get_mut("n2").unwrap().remove("w2-1");
    let violations = no_lost_writes(&history, &finals).unwrap_err();
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
    no_lost_writes(&history, &finals).unwrap();
}

#[test]
fn invented_value_in_final_state_is_reported() {
    let history = good_history();
    let mut finals = good_final_states();
    finals.get_mut("b").unwrap().get_mut("n3").unwrap().insert("w9-9".into());
    // An element added to another key is invented for this one.
    finals.get_mut("b").unwrap().get_mut("n1").unwrap().insert("w1-1".into());
    let violations = no_lost_writes(&history, &finals).unwrap_err();
    assert_eq!(kinds(&violations), [ViolationKind::InventedValue, ViolationKind::InventedValue]);
    assert!(violations[0].message.contains("replica n1") && violations[0].message.contains("w1-1"));
    assert!(violations[1].message.contains("replica n3") && violations[1].message.contains("w9-9"));
}

#[test]
fn missing_state_for_acknowledged_key_is_reported() {
    let history = good_history();
    let mut finals = good_final_states();
    finals.remove("b");
    let violations = no_lost_writes(&history, &finals).unwrap_err();
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
    let violations = no_lost_writes(&history, &finals).unwrap_err();
    // a lacks w2-1 on n1 and n2, b lacks w1-3 on n2; n4's junk is not looked at.
    assert_eq!(kinds(&violations), [ViolationKind::LostWrite; 3]);
}

#[test]
fn divergent_replicas_are_reported() {
    let mut finals = good_final_states();
    finals.get_mut("a").unwrap().get_mut("n3").unwrap().remove("w1-2");
    let violations = convergence(&finals).unwrap_err();
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
    no_future_reads(&history).unwrap();
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
    let violations = no_future_reads(&history).unwrap_err();
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
    let violations = no_future_reads(&history).unwrap_err();
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
    no_future_reads(&history).unwrap();
    let finals = states(&[("a", &[("n1", &["w1-1"]), ("n2", &[])])]);
    assert_eq!(kinds(&no_lost_writes(&history, &finals).unwrap_err()), [ViolationKind::LostWrite]);
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
    let region = |node: &str| node.trim_end_matches(char::is_numeric).to_string();
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
    no_lost_writes(&history, &good_final_states()).unwrap();
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
    assert_eq!(kinds(&no_lost_writes(&history, &good_final_states()).unwrap_err()), [ViolationKind::Malformed; 2]);
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
    no_future_reads(&history).unwrap();
    no_lost_writes(&history, &finals).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(summary.reads_checked, 25_000);
    // Generous: it takes well under a second, but CI machines are shared.
    assert!(elapsed.as_secs() < 20, "checking 50k events took {elapsed:?}");
    eprintln!("checked 50k events in {elapsed:?}");
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
    assert!(stdout.contains("quorum_reads: ok") && stdout.contains("no_future_reads: ok"), "{stdout}");

    let bad = dir.path().join("bad.jsonl");
    let mut history = good_history();
    history.push(read("w3", "a", &["w1-1"], LQ, "n2", (200, 210)));
    history.push(read("w3", "a", &["zz"], LQ, "n2", (220, 230)));
    write_history(&bad, &history).unwrap();
    let out = Command::new(cli).args([bad.to_str().unwrap(), "--level", LQ]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("VIOLATION stale_read on key \"a\": #13 w3 read"), "{stdout}");
    assert!(stdout.contains("VIOLATION future_read on key \"a\": #14"), "{stdout}");
    // The future read is found by both checkers but printed once: 2 stale, 2 backwards, 1 future.
    assert!(stdout.contains("\n5 violations"), "{stdout}");
    let out = Command::new(cli).args([bad.to_str().unwrap(), "--max-violations", "1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("... and 4 more"));
    // At a level nothing was read at, only the future read remains.
    let out = Command::new(cli).args([bad.to_str().unwrap(), "--level", "quorum"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\n1 violations"));

    // Regions must cover every node.
    let out = Command::new(cli).args([good.to_str().unwrap(), "--region", "n1=eu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"n2\""));
    let regions = ["--region", "n1=eu", "--region", "n2=eu", "--region", "n3=eu"];
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
