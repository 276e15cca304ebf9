//! The QUIC server shell of the native client protocol: accept connections (bounded), learn who each
//! acts as (a client certificate, or a token login on one of its streams), accept streams (bounded
//! per connection by QUIC flow control), read one capped frame per stream, execute, answer.
//!
//! Bad input closes at most the offending stream: an oversized length prefix is answered with
//! `too_large` without reading the body, an undecodable frame with `bad_request`, and the connection
//! and every other stream on it carry on.

use meridian_client::proto::{
    self, AuthOp, ErrorCode, ErrorReply, FrameError, Operation, Reply, ReplyBody, Request, RequestV1, Response,
};
use std::sync::{Arc, RwLock};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::node::Node;
use crate::auth::Caller;
use crate::certs::CertIdentity;
use crate::telemetry;

/// QUIC application error code sent when the node closes connections at shutdown.
const CLOSE_SHUTDOWN: u32 = 1;
/// QUIC stream error code when a request frame is refused.
const STOP_BAD_FRAME: u32 = 2;

/// Serves the client protocol on `endpoint` until `shutdown` fires, then drains in-flight requests.
///
/// A connection slot (`limits.max_connections`) is taken when a handshake starts, so handshakes
/// that never complete must not hold them: each gets `limits.handshake_timeout_ms`, and once
/// `limits.max_unvalidated_handshakes` are in progress, a client whose address QUIC has not
/// validated yet gets a stateless Retry first (it costs this node nothing; a sender with a spoofed
/// source address never sees it, so it can start handshakes but not hold slots with them).
pub async fn serve_clients(endpoint: quinn::Endpoint, node: Arc<Node>, shutdown: CancellationToken) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// One client handshake in progress, counted until dropped.
    struct Handshaking(Arc<AtomicUsize>);
    impl Handshaking {
        fn start(count: &Arc<AtomicUsize>) -> Handshaking {
            count.fetch_add(1, Ordering::Relaxed);
            Handshaking(count.clone())
        }
    }
    impl Drop for Handshaking {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }

    let limits = &node.config().limits;
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshake_timeout = std::time::Duration::from_millis(limits.handshake_timeout_ms);
    let max_unvalidated = limits.max_unvalidated_handshakes;
    let handshaking = Arc::new(AtomicUsize::new(0));
    let tasks = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if !incoming.remote_address_validated() && handshaking.load(Ordering::Relaxed) >= max_unvalidated {
            metrics::counter!("meridian_client_handshake_retries_total").increment(1);
            // An unvalidated address may always be sent a Retry; should quinn say otherwise, drop
            // the attempt without an answer.
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("meridian_connections_refused_total").increment(1);
            incoming.refuse();
            continue;
        };
        let node = node.clone();
        let shutdown = shutdown.clone();
        let in_progress = Handshaking::start(&handshaking);
        tasks.spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(handshake_timeout, incoming).await;
            drop(in_progress);
            match handshake {
                Ok(Ok(connection)) => serve_connection(connection, node, shutdown).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "client handshake failed"),
                Err(_) => {
                    metrics::counter!("meridian_client_handshake_timeouts_total").increment(1);
                    tracing::debug!("client handshake did not complete within limits.handshake_timeout_ms");
                }
            }
        });
    }
    tasks.close();
    let drain = std::time::Duration::from_millis(node.config().limits.request_timeout_ms);
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!("some client requests did not finish within the drain timeout");
    }
    endpoint.close(CLOSE_SHUTDOWN.into(), b"shutting down");
    // Bounded: a half-open connection (a client that vanished) would otherwise hold shutdown until
    // its idle timeout.
    if tokio::time::timeout(std::time::Duration::from_secs(5), endpoint.wait_idle()).await.is_err() {
        tracing::debug!("client connections did not close within 5 s; exiting anyway");
    }
}

async fn serve_connection(connection: quinn::Connection, node: Arc<Node>, shutdown: CancellationToken) {
    // Who the connection acts as: its certificate's client name, else anonymous until a token login.
    let caller = Arc::new(RwLock::new(caller_of(&connection, &node)));
    node.track_connection(true);
    metrics::gauge!("meridian_client_connections").increment(1.0);
    let streams = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = connection.accept_bi() => stream,
        };
        match stream {
            Ok((send, recv)) => {
                let (node, caller) = (node.clone(), caller.clone());
                streams.spawn(serve_stream(send, recv, node, caller));
            }
            Err(_) => break,
        }
    }
    streams.close();
    streams.wait().await;
    node.track_connection(false);
    metrics::gauge!("meridian_client_connections").decrement(1.0);
}

