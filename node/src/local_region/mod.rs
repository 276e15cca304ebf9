//! `meridian region`: a multi-node region on one machine, with one command.
//!
//! * `meridian region init --dir DIR` writes everything a local region needs and starts nothing:
//!   - `DIR/certs/ca.crt` + `ca.key`: a fresh cluster CA;
//!   - `DIR/certs/n{i}.crt` + `n{i}.key`: node `n{i}`'s certificate, issued for `localhost` and
//!     `127.0.0.1` with the identity cluster/region/zone/name. It carries both `serverAuth` and
//!     `clientAuth`, so the node presents the same certificate on the peer transport (mutual TLS) and
//!     on the client port (`tls.cert`/`tls.key`): `DIR/certs/ca.crt` is then the one trust anchor a
//!     client needs for every node (the SDK's default server name, `localhost`, is in every
//!     certificate);
//!   - `DIR/n{i}/meridian.toml`: a complete node configuration (serialised from
//!     [`Config`], so it always matches the schema) with absolute paths,
//!     `data_dir = DIR/n{i}/data`, client port `base + 10 i`, HTTP `base + 10 i + 1`, peer port
//!     `base + 10 i + 2`, every other node as a seed, and zones `z1 … z{zones}` dealt round-robin;
//!   - `DIR/region.json`: the [`RegionPlan`], a machine-readable description for scripts and test
//!     harnesses (written last: its presence means the region is complete).
//!
//!   An existing `region.json` is never replaced without `--force`. `--force` replaces the
//!   certificates and configurations and keeps the nodes' data directories.
//! * `meridian region start [--dir ./meridian-region]` runs `init` when `DIR/region.json` is missing
//!   (or `--force` is given), checks that no port of the region is taken, starts one
//!   `meridian serve --config DIR/n{i}/meridian.toml` child per node (output appended to
//!   `DIR/n{i}/node.log`, each in its own process group so a terminal's Ctrl-C reaches only the
//!   supervisor), waits for every node's `GET /readyz` (bounded; on failure every child is stopped
//!   and the error names the node and its log), prints a table of the nodes and commands to paste,
//!   and supervises: a node that dies is reported (the others keep running); Ctrl-C, SIGTERM or
//!   SIGHUP stops every node with SIGTERM, then SIGKILL after 10 s, reporting each exit. The exit
//!   status is 0 when every node ran until asked to stop and stopped in time.
//!
//! Children get none of the supervisor's `MERIDIAN_*` environment variables except `MERIDIAN_LOG`:
//! the node configuration reads `MERIDIAN_*` overrides, and one exported `MERIDIAN_LISTEN__CLIENT`
//! would otherwise give every node the same port.

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

use meridian_server::certs::{self, NodeIdentity};
use meridian_server::config::{Config, ListenConfig, PeerConfig, TlsConfig};
use meridian_wan::probe::probe_ready;

/// One node of a [`RegionPlan`] (shared with the multi-region plan of `meridian demo`).
pub use meridian_wan::plan::NodePlan;

/// `println!` that never panics: a supervisor whose stdout was closed (`… | head`, a test harness that
/// stopped reading) must still stop its nodes.
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that never panics (see `say!`).
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
pub(crate) use say;

/// The plan's file name inside the region directory.
pub const PLAN_FILE: &str = "region.json";
/// Where `meridian region start` keeps the region when given no `--dir`.
pub const DEFAULT_DIR: &str = "./meridian-region";
/// Each node's configuration file, inside `DIR/n{i}/`.
pub const CONFIG_FILE: &str = "meridian.toml";
/// Each node's output, inside `DIR/n{i}/`.
pub const LOG_FILE: &str = "node.log";
/// Starts the line `meridian region start` appends to a node's log before each start.
const LOG_SEPARATOR: &str = "--- meridian region start:";
/// How long a node is given to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A local region as `meridian region init` wrote it (`DIR/region.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionPlan {
    /// The nodes' `cluster_id` (also the CA's cluster).
    pub cluster_id: String,
    /// The nodes' `region`.
    pub region: String,
    /// Replication factor written into every node's `peer.rf`.
    pub rf: usize,
    /// The cluster CA certificate (absolute): the one trust anchor for clients and nodes.
    pub ca_cert: PathBuf,
    /// The nodes, `n1` first.
    pub nodes: Vec<NodePlan>,
}

