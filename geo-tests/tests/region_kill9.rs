//! End to end with a region of five real `meridian` processes (rf 3, three zones, fsync): client
//! workers add unique elements to 20 set keys and read them back at `local_quorum` through random
//! nodes while `n2`, then `n4`, is `kill -9`ed mid-load and restarted on its data directory. Every
//! operation goes to a JSON-lines history (`target/geo-tests/region_kill9.jsonl`, overwritten each
//! run; re-check it with `check-history`). Once the region is whole and quiet again, each key is
//! read from each of its replicas at `eventual` (no coordinator in between) and the checkers judge:
//! no acknowledged add lost, no invented element, replicas converged, `local_quorum` reads see
//! every earlier acknowledged `local_quorum` add and never go backwards.
//!
//! `MERIDIAN_GEO_SEED=N` repeats the workload's choices (keys, levels, nodes, pauses); the timing of
//! the faults against the operations is the machine's.
//!
//! **A rolling upgrade under load.** With `MERIDIAN_PREVIOUS_BIN` naming a previous release's
//! `meridian` (`scripts/previous-release.sh REV` builds one), the region is written and started by
//! that binary, and each victim comes back on this build instead: the run ends with two nodes of
//! this release beside three of the previous one, judged by the same checkers (`make upgrade-test`).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_client::{Client, Consistency};
use meridian_geo_tests::check::{
    anytime_no_future_reads, anytime_quorum_visibility, eventually_converged, finally_no_lost_writes,
};
use meridian_geo_tests::history::{OP_ADD, OP_READ, RESULT_OK};
use meridian_geo_tests::region::{self, KeepOnFailure, Region, RegionSpec};
use meridian_geo_tests::{read_history, Event, HistoryWriter, Summary, Violation};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

const NODES: usize = 5;
const KEYS: usize = 20;
const WORKERS: usize = 6;
/// A bound on each worker's operations; the fault schedule, not this, normally ends the load.
const MAX_OPS_PER_WORKER: usize = 400;
/// Attempts per operation: a connection failure is retried on another node (each attempt is its
/// own event in the history).
const ATTEMPTS: usize = 3;
/// Load before the first fault, and after the last restart.
const WARM_UP: Duration = Duration::from_secs(8);
const COOL_DOWN: Duration = Duration::from_secs(4);
/// (node to kill, load before killing it, how long it stays down).
const FAULTS: [(usize, Duration, Duration); 2] =
    [(2, Duration::ZERO, Duration::from_secs(8)), (4, Duration::from_secs(4), Duration::from_secs(8))];
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Hints replayed and replicas converged, together.
const QUIET_TIMEOUT: Duration = Duration::from_secs(90);

