//! `meridian bench`: drives a node over the native protocol with N concurrent clients (one QUIC
//! connection each) doing 100-byte register writes, then reads, at `eventual`; records latency in
//! hdrhistogram; and, in the same run, measures a raw `rocksdb` put loop with the same durability and
//! writer count, printing Meridian's write rate as a ratio of it.
//!
//! Only ratios measured in one run mean anything on a shared, noisy machine; the absolute figures are
//! printed for context, never asserted.

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use meridian_client::{Client, Consistency};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::storage::{raw_rocksdb_put_loop, Durability};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Concurrent clients (and raw writer threads).
    pub clients: usize,
    /// Writes per client, and again reads per client.
    pub ops_per_client: u64,
    /// Value size.
    pub value_bytes: usize,
    /// A running node to drive; `None` starts one in-process on a temporary directory.
    pub endpoint: Option<SocketAddr>,
    /// Its certificate (with `endpoint`).
    pub ca_cert: Option<PathBuf>,
    /// Durability of the in-process node and of the raw baseline.
    pub durability: Durability,
    /// Skip the raw RocksDB baseline.
    pub skip_baseline: bool,
}

/// One phase's figures.
#[derive(Debug)]
pub struct PhaseReport {
    /// Operations completed.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
}

/// The whole run.
#[derive(Debug)]
pub struct BenchReport {
    /// Meridian writes.
    pub writes: PhaseReport,
    /// Meridian reads.
    pub reads: PhaseReport,
    /// Raw RocksDB puts (same writers, same durability).
    pub raw: Option<PhaseReport>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

fn progress(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

/// Runs the benchmark.
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let scratch = tempfile_dir()?;
    let (endpoint, ca_cert, running) = match options.endpoint {
        Some(endpoint) => {
            let ca = options.ca_cert.clone().context("--ca-cert is needed with --endpoint")?;
            (endpoint, ca, None)
        }
        None => {
            let mut config = Config {
                data_dir: scratch.join("node"),
                listen: crate::config::ListenConfig { client: "127.0.0.1:0".parse()?, http: "127.0.0.1:0".parse()? },
                ..Config::default()
            };
            config.storage.durability = match options.durability {
                Durability::Fsync => "fsync".into(),
                Durability::Relaxed => "relaxed".into(),
            };
            let running = crate::serve::start(config).await?;
            (running.client_addr, running.cert_path.clone(), Some(running))
        }
    };
    let value = vec![b'x'; options.value_bytes];
    let writes = phase(&options, endpoint, &ca_cert, "writes", move |client, key| {
        let value = value.clone();
        async move { client.register(key.as_str()).consistency(Consistency::Eventual).set(value).await.map(|_| ()) }
    })
    .await?;
    let reads = phase(&options, endpoint, &ca_cert, "reads", |client, key| async move {
        client.register(key.as_str()).consistency(Consistency::Eventual).get().await.map(|_| ())
    })
    .await?;
    if let Some(running) = running {
        running.shutdown().await;
    }
    let raw = if options.skip_baseline {
        None
    } else {
        let dir = scratch.join("raw");
        let o = options.clone();
        let bar = progress(0, "raw rocksdb");
        bar.enable_steady_tick(Duration::from_millis(200));
        let report = tokio::task::spawn_blocking(move || {
            raw_rocksdb_put_loop(&dir, o.clients, o.ops_per_client, o.value_bytes, o.durability)
        })
        .await??;
        bar.finish_and_clear();
        Some(PhaseReport { ops: report.ops, errors: 0, ops_per_sec: report.ops_per_sec, latency_us: report.hist })
    };
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(BenchReport { writes, reads, raw })
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("meridian-bench-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn phase<F, Fut>(
    options: &BenchOptions,
    endpoint: SocketAddr,
    ca_cert: &std::path::Path,
    label: &str,
    op: F,
) -> anyhow::Result<PhaseReport>
where
    F: Fn(Client, String) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<(), meridian_client::Error>> + Send,
{
    let bar = Arc::new(progress(options.clients as u64 * options.ops_per_client, label));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..options.clients {
        let client = Client::builder()
            .endpoint(endpoint.to_string())
            .ca_cert_file(ca_cert)
            .max_retries(0)
            .connect()
            .await
            .context("connecting a benchmark client")?;
        let op = op.clone();
        let bar = bar.clone();
        let ops = options.ops_per_client;
        workers.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = 0u64;
            for n in 0..ops {
                let key = format!("bench/w{worker}-{n}");
                let t = Instant::now();
                match op(client.clone(), key).await {
                    Ok(()) => hist.saturating_record(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
                bar.inc(1);
            }
            (hist, errors)
        }));
    }
    let mut latency_us = new_histogram();
    let mut errors = 0;
    for worker in workers {
        let (hist, failed) = worker.await?;
        latency_us.add(&hist).expect("same bounds");
        errors += failed;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let ops = latency_us.len();
    Ok(PhaseReport { ops, errors, ops_per_sec: ops as f64 / elapsed.as_secs_f64(), latency_us })
}

/// Formats the report as the table `meridian bench` prints.
pub fn render(report: &BenchReport, options: &BenchOptions) -> String {
    let line = |name: &str, p: &PhaseReport| {
        format!(
            "{name:<24} {:>10.0} ops/s  p50 {:>8.2} ms  p99 {:>8.2} ms  p99.9 {:>8.2} ms  ({} ops, {} errors)\n",
            p.ops_per_sec,
            p.latency_us.value_at_quantile(0.50) as f64 / 1000.0,
            p.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
            p.latency_us.value_at_quantile(0.999) as f64 / 1000.0,
            p.ops,
            p.errors
        )
    };
    let mut out = format!(
        "meridian bench: {} clients, {} ops each, {}-byte values, durability {:?}\n",
        options.clients, options.ops_per_client, options.value_bytes, options.durability
    );
    out += &line("meridian write (eventual)", &report.writes);
    out += &line("meridian read (eventual)", &report.reads);
    if let Some(raw) = &report.raw {
        out += &line("raw rocksdb put", raw);
        out += &format!(
            "ratio: meridian writes / raw rocksdb puts = {:.2} (target >= 0.50)\n",
            report.writes.ops_per_sec / raw.ops_per_sec
        );
    }
    out
}
