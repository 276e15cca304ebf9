//! Dots, version vectors and causal contexts: the vocabulary of causality.
//!
//! A [`Dot`] names one event: the `seq`-th event that replica `node` generated *in some stream*. Meridian
//! uses two kinds of streams and the same types for both:
//!
//! * **Per key** — every dot store inside a key's CRDT (an add to a set, a write to a multi-value
//!   register, the key's own presence flag) draws dots from that store's [`DotContext`]. Because a
//!   replica only ever mints the next dot after every dot it has minted before for that store, a
//!   replica's own dots are dense, and contexts compact back to a plain [`VersionVector`] once every
//!   delta has arrived, whatever order they arrived in.
//! * **Per node** — every write a node coordinates gets a log position `(origin, seq)`; the node's
//!   [`VersionVector`] over those positions is what anti-entropy and causal tokens compare.
//!
//! Invariant: `DotContext::contains(d)` never becomes false once true (contexts only grow), which is
//! what makes "a dot I have seen but do not hold was removed" a safe inference in every merge.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A replica's identity. Chosen at random when a node first starts and stored with its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One event: the `seq`-th (1-based) event minted by `node` in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that minted the event.
    pub node: NodeId,
    /// Its position in that replica's stream, starting at 1.
    pub seq: u64,
}

impl Dot {
    /// The dot `seq` of `node`.
    pub fn new(node: NodeId, seq: u64) -> Self {
        Dot { node, seq }
    }
}

/// For each replica, the length of the gap-free prefix of its events that has been seen.
///
/// A join-semilattice under pointwise max; absent entries mean 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// The empty vector (has seen nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events of `node` have been seen.
    pub fn get(&self, node: NodeId) -> u64 {
        self.0.get(&node).copied().unwrap_or(0)
    }

    /// Records that the first `seq` events of `node` have been seen (never moves backwards).
    pub fn observe(&mut self, node: NodeId, seq: u64) {
        if seq == 0 {
            return;
        }
        let entry = self.0.entry(node).or_insert(0);
        *entry = (*entry).max(seq);
    }

    /// Whether `dot` is within the seen prefix of its node.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.seq <= self.get(dot.node)
    }

    /// Pointwise max.
    pub fn merge(&mut self, other: &VersionVector) {
        for (node, seq) in &other.0 {
            self.observe(*node, *seq);
        }
    }

    /// Whether this vector has seen everything `other` has (`self >= other` pointwise).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(node, seq)| self.get(*node) >= *seq)
    }

    /// The entries, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.0.iter().map(|(n, s)| (*n, *s))
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of replicas with at least one seen event.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (node, seq) in iter {
            vv.observe(node, seq);
        }
        vv
    }
}

/// A causal context: a version vector plus the "dot cloud" of events seen out of order.
///
/// Delta-state CRDTs ship small deltas whose contexts name only the dots they touch, so a replica can
/// see dot 5 of a node before dot 4. The cloud holds such dots until the gap fills, when
/// [`DotContext::compact`] folds them into the vector. Join-semilattice under union.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DotContext {
    vv: VersionVector,
    cloud: BTreeSet<Dot>,
}

