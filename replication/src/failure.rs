//! A sans-IO failure detector: fed the times heartbeats arrive, it answers whether a node is alive,
//! suspect or dead at a given time.
//!
//! The driver calls [`FailureDetector::heartbeat`] whenever anything arrives from a node (a heartbeat,
//! or any other message — all are evidence of life) and asks [`FailureDetector::status`] when it routes
//! a request or reports health. Times are milliseconds of a *monotonic* clock chosen by the driver; the
//! detector never reads a clock, so tests give explicit times.
//!
//! ## Algorithm
//!
//! Per node the detector keeps the last arrival time and a bounded window of the most recent
//! inter-arrival intervals. With `silence = now - last arrival`:
//!
//! * `silence ≥ dead_after_ms` → [`Liveness::Dead`]. A hard ceiling: whatever the history, a node that
//!   has said nothing for that long is dead, so detection time is bounded by configuration.
//! * `silence ≥ suspect threshold` → [`Liveness::Suspect`], where the threshold is
//!   `min(dead_after_ms, max(suspect_after_ms, mean + k·σ))` over the window (`k` =
//!   [`DetectorConfig::jitter_sigmas`]).
//! * otherwise [`Liveness::Alive`].
//!
//! The `mean + k·σ` term is phi-accrual (Hayashibara et al.) with a normal model of inter-arrival
//! times, reduced to integers: phi accrual suspects once `P(an arrival this late) < 10^-φ`, which for a
//! normal distribution is exactly `silence > mean + k·σ` with `k` fixed by `φ` (k = 4 ≈ φ 4.5). So a node
//! whose heartbeats arrive steadily is suspected after the configured `suspect_after_ms`, and one whose
//! heartbeats are naturally irregular (a loaded node, a lossy WAN path) earns proportionally more slack
//! before it is suspected — never beyond `dead_after_ms`. Adaptation only ever *delays* suspicion.
//!
//! Integer arithmetic throughout (no floating point, no `exp`/`erf`), so results are identical on every
//! platform.
//!
//! ## Choices
//!
//! * **Bounded memory.** At most [`DetectorConfig::window`] intervals per node (a ring; at most
//!   [`DetectorConfig::MAX_WINDOW`]); [`FailureDetector::forget`] drops a node (call it when membership
//!   removes one). The driver feeds heartbeats only from authenticated members, which bounds the nodes.
//! * **Outages are not samples.** An interval of `dead_after_ms` or more (the node was dead, then came
//!   back) is not recorded: it says nothing about normal arrival jitter and would inflate the threshold
//!   for a long time after. The rest of the window is kept.
//! * **One heartbeat revives.** A dead or suspect node is alive again on its next heartbeat. Damping
//!   flaps is the router's business (it may prefer long-alive nodes); the detector reports what it saw.
//! * **Duplicates and reordering.** An arrival at or before the last one recorded (a duplicated or
//!   reordered delivery, or a driver mixing time sources) adds no sample and never moves time back.
//!
//! ## Failure model
//!
//! Crash-stop and crash-recover nodes, message loss and delay. A detector is unreliable by nature: a
//! slow or partitioned node is indistinguishable from a crashed one, so `Suspect`/`Dead` are hints for
//! routing and repair (hinted handoff, choosing quorum members), never proof; correctness never depends
//! on them because every write path tolerates a wrong guess.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use meridian_crdt::NodeId;

use crate::ReplicationError;

/// What the detector believes about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    /// Heard from recently enough.
    Alive,
    /// Silent longer than its suspect threshold: route around it where possible.
    Suspect,
    /// Silent for `dead_after_ms` or more.
    Dead,
    /// Never heard from (or forgotten).
    Unknown,
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
        })
    }
}

