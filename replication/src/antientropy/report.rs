//! What a session reports: how each round ended ([`SyncEvent::RoundDone`]), the peer's safe time
//! ([`SyncEvent::PeerSafeTime`]), and running counters ([`SyncStats`]).

use meridian_crdt::NodeId;

use super::PartitionId;

/// How a round ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundOutcome {
    /// The peer had nothing more this replica lacked (as of its last answer).
    Completed,
    /// A request went unanswered `max_attempts` times.
    TimedOut,
    /// The round sent `max_requests_per_round` requests (the peer keeps writing faster than it ships).
    RequestLimit,
    /// The peer's log stayed truncated after `max_fallbacks_per_round` fallbacks.
    FallbackLimit,
    /// The store failed or the peer misbehaved; the error was returned to the caller.
    Failed,
}

/// What one round did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundReport {
    /// Round number within the session, from 1.
    pub round: u64,
    /// How it ended.
    pub outcome: RoundOutcome,
    /// Digest fallbacks it started.
    pub fallbacks: u32,
    /// Requests it sent (retransmits not counted).
    pub requests: u32,
    /// Log records applied.
    pub records_applied: u64,
    /// Key states joined in by the fallback.
    pub states_applied: u64,
}

/// Something the driver may act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// A round ended: the "round done" signal.
    RoundDone(RoundReport),
    /// The peer's own log for the partition is complete up to `hlc`: once this replica's vector holds
    /// `covers_seq` of `origin`, it has every write of `origin` to the partition with an HLC at or
    /// below `hlc` (safe time, for the causal gate). Reported only when `hlc` grows.
    PeerSafeTime {
        /// The partition.
        partition: PartitionId,
        /// The peer (the origin the claim is about).
        origin: NodeId,
        /// Its safe HLC.
        hlc: u64,
        /// The seq of `origin` that must be applied here for the claim to hold.
        covers_seq: u64,
    },
}

/// Counters since the session was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Rounds started.
    pub rounds_started: u64,
    /// Rounds that ended [`RoundOutcome::Completed`].
    pub rounds_completed: u64,
    /// Rounds that ended any other way.
    pub rounds_abandoned: u64,
    /// Digest fallbacks started.
    pub fallbacks_started: u64,
    /// Digest fallbacks that reached the vector raise.
    pub fallbacks_completed: u64,
    /// Log records applied.
    pub records_applied: u64,
    /// Key states joined in.
    pub states_applied: u64,
    /// Requests sent (first attempts).
    pub requests_sent: u64,
    /// Requests sent again after `retransmit_ms`.
    pub retransmits: u64,
    /// Replies received for a request no longer outstanding (duplicates, late or stale).
    pub stale_replies: u64,
    /// Answers to the peer's requests queued.
    pub answers_sent: u64,
    /// Outbound messages or events dropped because `max_queued` were waiting.
    pub dropped: u64,
}
