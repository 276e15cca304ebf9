//! A local multi-region cluster of real `meridian` processes behind emulated WAN links, for fault
//! tests.
//!
//! [`Geo::init`] writes the cluster with `meridian demo init` (one CA, one configuration per node,
//! `cluster.json`) on free ports and starts every WAN link in the test process: one [`Relay`] per
//! (source region, destination node) pair, on the link's planned address, delaying each direction
//! by [`GeoSpec::one_way_ms`] ± [`GeoSpec::jitter_ms`] (FIFO, seeded). The nodes' `peer.dial_via`
//! sends all cross-region peer traffic through these links, so the test can partition regions
//! ([`Geo::partition`], [`Geo::isolate`], [`Geo::partition_one_way`], [`Geo::heal`]) while in-region
//! traffic stays direct. Then [`Geo::start_all`] starts the nodes as child processes (the process
//! handling is the single-region harness's: [`crate::region`]), and the test `kill -9`s, restarts
//! (optionally with a skewed HLC clock: [`Geo::restart_with_clock_offset`]) and stops them by name,
//! talks to each through the SDK ([`Geo::client`], [`Geo::region_clients`]), and finally reads every
//! key's state from every replica in every region ([`Geo::final_state`]) for the
//! [checkers](crate::check).
//!
//! Nodes are named as `meridian demo init` names them: `<region>-n<i>` (`us-east-n1`, …).
//!
//! * **The binary, output, environment** as in [`crate::region`]: `$MERIDIAN_BIN` or
//!   `target/<profile>/meridian`; each node's output is appended to its `node.log`
//!   (`DIR/<node>/node.log`); the test's `MERIDIAN_*` variables are not passed on, except
//!   `MERIDIAN_LOG`, and `MERIDIAN_CLOCK_OFFSET_MS` when a node is restarted with a clock offset.
//! * **Link directions.** A link `from_region → to_node` carries the connections that nodes of
//!   `from_region` open to `to_node`: its forward direction carries their packets to `to_node`, its
//!   backward direction `to_node`'s answers. So "packets from region A no longer reach region B"
//!   ([`Geo::partition_one_way`]) blocks the forward direction of the links A → B and the backward
//!   direction of the links B → A.
//! * **Cleanup.** Children are spawned with `kill_on_drop` and relays stop when dropped, so a
//!   panicking test still kills every node (SIGKILL) and closes every link; [`Geo::stop_all`] stops
//!   the nodes gracefully first.
//! * **Final state without the write path.** [`Geo::final_state`] learns each key's replicas in
//!   each region from every node of that region (`cluster placement` is per region and must agree
//!   within it) and reads the key at `eventual` from each replica, which answers from its own
//!   storage: no coordinator joins replicas' states or writes back, so a lost or divergent replica
//!   shows as such.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use meridian_client::{Client, ClusterOp, ClusterReport, Consistency};
use meridian_wan::plan::{GeoPlan, LinkPlan};
use tokio::process::Command;
use tokio::time::Instant;

use crate::check::{final_states_by_key, FinalStates, NodeStates};
use crate::history::Event;
use crate::region::{
    self, agreed_placements, connect, eventual_sets, free_base_port_with_links, holds_no_hints, meridian_bin,
    sees_all_alive, tail, NodeRun, Processes, Stopped, CLIENT_TIMEOUT,
};
use crate::relay::{Direction, Impairment, Relay, RelayStats};

/// Link ports start this far above the base port (`meridian demo init`'s layout).
const LINK_PORT_OFFSET: usize = 1000;
/// How long a started node may take to answer `GET /readyz` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of the clients the harness's own polls use.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// The shape of a cluster to create with [`Geo::init`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeoSpec {
    /// The regions' names.
    pub regions: Vec<String>,
    /// Nodes in each region.
    pub nodes_per_region: usize,
    /// Replicas of each partition per region.
    pub rf: usize,
    /// Emulated one-way delay of every WAN link, each direction.
    pub one_way_ms: u64,
    /// Uniform jitter on that delay (FIFO is kept).
    pub jitter_ms: u64,
    /// `storage.durability`: `fsync` or `relaxed`.
    pub durability: String,
    /// Seed of the links' jitter (and loss) RNGs; link i draws from `seed ^ i`.
    pub seed: u64,
    /// `MERIDIAN_*` settings added to every node's environment at every start (a restart's own
    /// settings come after them).
    pub node_env: Vec<(String, String)>,
}

