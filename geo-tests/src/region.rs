//! A local region of real `meridian` processes, for fault tests.
//!
//! [`Region::init`] writes a region with `meridian region init` (one CA, one configuration per
//! node, `region.json`) on free ports; the test then starts, `kill -9`s, restarts and stops the
//! nodes one by one, talks to each through the SDK, and finally reads every key's state from each
//! of its replicas ([`Region::final_state`]) for the [checkers](crate::check).
//!
//! Nodes are numbered from 1, as their names are: `kill9(2)` kills `n2`.
//!
//! * **The binary.** [`meridian_bin`]: `$MERIDIAN_BIN`, else `target/<profile>/meridian` next to the
//!   test executable. `cargo test --workspace --all-targets` builds it first; a lone
//!   `cargo test -p meridian-geo-tests` needs `cargo build -p meridian-node --bin meridian` before.
//! * **Output.** Each node's stdout and stderr are appended to `DIR/n{i}/node.log`, a separator line
//!   before each start; the harness only reads the first stdout line (`… client protocol on ADDR …`)
//!   to know the node is serving. `MERIDIAN_LOG` is passed on (default `warn`); every other
//!   `MERIDIAN_*` variable of the test's environment is removed, since the nodes would read it as a
//!   configuration override.
//! * **Cleanup.** Children are spawned with `kill_on_drop`, so a panicking test still kills them
//!   (SIGKILL); [`Region::stop_all`] stops them gracefully (SIGTERM, then SIGKILL after a grace).
//! * **Final state without the write path.** [`Region::final_state`] learns each key's replicas
//!   from every node (`cluster placement`, which must agree) and reads the key at `eventual` from
//!   each replica: a replica answers an eventual read from its own storage, so no coordinator joins
//!   replicas' states or writes back, and a lost or divergent replica shows as such.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use meridian_client::{Client, ClusterOp, ClusterReport, Consistency, Error, Key};
use rand::Rng as _;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::check::{final_states_by_key, FinalStates, NodeStates};
use crate::history::Event;

/// Per-attempt timeout of the clients [`Region::client`] makes: above the nodes' peer timeout
/// (half their 5 s request timeout), so a quorum that cannot be met is reported by the node as
/// `quorum_unavailable` before the client gives up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a starting node may take to announce that it serves.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node is given to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Base ports are drawn from here. The range stays below Linux's default ephemeral range
/// (32768-60999), so a client socket or a concurrently running test binding port 0 cannot take a
/// node's port between the probe and the node's bind, or while a killed node is down.
const PORT_RANGE: std::ops::Range<usize> = 20_000..32_000;
/// The first line a node prints on stdout when it serves contains this, then its client address.
const ANNOUNCE: &str = "client protocol on ";
/// Timeout of the clients the harness's own polls use.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// Time between polls of the region's state.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A region as `meridian region init` described it in `DIR/region.json` (the fields the harness
/// needs; others are ignored, so the node may add more).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RegionPlan {
    /// The nodes' `cluster_id`.
    pub cluster_id: String,
    /// The nodes' `region`.
    pub region: String,
    /// Replication factor.
    pub rf: usize,
    /// The cluster CA: the one certificate a client trusts for every node.
    pub ca_cert: PathBuf,
    /// The nodes, `n1` first.
    pub nodes: Vec<NodePlan>,
}

/// One node of a [`RegionPlan`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct NodePlan {
    /// `n1`, `n2`, …
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// Its configuration file (`meridian serve --config PATH`).
    pub config: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Client protocol (QUIC).
    pub client_addr: SocketAddr,
    /// HTTP API.
    pub http_addr: SocketAddr,
    /// Peer transport (QUIC).
    pub peer_addr: SocketAddr,
}

/// The shape of a region to create with [`Region::init`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// Number of nodes.
    pub nodes: usize,
    /// Replication factor.
    pub rf: usize,
    /// Number of zones (dealt to the nodes round-robin).
    pub zones: usize,
    /// `storage.durability`: `fsync` or `relaxed`.
    pub durability: String,
    /// Node i listens on base+10i, base+10i+1, base+10i+2; `None` picks a free base.
    pub base_port: Option<u16>,
}

impl Default for RegionSpec {
    /// Five nodes, rf 3, three zones, fsync, a free base port.
    fn default() -> Self {
        RegionSpec { nodes: 5, rf: 3, zones: 3, durability: "fsync".into(), base_port: None }
    }
}

