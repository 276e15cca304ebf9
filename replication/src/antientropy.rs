//! Anti-entropy: how two replicas of a partition converge, sans-IO.
//!
//! Implements the anti-entropy part of `docs/design/replication.md`. One [`SyncSession`] runs per
//! (partition, peer) pair on each side; the node feeds it the peer's messages ([`SyncSession::step`])
//! and the time ([`SyncSession::tick`]), sends what [`SyncSession::poll_outbound`] yields, and
//! implements the storage side through [`SyncStore`]. Nothing here reads a clock, opens a socket,
//! names a storage engine or draws randomness, so tests drive it message by message
//! (`tests/antientropy_sim.rs` runs it under a seeded faulty network).
//!
//! # Algorithm
//!
//! A session *pulls*: every `round_interval_ms` it starts a round that brings this replica up to
//! date with the peer. Both sides run sessions, so each pulls from the other and a pair converges in
//! both directions. (A session also answers the peer's requests; answering keeps no state.)
//!
//! **Log path.** The puller sends `Offer { vv }`, its version vector for the partition. For every
//! origin `o` the server holds more of, it ships the records with seq in `(vv[o], my_vv[o]]` —
//! [`missing`] computes these intervals — a gap-free prefix per origin in seq order, up to
//! `max_records` and `max_bytes` per message, with `more` when it had to stop. The puller applies the
//! records that extend its vector, and while `more` is set sends a fresh `Offer` (whose vector
//! acknowledges what arrived). A `Records` with `more = false` completes the round.
//!
//! **Fallback.** If for some origin the server's log floor (lowest seq still in its log) is above
//! `vv[o] + 1`, the records the puller needs are gone and the server answers `Truncated`, carrying the
//! server's vector `V` read *before* anything it serves afterwards. The puller then compares range
//! digests over the partition's key-hash space ([`digest`]): it asks for the digests of the children
//! of every differing range (`DigestRequest`; fanout `2^split_bits`, the last child of each parent
//! inferred from the parent's digest), splits the ranges whose digests differ, and once a differing
//! range holds at most `leaf_keys` of its own keys (or reaches `max_depth_bits`), fetches the server's
//! full state of every key in it (`StatesRequest`/`States`, paginated) and joins them in. When nothing
//! differs any more it raises its vector to `V` ([`SyncStore::apply_states`] with `raise_vv_to`) and
//! continues on the log path from there (the server's log reaches back to `V`).
//!
//! **Cost.** The log path ships exactly the missing records plus a few bytes per message. The
//! fallback ships, per differing key, `(fanout - 1) × 8` bytes of digests per tree level plus a few
//! bytes naming each parent, then the changed keys' states (and any unchanged key sharing a leaf
//! range with one). Measured with the default fanout of 4 on 10k keys with 10 changed: about 190
//! bytes of overhead per changed key, so 2.5× what changed with ~130-byte entries (key and state),
//! 1.5× with ~380-byte entries, but 7× with ~30-byte entries — the `fallback_bytes_*` tests print
//! the figures. Small entries would need set reconciliation (an invertible Bloom lookup table)
//! rather than a hash tree to approach 3×.
//!
//! # Invariants
//!
//! Anytime (safety, whatever the network does):
//! * **Per-origin order.** [`SyncStore::apply_remote`] is only given records that extend the
//!   replica's vector gap-free: each record's seq is exactly one above what the vector (or an earlier
//!   record of the same call) holds for its origin. Duplicates are dropped before the store sees them.
//! * **The vector never claims an unapplied record.** On the log path it rises with the records, in
//!   the store's atomic batch. In the fallback it is raised only after every range has been compared
//!   and every differing one fetched, and only to `V`: the server's state at every later read
//!   reflects every record up to `V`, and after the fallback this replica's state of every key is at
//!   least the server's state as it was read (equal digest, or the server's state joined in).
//! * **State only grows.** Everything applied is a join; applying anything twice changes nothing.
//!
//! Eventually (liveness): if two replicas stop receiving writes and keep exchanging messages — any
//! fraction of which may be lost, delayed, duplicated or reordered, as long as some get through —
//! each one's rounds keep completing, and then both hold equal states and equal vectors.
//!
//! # Failure model
//!
//! Messages may be lost, duplicated, delayed and reordered. Every request is retransmitted after
//! `retransmit_ms`, at most `max_attempts` times, then the round is abandoned and retried next
//! interval. Replies are matched by request id, and only the reply to the one outstanding request is
//! used, so stale and duplicate replies are ignored. A session restarted with a new `first_request_id`
//! ignores replies meant for its predecessor. Storage is durable and its vector persisted with the
//! data (the node's invariant). A peer's malformed or inconsistent reply ends the round with a
//! [`PeerError`] — never a panic, loop or unbounded allocation — but a peer that lies about the data
//! it ships is outside the model (peers are authenticated by mutual TLS at the transport). Range
//! digests may collide with probability about 2^-64 per comparison; such a collision is not detected.
//!
//! # Limits
//!
//! One outstanding request per session; every message within `max_bytes` and `max_records` (a single
//! record or state larger than `max_bytes` travels alone; `Offer` and `Truncated` carry a version
//! vector, a dozen-odd bytes per origin of the partition); at most `max_requests_per_round` requests
//! and `max_fallbacks_per_round` fallbacks per round; outbound messages and events capped at
//! `max_queued` (an answer that does not fit is dropped and the peer retransmits).

