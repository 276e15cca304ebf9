//! Serving the HTTP API: HTTPS with the node's certificate (plain HTTP only for an open node on
//! loopback, `Config::plain_http`), and bounds that keep slow or idle clients (slowloris) from
//! holding the node's sockets and tasks:
//!
//! * at most `limits.max_http_connections` open connections; further ones are closed at once and
//!   counted (`meridian_http_connections_refused_total`);
//! * the TLS handshake and each request's header must arrive within `limits.http_header_timeout_ms`
//!   (hyper's header read timeout, which also bounds an idle keep-alive connection);
//! * a whole request, body included, gets `limits.request_timeout_ms` plus that header allowance
//!   (`408` after it).
//!
//! Over TLS a client may present a certificate from the cluster CA (as on the QUIC port): the client
//! it names is who the connection's requests act as, unless one carries a bearer token.
//!
//! One tokio task per connection, hyper's HTTP/1 connection driving the axum router. At shutdown
//! every connection is asked to finish its request in flight and close (bounded).

use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::http::ConnectionCaller;
use crate::api::node::Node;
use crate::api::server::caller_for_chain;

/// How long a connection gets to finish its request in flight at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What bounds the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct HttpBounds {
    /// Open connections at most.
    pub max_connections: usize,
    /// For the TLS handshake, and for each request's header.
    pub header_timeout: Duration,
}

/// Serves the node's HTTP API on `listener` (over TLS when `tls` is given) until `shutdown` fires.
pub async fn serve_http(
    listener: TcpListener,
    node: Arc<Node>,
    tls: Option<Arc<rustls::ServerConfig>>,
    bounds: HttpBounds,
    shutdown: CancellationToken,
) {
    let router = crate::api::http::router(node.clone());
    let connections = Arc::new(Semaphore::new(bounds.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let tasks = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off a little rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("meridian_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (node, router, acceptor, shutdown) = (node.clone(), router.clone(), acceptor.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            match acceptor {
                None => serve_connection(stream, router, bounds, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(bounds.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        // A client certificate from the cluster CA names who the connection acts as.
                        let caller = caller_for_chain(&node, tls.get_ref().1.peer_certificates());
                        let router = router.layer(Extension(ConnectionCaller(caller)));
                        serve_connection(tls, router, bounds, shutdown).await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "HTTPS handshake failed"),
                    Err(_) => metrics::counter!("meridian_http_handshake_timeouts_total").increment(1),
                },
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn serve_connection<S>(io: S, router: Router, bounds: HttpBounds, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        }
    }
}
