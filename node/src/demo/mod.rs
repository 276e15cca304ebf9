//! `meridian demo`: a local multi-region cluster on one machine, with emulated WAN latency between
//! its regions, started, exercised and reported on with one command.
//!
//! * `meridian demo init --dir DIR` writes the cluster and starts nothing:
//!   - `DIR/certs/ca.crt` + `ca.key`: one CA for the whole cluster;
//!   - `DIR/certs/<node>.crt` + `.key`: each node's certificate (identity cluster/region/zone/name,
//!     SANs `localhost` and `127.0.0.1`, serverAuth + clientAuth; the same certificate serves the
//!     peer transport and the client port), exactly as `meridian region init` issues them;
//!   - `DIR/<node>/meridian.toml`: the node's complete configuration, with `data_dir =
//!     DIR/<node>/data` and its output going to `DIR/<node>/node.log` when `meridian demo` runs it.
//!     Node names are unique across the cluster (`us-east-n1`, …); zones are `<region>-a`, `-b`, …
//!     dealt round-robin within each region. Node k (counted across the cluster, from 1) listens on
//!     `base + 10k` (client, QUIC), `base + 10k + 1` (HTTP) and `base + 10k + 2` (peer, QUIC).
//!     `peer.seeds` lists the other nodes of its region (directly) and, for every other region, the
//!     link to that region's first node; `peer.dial_via` sends every node of the other regions
//!     through a link, so cross-region traffic crosses the emulated WAN and in-region traffic does
//!     not;
//!   - `DIR/cluster.json`: the [`GeoPlan`] (written last: its presence means the cluster is
//!     complete). Its links get ports `base + 1000`, `base + 1001`, … one per (region, node of
//!     another region), each delaying packets by half the pair's round-trip time in each direction.
//!
//!   An existing `cluster.json` is never replaced without `--force`, which replaces the
//!   certificates and configurations and keeps the nodes' data.
//! * `meridian demo [--dir ./meridian-demo]` runs `init` when needed, starts the links (in this
//!   process) and the nodes (child processes, supervised like `meridian region start`), waits until
//!   every node sees every member of every region, runs a short mixed workload through the SDK at
//!   each consistency level, measures how long a write in one region takes to become visible in the
//!   others, prints a report, and keeps the cluster up until Ctrl-C (or stops it at once with
//!   `--exit`).

mod run;
mod workload;

use anyhow::{bail, Context as _};
use meridian_wan::plan::{GeoPlan, LinkPlan, RegionInPlan, GEO_PLAN_FILE};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::local_region::{self, NodeSetup};
use meridian_server::certs::{self, NodeIdentity};

pub use run::RunArgs;
pub(crate) use run::{start_links, wait_for_members, LINK_JITTER};

/// Where `meridian demo` keeps the cluster when given no `--dir`.
pub const DEFAULT_DIR: &str = "./meridian-demo";
/// The default regions.
pub const DEFAULT_REGIONS: &str = "us-east,eu-west,ap-south";
/// The default round-trip times between the default regions, in milliseconds.
pub const DEFAULT_LATENCY: &str = "us-east/eu-west=80,us-east/ap-south=200,eu-west/ap-south=140";
/// Link ports start this far above the base port.
pub const LINK_PORT_OFFSET: usize = 1000;

/// `meridian demo …`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub command: Option<DemoCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `meridian demo init`.
#[derive(Debug, clap::Subcommand)]
pub enum DemoCommand {
    /// Write a local multi-region cluster (CA, node certificates, configs, cluster.json); start nothing.
    Init {
        /// Directory to write the cluster to (created if missing).
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        options: DemoOptions,
    },
}

