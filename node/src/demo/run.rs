//! `meridian demo` (without `init`): start the links and the nodes, exercise them, report, and keep
//! them up until Ctrl-C (or stop at once with `--exit`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use meridian_client::{Client, ClusterOp};
use meridian_wan::plan::{GeoPlan, NodePlan, GEO_PLAN_FILE};
use meridian_wan::relay::{Impairment, Relay};
use tokio::time::Instant;

use super::{describe, init, workload, DemoOptions, DEFAULT_DIR};
use crate::local_region::{self, say, StopSignals, Supervisor};

/// Jitter added to every link's delay, each direction (FIFO is kept).
pub const LINK_JITTER: Duration = Duration::from_millis(1);

/// `meridian demo [--dir DIR] [init options] [--workload-secs N] [--exit]`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The cluster's directory (written by `demo init` first when it holds no cluster.json).
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub options: DemoOptions,
    /// How long the mixed workload runs (0: no workload, no lag probes).
    #[arg(long, default_value_t = 10)]
    pub workload_secs: u64,
    /// Stop the cluster after the report instead of keeping it up until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// How long every node is given to become ready.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout_secs: u64,
    /// How long to wait for every node to see every member of every region before going on
    /// without.
    #[arg(long, default_value_t = 30)]
    pub converge_timeout_secs: u64,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            dir: DEFAULT_DIR.into(),
            options: DemoOptions::default(),
            workload_secs: 10,
            exit: false,
            ready_timeout_secs: 60,
            converge_timeout_secs: 30,
        }
    }
}

