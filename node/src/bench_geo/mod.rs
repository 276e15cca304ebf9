//! `meridian bench-geo`: three cross-region measurements on a local multi-region cluster behind
//! emulated WAN links (the same links and node processes as `meridian demo`), each printed as a
//! table beside a baseline taken from the same run. Figures are reported, never asserted: the
//! machine is shared and its load is printed with them.
//!
//! 1. **Convergence lag at a write rate** (`convergence.rs`): open-loop `eventual` writes in the
//!    first region paced to `--rate`; per node of the other regions, the lag histogram the node keeps
//!    (`ClusterReport.regions`, write timestamp in the origin region → durable here), plus a
//!    client-side probe (write a marker, poll the other region). Baseline: the emulated one-way
//!    delay.
//! 2. **Latency per consistency level** (`latency.rs`): one sequential client per level in the first
//!    region, writes and reads; a causal read in another region right after a causal write carried
//!    by the session's token. Baseline: the emulated round trip to the nearest other region.
//! 3. **Anti-entropy efficiency after a partition** (`partition.rs`): `--keys` keys loaded and
//!    replicated, the first region cut off, `--changed` keys rewritten in it, healed; the bytes that
//!    cross the links until every region reads the new values. Baseline: the changed bytes.
//!
//! Each part runs on a fresh cluster of its own (`DIR/<part>/`, written by `demo::init`): the
//! nodes' lag histograms are lifetime figures, and the partition part must not pay for the
//! convergence part's backlog. Every part stops its nodes and links before the next starts, and
//! everything is stopped on error and on Ctrl-C / SIGTERM / SIGHUP.

mod convergence;
mod latency;
mod partition;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use meridian_client::{Client, ClusterOp, Consistency};
use meridian_wan::plan::{GeoPlan, NodePlan};
use meridian_wan::relay::Relay;
use tokio::time::Instant;

use crate::demo::{self, DemoOptions};
use crate::local_region::{self, say, ConfigSetting, StopSignals, Supervisor};

/// `meridian bench-geo …`.
#[derive(Clone, Debug, clap::Args)]
pub struct GeoBenchArgs {
    /// Where the clusters are written (one subdirectory per part; must not hold one already).
    /// Default: a new directory under the system's temp dir, removed afterwards unless --keep.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the directory (node logs, data) after the run.
    #[arg(long)]
    pub keep: bool,
    /// Emulated round-trip time between every pair of regions, in ms (each direction gets half).
    #[arg(long, default_value_t = 80)]
    pub rtt_ms: u64,
    /// The regions (comma-separated). The first one writes; the others are measured.
    #[arg(long, value_delimiter = ',', default_value = demo::DEFAULT_REGIONS)]
    pub regions: Vec<String>,
    /// Nodes per region. 1 by default so that the whole cluster fits on a 2-core machine next to
    /// the load generator.
    #[arg(long, default_value_t = 1)]
    pub nodes_per_region: usize,
    /// Replicas of each partition per region (default: min(3, --nodes-per-region)).
    #[arg(long)]
    pub rf: Option<usize>,
    /// `storage.durability` of the nodes in parts 1 and 2 (part 3 always loads with relaxed).
    /// fsync: a write is acknowledged after its write-ahead log record is fsynced (group commit);
    /// relaxed: after it is written to the OS page cache, the WAL being fsynced every 100 ms (a
    /// power loss can lose that window, a process crash nothing).
    #[arg(long, default_value = "relaxed", value_parser = ["fsync", "relaxed"])]
    pub durability: String,
    /// Part 1: target write rate (writes/s, open loop).
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// Part 1: how long the writers run.
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// Part 1: at most this many writes in flight (beyond it the writers fall behind the schedule,
    /// and the achieved rate says so).
    #[arg(long, default_value_t = 512)]
    pub max_inflight: usize,
    /// Part 2: sequential writes (and as many reads) per consistency level.
    #[arg(long, default_value_t = 100)]
    pub latency_ops: u64,
    /// Part 2: causal writes in the first region each followed by a causal read in every other.
    #[arg(long, default_value_t = 20)]
    pub causal_probes: u64,
    /// Part 3: keys loaded before the partition (also part 1's key space).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Part 3: keys changed in the first region during the partition.
    #[arg(long, default_value_t = 1000)]
    pub changed: u64,
    /// Part 3: how long the first region is cut off.
    #[arg(long, default_value_t = 20)]
    pub partition_secs: u64,
    /// Part 3: value size of the loaded and changed registers.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Part 3: how long to wait for replication (after the load, after the heal) before giving up.
    #[arg(long, default_value_t = 180)]
    pub converge_timeout_secs: u64,
    /// Node k listens on base+10k (client), +1 (HTTP), +2 (peer); the links on base+1000, ….
    #[arg(long, default_value_t = 19600)]
    pub base_port: u16,
    /// A setting of every node's configuration in every part, `KEY=VALUE` with a dotted key
    /// (repeatable): `--node-set storage.log_retention_s=5 --node-set peer.max_hints_per_node=0`
    /// makes part 3's heal a catch-up past the log retention (`docs/benchmarks.md`).
    #[arg(long = "node-set", value_name = "KEY=VALUE")]
    pub node_settings: Vec<local_region::ConfigSetting>,
    /// Skip part 1 (convergence lag at a write rate).
    #[arg(long)]
    pub skip_convergence: bool,
    /// Skip part 2 (latency per consistency level).
    #[arg(long)]
    pub skip_latency: bool,
    /// Skip part 3 (anti-entropy after a partition).
    #[arg(long)]
    pub skip_partition: bool,
}