impl RegionPlan {
    /// Reads `dir/region.json`.
    pub fn load(dir: &Path) -> anyhow::Result<RegionPlan> {
        let path = dir.join(PLAN_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (create it with `meridian region init`)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// `meridian region …`.
#[derive(Debug, clap::Subcommand)]
pub enum RegionCommand {
    /// Write a local region (CA, node certificates, one config per node, region.json); start nothing.
    Init {
        /// Directory to write the region to (created if missing).
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        options: RegionOptions,
    },
    /// Start every node of a local region (running `init` first when DIR has no region.json), wait
    /// until all are ready, and stop them all on Ctrl-C / SIGTERM.
    Start {
        /// The region's directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        #[command(flatten)]
        options: RegionOptions,
        /// How long every node is given to become ready.
        #[arg(long, default_value_t = 60)]
        ready_timeout_secs: u64,
    },
}

/// The shape of a region to create (`init`, and `start` when it creates one).
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct RegionOptions {
    /// Number of nodes (n1 … nN).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Replication factor (`peer.rf`; the node caps it at the number of active nodes).
    #[arg(long, default_value_t = 3)]
    pub rf: usize,
    /// Number of zones (z1 … zZ), dealt to the nodes round-robin.
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// Node i listens on base+10i (client, QUIC), base+10i+1 (HTTP), base+10i+2 (peer, QUIC).
    #[arg(long, default_value_t = 7500)]
    pub base_port: u16,
    /// The nodes' cluster_id (1-64 of [A-Za-z0-9-_.]).
    #[arg(long, default_value = "local")]
    pub cluster_id: String,
    /// The nodes' region (1-64 of [A-Za-z0-9-_.]).
    #[arg(long, default_value = "local")]
    pub region: String,
    /// `storage.durability` of every node.
    #[arg(long, default_value = "fsync", value_parser = ["fsync", "relaxed"])]
    pub durability: String,
    /// Replace an existing region's certificates and configs (its nodes' data is kept).
    #[arg(long)]
    pub force: bool,
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            nodes: 3,
            rf: 3,
            zones: 3,
            base_port: 7500,
            cluster_id: "local".into(),
            region: "local".into(),
            durability: "fsync".into(),
            force: false,
        }
    }
}

/// Runs a `meridian region` command.
pub async fn run(command: RegionCommand) -> anyhow::Result<()> {
    match command {
        RegionCommand::Init { dir, options } => {
            let plan = init(&dir, &options)?;
            say!("{}", describe_init(&plan).trim_end());
            say!("start it with: {} region start --dir {}", program_name(), quote(&plan_dir(&plan, &dir)));
            Ok(())
        }
        RegionCommand::Start { dir, options, ready_timeout_secs } => {
            start(&dir, &options, Duration::from_secs(ready_timeout_secs)).await
        }
    }
}

/// Writes the region described by `options` under `dir` (see the module docs) and returns its plan.
pub fn init(dir: &Path, options: &RegionOptions) -> anyhow::Result<RegionPlan> {
    check_options(options)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let plan_path = dir.join(PLAN_FILE);
    if plan_path.exists() && !options.force {
        bail!(
            "{} already exists: {} already holds a region. Start it with `meridian region start --dir {}`, \
             or re-create it with --force (replaces its certificates and configs, keeps the nodes' data)",
            plan_path.display(),
            dir.display(),
            quote(&dir)
        );
    }

    let (ca, ca_cert) = write_ca(&dir, &options.cluster_id, options.force)?;
    let addr = |port: usize| SocketAddr::from((Ipv4Addr::LOCALHOST, u16::try_from(port).expect("checked")));
    let base = usize::from(options.base_port);
    let peers: Vec<SocketAddr> = (1..=options.nodes).map(|i| addr(base + 10 * i + 2)).collect();

    let mut nodes = Vec::with_capacity(options.nodes);
    for i in 1..=options.nodes {
        let name = format!("n{i}");
        let peer_addr = peers[i - 1];
        let header =
            format!("# Node {name} of the local region in {}, written by `meridian region init`.", dir.display());
        nodes.push(write_node(NodeSetup {
            dir: &dir,
            ca: &ca,
            ca_cert: &ca_cert,
            identity: NodeIdentity {
                cluster_id: options.cluster_id.clone(),
                region: options.region.clone(),
                zone: format!("z{}", (i - 1) % options.zones + 1),
                name,
            },
            client_addr: addr(base + 10 * i),
            http_addr: addr(base + 10 * i + 1),
            peer_addr,
            seeds: peers.iter().copied().filter(|p| *p != peer_addr).collect(),
            dial_via: BTreeMap::new(),
            rf: options.rf,
            durability: &options.durability,
            force: options.force,
            header: &header,
        })?);
    }

    let plan = RegionPlan {
        cluster_id: options.cluster_id.clone(),
        region: options.region.clone(),
        rf: options.rf,
        ca_cert,
        nodes,
    };
    let json = serde_json::to_string_pretty(&plan)? + "\n";
    write_atomically(&plan_path, json.as_bytes())?;
    Ok(plan)
}

/// Creates `DIR/certs/` with a fresh CA for `cluster_id` (`ca.crt`, `ca.key`; replaced only with
/// `force`). Returns the CA and its certificate's path.
pub(crate) fn write_ca(dir: &Path, cluster_id: &str, force: bool) -> anyhow::Result<(certs::CaBundle, PathBuf)> {
    let ca = certs::generate_ca(cluster_id)?;
    let (ca_cert, _) = ca.write(&dir.join("certs"), force)?;
    Ok((ca, ca_cert))
}

/// Everything [`write_node`] needs to know about one node of a local cluster.
pub(crate) struct NodeSetup<'a> {
    /// The cluster's directory (absolute): certificates go to `dir/certs/`, the node's files to
    /// `dir/<name>/`.
    pub dir: &'a Path,
    /// The CA that issues the node's certificate, and its certificate's path.
    pub ca: &'a certs::CaBundle,
    pub ca_cert: &'a Path,
    /// cluster / region / zone / name, in the certificate and the configuration.
    pub identity: NodeIdentity,
    pub client_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// `peer.seeds`.
    pub seeds: Vec<SocketAddr>,
    /// `peer.dial_via`.
    pub dial_via: BTreeMap<String, SocketAddr>,
    /// `peer.rf`.
    pub rf: usize,
    /// `storage.durability`.
    pub durability: &'a str,
    /// Replace an existing certificate.
    pub force: bool,
    /// Comment line(s) at the top of the configuration file.
    pub header: &'a str,
}

