//! End to end with real `meridian` processes: placement changes under a quorum workload. A region
//! of three active nodes (rf 3, three zones) takes a fourth (`n4`, joining, then activated), then
//! drains and removes `n1`, while client workers add unique elements to set keys and read them
//! back at `local_quorum` through every serving node. Every operation goes to a JSON-lines history
//! (`target/geo-tests/region_moves.jsonl`) judged by the quorum-visibility checker: a
//! `local_quorum` read sees every `local_quorum` add acknowledged before it began.
//!
//! **The fault that makes a move dangerous.** Before each change one old replica is frozen
//! (`SIGSTOP`) while writes continue, so they are acknowledged by the other two old replicas only;
//! hints are off (`max_hints_per_node = 0`) and anti-entropy slow (`sync_interval_ms = 4000`), so
//! the frozen replica stays behind for a while after it resumes; `n4` joins only after that, so
//! it must catch those writes up from the old replicas. Right after the change, a majority
//! of the *new* replicas can be exactly the empty newcomer and the stale replica. With the pending
//! sets (the default) quorums count old and new replicas together until the move is confirmed, and
//! activation and removal wait for the copies; no read is stale.
//!
//! **Negative control** (run by hand, `-- --ignored`): the same run with `peer.pending_replicas =
//! false`, where moves are instant, must find stale reads.
//!
//! `MERIDIAN_GEO_SEED=N` repeats the workload's choices; the timing is the machine's.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_client::{Client, ClusterOp, Consistency, ErrorCode};
use meridian_geo_tests::check::anytime_quorum_visibility;
use meridian_geo_tests::history::{OP_ADD, OP_READ, RESULT_OK};
use meridian_geo_tests::region::{self, KeepOnFailure, Region, RegionSpec};
use meridian_geo_tests::{read_history, Event, HistoryWriter, Violation};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

const NODES: usize = 4;
const KEYS: usize = 24;
const WORKERS: usize = 3;
/// A bound on each worker's operations; the schedule, not this, normally ends the load.
const MAX_OPS_PER_WORKER: usize = 2_000;
/// How long a replica stays frozen while writes go on without it.
const FROZEN: Duration = Duration::from_secs(5);
/// Anti-entropy interval: long enough that a replica that missed writes stays behind for a while.
const SYNC_INTERVAL_MS: u64 = 4_000;
/// Bound on waiting for a move to be confirmed (activation, removal), or for the region to form.
const MOVE_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventually_nodes_join_and_drain_under_load_without_a_stale_quorum_read() {
    let run = run_moves(true, "region_moves").await;
    if !run.violations.is_empty() {
        for violation in run.violations.iter().take(30) {
            println!("VIOLATION {violation}");
        }
        panic!("{} stale or inconsistent quorum reads during the moves (seed {})", run.violations.len(), run.seed);
    }
}

/// The negative control: instant moves (`peer.pending_replicas = false`) serve stale quorum reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "negative control, run by hand: instant moves must be caught serving stale reads"]
async fn negative_control_instant_moves_serve_stale_quorum_reads() {
    let run = run_moves(false, "region_moves_instant").await;
    for violation in run.violations.iter().take(5) {
        println!("caught: {violation}");
    }
    assert!(!run.violations.is_empty(), "instant moves went unnoticed (seed {}): the fault did not bite", run.seed);
}

struct Run {
    seed: u64,
    violations: Vec<Violation>,
}

/// Which nodes the workers may send requests to (a frozen node would hold them until the timeout).
type Serving = Arc<Mutex<[bool; NODES]>>;

/// A client of each node, once it runs.
type Clients = Arc<Mutex<Vec<Option<(String, Client)>>>>;

fn client_of(clients: &Clients, i: usize) -> Client {
    clients.lock().unwrap()[i - 1].as_ref().expect("a client of a running node").1.clone()
}

/// The nodes requests may go to now, with their clients.
fn serving_clients(clients: &Clients, serving: &Serving) -> Vec<(String, Client)> {
    let serving = *serving.lock().unwrap();
    let clients = clients.lock().unwrap();
    (0..NODES).filter(|i| serving[*i]).filter_map(|i| clients[i].clone()).collect()
}