/// How a phase ended.
enum Phase<T> {
    Done(T),
    /// A stop signal arrived (its name).
    Stopped(&'static str),
}

/// Runs `fut` unless a stop signal comes first.
async fn unless_stopped<T>(signals: &mut StopSignals, fut: impl std::future::Future<Output = T>) -> Phase<T> {
    tokio::select! {
        value = fut => Phase::Done(value),
        signal = signals.recv() => Phase::Stopped(signal),
    }
}

pub(super) async fn run(args: RunArgs) -> anyhow::Result<()> {
    // First, so that a signal at any point stops the children rather than orphaning them.
    let mut signals = StopSignals::install()?;
    let started = Instant::now();
    let dir = &args.dir;
    let plan = if args.options.force || !dir.join(GEO_PLAN_FILE).exists() {
        let plan = init(dir, &args.options)?;
        say!("wrote {}", plan_dir(&plan, dir).join(GEO_PLAN_FILE).display());
        plan
    } else {
        let plan = GeoPlan::load(dir)?;
        if args.options != DemoOptions::default() {
            say!(
                "note: {} exists, starting the cluster it describes; the init flags given are ignored \
                 (add --force to re-create it with them)",
                dir.join(GEO_PLAN_FILE).display()
            );
        }
        plan
    };
    say!("{}", describe(&plan).trim_end());
    let nodes: Vec<NodePlan> = plan.nodes().map(|(_, n)| n.clone()).collect();
    anyhow::ensure!(!nodes.is_empty(), "{} lists no nodes", dir.join(GEO_PLAN_FILE).display());
    local_region::check_ports_free(
        &nodes,
        "Is the demo already running? (Other ports: `meridian demo --force --base-port P` re-creates the cluster.)",
    )?;

    say!("\n[1/5] starting {} WAN links (in this process)", plan.links.len());
    let links = start_links(&plan)?;

    say!("[2/5] starting {} nodes (output in DIR/<node>/node.log)", nodes.len());
    let mut supervisor = Supervisor::spawn(&nodes).await?;
    let outcome = exercise(&plan, &args, &mut supervisor, &mut signals, started).await;
    let mut failures = supervisor.reap_unexpected();
    let stop_reason = match outcome {
        Err(e) => {
            say!("stopping every node and link");
            supervisor.stop_all().await;
            drop(links);
            return Err(e);
        }
        Ok(Phase::Stopped(signal)) => format!("received {signal}: stopping every node and link"),
        Ok(Phase::Done(())) if args.exit => "--exit: stopping every node and link".to_string(),
        Ok(Phase::Done(())) => {
            say!("\n{}", stays_up(&plan).trim_end());
            failures.extend(supervisor.supervise(&mut signals).await);
            String::new()
        }
    };
    if !stop_reason.is_empty() {
        say!("{stop_reason}");
    }
    failures.extend(supervisor.stop_all().await);
    drop(links);
    if failures.is_empty() {
        say!("demo stopped");
        Ok(())
    } else {
        bail!("demo stopped, but: {}", failures.join("; "))
    }
}

/// Readiness, membership, workload and report. `Ok(Stopped)` when a signal interrupted it.
async fn exercise(
    plan: &GeoPlan,
    args: &RunArgs,
    supervisor: &mut Supervisor,
    signals: &mut StopSignals,
    started: Instant,
) -> anyhow::Result<Phase<()>> {
    let http = meridian_wan::plan::admin_http(&plan.ca_cert)?;
    let ready =
        unless_stopped(signals, supervisor.wait_ready(Duration::from_secs(args.ready_timeout_secs), &http)).await;
    match ready {
        Phase::Done(ready) => ready?,
        Phase::Stopped(signal) => return Ok(Phase::Stopped(signal)),
    }
    say!("      every node is ready ({:.1} s)", started.elapsed().as_secs_f64());

    say!(
        "[3/5] waiting until every node sees all {} members (at most {} s)",
        plan.nodes().count(),
        args.converge_timeout_secs
    );
    let converge = Duration::from_secs(args.converge_timeout_secs);
    match unless_stopped(signals, wait_for_members(plan, converge)).await {
        Phase::Done(Ok(())) => {
            say!("      every node sees every member alive ({:.1} s)", started.elapsed().as_secs_f64())
        }
        Phase::Done(Err(missing)) => {
            say!("      warning: after {} s, not every node sees every member alive; going on:", converge.as_secs());
            for line in missing.lines() {
                say!("        {line}");
            }
        }
        Phase::Stopped(signal) => return Ok(Phase::Stopped(signal)),
    }
    let failures = supervisor.reap_unexpected();
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));

    let clients =
        workload::connect(plan, Duration::from_secs(10)).await.context("connecting the workload's clients")?;
    let duration = Duration::from_secs(args.workload_secs);
    say!(
        "[4/5] running the workload for {} s at eventual, causal, local_quorum and quorum, with cross-region lag probes",
        args.workload_secs
    );
    let until = Instant::now() + duration;
    let measured = unless_stopped(signals, async {
        tokio::join!(workload::run_workload(plan, &clients, duration), workload::probe_lag(plan, &clients, until))
    })
    .await;
    let (report, lag) = match measured {
        Phase::Done(measured) => measured,
        Phase::Stopped(signal) => return Ok(Phase::Stopped(signal)),
    };
    for region in &clients {
        for client in region {
            client.close().await;
        }
    }
    say!("[5/5] report ({:.1} s since start)\n", started.elapsed().as_secs_f64());
    say!("{}", workload::render_workload(&report).trim_end());
    say!();
    say!("{}", workload::render_lag(&lag).trim_end());
    Ok(Phase::Done(()))
}

/// One relay per link, on its planned address, delaying each direction by the link's one-way
/// delay (± [`LINK_JITTER`]).
pub(crate) fn start_links(plan: &GeoPlan) -> anyhow::Result<Vec<Relay>> {
    let mut relays = Vec::with_capacity(plan.links.len());
    for (i, link) in plan.links.iter().enumerate() {
        let relay = Relay::bind(link.listen, link.upstream, 0x6d65_7269_6469_616e ^ i as u64).with_context(|| {
            format!(
                "link {} -> {} on {} is not free (is the demo already running?)",
                link.from_region, link.to_node, link.listen
            )
        })?;
        relay.set(Impairment::delay(Duration::from_millis(link.one_way_ms)).with_jitter(LINK_JITTER));
        relays.push(relay);
    }
    Ok(relays)
}

