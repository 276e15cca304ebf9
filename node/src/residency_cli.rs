//! `meridian residency …`: the operator's commands, printed for people or as JSON.

use clap::{Args, Subcommand};
use meridian_client::proto::{ResidencyOp, ResidencyReport, RuleSpec};
use meridian_client::Client;

/// `meridian residency` subcommands.
#[derive(Subcommand, Debug)]
pub enum ResidencyCommand {
    /// The rules (first match wins), their version, and this node's purges, backfills and counters.
    List(Output),
    /// Add a rule: keys of NAMESPACE whose names start with PREFIX live only in REGIONS.
    Add {
        #[command(flatten)]
        rule: RuleArgs,
        /// Where in the list (0 = first; default: last). The first matching rule decides.
        #[arg(long)]
        position: Option<u32>,
        #[command(flatten)]
        output: Output,
    },
    /// Replace rule ID (narrowing purges the regions it leaves; widening backfills the new ones).
    Change {
        /// The rule's id (`list` shows it).
        id: u32,
        #[command(flatten)]
        rule: RuleArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Remove rule ID (its keys then match a later rule, or may live everywhere).
    Remove {
        /// The rule's id.
        id: u32,
        #[command(flatten)]
        output: Output,
    },
    /// Which rule a key matches, which regions and nodes may hold it, and why.
    Explain {
        /// `namespace/key`.
        key: String,
        #[command(flatten)]
        output: Output,
    },
    /// Make the cluster's rules exactly those of FILE, a JSON rules document (as Terraform's
    /// modules/cluster renders it): prints what it adds, changes and removes, then applies that;
    /// does nothing when they already match.
    Apply {
        /// The rules document (`-`: standard input).
        file: std::path::PathBuf,
        /// Print the plan, apply nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Scan this node's storage for keys its region may not hold (exit status 1 if any).
    Audit {
        /// First flush memtables and compact every file (so a raw scan of the data directory
        /// afterwards finds only what the node still holds).
        #[arg(long)]
        compact: bool,
        #[command(flatten)]
        output: Output,
    },
}

/// Output format.
#[derive(Args, Debug, Clone, Copy)]
pub struct Output {
    /// Print the node's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A rule as given on the command line.
#[derive(Args, Debug)]
pub struct RuleArgs {
    /// The namespace the rule applies to.
    #[arg(long)]
    pub namespace: String,
    /// Key-name prefix (default: the whole namespace).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Allowed regions, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Replicas per allowed region (default: the region's replication factor).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// The region requests from elsewhere are proxied to first.
    #[arg(long)]
    pub home: Option<String>,
    /// Refuse requests arriving in a disallowed region instead of proxying them.
    #[arg(long)]
    pub strict: bool,
}

impl From<RuleArgs> for RuleSpec {
    fn from(a: RuleArgs) -> RuleSpec {
        RuleSpec {
            namespace: a.namespace,
            prefix: a.prefix,
            regions: a.regions,
            replicas_per_region: a.replicas,
            home: a.home,
            strict: a.strict,
        }
    }
}

/// Runs a residency command; returns the process exit status (1: the audit found violations).
pub async fn run(client: &Client, command: ResidencyCommand) -> anyhow::Result<i32> {
    let (op, output) = match command {
        ResidencyCommand::Apply { file, dry_run } => return crate::residency_apply::run(client, &file, dry_run).await,
        ResidencyCommand::List(output) => (ResidencyOp::List, output),
        ResidencyCommand::Add { rule, position, output } => (ResidencyOp::Add { rule: rule.into(), position }, output),
        ResidencyCommand::Change { id, rule, output } => (ResidencyOp::Change { id, rule: rule.into() }, output),
        ResidencyCommand::Remove { id, output } => (ResidencyOp::Remove { id }, output),
        ResidencyCommand::Explain { key, output } => {
            (ResidencyOp::Explain { key: meridian_client::IntoKey::into_key(key.as_str())? }, output)
        }
        ResidencyCommand::Audit { compact, output } => (ResidencyOp::Audit { compact }, output),
    };
    let edit = match &op {
        ResidencyOp::Add { .. } => Some("added"),
        ResidencyOp::Change { .. } => Some("changed"),
        ResidencyOp::Remove { .. } => Some("removed"),
        _ => None,
    };
    let removed = match &op {
        ResidencyOp::Remove { id } => Some(*id),
        _ => None,
    };
    let report = client.residency(op).await?;
    let violations = report.audit.as_ref().map_or(0, |a| a.violations_total);
    if output.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if let Some(verb) = edit {
            let id = report.rule_id.or(removed).map_or_else(String::new, |id| format!(" {id}"));
            println!("rule{id} {verb} (rules version {})", report.version);
        }
        print(&report);
    }
    Ok(if violations > 0 { 1 } else { 0 })
}

fn print(report: &ResidencyReport) {
    if let Some(explain) = &report.explain {
        println!("key {} → partition {}", explain.key, explain.partition);
        println!("  {}", explain.reason);
        println!("  allowed regions: {}", explain.allowed_regions.join(", "));
        println!("  held by: {}", if explain.nodes.is_empty() { "-".into() } else { explain.nodes.join(", ") });
        return;
    }
    if let Some(audit) = &report.audit {
        println!(
            "node {} ({}), rules version {}: scanned {} keys, {} log records ({} redacted), {} hints, {} idempotency records{}",
            report.node,
            report.region,
            report.version,
            audit.data_keys,
            audit.log_records,
            audit.redacted_records,
            audit.hints,
            audit.idempotency_records,
            if audit.compacted { " after flushing and compacting" } else { "" }
        );
        if audit.violations.is_empty() {
            println!("clean: nothing held that region {} may not hold", report.region);
        }
        for v in &audit.violations {
            println!("VIOLATION  {:<12} rule {:<4} {}", v.space, v.rule, v.key);
        }
        if audit.violations_total > audit.violations.len() as u64 {
            println!("… {} violations in all", audit.violations_total);
        }
        return;
    }
    println!(
        "rules version {} on {} ({}); first match wins, no match = every region",
        report.version, report.node, report.region
    );
    println!("{:<4} {:<12} {:<16} {:<28} {:<10} {:<7}", "ID", "NAMESPACE", "PREFIX", "REGIONS", "HOME", "MODE");
    for rule in &report.rules {
        println!(
            "{:<4} {:<12} {:<16} {:<28} {:<10} {:<7}",
            rule.id,
            rule.spec.namespace,
            if rule.spec.prefix.is_empty() { "(all)" } else { rule.spec.prefix.as_str() },
            rule.spec.regions.join(","),
            rule.spec.home.as_deref().unwrap_or("-"),
            if rule.spec.strict { "strict" } else { "proxy" }
        );
    }
    for change in &report.changes {
        println!(
            "{} of rule {} (version {}): {}/{} {}",
            change.kind,
            change.rule,
            change.version,
            change.done,
            change.total,
            if change.complete { "complete" } else { "running" }
        );
    }
    let c = &report.counters;
    println!(
        "since start: {} proxied, {} refused, {} rejected transfers, {} records redacted, {} keys purged",
        c.proxied, c.refused, c.rejected, c.redacted, c.purged
    );
}
