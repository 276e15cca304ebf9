//! Confirming a move before an operator ends it. While a node joins or drains, quorums count each
//! moving partition's old and new replicas together ([`Cluster::quorum_sets`]); ending the move —
//! activating the joiner, removing the drained node — makes the new replicas alone count, which
//! is only safe once they hold what the old majority acknowledged:
//!
//! * **Activating a joining node** waits until, for every partition it joins, its version vector
//!   covers those of a majority of the partition's old replicas. Every write acknowledged before
//!   the move is on a majority of the old replicas, so it is on one of those, so it is on the
//!   joiner; writes during the move reached a majority of the new set anyway.
//! * **Removing a draining node** waits until, for every partition it leaves, each new replica's
//!   version vector covers the draining node's. A draining node the failure detector judges dead
//!   is removed at once (it cannot be measured, and waiting would block the region for good): what
//!   only it held is lost, as with the forced removal of an active node.
//!
//! [`Cluster::quorum_sets`]: crate::region::cluster::Cluster::quorum_sets

use futures::StreamExt as _;
use meridian_crdt::{NodeId, VersionVector};
use meridian_replication::antientropy::{PartitionId, SyncStore as _};
use meridian_replication::quorum::majority;
use meridian_replication::{Liveness, MemberState};

use super::Coordinator;
use crate::peer::protocol::{PeerMessageV1, PeerReplyV1};

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

    /// Whether ending the move of `node` — activating it while it joins, removing it while it
    /// drains — is safe now (see the module docs). `Err` says how far the move is.
    pub async fn check_move_confirmed(&self, node: NodeId) -> Result<(), String> {
        let Some(member) = self.cluster.member(node) else { return Ok(()) };
        let partitions = self.cluster.moving_partitions_of(node);
        if partitions.is_empty() {
            return Ok(());
        }
        let joining = member.state == MemberState::Joining;
        if !joining && self.cluster.liveness(node) == Liveness::Dead {
            tracing::warn!(%node, "removing a draining node that is down: what only it held is lost");
            return Ok(());
        }
        let total = partitions.len();
        let confirmed = futures::stream::iter(partitions)
            .map(|(partition, others)| async move {
                if joining && others.is_empty() {
                    // The region had no replica of it before: nothing acknowledged to catch up.
                    return true;
                }
                let Some(theirs) = self.partition_vv_on(node, partition).await else { return false };
                let mut covered = 0;
                for other in &others {
                    let Some(vv) = self.partition_vv_on(*other, partition).await else { continue };
                    let ok = if joining { theirs.dominates(&vv) } else { vv.dominates(&theirs) };
                    covered += usize::from(ok);
                }
                // A joiner must cover a majority of the old replicas; every new replica must cover
                // a draining node.
                covered >= if joining { majority(others.len()) } else { others.len() }
            })
            .buffer_unordered(CONCURRENT_PARTITIONS)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        if confirmed == total {
            return Ok(());
        }
        let name = member.name;
        Err(if joining {
            format!(
                "{name} has caught up {confirmed} of the {total} partitions it joins (its version vector must cover a \
                 majority of each one's current replicas; anti-entropy is copying them); until then quorums count it \
                 beside the old replicas. Retry shortly"
            )
        } else {
            format!(
                "{confirmed} of the {total} partitions {name} leaves are held by all their new replicas (each must \
                 cover what {name} holds; anti-entropy is copying them); until then quorums still count {name}. Retry \
                 shortly"
            )
        })
    }
}
