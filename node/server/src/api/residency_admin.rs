//! The answers to `meridian residency …`: rule edits, explain, audit.
//!
//! An edit is made on the answering node — validated against the regions its membership knows,
//! stored as the next version — then pushed to every peer at once (gossip would carry it within a
//! second anyway); each node then purges or backfills for itself.

use std::collections::BTreeSet;
use std::sync::Arc;

use meridian_client::proto::{ErrorCode, ErrorReply, ResidencyExplain, ResidencyOp, ResidencyReport};
use meridian_replication::residency::{allows, RuleSet};

use crate::layout;
use crate::region::coordinator::Coordinator;
use crate::replica::Replica;

fn bad(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::BadRequest, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

/// Runs one residency operation on `node`'s replica (and its region, when it runs in one).
pub async fn residency_op(
    node: &Arc<Replica>,
    coordinator: Option<&Arc<Coordinator>>,
    op: ResidencyOp,
) -> Result<ResidencyReport, ErrorReply> {
    let residency = node.residency().clone();
    let current = residency.rules();
    let known = known_regions(node, coordinator);
    let author = node.id().0;
    let mut report = ResidencyReport::default();
    let edited: Option<RuleSet> = match op {
        ResidencyOp::List => None,
        ResidencyOp::Add { rule, position } => {
            let (next, id) = current.with_added(rule, position.map(|p| p as usize), author, &known).map_err(bad)?;
            report.rule_id = Some(id);
            Some(next)
        }
        ResidencyOp::Change { id, rule } => {
            report.rule_id = Some(id);
            Some(current.with_changed(id, rule, author, &known).map_err(bad)?)
        }
        ResidencyOp::Remove { id } => Some(current.with_removed(id, author).map_err(bad)?),
        ResidencyOp::Explain { key } => {
            key.validate().map_err(bad)?;
            report.explain = Some(explain(node, coordinator, &key));
            None
        }
        ResidencyOp::Audit { compact } => {
            let scanned = node.clone();
            let audit = tokio::task::spawn_blocking(move || {
                crate::residency::scan::audit(scanned.engine(), scanned.residency(), compact)
            })
            .await
            .map_err(internal)?
            .map_err(internal)?;
            report.audit = Some(audit);
            None
        }
    };
    if let Some(next) = edited {
        let stored = residency.clone();
        let version = next.version;
        tokio::task::spawn_blocking(move || stored.adopt(&next)).await.map_err(internal)?.map_err(internal)?;
        let rule = report.rule_id.map_or_else(String::new, |id| format!("rule {id}: "));
        residency.audit().record_always("rules", &format!("{rule}edited by an operator: version {version}"));
        if let Some(coordinator) = coordinator {
            crate::region::gossip::exchange_rules(
                node,
                coordinator.cluster(),
                coordinator.pool(),
                std::time::Duration::from_secs(2),
            )
            .await;
        }
    }
    let rules = residency.rules();
    report.node = residency.node_name().to_string();
    report.region = residency.region().to_string();
    report.version = rules.version;
    report.rules = rules.rules.clone();
    report.changes = residency.changes();
    report.counters = residency.counters().snapshot();
    Ok(report)
}

/// The regions the cluster has: this node's and every member's.
fn known_regions(node: &Replica, coordinator: Option<&Arc<Coordinator>>) -> BTreeSet<String> {
    let mut regions: BTreeSet<String> = [node.residency().region().to_string()].into();
    if let Some(coordinator) = coordinator {
        regions.extend(coordinator.cluster().members().into_iter().map(|m| m.member.region));
    }
    regions
}

fn explain(
    node: &Replica,
    coordinator: Option<&Arc<Coordinator>>,
    key: &meridian_client::proto::Key,
) -> ResidencyExplain {
    let residency = node.residency();
    let data_key = layout::data_key(key);
    let partition = layout::partition_of(&data_key);
    let rule = residency.rule_for(&data_key);
    let mut all_regions: Vec<String> = known_regions(node, coordinator).into_iter().collect();
    all_regions.sort();
    let allowed_regions: Vec<String> = match &rule {
        Some(rule) => rule.spec.regions.clone(),
        None => all_regions.clone(),
    };
    let mut nodes = Vec::new();
    if let Some(coordinator) = coordinator {
        let cluster = coordinator.cluster();
        let name = |id| cluster.member(id).map_or_else(|| id.to_string(), |m| m.name);
        if allowed_regions.iter().any(|r| r == cluster.region()) {
            nodes.extend(
                cluster.replicas(partition).into_iter().map(|id| format!("{} ({})", name(id), cluster.region())),
            );
        }
        for (region, replicas) in cluster.remote_replicas(partition) {
            if allowed_regions.contains(&region) {
                nodes.extend(replicas.into_iter().map(|id| format!("{} ({region})", name(id))));
            }
        }
    }
    let allowed_here = rule.as_ref().is_none_or(|r| allows(r, residency.region()));
    let reason = match &rule {
        Some(rule) => format!(
            "rule {} matches (namespace {:?}, prefix {:?}; the first matching rule decides): the key may live in {} only{}{}",
            rule.id,
            rule.spec.namespace,
            rule.spec.prefix,
            rule.spec.regions.join(", "),
            rule.spec.home.as_ref().map_or_else(String::new, |h| format!("; home region {h}")),
            if allowed_here {
                String::new()
            } else if rule.spec.strict {
                format!("; requests arriving in {} are refused (strict)", residency.region())
            } else {
                format!("; requests arriving in {} are proxied to an allowed region", residency.region())
            }
        ),
        None => "no rule matches: the key may live in every region".to_string(),
    };
    ResidencyExplain { key: key.to_string(), partition, rule, allowed_regions, nodes, allowed_here, reason }
}
