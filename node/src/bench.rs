//! `meridian bench`: drives a node over the native protocol with N concurrent clients (one QUIC
//! connection each, dealt round-robin over the endpoints given, so every node of a region
//! coordinates) doing 100-byte register writes, then reads, at `eventual` (or the level given with
//! `--consistency`); records latency in hdrhistogram; and, in the same run, measures a raw `rocksdb`
//! put loop with the same durability and writer count, printing Meridian's write rate as a ratio of it.
//!
//! With `--pipeline N`, each client sends its operations N to a request ([`meridian_client::Pipeline`]),
//! as `redis-benchmark -P N` does.
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
    /// With `endpoints`: the nodes' HTTP addresses, whose `/metrics` give the per-stage breakdown,
    /// summed over the nodes: HTTPS trusting `ca_cert` (with `client_cert`), or plain HTTP for
    /// nodes whose HTTP API is (`plain_metrics`, nodes with authentication off).
    pub metrics_http: Vec<SocketAddr>,
    /// Read `metrics_http` over plain HTTP.
    pub plain_metrics: bool,
    /// Operations per request: 1 sends each in a request of its own; more sends them in pipelines
    /// of this many ([`meridian_client::Pipeline`]), each operation's latency being its pipeline's.
    pub pipeline: usize,
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
    /// Where the writes' time went, per stage (the in-process node, or the nodes of
    /// `metrics_http`).
    pub stages: Option<WriteStages>,
}

/// The mean time of each stage of the writes phase, from the node's
/// `meridian_write_stage_seconds` histograms (what they held before the phase subtracted).
#[derive(Debug, Default)]
pub struct WriteStages {
    /// `(stage, writes timed, mean in µs)`, in the order a write goes through them.
    pub means: Vec<(&'static str, u64, f64)>,
}

/// The stages of a client write, in order (see `meridian_server::telemetry::write_stage`), with
/// what each covers.
const STAGES: [(&str, &str); 9] = [
    ("read", "the request frame read and decoded"),
    ("execute", "the node runs it: everything below"),
    ("lock", "  waiting for the key's lock stripe"),
    ("prepare", "  state loaded, delta made, batch built"),
    ("commit", "  made durable by the group committer:"),
    ("commit_queue", "    waiting for its group to start"),
    ("commit_write", "    its group's RocksDB write and fsync"),
    ("replicate", "  pushed to the other replicas, acknowledged"),
    ("reply", "the reply encoded and sent"),
];

/// Where the stage histograms are read.
enum StageSource {
    /// This process's recorder (the in-process node).
    InProcess,
    /// Running nodes' `/metrics`.
    Nodes(meridian_wan::probe::NodeHttp, Vec<SocketAddr>),
}

impl StageSource {
    fn of(options: &BenchOptions, in_process: bool, ca_cert: &std::path::Path) -> anyhow::Result<Option<StageSource>> {
        if in_process {
            return Ok(Some(StageSource::InProcess));
        }
        if options.metrics_http.is_empty() {
            return Ok(None);
        }
        let client = options.client_cert.as_ref().map(|(cert, key)| (cert.as_path(), key.as_path()));
        let http = if options.plain_metrics {
            meridian_wan::probe::NodeHttp::plain()
        } else {
            meridian_wan::probe::NodeHttp::tls(ca_cert, client).context("--metrics-http")?
        };
        Ok(Some(StageSource::Nodes(http, options.metrics_http.clone())))
    }

    /// [`StageSource::render`], or `None` with a warning: the breakdown is extra, the run goes on
    /// without it.
    async fn render_or_warn(&self) -> Option<String> {
        match self.render().await {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("warning: no per-stage breakdown: {e:#}");
                None
            }
        }
    }

    /// The exposition text: every node's, one after the other.
    async fn render(&self) -> anyhow::Result<String> {
        match self {
            StageSource::InProcess => Ok(meridian_server::metrics_export::prometheus().render()),
            StageSource::Nodes(http, nodes) => {
                let mut text = String::new();
                for node in nodes {
                    let (status, body) =
                        http.get(*node, "/metrics").await.with_context(|| format!("{node}/metrics"))?;
                    anyhow::ensure!(status == 200, "{node}/metrics answered {status}");
                    text += &body;
                }
                Ok(text)
            }
        }
    }
}