/// Issues the node's certificate (`dir/certs/<name>.crt` + `.key`: the identity, `localhost` and
/// `127.0.0.1`, serverAuth + clientAuth, used for both the peer transport and the client port) and
/// writes its complete configuration (`dir/<name>/meridian.toml`, serialised from [`Config`] and
/// validated). Returns the node's plan.
pub(crate) fn write_node(setup: NodeSetup<'_>) -> anyhow::Result<NodePlan> {
    let NodeIdentity { cluster_id, region, zone, name } = setup.identity.clone();
    let certs_dir = setup.dir.join("certs");
    let (cert_pem, key_pem) = certs::issue_node_cert(setup.ca, &setup.identity, &certs::DEFAULT_HOSTS)?;
    let (cert, key) = certs::write_pair(
        &certs_dir,
        &format!("{name}.crt"),
        &cert_pem,
        &format!("{name}.key"),
        &key_pem,
        setup.force,
    )?;
    let node_dir = setup.dir.join(&name);
    std::fs::create_dir_all(&node_dir).with_context(|| format!("creating {}", node_dir.display()))?;
    let node = NodePlan {
        name: name.clone(),
        zone: zone.clone(),
        config: node_dir.join(CONFIG_FILE),
        data_dir: node_dir.join("data"),
        log: node_dir.join(LOG_FILE),
        client_addr: setup.client_addr,
        http_addr: setup.http_addr,
        peer_addr: setup.peer_addr,
    };
    let defaults = Config::default();
    let config = Config {
        node_name: name.clone(),
        cluster_id,
        region,
        zone,
        data_dir: node.data_dir.clone(),
        listen: ListenConfig { client: node.client_addr, http: node.http_addr },
        tls: TlsConfig { cert: Some(cert.clone()), key: Some(key.clone()) },
        storage: meridian_server::config::StorageConfig {
            durability: setup.durability.to_string(),
            ..defaults.storage.clone()
        },
        peer: PeerConfig {
            listen: Some(node.peer_addr),
            seeds: setup.seeds,
            ca: Some(setup.ca_cert.to_path_buf()),
            cert: Some(cert),
            key: Some(key),
            rf: setup.rf,
            dial_via: setup.dial_via,
            ..PeerConfig::default()
        },
        ..defaults
    };
    config.validate().with_context(|| format!("the configuration of {name}"))?;
    let toml = toml::to_string_pretty(&config).with_context(|| format!("serialising {name}'s configuration"))?;
    let text = format!(
        "{}\n# Run it alone with: meridian serve --config {}\n\n{toml}",
        setup.header.trim_end(),
        quote(&node.config)
    );
    write_atomically(&node.config, text.as_bytes())?;
    Ok(node)
}