impl GeoBenchArgs {
    fn rf(&self) -> usize {
        self.rf.unwrap_or_else(|| self.nodes_per_region.min(3))
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.regions.len() >= 2, "--regions needs at least two regions");
        anyhow::ensure!(self.nodes_per_region >= 1, "--nodes-per-region must be at least 1");
        anyhow::ensure!(
            (1..=self.nodes_per_region).contains(&self.rf()),
            "--rf must be between 1 and --nodes-per-region"
        );
        anyhow::ensure!(self.rate >= 1 && self.secs >= 1, "--rate and --secs must be at least 1");
        anyhow::ensure!(self.max_inflight >= 1, "--max-inflight must be at least 1");
        anyhow::ensure!(self.keys >= 1, "--keys must be at least 1");
        anyhow::ensure!(
            (1..=self.keys).contains(&self.changed),
            "--changed must be between 1 and --keys ({})",
            self.keys
        );
        anyhow::ensure!(self.partition_secs >= 2, "--partition-secs must be at least 2");
        anyhow::ensure!((16..=65_536).contains(&self.value_bytes), "--value-bytes must be between 16 and 65536");
        Ok(())
    }

    /// The cluster shape of one part.
    fn options(&self, durability: &str) -> DemoOptions {
        DemoOptions {
            regions: self.regions.clone(),
            nodes_per_region: self.nodes_per_region,
            rf: self.rf(),
            zones: self.nodes_per_region.min(3),
            base_port: self.base_port,
            latency: String::new(),
            rtt_ms: Some(self.rtt_ms),
            cluster_id: "bench-geo".into(),
            durability: durability.into(),
            force: false,
        }
    }
}

/// Runs `meridian bench-geo` and prints its tables.
pub async fn run_cli(args: GeoBenchArgs) -> anyhow::Result<()> {
    args.check()?;
    // First, so that a signal at any point stops the children rather than orphaning them.
    let mut signals = StopSignals::install()?;
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => {
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            (std::env::temp_dir().join(format!("meridian-bench-geo-{}-{stamp}", std::process::id())), true)
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    say!("{}", header(&args, &dir));

    let outcome = tokio::select! {
        outcome = run_parts(&args, &dir) => outcome,
        signal = signals.recv() => Err(anyhow::anyhow!("received {signal}: stopped every node and link")),
    };
    // A part interrupted by a signal is dropped: its supervisor kills the nodes, its links stop.
    if temporary && !args.keep && outcome.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        say!("cluster directories (node logs) kept in {}", dir.display());
    }
    outcome
}

