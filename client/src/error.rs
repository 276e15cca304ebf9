//! The one error type of the SDK.
//!
//! Callers mostly need two answers from an error: *may I retry it?* ([`Error::is_retryable`]) and
//! *what did the node say?* ([`Error::code`]). Every variant is therefore classified here, once, and the
//! retry loop in the client uses the same classification as applications do.

use crate::proto::ErrorCode;

/// Everything that can go wrong with a Meridian request.
///
/// Local mistakes ([`Error::InvalidArgument`], [`Error::Tls`]) are detected before anything is sent
/// and are never retried. Network trouble ([`Error::Connect`], [`Error::Timeout`],
/// [`Error::Transport`]) is retried by the client and, if it persists, returned after the last
/// attempt. [`Error::Server`] carries the node's [`ErrorCode`], whose own
/// [`ErrorCode::is_retryable`] decides.
///
/// ```no_run
/// use meridian_client::{Error, ErrorCode};
/// # async fn example(client: meridian_client::Client) -> Result<(), Error> {
/// match client.counter("app/visits").incr(1).await {
///     Ok(value) => println!("now {value}"),
///     Err(Error::Server { code: ErrorCode::WrongType, message }) => eprintln!("not a counter: {message}"),
///     Err(e) if e.is_retryable() => eprintln!("transient, try again later: {e}"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The caller passed something invalid (a malformed key or namespace, an empty endpoint list, no
    /// trust root, an oversized request, ...). Detected locally, before anything is sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No connection could be established to the endpoint(s) named (unreachable, refused, handshake
    /// timed out).
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint, or the comma-separated endpoints, that were tried.
        endpoint: String,
        /// Why each attempt failed.
        reason: String,
    },
    /// The TLS configuration is unusable (unparsable PEM, bad client key) or the TLS handshake was
    /// refused (untrusted node certificate, certificate name mismatch, client certificate refused).
    #[error("TLS: {0}")]
    Tls(String),
    /// No response arrived within the per-attempt timeout. For a write, it may or may not have been
    /// applied; retrying with the same idempotency id (which the client does) is safe.
    #[error("no response within {after_ms} ms")]
    Timeout {
        /// The per-attempt timeout that elapsed, in milliseconds.
        after_ms: u64,
    },
    /// The connection or the request's stream failed mid-request.
    #[error("transport error: {0}")]
    Transport(String),
    /// The node's response could not be decoded, exceeded the frame limit, or did not answer the
    /// request that was sent.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The node refused the request.
    #[error("node error ({}): {message}", code.name())]
    Server {
        /// The failure class.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
}

impl Error {
    /// Whether repeating the same request may succeed: connection failures, timeouts and transport
    /// failures are; a node error is if its [`ErrorCode::is_retryable`] says so; local mistakes,
    /// TLS refusals and protocol violations are not.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) {
    /// if let Err(e) = client.status().await {
    ///     println!("retryable: {}", e.is_retryable());
    /// }
    /// # }
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } | Error::Transport(_) => true,
            Error::Server { code, .. } => code.is_retryable(),
            Error::InvalidArgument(_) | Error::Tls(_) | Error::Protocol(_) => false,
        }
    }

    /// The node's error code, for [`Error::Server`]; `None` for every failure detected by the client
    /// itself.
    ///
    /// ```no_run
    /// use meridian_client::ErrorCode;
    /// # async fn example(client: meridian_client::Client) {
    /// let result = client.register("app/name").get().await;
    /// if result.as_ref().err().and_then(|e| e.code()) == Some(ErrorCode::WrongType) {
    ///     println!("app/name is not a register");
    /// }
    /// # }
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidArgument(message.into())
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::Protocol(message.into())
    }
}

impl From<crate::proto::ErrorReply> for Error {
    /// A node's error reply.
    fn from(reply: crate::proto::ErrorReply) -> Error {
        Error::Server { code: reply.code, message: reply.message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> Error {
        Error::Server { code, message: "m".into() }
    }

    #[test]
    fn classification() {
        assert!(Error::Connect { endpoint: "a".into(), reason: "b".into() }.is_retryable());
        assert!(Error::Timeout { after_ms: 5 }.is_retryable());
        assert!(Error::Transport("reset".into()).is_retryable());
        assert!(!Error::InvalidArgument("x".into()).is_retryable());
        assert!(!Error::Tls("x".into()).is_retryable());
        assert!(!Error::Protocol("x".into()).is_retryable());
        for code in [
            ErrorCode::QuorumUnavailable,
            ErrorCode::CausalTimeout,
            ErrorCode::Timeout,
            ErrorCode::Overloaded,
            ErrorCode::ShuttingDown,
        ] {
            assert!(server(code).is_retryable(), "{code:?}");
            assert_eq!(server(code).code(), Some(code));
        }
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::WrongType,
            ErrorCode::TooLarge,
            ErrorCode::Unsupported,
            ErrorCode::Internal,
            ErrorCode::ResidencyRefused,
            ErrorCode::Unauthenticated,
            ErrorCode::PermissionDenied,
        ] {
            assert!(!server(code).is_retryable(), "{code:?}");
        }
        assert_eq!(Error::Timeout { after_ms: 1 }.code(), None);
        assert_eq!(Error::InvalidArgument("x".into()).code(), None);
    }

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(server(ErrorCode::WrongType).to_string(), "node error (wrong_type): m");
        assert_eq!(Error::Timeout { after_ms: 250 }.to_string(), "no response within 250 ms");
        let e: Error = crate::proto::ErrorReply::new(ErrorCode::Overloaded, "busy").into();
        assert_eq!(e, Error::Server { code: ErrorCode::Overloaded, message: "busy".into() });
    }
}
