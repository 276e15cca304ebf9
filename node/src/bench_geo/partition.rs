//! Part 3: anti-entropy efficiency after a partition.
//!
//! 1. Load `--keys` registers (`--value-bytes` each) in the first region with parallel `eventual`
//!    writers; wait until the nodes of every other region have recorded that many of its records
//!    (their lag histograms count them), then read every key there until all are readable.
//! 2. Once every node has completed two anti-entropy passes since the load, measure the links'
//!    idle traffic for a few seconds (gossip, anti-entropy digests), and the peer requests of that
//!    window by kind: the background any later figure includes.
//! 3. Block every link into and out of the first region (both directions), rewrite `--changed` of
//!    the keys there, spread over `--partition-secs` (they become hints for the other regions),
//!    then heal.
//! 4. From the heal, read the changed keys at `eventual` in every other region (straight to the
//!    nodes, not over the links) until all show the new values; the bytes delivered over every link
//!    from heal to that moment, divided by the changed data (key + value bytes), is the figure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use meridian_client::Client;
use meridian_wan::plan::NodePlan;
use tokio::time::Instant;

use super::{metrics, GeoBenchArgs, GeoCluster};
use crate::local_region::say;

/// Parallel writers of the load.
const LOAD_WRITERS: usize = 64;
/// Parallel reads of a convergence check.
const CHECK_READS: usize = 64;
/// How long idle link traffic is measured.
const IDLE: Duration = Duration::from_secs(5);
/// The goal: bytes over the links at most this many times the changed bytes.
const GOAL_RATIO: f64 = 3.0;
/// The counters read from every node's /metrics around the heal.
const COUNTERS: [&str; 8] = [
    "meridian_hints_written_total",
    "meridian_hints_replayed_total",
    "meridian_sync_passes_total",
    "meridian_sync_pass_errors_total",
    "meridian_read_repairs_total",
    "meridian_sync_fallbacks_total",
    "meridian_sync_states_applied_total",
    "meridian_log_truncated_records_total",
];

fn key(i: u64) -> String {
    format!("bench/ae-{i:08}")
}

/// Bytes delivered over the links, per ordered region pair (from, to).
type LinkBytes = BTreeMap<(String, String), u64>;

/// The cluster just before the heal.
struct AtHeal {
    /// Every node's /metrics counters when the links were cut.
    counters_at_cut: Vec<BTreeMap<String, f64>>,
    /// Every node's /metrics counters.
    counters: Vec<BTreeMap<String, f64>>,
    /// Bytes delivered over every link so far.
    link_bytes: LinkBytes,
    /// Every node's peer requests so far, by kind.
    kinds: PeerKinds,
    /// When the links were healed (right after the figures above were taken).
    healed_at: Instant,
}

/// Peer requests by kind, summed over the nodes: requests, request bytes, answer bytes.
type PeerKinds = BTreeMap<String, [f64; 3]>;

/// From the heal until every other region read every change, or until the timeout.
struct AfterHeal {
    /// From the heal until the last region read every changed key; `None`: not within the timeout.
    converged: Option<Duration>,
    /// The same per other region (the regions after the first, in plan order).
    per_region: Vec<Option<Duration>>,
    /// The changed keys each other region did not read as new yet.
    pending: Vec<Vec<u64>>,
    /// Bytes delivered over every link by then.
    link_bytes: LinkBytes,
}

