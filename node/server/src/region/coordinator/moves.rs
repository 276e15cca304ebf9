//! Confirming a move before an operator ends it. While a node joins or drains, quorums count each
//! moving partition's old and new replicas together ([`Cluster::quorum_sets`]); ending the move —
//! activating the joiner, removing the drained node — makes the new replicas alone count. That is
//! safe once each replica coming in holds what each replica going out held: the new set is then the
//! old one with members replaced by ones that know at least as much, so every quorum of it — local
//! or global, across regions — sees what the matching quorum of the old set saw.
//!
//! * **Activating a joining node** waits until, for every partition it joins, its version vector
//!   covers those of the replicas it displaces (which must answer) and of the staying replicas that
//!   answer (their logs name every write they coordinated, including ones that reached others only
//!   as a read's write-back, which moves no version vector).
//! * **Removing a draining node** waits until, for every partition it leaves, the version vector
//!   of each replica taking its place covers the draining node's. A draining node the failure
//!   detector judges dead cannot be measured: then each replica taking its place must cover the
//!   staying replicas that answer, and what only the dead node held is lost, as with the forced
//!   removal of an active node.
//!
//! Version vectors are read from the replicas going out before the ones coming in, so writes that
//! land in between (they go to both sets) never make a caught-up replica look behind.
//!
//! [`Cluster::quorum_sets`]: crate::region::cluster::Cluster::quorum_sets

use futures::StreamExt as _;
use meridian_crdt::{NodeId, VersionVector};
use meridian_replication::antientropy::{PartitionId, SyncStore as _};
use meridian_replication::{Liveness, MemberState};

use super::Coordinator;
use crate::peer::protocol::{PeerMessageV1, PeerReplyV1};
use crate::region::cluster::PartitionMove;

/// Partitions measured at once while confirming a move.
const CONCURRENT_PARTITIONS: usize = 16;

/// Which end of a move an operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MoveEnd {
    /// Activating a joining node.
    Activate,
    /// Removing a draining node that answers.
    Remove,
    /// Removing a draining node the failure detector judges dead.
    RemoveDead,
}

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

    /// Whether an operator's `activate` (`removing` false) or `remove` (`removing` true) of `node`
    /// may end its move now (see the module docs). Only activating a joining node and removing a
    /// draining one end a move; anything else passes. `Err` says how far the move is.
    pub async fn check_move_confirmed(&self, node: NodeId, removing: bool) -> Result<(), String> {
        let Some(member) = self.cluster.member(node) else { return Ok(()) };
        let end = match (member.state, removing) {
            (MemberState::Joining, false) => MoveEnd::Activate,
            (MemberState::Draining, true) if self.cluster.liveness(node) == Liveness::Dead => MoveEnd::RemoveDead,
            (MemberState::Draining, true) => MoveEnd::Remove,
            _ => return Ok(()),
        };
        let moves = self.cluster.moving_partitions_of(node);
        if moves.is_empty() {
            return Ok(());
        }
        if end == MoveEnd::RemoveDead {
            tracing::warn!(%node, "removing a draining node that is down: what only it held is lost");
        }
        let total = moves.len();
        let confirmed = futures::stream::iter(moves)
            .map(|m| async move { self.partition_move_confirmed(node, end, &m).await })
            .buffer_unordered(CONCURRENT_PARTITIONS)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        if confirmed == total {
            return Ok(());
        }
        let name = member.name;
        Err(match end {
            MoveEnd::Activate => format!(
                "{name} has caught up {confirmed} of the {total} partitions it joins (its version vector must cover \
                 those of the replicas it displaces, which must answer, and of the staying ones; anti-entropy is \
                 copying them); until then quorums count it beside the old replicas. Retry shortly"
            ),
            MoveEnd::Remove | MoveEnd::RemoveDead => format!(
                "{confirmed} of the {total} partitions {name} leaves are held by the replicas taking its place \
                 (each must answer and cover what {name} holds; anti-entropy is copying them); until then quorums \
                 still count {name}. Retry shortly"
            ),
        })
    }

    /// Whether one partition's move can end (see the module docs): every version vector the rule
    /// names is read, those of the replicas going out first.
    async fn partition_move_confirmed(&self, node: NodeId, end: MoveEnd, m: &PartitionMove) -> bool {
        let p = m.partition;
        // (what must be covered, and whether its replica must answer), then who must cover it.
        let (sources, coverers): (Vec<(NodeId, bool)>, Vec<NodeId>) = match end {
            MoveEnd::Activate => {
                let displaced = m.outgoing().into_iter().map(|n| (n, true));
                (displaced.chain(m.staying().into_iter().map(|n| (n, false))).collect(), vec![node])
            }
            MoveEnd::Remove => (vec![(node, true)], m.incoming()),
            MoveEnd::RemoveDead => (m.staying().into_iter().map(|n| (n, false)).collect(), m.incoming()),
        };
        let mut covered = Vec::new();
        for (source, required) in sources {
            match self.partition_vv_on(source, p).await {
                Some(vv) => covered.push(vv),
                None if required => return false,
                None => {}
            }
        }
        for coverer in coverers {
            let Some(theirs) = self.partition_vv_on(coverer, p).await else { return false };
            if !covered.iter().all(|vv| theirs.dominates(vv)) {
                return false;
            }
        }
        true
    }
}
