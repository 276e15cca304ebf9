//! The crate's one error type.

use meridian_crdt::NodeId;

use crate::membership::MemberState;

/// What a replication core can refuse. Every variant is deterministic: the same call against the same
/// state fails the same way, so none is worth retrying unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// The membership has no record of the node.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// A lifecycle change that the member state machine does not allow.
    #[error("node {node}: cannot go from {from} to {to} (allowed: joining→active→draining→removed, joining→removed, active→removed)")]
    InvalidTransition {
        /// The node.
        node: NodeId,
        /// Its current state.
        from: MemberState,
        /// The state asked for.
        to: MemberState,
    },
    /// The node was removed; only a record with a higher incarnation (a re-join) can bring it back.
    #[error("node {node} was removed at incarnation {incarnation}; re-join with an incarnation above {incarnation}")]
    Removed {
        /// The node.
        node: NodeId,
        /// The incarnation its tombstone carries.
        incarnation: u64,
    },
    /// The record would lose the join against the one already held, so writing it would have no effect.
    #[error("node {node}: the record is older than the one held (incarnation {held_incarnation}); re-read and retry")]
    Superseded {
        /// The node.
        node: NodeId,
        /// The incarnation of the record held.
        held_incarnation: u64,
    },
    /// A failure-detector configuration that cannot work.
    #[error("invalid failure detector config: {0}")]
    InvalidDetectorConfig(String),
}
