//! The crate's one error type.

use crate::CrdtType;

/// What can go wrong applying or merging CRDT state. Every variant is deterministic: retrying the same
/// request against the same state fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdtError {
    /// The key holds another type than the operation needs.
    #[error("wrong type: the key holds a {actual}, the operation is for a {requested}")]
    WrongType { actual: CrdtType, requested: CrdtType },
    /// Two replicas created the same key (or map field) with different types.
    ///
    /// No longer produced: [`crate::Entry::try_join`] resolves such conflicts by
    /// [`crate::CrdtType::conflict_rank`]. Kept so callers that match on it still compile.
    #[error("type conflict: this replica holds a {ours}, the other a {theirs}")]
    TypeConflict { ours: CrdtType, theirs: CrdtType },
    /// A type name that is not one of Meridian's.
    #[error("unknown type {0:?} (expected counter, register, mvregister, set, map or doc)")]
    UnknownType(String),
    /// A counter total would exceed 2^64 - 1.
    #[error("counter overflow")]
    CounterOverflow,
    /// Automerge rejected a change, a hash, or a JSON value.
    #[error("invalid doc change: {0}")]
    InvalidDocChange(String),
    /// A mutation that is well-formed but not allowed.
    #[error("invalid mutation: {0}")]
    InvalidMutation(String),
    /// Input larger than a bound once decoded (an automerge change that inflates past its cap).
    #[error("too large: {0}")]
    TooLarge(String),
    /// A remote HLC timestamp too far ahead of local physical time.
    #[error(
        "clock drift: remote timestamp {remote_ms} ms is more than {max_drift_ms} ms ahead of local {local_ms} ms"
    )]
    ClockDrift { remote_ms: u64, local_ms: u64, max_drift_ms: u64 },
}