/// Polls every node's cluster status until each lists every planned node alive (or itself). On
/// timeout, the error says, node by node, whom it does not see alive.
pub(crate) async fn wait_for_members(plan: &GeoPlan, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let everyone: BTreeSet<String> = plan.nodes().map(|(_, n)| n.name.clone()).collect();
    let mut clients: Vec<Option<Client>> = plan.nodes().map(|_| None).collect();
    loop {
        let mut missing = String::new();
        for (i, (_, node)) in plan.nodes().enumerate() {
            if clients[i].is_none() {
                let connecting = crate::demo::admin_client(&plan.ca_cert)
                    .endpoint(node.client_addr.to_string())
                    .timeout(Duration::from_secs(1))
                    .max_retries(0)
                    .connect();
                clients[i] = tokio::time::timeout(Duration::from_secs(2), connecting).await.ok().and_then(Result::ok);
            }
            let Some(client) = &clients[i] else {
                let _ = writeln!(missing, "{}: not reachable at {}", node.name, node.client_addr);
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(2), client.cluster(ClusterOp::Status)).await {
                Ok(Ok(report)) => {
                    let alive: BTreeSet<String> = report
                        .members
                        .iter()
                        .filter(|m| m.state != "removed" && (m.liveness == "alive" || m.liveness == "self"))
                        .map(|m| m.name.clone())
                        .collect();
                    let unseen: Vec<String> = everyone
                        .difference(&alive)
                        .map(|name| {
                            let seen = report.members.iter().find(|m| &m.name == name);
                            seen.map_or_else(|| format!("{name} (unknown)"), |m| format!("{name} ({})", m.liveness))
                        })
                        .collect();
                    if !unseen.is_empty() {
                        let _ = writeln!(missing, "{} does not see alive: {}", node.name, unseen.join(", "));
                    }
                }
                Ok(Err(e)) => {
                    let _ = writeln!(missing, "{}: cluster status failed: {e}", node.name);
                }
                Err(_) => {
                    let _ = writeln!(missing, "{}: cluster status did not answer within 2 s", node.name);
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            close_all(clients).await;
            return Err(missing);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    close_all(clients).await;
    Ok(())
}

async fn close_all(clients: Vec<Option<Client>>) {
    for client in clients.into_iter().flatten() {
        client.close().await;
    }
}

/// The directory a plan lives in (the parent of `certs/`), else `fallback`.
fn plan_dir(plan: &GeoPlan, fallback: &Path) -> PathBuf {
    super::plan_dir(plan, fallback)
}

/// What to tell the user while the cluster stays up: commands to paste.
fn stays_up(plan: &GeoPlan) -> String {
    let program = local_region::program_name();
    let ca = local_region::quote(&plan.ca_cert);
    let first = &plan.regions[0];
    let second = plan.regions.get(1).unwrap_or(first);
    let third = plan.regions.get(2).unwrap_or(second);
    let (a, b, c) = (&first.nodes[0], &second.nodes[0], &third.nodes[0]);
    let (cert, key) = meridian_wan::plan::admin_credentials(&plan.ca_cert);
    let (cert, key) = (local_region::quote(&cert), local_region::quote(&key));
    let mut out = String::from("the cluster stays up. Authentication is on; act as its admin from another terminal:\n");
    let _ = writeln!(out, "  export MERIDIAN_CLIENT_CERT={cert} MERIDIAN_CLIENT_KEY={key}");
    let _ = writeln!(out, "then try:");
    let _ = writeln!(
        out,
        "  {program} --endpoint {} --ca-cert {ca} --consistency causal --show-token put demo/greeting hello\n\
         \x20     # in {}: prints the session's causal token on stderr",
        a.client_addr, first.name
    );
    let _ = writeln!(
        out,
        "  {program} --endpoint {} --ca-cert {ca} --consistency causal --token TOKEN get demo/greeting\n\
         \x20     # in {}, with that token: waits until it has the put",
        b.client_addr, second.name
    );
    let _ =
        writeln!(out, "  {program} --endpoint {} --ca-cert {ca} --consistency quorum get demo/greeting", b.client_addr);
    let _ = writeln!(out, "  {program} --endpoint {} --ca-cert {ca} status", c.client_addr);
    let _ = writeln!(out, "  {program} --endpoint {} --ca-cert {ca} cluster status", c.client_addr);
    let _ = writeln!(out, "  curl --cacert {ca} --cert {cert} --key {key} https://{}/v1/cluster", b.http_addr);
    let _ = writeln!(
        out,
        "  {program} --ca-cert {ca} --endpoint {} auth user add app    # users, roles, tokens: docs/security.md",
        a.client_addr
    );
    let _ = writeln!(out, "  (or export MERIDIAN_CA_CERT={ca} MERIDIAN_ENDPOINT={})", a.client_addr);
    let _ = writeln!(out, "press Ctrl-C (or send SIGTERM to pid {}) to stop every node and link", std::process::id());
    out
}
