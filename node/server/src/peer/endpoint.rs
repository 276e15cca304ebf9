//! [`PeerEndpoint`] (one UDP socket: accepts peers and dials them) and [`PeerConnection`].

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tls::{self, verify_connection};
use super::{
    close_code, codes, connection_error, PeerError, PeerHandler, PeerIdentity, PeerTlsConfig, PeerTransportConfig,
    StreamRefusal, TraceContext, ALPNS, NEWEST_VERSION,
};
use crate::certs::revocation::RevocationFile;
use crate::certs::IdentityError;

/// Longest close reason sent to a peer (it must fit in one packet).
const MAX_REASON_BYTES: usize = 256;

/// A node's endpoint on the peer transport: one UDP socket that accepts connections from peers
/// ([`serve`](Self::serve)) and dials them ([`connect`](Self::connect)). Cheap to clone; clones
/// share the socket.
#[derive(Clone)]
pub struct PeerEndpoint {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    identity: PeerIdentity,
    config: PeerTransportConfig,
    /// The deny list every peer certificate is checked against, if any.
    revoked: Option<Arc<RevocationFile>>,
}

impl std::fmt::Debug for PeerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerEndpoint")
            .field("local_addr", &self.local_addr().ok())
            .field("identity", &self.inner.identity)
            .finish()
    }
}

impl PeerEndpoint {
    /// Binds `addr` (UDP) after checking the TLS material — our certificate must be a node of
    /// `tls.cluster_id`, signed by `tls.ca_pem`, and match our key — and the transport settings.
    /// Must be called within a Tokio runtime. Bind `[::]:port` to reach IPv4 and IPv6 peers alike.
    pub fn bind(addr: SocketAddr, tls: PeerTlsConfig, config: PeerTransportConfig) -> Result<PeerEndpoint, PeerError> {
        PeerEndpoint::bind_with(addr, tls, config, None)
    }

    /// [`bind`](Self::bind), refusing every peer whose certificate chain holds a certificate on
    /// `revoked` — at each handshake (dialling and accepting) and before each request on a
    /// connection opened earlier ([`codes::CLOSE_REVOKED`]). Our own certificate must not be on it.
    pub fn bind_with(
        addr: SocketAddr,
        tls: PeerTlsConfig,
        config: PeerTransportConfig,
        revoked: Option<Arc<RevocationFile>>,
    ) -> Result<PeerEndpoint, PeerError> {
        let setup = tls::setup(&tls, &config)?;
        if let Some(list) = &revoked {
            let own = crate::certs::certs_from_pem(tls.cert_pem.as_bytes(), "node certificate")
                .map_err(|e| PeerError::Config(e.to_string()))?;
            if list.is_revoked(&own[0]) {
                return Err(PeerError::Config(format!(
                    "this node's own certificate ({}) is on the revocation list {}",
                    crate::certs::revocation::fingerprint(&own[0]),
                    list.path().display()
                )));
            }
        }
        let endpoint =
            quinn::Endpoint::server(setup.server, addr).map_err(|e| PeerError::Bind { addr, reason: e.to_string() })?;
        tracing::debug!(%addr, identity = %setup.identity, "peer transport bound");
        Ok(PeerEndpoint {
            inner: Arc::new(Inner { endpoint, client: setup.client, identity: setup.identity, config, revoked }),
        })
    }

    /// The bound address (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// This node's identity, from its own certificate.
    pub fn identity(&self) -> &PeerIdentity {
        &self.inner.identity
    }

    /// The transport settings.
    pub fn config(&self) -> &PeerTransportConfig {
        &self.inner.config
    }

    /// Dials the peer at `addr`, verifying its certificate chain against the cluster CA, that its
    /// DNS/IP SANs cover `addr`'s IP, and its identity (a node of our cluster, named
    /// `expected_name` when given). On an identity failure the connection is closed with the
    /// matching [`codes`] value and [`PeerError::Identity`] is returned.
    pub async fn connect(&self, addr: SocketAddr, expected_name: Option<&str>) -> Result<PeerConnection, PeerError> {
        self.connect_named(addr, &addr.ip().to_string(), expected_name).await
    }