/// Failure detector settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Silence after which a node with steady heartbeats becomes [`Liveness::Suspect`] (the floor of
    /// the adaptive threshold). At least 1.
    pub suspect_after_ms: u64,
    /// Silence after which any node is [`Liveness::Dead`]. At least `suspect_after_ms`.
    pub dead_after_ms: u64,
    /// Inter-arrival intervals kept per node, 1 ..= [`DetectorConfig::MAX_WINDOW`].
    pub window: usize,
    /// `k` in the adaptive threshold `mean + k·σ`; 0 turns adaptation off (fixed thresholds).
    pub jitter_sigmas: u64,
}

impl DetectorConfig {
    /// Default [`DetectorConfig::window`]: enough intervals for a stable mean and deviation, small
    /// enough to follow a change in a node's rhythm within a few dozen heartbeats.
    pub const DEFAULT_WINDOW: usize = 32;
    /// Default [`DetectorConfig::jitter_sigmas`] (≈ phi 4.5).
    pub const DEFAULT_JITTER_SIGMAS: u64 = 4;
    /// Largest allowed [`DetectorConfig::window`], so memory per node stays bounded whatever the config.
    pub const MAX_WINDOW: usize = 1024;

    /// The given thresholds with the default window and jitter allowance.
    pub fn new(suspect_after_ms: u64, dead_after_ms: u64) -> Self {
        DetectorConfig {
            suspect_after_ms,
            dead_after_ms,
            window: Self::DEFAULT_WINDOW,
            jitter_sigmas: Self::DEFAULT_JITTER_SIGMAS,
        }
    }

    /// Checks the settings; [`FailureDetector::new`] calls it.
    pub fn validate(&self) -> Result<(), ReplicationError> {
        let invalid = |why: String| Err(ReplicationError::InvalidDetectorConfig(why));
        if self.suspect_after_ms == 0 {
            return invalid("suspect_after_ms must be at least 1".into());
        }
        if self.dead_after_ms < self.suspect_after_ms {
            return invalid(format!(
                "dead_after_ms ({}) must be at least suspect_after_ms ({})",
                self.dead_after_ms, self.suspect_after_ms
            ));
        }
        if self.window == 0 || self.window > Self::MAX_WINDOW {
            return invalid(format!("window ({}) must be between 1 and {}", self.window, Self::MAX_WINDOW));
        }
        Ok(())
    }
}

/// A node's health in detail, for `meridian status` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// The verdict.
    pub liveness: Liveness,
    /// Time since the last arrival (0 if the query time is not after it).
    pub silent_ms: u64,
    /// The node's current suspect threshold (adaptive; between the configured suspect and dead times).
    pub suspect_after_ms: u64,
    /// Mean of the sampled inter-arrival intervals, if any were sampled.
    pub mean_interval_ms: Option<u64>,
    /// Number of intervals in the window.
    pub samples: usize,
}

/// Arrival history of one node.
#[derive(Clone, Debug)]
struct Arrivals {
    last_ms: u64,
    intervals: VecDeque<u64>,
}

/// The failure detector: per-node arrival histories and the rules above. See the module docs.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    config: DetectorConfig,
    nodes: BTreeMap<NodeId, Arrivals>,
}

