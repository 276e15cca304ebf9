//! This node's view of its region: who the members are (a gossiped CRDT, persisted), which of them
//! are alive (a heartbeat failure detector fed by every successful peer exchange), and where each
//! partition lives (rendezvous placement over the active members, spread over zones).
//!
//! Placement places *partitions*, not keys (`docs/design/replication.md`): a key's replicas are its
//! partition's, so replicas of the same keys share one delta log and one version vector per
//! partition, which is what anti-entropy compares. Placement uses the membership, not liveness: a
//! replica that is merely down keeps its partitions (writes for it become hints and anti-entropy
//! catches it up), so a flapping node does not move data around. Only an operator's drain or removal
//! changes placement.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_crdt::{codec, Hlc, NodeId};
use meridian_replication::{
    place, Certified, ClaimError, DetectorConfig, FailureDetector, Liveness, Member, MemberState, MemberVersion,
    Membership, Placement, QuorumSets,
};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::layout::PARTITIONS;
use crate::storage::{Batch, Engine, Space, StorageError};

/// `Meta` key of the persisted membership.
/// Largest membership decoded (from disk or a peer).
pub const MAX_MEMBERSHIP_BYTES: usize = 1 << 20;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A node that started a new log epoch (`store/epoch.rs`) runs under a fresh id: each id it ran
/// under before (`predecessors`, oldest first) that still holds its name in `membership` is marked
/// removed. Returns the state of the newest one `membership` knows, which the new id takes over
/// (active, draining…; removed if an operator had removed it: a removed node stays out). The
/// removal spreads with the node's gossip, which hands the name over ([`Membership::succeeds`]).
fn retire_predecessors(predecessors: &[NodeId], membership: &mut Membership, name: &str) -> Option<MemberState> {
    let mut newest = None;
    for &old in predecessors {
        let Some(member) = membership.get(old) else { continue };
        newest = Some(member.state);
        if member.state != MemberState::Removed && member.name == name {
            let at = Hlc { wall_ms: now_ms().max(member.version.hlc.wall_ms + 1), logical: 0 };
            if let Err(e) = membership.transition(old, MemberState::Removed, at) {
                tracing::warn!(previous_id = %old, error = %e, "could not retire this node's previous id");
                continue;
            }
            tracing::warn!(previous_id = %old, "this node's previous id is marked removed; its name passes to the new one");
        }
    }
    newest
}

/// Why a peer's membership was not merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeRefused {
    /// It claims what its sender may not say.
    #[error("refusing the membership: {0}")]
    Claim(#[from] ClaimError),
    /// Storing the merged membership failed.
    #[error("storing the membership: {0}")]
    Storage(StorageError),
}

/// One member as `meridian status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node id.
    pub id: NodeId,
    /// The member record.
    pub member: Member,
    /// What the failure detector believes.
    pub liveness: String,
    /// Partitions placement gives it.
    pub partitions: usize,
}

struct View {
    /// This node's id (the failure detector never judges it).
    local: NodeId,
    membership: Membership,
    /// This node's lifecycle state when last looked at, and since when (local clock) it holds.
    local_state: (MemberState, u64),
    detector: FailureDetector,
    /// Replicas of each partition in this node's region, best first; recomputed when the
    /// membership changes.
    placements: Arc<Vec<Vec<NodeId>>>,
    /// The same for every other region, by region name.
    remote_placements: Arc<BTreeMap<String, Vec<Vec<NodeId>>>>,
    /// Each partition's old and new replicas in this region while placement changes.
    moves: Arc<MoveSets>,
    /// The same for every other region, by region name.
    remote_moves: Arc<BTreeMap<String, MoveSets>>,
    /// Partitions each peer holds data of without being a replica (from gossip).
    peer_handoff: BTreeMap<NodeId, std::collections::BTreeSet<u16>>,
    /// Partitions this node holds data of without being a replica.
    local_handoff: Vec<u16>,
    /// For a draining node: (partitions whose every new owner covers this node's vector, partitions held).
    handoff_progress: Option<(usize, usize)>,
}

/// This node's view of the region.
pub struct Cluster {
    local: NodeId,
    /// This node's name, and the ids it ran under before a new log epoch (`store/epoch.rs`).
    name: String,
    predecessors: Vec<NodeId>,
    region: String,
    rf: usize,
    /// Whether quorums count moving partitions' old and new replicas (`peer.pending_replicas`).
    pending: bool,
    seeds: Vec<SocketAddr>,
    dial_via: BTreeMap<String, SocketAddr>,
    engine: Arc<dyn Engine>,
    view: Mutex<View>,
    /// Serialises persisting the membership.
    persisting: Mutex<()>,
}