    /// Like [`connect`](Self::connect), verifying the peer's certificate for the DNS name (or IP)
    /// `server_name` instead of `addr`'s IP.
    pub async fn connect_named(
        &self,
        addr: SocketAddr,
        server_name: &str,
        expected_name: Option<&str>,
    ) -> Result<PeerConnection, PeerError> {
        let inner = &self.inner;
        // quinn runs a connection's driver task inside the span current when it is dialled: dial
        // outside any span, or the request that happened to dial (and its whole trace) would stay
        // open for as long as the connection lives, and never be exported.
        let dial = || inner.endpoint.connect_with(inner.client.clone(), addr, server_name);
        let connecting = tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), dial);
        let connecting = connecting.map_err(|e| match e {
            quinn::ConnectError::EndpointStopping => PeerError::Closed,
            quinn::ConnectError::InvalidServerName(name) => {
                PeerError::Config(format!("{name:?} is not a valid server name"))
            }
            other => PeerError::Connect { addr, reason: other.to_string() },
        })?;
        let connection = match tokio::time::timeout(inner.config.connect_timeout, connecting).await {
            Err(_) => {
                return Err(PeerError::Connect {
                    addr,
                    reason: format!("no handshake within {:?}", inner.config.connect_timeout),
                })
            }
            Ok(Err(e)) => return Err(connection_error(addr, &e)),
            Ok(Ok(connection)) => connection,
        };
        let peer =
            match verify_connection(&connection, &inner.identity.cluster_id, expected_name, inner.revoked.as_deref()) {
                Ok(peer) => peer,
                Err(source) => {
                    count_identity_refusal(&source);
                    refuse(&connection, &source);
                    return Err(PeerError::Identity { addr, source });
                }
            };
        tracing::debug!(%addr, %peer, "peer connection established");
        Ok(PeerConnection {
            version: negotiated_version(&connection),
            connection,
            peer: Arc::new(peer),
            max_frame_bytes: inner.config.max_frame_bytes,
            revoked: inner.revoked.clone(),
        })
    }

    /// Serves peers until `shutdown` fires: accepts connections (at most `max_connections`; source
    /// addresses are validated with a QUIC Retry first), verifies each peer's identity, and answers
    /// every request stream with `handler`. At shutdown it stops accepting, lets requests in flight
    /// finish for up to `drain_timeout`, then closes the endpoint (outgoing connections included)
    /// with [`codes::CLOSE_SHUTDOWN`]. Call it once per endpoint.
    pub async fn serve<H: PeerHandler>(&self, handler: Arc<H>, shutdown: CancellationToken) {
        let inner = &self.inner;
        let config = Arc::new(inner.config.clone());
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let inflight = Arc::new(Semaphore::new(config.max_inflight_requests));
        let cluster_id: Arc<str> = inner.identity.cluster_id.as_str().into();
        let revoked = inner.revoked.clone();
        let tasks = TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = inner.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            if !incoming.remote_address_validated() {
                // A Retry round trip proves the source address before the connection takes a slot.
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                metrics::counter!("meridian_peer_connections_refused_total", "reason" => "limit").increment(1);
                tracing::warn!(remote = %incoming.remote_address(), "peer connection refused: at max_connections");
                incoming.refuse();
                continue;
            };
            let (handler, inflight, config, cluster_id, shutdown, revoked) = (
                handler.clone(),
                inflight.clone(),
                config.clone(),
                cluster_id.clone(),
                shutdown.clone(),
                revoked.clone(),
            );
            tasks.spawn(async move {
                let _permit = permit;
                let remote = incoming.remote_address();
                let connection = match tokio::time::timeout(config.connect_timeout, incoming).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(e)) => {
                        metrics::counter!("meridian_peer_connections_refused_total", "reason" => "handshake")
                            .increment(1);
                        tracing::warn!(%remote, error = %e, "peer handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "peer handshake timed out");
                        return;
                    }
                };
                let peer = match verify_connection(&connection, &cluster_id, None, revoked.as_deref()) {
                    Ok(peer) => peer,
                    Err(e) => {
                        count_identity_refusal(&e);
                        tracing::warn!(%remote, error = %e, "peer refused");
                        refuse(&connection, &e);
                        return;
                    }
                };
                tracing::debug!(%remote, %peer, "peer connected");
                serve_connection(connection, Arc::new(peer), handler, inflight, config, shutdown, revoked).await;
            });
        }
        tasks.close();
        if tokio::time::timeout(inner.config.drain_timeout, tasks.wait()).await.is_err() {
            tracing::warn!("some peer requests did not finish within the drain timeout");
        }
        inner.endpoint.close(codes::CLOSE_SHUTDOWN.into(), b"shutting down");
        let _ = tokio::time::timeout(inner.config.drain_timeout, inner.endpoint.wait_idle()).await;
    }

    /// Closes every connection (incoming and outgoing) with [`codes::CLOSE_SHUTDOWN`] and stops
    /// the endpoint; further [`connect`](Self::connect) calls fail with [`PeerError::Closed`].
    pub fn close(&self) {
        self.inner.endpoint.close(codes::CLOSE_SHUTDOWN.into(), b"shutting down");
    }
}

