//! The coordinator's bookkeeping for one leaderless quorum write or read, sans-IO.
//!
//! A write sends the mutation to every replica of the key and is acknowledged once an [`AckRound`]
//! has collected enough acks for its level. A read asks every replica for its state through a
//! [`ReadRound`], merges the replies, and — for `local_quorum` and `quorum` — must not return until
//! the merged state is held by `needed` replicas: the repliers that already held exactly the merged
//! state count, and the write-back ([`ReadRound::repair`]) must make up the rest. The reason is that
//! any later quorum read contacts a majority, which intersects that set, so it sees at least what this
//! read returned: reads never go backwards, even when the state came from a write still in flight.
//! And because the read's own majority intersects the majority of every write acknowledged before
//! the read began, every such write is in what it returns.
//!
//! **Moves.** While placement changes (a node joining or draining), a partition has an *old* replica
//! set, which acknowledged what was written before, and a *new* one, which will serve it once the
//! move is confirmed ([`QuorumSets::joint`]). A quorum then means a majority of *each* set — the
//! joint consensus of Raft's membership changes, Cassandra's pending ranges. A read's majority of the
//! old set intersects every write acknowledged before the move; a write's majority of the new set is
//! what lets reads count the new set alone once the move is confirmed.
//!
//! The rounds only count; the node sends the messages, applies the joins and runs the deadlines.
//! Nothing here is sticky: a late ack still counts, so the caller acts on the first verdict that is
//! not [`Outcome::Pending`] and treats a later change of mind as information only.

use std::collections::{BTreeMap, BTreeSet};

use meridian_crdt::NodeId;
use meridian_proto::Consistency;

use crate::quorum::{majority, Outcome};

/// The replica sets a quorum is counted in: one set, or two during a move (old and new replicas of
/// the partition), each of which must reach its own majority. Sets are never empty unless there is
/// exactly one (a partition with no replica at all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuorumSets {
    sets: Vec<Vec<NodeId>>,
}

impl QuorumSets {
    /// One replica set: the usual case.
    pub fn single(replicas: Vec<NodeId>) -> QuorumSets {
        QuorumSets { sets: vec![replicas] }
    }

    /// The old and new replica sets of a partition that is moving; one set when they hold the same
    /// nodes (no move). An empty set stays: no majority of it can be reached, so a region whose
    /// members are all joining (or all draining) is unavailable at the quorum levels, as a region
    /// with no replica is.
    pub fn joint(old: Vec<NodeId>, new: Vec<NodeId>) -> QuorumSets {
        let same = old.iter().collect::<BTreeSet<_>>() == new.iter().collect::<BTreeSet<_>>();
        if same {
            return QuorumSets::single(new);
        }
        QuorumSets { sets: vec![old, new] }
    }

    /// Each set, old first.
    pub fn sets(&self) -> &[Vec<NodeId>] {
        &self.sets
    }

    /// Whether the partition is moving (two sets).
    pub fn is_moving(&self) -> bool {
        self.sets.len() > 1
    }

    /// Every node of every set once, in order of first appearance: the targets of a request.
    pub fn all(&self) -> Vec<NodeId> {
        let mut seen = BTreeSet::new();
        self.sets.iter().flatten().copied().filter(|n| seen.insert(*n)).collect()
    }

    /// Whether `node` is in any set.
    pub fn contains(&self, node: NodeId) -> bool {
        self.sets.iter().any(|set| set.contains(&node))
    }
}

/// One condition of a round: `needed` answers from `members`.
#[derive(Clone, Debug)]
struct Need {
    members: BTreeSet<NodeId>,
    needed: usize,
}

impl Need {
    /// This condition's verdict given who answered and who failed.
    fn outcome(&self, answered: &BTreeSet<NodeId>, failed: &BTreeSet<NodeId>, expired: bool) -> Outcome {
        let yes = self.members.intersection(answered).count();
        let no = self.members.intersection(failed).count();
        verdict(yes, self.members.len() - yes - no, self.needed, expired)
    }
}

