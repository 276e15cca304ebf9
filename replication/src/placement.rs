//! Where a key lives inside a region: rendezvous (highest-random-weight) hashing with zone spreading.
//!
//! ## Algorithm
//!
//! Every node `n` of the region gets a *score* for key `k`:
//! `score(n, k) = stable_hash(n.to_be_bytes() ++ k)` ([`crate::hash`]; the node id as 8 big-endian
//! bytes, then the key bytes). Nodes are ranked by score, highest first (ties, which need a full 64-bit
//! collision, go to the smaller node id). The key's `min(rf, nodes)` replicas are then picked in two
//! passes over that ranking:
//!
//! 1. **Spread.** Walk the ranking; take a node if no replica chosen so far is in its zone
//!    ([`PlacementReason::TopScoreInNewZone`]). Stop at `rf` replicas. This takes the best node of each
//!    zone, zones ordered by their best node's score.
//! 2. **Fill.** If fewer than `rf` were taken (the region has fewer zones than `rf`), walk the ranking
//!    again and take the best nodes not yet chosen ([`PlacementReason::ZonesExhaustedNextByScore`]).
//!
//! Nothing but the node ids, their zones, the key and `rf` enters the decision, and the input order of
//! the nodes does not matter, so every node computes the same answer from the same membership. (The
//! design places *partitions*: callers pass the partition's bytes as the key.)
//!
//! ## Invariants (proved by the property tests below)
//!
//! * Replicas are distinct and there are exactly `min(rf, n)` of them (`n` distinct node ids).
//! * Replicas are in distinct zones whenever the region has at least `rf` zones; otherwise every zone
//!   holds at least one replica.
//! * **Minimal disruption.** Removing a node that is not a replica of a key never changes that key's
//!   replica set; removing one that is replaces only that one (the others stay). Adding a node changes at
//!   most one replica of any key. So membership changes move about `rf/n` of the data, never a reshuffle.
//!   (The *set* is stable; a staying replica's position in [`Placement::replicas`] and its reason may
//!   change, e.g. when it becomes the best of its zone.)
//! * **Balance.** Scores are uniform and independent per node, so within a zone load is even: with `rf`
//!   at most the number of zones, a node in a zone of `m` nodes holds about `1/m` of the keys whose
//!   replicas include that zone. Zone sizes, not the hash, decide any imbalance between zones — an
//!   operator who wants even load gives zones equal node counts.
//!
//! Not adversarially robust: the hash is public and unkeyed, so keys could be chosen to pile onto one
//! node. Placing partitions rather than raw keys makes that moot.

use std::cmp::Reverse;
use std::fmt;

use meridian_crdt::NodeId;
use serde::{Deserialize, Serialize};

use crate::hash::StableHasher;

/// A node as placement sees it: its identity and its zone (failure domain) within the region.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeSlot {
    /// The node.
    pub id: NodeId,
    /// Its zone; nodes sharing a zone are assumed to fail together.
    pub zone: String,
}

impl NodeSlot {
    /// The slot of node `id` in `zone`.
    pub fn new(id: NodeId, zone: impl Into<String>) -> Self {
        NodeSlot { id, zone: zone.into() }
    }
}

/// Why a node is one of a key's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlacementReason {
    /// The highest-scoring node of a zone that held no higher-ranked replica (the spreading pass).
    TopScoreInNewZone,
    /// Every zone already held a replica; this was the highest-scoring node not yet chosen (the fill
    /// pass, reached only when the region has fewer zones than `rf`).
    ZonesExhaustedNextByScore,
}

impl fmt::Display for PlacementReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlacementReason::TopScoreInNewZone => "highest score in a zone not yet used",
            PlacementReason::ZonesExhaustedNextByScore => "every zone used; next highest score",
        })
    }
}

/// One chosen replica and why it was chosen.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ranked {
    /// The node.
    pub id: NodeId,
    /// Its zone.
    pub zone: String,
    /// Its rendezvous score for the key ([`score`]).
    pub score: u64,
    /// Its position (0-based) among all candidate nodes ranked by score, highest first. A replica
    /// with `rank` greater than its position in [`Placement::replicas`] was reached by skipping
    /// higher-scoring nodes whose zone was already used.
    pub rank: usize,
    /// Which pass chose it.
    pub reason: PlacementReason,
}

/// A key's replicas in one region, in the order they were chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    /// The `min(rf, n)` replicas: first the spreading pass (one per zone, best zone first), then the
    /// fill pass in score order.
    pub replicas: Vec<Ranked>,
    /// How many distinct candidate nodes were ranked.
    pub candidates: usize,
}