/// Counts a refused peer identity: `meridian_peer_connections_refused_total{reason="revoked"}` for
/// a revoked certificate, `{reason="identity"}` for the rest.
fn count_identity_refusal(error: &IdentityError) {
    let reason = if matches!(error, IdentityError::Revoked { .. }) { "revoked" } else { "identity" };
    metrics::counter!("meridian_peer_connections_refused_total", "reason" => reason).increment(1);
}

/// Closes `connection` for an identity failure, with its code and reason.
fn refuse(connection: &quinn::Connection, error: &IdentityError) {
    let mut reason = error.to_string();
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    connection.close(close_code(error).into(), reason.as_bytes());
}

async fn serve_connection<H: PeerHandler>(
    connection: quinn::Connection,
    peer: Arc<PeerIdentity>,
    handler: Arc<H>,
    inflight: Arc<Semaphore>,
    config: Arc<PeerTransportConfig>,
    shutdown: CancellationToken,
    revoked: Option<Arc<RevocationFile>>,
) {
    metrics::gauge!("meridian_peer_connections").increment(1.0);
    let version = negotiated_version(&connection);
    let streams = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = connection.accept_bi() => stream,
        };
        let Ok((send, recv)) = stream else { break };
        // A certificate revoked since the handshake: the connection ends here.
        if let Err(e) = tls::recheck_revocation(&connection, revoked.as_deref()) {
            count_identity_refusal(&e);
            tracing::warn!(peer = %peer, error = %e, "peer refused");
            refuse(&connection, &e);
            break;
        }
        streams.spawn(serve_stream(
            send,
            recv,
            version,
            peer.clone(),
            handler.clone(),
            inflight.clone(),
            config.clone(),
            shutdown.clone(),
        ));
    }
    streams.close();
    streams.wait().await;
    if shutdown.is_cancelled() {
        connection.close(codes::CLOSE_SHUTDOWN.into(), b"shutting down");
    }
    metrics::gauge!("meridian_peer_connections").decrement(1.0);
}

/// Resets both halves of a request stream with `refusal`'s code.
fn refuse_stream(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, refusal: StreamRefusal) {
    metrics::counter!("meridian_peer_stream_refusals_total", "reason" => refusal.name()).increment(1);
    let code = quinn::VarInt::from_u64(refusal.code()).unwrap_or(quinn::VarInt::from_u32(0));
    let _ = recv.stop(code);
    let _ = send.reset(code);
}

#[allow(clippy::too_many_arguments)] // one stream's parts, as its connection hands them over
async fn serve_stream<H: PeerHandler>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    version: u8,
    peer: Arc<PeerIdentity>,
    handler: Arc<H>,
    inflight: Arc<Semaphore>,
    config: Arc<PeerTransportConfig>,
    shutdown: CancellationToken,
) {
    let max = config.max_frame_bytes;
    let deadline = Instant::now() + config.request_read_timeout;
    let trace = if version >= 2 {
        match tokio::time::timeout_at(deadline, read_stream_header(&mut recv)).await {
            Ok(Ok(trace)) => trace,
            Ok(Err(refusal)) => return refuse_stream(&mut send, &mut recv, refusal),
            Err(_) => return refuse_stream(&mut send, &mut recv, StreamRefusal::ReadTimeout),
        }
    } else {
        None
    };
    let mut header = [0u8; 4];
    match tokio::time::timeout_at(deadline, recv.read_exact(&mut header)).await {
        Ok(Ok(())) => {}
        Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
            return refuse_stream(&mut send, &mut recv, StreamRefusal::Truncated)
        }
        // Reset by the peer or the connection is gone: nobody to answer.
        Ok(Err(_)) => return,
        Err(_) => return refuse_stream(&mut send, &mut recv, StreamRefusal::ReadTimeout),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        tracing::debug!(peer = %peer, len, max, "peer request frame too large");
        return refuse_stream(&mut send, &mut recv, StreamRefusal::RequestTooLarge);
    }
    // Taken before the payload is read: bounds the memory held by requests across connections.
    let _permit = tokio::select! {
        permit = inflight.acquire_owned() => match permit {
            Ok(permit) => permit,
            Err(_) => return refuse_stream(&mut send, &mut recv, StreamRefusal::ShuttingDown),
        },
        _ = shutdown.cancelled() => return refuse_stream(&mut send, &mut recv, StreamRefusal::ShuttingDown),
    };
    let mut request = vec![0u8; len];
    match tokio::time::timeout_at(deadline, recv.read_exact(&mut request)).await {
        Ok(Ok(())) => {}
        Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
            return refuse_stream(&mut send, &mut recv, StreamRefusal::Truncated)
        }
        Ok(Err(_)) => return,
        Err(_) => return refuse_stream(&mut send, &mut recv, StreamRefusal::ReadTimeout),
    }
    let response = match AssertUnwindSafe(handler.handle(&peer, version, trace, request)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!(peer = %peer, "peer request handler panicked");
            return refuse_stream(&mut send, &mut recv, StreamRefusal::HandlerFailed);
        }
    };
    if response.len() > max {
        tracing::warn!(peer = %peer, len = response.len(), max, "peer response exceeds max_frame_bytes");
        return refuse_stream(&mut send, &mut recv, StreamRefusal::ResponseTooLarge);
    }
    let header = (response.len() as u32).to_be_bytes();
    if send.write_all(&header).await.is_ok() && send.write_all(&response).await.is_ok() {
        let _ = send.finish();
    }
}

