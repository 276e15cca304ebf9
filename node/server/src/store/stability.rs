//! What other nodes are known to hold of each partition, so the delta log can be cut below what
//! every node that reads it already has (causal stability), long before the retention runs out.
//!
//! A node's log of a partition is read only to answer anti-entropy offers: the records a puller's
//! version vector lacks (`meridian_replication::antientropy::serve`). A record every puller holds
//! will never be asked for again, so it may go; a puller that was not counted (placement changed
//! since, or a replica restored from an old backup) gets `Truncated` and catches up through the
//! digest fallback, as after the retention. Cutting below stability therefore changes which path
//! a peer takes, never what it ends with.
//!
//! What a peer holds is learnt from what it says in anti-entropy, never guessed:
//! - the vector of each `Offer` it sends (what it holds, gap-free, when it sent it);
//! - a `VvCombined` comparison (protocol version 3 and later) that found its vectors equal to this
//!   node's. A peer of an older version says nothing of the partitions in sync with this node, so
//!   they are cut by age only while it is a reader.
//!
//! A node's vector only grows, so everything learnt stays a lower bound of what it holds now: the
//! book keeps the entrywise maximum of what each peer reported. It lives in memory; after a
//! restart nothing is stable until every reader has spoken again (one anti-entropy pass).

use std::collections::HashMap;
use std::sync::Mutex;

use meridian_crdt::{NodeId, VersionVector};

/// The vectors peers reported, per `(partition, peer)`.
#[derive(Debug, Default)]
pub struct PeerVectors {
    by_key: Mutex<HashMap<(u16, NodeId), VersionVector>>,
}

/// What every reader of a partition's log holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stable {
    /// Nobody reads this log (a node alone in its cluster, or a partition with no other replica
    /// anywhere): every record but the newest may go.
    Everything,
    /// Every reader holds each origin's records up to its entry here.
    Upto(VersionVector),
}

impl Stable {
    /// The highest position of `origin` every reader holds.
    pub fn upto(&self, origin: NodeId) -> u64 {
        match self {
            Stable::Everything => u64::MAX,
            Stable::Upto(vv) => vv.get(origin),
        }
    }
}

impl PeerVectors {
    /// Knows nothing yet.
    pub fn new() -> PeerVectors {
        PeerVectors::default()
    }

    /// `peer` holds every record `vv` names of `partition`.
    pub fn record(&self, partition: u16, peer: NodeId, vv: &VersionVector) {
        let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        by_key.entry((partition, peer)).or_default().merge(vv);
    }

    /// What every node of `readers` is known to hold of `partition`, or `None` while one of them
    /// has not reported yet. `origins` are the origins to answer for (this node's vector).
    pub fn stable(&self, partition: u16, readers: &[NodeId], origins: &VersionVector) -> Option<Stable> {
        if readers.is_empty() {
            return Some(Stable::Everything);
        }
        let by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let known: Vec<&VersionVector> =
            readers.iter().map(|reader| by_key.get(&(partition, *reader))).collect::<Option<_>>()?;
        let floor = origins
            .iter()
            .map(|(origin, _)| (origin, known.iter().map(|vv| vv.get(origin)).min().unwrap_or(0)))
            .filter(|(_, seq)| *seq > 0)
            .collect();
        Some(Stable::Upto(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(u64, u64)]) -> VersionVector {
        entries.iter().map(|(node, seq)| (NodeId(*node), *seq)).collect()
    }

    #[test]
    fn stable_is_the_least_any_reader_holds_and_unknown_until_all_spoke() {
        let book = PeerVectors::new();
        let mine = vv(&[(1, 10), (2, 7), (3, 4)]);
        assert_eq!(book.stable(5, &[], &mine), Some(Stable::Everything), "nobody reads the log");
        book.record(5, NodeId(8), &vv(&[(1, 9), (2, 7)]));
        assert_eq!(book.stable(5, &[NodeId(8), NodeId(9)], &mine), None, "node 9 never reported");
        book.record(5, NodeId(9), &vv(&[(1, 4), (2, 8), (3, 1)]));
        let stable = book.stable(5, &[NodeId(8), NodeId(9)], &mine).unwrap();
        assert_eq!(stable, Stable::Upto(vv(&[(1, 4), (2, 7)])), "origin 3: node 8 holds none of it");
        assert_eq!((stable.upto(NodeId(1)), stable.upto(NodeId(3))), (4, 0));
        assert_eq!(book.stable(6, &[NodeId(8)], &mine), None, "reports are per partition");
    }

    #[test]
    fn an_older_report_never_lowers_what_is_known() {
        let book = PeerVectors::new();
        let mine = vv(&[(1, 10)]);
        book.record(0, NodeId(8), &vv(&[(1, 6)]));
        book.record(0, NodeId(8), &vv(&[(1, 3)]));
        assert_eq!(book.stable(0, &[NodeId(8)], &mine).unwrap().upto(NodeId(1)), 6);
    }
}
