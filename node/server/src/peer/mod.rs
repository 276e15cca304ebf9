//! The node-to-node transport: QUIC (quinn) with mutual TLS 1.3 against the cluster CA, carrying
//! opaque request/response payloads for the peer protocol (defined elsewhere).
//!
//! # Trust
//!
//! Both sides present a node certificate signed by the cluster CA (see [`crate::certs`] for the
//! trust model) and trust exactly that CA: the accepting side uses rustls's
//! `WebPkiClientVerifier` with client certificates **required**, the dialling side verifies the
//! accepting node's chain and that its DNS/IP SANs cover the address it dialled. TLS 1.3 only,
//! ALPN [`ALPN`], no 0-RTT and no session resumption (every connection re-verifies the full chain),
//! and the ring provider passed explicitly — nothing is installed process-wide.
//!
//! After the handshake **both** sides read the other's identity from its certificate's URI SAN and
//! close the connection with an application error code ([`codes`]) and a reason when there is no
//! certificate, the identity URI is missing or malformed, it names another cluster, or it is not a
//! node (a client or CA certificate), or — with a revocation list ([`PeerEndpoint::bind_with`]) —
//! any certificate of its chain is revoked ([`crate::certs::revocation`]; also checked again before
//! each request served on an accepted connection and each request sent on a dialled one, so
//! revoking cuts off connections already open). The resulting [`PeerIdentity`] — cluster, region, zone, name —
//! is what the transport hands to the [`PeerHandler`] with every request and what
//! [`PeerConnection::peer`] returns. A peer's region therefore comes from what the CA signed, never
//! from anything the peer says in a message.
//!
//! # Wire format
//!
//! One bidirectional stream per request; the payload is opaque bytes:
//!
//! ```text
//! dialler → acceptor:  [u32 big-endian length][request payload]   then finish
//! acceptor → dialler:  [u32 big-endian length][response payload]  then finish
//! ```
//!
//! Lengths are checked against the receiver's [`PeerTransportConfig::max_frame_bytes`] *before* the
//! payload is read. A refused stream is reset (and stopped) with a stream error code
//! ([`StreamRefusal`]); the connection and its other streams carry on. Each direction of a node pair
//! uses its own connection: a node serves requests only on connections it accepted, and refuses
//! streams on connections it dialled (its stream limit there is 0).
//!
//! # Limits
//!
//! Everything a peer can make a node hold is bounded: connections ([`max_connections`], refused
//! before the handshake; unvalidated source addresses first get a QUIC Retry, so spoofed addresses
//! cannot hold slots), streams per connection ([`max_streams_per_connection`], enforced by QUIC
//! flow control), requests being read or handled at once across all connections
//! ([`max_inflight_requests`], a semaphore taken after the 4-byte length and before the payload is
//! read, so waiting streams hold only QUIC buffers), bytes per frame, buffered bytes per stream and
//! per connection (the receive windows), and time (request read timeout, idle timeout, handshake
//! timeout, shutdown drain). Worst-case memory is about
//! `max_connections × receive_window + max_inflight_requests × 2 × max_frame_bytes`
//! (64 × 32 MiB + 128 × 16 MiB = 4 GiB with the defaults; in practice far less, since only
//! authenticated nodes of the cluster get past the handshake and the payloads are read as soon as
//! they arrive).
//!
//! [`max_connections`]: PeerTransportConfig::max_connections
//! [`max_streams_per_connection`]: PeerTransportConfig::max_streams_per_connection
//! [`max_inflight_requests`]: PeerTransportConfig::max_inflight_requests

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::certs::{IdentityError, PeerIdentity};
pub use meridian_client::proto::TraceContext;

pub mod endpoint;
#[cfg(test)]
mod golden;
mod pool;
pub mod protocol;
mod tls;

pub use endpoint::{PeerConnection, PeerEndpoint};
pub use pool::PeerPool;
pub use tls::check_peer_identity;

