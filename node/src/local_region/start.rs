//! `meridian region start`: the region written when needed, its nodes started and supervised until
//! a stop signal, the table of nodes and commands to paste printed once they are ready.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::{
    check_ports_free, describe_init, init, program_name, quote, table, RegionOptions, RegionPlan, StopSignals,
    Supervisor, PLAN_FILE,
};

/// `meridian region start`: see the [`local_region`](super) module docs.
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
    // The nodes serve HTTPS unless their configs turned authentication off on loopback (an operator
    // may edit them, as `scripts/bench-region.sh --compare-auth` does): probe the way they serve.
    let config = meridian_server::config::Config::load(Some(&plan.nodes[0].config))?;
    let http = if config.plain_http() {
        meridian_wan::probe::NodeHttp::plain()
    } else {
        meridian_wan::plan::admin_http(&plan.ca_cert)?
    };
    let ready = tokio::select! {
        ready = supervisor.wait_ready(ready_timeout, &http) => ready,
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

/// Commands to paste against a running region.
fn try_commands(plan: &RegionPlan) -> String {
    let program = program_name();
    let ca = quote(&plan.ca_cert);
    let first = &plan.nodes[0];
    let other = plan.nodes.get(1).unwrap_or(first);
    let (cert, key) = meridian_wan::plan::admin_credentials(&plan.ca_cert);
    let (cert, key) = (quote(&cert), quote(&key));
    let mut out = String::from("Authentication is on; act as the region's admin:\n");
    let _ = writeln!(out, "  export MERIDIAN_CLIENT_CERT={cert} MERIDIAN_CLIENT_KEY={key}");
    let _ = writeln!(out, "Try:");
    let _ = writeln!(out, "  {program} --endpoint {} --ca-cert {ca} put demo/greeting hello", first.client_addr);
    let _ = writeln!(
        out,
        "  {program} --endpoint {} --ca-cert {ca} get demo/greeting{}",
        other.client_addr,
        if plan.nodes.len() > 1 { "    # through another node, a moment later" } else { "" }
    );
    let _ = writeln!(out, "  {program} --endpoint {} --ca-cert {ca} status", other.client_addr);
    let _ =
        writeln!(out, "  curl --cacert {ca} --cert {cert} --key {key} https://{}/v1/kv/demo/greeting", first.http_addr);
    let _ = writeln!(out, "  (or export MERIDIAN_CA_CERT={ca} MERIDIAN_ENDPOINT={})", first.client_addr);
    out
}