async fn run_parts(args: &GeoBenchArgs, dir: &Path) -> anyhow::Result<()> {
    if !args.skip_convergence {
        let cluster =
            GeoCluster::start(&dir.join("convergence"), &args.options(&args.durability), &args.node_settings).await?;
        let result = convergence::run(args, &cluster).await;
        cluster.stop().await;
        say!("{}", result?.trim_end());
        say!();
    }
    if !args.skip_latency {
        let cluster =
            GeoCluster::start(&dir.join("latency"), &args.options(&args.durability), &args.node_settings).await?;
        let result = latency::run(args, &cluster).await;
        cluster.stop().await;
        say!("{}", result?.trim_end());
        say!();
    }
    if !args.skip_partition {
        let cluster = GeoCluster::start(&dir.join("partition"), &args.options("relaxed"), &args.node_settings).await?;
        let result = partition::run(args, &cluster).await;
        cluster.stop().await;
        say!("{}", result?.trim_end());
        say!();
    }
    say!("machine after the run: {}", machine());
    Ok(())
}

fn header(args: &GeoBenchArgs, dir: &Path) -> String {
    let mut out = String::from("meridian bench-geo: figures from one run on this machine, reported, not asserted\n");
    let _ = writeln!(out, "machine: {}", machine());
    let _ = writeln!(
        out,
        "cluster per part: regions {} × {} node(s) (rf {} per region), emulated RTT {} ms between every pair \
         (one-way {} ms ± 1 ms jitter), in {}",
        args.regions.join(","),
        args.nodes_per_region,
        args.rf(),
        args.rtt_ms,
        args.rtt_ms / 2,
        dir.display()
    );
    let _ = writeln!(
        out,
        "durability: {} in parts 1-2, relaxed in part 3 (fsync = acknowledged after the WAL record is fsynced, \
         group commit; relaxed = after it reaches the OS page cache, WAL fsynced every 100 ms)",
        args.durability
    );
    if !args.node_settings.is_empty() {
        let settings: Vec<String> =
            args.node_settings.iter().map(|s| format!("{} = {}", s.path.join("."), s.value)).collect();
        let _ = writeln!(out, "node settings (every node, every part): {}", settings.join(", "));
    }
    if args.nodes_per_region == 1 {
        out += "one node per region by default, to fit the cluster and the load generator on 2 cores \
                (--nodes-per-region 3 for the full shape)\n";
    }
    out
}

/// `N cores, load average a b c`.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());
    format!("{cores} cores, load average {load}")
}

/// A running cluster: its plan, links (in this process) and node processes.
pub(crate) struct GeoCluster {
    pub plan: GeoPlan,
    pub links: Vec<Relay>,
    supervisor: Supervisor,
}

