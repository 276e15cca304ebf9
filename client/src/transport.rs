//! Connections, regions, failover and retries: everything between a [`RequestV1`] and its [`Reply`].
//!
//! * **Regions.** Endpoints are grouped in regions (plain endpoints form one region,
//!   [`DEFAULT_REGION`](crate::DEFAULT_REGION)). The regions are ranked once, when the client
//!   connects: the preferred region first if one was pinned (the others in declaration order, nothing
//!   measured), otherwise — with more than one region — by the QUIC handshake time to each region's
//!   fastest node, measured in parallel within one timeout (regions that did not answer last). The
//!   *current* region is where requests go; it starts as the first reachable one in that order.
//! * **One connection at a time.** The client keeps one cached QUIC connection (to a node of the
//!   current region) and multiplexes every request over it, one bidirectional stream per request. It
//!   reconnects lazily: a request that finds no open connection establishes one.
//! * **Failover within a region.** When a request fails at the connection level (the connection
//!   closed, no answer within the timeout, the node is shutting down), the cached connection is
//!   dropped and the next connection attempt starts at the *following* endpoint of the region,
//!   wrapping around.
//! * **Failover across regions.** A connection attempt tries every node of the current region, then
//!   every node of the following regions in preference order (wrapping around), and stays in the
//!   first region where a node answers. A region also counts as failed — the next attempt starts at
//!   the next region — when as many node-level failures (above) as it has nodes happened in a row
//!   without a reply, and when a node answers `quorum_unavailable` to a `local_quorum` request
//!   (another region can form its own local majority). `causal_timeout` never moves the client: the
//!   session's writes have not reached that region yet, and another region is no more likely to have
//!   them than the one that is up; it is retried in place like any retryable error and then
//!   returned. Each region move happens inside an attempt, so it is bounded by `max_retries`, the
//!   per-attempt timeout applies to every exchange, and a write keeps its idempotency id everywhere.
//! * **Failback.** While the current region is not the first in preference order, a request made at
//!   least `failback_interval` after the move (or after the last such probe) starts one background
//!   probe of the better regions, in order; the first node that completes a handshake becomes the
//!   cached connection, so traffic returns to a healed region. Requests in flight finish on the old
//!   connection, which closes when they are done.
//! * **Retries.** Retryable failures ([`Error::is_retryable`]) are retried up to `max_retries` times
//!   with capped exponential backoff and jitter ([`backoff_delay`]). The request frame is encoded
//!   once, so a write's idempotency id — assigned before the first attempt — and a session's causal
//!   token are identical on every attempt, in every region, and the node applies the write once.
//! * **No stampede.** Connection attempts are serialised; requests that queued behind a failed
//!   attempt get its error instead of each repeating it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use crate::proto::{
    self, Consistency, ErrorCode, FrameError, IdempotencyId, Operation, Reply, Request, RequestV1, Response,
};
use crate::region::{self, Ranked, RegionConfig};
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
    /// Every region's `host:port` strings, in declaration order (what `Client::endpoints` shows).
    pub(crate) endpoints: Vec<String>,
    /// The regions in declaration order; never empty, no region without endpoints.
    pub(crate) regions: Vec<RegionConfig>,
    /// The pinned home region (an index into `regions`).
    pub(crate) preferred_region: Option<usize>,
    pub(crate) failback_interval: Duration,
    pub(crate) quic: quinn::ClientConfig,
    pub(crate) server_name: String,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) default_consistency: Option<Consistency>,
    pub(crate) max_frame_bytes: usize,
    /// The bearer token each new connection logs in with, if any.
    pub(crate) token: Option<String>,
}

impl Config {
    pub(crate) fn timeout_ms(&self) -> u32 {
        u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX)
    }
}

/// Why one connection attempt failed.
struct Failed {
    reason: String,
    /// TLS refused the handshake (a certificate problem).
    tls: bool,
    /// The node refused the credentials (a non-retryable server error, returned as is).
    refused: Option<Error>,
}

impl Failed {
    fn network(reason: String) -> Failed {
        Failed { reason, tls: false, refused: None }
    }
}

