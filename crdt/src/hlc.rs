//! Hybrid logical clocks (Kulkarni et al.): timestamps that follow physical time when clocks agree and
//! never run backwards or behind a timestamp already observed when they do not.
//!
//! Physical time is a parameter (`now_ms`), never read here, so the clock is deterministic under test.
//! Last-writer-wins registers order writes by `(Hlc, NodeId)`, never by wall-clock alone.

use serde::{Deserialize, Serialize};

use crate::CrdtError;

/// A hybrid logical timestamp: milliseconds since the Unix epoch plus a logical counter that orders
/// events within the same millisecond.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Physical component, ms since the Unix epoch.
    pub wall_ms: u64,
    /// Logical component.
    pub logical: u32,
}

/// The clock of one replica.
#[derive(Clone, Debug)]
pub struct HlcClock {
    last: Hlc,
    max_drift_ms: u64,
}

impl HlcClock {
    /// A clock that refuses remote timestamps more than `max_drift_ms` ahead of local physical time.
    pub fn new(max_drift_ms: u64) -> Self {
        HlcClock { last: Hlc::default(), max_drift_ms }
    }

    /// A timestamp for a local event at physical time `now_ms`, greater than every timestamp issued
    /// or observed before.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        self.last =
            if now_ms > self.last.wall_ms { Hlc { wall_ms: now_ms, logical: 0 } } else { self.successor_of_last() };
        self.last
    }

    /// Folds in a timestamp seen from another replica so that later local events order after it.
    ///
    /// Refuses (and ignores) a timestamp further ahead of `now_ms` than the configured drift: one
    /// replica with a broken clock must not drag every other clock into the future.
    pub fn observe(&mut self, remote: Hlc, now_ms: u64) -> Result<(), CrdtError> {
        if remote.wall_ms > now_ms.saturating_add(self.max_drift_ms) {
            return Err(CrdtError::ClockDrift {
                remote_ms: remote.wall_ms,
                local_ms: now_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }

    /// The newest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    fn successor_of_last(&self) -> Hlc {
        self.last.successor()
    }
}

impl Hlc {
    /// The least timestamp greater than this one.
    pub(crate) fn successor(self) -> Hlc {
        match self.logical.checked_add(1) {
            Some(logical) => Hlc { wall_ms: self.wall_ms, logical },
            // 4 billion events in one millisecond: borrow the next millisecond instead of wrapping.
            None => Hlc { wall_ms: self.wall_ms + 1, logical: 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards_when_wall_clock_does() {
        let mut clock = HlcClock::new(60_000);
        let a = clock.tick(1_000);
        let b = clock.tick(900);
        let c = clock.tick(1_000);
        assert!(a < b && b < c);
    }

    #[test]
    fn orders_after_observed_remote() {
        let mut clock = HlcClock::new(60_000);
        clock.tick(1_000);
        clock.observe(Hlc { wall_ms: 5_000, logical: 3 }, 1_000).unwrap();
        assert!(clock.tick(1_000) > Hlc { wall_ms: 5_000, logical: 3 });
    }

    #[test]
    fn refuses_timestamps_beyond_drift() {
        let mut clock = HlcClock::new(100);
        let err = clock.observe(Hlc { wall_ms: 10_000, logical: 0 }, 1_000).unwrap_err();
        assert!(matches!(err, CrdtError::ClockDrift { .. }));
        assert_eq!(clock.last(), Hlc::default());
    }
}
