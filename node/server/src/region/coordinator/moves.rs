//! Confirming a move before an operator ends it. Every quorum counts a partition's *old* replica
//! set (placement over active and draining members), and during a move its new one too
//! ([`Cluster::quorum_sets`]). Starting a move (a node joins, or drains) leaves the old sets alone.
//! Ending one — activating a joiner, removing a drained node — changes them: some replicas enter a
//! partition's old set, some leave it. That is safe once each replica entering holds what the old
//! set held: the new old set then answers at least what the previous one did, so every quorum of
//! it — local, or global across regions — sees every write a quorum acknowledged before.
//!
//! So for each partition whose old set the transition changes, each entering replica's version
//! vector must cover those of *every* member of the current old set, and all of them must answer.
//! Covering the staying members too is not redundant: a quorum read's write-back puts a state on
//! replicas without moving their version vectors, and the write it carries is in the log of its
//! coordinator, which was one of the old set. A draining node the failure detector judges dead is
//! the one exception (it cannot answer, and waiting would block the region for good): what only it
//! held is lost, as with the forced removal of an active node, which is not checked at all.
//!
//! **One move at a time.** Ending a move is only safe this way while it is the region's only
//! move: writes made during it rely on a majority of the new sets, which another move's end could
//! change. So a drain starts only when nothing else in the region joins or drains, and a joiner is
//! activated only while no node drains (several joiners may be activated one after another).
//!
//! Version vectors are read from the current members before the entering ones, so writes that land
//! in between (they reach both) never make a caught-up replica look behind.
//!
//! [`Cluster::quorum_sets`]: crate::region::cluster::Cluster::quorum_sets

use futures::StreamExt as _;
use meridian_crdt::{NodeId, VersionVector};
use meridian_replication::antientropy::{PartitionId, SyncStore as _};
use meridian_replication::{Liveness, MemberState};

use super::Coordinator;
use crate::peer::protocol::{PeerMessageV1, PeerReplyV1};
use crate::region::cluster::SetChange;

/// Why an operator's membership change is refused.
#[derive(Debug, thiserror::Error)]
pub enum MoveRefused {
    /// Another move in the region must end first.
    #[error("{0}")]
    Conflict(String),
    /// The copies the move relies on are not complete yet: retry.
    #[error("{0}")]
    NotYet(String),
}

/// Partitions measured at once while confirming a move.
const CONCURRENT_PARTITIONS: usize = 16;

impl Coordinator {
    /// The version vector of `partition` on `node` (this node's from its own store); `None` when
    /// the node is down or does not answer in time.
    pub(super) async fn partition_vv_on(&self, node: NodeId, partition: u16) -> Option<VersionVector> {
        if node == self.local {
            let store = self.store.clone();
            return tokio::task::spawn_blocking(move || store.partition_vv(PartitionId(partition)).ok())
                .await
                .ok()
                .flatten();
        }
        if !self.cluster.reachable(node) {
            return None;
        }
        match self.call(node, PeerMessageV1::PartitionVv { partition }, self.peer_timeout).await {
            Ok(PeerReplyV1::Vv(vv)) => Some(vv),
            _ => None,
        }
    }

    /// Whether an operator may move `node` to `to` now (see the module docs): one move at a time
    /// in a region, and a move ends only once the replicas taking over hold what the current ones
    /// hold. The forced removal of an active node is not checked.
    pub async fn check_membership_change(&self, node: NodeId, to: MemberState) -> Result<(), MoveRefused> {
        let Some(member) = self.cluster.member(node) else { return Ok(()) };
        if !self.cluster.pending_replicas() {
            return Ok(());
        }
        // One move at a time: a drain starts only in a region where nothing moves, and a joiner is
        // activated only once no node drains (several joiners may be activated one by one).
        let busy = self.cluster.moving_members(&member.region, node);
        let blocking: Vec<&(String, MemberState)> = match to {
            MemberState::Draining => busy.iter().collect(),
            MemberState::Active => busy.iter().filter(|(_, state)| *state == MemberState::Draining).collect(),
            _ => Vec::new(),
        };
        if let Some((other, state)) = blocking.first() {
            return Err(MoveRefused::Conflict(format!(
                "{other} is {state} in region {}: end that move first (activate or remove it), one move at a time",
                member.region
            )));
        }
        let ends_a_move = matches!(
            (member.state, to),
            (MemberState::Joining, MemberState::Active) | (MemberState::Draining, MemberState::Removed)
        );
        if !ends_a_move {
            return Ok(());
        }
        let changes = self.cluster.old_set_changes(node, to);
        if changes.is_empty() {
            return Ok(());
        }
        let removing = to == MemberState::Removed;
        let dead = (removing && self.cluster.liveness(node) == Liveness::Dead).then_some(node);
        if dead.is_some() {
            tracing::warn!(%node, "removing a draining node that is down: what only it held is lost");
        }
        let total = changes.len();
        let confirmed = futures::stream::iter(changes)
            .map(|change| async move { self.set_change_covered(&change, dead).await })
            .buffer_unordered(CONCURRENT_PARTITIONS)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        if confirmed == total {
            return Ok(());
        }
        let name = member.name;
        let what = if removing { "removing" } else { "activating" };
        Err(MoveRefused::NotYet(format!(
            "{what} {name} changes the replicas of {total} partitions; in {confirmed} of them the replicas taking over \
             already hold what the current ones hold (their version vectors must cover those of every current \
             replica, each of which must answer; anti-entropy is copying them). Until then quorums keep counting the \
             current replicas. Retry shortly"
        )))
    }

    /// Whether every replica entering the partition's old set covers every member of it now (all
    /// must answer, but for `dead`). When the set shrinks (a region at or below rf loses a node),
    /// nothing replaces the leaving replica: every staying one must cover it instead, or a write
    /// it shared with a bare majority would be left on less than a majority of the smaller set.
    async fn set_change_covered(&self, change: &SetChange, dead: Option<NodeId>) -> bool {
        let p = change.partition;
        let mut current = Vec::with_capacity(change.before.len());
        for &member in change.before.iter().filter(|n| Some(**n) != dead) {
            match self.partition_vv_on(member, p).await {
                Some(vv) => current.push(vv),
                None => return false,
            }
        }
        let mut coverers = change.entering();
        if change.after.len() < change.before.len() {
            coverers.extend(change.after.iter().filter(|n| change.before.contains(n)));
        }
        for entering in coverers {
            let Some(theirs) = self.partition_vv_on(entering, p).await else { return false };
            if !current.iter().all(|vv| theirs.dominates(vv)) {
                return false;
            }
        }
        true
    }
}