fn check_options(options: &RegionOptions) -> anyhow::Result<()> {
    anyhow::ensure!(options.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(options.zones >= 1, "--zones must be at least 1");
    anyhow::ensure!(options.rf >= 1, "--rf must be at least 1");
    let last = usize::from(options.base_port) + 10 * options.nodes + 2;
    anyhow::ensure!(
        options.base_port >= 1 && last <= usize::from(u16::MAX),
        "--base-port {} with {} nodes needs ports up to {last}, above 65535",
        options.base_port,
        options.nodes
    );
    certs::validate_name("cluster id", &options.cluster_id).context("--cluster-id")?;
    certs::validate_name("region", &options.region).context("--region")?;
    anyhow::ensure!(
        ["fsync", "relaxed"].contains(&options.durability.as_str()),
        "--durability must be fsync or relaxed, not {:?}",
        options.durability
    );
    Ok(())
}

/// Writes `path` through a temporary file and a rename, so a reader never sees half of it.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{:08x}", rand::random::<u32>()));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// The directory a plan lives in (the parent of its nodes' directories), else `fallback`.
fn plan_dir(plan: &RegionPlan, fallback: &Path) -> PathBuf {
    plan.ca_cert.parent().and_then(Path::parent).map_or_else(|| fallback.to_path_buf(), Path::to_path_buf)
}

/// How to invoke this binary again in a pasted command: as typed when it was a path, else `meridian`.
pub(crate) fn program_name() -> String {
    match std::env::args().next() {
        Some(arg0) if arg0.contains('/') => quote(Path::new(&arg0)),
        _ => "meridian".into(),
    }
}

/// `path`, single-quoted for a POSIX shell when it needs to be.
pub(crate) fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c)) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn describe_init(plan: &RegionPlan) -> String {
    let mut out = format!(
        "wrote region {:?} of cluster {:?}: {} nodes, rf {}; trust {}\n",
        plan.region,
        plan.cluster_id,
        plan.nodes.len(),
        plan.rf,
        plan.ca_cert.display()
    );
    out += &table(plan, None);
    out
}

/// The table of nodes; with `pids`, a PID column.
fn table(plan: &RegionPlan, pids: Option<&[Option<u32>]>) -> String {
    let mut out = String::new();
    let pid_header = if pids.is_some() { "PID      " } else { "" };
    let _ = writeln!(out, "{:<6}{:<8}{:<22}{:<22}{:<22}{pid_header}LOG", "NODE", "ZONE", "CLIENT", "HTTP", "PEER");
    for (i, node) in plan.nodes.iter().enumerate() {
        let pid = match pids {
            Some(pids) => format!("{:<9}", pids.get(i).copied().flatten().map_or("-".to_string(), |p| p.to_string())),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<6}{:<8}{:<22}{:<22}{:<22}{pid}{}",
            node.name,
            node.zone,
            node.client_addr.to_string(),
            node.http_addr.to_string(),
            node.peer_addr.to_string(),
            node.log.display()
        );
    }
    out
}

/// Commands to paste against a running region.
fn try_commands(plan: &RegionPlan) -> String {
    let program = program_name();
    let ca = quote(&plan.ca_cert);
    let first = &plan.nodes[0];
    let other = plan.nodes.get(1).unwrap_or(first);
    let mut out = String::from("Try:\n");
    let _ = writeln!(out, "  {program} --endpoint {} --ca-cert {ca} put demo/greeting hello", first.client_addr);
    let _ = writeln!(
        out,
        "  {program} --endpoint {} --ca-cert {ca} get demo/greeting{}",
        other.client_addr,
        if plan.nodes.len() > 1 { "    # through another node, a moment later" } else { "" }
    );
    let _ = writeln!(out, "  {program} --endpoint {} --ca-cert {ca} status", other.client_addr);
    let _ = writeln!(out, "  curl http://{}/v1/kv/demo/greeting", first.http_addr);
    let _ = writeln!(out, "  (or export MERIDIAN_CA_CERT={ca} MERIDIAN_ENDPOINT={})", first.client_addr);
    out
}

/// The signals that stop a running local cluster.
pub(crate) struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    /// Installs the handlers; from now on these signals no longer kill the process.
    pub(crate) fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for the next stop signal and names it.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// A node process started by a [`Supervisor`].
struct Running {
    node: NodePlan,
    child: tokio::process::Child,
    pid: Option<u32>,
    /// Set once the process has been reaped.
    exited: Option<ExitStatus>,
    /// Set once its unexpected exit has been reported.
    reported: bool,
}

impl Running {
    /// Reaps the process if it has exited.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }
}

/// The `meridian serve` child processes of a local cluster (`meridian region start`, `meridian
/// demo`): each in its own process group (a terminal's Ctrl-C reaches only the supervisor), output
/// appended to the node's log, no `MERIDIAN_*` environment but `MERIDIAN_LOG`, killed if the
/// supervisor is dropped without stopping them.
pub(crate) struct Supervisor {
    running: Vec<Running>,
}

