//! Membership gossip and heartbeats, safe-time reports, and the exchange of residency rules and
//! authentication metadata.
//!
//! Every `gossip_interval_ms` the node sends its membership to every other member it knows (a
//! region is tens of nodes at most, so all-to-all stays cheap) and to its seeds; each answer is the
//! peer's membership, merged in. A successful exchange is also the heartbeat the failure detector
//! listens to, so a node that stops answering turns suspect and then dead within
//! `suspect_after_ms` / `dead_after_ms`, and alive again at its next answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::state::AuthRecord;
use crate::peer::protocol::{decode_reply, encode_request, PeerCallError, PeerMessageV1, PeerReplyV1};
use crate::peer::PeerPool;
use crate::region::cluster::Cluster;
use crate::replica::Replica;

/// Exchanges memberships with every known member and seed each `interval`, until `shutdown`.
pub async fn gossip(
    replica: Arc<Replica>,
    cluster: Arc<Cluster>,
    pool: Arc<PeerPool>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
        round += 1;
        let known = cluster.peers();
        let mut targets: Vec<SocketAddr> = known.iter().map(|(_, addr)| *addr).collect();
        for seed in cluster.seeds() {
            if !targets.contains(seed) {
                targets.push(*seed);
            }
        }
        let request = encode_request(
            cluster.local(),
            PeerMessageV1::GossipReports {
                membership: cluster.snapshot(),
                handoff: cluster.local_handoff(),
                reports: replica.own_reports(),
            },
        );
        let exchanges = targets.into_iter().map(|addr| {
            let (pool, request) = (pool.clone(), request.clone());
            async move { (addr, pool.request_identified(addr, None, request, interval * 4).await) }
        });
        for (addr, answer) in futures::future::join_all(exchanges).await {
            let answer = answer
                .map_err(|e| PeerCallError::Transport(e.to_string()))
                .and_then(|(peer, bytes)| Ok((peer, decode_reply(&bytes)?)));
            match answer {
                Ok((peer, PeerReplyV1::GossipReports { node_id, membership, handoff, reports })) => {
                    // The answer speaks for the certified peer that sent it: the same checks as a
                    // request's (its id, then what its membership claims), before anything is used.
                    if !merge_answer(&cluster, &peer, node_id, &membership) {
                        continue;
                    }
                    cluster.heartbeat(node_id);
                    let replica = replica.clone();
                    let _ = tokio::task::spawn_blocking(move || replica.take_reports_of(node_id, &reports)).await;
                    cluster.set_peer_handoff(node_id, handoff);
                }
                // A node of the previous version: membership and heartbeat, no reports.
                Ok((peer, PeerReplyV1::Gossip { node_id, membership, handoff })) => {
                    if !merge_answer(&cluster, &peer, node_id, &membership) {
                        continue;
                    }
                    cluster.heartbeat(node_id);
                    cluster.set_peer_handoff(node_id, handoff);
                }
                Ok((_, other)) => tracing::warn!(%addr, "unexpected gossip reply {other:?}"),
                Err(e) => tracing::debug!(%addr, error = %e, "gossip exchange failed"),
            }
        }
        // Residency rules every fourth round: they change rarely, and a newer set wins wherever
        // it meets an older one, so every node has a change within a few rounds.
        if round % 4 == 1 {
            exchange_rules(&replica, &cluster, &pool, interval * 4).await;
        }
        // Authentication metadata likewise, two rounds later (a join: order does not matter).
        if round % 4 == 3 {
            exchange_auth(&replica, &cluster, &pool, interval * 4).await;
        }
        // A removed member stays in the membership as a tombstone; it is no peer to be reached (it
        // would read as `dead` forever and page as unreachable).
        let mut members = cluster.members();
        members.retain(|m| m.member.state != meridian_replication::membership::MemberState::Removed);
        for liveness in ["alive", "suspect", "dead", "unknown"] {
            let count = members.iter().filter(|m| m.liveness == liveness).count();
            metrics::gauge!("meridian_cluster_peers", "liveness" => liveness).set(count as f64);
        }
        metrics::gauge!("meridian_cluster_members").set(members.len() as f64);
        let owned = members.iter().find(|m| m.id == cluster.local()).map_or(0, |m| m.partitions);
        metrics::gauge!("meridian_partitions_owned").set(owned as f64);
    }
}

