//! A region cut off for longer than the log retention, end to end with real `meridian` processes
//! behind emulated WAN links (the [`Geo`] harness): 3 regions × 2 nodes, rf 2, logs kept 1 s, no
//! hints, so every change made on either side of the cut has left the logs by the heal and reaches
//! the other side only through the digest/range fallback.
//!
//! 1. Registers `lp/r0..r59` (`v0`) and sets `lp/s0..s19` ({`a0`, `a1`}) are written in `us-east`
//!    and read back from every node.
//! 2. `ap-south` is isolated. Meanwhile `us-east` deletes `r0..r19` and writes `r0..r4` again
//!    (`v2`), removes `a0` from `s0..s9`; `eu-west` rewrites `r20..r39` (`v1`) and adds `b1` to
//!    `s10..s19`; the cut-off `ap-south` deletes `r50..r54` and writes new keys `lp/c0..c9`. Then
//!    each side writes a filler register into every partition it changed: log truncation keeps the
//!    newest record of each (partition, origin), so without one a partition's only change of the
//!    cut would cross by the log, not the fallback. The cut lasts until the logs have been
//!    truncated past every change.
//! 3. Healed, every node of every region must read exactly the expected state (read at `eventual`
//!    through that node): nothing deleted comes back (`ap-south` still held every deleted value and
//!    removed element when it was cut off), nothing written is lost, the recreated keys hold their
//!    new values. It must read it again a few anti-entropy passes later.
//!
//! The fault is checked, not assumed: the heal waits until every change is older than the
//! retention by three truncation passes; log records were truncated during the cut; and after the
//! heal `ap-south` ran at least as many fallbacks as partitions changed outside it, the other two
//! regions at least as many as partitions it changed (`meridian_log_truncated_records_total`,
//! `meridian_sync_fallbacks_total` per node).
//! Negative control, run by hand: `MERIDIAN_GEO_LP_RETENTION_S=0` (logs kept forever) must fail on
//! the fallback check; the state checker's own control is the unit test below.
//!
//! `MERIDIAN_GEO_KEEP=1` keeps the cluster directory (always kept on failure). Build the binary
//! first: `cargo build -p meridian-node --bin meridian && cargo test -p meridian-geo-tests --test
//! long_partition -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use meridian_client::{Client, ClusterOp, Consistency, Key};
use meridian_geo_tests::geo::{Geo, GeoSpec};
use meridian_geo_tests::region::KeepOnFailure;

const US: &str = "us-east";
const EU: &str = "eu-west";
const AP: &str = "ap-south";
const REGISTERS: usize = 60;
const SETS: usize = 20;
const NEW_KEYS: usize = 10;
/// The log retention the nodes run with (overridable for the negative control).
const RETENTION_S: u64 = 1;
/// How often the nodes cut their logs.
const TRUNCATION_INTERVAL_MS: u64 = 500;
/// How long `ap-south` stays cut off at least: several retentions and truncation intervals (and
/// always until every change is older than the retention by three truncation passes).
const CUT: Duration = Duration::from_secs(8);
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// The whole test's bound; every node is killed past it.
const DEADLINE: Duration = Duration::from_secs(420);

/// What a key reads as: a register's value, a set's members (sorted), or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Absent,
    Register(Vec<u8>),
    Set(Vec<Vec<u8>>),
}

/// Every key's expected reading.
type Expected = BTreeMap<String, Value>;

fn register(i: usize) -> String {
    format!("lp/r{i}")
}

fn set(i: usize) -> String {
    format!("lp/s{i}")
}

fn new_key(i: usize) -> String {
    format!("lp/c{i}")
}

fn members(items: &[&str]) -> Value {
    let mut members: Vec<Vec<u8>> = items.iter().map(|m| m.as_bytes().to_vec()).collect();
    members.sort();
    Value::Set(members)
}

/// The state before the cut.
fn before_cut() -> Expected {
    let mut expected = Expected::new();
    for i in 0..REGISTERS {
        expected.insert(register(i), Value::Register(format!("v0-{i}").into_bytes()));
    }
    for i in 0..SETS {
        expected.insert(set(i), members(&["a0", "a1"]));
    }
    for i in 0..NEW_KEYS {
        expected.insert(new_key(i), Value::Absent);
    }
    expected
}