impl Supervisor {
    /// Starts `meridian serve --config …` for every node (this executable); if one cannot be
    /// started, stops those that were.
    pub(crate) async fn spawn(nodes: &[NodePlan]) -> anyhow::Result<Supervisor> {
        let exe = std::env::current_exe().context("locating the meridian executable")?;
        let mut supervisor = Supervisor { running: Vec::with_capacity(nodes.len()) };
        for node in nodes {
            match spawn_node(&exe, node).await {
                Ok(child) => {
                    let pid = child.id();
                    supervisor.running.push(Running { node: node.clone(), child, pid, exited: None, reported: false });
                }
                Err(e) => {
                    supervisor.stop_all().await;
                    return Err(e);
                }
            }
        }
        Ok(supervisor)
    }

    /// Each node's pid, in the order they were given.
    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        self.running.iter().map(|r| r.pid).collect()
    }

    /// Waits until every node answers `GET /readyz` with 200, failing if one exits first or
    /// `timeout` passes (the error names the node and quotes its log).
    pub(crate) async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ready = vec![false; self.running.len()];
        loop {
            for (i, r) in self.running.iter_mut().enumerate() {
                if ready[i] {
                    continue;
                }
                if let Some(status) = r.poll_exit() {
                    r.reported = true;
                    bail!(
                        "{} exited ({status}) before it was ready; see {}{}",
                        r.node.name,
                        r.node.log.display(),
                        log_tail(&r.node.log)
                    );
                }
                ready[i] = probe_ready(r.node.http_addr).await;
            }
            if ready.iter().all(|&r| r) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let r = &self.running[ready.iter().position(|&r| !r).expect("one is not ready")];
                bail!(
                    "{} was not ready within {} s (GET http://{}/readyz); see {}{}",
                    r.node.name,
                    timeout.as_secs(),
                    r.node.http_addr,
                    r.node.log.display(),
                    log_tail(&r.node.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reaps the nodes that exited since the last call, reports each on stderr (the others keep
    /// running), and returns one failure line per node.
    pub(crate) fn reap_unexpected(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        for r in &mut self.running {
            if r.reported {
                continue;
            }
            if let Some(status) = r.poll_exit() {
                r.reported = true;
                say_err!(
                    "{} (pid {}) exited unexpectedly: {status}; the other nodes keep running. See {}",
                    r.node.name,
                    r.pid.map_or("?".into(), |p| p.to_string()),
                    r.node.log.display()
                );
                failures.push(format!("{} exited unexpectedly ({status})", r.node.name));
            }
        }
        failures
    }

    /// Whether every node has exited.
    pub(crate) fn all_exited(&mut self) -> bool {
        self.running.iter_mut().all(|r| r.poll_exit().is_some())
    }

    /// Watches the nodes until a stop signal arrives (or every node has exited), reporting the
    /// ones that die. Returns their failure lines. Does not stop the nodes: see [`Self::stop_all`].
    pub(crate) async fn supervise(&mut self, signals: &mut StopSignals) -> Vec<String> {
        let mut failures = Vec::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                signal = signals.recv() => {
                    say!("received {signal}: stopping every node");
                    break;
                }
                _ = ticker.tick() => {}
            }
            failures.extend(self.reap_unexpected());
            if self.all_exited() {
                say_err!("every node has exited");
                break;
            }
        }
        failures
    }

    /// Sends SIGTERM to every node still running, waits up to [`STOP_GRACE`], kills the rest, and
    /// reports each exit. Returns what went wrong (nodes that had to be killed).
    pub(crate) async fn stop_all(&mut self) -> Vec<String> {
        for r in self.running.iter_mut() {
            if r.poll_exit().is_some() {
                continue;
            }
            // Not yet reaped, so the pid is still this child's: no risk of signalling a stranger.
            if let Some(pid) = r.pid {
                if !send_sigterm(pid).await {
                    say_err!("could not send SIGTERM to {} (pid {pid}); killing it", r.node.name);
                    let _ = r.child.start_kill();
                }
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        let mut failures = Vec::new();
        for r in self.running.iter_mut() {
            if r.exited.is_some() {
                continue;
            }
            match tokio::time::timeout_at(deadline, r.child.wait()).await {
                Ok(Ok(status)) => {
                    r.exited = Some(status);
                    say!("{} stopped ({status})", r.node.name);
                }
                Ok(Err(e)) => {
                    say_err!("{}: waiting for it failed: {e}", r.node.name);
                    failures.push(format!("{}: {e}", r.node.name));
                }
                Err(_) => {
                    let _ = r.child.start_kill();
                    let status = r.child.wait().await;
                    say_err!(
                        "{} did not stop within {} s of SIGTERM: killed ({})",
                        r.node.name,
                        STOP_GRACE.as_secs(),
                        status.map_or_else(|e| e.to_string(), |s| s.to_string())
                    );
                    failures.push(format!("{} had to be killed", r.node.name));
                }
            }
        }
        failures
    }
}

/// `meridian region start`: see the module docs.
pub async fn start(dir: &Path, options: &RegionOptions, ready_timeout: Duration) -> anyhow::Result<()> {
    // First, so that a SIGTERM at any point stops the children rather than orphaning them.
    let mut signals = StopSignals::install()?;
    let plan = if options.force || !dir.join(PLAN_FILE).exists() {
        let plan = init(dir, options)?;
        say!("{}", describe_init(&plan).trim_end());
        plan
    } else {
        let plan = RegionPlan::load(dir)?;
        if *options != RegionOptions::default() {
            say!(
                "note: {} exists, starting the region it describes ({} nodes, base port {}); the init flags \
                 given are ignored (add --force to re-create the region with them)",
                dir.join(PLAN_FILE).display(),
                plan.nodes.len(),
                plan.nodes[0].client_addr.port().saturating_sub(10)
            );
        }
        plan
    };
    anyhow::ensure!(!plan.nodes.is_empty(), "{} lists no nodes", dir.join(PLAN_FILE).display());
    check_ports_free(
        &plan.nodes,
        "Is this region already running? (Another base port: `meridian region start --force --base-port P` \
         re-creates the region.)",
    )?;

    let mut supervisor = Supervisor::spawn(&plan.nodes).await?;
    let ready = tokio::select! {
        ready = supervisor.wait_ready(ready_timeout) => ready,
        signal = signals.recv() => Err(anyhow::anyhow!("received {signal} while the nodes were starting")),
    };
    if let Err(e) = ready {
        say!("stopping the region");
        supervisor.stop_all().await;
        return Err(e);
    }

    say!(
        "\nregion {:?} of cluster {:?}: {} nodes ready; trust {}",
        plan.region,
        plan.cluster_id,
        plan.nodes.len(),
        plan.ca_cert.display()
    );
    say!("{}", table(&plan, Some(&supervisor.pids())).trim_end());
    say!();
    say!("{}", try_commands(&plan).trim_end());
    say!("\nregion ready; press Ctrl-C (or send SIGTERM to pid {}) to stop every node", std::process::id());

    let mut failures = supervisor.supervise(&mut signals).await;
    failures.extend(supervisor.stop_all().await);
    if failures.is_empty() {
        say!("region stopped");
        Ok(())
    } else {
        bail!("region stopped, but: {}", failures.join("; "))
    }
}

/// Refuses to start when any port of the nodes is taken (a cluster already running, say): the
/// readiness probe must not mistake another process for one of ours. `hint` ends the error.
pub(crate) fn check_ports_free(nodes: &[NodePlan], hint: &str) -> anyhow::Result<()> {
    for node in nodes {
        for (what, addr, tcp) in
            [("client", node.client_addr, false), ("HTTP", node.http_addr, true), ("peer", node.peer_addr, false)]
        {
            let bound = if tcp {
                std::net::TcpListener::bind(addr).map(drop)
            } else {
                std::net::UdpSocket::bind(addr).map(drop)
            };
            if let Err(e) = bound {
                bail!("{addr} ({} {what} port) is not free: {e}. {hint}", node.name);
            }
        }
    }
    Ok(())
}

/// `meridian serve --config …` for `node`, output appended to its log.
async fn spawn_node(exe: &Path, node: &NodePlan) -> anyhow::Result<tokio::process::Child> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .with_context(|| format!("opening {}", node.log.display()))?;
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    {
        use std::io::Write as _;
        let _ = writeln!(log, "{LOG_SEPARATOR} {} (unix time {}) ---", node.name, since_epoch.as_secs());
    }
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("serve")
        .arg("--config")
        .arg(&node.config)
        .current_dir(node.config.parent().unwrap_or(Path::new("/")))
        // The output goes to a file: no terminal colour codes in it.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().with_context(|| format!("opening {}", node.log.display()))?)
        .stderr(log)
        // Ctrl-C in a terminal signals the whole foreground process group: keep the nodes out of it,
        // so that they are stopped by the supervisor, in order, and reported.
        .process_group(0)
        // If the supervisor fails before it can stop them, do not leave nodes behind.
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("MERIDIAN_") && k != "MERIDIAN_LOG") {
            command.env_remove(key);
        }
    }
    command.spawn().with_context(|| format!("starting {} ({} serve --config …)", node.name, exe.display()))
}