pub mod digest;
mod mem;
mod message;
mod report;
mod serve;
mod session;

#[cfg(test)]
mod tests;

use meridian_crdt::{NodeId, VersionVector};
use serde::{Deserialize, Serialize};

pub use digest::{entry_hash, infer_last_child, key_hash, HashRange, RangeDigest};
pub use mem::{MemStore, MemStoreError};
pub use message::{Resume, SyncMessage, SyncMessageV1};
pub use report::{RoundOutcome, RoundReport, SyncEvent, SyncStats};
pub use serve::{missing, Missing};
pub use session::SyncSession;

/// One of the keyspace's fixed partitions (`stable_hash(data_key) % P`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u16);

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Where a write sits in the delta logs: the `seq`-th write `origin` coordinated in `partition`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    /// The partition.
    pub partition: PartitionId,
    /// The replica that coordinated the write.
    pub origin: NodeId,
    /// Its place in `origin`'s log of `partition`, dense from 1.
    pub seq: u64,
}

/// One write in a partition's delta log. The delta is opaque here: the node knows the CRDT and joins
/// it into the key's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The replica that coordinated the write.
    pub origin: NodeId,
    /// Its seq in `origin`'s log of the partition.
    pub seq: u64,
    /// The data key written.
    #[serde(with = "message::wire_bytes")]
    pub key: Vec<u8>,
    /// The delta to join into the key's state (encoded by the node).
    #[serde(with = "message::wire_bytes")]
    pub delta: Vec<u8>,
    /// The write's HLC, packed (48 bits of ms, 16 of logical counter).
    pub hlc: u64,
}

impl LogRecord {
    /// The record's position in `partition`.
    pub fn position(&self, partition: PartitionId) -> LogPosition {
        LogPosition { partition, origin: self.origin, seq: self.seq }
    }

    /// Its encoded size inside a message, in bytes (what `max_bytes` budgets count).
    pub fn wire_len(&self) -> usize {
        use message::{bytes_len, varint_len};
        varint_len(self.origin.0)
            + varint_len(self.seq)
            + bytes_len(self.key.len())
            + bytes_len(self.delta.len())
            + varint_len(self.hlc)
    }
}

/// A key's full state, as the fallback ships it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// The data key.
    #[serde(with = "message::wire_bytes")]
    pub key: Vec<u8>,
    /// Its state, canonically encoded by the node (equal states, equal bytes).
    #[serde(with = "message::wire_bytes")]
    pub state: Vec<u8>,
}

impl KeyState {
    /// Its encoded size inside a message, in bytes.
    pub fn wire_len(&self) -> usize {
        message::bytes_len(self.key.len()) + message::bytes_len(self.state.len())
    }
}

/// One page of [`SyncStore::keys_in_range`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys in (key hash, key) order.
    pub states: Vec<KeyState>,
    /// Whether the range holds keys after the last one returned.
    pub more: bool,
}