impl GeoCluster {
    /// Writes a fresh cluster under `dir` (which must not hold one) with `settings` applied to every
    /// node's configuration, starts its links and nodes,
    /// waits until every node is ready and sees every member. Stops what it started on failure.
    async fn start(dir: &Path, options: &DemoOptions, settings: &[ConfigSetting]) -> anyhow::Result<GeoCluster> {
        anyhow::ensure!(
            !dir.exists() || std::fs::read_dir(dir)?.next().is_none(),
            "{} is not empty: bench-geo needs a fresh cluster (its lag histograms are lifetime figures); \
             give an empty --dir",
            dir.display()
        );
        let started = Instant::now();
        let plan = demo::init(dir, options)?;
        let nodes: Vec<NodePlan> = plan.nodes().map(|(_, n)| n.clone()).collect();
        for node in &nodes {
            local_region::apply_settings(&node.config, settings)?;
        }
        local_region::check_ports_free(&nodes, "Is another bench-geo or demo running? (Use --base-port P.)")?;
        let links = demo::start_links(&plan)?;
        let mut supervisor = Supervisor::spawn(&nodes).await?;
        let http = meridian_wan::plan::admin_http(&plan.ca_cert)?;
        if let Err(e) = supervisor.wait_ready(Duration::from_secs(60), &http).await {
            supervisor.stop_all().await;
            return Err(e);
        }
        if let Err(missing) = demo::wait_for_members(&plan, Duration::from_secs(60)).await {
            supervisor.stop_all().await;
            anyhow::bail!("not every node saw every member alive within 60 s:\n{missing}");
        }
        say!(
            "[{}] cluster up: {} nodes, {} links ({:.1} s)",
            dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            nodes.len(),
            links.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(GeoCluster { plan, links, supervisor })
    }

    /// Stops every node (SIGTERM, SIGKILL after 10 s) and link.
    async fn stop(mut self) {
        let failures = self.supervisor.stop_all().await;
        for failure in failures {
            local_region::say!("note: {failure}");
        }
        drop(self.links);
    }

    /// The writing region (the first).
    pub fn home(&self) -> &str {
        &self.plan.regions[0].name
    }

    /// The emulated one-way delay between two regions, in ms.
    pub fn one_way_ms(&self, a: &str, b: &str) -> u64 {
        self.plan.links_between(a, b).next().map_or(0, |l| l.one_way_ms)
    }

    /// Connects one client to each of `region`'s nodes (each failing over to the rest of the
    /// region), default level `eventual`.
    pub async fn clients(&self, region: usize, per_node: usize) -> anyhow::Result<Vec<Client>> {
        let nodes = &self.plan.regions[region].nodes;
        let mut out = Vec::new();
        for _ in 0..per_node.max(1) {
            for first in 0..nodes.len() {
                out.push(self.client_to(region, first).await?);
            }
        }
        Ok(out)
    }

    /// One client preferring node `first` of `region`.
    pub async fn client_to(&self, region: usize, first: usize) -> anyhow::Result<Client> {
        let nodes = &self.plan.regions[region].nodes;
        let mut builder = crate::demo::admin_client(&self.plan.ca_cert)
            .timeout(Duration::from_secs(5))
            .max_retries(1)
            .default_consistency(Consistency::Eventual);
        for i in 0..nodes.len() {
            builder = builder.endpoint(nodes[(first + i) % nodes.len()].client_addr.to_string());
        }
        tokio::time::timeout(Duration::from_secs(10), builder.connect())
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {} timed out", nodes[first].name))?
            .with_context(|| format!("connecting to {}", nodes[first].name))
    }

    /// One client to exactly `node` (no failover), for per-node status.
    pub async fn node_client(&self, node: &NodePlan) -> anyhow::Result<Client> {
        let builder = crate::demo::admin_client(&self.plan.ca_cert)
            .timeout(Duration::from_secs(5))
            .max_retries(1)
            .endpoint(node.client_addr.to_string());
        tokio::time::timeout(Duration::from_secs(10), builder.connect())
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {} timed out", node.name))?
            .with_context(|| format!("connecting to {}", node.name))
    }

    /// Sum of the bytes delivered over every link, per ordered region pair (from, to): a link's
    /// forward direction carries its source region's traffic to its node's region, its backward
    /// direction the replies.
    pub fn link_bytes(&self) -> std::collections::BTreeMap<(String, String), u64> {
        let mut out = std::collections::BTreeMap::new();
        for (link, relay) in self.plan.links.iter().zip(&self.links) {
            let stats = relay.stats();
            *out.entry((link.from_region.clone(), link.to_region.clone())).or_insert(0) +=
                stats.forward.forwarded_bytes;
            *out.entry((link.to_region.clone(), link.from_region.clone())).or_insert(0) +=
                stats.backward.forwarded_bytes;
        }
        out
    }

    /// Every node's `/metrics` counters (see [`metrics`]), in plan order; empty for a node that does
    /// not answer.
    pub async fn node_metrics(&self) -> Vec<std::collections::BTreeMap<String, f64>> {
        let mut out = Vec::new();
        for (_, node) in self.plan.nodes() {
            out.push(metrics(node, &self.plan.ca_cert).await.unwrap_or_else(|e| {
                eprintln!("warning: {e:#}");
                Default::default()
            }));
        }
        out
    }

    /// Every node's peer traffic by message kind (see [`peer_traffic`]), summed over the nodes.
    pub async fn peer_traffic(&self) -> std::collections::BTreeMap<String, [f64; 3]> {
        let mut out: std::collections::BTreeMap<String, [f64; 3]> = std::collections::BTreeMap::new();
        for (_, node) in self.plan.nodes() {
            for (kind, values) in peer_traffic(node, &self.plan.ca_cert).await.unwrap_or_default() {
                let sum = out.entry(kind).or_default();
                for (s, v) in sum.iter_mut().zip(values) {
                    *s += v;
                }
            }
        }
        out
    }

    /// The nodes' cluster report of `node`.
    pub async fn lag_report(&self, node: &NodePlan) -> anyhow::Result<meridian_client::ClusterReport> {
        let client = self.node_client(node).await?;
        let report = tokio::time::timeout(Duration::from_secs(5), client.cluster(ClusterOp::Status)).await;
        client.close().await;
        Ok(report.map_err(|_| anyhow::anyhow!("{}: cluster status timed out", node.name))??)
    }
}

/// Latencies in microseconds, 1 µs … 10 min, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

pub(crate) fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    h.saturating_record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).clamp(1, 600_000_000));
}

