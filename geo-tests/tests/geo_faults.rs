//! End to end across regions: three regions of real `meridian` processes behind emulated WAN links
//! (the [`Geo`] harness), under a mixed causal / `local_quorum` / `quorum` load, while a seeded
//! fault schedule partitions a region away, `kill -9`s a node, restarts another with its HLC clock
//! skewed and cuts one direction between two regions. Every operation goes to a JSON-lines history
//! (`target/geo-tests/geo_faults.jsonl`, overwritten each run; re-check it with `check-history`).
//!
//! * **CI scenario** ([`geo_faults_anytime_eventually_finally`]): 3 regions × 2 nodes, rf 2 per
//!   region, 20 ms ± 2 ms one way. Bounded: the whole run is hard-stopped after
//!   [`Scenario::deadline`] (every node killed, every link closed), normally it takes about a
//!   minute.
//! * **Soak** ([`soak_geo_faults_anytime_eventually_finally`]): only with `MERIDIAN_SOAK=1` (it
//!   returns at once, saying so, without): 3 regions × 3 nodes, rf 2, 40 ms one way (80 ms round
//!   trip), longer load and three fault rounds; history in `target/geo-tests/geo_faults_soak.jsonl`.
//!   Run it alone: `MERIDIAN_SOAK=1 cargo test -p meridian-geo-tests --test geo_faults soak`.
//!
//! The load: per region two workers, plus one *travelling* session that moves to the next region
//! every few operations carrying its causal token. Each operation picks a set add (a unique
//! element) or a set read at `causal`, `local_quorum` or `quorum`, or a counter incr or read at one
//! of those levels, over 8 set keys and 2 counter keys, so that operations interact. Every worker
//! is one causal session: its token goes with each of its operations, whichever node and region
//! serves them, and a request that fails for want of a connection is tried on another node of the
//! same region (each attempt is its own event).
//!
//! The claims, by when they must hold:
//!
//! * **anytime** (every operation, whatever the faults): causal reads contain their whole causal
//!   past, across keys and regions (`anytime_causal_order`, levels `["causal"]`); causal sessions
//!   read their writes and read monotonically (`anytime_session_guarantees`, `["causal"]`);
//!   `quorum` reads see every earlier acknowledged `quorum` add and `local_quorum` reads every
//!   earlier acknowledged `local_quorum` add of their region, and never go backwards
//!   (`anytime_quorum_visibility`); no read returns an element nobody had started to add
//!   (`anytime_no_future_reads`); counter reads lie between what must be visible to them and
//!   everything started (`anytime_counter_within_bounds`). A request may fail
//!   (`quorum_unavailable`, `causal_timeout`, `timeout`, …); only what succeeded is judged.
//! * **eventually** (once the faults end and the load stops, within [`Scenario::converge_timeout`]):
//!   every replica of every key in every region holds the same state (`eventually_converged`, for
//!   the sets and the counters).
//! * **finally** (in that converged state): no acknowledged add is missing from any replica and no
//!   replica holds an element nobody added (`finally_no_lost_writes`), and every replica's counter
//!   lies between the sum of the acknowledged incrs and the sum of all incrs started.
//!
//! The test also fails if the faults did not happen: the partitions must have dropped packets, the
//! killed and the skewed node must run under new pids, some requests must have failed during the
//! partition, some request to the killed node must have failed while it was down, and the skewed
//! node must stamp its writes ahead of the wall clock.
//!
//! **A rolling upgrade across regions.** With `MERIDIAN_PREVIOUS_BIN` naming a previous release's
//! `meridian` (`scripts/previous-release.sh` builds one; `make upgrade-test`), the cluster is
//! written and started by that binary, and the killed and the skewed node — drawn from different
//! regions — come back on this build: the CI scenario ends with one node of this release in each of
//! two regions beside four of the previous one, judged by the same checkers.
//!
//! `MERIDIAN_GEO_SEED=N` repeats the workload's and the schedule's choices (which region, which
//! nodes, keys, levels, pauses, link jitter); the timing of the faults against the operations is
//! the machine's. `MERIDIAN_GEO_KEEP=1` keeps the cluster directory (configs, node logs, data),
//! which is always kept when the test fails.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meridian_client::proto::CausalToken;
use meridian_client::{Client, Consistency, Error};
use meridian_geo_tests::check::{
    anytime_causal_order, anytime_counter_within_bounds, anytime_no_future_reads, anytime_quorum_visibility,
    anytime_session_guarantees, eventually_converged, finally_no_lost_writes,
};
use meridian_geo_tests::geo::{Geo, GeoSpec, GeoState};
use meridian_geo_tests::history::{OP_ADD, OP_INCR, OP_READ, OP_READ_COUNTER, RESULT_OK};
use meridian_geo_tests::region::{self, error_result, is_connection_error, KeepOnFailure};
use meridian_geo_tests::{read_history, Event, HistoryWriter, Summary, Violation};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

