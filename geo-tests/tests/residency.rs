//! Data residency end to end, with real `meridian` processes behind emulated WAN links (the
//! [`Geo`] harness): placement rules keep a key's bytes in the regions its rule allows, whatever
//! region a client writes from and whatever faults happen meanwhile.
//!
//! * [`residency_rules_keep_bytes_in_their_regions`] — 3 regions × 2 nodes, rf 2. Rules (namespace
//!   `res`): A `eu/` → {eu-west, us-east} (home eu-west), B `one/` → {eu-west}, C `narrow/` →
//!   {us-east, ap-south}, narrowed later to {us-east}, D `widen/` → {ap-south}, widened later to
//!   {ap-south, eu-west}; `free/` matches no rule (every region). One writer per region adds unique
//!   markers to keys under every prefix (set adds at `local_quorum`; requests for keys the region
//!   may not hold are proxied by the node), while a region is isolated for a few seconds and a node
//!   is `kill -9`ed and restarted. (In [`residency_holds_with_truncated_logs`] logs are kept for
//!   1 s, so replicas that missed records catch up by the digest fallback.) Then C is narrowed and D widened, the writers go on a little, and
//!   the test waits for every node to hold the new rules with every purge/backfill complete. A
//!   strict rule E `strict/` → {us-east} is added and must refuse requests elsewhere. Then:
//!   1. every node of every (finally) allowed region holds the same state of every restricted key,
//!      with every acknowledged marker and nothing nobody wrote (a node of a disallowed region
//!      answers the same, proxied); `explain` agrees with the rules;
//!   2. `meridian residency audit --compact --json` exits 0 with no violation on every node;
//!   3. a raw byte scan of every node's data directory (after that compaction) finds no marker of a
//!      key its region may not hold under the final rules, nor the key's name (key names carry a
//!      random token too; the node's own `audit.log` is exempt from the name check) — for C that includes everything written
//!      while ap-south still held it, so the purge really erased the bytes — while it does find
//!      markers of keys the region holds (positive control: the markers are stored raw and the scan
//!      sees them);
//!   4. each node's `audit.log` is JSON lines naming the purges (ap-south) and proxied requests,
//!      and carries no marker.
//! * [`strict_rule_refuses_outside_its_regions`] — 2 regions × 1 node: a strict rule refuses a
//!   request arriving in another region (`residency_refused`, HTTP 403, the message names the
//!   rule), serves it in its own.
//! * [`invalid_rules_are_refused_and_change_nothing`] — 2 regions × 1 node: every invalid rule is
//!   refused with `bad_request` and a message naming the problem, through the SDK and the CLI, and
//!   the rules and their version are unchanged afterwards.
//!
//! The tests of this file run one at a time (they share 2 cores with a cluster each).
//! `MERIDIAN_GEO_SEED=N` repeats the end-to-end test's choices; `MERIDIAN_GEO_KEEP=1` keeps the
//! cluster directory (always kept on failure). Build the binary first:
//! `cargo build -p meridian-node --bin meridian && cargo test -p meridian-geo-tests --test residency -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use meridian_client::{Client, Consistency, Error, ErrorCode, Key, ResidencyOp, ResidencyReport, RuleSpec};
use meridian_geo_tests::geo::{Geo, GeoSpec};
use meridian_geo_tests::region::{is_connection_error, KeepOnFailure};
use meridian_geo_tests::residency::{
    self as res, cli, cli_add_json, cli_add_text, cli_change_json, residency, rule, wait_changes_complete,
    wait_rules_agree, ExpectedChange,
};
use meridian_geo_tests::scan::{scan_dir_for_markers, MarkerFinder};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};

const NS: &str = "res";
const US: &str = "us-east";
const EU: &str = "eu-west";
const AP: &str = "ap-south";
const ALL: [&str; 3] = [US, EU, AP];
const KEYS_PER_PREFIX: usize = 3;
/// Bytes of a marker's random part (the part the raw scan looks for): random bytes, so that LZ4
/// keeps them whole on disk (see `res::marker`).
const TOKEN_LEN: usize = 20;
/// Bounds.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const RULES_TIMEOUT: Duration = Duration::from_secs(20);
const CHANGES_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(40);
const DEADLINE: Duration = Duration::from_secs(240);

/// The tests of this binary start a cluster each: one at a time. (An async mutex: each test's
/// runtime holds it across its awaits.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// One placement rule of the end-to-end scenario: where its keys may live at first and at the end.
struct Case {
    label: &'static str,
    prefix: &'static str,
    initial: &'static [&'static str],
    last: &'static [&'static str],
    home: Option<&'static str>,
}

const CASES: [Case; 4] = [
    Case { label: "A", prefix: "eu/", initial: &[EU, US], last: &[EU, US], home: Some(EU) },
    Case { label: "B", prefix: "one/", initial: &[EU], last: &[EU], home: None },
    // Narrowed to the region that stays: every acknowledged write must survive the narrowing.
    Case { label: "C", prefix: "narrow/", initial: &[US, AP], last: &[US], home: None },
    Case { label: "D", prefix: "widen/", initial: &[AP], last: &[AP, EU], home: None },
];
/// Keys under this prefix match no rule: every region holds them.
const FREE_PREFIX: &str = "free/";
const STRICT_PREFIX: &str = "strict/";

impl Case {
    fn spec(&self, regions: &[&str]) -> RuleSpec {
        let mut spec = rule(NS, self.prefix, regions);
        spec.home = self.home.map(str::to_string);
        spec
    }
}

/// The regions that may hold `key` (`res/<name>`) under the final rules.
fn final_regions(key: &str) -> BTreeSet<&'static str> {
    let name = key.strip_prefix("res/").unwrap_or(key);
    if name.starts_with(STRICT_PREFIX) {
        return BTreeSet::from([US]);
    }
    match CASES.iter().find(|c| name.starts_with(c.prefix)) {
        Some(case) => case.last.iter().copied().collect(),
        None => ALL.into_iter().collect(),
    }
}

fn case_of(key: &str) -> &'static str {
    let name = key.strip_prefix("res/").unwrap_or(key);
    if name.starts_with(STRICT_PREFIX) {
        return "E";
    }
    CASES.iter().find(|c| name.starts_with(c.prefix)).map_or("free", |c| c.label)
}