/// The state after the cut's changes (see the module docs).
fn after_cut() -> Expected {
    let mut expected = before_cut();
    for i in 0..20 {
        let value = if i < 5 { Value::Register(format!("v2-{i}").into_bytes()) } else { Value::Absent };
        expected.insert(register(i), value);
    }
    for i in 20..40 {
        expected.insert(register(i), Value::Register(format!("v1-{i}").into_bytes()));
    }
    for i in 50..55 {
        expected.insert(register(i), Value::Absent);
    }
    for i in 0..10 {
        expected.insert(set(i), members(&["a1"]));
    }
    for i in 10..SETS {
        expected.insert(set(i), members(&["a0", "a1", "b1"]));
    }
    for i in 0..NEW_KEYS {
        expected.insert(new_key(i), Value::Register(format!("c-{i}").into_bytes()));
    }
    expected
}

/// How one node's reading differs from `expected`, one line per key: a deleted value or removed
/// element read again is a resurrection, a missing one a lost write.
fn differences(node: &str, expected: &Expected, read: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, want) in expected {
        let got = read.get(key).unwrap_or(&Value::Absent);
        if got == want {
            continue;
        }
        let what = match (want, got) {
            (Value::Absent, _) => "RESURRECTED (deleted, read again)",
            (Value::Set(w), Value::Set(g)) if g.iter().any(|m| !w.contains(m)) => "RESURRECTED or invented element(s)",
            (_, Value::Absent) => "LOST (written, not read)",
            _ => "stale or lost",
        };
        out.push(format!("{node}: {key}: {what}: expected {want:?}, read {got:?}"));
    }
    out
}

/// Every key of `expected` read at `eventual` through `node`.
async fn read_all(geo: &Geo, node: &str, expected: &Expected) -> anyhow::Result<BTreeMap<String, Value>> {
    let client = geo.client(node).await?;
    let read = async {
        let mut out = BTreeMap::new();
        for (key, want) in expected {
            let value = match want {
                Value::Set(_) => {
                    let mut got = client.set(key.as_str()).consistency(Consistency::Eventual).members().await?;
                    got.sort();
                    if got.is_empty() {
                        Value::Absent
                    } else {
                        Value::Set(got)
                    }
                }
                _ => match client.register(key.as_str()).consistency(Consistency::Eventual).get().await? {
                    Some(value) => Value::Register(value),
                    None => Value::Absent,
                },
            };
            out.insert(key.clone(), value);
        }
        anyhow::Ok(out)
    }
    .await
    .with_context(|| format!("reading through {node}"));
    client.close().await;
    read
}