/// The cached connection and which endpoint it goes to.
#[derive(Clone)]
struct Current {
    /// The region's position in the preference order.
    pos: usize,
    /// The endpoint's index within the region.
    index: usize,
    conn: quinn::Connection,
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    /// Where the next connection attempt starts: (region position, endpoint index).
    next: (usize, usize),
    /// When the last connection attempt failed, and how.
    last_failure: Option<(Instant, Error)>,
    /// The region position of the last connection made.
    connected_pos: Option<usize>,
}

/// The failback timer: when the client last moved away from a better region or probed it.
struct Failback {
    since: Instant,
    probing: bool,
}

/// What a failed exchange means for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    /// Drop the connection; the next attempt starts at the region's next node.
    Node,
    /// Drop the connection; the next attempt starts at the next region.
    Region,
}

/// The client's shared core.
pub(crate) struct Transport {
    pub(crate) config: Config,
    /// One UDP endpoint per address family, bound on first use.
    sockets: Mutex<(Option<quinn::Endpoint>, Option<quinn::Endpoint>)>,
    state: RwLock<State>,
    /// The regions in preference order, fixed by the first connection (see [`Transport::connect`]).
    order: OnceLock<Vec<Ranked>>,
    /// The position (in `order`) of the region requests go to now.
    routing: AtomicUsize,
    /// Node-level failures in the current region since its last reply.
    strikes: AtomicUsize,
    failback: Mutex<Failback>,
}

impl Transport {
    pub(crate) fn new(config: Config) -> Transport {
        Transport {
            config,
            sockets: Mutex::new((None, None)),
            state: RwLock::new(State::default()),
            order: OnceLock::new(),
            routing: AtomicUsize::new(0),
            strikes: AtomicUsize::new(0),
            failback: Mutex::new(Failback { since: Instant::now(), probing: false }),
        }
    }

    /// The regions in preference order (declaration order with the preferred one first until
    /// [`Transport::connect`] has measured them).
    pub(crate) fn order(&self) -> &[Ranked] {
        self.order.get_or_init(|| region::rank(self.config.regions.len(), self.config.preferred_region, &[]))
    }

    fn region_at(&self, pos: usize) -> &RegionConfig {
        &self.config.regions[self.order()[pos].region]
    }

    fn endpoint_at(&self, pos: usize, index: usize) -> &str {
        &self.region_at(pos).endpoints[index]
    }

    /// The name of the region requests go to now.
    pub(crate) fn current_region(&self) -> &str {
        &self.region_at(self.routing.load(Ordering::SeqCst)).name
    }

    /// Ranks the regions and connects to the first reachable one; with several regions and no
    /// preferred one, measures the handshake time to every region first.
    pub(crate) async fn connect(self: &Arc<Self>) -> Result<(), Error> {
        if self.config.regions.len() == 1 || self.config.preferred_region.is_some() || self.order.get().is_some() {
            return self.ensure_connected().await;
        }
        let mut state = self.state.write().await;
        let (rtts, mut best, failure) = self.probe_regions().await;
        let order = region::rank(self.config.regions.len(), None, &rtts);
        let first = order[0].region;
        // Only this call sets the order; a racing `order()` reader would have seen the same regions.
        let _ = self.order.set(order);
        for (region, found) in best.iter_mut().enumerate() {
            if region != first {
                if let Some((_, conn)) = found.take() {
                    conn.close(0u32.into(), b"region probe");
                }
            }
        }
        match best[first].take() {
            Some((index, conn)) => {
                self.install(&mut state, Current { pos: 0, index, conn });
                Ok(())
            }
            None => Err(failure),
        }
    }

