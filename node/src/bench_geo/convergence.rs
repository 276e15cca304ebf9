//! Part 1: cross-region convergence lag at a write rate.
//!
//! Open-loop writers in the first region: write `i` is due at `start + i / rate`, issued then (or as
//! soon as fewer than `--max-inflight` writes are in flight), alternately a ~100-byte register set
//! and a counter increment, at `eventual`, over `--keys` keys. Meanwhile a probe writes a marker
//! every 250 ms and polls every other region for it. Afterwards every node of the other regions is
//! asked for its lag histogram of the first region's records (a lifetime figure: the cluster is
//! fresh, so it holds this run's writes only, probes included).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_client::proto::RegionLagReport;
use meridian_client::{Client, Consistency};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{histogram, ms, record, GeoBenchArgs, GeoCluster};
use crate::local_region::say;

/// How often the probe writes a marker.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How often a probe polls the other region.
const PROBE_POLL: Duration = Duration::from_millis(2);
/// How long a probe polls before calling it not converged.
const PROBE_BOUND: Duration = Duration::from_secs(10);
/// A write started this late after its due time counts as late (the writer fell behind).
const LATE: Duration = Duration::from_millis(10);
/// The goal: lag p99 within the one-way delay plus this.
const GOAL_MARGIN_MS: u64 = 15;

struct Writes {
    /// From due time to acknowledgement (open loop: includes time waiting for a free slot).
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    late: u64,
    elapsed: Duration,
    issued: u64,
}

/// What the nodes of the other regions report of the first region's records once these stopped
/// arriving.
struct Settled {
    /// (region, node, its lag figures of the first region's records), per node of the other regions.
    lags: Vec<(String, String, RegionLagReport)>,
    /// Whether records were still arriving when the wait gave up.
    still_arriving: bool,
    /// When the wait began (the writers had stopped).
    started: Instant,
}

/// What a node did over the run (/metrics counter deltas).
struct NodeActivity {
    node: String,
    hints_written: f64,
    hints_replayed: f64,
    sync_passes: f64,
}

pub(super) async fn run(args: &GeoBenchArgs, cluster: &GeoCluster) -> anyhow::Result<String> {
    let home = cluster.home().to_string();
    let writers = cluster.clients(0, 4usize.div_ceil(cluster.plan.regions[0].nodes.len())).await?;
    let probe_writer = cluster.client_to(0, 0).await?;
    let mut probe_readers = Vec::new();
    for r in 1..cluster.plan.regions.len() {
        probe_readers.push((r, cluster.client_to(r, 0).await?));
    }
    say!(
        "[convergence] {} s of eventual writes in {home} at {} writes/s (open loop, at most {} in flight), probes every {} ms",
        args.secs,
        args.rate,
        args.max_inflight,
        PROBE_EVERY.as_millis()
    );
    let counters_before = cluster.node_metrics().await;
    let until = Instant::now() + Duration::from_secs(args.secs);
    let (writes, probes) = tokio::join!(write_paced(args, &writers), probe(&probe_writer, &probe_readers, until));
    for client in writers.iter().chain([&probe_writer]).chain(probe_readers.iter().map(|(_, c)| c)) {
        client.close().await;
    }
    let settled = wait_settled(cluster, &home).await?;
    let activity = node_activity(cluster, &counters_before).await;

    let mut out = format!(
        "1. Cross-region convergence lag from {home}: eventual writes (register set / counter incr over {} keys), \
         open loop\n",
        args.keys
    );
    write_writes(&mut out, args, &writes);
    write_lags(&mut out, cluster, &home, &settled);
    write_node_activity(&mut out, &activity);
    write_probes(&mut out, cluster, &home, probes);
    Ok(out)
}

