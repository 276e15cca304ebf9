//! The server's error: what executing a client request can fail with, classified the way the client
//! protocol reports it. The replica and the region return it; the api layer turns it into the
//! wire's `ErrorReply` (`From<Error> for ErrorReply`) — nothing below the api builds wire errors.
//!
//! Each variant maps to one `ErrorCode`, and so to whether a retry can help (the code says so to
//! the client: `ErrorCode::is_retryable`).

use meridian_client::proto::{ErrorCode, ErrorReply};
use meridian_crdt::CrdtError;

use crate::storage::StorageError;

/// A request's failure. The message is the client's: it names what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or contradicts itself (an invalid key, an idempotency id reused
    /// for another operation, a causal token from another cluster): retrying it unchanged fails again.
    #[error("{0}")]
    BadRequest(String),
    /// The request is too large, or would grow a key beyond its limit.
    #[error("{0}")]
    TooLarge(String),
    /// This node cannot do that (no region to coordinate in).
    #[error("{0}")]
    Unsupported(String),
    /// Too few replicas answered for the level; the write may have been applied on those that did.
    /// Retryable with the same idempotency id.
    #[error("{0}")]
    QuorumUnavailable(String),
    /// The session's dependencies did not arrive here in time. Retryable.
    #[error("{0}")]
    CausalTimeout(String),
    /// A residency rule keeps the key out of this region and may not be proxied.
    #[error("{0}")]
    ResidencyRefused(String),
    /// Writes kept getting in the way of a read of several records (`overloaded`). Retryable.
    #[error("{0}")]
    Busy(String),
    /// A CRDT refused the operation: the key holds another type (`wrong_type`), the operation is
    /// malformed (`bad_request`), or replicas hold conflicting types (`internal`).
    #[error(transparent)]
    Crdt(#[from] CrdtError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The node failed otherwise: a corrupt record, a task that did not finish.
    #[error("{0}")]
    Internal(String),
    /// Another node's answer to a request forwarded or proxied there, passed on as it came.
    #[error("{}", .0.message)]
    Remote(ErrorReply),
}

impl Error {
    /// An internal failure, described by `e`.
    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }

    /// The wire code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BadRequest(_) => ErrorCode::BadRequest,
            Error::TooLarge(_) => ErrorCode::TooLarge,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::QuorumUnavailable(_) => ErrorCode::QuorumUnavailable,
            Error::CausalTimeout(_) => ErrorCode::CausalTimeout,
            Error::ResidencyRefused(_) => ErrorCode::ResidencyRefused,
            Error::Busy(_) => ErrorCode::Overloaded,
            Error::Crdt(CrdtError::WrongType { .. }) => ErrorCode::WrongType,
            Error::Crdt(CrdtError::TypeConflict { .. }) => ErrorCode::Internal,
            Error::Crdt(CrdtError::TooLarge(_)) => ErrorCode::TooLarge,
            Error::Crdt(_) => ErrorCode::BadRequest,
            // Retryable: the SDK retries with the same idempotency id, on another node.
            Error::Storage(StorageError::Fenced(_)) => ErrorCode::ShuttingDown,
            Error::Storage(_) | Error::Internal(_) => ErrorCode::Internal,
            Error::Remote(reply) => reply.code,
        }
    }
}

impl From<Error> for ErrorReply {
    fn from(error: Error) -> ErrorReply {
        match error {
            Error::Remote(reply) => reply,
            other => ErrorReply::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_keeps_its_code_and_message_on_the_wire() {
        let cases = [
            (Error::BadRequest("b".into()), ErrorCode::BadRequest),
            (Error::TooLarge("t".into()), ErrorCode::TooLarge),
            (Error::Unsupported("u".into()), ErrorCode::Unsupported),
            (Error::QuorumUnavailable("q".into()), ErrorCode::QuorumUnavailable),
            (Error::CausalTimeout("c".into()), ErrorCode::CausalTimeout),
            (Error::ResidencyRefused("r".into()), ErrorCode::ResidencyRefused),
            (Error::Internal("i".into()), ErrorCode::Internal),
            (Error::Busy("b".into()), ErrorCode::Overloaded),
            (Error::Remote(ErrorReply::new(ErrorCode::Overloaded, "o")), ErrorCode::Overloaded),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let reply = ErrorReply::from(error);
            assert_eq!((reply.code, reply.message), (code, message));
        }
        let wrong = Error::Crdt(CrdtError::WrongType {
            actual: meridian_crdt::CrdtType::Counter,
            requested: meridian_crdt::CrdtType::Set,
        });
        assert_eq!(ErrorReply::from(wrong).code, ErrorCode::WrongType);
    }
}
