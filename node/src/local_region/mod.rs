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
//!     [`Config`](meridian_server::config::Config), so it always matches the schema) with absolute
//!     paths, `data_dir = DIR/n{i}/data`, client port `base + 10 i`, HTTP `base + 10 i + 1`, peer port
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
//!
//! The parts: this module holds the plan, the command line, `init` and the shell helpers;
//! `write.rs` writes the CA, each node's certificate and configuration (also for `meridian demo`);
//! `supervisor.rs` runs the node processes (`Supervisor`, `StopSignals`, also for `meridian demo`
//! and `meridian bench-geo`); `start.rs` is `meridian region start`.

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_server::certs::{self, NodeIdentity};

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

mod start;
mod supervisor;
mod write;

pub use start::start;
pub(crate) use supervisor::{check_ports_free, StopSignals, Supervisor};
pub use write::ConfigSetting;
pub(crate) use write::{apply_settings, create_private_dir, write_atomically, write_ca, write_node, NodeSetup};

/// The plan's file name inside the region directory.
pub const PLAN_FILE: &str = "region.json";
/// Where `meridian region start` keeps the region when given no `--dir`.
pub const DEFAULT_DIR: &str = "./meridian-region";
/// Each node's configuration file, inside `DIR/n{i}/`.
pub const CONFIG_FILE: &str = "meridian.toml";
/// Each node's output, inside `DIR/n{i}/`.
pub const LOG_FILE: &str = "node.log";
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
    create_private_dir(dir)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_server::certs::{CertIdentity, CA_CERT_FILE};
    use meridian_server::config::Config;
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
    fn settings_change_a_written_config_and_refuse_what_it_does_not_have() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = init(tmp.path(), &options(1)).unwrap();
        let path = &plan.nodes[0].config;
        let set = |text: &str| text.parse::<ConfigSetting>().unwrap();
        let written = Config::load(Some(path)).unwrap();
        apply_settings(path, &[set("storage.log_retention_s=5"), set("peer.max_hints_per_node = 0")]).unwrap();
        let config = Config::load(Some(path)).unwrap();
        assert_eq!((config.storage.log_retention_s, config.peer.max_hints_per_node), (5, 0));
        assert!(std::fs::read_to_string(path).unwrap().contains("# Run it alone with"), "the header is kept");
        // Untouched settings keep what init wrote.
        assert_eq!(
            (&config.peer.seeds, config.peer.rf, &config.tls),
            (&written.peer.seeds, written.peer.rf, &written.tls)
        );

        let refused = |setting: &str| apply_settings(path, &[set(setting)]).unwrap_err().to_string();
        assert!(refused("storage.log_retention_days=5").contains("storage.log_retention_days"));
        assert!(refused("storage.log_retention_s=soon").contains("storage.log_retention_s"));
        assert!(refused("node_name.x=1").contains("node_name is not a section"));
        assert!("log_retention_s".parse::<ConfigSetting>().is_err());
        assert!("storage..x=1".parse::<ConfigSetting>().is_err());
        // A refused setting leaves the file as it was.
        assert_eq!(Config::load(Some(path)).unwrap(), config);
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