/// How a node process ended when [`Region::stop_all`] stopped it.
#[derive(Debug)]
pub struct Stopped {
    /// The node's name.
    pub name: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Whether it had to be killed because it did not exit within [`STOP_GRACE`] of SIGTERM.
    pub forced: bool,
}

/// The previous release's `meridian` named by `MERIDIAN_PREVIOUS_BIN` (`scripts/previous-release.sh`
/// builds one), for a rolling-upgrade run; `None` when unset. Panics when it names no file.
pub fn previous_bin() -> Option<PathBuf> {
    let previous = std::env::var_os("MERIDIAN_PREVIOUS_BIN").map(PathBuf::from);
    assert!(
        previous.as_ref().is_none_or(|bin| bin.is_file()),
        "MERIDIAN_PREVIOUS_BIN={previous:?} is not a file (did scripts/previous-release.sh fail?)"
    );
    previous
}

/// Waits for load workers told to stop: each must end within 30 s, without panicking.
pub async fn join_workers(workers: Vec<tokio::task::JoinHandle<()>>) {
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("workers stop within 30 s of being told")
            .expect("worker panicked");
    }
}

/// The `meridian` executable: `$MERIDIAN_BIN` if set, else `meridian` in the directory the test
/// executable's `deps/` directory sits in (`target/<profile>/`).
///
/// # Panics
///
/// If there is none, saying how to build it.
pub fn meridian_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MERIDIAN_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "MERIDIAN_BIN={} is not a file", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("locating the test executable");
    // target/<profile>/deps/<test>-<hash> (tests) or target/<profile>/<bin> (binaries).
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|dir| dir.join("meridian")).collect();
    if let Some(found) = candidates.iter().find(|c| c.is_file()) {
        return found.clone();
    }
    panic!(
        "no meridian binary at {}: run `cargo build -p meridian-node --bin meridian` first \
         (or set MERIDIAN_BIN to the binary)",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(" or ")
    );
}

/// The cargo target directory the running test was built in (`target/`), for artefacts a test
/// keeps after it ends, such as its history file.
pub fn target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test>-<hash>
        if let Some(deps) = exe.parent().filter(|d| d.file_name() == Some(OsStr::new("deps"))) {
            if let Some(target) = deps.parent().and_then(Path::parent) {
                return target.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target")
}

/// A base port from `PORT_RANGE` whose `nodes` × 3 ports are free for both TCP and UDP on
/// 127.0.0.1 right now.
pub fn free_base_port(nodes: usize) -> anyhow::Result<u16> {
    free_base_port_with_links(nodes, 0, 0)
}

/// A base port from `PORT_RANGE` whose `nodes` × 3 node ports (node k on base+10k, +1, +2) and
/// `links` link ports (base+`link_offset`, +1, …) are free for both TCP and UDP on 127.0.0.1 right
/// now, all at once (as `meridian demo init` lays a multi-region cluster out).
pub fn free_base_port_with_links(nodes: usize, link_offset: usize, links: usize) -> anyhow::Result<u16> {
    let span = (10 * nodes + 3).max(if links > 0 { link_offset + links } else { 0 });
    let top = PORT_RANGE.end.checked_sub(span).filter(|top| *top > PORT_RANGE.start);
    let top = top.with_context(|| format!("{nodes} nodes and {links} links do not fit in ports {PORT_RANGE:?}"))?;
    let mut rng = rand::rng();
    for _ in 0..100 {
        let base = rng.random_range(PORT_RANGE.start..top);
        let node_ports = (1..=nodes).flat_map(|i| (0..3).map(move |offset| base + 10 * i + offset));
        let link_ports = (0..links).map(|l| base + link_offset + l);
        if ports_free(node_ports.chain(link_ports)) {
            return Ok(u16::try_from(base).expect("below 32000"));
        }
    }
    bail!("found no free base port for {nodes} nodes and {links} links in {PORT_RANGE:?} after 100 tries")
}

fn ports_free(ports: impl Iterator<Item = usize>) -> bool {
    // Hold every probe until all are bound, so that the ports are free together.
    let mut held = Vec::new();
    for port in ports {
        let Ok(port) = u16::try_from(port) else { return false };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match (TcpListener::bind(addr), UdpSocket::bind(addr)) {
            (Ok(tcp), Ok(udp)) => held.push((tcp, udp)),
            _ => return false,
        }
    }
    true
}

/// The history `result` of a failed request: the node's error code (`quorum_unavailable`,
/// `timeout`, …), or what went wrong on the client's side (`timeout`, `connect`, `transport`, …).
pub fn error_result(error: &Error) -> String {
    match error {
        Error::Server { code, .. } => code.name().to_string(),
        Error::Timeout { .. } => "timeout".into(),
        Error::Connect { .. } => "connect".into(),
        Error::Transport(_) => "transport".into(),
        Error::Tls(_) => "tls".into(),
        Error::Protocol(_) => "protocol".into(),
        Error::InvalidArgument(_) => "invalid_argument".into(),
    }
}

/// Whether a request failed for want of a working connection to its node (no connection, no
/// answer, the connection broke, the node shutting down), so that the same request may be sent to
/// another node.
pub fn is_connection_error(error: &Error) -> bool {
    matches!(error, Error::Connect { .. } | Error::Timeout { .. } | Error::Transport(_))
        || error.code() == Some(meridian_client::ErrorCode::ShuttingDown)
}

/// Every key's replicas and each replica's own state of it, read without a coordinator in between.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionState {
    /// Key → its replicas' names, best first, as every node places it.
    pub replicas: BTreeMap<String, Vec<String>>,
    /// Node → key → the set that node holds, for the keys it is a replica of (an absent key is an
    /// empty set).
    pub by_node: NodeStates,
}