/// One `kill -9` and restart, in history time.
struct Fault {
    name: String,
    killed_us: u64,
    back_us: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventually_region_survives_kill9_without_losing_acknowledged_writes() {
    let began = Instant::now();
    let seed: u64 = match std::env::var("MERIDIAN_GEO_SEED") {
        Ok(seed) => seed.parse().expect("MERIDIAN_GEO_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    println!("seed {seed} (MERIDIAN_GEO_SEED={seed} repeats the workload's choices)");

    let tmp = KeepOnFailure::new("region-kill9-");
    let dir = tmp.path().join("region");
    let spec = RegionSpec { nodes: NODES, rf: 3, zones: 3, durability: "fsync".into(), base_port: None };
    let previous = region::previous_bin();
    let mut region = match &previous {
        Some(bin) => {
            println!("rolling upgrade: the region starts on {}; each victim restarts on this build", bin.display());
            Region::init_with(&dir, &spec, bin.clone()).await.expect("meridian region init (previous release)")
        }
        None => Region::init(&dir, &spec).await.expect("meridian region init"),
    };
    println!("region in {} (client ports from {})", region.dir().display(), region.node(1).client_addr);
    region.start_all().await.expect("every node starts");
    region.wait_all_alive(FORM_TIMEOUT).await.expect("the region forms");
    println!("[{:>5.1}s] region formed: {NODES} nodes, every one sees all alive", began.elapsed().as_secs_f64());

    let history_path = history_path();
    let history = HistoryWriter::create(&history_path).expect("history file");
    println!("history: {}", history_path.display());
    let keys: Vec<String> = (0..KEYS).map(|k| format!("t/k{k}")).collect();
    let placements = region.placements(&keys).await.expect("every node places every key alike");
    let placed: Vec<String> =
        placements.iter().map(|(key, replicas)| format!("{key}={}", replicas.join(","))).collect();
    println!("placement: {}", placed.join(" "));

    // The workload: each worker with its own client of every node.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let mut clients = Vec::new();
        for i in 1..=NODES {
            clients.push((region.name(i).to_string(), region.client(i).await.expect("client")));
        }
        let (history, stop, keys) = (history.clone(), stop.clone(), keys.clone());
        let rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
        workers.push(tokio::spawn(worker(format!("w{}", w + 1), clients, keys, history, stop, rng)));
    }

    // The faults, while the load runs.
    tokio::time::sleep(WARM_UP).await;
    let mut faults = Vec::new();
    for (victim, before, down) in FAULTS {
        tokio::time::sleep(before).await;
        let name = region.name(victim).to_string();
        let pid = region.pid(victim).expect("the victim runs");
        let killed_us = history.now_us();
        let status = region.kill9(victim).await.expect("kill -9");
        assert_eq!(status.signal(), Some(9), "{name} (pid {pid}) should have died of SIGKILL, got {status}");
        println!("[{:>5.1}s] kill -9 {name} (pid {pid}): {status}", began.elapsed().as_secs_f64());
        tokio::time::sleep(down).await;
        if previous.is_some() {
            println!("[{:>5.1}s] {name} comes back on this build", began.elapsed().as_secs_f64());
            region.use_binary(victim, region::meridian_bin());
        }
        region.restart(victim).await.expect("restart on the same data directory");
        let back_us = history.now_us();
        println!("[{:>5.1}s] {name} restarted (pid {})", began.elapsed().as_secs_f64(), region.pid(victim).unwrap());
        region.wait_all_alive(FORM_TIMEOUT).await.expect("the restarted node rejoins");
        println!("[{:>5.1}s] {name} rejoined: every node sees all alive", began.elapsed().as_secs_f64());
        faults.push(Fault { name, killed_us, back_us });
    }
    tokio::time::sleep(COOL_DOWN).await;
    stop.store(true, Ordering::Relaxed);
    region::join_workers(workers).await;
    println!("[{:>5.1}s] load stopped", began.elapsed().as_secs_f64());

    // Quiet: hints replayed, replicas converged (read per replica, never through a coordinator).
    let quiet_deadline = Instant::now() + QUIET_TIMEOUT;
    let mut problems = Vec::new();
    if let Err(e) = region.wait_no_hints(QUIET_TIMEOUT).await {
        problems.push(format!("hints were not all replayed: {e:#}"));
    }
    println!("[{:>5.1}s] hints replayed", began.elapsed().as_secs_f64());
    let left = quiet_deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(10));
    let (state, converged) = region.wait_converged(&keys, left).await.expect("reading the replicas' states");
    if !converged {
        problems.push(format!(
            "the replicas of {:?} had not converged {} s after the load stopped",
            state.divergent_keys(),
            QUIET_TIMEOUT.as_secs()
        ));
    }
    println!("[{:>5.1}s] final state read from every replica (converged: {converged})", began.elapsed().as_secs_f64());

    // Judge the run from the history file as written (the format round-trips through the reader).
    let events = read_history(&history_path).expect("the history reads back");
    let final_states = state.final_states(&events);
    print_op_counts(&events);
    let results: Vec<Result<Summary, Vec<Violation>>> = vec![
        finally_no_lost_writes(&events, &final_states),
        eventually_converged(&final_states),
        anytime_quorum_visibility(&events),
        anytime_no_future_reads(&events),
    ];
    let mut violations = Vec::new();
    for result in results {
        match result {
            Ok(summary) => println!("{summary}"),
            Err(found) => violations.extend(found),
        }
    }

    // The faults really disturbed the load: requests sent to each victim while it was down failed.
    for fault in &faults {
        let failed = events
            .iter()
            .filter(|e| e.node == fault.name && !e.is_ok())
            .filter(|e| e.start_us >= fault.killed_us && e.start_us <= fault.back_us)
            .count();
        println!(
            "{} down {:.1} s: {failed} requests to it failed meanwhile",
            fault.name,
            secs(fault.back_us - fault.killed_us)
        );
        if failed == 0 {
            problems.push(format!("no request reached {} while it was down: the fault went unnoticed", fault.name));
        }
    }
    for (op, level) in [(OP_ADD, "local_quorum"), (OP_ADD, "eventual"), (OP_READ, "local_quorum")] {
        let ok = events.iter().filter(|e| e.op == op && e.consistency == level && e.is_ok()).count();
        if ok == 0 {
            problems.push(format!("no {op} at {level} succeeded"));
        }
    }

    let stopped = region.stop_all().await;
    for s in &stopped {
        if s.forced || !s.status.success() {
            let i = region.index_of(&s.name).expect("a node of the region");
            println!(
                "note: {} stopped with {}{}; its log ends with:\n{}",
                s.name,
                s.status,
                if s.forced { " (killed after the grace)" } else { "" },
                region.log_tail(i, 20)
            );
        }
    }
    println!("[{:>5.1}s] region stopped", began.elapsed().as_secs_f64());

    if !violations.is_empty() || !problems.is_empty() {
        for violation in violations.iter().take(50) {
            println!("VIOLATION {violation}");
        }
        if violations.len() > 50 {
            println!("... and {} more violations", violations.len() - 50);
        }
        for problem in &problems {
            println!("PROBLEM {problem}");
        }
        for i in 1..=NODES {
            println!(
                "--- {} ({}), last lines:\n{}",
                region.name(i),
                region.log_path(i).display(),
                region.log_tail(i, 15)
            );
        }
        panic!(
            "{} violations, {} problems (seed {seed}); history kept at {} (check-history {} re-checks the reads)",
            violations.len(),
            problems.len(),
            history_path.display(),
            history_path.display()
        );
    }
}

/// Adds and reads at random keys through random nodes until told to stop.
async fn worker(
    process: String,
    clients: Vec<(String, Client)>,
    keys: Vec<String>,
    history: HistoryWriter,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    for n in 0..MAX_OPS_PER_WORKER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = &keys[rng.random_range(0..keys.len())];
        // 65 % adds (four in five at local_quorum), 35 % local_quorum reads.
        let roll = rng.random_range(0..100);
        let add = (roll < 65).then_some(if roll < 52 { Consistency::LocalQuorum } else { Consistency::Eventual });
        let element = format!("{process}-{n}");
        let mut tried = Vec::new();
        for _ in 0..ATTEMPTS {
            let untried: Vec<usize> = (0..clients.len()).filter(|i| !tried.contains(i)).collect();
            let node = untried[rng.random_range(0..untried.len())];
            tried.push(node);
            let (name, client) = &clients[node];
            let set = client.set(key.as_str());
            let start_us = history.now_us();
            let (op, level, value, result) = match add {
                Some(level) => {
                    let result = set.consistency(level).add([element.as_str()]).await;
                    (OP_ADD, level, json!(element), result.err())
                }
                None => match set.consistency(Consistency::LocalQuorum).members().await {
                    Ok(members) => {
                        let members: Vec<String> =
                            members.into_iter().map(|m| String::from_utf8_lossy(&m).into_owned()).collect();
                        (OP_READ, Consistency::LocalQuorum, json!(members), None)
                    }
                    Err(e) => (OP_READ, Consistency::LocalQuorum, serde_json::Value::Null, Some(e)),
                },
            };
            let end_us = history.now_us();
            let event = Event {
                process: process.clone(),
                op: op.into(),
                key: key.clone(),
                value,
                consistency: level.name().into(),
                node: name.clone(),
                region: None,
                start_us,
                end_us,
                result: result.as_ref().map_or(RESULT_OK.to_string(), region::error_result),
            };
            history.record(&event).expect("recording an event");
            match result {
                Some(e) if region::is_connection_error(&e) => continue,
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..100))).await;
    }
}

/// `target/geo-tests/region_kill9.jsonl`, its directory created.
fn history_path() -> PathBuf {
    let dir = region::target_dir().join("geo-tests");
    std::fs::create_dir_all(&dir).expect("creating target/geo-tests");
    dir.join("region_kill9.jsonl")
}

fn print_op_counts(events: &[Event]) {
    // op@level -> result -> count
    let mut counts: BTreeMap<String, BTreeMap<&str, u64>> = BTreeMap::new();
    for e in events {
        *counts.entry(format!("{}@{}", e.op, e.consistency)).or_default().entry(e.result.as_str()).or_default() += 1;
    }
    println!("{} operations:", events.len());
    for (op, results) in counts {
        let results: Vec<String> = results.iter().map(|(r, n)| format!("{r}={n}")).collect();
        println!("  {op}: {}", results.join(" "));
    }
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}