/// An established, identity-verified connection to a peer node. Cheap to clone; clones share the
/// connection, which closes when the last clone is dropped (or on [`close`](Self::close)).
#[derive(Clone)]
pub struct PeerConnection {
    connection: quinn::Connection,
    /// The protocol version the handshake settled on (see [`super::ALPNS`]).
    version: u8,
    peer: Arc<PeerIdentity>,
    max_frame_bytes: usize,
    revoked: Option<Arc<RevocationFile>>,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("remote", &self.connection.remote_address())
            .field("peer", &self.peer)
            .field("open", &self.is_open())
            .field("version", &self.version)
            .finish()
    }
}

impl PeerConnection {
    /// The protocol version the handshake settled on (see [`super::ALPNS`]).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The peer's identity, verified from its certificate.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The peer's identity, shared.
    pub fn peer_arc(&self) -> Arc<PeerIdentity> {
        self.peer.clone()
    }

    /// The connection's current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        self.connection.rtt()
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// Whether the connection is still open (it may still fail on the next request).
    pub fn is_open(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    /// A number identifying this connection among the endpoint's connections.
    pub fn stable_id(&self) -> usize {
        self.connection.stable_id()
    }

    /// Closes the connection ([`codes::CLOSE_DONE`]); requests in flight fail.
    pub fn close(&self) {
        self.connection.close(codes::CLOSE_DONE.into(), b"done");
    }

    /// Sends `request` on a new stream and returns the peer's response, within `timeout`
    /// (covering stream opening, which waits while the peer's stream limit is reached). On any
    /// failure the stream is cancelled; only connection-level errors affect other requests.
    pub async fn request(&self, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, PeerError> {
        let max = self.max_frame_bytes;
        if request.len() > max {
            return Err(PeerError::RequestTooLarge { len: request.len(), max });
        }
        let deadline = Instant::now() + timeout;
        let addr = self.remote_addr();
        // A certificate revoked since the handshake: nothing more is sent to (or taken from) it.
        if let Err(source) = tls::recheck_revocation(&self.connection, self.revoked.as_deref()) {
            count_identity_refusal(&source);
            refuse(&self.connection, &source);
            return Err(PeerError::Identity { addr, source });
        }
        let (mut send, mut recv) = match tokio::time::timeout_at(deadline, self.connection.open_bi()).await {
            Err(_) => return Err(PeerError::Timeout { after: timeout }),
            Ok(Err(e)) => return Err(connection_error(addr, &e)),
            Ok(Ok(streams)) => streams,
        };
        // The caller's span, so that the peer's spans for this request join its trace.
        let header = (self.version >= 2).then(|| stream_header(crate::telemetry::current().as_ref()));
        let exchange = exchange(addr, &mut send, &mut recv, header.as_deref(), &request, max);
        let result = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout { after: timeout }),
        };
        if result.is_err() {
            let cancelled = quinn::VarInt::from_u32(codes::STREAM_CANCELLED);
            let _ = send.reset(cancelled);
            let _ = recv.stop(cancelled);
        }
        result
    }
}

