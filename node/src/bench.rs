//! `meridian bench`: drives a node over the native protocol with N concurrent clients (one QUIC
//! connection each, dealt round-robin over the endpoints given, so every node of a region
//! coordinates) doing 100-byte register writes, then reads, at `eventual` (or the level given with
//! `--consistency`); records latency in hdrhistogram; and, in the same run, measures a raw `rocksdb`
//! put loop with the same durability and writer count, printing Meridian's write rate as a ratio of it.
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

use meridian_server::config::Config;
use meridian_server::storage::{raw_rocksdb_put_loop, Durability};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Concurrent clients (and raw writer threads).
    pub clients: usize,
    /// Writes per client, and again reads per client.
    pub ops_per_client: u64,
    /// Value size.
    pub value_bytes: usize,
    /// Running nodes to drive, clients dealt round-robin; empty starts one in-process on a
    /// temporary directory.
    pub endpoints: Vec<SocketAddr>,
    /// The level of every write and read.
    pub consistency: Consistency,
    /// Their certificate or CA (with `endpoints`).
    pub ca_cert: Option<PathBuf>,
    /// A client certificate and key to authenticate with (with `endpoints`, for nodes with
    /// authentication on).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Durability of the in-process node and of the raw baseline.
    pub durability: Durability,
    /// Skip the raw RocksDB baseline.
    pub skip_baseline: bool,
    /// Run the in-process node with authentication on (its clients present a client certificate),
    /// as clusters Meridian makes run; off measures the open single node.
    pub auth: bool,
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

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

pub(crate) fn progress(total: u64, label: &str) -> ProgressBar {
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
pub async fn run(mut options: BenchOptions) -> anyhow::Result<BenchReport> {
    let scratch = tempfile_dir()?;
    let (endpoints, ca_cert, running) = if !options.endpoints.is_empty() {
        let ca = options.ca_cert.clone().context("--ca-cert is needed with --endpoint")?;
        (options.endpoints.clone(), ca, None)
    } else {
        let mut config = in_process_config(&scratch, options.durability)?;
        if options.auth {
            options.client_cert = Some(with_authentication(&mut config, &scratch.join("certs"))?);
        }
        let running = meridian_server::serve::start(config).await?;
        (vec![running.client_addr], running.cert_path.clone(), Some(running))
    };
    let value = vec![b'x'; options.value_bytes];
    let level = options.consistency;
    // Fresh keys each run, so a second run against the same nodes writes new keys too.
    let tag = format!("{:08x}", rand::random::<u32>());
    let writes = phase(&options, &endpoints, &ca_cert, &tag, "writes", move |client, key| {
        let value = value.clone();
        async move { client.register(key.as_str()).consistency(level).set(value).await.map(|_| ()) }
    })
    .await?;
    let reads = phase(&options, &endpoints, &ca_cert, &tag, "reads", move |client, key| async move {
        client.register(key.as_str()).consistency(level).get().await.map(|_| ())
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

/// Turns authentication on in `config` with a fresh CA under `dir`; returns the client certificate
/// and key the benchmark clients present (a configured admin).
fn with_authentication(config: &mut Config, dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use meridian_server::certs;
    let ca = certs::generate_ca(&config.cluster_id)?;
    let (ca_cert, _) = ca.write(dir, false)?;
    let identity = certs::ClientIdentity { cluster_id: config.cluster_id.clone(), name: "bench".into() };
    let (cert, key) = certs::issue_client_cert(&ca, &identity)?;
    let paths = certs::write_pair(dir, "bench.crt", &cert, "bench.key", &key, false)?;
    config.auth.enabled = true;
    config.auth.admins = vec!["bench".into()];
    config.auth.client_ca = Some(ca_cert);
    Ok(paths)
}

/// The configuration of a benchmark's in-process node: data under `scratch/node`, ports picked by
/// the system, the given durability.
pub(crate) fn in_process_config(scratch: &std::path::Path, durability: Durability) -> anyhow::Result<Config> {
    let mut config = Config {
        data_dir: scratch.join("node"),
        listen: meridian_server::config::ListenConfig { client: "127.0.0.1:0".parse()?, http: "127.0.0.1:0".parse()? },
        ..Config::default()
    };
    config.storage.durability = match durability {
        Durability::Fsync => "fsync".into(),
        Durability::Relaxed => "relaxed".into(),
    };
    Ok(config)
}

/// A fresh scratch folder for one benchmark run.
pub(crate) fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("meridian-bench-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn phase<F, Fut>(
    options: &BenchOptions,
    endpoints: &[SocketAddr],
    ca_cert: &std::path::Path,
    tag: &str,
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
        let mut builder = Client::builder()
            .endpoint(endpoints[worker % endpoints.len()].to_string())
            .ca_cert_file(ca_cert)
            .max_retries(0);
        if let Some((cert, key)) = &options.client_cert {
            builder = builder.client_cert_files(cert, key);
        }
        let client = builder.connect().await.context("connecting a benchmark client")?;
        let op = op.clone();
        let bar = bar.clone();
        let ops = options.ops_per_client;
        let tag = tag.to_string();
        workers.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = 0u64;
            for n in 0..ops {
                let key = format!("bench/{tag}-w{worker}-{n}");
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

/// One phase as a line of `meridian bench`'s table (`meridian bench-etcd` prints the same).
pub fn render_line(name: &str, p: &PhaseReport) -> String {
    format!(
        "{name:<24} {:>10.0} ops/s  p50 {:>8.2} ms  p99 {:>8.2} ms  p99.9 {:>8.2} ms  ({} ops, {} errors)\n",
        p.ops_per_sec,
        p.latency_us.value_at_quantile(0.50) as f64 / 1000.0,
        p.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        p.latency_us.value_at_quantile(0.999) as f64 / 1000.0,
        p.ops,
        p.errors
    )
}

/// Formats the report as the table `meridian bench` prints.
pub fn render(report: &BenchReport, options: &BenchOptions) -> String {
    let line = render_line;
    let mut out = format!(
        "meridian bench: {} clients, {} ops each, {}-byte values, durability {:?}, {} endpoint(s){}\n",
        options.clients,
        options.ops_per_client,
        options.value_bytes,
        options.durability,
        options.endpoints.len().max(1),
        if options.auth { ", authentication on (client certificates)" } else { "" }
    );
    out += &line(&format!("meridian write ({})", options.consistency), &report.writes);
    out += &line(&format!("meridian read ({})", options.consistency), &report.reads);
    if let Some(raw) = &report.raw {
        out += &line("raw rocksdb put", raw);
        out += &format!(
            "ratio: meridian writes / raw rocksdb puts = {:.2} (target >= 0.50)\n",
            report.writes.ops_per_sec / raw.ops_per_sec
        );
    }
    out
}