impl DotContext {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context holding exactly these dots.
    pub fn from_dots<I: IntoIterator<Item = Dot>>(dots: I) -> Self {
        let mut ctx = DotContext::new();
        for dot in dots {
            ctx.insert(dot);
        }
        ctx
    }

    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: Dot) -> bool {
        self.vv.contains(dot) || self.cloud.contains(&dot)
    }

    /// Records `dot` as seen.
    pub fn insert(&mut self, dot: Dot) {
        if !self.vv.contains(dot) {
            self.cloud.insert(dot);
            self.compact();
        }
    }

    /// The next dot `node` should mint so that it is newer than every dot of `node` seen here.
    pub fn next_dot(&self, node: NodeId) -> Dot {
        let in_cloud = self.cloud.range(Dot::new(node, 0)..=Dot::new(node, u64::MAX)).next_back().map_or(0, |d| d.seq);
        Dot::new(node, self.vv.get(node).max(in_cloud) + 1)
    }

    /// Union of the two contexts.
    /// The dots seen by both contexts. A context that arrives from a client names dots it claims
    /// to have read; intersecting it with what the replica has really seen keeps a fabricated dot
    /// (say `seq = u64::MAX`) from hiding writes or exhausting a node's sequence.
    pub fn intersect(&self, other: &DotContext) -> DotContext {
        let vv: VersionVector = self.vv.iter().map(|(node, seq)| (node, seq.min(other.vv.get(node)))).collect();
        let mut out = DotContext { vv, cloud: BTreeSet::new() };
        for dot in
            self.cloud.iter().filter(|d| other.contains(**d)).chain(other.cloud.iter().filter(|d| self.contains(**d)))
        {
            out.insert(*dot);
        }
        out
    }

    /// Union of the two contexts.
    pub fn merge(&mut self, other: &DotContext) {
        self.vv.merge(&other.vv);
        for dot in &other.cloud {
            if !self.vv.contains(*dot) {
                self.cloud.insert(*dot);
            }
        }
        self.compact();
    }

    /// Every dot in the context, if there are at most `limit` of them (`None` otherwise): what a
    /// storage engine enumerates to find the elements a small delta removes.
    pub fn dots_within(&self, limit: usize) -> Option<Vec<Dot>> {
        let mut total = self.cloud.len() as u64;
        for (_, seq) in self.vv.iter() {
            total = total.saturating_add(seq);
        }
        if total > limit as u64 {
            return None;
        }
        let mut dots: Vec<Dot> =
            self.vv.iter().flat_map(|(node, top)| (1..=top).map(move |seq| Dot::new(node, seq))).collect();
        dots.extend(self.cloud.iter().copied());
        Some(dots)
    }

    /// Folds every cloud dot that extends a node's gap-free prefix into the vector, and drops cloud
    /// dots the vector already covers. Keeps the representation canonical, so equal contexts compare equal.
    pub fn compact(&mut self) {
        let mut remaining = BTreeSet::new();
        for dot in std::mem::take(&mut self.cloud) {
            let seen = self.vv.get(dot.node);
            if dot.seq <= seen {
                continue;
            }
            if dot.seq == seen + 1 {
                self.vv.observe(dot.node, dot.seq);
            } else {
                remaining.insert(dot);
            }
        }
        // Dots are ordered by (node, seq), so one pass folds runs; a second pass catches dots that a
        // fold in the first made contiguous only if they were visited earlier, which ordering rules out.
        self.cloud = remaining;
    }

    /// The gap-free part.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// Dots seen beyond a gap.
    pub fn cloud(&self) -> impl Iterator<Item = Dot> + '_ {
        self.cloud.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_compacts_out_of_order_dots() {
        let n = NodeId(7);
        let mut ctx = DotContext::new();
        ctx.insert(Dot::new(n, 3));
        ctx.insert(Dot::new(n, 2));
        assert_eq!(ctx.version_vector().get(n), 0);
        ctx.insert(Dot::new(n, 1));
        assert_eq!(ctx.version_vector().get(n), 3);
        assert_eq!(ctx.cloud().count(), 0);
        assert_eq!(ctx.next_dot(n), Dot::new(n, 4));
    }

    #[test]
    fn intersect_keeps_only_dots_both_have_seen() {
        let (a, b) = (NodeId(1), NodeId(2));
        let ours = DotContext::from_dots([Dot::new(a, 1), Dot::new(a, 2), Dot::new(b, 5)]);
        let claimed = DotContext::from_dots([Dot::new(a, 1), Dot::new(a, 2), Dot::new(a, 3), Dot::new(b, u64::MAX)]);
        let both = claimed.intersect(&ours);
        assert!(both.contains(Dot::new(a, 2)));
        assert!(!both.contains(Dot::new(a, 3)));
        assert!(!both.contains(Dot::new(b, u64::MAX)));
        assert_eq!(both, ours.intersect(&claimed));
    }

    #[test]
    fn next_dot_skips_cloud() {
        let n = NodeId(1);
        let ctx = DotContext::from_dots([Dot::new(n, 5)]);
        assert_eq!(ctx.next_dot(n), Dot::new(n, 6));
    }

    #[test]
    fn dominates_is_pointwise() {
        let a: VersionVector = [(NodeId(1), 3), (NodeId(2), 1)].into_iter().collect();
        let b: VersionVector = [(NodeId(1), 2)].into_iter().collect();
        assert!(a.dominates(&b));
        assert!(!b.dominates(&a));
        assert!(a.dominates(&VersionVector::new()));
    }
}