    /// Handshakes with every endpoint of every region at once, within one timeout, keeping the first
    /// connection per region. Returns each region's handshake time, its first connection, and the
    /// error to report if no region answered.
    #[allow(clippy::type_complexity)]
    async fn probe_regions(
        self: &Arc<Self>,
    ) -> (Vec<Option<Duration>>, Vec<Option<(usize, quinn::Connection)>>, Error) {
        let regions = &self.config.regions;
        let mut rtts = vec![None; regions.len()];
        let mut best: Vec<Option<(usize, quinn::Connection)>> = vec![None; regions.len()];
        let mut failures = Vec::new();
        let mut all_tls = true;
        let mut refused = None;
        let mut tasks = tokio::task::JoinSet::new();
        for (region, config) in regions.iter().enumerate() {
            for index in 0..config.endpoints.len() {
                let this = self.clone();
                tasks.spawn(async move {
                    let result = this.connect_one(&this.config.regions[region].endpoints[index]).await;
                    (region, index, result)
                });
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let mut answered = 0;
        while answered < regions.len() {
            let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await else { break };
            let Ok((region, index, result)) = joined else { continue };
            match result {
                Ok((conn, handshake)) if best[region].is_none() => {
                    rtts[region] = Some(handshake);
                    best[region] = Some((index, conn));
                    answered += 1;
                }
                Ok((conn, _)) => conn.close(0u32.into(), b"region probe"),
                Err(failed) => {
                    all_tls &= failed.tls;
                    refused = refused.or(failed.refused);
                    failures.push(format!("{}: {}", regions[region].endpoints[index], failed.reason));
                }
            }
        }
        // Dropping the set aborts the handshakes still running (their regions stay unmeasured).
        drop(tasks);
        if answered < regions.len() && failures.len() < self.config.endpoints.len() {
            all_tls = false;
            failures.push(format!("no handshake within {} ms", self.config.timeout.as_millis()));
        }
        let reason = failures.join("; ");
        let failure = if let Some(refused) = refused {
            refused
        } else if all_tls {
            Error::Tls(format!("handshake refused: {reason}"))
        } else {
            Error::Connect { endpoint: self.config.endpoints.join(", "), reason }
        };
        (rtts, best, failure)
    }

    /// Sends `request`, retrying per the configuration, and returns the node's reply.
    pub(crate) async fn execute(
        self: &Arc<Self>,
        mut request: RequestV1,
        trace: Option<proto::TraceContext>,
    ) -> Result<Reply, Error> {
        // One id for every attempt of this write (or of each write of a pipeline), fixed before
        // the first one.
        match &mut request.op {
            Operation::Pipeline(ops) => ops.iter_mut().for_each(give_idempotency_id),
            op => give_idempotency_id(op),
        }
        let consistency = request.consistency;
        let frame = proto::encode_frame(&Request::new(request, trace));
        let body_len = frame.len() - 4;
        if body_len > self.config.max_frame_bytes {
            return Err(Error::invalid(format!(
                "the request is {body_len} bytes, over the {} byte frame limit",
                self.config.max_frame_bytes
            )));
        }
        self.maybe_fail_back();
        let mut retry = 0;
        loop {
            match self.attempt(&frame, consistency).await {
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
    async fn attempt(&self, frame: &[u8], consistency: Option<Consistency>) -> Result<Reply, Error> {
        let current = self.connection().await?;
        let exchange = exchange(&current.conn, frame, self.config.max_frame_bytes);
        let after_ms = u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX);
        let result =
            tokio::time::timeout(self.config.timeout, exchange).await.unwrap_or(Err(Error::Timeout { after_ms }));
        let several_regions = self.config.regions.len() > 1;
        let fail_over = match &result {
            Err(Error::Timeout { .. }) => Some(Move::Node),
            Err(Error::Transport(_)) if current.conn.close_reason().is_some() => Some(Move::Node),
            Err(Error::Server { code: ErrorCode::ShuttingDown, .. }) => Some(Move::Node),
            Err(Error::Server { code: ErrorCode::QuorumUnavailable, .. })
                if several_regions && consistency == Some(Consistency::LocalQuorum) =>
            {
                Some(Move::Region)
            }
            _ => None,
        };
        match fail_over {
            Some(how) => self.drop_connection(&current, how).await,
            None if current.pos == self.routing.load(Ordering::SeqCst) => self.strikes.store(0, Ordering::SeqCst),
            None => {}
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
            tracing::debug!(endpoint = %self.endpoint_at(closed.pos, closed.index), "meridian connection closed");
            state.next = (closed.pos, (closed.index + 1) % self.region_at(closed.pos).endpoints.len());
        }
        if let Some((at, error)) = &state.last_failure {
            if *at >= asked {
                // Someone tried while we waited for the lock; do not repeat it at once.
                return Err(error.clone());
            }
        }
        match self.connect_from(state.next).await {
            Ok(current) => {
                self.install(&mut state, current.clone());
                state.last_failure = None;
                Ok(current)
            }
            Err(error) => {
                state.last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Makes `current` the cached connection; notes a change of region.
    fn install(&self, state: &mut State, current: Current) {
        if state.connected_pos != Some(current.pos) {
            if let Some(previous) = state.connected_pos {
                tracing::info!(
                    from = %self.region_at(previous).name,
                    to = %self.region_at(current.pos).name,
                    "meridian moved to another region"
                );
            }
            self.strikes.store(0, Ordering::SeqCst);
            self.failback.lock().unwrap_or_else(PoisonError::into_inner).since = Instant::now();
        }
        self.routing.store(current.pos, Ordering::SeqCst);
        state.connected_pos = Some(current.pos);
        state.next = (current.pos, current.index);
        state.current = Some(current);
    }

    /// Forgets `failed` (if it is still the cached connection) so that the next attempt connects to
    /// the endpoint after it, or to the next region if `how` says so or every node of this region
    /// has failed in a row.
    async fn drop_connection(&self, failed: &Current, how: Move) {
        let mut state = self.state.write().await;
        if state.current.as_ref().is_some_and(|c| c.conn.stable_id() == failed.conn.stable_id()) {
            let nodes = self.region_at(failed.pos).endpoints.len();
            let strikes = self.strikes.fetch_add(1, Ordering::SeqCst) + 1;
            let regions = self.config.regions.len();
            let next_region = regions > 1 && (how == Move::Region || strikes >= nodes);
            state.current = None;
            state.next = if next_region {
                tracing::debug!(region = %self.region_at(failed.pos).name, ?how, strikes, "meridian leaving the region");
                self.strikes.store(0, Ordering::SeqCst);
                ((failed.pos + 1) % regions, 0)
            } else {
                tracing::debug!(endpoint = %self.endpoint_at(failed.pos, failed.index), "meridian failing over");
                (failed.pos, (failed.index + 1) % nodes)
            };
            self.routing.store(state.next.0, Ordering::SeqCst);
        }
    }

    /// Tries every endpoint of the region at `start.0` from `start.1` on (wrapping around), then every
    /// endpoint of the following regions in preference order (wrapping around), and returns the first
    /// connection made.
    async fn connect_from(&self, start: (usize, usize)) -> Result<Current, Error> {
        let regions = self.config.regions.len();
        let mut failures = Vec::new();
        let mut all_tls = true;
        for k in 0..regions {
            let pos = (start.0 + k) % regions;
            let n = self.region_at(pos).endpoints.len();
            let first = if k == 0 { start.1 % n } else { 0 };
            for i in 0..n {
                let index = (first + i) % n;
                let endpoint = self.endpoint_at(pos, index);
                match self.connect_one(endpoint).await {
                    Ok((conn, _)) => return Ok(Current { pos, index, conn }),
                    // Credentials refused: another node would refuse them too.
                    Err(Failed { refused: Some(error), .. }) => return Err(error),
                    Err(failed) => {
                        all_tls &= failed.tls;
                        failures.push(format!("{endpoint}: {}", failed.reason));
                    }
                }
            }
        }
        let reason = failures.join("; ");
        if all_tls {
            return Err(Error::Tls(format!("handshake refused: {reason}")));
        }
        Err(Error::Connect { endpoint: self.config.endpoints.join(", "), reason })
    }

    /// Starts a background probe of the regions preferred to the current one, if the client is away
    /// from its first region and the failback interval has passed.
    fn maybe_fail_back(self: &Arc<Self>) {
        let away = self.routing.load(Ordering::SeqCst);
        if away == 0 {
            return;
        }
        {
            let mut failback = self.failback.lock().unwrap_or_else(PoisonError::into_inner);
            if failback.probing || failback.since.elapsed() < self.config.failback_interval {
                return;
            }
            failback.probing = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.fail_back(away).await;
            let mut failback = this.failback.lock().unwrap_or_else(PoisonError::into_inner);
            failback.probing = false;
            failback.since = Instant::now();
        });
    }

    /// Tries the regions before position `away`, best first, node by node; the first handshake that
    /// completes becomes the cached connection (if the client is still further down the order).
    async fn fail_back(&self, away: usize) {
        for pos in 0..away {
            for index in 0..self.region_at(pos).endpoints.len() {
                let Ok((conn, _)) = self.connect_one(self.endpoint_at(pos, index)).await else { continue };
                let mut state = self.state.write().await;
                if self.routing.load(Ordering::SeqCst) > pos {
                    // The old connection closes once the requests still using it drop their handles.
                    state.current = None;
                    self.install(&mut state, Current { pos, index, conn });
                    state.last_failure = None;
                } else {
                    conn.close(0u32.into(), b"not needed");
                }
                return;
            }
        }
    }

    /// Connects to one `host:port`; returns the connection and how long the QUIC handshake took, or
    /// why it failed and whether TLS refused the handshake.
    /// Connects to one endpoint (its addresses in turn) and, with a token configured, logs in; the
    /// duration is the handshake's.
    async fn connect_one(&self, endpoint: &str) -> Result<(quinn::Connection, Duration), Failed> {
        let timeout = self.config.timeout;
        let mut addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, tokio::net::lookup_host(endpoint)).await {
            Err(_) => {
                return Err(Failed::network(format!("name resolution timed out after {} ms", timeout.as_millis())))
            }
            Ok(Err(e)) => return Err(Failed::network(format!("cannot resolve: {e}"))),
            Ok(Ok(addrs)) => addrs.collect(),
        };
        // Nodes usually listen on IPv4; trying `localhost`'s ::1 first would cost a whole timeout.
        addrs.sort_by_key(|a| a.is_ipv6());
        let mut last = Failed::network(format!("{endpoint} resolved to no address"));
        for addr in addrs {
            let socket =
                self.socket_for(addr).map_err(|e| Failed::network(format!("cannot bind a UDP socket: {e}")))?;
            let started = Instant::now();
            // quinn runs a connection's driver task inside the span current when it is dialled:
            // dial outside the application's span, which would otherwise stay open (and its trace
            // unexported) for as long as the connection lives.
            let dial = || socket.connect_with(self.config.quic.clone(), addr, &self.config.server_name);
            let connecting = tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), dial)
                .map_err(|e| Failed::network(format!("{addr}: {e}")))?;
            last = match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(conn)) => {
                    let handshake = started.elapsed();
                    self.login(&conn).await?;
                    return Ok((conn, handshake));
                }
                Ok(Err(e)) => Failed { reason: format!("{addr}: {e}"), tls: tls::is_tls_failure(&e), refused: None },
                Err(_) => Failed::network(format!("{addr}: no handshake within {} ms", timeout.as_millis())),
            };
        }
        Err(last)
    }

    /// Authenticates a new connection with the configured bearer token (nothing to do without one:
    /// a client certificate was checked in the handshake).
    async fn login(&self, conn: &quinn::Connection) -> Result<(), Failed> {
        let Some(token) = &self.config.token else { return Ok(()) };
        let request = RequestV1 {
            consistency: None,
            causal_token: None,
            timeout_ms: self.config.timeout_ms(),
            op: proto::Operation::Auth(proto::AuthOp::Login { token: token.clone() }),
        };
        let frame = proto::encode_frame(&proto::Request::V1(request));
        match tokio::time::timeout(self.config.timeout, exchange(conn, &frame, self.config.max_frame_bytes)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error @ Error::Server { .. })) if !error.is_retryable() => {
                conn.close(0u32.into(), b"login refused");
                Err(Failed { reason: error.to_string(), tls: false, refused: Some(error) })
            }
            Ok(Err(e)) => Err(Failed::network(format!("logging in: {e}"))),
            Err(_) => Err(Failed::network(format!("no login answer within {} ms", self.config.timeout.as_millis()))),
        }
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
        // Outside the caller's span, as for connections (see `dial`): the endpoint's driver lives on.
        let endpoint = tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            quinn::Endpoint::client(bind)
        })?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The endpoint of the cached connection, if one is open.
    pub(crate) async fn connected_endpoint(&self) -> Option<String> {
        open(&self.state.read().await.current).map(|c| self.endpoint_at(c.pos, c.index).to_string())
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

/// Gives a write or delete without an idempotency id a fresh one.
fn give_idempotency_id(op: &mut Operation) {
    if let Operation::Write { idempotency_id, .. } | Operation::Delete { idempotency_id, .. } = op {
        idempotency_id.get_or_insert_with(IdempotencyId::random);
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