impl Placement {
    /// The replicas' node ids, in choice order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.replicas.iter().map(|r| r.id).collect()
    }

    /// Whether `node` is one of the replicas.
    pub fn contains(&self, node: NodeId) -> bool {
        self.replicas.iter().any(|r| r.id == node)
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether there are no replicas (no nodes, or `rf == 0`).
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }
}

/// One line per replica, for operators: `node <id> zone <zone> score <hex> rank <r>/<n>: <reason>`.
impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.replicas.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "node {} zone {} score {:#018x} rank {}/{}: {}",
                r.id,
                r.zone,
                r.score,
                r.rank + 1,
                self.candidates,
                r.reason
            )?;
        }
        Ok(())
    }
}

/// The rendezvous score of `node` for `key`: `stable_hash(node.0.to_be_bytes() ++ key)`.
pub fn score(node: NodeId, key: &[u8]) -> u64 {
    let mut hasher = StableHasher::new();
    hasher.write_u64(node.0);
    hasher.write(key);
    hasher.finish()
}

/// The replicas of `key` among `nodes`, `rf` of them (or all nodes when there are fewer), spread over
/// zones. See the module docs for the algorithm and its guarantees.
///
/// The order of `nodes` does not matter. A node id listed twice counts once: its entry with the
/// smallest zone name is used (membership never produces duplicates; this only keeps the function
/// total and order-independent).
pub fn place(key: &[u8], nodes: &[NodeSlot], rf: usize) -> Placement {
    let mut ranked: Vec<(u64, &NodeSlot)> = nodes.iter().map(|n| (score(n.id, key), n)).collect();
    // Highest score first; equal scores (a 64-bit collision) by smaller id; a duplicated id by zone, so
    // the first occurrence of each id after sorting is a deterministic choice.
    ranked.sort_unstable_by_key(|(s, n)| (Reverse(*s), n.id, n.zone.as_str()));
    ranked.dedup_by_key(|(_, n)| n.id);

    let want = rf.min(ranked.len());
    let mut taken = vec![false; ranked.len()];
    let mut replicas: Vec<Ranked> = Vec::with_capacity(want);
    let chosen = |rank: usize, reason: PlacementReason| {
        let (score, node) = ranked[rank];
        Ranked { id: node.id, zone: node.zone.clone(), score, rank, reason }
    };
    // Pass 1, spread: the best node of each zone, zones in order of their best node.
    for (rank, (_, node)) in ranked.iter().enumerate() {
        if replicas.len() == want {
            break;
        }
        if !replicas.iter().any(|r| r.zone == node.zone) {
            taken[rank] = true;
            replicas.push(chosen(rank, PlacementReason::TopScoreInNewZone));
        }
    }
    // Pass 2, fill (only when there are fewer zones than `want`): the best nodes not yet taken.
    for (rank, taken) in taken.iter_mut().enumerate() {
        if replicas.len() == want {
            break;
        }
        if !*taken {
            *taken = true;
            replicas.push(chosen(rank, PlacementReason::ZonesExhaustedNextByScore));
        }
    }
    Placement { replicas, candidates: ranked.len() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::mix64;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use std::collections::{BTreeMap, BTreeSet};

    fn slots(spec: &[(u64, &str)]) -> Vec<NodeSlot> {
        spec.iter().map(|(id, zone)| NodeSlot::new(NodeId(*id), *zone)).collect()
    }

    fn id_set(p: &Placement) -> BTreeSet<NodeId> {
        p.replicas.iter().map(|r| r.id).collect()
    }

    /// Deterministic pseudo-random keys (splitmix64 stream from a fixed seed).
    fn keys(count: usize, seed: u64) -> impl Iterator<Item = [u8; 8]> {
        (0..count as u64).map(move |i| mix64(seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).to_be_bytes())
    }

    /// Golden vectors: scores and placements that every Meridian build, on every platform, must
    /// reproduce. Never change them: they decide where existing data lives.
    #[test]
    fn score_and_placement_golden_vectors() {
        let got: Vec<u64> =
            [(1, &b"shop/visits"[..]), (2, b"shop/visits"), (0xdead_beef, b""), (u64::MAX, b"\x00\x01")]
                .iter()
                .map(|(n, k)| score(NodeId(*n), k))
                .collect();
        assert_eq!(got, SCORES, "{}", got.iter().map(|h| format!("{h:#018x}")).collect::<Vec<_>>().join(", "));

        let nodes = slots(&[(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c")]);
        let placed: Vec<Vec<u64>> = [&b"shop/visits"[..], b"shop/motd", b"\x00\x2a"]
            .iter()
            .map(|k| place(k, &nodes, 3).ids().iter().map(|n| n.0).collect())
            .collect();
        assert_eq!(placed, PLACED, "{placed:?}");
    }

    const SCORES: [u64; 4] =
        [0xbe06_5256_8cc0_fff4, 0xb845_23a7_ace0_5a24, 0xa4cb_64f1_6ad7_0dd6, 0x2629_d5cb_8fd1_95ca];
    const PLACED: [[u64; 3]; 3] = [[1, 3, 5], [2, 3, 5], [2, 4, 5]];

    #[test]
    fn explains_each_pass() {
        // One zone, three nodes: the first is the zone's best, the others fill in score order.
        let nodes = slots(&[(10, "a"), (11, "a"), (12, "a")]);
        let p = place(b"k", &nodes, 3);
        assert_eq!(p.replicas[0].reason, PlacementReason::TopScoreInNewZone);
        assert_eq!(p.replicas[0].rank, 0);
        for (i, r) in p.replicas.iter().enumerate().skip(1) {
            assert_eq!(r.reason, PlacementReason::ZonesExhaustedNextByScore);
            assert_eq!(r.rank, i);
        }
        let text = p.to_string();
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("rank 1/3: highest score in a zone not yet used"), "{text}");
    }

    #[test]
    fn skips_higher_scores_in_used_zones() {
        // Find a key whose two best nodes share a zone: the second replica must come from the other zone.
        let nodes = slots(&[(1, "a"), (2, "a"), (3, "b")]);
        let key = keys(1000, 7)
            .find(|k| {
                let top = place(k, &nodes, 1).replicas[0].id;
                let second_best = nodes.iter().filter(|n| n.id != top).max_by_key(|n| score(n.id, k)).unwrap();
                top != NodeId(3) && second_best.id != NodeId(3)
            })
            .expect("some key ranks both zone-a nodes first");
        let p = place(&key, &nodes, 2);
        assert_eq!(p.replicas[1].id, NodeId(3));
        assert_eq!(p.replicas[1].rank, 2, "skipped the zone-a node ranked second");
        assert_eq!(p.replicas[1].reason, PlacementReason::TopScoreInNewZone);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(place(b"k", &[], 3).is_empty());
        assert!(place(b"k", &slots(&[(1, "a")]), 0).is_empty());
        let dup = slots(&[(1, "b"), (1, "a"), (2, "a")]);
        let p = place(b"k", &dup, 3);
        assert_eq!(p.len(), 2);
        assert_eq!(p.candidates, 2);
        assert_eq!(p.replicas.iter().find(|r| r.id == NodeId(1)).unwrap().zone, "a", "smallest zone of a duplicate");
    }

    /// Share of keys each node holds, over `count` keys.
    fn shares(nodes: &[NodeSlot], rf: usize, count: usize) -> BTreeMap<NodeId, f64> {
        let mut held: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (n.id, 0)).collect();
        let zones: BTreeSet<&str> = nodes.iter().map(|n| n.zone.as_str()).collect();
        for key in keys(count, 0x5eed) {
            let p = place(&key, nodes, rf);
            assert_eq!(p.len(), rf);
            if zones.len() >= rf {
                let used: BTreeSet<&str> = p.replicas.iter().map(|r| r.zone.as_str()).collect();
                assert_eq!(used.len(), rf, "replicas in distinct zones");
            }
            for r in &p.replicas {
                *held.get_mut(&r.id).unwrap() += 1;
            }
        }
        held.into_iter().map(|(n, c)| (n, c as f64 / count as f64)).collect()
    }

    fn assert_shares(got: &BTreeMap<NodeId, f64>, expected: &[(u64, f64)], tolerance: f64) {
        for (node, want) in expected {
            let have = got[&NodeId(*node)];
            assert!((have - want).abs() <= tolerance, "node {node}: share {have:.4}, expected {want:.4} ± {tolerance}");
        }
    }

    /// 5 nodes in 3 zones (2 + 2 + 1), rf = 3. With as many zones as replicas every key has exactly one
    /// replica per zone, so the lone node of zone c holds every key and each node of a two-node zone
    /// holds half of them: expected shares 1/2, 1/2, 1/2, 1/2, 1 (the zone-blind fair share would be
    /// 3/5). Binomial σ over 20 000 keys is ≤ 0.0036, so ±0.02 is more than 5σ.
    #[test]
    fn balance_five_nodes_three_zones_rf3() {
        let nodes = slots(&[(101, "a"), (102, "a"), (201, "b"), (202, "b"), (301, "c")]);
        let got = shares(&nodes, 3, 20_000);
        assert_shares(&got, &[(101, 0.5), (102, 0.5), (201, 0.5), (202, 0.5), (301, 1.0)], 0.02);
    }

    /// Same nodes, rf = 2: zone c (one node, score U) is left out exactly when U is below the best score
    /// of both other zones (each the max of two uniforms): P = ∫(1-u²)² du = 8/15. So node 301 holds
    /// 7/15 of the keys and the four others share the remaining 2 - 7/15 = 23/15, i.e. 23/60 each.
    #[test]
    fn balance_five_nodes_three_zones_rf2() {
        let nodes = slots(&[(101, "a"), (102, "a"), (201, "b"), (202, "b"), (301, "c")]);
        let got = shares(&nodes, 2, 20_000);
        let four = 23.0 / 60.0;
        assert_shares(&got, &[(101, four), (102, four), (201, four), (202, four), (301, 7.0 / 15.0)], 0.02);
    }

    /// Without zone constraints (one zone, or one zone per node) every node holds rf/n of the keys.
    #[test]
    fn balance_without_zone_constraints() {
        let one_zone = slots(&[(1, "z"), (2, "z"), (3, "z"), (4, "z"), (5, "z")]);
        let own_zones = slots(&[(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]);
        for nodes in [one_zone, own_zones] {
            let got = shares(&nodes, 3, 20_000);
            assert_shares(&got, &[(1, 0.6), (2, 0.6), (3, 0.6), (4, 0.6), (5, 0.6)], 0.02);
        }
    }

    /// A region: distinct node ids, each in one of up to 4 zones.
    fn region() -> impl Strategy<Value = Vec<NodeSlot>> {
        proptest::collection::btree_map(any::<u64>(), 0..4u8, 0..10)
            .prop_map(|m| m.into_iter().map(|(id, z)| NodeSlot::new(NodeId(id), format!("zone-{z}"))).collect())
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..24)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn deterministic_and_order_independent(
            (nodes, shuffled) in region().prop_flat_map(|n| (Just(n.clone()), Just(n).prop_shuffle())),
            key in key(),
            rf in 0usize..6,
        ) {
            let p = place(&key, &nodes, rf);
            prop_assert_eq!(&p, &place(&key, &nodes, rf));
            prop_assert_eq!(&p, &place(&key, &shuffled, rf));
        }

        #[test]
        fn count_distinctness_and_zone_spread(nodes in region(), key in key(), rf in 0usize..6) {
            let p = place(&key, &nodes, rf);
            prop_assert_eq!(p.len(), rf.min(nodes.len()));
            prop_assert_eq!(id_set(&p).len(), p.len(), "replicas distinct");
            let zones: BTreeSet<&str> = nodes.iter().map(|n| n.zone.as_str()).collect();
            let used: BTreeSet<&str> = p.replicas.iter().map(|r| r.zone.as_str()).collect();
            if zones.len() >= rf {
                prop_assert_eq!(used.len(), p.len(), "zones distinct when #zones >= rf");
            } else {
                prop_assert_eq!(used.len(), zones.len(), "every zone used when #zones < rf");
            }
            for r in &p.replicas {
                prop_assert_eq!(r.score, score(r.id, &key));
                prop_assert!(nodes.contains(&NodeSlot::new(r.id, r.zone.clone())));
            }
        }

        #[test]
        fn removing_a_node_disturbs_at_most_its_own_slot(
            nodes in region(),
            key in key(),
            rf in 1usize..6,
            victim in any::<Index>(),
        ) {
            prop_assume!(!nodes.is_empty());
            let victim = nodes[victim.index(nodes.len())].id;
            let before = id_set(&place(&key, &nodes, rf));
            let rest: Vec<NodeSlot> = nodes.iter().filter(|n| n.id != victim).cloned().collect();
            let after = id_set(&place(&key, &rest, rf));
            if before.contains(&victim) {
                let stayed: BTreeSet<NodeId> = before.iter().copied().filter(|n| *n != victim).collect();
                prop_assert!(stayed.is_subset(&after), "other replicas stay: {:?} -> {:?}", before, after);
                prop_assert!(after.difference(&stayed).count() <= 1, "at most one newcomer");
            } else {
                prop_assert_eq!(before, after, "removing a non-replica changes nothing");
            }
        }

        #[test]
        fn adding_a_node_changes_at_most_one_replica(
            nodes in region(),
            newcomer in any::<u64>(),
            zone in 0..5u8,
            key in key(),
            rf in 1usize..6,
        ) {
            prop_assume!(nodes.iter().all(|n| n.id.0 != newcomer));
            let before = id_set(&place(&key, &nodes, rf));
            let mut grown = nodes.clone();
            grown.push(NodeSlot::new(NodeId(newcomer), format!("zone-{zone}")));
            let after = id_set(&place(&key, &grown, rf));
            prop_assert!(before.difference(&after).count() <= 1, "{:?} -> {:?}", before, after);
            prop_assert!(after.difference(&before).all(|n| n.0 == newcomer), "only the newcomer joins");
        }
    }
}
