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

/// Largest logical counter a clock issues, so that [`Hlc::pack`] is exact: 65 536 events in one
/// millisecond borrow the next millisecond instead.
pub const MAX_LOGICAL: u32 = u16::MAX as u32;

impl Hlc {
    /// The least timestamp greater than this one that a clock issues.
    pub(crate) fn successor(self) -> Hlc {
        if self.logical < MAX_LOGICAL {
            Hlc { wall_ms: self.wall_ms, logical: self.logical + 1 }
        } else {
            Hlc { wall_ms: self.wall_ms + 1, logical: 0 }
        }
    }

    /// The timestamp as one order-preserving u64: 48 bits of milliseconds, 16 of logical counter
    /// (what causal tokens carry). Exact for every timestamp a clock issues before the year 10 889.
    pub fn pack(self) -> u64 {
        (self.wall_ms << 16) | u64::from(self.logical.min(MAX_LOGICAL))
    }

    /// Inverse of [`Hlc::pack`].
    pub fn unpack(packed: u64) -> Hlc {
        Hlc { wall_ms: packed >> 16, logical: (packed & 0xFFFF) as u32 }
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
    fn logical_counter_stays_packable_and_pack_preserves_order() {
        let mut clock = HlcClock::new(60_000);
        let mut previous = clock.tick(7);
        for _ in 0..70_000 {
            let next = clock.tick(7);
            assert!(next.logical <= MAX_LOGICAL);
            assert!(next.pack() > previous.pack());
            assert_eq!(Hlc::unpack(next.pack()), next);
            previous = next;
        }
        assert_eq!(previous.wall_ms, 8, "borrowed the next millisecond");
    }

    #[test]
    fn refuses_timestamps_beyond_drift() {
        let mut clock = HlcClock::new(100);
        let err = clock.observe(Hlc { wall_ms: 10_000, logical: 0 }, 1_000).unwrap_err();
        assert!(matches!(err, CrdtError::ClockDrift { .. }));
        assert_eq!(clock.last(), Hlc::default());
    }
}