/// Who a new connection acts as (see [`caller_for_chain`]).
fn caller_of(connection: &quinn::Connection, node: &Node) -> Caller {
    let chain = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok());
    caller_for_chain(node, chain.as_deref().map(Vec::as_slice))
}

/// Who a connection whose client presented `chain` (verified by the TLS layer against the cluster
/// CA) acts as: the client it names (unless revoked), anonymous when it presented none (it may still
/// use a token), rejected when it names no client of this cluster. Shared by the QUIC and HTTPS
/// surfaces.
pub(crate) fn caller_for_chain(node: &Node, chain: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Caller {
    let auth = node.auth();
    let Some(leaf) = chain.and_then(|chain| chain.first()) else { return auth.anonymous() };
    match crate::certs::parse_cert_identity(leaf) {
        Ok(CertIdentity::Client(client)) if client.cluster_id == node.config().cluster_id => {
            auth.certificate(&client.name, leaf)
        }
        Ok(other) if auth.enabled() => {
            metrics::counter!("meridian_auth_refused_total", "reason" => "certificate_identity").increment(1);
            Caller::Rejected { why: format!("the certificate names {}, not a client of this cluster", other.uri()) }
        }
        Err(e) if auth.enabled() => {
            metrics::counter!("meridian_auth_refused_total", "reason" => "certificate_identity").increment(1);
            Caller::Rejected { why: format!("the client certificate carries no Meridian client identity ({e})") }
        }
        _ => auth.anonymous(),
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    node: Arc<Node>,
    caller: Arc<RwLock<Caller>>,
) {
    let max = node.config().limits.max_frame_bytes;
    // A client gets `request_timeout_ms` to deliver its frame: a stalled stream cannot hold its
    // slot (and its partial buffer) for the life of the connection.
    let deadline = std::time::Duration::from_millis(node.config().limits.request_timeout_ms);
    let reading = std::time::Instant::now();
    let frame = match tokio::time::timeout(deadline, proto::read_frame::<Request>(&mut recv, max)).await {
        Ok(frame) => frame,
        Err(_) => Err(FrameError::Stream("the request frame did not arrive within limits.request_timeout_ms".into())),
    };
    // Set for a client write: when its reply started (stage `reply`: encoding and sending it).
    let mut timed_write = None;
    let response = match frame {
        // A token login changes who the whole connection acts as.
        Ok(Request::V1(RequestV1 { op: Operation::Auth(AuthOp::Login { token }), causal_token, .. })) => {
            let result = node.auth().login(&token).and_then(|who| {
                let report = node.auth().run(&who, AuthOp::WhoAmI)?;
                *caller.write().unwrap_or_else(|p| p.into_inner()) = who;
                Ok(Reply { causal_token: causal_token.unwrap_or_default(), body: ReplyBody::Auth(Box::new(report)) })
            });
            Response::V1(result)
        }
        Ok(request) => {
            let who = caller.read().unwrap_or_else(|p| p.into_inner()).clone();
            let write = matches!(&request, Request::V1(RequestV1 { op: Operation::Write { .. }, .. }));
            if write {
                telemetry::write_stage("read", reading);
            }
            let executing = std::time::Instant::now();
            let response = node.execute(request, &who).await;
            if write {
                telemetry::write_stage("execute", executing);
                timed_write = Some(std::time::Instant::now());
            }
            response
        }
        Err(FrameError::Stream(reason)) => {
            tracing::debug!(%reason, "client stream ended before a full frame");
            let _ = recv.stop(STOP_BAD_FRAME.into());
            return;
        }
        Err(e) => {
            let _ = recv.stop(STOP_BAD_FRAME.into());
            let code = match e {
                FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                FrameError::Malformed(proto::CodecError::UnsupportedVersion(_)) => ErrorCode::Unsupported,
                _ => ErrorCode::BadRequest,
            };
            metrics::counter!("meridian_bad_frames_total", "reason" => code.name()).increment(1);
            Response::V1(Err(ErrorReply::new(code, e.to_string())))
        }
    };
    let mut frame = proto::encode_frame(&response);
    let max_response = node.config().limits.max_response_bytes();
    if frame.len() > max_response + 4 {
        let error = ErrorReply::new(
            ErrorCode::TooLarge,
            format!(
                "the response is {} bytes, more than a response may carry ({max_response}: the larger of limits.max_frame_bytes and limits.max_merged_key_bytes + 1 MiB); \
                 a key merged this large from concurrent growth can be shrunk (remove members) or deleted",
                frame.len() - 4
            ),
        );
        frame = proto::encode_frame(&Response::V1(Err(error)));
    }
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
    }
    if let Some(replying) = timed_write {
        telemetry::write_stage("reply", replying);
    }
}