impl Default for GeoSpec {
    /// Three regions (`us-east`, `eu-west`, `ap-south`) × 2 nodes, rf 2, 20 ms ± 2 ms one way,
    /// fsync.
    fn default() -> Self {
        GeoSpec {
            regions: ["us-east", "eu-west", "ap-south"].map(String::from).to_vec(),
            nodes_per_region: 2,
            rf: 2,
            one_way_ms: 20,
            jitter_ms: 2,
            durability: "fsync".into(),
            seed: 0x6765_6f5f_7465_7374,
            node_env: Vec::new(),
        }
    }
}

/// Every key's replicas in every region and each replica's own state of it, read without a
/// coordinator in between.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GeoState {
    /// Set key → its replicas' names: each region's replicas, best first, region by region.
    pub replicas: BTreeMap<String, Vec<String>>,
    /// Counter key → its replicas' names, as [`GeoState::replicas`].
    pub counter_replicas: BTreeMap<String, Vec<String>>,
    /// Node → set key → the set that node holds, for the keys it is a replica of (an absent key is
    /// an empty set).
    pub by_node: NodeStates,
    /// Node → counter key → the value that node holds, for the keys it is a replica of (an absent
    /// key is 0).
    pub counters: BTreeMap<String, BTreeMap<String, i64>>,
}

impl GeoState {
    /// The per-key replica states of the set keys, for the checkers: every set key read (and every
    /// key of `history` that is not a counter key read), each with the states of its replicas in
    /// every region.
    pub fn final_states(&self, history: &[Event]) -> FinalStates {
        let mut states =
            final_states_by_key(history, &self.by_node, |key| self.replicas.get(key).cloned().unwrap_or_default());
        states.retain(|key, _| !self.counter_replicas.contains_key(key));
        states
    }

    /// The counter keys' replica states in the checkers' form (each value as a one-element set,
    /// `"17"`), for [`eventually_converged`](crate::check::eventually_converged).
    pub fn counter_final_states(&self) -> FinalStates {
        self.counter_replicas
            .iter()
            .map(|(key, replicas)| {
                let states = replicas
                    .iter()
                    .filter_map(|node| {
                        let value = self.counters.get(node)?.get(key).copied().unwrap_or(0);
                        Some((node.clone(), BTreeSet::from([value.to_string()])))
                    })
                    .collect();
                (key.clone(), states)
            })
            .collect()
    }

    /// The keys (set and counter) whose replicas, across all regions, do not all hold the same state.
    pub fn divergent_keys(&self) -> Vec<String> {
        let mut divergent = Vec::new();
        for (key, replicas) in &self.replicas {
            let mut states = replicas.iter().map(|node| self.by_node.get(node).and_then(|keys| keys.get(key)));
            let first = states.next().flatten();
            if !states.all(|state| state == first) {
                divergent.push(key.clone());
            }
        }
        for (key, replicas) in &self.counter_replicas {
            let mut values = replicas.iter().map(|node| self.counters.get(node).and_then(|keys| keys.get(key)));
            let first = values.next().flatten();
            if !values.all(|value| value == first) {
                divergent.push(key.clone());
            }
        }
        divergent
    }
}

/// One WAN link and its relay.
struct Link {
    plan: LinkPlan,
    relay: Relay,
}

/// A local multi-region cluster of `meridian` processes. See the [module docs](self).
pub struct Geo {
    dir: PathBuf,
    plan: GeoPlan,
    /// Node i of `plan.nodes()` order.
    procs: Processes,
    /// Node i's region.
    region_of: Vec<String>,
    links: Vec<Link>,
    /// What every link does when not partitioned.
    normal: Impairment,
    /// [`GeoSpec::node_env`].
    node_env: Vec<(String, String)>,
}