/// Polls every node until each reads `expected` (returns how long it took), or fails after
/// `timeout` naming what still differs.
async fn wait_every_node_reads(geo: &Geo, expected: &Expected, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut differ = Vec::new();
        for node in geo.node_names() {
            match read_all(geo, &node, expected).await {
                Ok(read) => differ.extend(differences(&node, expected, &read)),
                Err(e) => differ.push(format!("{e:#}")),
            }
        }
        if differ.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            bail!("after {} s, {} difference(s):\n{}", timeout.as_secs(), differ.len(), differ.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The partition of `key`, as the node behind `client` places it.
async fn partition(client: &Client, key: &str) -> anyhow::Result<u32> {
    let parsed: Key = key.parse().with_context(|| format!("key {key:?}"))?;
    let report =
        client.cluster(ClusterOp::Placement { key: parsed }).await.with_context(|| format!("placing {key}"))?;
    Ok(report.placement.with_context(|| format!("no placement of {key}"))?.partition.into())
}

/// Writes through `client` one register (`lp/f-<side>-<n>`) into each partition of `changed`, after
/// every change there, so that the changes are below the newest record of their partition and
/// origin, which log truncation keeps; returns what the fillers read as, and the partitions.
async fn fill_partitions(client: &Client, side: &str, changed: &[String]) -> anyhow::Result<(Expected, BTreeSet<u32>)> {
    let mut left = BTreeSet::new();
    for key in changed {
        left.insert(partition(client, key).await?);
    }
    let partitions = left.clone();
    let mut fillers = Expected::new();
    for n in 0..50_000 {
        if left.is_empty() {
            return Ok((fillers, partitions));
        }
        let key = format!("lp/f-{side}-{n}");
        if left.remove(&partition(client, &key).await?) {
            write_register(client, &key, format!("f-{side}")).await?;
            fillers.insert(key, Value::Register(format!("f-{side}").into_bytes()));
        }
    }
    bail!("no filler key found for partitions {left:?}")
}

async fn write_register(client: &Client, key: &str, value: String) -> anyhow::Result<()> {
    client
        .register(key)
        .consistency(Consistency::LocalQuorum)
        .set(value.into_bytes())
        .await
        .with_context(|| format!("writing {key}"))
}

async fn delete(client: &Client, key: &str) -> anyhow::Result<()> {
    client.delete(key).await.with_context(|| format!("deleting {key}"))?;
    Ok(())
}

fn retention_s() -> u64 {
    std::env::var("MERIDIAN_GEO_LP_RETENTION_S")
        .map_or(RETENTION_S, |v| v.parse().expect("MERIDIAN_GEO_LP_RETENTION_S must be a number of seconds"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_past_the_log_retention_converges_without_resurrection() {
    let tmp = KeepOnFailure::new("long-partition-");
    let dir = tmp.path().join("cluster");
    let retention = retention_s();
    let node_env = [
        ("MERIDIAN_STORAGE__LOG_RETENTION_S", retention.to_string()),
        ("MERIDIAN_STORAGE__LOG_TRUNCATION_INTERVAL_MS", TRUNCATION_INTERVAL_MS.to_string()),
        // No hints: what a region missed during the cut comes back only by anti-entropy.
        ("MERIDIAN_PEER__MAX_HINTS_PER_NODE", "0".to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec();
    let spec = GeoSpec { durability: "relaxed".into(), node_env, ..GeoSpec::default() };
    let run = async {
        let mut geo = Geo::init(&dir, &spec).await.context("meridian demo init")?;
        geo.start_all(FORM_TIMEOUT).await.context("every node starts and sees every member alive")?;
        let result = scenario(&geo, retention).await;
        if result.is_err() {
            for node in geo.node_names() {
                println!("--- {node}, last lines:\n{}", geo.log_tail(&node, 15));
            }
        }
        geo.stop_all().await;
        result
    };
    match tokio::time::timeout(DEADLINE, run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("long partition failed (cluster in {}): {e:#}", dir.display()),
        Err(_) => panic!("long partition did not finish within {} s; logs in {}", DEADLINE.as_secs(), dir.display()),
    }
}

async fn scenario(geo: &Geo, retention: u64) -> anyhow::Result<()> {
    let began = Instant::now();
    let at = || format!("[{:>5.1}s]", began.elapsed().as_secs_f64());
    let [us, eu, ap] = [US, EU, AP].map(|region| geo.region_nodes(region)[0].clone());

    // 1. The state before the cut, everywhere.
    let writer = geo.client(&us).await?;
    for i in 0..REGISTERS {
        write_register(&writer, &register(i), format!("v0-{i}")).await?;
    }
    for i in 0..SETS {
        writer.set(set(i).as_str()).consistency(Consistency::LocalQuorum).add(["a0", "a1"]).await?;
    }
    let took = wait_every_node_reads(geo, &before_cut(), CONVERGE_TIMEOUT).await.context("before the cut")?;
    println!("{} written in {US}; every node reads it ({:.1} s)", at(), took.as_secs_f64());

    // 2. The cut, and the changes on both sides of it.
    let truncated_before = geo.metric_sum("meridian_log_truncated_records_total").await?;
    geo.isolate(AP);
    let cut_at = Instant::now();
    println!("{} {AP} isolated (logs kept {retention} s, no hints)", at());
    for i in 0..20 {
        delete(&writer, &register(i)).await?;
    }
    for i in 0..5 {
        write_register(&writer, &register(i), format!("v2-{i}")).await?;
    }
    for i in 0..10 {
        writer.set(set(i).as_str()).consistency(Consistency::LocalQuorum).remove(["a0"]).await?;
    }
    let eu_client = geo.client(&eu).await?;
    for i in 20..40 {
        write_register(&eu_client, &register(i), format!("v1-{i}")).await?;
    }
    for i in 10..SETS {
        eu_client.set(set(i).as_str()).consistency(Consistency::LocalQuorum).add(["b1"]).await?;
    }
    let ap_client = geo.client(&ap).await?;
    for i in 50..55 {
        delete(&ap_client, &register(i)).await?;
    }
    for i in 0..NEW_KEYS {
        write_register(&ap_client, &new_key(i), format!("c-{i}")).await?;
    }
    let us_changed: Vec<String> = (0..20).map(register).chain((0..10).map(set)).collect();
    let eu_changed: Vec<String> = (20..40).map(register).chain((10..SETS).map(set)).collect();
    let ap_changed: Vec<String> = (50..55).map(register).chain((0..NEW_KEYS).map(new_key)).collect();
    let mut fillers = Expected::new();
    // Partitions changed on the connected side (us-east, eu-west) and on the cut-off one.
    let (mut changed_outside, mut changed_inside) = (BTreeSet::new(), BTreeSet::new());
    for (client, side, changed) in
        [(&writer, "us", &us_changed), (&eu_client, "eu", &eu_changed), (&ap_client, "ap", &ap_changed)]
    {
        let (more, partitions) = fill_partitions(client, side, changed).await?;
        fillers.extend(more);
        if side == "ap" { &mut changed_inside } else { &mut changed_outside }.extend(partitions);
    }
    let last_write = Instant::now();
    for client in [&writer, &eu_client, &ap_client] {
        client.close().await;
    }
    println!("{} changes made on both sides of the cut, then {} fillers", at(), fillers.len());
    // Heal once every change is older than the retention by three truncation passes (the cut
    // may have to last longer than `CUT` on a slow machine).
    let aged = last_write + Duration::from_secs(retention) + Duration::from_millis(3 * TRUNCATION_INTERVAL_MS);
    tokio::time::sleep_until(tokio::time::Instant::from_std((cut_at + CUT).max(aged))).await;
    let truncated = geo.metric_sum("meridian_log_truncated_records_total").await? - truncated_before;
    let fallbacks_before = geo.metric_by_node("meridian_sync_fallbacks_total").await?;

    // 3. Healed: everyone reads the changes of both sides, and nothing deleted comes back.
    geo.heal();
    println!("{} healed after {:.1} s; {truncated} log records were truncated meanwhile", at(), CUT.as_secs_f64());
    let mut expected = after_cut();
    expected.extend(fillers);
    let took = wait_every_node_reads(geo, &expected, CONVERGE_TIMEOUT).await.context("after the heal")?;
    // Fallbacks after the heal, by the region that ran them (the puller).
    let mut fallbacks: BTreeMap<String, f64> = BTreeMap::new();
    for (node, after) in geo.metric_by_node("meridian_sync_fallbacks_total").await? {
        let region = geo.region_of(&node).unwrap_or_default().to_string();
        *fallbacks.entry(region).or_default() += after - fallbacks_before.get(&node).copied().unwrap_or(0.0);
    }
    let [on_us, on_eu, on_ap] = [US, EU, AP].map(|r| fallbacks.get(r).copied().unwrap_or(0.0));
    println!(
        "{} every node reads the expected state {:.1} s after the heal (fallbacks run by {US} {on_us}, {EU} {on_eu}, \
         {AP} {on_ap}; partitions changed during the cut: {} outside {AP}, {} in it)",
        at(),
        took.as_secs_f64(),
        changed_outside.len(),
        changed_inside.len()
    );
    // Every partition changed on one side had its changes cut from the logs there, so the other
    // side caught each up by the fallback at least once (a lower bound: a partition may fall back
    // against several peers).
    if truncated <= 0.0 || on_ap < changed_outside.len() as f64 || on_us + on_eu < changed_inside.len() as f64 {
        bail!(
            "the fault did not happen: {truncated} log records truncated during the cut; fallbacks after the heal: \
             {on_ap} in {AP} for {} partitions changed outside it, {} in {US} and {EU} for {} changed in {AP} (the \
             heal must have gone past the logs)",
            changed_outside.len(),
            on_us + on_eu,
            changed_inside.len()
        );
    }
    // A few anti-entropy passes later (a stale state that came back late would show now).
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_every_node_reads(geo, &expected, Duration::ZERO).await.context("3 s after converging")?;
    println!("{} still the expected state everywhere", at());
    Ok(())
}

/// The checker's negative control: a deleted register read again, a removed element read again,
/// a lost write and a stale value are each reported, and an exact reading is not.
#[test]
fn the_state_checker_catches_resurrections_and_losses() {
    let expected = after_cut();
    let exact: BTreeMap<String, Value> = expected.clone();
    assert!(differences("n", &expected, &exact).is_empty());

    let mut read = exact.clone();
    read.insert(register(7), Value::Register(b"v0-7".to_vec()));
    read.insert(set(3), members(&["a0", "a1"]));
    read.insert(new_key(2), Value::Absent);
    read.insert(register(25), Value::Register(b"v0-25".to_vec()));
    let found = differences("n", &expected, &read);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(found[0].contains("lp/c2") && found[0].contains("LOST"), "{found:#?}");
    assert!(found[1].contains("lp/r25") && found[1].contains("stale"), "{found:#?}");
    assert!(found[2].contains("lp/r7") && found[2].contains("RESURRECTED"), "{found:#?}");
    assert!(found[3].contains("lp/s3") && found[3].contains("RESURRECTED"), "{found:#?}");
}
