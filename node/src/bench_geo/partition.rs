//! Part 3: anti-entropy efficiency after a partition.
//!
//! 1. Load `--keys` registers (`--value-bytes` each) in the first region with parallel `eventual`
//!    writers; wait until the nodes of every other region have recorded that many of its records
//!    (their lag histograms count them), then read every key there until all are readable.
//! 2. Measure the links' idle traffic for a few seconds (gossip, anti-entropy digests): the
//!    background any later figure includes.
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
const COUNTERS: [&str; 5] = [
    "meridian_hints_written_total",
    "meridian_hints_replayed_total",
    "meridian_sync_passes_total",
    "meridian_sync_pass_errors_total",
    "meridian_read_repairs_total",
];

fn key(i: u64) -> String {
    format!("bench/ae-{i:08}")
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
    say!("[partition] loading {} keys in {home} ({LOAD_WRITERS} parallel writers, relaxed durability)", args.keys);
    let started = Instant::now();
    let failed = write_keys(&writers, (0..args.keys).collect(), 0, args.value_bytes, LOAD_WRITERS).await;
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
    wait_records(cluster, &home, &remote, args.keys, timeout).await?;
    let replicated = started.elapsed();
    let mut readers = Vec::new();
    for r in 1..cluster.plan.regions.len() {
        readers.push(cluster.clients(r, 1).await?);
    }
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

    // Pushes that did not get through during the load left hints; wait until they are replayed, so
    // that the partition's figures are not about the load's backlog.
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

    // 2. Idle traffic.
    let before = total(&cluster.link_bytes());
    tokio::time::sleep(IDLE).await;
    let idle_rate = (total(&cluster.link_bytes()) - before) as f64 / IDLE.as_secs_f64();

    // 3. Partition and change.
    let changed: Vec<u64> = (0..args.changed).map(|j| j * (args.keys / args.changed)).collect();
    let changed_bytes: u64 = changed.iter().map(|&i| (key(i).len() + args.value_bytes) as u64).sum();
    say!("[partition] cutting {home} off for {} s, changing {} keys there", args.partition_secs, args.changed);
    let cut_links: Vec<usize> = cluster
        .plan
        .links
        .iter()
        .enumerate()
        .filter(|(_, l)| l.from_region == home || l.to_region == home)
        .map(|(i, _)| i)
        .collect();
    for &i in &cut_links {
        cluster.links[i].block();
    }
    let cut_at = Instant::now();
    let partition = Duration::from_secs(args.partition_secs);
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
        change_failed += write_keys(&writers, part, 1, args.value_bytes, LOAD_WRITERS).await;
    }
    anyhow::ensure!(change_failed == 0, "{change_failed} of {} changes failed during the partition", args.changed);
    tokio::time::sleep_until(cut_at + partition).await;
    let mut counters_before = Vec::new();
    for (_, node) in cluster.plan.nodes() {
        counters_before.push(metrics(node).await.unwrap_or_default());
    }
    let queued_at_heal: f64 =
        counters_before.iter().map(|c| c.get("meridian_hints_queued").copied().unwrap_or(0.0)).sum();
    let bytes_before = cluster.link_bytes();
    for &i in &cut_links {
        cluster.links[i].heal();
    }
    let healed_at = Instant::now();
    say!("[partition] healed; reading the {} changed keys in every other region until all are new", args.changed);

    // 4. Convergence.
    let mut pending: Vec<Vec<u64>> = readers.iter().map(|_| changed.clone()).collect();
    let mut converged_in = vec![None; readers.len()];
    let (converged_at, bytes_after) = loop {
        for (r, region_readers) in readers.iter().enumerate() {
            if pending[r].is_empty() {
                continue;
            }
            pending[r] = check(region_readers, &pending[r], 1, args.value_bytes).await;
            if pending[r].is_empty() {
                converged_in[r] = Some(healed_at.elapsed());
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
    let mut counters_after = Vec::new();
    for (_, node) in cluster.plan.nodes() {
        counters_after.push(metrics(node).await.unwrap_or_default());
    }
    for client in writers.iter().chain(readers.iter().flatten()) {
        client.close().await;
    }

    // Report.
    let moved: BTreeMap<(String, String), u64> =
        bytes_after.iter().map(|(k, after)| (k.clone(), after - bytes_before.get(k).copied().unwrap_or(0))).collect();
    let moved_total = total(&moved);
    let window = converged_at.unwrap_or_else(|| healed_at.elapsed());
    let background = idle_rate * window.as_secs_f64();
    let ratio = moved_total as f64 / changed_bytes as f64;
    let net_ratio = (moved_total as f64 - background).max(0.0) / changed_bytes as f64;
    let _ = writeln!(
        out,
        "   baseline: changed data = {} keys × (key + value) = {changed_bytes} bytes (each of the {} other regions \
         needs it, so {} bytes is the floor over the links without compression)",
        args.changed,
        readers.len(),
        changed_bytes * readers.len() as u64
    );
    match converged_at {
        Some(t) => {
            let _ = writeln!(
                out,
                "   converged {:.2} s after the heal ({}); bytes over every link (UDP payload, both directions) from \
                 heal to convergence: {moved_total}",
                t.as_secs_f64(),
                converged_in
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
            let left: usize = pending.iter().map(Vec::len).sum();
            let _ = writeln!(
                out,
                "   NOT converged within {} s of the heal: {left} (region, key) pairs still old; bytes so far {moved_total}",
                timeout.as_secs()
            );
        }
    }
    let _ = writeln!(out, "   {:<34}{:>14}{:>10}   GOAL ratio ≤ {GOAL_RATIO}", "FIGURE", "BYTES", "RATIO");
    let _ = writeln!(out, "   {:<34}{:>14}{:>10.2}", "changed data (baseline)", changed_bytes, 1.0);
    let _ = writeln!(
        out,
        "   {:<34}{:>14}{:>10.2}   {}",
        "links, heal → converged",
        moved_total,
        ratio,
        if converged_at.is_none() {
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
    out += "   bytes per direction, heal → converged:\n";
    for ((from, to), bytes) in &moved {
        let _ = writeln!(out, "     {from:>10} → {to:<10}{bytes:>14}");
    }
    out += "   what the nodes did meanwhile (/metrics counter deltas, heal → converged; hints = writes kept during \
            the partition and replayed on heal, sync passes = anti-entropy pulls):\n";
    let _ = writeln!(
        out,
        "     {:<16}{:>14}{:>15}{:>13}{:>12}{:>14}",
        "NODE", "hints written*", "hints replayed", "sync passes", "sync errors", "read repairs"
    );
    for (i, (_, node)) in cluster.plan.nodes().enumerate() {
        let before = &counters_before[i];
        let after = &counters_after[i];
        let delta = |name: &str| after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "     {:<16}{:>14.0}{:>15.0}{:>13.0}{:>12.0}{:>14.0}",
            node.name,
            before.get(COUNTERS[0]).copied().unwrap_or(0.0),
            delta(COUNTERS[1]),
            delta(COUNTERS[2]),
            delta(COUNTERS[3]),
            delta(COUNTERS[4])
        );
    }
    out += "     (* hints written: lifetime total at the heal, load included)\n";
    let _ = writeln!(out, "     hints queued at the heal, every node: {queued_at_heal:.0}");
    Ok(out)
}

/// Waits (at most `timeout`) until no node has hints queued; returns how many are left.
async fn wait_hints_drained(cluster: &GeoCluster, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut queued = 0.0;
        for (_, node) in cluster.plan.nodes() {
            queued += metrics(node).await.ok().and_then(|m| m.get("meridian_hints_queued").copied()).unwrap_or(0.0);
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
        written += metrics(node).await.ok().and_then(|m| m.get("meridian_hints_written_total").copied()).unwrap_or(0.0);
    }
    written as u64
}

fn total(bytes: &BTreeMap<(String, String), u64>) -> u64 {
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