/// ALPN protocol id of the first version of the peer transport: `[u32 length][request]` per stream.
pub const ALPN: &[u8] = b"meridian-peer/1";
/// ALPN protocol id of version 2: each request stream starts with a header (the caller's trace
/// context, [`endpoint::stream_header`]) before the version-1 frame.
pub const ALPN_V2: &[u8] = b"meridian-peer/2";
/// ALPN protocol id of version 3: version 2's framing, plus the `GossipCompact` request (gossip
/// that sends only what changed). A node sends it only on connections that negotiated version 3.
pub const ALPN_V3: &[u8] = b"meridian-peer/3";
/// ALPN protocol id of version 4: version 3 plus `PushIdempotent` (a write's push carrying its
/// idempotency record, so a retry on another replica is recognised).
pub const ALPN_V4: &[u8] = b"meridian-peer/4";
/// ALPN protocol id of version 5: version 4 plus `SyncBatch`; a shipped record of a write made with an
/// idempotency id carries the write's idempotency record in its delta (`StoredEntry::V3`), so the
/// record travels by anti-entropy, hints and other regions' relays too.
pub const ALPN_V5: &[u8] = b"meridian-peer/5";
pub use crate::layout::IDEMPOTENT_RECORDS_VERSION;
/// The first version with `SyncBatch` (anti-entropy messages of many partitions per request).
pub const SYNC_BATCH_VERSION: u8 = 5;
/// The versions this node speaks, newest first: both ends offer theirs in the TLS handshake and
/// the connection speaks the newest they share, so a node never sends a version its peer does not
/// know (rolling upgrades run nodes of two releases side by side).
pub const ALPNS: [&[u8]; 5] = [ALPN_V5, ALPN_V4, ALPN_V3, ALPN_V2, ALPN];
/// The newest protocol version this release speaks.
pub const NEWEST_VERSION: u8 = ALPNS.len() as u8;

/// The ALPN ids of the versions up to `max`, newest first (what a node offers and accepts).
pub fn alpns_up_to(max: u8) -> Vec<Vec<u8>> {
    let skip = usize::from(NEWEST_VERSION.saturating_sub(max));
    ALPNS.iter().skip(skip).map(|alpn| alpn.to_vec()).collect()
}

/// Handles the requests a peer sends. Implementations decode the payload (the peer protocol),
/// act, and return the encoded response; errors are part of the response payload.
///
/// `peer` is the identity verified from the peer's certificate; it is the only trustworthy source
/// of the peer's cluster, region, zone and name. Implement with `async fn handle(...)`.
pub trait PeerHandler: Send + Sync + 'static {
    /// Answers one request from `peer`, sent as part of the trace `trace` when the sender traces it,
    /// on a connection speaking protocol `version` (the reply must be one that version decodes).
    fn handle(
        &self,
        peer: &PeerIdentity,
        version: u8,
        trace: Option<TraceContext>,
        request: Vec<u8>,
    ) -> impl std::future::Future<Output = Vec<u8>> + Send;
}

/// TLS material of a node on the peer transport, PEM-encoded.
#[derive(Clone)]
pub struct PeerTlsConfig {
    /// The cluster CA certificate(s) to trust. Several certificates may be given (CA rotation);
    /// any of them carrying a Meridian CA identity must name `cluster_id`.
    pub ca_pem: String,
    /// This node's certificate chain (leaf first), issued by `meridian certs node`.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
    /// This node's cluster id; peers of other clusters are refused.
    pub cluster_id: String,
}

impl std::fmt::Debug for PeerTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTlsConfig")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("cluster_id", &self.cluster_id)
            .finish()
    }
}

impl PeerTlsConfig {
    /// Reads the three PEM files.
    pub fn from_files(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        cluster_id: &str,
    ) -> Result<PeerTlsConfig, PeerError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| PeerError::Config(format!("reading {}: {e}", path.display())))
        };
        Ok(PeerTlsConfig {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            cluster_id: cluster_id.into(),
        })
    }
}

