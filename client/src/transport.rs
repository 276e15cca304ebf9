//! Connections, failover and retries: everything between a [`RequestV1`] and its [`Reply`].
//!
//! * **One connection at a time.** The client keeps one cached QUIC connection (to the first reachable
//!   endpoint, in the order given) and multiplexes every request over it, one bidirectional stream per
//!   request. It reconnects lazily: a request that finds no open connection establishes one.
//! * **Failover.** When a request fails at the connection level (the connection closed, no answer
//!   within the timeout, the node is shutting down), the cached connection is dropped and the next
//!   connection attempt starts at the *following* endpoint, wrapping around. There is no automatic
//!   failback while the failover connection stays healthy.
//! * **Retries.** Retryable failures ([`Error::is_retryable`]) are retried up to `max_retries` times
//!   with capped exponential backoff and jitter ([`backoff_delay`]). The request frame is encoded
//!   once, so a write's idempotency id — assigned before the first attempt — is identical on every
//!   attempt and the node applies the write once.
//! * **No stampede.** Connection attempts are serialised; requests that queued behind a failed
//!   attempt get its error instead of each repeating it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use crate::proto::{
    self, Consistency, ErrorCode, FrameError, IdempotencyId, Operation, Reply, Request, RequestV1, Response,
};
use crate::{tls, Error};

/// First retry delay (before jitter).
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Longest retry delay.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The delay before retry number `retry` (0 for the first retry): `50 ms · 2^retry`, capped at 2 s,
/// with "equal jitter": half of it fixed, half scaled by `jitter` (a random number in `[0, 1)`), so
/// clients that failed together do not retry together, yet none retries immediately.
pub(crate) fn backoff_delay(retry: u32, jitter: f64) -> Duration {
    let exponential = BACKOFF_BASE.saturating_mul(1u32 << retry.min(16));
    let ceiling = exponential.min(BACKOFF_CAP);
    let half = ceiling / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Settings fixed when the client is built.
#[derive(Clone)]
pub(crate) struct Config {
    /// `host:port` strings, nearest first.
    pub(crate) endpoints: Vec<String>,
    pub(crate) quic: quinn::ClientConfig,
    pub(crate) server_name: String,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) default_consistency: Option<Consistency>,
    pub(crate) max_frame_bytes: usize,
}

impl Config {
    pub(crate) fn timeout_ms(&self) -> u32 {
        u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX)
    }
}

/// The cached connection and which endpoint it goes to.
#[derive(Clone)]
struct Current {
    index: usize,
    conn: quinn::Connection,
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    /// Where the next connection attempt starts.
    next: usize,
    /// When the last connection attempt failed, and how.
    last_failure: Option<(Instant, Error)>,
}

/// The client's shared core.
pub(crate) struct Transport {
    pub(crate) config: Config,
    /// One UDP endpoint per address family, bound on first use.
    sockets: Mutex<(Option<quinn::Endpoint>, Option<quinn::Endpoint>)>,
    state: RwLock<State>,
}

impl Transport {
    pub(crate) fn new(config: Config) -> Transport {
        Transport { config, sockets: Mutex::new((None, None)), state: RwLock::new(State::default()) }
    }

    /// Sends `request`, retrying per the configuration, and returns the node's reply.
    pub(crate) async fn execute(&self, mut request: RequestV1) -> Result<Reply, Error> {
        // One id for every attempt of this write, fixed before the first one.
        match &mut request.op {
            Operation::Write { idempotency_id, .. } | Operation::Delete { idempotency_id, .. } => {
                idempotency_id.get_or_insert_with(IdempotencyId::random);
            }
            _ => {}
        }
        let frame = proto::encode_frame(&Request::V1(request));
        let body_len = frame.len() - 4;
        if body_len > self.config.max_frame_bytes {
            return Err(Error::invalid(format!(
                "the request is {body_len} bytes, over the {} byte frame limit",
                self.config.max_frame_bytes
            )));
        }
        let mut retry = 0;
        loop {
            match self.attempt(&frame).await {
                Err(e) if e.is_retryable() && retry < self.config.max_retries => {
                    let delay = backoff_delay(retry, rand::random::<f64>());
                    tracing::debug!(error = %e, retry, ?delay, "meridian request failed; retrying");
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                result => return result,
            }
        }
    }

    /// One attempt: get a connection, exchange one stream, fail over on connection-level trouble.
    async fn attempt(&self, frame: &[u8]) -> Result<Reply, Error> {
        let current = self.connection().await?;
        let exchange = exchange(&current.conn, frame, self.config.max_frame_bytes);
        let after_ms = u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX);
        let result =
            tokio::time::timeout(self.config.timeout, exchange).await.unwrap_or(Err(Error::Timeout { after_ms }));
        let fail_over = match &result {
            Err(Error::Timeout { .. }) => true,
            Err(Error::Transport(_)) => current.conn.close_reason().is_some(),
            Err(Error::Server { code: ErrorCode::ShuttingDown, .. }) => true,
            _ => false,
        };
        if fail_over {
            self.drop_connection(&current).await;
        }
        result
    }