/// Merges a gossip answer from `peer` (certified) naming itself `node_id`, unless it claims what
/// that peer may not say (refused and counted by [`Cluster::merge_claimed`], the sender id counted
/// here); whether it was taken.
fn merge_answer(
    cluster: &Cluster,
    peer: &crate::peer::PeerIdentity,
    node_id: meridian_crdt::NodeId,
    membership: &meridian_replication::Membership,
) -> bool {
    if let Err(e) = cluster.check_sender(node_id, &peer.name) {
        metrics::counter!("meridian_peer_refused_total", "reason" => "from_mismatch").increment(1);
        tracing::warn!(peer = %peer.name, error = %e, "refused a gossip answer");
        return false;
    }
    match cluster.merge_claimed(node_id, peer, membership) {
        Ok(_) => true,
        Err(crate::region::cluster::MergeRefused::Storage(e)) => {
            tracing::warn!(error = %e, "could not store the merged membership");
            true
        }
        Err(e) => {
            tracing::warn!(peer = %peer.name, error = %e, "refused a gossip answer");
            false
        }
    }
}

/// Sends this node's residency rules to every known peer and adopts any newer set they answer with.
pub async fn exchange_rules(replica: &Replica, cluster: &Cluster, pool: &Arc<PeerPool>, timeout: Duration) {
    let rules = (*replica.residency().rules()).clone();
    let request = encode_request(cluster.local(), PeerMessageV1::Residency { rules });
    let exchanges = cluster.peers().into_iter().map(|(_, addr)| {
        let (pool, request) = (pool.clone(), request.clone());
        async move { pool.request(addr, None, request, timeout).await }
    });
    for answer in futures::future::join_all(exchanges).await {
        if let Ok(Ok(PeerReplyV1::Residency { rules })) = answer.map(|bytes| decode_reply(&bytes)) {
            if let Err(e) = rules.check_shape() {
                tracing::warn!(error = %e, "a peer answered with malformed residency rules; ignored");
                continue;
            }
            let (unknown, _) = cluster.unknown_regions(&rules);
            if !unknown.is_empty() {
                metrics::counter!("meridian_peer_refused_total", "reason" => "unknown_region_rules").increment(1);
                tracing::warn!(?unknown, "a peer answered with residency rules naming unknown regions; ignored");
                continue;
            }
            let residency = replica.residency().clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || residency.adopt(&rules)).await {
                tracing::warn!(error = %e, "could not store newer residency rules");
            }
        }
    }
}

/// Sends this node's authentication metadata to every known peer and joins what they answer with.
pub async fn exchange_auth(replica: &Replica, cluster: &Cluster, pool: &Arc<PeerPool>, timeout: Duration) {
    let state = AuthRecord::V1((*replica.auth().state()).clone());
    let request = encode_request(cluster.local(), PeerMessageV1::Auth { state });
    let exchanges = cluster.peers().into_iter().map(|(_, addr)| {
        let (pool, request) = (pool.clone(), request.clone());
        async move { pool.request(addr, None, request, timeout).await }
    });
    for answer in futures::future::join_all(exchanges).await {
        if let Ok(Ok(PeerReplyV1::Auth { state: AuthRecord::V1(theirs) })) = answer.map(|bytes| decode_reply(&bytes)) {
            if let Err(e) = theirs.check_shape() {
                tracing::warn!(error = %e, "a peer answered with malformed authentication metadata; ignored");
                continue;
            }
            let auth = replica.auth().clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || auth.adopt(&theirs)).await {
                tracing::warn!(error = %e, "could not store newer authentication metadata");
            }
        }
    }
}