/// Transport tuning of the peer transport. The defaults are sized for cross-region links of up to
/// **1 Gbit/s × 100 ms RTT**, whose bandwidth-delay product is 1e9 / 8 × 0.1 s = 12.5 MB: a window
/// smaller than that caps one connection's throughput at `window / RTT` whatever the link can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTransportConfig {
    /// Largest request or response payload, each direction (default 8 MiB). Checked before a
    /// payload is read; at most `u32::MAX`.
    pub max_frame_bytes: usize,
    /// Peer connections served at once (default 64); further ones are refused before the
    /// handshake. Bounds the per-connection memory below.
    pub max_connections: usize,
    /// Concurrent requests (bidirectional streams) a peer may have open on one connection
    /// (default 128); more wait in the peer's QUIC stack, they are not refused.
    pub max_streams_per_connection: u32,
    /// Requests being read or handled at once across all connections (default 128); each holds
    /// up to `max_frame_bytes` of request and of response.
    pub max_inflight_requests: usize,
    /// Bytes a peer may send on one stream before we read them (default 16 MiB): at least the
    /// 12.5 MB BDP, so a single large frame streams at line rate, and more than `max_frame_bytes`,
    /// so a whole frame is in flight at once. Must not exceed `receive_window`.
    pub stream_receive_window: u32,
    /// Bytes a peer may send across all streams of a connection before we read them (default
    /// 32 MiB, about 2.5 × BDP: two large frames at line rate, or many small ones). This is what one
    /// connection can make us buffer.
    pub receive_window: u32,
    /// Bytes we buffer for sending on one connection, unacknowledged data included (default
    /// 32 MiB, matching the receive window so a fast sender is limited by the peer, not by us).
    pub send_window: u64,
    /// A connection with no traffic for this long is closed (default 30 s, RFC 9308 §3.2). The
    /// smaller of both sides' values applies.
    pub idle_timeout: Duration,
    /// Ping interval on an otherwise idle connection (default 10 s): keeps NAT bindings and the
    /// idle timer alive, and with the idle timeout detects a dead peer within 30 s. Must be below
    /// `idle_timeout`.
    pub keep_alive_interval: Duration,
    /// Longest handshake (dialling and accepting) (default 10 s, several cross-region RTTs plus
    /// a Retry round trip and loss recovery).
    pub connect_timeout: Duration,
    /// How long a peer may take to send a whole request after opening its stream (default 30 s:
    /// 8 MiB needs 0.07 s at 1 Gbit/s, 6.7 s at 10 Mbit/s). A stream that is slower is reset.
    pub request_read_timeout: Duration,
    /// At shutdown, how long requests in flight may take to finish before connections are closed
    /// (default 10 s).
    pub drain_timeout: Duration,
    /// The newest protocol version offered and accepted (default [`NEWEST_VERSION`]): lower it to
    /// keep speaking what nodes of an older release speak, e.g. to be able to roll an upgrade back
    /// (below version 5 the node also writes only the log and hint formats version 4 reads).
    pub max_protocol_version: u8,
}

impl Default for PeerTransportConfig {
    fn default() -> Self {
        PeerTransportConfig {
            max_frame_bytes: 8 << 20,
            max_connections: 64,
            max_streams_per_connection: 128,
            max_inflight_requests: 128,
            stream_receive_window: 16 << 20,
            receive_window: 32 << 20,
            send_window: 32 << 20,
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            request_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            max_protocol_version: NEWEST_VERSION,
        }
    }
}