pub(super) async fn run(args: &GeoBenchArgs, cluster: &GeoCluster) -> anyhow::Result<String> {
    let home = cluster.home().to_string();
    let timeout = Duration::from_secs(args.converge_timeout_secs);
    let mut out = format!(
        "3. Anti-entropy after a partition: {} keys of {} bytes loaded in {home}, {home} cut off for {} s while {} \
         of them change there, healed\n",
        args.keys, args.value_bytes, args.partition_secs, args.changed
    );

    // 1. Load.
    let writers = cluster.clients(0, 4usize.div_ceil(cluster.plan.regions[0].nodes.len())).await?;
    let readers = load(args, cluster, &writers, timeout, &mut out).await?;
    // Pushes that did not get through during the load left hints; wait until they are replayed, so
    // that the partition's figures are not about the load's backlog.
    drain_load_hints(cluster, timeout, &mut out).await;

    // 2. Idle traffic.
    let idle_rate = idle_link_rate(cluster, &mut out).await;

    // 3. Partition and change.
    let changed: Vec<u64> = (0..args.changed).map(|j| j * (args.keys / args.changed)).collect();
    let changed_bytes: u64 = changed.iter().map(|&i| (key(i).len() + args.value_bytes) as u64).sum();
    let at_heal = partition_and_change(args, cluster, &writers, &changed).await?;

    // 4. Convergence.
    let after = wait_converged(args, cluster, &readers, &changed, at_heal.healed_at, timeout).await;
    let counters_after = cluster.node_metrics().await;
    let kinds_after = cluster.peer_traffic().await;
    for client in writers.iter().chain(readers.iter().flatten()) {
        client.close().await;
    }

    // Report.
    let moved: LinkBytes = after
        .link_bytes
        .iter()
        .map(|(k, after)| (k.clone(), after - at_heal.link_bytes.get(k).copied().unwrap_or(0)))
        .collect();
    let window = after.converged.unwrap_or_else(|| at_heal.healed_at.elapsed());
    write_convergence(&mut out, args, cluster, changed_bytes, &after, total(&moved), timeout);
    write_traffic(&mut out, &moved, changed_bytes, idle_rate, window, after.converged.is_some());
    write_node_activity(&mut out, cluster, &at_heal.counters_at_cut, &at_heal.counters, &counters_after);
    out += "   peer requests, heal → converged (every node; payload bytes, the rest is QUIC's):\n";
    write_kinds(&mut out, &at_heal.kinds, &kinds_after, 1.0, ("requests", "request B", "answer B"));
    Ok(out)
}

/// Step 1: loads `--keys` registers in the first region through `writers`, waits until the nodes of
/// every other region have recorded them, then until every key reads back there, and reports it.
/// Returns the readers of each other region (the regions after the first, in plan order).
async fn load(
    args: &GeoBenchArgs,
    cluster: &GeoCluster,
    writers: &[Client],
    timeout: Duration,
    out: &mut String,
) -> anyhow::Result<Vec<Vec<Client>>> {
    let home = cluster.home();
    say!("[partition] loading {} keys in {home} ({LOAD_WRITERS} parallel writers, relaxed durability)", args.keys);
    let started = Instant::now();
    let failed = write_keys(writers, (0..args.keys).collect(), 0, args.value_bytes, LOAD_WRITERS).await;
    let load_time = started.elapsed();
    anyhow::ensure!(failed == 0, "{failed} of {} load writes failed", args.keys);
    let remote: Vec<(usize, NodePlan)> = cluster
        .plan
        .regions
        .iter()
        .enumerate()
        .skip(1)
        .flat_map(|(r, region)| region.nodes.iter().map(move |n| (r, n.clone())))
        .collect();
    let started = Instant::now();
    wait_records(cluster, home, &remote, args.keys, timeout).await?;
    let replicated = started.elapsed();
    let mut readers = Vec::new();
    for r in 1..cluster.plan.regions.len() {
        readers.push(cluster.clients(r, 1).await?);
    }
    read_back_load(args, cluster, &readers, started, timeout).await?;
    let verified = started.elapsed();
    let _ = writeln!(
        out,
        "   load: {} keys in {:.1} s ({:.0} writes/s, {LOAD_WRITERS} writers, relaxed); every key read back in every \
         other region {:.1} s after the load ended (record counts complete after {:.1} s)",
        args.keys,
        load_time.as_secs_f64(),
        args.keys as f64 / load_time.as_secs_f64().max(0.001),
        verified.as_secs_f64(),
        replicated.as_secs_f64()
    );
    Ok(readers)
}