/// The shape of a cluster to create (`init`, and `demo` when it creates one).
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct DemoOptions {
    /// The regions (comma-separated; 1-64 of [A-Za-z0-9-_.] each).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_REGIONS)]
    pub regions: Vec<String>,
    /// Nodes in each region (`<region>-n1` …).
    #[arg(long, default_value_t = 3)]
    pub nodes_per_region: usize,
    /// Replicas of each partition per region (`peer.rf`).
    #[arg(long, default_value_t = 3)]
    pub rf: usize,
    /// Zones in each region (`<region>-a`, `-b`, …), dealt to its nodes round-robin.
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// Node k (across the cluster) listens on base+10k (client), +1 (HTTP), +2 (peer); the WAN
    /// links on base+1000, base+1001, ….
    #[arg(long, default_value_t = 7600)]
    pub base_port: u16,
    /// Round-trip time in ms per region pair (`a/b=ms,…`); each direction gets half.
    #[arg(long, default_value = DEFAULT_LATENCY)]
    pub latency: String,
    /// The same round-trip time for every region pair (overrides --latency).
    #[arg(long)]
    pub rtt_ms: Option<u64>,
    /// The nodes' cluster_id.
    #[arg(long, default_value = "demo")]
    pub cluster_id: String,
    /// `storage.durability` of every node.
    #[arg(long, default_value = "fsync", value_parser = ["fsync", "relaxed"])]
    pub durability: String,
    /// Replace an existing cluster's certificates and configs (its nodes' data is kept).
    #[arg(long)]
    pub force: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            regions: DEFAULT_REGIONS.split(',').map(str::to_string).collect(),
            nodes_per_region: 3,
            rf: 3,
            zones: 3,
            base_port: 7600,
            latency: DEFAULT_LATENCY.into(),
            rtt_ms: None,
            cluster_id: "demo".into(),
            durability: "fsync".into(),
            force: false,
        }
    }
}

impl DemoOptions {
    /// How many nodes the cluster has.
    fn total_nodes(&self) -> usize {
        self.regions.len() * self.nodes_per_region
    }

    /// How many links the cluster has: one per (region, node of another region).
    fn total_links(&self) -> usize {
        self.regions.len() * self.nodes_per_region * self.regions.len().saturating_sub(1)
    }
}

/// Runs a `meridian demo` command.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    match args.command {
        Some(DemoCommand::Init { dir, options }) => {
            let plan = init(&dir, &options)?;
            say_plan(&plan);
            println!(
                "start it with: {} demo --dir {}",
                local_region::program_name(),
                local_region::quote(&plan_dir(&plan, &dir))
            );
            Ok(())
        }
        None => run::run(args.run).await,
    }
}

fn say_plan(plan: &GeoPlan) {
    use std::io::Write as _;
    let _ = write!(std::io::stdout().lock(), "{}", describe(plan));
}

/// The directory a plan lives in (the parent of `certs/`), else `fallback`.
fn plan_dir(plan: &GeoPlan, fallback: &Path) -> PathBuf {
    plan.ca_cert.parent().and_then(Path::parent).map_or_else(|| fallback.to_path_buf(), Path::to_path_buf)
}

/// The round-trip time of every unordered pair of `regions` (keyed with the smaller name first),
/// from `--rtt-ms` or `--latency`. Pairs naming other regions are ignored; a missing pair is an
/// error.
pub fn round_trips(options: &DemoOptions) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    let key = |a: &str, b: &str| if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
    let mut given = BTreeMap::new();
    if options.rtt_ms.is_none() {
        for item in options.latency.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let parsed = item.split_once('=').and_then(|(pair, ms)| {
                let (a, b) = pair.split_once('/')?;
                Some((a.trim(), b.trim(), ms.trim().parse::<u64>().ok()?))
            });
            let Some((a, b, ms)) = parsed else {
                bail!("--latency: {item:?} is not `region/region=milliseconds`");
            };
            anyhow::ensure!(a != b, "--latency: {item:?} pairs a region with itself");
            given.insert(key(a, b), ms);
        }
    }
    let mut out = BTreeMap::new();
    for (i, a) in options.regions.iter().enumerate() {
        for b in &options.regions[i + 1..] {
            let rtt = match options.rtt_ms {
                Some(ms) => ms,
                None => *given.get(&key(a, b)).with_context(|| {
                    format!("--latency gives no round-trip time for {a}/{b} (add `{a}/{b}=MS`, or use --rtt-ms)")
                })?,
            };
            anyhow::ensure!(rtt <= 60_000, "--latency: {a}/{b}={rtt} ms is over a minute");
            out.insert(key(a, b), rtt);
        }
    }
    Ok(out)
}