/// The verdict of a round of several conditions: satisfied when all are, unavailable as soon as one
/// is (reported with that condition's counts), pending otherwise.
fn joint_verdict(needs: &[Need], answered: &BTreeSet<NodeId>, failed: &BTreeSet<NodeId>, expired: bool) -> Outcome {
    let mut all = Outcome::Satisfied;
    for need in needs {
        match need.outcome(answered, failed, expired) {
            Outcome::Satisfied => {}
            unavailable @ Outcome::Unavailable { .. } => return unavailable,
            Outcome::Pending => all = Outcome::Pending,
        }
    }
    all
}

fn needs_for(level: Consistency, sets: &QuorumSets) -> Vec<Need> {
    match level {
        // One answer from anywhere.
        Consistency::Eventual | Consistency::Causal => {
            vec![Need { members: sets.all().into_iter().collect(), needed: 1 }]
        }
        Consistency::LocalQuorum | Consistency::Quorum => sets
            .sets
            .iter()
            .map(|set| {
                let members: BTreeSet<NodeId> = set.iter().copied().collect();
                Need { needed: majority(members.len()), members }
            })
            .collect(),
    }
}

/// Counts acknowledgements from a set of target replicas until enough have acked.
#[derive(Clone, Debug)]
pub struct AckRound {
    targets: BTreeSet<NodeId>,
    needs: Vec<Need>,
    acked: BTreeSet<NodeId>,
    failed: BTreeSet<NodeId>,
    expired: bool,
}

impl AckRound {
    /// A round over `targets` that is satisfied once `needed` of them have acked.
    pub fn new(targets: impl IntoIterator<Item = NodeId>, needed: usize) -> AckRound {
        let targets: BTreeSet<NodeId> = targets.into_iter().collect();
        AckRound::with_needs(targets.clone(), vec![Need { members: targets, needed }])
    }

    fn with_needs(targets: BTreeSet<NodeId>, needs: Vec<Need>) -> AckRound {
        AckRound { targets, needs, acked: BTreeSet::new(), failed: BTreeSet::new(), expired: false }
    }

    /// The round for a write at `level` sent to all of `replicas`.
    ///
    /// Every replica is treated as local: with one region, `quorum` and `local_quorum` are both a
    /// majority of the key's replicas.
    pub fn for_write(level: Consistency, replicas: &[NodeId]) -> AckRound {
        AckRound::for_write_in(level, &QuorumSets::single(replicas.to_vec()))
    }

    /// The round for a write at `level` sent to every node of `sets`: at a quorum level, a majority
    /// of each set must ack (see the module docs on moves).
    pub fn for_write_in(level: Consistency, sets: &QuorumSets) -> AckRound {
        AckRound::with_needs(sets.all().into_iter().collect(), needs_for(level, sets))
    }

    /// `from` applied the request. Counted once, however often the network delivers its ack.
    pub fn ack(&mut self, from: NodeId) {
        if !self.targets.contains(&from) {
            return;
        }
        // A failure report may be about one lost copy of a request whose other copy got through;
        // the ack is proof the replica holds the data, the failure only a guess that it does not.
        self.failed.remove(&from);
        self.acked.insert(from);
    }

    /// `from` is known not to answer (unreachable, refused). Ignored once it has acked.
    pub fn fail(&mut self, from: NodeId) {
        if self.targets.contains(&from) && !self.acked.contains(&from) {
            self.failed.insert(from);
        }
    }

    /// The deadline passed.
    pub fn expire(&mut self) {
        self.expired = true;
    }

    /// The verdict so far.
    pub fn outcome(&self) -> Outcome {
        joint_verdict(&self.needs, &self.acked, &self.failed, self.expired)
    }

    /// Targets that acked.
    pub fn acked(&self) -> usize {
        self.acked.len()
    }

    /// Acks needed (during a move, the sum of each set's majority: an upper bound, as a node in both
    /// sets counts in both).
    pub fn needed(&self) -> usize {
        self.needs.iter().map(|n| n.needed).sum()
    }

    /// The targets that acked, in id order.
    pub fn acked_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.acked.iter().copied()
    }

    /// Targets that have neither acked nor failed, in id order.
    pub fn pending_nodes(&self) -> Vec<NodeId> {
        self.targets.iter().filter(|n| !self.acked.contains(n) && !self.failed.contains(n)).copied().collect()
    }
}