/// Reads every loaded key in every other region, and the missing ones again, until none is missing
/// (failing once `timeout` has passed since `started`).
async fn read_back_load(
    args: &GeoBenchArgs,
    cluster: &GeoCluster,
    readers: &[Vec<Client>],
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    // The record counts overcount (a record delivered by a push and again by anti-entropy counts
    // twice), so they only say when to start reading: every key is then read in every other
    // region, and the missing ones again until none is.
    let all: Vec<u64> = (0..args.keys).collect();
    for (r, region_readers) in readers.iter().enumerate() {
        let mut missing = check(region_readers, &all, 0, args.value_bytes).await;
        while !missing.is_empty() {
            anyhow::ensure!(
                started.elapsed() < timeout,
                "after the load, {} of {} keys are not readable in {} within {} s",
                missing.len(),
                args.keys,
                cluster.plan.regions[r + 1].name,
                timeout.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            missing = check(region_readers, &missing, 0, args.value_bytes).await;
        }
    }
    Ok(())
}

/// Waits (at most `timeout`) until the hints the load left are replayed, and reports them.
async fn drain_load_hints(cluster: &GeoCluster, timeout: Duration, out: &mut String) {
    let started = Instant::now();
    let left = wait_hints_drained(cluster, timeout).await;
    let _ = writeln!(
        out,
        "   hints left by the load: {} (lifetime, every node); queues drained {}",
        hints_written(cluster).await,
        match left {
            0 => format!("{:.1} s later", started.elapsed().as_secs_f64()),
            n =>
                format!("NOT within {} s ({n} still queued: the figures below include their replay)", timeout.as_secs()),
        }
    );
}

/// Step 2: the links' idle traffic (gossip, anti-entropy digests) in bytes/s, measured over [`IDLE`]:
/// the background any later figure includes.
/// Also writes what the nodes' peer requests were in that window, by kind (payload only: the rest
/// of the link bytes is QUIC's framing, encryption and acknowledgements).
async fn idle_link_rate(cluster: &GeoCluster, out: &mut String) -> f64 {
    // Anti-entropy passes that began during the load still run rounds for the partitions it
    // changed (one WAN round trip each): idle starts once every node has completed two passes
    // since (at most a minute).
    let passes =
        |m: &std::collections::BTreeMap<String, f64>| m.get("meridian_sync_passes_total").copied().unwrap_or(0.0);
    let started: Vec<f64> = cluster.node_metrics().await.iter().map(passes).collect();
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(60) {
        let now: Vec<f64> = cluster.node_metrics().await.iter().map(passes).collect();
        if now.iter().zip(&started).all(|(n, s)| n - s >= 2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = writeln!(
        out,
        "   anti-entropy settled {:.1} s after the load (two passes on every node)",
        settle.elapsed().as_secs_f64()
    );
    let (before, kinds_before) = (total(&cluster.link_bytes()), cluster.peer_traffic().await);
    tokio::time::sleep(IDLE).await;
    let rate = (total(&cluster.link_bytes()) - before) as f64 / IDLE.as_secs_f64();
    let kinds_after = cluster.peer_traffic().await;
    let _ = writeln!(
        out,
        "   idle traffic: {rate:.0} B/s over every link; peer requests meanwhile (every node, in and out of its region):"
    );
    write_kinds(out, &kinds_before, &kinds_after, IDLE.as_secs_f64(), ("requests/s", "request B/s", "answer B/s"));
    rate
}

/// A table of the peer requests by kind between `before` and `after`, divided by `per` (1: totals).
fn write_kinds(out: &mut String, before: &PeerKinds, after: &PeerKinds, per: f64, headers: (&str, &str, &str)) {
    let _ = writeln!(out, "     {:<26}{:>12}{:>16}{:>16}", "KIND", headers.0, headers.1, headers.2);
    for (kind, after) in after {
        let was = before.get(kind).copied().unwrap_or_default();
        let delta: Vec<f64> = after.iter().zip(was).map(|(a, b)| (a - b) / per).collect();
        if delta[0] > 0.0 {
            let _ = writeln!(out, "     {:<26}{:>12.1}{:>16.0}{:>16.0}", kind, delta[0], delta[1], delta[2]);
        }
    }
}

/// Step 3: blocks every link into and out of the first region, rewrites `changed` there over
/// `--partition-secs`, and heals at its end; returns the figures taken just before the heal.
async fn partition_and_change(
    args: &GeoBenchArgs,
    cluster: &GeoCluster,
    writers: &[Client],
    changed: &[u64],
) -> anyhow::Result<AtHeal> {
    let home = cluster.home();
    say!("[partition] cutting {home} off for {} s, changing {} keys there", args.partition_secs, args.changed);
    let cut_links: Vec<usize> = cluster
        .plan
        .links
        .iter()
        .enumerate()
        .filter(|(_, l)| l.from_region == home || l.to_region == home)
        .map(|(i, _)| i)
        .collect();
    let counters_at_cut = cluster.node_metrics().await;
    for &i in &cut_links {
        cluster.links[i].block();
    }
    let cut_at = Instant::now();
    let partition = Duration::from_secs(args.partition_secs);
    write_changes(args, writers, changed, cut_at, partition).await?;
    tokio::time::sleep_until(cut_at + partition).await;
    let counters = cluster.node_metrics().await;
    let kinds = cluster.peer_traffic().await;
    let link_bytes = cluster.link_bytes();
    for &i in &cut_links {
        cluster.links[i].heal();
    }
    let healed_at = Instant::now();
    say!("[partition] healed; reading the {} changed keys in every other region until all are new", args.changed);
    Ok(AtHeal { counters_at_cut, counters, link_bytes, kinds, healed_at })
}

/// Writes generation 1 of `changed` in up to 10 batches spread over the partition that began at
/// `cut_at`; fails if any write failed.
async fn write_changes(
    args: &GeoBenchArgs,
    writers: &[Client],
    changed: &[u64],
    cut_at: Instant,
    partition: Duration,
) -> anyhow::Result<()> {
    // Spread the changes over the partition, leaving its last second quiet.
    let spread = partition.saturating_sub(Duration::from_secs(1));
    let batches = 10u64.min(args.changed);
    let mut change_failed = 0;
    for b in 0..batches {
        tokio::time::sleep_until(cut_at + spread.mul_f64(b as f64 / batches as f64)).await;
        let part: Vec<u64> = changed
            .iter()
            .copied()
            .skip((b * args.changed / batches) as usize)
            .take(((b + 1) * args.changed / batches - b * args.changed / batches) as usize)
            .collect();
        change_failed += write_keys(writers, part, 1, args.value_bytes, LOAD_WRITERS).await;
    }
    anyhow::ensure!(change_failed == 0, "{change_failed} of {} changes failed during the partition", args.changed);
    Ok(())
}

/// Step 4: from the heal, reads the changed keys at `eventual` in every other region (straight to
/// the nodes, not over the links) until all show the new values, at most `timeout`.
async fn wait_converged(
    args: &GeoBenchArgs,
    cluster: &GeoCluster,
    readers: &[Vec<Client>],
    changed: &[u64],
    healed_at: Instant,
    timeout: Duration,
) -> AfterHeal {
    let mut pending: Vec<Vec<u64>> = readers.iter().map(|_| changed.to_vec()).collect();
    let mut per_region = vec![None; readers.len()];
    let (converged, link_bytes) = loop {
        for (r, region_readers) in readers.iter().enumerate() {
            if pending[r].is_empty() {
                continue;
            }
            pending[r] = check(region_readers, &pending[r], 1, args.value_bytes).await;
            if pending[r].is_empty() {
                per_region[r] = Some(healed_at.elapsed());
            }
        }
        if pending.iter().all(Vec::is_empty) {
            break (Some(healed_at.elapsed()), cluster.link_bytes());
        }
        if healed_at.elapsed() >= timeout {
            break (None, cluster.link_bytes());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    AfterHeal { converged, per_region, pending, link_bytes }
}

/// The report's baseline line, and when each other region converged (or how much did not).
fn write_convergence(
    out: &mut String,
    args: &GeoBenchArgs,
    cluster: &GeoCluster,
    changed_bytes: u64,
    after: &AfterHeal,
    moved_total: u64,
    timeout: Duration,
) {
    let others = after.per_region.len();
    let _ = writeln!(
        out,
        "   baseline: changed data = {} keys × (key + value) = {changed_bytes} bytes (each of the {} other regions \
         needs it, so {} bytes is the floor over the links without compression)",
        args.changed,
        others,
        changed_bytes * others as u64
    );
    match after.converged {
        Some(t) => {
            let _ = writeln!(
                out,
                "   converged {:.2} s after the heal ({}); bytes over every link (UDP payload, both directions) from \
                 heal to convergence: {moved_total}",
                t.as_secs_f64(),
                after
                    .per_region
                    .iter()
                    .enumerate()
                    .map(|(r, t)| format!(
                        "{} {:.2} s",
                        cluster.plan.regions[r + 1].name,
                        t.map_or(f64::NAN, |t| t.as_secs_f64())
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        None => {
            let left: usize = after.pending.iter().map(Vec::len).sum();
            let _ = writeln!(
                out,
                "   NOT converged within {} s of the heal: {left} (region, key) pairs still old; bytes so far {moved_total}",
                timeout.as_secs()
            );
        }
    }
}

/// The report's table of bytes over the links from the heal to convergence (over `window`), against
/// the changed data and above the idle background, and the bytes per direction.
fn write_traffic(
    out: &mut String,
    moved: &LinkBytes,
    changed_bytes: u64,
    idle_rate: f64,
    window: Duration,
    converged: bool,
) {
    let moved_total = total(moved);
    let background = idle_rate * window.as_secs_f64();
    let ratio = moved_total as f64 / changed_bytes as f64;
    let net_ratio = (moved_total as f64 - background).max(0.0) / changed_bytes as f64;
    let _ = writeln!(out, "   {:<34}{:>14}{:>10}   GOAL ratio ≤ {GOAL_RATIO}", "FIGURE", "BYTES", "RATIO");
    let _ = writeln!(out, "   {:<34}{:>14}{:>10.2}", "changed data (baseline)", changed_bytes, 1.0);
    let _ = writeln!(
        out,
        "   {:<34}{:>14}{:>10.2}   {}",
        "links, heal → converged",
        moved_total,
        ratio,
        if !converged {
            "not converged"
        } else if ratio <= GOAL_RATIO {
            "met"
        } else {
            "MISSED"
        }
    );
    let _ = writeln!(
        out,
        "   {:<34}{:>14.0}{:>10.2}   (idle traffic {:.0} B/s × {:.2} s subtracted)",
        "  of which above idle background",
        (moved_total as f64 - background).max(0.0),
        net_ratio,
        idle_rate,
        window.as_secs_f64()
    );
    *out += "   bytes per direction, heal → converged:\n";
    for ((from, to), bytes) in moved {
        let _ = writeln!(out, "     {from:>10} → {to:<10}{bytes:>14}");
    }
}

/// The report's table of what every node did from the heal to convergence ([`COUNTERS`], deltas
/// between `before` and `after` but the lifetime hints written at the heal, and the log records
/// cut between `cut_at` and the heal).
fn write_node_activity(
    out: &mut String,
    cluster: &GeoCluster,
    cut_at: &[BTreeMap<String, f64>],
    before: &[BTreeMap<String, f64>],
    after: &[BTreeMap<String, f64>],
) {
    *out += "   what the nodes did meanwhile (/metrics counter deltas, heal → converged; hints = writes kept during \
             the partition and replayed on heal, sync passes = anti-entropy pulls, fallbacks = partitions a pull \
             caught up by digest/range sync because the log it needed was cut, states = keys' states it applied \
             from them; log cut = records truncated during the partition):\n";
    let _ = writeln!(
        out,
        "     {:<16}{:>14}{:>15}{:>13}{:>12}{:>14}{:>11}{:>8}{:>9}",
        "NODE",
        "hints written*",
        "hints replayed",
        "sync passes",
        "sync errors",
        "read repairs",
        "fallbacks",
        "states",
        "log cut"
    );
    for (i, (_, node)) in cluster.plan.nodes().enumerate() {
        let (before, after, cut) = (&before[i], &after[i], &cut_at[i]);
        let delta = |name: &str| after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
        let count = |m: &BTreeMap<String, f64>, name: &str| m.get(name).copied().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "     {:<16}{:>14.0}{:>15.0}{:>13.0}{:>12.0}{:>14.0}{:>11.0}{:>8.0}{:>9.0}",
            node.name,
            count(before, COUNTERS[0]),
            delta(COUNTERS[1]),
            delta(COUNTERS[2]),
            delta(COUNTERS[3]),
            delta(COUNTERS[4]),
            delta(COUNTERS[5]),
            delta(COUNTERS[6]),
            count(before, COUNTERS[7]) - count(cut, COUNTERS[7])
        );
    }
    let queued_at_heal: f64 = before.iter().map(|c| c.get("meridian_hints_queued").copied().unwrap_or(0.0)).sum();
    *out += "     (* hints written: lifetime total at the heal, load included)\n";
    let _ = writeln!(out, "     hints queued at the heal, every node: {queued_at_heal:.0}");
}

/// Waits (at most `timeout`) until no node has hints queued; returns how many are left.
async fn wait_hints_drained(cluster: &GeoCluster, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut queued = 0.0;
        for (_, node) in cluster.plan.nodes() {
            queued += metrics(node, &cluster.plan.ca_cert)
                .await
                .ok()
                .and_then(|m| m.get("meridian_hints_queued").copied())
                .unwrap_or(0.0);
        }
        if queued <= 0.0 || Instant::now() >= deadline {
            return queued.max(0.0) as u64;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Hints written so far, every node.
async fn hints_written(cluster: &GeoCluster) -> u64 {
    let mut written = 0.0;
    for (_, node) in cluster.plan.nodes() {
        written += metrics(node, &cluster.plan.ca_cert)
            .await
            .ok()
            .and_then(|m| m.get("meridian_hints_written_total").copied())
            .unwrap_or(0.0);
    }
    written as u64
}

fn total(bytes: &LinkBytes) -> u64 {
    bytes.values().sum()
}

/// Writes generation `generation` of the registers `indices` with `parallel` writers over
/// `clients`; returns how many failed.
async fn write_keys(clients: &[Client], indices: Vec<u64>, generation: u32, value_len: usize, parallel: usize) -> u64 {
    let failed = Arc::new(AtomicU64::new(0));
    futures::stream::iter(indices.into_iter().enumerate())
        .for_each_concurrent(parallel, |(n, i)| {
            let client = clients[n % clients.len()].clone();
            let failed = failed.clone();
            async move {
                let h = client.register(key(i));
                let ok = matches!(
                    tokio::time::timeout(Duration::from_secs(10), h.set(super::value(generation, i, value_len))).await,
                    Ok(Ok(()))
                );
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    failed.load(Ordering::Relaxed)
}

/// The keys of `indices` that do not (yet) read as generation `generation` at eventual.
async fn check(clients: &[Client], indices: &[u64], generation: u32, value_len: usize) -> Vec<u64> {
    let results: Vec<Option<u64>> = futures::stream::iter(indices.iter().copied().enumerate())
        .map(|(n, i)| {
            let client = clients[n % clients.len()].clone();
            async move {
                let got = tokio::time::timeout(Duration::from_secs(5), client.register(key(i)).get()).await;
                match got {
                    Ok(Ok(Some(v))) if v == super::value(generation, i, value_len) => None,
                    _ => Some(i),
                }
            }
        })
        .buffered(CHECK_READS)
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// Waits until the nodes of every other region have made, together, at least `records × rf`
/// records of `home` durable (their lag histograms' counts: every replica of a key in a region
/// holds it), at most `timeout`.
async fn wait_records(
    cluster: &GeoCluster,
    home: &str,
    remote: &[(usize, NodePlan)],
    records: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let want = records * cluster.plan.rf as u64;
    loop {
        let mut per_region: BTreeMap<usize, u64> = BTreeMap::new();
        for (r, node) in remote {
            let report = cluster.lag_report(node).await?;
            let got = report.regions.iter().find(|l| l.from_region == home).map_or(0, |l| l.records);
            *per_region.entry(*r).or_insert(0) += got;
        }
        let behind: Vec<String> = per_region
            .iter()
            .filter(|(_, got)| **got < want)
            .map(|(r, got)| format!("{} has {got}", cluster.plan.regions[*r].name))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the load did not replicate within {} s: {} of {want} records (keys × rf)",
            timeout.as_secs(),
            behind.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