fn check_options(options: &DemoOptions) -> anyhow::Result<()> {
    anyhow::ensure!(!options.regions.is_empty(), "--regions must name at least one region");
    for (i, region) in options.regions.iter().enumerate() {
        certs::validate_name("region", region).with_context(|| format!("--regions: {region:?}"))?;
        anyhow::ensure!(!options.regions[..i].contains(region), "--regions names {region} twice");
    }
    anyhow::ensure!(options.nodes_per_region >= 1, "--nodes-per-region must be at least 1");
    anyhow::ensure!((1..=26).contains(&options.zones), "--zones must be between 1 and 26");
    anyhow::ensure!(options.rf >= 1, "--rf must be at least 1");
    let nodes = options.total_nodes();
    anyhow::ensure!(
        10 * nodes + 2 < LINK_PORT_OFFSET,
        "{nodes} nodes do not fit below the link ports (base + {LINK_PORT_OFFSET}); at most 99 nodes"
    );
    let last = usize::from(options.base_port) + LINK_PORT_OFFSET + options.total_links();
    anyhow::ensure!(
        options.base_port >= 1 && last <= usize::from(u16::MAX),
        "--base-port {} needs ports up to {last}, above 65535",
        options.base_port
    );
    certs::validate_name("cluster id", &options.cluster_id).context("--cluster-id")?;
    anyhow::ensure!(
        ["fsync", "relaxed"].contains(&options.durability.as_str()),
        "--durability must be fsync or relaxed, not {:?}",
        options.durability
    );
    round_trips(options)?;
    Ok(())
}

/// A client builder trusting the cluster CA and authenticating as the cluster's admin (the client
/// certificate `init` writes beside the CA): how the demo, its workload and `bench-geo` connect.
pub fn admin_client(ca_cert: &Path) -> meridian_client::ClientBuilder {
    let (cert, key) = meridian_wan::plan::admin_credentials(ca_cert);
    meridian_client::Client::builder().ca_cert_file(ca_cert).client_cert_files(cert, key)
}

/// Writes the cluster described by `options` under `dir` (see the module docs) and returns its plan.
pub fn init(dir: &Path, options: &DemoOptions) -> anyhow::Result<GeoPlan> {
    check_options(options)?;
    let rtts = round_trips(options)?;
    let (dir, plan_path) = prepare_dir(dir, options)?;

    // Addresses first: every configuration names nodes of every region.
    let planned = plan_nodes(options);
    let links = plan_links(options, &planned, &rtts);

    let (ca, ca_cert) = local_region::write_ca(&dir, &options.cluster_id, options.force)?;
    let mut regions: Vec<RegionInPlan> =
        options.regions.iter().map(|name| RegionInPlan { name: name.clone(), nodes: Vec::new() }).collect();
    for node in &planned {
        let region = &options.regions[node.region];
        let (seeds, dial_via) = peers_of(node, region, options.regions.len(), &planned, &links);
        let written = local_region::write_node(NodeSetup {
            dir: &dir,
            ca: &ca,
            ca_cert: &ca_cert,
            identity: NodeIdentity {
                cluster_id: options.cluster_id.clone(),
                region: region.clone(),
                zone: node.zone.clone(),
                name: node.name.clone(),
            },
            client_addr: node.client,
            http_addr: node.http,
            peer_addr: node.peer,
            seeds,
            dial_via,
            rf: options.rf,
            durability: &options.durability,
            force: options.force,
            header: &config_header(node, region, &dir),
        })?;
        regions[node.region].nodes.push(written);
    }

    let plan = GeoPlan { cluster_id: options.cluster_id.clone(), ca_cert, rf: options.rf, regions, links };
    let json = serde_json::to_string_pretty(&plan)? + "\n";
    local_region::write_atomically(&plan_path, json.as_bytes())?;
    Ok(plan)
}

/// Creates `dir` and resolves it; refuses one that holds a cluster already unless `--force`.
/// Returns the resolved directory and its `cluster.json` path.
fn prepare_dir(dir: &Path, options: &DemoOptions) -> anyhow::Result<(PathBuf, PathBuf)> {
    local_region::create_private_dir(dir)?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let plan_path = dir.join(GEO_PLAN_FILE);
    if plan_path.exists() && !options.force {
        bail!(
            "{} already exists: {} already holds a cluster. Start it with `meridian demo --dir {}`, \
             or re-create it with --force (replaces its certificates and configs, keeps the nodes' data)",
            plan_path.display(),
            dir.display(),
            local_region::quote(&dir)
        );
    }
    Ok((dir, plan_path))
}

/// A node as planned before anything is written: its region (index), name, zone and addresses.
struct Planned {
    region: usize,
    name: String,
    zone: String,
    client: SocketAddr,
    http: SocketAddr,
    peer: SocketAddr,
}

/// `127.0.0.1:port` (the port was checked by `check_options`).
fn localhost(port: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, u16::try_from(port).expect("checked")))
}