/// The last lines of a log, indented, for an error message.
fn log_tail(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else { return String::new() };
    // Only this run's output: what follows the last separator `spawn_node` wrote.
    let this_run = text.rfind(LOG_SEPARATOR).map_or(text.as_str(), |at| &text[at..]);
    let lines: Vec<&str> = this_run.lines().skip(1).collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    if tail.is_empty() {
        return String::new();
    }
    let mut out = String::from("; its last lines:");
    for line in tail {
        out += "\n    ";
        out += line;
    }
    out
}

/// `kill -TERM pid` (no libc binding in this crate).
async fn send_sigterm(pid: u32) -> bool {
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    matches!(status, Ok(s) if s.success())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_server::certs::{CertIdentity, CA_CERT_FILE};
    use rustls::client::danger::ServerCertVerifier as _;
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    fn options(nodes: usize) -> RegionOptions {
        RegionOptions { nodes, ..RegionOptions::default() }
    }

    fn der(path: &Path) -> rustls::pki_types::CertificateDer<'static> {
        certs::certs_from_pem(&std::fs::read(path).unwrap(), "test").unwrap().remove(0)
    }

    #[test]
    fn init_writes_certs_configs_and_a_plan_that_all_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("region");
        let plan = init(&dir, &options(3)).unwrap();
        let dir = dir.canonicalize().unwrap();
        assert_eq!(RegionPlan::load(&dir).unwrap(), plan);
        assert_eq!((plan.cluster_id.as_str(), plan.region.as_str(), plan.rf), ("local", "local", 3));
        assert_eq!(plan.ca_cert, dir.join("certs").join(CA_CERT_FILE));
        assert!(dir.join("certs/ca.key").exists());
        assert_eq!(plan.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1", "n2", "n3"]);
        assert_eq!(plan.nodes.iter().map(|n| n.zone.as_str()).collect::<Vec<_>>(), ["z1", "z2", "z3"]);
        assert_eq!(plan.node("n2").unwrap().client_addr, "127.0.0.1:7520".parse().unwrap());

        let mut ports = BTreeSet::new();
        for node in &plan.nodes {
            assert!(node.config.is_absolute() && node.data_dir.is_absolute() && node.log.is_absolute());
            assert_eq!(node.config, dir.join(&node.name).join(CONFIG_FILE));
            assert_eq!(node.data_dir, dir.join(&node.name).join("data"));
            for addr in [node.client_addr, node.http_addr, node.peer_addr] {
                assert_eq!(addr.ip(), IpAddr::from(Ipv4Addr::LOCALHOST));
                assert!(ports.insert(addr.port()), "port {} used twice", addr.port());
            }

            let config = Config::load(Some(&node.config)).unwrap();
            assert_eq!(config.node_name, node.name);
            assert_eq!((config.cluster_id.as_str(), config.region.as_str()), ("local", "local"));
            assert_eq!(config.zone, node.zone);
            assert_eq!(config.data_dir, node.data_dir);
            assert_eq!(config.listen.client, node.client_addr);
            assert_eq!(config.listen.http, node.http_addr);
            assert_eq!(config.peer.listen, Some(node.peer_addr));
            assert_eq!(config.peer.rf, 3);
            assert_eq!(config.storage.durability, "fsync");
            let others: BTreeSet<SocketAddr> =
                plan.nodes.iter().filter(|n| n.name != node.name).map(|n| n.peer_addr).collect();
            assert_eq!(config.peer.seeds.iter().copied().collect::<BTreeSet<_>>(), others);
            assert_eq!(config.peer.seeds.len(), 2);
            assert_eq!(config.peer.ca.as_deref(), Some(plan.ca_cert.as_path()));
            let cert = dir.join("certs").join(format!("{}.crt", node.name));
            assert_eq!(config.peer.cert.as_deref(), Some(cert.as_path()));
            assert_eq!(config.tls.cert, config.peer.cert, "one certificate for peers and clients");
            assert_eq!(config.tls.key, config.peer.key);

            let summary = certs::summarize(&der(&cert)).unwrap();
            assert_eq!(
                summary.identity.unwrap(),
                CertIdentity::Node(NodeIdentity {
                    cluster_id: "local".into(),
                    region: "local".into(),
                    zone: node.zone.clone(),
                    name: node.name.clone(),
                })
            );
            assert!(summary.dns_names.contains(&"localhost".to_string()), "the SDK's default server name");
            assert!(summary.ips.contains(&IpAddr::from(Ipv4Addr::LOCALHOST)));
        }
        assert_eq!(ports.len(), 9);
        assert_eq!(
            certs::parse_cert_identity(&der(&plan.ca_cert)).unwrap(),
            CertIdentity::Ca { cluster_id: "local".into() }
        );
    }

    /// What a client does with `--ca-cert DIR/certs/ca.crt`: every node's certificate verifies
    /// against the CA alone, for the SDK's default server name and for the IP.
    #[test]
    fn the_ca_alone_verifies_every_node_as_a_server() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = init(tmp.path(), &options(2)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&plan.ca_cert)).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
        for node in &plan.nodes {
            let config = Config::load(Some(&node.config)).unwrap();
            let cert = der(config.tls.cert.as_ref().unwrap());
            for name in ["localhost", "127.0.0.1"] {
                let name = rustls::pki_types::ServerName::try_from(name).unwrap();
                verifier
                    .verify_server_cert(&cert, &[], &name, &[], rustls::pki_types::UnixTime::now())
                    .unwrap_or_else(|e| panic!("{} as {name:?}: {e}", node.name));
            }
        }
    }

    #[test]
    fn an_existing_region_is_kept_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let first = init(tmp.path(), &options(2)).unwrap();
        let ca_pem = std::fs::read_to_string(&first.ca_cert).unwrap();
        let err = format!("{:#}", init(tmp.path(), &options(3)).unwrap_err());
        assert!(err.contains("region.json already exists") && err.contains("--force"), "{err}");
        assert_eq!(RegionPlan::load(tmp.path()).unwrap(), first, "nothing was replaced");
        assert_eq!(std::fs::read_to_string(&first.ca_cert).unwrap(), ca_pem);

        std::fs::create_dir_all(&first.nodes[0].data_dir).unwrap();
        std::fs::write(first.nodes[0].data_dir.join("marker"), "kept").unwrap();
        let second = init(tmp.path(), &RegionOptions { force: true, ..options(3) }).unwrap();
        assert_eq!(second.nodes.len(), 3);
        assert_eq!(RegionPlan::load(tmp.path()).unwrap(), second);
        assert_ne!(std::fs::read_to_string(&second.ca_cert).unwrap(), ca_pem, "a new CA");
        assert!(first.nodes[0].data_dir.join("marker").exists(), "--force keeps the nodes' data");
        Config::load(Some(&second.nodes[2].config)).unwrap();
    }

    #[test]
    fn flags_shape_the_region() {
        let tmp = tempfile::tempdir().unwrap();
        let options = RegionOptions {
            nodes: 5,
            rf: 2,
            zones: 2,
            base_port: 30000,
            cluster_id: "dev".into(),
            region: "eu-west".into(),
            durability: "relaxed".into(),
            force: false,
        };
        let plan = init(tmp.path(), &options).unwrap();
        assert_eq!(plan.nodes.iter().map(|n| n.zone.as_str()).collect::<Vec<_>>(), ["z1", "z2", "z1", "z2", "z1"]);
        let n5 = plan.node("n5").unwrap();
        assert_eq!((n5.client_addr.port(), n5.http_addr.port(), n5.peer_addr.port()), (30050, 30051, 30052));
        let config = Config::load(Some(&n5.config)).unwrap();
        assert_eq!(
            (config.cluster_id.as_str(), config.region.as_str(), config.zone.as_str()),
            ("dev", "eu-west", "z1")
        );
        assert_eq!((config.peer.rf, config.storage.durability.as_str()), (2, "relaxed"));
        assert_eq!(config.peer.seeds.len(), 4);
        let cert = der(config.peer.cert.as_ref().unwrap());
        assert_eq!(
            certs::parse_identity(&cert).unwrap(),
            NodeIdentity { cluster_id: "dev".into(), region: "eu-west".into(), zone: "z1".into(), name: "n5".into() }
        );
    }

    #[test]
    fn a_single_node_region_has_no_seeds() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = init(tmp.path(), &options(1)).unwrap();
        let config = Config::load(Some(&plan.nodes[0].config)).unwrap();
        assert!(config.peer.seeds.is_empty());
        assert!(config.peer.enabled());
    }

    #[test]
    fn bad_options_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        for (bad, expected) in [
            (RegionOptions { nodes: 0, ..options(3) }, "--nodes"),
            (RegionOptions { zones: 0, ..options(3) }, "--zones"),
            (RegionOptions { rf: 0, ..options(3) }, "--rf"),
            (RegionOptions { base_port: 65510, ..options(3) }, "--base-port"),
            (RegionOptions { cluster_id: "a:b".into(), ..options(3) }, "--cluster-id"),
            (RegionOptions { region: "".into(), ..options(3) }, "--region"),
            (RegionOptions { durability: "sometimes".into(), ..options(3) }, "--durability"),
        ] {
            let err = format!("{:#}", init(&tmp.path().join("r"), &bad).unwrap_err());
            assert!(err.contains(expected), "{expected}: {err}");
        }
        assert!(!tmp.path().join("r").exists());
    }

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(quote(Path::new("/tmp/region/certs/ca.crt")), "/tmp/region/certs/ca.crt");
        assert_eq!(quote(Path::new("/tmp/my region/ca.crt")), "'/tmp/my region/ca.crt'");
        assert_eq!(quote(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }
}