async fn exchange(
    addr: SocketAddr,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    header: Option<&[u8]>,
    request: &[u8],
    max: usize,
) -> Result<Vec<u8>, PeerError> {
    let write_error = |e: quinn::WriteError| match e {
        quinn::WriteError::Stopped(code) => PeerError::Refused(StreamRefusal::from_code(code.into_inner())),
        quinn::WriteError::ConnectionLost(e) => connection_error(addr, &e),
        other => PeerError::ConnectionLost(other.to_string()),
    };
    let read_error = |e: quinn::ReadExactError| match e {
        quinn::ReadExactError::FinishedEarly(_) => {
            PeerError::Protocol("the peer finished its response stream mid-frame".into())
        }
        quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code)) => {
            PeerError::Refused(StreamRefusal::from_code(code.into_inner()))
        }
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => connection_error(addr, &e),
        quinn::ReadExactError::ReadError(other) => PeerError::ConnectionLost(other.to_string()),
    };
    if let Some(header) = header {
        send.write_all(header).await.map_err(write_error)?;
    }
    let len = u32::try_from(request.len()).expect("max_frame_bytes fits in u32");
    send.write_all(&len.to_be_bytes()).await.map_err(write_error)?;
    send.write_all(request).await.map_err(write_error)?;
    let _ = send.finish();
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.map_err(read_error)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(PeerError::ResponseTooLarge { len, max });
    }
    let mut response = vec![0u8; len];
    recv.read_exact(&mut response).await.map_err(read_error)?;
    Ok(response)
}

/// The protocol version a connection's handshake settled on (see [`super::ALPNS`]); 1 when it
/// named none.
fn negotiated_version(connection: &quinn::Connection) -> u8 {
    let protocol = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    // `ALPNS` lists the versions newest first: version `NEWEST_VERSION - index`.
    protocol
        .and_then(|protocol| ALPNS.iter().position(|alpn| *alpn == protocol.as_slice()))
        .map_or(1, |index| NEWEST_VERSION - index as u8)
}

/// Length of a stream header's trace context: trace id, parent span id, flags.
const TRACE_HEADER_BYTES: u8 = 16 + 8 + 1;

/// The header a version-2 request stream starts with: one length byte, then the caller's trace
/// context (W3C binary layout: trace id, span id, flags) or nothing. Fixed-size fields, so there is
/// nothing to decode beyond a length that is one of two values.
pub fn stream_header(trace: Option<&TraceContext>) -> Vec<u8> {
    match trace {
        None => vec![0],
        Some(trace) => {
            let mut header = Vec::with_capacity(1 + usize::from(TRACE_HEADER_BYTES));
            header.push(TRACE_HEADER_BYTES);
            header.extend_from_slice(&trace.trace_id);
            header.extend_from_slice(&trace.parent_span_id);
            header.push(trace.flags);
            header
        }
    }
}

/// Decodes a [`stream_header`] body of `len` bytes; `None` when it is neither of the two lengths
/// or carries all-zero ids.
pub fn decode_stream_header(body: &[u8]) -> Option<Option<TraceContext>> {
    match body.len() {
        0 => Some(None),
        len if len == usize::from(TRACE_HEADER_BYTES) => {
            let trace = TraceContext {
                trace_id: body[..16].try_into().ok()?,
                parent_span_id: body[16..24].try_into().ok()?,
                flags: body[24],
            };
            trace.is_valid().then_some(Some(trace))
        }
        _ => None,
    }
}

/// Reads a version-2 stream header (see [`stream_header`]).
async fn read_stream_header(recv: &mut quinn::RecvStream) -> Result<Option<TraceContext>, StreamRefusal> {
    let read = |e: quinn::ReadExactError| match e {
        quinn::ReadExactError::FinishedEarly(_) => StreamRefusal::Truncated,
        _ => StreamRefusal::Other(u64::from(codes::STREAM_CANCELLED)),
    };
    let mut len = [0u8; 1];
    recv.read_exact(&mut len).await.map_err(read)?;
    if len[0] != 0 && len[0] != TRACE_HEADER_BYTES {
        return Err(StreamRefusal::BadHeader);
    }
    let mut body = vec![0u8; usize::from(len[0])];
    recv.read_exact(&mut body).await.map_err(read)?;
    decode_stream_header(&body).ok_or(StreamRefusal::BadHeader)
}

#[cfg(test)]
mod stream_header_tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_refused() {
        let trace = TraceContext { trace_id: [7; 16], parent_span_id: [9; 8], flags: 1 };
        let header = stream_header(Some(&trace));
        assert_eq!(header.len(), 26);
        assert_eq!(decode_stream_header(&header[1..]), Some(Some(trace)));
        assert_eq!(stream_header(None), vec![0]);
        assert_eq!(decode_stream_header(&[]), Some(None));
        assert_eq!(decode_stream_header(&[1; 24]), None, "a length that is neither 0 nor 25");
        let zero = TraceContext { trace_id: [0; 16], parent_span_id: [9; 8], flags: 1 };
        assert_eq!(decode_stream_header(&stream_header(Some(&zero))[1..]), None, "an all-zero trace id");
    }
}