impl Cluster {
    /// Loads the persisted membership and (re-)announces this node in it.
    pub fn open(
        engine: Arc<dyn Engine>,
        local: NodeId,
        config: &Config,
        peer_addr: SocketAddr,
        client_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> anyhow::Result<Arc<Cluster>> {
        let mut membership = match engine.get(Space::Meta, crate::layout::META_MEMBERSHIP)? {
            Some(bytes) => codec::decode::<Membership>(&bytes, MAX_MEMBERSHIP_BYTES)
                .map_err(|e| anyhow::anyhow!("the persisted membership is unreadable: {e}"))?,
            None => Membership::new(),
        };
        let held = membership.get(local).cloned();
        let predecessors = crate::store::epoch::predecessors(engine.as_ref())?;
        let succeeded = retire_predecessors(&predecessors, &mut membership, &config.node_name);
        let succeeded = if held.is_none() { succeeded } else { None };
        let (state, incarnation) = match (&held, succeeded) {
            // A node that was removed stays out: re-joining is an operator's decision (a new data dir).
            (Some(m), _) if m.state == MemberState::Removed => (MemberState::Removed, m.version.incarnation),
            (Some(m), _) => (m.state, m.version.incarnation),
            (None, Some(state)) => (state, 1),
            (None, None) if config.peer.auto_activate => (MemberState::Active, 1),
            (None, None) => (MemberState::Joining, 1),
        };
        if state == MemberState::Removed {
            tracing::warn!(node = %local, "this node was removed from the cluster; it holds no placements");
        } else {
            let me = Member {
                name: config.node_name.clone(),
                region: config.region.clone(),
                zone: config.zone.clone(),
                peer_addr: peer_addr.to_string(),
                client_addr: client_addr.to_string(),
                http_addr: http_addr.to_string(),
                state,
                version: MemberVersion {
                    incarnation,
                    hlc: Hlc { wall_ms: now_ms().max(held.map_or(0, |m| m.version.hlc.wall_ms + 1)), logical: 0 },
                },
            };
            membership.upsert(local, me).map_err(|e| anyhow::anyhow!("announcing this node: {e}"))?;
        }
        let detector =
            FailureDetector::new(DetectorConfig::new(config.peer.suspect_after_ms, config.peer.dead_after_ms))
                .map_err(|e| anyhow::anyhow!("failure detector: {e}"))?;
        let placements = Arc::new(compute_placements(&membership, &config.region, config.peer.rf));
        let remote_placements = Arc::new(compute_remote_placements(&membership, &config.region, config.peer.rf));
        let pending = config.peer.pending_replicas;
        if !pending {
            tracing::warn!(
                "peer.pending_replicas = false: a test knob; quorum reads right after a placement change may miss \
                 acknowledged writes"
            );
        }
        let (moves, remote_moves) = compute_moves(&membership, &config.region, config.peer.rf, pending);
        let cluster = Cluster {
            local,
            name: config.node_name.clone(),
            predecessors,
            region: config.region.clone(),
            rf: config.peer.rf,
            pending,
            seeds: config.peer.seeds.clone(),
            dial_via: config.peer.dial_via.clone(),
            engine,
            persisting: Mutex::new(()),
            view: Mutex::new(View {
                local,
                local_state: (state, now_ms()),
                membership,
                detector,
                placements,
                remote_placements,
                moves: Arc::new(moves),
                remote_moves: Arc::new(remote_moves),
                peer_handoff: BTreeMap::new(),
                local_handoff: Vec::new(),
                handoff_progress: None,
            }),
        };
        cluster.persist(&cluster.lock().membership)?;
        Ok(Arc::new(cluster))
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Persists the membership as it is now. Serialised, and the snapshot taken under the
    /// serialising lock, so two concurrent changes cannot leave the older one on disk.
    fn persist_latest(&self) -> Result<(), StorageError> {
        let _serial = self.persisting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let snapshot = self.lock().membership.clone();
        self.persist(&snapshot)
    }

    fn persist(&self, membership: &Membership) -> Result<(), StorageError> {
        let mut batch = Batch::default();
        batch.put(Space::Meta, crate::layout::META_MEMBERSHIP, codec::encode(membership));
        self.engine.write(batch)
    }

    /// Recomputes every region's placement after a membership change.
    fn replace(&self, view: &mut View) {
        view.placements = Arc::new(compute_placements(&view.membership, &self.region, self.rf));
        view.remote_placements = Arc::new(compute_remote_placements(&view.membership, &self.region, self.rf));
        let (moves, remote_moves) = compute_moves(&view.membership, &self.region, self.rf, self.pending);
        metrics::gauge!("meridian_partitions_moving").set(moves.moving().count() as f64);
        view.moves = Arc::new(moves);
        view.remote_moves = Arc::new(remote_moves);
    }

    fn note_local_state(&self, view: &mut View) {
        let state = view.membership.get(self.local).map_or(MemberState::Removed, |m| m.state);
        if state != view.local_state.0 {
            view.local_state = (state, now_ms());
        }
    }

    /// When (Unix ms, this node's clock) this node learned of its current lifecycle state.
    pub fn local_state_since_ms(&self) -> u64 {
        self.lock().local_state.1
    }

    /// This node's id.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The configured replication factor.
    pub fn rf(&self) -> usize {
        self.rf
    }

    /// The seed addresses from the configuration.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }

    /// The replicas of `partition`, best first (empty only while no member is active).
    pub fn replicas(&self, partition: u16) -> Vec<NodeId> {
        self.lock().placements[usize::from(partition)].clone()
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The replicas of `partition` in every other region, by region name, best first.
    pub fn remote_replicas(&self, partition: u16) -> Vec<(String, Vec<NodeId>)> {
        let view = self.lock();
        view.remote_placements
            .iter()
            .map(|(region, all)| (region.clone(), all[usize::from(partition)].clone()))
            .collect()
    }

    /// The replicas a request at `level` for a key of `partition` counts, as quorum sets: a global
    /// `quorum` counts the key's replicas in every region in `allowed` (`None`: every region), every
    /// other level this region's. While the partition moves (a node joining or draining), its old
    /// and new replicas are two sets, each of which must reach its own majority
    /// ([`QuorumSets::joint`]). The local region is counted as long as it is allowed (requests for
    /// keys it may not hold are proxied before they get here).
    pub fn quorum_sets(
        &self,
        level: meridian_client::proto::Consistency,
        partition: u16,
        allowed: Option<&[String]>,
    ) -> QuorumSets {
        let permits = |region: &str| allowed.is_none_or(|allowed| allowed.iter().any(|r| r == region));
        let p = usize::from(partition);
        let view = self.lock();
        let (mut old, mut new) = (Vec::new(), Vec::new());
        if permits(&self.region) {
            old.extend_from_slice(&view.moves.old[p]);
            new.extend_from_slice(&view.moves.new[p]);
        }
        if level == meridian_client::proto::Consistency::Quorum {
            for (region, moves) in view.remote_moves.iter() {
                if permits(region) {
                    old.extend_from_slice(&moves.old[p]);
                    new.extend_from_slice(&moves.new[p]);
                }
            }
        }
        QuorumSets::joint(old, new)
    }

    /// Whether quorums count moving partitions' old and new replicas (`peer.pending_replicas`).
    pub fn pending_replicas(&self) -> bool {
        self.pending
    }

    /// The members of `region` other than `except` that are joining or draining, by name.
    pub fn moving_members(&self, region: &str, except: NodeId) -> Vec<(String, MemberState)> {
        let view = self.lock();
        view.membership
            .iter()
            .filter(|(id, m)| *id != except && m.region == region)
            .filter(|(_, m)| matches!(m.state, MemberState::Joining | MemberState::Draining))
            .map(|(_, m)| (m.name.clone(), m.state))
            .collect()
    }

    /// What moving `node` to `to` would do to the *old* replica sets of `node`'s region (whichever
    /// region this node is in): each partition whose old set changes, with the set now and after.
    /// Old sets are what every quorum counts whether or not a move is in progress, so a change
    /// that alters them (activating a joining node, removing a draining or an active one) is the
    /// one that must wait for the copies (`region/coordinator/moves.rs`); one that leaves them
    /// alone (a drain, giving up a join) cannot hide a write. Empty when `peer.pending_replicas`
    /// is off, or for a transition the membership would refuse.
    pub fn old_set_changes(&self, node: NodeId, to: MemberState) -> Vec<SetChange> {
        if !self.pending {
            return Vec::new();
        }
        let view = self.lock();
        let Some(member) = view.membership.get(node) else { return Vec::new() };
        let mut after = view.membership.clone();
        let at = Hlc { wall_ms: now_ms().max(member.version.hlc.wall_ms + 1), logical: 0 };
        if after.transition(node, to, at).is_err() {
            return Vec::new();
        }
        let (now, then) = (view.membership.serving_nodes(&member.region), after.serving_nodes(&member.region));
        drop(view);
        (0..PARTITIONS)
            .filter_map(|partition| {
                let before = sorted_replicas(&now, partition, self.rf);
                let after = sorted_replicas(&then, partition, self.rf);
                (before != after).then_some(SetChange { partition, before, after })
            })
            .collect()
    }

    /// For each other region, the replica of `partition` this node sends a write to for that region
    /// to spread (one per region, so a write crosses each WAN link once): the first one that is up,
    /// alive ones first, in placement order. Regions with no replica up are named with `None`.
    pub fn remote_entry_points(&self, partition: u16) -> Vec<(String, Option<NodeId>)> {
        let view = self.lock();
        let now = now_ms();
        view.remote_placements
            .iter()
            .map(|(region, all)| (region.clone(), designated(&view, &all[usize::from(partition)], now)))
            .collect()
    }

    /// The region of `node`, if known.
    pub fn region_of(&self, node: NodeId) -> Option<String> {
        self.lock().membership.get(node).map(|m| m.region.clone())
    }

    /// Placement of every partition (cheap: shared).
    pub fn all_placements(&self) -> Arc<Vec<Vec<NodeId>>> {
        self.lock().placements.clone()
    }

    /// Placement of `partition` with each replica's score, rank and reason.
    pub fn explain(&self, partition: u16) -> Placement {
        let view = self.lock();
        place(&partition.to_be_bytes(), &view.membership.placement_nodes(&self.region), self.rf)
    }

    /// Whether this node is one of `partition`'s replicas.
    pub fn is_replica(&self, partition: u16) -> bool {
        self.lock().placements[usize::from(partition)].contains(&self.local)
    }

    /// The membership as gossip ships it.
    pub fn snapshot(&self) -> Membership {
        self.lock().membership.clone()
    }

    /// The membership digest (equal views have equal digests).
    pub fn digest(&self) -> u64 {
        self.lock().membership.digest()
    }

    /// Joins a peer's membership into ours; persists and re-places when it changed anything.
    pub fn merge(&self, theirs: &Membership) -> Result<bool, StorageError> {
        let mut view = self.lock();
        if !view.membership.merge(theirs) {
            return Ok(false);
        }
        // If a peer holds an older record of us (say, from before our restart), ours wins again on
        // the next exchange: our record only moves forward.
        self.replace(&mut view);
        self.note_local_state(&mut view);
        drop(view);
        self.persist_latest()?;
        Ok(true)
    }

    /// Whether a peer certified as `name` may send as `from` ([`Membership::check_sender`]); a request
    /// carrying the sender's membership (`gossiped`) may also hand the name over to a successor
    /// ([`Membership::succeeds`]: a node that started a new log epoch).
    pub fn check_sender(&self, from: NodeId, name: &str, gossiped: Option<&Membership>) -> Result<(), ClaimError> {
        self.lock().membership.check_sender_gossiping(from, name, gossiped)
    }

    /// Joins the membership a peer sent (or answered with) into ours, if it claims nothing its
    /// sender `from`, certified as `certified`, may not say ([`Membership::check_claims`]; checked
    /// and merged under one lock). A refused membership is counted in
    /// `meridian_peer_refused_total{reason="forged_member"}` and nothing of it is merged.
    pub fn merge_claimed(
        &self,
        from: NodeId,
        certified: &crate::certs::NodeIdentity,
        theirs: &Membership,
    ) -> Result<bool, MergeRefused> {
        let mut view = self.lock();
        let certified = Certified { name: &certified.name, region: &certified.region, zone: &certified.zone };
        let retired = self.retire_predecessors_seen(&mut view.membership, theirs);
        let checked = view.membership.check_claims(from, certified, theirs);
        let merged = checked.is_ok() && view.membership.merge(theirs);
        if retired || merged {
            self.replace(&mut view);
            self.note_local_state(&mut view);
            drop(view);
            self.persist_latest().map_err(MergeRefused::Storage)?;
        }
        if let Err(e) = checked {
            metrics::counter!("meridian_peer_refused_total", "reason" => "forged_member").increment(1);
            return Err(MergeRefused::Claim(e));
        }
        Ok(retired || merged)
    }

    /// This node's earlier ids (a new log epoch) that `theirs` still has live under this node's
    /// name — a peer that has not heard of the handover, or an id this node's own membership lost
    /// with a power loss — taken in and marked removed here first: the merge then keeps them
    /// removed, and this node's gossip hands the name over ([`Membership::succeeds`]).
    fn retire_predecessors_seen(&self, ours: &mut Membership, theirs: &Membership) -> bool {
        let mut retired = false;
        for &old in &self.predecessors {
            let Some(seen) = theirs.get(old) else { continue };
            if seen.state == MemberState::Removed || seen.name != self.name {
                continue;
            }
            if ours.get(old).is_some_and(|held| held.state == MemberState::Removed) {
                continue;
            }
            // Their record, unless ours is newer (then `upsert` refuses and ours is retired).
            let _ = ours.upsert(old, seen.clone());
            let at = Hlc { wall_ms: now_ms().max(seen.version.hlc.wall_ms + 1), logical: 0 };
            if ours.transition(old, MemberState::Removed, at).is_ok() {
                tracing::warn!(previous_id = %old, "a peer still had this node's previous id live; marked removed");
                retired = true;
            }
        }
        retired
    }

    /// The regions of `rules` that no member of the cluster (this node included) is in, and the
    /// regions known. Rules naming unknown regions are refused from peers, counted in
    /// `meridian_peer_refused_total{reason="unknown_region_rules"}` by the caller.
    pub fn unknown_regions(&self, rules: &meridian_replication::residency::RuleSet) -> (Vec<String>, Vec<String>) {
        let mut known: std::collections::BTreeSet<String> =
            self.lock().membership.iter().map(|(_, m)| m.region.clone()).collect();
        known.insert(self.region.clone());
        let unknown: std::collections::BTreeSet<String> =
            rules.rules.iter().flat_map(|r| &r.spec.regions).filter(|r| !known.contains(*r)).cloned().collect();
        (unknown.into_iter().collect(), known.into_iter().collect())
    }

    /// Records that `node` answered or called us just now.
    pub fn heartbeat(&self, node: NodeId) {
        if node != self.local {
            self.lock().detector.heartbeat(node, now_ms());
        }
    }

    /// What the failure detector believes about `node` (this node is always alive).
    pub fn liveness(&self, node: NodeId) -> Liveness {
        if node == self.local {
            return Liveness::Alive;
        }
        self.lock().detector.status(node, now_ms())
    }

    /// Whether requests should be sent to `node` now (alive or merely suspected, or never heard
    /// from yet — a node just learned of gets a chance).
    pub fn reachable(&self, node: NodeId) -> bool {
        !matches!(self.liveness(node), Liveness::Dead)
    }

    /// The member record of `node`.
    pub fn member(&self, node: NodeId) -> Option<Member> {
        self.lock().membership.get(node).cloned()
    }

    /// The address to dial `node` at: its advertised peer address, unless `peer.dial_via` names
    /// another for it.
    pub fn peer_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.member(node).and_then(|m| self.dial_addr(&m))
    }

    fn dial_addr(&self, member: &Member) -> Option<SocketAddr> {
        self.dial_via.get(&member.name).copied().or_else(|| member.peer_addr.parse().ok())
    }

    /// Every other member that is not removed, with its peer address.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let view = self.lock();
        view.membership
            .iter()
            .filter(|(id, m)| *id != self.local && m.state != MemberState::Removed)
            .filter_map(|(id, m)| self.dial_addr(m).map(|addr| (id, addr)))
            .collect()
    }

    /// Successions this node should vouch for (`region::gossip::vouch_for_successors`): a removed
    /// member whose removal is at most `within_ms` old and whose name a live member other than this
    /// node now holds, with that member's id and address.
    pub fn successions(&self, within_ms: u64) -> Vec<(NodeId, NodeId, SocketAddr)> {
        let view = self.lock();
        let since = now_ms().saturating_sub(within_ms);
        let mut out = Vec::new();
        for (retired, old) in view.membership.iter() {
            if old.state != MemberState::Removed || old.version.hlc.wall_ms < since {
                continue;
            }
            for (successor, new) in view.membership.iter() {
                let live = new.state != MemberState::Removed && successor != self.local && successor != retired;
                if live && new.name == old.name && new.region == old.region {
                    if let Some(addr) = self.dial_addr(new) {
                        out.push((retired, successor, addr));
                    }
                }
            }
        }
        out
    }

    /// This node's lifecycle state.
    pub fn local_state(&self) -> MemberState {
        self.member(self.local).map_or(MemberState::Removed, |m| m.state)
    }

    /// Whether this node should pull `partition` from `peer` by anti-entropy (rounds pull what the
    /// puller lacks): this node must be one of its replicas, and `peer` either one too, or a node
    /// that holds data of it without owning it — after a drain, or after placement moved the
    /// partition — which it announces in gossip ([`Cluster::set_peer_handoff`]).
    ///
    /// Across regions only one pair per partition and region pair syncs, so a delta crosses a WAN
    /// link once rather than once per replica: this region's *designated* replica (the first one up,
    /// in placement order) pulls from the other region's designated replica, and each fans what it
    /// got out in its own region by in-region anti-entropy.
    pub fn syncs_with(&self, partition: u16, peer: NodeId) -> bool {
        let view = self.lock();
        let replicas = &view.placements[usize::from(partition)];
        let moving = (&view.moves.old[usize::from(partition)], &view.moves.new[usize::from(partition)]);
        if !replicas.contains(&self.local) {
            // A joining node catches up the partitions it will hold from their old replicas.
            return moving.1.contains(&self.local)
                && view.membership.get(peer).is_some_and(|m| m.region == self.region)
                && (moving.0.contains(&peer) || replicas.contains(&peer));
        }
        let peer_region = view.membership.get(peer).map(|m| m.region.as_str());
        match peer_region {
            Some(region) if region != self.region => {
                let now = now_ms();
                let Some(theirs) = view.remote_placements.get(region) else { return false };
                designated(&view, replicas, now) == Some(self.local)
                    && designated(&view, &theirs[usize::from(partition)], now) == Some(peer)
            }
            _ => {
                replicas.contains(&peer)
                    || moving.0.contains(&peer)
                    || moving.1.contains(&peer)
                    || view.peer_handoff.get(&peer).is_some_and(|held| held.contains(&partition))
            }
        }
    }

    /// The nodes that pull `partition` from this node's log, as this node sees placement now (the
    /// peers whose [`Cluster::syncs_with`] names this node): its region's replicas, old and new
    /// while the partition moves, and — when this node is its region's designated replica — each
    /// other region's designated replica. Nodes that only hold handed-off data pull nothing.
    /// `None` until this node has heard from its region: placement would then name it alone.
    pub fn log_readers(&self, partition: u16) -> Option<Vec<NodeId>> {
        if !self.has_joined() {
            return None;
        }
        let view = self.lock();
        let p = usize::from(partition);
        let mut readers: BTreeSet<NodeId> = view.placements[p]
            .iter()
            .chain(&view.moves.old[p])
            .chain(&view.moves.new[p])
            .copied()
            .filter(|id| *id != self.local)
            .collect();
        let now = now_ms();
        if designated(&view, &view.placements[p], now) == Some(self.local) {
            for theirs in view.remote_placements.values() {
                readers.extend(designated(&view, &theirs[p], now));
            }
        }
        Some(readers.into_iter().collect())
    }

    /// Records the partitions `peer` holds without owning them.
    pub fn set_peer_handoff(&self, peer: NodeId, partitions: Vec<u16>) {
        self.lock().peer_handoff.insert(peer, partitions.into_iter().collect());
    }

    /// Sets the partitions this node holds data of without owning them (recomputed periodically).
    pub fn set_local_handoff(&self, partitions: Vec<u16>) {
        self.lock().local_handoff = partitions;
    }

    /// The partitions this node holds data of without owning them.
    pub fn local_handoff(&self) -> Vec<u16> {
        self.lock().local_handoff.clone()
    }

    /// Records how far a drain's handoff is: partitions covered by all their new owners, of those held.
    pub fn set_handoff_progress(&self, progress: Option<(usize, usize)>) {
        self.lock().handoff_progress = progress;
    }

    /// See [`Cluster::set_handoff_progress`].
    pub fn handoff_progress(&self) -> Option<(usize, usize)> {
        self.lock().handoff_progress
    }

    /// Whether this node has heard from its region: true once its membership names another node,
    /// or when it has no seeds (a region of one). Until then placement would make it the only
    /// replica of everything, so it must not coordinate.
    pub fn has_joined(&self) -> bool {
        self.seeds.is_empty() || self.lock().membership.len() > 1
    }

    /// Finds a member by node name or id (decimal or as displayed).
    pub fn find(&self, name_or_id: &str) -> Option<NodeId> {
        let view = self.lock();
        let named = |id: &NodeId, m: &Member| {
            m.name == name_or_id || id.to_string() == name_or_id || id.0.to_string() == name_or_id
        };
        // A name may be held by a live member and by removed ones (ids it ran under before, or a
        // node replaced under its name): the live one is meant.
        let live = view.membership.iter().find(|(id, m)| m.state != MemberState::Removed && named(id, m));
        let found = live.or_else(|| view.membership.iter().find(|(id, m)| named(id, m))).map(|(id, _)| id);
        found
    }

    /// Moves `node` to `to` (an operator's command); the change spreads by gossip.
    pub fn transition(&self, node: NodeId, to: MemberState) -> Result<(), String> {
        let mut view = self.lock();
        let at = Hlc { wall_ms: now_ms(), logical: 0 };
        view.membership.transition(node, to, at).map_err(|e| e.to_string())?;
        self.replace(&mut view);
        self.note_local_state(&mut view);
        drop(view);
        self.persist_latest().map_err(|e| e.to_string())
    }

    /// Every member with its liveness and partition count, in node order.
    pub fn members(&self) -> Vec<MemberView> {
        let view = self.lock();
        let now = now_ms();
        let mut owned: BTreeMap<NodeId, usize> = BTreeMap::new();
        for replicas in view.placements.iter().chain(view.remote_placements.values().flatten()) {
            for id in replicas {
                *owned.entry(*id).or_default() += 1;
            }
        }
        view.membership
            .iter()
            .map(|(id, m)| MemberView {
                id,
                member: m.clone(),
                liveness: if id == self.local { "self".into() } else { view.detector.status(id, now).to_string() },
                partitions: owned.get(&id).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// The first replica in `replicas` that is up (alive before suspected), as this node sees it.
fn designated(view: &View, replicas: &[NodeId], now: u64) -> Option<NodeId> {
    let status = |id: NodeId| {
        if id == view.local {
            Liveness::Alive
        } else {
            view.detector.status(id, now)
        }
    };
    replicas
        .iter()
        .copied()
        .find(|id| status(*id) == Liveness::Alive)
        .or_else(|| replicas.iter().copied().find(|id| status(*id) != Liveness::Dead))
        .or_else(|| replicas.first().copied())
}

/// The replicas of every partition in every region but `local_region`, by region.
fn compute_remote_placements(
    membership: &Membership,
    local_region: &str,
    rf: usize,
) -> BTreeMap<String, Vec<Vec<NodeId>>> {
    let regions: std::collections::BTreeSet<String> = membership
        .iter()
        .filter(|(_, m)| m.region != local_region && m.state != MemberState::Removed)
        .map(|(_, m)| m.region.clone())
        .collect();
    regions
        .into_iter()
        .map(|region| {
            let placements = compute_placements(membership, &region, rf);
            (region, placements)
        })
        .filter(|(_, placements)| placements.iter().any(|replicas| !replicas.is_empty()))
        .collect()
}

/// How one partition's old replica set in one region changes with a membership transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetChange {
    /// The partition.
    pub partition: u16,
    /// Its old set now (placement over active and draining members), sorted.
    pub before: Vec<NodeId>,
    /// Its old set after the transition, sorted.
    pub after: Vec<NodeId>,
}

impl SetChange {
    /// Replicas that enter the set.
    pub fn entering(&self) -> Vec<NodeId> {
        self.after.iter().filter(|n| !self.before.contains(n)).copied().collect()
    }

    /// Replicas that leave the set.
    pub fn leaving(&self) -> Vec<NodeId> {
        self.before.iter().filter(|n| !self.after.contains(n)).copied().collect()
    }
}

/// The replicas of `partition` among `nodes`, sorted by id.
fn sorted_replicas(nodes: &[meridian_replication::NodeSlot], partition: u16, rf: usize) -> Vec<NodeId> {
    let mut ids = place(&partition.to_be_bytes(), nodes, rf).ids();
    ids.sort_unstable();
    ids
}

/// Each partition's replica sets in one region while placement changes: `old` over the members
/// that held placements before the changes in progress (active and draining), `new` over those that
/// will after them (active and joining). Equal when nothing moves.
#[derive(Clone, Debug, Default)]
struct MoveSets {
    old: Vec<Vec<NodeId>>,
    new: Vec<Vec<NodeId>>,
}

impl MoveSets {
    /// The partitions whose old and new replicas differ, with both sets.
    fn moving(&self) -> impl Iterator<Item = (u16, &Vec<NodeId>, &Vec<NodeId>)> {
        self.old.iter().zip(&self.new).enumerate().filter(|(_, (old, new))| old != new).map(|(p, (old, new))| {
            let p = p as u16;
            (p, old, new)
        })
    }
}

/// The move sets of the local region and of every other region. With `pending` off (a test knob),
/// both sets are the current placement: moves are instant.
fn compute_moves(
    membership: &Membership,
    local_region: &str,
    rf: usize,
    pending: bool,
) -> (MoveSets, BTreeMap<String, MoveSets>) {
    let of_region = |region: &str| {
        if !pending {
            let owners = compute_placements(membership, region, rf);
            return MoveSets { old: owners.clone(), new: owners };
        }
        let (before, after) = (membership.serving_nodes(region), membership.future_placement_nodes(region));
        MoveSets {
            old: (0..PARTITIONS).map(|p| sorted_replicas(&before, p, rf)).collect(),
            new: (0..PARTITIONS).map(|p| sorted_replicas(&after, p, rf)).collect(),
        }
    };
    let remote: std::collections::BTreeSet<String> = membership
        .iter()
        .filter(|(_, m)| m.region != local_region && m.state != MemberState::Removed)
        .map(|(_, m)| m.region.clone())
        .collect();
    (of_region(local_region), remote.iter().map(|region| (region.clone(), of_region(region))).collect())
}

/// The replicas of every partition over the region's active members.
fn compute_placements(membership: &Membership, region: &str, rf: usize) -> Vec<Vec<NodeId>> {
    let nodes = membership.placement_nodes(region);
    (0..PARTITIONS).map(|p| place(&p.to_be_bytes(), &nodes, rf).ids()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;

    fn config(name: &str, zone: &str, port: u16) -> Config {
        let mut config = Config { node_name: name.into(), zone: zone.into(), ..Config::default() };
        config.peer.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        config
    }

    fn open(name: &str, zone: &str, port: u16, id: u64) -> Arc<Cluster> {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let config = config(name, zone, port);
        Cluster::open(Arc::new(MemoryEngine::new()), NodeId(id), &config, config.peer.listen.unwrap(), addr, addr)
            .unwrap()
    }

    #[test]
    fn merged_views_agree_on_placement_and_spread_zones() {
        let nodes: Vec<_> =
            (1..=5).map(|i| open(&format!("n{i}"), &format!("z{}", (i - 1) % 3 + 1), 9000 + i as u16, i)).collect();
        for a in &nodes {
            for b in &nodes {
                a.merge(&b.snapshot()).unwrap();
            }
        }
        let first = nodes[0].all_placements();
        for node in &nodes {
            assert_eq!(node.all_placements(), first, "every node computes the same placement");
            assert_eq!(node.digest(), nodes[0].digest());
        }
        for (p, replicas) in first.iter().enumerate() {
            assert_eq!(replicas.len(), 3, "partition {p}");
            let zones: std::collections::BTreeSet<_> =
                replicas.iter().map(|id| nodes[0].member(*id).unwrap().zone).collect();
            assert_eq!(zones.len(), 3, "partition {p} spans three zones");
        }
        let owned: Vec<usize> = nodes[0].members().iter().map(|m| m.partitions).collect();
        assert_eq!(owned.iter().sum::<usize>(), 256 * 3);
        assert!(owned.iter().all(|n| *n > 100), "placement is roughly balanced: {owned:?}");
    }

    #[test]
    fn drain_moves_placements_away_and_keeps_the_node_syncing_its_handoff() {
        let nodes: Vec<_> = (1..=4).map(|i| open(&format!("n{i}"), "z", 9100 + i as u16, i)).collect();
        for a in &nodes {
            for b in &nodes {
                a.merge(&b.snapshot()).unwrap();
            }
        }
        let held: Vec<u16> = (0..PARTITIONS).filter(|p| nodes[0].is_replica(*p)).collect();
        assert!(!held.is_empty());
        nodes[1].transition(NodeId(1), MemberState::Draining).unwrap();
        nodes[0].merge(&nodes[1].snapshot()).unwrap();
        assert!((0..PARTITIONS).all(|p| !nodes[0].is_replica(p)), "a draining node takes no placements");
        let p = held[0];
        let new_replicas = nodes[0].replicas(p);
        assert!(new_replicas.iter().all(|id| !nodes[0].syncs_with(p, *id)), "a drainer pulls nothing");
        let owner = nodes.iter().find(|n| n.local() == new_replicas[0]).unwrap();
        owner.merge(&nodes[1].snapshot()).unwrap();
        assert!(owner.syncs_with(p, NodeId(1)), "while the partition moves, its new owners pull from the drainer");
        assert_eq!(nodes[0].local_state(), MemberState::Draining);
        // With the moves instant (the test knob), only what the drainer announces is pulled.
        let mut instant = config("n9", "z", 9109);
        instant.peer.pending_replicas = false;
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let owner = Cluster::open(Arc::new(MemoryEngine::new()), NodeId(9), &instant, addr, addr, addr).unwrap();
        for n in &nodes {
            owner.merge(&n.snapshot()).unwrap();
        }
        let p = (0..PARTITIONS).find(|p| owner.is_replica(*p) && held.contains(p)).unwrap();
        assert!(!owner.syncs_with(p, NodeId(1)));
        owner.set_peer_handoff(NodeId(1), vec![p]);
        assert!(owner.syncs_with(p, NodeId(1)), "new owners pull what the drainer announces");
    }

    /// Whoever pulls a partition from a node is counted among the readers of its log there, so a
    /// cut below what the readers hold never leaves a puller short (`store/stability.rs`).
    #[test]
    fn every_node_that_pulls_a_partition_reads_its_log() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let open_in = |region: &str, i: u64, activate: bool| {
            let mut config = config(&format!("n{i}"), &format!("z{}", i % 3), 9400 + i as u16);
            config.region = region.into();
            config.peer.auto_activate = activate;
            Cluster::open(Arc::new(MemoryEngine::new()), NodeId(i), &config, addr, addr, addr).unwrap()
        };
        let mut nodes: Vec<_> = (1..=8).map(|i| open_in(if i <= 4 { "a" } else { "b" }, i, true)).collect();
        nodes.push(open_in("a", 9, false));
        let mut seeded = config("lone", "z", 9499);
        seeded.peer.seeds = vec![addr];
        let lone = Cluster::open(Arc::new(MemoryEngine::new()), NodeId(99), &seeded, addr, addr, addr).unwrap();
        assert!(lone.log_readers(0).is_none(), "a node that has not heard from its seeds knows no readers");
        for a in &nodes {
            for b in &nodes {
                a.merge(&b.snapshot()).unwrap();
                a.heartbeat(b.local());
            }
        }
        let mut remote = 0;
        for p in 0..PARTITIONS {
            for a in &nodes {
                let readers = a.log_readers(p).unwrap();
                assert!(!readers.contains(&a.local()), "partition {p}");
                for b in nodes.iter().filter(|b| b.local() != a.local() && b.syncs_with(p, a.local())) {
                    assert!(readers.contains(&b.local()), "partition {p}: {} pulls from {}", b.local(), a.local());
                    remote += usize::from(b.region() != a.region());
                }
            }
        }
        assert!(remote > 0, "designated replicas pull across regions");
    }

    /// A joining node and a draining one make their partitions *move*: quorums count the old and
    /// the new replicas as two sets until the operator ends the move (activate, remove); the joiner
    /// pulls what it will hold; with `peer.pending_replicas` off nothing ever moves.
    #[test]
    fn a_move_counts_old_and_new_replicas_until_it_ends() {
        use meridian_client::proto::Consistency;
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut nodes: Vec<_> = (1..=3).map(|i| open(&format!("n{i}"), "z", 9300 + i as u16, i)).collect();
        let mut joiner = config("n4", "z", 9304);
        joiner.peer.auto_activate = false;
        nodes.push(Cluster::open(Arc::new(MemoryEngine::new()), NodeId(4), &joiner, addr, addr, addr).unwrap());
        for a in &nodes {
            for b in &nodes {
                a.merge(&b.snapshot()).unwrap();
            }
        }
        let (n1, n4) = (&nodes[0], &nodes[3]);
        assert_eq!(n4.local_state(), MemberState::Joining);
        let moving: Vec<u16> =
            (0..PARTITIONS).filter(|p| n1.quorum_sets(Consistency::LocalQuorum, *p, None).is_moving()).collect();
        assert!(!moving.is_empty() && moving.len() < usize::from(PARTITIONS), "{} moving", moving.len());
        for &p in &moving {
            let sets = n1.quorum_sets(Consistency::LocalQuorum, p, None);
            let (old, new) = (&sets.sets()[0], &sets.sets()[1]);
            assert!(!old.contains(&NodeId(4)) && new.contains(&NodeId(4)), "partition {p}: {sets:?}");
            assert_eq!(sets.all().len(), 4);
            assert!(n4.syncs_with(p, old[0]), "the joiner pulls partition {p} from its old replicas");
            assert!(!n4.is_replica(p), "a joiner owns nothing yet");
        }
        // Activating n4 changes the old sets exactly where it joins: n4 enters, the node it outranks leaves.
        let activating = n1.old_set_changes(NodeId(4), MemberState::Active);
        assert_eq!(activating.iter().map(|c| c.partition).collect::<Vec<_>>(), moving);
        assert!(activating.iter().all(|c| c.entering() == vec![NodeId(4)] && c.leaving().len() == 1));
        // Giving up the join, or draining, leaves the old sets alone.
        assert!(n1.old_set_changes(NodeId(4), MemberState::Removed).is_empty());
        assert!(n1.old_set_changes(NodeId(2), MemberState::Draining).is_empty());
        // A node of another region sees the same change (an operator may ask any node).
        let mut elsewhere = config("n7", "z", 9307);
        elsewhere.region = "eu".into();
        let n7 = Cluster::open(Arc::new(MemoryEngine::new()), NodeId(7), &elsewhere, addr, addr, addr).unwrap();
        n7.merge(&n1.snapshot()).unwrap();
        assert_eq!(n7.old_set_changes(NodeId(4), MemberState::Active), activating);
        // The pending sets stay out of routing: only active members coordinate.
        assert!((0..PARTITIONS).all(|p| !n1.replicas(p).contains(&NodeId(4))));

        n1.transition(NodeId(4), MemberState::Active).unwrap();
        assert!((0..PARTITIONS).all(|p| !n1.quorum_sets(Consistency::LocalQuorum, p, None).is_moving()));

        n1.transition(NodeId(1), MemberState::Draining).unwrap();
        let removing = n1.old_set_changes(NodeId(1), MemberState::Removed);
        assert!(!removing.is_empty());
        for c in &removing {
            assert_eq!(c.leaving(), vec![NodeId(1)]);
            assert_eq!(c.entering().len(), 1);
            let sets = n1.quorum_sets(Consistency::Quorum, c.partition, None);
            assert!(sets.is_moving() && sets.sets()[0].contains(&NodeId(1)), "partition {}: {sets:?}", c.partition);
            assert_eq!(sets.sets()[1], c.after, "removing the drainer makes the old set the new one");
        }
        n1.transition(NodeId(1), MemberState::Removed).unwrap();
        assert!((0..PARTITIONS).all(|p| !n1.quorum_sets(Consistency::LocalQuorum, p, None).is_moving()));

        let mut instant = config("n5", "z", 9305);
        instant.peer.pending_replicas = false;
        let n5 = Cluster::open(Arc::new(MemoryEngine::new()), NodeId(5), &instant, addr, addr, addr).unwrap();
        let mut joiner = config("n6", "z", 9306);
        joiner.peer.auto_activate = false;
        let n6 = Cluster::open(Arc::new(MemoryEngine::new()), NodeId(6), &joiner, addr, addr, addr).unwrap();
        n5.merge(&nodes[1].snapshot()).unwrap();
        n5.merge(&n6.snapshot()).unwrap();
        assert!((0..PARTITIONS).all(|p| !n5.quorum_sets(Consistency::LocalQuorum, p, None).is_moving()));
        assert!(n5.old_set_changes(NodeId(6), MemberState::Active).is_empty());
    }

    #[test]
    fn membership_survives_a_restart_and_removal_sticks() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = Cluster::open(engine.clone(), NodeId(7), &config("n7", "z", 9200), addr, addr, addr).unwrap();
        let b = open("n8", "z", 9201, 8);
        a.merge(&b.snapshot()).unwrap();
        drop(a);
        let a = Cluster::open(engine.clone(), NodeId(7), &config("n7", "z", 9200), addr, addr, addr).unwrap();
        assert!(a.member(NodeId(8)).is_some(), "peers are remembered across restarts");
        a.transition(NodeId(7), MemberState::Removed).unwrap();
        drop(a);
        let a = Cluster::open(engine, NodeId(7), &config("n7", "z", 9200), addr, addr, addr).unwrap();
        assert_eq!(a.local_state(), MemberState::Removed, "a removed node does not re-join by restarting");
        assert!((0..PARTITIONS).all(|p| !a.is_replica(p)));
    }
}