impl RegionState {
    /// The per-key replica states the checkers take, covering the keys of `history` too.
    pub fn final_states(&self, history: &[Event]) -> FinalStates {
        final_states_by_key(history, &self.by_node, |key| self.replicas.get(key).cloned().unwrap_or_default())
    }

    /// The keys whose replicas do not all hold the same set.
    pub fn divergent_keys(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|(key, replicas)| {
                let mut states = replicas.iter().map(|node| self.by_node.get(node).and_then(|keys| keys.get(*key)));
                let first = states.next().flatten();
                !states.all(|state| state == first)
            })
            .map(|(key, _)| key.clone())
            .collect()
    }
}

/// What the process handling needs to know about one node: its name, how to start it and where its
/// output goes. Both harnesses ([`Region`] and [`crate::geo::Geo`]) describe their nodes this way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeRun {
    /// The node's name.
    pub name: String,
    /// Its configuration file (`meridian serve --config PATH`).
    pub config: PathBuf,
    /// Its client address, which it announces on stdout once it serves.
    pub client_addr: SocketAddr,
    /// The file its stdout and stderr are appended to.
    pub log: PathBuf,
    /// Its working directory.
    pub cwd: PathBuf,
}

/// A running node process.
struct Proc {
    child: Child,
    pid: u32,
}

/// The `meridian serve` processes of a set of nodes (indexed from 0), started, `kill -9`ed and
/// stopped one by one. Children are spawned with `kill_on_drop`, so dropping this kills them.
pub(crate) struct Processes {
    /// Index i: the executable node i runs (one binary, unless a test upgrades nodes one by one).
    bins: Vec<PathBuf>,
    nodes: Vec<NodeRun>,
    /// Index i: node i's process while it runs.
    procs: Vec<Option<Proc>>,
}

impl Processes {
    /// Nothing running yet.
    pub(crate) fn new(bin: PathBuf, nodes: Vec<NodeRun>) -> Processes {
        let procs = nodes.iter().map(|_| None).collect();
        let bins = nodes.iter().map(|_| bin.clone()).collect();
        Processes { bins, nodes, procs }
    }

    /// Runs node `i` from `bin` from its next start on.
    pub(crate) fn set_bin(&mut self, i: usize, bin: PathBuf) {
        self.bins[i] = bin;
    }

    /// Node `i`.
    pub(crate) fn node(&self, i: usize) -> &NodeRun {
        &self.nodes[i]
    }