impl PeerTransportConfig {
    /// Checks the settings against each other and their ranges.
    pub fn validate(&self) -> Result<(), PeerError> {
        let invalid = |reason: String| Err(PeerError::Config(reason));
        if self.max_frame_bytes == 0 || u32::try_from(self.max_frame_bytes).is_err() {
            return invalid(format!("max_frame_bytes {} must be in 1..=u32::MAX", self.max_frame_bytes));
        }
        for (field, value) in [
            ("max_connections", self.max_connections),
            ("max_streams_per_connection", self.max_streams_per_connection as usize),
            ("max_inflight_requests", self.max_inflight_requests),
            ("stream_receive_window", self.stream_receive_window as usize),
            ("receive_window", self.receive_window as usize),
            ("send_window", usize::try_from(self.send_window).unwrap_or(usize::MAX)),
        ] {
            if value == 0 {
                return invalid(format!("{field} must be at least 1"));
            }
        }
        if !(1..=NEWEST_VERSION).contains(&self.max_protocol_version) {
            return invalid(format!(
                "max_protocol_version {} must be in 1..={NEWEST_VERSION}",
                self.max_protocol_version
            ));
        }
        if self.stream_receive_window > self.receive_window {
            return invalid(format!(
                "stream_receive_window ({}) exceeds receive_window ({})",
                self.stream_receive_window, self.receive_window
            ));
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_read_timeout", self.request_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
        ] {
            if value.is_zero() {
                return invalid(format!("{field} must be positive"));
            }
        }
        if self.keep_alive_interval >= self.idle_timeout {
            return invalid(format!(
                "keep_alive_interval ({:?}) must be below idle_timeout ({:?})",
                self.keep_alive_interval, self.idle_timeout
            ));
        }
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return invalid(format!("idle_timeout {:?} is too large", self.idle_timeout));
        }
        Ok(())
    }
}

/// QUIC application error codes of the peer transport.
pub mod codes {
    /// Connection closed normally (a [`PeerConnection`](super::PeerConnection) closed or dropped).
    pub const CLOSE_DONE: u32 = 0x00;
    /// Connection closed because the node is shutting down.
    pub const CLOSE_SHUTDOWN: u32 = 0x01;
    /// Refused: the peer presented no certificate.
    pub const CLOSE_NO_CERTIFICATE: u32 = 0x10;
    /// Refused: the certificate's identity URI is missing, ambiguous or malformed.
    pub const CLOSE_BAD_IDENTITY: u32 = 0x11;
    /// Refused: the certificate belongs to another cluster.
    pub const CLOSE_WRONG_CLUSTER: u32 = 0x12;
    /// Refused: the certificate is a client's (or the CA's), not a node's.
    pub const CLOSE_NOT_A_NODE: u32 = 0x13;
    /// Refused: the certificate names another node than the one dialled.
    pub const CLOSE_UNEXPECTED_NAME: u32 = 0x14;
    /// Refused: the certificate is on the revocation list (`peer.revoked`).
    pub const CLOSE_REVOKED: u32 = 0x15;

    /// Stream reset: the requester gave up (timeout, error) or the stream was otherwise cancelled.
    pub const STREAM_CANCELLED: u32 = 0x00;
    /// Stream reset: the request exceeded the receiver's `max_frame_bytes`.
    pub const STREAM_REQUEST_TOO_LARGE: u32 = 0x20;
    /// Stream reset: the handler's response exceeded the server's `max_frame_bytes`.
    pub const STREAM_RESPONSE_TOO_LARGE: u32 = 0x21;
    /// Stream reset: the request did not arrive within `request_read_timeout`.
    pub const STREAM_READ_TIMEOUT: u32 = 0x22;
    /// Stream reset: the stream finished before a whole request frame.
    pub const STREAM_TRUNCATED: u32 = 0x23;
    /// Stream reset: the node is shutting down and did not handle the request.
    pub const STREAM_SHUTTING_DOWN: u32 = 0x24;
    /// Stream reset: the stream header (protocol version 2) is malformed.
    pub const STREAM_BAD_HEADER: u32 = 0x26;
    /// Stream reset: the handler panicked.
    pub const STREAM_HANDLER_FAILED: u32 = 0x25;

    /// Whether a connection close code means "your identity was refused".
    pub fn is_identity_refusal(code: u64) -> bool {
        (u64::from(CLOSE_NO_CERTIFICATE)..=u64::from(CLOSE_REVOKED)).contains(&code)
    }
}