async fn run_moves(pending: bool, history_name: &str) -> Run {
    let began = Instant::now();
    let at = || format!("[{:>5.1}s]", began.elapsed().as_secs_f64());
    let seed: u64 = match std::env::var("MERIDIAN_GEO_SEED") {
        Ok(seed) => seed.parse().expect("MERIDIAN_GEO_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    println!("seed {seed}; pending replicas {}", if pending { "on" } else { "OFF (instant moves)" });

    let tmp = KeepOnFailure::new("region-moves-");
    let dir = tmp.path().join("region");
    let spec = RegionSpec { nodes: NODES, rf: 3, zones: 3, durability: "relaxed".into(), base_port: None };
    let mut region = Region::init(&dir, &spec).await.expect("meridian region init");
    for i in 1..=NODES {
        let config = &region.node(i).config;
        set_option(config, "sync_interval_ms", &SYNC_INTERVAL_MS.to_string());
        set_option(config, "max_hints_per_node", "0");
        set_option(config, "pending_replicas", &pending.to_string());
        set_option(config, "auto_activate", if i == NODES { "false" } else { "true" });
    }
    let zones: Vec<String> = (1..=NODES).map(|i| format!("{}@{}", region.name(i), region.node(i).zone)).collect();
    println!("nodes {}", zones.join(" "));
    for i in 1..NODES {
        region.start_node(i).await.expect("a node starts");
    }
    wait_states(&region, 1, &[("n1", "active"), ("n2", "active"), ("n3", "active")]).await;
    println!("{} region formed", at());

    let path = region::target_dir().join("geo-tests");
    std::fs::create_dir_all(&path).expect("creating target/geo-tests");
    let path = path.join(format!("{history_name}.jsonl"));
    let history = HistoryWriter::create(&path).expect("history file");
    let keys: Vec<String> = (0..KEYS).map(|k| format!("m/k{k}")).collect();
    let clients: Clients = Arc::new(Mutex::new(vec![None; NODES]));
    for i in 1..NODES {
        clients.lock().unwrap()[i - 1] = Some((region.name(i).to_string(), region.client(i).await.expect("client")));
    }
    let serving: Serving = Arc::new(Mutex::new([true, true, true, false]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (clients, keys, history, stop, serving) =
            (clients.clone(), keys.clone(), history.clone(), stop.clone(), serving.clone());
        let rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
        workers.push(tokio::spawn(worker(format!("w{}", w + 1), clients, keys, history, stop, serving, rng)));
    }
    let reader = Reader { clients: clients.clone(), keys: keys.clone(), history: history.clone() };
    let mut frozen_windows = Vec::new();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Phase 1: n2 misses writes, acknowledged by n1 and n3 only; then n4 joins (it must catch up
    // those writes from the old replicas) and is activated.
    frozen_windows.push(freeze(&region, 2, &serving, &history).await);
    println!("{} n2 frozen for {} s while the load ran, resumed", at(), FROZEN.as_secs());
    region.start_node(NODES).await.expect("n4 starts");
    wait_states(&region, 1, &[("n4", "joining")]).await;
    clients.lock().unwrap()[NODES - 1] = Some(("n4".into(), region.client(NODES).await.expect("client")));
    println!("{} n4 joining", at());
    let waited = end_move(&client_of(&clients, 1), ClusterOp::Activate { node: "n4".into() }).await;
    println!("{} n4 activated ({} refusals while it caught up)", at(), waited);
    serving.lock().unwrap()[3] = true;
    reader.read_all("after-activate", &serving).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Phase 2: n3 misses writes; then n1 is drained and removed.
    frozen_windows.push(freeze(&region, 3, &serving, &history).await);
    println!("{} n3 frozen for {} s while the load ran, resumed", at(), FROZEN.as_secs());
    client_of(&clients, 2).cluster(ClusterOp::Drain { node: "n1".into() }).await.expect("drain n1");
    println!("{} n1 draining", at());
    reader.read_all("after-drain", &serving).await;
    let waited = end_move(&client_of(&clients, 2), ClusterOp::Remove { node: "n1".into() }).await;
    println!("{} n1 removed ({} refusals while its partitions were copied)", at(), waited);
    serving.lock().unwrap()[0] = false;
    reader.read_all("after-remove", &serving).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, Ordering::Relaxed);
    region::join_workers(workers).await;
    // Final reads: every acknowledged add must be there, through every remaining node.
    reader.read_all("final", &serving).await;
    println!("{} load stopped", at());
    let stopped = region.stop_all().await;
    for s in stopped.iter().filter(|s| s.forced || !s.status.success()) {
        println!("note: {} stopped with {}", s.name, s.status);
    }

    let events = read_history(&path).expect("the history reads back");
    let count = |op: &str, ok: bool| events.iter().filter(|e| e.op == op && e.is_ok() == ok).count();
    println!(
        "{} events: adds {} ok / {} failed, reads {} ok / {} failed",
        events.len(),
        count(OP_ADD, true),
        count(OP_ADD, false),
        count(OP_READ, true),
        count(OP_READ, false)
    );
    // The fault really happened: writes were acknowledged while each victim was frozen.
    for (victim, from, to) in &frozen_windows {
        let acked = events.iter().filter(|e| e.op == OP_ADD && e.is_ok() && e.start_us >= *from && e.end_us <= *to);
        let acked = acked.count();
        println!("{victim} frozen: {acked} adds acknowledged without it");
        assert!(acked > 0, "no add was acknowledged while {victim} was frozen: the fault went unexercised");
    }
    let violations = match anytime_quorum_visibility(&events) {
        Ok(summary) => {
            println!("{summary}");
            Vec::new()
        }
        Err(found) => found,
    };
    println!("history: {} ({} violations)", path.display(), violations.len());
    Run { seed, violations }
}

/// Sets `key = value` in a node's configuration file (every key is written by `region init`, each
/// on its own line; `pending_replicas` may be new to the file, so it is added under `[peer]`).
fn set_option(config: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(config).expect("reading a node's configuration");
    let prefix = format!("{key} = ");
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with(&prefix) {
                found = true;
                format!("{key} = {value}")
            } else {
                line.to_string()
            }
        })
        .collect();
    if !found {
        let peer = lines.iter().position(|l| l.trim() == "[peer]").expect("a [peer] section");
        lines.insert(peer + 1, format!("{key} = {value}"));
    }
    std::fs::write(config, lines.join("\n") + "\n").expect("writing a node's configuration");
}

/// Waits until node `i` reports each `(name, state)`.
async fn wait_states(region: &Region, i: usize, want: &[(&str, &str)]) {
    let deadline = Instant::now() + MOVE_TIMEOUT;
    loop {
        if let Ok(report) = region.cluster_status(i).await {
            let ok = want.iter().all(|(name, state)| {
                report.members.iter().any(|m| m.name == *name && m.state == *state && m.liveness != "dead")
            });
            if ok {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{} never saw {want:?}", region.name(i));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Freezes node `i` (`SIGSTOP`) for [`FROZEN`] while the workers keep writing through the others,
/// then resumes it. Returns the frozen window in history time.
async fn freeze(region: &Region, i: usize, serving: &Serving, history: &HistoryWriter) -> (String, u64, u64) {
    let pid = region.pid(i).expect("the node runs").to_string();
    serving.lock().unwrap()[i - 1] = false;
    // Requests already sent to it finish first (a frozen node would hold them to the timeout).
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&pid, "-STOP");
    let from = history.now_us();
    tokio::time::sleep(FROZEN).await;
    let to = history.now_us();
    signal(&pid, "-CONT");
    serving.lock().unwrap()[i - 1] = true;
    (region.name(i).to_string(), from, to)
}

fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill").args([signal, pid]).status().expect("running kill");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// Runs a cluster operation that ends a move, retrying while the node refuses it because the move
/// is not confirmed yet (`quorum_unavailable`; any other error fails the test). Returns how many
/// times it was refused.
async fn end_move(client: &Client, op: ClusterOp) -> usize {
    let deadline = Instant::now() + MOVE_TIMEOUT;
    let mut refused = 0;
    loop {
        match client.cluster(op.clone()).await {
            Ok(_) => return refused,
            Err(e) if e.code() == Some(ErrorCode::QuorumUnavailable) && Instant::now() < deadline => {
                if refused == 0 {
                    println!("  {op:?} refused for now: {e}");
                }
                refused += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{op:?} still refused after {} s: {e}", MOVE_TIMEOUT.as_secs()),
        }
    }
}

/// Reads every key at `local_quorum` through every serving node, into the history.
struct Reader {
    clients: Clients,
    keys: Vec<String>,
    history: HistoryWriter,
}

impl Reader {
    async fn read_all(&self, process: &str, serving: &Serving) {
        let up = serving_clients(&self.clients, serving);
        for key in &self.keys {
            for (name, client) in &up {
                read(process, name, client, key, &self.history).await;
            }
        }
    }
}

async fn read(process: &str, node: &str, client: &Client, key: &str, history: &HistoryWriter) {
    let start_us = history.now_us();
    let result = client.set(key).consistency(Consistency::LocalQuorum).members().await;
    let end_us = history.now_us();
    let (value, result) = match result {
        Ok(members) => {
            let members: Vec<String> = members.into_iter().map(|m| String::from_utf8_lossy(&m).into_owned()).collect();
            (json!(members), RESULT_OK.to_string())
        }
        Err(e) => (serde_json::Value::Null, region::error_result(&e)),
    };
    let event = Event {
        process: process.into(),
        op: OP_READ.into(),
        key: key.into(),
        value,
        consistency: Consistency::LocalQuorum.name().into(),
        node: node.into(),
        region: None,
        start_us,
        end_us,
        result,
    };
    history.record(&event).expect("recording an event");
}

/// Adds unique elements to random keys, and reads them, at `local_quorum` through random serving
/// nodes until told to stop.
async fn worker(
    process: String,
    clients: Clients,
    keys: Vec<String>,
    history: HistoryWriter,
    stop: Arc<AtomicBool>,
    serving: Serving,
    mut rng: StdRng,
) {
    for n in 0..MAX_OPS_PER_WORKER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let up = serving_clients(&clients, &serving);
        let (name, client) = &up[rng.random_range(0..up.len())];
        let key = &keys[rng.random_range(0..keys.len())];
        if rng.random_range(0..100) < 60 {
            let element = format!("{process}-{n}");
            let start_us = history.now_us();
            let result = client.set(key.as_str()).consistency(Consistency::LocalQuorum).add([element.as_str()]).await;
            let end_us = history.now_us();
            let event = Event {
                process: process.clone(),
                op: OP_ADD.into(),
                key: key.clone(),
                value: json!(element),
                consistency: Consistency::LocalQuorum.name().into(),
                node: name.clone(),
                region: None,
                start_us,
                end_us,
                result: result.as_ref().err().map_or(RESULT_OK.to_string(), region::error_result),
            };
            history.record(&event).expect("recording an event");
        } else {
            read(&process, name, client, key, &history).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..40))).await;
    }
}