impl fmt::Debug for Geo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let running: Vec<&str> = self.procs.running().map(|i| self.procs.node(i).name.as_str()).collect();
        f.debug_struct("Geo")
            .field("dir", &self.dir)
            .field("running", &running)
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Geo {
    /// Writes a cluster into `dir` with `meridian demo init` on free ports, loads its plan and
    /// starts every WAN link (in this process; must be called within a tokio runtime). Starts no
    /// node.
    pub async fn init(dir: &Path, spec: &GeoSpec) -> anyhow::Result<Geo> {
        Geo::init_with(dir, spec, meridian_bin()).await
    }

    /// [`Geo::init`] with another `meridian` executable — for every node, and for `demo init`
    /// itself (a previous release, for a rolling upgrade across regions).
    pub async fn init_with(dir: &Path, spec: &GeoSpec, bin: PathBuf) -> anyhow::Result<Geo> {
        anyhow::ensure!(!spec.regions.is_empty(), "a cluster needs a region");
        let nodes = spec.regions.len() * spec.nodes_per_region;
        let links = nodes * (spec.regions.len() - 1);
        // The ports may be taken between the probe and the nodes' (or links') bind; retry the
        // whole layout a few times when a link cannot bind.
        let mut last_error = None;
        for _ in 0..5 {
            let base_port = free_base_port_with_links(nodes, LINK_PORT_OFFSET, links)?;
            let mut command = Command::new(&bin);
            command
                .args(["demo", "init", "--force", "--dir"])
                .arg(dir)
                .args(["--regions", &spec.regions.join(",")])
                .args(["--nodes-per-region", &spec.nodes_per_region.to_string(), "--rf", &spec.rf.to_string()])
                .args(["--zones", &spec.nodes_per_region.clamp(1, 26).to_string()])
                .args(["--base-port", &base_port.to_string(), "--rtt-ms", &(2 * spec.one_way_ms).to_string()])
                .args(["--cluster-id", "geo", "--durability", &spec.durability])
                .stdin(Stdio::null());
            region::scrub_env(&mut command);
            let output = command.output().await.with_context(|| format!("running {} demo init", bin.display()))?;
            if !output.status.success() {
                bail!(
                    "{} demo init --dir {} failed ({}): {}{}",
                    bin.display(),
                    dir.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
            let plan = GeoPlan::load(&dir)?;
            anyhow::ensure!(
                plan.nodes().count() == nodes && plan.links.len() == links,
                "{} lists {} nodes and {} links, expected {nodes} and {links}",
                dir.join("cluster.json").display(),
                plan.nodes().count(),
                plan.links.len()
            );
            let normal = Impairment::delay(Duration::from_millis(spec.one_way_ms))
                .with_jitter(Duration::from_millis(spec.jitter_ms));
            let mut started = Vec::with_capacity(links);
            let mut bind_error = None;
            for (i, link) in plan.links.iter().enumerate() {
                match Relay::bind(link.listen, link.upstream, spec.seed ^ i as u64) {
                    Ok(relay) => {
                        relay.set(normal);
                        started.push(Link { plan: link.clone(), relay });
                    }
                    Err(e) => {
                        bind_error = Some(anyhow::Error::new(e).context(format!(
                            "binding link {} -> {} on {}",
                            link.from_region, link.to_node, link.listen
                        )));
                        break;
                    }
                }
            }
            if let Some(e) = bind_error {
                last_error = Some(e);
                continue;
            }
            let mut runs = Vec::with_capacity(nodes);
            let mut region_of = Vec::with_capacity(nodes);
            for (region, node) in plan.nodes() {
                let cwd = node.config.parent().unwrap_or(&dir).to_path_buf();
                runs.push(NodeRun {
                    name: node.name.clone(),
                    config: node.config.clone(),
                    client_addr: node.client_addr,
                    log: node.log.clone(),
                    cwd,
                });
                region_of.push(region.name.clone());
            }
            let procs = Processes::new(bin, runs);
            return Ok(Geo { dir, plan, procs, region_of, links: started, normal, node_env: spec.node_env.clone() });
        }
        Err(last_error.expect("five tries failed").context("no free ports for the links after 5 layouts"))
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plan from `cluster.json`.
    pub fn plan(&self) -> &GeoPlan {
        &self.plan
    }

    /// The regions' names, in plan order.
    pub fn regions(&self) -> Vec<String> {
        self.plan.regions.iter().map(|r| r.name.clone()).collect()
    }

    /// Every node's name, region by region.
    pub fn node_names(&self) -> Vec<String> {
        self.plan.nodes().map(|(_, n)| n.name.clone()).collect()
    }

    /// The names of the nodes of `region`.
    pub fn region_nodes(&self, region: &str) -> Vec<String> {
        self.plan.region(region).map(|r| r.nodes.iter().map(|n| n.name.clone()).collect()).unwrap_or_default()
    }

    /// The region of node `name`.
    pub fn region_of(&self, name: &str) -> Option<&str> {
        self.index(name).ok().map(|i| self.region_of[i].as_str())
    }

    fn index(&self, name: &str) -> anyhow::Result<usize> {
        self.plan.nodes().position(|(_, n)| n.name == name).with_context(|| format!("no node {name} in the cluster"))
    }

    /// Node `name`'s log file.
    pub fn log_path(&self, name: &str) -> anyhow::Result<PathBuf> {
        Ok(self.procs.node(self.index(name)?).log.clone())
    }

    /// The last `lines` lines of node `name`'s log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        match self.log_path(name) {
            Ok(path) => tail(&path, lines),
            Err(e) => format!("    ({e})\n"),
        }
    }

    /// Node `name`'s process id while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.index(name).ok().and_then(|i| self.procs.pid(i))
    }

    /// Starts every node that is not running, then waits until each answers `GET /readyz` and sees
    /// every member of every region active and alive (at most `timeout` for the latter).
    pub async fn start_all(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let stopped: Vec<usize> = (0..self.region_of.len()).filter(|&i| !self.procs.is_running(i)).collect();
        let env = self.env_with(&[]);
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        for &i in &stopped {
            self.procs.start(i, None, &env).await?;
        }
        for &i in &stopped {
            self.wait_ready(i).await?;
        }
        self.wait_all_alive(timeout).await
    }

    /// Runs node `name` from `bin` from its next (re)start on: a rolling upgrade, one node at a time.
    pub fn use_binary(&mut self, name: &str, bin: PathBuf) -> anyhow::Result<()> {
        let i = self.index(name)?;
        self.procs.set_bin(i, bin);
        Ok(())
    }

    /// `kill -9` node `name` and reap it; returns its exit status.
    pub async fn kill9(&mut self, name: &str) -> anyhow::Result<ExitStatus> {
        let i = self.index(name)?;
        self.procs.kill9(i).await
    }

    /// Starts node `name` again on its data directory (`kill -9`ing it first if it runs) and waits
    /// until it is ready.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.restart_with(name, None, &[]).await
    }

    /// [`Geo::restart`] with the node's HLC wall clock skewed by `offset_ms`. The skew lasts until
    /// the node is restarted again.
    ///
    /// The node runs with a copy of its configuration, `clock-offset.toml` beside it, whose
    /// top-level `clock_offset_ms` is `offset_ms`, and with `MERIDIAN_CLOCK_OFFSET_MS` set to the
    /// same value. (The configuration file, not only the variable: the node's environment override
    /// only accepts the top-level keys listed in its `config.rs` `TOP_LEVEL_FIELDS`, which do not
    /// include `clock_offset_ms`, so the variable alone is ignored today.)
    pub async fn restart_with_clock_offset(&mut self, name: &str, offset_ms: i64) -> anyhow::Result<()> {
        let i = self.index(name)?;
        let original = self.procs.node(i).config.clone();
        let text = std::fs::read_to_string(&original).with_context(|| format!("reading {}", original.display()))?;
        let skewed = with_clock_offset(&text, offset_ms);
        let path = original.with_file_name("clock-offset.toml");
        std::fs::write(&path, skewed).with_context(|| format!("writing {}", path.display()))?;
        self.restart_with(name, Some(&path), &[("MERIDIAN_CLOCK_OFFSET_MS", offset_ms.to_string())]).await
    }

    async fn restart_with(&mut self, name: &str, config: Option<&Path>, env: &[(&str, String)]) -> anyhow::Result<()> {
        let i = self.index(name)?;
        if self.procs.is_running(i) {
            self.procs.kill9(i).await?;
        }
        let env = self.env_with(env);
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.procs.start(i, config, &env).await?;
        self.wait_ready(i).await
    }

    /// [`GeoSpec::node_env`], then `extra`.
    fn env_with(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let extra = extra.iter().map(|(k, v)| (k.to_string(), v.clone()));
        self.node_env.iter().cloned().chain(extra).collect()
    }

    /// The sum over every running node of the metric `name` (a counter or gauge without labels,
    /// as its `GET /metrics` renders it; 0 where a node does not export it yet).
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        Ok(self.metric_by_node(name).await?.values().sum())
    }

    /// The metric `name` of every running node, by node name (see [`Geo::metric_sum`]).
    pub async fn metric_by_node(&self, name: &str) -> anyhow::Result<BTreeMap<String, f64>> {
        let probe = meridian_wan::plan::admin_http(&self.plan.ca_cert)?;
        let mut out = BTreeMap::new();
        for i in self.procs.running().collect::<Vec<_>>() {
            let http = self.plan.nodes().nth(i).map(|(_, n)| n.http_addr).expect("a planned node");
            let (status, body) = probe.get(http, "/metrics").await?;
            let node = &self.procs.node(i).name;
            anyhow::ensure!(status == 200, "GET /metrics on {node} answered {status}");
            let prefix = format!("{name} ");
            let value =
                body.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(Ok(0.0), |v| v.trim().parse::<f64>())?;
            out.insert(node.clone(), value);
        }
        Ok(out)
    }

    /// Waits until node i answers `GET /readyz` with 200.
    async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        let name = &self.procs.node(i).name;
        let http = self.plan.nodes().nth(i).map(|(_, n)| n.http_addr).expect("a planned node");
        let deadline = Instant::now() + READY_TIMEOUT;
        let probe = meridian_wan::plan::admin_http(&self.plan.ca_cert)?;
        loop {
            if probe.ready(http).await {
                return Ok(());
            }
            if !self.procs.is_running(i) {
                bail!("{name} is not running");
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} was not ready within {} s (GET https://{http}/readyz); its log ends with:\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.log_tail(name, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node runs and sees every member of every region active and alive.
    pub async fn wait_all_alive(&self, timeout: Duration) -> anyhow::Result<()> {
        let names: BTreeSet<String> = self.node_names().into_iter().collect();
        self.procs
            .poll_every_node(&self.plan.ca_cert, timeout, "every node to see every member active and alive", |r| {
                sees_all_alive(&names, r)
            })
            .await
    }

    /// Waits until no node holds a hint for any other (of any region).
    pub async fn wait_no_hints(&self, timeout: Duration) -> anyhow::Result<()> {
        self.procs
            .poll_every_node(&self.plan.ca_cert, timeout, "every node's hints to be replayed", |report| {
                holds_no_hints(report)?;
                let pending: Vec<String> = report
                    .regions
                    .iter()
                    .filter(|r| r.hints_pending > 0)
                    .map(|r| format!("{} for {}", r.hints_pending, r.from_region))
                    .collect();
                if pending.is_empty() {
                    Ok(())
                } else {
                    Err(format!("holds hints for other regions: {}", pending.join(", ")))
                }
            })
            .await
    }

    /// Blocks both directions of every link between regions `a` and `b`.
    pub fn partition(&self, a: &str, b: &str) {
        for link in self.links_between(a, b) {
            link.relay.block();
        }
    }

    /// Blocks both directions of every link between `region` and every other region.
    pub fn isolate(&self, region: &str) {
        for link in self.links.iter().filter(|l| l.plan.from_region == region || l.plan.to_region == region) {
            link.relay.block();
        }
    }

    /// Packets from region `from` no longer reach region `to` (the other way still works): blocks
    /// the forward direction of the links `from → to` and the backward direction of `to → from`.
    pub fn partition_one_way(&self, from: &str, to: &str) {
        for link in &self.links {
            if link.plan.from_region == from && link.plan.to_region == to {
                link.relay.block_direction(Direction::Forward);
            } else if link.plan.from_region == to && link.plan.to_region == from {
                link.relay.block_direction(Direction::Backward);
            }
        }
    }

    /// Ends every partition: every link back to its normal delay and jitter.
    pub fn heal(&self) {
        for link in &self.links {
            link.relay.set(self.normal);
        }
    }

    fn links_between<'a>(&'a self, a: &'a str, b: &'a str) -> impl Iterator<Item = &'a Link> + 'a {
        self.links.iter().filter(move |l| {
            (l.plan.from_region == a && l.plan.to_region == b) || (l.plan.from_region == b && l.plan.to_region == a)
        })
    }

    /// Every link with its counters right now.
    pub fn link_stats(&self) -> Vec<(LinkPlan, RelayStats)> {
        self.links.iter().map(|l| (l.plan.clone(), l.relay.stats())).collect()
    }

    /// Datagrams dropped so far (loss, blocked, overflow, both directions) on the links between
    /// regions `a` and `b`.
    pub fn dropped_between(&self, a: &str, b: &str) -> u64 {
        self.links_between(a, b)
            .map(|l| {
                let stats = l.relay.stats();
                stats.forward.dropped() + stats.backward.dropped()
            })
            .sum()
    }

    /// Datagrams dropped so far on every link.
    pub fn dropped_total(&self) -> u64 {
        self.links
            .iter()
            .map(|l| {
                let stats = l.relay.stats();
                stats.forward.dropped() + stats.backward.dropped()
            })
            .sum()
    }

    /// A connected client of node `name` only (no failover), trusting the cluster's CA, with
    /// [`CLIENT_TIMEOUT`] and no retries.
    pub async fn client(&self, name: &str) -> anyhow::Result<Client> {
        self.client_with(name, CLIENT_TIMEOUT).await
    }

    /// [`Geo::client`] with another per-attempt timeout.
    pub async fn client_with(&self, name: &str, timeout: Duration) -> anyhow::Result<Client> {
        let node = self.procs.node(self.index(name)?);
        connect(&node.name, node.client_addr, &self.plan.ca_cert, timeout).await
    }

    /// One [`Geo::client`] per node of `region`, with the node's name.
    pub async fn region_clients(&self, region: &str) -> anyhow::Result<Vec<(String, Client)>> {
        let names = self.region_nodes(region);
        anyhow::ensure!(!names.is_empty(), "no region {region} in the cluster");
        let mut clients = Vec::with_capacity(names.len());
        for name in names {
            let client = self.client(&name).await?;
            clients.push((name, client));
        }
        Ok(clients)
    }

    /// Node `name`'s view of the cluster.
    pub async fn cluster_status(&self, name: &str) -> anyhow::Result<ClusterReport> {
        let client = self.client_with(name, POLL_TIMEOUT).await?;
        let report = client.cluster(ClusterOp::Status).await.with_context(|| format!("{name} cluster status"));
        client.close().await;
        report
    }

    /// Every key's replicas in every region (asked of every node of that region, which must agree),
    /// region by region.
    pub async fn placements(&self, keys: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let mut placements: BTreeMap<String, Vec<String>> = keys.iter().map(|k| (k.clone(), Vec::new())).collect();
        for region in &self.plan.regions {
            let mut clients = Vec::new();
            for node in &region.nodes {
                clients.push((node.name.as_str(), self.client_with(&node.name, POLL_TIMEOUT).await?));
            }
            let placed = agreed_placements(&clients, keys).await;
            for (_, client) in &clients {
                client.close().await;
            }
            for (key, replicas) in placed.with_context(|| format!("placement in {}", region.name))? {
                anyhow::ensure!(
                    replicas.iter().all(|r| region.nodes.iter().any(|n| &n.name == r)),
                    "{} places {key} on {replicas:?}, not all of its nodes",
                    region.name
                );
                placements.entry(key).or_default().extend(replicas);
            }
        }
        Ok(placements)
    }

    /// Every replica's own state, in every region, of the set keys `sets` and the counter keys
    /// `counters` (each read at `eventual` from the replica itself).
    pub async fn final_state(&self, sets: &[String], counters: &[String]) -> anyhow::Result<GeoState> {
        let all: Vec<String> = sets.iter().chain(counters).cloned().collect();
        let mut placements = self.placements(&all).await?;
        let counter_replicas: BTreeMap<String, Vec<String>> =
            counters.iter().map(|k| (k.clone(), placements.remove(k).unwrap_or_default())).collect();
        let replicas = placements;
        let mut state = GeoState { replicas, counter_replicas, ..GeoState::default() };
        for name in self.node_names() {
            let holds = |placed: &BTreeMap<String, Vec<String>>| -> Vec<String> {
                placed.iter().filter(|(_, nodes)| nodes.contains(&name)).map(|(k, _)| k.clone()).collect()
            };
            let my_sets = holds(&state.replicas);
            let my_counters = holds(&state.counter_replicas);
            if my_sets.is_empty() && my_counters.is_empty() {
                continue;
            }
            let client = self.client_with(&name, POLL_TIMEOUT).await?;
            let read = async {
                let keys: Vec<&str> = my_sets.iter().map(String::as_str).collect();
                let sets = eventual_sets(&client, &name, &keys).await?;
                let mut values = BTreeMap::new();
                for key in &my_counters {
                    let value = client
                        .counter(key.as_str())
                        .consistency(Consistency::Eventual)
                        .get()
                        .await
                        .with_context(|| format!("{name} eventual read of {key}"))?;
                    values.insert(key.clone(), value);
                }
                anyhow::Ok((sets, values))
            }
            .await;
            client.close().await;
            let (sets, values) = read?;
            state.by_node.insert(name.clone(), sets);
            state.counters.insert(name.clone(), values);
        }
        Ok(state)
    }

    /// Polls [`Geo::final_state`] until the replicas of every key in every region agree, and still
    /// agree (on the same states) a poll later. Returns the last state read and whether it
    /// converged within `timeout`; fails only when no state could be read at all.
    pub async fn wait_converged(
        &self,
        sets: &[String],
        counters: &[String],
        timeout: Duration,
    ) -> anyhow::Result<(GeoState, bool)> {
        crate::region::poll_until_stable(
            timeout,
            || self.final_state(sets, counters),
            |s: &GeoState| s.divergent_keys().is_empty(),
        )
        .await
    }

    /// Stops every running node (SIGTERM, then SIGKILL after a grace). The links keep running
    /// until the `Geo` is dropped.
    pub async fn stop_all(&mut self) -> Vec<Stopped> {
        self.procs.stop_all().await
    }
}

