//! What a replica knows about the completeness of other origins' logs, for causal reads.
//!
//! A causal token maps origin nodes to HLC timestamps. A replica may serve a causal read of a key in
//! partition `p` once, for every origin `o` of the token, it holds *every* write of `o` to `p` with
//! an HLC at or below the token's entry. Log positions are dense per `(partition, origin)`, so
//! holding every record up to a position is what the replica's version vector says; what it needs
//! on top is which HLCs a position covers. That is a [`SafeReport`]: origin `o` states "every write I
//! timestamped at or below `safe` to this partition sits at or below position `seq`". Once the
//! replica's vector reaches `seq` for `o`, it knows `o`'s log up to `safe`.
//!
//! An origin makes such a statement by taking its causal frontier (every write it timestamped at or
//! below it is durable, so it has its position) and *then* the partition's last position. Reports
//! are facts about `o`'s log, true wherever they are read, so they can be relayed.
//!
//! Reports usually arrive before the records they cover (the origin's position moves on while its
//! pushes are in flight), so a replica keeps the few latest pending ones per `(partition, origin)`
//! and settles them as its vector catches up. Sans-IO: the caller says what its vector holds.

use std::collections::{BTreeMap, VecDeque};

use meridian_crdt::NodeId;
use serde::{Deserialize, Serialize};

/// Pending reports kept per `(partition, origin)`; past it, the ones between the lowest and the
/// newest are dropped.
pub const MAX_PENDING_REPORTS: usize = 16;

/// "Every write of `origin` to the partition timestamped at or below `safe` is at or below position
/// `seq` of its log."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafeReport {
    /// The origin whose log this is about.
    pub origin: NodeId,
    /// A position in that origin's log of the partition.
    pub seq: u64,
    /// A packed HLC.
    pub safe: u64,
}

#[derive(Debug, Default)]
struct Knowledge {
    /// Every write of the origin at or below this packed HLC is held here.
    known: u64,
    /// Reports whose position this replica has not reached yet, by ascending position.
    pending: VecDeque<(u64, u64)>,
}

/// Per `(partition, origin)`: the HLC up to which this replica holds the origin's writes.
#[derive(Debug, Default)]
pub struct SafeTimes {
    by_key: BTreeMap<(u16, NodeId), Knowledge>,
    /// Keys whose `known` rose since [`SafeTimes::take_changed`] last ran (to persist them).
    changed: std::collections::BTreeSet<(u16, NodeId)>,
}

impl SafeTimes {
    /// Knows nothing yet.
    pub fn new() -> SafeTimes {
        SafeTimes::default()
    }

    /// Takes in a report about `partition`. `held` is this replica's gap-free position of the
    /// report's origin in the partition (its version-vector entry).
    pub fn report(&mut self, partition: u16, report: SafeReport, held: u64) {
        let knowledge = self.by_key.entry((partition, report.origin)).or_default();
        if report.safe <= knowledge.known {
            return;
        }
        if report.seq <= held {
            knowledge.known = report.safe;
            self.changed.insert((partition, report.origin));
            knowledge.pending.retain(|(_, safe)| *safe > report.safe);
            return;
        }
        // Keep pending reports sorted by position with safe times rising: a report behind another
        // one's position with a higher safe time adds nothing.
        let at = knowledge.pending.partition_point(|(seq, _)| *seq <= report.seq);
        if knowledge.pending.iter().take(at).any(|(_, safe)| *safe >= report.safe) {
            return;
        }
        knowledge.pending.insert(at, (report.seq, report.safe));
        let mut i = at + 1;
        while i < knowledge.pending.len() {
            if knowledge.pending[i].1 <= report.safe {
                knowledge.pending.remove(i);
            } else {
                i += 1;
            }
        }
        // Over the bound, thin out the middle: the lowest report settles first (the replica is
        // catching up towards it) and the newest covers the most.
        while knowledge.pending.len() > MAX_PENDING_REPORTS {
            knowledge.pending.remove(1);
        }
    }

    /// The packed HLC up to which this replica holds `origin`'s writes to `partition`, given its
    /// gap-free position `held` of that origin (settles the reports it now covers).
    pub fn known(&mut self, partition: u16, origin: NodeId, held: u64) -> u64 {
        let Some(knowledge) = self.by_key.get_mut(&(partition, origin)) else { return 0 };
        let before = knowledge.known;
        while let Some(&(seq, safe)) = knowledge.pending.front() {
            if seq > held {
                break;
            }
            knowledge.known = knowledge.known.max(safe);
            knowledge.pending.pop_front();
        }
        if knowledge.known > before {
            self.changed.insert((partition, origin));
        }
        knowledge.known
    }

