//! # meridian-replication
//!
//! The replication cores, sans-IO: pure functions and state machines that decide *when* a request is
//! satisfied, *where* a key lives and *who* is in the cluster, never *how* bytes move or where they are
//! stored. The node drives them with real storage, sockets and clocks; tests drive them directly, with
//! no sockets and no sleeps.
//!
//! * [`quorum`] — how many replica acknowledgements each consistency level needs, and a tracker that
//!   turns a stream of acks, failures and timeouts into one verdict.
//! * [`coordination`] — the coordinator's rounds for one leaderless write or read: counting acks, and
//!   merging a read's replies into the write-back that must land before the read returns.
//! * [`causal`] — whether a replica's state is recent enough to serve a session's causal token.
//! * [`antientropy`] — how two replicas of a partition converge: version-vector rounds that ship the
//!   log records the other lacks, with a range-digest fallback when the log no longer reaches back.
//! * [`hash`] — the cluster's one stable 64-bit hash (identical on every node, platform and build).
//! * [`placement`] — which of a region's nodes hold a key: rendezvous hashing spread over zones.
//! * [`membership`] — the cluster's members and their lifecycle, as a CRDT that converges like data.
//! * [`residency`] — data-residency rules: which regions may hold a key, versioned and validated.
//! * [`failure`] — a failure detector fed heartbeat arrival times, answering alive / suspect / dead.
//!
//! Architecture invariant: this crate names no storage engine, opens no socket, reads no clock and
//! draws no randomness — time, node ids and seeds are parameters.

pub mod antientropy;
pub mod causal;
pub mod coordination;
pub mod error;
pub mod failure;
pub mod hash;
pub mod membership;
pub mod placement;
pub mod quorum;
pub mod residency;
pub mod safe_time;

pub use antientropy::{
    KeyState, LogPosition, LogRecord, PartitionId, SyncConfig, SyncError, SyncEvent, SyncMessage, SyncSession,
    SyncStore,
};
pub use causal::{causal_gap, CausalGap};
pub use coordination::{AckRound, QuorumSets, ReadRound};
pub use error::ReplicationError;
pub use failure::{DetectorConfig, FailureDetector, Health, Liveness};
pub use hash::{stable_hash, StableHasher};
pub use membership::{Certified, ClaimError, Member, MemberState, MemberVersion, Membership};
pub use placement::{place, score, NodeSlot, Placement, PlacementReason, Ranked};
pub use quorum::{Outcome, QuorumTracker, ReplicaCounts, Requirement};
pub use safe_time::{SafeReport, SafeTimes};