    /// Whether node `i` was started and not killed or stopped since.
    pub(crate) fn is_running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    /// The indices of the nodes started and not killed or stopped since.
    pub(crate) fn running(&self) -> impl Iterator<Item = usize> + '_ {
        self.procs.iter().enumerate().filter(|(_, p)| p.is_some()).map(|(i, _)| i)
    }

    /// Node `i`'s process id while it runs.
    pub(crate) fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(|p| p.pid)
    }

    /// Starts node `i` (`meridian serve --config …`, its own configuration unless `config` names
    /// another) with `env` added to its (scrubbed) environment and waits until it announces that it
    /// serves (at most [`ANNOUNCE_TIMEOUT`]).
    pub(crate) async fn start(
        &mut self,
        i: usize,
        config: Option<&Path>,
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let node = self.nodes[i].clone();
        let config = config.unwrap_or(&node.config);
        if let Some(proc) = &mut self.procs[i] {
            if proc.child.try_wait()?.is_none() {
                bail!("{} is already running (pid {})", node.name, proc.pid);
            }
        }
        self.procs[i] = None;
        let log_path = node.log.clone();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let settings: Vec<String> = env.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        let other_config =
            if config == node.config { String::new() } else { format!(" --config {}", config.display()) };
        let bin = &self.bins[i];
        writeln!(
            log,
            "--- geo-tests: starting {} ({}){other_config}{} (unix time {:.3}) ---",
            node.name,
            bin.display(),
            settings.concat(),
            unix.as_secs_f64()
        )?;

        let mut command = Command::new(bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(&node.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .kill_on_drop(true);
        scrub_env(&mut command);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().with_context(|| format!("starting {} ({} serve)", node.name, bin.display()))?;
        let pid = child.id().context("the new child has no pid")?;
        let stdout = child.stdout.take().context("the child's stdout is not piped")?;
        let mut reader = BufReader::new(stdout);

        // Lines before the announcement (none today) go to the log as well.
        let deadline = Instant::now() + ANNOUNCE_TIMEOUT;
        let announced = loop {
            let mut line = String::new();
            match tokio::time::timeout_at(deadline, reader.read_line(&mut line)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    let status = status.map_or("still running".to_string(), |s| {
                        s.map_or_else(|e| format!("wait failed: {e}"), |s| s.to_string())
                    });
                    bail!(
                        "{} closed its stdout before announcing that it serves ({status}); {} ends with:\n{}",
                        node.name,
                        log_path.display(),
                        tail(&log_path, 20)
                    );
                }
                Ok(Ok(_)) => {
                    log.write_all(line.as_bytes())?;
                    if line.contains(ANNOUNCE) {
                        break line;
                    }
                }
                Err(_) => bail!(
                    "{} did not announce that it serves within {} s; {} ends with:\n{}",
                    node.name,
                    ANNOUNCE_TIMEOUT.as_secs(),
                    log_path.display(),
                    tail(&log_path, 20)
                ),
            }
        };
        let addr = announced.split(ANNOUNCE).nth(1).and_then(|rest| rest.split_whitespace().next());
        if addr != Some(node.client_addr.to_string().as_str()) {
            bail!("{} announced {announced:?}, expected its client address {}", node.name, node.client_addr);
        }
        // The rest of stdout goes to the log until the process ends.
        let mut log = tokio::fs::File::from_std(log);
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut reader, &mut log).await;
            let _ = log.flush().await;
        });
        self.procs[i] = Some(Proc { child, pid });
        Ok(())
    }

    /// `kill -9` node `i` and reap it; returns its exit status (a SIGKILL, unless it had died
    /// already).
    pub(crate) async fn kill9(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        let name = self.nodes[i].name.clone();
        let mut proc = self.procs[i].take().with_context(|| format!("{name} is not running"))?;
        proc.child.start_kill().with_context(|| format!("sending SIGKILL to {name} (pid {})", proc.pid))?;
        let status = tokio::time::timeout(Duration::from_secs(10), proc.child.wait())
            .await
            .with_context(|| format!("{name} (pid {}) was not reaped within 10 s of SIGKILL", proc.pid))?
            .with_context(|| format!("reaping {name}"))?;
        Ok(status)
    }

    /// Stops every running node: SIGTERM to all, then up to [`STOP_GRACE`] for them to exit, then
    /// SIGKILL for the rest.
    pub(crate) async fn stop_all(&mut self) -> Vec<Stopped> {
        let mut stopping = Vec::new();
        for i in 0..self.nodes.len() {
            let Some(mut proc) = self.procs[i].take() else { continue };
            // Not reaped yet, so the pid is still this child's: no stranger gets the signal.
            if matches!(proc.child.try_wait(), Ok(None)) {
                let sent = Command::new("kill")
                    .args(["-TERM", &proc.pid.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                    .is_ok_and(|s| s.success());
                if !sent {
                    let _ = proc.child.start_kill();
                }
            }
            stopping.push((self.nodes[i].name.clone(), proc));
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut stopped = Vec::new();
        for (name, mut proc) in stopping {
            let (status, forced) = match tokio::time::timeout_at(deadline, proc.child.wait()).await {
                Ok(Ok(status)) => (status, false),
                _ => {
                    let _ = proc.child.start_kill();
                    match proc.child.wait().await {
                        Ok(status) => (status, true),
                        Err(_) => continue,
                    }
                }
            };
            stopped.push(Stopped { name, status, forced });
        }
        stopped
    }

    /// Polls the `cluster status` of every node (the stopped ones count as not ok) until `ok`
    /// accepts all of them at once.
    pub(crate) async fn poll_every_node(
        &self,
        ca_cert: &Path,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&ClusterReport) -> Result<(), String>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut clients: Vec<Option<Client>> = vec![None; self.nodes.len()];
        loop {
            let mut problems = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                let name = node.name.as_str();
                if self.procs[i].is_none() {
                    problems.push(format!("{name} is not running"));
                    continue;
                }
                if clients[i].is_none() {
                    match connect(name, node.client_addr, ca_cert, POLL_TIMEOUT).await {
                        Ok(client) => clients[i] = Some(client),
                        Err(e) => {
                            problems.push(format!("{name}: {e:#}"));
                            continue;
                        }
                    }
                }
                let client = clients[i].as_ref().expect("connected above");
                match client.cluster(ClusterOp::Status).await {
                    Ok(report) => {
                        if let Err(problem) = ok(&report) {
                            problems.push(format!("{name} {problem}"));
                        }
                    }
                    Err(e) => {
                        clients[i] = None;
                        problems.push(format!("{name}: {e}"));
                    }
                }
            }
            if problems.is_empty() {
                for client in clients.iter().flatten() {
                    client.close().await;
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {} s waiting for {what}: {}", timeout.as_secs(), problems.join("; "));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// A `cluster status` check for [`Processes::poll_every_node`]: the node knows exactly `names`, and
/// sees every one of them active and alive.
pub(crate) fn sees_all_alive(names: &BTreeSet<String>, report: &ClusterReport) -> Result<(), String> {
    let seen: BTreeSet<&str> = report.members.iter().map(|m| m.name.as_str()).collect();
    let unwell: Vec<String> = report
        .members
        .iter()
        .filter(|m| m.state != "active" || !matches!(m.liveness.as_str(), "self" | "alive"))
        .map(|m| format!("{} {}/{}", m.name, m.state, m.liveness))
        .collect();
    if !seen.iter().copied().eq(names.iter().map(String::as_str)) {
        Err(format!("knows {seen:?}"))
    } else if !unwell.is_empty() {
        Err(format!("sees {}", unwell.join(", ")))
    } else {
        Ok(())
    }
}

/// A `cluster status` check for [`Processes::poll_every_node`]: the node holds no hint for any
/// member.
pub(crate) fn holds_no_hints(report: &ClusterReport) -> Result<(), String> {
    let queued: Vec<String> = report
        .members
        .iter()
        .filter(|m| m.hints_queued > 0)
        .map(|m| format!("{} for {}", m.hints_queued, m.name))
        .collect();
    if queued.is_empty() {
        Ok(())
    } else {
        Err(format!("holds hints: {}", queued.join(", ")))
    }
}

/// A connected client of one node only (no failover), trusting `ca_cert` and authenticating as the
/// cluster's admin (the client certificate beside it), with `timeout` per attempt and no retries.
pub(crate) async fn connect(name: &str, addr: SocketAddr, ca_cert: &Path, timeout: Duration) -> anyhow::Result<Client> {
    let (cert, key) = meridian_wan::plan::admin_credentials(ca_cert);
    Client::builder()
        .endpoint(addr.to_string())
        .ca_cert_file(ca_cert)
        .client_cert_files(cert, key)
        .max_retries(0)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("connecting to {name} at {addr}"))
}

/// The replicas of each of `keys` as each of `clients` (name, client) places it; fails unless they
/// all agree.
pub(crate) async fn agreed_placements(
    clients: &[(&str, Client)],
    keys: &[String],
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut placements = BTreeMap::new();
    for key in keys {
        let parsed: Key = key.parse().with_context(|| format!("key {key:?}"))?;
        let mut views: BTreeMap<Vec<String>, Vec<&str>> = BTreeMap::new();
        for (name, client) in clients {
            let report = client
                .cluster(ClusterOp::Placement { key: parsed.clone() })
                .await
                .with_context(|| format!("{name} cluster placement {key}"))?;
            let placement = report.placement.with_context(|| format!("{name} placed no {key}"))?;
            let replicas = placement.replicas.into_iter().map(|r| r.name).collect();
            views.entry(replicas).or_default().push(name);
        }
        if views.len() != 1 {
            bail!("the nodes place {key} differently: {views:?}");
        }
        let (replicas, _) = views.into_iter().next().expect("one view");
        placements.insert(key.clone(), replicas);
    }
    Ok(placements)
}

/// `name`'s own state of each of the set `keys` (read at `eventual`, which a replica answers from
/// its own storage; ask only about keys the node is a replica of, since another node forwards).
pub(crate) async fn eventual_sets(
    client: &Client,
    name: &str,
    keys: &[&str],
) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let mut states = BTreeMap::new();
    for &key in keys {
        let members = client
            .set(key)
            .consistency(Consistency::Eventual)
            .members()
            .await
            .with_context(|| format!("{name} eventual read of {key}"))?;
        let members = members.into_iter().map(|m| String::from_utf8_lossy(&m).into_owned()).collect();
        states.insert(key.to_string(), members);
    }
    Ok(states)
}

/// A local region of `meridian` processes. See the [module docs](self).
pub struct Region {
    dir: PathBuf,
    plan: RegionPlan,
    procs: Processes,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let running: Vec<&str> = self.running().map(|i| self.plan.nodes[i - 1].name.as_str()).collect();
        f.debug_struct("Region").field("dir", &self.dir).field("running", &running).finish_non_exhaustive()
    }
}

impl Region {
    /// Writes a region into `dir` with `meridian region init` (on a free base port unless the spec
    /// names one) and loads its plan. Starts nothing.
    pub async fn init(dir: &Path, spec: &RegionSpec) -> anyhow::Result<Region> {
        Region::init_with(dir, spec, meridian_bin()).await
    }

    /// [`Region::init`] with another `meridian` executable — for every node, and for `region init`
    /// itself (a previous release writes configuration it understands; this one reads it too).
    pub async fn init_with(dir: &Path, spec: &RegionSpec, bin: PathBuf) -> anyhow::Result<Region> {
        let base_port = match spec.base_port {
            Some(port) => port,
            None => free_base_port(spec.nodes)?,
        };
        let mut command = Command::new(&bin);
        command
            .args(["region", "init", "--dir"])
            .arg(dir)
            .args(["--nodes", &spec.nodes.to_string(), "--rf", &spec.rf.to_string()])
            .args(["--zones", &spec.zones.to_string(), "--base-port", &base_port.to_string()])
            .args(["--durability", &spec.durability])
            .stdin(Stdio::null());
        scrub_env(&mut command);
        let output = command.output().await.with_context(|| format!("running {} region init", bin.display()))?;
        if !output.status.success() {
            bail!(
                "{} region init --dir {} failed ({}): {}{}",
                bin.display(),
                dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
        let plan_path = dir.join("region.json");
        let text = std::fs::read_to_string(&plan_path).with_context(|| format!("reading {}", plan_path.display()))?;
        let plan: RegionPlan =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", plan_path.display()))?;
        anyhow::ensure!(plan.nodes.len() == spec.nodes, "{} lists {} nodes", plan_path.display(), plan.nodes.len());
        let nodes = plan
            .nodes
            .iter()
            .map(|node| {
                let cwd = node.config.parent().unwrap_or(&dir).to_path_buf();
                NodeRun {
                    name: node.name.clone(),
                    config: node.config.clone(),
                    client_addr: node.client_addr,
                    log: cwd.join("node.log"),
                    cwd,
                }
            })
            .collect();
        let procs = Processes::new(bin, nodes);
        Ok(Region { dir, plan, procs })
    }

    /// The region's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plan from `region.json`.
    pub fn plan(&self) -> &RegionPlan {
        &self.plan
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.plan.nodes.len()
    }

    /// Whether the region has no node (never, for a region `init` wrote).
    pub fn is_empty(&self) -> bool {
        self.plan.nodes.is_empty()
    }

    /// Node `i` (1-based) of the plan.
    ///
    /// # Panics
    ///
    /// If there is no node `i`.
    pub fn node(&self, i: usize) -> &NodePlan {
        assert!(i >= 1 && i <= self.len(), "no node {i} in a region of {}", self.len());
        &self.plan.nodes[i - 1]
    }

    /// Node `i`'s name (`n{i}`).
    pub fn name(&self, i: usize) -> &str {
        &self.node(i).name
    }

    /// The number of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.plan.nodes.iter().position(|n| n.name == name).map(|p| p + 1)
    }

    /// Node `i`'s log file.
    pub fn log_path(&self, i: usize) -> PathBuf {
        let node = self.node(i);
        node.config.parent().unwrap_or(&self.dir).join("node.log")
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.log_path(i), lines)
    }

    /// The numbers of the nodes started and not killed or stopped since.
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        self.procs.running().map(|i| i + 1)
    }

    /// Node `i`'s process id while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs.pid(i - 1)
    }

    /// Starts every node that is not running, in order.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 1..=self.len() {
            if !self.procs.is_running(i - 1) {
                self.start_node(i).await?;
            }
        }
        Ok(())
    }

    /// Starts node `i` (`meridian serve --config …`) on its data directory and waits until it
    /// announces that it serves (at most [`ANNOUNCE_TIMEOUT`]).
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.node(i);
        self.procs.start(i - 1, None, &[]).await
    }

    /// `kill -9` node `i` and reap it; returns its exit status (a SIGKILL, unless it had died
    /// already).
    pub async fn kill9(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        self.node(i);
        self.procs.kill9(i - 1).await
    }

    /// Runs node `i` from `bin` from its next (re)start on: a rolling upgrade, one node at a time.
    pub fn use_binary(&mut self, i: usize, bin: PathBuf) {
        self.node(i);
        self.procs.set_bin(i - 1, bin);
    }

    /// Starts node `i` again on the same data directory, `kill -9`ing it first if it runs.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.procs.is_running(i - 1) {
            self.kill9(i).await?;
        }
        self.start_node(i).await
    }

    /// Stops every running node: SIGTERM to all, then up to [`STOP_GRACE`] for them to exit, then
    /// SIGKILL for the rest.
    pub async fn stop_all(&mut self) -> Vec<Stopped> {
        self.procs.stop_all().await
    }

    /// A connected client of node `i` only (no failover), trusting the region's CA, with
    /// [`CLIENT_TIMEOUT`] and no retries.
    pub async fn client(&self, i: usize) -> anyhow::Result<Client> {
        self.client_with(i, CLIENT_TIMEOUT).await
    }

    /// [`Region::client`] with another per-attempt timeout.
    pub async fn client_with(&self, i: usize, timeout: Duration) -> anyhow::Result<Client> {
        let node = self.node(i);
        connect(&node.name, node.client_addr, &self.plan.ca_cert, timeout).await
    }

    /// Node `i`'s view of the region.
    pub async fn cluster_status(&self, i: usize) -> anyhow::Result<ClusterReport> {
        let client = self.client_with(i, POLL_TIMEOUT).await?;
        let report =
            client.cluster(ClusterOp::Status).await.with_context(|| format!("{} cluster status", self.name(i)));
        client.close().await;
        report
    }

    /// Waits until every node runs and sees every member of the plan active and alive.
    pub async fn wait_all_alive(&self, timeout: Duration) -> anyhow::Result<()> {
        let names: BTreeSet<String> = self.plan.nodes.iter().map(|n| n.name.clone()).collect();
        self.procs
            .poll_every_node(&self.plan.ca_cert, timeout, "every node to see every member active and alive", |report| {
                sees_all_alive(&names, report)
            })
            .await
    }

    /// Waits until no node holds a hint for any other.
    pub async fn wait_no_hints(&self, timeout: Duration) -> anyhow::Result<()> {
        self.procs
            .poll_every_node(&self.plan.ca_cert, timeout, "every node's hints to be replayed", holds_no_hints)
            .await
    }

    /// Every key's replicas, asked of every node; fails unless all nodes place every key alike.
    pub async fn placements(&self, keys: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let mut clients = Vec::new();
        for i in 1..=self.len() {
            clients.push((self.name(i), self.client_with(i, POLL_TIMEOUT).await?));
        }
        let placements = agreed_placements(&clients, keys).await;
        for (_, client) in &clients {
            client.close().await;
        }
        placements
    }

    /// Node `i`'s own state of each of `keys` (read at `eventual`, which a replica answers from its
    /// own storage; ask only about keys node `i` is a replica of, since another node forwards).
    pub async fn replica_state(&self, i: usize, keys: &[&str]) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
        let client = self.client_with(i, POLL_TIMEOUT).await?;
        let states = eventual_sets(&client, self.name(i), keys).await;
        client.close().await;
        states
    }

    /// Every key's replicas ([`Region::placements`]) and each replica's own state of it
    /// ([`Region::replica_state`]).
    pub async fn final_state(&self, keys: &[String]) -> anyhow::Result<RegionState> {
        let replicas = self.placements(keys).await?;
        let mut by_node = NodeStates::new();
        for i in 1..=self.len() {
            let name = self.name(i);
            let mine: Vec<&str> =
                replicas.iter().filter(|(_, nodes)| nodes.iter().any(|n| n == name)).map(|(k, _)| k.as_str()).collect();
            if !mine.is_empty() {
                by_node.insert(name.to_string(), self.replica_state(i, &mine).await?);
            }
        }
        Ok(RegionState { replicas, by_node })
    }

    /// Polls [`Region::final_state`] until the replicas of every key agree, and still agree (on
    /// the same states) a poll later. Returns the last state read and whether it converged within
    /// `timeout`; fails only when no state could be read at all.
    pub async fn wait_converged(&self, keys: &[String], timeout: Duration) -> anyhow::Result<(RegionState, bool)> {
        poll_until_stable(timeout, || self.final_state(keys), |s: &RegionState| s.divergent_keys().is_empty()).await
    }
}