    /// What this replica can vouch for about `origin`'s log of `partition` (to relay it): the
    /// position it holds and the HLC that position is known to cover. `None` when it knows nothing.
    pub fn vouch(&mut self, partition: u16, origin: NodeId, held: u64) -> Option<SafeReport> {
        let known = self.known(partition, origin, held);
        (known > 0).then_some(SafeReport { origin, seq: held, safe: known })
    }

    /// Every `(partition, origin, known)` whose knowledge rose since the last call. Knowledge is
    /// about data this replica holds durably, so it stays true across a restart once persisted
    /// after that data (restore it with [`SafeTimes::restore`]).
    pub fn take_changed(&mut self) -> Vec<(u16, NodeId, u64)> {
        let changed = std::mem::take(&mut self.changed);
        changed.into_iter().filter_map(|(p, o)| self.by_key.get(&(p, o)).map(|k| (p, o, k.known))).collect()
    }

    /// Restores persisted knowledge (see [`SafeTimes::take_changed`]).
    pub fn restore(&mut self, partition: u16, origin: NodeId, known: u64) {
        let knowledge = self.by_key.entry((partition, origin)).or_default();
        knowledge.known = knowledge.known.max(known);
    }

    /// Origins this replica has heard about for `partition`.
    pub fn origins(&self, partition: u16) -> Vec<NodeId> {
        self.by_key.range((partition, NodeId(0))..=(partition, NodeId(u64::MAX))).map(|((_, o), _)| *o).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: NodeId = NodeId(7);

    fn report(seq: u64, safe: u64) -> SafeReport {
        SafeReport { origin: O, seq, safe }
    }

    #[test]
    fn a_report_counts_once_its_position_is_held() {
        let mut times = SafeTimes::new();
        times.report(3, report(10, 500), 4);
        assert_eq!(times.known(3, O, 9), 0, "position 10 not held yet");
        assert_eq!(times.known(3, O, 10), 500);
        assert_eq!(times.known(4, O, 100), 0, "another partition knows nothing");
    }

    #[test]
    fn older_pending_reports_settle_while_newer_ones_wait() {
        let mut times = SafeTimes::new();
        for (seq, safe) in [(5, 100), (8, 200), (12, 300)] {
            times.report(0, report(seq, safe), 0);
        }
        assert_eq!(times.known(0, O, 9), 200);
        assert_eq!(times.known(0, O, 11), 200);
        assert_eq!(times.known(0, O, 12), 300);
    }

    #[test]
    fn knowledge_never_goes_back_and_dominated_reports_are_dropped() {
        let mut times = SafeTimes::new();
        times.report(0, report(5, 100), 5);
        times.report(0, report(3, 50), 5);
        assert_eq!(times.known(0, O, 5), 100);
        // A report further ahead with a smaller safe time adds nothing once a nearer one covers more.
        times.report(0, report(9, 400), 5);
        times.report(0, report(12, 350), 5);
        assert_eq!(times.known(0, O, 12), 400);
    }

    #[test]
    fn pending_reports_are_bounded_keeping_the_lowest_and_the_newest() {
        let mut times = SafeTimes::new();
        for i in 1..=100u64 {
            times.report(0, report(i * 10, i * 100), 0);
        }
        assert_eq!(times.known(0, O, 10), 100, "the lowest report is kept: it settles first");
        assert_eq!(times.known(0, O, 1000), 10_000, "the newest report is kept");
    }

    #[test]
    fn changed_knowledge_is_handed_out_once_and_restores() {
        let mut times = SafeTimes::new();
        times.report(2, report(3, 90), 3);
        times.report(2, report(5, 120), 3);
        assert_eq!(times.take_changed(), vec![(2, O, 90)]);
        assert_eq!(times.take_changed(), vec![]);
        assert_eq!(times.known(2, O, 5), 120);
        assert_eq!(times.take_changed(), vec![(2, O, 120)]);
        let mut restarted = SafeTimes::new();
        restarted.restore(2, O, 120);
        assert_eq!(restarted.known(2, O, 0), 120);
    }

    #[test]
    fn vouching_relays_what_is_known() {
        let mut times = SafeTimes::new();
        assert_eq!(times.vouch(0, O, 3), None);
        times.report(0, report(3, 90), 3);
        assert_eq!(times.vouch(0, O, 4), Some(SafeReport { origin: O, seq: 4, safe: 90 }));
        assert_eq!(times.origins(0), vec![O]);
    }
}