    /// The cached connection if it is open, otherwise a new one.
    async fn connection(&self) -> Result<Current, Error> {
        if let Some(current) = open(&self.state.read().await.current) {
            return Ok(current);
        }
        let asked = Instant::now();
        let mut state = self.state.write().await;
        if let Some(current) = open(&state.current) {
            return Ok(current);
        }
        if let Some(closed) = state.current.take() {
            tracing::debug!(endpoint = %self.config.endpoints[closed.index], "meridian connection closed");
            state.next = (closed.index + 1) % self.config.endpoints.len();
        }
        if let Some((at, error)) = &state.last_failure {
            if *at >= asked {
                // Someone tried while we waited for the lock; do not repeat it at once.
                return Err(error.clone());
            }
        }
        match self.connect_any(state.next).await {
            Ok(current) => {
                state.next = current.index;
                state.current = Some(current.clone());
                state.last_failure = None;
                Ok(current)
            }
            Err(error) => {
                state.last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Forgets `failed` (if it is still the cached connection) so that the next attempt connects to
    /// the endpoint after it.
    async fn drop_connection(&self, failed: &Current) {
        let mut state = self.state.write().await;
        if state.current.as_ref().is_some_and(|c| c.conn.stable_id() == failed.conn.stable_id()) {
            tracing::debug!(endpoint = %self.config.endpoints[failed.index], "meridian failing over");
            state.current = None;
            state.next = (failed.index + 1) % self.config.endpoints.len();
        }
    }

    /// Tries every endpoint once, starting at `start`, and returns the first connection made.
    async fn connect_any(&self, start: usize) -> Result<Current, Error> {
        let n = self.config.endpoints.len();
        let mut failures = Vec::with_capacity(n);
        let mut all_tls = true;
        for i in 0..n {
            let index = (start + i) % n;
            match self.connect_one(&self.config.endpoints[index]).await {
                Ok(conn) => return Ok(Current { index, conn }),
                Err((reason, is_tls)) => {
                    all_tls &= is_tls;
                    failures.push(format!("{}: {reason}", self.config.endpoints[index]));
                }
            }
        }
        let reason = failures.join("; ");
        if all_tls {
            return Err(Error::Tls(format!("handshake refused: {reason}")));
        }
        Err(Error::Connect { endpoint: self.config.endpoints.join(", "), reason })
    }

    /// Connects to one `host:port`; the error says why and whether TLS refused the handshake.
    async fn connect_one(&self, endpoint: &str) -> Result<quinn::Connection, (String, bool)> {
        let timeout = self.config.timeout;
        let mut addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, tokio::net::lookup_host(endpoint)).await {
            Err(_) => return Err((format!("name resolution timed out after {} ms", timeout.as_millis()), false)),
            Ok(Err(e)) => return Err((format!("cannot resolve: {e}"), false)),
            Ok(Ok(addrs)) => addrs.collect(),
        };
        // Nodes usually listen on IPv4; trying `localhost`'s ::1 first would cost a whole timeout.
        addrs.sort_by_key(|a| a.is_ipv6());
        let mut last = (format!("{endpoint} resolved to no address"), false);
        for addr in addrs {
            let socket = self.socket_for(addr).map_err(|e| (format!("cannot bind a UDP socket: {e}"), false))?;
            let connecting = socket
                .connect_with(self.config.quic.clone(), addr, &self.config.server_name)
                .map_err(|e| (format!("{addr}: {e}"), false))?;
            last = match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => (format!("{addr}: {e}"), tls::is_tls_failure(&e)),
                Err(_) => (format!("{addr}: no handshake within {} ms", timeout.as_millis()), false),
            };
        }
        Err(last)
    }

    fn socket_for(&self, addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        let (slot, bind): (_, SocketAddr) = if addr.is_ipv4() {
            (&mut sockets.0, (Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&mut sockets.1, (Ipv6Addr::UNSPECIFIED, 0).into())
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let endpoint = quinn::Endpoint::client(bind)?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The endpoint of the cached connection, if one is open.
    pub(crate) async fn connected_endpoint(&self) -> Option<String> {
        open(&self.state.read().await.current).map(|c| self.config.endpoints[c.index].clone())
    }

    /// Connects now if not connected (used by `connect()` to fail fast on a bad setup).
    pub(crate) async fn ensure_connected(&self) -> Result<(), Error> {
        self.connection().await.map(|_| ())
    }

    /// Closes the connection gracefully and waits (briefly) for the close to reach the node.
    pub(crate) async fn close(&self) {
        if let Some(current) = self.state.write().await.current.take() {
            current.conn.close(0u32.into(), b"client closed");
        }
        let sockets = {
            let sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
            [sockets.0.clone(), sockets.1.clone()]
        };
        for socket in sockets.into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.wait_idle()).await;
        }
    }
}

fn open(current: &Option<Current>) -> Option<Current> {
    current.as_ref().filter(|c| c.conn.close_reason().is_none()).cloned()
}

/// One request/response exchange on a fresh bidirectional stream.
async fn exchange(conn: &quinn::Connection, frame: &[u8], max_frame_bytes: usize) -> Result<Reply, Error> {
    let (mut send, mut recv) =
        conn.open_bi().await.map_err(|e| Error::Transport(format!("cannot open a stream: {e}")))?;
    send.write_all(frame).await.map_err(|e| Error::Transport(format!("cannot send the request: {e}")))?;
    send.finish().map_err(|e| Error::Transport(format!("cannot finish the request: {e}")))?;
    let response = proto::read_frame::<Response>(&mut recv, max_frame_bytes).await.map_err(|e| match e {
        FrameError::Stream(m) => Error::Transport(format!("reading the response: {m}")),
        e @ (FrameError::TooLarge { .. } | FrameError::Malformed(_)) => Error::protocol(format!("response: {e}")),
    })?;
    match response {
        Response::V1(Ok(reply)) => Ok(reply),
        Response::V1(Err(error)) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_from_50ms_and_caps_at_2s() {
        // Without jitter: the fixed half; with full jitter: the whole exponential step.
        let expected_ceiling = [50, 100, 200, 400, 800, 1600, 2000, 2000];
        for (retry, ceiling) in expected_ceiling.into_iter().enumerate() {
            let retry = retry as u32;
            assert_eq!(backoff_delay(retry, 0.0), ceiling * MS / 2, "retry {retry}");
            assert_eq!(backoff_delay(retry, 1.0), ceiling * MS, "retry {retry}");
            let mid = backoff_delay(retry, 0.5);
            assert!(mid > ceiling * MS / 2 && mid < ceiling * MS, "retry {retry}: {mid:?}");
        }
        // Huge retry counts do not overflow, and out-of-range jitter is clamped.
        assert_eq!(backoff_delay(u32::MAX, 0.999_999), backoff_delay(40, 0.999_999));
        assert!(backoff_delay(100, 7.0) <= BACKOFF_CAP);
        assert_eq!(backoff_delay(0, -1.0), 25 * MS);
    }

    #[test]
    fn backoff_is_monotonic_for_equal_jitter() {
        let mut previous = Duration::ZERO;
        for retry in 0..40 {
            let delay = backoff_delay(retry, 0.3);
            assert!(delay >= previous);
            previous = delay;
        }
    }
}