/// Sum and count of every write stage's histogram in Prometheus text `text` (several nodes' texts
/// one after the other add up).
fn stage_totals(text: &str) -> std::collections::BTreeMap<String, (f64, f64)> {
    let mut out: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    let name = meridian_server::telemetry::WRITE_STAGE_SECONDS;
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let Some(stage) = series.split("stage=\"").nth(1).and_then(|rest| rest.split('"').next()) else { continue };
        if series.starts_with(&format!("{name}_sum{{")) {
            out.entry(stage.to_string()).or_default().0 += value;
        } else if series.starts_with(&format!("{name}_count{{")) {
            out.entry(stage.to_string()).or_default().1 += value;
        }
    }
    out
}

/// The stage means between two renders of the node's metrics.
fn stage_means(before: &str, after: &str) -> WriteStages {
    let (before, after) = (stage_totals(before), stage_totals(after));
    let mut means = Vec::new();
    for (stage, _) in STAGES {
        let (sum, count) = after.get(stage).copied().unwrap_or_default();
        let (sum0, count0) = before.get(stage).copied().unwrap_or_default();
        let writes = (count - count0).max(0.0);
        if writes > 0.0 {
            means.push((stage, writes as u64, (sum - sum0) / writes * 1e6));
        }
    }
    WriteStages { means }
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
    // The nodes' stage histograms, read around the writes phase, say where the writes' time went:
    // the in-process node records into this process's metrics, running nodes serve theirs.
    let stage_source = StageSource::of(&options, running.is_some(), &ca_cert)?;
    let metrics_before = match &stage_source {
        Some(source) => source.render_or_warn().await,
        None => None,
    };
    let writes = phase(&options, &endpoints, &ca_cert, &tag, "writes", move |client, keys| {
        let value = value.clone();
        async move {
            if let [key] = keys.as_slice() {
                return client.register(key.as_str()).consistency(level).set(value).await.map(|()| 0);
            }
            let mut pipeline = client.pipeline().consistency(level);
            for key in keys {
                pipeline.set(key, value.clone());
            }
            Ok(failed(pipeline.run().await?))
        }
    })
    .await?;
    let stages = match (&stage_source, metrics_before) {
        (Some(source), Some(before)) => source.render_or_warn().await.map(|after| stage_means(&before, &after)),
        _ => None,
    };
    let reads = phase(&options, &endpoints, &ca_cert, &tag, "reads", move |client, keys| async move {
        if let [key] = keys.as_slice() {
            return client.register(key.as_str()).consistency(level).get().await.map(|_| 0);
        }
        let mut pipeline = client.pipeline().consistency(level);
        for key in keys {
            pipeline.get(key);
        }
        Ok(failed(pipeline.run().await?))
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
    Ok(BenchReport { writes, reads, raw, stages })
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

/// A fresh scratch folder for one benchmark run, removed when dropped: however the run ends.
pub(crate) fn tempfile_dir() -> anyhow::Result<Scratch> {
    let dir = std::env::temp_dir().join(format!("meridian-bench-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(Scratch(dir))
}

/// A benchmark run's scratch folder ([`tempfile_dir`]).
pub(crate) struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How many of a pipeline's operations failed.
fn failed(answers: Vec<Result<meridian_client::ReplyBody, meridian_client::Error>>) -> u64 {
    answers.iter().filter(|answer| answer.is_err()).count() as u64
}

/// Runs one phase: each client sends its operations on keys of its own, `options.pipeline` keys a
/// request; `op` sends one request and says how many of its operations failed.
async fn phase<F, Fut>(
    options: &BenchOptions,
    endpoints: &[SocketAddr],
    ca_cert: &std::path::Path,
    tag: &str,
    label: &str,
    op: F,
) -> anyhow::Result<PhaseReport>
where
    F: Fn(Client, Vec<String>) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<u64, meridian_client::Error>> + Send,
{
    let per_request = options.pipeline.max(1) as u64;
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
            let mut n = 0;
            while n < ops {
                let batch = per_request.min(ops - n);
                let keys = (n..n + batch).map(|n| format!("bench/{tag}-w{worker}-{n}")).collect();
                n += batch;
                let t = Instant::now();
                // Every operation of a pipeline waited as long as the pipeline.
                let failed = op(client.clone(), keys).await.unwrap_or(batch);
                let micros = (t.elapsed().as_micros() as u64).min(hist.high());
                hist.record_n(micros, batch - failed).expect("clamped to the histogram's range");
                errors += failed;
                bar.inc(batch);
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

/// The stage means as a table: where a write's time goes on the node (means over the writes phase;
/// a write waits in several stages at once only where they nest, as the indentation shows).
pub fn render_stages(stages: &WriteStages) -> String {
    let mut out = String::from("  write stages on the node(s) (mean per write over the writes phase):\n");
    for (stage, writes, mean_us) in &stages.means {
        let what = STAGES.iter().find(|(name, _)| name == stage).map_or("", |(_, what)| *what);
        out += &format!("    {stage:<13} {mean_us:>9.1} µs  {what} ({writes} timed)\n");
    }
    out
}

/// Formats the report as the table `meridian bench` prints.
pub fn render(report: &BenchReport, options: &BenchOptions) -> String {
    let line = render_line;
    let mut out = format!(
        "meridian bench: {} clients, {} ops each, {}-byte values, durability {:?}, {} endpoint(s){}{}\n",
        options.clients,
        options.ops_per_client,
        options.value_bytes,
        options.durability,
        options.endpoints.len().max(1),
        if options.auth { ", authentication on (client certificates)" } else { "" },
        match options.pipeline {
            0 | 1 => String::new(),
            n => format!(", pipelines of {n} ops (latency per pipeline)"),
        }
    );
    out += &line(&format!("meridian write ({})", options.consistency), &report.writes);
    out += &line(&format!("meridian read ({})", options.consistency), &report.reads);
    if let Some(stages) = &report.stages {
        out += &render_stages(stages);
    }
    if let Some(raw) = &report.raw {
        out += &line("raw rocksdb put", raw);
        out += &format!(
            "ratio: meridian writes / raw rocksdb puts = {:.2} (target >= 0.50)\n",
            report.writes.ops_per_sec / raw.ops_per_sec
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_means_are_taken_over_the_phase_only() {
        let before = "\
# TYPE meridian_write_stage_seconds histogram
meridian_write_stage_seconds_bucket{stage=\"lock\",le=\"0.0001\"} 10
meridian_write_stage_seconds_sum{stage=\"lock\"} 0.001
meridian_write_stage_seconds_count{stage=\"lock\"} 10
meridian_commit_group_size_sum 99
";
        let after = "\
meridian_write_stage_seconds_sum{stage=\"lock\"} 0.004
meridian_write_stage_seconds_count{stage=\"lock\"} 40
meridian_write_stage_seconds_sum{stage=\"commit\"} 0.5
meridian_write_stage_seconds_count{stage=\"commit\"} 500
meridian_write_stage_seconds_sum{stage=\"mystery\"} 1
meridian_write_stage_seconds_count{stage=\"mystery\"} 1
";
        let means = stage_means(before, after).means;
        // 30 lock waits took 3 ms over the phase: 100 µs each; commit appeared during it.
        assert_eq!(means.len(), 2, "{means:?}");
        assert_eq!((means[0].0, means[0].1), ("lock", 30));
        assert!((means[0].2 - 100.0).abs() < 1e-6, "{means:?}");
        assert_eq!((means[1].0, means[1].1), ("commit", 500));
        assert!((means[1].2 - 1000.0).abs() < 1e-6, "{means:?}");
        assert!(render_stages(&WriteStages { means }).contains("lock"));
    }
}
