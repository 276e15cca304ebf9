//! Region administration: the answers to `meridian cluster …` (status, placement, activate, drain,
//! remove), built from the node's view of its region.

use std::time::{SystemTime, UNIX_EPOCH};

use meridian_client::proto::{
    ClusterOp, ClusterReport, ErrorCode, ErrorReply, HandoffReport, MemberReport, PlacedReplica, PlacementReport,
    RegionLagReport,
};
use meridian_replication::MemberState;

use crate::config::Config;
use crate::layout;
use crate::region::coordinator::Coordinator;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs one cluster operation on this node and reports the region as it sees it afterwards.
pub fn cluster_op(coordinator: &Coordinator, config: &Config, op: ClusterOp) -> Result<ClusterReport, ErrorReply> {
    let cluster = coordinator.cluster();
    let find = |name: &str| {
        cluster.find(name).ok_or_else(|| ErrorReply::new(ErrorCode::BadRequest, format!("no member named {name:?}")))
    };
    let change = |name: &str, to: MemberState| -> Result<(), ErrorReply> {
        let node = find(name)?;
        cluster.transition(node, to).map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e))?;
        tracing::info!(%node, to = %to, "membership changed by an operator");
        Ok(())
    };
    let mut placement = None;
    match op {
        ClusterOp::Status => {}
        ClusterOp::Activate { node } => change(&node, MemberState::Active)?,
        ClusterOp::Drain { node } => change(&node, MemberState::Draining)?,
        ClusterOp::Remove { node } => change(&node, MemberState::Removed)?,
        ClusterOp::Placement { key } => {
            key.validate().map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
            let partition = layout::partition_of(&layout::data_key(&key));
            let explained = cluster.explain(partition);
            placement = Some(PlacementReport {
                key,
                partition,
                candidates: explained.candidates as u32,
                replicas: explained
                    .replicas
                    .iter()
                    .map(|r| PlacedReplica {
                        id: r.id,
                        name: cluster.member(r.id).map_or_else(|| r.id.to_string(), |m| m.name),
                        zone: r.zone.clone(),
                        score: r.score,
                        rank: r.rank as u32 + 1,
                        reason: r.reason.to_string(),
                    })
                    .collect(),
            });
        }
    }
    let now = now_ms();
    let progress = coordinator.sync_threads().progress();
    let members_for_regions = cluster.members();
    let members = members_for_regions
        .clone()
        .into_iter()
        .map(|m| {
            let last_sync = progress
                .iter()
                .find(|(id, _)| *id == m.id)
                .map(|(_, p)| p.last_complete_ms.load(std::sync::atomic::Ordering::Relaxed))
                .filter(|ms| *ms > 0);
            MemberReport {
                id: m.id,
                name: m.member.name,
                region: m.member.region,
                zone: m.member.zone,
                state: m.member.state.to_string(),
                liveness: m.liveness,
                peer_addr: m.member.peer_addr,
                client_addr: m.member.client_addr,
                http_addr: m.member.http_addr,
                partitions: m.partitions as u32,
                hints_queued: coordinator.hints().depth(m.id) as u64,
                last_sync_ms_ago: last_sync.map(|ms| now.saturating_sub(ms)),
            }
        })
        .collect();
    let regions = region_reports(coordinator, &members_for_regions);
    Ok(ClusterReport {
        local: config.node_name.clone(),
        rf: cluster.rf() as u32,
        members,
        placement,
        handoff: handoff(coordinator),
        regions,
    })
}

/// Replication from every other region into this node: lag (as records arrive), hints pending for
/// that region's nodes, and the last complete anti-entropy pass with one of them.
fn region_reports(coordinator: &Coordinator, members: &[crate::region::cluster::MemberView]) -> Vec<RegionLagReport> {
    let cluster = coordinator.cluster();
    let progress = coordinator.sync_threads().progress();
    let mut reports: std::collections::BTreeMap<String, RegionLagReport> =
        coordinator.lag().report().into_iter().map(|r| (r.from_region.clone(), r)).collect();
    for m in members.iter().filter(|m| m.member.region != cluster.region()) {
        let report = reports
            .entry(m.member.region.clone())
            .or_insert_with(|| RegionLagReport { from_region: m.member.region.clone(), ..RegionLagReport::default() });
        report.hints_pending += coordinator.hints().depth(m.id) as u64;
        if let Some((_, p)) = progress.iter().find(|(id, _)| *id == m.id) {
            report.last_sync_ms =
                report.last_sync_ms.max(p.last_complete_ms.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
    reports.into_values().collect()
}

/// When this node is draining: how many of the partitions it holds have reached all their new
/// owners (measured by [`Coordinator::track_handoff`]).
fn handoff(coordinator: &Coordinator) -> Option<HandoffReport> {
    let cluster = coordinator.cluster();
    if cluster.local_state() != MemberState::Draining {
        return None;
    }
    let (synced, total) = cluster.handoff_progress().unwrap_or((0, usize::MAX));
    Some(HandoffReport { partitions_synced: synced as u32, partitions_total: total.min(u32::MAX as usize) as u32 })
}