/// The storage side of anti-entropy: the node implements it over its engine, [`MemStore`] in memory.
///
/// One implementation serves every partition the node holds. Several sessions (one per peer) may call
/// it for the same partition; the implementation makes each mutating call atomic (one batch) and
/// serialises them per partition. Reads may run concurrently with writes, as long as each read
/// returns a state that existed at some instant. `max_bytes` budgets count
/// [`LogRecord::wire_len`] and [`KeyState::wire_len`].
pub trait SyncStore {
    /// What the storage can fail with (I/O, corruption, an undecodable delta).
    type Error: std::error::Error + 'static;

    /// The partition's version vector: for each origin, the highest seq such that every record of
    /// that origin up to it has been applied here. Never decreases.
    fn partition_vv(&self, partition: PartitionId) -> Result<VersionVector, Self::Error>;

    /// This replica's safe time for the partition: every write it originates there with an HLC at or
    /// below the returned value is already covered by [`SyncStore::partition_vv`] *as read after this
    /// call*. The session reads this first, then the vector.
    fn safe_hlc(&self, partition: PartitionId) -> Result<u64, Self::Error>;

    /// The lowest seq of `origin` still in the partition's log: every record of `origin` with seq in
    /// `[floor, vv[origin]]` is in the log. 1 when nothing was ever truncated; `vv[origin] + 1` when
    /// the log holds none of `origin`'s records.
    fn log_floor(&self, partition: PartitionId, origin: NodeId) -> Result<u64, Self::Error>;

    /// Records of `origin` with seq from `after_seq + 1` upwards, ascending and gap-free, at most
    /// `max_records`, stopping before the record that would take the total over `max_bytes` — except
    /// that the first record is returned whatever its size. Returns fewer (possibly none) only when
    /// the log holds no more of them.
    fn read_log(
        &self,
        partition: PartitionId,
        origin: NodeId,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, Self::Error>;

    /// Applies remote records in the order given (per origin each extends the vector by one; the
    /// session guarantees it), in one atomic batch: store each under its origin's position, join its
    /// delta into its key's state, raise the vector. Records at or below the vector are skipped, so
    /// re-applying is harmless.
    fn apply_remote(&mut self, partition: PartitionId, records: &[LogRecord]) -> Result<(), Self::Error>;

    /// The digest of each range, in the order given: the wrapping sum of [`entry_hash`] over its keys
    /// and their count (see [`digest`]). Stores may keep these incrementally.
    fn range_digests(&self, partition: PartitionId, ranges: &[HashRange]) -> Result<Vec<RangeDigest>, Self::Error>;

    /// The keys of `range` in ascending (key hash, key) order, strictly after `after_key` if given, at
    /// most `max_keys`, stopping before the key that would take the total over `max_bytes` — except
    /// that the first key is returned whatever its size. `more` says whether keys remain.
    fn keys_in_range(
        &self,
        partition: PartitionId,
        range: HashRange,
        after_key: Option<&[u8]>,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<KeyPage, Self::Error>;

    /// Joins each state into its key's state, atomically. With `raise_vv_to`, also (in the same
    /// batch) raises the vector to its pointwise max with `raise_vv_to`, and for every origin so
    /// raised sets the log floor to the new `vv[origin] + 1` (the log lacks the records skipped over,
    /// so it must not offer them to others).
    fn apply_states(
        &mut self,
        partition: PartitionId,
        states: &[KeyState],
        raise_vv_to: Option<&VersionVector>,
    ) -> Result<(), Self::Error>;
}

/// Limits and timers of a session. Every node of a cluster should use the same values (a peer's
/// request beyond this node's limits is refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// Most records (or key states) in one message.
    pub max_records: usize,
    /// Most encoded bytes in one message (a single larger record or state travels alone).
    pub max_bytes: usize,
    /// Time between the end of a round and the start of the next.
    pub round_interval_ms: u64,
    /// Time before an unanswered request is sent again.
    pub retransmit_ms: u64,
    /// Sends of one request (first + retransmits) before the round is abandoned.
    pub max_attempts: u32,
    /// Requests one round may send before it is cut short (bounds a round under constant writes).
    pub max_requests_per_round: u32,
    /// Digest fallbacks one round may run.
    pub max_fallbacks_per_round: u32,
    /// A range splits into `2^split_bits` children (1..=8).
    pub split_bits: u8,
    /// A differing range holding at most this many of the puller's keys is fetched whole.
    pub leaf_keys: u64,
    /// Deepest range the fallback splits to (in hash bits); differing ranges there are fetched.
    pub max_depth_bits: u8,
    /// Most outbound messages and most events queued before the driver drains them.
    pub max_queued: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_records: 1024,
            max_bytes: 1 << 20,
            round_interval_ms: 1_000,
            retransmit_ms: 2_000,
            max_attempts: 4,
            max_requests_per_round: 4_096,
            max_fallbacks_per_round: 2,
            split_bits: 2,
            leaf_keys: 1,
            max_depth_bits: 48,
            max_queued: 64,
        }
    }
}