/// The rule every condition follows: enough answers wins over everything, including a passed
/// deadline (the answers are true whenever they came); otherwise give up as soon as the answers still
/// possible cannot reach `needed`.
fn verdict(answered: usize, pending: usize, needed: usize, expired: bool) -> Outcome {
    if answered >= needed {
        Outcome::Satisfied
    } else if expired || answered + pending < needed {
        Outcome::Unavailable { acked: answered, needed }
    } else {
        Outcome::Pending
    }
}

/// A read of one key over its replicas: collects each replica's state, merges them, and plans the
/// write-back that must complete before the read may return (so a quorum read never goes backwards).
#[derive(Clone, Debug)]
pub struct ReadRound<S> {
    replicas: BTreeSet<NodeId>,
    needs: Vec<Need>,
    replies: BTreeMap<NodeId, Option<S>>,
    failed: BTreeSet<NodeId>,
    expired: bool,
}

impl<S: Clone + PartialEq> ReadRound<S> {
    /// A read at `level` asking all of `replicas`.
    ///
    /// `eventual` and `causal` reads take one replica's state (the causal gate is checked elsewhere);
    /// the quorum levels need a majority of the key's replicas.
    pub fn new(level: Consistency, replicas: &[NodeId]) -> ReadRound<S> {
        ReadRound::over(level, &QuorumSets::single(replicas.to_vec()))
    }

    /// A read at `level` asking every node of `sets`: at a quorum level, a majority of each set must
    /// reply (see the module docs on moves).
    pub fn over(level: Consistency, sets: &QuorumSets) -> ReadRound<S> {
        ReadRound {
            replicas: sets.all().into_iter().collect(),
            needs: needs_for(level, sets),
            replies: BTreeMap::new(),
            failed: BTreeSet::new(),
            expired: false,
        }
    }

    /// `from`'s state for the key, `None` if it holds none.
    ///
    /// Only the first reply per replica counts: a duplicate may be an older copy of the answer, and
    /// the repair plan must compare against the state the replica is known to hold.
    pub fn reply(&mut self, from: NodeId, state: Option<S>) {
        if !self.replicas.contains(&from) || self.replies.contains_key(&from) {
            return;
        }
        self.failed.remove(&from);
        self.replies.insert(from, state);
    }

    /// `from` is known not to answer. Ignored once it has replied.
    pub fn fail(&mut self, from: NodeId) {
        if self.replicas.contains(&from) && !self.replies.contains_key(&from) {
            self.failed.insert(from);
        }
    }

    /// The deadline passed.
    pub fn expire(&mut self) {
        self.expired = true;
    }

    /// The verdict so far, counting replies as acks.
    pub fn outcome(&self) -> Outcome {
        let replied: BTreeSet<NodeId> = self.replies.keys().copied().collect();
        joint_verdict(&self.needs, &replied, &self.failed, self.expired)
    }

    /// The join of every reply so far, `None` if no replica had state. `join(acc, other)` merges
    /// `other` into `acc`.
    pub fn merged<E>(&self, mut join: impl FnMut(&mut S, &S) -> Result<(), E>) -> Result<Option<S>, E> {
        let mut acc: Option<S> = None;
        for state in self.replies.values().flatten() {
            match acc.as_mut() {
                None => acc = Some(state.clone()),
                Some(acc) => join(acc, state)?,
            }
        }
        Ok(acc)
    }

    /// The write-back that must be satisfied before the read returns `merged`: sent to every replier
    /// whose state differs from it, needing, in each of the read's sets, as many acks as its quorum
    /// there still lacks once the repliers that already hold `merged` are counted.
    pub fn repair(&self, merged: &Option<S>) -> AckRound {
        if merged.is_none() {
            // Nothing was read, so nothing can be lost by a later read.
            return AckRound::new([], 0);
        }
        let stale: BTreeSet<NodeId> = self.stale(merged).into_iter().collect();
        let needs = self
            .needs
            .iter()
            .map(|need| {
                let current = need.members.iter().filter(|n| self.replies.get(n) == Some(merged)).count();
                Need {
                    members: need.members.intersection(&stale).copied().collect(),
                    needed: need.needed.saturating_sub(current),
                }
            })
            .collect();
        AckRound::with_needs(stale, needs)
    }

