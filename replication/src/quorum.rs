//! Acknowledgement rules per consistency level.
//!
//! | level | a write is acknowledged when | a read merges |
//! |---|---|---|
//! | `eventual` | durable on one replica | one replica |
//! | `causal` | durable on one replica in the local region | one local replica (plus the causal wait) |
//! | `local_quorum` | durable on ⌊n/2⌋+1 of the key's n replicas in the local region | the same majority |
//! | `quorum` | durable on ⌊N/2⌋+1 of the key's N replicas across its allowed regions | the same majority |
//!
//! Quorums count only replicas the key may live on (placement rules decide which), so a region the key
//! is barred from never counts towards, nor blocks, a quorum.

use meridian_proto::Consistency;

/// How many replicas hold a key, by location relative to the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaCounts {
    /// Replicas in the coordinator's region.
    pub local: usize,
    /// Replicas in other allowed regions.
    pub remote: usize,
}

/// How many acknowledgements a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Acks needed from local replicas.
    pub local: usize,
    /// Acks needed from any replicas (local ones count too).
    pub total: usize,
}

/// A strict majority of `n`.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl Requirement {
    /// The requirement for `level` over `replicas`.
    ///
    /// A local quorum over zero local replicas (the coordinator's region may not hold the key) cannot
    /// be met; the tracker reports it as unavailable rather than trivially satisfied.
    pub fn for_level(level: Consistency, replicas: ReplicaCounts) -> Requirement {
        match level {
            Consistency::Eventual => Requirement { local: 0, total: 1 },
            Consistency::Causal => Requirement { local: 1, total: 1 },
            Consistency::LocalQuorum => {
                let local = majority(replicas.local);
                Requirement { local, total: local }
            }
            Consistency::Quorum => Requirement { local: 0, total: majority(replicas.local + replicas.remote) },
        }
    }
}

/// The verdict on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still waiting for answers that may arrive.
    Pending,
    /// Enough acknowledgements.
    Satisfied,
    /// Cannot be met any more: too many replicas failed or the deadline passed.
    Unavailable {
        /// Replicas that acknowledged.
        acked: usize,
        /// Acknowledgements that were needed.
        needed: usize,
    },
}

/// Folds acknowledgements and failures into an [`Outcome`].
#[derive(Clone, Debug)]
pub struct QuorumTracker {
    requirement: Requirement,
    replicas: ReplicaCounts,
    acked_local: usize,
    acked_remote: usize,
    failed_local: usize,
    failed_remote: usize,
    expired: bool,
}

impl QuorumTracker {
    /// A tracker for `level` over `replicas`.
    pub fn new(level: Consistency, replicas: ReplicaCounts) -> Self {
        QuorumTracker {
            requirement: Requirement::for_level(level, replicas),
            replicas,
            acked_local: 0,
            acked_remote: 0,
            failed_local: 0,
            failed_remote: 0,
            expired: false,
        }
    }

    /// Records one replica's answer.
    pub fn record(&mut self, local: bool, ok: bool) {
        match (local, ok) {
            (true, true) => self.acked_local += 1,
            (false, true) => self.acked_remote += 1,
            (true, false) => self.failed_local += 1,
            (false, false) => self.failed_remote += 1,
        }
    }

    /// Records that the deadline passed.
    pub fn expire(&mut self) {
        self.expired = true;
    }

    /// The verdict so far.
    pub fn outcome(&self) -> Outcome {
        let acked = self.acked_local + self.acked_remote;
        let need = self.requirement;
        if acked >= need.total && self.acked_local >= need.local {
            return Outcome::Satisfied;
        }
        let local_possible = self.replicas.local - self.failed_local.min(self.replicas.local);
        let all_possible = local_possible + self.replicas.remote - self.failed_remote.min(self.replicas.remote);
        if self.expired || local_possible < need.local || all_possible < need.total {
            return Outcome::Unavailable { acked, needed: need.total.max(need.local) };
        }
        Outcome::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_REGION: ReplicaCounts = ReplicaCounts { local: 3, remote: 0 };
    const THREE_REGIONS: ReplicaCounts = ReplicaCounts { local: 3, remote: 6 };

    #[test]
    fn requirements_per_level() {
        assert_eq!(Requirement::for_level(Consistency::Eventual, ONE_REGION), Requirement { local: 0, total: 1 });
        assert_eq!(Requirement::for_level(Consistency::LocalQuorum, ONE_REGION), Requirement { local: 2, total: 2 });
        assert_eq!(Requirement::for_level(Consistency::Quorum, THREE_REGIONS), Requirement { local: 0, total: 5 });
        let single = ReplicaCounts { local: 1, remote: 0 };
        for level in Consistency::ALL {
            let mut t = QuorumTracker::new(level, single);
            t.record(true, true);
            assert_eq!(t.outcome(), Outcome::Satisfied, "{level} on one node");
        }
    }

    #[test]
    fn local_quorum_fails_fast_when_majority_is_gone() {
        let mut t = QuorumTracker::new(Consistency::LocalQuorum, ONE_REGION);
        t.record(true, true);
        assert_eq!(t.outcome(), Outcome::Pending);
        t.record(true, false);
        assert_eq!(t.outcome(), Outcome::Pending);
        t.record(true, false);
        assert_eq!(t.outcome(), Outcome::Unavailable { acked: 1, needed: 2 });
    }

    #[test]
    fn remote_acks_do_not_satisfy_local_quorum() {
        let mut t = QuorumTracker::new(Consistency::LocalQuorum, THREE_REGIONS);
        for _ in 0..6 {
            t.record(false, true);
        }
        assert_eq!(t.outcome(), Outcome::Pending);
        t.expire();
        assert_eq!(t.outcome(), Outcome::Unavailable { acked: 6, needed: 2 });
    }

    #[test]
    fn local_quorum_without_local_replicas_is_unavailable() {
        let t = QuorumTracker::new(Consistency::LocalQuorum, ReplicaCounts { local: 0, remote: 3 });
        assert!(matches!(t.outcome(), Outcome::Unavailable { .. }));
    }
}