/// The close code with which a connection is refused for `error`.
pub fn close_code(error: &IdentityError) -> u32 {
    match error {
        IdentityError::NoCertificate => codes::CLOSE_NO_CERTIFICATE,
        IdentityError::Malformed(_)
        | IdentityError::MissingUri
        | IdentityError::AmbiguousUri(_)
        | IdentityError::BadUri { .. } => codes::CLOSE_BAD_IDENTITY,
        IdentityError::WrongCluster { .. } => codes::CLOSE_WRONG_CLUSTER,
        IdentityError::NotANode { .. } => codes::CLOSE_NOT_A_NODE,
        IdentityError::UnexpectedName { .. } => codes::CLOSE_UNEXPECTED_NAME,
        IdentityError::Revoked { .. } => codes::CLOSE_REVOKED,
    }
}

/// Why the receiving node reset a request's stream (the connection carries on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamRefusal {
    /// The request exceeded the receiver's `max_frame_bytes`.
    RequestTooLarge,
    /// The handler's response exceeded the receiver's `max_frame_bytes`.
    ResponseTooLarge,
    /// The request did not arrive within the receiver's `request_read_timeout`.
    ReadTimeout,
    /// The stream finished before a whole request frame.
    Truncated,
    /// The receiver is shutting down and did not handle the request.
    ShuttingDown,
    /// The receiver's handler panicked.
    HandlerFailed,
    /// The stream header (protocol version 2) was malformed.
    BadHeader,
    /// Cancelled, or a code this version does not know.
    Other(u64),
}

impl StreamRefusal {
    /// The refusal a stream error code stands for.
    pub fn from_code(code: u64) -> StreamRefusal {
        match u32::try_from(code) {
            Ok(codes::STREAM_REQUEST_TOO_LARGE) => StreamRefusal::RequestTooLarge,
            Ok(codes::STREAM_RESPONSE_TOO_LARGE) => StreamRefusal::ResponseTooLarge,
            Ok(codes::STREAM_READ_TIMEOUT) => StreamRefusal::ReadTimeout,
            Ok(codes::STREAM_TRUNCATED) => StreamRefusal::Truncated,
            Ok(codes::STREAM_SHUTTING_DOWN) => StreamRefusal::ShuttingDown,
            Ok(codes::STREAM_HANDLER_FAILED) => StreamRefusal::HandlerFailed,
            Ok(codes::STREAM_BAD_HEADER) => StreamRefusal::BadHeader,
            _ => StreamRefusal::Other(code),
        }
    }

    /// The stream error code sent for this refusal.
    pub fn code(self) -> u64 {
        u64::from(match self {
            StreamRefusal::RequestTooLarge => codes::STREAM_REQUEST_TOO_LARGE,
            StreamRefusal::ResponseTooLarge => codes::STREAM_RESPONSE_TOO_LARGE,
            StreamRefusal::ReadTimeout => codes::STREAM_READ_TIMEOUT,
            StreamRefusal::Truncated => codes::STREAM_TRUNCATED,
            StreamRefusal::ShuttingDown => codes::STREAM_SHUTTING_DOWN,
            StreamRefusal::HandlerFailed => codes::STREAM_HANDLER_FAILED,
            StreamRefusal::BadHeader => codes::STREAM_BAD_HEADER,
            StreamRefusal::Other(code) => return code,
        })
    }

    fn name(self) -> &'static str {
        match self {
            StreamRefusal::RequestTooLarge => "request_too_large",
            StreamRefusal::ResponseTooLarge => "response_too_large",
            StreamRefusal::ReadTimeout => "read_timeout",
            StreamRefusal::Truncated => "truncated",
            StreamRefusal::ShuttingDown => "shutting_down",
            StreamRefusal::HandlerFailed => "handler_failed",
            StreamRefusal::BadHeader => "bad_header",
            StreamRefusal::Other(_) => "other",
        }
    }
}