fn seed() -> u64 {
    match std::env::var("MERIDIAN_GEO_SEED") {
        Ok(seed) => seed.parse().expect("MERIDIAN_GEO_SEED must be a u64"),
        Err(_) => rand::random(),
    }
}

/// Runs `body` on a fresh cluster of `spec` in a temporary directory, bounded by `deadline`; on
/// failure prints every node's last log lines and panics with the error chain.
async fn with_cluster<F>(name: &str, spec: GeoSpec, deadline: Duration, body: F)
where
    F: for<'a> FnOnce(&'a mut Geo) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>>,
{
    let tmp = KeepOnFailure::new("residency-");
    let dir = tmp.path().join("cluster");
    let run = async {
        let mut geo = Geo::init(&dir, &spec).await.context("meridian demo init")?;
        geo.start_all(FORM_TIMEOUT).await.context("every node starts and sees every member alive")?;
        let result = body(&mut geo).await;
        if result.is_err() {
            for node in geo.node_names() {
                println!(
                    "--- {node} ({}), last lines:\n{}",
                    geo.log_path(&node).map(|p| p.display().to_string()).unwrap_or_default(),
                    geo.log_tail(&node, 15)
                );
            }
        }
        geo.stop_all().await;
        result
    };
    match tokio::time::timeout(deadline, run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{name} failed (cluster in {}): {e:#}", dir.display()),
        Err(_) => panic!(
            "{name} did not finish within its {} s bound; every node was killed; logs in {}",
            deadline.as_secs(),
            dir.display()
        ),
    }
}

// ------------------------------------------------------------------------------------------------
// The end-to-end scenario.
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_rules_keep_bytes_in_their_regions() {
    let _serial = serial().await;
    let seed = seed();
    println!("residency: seed {seed} (MERIDIAN_GEO_SEED={seed} repeats the choices)");
    let spec = GeoSpec { seed, ..GeoSpec::default() };
    assert_eq!(spec.regions, ALL.map(String::from).to_vec(), "the scenario names GeoSpec::default()'s regions");
    with_cluster("residency_rules_keep_bytes_in_their_regions", spec, DEADLINE, move |geo| {
        Box::pin(scenario(geo, seed, false))
    })
    .await;
}

/// The same with logs kept for 1 s only: the isolated region, and any replica a push missed for
/// longer, comes back through the digest fallback, which must run, keep restricted keys in their
/// regions, and leave every allowed replica with every acknowledged write
/// (`docs/design/replication.md`, "Log truncation").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_holds_with_truncated_logs() {
    let _serial = serial().await;
    let seed = seed();
    println!("residency with truncated logs: seed {seed}");
    // No hints: a replica that missed records must pull them, past logs kept 1 s, so the digest
    // fallback surely runs (with hints, a fast anti-entropy pass can leave it nothing to do).
    let node_env = [
        ("MERIDIAN_STORAGE__LOG_RETENTION_S", "1"),
        ("MERIDIAN_STORAGE__LOG_TRUNCATION_INTERVAL_MS", "500"),
        ("MERIDIAN_PEER__MAX_HINTS_PER_NODE", "0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec();
    let spec = GeoSpec { seed, node_env, ..GeoSpec::default() };
    with_cluster("residency_holds_with_truncated_logs", spec, DEADLINE, move |geo| Box::pin(scenario(geo, seed, true)))
        .await;
}

/// One attempted write: a unique marker added to a set key through one node.
#[derive(Clone, Debug)]
struct Write {
    key: String,
    /// The member added: `MRKR-<region>-<seq>-`, then random bytes around the token (`res::marker`).
    marker: Vec<u8>,
    /// The marker's random part (what the raw scan looks for).
    token: Vec<u8>,
    /// Where the request was sent.
    node: String,
    region: String,
    /// `load`, `after-change` or `strict`.
    phase: &'static str,
    start: Instant,
    end: Instant,
    /// `None`: acknowledged.
    error: Option<Error>,
}

impl Write {
    fn acked(&self) -> bool {
        self.error.is_none()
    }

    fn describe(&self) -> String {
        format!(
            "{} (key {}, rule {}, sent to {} in {}, phase {}, {})",
            label(&self.marker),
            self.key,
            case_of(&self.key),
            self.node,
            self.region,
            self.phase,
            match &self.error {
                None => "acknowledged".to_string(),
                Some(e) => format!("failed: {e}"),
            }
        )
    }
}

type Writes = Arc<Mutex<Vec<Write>>>;

/// A writer in one region: set adds of fresh markers to random keys through the region's nodes in
/// turn (a request that finds no working connection is sent to the other node, as a new write).
struct Writer {
    region: String,
    clients: Vec<(String, Client)>,
    keys: Vec<String>,
    writes: Writes,
    stop: Arc<AtomicBool>,
    changed: Arc<AtomicBool>,
    rng: StdRng,
}

impl Writer {
    async fn run(mut self) {
        let mut seq = 0usize;
        let mut turn = 0usize;
        while !self.stop.load(Ordering::Relaxed) && seq < 5_000 {
            let key = self.keys.choose(&mut self.rng).unwrap().clone();
            for attempt in 0..self.clients.len() {
                let (node, client) = &self.clients[turn % self.clients.len()];
                turn += 1;
                let (marker, token) = res::marker(&mut self.rng, &format!("MRKR-{}-{seq}-", self.region), TOKEN_LEN);
                seq += 1;
                let phase = if self.changed.load(Ordering::Relaxed) { "after-change" } else { "load" };
                let start = Instant::now();
                let result = client.set(key.as_str()).consistency(Consistency::LocalQuorum).add([marker.clone()]).await;
                let end = Instant::now();
                let retry = matches!(&result, Err(e) if is_connection_error(e)) && attempt + 1 < self.clients.len();
                self.writes.lock().unwrap().push(Write {
                    key: key.clone(),
                    marker,
                    token,
                    node: node.clone(),
                    region: self.region.clone(),
                    phase,
                    start,
                    end,
                    error: result.err(),
                });
                if !retry {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(20..60))).await;
        }
    }
}

async fn scenario(geo: &mut Geo, seed: u64, truncated_logs: bool) -> anyhow::Result<()> {
    let began = Instant::now();
    let at = || format!("[{:>5.1}s]", began.elapsed().as_secs_f64());
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7265_7369);
    let nodes = geo.node_names();
    let mut problems: Vec<String> = Vec::new();
    println!("{} cluster in {}: {} nodes up", at(), geo.dir().display(), nodes.len());

    // a. The rules, through different nodes, in the CLI's two output forms.
    let mut ids = BTreeMap::new();
    let mut version = 0;
    for (i, case) in CASES.iter().enumerate() {
        let via = nodes.choose(&mut rng).unwrap();
        let spec = case.spec(case.initial);
        let (id, v) = if i % 2 == 0 {
            let (id, v, verb) =
                cli_add_text(geo, via, &spec).await.with_context(|| format!("adding rule {} via {via}", case.label))?;
            if verb != "added" {
                problems.push(format!(
                    "`residency add` printed `rule {id} {verb} (rules version {v})`, not `rule {id} added (rules version {v})`"
                ));
            }
            (id, v)
        } else {
            cli_add_json(geo, via, &spec).await.with_context(|| format!("adding rule {} via {via}", case.label))?
        };
        println!(
            "{} rule {} = {id}: {}* -> {:?} (added via {via}, version {v})",
            at(),
            case.label,
            case.prefix,
            case.initial
        );
        anyhow::ensure!(
            v > version,
            "adding rule {} returned version {v}, not above the previous {version}",
            case.label
        );
        version = v;
        ids.insert(case.label, id);
    }
    let reports = wait_rules_agree(geo, &nodes, version, RULES_TIMEOUT).await?;
    let listed: Vec<(u32, RuleSpec)> = reports[0].rules.iter().map(|r| (r.id, r.spec.clone())).collect();
    let wanted: Vec<(u32, RuleSpec)> = CASES.iter().map(|c| (ids[c.label], c.spec(c.initial))).collect();
    anyhow::ensure!(listed == wanted, "the rules every node lists are {listed:?}, not the ones added: {wanted:?}");
    println!("{} every node holds rules version {}", at(), reports[0].version);
    // The CLI's list agrees (and its JSON is the report).
    let listed: ResidencyReport = cli(geo, &nodes[0], &["residency", "list", "--json"]).await?.ok()?.json()?;
    anyhow::ensure!(listed.rules == reports[0].rules, "`residency list --json` shows {:?}", listed.rules);

    // b. The load, from every region, with a partition and a kill -9 meanwhile.
    // Each key name carries a random token too: a disallowed region must not hold the key's name
    // either (redacted log positions carry no key).
    let mut names: Vec<String> = Vec::new();
    for case in &CASES {
        names.extend((0..KEYS_PER_PREFIX).map(|k| format!("{}k{k}-", case.prefix)));
    }
    names.extend((0..2).map(|k| format!("{FREE_PREFIX}k{k}-")));
    let mut key_tokens: BTreeMap<String, String> = BTreeMap::new();
    for name in names {
        let (part, token) = res::key_part(&mut rng, TOKEN_LEN);
        key_tokens.insert(format!("{NS}/{name}{part}"), token);
    }
    let keys: Vec<String> = key_tokens.keys().cloned().collect();
    let writes: Writes = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let changed = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (r, region) in ALL.iter().enumerate() {
        let writer = Writer {
            region: region.to_string(),
            clients: geo.region_clients(region).await?,
            keys: keys.clone(),
            writes: writes.clone(),
            stop: stop.clone(),
            changed: changed.clone(),
            rng: StdRng::seed_from_u64(seed.wrapping_add(r as u64 + 1)),
        };
        writers.push(tokio::spawn(writer.run()));
    }
    println!("{} load started: one writer per region over {} keys", at(), keys.len());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let isolated = *ALL.choose(&mut rng).unwrap();
    let killed = nodes.choose(&mut rng).unwrap().clone();
    let others: Vec<&str> = ALL.iter().copied().filter(|r| *r != isolated).collect();
    let dropped_before: u64 = others.iter().map(|o| geo.dropped_between(isolated, o)).sum();
    geo.isolate(isolated);
    println!("{} {isolated} isolated", at());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let dropped = others.iter().map(|o| geo.dropped_between(isolated, o)).sum::<u64>() - dropped_before;
    geo.heal();
    println!("{} healed; {dropped} datagrams dropped while {isolated} was isolated", at());
    if dropped == 0 {
        problems.push(format!("isolating {isolated} dropped no datagram: the partition did nothing"));
    }
    geo.wait_all_alive(FORM_TIMEOUT).await.context("the cluster recovers from the partition")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let old_pid = geo.pid(&killed).context("the victim runs")?;
    let kill_from = Instant::now();
    let status = geo.kill9(&killed).await?;
    println!("{} kill -9 {killed} (pid {old_pid}): {status}", at());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // While it is down, it answers nobody (the writers may happen not to try it in that window).
    match geo.client_with(&killed, Duration::from_secs(1)).await {
        Err(_) => {}
        Ok(client) => {
            let status = client.status().await;
            client.close().await;
            if status.is_ok() {
                problems.push(format!("{killed} answered a status request while it was supposed to be dead"));
            }
        }
    }
    geo.restart(&killed).await.with_context(|| format!("restarting {killed} on its data"))?;
    let kill_to = Instant::now();
    let new_pid = geo.pid(&killed).context("restarted")?;
    println!("{} {killed} restarted (pid {new_pid})", at());
    if new_pid == old_pid || status.signal() != Some(9) {
        problems.push(format!("{killed}: kill -9 did not happen as planned (pid {old_pid} -> {new_pid}, {status})"));
    }
    geo.wait_all_alive(FORM_TIMEOUT).await.context("the cluster recovers from the kill")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // c. Narrow C, widen D, while the writers go on.
    let narrow = CASES.iter().find(|c| c.label == "C").unwrap();
    let widen = CASES.iter().find(|c| c.label == "D").unwrap();
    let via = nodes.choose(&mut rng).unwrap().clone();
    let v_narrow = cli_change_json(geo, &via, ids["C"], &narrow.spec(narrow.last)).await.context("narrowing C")?;
    changed.store(true, Ordering::Relaxed);
    let v_widen = cli_change_json(geo, &via, ids["D"], &widen.spec(widen.last)).await.context("widening D")?;
    println!(
        "{} via {via}: C narrowed to {:?} (version {v_narrow}), D widened to {:?} (version {v_widen})",
        at(),
        narrow.last,
        widen.last
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .context("writers stop within 30 s")?
            .context("a writer panicked")?;
    }
    let load: Vec<Write> = writes.lock().unwrap().clone();
    print_load(&load);
    println!("{} load stopped", at());

    // Every fault must have been felt by the load.
    let failed_at_killed =
        load.iter().filter(|w| w.node == killed && !w.acked() && w.end >= kill_from && w.start <= kill_to).count();
    println!("{failed_at_killed} writes sent to {killed} failed while it was down");
    for phase in ["load", "after-change"] {
        for region in ALL {
            if !load.iter().any(|w| w.phase == phase && w.region == region && w.acked()) {
                problems.push(format!("no write from {region} was acknowledged in phase {phase}"));
            }
        }
    }

    let mut expected = Vec::new();
    for node in geo.region_nodes(AP) {
        expected.push(ExpectedChange { node, kind: "purge".into(), rule: ids["C"], min_version: v_narrow });
    }
    for node in geo.region_nodes(EU) {
        expected.push(ExpectedChange { node, kind: "backfill".into(), rule: ids["D"], min_version: v_widen });
    }
    wait_changes_complete(geo, &nodes, v_widen, &expected, CHANGES_TIMEOUT).await?;
    println!("{} every node at version {v_widen}; purges (ap-south, C) and backfills (eu-west, D) complete", at());

    // e. A strict rule refuses outside its region and serves inside it.
    let (strict_id, v_strict) = cli_add_json(geo, &via, &strict_spec()).await.context("adding the strict rule E")?;
    wait_rules_agree(geo, &nodes, v_strict, RULES_TIMEOUT).await?;
    println!("{} strict rule E = {strict_id} on every node (version {v_strict})", at());
    let strict_writes = check_strict(geo, strict_id, &mut rng, &mut problems).await?;
    println!("{} strict rule E refuses and serves as it should", at());
    wait_changes_complete(geo, &nodes, v_strict, &[], CHANGES_TIMEOUT).await?;
    println!("{} strict rule E = {strict_id} checked (version {v_strict})", at());
    let all_writes: Vec<Write> = load.iter().chain(&strict_writes).cloned().collect();

    // d1. The allowed regions converge on every acknowledged write; disallowed nodes answer the
    // same through their proxy; explain agrees.
    check_converged(geo, &keys, &all_writes, &mut problems).await?;
    println!("{} replicas of the allowed regions read", at());
    // The fallback really ran (else this run says nothing about it); a restarted node's counters
    // start again from 0, so this counts at least what the running processes did.
    let (fallbacks, states) = (
        geo.metric_sum("meridian_sync_fallbacks_total").await?,
        geo.metric_sum("meridian_sync_states_applied_total").await?,
    );
    let truncated = geo.metric_sum("meridian_log_truncated_records_total").await?;
    let capped = geo.metric_sum("meridian_sync_raises_capped_total").await?;
    println!(
        "{} logs truncated: {truncated} records; digest fallbacks: {fallbacks}, {states} key states, {capped} capped raises",
        at()
    );
    if truncated_logs && (fallbacks == 0.0 || truncated == 0.0) {
        problems.push(format!("no digest fallback ran ({fallbacks}) or no log was truncated ({truncated})"));
    }
    check_explain(geo, &ids, &mut problems).await?;

    // d2. The audit of every node, compacting first.
    for node in &nodes {
        let out = cli(geo, node, &["residency", "audit", "--compact", "--json"]).await?;
        let report: anyhow::Result<ResidencyReport> = out.json();
        match (out.code(), report) {
            (Some(0), Ok(report)) => match report.audit {
                Some(audit) if audit.violations.is_empty() && audit.compacted => println!(
                    "audit {node}: clean ({} keys, {} log records of which {} redacted, {} hints, {} idempotency records)",
                    audit.data_keys, audit.log_records, audit.redacted_records, audit.hints, audit.idempotency_records
                ),
                Some(audit) => problems.push(format!("audit of {node} exited 0 but reports {audit:?}")),
                None => problems.push(format!("audit of {node}: no audit in the report:\n{out}")),
            },
            (code, _) => problems.push(format!("audit of {node} exited with {code:?} (0 expected):\n{out}")),
        }
    }

    // d3. Raw bytes: nothing forbidden anywhere, allowed markers found.
    check_raw_bytes(geo, &all_writes, &key_tokens, &mut problems)?;

    // d4. Counters and audit logs.
    check_counters_and_audit_logs(geo, &all_writes, ids["C"], &mut problems).await?;

    println!("{} done in {:.1} s", at(), began.elapsed().as_secs_f64());
    if !problems.is_empty() {
        for problem in &problems {
            println!("PROBLEM {problem}");
        }
        bail!("{} problems (seed {seed}); the first: {}", problems.len(), problems[0]);
    }
    Ok(())
}

fn strict_spec() -> RuleSpec {
    let mut spec = rule(NS, STRICT_PREFIX, &[US]);
    spec.strict = true;
    spec
}

/// A member as text: a marker's `MRKR-<region>-<seq>-` prefix, then its token in hex (anything
/// else all in hex).
fn label(member: &[u8]) -> String {
    let split = member.len().saturating_sub(TOKEN_LEN + 2 * res::GUARD_LEN);
    match std::str::from_utf8(&member[..split]) {
        Ok(prefix) if prefix.starts_with("MRKR-") => format!("{prefix}{}", res::hex(&member[split..])),
        _ => format!("0x{}", res::hex(member)),
    }
}

fn print_load(load: &[Write]) {
    let mut by: BTreeMap<(String, &str), BTreeMap<String, usize>> = BTreeMap::new();
    for w in load {
        let result = match &w.error {
            None => "ok".to_string(),
            Some(e) => meridian_geo_tests::region::error_result(e),
        };
        *by.entry((w.region.clone(), case_of(&w.key))).or_default().entry(result).or_default() += 1;
    }
    println!("{} writes:", load.len());
    for ((region, case), results) in by {
        let results: Vec<String> = results.iter().map(|(r, n)| format!("{r}={n}")).collect();
        println!("  from {region} to rule {case}: {}", results.join(" "));
    }
}

/// Rule E (strict, us-east only): a write and a read arriving in eu-west or ap-south are refused
/// with `residency_refused` naming the rule (HTTP: 403); the same write in us-east is served.
/// Returns the writes made (their markers join the scan).
async fn check_strict(geo: &Geo, id: u32, rng: &mut StdRng, problems: &mut Vec<String>) -> anyhow::Result<Vec<Write>> {
    let key = format!("{NS}/{STRICT_PREFIX}k0");
    let mut writes = Vec::new();
    for region in [EU, AP, US] {
        let node = geo.region_nodes(region).choose(rng).unwrap().clone();
        let (marker, token) = res::marker(rng, &format!("MRKR-{region}-strict-"), TOKEN_LEN);
        let client = geo.client(&node).await?;
        let start = Instant::now();
        let result = client.set(key.as_str()).consistency(Consistency::LocalQuorum).add([marker.clone()]).await;
        let end = Instant::now();
        let read = client.set(key.as_str()).consistency(Consistency::Eventual).members().await;
        client.close().await;
        if region == US {
            if let Err(e) = &result {
                problems.push(format!("strict rule {id}: a write at {node} (us-east, allowed) failed: {e}"));
            }
            match &read {
                Ok(members) if members.contains(&marker) => {}
                other => problems.push(format!(
                    "strict rule {id}: reading {key} at {node} after writing {}: {other:?}",
                    label(&marker)
                )),
            }
        } else {
            expect_refused(
                &format!("strict rule {id}: a write of {key} at {node} ({region})"),
                &result.clone().map(|_| ()),
                id,
                problems,
            );
            expect_refused(
                &format!("strict rule {id}: a read of {key} at {node} ({region})"),
                &read.map(|_| ()),
                id,
                problems,
            );
            let http = res::node_plan(geo, &node)?.http_addr;
            match res::http_get(geo, http, &format!("/v1/kv/{key}")).await {
                Ok((403, body)) if body.contains(&format!("rule {id}")) => {}
                Ok((status, body)) => problems.push(format!(
                    "strict rule {id}: GET https://{http}/v1/kv/{key} at {node} ({region}) answered {status} {body:?}, \
                     expected 403 naming `rule {id}`"
                )),
                Err(e) => problems.push(format!("strict rule {id}: GET at {node}: {e:#}")),
            }
        }
        writes.push(Write {
            key: key.clone(),
            marker,
            token,
            node,
            region: region.to_string(),
            phase: "strict",
            start,
            end,
            error: result.err(),
        });
    }
    Ok(writes)
}

fn expect_refused(what: &str, result: &Result<(), Error>, id: u32, problems: &mut Vec<String>) {
    match result {
        Err(Error::Server { code: ErrorCode::ResidencyRefused, message })
            if message.contains(&format!("rule {id}")) => {}
        other => problems.push(format!("{what}: expected residency_refused naming `rule {id}`, got {other:?}")),
    }
}

/// Every node's own (eventual) state of the keys it may hold.
type NodeState = BTreeMap<String, BTreeMap<String, BTreeSet<Vec<u8>>>>;

async fn read_allowed(geo: &Geo, keys: &[String]) -> anyhow::Result<NodeState> {
    let mut state = NodeState::new();
    for region in ALL {
        for node in geo.region_nodes(region) {
            let client = geo.client(&node).await?;
            let mut held = BTreeMap::new();
            for key in keys.iter().filter(|k| final_regions(k).contains(region)) {
                let members = client
                    .set(key.as_str())
                    .consistency(Consistency::Eventual)
                    .members()
                    .await
                    .with_context(|| format!("eventual read of {key} at {node}"));
                let members = match members {
                    Ok(m) => m,
                    Err(e) => {
                        client.close().await;
                        return Err(e);
                    }
                };
                held.insert(key.clone(), members.into_iter().collect());
            }
            client.close().await;
            state.insert(node, held);
        }
    }
    Ok(state)
}

/// What is wrong with `state`: replicas of a key (the nodes of its allowed regions) that differ,
/// acknowledged markers missing, members nobody wrote.
fn convergence_problems(geo: &Geo, keys: &[String], state: &NodeState, writes: &[Write]) -> Vec<String> {
    let mut problems = Vec::new();
    for key in keys {
        let holders: Vec<String> = final_regions(key).iter().flat_map(|r| geo.region_nodes(r)).collect();
        let states: Vec<(&String, &BTreeSet<Vec<u8>>)> =
            holders.iter().filter_map(|n| state.get(n).and_then(|s| s.get(key)).map(|s| (n, s))).collect();
        let Some((first_node, first)) = states.first() else { continue };
        for (node, s) in &states[1..] {
            if s != first {
                let only_here: Vec<String> = s.difference(first).take(3).map(|m| label(m)).collect();
                let only_there: Vec<String> = first.difference(s).take(3).map(|m| label(m)).collect();
                problems.push(format!(
                    "{key} (rule {}): {node} holds {} members, {first_node} {}; only at {node}: {only_here:?}, only at \
                     {first_node}: {only_there:?}",
                    case_of(key),
                    s.len(),
                    first.len()
                ));
            }
        }
        for (node, s) in &states {
            let missing: Vec<String> = writes
                .iter()
                .filter(|w| &w.key == key && w.acked() && !s.contains(&w.marker))
                .map(Write::describe)
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{key}: {node} lacks {} acknowledged writes, e.g. {}",
                    missing.len(),
                    missing.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                ));
            }
            let written: BTreeSet<&[u8]> =
                writes.iter().filter(|w| &w.key == key).map(|w| w.marker.as_slice()).collect();
            let foreign: Vec<String> =
                s.iter().filter(|m| !written.contains(m.as_slice())).take(3).map(|m| label(m)).collect();
            if !foreign.is_empty() {
                problems.push(format!("{key}: {node} holds members nobody wrote to it: {foreign:?}"));
            }
        }
    }
    problems
}

