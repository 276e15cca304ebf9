//! The causal visibility gate.
//!
//! A session's causal token is a version vector over the nodes' write logs: everything the session has
//! read or written. A replica may serve a `causal` read only once its own version vector dominates the
//! token — otherwise it would show the session a state older than one it has already seen (breaking
//! monotonic reads or read-your-writes). The node waits, bounded, for the gap to close (replication
//! brings the missing writes) and fails with a clear error when it does not.
//!
//! Entries for nodes whose writes this replica may never hold (a key barred from its region by a
//! placement rule) are excused by the caller through `ignore`, so such dependencies are not waited on.

use meridian_crdt::{NodeId, VersionVector};

/// What a replica lacks to serve a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalGap {
    /// For each node the replica is behind on: (node, have, need).
    pub behind: Vec<(NodeId, u64, u64)>,
}

impl std::fmt::Display for CausalGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> =
            self.behind.iter().map(|(node, have, need)| format!("node {node}: have {have}, need {need}")).collect();
        f.write_str(&parts.join("; "))
    }
}

/// `None` when `local` has seen everything in `token` (ignoring nodes for which `ignore` is true),
/// else the gap.
pub fn causal_gap(local: &VersionVector, token: &VersionVector, ignore: impl Fn(NodeId) -> bool) -> Option<CausalGap> {
    let behind: Vec<_> = token
        .iter()
        .filter(|(node, need)| !ignore(*node) && local.get(*node) < *need)
        .map(|(node, need)| (node, local.get(node), need))
        .collect();
    (!behind.is_empty()).then_some(CausalGap { behind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_lists_only_nodes_behind() {
        let local: VersionVector = [(NodeId(1), 5), (NodeId(2), 1)].into_iter().collect();
        let token: VersionVector = [(NodeId(1), 3), (NodeId(2), 4), (NodeId(3), 1)].into_iter().collect();
        let gap = causal_gap(&local, &token, |_| false).unwrap();
        assert_eq!(gap.behind, vec![(NodeId(2), 1, 4), (NodeId(3), 0, 1)]);
        assert!(causal_gap(&local, &token, |n| n != NodeId(1)).is_none());
        assert!(causal_gap(&local, &VersionVector::new(), |_| false).is_none());
    }
}