/// A node configuration (TOML) with its top-level `clock_offset_ms` set to `offset_ms`: the line
/// replaced if there is one, else added before the first table.
fn with_clock_offset(config: &str, offset_ms: i64) -> String {
    let setting = format!("clock_offset_ms = {offset_ms}");
    let mut out = Vec::new();
    let mut done = false;
    for line in config.lines() {
        let trimmed = line.trim_start();
        if !done && trimmed.starts_with('[') {
            out.push(setting.clone());
            done = true;
        }
        if !done && trimmed.split('=').next().is_some_and(|k| k.trim() == "clock_offset_ms") {
            out.push(setting.clone());
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    if !done {
        out.push(setting);
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::with_clock_offset;

    #[test]
    fn clock_offset_replaces_the_top_level_setting_or_adds_it_before_the_first_table() {
        let replaced = with_clock_offset("a = 1\nclock_offset_ms = 0\n\n[peer]\nrf = 2\n", 1500);
        assert_eq!(replaced, "a = 1\nclock_offset_ms = 1500\n\n[peer]\nrf = 2\n");
        let added = with_clock_offset("a = 1\n[peer]\nclock_offset_ms = 3\n", -20);
        assert_eq!(added, "a = 1\nclock_offset_ms = -20\n[peer]\nclock_offset_ms = 3\n");
        assert_eq!(with_clock_offset("a = 1", 5), "a = 1\nclock_offset_ms = 5\n");
    }
}