async fn check_converged(
    geo: &Geo,
    keys: &[String],
    writes: &[Write],
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let strict_key = format!("{NS}/{STRICT_PREFIX}k0");
    let keys: Vec<String> = keys.iter().cloned().chain([strict_key]).collect();
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let state = loop {
        let state = read_allowed(geo, &keys).await?;
        let found = convergence_problems(geo, &keys, &state, writes);
        if found.is_empty() {
            break state;
        }
        if Instant::now() >= deadline {
            problems.push(format!("the allowed regions did not converge within {} s:", CONVERGE_TIMEOUT.as_secs()));
            problems.extend(found);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let acked = writes.iter().filter(|w| w.acked()).count();
    println!("converged: every acknowledged write ({acked}) at every node of its key's allowed regions");

    // A node of a disallowed region serves the key transparently (proxied): same members.
    for case in &CASES {
        let Some(key) = keys.iter().find(|k| k.starts_with(&format!("{NS}/{}", case.prefix))).cloned() else {
            continue;
        };
        let allowed = final_regions(&key);
        let holder = geo.region_nodes(allowed.iter().next().unwrap())[0].clone();
        let want = &state[&holder][&key];
        for region in ALL.iter().filter(|r| !allowed.contains(*r)) {
            for node in geo.region_nodes(region) {
                let client = geo.client(&node).await?;
                let read = client.set(key.as_str()).consistency(Consistency::Eventual).members().await;
                client.close().await;
                match read {
                    Ok(members) => {
                        let got: BTreeSet<Vec<u8>> = members.into_iter().collect();
                        if &got != want {
                            problems.push(format!(
                                "{key} read at {node} ({region}, disallowed: proxied) has {} members, {holder} holds {}",
                                got.len(),
                                want.len()
                            ));
                        }
                    }
                    Err(e) => {
                        problems.push(format!("{key} read at {node} ({region}, disallowed: proxied) failed: {e}"))
                    }
                }
            }
        }
    }
    Ok(())
}

/// `explain` at a node of each region, for a key of each rule and a free key.
async fn check_explain(geo: &Geo, ids: &BTreeMap<&str, u32>, problems: &mut Vec<String>) -> anyhow::Result<()> {
    let mut keys: Vec<(String, Option<u32>)> =
        CASES.iter().map(|c| (format!("{}k0", c.prefix), Some(ids[c.label]))).collect();
    keys.push((format!("{FREE_PREFIX}k0"), None));
    for region in ALL {
        let node = geo.region_nodes(region)[0].clone();
        for (name, rule_id) in &keys {
            let full = format!("{NS}/{name}");
            let key = Key::new(NS, name.as_str()).expect("a valid key");
            let report = match residency(geo, &node, ResidencyOp::Explain { key }).await? {
                Ok(report) => report,
                Err(e) => {
                    problems.push(format!("explain {full} at {node}: {e}"));
                    continue;
                }
            };
            let Some(explain) = report.explain else {
                problems.push(format!("explain {full} at {node}: no explain in the report"));
                continue;
            };
            let allowed = final_regions(&full);
            let listed: BTreeSet<&str> = explain.allowed_regions.iter().map(String::as_str).collect();
            let matched = explain.rule.as_ref().map(|r| r.id);
            if listed != allowed || explain.allowed_here != allowed.contains(region) || matched != *rule_id {
                problems.push(format!(
                    "explain {full} at {node} ({region}): rule {matched:?}, allowed {listed:?}, allowed here {}; expected \
                     rule {rule_id:?}, allowed {allowed:?} ({})",
                    explain.allowed_here, explain.reason
                ));
            }
        }
    }
    Ok(())
}

/// The raw scan of every node's data directory: no marker of a key its region may not hold under
/// the final rules (acknowledged or not: a failed write must not leave bytes behind either), and
/// at least one marker of a key it holds.
fn check_raw_bytes(
    geo: &Geo,
    writes: &[Write],
    key_tokens: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    // Value tokens first (index i: writes[i]), then key-name tokens.
    let key_list: Vec<(&String, &String)> = key_tokens.iter().collect();
    let tokens: Vec<Vec<u8>> =
        writes.iter().map(|w| w.token.clone()).chain(key_list.iter().map(|(_, t)| t.as_bytes().to_vec())).collect();
    // Keys some acknowledged write created (the others may exist nowhere).
    let written: BTreeSet<&str> = writes.iter().filter(|w| w.acked()).map(|w| w.key.as_str()).collect();
    for region in ALL {
        for node in geo.region_nodes(region) {
            let dir = res::data_dir(geo, &node)?;
            let started = Instant::now();
            let found = scan_dir_for_markers(&dir, &tokens).with_context(|| format!("scanning {}", dir.display()))?;
            let mut allowed_found = BTreeSet::new();
            let mut keys_found = BTreeSet::new();
            let mut forbidden = 0;
            for (path, i) in &found {
                if let Some(k) = i.checked_sub(writes.len()) {
                    let key = key_list[k].0;
                    // The audit log may name keys (a proxied request, a violation): that is the
                    // node's own record of what clients asked of it, not replicated data.
                    if path.file_name().is_some_and(|f| f == "audit.log") {
                        continue;
                    }
                    if final_regions(key).contains(region) {
                        keys_found.insert(key.as_str());
                    } else {
                        forbidden += 1;
                        if forbidden <= 10 {
                            problems.push(format!(
                                "{node} ({region}) may not hold key {key} (rule {}) but its file {} contains its name",
                                case_of(key),
                                path.display()
                            ));
                        }
                    }
                    continue;
                }
                let w = &writes[*i];
                if final_regions(&w.key).contains(region) {
                    allowed_found.insert(*i);
                } else {
                    forbidden += 1;
                    if forbidden <= 10 {
                        problems.push(format!(
                            "{node} ({region}) may not hold {} but its file {} contains it",
                            w.describe(),
                            path.display()
                        ));
                    }
                }
            }
            if forbidden > 10 {
                problems.push(format!("{node} ({region}): {} more forbidden marker occurrences", forbidden - 10));
            }
            let keys_held: Vec<&str> = written
                .iter()
                .copied()
                .filter(|k| key_tokens.contains_key(*k) && final_regions(k).contains(region))
                .collect();
            let keys_missed: Vec<&&str> = keys_held.iter().filter(|k| !keys_found.contains(**k)).collect();
            if !keys_missed.is_empty() {
                problems.push(format!(
                    "positive control: the names of keys {node} ({region}) holds were not found raw in {}: {keys_missed:?}",
                    dir.display()
                ));
            }
            let allowed_acked = writes.iter().filter(|w| w.acked() && final_regions(&w.key).contains(region)).count();
            let found_acked = allowed_found.iter().filter(|i| writes[**i].acked()).count();
            println!(
                "scan {node} ({region}): {} (file, marker) hits under {} in {:.1} s: {found_acked} of {allowed_acked} \
                 acknowledged markers and {} of {} key names it may hold found raw, {forbidden} forbidden",
                found.len(),
                dir.display(),
                started.elapsed().as_secs_f64(),
                keys_found.len(),
                keys_held.len()
            );
            // Which held markers the scan missed, and whether their halves are there (a marker stored
            // in pieces, or not stored in this directory at all).
            let missed: Vec<&Write> = writes
                .iter()
                .enumerate()
                .filter(|(i, w)| w.acked() && final_regions(&w.key).contains(region) && !allowed_found.contains(i))
                .map(|(_, w)| w)
                .take(5)
                .collect();
            for w in missed {
                let half = TOKEN_LEN / 2;
                let halves = [w.token[..half].to_vec(), w.token[half..].to_vec()];
                let pieces = scan_dir_for_markers(&dir, &halves).unwrap_or_default();
                println!(
                    "  not found raw at {node}: {}; token halves found: {:?}",
                    w.describe(),
                    pieces.iter().map(|(p, i)| format!("half {i} in {}", p.display())).collect::<Vec<_>>()
                );
            }
            // Positive control: the node holds every one of these (the replicas converged and the audit
            // compacted), so the scan must find every one; a marker it cannot see raw would make the
            // negative result above meaningless for that marker.
            if found_acked < allowed_acked {
                problems.push(format!(
                    "positive control: only {found_acked} of the {allowed_acked} acknowledged markers {node} ({region}) \
                     holds were found raw in {} (see the lines `not found raw` above): the scan cannot see all of its \
                     storage, so its negative result is not proof",
                    dir.display()
                ));
            }
        }
    }
    Ok(())
}

/// Residency counters (purges on ap-south, proxied requests in every region) and each node's
/// `audit.log`: JSON lines, purge and proxy entries where they happened, no marker.
async fn check_counters_and_audit_logs(
    geo: &Geo,
    writes: &[Write],
    narrowed_rule: u32,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let tokens: Vec<Vec<u8>> = writes.iter().map(|w| w.token.clone()).collect();
    let finder = MarkerFinder::new(&tokens);
    for region in ALL {
        let mut proxied = 0;
        for node in geo.region_nodes(region) {
            let report = match residency(geo, &node, ResidencyOp::List).await? {
                Ok(report) => report,
                Err(e) => {
                    problems.push(format!("residency list at {node}: {e}"));
                    continue;
                }
            };
            println!("counters {node}: {:?}", report.counters);
            proxied += report.counters.proxied;
            if region == AP && report.counters.purged == 0 {
                problems.push(format!("{node} (ap-south) counts no purged key after C was narrowed away from it"));
            }
            let path = res::data_dir(geo, &node)?.join("audit.log");
            let text = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    problems.push(format!("{node}: cannot read its audit log {}: {e}", path.display()));
                    continue;
                }
            };
            let markers = finder.find_all(&text);
            for i in markers.iter().take(5) {
                problems.push(format!("{node}'s audit log {} contains {}", path.display(), writes[*i].describe()));
            }
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if let Some(bad) = lines.iter().find(|l| serde_json::from_str::<serde_json::Value>(l).is_err()) {
                problems.push(format!("{node}'s audit log {} has a line that is not JSON: {bad:?}", path.display()));
            }
            let has = |word: &str| lines.iter().any(|l| l.to_ascii_lowercase().contains(word));
            // The purge of the narrowed rule, not just any purge entry (a rules change may log an
            // empty purge everywhere).
            let purged_c = lines.iter().any(|l| {
                l.to_ascii_lowercase().contains("purge")
                    && (l.contains(&format!("rule {narrowed_rule}"))
                        || serde_json::from_str::<serde_json::Value>(l)
                            .is_ok_and(|v| v.get("rule").and_then(|r| r.as_u64()) == Some(narrowed_rule.into())))
            });
            if region == AP && !purged_c {
                problems.push(format!(
                    "{node}'s audit log {} names no purge of rule {narrowed_rule} ({} lines)",
                    path.display(),
                    lines.len()
                ));
            }
            if report.counters.proxied > 0 && !has("prox") {
                problems.push(format!(
                    "{node} proxied {} requests but its audit log {} names no proxy ({} lines)",
                    report.counters.proxied,
                    path.display(),
                    lines.len()
                ));
            }
        }
        let sent_here_disallowed = writes
            .iter()
            .filter(|w| w.region == region && w.acked() && !final_regions(&w.key).contains(region))
            .count();
        if proxied == 0 && sent_here_disallowed > 0 {
            problems.push(format!(
                "{region}'s nodes count no proxied request, though {sent_here_disallowed} acknowledged writes of keys it \
                 may not hold were sent to them"
            ));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Refusals on a small cluster.
// ------------------------------------------------------------------------------------------------

/// Two regions of one node each.
fn small_spec(seed: u64) -> GeoSpec {
    GeoSpec { regions: vec![US.into(), EU.into()], nodes_per_region: 1, rf: 1, seed, ..GeoSpec::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_rule_refuses_outside_its_regions() {
    let _serial = serial().await;
    with_cluster("strict_rule_refuses_outside_its_regions", small_spec(1), Duration::from_secs(120), |geo| {
        Box::pin(async move {
            let us = geo.region_nodes(US)[0].clone();
            let eu = geo.region_nodes(EU)[0].clone();
            let (id, version) = cli_add_json(geo, &eu, &strict_spec()).await?;
            wait_rules_agree(geo, &geo.node_names(), version, RULES_TIMEOUT).await?;
            let key = format!("{NS}/{STRICT_PREFIX}k0");
            let mut problems = Vec::new();

            let client = geo.client(&eu).await?;
            let write = client.set(key.as_str()).add(["refused-here"]).await;
            let read = client.set(key.as_str()).members().await.map(|_| ());
            client.close().await;
            expect_refused(&format!("a write of {key} at {eu}"), &write, id, &mut problems);
            expect_refused(&format!("a read of {key} at {eu}"), &read, id, &mut problems);
            // A key the rule does not match is served where it arrives.
            let other = geo.client(&eu).await?;
            if let Err(e) = other.set(format!("{NS}/free/k0").as_str()).add(["fine"]).await {
                problems.push(format!("a write of an unrestricted key at {eu} failed: {e}"));
            }
            other.close().await;
            let http = res::node_plan(geo, &eu)?.http_addr;
            let (status, body) = res::http_get(geo, http, &format!("/v1/kv/{key}")).await?;
            if status != 403 || !body.contains(&format!("rule {id}")) {
                problems.push(format!("GET /v1/kv/{key} at {eu}: {status} {body:?}, expected 403 naming `rule {id}`"));
            }

            let client = geo.client(&us).await?;
            let write = client.set(key.as_str()).add(["served-here"]).await;
            let read = client.set(key.as_str()).members().await;
            client.close().await;
            if let Err(e) = write {
                problems.push(format!("a write of {key} at {us} (its region) failed: {e}"));
            }
            match read {
                Ok(members) if members == [b"served-here".to_vec()] => {}
                other => problems.push(format!("reading {key} at {us}: {other:?}, expected [served-here]")),
            }
            let report = residency(geo, &eu, ResidencyOp::List).await??;
            if report.counters.refused < 2 {
                problems.push(format!("{eu} counts {} refused requests, at least 2 expected", report.counters.refused));
            }
            if !problems.is_empty() {
                bail!("{}", problems.join("\n"));
            }
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_are_refused_and_change_nothing() {
    let _serial = serial().await;
    with_cluster("invalid_rules_are_refused_and_change_nothing", small_spec(2), Duration::from_secs(120), |geo| {
        Box::pin(async move {
            let nodes = geo.node_names();
            let us = geo.region_nodes(US)[0].clone();
            let eu = geo.region_nodes(EU)[0].clone();
            let mut problems = Vec::new();

            // One valid rule, to change and to compare against.
            let valid = rule(NS, "x/", &[US]);
            let (id, version) = cli_add_json(geo, &us, &valid).await?;
            let before = wait_rules_agree(geo, &nodes, version, RULES_TIMEOUT).await?;

            let mut bad_home = rule(NS, "y/", &[US]);
            bad_home.home = Some(EU.into());
            let cases: Vec<(&str, ResidencyOp, &str)> = vec![
                ("unknown region", ResidencyOp::Add { rule: rule(NS, "y/", &[US, "mars"]), position: None }, "unknown region"),
                ("empty region list", ResidencyOp::Add { rule: rule(NS, "y/", &[]), position: None }, "no regions"),
                ("home not among the regions", ResidencyOp::Add { rule: bad_home, position: None }, "home"),
                ("empty namespace", ResidencyOp::Add { rule: rule("", "y/", &[US]), position: None }, "namespace"),
                (
                    "change to a disjoint region set",
                    ResidencyOp::Change { id, rule: rule(NS, "x/", &[EU]) },
                    "no allowed home",
                ),
                (
                    "change to an unknown region",
                    ResidencyOp::Change { id, rule: rule(NS, "x/", &[US, "mars"]) },
                    "unknown region",
                ),
            ];
            for (what, op, fragment) in cases {
                // Through each node: the refusal must not depend on where the request lands.
                for node in [&us, &eu] {
                    match residency(geo, node, op.clone()).await? {
                        Err(Error::Server { code: ErrorCode::BadRequest, message }) if message.contains(fragment) => {}
                        other => problems.push(format!(
                            "{what} ({op:?}) at {node}: expected bad_request containing {fragment:?}, got {other:?}"
                        )),
                    }
                }
            }
            // The CLI: non-zero exit, the message on stderr, nothing claimed added.
            for (what, args, fragment) in [
                ("unknown region", vec!["residency", "add", "--namespace", NS, "--prefix", "y/", "--regions", "us-east,mars"], "unknown region"),
                ("home not allowed", vec!["residency", "add", "--namespace", NS, "--prefix", "y/", "--regions", "us-east", "--home", "eu-west"], "home"),
            ] {
                let out = cli(geo, &eu, &args).await?;
                if out.status.success() || !out.stderr.contains(fragment) || out.stdout.contains("added") {
                    problems.push(format!("CLI, {what}: expected a non-zero exit and {fragment:?} on stderr:\n{out}"));
                }
            }
            let id_arg = id.to_string();
            let out = cli(geo, &eu, &["residency", "change", &id_arg, "--namespace", NS, "--prefix", "x/", "--regions", "eu-west"]).await?;
            if out.status.success() || !out.stderr.contains("no allowed home") {
                problems.push(format!("CLI, change to a disjoint region set: expected a non-zero exit and \"no allowed home\" on stderr:\n{out}"));
            }

            // Nothing changed, on any node, even after a few gossip rounds.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = wait_rules_agree(geo, &nodes, version, RULES_TIMEOUT).await?;
            for (node, (b, a)) in nodes.iter().zip(before.iter().zip(&after)) {
                if a.version != b.version || a.rules != b.rules {
                    problems.push(format!(
                        "{node}: the refused rules changed its rules: version {} -> {}, rules {:?} -> {:?}",
                        b.version, a.version, b.rules, a.rules
                    ));
                }
            }

            // The valid path through the CLI: explain, then remove.
            let out = cli(geo, &eu, &["residency", "explain", &format!("{NS}/x/k"), "--json"]).await?.ok()?;
            let report: ResidencyReport = out.json()?;
            match report.explain {
                Some(e) if e.rule.as_ref().map(|r| r.id) == Some(id) && !e.allowed_here && e.allowed_regions == [US] => {}
                other => problems.push(format!("explain res/x/k at {eu}: {other:?}, expected rule {id}, only us-east, not here")),
            }
            cli(geo, &eu, &["residency", "remove", &id_arg]).await?.ok()?;
            let removed = wait_rules_agree(geo, &nodes, version + 1, RULES_TIMEOUT).await?;
            if !removed[0].rules.is_empty() {
                problems.push(format!("after `residency remove {id}` the rules are {:?}", removed[0].rules));
            }
            if !problems.is_empty() {
                bail!("{}", problems.join("\n"));
            }
            Ok(())
        })
    })
    .await;
}
