//! The answers to `meridian residency …`: rule edits, explain, audit.
//!
//! An edit is made on the answering node — validated against the regions its membership knows,
//! stored as the next version — then pushed to every peer at once (gossip would carry it within a
//! second anyway); each node then purges or backfills for itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_client::proto::{
    ErrorCode, ErrorReply, Operation, Reply, ReplyBody, RequestV1, ResidencyExplain, ResidencyOp, ResidencyProgress,
    ResidencyReport,
};
use meridian_replication::membership::MemberState;
use meridian_replication::residency::{allows, RuleSet};

use crate::layout;
use crate::peer::protocol::{PeerMessageV1, PeerReplyV1};
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
        keepers_ready(node, coordinator, &current, &next, &known).await?;
        // Checked against `current`: an edit stored meanwhile (its keepers unchecked) wins.
        if residency.rules().version != current.version {
            return Err(ErrorReply::new(
                ErrorCode::ResidencyRefused,
                "the rules changed while this edit waited; nothing changed: list them and retry".to_string(),
            ));
        }
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

/// How long an edit that purges waits for the regions keeping the keys to confirm their copies
/// before it is refused: the request's budget (5 s by default) also covers the last answer
/// ([`KEEPER_ANSWER`]) and the edit's push (2 s).
const KEEPERS_PATIENCE: Duration = Duration::from_millis(1_500);
/// How long one keeper may take to answer whether its backfills are complete.
const KEEPER_ANSWER: Duration = Duration::from_millis(800);

/// Refuses an edit that makes some region purge keys while a node of a region that keeps them
/// may not hold them all: one that has not received the current rules (it may not have started
/// the backfill they imply) or is still backfilling. Widening and then narrowing before the
/// backfill ends would otherwise purge the only complete copies. Waits up to
/// [`KEEPERS_PATIENCE`] for them, then answers which node is behind and what to do.
async fn keepers_ready(
    node: &Arc<Replica>,
    coordinator: Option<&Arc<Coordinator>>,
    current: &RuleSet,
    next: &RuleSet,
    known: &BTreeSet<String>,
) -> Result<(), ErrorReply> {
    let keepers = keeping_regions(current, next, known);
    if keepers.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + KEEPERS_PATIENCE;
    loop {
        let behind = keepers_behind(node, coordinator, current.version, &keepers).await;
        let Some(first) = behind.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            let purged: Vec<String> =
                keepers.iter().map(|(region, rules)| format!("{region} (rules {rules:?})")).collect();
            let more = if behind.len() > 1 { format!(" (and {} more)", behind.len() - 1) } else { String::new() };
            return Err(ErrorReply::new(
                ErrorCode::ResidencyRefused,
                format!(
                    "this change makes regions purge keys that must then live in {} only, but {first}{more}: \
                     its copy may be incomplete, and the purge could delete the last complete one. Wait until \
                     `meridian residency list` on it shows every backfill complete (or bring it back, or remove it \
                     from the cluster), then retry; nothing changed",
                    purged.join(", "),
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The regions that keep keys some region purges when the rules go from `current` to `next` (keys
/// it may hold: a purge repeated where a rule already excluded the region deletes no copy), each
/// with the rules whose keys it keeps.
fn keeping_regions(current: &RuleSet, next: &RuleSet, known: &BTreeSet<String>) -> BTreeMap<String, Vec<u32>> {
    let mut keepers: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for region in known {
        for rule in current.purges_held(next, region) {
            for keeper in &rule.spec.regions {
                let rules = keepers.entry(keeper.clone()).or_default();
                if !rules.contains(&rule.id) {
                    rules.push(rule.id);
                }
            }
        }
    }
    keepers
}

/// Why nodes of the `keepers` regions that hold data (active or draining) may not hold every key
/// of rules `version`: one line per such node, empty when all confirm.
async fn keepers_behind(
    node: &Arc<Replica>,
    coordinator: Option<&Arc<Coordinator>>,
    version: u64,
    keepers: &BTreeMap<String, Vec<u32>>,
) -> Vec<String> {
    let residency = node.residency();
    let mut behind = Vec::new();
    if keepers.contains_key(residency.region()) {
        let held = residency.rules().version;
        behind.extend(lagging(residency.node_name(), residency.region(), version, held, &residency.changes()));
    }
    let Some(coordinator) = coordinator else {
        return behind;
    };
    let cluster = coordinator.cluster();
    let asked: Vec<_> = cluster
        .members()
        .into_iter()
        .filter(|m| {
            m.id != cluster.local()
                && matches!(m.member.state, MemberState::Active | MemberState::Draining)
                && keepers.contains_key(&m.member.region)
        })
        .collect();
    // A keeping region with no node holding data (all removed, or joining) keeps nothing.
    for region in keepers.keys().filter(|r| *r != residency.region()) {
        if !asked.iter().any(|m| &m.member.region == region) {
            behind.push(format!("region {region} has no active or draining node to keep the keys"));
        }
    }
    let asked = asked.into_iter();
    let answers = asked.map(|m| async move {
        let list = RequestV1 {
            consistency: None,
            causal_token: None,
            timeout_ms: KEEPER_ANSWER.as_millis() as u32,
            op: Operation::Residency(ResidencyOp::List),
        };
        let answer = coordinator.call(m.id, PeerMessageV1::Forward(list), KEEPER_ANSWER).await;
        (m, answer)
    });
    for (m, answer) in futures::future::join_all(answers).await {
        let (name, region) = (&m.member.name, &m.member.region);
        match answer {
            Ok(PeerReplyV1::Forwarded(Ok(Reply { body: ReplyBody::Residency(report), .. }))) => {
                behind.extend(lagging(name, region, version, report.version, &report.changes));
            }
            Ok(PeerReplyV1::Forwarded(Err(e))) => {
                behind.push(format!("{name} ({region}) answered {}: {}", e.code.name(), e.message))
            }
            Ok(_) => behind.push(format!("{name} ({region}) gave an unexpected answer")),
            Err(e) => behind.push(format!("{name} ({region}) could not be asked ({e})")),
        }
    }
    behind
}

/// Why a node holding rules version `held` with purges and backfills `changes` may not hold every
/// key of rules `version`.
fn lagging(name: &str, region: &str, version: u64, held: u64, changes: &[ResidencyProgress]) -> Option<String> {
    if held < version {
        return Some(format!("{name} ({region}) has not received rules version {version} yet (it holds {held})"));
    }
    changes.iter().find(|c| c.kind == "backfill" && !c.complete).map(|c| {
        format!(
            "{name} ({region}) is still backfilling rule {} (rules version {}: {}/{} partitions)",
            c.rule, c.version, c.done, c.total
        )
    })
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
