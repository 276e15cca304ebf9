//! # meridian-replication
//!
//! The replication cores, sans-IO: pure functions and state machines that decide *when* a request is
//! satisfied, never *how* bytes move or where they are stored. The node drives them with real storage
//! and sockets; tests drive them directly, with no sockets and no sleeps.
//!
//! * [`quorum`] — how many replica acknowledgements each consistency level needs, and a tracker that
//!   turns a stream of acks, failures and timeouts into one verdict.
//! * [`causal`] — whether a replica's state is recent enough to serve a session's causal token.
//!
//! Architecture invariant: this crate names no storage engine and opens no socket.

pub mod causal;
pub mod quorum;

pub use causal::{causal_gap, CausalGap};
pub use quorum::{Outcome, QuorumTracker, ReplicaCounts, Requirement};
