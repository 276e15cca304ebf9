//! The replica's hybrid logical clock and its causal frontier: every write gets a timestamp, held
//! *in flight* until the write is durable or failed; the frontier is the newest timestamp below
//! which nothing is in flight, so a causal token never names a write that is not yet readable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_client::proto::CausalToken;
use meridian_crdt::{Hlc, HlcClock};

use super::Replica;

/// Milliseconds since the Unix epoch (0 before it).
pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The wall clock this node timestamps writes with (`clock_offset_ms` skews it in fault tests).
pub(super) fn skewed_now_ms(offset_ms: i64) -> u64 {
    now_ms().saturating_add_signed(offset_ms)
}

/// The node's HLC and the timestamps of writes not yet durable, which bound its causal frontier.
#[derive(Debug)]
pub(super) struct ClockState {
    pub(super) clock: HlcClock,
    in_flight: BTreeMap<u64, usize>,
}

impl ClockState {
    pub(super) fn new(clock: HlcClock) -> ClockState {
        ClockState { clock, in_flight: BTreeMap::new() }
    }

    /// Every write this node timestamped at or below this packed HLC is durable (or failed).
    pub(super) fn frontier(&self) -> u64 {
        match self.in_flight.keys().next() {
            Some(oldest) => oldest - 1,
            None => self.clock.last().pack(),
        }
    }
}

/// A write's timestamp, registered as in flight until dropped (after the write is durable or failed).
pub(super) struct InFlightTs {
    replica: Arc<Replica>,
    pub(super) ts: Hlc,
}

impl Drop for InFlightTs {
    fn drop(&mut self) {
        self.replica.release_ts(self.ts);
    }
}

impl Replica {
    /// A token names one of this node's own timestamps beyond its clock: after a restart, the clock
    /// resumes from the log, which may lack the newest timestamps it handed out (a frontier raised by
    /// [`Replica::observe_token`], writes committed out of timestamp order). Within the drift bound
    /// that is our own past, and every write we acknowledged below it is durable: resume the clock
    /// past it. Beyond the bound the token is not ours (another cluster, a wiped data directory).
    pub(super) fn resume_clock_to(&self, own: u64) -> bool {
        let frontier = {
            let mut state = self.clock.lock().expect("clock lock");
            let now = skewed_now_ms(self.config.clock_offset_ms);
            if state.clock.observe(Hlc::unpack(own), now).is_err() {
                return false;
            }
            state.frontier()
        };
        self.publish_frontier(frontier);
        true
    }

    /// The newest timestamp this node has issued, packed.
    pub(super) fn newest_issued(&self) -> u64 {
        self.clock.lock().expect("clock lock").clock.last().pack()
    }

    /// Moves this node's clock past every timestamp in `token` (bounded by the drift limit), so a
    /// write that follows what its session saw is also timestamped after it: a register's later
    /// write wins even when this node's wall clock is behind the one that wrote the earlier value.
    pub(super) fn observe_token(&self, token: &CausalToken) {
        let Some(newest) = token.0.iter().map(|(_, packed)| packed).max() else { return };
        let mut state = self.clock.lock().expect("clock lock");
        let now = skewed_now_ms(self.config.clock_offset_ms);
        // A timestamp too far ahead (a bad token) is ignored: the write keeps its own clock.
        let _ = state.clock.observe(Hlc::unpack(newest), now);
    }

    /// Timestamps a write and registers it in flight until the returned guard is dropped.
    pub(super) fn issue_ts(self: &Arc<Self>) -> InFlightTs {
        let mut state = self.clock.lock().expect("clock lock");
        let ts = state.clock.tick(skewed_now_ms(self.config.clock_offset_ms));
        *state.in_flight.entry(ts.pack()).or_insert(0) += 1;
        InFlightTs { replica: self.clone(), ts }
    }

    fn release_ts(&self, ts: Hlc) {
        let frontier = {
            let mut state = self.clock.lock().expect("clock lock");
            let packed = ts.pack();
            if let Some(count) = state.in_flight.get_mut(&packed) {
                *count -= 1;
                if *count == 0 {
                    state.in_flight.remove(&packed);
                }
            }
            state.frontier()
        };
        self.publish_frontier(frontier);
    }

    /// Raises this node's own entry of the causal frontier (waiting reads wake up).
    fn publish_frontier(&self, frontier: u64) {
        self.visible.send_if_modified(|vv| {
            let before = vv.get(self.id);
            vv.observe(self.id, frontier);
            vv.get(self.id) != before
        });
    }
}