/// The levels the workload uses, for every kind of operation.
const LEVELS: [Consistency; 3] = [Consistency::Causal, Consistency::LocalQuorum, Consistency::Quorum];
const SET_KEYS: usize = 8;
const COUNTER_KEYS: usize = 2;
/// Results that show a request could not be served because of a fault.
const FAULT_RESULTS: [&str; 5] = ["quorum_unavailable", "causal_timeout", "timeout", "connect", "transport"];

/// One run's shape and fault schedule.
#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    spec: GeoSpec,
    workers_per_region: usize,
    /// The travelling session moves to the next region after this many operations.
    travel_every: usize,
    /// A bound on each worker's operations; the schedule, not this, normally ends the load.
    max_ops_per_worker: usize,
    warm_up: Duration,
    /// Fault rounds, each: isolate a region, heal, kill -9 a node and restart it, restart another
    /// with a skewed clock, cut one direction between two regions, heal.
    rounds: usize,
    partition_for: Duration,
    kill_down: Duration,
    skew_ms: i64,
    one_way_for: Duration,
    /// Load between faults.
    settle: Duration,
    cool_down: Duration,
    form_timeout: Duration,
    converge_timeout: Duration,
    /// Everything (start, load, faults, convergence, checks, stop) is hard-stopped after this.
    deadline: Duration,
}

impl Scenario {
    fn ci() -> Scenario {
        Scenario {
            name: "geo_faults",
            spec: GeoSpec {
                regions: ["us-east", "eu-west", "ap-south"].map(String::from).to_vec(),
                nodes_per_region: 2,
                rf: 2,
                one_way_ms: 20,
                jitter_ms: 2,
                durability: "fsync".into(),
                seed: 0,
                node_env: Vec::new(),
            },
            workers_per_region: 2,
            travel_every: 4,
            max_ops_per_worker: 2_000,
            warm_up: Duration::from_secs(5),
            rounds: 1,
            partition_for: Duration::from_secs(6),
            kill_down: Duration::from_secs(3),
            skew_ms: 1_500,
            one_way_for: Duration::from_secs(3),
            settle: Duration::from_secs(2),
            cool_down: Duration::from_secs(3),
            form_timeout: Duration::from_secs(60),
            converge_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(300),
        }
    }