impl std::fmt::Display for StreamRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamRefusal::RequestTooLarge => f.write_str("the request exceeds the peer's max_frame_bytes"),
            StreamRefusal::ResponseTooLarge => f.write_str("the peer's response exceeded its max_frame_bytes"),
            StreamRefusal::ReadTimeout => f.write_str("the request did not reach the peer within its read timeout"),
            StreamRefusal::Truncated => f.write_str("the peer received a truncated request"),
            StreamRefusal::ShuttingDown => f.write_str("the peer is shutting down"),
            StreamRefusal::HandlerFailed => f.write_str("the peer's handler failed"),
            StreamRefusal::BadHeader => f.write_str("the peer received a malformed stream header"),
            StreamRefusal::Other(code) => write!(f, "stream reset with code {code}"),
        }
    }
}

/// A peer transport failure.
///
/// [`is_retryable`](PeerError::is_retryable) says whether trying again (possibly over a new
/// connection) can succeed. It does not say the request did not run: after a timeout or a lost
/// connection the peer may have executed it, so retry only idempotent requests (anti-entropy
/// messages, CRDT deltas, reads).
#[derive(Clone, Debug, thiserror::Error)]
pub enum PeerError {
    /// The TLS material or transport settings are unusable: bad PEM, a key that does not match its
    /// certificate, our certificate not a node of our cluster or not signed by the trusted CA, an
    /// out-of-range setting. Not retryable: fix the configuration.
    #[error("peer transport configuration: {0}")]
    Config(String),
    /// The UDP socket could not be bound. Not retryable.
    #[error("binding the peer transport to {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        reason: String,
    },
    /// The peer could not be reached: no handshake within `connect_timeout`, the network is
    /// unreachable, or the peer refused the connection (at its connection limit). Retryable.
    #[error("connecting to peer {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The TLS handshake failed: the peer's certificate does not chain to the cluster CA, has
    /// expired, or does not cover the address dialled; or the peer refused our certificate at the
    /// TLS layer. Not retryable.
    #[error("TLS with peer {addr} failed: {reason}")]
    Tls {
        /// The peer's address.
        addr: SocketAddr,
        /// The TLS error.
        reason: String,
    },
    /// We refused the peer's certificate identity and closed the connection with the matching
    /// [`codes`] value. Not retryable.
    #[error("refused peer {addr}: {source}")]
    Identity {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: IdentityError,
    },
    /// The peer refused *our* identity: it closed the connection with an identity code
    /// ([`codes::CLOSE_NO_CERTIFICATE`]..=[`codes::CLOSE_REVOKED`]). Not retryable.
    #[error("peer {addr} refused this node (code {code:#x}): {reason}")]
    RefusedByPeer {
        /// The peer's address.
        addr: SocketAddr,
        /// The close code.
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// The request exceeds our `max_frame_bytes`; nothing was sent. Not retryable.
    #[error("request of {len} bytes exceeds max_frame_bytes ({max})")]
    RequestTooLarge {
        /// The payload length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The response announced more than our `max_frame_bytes`; its stream was stopped without
    /// reading it, the connection carries on. Not retryable.
    #[error("response of {len} bytes exceeds max_frame_bytes ({max})")]
    ResponseTooLarge {
        /// The announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The peer reset the request's stream; the connection carries on. Retryable only when the
    /// peer is shutting down or timed out reading the request.
    #[error("peer refused the request: {0}")]
    Refused(StreamRefusal),
    /// No response within the timeout; the stream was cancelled. Retryable.
    #[error("no response from peer within {after:?}")]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection was lost or closed by the peer (idle timeout, reset, the peer shutting down).
    /// Retryable over a new connection.
    #[error("connection to peer lost: {0}")]
    ConnectionLost(String),
    /// The peer broke the framing (finished a response stream mid-frame). Not retryable.
    #[error("peer protocol violation: {0}")]
    Protocol(String),
    /// This connection or endpoint was closed locally. Not retryable.
    #[error("the peer connection or endpoint is closed")]
    Closed,
}

impl PeerError {
    /// Whether trying again can succeed (see the type's docs about idempotency).
    pub fn is_retryable(&self) -> bool {
        match self {
            PeerError::Connect { .. } | PeerError::Timeout { .. } | PeerError::ConnectionLost(_) => true,
            PeerError::Refused(refusal) => matches!(refusal, StreamRefusal::ShuttingDown | StreamRefusal::ReadTimeout),
            PeerError::Config(_)
            | PeerError::Bind { .. }
            | PeerError::Tls { .. }
            | PeerError::Identity { .. }
            | PeerError::RefusedByPeer { .. }
            | PeerError::RequestTooLarge { .. }
            | PeerError::ResponseTooLarge { .. }
            | PeerError::Protocol(_)
            | PeerError::Closed => false,
        }
    }

    /// Whether the connection this error happened on is unusable (a pool should drop it).
    pub fn is_connection_level(&self) -> bool {
        matches!(
            self,
            PeerError::Connect { .. }
                | PeerError::Tls { .. }
                | PeerError::Identity { .. }
                | PeerError::RefusedByPeer { .. }
                | PeerError::ConnectionLost(_)
                | PeerError::Closed
        )
    }
}

/// Maps a connection error (during or after the handshake) to a [`PeerError`].
pub(crate) fn connection_error(addr: SocketAddr, error: &quinn::ConnectionError) -> PeerError {
    use quinn::ConnectionError as E;
    match error {
        E::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            if codes::is_identity_refusal(code) {
                PeerError::RefusedByPeer { addr, code, reason }
            } else if code == u64::from(codes::CLOSE_SHUTDOWN) {
                PeerError::ConnectionLost(format!("peer {addr} is shutting down"))
            } else {
                PeerError::ConnectionLost(format!("peer {addr} closed the connection (code {code:#x}): {reason}"))
            }
        }
        E::LocallyClosed => PeerError::Closed,
        _ if is_tls_failure(error) => PeerError::Tls { addr, reason: error.to_string() },
        E::ConnectionClosed(close) if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            PeerError::Connect { addr, reason: "the peer refused the connection (at its connection limit?)".into() }
        }
        E::TimedOut => PeerError::ConnectionLost(format!("peer {addr} timed out")),
        other => PeerError::ConnectionLost(format!("peer {addr}: {other}")),
    }
}