impl FailureDetector {
    /// A detector that has heard from nobody; refuses an invalid `config`
    /// ([`ReplicationError::InvalidDetectorConfig`]).
    pub fn new(config: DetectorConfig) -> Result<Self, ReplicationError> {
        config.validate()?;
        Ok(FailureDetector { config, nodes: BTreeMap::new() })
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Records that something arrived from `node` at `now_ms`.
    pub fn heartbeat(&mut self, node: NodeId, now_ms: u64) {
        let window = self.config.window;
        let dead_after = self.config.dead_after_ms;
        let arrivals =
            self.nodes.entry(node).or_insert_with(|| Arrivals { last_ms: now_ms, intervals: VecDeque::new() });
        if now_ms <= arrivals.last_ms {
            return;
        }
        let interval = now_ms - arrivals.last_ms;
        arrivals.last_ms = now_ms;
        if interval >= dead_after {
            return;
        }
        if arrivals.intervals.len() == window {
            arrivals.intervals.pop_front();
        }
        arrivals.intervals.push_back(interval);
    }

    /// What the detector believes about `node` at `now_ms`.
    pub fn status(&self, node: NodeId, now_ms: u64) -> Liveness {
        self.health(node, now_ms).map_or(Liveness::Unknown, |h| h.liveness)
    }

    /// The detail behind [`FailureDetector::status`]; `None` for a node never heard from.
    pub fn health(&self, node: NodeId, now_ms: u64) -> Option<Health> {
        let arrivals = self.nodes.get(&node)?;
        let silent_ms = now_ms.saturating_sub(arrivals.last_ms);
        let (mean, sigma) = mean_and_deviation(&arrivals.intervals);
        let adaptive = mean.map_or(0, |m| m.saturating_add(self.config.jitter_sigmas.saturating_mul(sigma)));
        let suspect_after_ms = self.config.suspect_after_ms.max(adaptive).min(self.config.dead_after_ms);
        let liveness = if silent_ms >= self.config.dead_after_ms {
            Liveness::Dead
        } else if silent_ms >= suspect_after_ms {
            Liveness::Suspect
        } else {
            Liveness::Alive
        };
        Some(Health {
            liveness,
            silent_ms,
            suspect_after_ms,
            mean_interval_ms: mean,
            samples: arrivals.intervals.len(),
        })
    }

    /// The nodes that are [`Liveness::Alive`] at `now_ms`, in node order (suspect nodes are left out).
    pub fn live_nodes(&self, now_ms: u64) -> Vec<NodeId> {
        self.nodes.keys().copied().filter(|n| self.status(*n, now_ms) == Liveness::Alive).collect()
    }

    /// Every tracked node with its status at `now_ms`, in node order.
    pub fn statuses(&self, now_ms: u64) -> Vec<(NodeId, Liveness)> {
        self.nodes.keys().map(|n| (*n, self.status(*n, now_ms))).collect()
    }

    /// Drops everything known about `node` (it becomes [`Liveness::Unknown`]); returns whether it was
    /// tracked. Call when membership removes a node.
    pub fn forget(&mut self, node: NodeId) -> bool {
        self.nodes.remove(&node).is_some()
    }

    /// Number of nodes tracked.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is tracked.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Mean and population standard deviation of `samples` (both rounded down), or `(None, 0)` when empty.
fn mean_and_deviation(samples: &VecDeque<u64>) -> (Option<u64>, u64) {
    if samples.is_empty() {
        return (None, 0);
    }
    let n = samples.len() as u128;
    let sum: u128 = samples.iter().map(|&x| u128::from(x)).sum();
    let sum_sq: u128 = samples.iter().map(|&x| u128::from(x) * u128::from(x)).sum();
    let mean = (sum / n) as u64;
    // n·Σx² − (Σx)² ≥ 0 (Cauchy–Schwarz); divided by n² it is the population variance.
    let variance = (n * sum_sq - sum * sum) / (n * n);
    (Some(mean), variance.isqrt() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn detector() -> FailureDetector {
        FailureDetector::new(DetectorConfig::new(500, 3_000)).unwrap()
    }

    /// Heartbeats every 100 ms from `from` up to and including `until`.
    fn beat(d: &mut FailureDetector, node: NodeId, from: u64, until: u64) {
        for t in (from..=until).step_by(100) {
            d.heartbeat(node, t);
        }
    }

    #[test]
    fn steady_heartbeats_keep_a_node_alive() {
        let mut d = detector();
        for t in (0..10_000).step_by(100) {
            d.heartbeat(A, t);
            assert_eq!(d.status(A, t), Liveness::Alive);
            assert_eq!(d.status(A, t + 99), Liveness::Alive, "between beats");
        }
        let h = d.health(A, 9_900).unwrap();
        assert_eq!((h.mean_interval_ms, h.suspect_after_ms), (Some(100), 500), "steady: the configured threshold");
    }

    #[test]
    fn silence_turns_suspect_then_dead_at_the_configured_thresholds() {
        let mut d = detector();
        beat(&mut d, A, 0, 5_000);
        assert_eq!(d.status(A, 5_499), Liveness::Alive);
        assert_eq!(d.status(A, 5_500), Liveness::Suspect);
        assert_eq!(d.status(A, 7_999), Liveness::Suspect);
        assert_eq!(d.status(A, 8_000), Liveness::Dead);
        assert_eq!(d.status(A, 1_000_000), Liveness::Dead);
        assert_eq!(d.health(A, 8_000).unwrap().silent_ms, 3_000);
    }

    #[test]
    fn resumed_heartbeats_make_a_dead_node_alive_again() {
        let mut d = detector();
        beat(&mut d, A, 0, 5_000);
        assert_eq!(d.status(A, 20_000), Liveness::Dead);
        d.heartbeat(A, 20_000);
        assert_eq!(d.status(A, 20_000), Liveness::Alive);
        let h = d.health(A, 20_000).unwrap();
        assert_eq!(h.mean_interval_ms, Some(100), "the 15 s outage is not a sample");
        assert_eq!(h.suspect_after_ms, 500);
        beat(&mut d, A, 20_100, 21_000);
        assert_eq!(d.status(A, 21_499), Liveness::Alive);
        assert_eq!(d.status(A, 21_500), Liveness::Suspect);
    }

    #[test]
    fn unknown_until_heard_from_and_after_forget() {
        let mut d = detector();
        assert_eq!(d.status(A, 0), Liveness::Unknown);
        assert_eq!(d.health(A, 0), None);
        d.heartbeat(A, 1_000);
        assert_eq!(d.status(A, 1_000), Liveness::Alive);
        assert_eq!(d.health(A, 1_000).unwrap().samples, 0, "one arrival, no interval yet");
        assert!(d.forget(A));
        assert!(!d.forget(A));
        assert_eq!(d.status(A, 1_000), Liveness::Unknown);
        assert!(d.is_empty());
    }

    #[test]
    fn memory_per_node_is_bounded_by_the_window() {
        let mut d = FailureDetector::new(DetectorConfig { window: 8, ..DetectorConfig::new(500, 3_000) }).unwrap();
        for t in 1..=100_000u64 {
            d.heartbeat(A, t * 7);
            assert!(d.nodes[&A].intervals.len() <= 8);
        }
        assert_eq!(d.health(A, 700_000).unwrap().samples, 8);
        assert!(d.nodes[&A].intervals.capacity() <= 64, "the ring does not grow");
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn jittery_arrivals_earn_more_slack_but_never_past_dead() {
        let mut d = detector();
        // Intervals alternate 100 and 700 ms: mean 400, σ 300, threshold 400 + 4·300 = 1 600 ms.
        let mut t = 0;
        for i in 0..40 {
            d.heartbeat(A, t);
            t += if i % 2 == 0 { 100 } else { 700 };
        }
        let last = t - 700;
        let h = d.health(A, last).unwrap();
        assert_eq!((h.mean_interval_ms, h.suspect_after_ms), (Some(400), 1_600));
        assert_eq!(d.status(A, last + 1_000), Liveness::Alive, "a steady node would be suspect by now");
        assert_eq!(d.status(A, last + 1_599), Liveness::Alive);
        assert_eq!(d.status(A, last + 1_600), Liveness::Suspect);
        assert_eq!(d.status(A, last + 3_000), Liveness::Dead);

        // Wild jitter: the threshold is capped at dead_after_ms.
        let mut t = 0;
        for i in 0..40 {
            d.heartbeat(B, t);
            t += if i % 2 == 0 { 10 } else { 2_900 };
        }
        let last = t - 2_900;
        assert_eq!(d.health(B, last).unwrap().suspect_after_ms, 3_000);
        assert_eq!(d.status(B, last + 2_999), Liveness::Alive);
        assert_eq!(d.status(B, last + 3_000), Liveness::Dead);

        // With adaptation off the configured threshold holds whatever the jitter.
        let mut fixed =
            FailureDetector::new(DetectorConfig { jitter_sigmas: 0, ..DetectorConfig::new(500, 3_000) }).unwrap();
        for t in [0, 100, 800, 900, 1_600] {
            fixed.heartbeat(A, t);
        }
        assert_eq!(fixed.health(A, 1_600).unwrap().suspect_after_ms, 500);
    }

    #[test]
    fn live_nodes_lists_only_alive_nodes() {
        let mut d = detector();
        beat(&mut d, A, 0, 10_000);
        beat(&mut d, B, 0, 9_000);
        d.heartbeat(NodeId(3), 0);
        assert_eq!(d.live_nodes(10_000), vec![A]);
        assert_eq!(d.statuses(10_000), vec![(A, Liveness::Alive), (B, Liveness::Suspect), (NodeId(3), Liveness::Dead)]);
        assert_eq!(d.live_nodes(9_000), vec![A, B]);
    }

    #[test]
    fn duplicate_and_reordered_heartbeats_are_ignored() {
        let mut d = detector();
        beat(&mut d, A, 0, 1_000);
        d.heartbeat(A, 1_000);
        d.heartbeat(A, 400);
        let h = d.health(A, 1_000).unwrap();
        assert_eq!((h.samples, h.mean_interval_ms, h.silent_ms), (10, Some(100), 0));
        assert_eq!(d.status(A, 1_499), Liveness::Alive, "time did not move back");
        assert_eq!(d.health(A, 900).unwrap().silent_ms, 0, "a query before the last arrival sees silence 0");
    }

    #[test]
    fn config_is_validated() {
        let bad = [
            DetectorConfig::new(0, 100),
            DetectorConfig::new(500, 499),
            DetectorConfig { window: 0, ..DetectorConfig::new(500, 3_000) },
            DetectorConfig { window: DetectorConfig::MAX_WINDOW + 1, ..DetectorConfig::new(500, 3_000) },
        ];
        for config in bad {
            assert!(
                matches!(FailureDetector::new(config), Err(ReplicationError::InvalidDetectorConfig(_))),
                "{config:?}"
            );
        }
        let ok = FailureDetector::new(DetectorConfig::new(500, 500)).unwrap();
        assert_eq!(ok.config().dead_after_ms, 500);
    }

    fn rank(l: Liveness) -> u8 {
        match l {
            Liveness::Alive => 0,
            Liveness::Suspect => 1,
            Liveness::Dead => 2,
            Liveness::Unknown => unreachable!("tracked nodes are never unknown"),
        }
    }

    proptest! {
        /// Whatever the heartbeat history: after the last arrival a node stays alive for at least
        /// `suspect_after_ms`, is dead from exactly `dead_after_ms`, and its status only worsens as the
        /// silence grows; the window never exceeds its bound.
        #[test]
        fn status_only_worsens_with_silence(
            gaps in proptest::collection::vec(0u64..5_000, 1..80),
            suspect in 1u64..2_000,
            extra in 0u64..4_000,
            window in 1usize..16,
            sigmas in 0u64..6,
            probes in proptest::collection::vec(0u64..10_000, 1..20),
        ) {
            let config = DetectorConfig { suspect_after_ms: suspect, dead_after_ms: suspect + extra, window, jitter_sigmas: sigmas };
            let mut d = FailureDetector::new(config).unwrap();
            let mut t = 0;
            for gap in &gaps {
                t += gap;
                d.heartbeat(A, t);
                prop_assert_eq!(d.status(A, t), Liveness::Alive);
                prop_assert!(d.nodes[&A].intervals.len() <= window);
            }
            let mut probes = probes;
            probes.sort_unstable();
            let mut previous = 0;
            for silence in probes {
                let status = d.status(A, t + silence);
                prop_assert!(rank(status) >= previous);
                previous = rank(status);
                if silence < suspect {
                    prop_assert_eq!(status, Liveness::Alive);
                }
                prop_assert_eq!(status == Liveness::Dead, silence >= config.dead_after_ms);
            }
        }
    }
}
