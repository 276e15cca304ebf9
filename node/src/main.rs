//! `meridian`: runs a node (`serve`) and talks to one (data commands, `status`, `bench`).

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use meridian_client::proto::{Operation, ReplyBody, RequestV1};
use meridian_client::{Client, Consistency, CrdtType, Mutation, Session, Value};
use meridian_server::api::http::value_json;
use meridian_server::config::Config;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// mimalloc rather than glibc's malloc: measured 10 % more requests per second for 16 % less CPU,
/// at about 125 MiB more resident memory under load (docs/benchmarks.md, "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "meridian", version, about = "Meridian: a geo-replicated CRDT database", propagate_version = true)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Option<Command>,
}

/// How data commands reach a node.
#[derive(Args, Clone)]
struct Connection {
    /// Node address (QUIC client protocol).
    #[arg(long, global = true, env = "MERIDIAN_ENDPOINT", default_value = "127.0.0.1:7400")]
    endpoint: String,
    /// Certificate to trust (a self-signed node writes its own under <data_dir>/tls/node.crt).
    #[arg(long, global = true, env = "MERIDIAN_CA_CERT", default_value = "./meridian-data/tls/node.crt")]
    ca_cert: PathBuf,
    /// Consistency level: eventual, causal, local_quorum or quorum (default: the namespace's).
    #[arg(long, global = true)]
    consistency: Option<Consistency>,
    /// A causal token from an earlier command (`--show-token`), to continue that session.
    #[arg(long, global = true, env = "MERIDIAN_TOKEN")]
    token: Option<String>,
    /// A client certificate from the cluster CA (`meridian certs client`), to authenticate with.
    #[arg(long = "cert", global = true, env = "MERIDIAN_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long = "key", global = true, env = "MERIDIAN_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// A bearer token (`meridian auth token create`), to authenticate with when holding no certificate.
    #[arg(long, global = true, env = "MERIDIAN_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Print the session's causal token after the command (on stderr).
    #[arg(long, global = true)]
    show_token: bool,
    /// Per-attempt timeout.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
    /// A W3C trace context (`00-<trace id>-<span id>-<flags>`): the command's requests join that
    /// trace, so its spans on every node it reaches can be found (docs/monitoring.md, "Traces").
    #[arg(long, global = true, env = "TRACEPARENT")]
    traceparent: Option<meridian_client::proto::TraceContext>,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, zones, liveness, partitions owned, hints queued, anti-entropy freshness; a health
    /// line first.
    Status {
        /// Print one JSON object (`health`, `node`, `cluster`) instead.
        #[arg(long)]
        json: bool,
        /// Exit with status 1 when the health is degraded (for scripts and probes).
        #[arg(long)]
        check: bool,
    },
    /// Which nodes hold a key, and why (rendezvous score, rank, zone rule).
    Placement {
        /// `namespace/key`.
        key: String,
    },
    /// Let a joining node take placements. Refused (retryable) until it has caught up the
    /// partitions it joins; until then quorums count it beside their old replicas.
    Activate {
        /// Node name or id.
        node: String,
        /// Retry until the node has caught up (up to 10 minutes), printing how far it is.
        #[arg(long)]
        wait: bool,
    },
    /// Move a node's partitions to other nodes; it hands off what it holds, then can be removed.
    Drain {
        /// Node name or id.
        node: String,
        /// Wait (with progress) until the handoff is complete; needs the draining node reachable
        /// at its client address with the same --ca-cert.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a node for good (drain it first so nothing it alone held is lost). A draining node
    /// is refused (retryable) until every partition it leaves is held by all its new replicas,
    /// unless it is down.
    Remove {
        /// Node name or id.
        node: String,
        /// Retry until its partitions are held by their new replicas (up to 10 minutes).
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        /// TOML config file (defaults, then this file, then MERIDIAN_* environment).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Node configuration files: `check` validates one the way `serve` would, without starting.
    Config {
        #[command(subcommand)]
        command: meridian_node::config_cli::ConfigCommand,
    },
    /// Show the node's status (and its region's, when it runs in one): a health line first
    /// (`OK: …` or `DEGRADED: …`), then the detail.
    Status {
        /// Print one JSON object (`health`, `node`, `cluster`) instead.
        #[arg(long)]
        json: bool,
        /// Exit with status 1 when the health is degraded (for scripts and probes).
        #[arg(long)]
        check: bool,
    },
    /// Region administration: members, placement of a key, activate, drain, remove.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Data residency: placement rules that keep keys in some regions (list, add, change, remove,
    /// explain a key, audit a node's storage).
    Residency {
        #[command(subcommand)]
        command: meridian_node::residency_cli::ResidencyCommand,
    },
    /// Read a key of any type (prints JSON).
    Get {
        /// `namespace/key`.
        key: String,
        /// Fail unless the key has this type.
        #[arg(long = "type")]
        crdt_type: Option<String>,
    },
    /// Register: set the value.
    Put { key: String, value: String },
    /// Counter: add (default 1).
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// Counter: subtract (default 1).
    Decr {
        key: String,
        #[arg(default_value_t = 1)]
        by: i64,
    },
    /// Multi-value register: write, replacing the siblings named by --context (all, without it).
    Mvput {
        key: String,
        value: String,
        /// The `context` a `get` of the key printed.
        #[arg(long)]
        context: Option<String>,
    },
    /// Set: add members.
    Sadd {
        key: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Set: remove members.
    Srem {
        key: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Set: list members (read a page at a time, so a set of any size can be listed).
    Smembers { key: String },
    /// Set: the number of members.
    Scard { key: String },
    /// Set: test membership (exit status 1 when absent).
    Sismember { key: String, member: String },
    /// Map: set a register field.
    Hset { key: String, field: String, value: String },
    /// Map: add to a counter field.
    Hincr {
        key: String,
        field: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// Map: add members to a set field.
    Hsadd {
        key: String,
        field: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Map: remove a field.
    Hdel { key: String, field: String },
    /// Map: read one field (prints JSON; exit status 1 when the map has no such field).
    Hget { key: String, field: String },
    /// Map: the number of fields.
    Hlen { key: String },
    /// Map: list fields and values, one `field<TAB>JSON value` per line (read a page at a time, so
    /// a map of any size can be listed).
    Hgetall { key: String },
    /// Doc: set root fields from a JSON object.
    DocPut { key: String, json: String },
    /// Doc: apply automerge changes from a file (concatenated change chunks as written by doc-changes).
    DocApply { key: String, file: PathBuf },
    /// Doc: write the automerge changes since --since to a file (all, without it).
    DocChanges {
        key: String,
        /// Comma-separated hex change hashes.
        #[arg(long, default_value = "")]
        since: String,
        /// Where to write the changes (length-prefixed chunks).
        #[arg(long)]
        out: PathBuf,
    },
    /// Delete a key.
    Del { key: String },
    /// List keys of a namespace.
    Keys {
        namespace: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this key (the `next` cursor a previous page printed).
        #[arg(long)]
        after: Option<String>,
    },
    /// Benchmark a node: N clients writing then reading 100-byte registers, against a raw RocksDB loop.
    Bench {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 500)]
        ops: u64,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Drive the node at --endpoint instead of starting one in-process.
        #[arg(long)]
        external: bool,
        /// With --external: several nodes (comma-separated host:port), clients dealt round-robin;
        /// replaces --endpoint. The level of every write and read is --consistency (default eventual).
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Relaxed durability for the in-process node and the baseline.
        #[arg(long)]
        relaxed: bool,
        #[arg(long)]
        skip_baseline: bool,
        /// Run the in-process node with authentication on (clients present a client certificate).
        #[arg(long)]
        auth: bool,
        /// With --external: the nodes' HTTP addresses (comma-separated ip:port); their /metrics
        /// give the per-stage breakdown of the writes (HTTPS trusting --ca-cert, presenting
        /// --cert/--key).
        #[arg(long, value_delimiter = ',')]
        metrics_http: Vec<String>,
        /// Read --metrics-http over plain HTTP (nodes with authentication off serve it so).
        #[arg(long)]
        plain_metrics: bool,
        /// Send each client's operations this many to a request (a pipeline, as
        /// `redis-benchmark -P`); 1 sends each in a request of its own.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
        pipeline: u32,
    },
    /// What one set member change costs as a set grows (one node in-process; docs/benchmarks.md).
    BenchCollections(meridian_node::bench_collections::CollectionBenchArgs),
    /// Whether disk use stops growing under steady overwrites and deletes, disk ÷ live data, and no
    /// acknowledged write lost (one node in-process; docs/benchmarks.md).
    BenchDisk(meridian_node::bench_disk::DiskBenchArgs),
    /// Benchmark an etcd cluster (v3 JSON gateway) at the same shape as `bench`: PUTs, then linearizable GETs.
    BenchEtcd(meridian_node::bench_etcd::EtcdBenchArgs),
    /// Benchmark a local multi-region cluster behind emulated WAN links: convergence lag at a write
    /// rate, latency per consistency level, anti-entropy bytes after a partition (docs/benchmarks.md).
    BenchGeo(Box<meridian_node::bench_geo::GeoBenchArgs>),
    /// Online backup of the node at --endpoint (or, with --cluster, of every member of its region) into DIR:
    /// a consistent checkpoint, copied file by file; files DIR already holds are not copied again.
    /// Needs the admin role on `*`. Restore with `meridian restore` (docs/operations.md).
    Backup {
        /// The backup folder (created if missing; shared by every backup into it).
        dir: PathBuf,
        /// Back up every member of the endpoint's region, one after another.
        #[arg(long)]
        cluster: bool,
    },
    /// Rebuild a data directory from a backup in DIR, for `meridian serve` to open. The restored
    /// node runs under a fresh node id (it never reuses the backed-up node's log positions).
    Restore {
        /// The backup folder.
        dir: PathBuf,
        /// The data directory to write (must not exist or be empty).
        #[arg(long, required_unless_present = "list")]
        data_dir: Option<PathBuf>,
        /// Which backup (an id from `--list`); default: the newest of --node.
        #[arg(long)]
        backup: Option<String>,
        /// The node whose newest backup to restore (needed when DIR holds several nodes').
        #[arg(long)]
        node: Option<String>,
        /// Mark the backed-up node removed in the restored membership, so the restored node may
        /// take its name (replacing a lost node, rebuilding a cluster). Only when that node is gone.
        #[arg(long)]
        replace: bool,
        /// List the backups in DIR and restore nothing.
        #[arg(long, conflicts_with_all = ["backup", "node", "replace"])]
        list: bool,
    },
    /// Users, roles per namespace and bearer tokens (needs the admin role, except `whoami`).
    Auth {
        #[command(subcommand)]
        command: meridian_node::auth_cli::AuthCommand,
    },
    /// Cluster certificates for node-to-node mutual TLS: a CA, node and client certificates.
    Certs {
        #[command(subcommand)]
        command: meridian_node::certs_cli::CertsCommand,
    },
    /// A local multi-node region on this machine: `init` writes it, `start` runs it.
    Region {
        #[command(subcommand)]
        command: meridian_node::local_region::RegionCommand,
    },
    /// A local multi-region cluster with emulated WAN latency: start it, exercise it, report
    /// (`demo init` only writes it). The default when no command is given.
    Demo(Box<meridian_node::demo::DemoArgs>),
}

fn main() {
    if let Err(e) = real_main() {
        // `{:#}` prints the whole context chain on one line; no backtrace for operating errors.
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A command whose output goes to a pipe that closes early (`meridian keys ns | head`) ends
    // quietly, as Unix tools do, instead of panicking on the failed write. Not for the commands that
    // supervise processes (`serve`, `region`, `demo`): those must always stop what they started.
    if !matches!(cli.command, None | Some(Command::Serve { .. } | Command::Region { .. } | Command::Demo(_))) {
        // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // A node's configuration says where its traces go; it is read before the runtime starts (the
    // trace exporter's HTTP client runs outside it).
    let (telemetry, config) = match &cli.command {
        Some(Command::Serve { config }) => {
            let config = Config::load(config.as_deref())?;
            (meridian_node::telemetry::init_node(&config)?, Some(config))
        }
        _ => (meridian_node::telemetry::init_logs(), None),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(cli, config));
    drop(runtime);
    telemetry.shutdown();
    result
}

async fn run(cli: Cli, node_config: Option<Config>) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or_else(|| {
        Command::Demo(Box::new(meridian_node::demo::DemoArgs {
            command: None,
            run: meridian_node::demo::RunArgs::default(),
        }))
    });
    match command {
        Command::Serve { .. } => serve(node_config.expect("loaded before the runtime started")).await,
        Command::Bench {
            clients,
            ops,
            value_bytes,
            external,
            endpoints,
            relaxed,
            skip_baseline,
            auth,
            metrics_http,
            plain_metrics,
            pipeline,
        } => {
            let endpoints = if endpoints.is_empty() { vec![cli.conn.endpoint.clone()] } else { endpoints };
            let options = meridian_node::bench::BenchOptions {
                clients,
                ops_per_client: ops,
                value_bytes,
                endpoints: if external {
                    endpoints.iter().map(|e| e.parse()).collect::<Result<_, _>>().context("--endpoint(s)")?
                } else {
                    Vec::new()
                },
                consistency: cli.conn.consistency.unwrap_or(meridian_client::Consistency::Eventual),
                ca_cert: external.then(|| cli.conn.ca_cert.clone()),
                client_cert: cli.conn.client_cert.clone().zip(cli.conn.client_key.clone()).filter(|_| external),
                durability: if relaxed {
                    meridian_server::storage::Durability::Relaxed
                } else {
                    meridian_server::storage::Durability::Fsync
                },
                skip_baseline,
                auth,
                metrics_http: metrics_http
                    .iter()
                    .map(|a| a.parse())
                    .collect::<Result<_, _>>()
                    .context("--metrics-http")?,
                plain_metrics,
                pipeline: pipeline as usize,
            };
            let report = meridian_node::bench::run(options.clone()).await?;
            print!("{}", meridian_node::bench::render(&report, &options));
            Ok(())
        }
        Command::BenchCollections(args) => meridian_node::bench_collections::run_cli(args).await,
        Command::BenchDisk(args) => meridian_node::bench_disk::run_cli(args).await,
        Command::BenchEtcd(args) => meridian_node::bench_etcd::run_cli(args).await,
        Command::BenchGeo(args) => meridian_node::bench_geo::run_cli(*args).await,
        Command::Certs { command } => meridian_node::certs_cli::run(command),
        Command::Config { command } => exit_with(meridian_node::config_cli::run(command)?),
        Command::Region { command } => meridian_node::local_region::run(command).await,
        Command::Demo(args) => meridian_node::demo::run(*args).await,
        Command::Backup { dir, cluster } => backup(&cli.conn, &dir, cluster).await,
        Command::Restore { dir, data_dir, backup, node, replace, list } => {
            restore(&dir, data_dir.as_deref(), meridian_node::backup_cli::Selector { backup, node }, replace, list)
        }
        command => data_command(&cli.conn, command).await,
    }
}

/// `meridian backup`: one node, or every member with `--cluster` (each into the same folder).
async fn backup(conn: &Connection, dir: &Path, cluster: bool) -> anyhow::Result<()> {
    use meridian_node::backup_cli::{backup_node, bytes, region_members};
    let targets = if cluster {
        let client = client_builder(conn, conn.endpoint.clone()).connect().await?;
        let members = region_members(&client).await?;
        client.close().await;
        members
    } else {
        vec![(String::new(), conn.endpoint.clone())]
    };
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut failed = Vec::new();
    for (name, endpoint) in targets {
        let client = match client_builder(conn, endpoint.clone()).connect().await {
            Ok(client) => client,
            Err(e) => {
                eprintln!("{name} ({endpoint}): cannot connect: {e}");
                failed.push(name);
                continue;
            }
        };
        match backup_node(&client, dir, progress).await {
            Ok(done) => println!(
                "backup {}: node {} ({}), {} in {} files, {} copied ({} files), {:.1} s",
                done.manifest.id,
                done.manifest.node_name,
                done.manifest.region,
                bytes(done.manifest.bytes()),
                done.manifest.files.len(),
                bytes(done.bytes_copied),
                done.files_copied,
                done.elapsed.as_secs_f64()
            ),
            Err(e) => {
                eprintln!("{name} ({endpoint}): {e:#}");
                failed.push(if name.is_empty() { endpoint } else { name });
            }
        }
        client.close().await;
    }
    if !failed.is_empty() {
        anyhow::bail!("backup failed for {}", failed.join(", "));
    }
    Ok(())
}

/// `meridian restore`.
fn restore(
    dir: &Path,
    data_dir: Option<&Path>,
    selector: meridian_node::backup_cli::Selector,
    replace: bool,
    list: bool,
) -> anyhow::Result<()> {
    use meridian_node::backup_cli::{bytes, manifests, restore};
    if list {
        for m in manifests(dir)? {
            println!("{}  node {} ({}), {}, {} files", m.id, m.node_name, m.region, bytes(m.bytes()), m.files.len());
        }
        return Ok(());
    }
    let data_dir = data_dir.context("--data-dir is needed to restore")?;
    let done = restore(dir, &selector, data_dir, replace)?;
    println!(
        "restored backup {} of node {} ({}) into {} in {:.1} s: the node will run as {} (was {}){}",
        done.manifest.id,
        done.manifest.node_name,
        done.manifest.region,
        done.data_dir.display(),
        done.elapsed.as_secs_f64(),
        done.new_id,
        done.manifest.node_id,
        if done.removed_old { "; the backed-up node is marked removed" } else { "" }
    );
    println!(
        "next: point a node of region {} at it (data_dir = {:?}) and run `meridian serve`; anti-entropy brings what was written after the backup",
        done.manifest.region,
        done.data_dir.display().to_string()
    );
    Ok(())
}

/// Ends the process with `code` when it is not 0 (a check that failed, already reported).
fn exit_with(code: i32) -> anyhow::Result<()> {
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let running = meridian_server::serve::start(config).await?;
    println!(
        "meridian node {} serving: client protocol on {} (QUIC), HTTP on {}; trust {}{}",
        running.node.id(),
        running.client_addr,
        running.http_url(),
        running.cert_path.display(),
        if running.node.auth().enabled() { "; authentication on" } else { "" }
    );
    let shutdown = running.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    running.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn data_command(conn: &Connection, command: Command) -> anyhow::Result<()> {
    let (client, session) = connect(conn).await?;
    let exit_code = match command {
        Command::Serve { .. }
        | Command::Bench { .. }
        | Command::BenchEtcd(_)
        | Command::BenchDisk(_)
        | Command::BenchGeo(_)
        | Command::Certs { .. }
        | Command::Config { .. }
        | Command::Region { .. }
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Demo(_) => {
            unreachable!("handled by run")
        }
        Command::Status { json, check } => print_status(&client, json, check).await?,
        Command::Cluster { command: ClusterCommand::Status { json, check } } => {
            print_status(&client, json, check).await?
        }
        Command::Cluster { command } => {
            cluster_command(&client, conn, command).await?;
            0
        }
        Command::Residency { command } => meridian_node::residency_cli::run(&client, command).await?,
        Command::Auth { command } => meridian_node::auth_cli::run(&client, command).await?,
        command @ (Command::Get { .. }
        | Command::Smembers { .. }
        | Command::Scard { .. }
        | Command::Sismember { .. }
        | Command::Hget { .. }
        | Command::Hlen { .. }
        | Command::Hgetall { .. }
        | Command::DocChanges { .. }
        | Command::Keys { .. }) => read_command(&session, conn, command).await?,
        command => {
            write_command(&session, command).await?;
            0
        }
    };
    if conn.show_token {
        eprintln!("token: {}", session.token());
    }
    // Close the QUIC connection now rather than leaving the node to time it out.
    client.close().await;
    if exit_code != 0 {
        std::process::exit(exit_code);
    }
    Ok(())
}

/// A client of `endpoint` with the connection flags: trust, credentials, timeout.
fn client_builder(conn: &Connection, endpoint: String) -> meridian_client::ClientBuilder {
    let mut builder = Client::builder()
        .endpoint(endpoint)
        .ca_cert_file(&conn.ca_cert)
        .timeout(Duration::from_millis(conn.timeout_ms));
    if let (Some(cert), Some(key)) = (&conn.client_cert, &conn.client_key) {
        builder = builder.client_cert_files(cert, key);
    }
    if let Some(token) = &conn.auth_token {
        builder = builder.token(token.clone());
    }
    builder
}

/// Connects to the node and opens the session every CLI command runs in, so `--show-token` /
/// `--token` carry causality between invocations; its level is `--consistency`, else causal.
async fn connect(conn: &Connection) -> anyhow::Result<(Client, Session)> {
    let mut builder = client_builder(conn, conn.endpoint.clone());
    if let Some(level) = conn.consistency {
        builder = builder.default_consistency(level);
    }
    let client = builder.connect().await.with_context(|| {
        format!("connecting to {} (trusting {}); is `meridian serve` running?", conn.endpoint, conn.ca_cert.display())
    })?;
    let client = match conn.traceparent {
        Some(trace) => client.traced(trace),
        None => client,
    };
    let mut session: Session = match &conn.token {
        Some(token) => client.resume_session(token)?,
        None => client.session(),
    };
    if let Some(level) = conn.consistency {
        session = session.with_consistency(level);
    }
    Ok((client, session))
}

/// `meridian status`: the node, then its region when it runs in one.
/// `meridian status` and `meridian cluster status`: the health line, then the node and its region;
/// returns the exit status (1 when degraded and `check` asks for it).
async fn print_status(client: &Client, json: bool, check: bool) -> anyhow::Result<i32> {
    let status = client.status().await?;
    let cluster = match client.cluster(meridian_client::ClusterOp::Status).await {
        Ok(report) => Some(report),
        Err(e) if e.code() == Some(meridian_client::ErrorCode::Unsupported) => None,
        Err(e) => return Err(e.into()),
    };
    // A node of an earlier version cannot say; it is judged by its status alone.
    let unready = match client.readiness().await {
        Ok(reason) => reason,
        Err(e) if e.code() == Some(meridian_client::ErrorCode::Unsupported) => None,
        Err(e) => return Err(e.into()),
    };
    // A node of an earlier version cannot decode these requests: its storage and census are not
    // shown (nor is a census before the node's first pass ended).
    let storage = unless_older_node(client.storage().await)?;
    let census = unless_older_node(client.data_census().await)?.flatten();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let health = meridian_node::health::judge(&status, unready.as_deref(), cluster.as_ref(), now);
    let exit_code = i32::from(check && health.state != "ok");
    if json {
        let out = serde_json::json!({
            "health": health, "node": status, "storage": storage, "census": census, "cluster": cluster
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(exit_code);
    }
    println!("{}", health.line());
    println!();
    println!("node        {} ({})", status.name, status.node_id);
    println!("region/zone {}/{}", status.region, status.zone);
    println!("version     {}", status.version);
    println!("uptime      {} s", status.uptime_s);
    println!("keys        ~{}", status.keys_estimate);
    println!("log         {} writes", status.log_entries);
    println!("durability  {}", status.durability);
    println!("connections {}", status.client_connections);
    let vv: Vec<String> = status.version_vector.iter().map(|(n, s)| format!("{n}:{s}")).collect();
    println!("vector      [{}]", vv.join(", "));
    if let Some(census) = &census {
        print_census(census, now);
    }
    if let Some(storage) = &storage {
        print_storage(storage);
    }
    if let Some(report) = &cluster {
        println!();
        print_cluster(report);
    }
    Ok(exit_code)
}

/// What a node answered, `None` when it is of an earlier version that cannot decode the request.
fn unless_older_node<T>(answer: Result<T, meridian_client::Error>) -> anyhow::Result<Option<T>> {
    use meridian_client::ErrorCode::{BadRequest, Unsupported};
    match answer {
        Ok(answer) => Ok(Some(answer)),
        Err(e) if matches!(e.code(), Some(Unsupported | BadRequest)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The data census line of `meridian status`: live keys, and the tombstones kept.
fn print_census(census: &meridian_client::proto::CensusReport, now_ms: u64) {
    use meridian_node::backup_cli::bytes;
    println!(
        "data        {} live keys ({}); tombstones pending: {} deleted keys ({}), {} removed map fields; counted {} s ago",
        census.live_keys,
        bytes(census.live_bytes),
        census.deleted_keys,
        bytes(census.deleted_bytes),
        census.removed_fields,
        now_ms.saturating_sub(census.taken_ms) / 1000
    );
    if census.unreadable > 0 {
        println!("            {} data records did not decode (see the node's log)", census.unreadable);
    }
}

/// The storage lines of `meridian status`: the data directory's size, then one row per space.
fn print_storage(storage: &meridian_client::proto::StorageReport) {
    use meridian_node::backup_cli::bytes;
    println!(
        "storage     {} on disk (WAL {}), format {}",
        bytes(storage.dir_bytes),
        bytes(storage.wal_bytes),
        storage.format_version
    );
    println!();
    println!("{:<12} {:>12} {:>12} {:>12} {:>12}", "space", "table files", "live (est.)", "memtable", "keys (est.)");
    for space in &storage.spaces {
        println!(
            "{:<12} {:>12} {:>12} {:>12} {:>12}",
            space.name,
            bytes(space.sst_bytes),
            bytes(space.live_bytes_estimate),
            bytes(space.memtable_bytes),
            space.keys_estimate
        );
    }
}

/// The commands that read: their exit code is 1 when there is nothing to show (`get` of a missing
/// key, `sismember` of an absent member).
async fn read_command(session: &Session, conn: &Connection, command: Command) -> anyhow::Result<i32> {
    let mut exit_code = 0;
    match command {
        Command::Get { key, crdt_type } => {
            let value = match crdt_type {
                Some(crdt_type) => typed_get(session, &key, crdt_type.parse()?, conn).await?,
                None => session.get(key.as_str()).await?,
            };
            match value {
                Some(value) => {
                    let json = serde_json::json!({"type": value.crdt_type().name(), "value": value_json(&value)});
                    println!("{}", serde_json::to_string_pretty(&json)?);
                }
                None => {
                    eprintln!("(not found)");
                    exit_code = 1;
                }
            }
        }
        Command::Smembers { key } => {
            let set = session.set(key.as_str());
            let mut after = None;
            loop {
                let (members, next) = set.page(after, 1000).await?;
                for member in &members {
                    println!("{}", text(member));
                }
                match next {
                    Some(cursor) => after = Some(cursor),
                    None => break,
                }
            }
        }
        Command::Scard { key } => println!("{}", session.set(key.as_str()).len().await?),
        Command::Sismember { key, member } => {
            let present = session.set(key.as_str()).contains(member.into_bytes()).await?;
            println!("{present}");
            exit_code = if present { 0 } else { 1 };
        }
        Command::Hget { key, field } => match session.map(key.as_str()).get_field(field).await? {
            Some(value) => {
                let json = serde_json::json!({"type": value.crdt_type().name(), "value": value_json(&value)});
                println!("{}", serde_json::to_string_pretty(&json)?);
            }
            None => {
                eprintln!("(no such field)");
                exit_code = 1;
            }
        },
        Command::Hlen { key } => println!("{}", session.map(key.as_str()).len().await?),
        Command::Hgetall { key } => {
            let map = session.map(key.as_str());
            let mut after = None;
            loop {
                let (fields, next) = map.page(after, 1000).await?;
                for (name, value) in &fields {
                    println!("{name}\t{}", serde_json::to_string(&value_json(value))?);
                }
                match next {
                    Some(cursor) => after = Some(cursor),
                    None => break,
                }
            }
        }
        Command::DocChanges { key, since, out } => {
            let since: Vec<String> = since.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect();
            let (changes, heads) = session.doc(key.as_str()).changes_since(&since).await?;
            let mut bytes = Vec::new();
            for change in &changes {
                bytes.extend_from_slice(&(change.len() as u32).to_be_bytes());
                bytes.extend_from_slice(change);
            }
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} changes to {}; heads {}", changes.len(), out.display(), heads.join(","));
        }
        Command::Keys { namespace, prefix, limit, after } => {
            let mut listing = session.keys(namespace.as_str()).prefix(prefix).limit(limit);
            if let Some(after) = after {
                listing = listing.start_after(after);
            }
            let page = listing.page().await?;
            for key in &page.keys {
                println!("{}\t{}", key.name, key.crdt_type);
            }
            if let Some(next) = page.next {
                eprintln!("(more: --after {next})");
            }
        }
        _ => unreachable!("data_command sends only reads here"),
    }
    Ok(exit_code)
}

/// The commands that write; each prints what it did.
async fn write_command(session: &Session, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Put { key, value } => {
            session.register(key.as_str()).set(value.into_bytes()).await?;
            println!("OK");
        }
        Command::Incr { key, by } => println!("{}", session.counter(key.as_str()).incr(by).await?),
        Command::Decr { key, by } => println!("{}", session.counter(key.as_str()).decr(by).await?),
        Command::Mvput { key, value, context } => {
            let handle = session.mvregister(key.as_str());
            match context {
                Some(context) => {
                    let context = meridian_server::api::http::decode_context(&context).map_err(anyhow::Error::msg)?;
                    handle.set_resolving(value.into_bytes(), &context).await?
                }
                None => handle.set(value.into_bytes()).await?,
            };
            println!("OK");
        }
        Command::Sadd { key, members } => {
            session.set(key.as_str()).add(members.into_iter().map(String::into_bytes)).await?;
            println!("OK");
        }
        Command::Srem { key, members } => {
            session.set(key.as_str()).remove(members.into_iter().map(String::into_bytes)).await?;
            println!("OK");
        }
        Command::Hset { key, field, value } => {
            session.map(key.as_str()).set_field(field, value.into_bytes()).await?;
            println!("OK");
        }
        Command::Hincr { key, field, by } => {
            session.map(key.as_str()).incr_field(field, by).await?;
            println!("OK");
        }
        Command::Hsadd { key, field, members } => {
            let mutation = Mutation::SetAdd { members: members.into_iter().map(String::into_bytes).collect() };
            session.map(key.as_str()).update(field, mutation).await?;
            println!("OK");
        }
        Command::Hdel { key, field } => {
            session.map(key.as_str()).remove(field).await?;
            println!("OK");
        }
        Command::DocPut { key, json } => {
            let json: serde_json::Value = serde_json::from_str(&json).context("the JSON argument does not parse")?;
            session.doc(key.as_str()).put_json(&json).await?;
            println!("OK");
        }
        Command::DocApply { key, file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let changes = split_chunks(&bytes)?;
            let count = changes.len();
            session.doc(key.as_str()).apply_changes(changes).await?;
            println!("applied {count} changes");
        }
        Command::Del { key } => {
            let existed = session.delete(key.as_str()).await?;
            println!("{}", if existed { "deleted" } else { "(did not exist)" });
        }
        _ => unreachable!("data_command sends only writes here"),
    }
    Ok(())
}

/// Splits a file of `[u32 BE length][chunk]` records.
fn split_chunks(mut bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        anyhow::ensure!(bytes.len() >= 4, "truncated change file");
        let len = u32::from_be_bytes(bytes[..4].try_into()?) as usize;
        anyhow::ensure!(bytes.len() >= 4 + len, "truncated change file");
        out.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    Ok(out)
}

/// Reads a key, refusing another type (the node checks, so nothing is decoded client-side).
async fn typed_get(
    session: &Session,
    key: &str,
    crdt_type: CrdtType,
    conn: &Connection,
) -> anyhow::Result<Option<Value>> {
    let request = RequestV1 {
        consistency: conn.consistency.or(Some(Consistency::Causal)),
        causal_token: Some(session.token()),
        timeout_ms: u32::try_from(conn.timeout_ms).unwrap_or(u32::MAX),
        op: Operation::Read { key: key.parse()?, expected: Some(crdt_type) },
    };
    let reply = session.client().raw(request).await?;
    session.merge_token(&reply.causal_token);
    match reply.body {
        ReplyBody::Value(value) => Ok(value),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

async fn cluster_command(client: &Client, conn: &Connection, command: ClusterCommand) -> anyhow::Result<()> {
    use meridian_client::ClusterOp;
    let op = match command {
        ClusterCommand::Status { .. } => ClusterOp::Status,
        ClusterCommand::Placement { key } => {
            ClusterOp::Placement { key: meridian_client::IntoKey::into_key(key.as_str())? }
        }
        ClusterCommand::Activate { node, wait } => {
            let report = end_move(client, ClusterOp::Activate { node }, wait).await?;
            print_cluster(&report);
            return Ok(());
        }
        ClusterCommand::Remove { node, wait } => {
            let report = end_move(client, ClusterOp::Remove { node }, wait).await?;
            print_cluster(&report);
            return Ok(());
        }
        ClusterCommand::Drain { node, wait } => {
            let report = client.cluster(ClusterOp::Drain { node: node.clone() }).await?;
            print_cluster(&report);
            if wait {
                wait_for_handoff(&report, &node, conn).await?;
            }
            return Ok(());
        }
    };
    let report = client.cluster(op).await?;
    if let Some(placement) = &report.placement {
        println!(
            "key {} → partition {} ({} candidate nodes, rf {})",
            placement.key, placement.partition, placement.candidates, report.rf
        );
        for r in &placement.replicas {
            println!("  {:<10} zone {:<10} rank {:>2}  score {:#018x}  {}", r.name, r.zone, r.rank, r.score, r.reason);
        }
    } else {
        print_cluster(&report);
    }
    Ok(())
}

/// Runs `op` (an activation or a removal, which end a move); with `wait`, retries while the node
/// answers that the move is not confirmed yet, printing each new answer.
async fn end_move(
    client: &Client,
    op: meridian_client::ClusterOp,
    wait: bool,
) -> anyhow::Result<meridian_client::ClusterReport> {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let mut last = String::new();
    loop {
        match client.cluster(op.clone()).await {
            Ok(report) => return Ok(report),
            Err(e) if wait && e.code().is_some_and(|c| c.is_retryable()) && std::time::Instant::now() < deadline => {
                let said = e.to_string();
                if said != last {
                    eprintln!("waiting: {said}");
                    last = said;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Polls the draining node itself (only it knows how far its handoff is) until it is complete.
async fn wait_for_handoff(
    report: &meridian_client::ClusterReport,
    node: &str,
    conn: &Connection,
) -> anyhow::Result<()> {
    let member = report
        .members
        .iter()
        .find(|m| m.name == node || m.id.to_string() == node || m.id.0.to_string() == node)
        .ok_or_else(|| anyhow::anyhow!("no member named {node}"))?;
    let drainer = client_builder(conn, member.client_addr.clone())
        .connect()
        .await
        .with_context(|| format!("connecting to the draining node at {}", member.client_addr))?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "handoff {bar:30} {pos}/{len} partitions at their new owners ({elapsed})",
        )
        .expect("valid template"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let report = drainer.cluster(meridian_client::ClusterOp::Status).await?;
        if let Some(handoff) = report.handoff {
            bar.set_length(u64::from(handoff.partitions_total));
            bar.set_position(u64::from(handoff.partitions_synced));
            if handoff.is_complete() {
                bar.finish();
                println!("handoff complete: `meridian cluster remove {node}` is now safe");
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the handoff did not complete within 10 minutes; see `meridian cluster status`");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_cluster(report: &meridian_client::ClusterReport) {
    println!("cluster as seen by {} (rf {} per region)", report.local, report.rf);
    println!(
        "{:<14} {:<10} {:<12} {:<9} {:<8} {:>10} {:>6} {:>10}  PEER",
        "NODE", "REGION", "ZONE", "STATE", "LIVE", "PARTITIONS", "HINTS", "SYNCED"
    );
    for m in &report.members {
        let synced = m.last_sync_ms_ago.map_or_else(|| "-".to_string(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0));
        println!(
            "{:<14} {:<10} {:<12} {:<9} {:<8} {:>10} {:>6} {:>10}  {}",
            m.name, m.region, m.zone, m.state, m.liveness, m.partitions, m.hints_queued, synced, m.peer_addr
        );
    }
    if let Some(handoff) = &report.handoff {
        println!("handoff: {}/{} partitions at their new owners", handoff.partitions_synced, handoff.partitions_total);
    }
    if !report.regions.is_empty() {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let ago = |ms: u64| {
            if ms == 0 {
                "never".to_string()
            } else {
                format!("{:.1}s ago", now.saturating_sub(ms) as f64 / 1000.0)
            }
        };
        println!();
        println!("replication into {} from other regions (lag: write timestamp there to durable here)", report.local);
        println!(
            "{:<12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12}",
            "FROM", "RECORDS", "P50 ms", "P99 ms", "MAX ms", "HINTS TO", "LAST RECORD", "LAST SYNC"
        );
        for r in &report.regions {
            println!(
                "{:<12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12}",
                r.from_region,
                r.records,
                r.lag_p50_ms,
                r.lag_p99_ms,
                r.lag_max_ms,
                r.hints_pending,
                ago(r.last_applied_ms),
                ago(r.last_sync_ms)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_credentials_do_not_clash_with_subcommand_arguments() {
        let cli =
            Cli::try_parse_from(["meridian", "--cert", "a.crt", "--key", "a.key", "residency", "explain", "app/k"])
                .expect("parses");
        assert_eq!(cli.conn.client_cert.as_deref(), Some(std::path::Path::new("a.crt")));
        assert!(Cli::try_parse_from(["meridian", "--cert", "a.crt", "status"]).is_err(), "--cert needs --key");
    }
}