    fn soak() -> Scenario {
        Scenario {
            name: "geo_faults_soak",
            spec: GeoSpec { nodes_per_region: 3, rf: 2, one_way_ms: 40, jitter_ms: 4, ..Scenario::ci().spec },
            workers_per_region: 2,
            travel_every: 5,
            max_ops_per_worker: 20_000,
            warm_up: Duration::from_secs(15),
            rounds: 3,
            partition_for: Duration::from_secs(12),
            kill_down: Duration::from_secs(8),
            skew_ms: 1_500,
            one_way_for: Duration::from_secs(8),
            settle: Duration::from_secs(6),
            cool_down: Duration::from_secs(10),
            form_timeout: Duration::from_secs(90),
            converge_timeout: Duration::from_secs(120),
            deadline: Duration::from_secs(1_200),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_faults_anytime_eventually_finally() {
    run(Scenario::ci()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_geo_faults_anytime_eventually_finally() {
    if std::env::var_os("MERIDIAN_SOAK").is_none_or(|v| v != "1") {
        println!("skipped: the soak runs only with MERIDIAN_SOAK=1 (3 regions × 3 nodes, 80 ms RTT, 3 fault rounds)");
        return;
    }
    run(Scenario::soak()).await;
}

async fn run(mut scenario: Scenario) {
    let seed: u64 = match std::env::var("MERIDIAN_GEO_SEED") {
        Ok(seed) => seed.parse().expect("MERIDIAN_GEO_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    scenario.spec.seed = seed;
    println!("{}: seed {seed} (MERIDIAN_GEO_SEED={seed} repeats the choices)", scenario.name);
    let tmp = KeepOnFailure::new("geo-faults-");
    let dir = tmp.path().join("cluster");
    let deadline = scenario.deadline;
    // Dropping the scenario's future on timeout drops the harness, which kills every node and
    // closes every link.
    match tokio::time::timeout(deadline, scenario_run(&scenario, &dir, seed)).await {
        Ok(()) => {}
        Err(_) => panic!(
            "{} did not finish within its {} s bound (seed {seed}); every node was killed; logs in {}",
            scenario.name,
            deadline.as_secs(),
            dir.display()
        ),
    }
}

/// One injected fault, in history time.
struct Fault {
    what: String,
    from_us: u64,
    to_us: u64,
    kind: FaultKind,
}

enum FaultKind {
    Partition { region: String, dropped: u64 },
    Kill { node: String, old_pid: u32, new_pid: u32, signal: Option<i32> },
    Skew { node: String, old_pid: u32, new_pid: u32, skew_ms: i64, ahead_ms: Option<i64> },
    OneWay { from: String, to: String, dropped: u64 },
}

async fn scenario_run(scenario: &Scenario, dir: &Path, seed: u64) {
    let began = Instant::now();
    let at = || format!("[{:>6.1}s]", began.elapsed().as_secs_f64());
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);

    let previous = region::previous_bin();
    let mut geo = match &previous {
        Some(bin) => {
            println!(
                "rolling upgrade: the cluster starts on {}; the killed and the skewed node come back on this build",
                bin.display()
            );
            Geo::init_with(dir, &scenario.spec, bin.clone()).await.expect("meridian demo init (previous release)")
        }
        None => Geo::init(dir, &scenario.spec).await.expect("meridian demo init"),
    };
    let regions = geo.regions();
    println!(
        "{} cluster in {}: {} regions × {} nodes, rf {}, {} ms ± {} ms one way, {} links",
        at(),
        geo.dir().display(),
        regions.len(),
        scenario.spec.nodes_per_region,
        scenario.spec.rf,
        scenario.spec.one_way_ms,
        scenario.spec.jitter_ms,
        geo.plan().links.len()
    );
    geo.start_all(scenario.form_timeout).await.expect("every node starts and sees every member alive");
    println!("{} every node ready and sees all {} members alive", at(), geo.node_names().len());

    let history_path = history_path(scenario.name);
    let history = HistoryWriter::create(&history_path).expect("history file");
    println!("history: {}", history_path.display());
    let set_keys: Vec<String> = (0..SET_KEYS).map(|k| format!("geo/s{k}")).collect();
    let counter_keys: Vec<String> = (0..COUNTER_KEYS).map(|k| format!("geo/c{k}")).collect();

    // The fault schedule, drawn up front and printed.
    let all_nodes = geo.node_names();
    let mut schedule = Vec::new();
    for _ in 0..scenario.rounds {
        let isolated = regions.choose(&mut rng).unwrap().clone();
        let killed = all_nodes.choose(&mut rng).unwrap().clone();
        // In an upgrade run the two restarted nodes are in different regions, so the release mix
        // spans regions.
        let others: Vec<&String> = all_nodes
            .iter()
            .filter(|n| **n != killed && (previous.is_none() || geo.region_of(n) != geo.region_of(&killed)))
            .collect();
        let skewed = (*others.choose(&mut rng).expect("an upgrade run needs at least two regions")).clone();
        let from = regions.choose(&mut rng).unwrap().clone();
        let to_choices: Vec<&String> = regions.iter().filter(|r| **r != from).collect();
        let to = (*to_choices.choose(&mut rng).unwrap()).clone();
        schedule.push((isolated, killed, skewed, from, to));
    }
    println!("schedule: warm-up {:.0} s, then per round:", scenario.warm_up.as_secs_f64());
    for (round, (isolated, killed, skewed, from, to)) in schedule.iter().enumerate() {
        println!(
            "  round {}: isolate {isolated} {:.0} s; kill -9 {killed}, down {:.0} s; restart {skewed} with clock \
             offset +{} ms; one-way {from} -> {to} cut {:.0} s; {:.0} s of load between faults",
            round + 1,
            scenario.partition_for.as_secs_f64(),
            scenario.kill_down.as_secs_f64(),
            scenario.skew_ms,
            scenario.one_way_for.as_secs_f64(),
            scenario.settle.as_secs_f64()
        );
    }

    // The load.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let mut all_clients: Vec<(String, Vec<(String, Client)>)> = Vec::new();
    for region in &regions {
        all_clients.push((region.clone(), geo.region_clients(region).await.expect("clients")));
    }
    for (r, region) in regions.iter().enumerate() {
        for w in 1..=scenario.workers_per_region {
            let clients = vec![all_clients[r].clone()];
            let worker = Worker {
                process: format!("{region}-w{w}"),
                regions: clients,
                travel_every: None,
                set_keys: set_keys.clone(),
                counter_keys: counter_keys.clone(),
                history: history.clone(),
                stop: stop.clone(),
                rng: StdRng::seed_from_u64(seed.wrapping_add((r * 16 + w) as u64)),
                max_ops: scenario.max_ops_per_worker,
            };
            workers.push(tokio::spawn(worker.run()));
        }
    }
    let traveller = Worker {
        process: "traveller".into(),
        regions: all_clients.clone(),
        travel_every: Some(scenario.travel_every),
        set_keys: set_keys.clone(),
        counter_keys: counter_keys.clone(),
        history: history.clone(),
        stop: stop.clone(),
        rng: StdRng::seed_from_u64(seed.wrapping_add(999)),
        max_ops: scenario.max_ops_per_worker,
    };
    workers.push(tokio::spawn(traveller.run()));
    println!("{} load started: {} workers", at(), workers.len());

    // The faults, while the load runs.
    tokio::time::sleep(scenario.warm_up).await;
    let mut faults: Vec<Fault> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for (round, (isolated, killed, skewed, from, to)) in schedule.iter().enumerate() {
        let round = round + 1;
        // 1. A region cut off from the other two.
        let others: Vec<&String> = regions.iter().filter(|r| *r != isolated).collect();
        let dropped_before: u64 = others.iter().map(|o| geo.dropped_between(isolated, o)).sum();
        let from_us = history.now_us();
        geo.isolate(isolated);
        println!("{} round {round}: {isolated} isolated", at());
        tokio::time::sleep(scenario.partition_for).await;
        let dropped: u64 = others.iter().map(|o| geo.dropped_between(isolated, o)).sum::<u64>() - dropped_before;
        geo.heal();
        let to_us = history.now_us();
        println!("{} round {round}: healed ({dropped} datagrams dropped meanwhile)", at());
        faults.push(Fault {
            what: format!("round {round}: {isolated} isolated"),
            from_us,
            to_us,
            kind: FaultKind::Partition { region: isolated.clone(), dropped },
        });
        wait_alive(&geo, scenario, &mut problems, &at).await;
        tokio::time::sleep(scenario.settle).await;

        // 2. kill -9 and restart on the same data.
        let old_pid = geo.pid(killed).expect("the victim runs");
        let from_us = history.now_us();
        let status = geo.kill9(killed).await.expect("kill -9");
        println!("{} round {round}: kill -9 {killed} (pid {old_pid}): {status}", at());
        tokio::time::sleep(scenario.kill_down).await;
        if previous.is_some() {
            println!("{} round {round}: {killed} comes back on this build", at());
            geo.use_binary(killed, region::meridian_bin()).expect("a node of the cluster");
        }
        geo.restart(killed).await.expect("restart on the same data directory");
        let to_us = history.now_us();
        let new_pid = geo.pid(killed).expect("restarted");
        println!("{} round {round}: {killed} restarted (pid {new_pid}) and ready", at());
        faults.push(Fault {
            what: format!("round {round}: {killed} killed"),
            from_us,
            to_us,
            kind: FaultKind::Kill { node: killed.clone(), old_pid, new_pid, signal: status.signal() },
        });
        wait_alive(&geo, scenario, &mut problems, &at).await;
        tokio::time::sleep(scenario.settle).await;

        // 3. A node restarted with its HLC wall clock ahead.
        let old_pid = geo.pid(skewed).expect("the skewed node runs");
        if previous.is_some() {
            println!("{} round {round}: {skewed} comes back on this build", at());
            geo.use_binary(skewed, region::meridian_bin()).expect("a node of the cluster");
        }
        let from_us = history.now_us();
        geo.restart_with_clock_offset(skewed, scenario.skew_ms).await.expect("restart with a clock offset");
        let new_pid = geo.pid(skewed).expect("restarted");
        let ahead_ms = probe_skew(&geo, skewed, &set_keys, &history, round).await;
        let to_us = history.now_us();
        println!(
            "{} round {round}: {skewed} restarted (pid {new_pid}) with clock offset +{} ms; its writes are stamped \
             {} ms ahead of this clock",
            at(),
            scenario.skew_ms,
            ahead_ms.map_or("?".to_string(), |ms| ms.to_string())
        );
        faults.push(Fault {
            what: format!("round {round}: {skewed} skewed"),
            from_us,
            to_us,
            kind: FaultKind::Skew { node: skewed.clone(), old_pid, new_pid, skew_ms: scenario.skew_ms, ahead_ms },
        });
        wait_alive(&geo, scenario, &mut problems, &at).await;
        tokio::time::sleep(scenario.settle).await;

        // 4. One direction between two regions cut.
        let dropped_before = geo.dropped_between(from, to);
        let from_us = history.now_us();
        geo.partition_one_way(from, to);
        println!("{} round {round}: packets from {from} to {to} dropped", at());
        tokio::time::sleep(scenario.one_way_for).await;
        let dropped = geo.dropped_between(from, to) - dropped_before;
        geo.heal();
        let to_us = history.now_us();
        println!("{} round {round}: healed ({dropped} datagrams dropped meanwhile)", at());
        faults.push(Fault {
            what: format!("round {round}: {from} -> {to} cut"),
            from_us,
            to_us,
            kind: FaultKind::OneWay { from: from.clone(), to: to.clone(), dropped },
        });
        wait_alive(&geo, scenario, &mut problems, &at).await;
        tokio::time::sleep(scenario.settle).await;
    }
    tokio::time::sleep(scenario.cool_down).await;
    stop.store(true, Ordering::Relaxed);
    region::join_workers(workers).await;
    for (_, clients) in &all_clients {
        for (_, client) in clients {
            client.close().await;
        }
    }
    println!("{} load stopped", at());

    // Eventually: hints replayed and every replica of every key in every region equal.
    let quiet_deadline = Instant::now() + scenario.converge_timeout;
    if let Err(e) = geo.wait_no_hints(scenario.converge_timeout).await {
        problems.push(format!("hints were not all replayed: {e:#}"));
    }
    println!("{} hints replayed", at());
    let left = quiet_deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(10));
    let (state, converged) =
        geo.wait_converged(&set_keys, &counter_keys, left).await.expect("reading the replicas' states");
    if !converged {
        problems.push(format!(
            "the replicas of {:?} had not converged {} s after the load stopped",
            state.divergent_keys(),
            scenario.converge_timeout.as_secs()
        ));
    }
    println!("{} final state read from every replica in every region (converged: {converged})", at());

    // Judge the run from the history file as written.
    let events = read_history(&history_path).expect("the history reads back");
    print_op_counts(&events);
    let final_states = state.final_states(&events);
    let results: Vec<Result<Summary, Vec<Violation>>> = vec![
        finally_no_lost_writes(&events, &final_states),
        eventually_converged(&final_states),
        eventually_converged(&state.counter_final_states()),
        anytime_causal_order(&events, &["causal"]),
        anytime_session_guarantees(&events, &["causal"]),
        anytime_quorum_visibility(&events),
        anytime_counter_within_bounds(&events),
        anytime_no_future_reads(&events),
    ];
    let mut violations = Vec::new();
    for result in results {
        match result {
            Ok(summary) => println!("{summary}"),
            Err(found) => {
                let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
                for v in &found {
                    *kinds.entry(v.kind.name()).or_default() += 1;
                }
                println!("FAILED: {} violations {kinds:?}", found.len());
                violations.extend(found);
            }
        }
    }
    problems.extend(finally_counters_within_bounds(&events, &state));
    problems.extend(faults_happened(&events, &faults, &geo));
    for (op, level) in [(OP_ADD, "causal"), (OP_ADD, "local_quorum"), (OP_ADD, "quorum"), (OP_READ, "causal")] {
        if !events.iter().any(|e| e.op == op && e.consistency == level && e.is_ok()) {
            problems.push(format!("no {op} at {level} succeeded"));
        }
    }

    let stopped = geo.stop_all().await;
    for s in &stopped {
        if s.forced || !s.status.success() {
            println!(
                "note: {} stopped with {}{}; its log ends with:\n{}",
                s.name,
                s.status,
                if s.forced { " (killed after the grace)" } else { "" },
                geo.log_tail(&s.name, 20)
            );
        }
    }
    println!("{} cluster stopped; {:.1} s in all", at(), began.elapsed().as_secs_f64());

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
        for name in geo.node_names() {
            println!(
                "--- {name} ({}), last lines:\n{}",
                geo.log_path(&name).map(|p| p.display().to_string()).unwrap_or_default(),
                geo.log_tail(&name, 15)
            );
        }
        panic!(
            "{} violations, {} problems (seed {seed}); history kept at {} (check-history {} re-checks the \
             anytime claims)",
            violations.len(),
            problems.len(),
            history_path.display(),
            history_path.display()
        );
    }
}

/// After a fault: every node should see every member alive again before the next one.
async fn wait_alive(geo: &Geo, scenario: &Scenario, problems: &mut Vec<String>, at: &impl Fn() -> String) {
    match geo.wait_all_alive(scenario.form_timeout).await {
        Ok(()) => println!("{} every node sees every member alive", at()),
        Err(e) => problems.push(format!("the cluster did not recover: {e:#}")),
    }
}

/// Adds one element through the skewed node (recorded in the history, as process `skew-probe-R`)
/// and returns how far ahead of this machine's clock the node stamped it: the token entry of the
/// node's write, in ms, minus the wall clock when the answer arrived.
async fn probe_skew(geo: &Geo, node: &str, set_keys: &[String], history: &HistoryWriter, round: usize) -> Option<i64> {
    // A key the node is a replica of, so that it coordinates the write itself.
    let placements = geo.placements(set_keys).await.ok()?;
    let key = placements.iter().find(|(_, replicas)| replicas.iter().any(|r| r == node)).map(|(k, _)| k.clone())?;
    let report = geo.cluster_status(node).await.ok()?;
    let id = report.members.iter().find(|m| m.name == node)?.id;
    let client = geo.client(node).await.ok()?;
    let session = client.session();
    let element = format!("skew-probe-{round}");
    let start_us = history.now_us();
    let result = session.set(key.as_str()).add([element.as_str()]).await;
    let end_us = history.now_us();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    history
        .record(&Event {
            process: format!("skew-probe-{round}"),
            op: OP_ADD.into(),
            key: key.clone(),
            value: json!(element),
            consistency: Consistency::Causal.name().into(),
            node: node.to_string(),
            region: geo.region_of(node).map(str::to_string),
            start_us,
            end_us,
            result: result.as_ref().map_or_else(error_result, |_| RESULT_OK.to_string()),
        })
        .expect("recording an event");
    client.close().await;
    result.ok()?;
    let hlc = session.token().0.iter().find(|(n, _)| *n == id).map(|(_, hlc)| hlc)?;
    Some((hlc >> 16) as i64 - now_ms)
}

/// Finally: every replica's counter lies between the sum of the acknowledged incrs of its key and
/// the sum of all incrs started (a failed incr may or may not have been applied).
fn finally_counters_within_bounds(events: &[Event], state: &GeoState) -> Vec<String> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (key, replicas) in &state.counter_replicas {
        let incrs = events.iter().filter(|e| e.op == OP_INCR && &e.key == key);
        let (low, high) = incrs.fold((0i64, 0i64), |(low, high), e| {
            let amount = e.incr_amount().unwrap_or(0) as i64;
            (if e.is_ok() { low + amount } else { low }, high + amount)
        });
        for node in replicas {
            let value = state.counters.get(node).and_then(|c| c.get(key)).copied().unwrap_or(0);
            checked += 1;
            if value < low || value > high {
                problems.push(format!(
                    "counter {key} at replica {node} ended at {value}, outside [{low}, {high}] (acknowledged incrs, \
                     all incrs)"
                ));
            }
        }
    }
    if problems.is_empty() {
        println!("finally_counters_within_bounds: ok; {checked} replica values");
    }
    problems
}

/// Problems if a fault did not really happen, with a line per fault saying what it did.
fn faults_happened(events: &[Event], faults: &[Fault], geo: &Geo) -> Vec<String> {
    let mut problems = Vec::new();
    // The requests in flight at some point of the fault (a request sent before a kill fails too).
    let during = |f: &Fault| {
        let (from_us, to_us) = (f.from_us, f.to_us);
        events.iter().filter(move |e| e.start_us <= to_us && e.end_us >= from_us)
    };
    for fault in faults {
        let secs = (fault.to_us - fault.from_us) as f64 / 1e6;
        let mut by_result: BTreeMap<&str, u64> = BTreeMap::new();
        for e in during(fault).filter(|e| !e.is_ok()) {
            *by_result.entry(e.result.as_str()).or_default() += 1;
        }
        println!("{} ({secs:.1} s): requests in flight meanwhile that failed: {by_result:?}", fault.what);
        match &fault.kind {
            FaultKind::Partition { region, dropped } => {
                if *dropped == 0 {
                    problems.push(format!("{}: no datagram was dropped: the partition did nothing", fault.what));
                }
                let failed = during(fault).filter(|e| FAULT_RESULTS.contains(&e.result.as_str())).count();
                if failed == 0 {
                    problems.push(format!(
                        "{}: no request failed (quorum_unavailable, causal_timeout, timeout) while {region} was cut \
                         off: the partition went unnoticed",
                        fault.what
                    ));
                }
            }
            FaultKind::Kill { node, old_pid, new_pid, signal } => {
                if old_pid == new_pid {
                    problems.push(format!("{}: {node} runs under the same pid {new_pid}", fault.what));
                }
                if *signal != Some(9) {
                    problems.push(format!("{}: {node} did not die of SIGKILL ({signal:?})", fault.what));
                }
                let failed = during(fault).filter(|e| &e.node == node && !e.is_ok()).count();
                if failed == 0 {
                    problems.push(format!("{}: no request to {node} in flight while it was down failed", fault.what));
                }
            }
            FaultKind::Skew { node, old_pid, new_pid, skew_ms, ahead_ms } => {
                if old_pid == new_pid {
                    problems.push(format!("{}: {node} runs under the same pid {new_pid}", fault.what));
                }
                match ahead_ms {
                    Some(ms) if *ms >= *skew_ms / 2 => {}
                    Some(ms) => problems.push(format!(
                        "{}: {node} stamps writes only {ms} ms ahead of the wall clock, not ~{skew_ms}: the clock \
                         offset did not apply",
                        fault.what
                    )),
                    None => problems.push(format!("{}: could not probe {node}'s clock", fault.what)),
                }
            }
            FaultKind::OneWay { from, to, dropped } => {
                if *dropped == 0 {
                    problems.push(format!("{}: no datagram from {from} to {to} was dropped", fault.what));
                }
            }
        }
    }
    let dropped = geo.dropped_total();
    println!("links: {dropped} datagrams dropped in all");
    problems
}

/// A client worker: one causal session, over the nodes of the regions it visits.
struct Worker {
    process: String,
    /// (region, its nodes' clients); a regional worker has one, the traveller all of them.
    regions: Vec<(String, Vec<(String, Client)>)>,
    /// Move to the next region after this many operations.
    travel_every: Option<usize>,
    set_keys: Vec<String>,
    counter_keys: Vec<String>,
    history: HistoryWriter,
    stop: Arc<AtomicBool>,
    rng: StdRng,
    max_ops: usize,
}

/// What one operation does.
#[derive(Clone, Copy)]
enum Op {
    Add,
    Read,
    Incr(u64),
    ReadCounter,
}

impl Worker {
    async fn run(mut self) {
        // The session's token: every reply's is merged in, and every request carries it, whichever
        // node or region serves it.
        let mut token = CausalToken::empty();
        let mut here = self.rng.random_range(0..self.regions.len());
        for n in 0..self.max_ops {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(every) = self.travel_every {
                if n > 0 && n % every == 0 {
                    here = (here + 1) % self.regions.len();
                }
            }
            let roll = self.rng.random_range(0..100);
            let op = match roll {
                0..40 => Op::Add,
                40..72 => Op::Read,
                72..86 => Op::Incr(self.rng.random_range(1..=5)),
                _ => Op::ReadCounter,
            };
            let level = *LEVELS.choose(&mut self.rng).unwrap();
            let key = match op {
                Op::Add | Op::Read => self.set_keys.choose(&mut self.rng).unwrap().clone(),
                Op::Incr(_) | Op::ReadCounter => self.counter_keys.choose(&mut self.rng).unwrap().clone(),
            };
            let element = format!("{}-{n}", self.process);
            let (region, nodes) = &self.regions[here];
            let mut tried: Vec<usize> = Vec::new();
            while tried.len() < nodes.len() {
                let untried: Vec<usize> = (0..nodes.len()).filter(|i| !tried.contains(i)).collect();
                let pick = *untried.choose(&mut self.rng).unwrap();
                tried.push(pick);
                let (node, client) = &nodes[pick];
                let session = client.session().with_consistency(level);
                session.merge_token(&token);
                let start_us = self.history.now_us();
                let (op_name, value, error) = execute(&session, op, &key, &element).await;
                let end_us = self.history.now_us();
                token.merge(&session.token());
                let event = Event {
                    process: self.process.clone(),
                    op: op_name.into(),
                    key: key.clone(),
                    value,
                    consistency: level.name().into(),
                    node: node.clone(),
                    region: Some(region.clone()),
                    start_us,
                    end_us,
                    result: error.as_ref().map_or(RESULT_OK.to_string(), error_result),
                };
                self.history.record(&event).expect("recording an event");
                match error {
                    Some(e) if is_connection_error(&e) => continue,
                    _ => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(20..80))).await;
        }
    }
}

/// Runs one operation through `session`; returns the history's op name, value and the error.
async fn execute(
    session: &meridian_client::Session,
    op: Op,
    key: &str,
    element: &str,
) -> (&'static str, serde_json::Value, Option<Error>) {
    match op {
        Op::Add => (OP_ADD, json!(element), session.set(key).add([element]).await.err()),
        Op::Read => match session.set(key).members().await {
            Ok(members) => {
                let members: Vec<String> =
                    members.into_iter().map(|m| String::from_utf8_lossy(&m).into_owned()).collect();
                (OP_READ, json!(members), None)
            }
            Err(e) => (OP_READ, serde_json::Value::Null, Some(e)),
        },
        Op::Incr(amount) => {
            let result = session.counter(key).incr(amount as i64).await;
            (OP_INCR, json!(amount), result.err())
        }
        Op::ReadCounter => match session.counter(key).get().await {
            Ok(value) => (OP_READ_COUNTER, json!(value), None),
            Err(e) => (OP_READ_COUNTER, serde_json::Value::Null, Some(e)),
        },
    }
}

/// `target/geo-tests/NAME.jsonl`, its directory created.
fn history_path(name: &str) -> PathBuf {
    let dir = region::target_dir().join("geo-tests");
    std::fs::create_dir_all(&dir).expect("creating target/geo-tests");
    dir.join(format!("{name}.jsonl"))
}

fn print_op_counts(events: &[Event]) {
    // op@level -> result -> count
    let mut counts: BTreeMap<String, BTreeMap<&str, u64>> = BTreeMap::new();
    let mut failures: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events {
        *counts.entry(format!("{}@{}", e.op, e.consistency)).or_default().entry(e.result.as_str()).or_default() += 1;
        if !e.is_ok() {
            *failures.entry(e.result.as_str()).or_default() += 1;
        }
    }
    println!("{} operations:", events.len());
    for (op, results) in counts {
        let results: Vec<String> = results.iter().map(|(r, n)| format!("{r}={n}")).collect();
        println!("  {op}: {}", results.join(" "));
    }
    println!("failures by kind: {failures:?}");
}
