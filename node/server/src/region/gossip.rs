//! Membership gossip and heartbeats, safe-time reports, the exchange of residency rules and
//! authentication metadata, and vouches for a node that took over a removed id's name (a new log
//! epoch: what this node knows of the old id's log, which the successor cannot learn otherwise).
//!
//! Every `gossip_interval_ms` the node sends its membership to every other member it knows (a
//! region is tens of nodes at most, so all-to-all stays cheap) and to its seeds; each answer is the
//! peer's membership, merged in. A successful exchange is also the heartbeat the failure detector
//! listens to, so a node that stops answering turns suspect and then dead within
//! `suspect_after_ms` / `dead_after_ms`, and alive again at its next answer.
//!
//! Across regions a node with nothing new for an alive peer — the same membership, safe time and
//! hand-off, no report moved (`Ours::nothing_new_for`) — skips a round if the peer answered less
//! than one and a half intervals ago: so while idle the WAN heartbeat runs at half rate (issue 17:
//! idle WAN traffic), a round that ran late (a slow or dead target holds every round up) is never
//! followed by a skip, and anything new still goes at the next round. Only while four intervals
//! fit in `suspect_after_ms`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::state::AuthRecord;
use crate::peer::protocol::{
    decode_reply, encode_request, shared_digest, CompactReports, PeerCallError, PeerMessageV1, PeerReplyV1, Pushed,
};
use crate::peer::PeerPool;
use crate::region::cluster::Cluster;
use crate::replica::Replica;
use meridian_replication::hash::stable_hash_u64s;
use meridian_replication::Membership;

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
    let mut targets_seen: HashMap<SocketAddr, Seen> = HashMap::new();
    let may_quiet = interval * 4 <= Duration::from_millis(replica.config().peer.suspect_after_ms);
    let answered_lately = |seen: &Seen| seen.answered.is_some_and(|at| at.elapsed() < interval * 3 / 2);
    while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
        round += 1;
        let known = cluster.peers();
        let mut targets: Vec<SocketAddr> = known.iter().map(|(_, addr)| *addr).collect();
        for seed in cluster.seeds() {
            if !targets.contains(seed) {
                targets.push(*seed);
            }
        }
        targets_seen.retain(|addr, _| targets.contains(addr));
        let ours = Ours::now(&replica, &cluster, round % FULL_REPORTS_EVERY == 0);
        if may_quiet {
            let remote_and_alive = |addr: &SocketAddr| {
                known.iter().any(|(id, known_addr)| {
                    known_addr == addr
                        && cluster.region_of(*id).is_some_and(|region| region != cluster.region())
                        && cluster.liveness(*id) == meridian_replication::Liveness::Alive
                })
            };
            targets.retain(|addr| {
                let quiet = |seen: &Seen| answered_lately(seen) && ours.nothing_new_for(seen);
                !(remote_and_alive(addr) && targets_seen.get(addr).is_some_and(quiet))
            });
        }
        let exchanges = targets.into_iter().map(|addr| {
            let (pool, seen) = (pool.clone(), targets_seen.get(&addr).cloned().unwrap_or_default());
            let ours = &ours;
            async move {
                // Built for the connection it is sent on: version 3 only where both agreed to it.
                let build = |version: u8| if version >= 3 { ours.compact_for(&seen) } else { ours.full() };
                let answer = pool.request_versioned(addr, None, build, interval * 4).await;
                // When it came, not when the round (waiting for its slowest target) ends.
                (addr, answer, tokio::time::Instant::now())
            }
        });
        for (addr, answer, answered_at) in futures::future::join_all(exchanges).await {
            let answer = answer
                .map_err(|e| PeerCallError::Transport(e.to_string()))
                .and_then(|(peer, version, bytes)| Ok((peer, version, decode_reply(&bytes)?)));
            let (compact, answer) = match answer {
                Ok((peer, version, reply)) => (version >= 3, Ok((peer, reply))),
                Err(e) => (false, Err(e)),
            };
            if !compact {
                // What this node knew of the target's state holds only for version-3 exchanges.
                targets_seen.remove(&addr);
            }
            match answer {
                Ok((
                    peer,
                    PeerReplyV1::GossipCompact {
                        node_id,
                        digest,
                        membership,
                        handoff,
                        needs_full_reports,
                        rules_digest,
                        auth_digest,
                    },
                )) => {
                    let merged = match &membership {
                        Some(membership) => merge_answer(&cluster, &peer, node_id, membership),
                        None => check_answer(&cluster, &peer, node_id),
                    };
                    if !merged {
                        continue;
                    }
                    cluster.heartbeat(node_id);
                    cluster.set_peer_handoff(node_id, handoff);
                    let seen = targets_seen.entry(addr).or_default();
                    seen.digest = Some(digest);
                    seen.reported = (compact && !needs_full_reports).then(|| ours.seqs.clone());
                    seen.handoff = Some(ours.handoff.clone());
                    seen.safe = Some(ours.safe);
                    seen.answered = Some(answered_at);
                    seen.rules_digest = Some(rules_digest);
                    seen.auth_digest = Some(auth_digest);
                }
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
        // A peer whose last version-3 answer named the same digest as ours is skipped.
        if round % 4 == 1 {
            let differ = |seen: &Seen| seen.rules_digest != Some(ours.rules_digest);
            let targets = peers_where(&cluster, &targets_seen, differ);
            exchange_rules_with(&replica, &cluster, &pool, &targets, interval * 4).await;
        }
        // Authentication metadata likewise, two rounds later (a join: order does not matter).
        if round % 4 == 3 {
            let differ = |seen: &Seen| seen.auth_digest != Some(ours.auth_digest);
            let targets = peers_where(&cluster, &targets_seen, differ);
            exchange_auth_with(&replica, &cluster, &pool, &targets, interval * 4).await;
        }
        if round % FULL_REPORTS_EVERY == 1 {
            vouch_for_successors(&replica, &cluster, &pool, interval * 4).await;
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

/// How long after a member's removal its successor is vouched for.
const VOUCH_FOR_MS: u64 = 15 * 60_000;

/// Tells each node that took a removed member's name over — a node that started a new log epoch
/// (`store/epoch.rs`) — what this node knows of the removed id's log: its safe times, per
/// partition (sent as a `PushBatch` without records, reports only). The successor ran under that
/// id, so it never took reports about it, and the id reports no more: without these, a causal
/// read there would wait for every write the old id made until it timed out. Sent every
/// `FULL_REPORTS_EVERY` rounds for [`VOUCH_FOR_MS`] after the removal; a report is only taken
/// once the successor holds the position it names, so it is true whenever it arrives.
async fn vouch_for_successors(replica: &Arc<Replica>, cluster: &Cluster, pool: &Arc<PeerPool>, timeout: Duration) {
    // All at once: a successor that does not answer must not hold up this node's gossip round.
    let vouching = cluster.successions(VOUCH_FOR_MS).into_iter().map(|(retired, successor, addr)| {
        let (replica, pool, local) = (replica.clone(), pool.clone(), cluster.local());
        async move {
            let Ok(vouches) = tokio::task::spawn_blocking(move || replica.vouch_for(retired)).await else { return };
            if vouches.is_empty() {
                return;
            }
            let pushes = vouches
                .into_iter()
                .map(|(partition, report)| Pushed { partition, records: Vec::new(), reports: vec![report] })
                .collect();
            let request = encode_request(local, PeerMessageV1::PushBatch { pushes, relay: false });
            if let Err(e) = pool.request(addr, None, request, timeout).await {
                tracing::debug!(%successor, %retired, error = %e, "could not vouch for a successor");
            }
        }
    });
    futures::future::join_all(vouching).await;
}

/// Every this many rounds a version-3 gossip carries every partition's report anyway (10 s at the
/// default 250 ms interval): a bound on how long a report the receiver somehow lost stays lost.
const FULL_REPORTS_EVERY: u64 = 40;

/// What this node last learned from one gossip target, so that a version-3 exchange sends only
/// what changed since.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// The membership digest the target's last answer named.
    digest: Option<u64>,
    /// The positions, per partition, that the target took in with its last answered exchange
    /// (`None`: send every partition).
    reported: Option<Vec<u64>>,
    /// The digests of its residency rules and authentication metadata its last version-3
    /// answer named (`None`: unknown, exchange them).
    rules_digest: Option<u64>,
    auth_digest: Option<u64>,
    /// The hand-off list and the safe time sent with the last answered exchange, and when it was
    /// answered.
    handoff: Option<Vec<u16>>,
    safe: Option<u64>,
    answered: Option<tokio::time::Instant>,
}

/// This node's side of one gossip round.
struct Ours {
    membership: Membership,
    digest: u64,
    handoff: Vec<u16>,
    safe: u64,
    seqs: Vec<u64>,
    /// Send every partition's report to every target this round.
    all_reports: bool,
    from: meridian_crdt::NodeId,
    rules_digest: u64,
    auth_digest: u64,
}

impl Ours {
    fn now(replica: &Replica, cluster: &Cluster, all_reports: bool) -> Ours {
        let membership = cluster.snapshot();
        let handoff = cluster.local_handoff();
        let (safe, seqs) = replica.own_reports();
        let digest = shared_digest(&membership);
        let rules_digest = shared_digest(&*replica.residency().rules());
        let auth_digest = shared_digest(&*replica.auth().state());
        Ours { membership, digest, handoff, safe, seqs, all_reports, from: cluster.local(), rules_digest, auth_digest }
    }

    /// Whether a compact gossip to a target of which this node has `seen` what it has would carry
    /// nothing it lacks: the same membership, safe time and hand-off, no report moved.
    fn nothing_new_for(&self, seen: &Seen) -> bool {
        !self.all_reports
            && seen.digest == Some(self.digest)
            && seen.reported.as_ref() == Some(&self.seqs)
            && seen.handoff.as_ref() == Some(&self.handoff)
            && seen.safe == Some(self.safe)
    }

    /// The request for a target that speaks no version 3: the membership and every report.
    fn full(&self) -> Vec<u8> {
        let reports = (self.safe, self.seqs.clone());
        let message = PeerMessageV1::GossipReports {
            membership: self.membership.clone(),
            handoff: self.handoff.clone(),
            reports,
        };
        encode_request(self.from, message)
    }

    /// The version-3 request for a target of which this node has `seen` what it has: the
    /// membership only if the digests differ, the reports of partitions whose position changed.
    fn compact_for(&self, seen: &Seen) -> Vec<u8> {
        let (full, base, changed) = match seen.reported.as_ref().filter(|_| !self.all_reports) {
            Some(reported) => {
                let changed = self.seqs.iter().enumerate().filter(|(p, seq)| reported.get(*p) != Some(seq));
                (false, stable_hash_u64s(reported), changed.map(|(p, seq)| (p as u16, *seq)).collect())
            }
            None => (true, 0, self.seqs.iter().enumerate().map(|(p, seq)| (p as u16, *seq)).collect()),
        };
        encode_request(
            self.from,
            PeerMessageV1::GossipCompact {
                digest: self.digest,
                membership: (seen.digest != Some(self.digest)).then(|| self.membership.clone()),
                handoff: self.handoff.clone(),
                reports: CompactReports { safe: self.safe, full, base, changed },
                rules_digest: self.rules_digest,
                auth_digest: self.auth_digest,
            },
        )
    }
}

/// Checks a gossip answer that carried no membership: `node_id` must be the certified `peer`.
fn check_answer(cluster: &Cluster, peer: &crate::peer::PeerIdentity, node_id: meridian_crdt::NodeId) -> bool {
    match cluster.check_sender(node_id, &peer.name, None) {
        Ok(()) => true,
        Err(e) => {
            metrics::counter!("meridian_peer_refused_total", "reason" => "from_mismatch").increment(1);
            tracing::warn!(peer = %peer.name, error = %e, "refused a gossip answer");
            false
        }
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
    if let Err(e) = cluster.check_sender(node_id, &peer.name, Some(membership)) {
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
    let peers: Vec<SocketAddr> = cluster.peers().into_iter().map(|(_, addr)| addr).collect();
    exchange_rules_with(replica, cluster, pool, &peers, timeout).await;
}

/// The known peers for which `pick` holds of what this node last saw of them (a peer not seen
/// yet is picked).
fn peers_where(cluster: &Cluster, seen: &HashMap<SocketAddr, Seen>, pick: impl Fn(&Seen) -> bool) -> Vec<SocketAddr> {
    let peers = cluster.peers().into_iter().map(|(_, addr)| addr);
    peers.filter(|addr| seen.get(addr).is_none_or(&pick)).collect()
}

/// [`exchange_rules`] with the peers at `targets` only.
async fn exchange_rules_with(
    replica: &Replica,
    cluster: &Cluster,
    pool: &Arc<PeerPool>,
    targets: &[SocketAddr],
    timeout: Duration,
) {
    if targets.is_empty() {
        return;
    }
    let rules = (*replica.residency().rules()).clone();
    let request = encode_request(cluster.local(), PeerMessageV1::Residency { rules });
    let exchanges = targets.iter().map(|&addr| {
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
    let peers: Vec<SocketAddr> = cluster.peers().into_iter().map(|(_, addr)| addr).collect();
    exchange_auth_with(replica, cluster, pool, &peers, timeout).await;
}

/// [`exchange_auth`] with the peers at `targets` only.
async fn exchange_auth_with(
    replica: &Replica,
    cluster: &Cluster,
    pool: &Arc<PeerPool>,
    targets: &[SocketAddr],
    timeout: Duration,
) {
    if targets.is_empty() {
        return;
    }
    let state = AuthRecord::V1((*replica.auth().state()).clone());
    let request = encode_request(cluster.local(), PeerMessageV1::Auth { state });
    let exchanges = targets.iter().map(|&addr| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::protocol::{PeerRequest, MAX_PEER_MESSAGE_BYTES};

    fn ours(seqs: Vec<u64>, all_reports: bool) -> Ours {
        let membership = Membership::new();
        Ours {
            digest: shared_digest(&membership),
            membership,
            handoff: vec![],
            safe: 9,
            seqs,
            all_reports,
            from: meridian_crdt::NodeId(1),
            rules_digest: 4,
            auth_digest: 5,
        }
    }

    fn decoded(bytes: &[u8]) -> (Option<Membership>, CompactReports) {
        let PeerRequest::V1 { message, .. } = meridian_crdt::codec::decode(bytes, MAX_PEER_MESSAGE_BYTES).unwrap();
        match message {
            PeerMessageV1::GossipCompact { membership, reports, .. } => (membership, reports),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_compact_gossip_sends_what_the_target_has_not_seen() {
        let now = ours(vec![3, 0, 7, 1], false);
        // A target never answered: the membership and every partition.
        let (membership, reports) = decoded(&now.compact_for(&Seen::default()));
        assert!(membership.is_some());
        assert!(reports.full);
        assert_eq!(reports.changed, vec![(0, 3), (1, 0), (2, 7), (3, 1)]);
        // A target with the same membership that took in older positions: only what moved.
        let seen = Seen {
            digest: Some(now.digest),
            reported: Some(vec![3, 0, 5, 1]),
            rules_digest: None,
            auth_digest: None,
            handoff: Some(vec![]),
            safe: Some(9),
            answered: None,
        };
        let (membership, reports) = decoded(&now.compact_for(&seen));
        assert!(membership.is_none());
        assert_eq!((reports.full, reports.safe, reports.changed), (false, 9, vec![(2, 7)]));
        assert_eq!(reports.base, stable_hash_u64s(&[3, 0, 5, 1]), "names the baseline it changes");
        // Idle: nothing at all but the frontier.
        let idle = Seen { reported: Some(vec![3, 0, 7, 1]), ..seen.clone() };
        assert!(decoded(&now.compact_for(&idle)).1.changed.is_empty());
        // Every FULL_REPORTS_EVERY rounds, everything anyway.
        let (_, reports) = decoded(&ours(vec![3, 0, 7, 1], true).compact_for(&idle));
        assert!(reports.full && reports.changed.len() == 4);
        // A membership changed since: sent again.
        let other = Seen { digest: Some(now.digest ^ 1), ..idle };
        assert!(decoded(&now.compact_for(&other)).0.is_some());
    }

    #[test]
    fn only_a_gossip_with_nothing_new_may_be_skipped() {
        let now = ours(vec![3, 0, 7, 1], false);
        let idle = Seen {
            digest: Some(now.digest),
            reported: Some(vec![3, 0, 7, 1]),
            handoff: Some(vec![]),
            safe: Some(9),
            ..Seen::default()
        };
        assert!(now.nothing_new_for(&idle));
        assert!(!now.nothing_new_for(&Seen::default()), "a target never answered");
        assert!(!now.nothing_new_for(&Seen { reported: Some(vec![3, 0, 6, 1]), ..idle.clone() }), "a report moved");
        assert!(!now.nothing_new_for(&Seen { digest: Some(now.digest ^ 1), ..idle.clone() }), "membership changed");
        assert!(!now.nothing_new_for(&Seen { handoff: Some(vec![4]), ..idle.clone() }), "hand-off changed");
        assert!(!now.nothing_new_for(&Seen { safe: Some(8), ..idle.clone() }), "the safe time moved");
        assert!(!ours(vec![3, 0, 7, 1], true).nothing_new_for(&idle), "a round of full reports");
    }
}