/// Whether a connection failed because of TLS (QUIC carries TLS alerts as CRYPTO_ERROR, transport
/// error codes `0x100..=0x1ff`).
fn is_tls_failure(error: &quinn::ConnectionError) -> bool {
    let code = match error {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        _ => return false,
    };
    (0x100..=0x1ff).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_cover_the_bdp() {
        let config = PeerTransportConfig::default();
        config.validate().unwrap();
        // 1 Gbit/s × 100 ms.
        let bdp = 1_000_000_000u64 / 8 / 10;
        assert!(u64::from(config.stream_receive_window) >= bdp);
        assert!(u64::from(config.receive_window) >= bdp);
        assert!(config.send_window >= bdp);
        assert!(config.stream_receive_window as usize > config.max_frame_bytes);
    }

    #[test]
    fn invalid_settings_are_named() {
        let bad = [
            PeerTransportConfig { max_frame_bytes: 0, ..Default::default() },
            PeerTransportConfig { max_connections: 0, ..Default::default() },
            PeerTransportConfig { stream_receive_window: 64 << 20, ..Default::default() },
            PeerTransportConfig { keep_alive_interval: Duration::from_secs(30), ..Default::default() },
            PeerTransportConfig { connect_timeout: Duration::ZERO, ..Default::default() },
            PeerTransportConfig { max_protocol_version: NEWEST_VERSION + 1, ..Default::default() },
        ];
        let fields = [
            "max_frame_bytes",
            "max_connections",
            "stream_receive_window",
            "keep_alive_interval",
            "connect_timeout",
            "max_protocol_version",
        ];
        for (config, field) in bad.iter().zip(fields) {
            let err = config.validate().unwrap_err();
            assert!(err.to_string().contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn a_node_offers_the_versions_up_to_its_maximum_newest_first() {
        assert_eq!(alpns_up_to(NEWEST_VERSION), ALPNS.map(<[u8]>::to_vec).to_vec());
        assert_eq!(alpns_up_to(2), vec![ALPN_V2.to_vec(), ALPN.to_vec()]);
        assert_eq!(alpns_up_to(1), vec![ALPN.to_vec()]);
        // The configuration's default is the newest version (config.rs cannot name this layer).
        assert_eq!(crate::config::Config::default().peer.max_protocol_version, NEWEST_VERSION);
    }

    #[test]
    fn stream_codes_round_trip() {
        for refusal in [
            StreamRefusal::RequestTooLarge,
            StreamRefusal::ResponseTooLarge,
            StreamRefusal::ReadTimeout,
            StreamRefusal::Truncated,
            StreamRefusal::ShuttingDown,
            StreamRefusal::HandlerFailed,
            StreamRefusal::BadHeader,
            StreamRefusal::Other(0),
            StreamRefusal::Other(0x99),
        ] {
            assert_eq!(StreamRefusal::from_code(refusal.code()), refusal);
        }
    }

    #[test]
    fn identity_codes_are_distinct_and_recognised() {
        let errors = [
            IdentityError::NoCertificate,
            IdentityError::MissingUri,
            IdentityError::WrongCluster { expected: "a".into(), found: "b".into() },
            IdentityError::NotANode { found: "urn:meridian:cluster:a:client:x".into() },
            IdentityError::UnexpectedName { expected: "a".into(), found: "b".into() },
            IdentityError::Revoked { fingerprint: "00".into() },
        ];
        let codes: std::collections::BTreeSet<u32> = errors.iter().map(close_code).collect();
        assert_eq!(codes.len(), errors.len());
        assert!(codes.iter().all(|c| codes::is_identity_refusal(u64::from(*c))));
        assert!(!codes::is_identity_refusal(u64::from(codes::CLOSE_SHUTDOWN)));
        assert!(!codes::is_identity_refusal(u64::from(codes::CLOSE_DONE)));
    }

    #[test]
    fn retryability() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(PeerError::Timeout { after: Duration::from_secs(1) }.is_retryable());
        assert!(PeerError::ConnectionLost("x".into()).is_retryable());
        assert!(PeerError::Connect { addr, reason: "x".into() }.is_retryable());
        assert!(PeerError::Refused(StreamRefusal::ShuttingDown).is_retryable());
        assert!(!PeerError::Refused(StreamRefusal::RequestTooLarge).is_retryable());
        assert!(!PeerError::Tls { addr, reason: "x".into() }.is_retryable());
        assert!(!PeerError::Identity { addr, source: IdentityError::NoCertificate }.is_retryable());
        assert!(!PeerError::RefusedByPeer { addr, code: 0x12, reason: "x".into() }.is_retryable());
        assert!(!PeerError::RequestTooLarge { len: 2, max: 1 }.is_retryable());
        assert!(!PeerError::Closed.is_retryable());
    }

    #[test]
    fn application_close_codes_map() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let closed = |code: u32| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: code.into(),
                reason: b"because".to_vec().into(),
            })
        };
        assert!(matches!(
            connection_error(addr, &closed(codes::CLOSE_WRONG_CLUSTER)),
            PeerError::RefusedByPeer { code: 0x12, ref reason, .. } if reason == "because"
        ));
        let shutdown = connection_error(addr, &closed(codes::CLOSE_SHUTDOWN));
        assert!(matches!(shutdown, PeerError::ConnectionLost(_)) && shutdown.is_retryable());
        assert!(matches!(connection_error(addr, &quinn::ConnectionError::LocallyClosed), PeerError::Closed));
    }
}