/// Every node, region by region: names, zones dealt round-robin, node k (from 1) on `base + 10k` …
fn plan_nodes(options: &DemoOptions) -> Vec<Planned> {
    let base = usize::from(options.base_port);
    let mut planned = Vec::with_capacity(options.total_nodes());
    for (r, region) in options.regions.iter().enumerate() {
        for i in 1..=options.nodes_per_region {
            let k = planned.len() + 1;
            let zone_letter = char::from(b'a' + u8::try_from((i - 1) % options.zones).expect("at most 26"));
            planned.push(Planned {
                region: r,
                name: format!("{region}-n{i}"),
                zone: format!("{region}-{zone_letter}"),
                client: localhost(base + 10 * k),
                http: localhost(base + 10 * k + 1),
                peer: localhost(base + 10 * k + 2),
            });
        }
    }
    planned
}

/// One link per (region, node of another region), on `base + 1000`, …, delaying each direction by
/// half the pair's round-trip time.
fn plan_links(options: &DemoOptions, planned: &[Planned], rtts: &BTreeMap<(String, String), u64>) -> Vec<LinkPlan> {
    let one_way = |a: &str, b: &str| {
        let key = if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        rtts[&key] / 2
    };
    let base = usize::from(options.base_port);
    let mut links = Vec::with_capacity(options.total_links());
    for (r, from) in options.regions.iter().enumerate() {
        for to in planned.iter().filter(|p| p.region != r) {
            let to_region = &options.regions[to.region];
            links.push(LinkPlan {
                from_region: from.clone(),
                to_region: to_region.clone(),
                to_node: to.name.clone(),
                listen: localhost(base + LINK_PORT_OFFSET + links.len()),
                upstream: to.peer,
                one_way_ms: one_way(from, to_region),
            });
        }
    }
    links
}

/// `node`'s `peer.seeds` and `peer.dial_via`: the other nodes of its region directly; for each of
/// the `regions` other regions, the link from `region` to its first node as a seed, and every one
/// of its nodes dialled through the link to it.
fn peers_of(
    node: &Planned,
    region: &str,
    regions: usize,
    planned: &[Planned],
    links: &[LinkPlan],
) -> (Vec<SocketAddr>, BTreeMap<String, SocketAddr>) {
    let link_to = |node: &str| {
        links.iter().find(|l| l.from_region == region && l.to_node == node).map(|l| l.listen).expect("planned")
    };
    let mut seeds: Vec<SocketAddr> =
        planned.iter().filter(|p| p.region == node.region && p.name != node.name).map(|p| p.peer).collect();
    let mut dial_via = BTreeMap::new();
    for r in (0..regions).filter(|r| *r != node.region) {
        let mut others = planned.iter().filter(|p| p.region == r);
        if let Some(first) = others.next() {
            seeds.push(link_to(&first.name));
            dial_via.insert(first.name.clone(), link_to(&first.name));
        }
        for p in others {
            dial_via.insert(p.name.clone(), link_to(&p.name));
        }
    }
    (seeds, dial_via)
}

/// The comment at the top of `node`'s configuration file.
fn config_header(node: &Planned, region: &str, dir: &Path) -> String {
    format!(
        "# Node {} (region {region}) of the local multi-region cluster in {}, written by `meridian demo init`.\n\
         # Peers of other regions are dialled through the WAN links of {} (peer.dial_via), which\n\
         # `meridian demo` runs: started alone, this node reaches its own region only.",
        node.name,
        dir.display(),
        GEO_PLAN_FILE
    )
}

/// A summary of a plan: regions, nodes, latency.
pub fn describe(plan: &GeoPlan) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "cluster {:?}: {} regions × {} nodes, rf {} per region, {} WAN links; trust {}\n",
        plan.cluster_id,
        plan.regions.len(),
        plan.regions.first().map_or(0, |r| r.nodes.len()),
        plan.rf,
        plan.links.len(),
        plan.ca_cert.display()
    );
    let _ = writeln!(out, "{:<14}{:<12}{:<12}{:<18}{:<18}{:<18}", "NODE", "REGION", "ZONE", "CLIENT", "HTTP", "PEER");
    for (region, node) in plan.nodes() {
        let _ = writeln!(
            out,
            "{:<14}{:<12}{:<12}{:<18}{:<18}{:<18}",
            node.name,
            region.name,
            node.zone,
            node.client_addr.to_string(),
            node.http_addr.to_string(),
            node.peer_addr.to_string()
        );
    }
    if plan.regions.len() > 1 {
        let _ = writeln!(out, "emulated WAN (round trip; each direction half):");
        for (i, a) in plan.regions.iter().enumerate() {
            for b in &plan.regions[i + 1..] {
                if let Some(link) = plan.links_between(&a.name, &b.name).next() {
                    let _ = writeln!(out, "  {:<10} <-> {:<10} {} ms", a.name, b.name, 2 * link.one_way_ms);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