    /// Repliers whose state differs from `merged` — read-repair targets, including any that replied
    /// beyond the quorum. A `None` reply differs from any `Some`.
    pub fn stale(&self, merged: &Option<S>) -> Vec<NodeId> {
        self.replies.iter().filter(|(_, state)| *state != merged).map(|(node, _)| *node).collect()
    }

    /// Replies needed (during a move, the sum of each set's majority).
    pub fn needed(&self) -> usize {
        self.needs.iter().map(|n| n.needed).sum()
    }

    /// Replicas that replied.
    pub fn replied(&self) -> usize {
        self.replies.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::convert::Infallible;

    use super::*;

    fn nodes(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().map(|&id| NodeId(id)).collect()
    }

    fn set(values: &[u64]) -> Option<BTreeSet<u64>> {
        Some(values.iter().copied().collect())
    }

    fn union(acc: &mut BTreeSet<u64>, other: &BTreeSet<u64>) -> Result<(), Infallible> {
        acc.extend(other);
        Ok(())
    }

    fn merged(read: &ReadRound<BTreeSet<u64>>) -> Option<BTreeSet<u64>> {
        read.merged(union).unwrap()
    }

    #[test]
    fn write_needs_per_level() {
        let three = nodes(&[1, 2, 3]);
        assert_eq!(AckRound::for_write(Consistency::Eventual, &three).needed(), 1);
        assert_eq!(AckRound::for_write(Consistency::Causal, &three).needed(), 1);
        assert_eq!(AckRound::for_write(Consistency::LocalQuorum, &three).needed(), 2);
        assert_eq!(AckRound::for_write(Consistency::Quorum, &three).needed(), 2);
        assert_eq!(AckRound::for_write(Consistency::Quorum, &nodes(&[1, 2, 3, 4, 5])).needed(), 3);
        assert_eq!(AckRound::for_write(Consistency::Quorum, &nodes(&[1, 2, 3, 4])).needed(), 3);
    }

    #[test]
    fn ack_round_satisfied_at_needed() {
        let mut round = AckRound::for_write(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        assert_eq!(round.outcome(), Outcome::Pending);
        round.ack(NodeId(2));
        assert_eq!(round.outcome(), Outcome::Pending);
        round.ack(NodeId(3));
        assert_eq!(round.outcome(), Outcome::Satisfied);
        assert_eq!(round.acked(), 2);
        assert_eq!(round.acked_nodes().collect::<Vec<_>>(), nodes(&[2, 3]));
        assert_eq!(round.pending_nodes(), nodes(&[1]));
    }

    #[test]
    fn duplicate_acks_count_once() {
        let mut round = AckRound::for_write(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        round.ack(NodeId(1));
        round.ack(NodeId(1));
        round.ack(NodeId(1));
        assert_eq!(round.acked(), 1);
        assert_eq!(round.outcome(), Outcome::Pending);
    }

    #[test]
    fn non_targets_are_ignored() {
        let mut round = AckRound::for_write(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        round.ack(NodeId(7));
        round.ack(NodeId(8));
        round.fail(NodeId(9));
        assert_eq!(round.acked(), 0);
        assert_eq!(round.pending_nodes(), nodes(&[1, 2, 3]));
        assert_eq!(round.outcome(), Outcome::Pending);
    }

    #[test]
    fn failures_make_it_unavailable_once_needed_is_out_of_reach() {
        let mut round = AckRound::for_write(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        round.ack(NodeId(1));
        round.fail(NodeId(2));
        assert_eq!(round.outcome(), Outcome::Pending);
        assert_eq!(round.pending_nodes(), nodes(&[3]));
        round.fail(NodeId(3));
        assert_eq!(round.outcome(), Outcome::Unavailable { acked: 1, needed: 2 });
        assert!(round.pending_nodes().is_empty());
    }

    #[test]
    fn ack_after_fail_wins_and_fail_after_ack_is_ignored() {
        let mut round = AckRound::for_write(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        round.fail(NodeId(1));
        round.fail(NodeId(2));
        assert_eq!(round.outcome(), Outcome::Unavailable { acked: 0, needed: 2 });
        round.ack(NodeId(1));
        assert_eq!(round.outcome(), Outcome::Pending);
        round.ack(NodeId(3));
        assert_eq!(round.outcome(), Outcome::Satisfied);
        round.fail(NodeId(3));
        assert_eq!(round.acked(), 2);
        assert_eq!(round.outcome(), Outcome::Satisfied);
    }

    #[test]
    fn expire_turns_pending_into_unavailable_but_not_satisfied() {
        let mut round = AckRound::for_write(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        round.ack(NodeId(1));
        round.expire();
        assert_eq!(round.outcome(), Outcome::Unavailable { acked: 1, needed: 2 });

        let mut done = AckRound::for_write(Consistency::Eventual, &nodes(&[1, 2, 3]));
        done.ack(NodeId(3));
        done.expire();
        assert_eq!(done.outcome(), Outcome::Satisfied);
    }

    #[test]
    fn needed_zero_is_satisfied_at_once() {
        assert_eq!(AckRound::new([], 0).outcome(), Outcome::Satisfied);
        let mut round = AckRound::new(nodes(&[1, 2]), 0);
        round.expire();
        assert_eq!(round.outcome(), Outcome::Satisfied);
    }

    #[test]
    fn too_few_targets_is_unavailable_at_once() {
        assert_eq!(AckRound::new(nodes(&[1]), 2).outcome(), Outcome::Unavailable { acked: 0, needed: 2 });
        assert_eq!(
            AckRound::for_write(Consistency::LocalQuorum, &[]).outcome(),
            Outcome::Unavailable { acked: 0, needed: 1 }
        );
    }

    #[test]
    fn read_needs_per_level() {
        let five = nodes(&[1, 2, 3, 4, 5]);
        assert_eq!(ReadRound::<u8>::new(Consistency::Eventual, &five).needed(), 1);
        assert_eq!(ReadRound::<u8>::new(Consistency::Causal, &five).needed(), 1);
        assert_eq!(ReadRound::<u8>::new(Consistency::LocalQuorum, &five).needed(), 3);
        assert_eq!(ReadRound::<u8>::new(Consistency::Quorum, &nodes(&[1, 2, 3])).needed(), 2);
    }

    #[test]
    fn read_counts_first_reply_per_replica_and_ignores_strangers() {
        let mut read = ReadRound::new(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        read.reply(NodeId(1), set(&[1]));
        read.reply(NodeId(1), set(&[1, 2]));
        read.reply(NodeId(9), set(&[99]));
        assert_eq!(read.replied(), 1);
        assert_eq!(read.outcome(), Outcome::Pending);
        assert_eq!(merged(&read), set(&[1]));
        read.reply(NodeId(2), None);
        assert_eq!(read.outcome(), Outcome::Satisfied);
    }

    #[test]
    fn read_fail_and_expire_follow_the_ack_rules() {
        let mut read = ReadRound::<BTreeSet<u64>>::new(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        read.fail(NodeId(1));
        read.fail(NodeId(2));
        assert_eq!(read.outcome(), Outcome::Unavailable { acked: 0, needed: 2 });
        read.reply(NodeId(2), None);
        assert_eq!(read.outcome(), Outcome::Pending);
        read.fail(NodeId(2));
        read.fail(NodeId(7));
        assert_eq!(read.outcome(), Outcome::Pending);
        read.expire();
        assert_eq!(read.outcome(), Outcome::Unavailable { acked: 1, needed: 2 });
        read.reply(NodeId(3), set(&[4]));
        assert_eq!(read.outcome(), Outcome::Satisfied);
    }

    #[test]
    fn merged_joins_every_reply_and_is_none_without_state() {
        let mut read = ReadRound::new(Consistency::Quorum, &nodes(&[1, 2, 3]));
        assert_eq!(merged(&read), None);
        read.reply(NodeId(1), None);
        assert_eq!(merged(&read), None);
        read.reply(NodeId(2), set(&[1, 2]));
        read.reply(NodeId(3), set(&[2, 3]));
        assert_eq!(merged(&read), set(&[1, 2, 3]));
    }

    #[test]
    fn merged_passes_join_errors_on() {
        let mut read = ReadRound::new(Consistency::Quorum, &nodes(&[1, 2]));
        read.reply(NodeId(1), Some(1u8));
        read.reply(NodeId(2), Some(2u8));
        let result: Result<Option<u8>, &str> = read.merged(|_, _| Err("incompatible"));
        assert_eq!(result, Err("incompatible"));
    }

    #[test]
    fn repair_is_not_needed_when_a_quorum_already_agrees() {
        let mut read = ReadRound::new(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        read.reply(NodeId(1), set(&[1]));
        read.reply(NodeId(2), set(&[1]));
        let m = merged(&read);
        let round = read.repair(&m);
        assert_eq!(round.needed(), 0);
        assert_eq!(round.outcome(), Outcome::Satisfied);
        assert!(read.stale(&m).is_empty());
    }

    #[test]
    fn repair_counts_repliers_that_already_hold_the_merge() {
        let mut read = ReadRound::new(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        read.reply(NodeId(1), set(&[1, 2]));
        read.reply(NodeId(2), set(&[1]));
        let m = merged(&read);
        let mut round = read.repair(&m);
        assert_eq!(round.needed(), 1);
        assert_eq!(round.pending_nodes(), nodes(&[2]));
        round.ack(NodeId(1));
        assert_eq!(round.outcome(), Outcome::Pending, "node 1 already counted, it is no target");
        round.ack(NodeId(2));
        assert_eq!(round.outcome(), Outcome::Satisfied);
    }

    #[test]
    fn repair_when_no_replier_holds_the_merge_needs_the_whole_quorum() {
        let mut read = ReadRound::new(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        read.reply(NodeId(1), set(&[1]));
        read.reply(NodeId(3), set(&[3]));
        let m = merged(&read);
        let round = read.repair(&m);
        assert_eq!(round.needed(), 2);
        assert_eq!(round.pending_nodes(), nodes(&[1, 3]));
    }

    #[test]
    fn none_reply_differs_from_the_merge() {
        let mut read = ReadRound::new(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        read.reply(NodeId(1), None);
        read.reply(NodeId(2), set(&[5]));
        let m = merged(&read);
        assert_eq!(read.stale(&m), nodes(&[1]));
        assert_eq!(read.repair(&m).needed(), 1);
    }

    #[test]
    fn nothing_to_repair_when_nothing_was_read() {
        let mut read = ReadRound::<BTreeSet<u64>>::new(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        read.reply(NodeId(1), None);
        read.reply(NodeId(2), None);
        let round = read.repair(&None);
        assert_eq!(round.needed(), 0);
        assert!(round.pending_nodes().is_empty());
        assert_eq!(round.outcome(), Outcome::Satisfied);
        assert!(read.stale(&None).is_empty());
    }

    #[test]
    fn stale_includes_repliers_beyond_the_quorum() {
        let mut read = ReadRound::new(Consistency::LocalQuorum, &nodes(&[1, 2, 3]));
        read.reply(NodeId(1), set(&[1]));
        read.reply(NodeId(2), set(&[1]));
        let m = merged(&read);
        assert_eq!(read.repair(&m).needed(), 0);
        read.reply(NodeId(3), set(&[]));
        assert_eq!(read.stale(&m), nodes(&[3]));
    }

    #[test]
    fn eventual_read_needs_no_write_back() {
        let mut read = ReadRound::new(Consistency::Eventual, &nodes(&[1, 2, 3]));
        read.reply(NodeId(2), set(&[1]));
        assert_eq!(read.outcome(), Outcome::Satisfied);
        let m = merged(&read);
        assert_eq!(read.repair(&m).outcome(), Outcome::Satisfied);
    }

    fn moving() -> QuorumSets {
        QuorumSets::joint(nodes(&[1, 2, 3]), nodes(&[1, 2, 4]))
    }

    #[test]
    fn joint_sets_collapse_when_nothing_moves() {
        assert!(!QuorumSets::joint(nodes(&[1, 2, 3]), nodes(&[3, 2, 1])).is_moving());
        // Only joining members: nothing held the data before, so no quorum can be met.
        let mut round = AckRound::for_write_in(Consistency::LocalQuorum, &QuorumSets::joint(vec![], nodes(&[1, 2])));
        round.ack(NodeId(1));
        round.ack(NodeId(2));
        assert!(matches!(round.outcome(), Outcome::Unavailable { .. }));
        let sets = moving();
        assert!(sets.is_moving());
        assert_eq!(sets.all(), nodes(&[1, 2, 3, 4]));
        assert!(sets.contains(NodeId(4)) && !sets.contains(NodeId(5)));
    }

    #[test]
    fn a_write_during_a_move_needs_a_majority_of_each_set() {
        // Old {1,2,3}, new {1,2,4}: acks from 3 and 4 are a majority of neither.
        let mut round = AckRound::for_write_in(Consistency::LocalQuorum, &moving());
        round.ack(NodeId(3));
        round.ack(NodeId(4));
        assert_eq!(round.outcome(), Outcome::Pending);
        round.ack(NodeId(1));
        assert_eq!(round.outcome(), Outcome::Satisfied);
        // Losing both shared nodes leaves neither set a majority.
        let mut round = AckRound::for_write_in(Consistency::LocalQuorum, &moving());
        round.ack(NodeId(4));
        round.fail(NodeId(1));
        round.fail(NodeId(2));
        assert!(matches!(round.outcome(), Outcome::Unavailable { .. }));
        // One answer anywhere satisfies an eventual write, the new-only replica included.
        let mut round = AckRound::for_write_in(Consistency::Eventual, &moving());
        round.ack(NodeId(4));
        assert_eq!(round.outcome(), Outcome::Satisfied);
    }

    #[test]
    fn a_read_during_a_move_sees_what_the_old_majority_acknowledged() {
        // A write acknowledged before the move by {2,3}; the new replica 4 is empty and 1 missed it.
        // A majority of the new set alone ({1,4}) would miss it; the joint read must wait for 2 or 3.
        let mut read = ReadRound::over(Consistency::LocalQuorum, &moving());
        read.reply(NodeId(1), None);
        read.reply(NodeId(4), None);
        assert_eq!(read.outcome(), Outcome::Pending, "a majority of the new set only");
        read.reply(NodeId(3), set(&[7]));
        assert_eq!(read.outcome(), Outcome::Satisfied);
        assert_eq!(merged(&read), set(&[7]));
        // The write-back must make the value a majority of each set: 3 holds it (old set: one more
        // needed from {1}; new set: two more, from {1,4}).
        let mut repair = read.repair(&merged(&read));
        repair.ack(NodeId(4));
        assert_eq!(repair.outcome(), Outcome::Pending);
        repair.ack(NodeId(1));
        assert_eq!(repair.outcome(), Outcome::Satisfied);
    }

    /// Every joint write quorum intersects every majority of the old set and of the new set, so a
    /// joint read sees what an old-set majority acknowledged before the move, and a new-set read
    /// sees what a joint write acknowledged once the move ends. Checked over every subset.
    #[test]
    fn joint_quorums_intersect_both_sets_majorities() {
        let sets = QuorumSets::joint(nodes(&[1, 2, 3]), nodes(&[3, 4, 5]));
        let all = sets.all();
        let subsets = |pick: &dyn Fn(&BTreeSet<NodeId>) -> bool| -> Vec<BTreeSet<NodeId>> {
            (0u32..1 << all.len())
                .map(|mask| all.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| *n).collect())
                .filter(|s| pick(s))
                .collect()
        };
        let joint = subsets(&|s| {
            let mut round = AckRound::for_write_in(Consistency::LocalQuorum, &sets);
            s.iter().for_each(|n| round.ack(*n));
            round.outcome() == Outcome::Satisfied
        });
        for set in sets.sets() {
            let members: BTreeSet<NodeId> = set.iter().copied().collect();
            let majorities = subsets(&|s| s.is_subset(&members) && s.len() >= majority(members.len()));
            for q in &joint {
                for m in &majorities {
                    assert!(!q.is_disjoint(m), "{q:?} misses {m:?}");
                }
            }
        }
    }
}