/// Smallest `max_bytes` accepted: a digest reply for one parent at the widest fanout (2 KiB) fits
/// with room to spare, and so does a version vector of a hundred origins.
pub const MIN_MAX_BYTES: usize = 4096;

impl SyncConfig {
    /// Checks the limits, naming the first field that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &'static str, reason: String| Err(ConfigError { field, reason });
        if self.max_records == 0 {
            return fail("max_records", "must be at least 1".into());
        }
        if self.max_bytes < MIN_MAX_BYTES {
            return fail("max_bytes", format!("must be at least {MIN_MAX_BYTES}"));
        }
        if !(1..=8).contains(&self.split_bits) {
            return fail("split_bits", format!("{} is outside 1..=8", self.split_bits));
        }
        if self.max_depth_bits < self.split_bits || self.max_depth_bits > 64 {
            return fail("max_depth_bits", format!("{} is outside split_bits..=64", self.max_depth_bits));
        }
        if self.retransmit_ms == 0 {
            return fail("retransmit_ms", "must be at least 1".into());
        }
        if self.max_attempts == 0 || self.max_requests_per_round < 2 || self.max_queued == 0 {
            return fail("max_attempts, max_requests_per_round, max_queued", "must be at least 1, 2, 1".into());
        }
        Ok(())
    }
}

/// A [`SyncConfig`] field that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sync config: {field}: {reason}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

/// Why a session call failed. The session has already ended the affected round (if any) and will
/// start the next one on schedule, so the driver logs the error and carries on.
#[derive(Debug, thiserror::Error)]
pub enum SyncError<E: std::error::Error + 'static> {
    /// The store failed; the round was abandoned (worth retrying: the next round does).
    #[error("sync store: {0}")]
    Store(#[source] E),
    /// The peer sent something inconsistent; the round was abandoned or the request refused.
    #[error("peer {peer}: {error}")]
    Peer {
        /// The peer.
        peer: NodeId,
        /// What it did.
        error: PeerError,
    },
}

impl<E: std::error::Error + 'static> SyncError<E> {
    /// Whether the peer, not this replica, is at fault (a driver may penalise or disconnect it).
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, SyncError::Peer { .. })
    }
}

/// A peer message the protocol does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The message names another partition than the session's.
    #[error("message for partition {got} reached the session of partition {expected}")]
    WrongPartition {
        /// The session's partition.
        expected: PartitionId,
        /// The message's.
        got: PartitionId,
    },
    /// A reply of the wrong kind for the outstanding request.
    #[error("unexpected {got} reply while waiting for {expected}")]
    UnexpectedReply {
        /// What the outstanding request calls for.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// Records that would leave a gap in an origin's sequence.
    #[error("record {got} of origin {origin} does not follow {have}")]
    Gap {
        /// The origin.
        origin: NodeId,
        /// What this replica holds of it.
        have: u64,
        /// The seq that arrived.
        got: u64,
    },
    /// A reply that claims more remains but brings nothing.
    #[error("a reply with more to come made no progress")]
    NoProgress,
    /// A state for a key outside the requested ranges.
    #[error("a shipped state lies outside the requested ranges")]
    OutOfRange,
    /// A request or reply whose shape is wrong (bad range, wrong digest count, limits exceeded).
    #[error("malformed: {0}")]
    Malformed(String),
}