/// Lets the stragglers land: waits until no node's record count of `home` moves for 1 s (at most
/// 15 s), and returns every other region's nodes' lag figures of `home` at that moment.
async fn wait_settled(cluster: &GeoCluster, home: &str) -> anyhow::Result<Settled> {
    let remote: Vec<_> =
        cluster.plan.nodes().filter(|(r, _)| r.name != home).map(|(r, n)| (r.name.clone(), n.clone())).collect();
    let mut last = Vec::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    let mut still_arriving = false;
    let lags = loop {
        let mut lags = Vec::new();
        for (region, node) in &remote {
            let report = cluster.lag_report(node).await?;
            let lag = report.regions.into_iter().find(|l| l.from_region == home).unwrap_or_default();
            lags.push((region.clone(), node.name.clone(), lag));
        }
        let counts: Vec<u64> = lags.iter().map(|(_, _, l)| l.records).collect();
        if counts == last {
            break lags;
        }
        if Instant::now() >= deadline {
            still_arriving = true;
            break lags;
        }
        last = counts;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    Ok(Settled { lags, still_arriving, started })
}

/// Every node's hints and sync passes since `before` (its /metrics counters, in plan order).
async fn node_activity(cluster: &GeoCluster, before: &[BTreeMap<String, f64>]) -> Vec<NodeActivity> {
    let after = cluster.node_metrics().await;
    cluster
        .plan
        .nodes()
        .enumerate()
        .map(|(i, (_, node))| {
            let delta =
                |name: &str| after[i].get(name).copied().unwrap_or(0.0) - before[i].get(name).copied().unwrap_or(0.0);
            NodeActivity {
                node: node.name.clone(),
                hints_written: delta("meridian_hints_written_total"),
                hints_replayed: delta("meridian_hints_replayed_total"),
                sync_passes: delta("meridian_sync_passes_total"),
            }
        })
        .collect()
}

/// The report's lines on the writers: rate achieved against the target, latency, failures.
fn write_writes(out: &mut String, args: &GeoBenchArgs, writes: &Writes) {
    let secs = writes.elapsed.as_secs_f64().max(0.001);
    let ok = writes.latency.len();
    let achieved = ok as f64 / secs;
    let _ = writeln!(
        out,
        "   target {} writes/s for {} s; achieved {:.0} writes/s ({} acknowledged, {} failed, {} started >{} ms late){}",
        args.rate,
        args.secs,
        achieved,
        ok,
        writes.errors,
        writes.late,
        LATE.as_millis(),
        if achieved < 0.95 * args.rate as f64 { "  << below target" } else { "" }
    );
    if !writes.latency.is_empty() {
        let _ = writeln!(
            out,
            "   write latency from due time: p50 {} ms, p99 {} ms, max {} ms",
            ms(writes.latency.value_at_quantile(0.5)),
            ms(writes.latency.value_at_quantile(0.99)),
            ms(writes.latency.max())
        );
    }
    if let Some(e) = &writes.first_error {
        let _ = writeln!(out, "   first write error: {e}");
    }
    let _ = writeln!(out, "   issued {} of {} scheduled writes", writes.issued, args.rate * args.secs);
}

/// The report's table of each node's own lag histogram of `home`'s records, against the one-way
/// delay.
fn write_lags(out: &mut String, cluster: &GeoCluster, home: &str, settled: &Settled) {
    *out += "   lag per node (node's own histogram: origin write timestamp → durable here, ms; baseline = one-way delay):\n";
    let _ = writeln!(
        out,
        "   {:<16}{:<12}{:>9}{:>8}{:>8}{:>8}{:>10}{:>13}   GOAL p99 ≤ one-way + {GOAL_MARGIN_MS} ms",
        "NODE", "REGION", "RECORDS", "P50", "P99", "MAX", "ONE-WAY", "P99-ONE-WAY"
    );
    if settled.still_arriving {
        let _ = writeln!(
            out,
            "   (records were still arriving {:.0} s after the writers stopped: these are the figures at that moment)",
            settled.started.elapsed().as_secs_f64()
        );
    }
    for (region, node, lag) in &settled.lags {
        let one_way = cluster.one_way_ms(home, region);
        let over = lag.lag_p99_ms as i64 - one_way as i64;
        let _ = writeln!(
            out,
            "   {:<16}{:<12}{:>9}{:>8}{:>8}{:>8}{:>10}{:>13}   {}",
            node,
            region,
            lag.records,
            lag.lag_p50_ms,
            lag.lag_p99_ms,
            lag.lag_max_ms,
            one_way,
            over,
            if lag.records == 0 {
                "no records"
            } else if over <= GOAL_MARGIN_MS as i64 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}

/// The report's lines on the hints and sync passes of every node over the run.
fn write_node_activity(out: &mut String, activity: &[NodeActivity]) {
    *out += "   the nodes meanwhile (/metrics deltas over the run; a push that fails or finds no free stream in time \
             leaves a hint, replayed every 500 ms; anti-entropy pulls what neither delivered):\n";
    for NodeActivity { node, hints_written: written, hints_replayed: replayed, sync_passes: syncs } in activity {
        let _ = writeln!(
            out,
            "     {node:<16} hints written {written:>8.0}   hints replayed {replayed:>8.0}   sync passes {syncs:>6.0}"
        );
    }
}

/// The report's table of the client-side probe's lag per other region, against the one-way delay.
fn write_probes(out: &mut String, cluster: &GeoCluster, home: &str, probes: Vec<(usize, ProbeStats)>) {
    let _ = writeln!(
        out,
        "   client-side probe (marker written in {home}, polled every {} ms in each region; from the write's start, \
         so it includes the local write and up to one poll + one local read):",
        PROBE_POLL.as_millis()
    );
    let _ = writeln!(
        out,
        "   {:<12}{:>7}{:>8}{:>8}{:>8}{:>10}{:>13}   NOTE",
        "TO", "COUNT", "P50", "P99", "MAX", "ONE-WAY", "P99-ONE-WAY"
    );
    for (r, stats) in probes {
        let region = &cluster.plan.regions[r].name;
        let one_way = cluster.one_way_ms(home, region);
        let h = &stats.latency;
        let (p50, p99, max, over) = if h.is_empty() {
            ("-".into(), "-".into(), "-".into(), "-".into())
        } else {
            let p99 = h.value_at_quantile(0.99);
            (ms(h.value_at_quantile(0.5)), ms(p99), ms(h.max()), format!("{:.1}", p99 as f64 / 1000.0 - one_way as f64))
        };
        let mut note = Vec::new();
        if stats.not_converged > 0 {
            note.push(format!("{} not converged within {} s", stats.not_converged, PROBE_BOUND.as_secs()));
        }
        if stats.write_failed > 0 {
            note.push(format!("{} marker writes failed", stats.write_failed));
        }
        let _ = writeln!(
            out,
            "   {:<12}{:>7}{:>8}{:>8}{:>8}{:>10}{:>13}   {}",
            region,
            h.len(),
            p50,
            p99,
            max,
            one_way,
            over,
            note.join("; ")
        );
    }
}

/// Writes paced to `--rate` for `--secs`, over the `writers` round-robin.
async fn write_paced(args: &GeoBenchArgs, writers: &[Client]) -> Writes {
    let total = args.rate * args.secs;
    let slots = Arc::new(Semaphore::new(args.max_inflight));
    let late = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let interval_ns = 1_000_000_000f64 / args.rate as f64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Result<(), String>)>();
    let collect = tokio::spawn(async move {
        let mut w =
            Writes { latency: histogram(), errors: 0, first_error: None, late: 0, elapsed: Duration::ZERO, issued: 0 };
        while let Some((due, result)) = rx.recv().await {
            match result {
                Ok(()) => record(&mut w.latency, due.elapsed()),
                Err(e) => {
                    w.errors += 1;
                    w.first_error.get_or_insert(e);
                }
            }
        }
        w
    });
    let value_len = args.value_bytes;
    let mut issued = 0u64;
    let hard_stop = started + Duration::from_secs(args.secs) + Duration::from_secs(5);
    for i in 0..total {
        let due = started + Duration::from_nanos((i as f64 * interval_ns) as u64);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = tokio::time::timeout_at(hard_stop, slots.clone().acquire_owned()).await else { break };
        let permit = permit.expect("never closed");
        if due.elapsed() > LATE {
            late.fetch_add(1, Ordering::Relaxed);
        }
        if Instant::now() >= started + Duration::from_secs(args.secs) + Duration::from_secs(1) {
            // Far behind the schedule: stop issuing rather than run over.
            break;
        }
        let client = writers[(i as usize) % writers.len()].clone();
        let key_index = i % args.keys;
        let tx = tx.clone();
        issued += 1;
        tokio::spawn(async move {
            let result = if i % 2 == 0 {
                let h = client.register(format!("bench/lag-reg-{key_index}"));
                tokio::time::timeout(Duration::from_secs(10), h.set(super::value(0, i, value_len))).await
            } else {
                let h = client.counter(format!("bench/lag-cnt-{key_index}"));
                tokio::time::timeout(Duration::from_secs(10), async { h.incr(1).await.map(drop) }).await
            };
            let result = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 10 s".into()),
            };
            let _ = tx.send((due, result));
            drop(permit);
        });
    }
    drop(tx);
    let elapsed_issue = started.elapsed();
    let mut w = collect.await.expect("collector");
    w.elapsed = started.elapsed().max(elapsed_issue);
    w.late = late.load(Ordering::Relaxed);
    w.issued = issued;
    w
}

struct ProbeStats {
    latency: Histogram<u64>,
    not_converged: u64,
    write_failed: u64,
}

/// Until `until`: every [`PROBE_EVERY`], a marker written at eventual in the first region, then
/// polled in every other region until it shows (at most [`PROBE_BOUND`]).
async fn probe(writer: &Client, readers: &[(usize, Client)], until: Instant) -> Vec<(usize, ProbeStats)> {
    let mut stats: Vec<(usize, ProbeStats)> = readers
        .iter()
        .map(|(r, _)| (*r, ProbeStats { latency: histogram(), not_converged: 0, write_failed: 0 }))
        .collect();
    let run = std::process::id();
    let mut n = 0u64;
    let mut next = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep_until(next).await;
        next += PROBE_EVERY;
        n += 1;
        let key = format!("bench/probe-{run}-{n}");
        let marker = format!("m{run}-{n}").into_bytes();
        let started = Instant::now();
        let written = tokio::time::timeout(
            Duration::from_secs(5),
            writer.register(key.as_str()).consistency(Consistency::Eventual).set(marker.clone()),
        )
        .await;
        if !matches!(written, Ok(Ok(()))) {
            for (_, s) in &mut stats {
                s.write_failed += 1;
            }
            continue;
        }
        let polls = readers.iter().map(|(_, reader)| {
            let h = reader.register(key.as_str()).consistency(Consistency::Eventual);
            let marker = marker.clone();
            async move {
                loop {
                    if let Ok(Ok(Some(v))) = tokio::time::timeout(Duration::from_millis(500), h.get()).await {
                        if v == marker {
                            return Some(started.elapsed());
                        }
                    }
                    if started.elapsed() >= PROBE_BOUND {
                        return None;
                    }
                    tokio::time::sleep(PROBE_POLL).await;
                }
            }
        });
        for ((_, s), outcome) in stats.iter_mut().zip(futures::future::join_all(polls).await) {
            match outcome {
                Some(lag) => record(&mut s.latency, lag),
                None => s.not_converged += 1,
            }
        }
    }
    stats
}