/// Removes the test's `MERIDIAN_*` variables from a node's environment (the node would read them
/// as configuration overrides) except `MERIDIAN_LOG`, which defaults to `warn`.
pub(crate) fn scrub_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("MERIDIAN_") && k != "MERIDIAN_LOG") {
            command.env_remove(key);
        }
    }
    if std::env::var_os("MERIDIAN_LOG").is_none() {
        command.env("MERIDIAN_LOG", "warn");
    }
    command.env("NO_COLOR", "1");
}

/// The last `lines` lines of a file, each indented.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else { return format!("    (cannot read {})", path.display()) };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].iter().map(|line| format!("    {line}\n")).collect()
}

/// Reads a cluster's final state once a second until it `agrees` and two reads in a row are equal
/// (converged), or `timeout` passes (the last state read, not converged). Fails only when no state
/// could be read at all.
pub(crate) async fn poll_until_stable<S, F, Fut>(
    timeout: Duration,
    mut read: F,
    agrees: impl Fn(&S) -> bool,
) -> anyhow::Result<(S, bool)>
where
    S: PartialEq,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<S>>,
{
    let deadline = Instant::now() + timeout;
    let mut last: Option<S> = None;
    let mut last_error = None;
    loop {
        match read().await {
            Ok(state) => {
                if agrees(&state) && last.as_ref() == Some(&state) {
                    return Ok((state, true));
                }
                last = Some(state);
            }
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            return match (last, last_error) {
                (Some(state), _) => Ok((state, false)),
                (None, Some(e)) => Err(e.context("reading the replicas' final state")),
                (None, None) => bail!("no poll of the final state ran"),
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A test's temporary directory (node configs, logs and data), kept and its path printed when the
/// test fails — or always with `MERIDIAN_GEO_KEEP=1` — so a failure can be read after the fact.
pub struct KeepOnFailure(Option<tempfile::TempDir>);

impl KeepOnFailure {
    /// A fresh directory named `<prefix>…` under the system's temporary directory.
    pub fn new(prefix: &str) -> KeepOnFailure {
        KeepOnFailure(Some(tempfile::Builder::new().prefix(prefix).tempdir().expect("a temporary directory")))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("held until dropped").path()
    }
}

impl Drop for KeepOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("MERIDIAN_GEO_KEEP").is_some_and(|v| v == "1") {
            if let Some(dir) = self.0.take() {
                eprintln!("kept the cluster (configs, node logs, data) at {}", dir.keep().display());
            }
        }
    }
}