/// Microseconds as milliseconds with one decimal.
pub(crate) fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// Prometheus counters of a node's `/metrics` (HTTPS with the plan's admin certificate, straight to the node: not over a link),
/// summed over labels, by metric name.
pub(crate) async fn metrics(
    node: &NodePlan,
    ca_cert: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let text = metrics_text(node, ca_cert).await?;
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("meridian_")) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let name = name_labels.split('{').next().unwrap_or(name_labels);
        if let Ok(value) = value.parse::<f64>() {
            *out.entry(name.to_string()).or_insert(0.0) += value;
        }
    }
    Ok(out)
}

/// A node's peer traffic so far by message kind (`meridian_peer_*{kind}` counters): per kind, the
/// requests it answered and the payload bytes in and out.
pub(crate) async fn peer_traffic(
    node: &NodePlan,
    ca_cert: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, [f64; 3]>> {
    let text = metrics_text(node, ca_cert).await?;
    let mut out: std::collections::BTreeMap<String, [f64; 3]> = std::collections::BTreeMap::new();
    let columns = [
        "meridian_peer_requests_received_total",
        "meridian_peer_request_bytes_received_total",
        "meridian_peer_reply_bytes_sent_total",
    ];
    for line in text.lines() {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let Some((name, labels)) = name_labels.split_once('{') else { continue };
        let Some(column) = columns.iter().position(|c| *c == name) else { continue };
        let Some(kind) = labels.split("kind=\"").nth(1).and_then(|rest| rest.split('"').next()) else { continue };
        if let Ok(value) = value.parse::<f64>() {
            out.entry(kind.to_string()).or_default()[column] += value;
        }
    }
    Ok(out)
}

/// The text of a node's `/metrics`.
async fn metrics_text(node: &NodePlan, ca_cert: &std::path::Path) -> anyhow::Result<String> {
    // Nodes serve HTTPS (authentication on): the admin certificate the plan wrote next to the CA.
    let probe = meridian_wan::plan::admin_http(ca_cert)?;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), probe.get(node.http_addr, "/metrics"))
        .await
        .map_err(|_| anyhow::anyhow!("{}: GET /metrics timed out", node.name))??;
    anyhow::ensure!(status == 200, "{}: GET /metrics answered {status}", node.name);
    Ok(body)
}

/// A deterministic value of `len` bytes for key index `i`, generation `generation`.
pub(crate) fn value(generation: u32, i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("g{generation}-{i}-").into_bytes();
    v.resize(len, b'x');
    v
}
