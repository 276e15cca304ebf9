//! A user-space UDP relay that emulates a WAN link between two regions.
//!
//! The test kernel has no `tc netem`, so multi-region tests put a [`Relay`] between a client
//! region and another region's peer endpoint: the client region dials [`RelayHandle::local_addr`]
//! instead of the real endpoint, and the relay forwards to the `upstream` address.
//!
//! `meridian demo` runs one relay per link of its [`GeoPlan`](crate::plan::GeoPlan), each on the
//! link's planned address ([`Relay::bind`]); the geo-tests re-export this module as
//! `meridian_geo_tests::relay`.
//!
//! # What it emulates
//!
//! * **Mapping.** Every client address that sends to the relay gets its own upstream socket, so
//!   the upstream sees one distinct, stable source address per client and its replies route back
//!   to the right client through the relay's listening socket. QUIC works through it: connections
//!   are identified by connection IDs, and each client's path stays the same for its lifetime.
//! * **Per-direction impairments**, set at runtime with [`Impairment`] through the relay or a
//!   cheap cloneable [`RelayHandle`]. [`Direction::Forward`] is client → upstream,
//!   [`Direction::Backward`] is upstream → client; each has its own settings, counters and
//!   seeded RNG:
//!   * one-way `delay`, plus uniform `jitter` in `[-jitter, +jitter]` (never below zero);
//!   * `loss`, the probability of dropping each datagram;
//!   * `blocked`, dropping everything (a partition; block one direction for a one-way
//!     partition). [`RelayHandle::heal`] clears blocking in both directions.
//!
//!   Impairments are decided when a datagram *enters* the relay: datagrams already queued when
//!   a direction gets blocked are still delivered, like packets already on the wire.
//! * **FIFO.** Unless [`Impairment::reorder`] is set, each datagram of a (client, direction) is
//!   scheduled at `max(now + delay ± jitter, due time of the previous one)`, so jitter never
//!   reorders. With `reorder` set, datagrams are delivered in due-time order and may overtake
//!   each other.
//! * **Bounds.** At most [`MAX_QUEUED_DATAGRAMS`] datagrams and [`MAX_QUEUED_BYTES`] bytes wait
//!   in each direction (summed over clients); a datagram over a bound is dropped and counted in
//!   [`DirectionStats::dropped_overflow`], like a full router queue.
//! * **Determinism.** Loss and jitter draw from a per-direction RNG seeded from the relay's seed
//!   ([`Relay::start_seeded`], or a random seed printed to stderr by [`Relay::start`] and
//!   available as [`RelayHandle::seed`]). Given the same arrival order, the same datagrams are
//!   dropped and delayed by the same amounts.
//!
//! # What it does not emulate
//!
//! Bandwidth limits and serialization delay (a datagram costs no time per byte), MTU (datagrams of
//! up to 64 KiB pass whole; nothing is fragmented or dropped for size), duplication, corruption,
//! ICMP errors (a dead upstream is silent to the client), NAT rebinding, and the timer
//! granularity of the host (delays are rounded up to tokio's 1 ms timer).
//!
//! [`Wan`] builds one relay per ordered pair of named regions from a one-way latency function.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// At most this many datagrams wait in one direction of a relay (summed over its clients).
pub const MAX_QUEUED_DATAGRAMS: usize = 10_000;
/// At most this many payload bytes wait in one direction of a relay (summed over its clients).
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// Largest datagram the relay reads (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// The direction of a datagram through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → upstream.
    Forward,
    /// Upstream → client.
    Backward,
}

/// How one direction of a relay impairs the datagrams entering it. The default passes everything
/// immediately.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Uniform jitter: each datagram's delay is `delay ± jitter`, clamped at zero.
    pub jitter: Duration,
    /// Probability in `0.0..=1.0` of dropping a datagram (values outside are clamped).
    pub loss: f64,
    /// Drop every datagram (a partition in this direction).
    pub blocked: bool,
    /// Let jitter reorder datagrams. When false (the default) each datagram is scheduled no
    /// earlier than the previous one of the same client and direction.
    pub reorder: bool,
}

impl Impairment {
    /// A pure one-way delay.
    pub fn delay(delay: Duration) -> Impairment {
        Impairment { delay, ..Impairment::default() }
    }

    /// Everything dropped.
    pub fn blocked() -> Impairment {
        Impairment { blocked: true, ..Impairment::default() }
    }

    /// This impairment with uniform `jitter` (`delay ± jitter`) added.
    pub fn with_jitter(self, jitter: Duration) -> Impairment {
        Impairment { jitter, ..self }
    }
}

/// Counters of one direction. All monotonic except `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// Datagrams that entered this direction.
    pub received: u64,
    /// Datagrams delivered (sent out of the relay).
    pub forwarded: u64,
    /// Datagrams dropped by [`Impairment::loss`].
    pub dropped_loss: u64,
    /// Datagrams dropped because the direction was [`Impairment::blocked`].
    pub dropped_blocked: u64,
    /// Datagrams dropped because the direction's queue was over a bound.
    pub dropped_overflow: u64,
    /// Datagrams whose final send failed (for example, the upstream port is closed).
    pub send_errors: u64,
    /// Datagrams waiting for their due time right now.
    pub queued: u64,
    /// Payload bytes of the datagrams that entered this direction.
    pub received_bytes: u64,
    /// Payload bytes of the datagrams delivered (what crossed the link; UDP payload, no IP/UDP
    /// headers).
    pub forwarded_bytes: u64,
}

impl DirectionStats {
    /// Every datagram dropped on purpose (loss, block, overflow).
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_blocked + self.dropped_overflow
    }
}

/// A snapshot of a relay's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// Client → upstream.
    pub forward: DirectionStats,
    /// Upstream → client.
    pub backward: DirectionStats,
    /// Distinct client addresses seen (each has its own upstream socket).
    pub clients: u64,
}

impl RelayStats {
    /// The counters of one direction.
    pub fn direction(&self, direction: Direction) -> DirectionStats {
        match direction {
            Direction::Forward => self.forward,
            Direction::Backward => self.backward,
        }
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_blocked: AtomicU64,
    dropped_overflow: AtomicU64,
    send_errors: AtomicU64,
    received_bytes: AtomicU64,
    forwarded_bytes: AtomicU64,
}

/// One direction's settings, RNG, counters and queue occupancy.
struct DirState {
    impairment: Mutex<Impairment>,
    rng: Mutex<StdRng>,
    counters: Counters,
    queued_datagrams: AtomicUsize,
    queued_bytes: AtomicUsize,
}

impl DirState {
    fn new(seed: u64) -> DirState {
        DirState {
            impairment: Mutex::new(Impairment::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counters: Counters::default(),
            queued_datagrams: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
        }
    }

    /// Decides the fate of a datagram of `len` bytes entering now: `Some(due)` if it is to be
    /// delivered at `due` (and it is then counted as queued), `None` if dropped (and counted).
    /// `last` is the due time of the previous datagram of the same client and direction.
    fn admit(&self, len: usize, last: &mut Instant) -> Option<Instant> {
        let c = &self.counters;
        c.received.fetch_add(1, Ordering::Relaxed);
        c.received_bytes.fetch_add(len as u64, Ordering::Relaxed);
        let imp = *lock(&self.impairment);
        if imp.blocked {
            c.dropped_blocked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let delay = {
            let mut rng = lock(&self.rng);
            if imp.loss > 0.0 && rng.random::<f64>() < imp.loss.min(1.0) {
                c.dropped_loss.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            jittered(&mut rng, imp.delay, imp.jitter)
        };
        let mut due = Instant::now() + delay;
        if !imp.reorder {
            due = due.max(*last);
            *last = due;
        }
        let datagrams = self.queued_datagrams.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len;
        if datagrams > MAX_QUEUED_DATAGRAMS || bytes > MAX_QUEUED_BYTES {
            self.unqueue(len);
            c.dropped_overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(due)
    }

    fn unqueue(&self, len: usize) {
        self.queued_datagrams.fetch_sub(1, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    fn stats(&self) -> DirectionStats {
        let c = &self.counters;
        DirectionStats {
            received: c.received.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            dropped_loss: c.dropped_loss.load(Ordering::Relaxed),
            dropped_blocked: c.dropped_blocked.load(Ordering::Relaxed),
            dropped_overflow: c.dropped_overflow.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
            queued: self.queued_datagrams.load(Ordering::Relaxed) as u64,
            received_bytes: c.received_bytes.load(Ordering::Relaxed),
            forwarded_bytes: c.forwarded_bytes.load(Ordering::Relaxed),
        }
    }
}

/// `delay` plus a uniform offset in `[-jitter, +jitter]`, clamped at zero.
fn jittered(rng: &mut StdRng, delay: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let j = jitter.as_nanos().min(u64::MAX as u128 / 2) as u64;
    let offset = rng.random_range(0..=2 * j);
    if offset >= j {
        delay + Duration::from_nanos(offset - j)
    } else {
        delay.saturating_sub(Duration::from_nanos(j - offset))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Shared {
    upstream: SocketAddr,
    local: SocketAddr,
    seed: u64,
    forward: DirState,
    backward: DirState,
    clients: AtomicU64,
    stopped: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Shared {
    fn dir(&self, direction: Direction) -> &DirState {
        match direction {
            Direction::Forward => &self.forward,
            Direction::Backward => &self.backward,
        }
    }

    /// Spawns a task owned by the relay (aborted by [`RelayHandle::stop`]).
    fn spawn<F>(&self, future: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(future).abort_handle();
        let mut tasks = lock(&self.tasks);
        if self.stopped.load(Ordering::SeqCst) {
            handle.abort();
        } else {
            tasks.retain(|t| !t.is_finished());
            tasks.push(handle);
        }
    }
}

/// A cheap, cloneable handle to a relay: change impairments, read counters, stop it.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("local", &self.shared.local)
            .field("upstream", &self.shared.upstream)
            .field("seed", &self.shared.seed)
            .finish()
    }
}

impl RelayHandle {
    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The address datagrams are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The seed of the loss and jitter RNGs.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Sets the same impairment for both directions.
    pub fn set(&self, impairment: Impairment) {
        self.set_direction(Direction::Forward, impairment);
        self.set_direction(Direction::Backward, impairment);
    }

    /// Sets the client → upstream impairment.
    pub fn set_forward(&self, impairment: Impairment) {
        self.set_direction(Direction::Forward, impairment);
    }

    /// Sets the upstream → client impairment.
    pub fn set_backward(&self, impairment: Impairment) {
        self.set_direction(Direction::Backward, impairment);
    }

    /// Sets one direction's impairment. It applies to datagrams entering from now on.
    pub fn set_direction(&self, direction: Direction, impairment: Impairment) {
        *lock(&self.shared.dir(direction).impairment) = impairment;
    }

    /// One direction's current impairment.
    pub fn impairment(&self, direction: Direction) -> Impairment {
        *lock(&self.shared.dir(direction).impairment)
    }

    /// Changes one direction's impairment in place.
    pub fn update(&self, direction: Direction, change: impl FnOnce(&mut Impairment)) {
        change(&mut lock(&self.shared.dir(direction).impairment));
    }

    /// Blocks both directions (a full partition), keeping the other settings.
    pub fn block(&self) {
        self.block_direction(Direction::Forward);
        self.block_direction(Direction::Backward);
    }

    /// Blocks one direction only (a one-way partition), keeping the other settings.
    pub fn block_direction(&self, direction: Direction) {
        self.update(direction, |i| i.blocked = true);
    }

    /// Clears blocking in both directions, keeping delay, jitter and loss.
    pub fn heal(&self) {
        self.update(Direction::Forward, |i| i.blocked = false);
        self.update(Direction::Backward, |i| i.blocked = false);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            forward: self.shared.forward.stats(),
            backward: self.shared.backward.stats(),
            clients: self.shared.clients.load(Ordering::Relaxed),
        }
    }

    /// Stops the relay's tasks (idempotent). Queued datagrams are discarded and the sockets
    /// close once the runtime drops the aborted tasks.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        for task in lock(&self.shared.tasks).drain(..) {
            task.abort();
        }
    }
}

/// A UDP relay between clients and one upstream address; see the [module docs](self).
///
/// Dereferences to its [`RelayHandle`]; dropping the relay stops it (clones of the handle stay
/// usable for reading counters).
#[derive(Debug)]
pub struct Relay {
    handle: RelayHandle,
}

impl std::ops::Deref for Relay {
    type Target = RelayHandle;

    fn deref(&self) -> &RelayHandle {
        &self.handle
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.handle.stop();
    }
}

impl Relay {
    /// Starts a relay to `upstream` on `127.0.0.1:0` with a random seed, printed to stderr.
    /// Must be called within a tokio runtime.
    pub fn start(upstream: SocketAddr) -> io::Result<Relay> {
        let seed = rand::random::<u64>();
        let relay = Relay::start_seeded(upstream, seed)?;
        eprintln!("relay {} -> {upstream}: seed {seed}", relay.local_addr());
        Ok(relay)
    }

    /// Starts a relay to `upstream` on `127.0.0.1:0` whose loss and jitter draw from `seed`.
    /// Must be called within a tokio runtime.
    pub fn start_seeded(upstream: SocketAddr, seed: u64) -> io::Result<Relay> {
        Relay::bind((Ipv4Addr::LOCALHOST, 0).into(), upstream, seed)
    }

    /// Starts a relay to `upstream` listening on `listen` (a given address, e.g. a planned link
    /// port; port 0 picks a free one) whose loss and jitter draw from `seed`. It passes everything
    /// until an impairment is set: set one right away (`relay.set(Impairment::delay(d))`) to delay
    /// the very first datagram. Must be called within a tokio runtime.
    pub fn bind(listen_on: SocketAddr, upstream: SocketAddr, seed: u64) -> io::Result<Relay> {
        let std_socket = std::net::UdpSocket::bind(listen_on)?;
        std_socket.set_nonblocking(true)?;
        let listener = Arc::new(UdpSocket::from_std(std_socket)?);
        let shared = Arc::new(Shared {
            upstream,
            local: listener.local_addr()?,
            seed,
            forward: DirState::new(seed),
            backward: DirState::new(seed ^ 0x9E37_79B9_7F4A_7C15),
            clients: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        shared.spawn(listen(listener, shared.clone()));
        Ok(Relay { handle: RelayHandle { shared } })
    }

    /// A cloneable handle to this relay.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }
}

/// A datagram waiting for its due time.
struct Queued {
    due: Instant,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The sending end of one (client, direction) queue.
struct Lane {
    tx: mpsc::UnboundedSender<Queued>,
    seq: u64,
    last_due: Instant,
}

impl Lane {
    fn new(tx: mpsc::UnboundedSender<Queued>) -> Lane {
        Lane { tx, seq: 0, last_due: Instant::now() }
    }

    /// Impairs and enqueues one datagram entering `dir`.
    fn push(&mut self, dir: &DirState, data: &[u8]) {
        if let Some(due) = dir.admit(data.len(), &mut self.last_due) {
            self.seq += 1;
            if self.tx.send(Queued { due, seq: self.seq, data: data.to_vec() }).is_err() {
                dir.unqueue(data.len());
            }
        }
    }
}

/// Where a lane delivers: the upstream through a connected socket, or a client through the
/// listening socket.
struct Sink {
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
}

/// Delivers one lane's datagrams at their due times, earliest first (ties in arrival order).
async fn deliver(mut rx: mpsc::UnboundedReceiver<Queued>, sink: Sink, shared: Arc<Shared>, direction: Direction) {
    let dir = shared.dir(direction);
    let mut heap: BinaryHeap<Reverse<Queued>> = BinaryHeap::new();
    let mut open = true;
    while open || !heap.is_empty() {
        let next_due = heap.peek().map(|q| q.0.due);
        tokio::select! {
            biased;
            message = rx.recv(), if open => match message {
                Some(queued) => heap.push(Reverse(queued)),
                None => open = false,
            },
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                while heap.peek().is_some_and(|q| q.0.due <= now) {
                    let Some(Reverse(queued)) = heap.pop() else { break };
                    let sent = match sink.to {
                        Some(to) => sink.socket.send_to(&queued.data, to).await,
                        None => sink.socket.send(&queued.data).await,
                    };
                    dir.unqueue(queued.data.len());
                    let counter = if sent.is_ok() { &dir.counters.forwarded } else { &dir.counters.send_errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if sent.is_ok() {
                        dir.counters.forwarded_bytes.fetch_add(queued.data.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Receives from clients on the listening socket; creates each new client's upstream socket
/// and lanes.
async fn listen(listener: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut clients: HashMap<SocketAddr, Lane> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, client) = match listener.recv_from(&mut buf).await {
            Ok(received) => received,
            // Transient errors (e.g. a reported ICMP error) must not stop the relay.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let lane = match clients.entry(client) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => match new_client(&listener, &shared, client) {
                Ok(lane) => {
                    shared.clients.fetch_add(1, Ordering::Relaxed);
                    entry.insert(lane)
                }
                Err(e) => {
                    eprintln!("relay {}: no upstream socket for {client}: {e}", shared.local);
                    continue;
                }
            },
        };
        lane.push(&shared.forward, &buf[..len]);
    }
}

/// Binds and connects `client`'s upstream socket and spawns its forward delivery, backward
/// receive and backward delivery tasks. Returns the forward lane.
fn new_client(listener: &Arc<UdpSocket>, shared: &Arc<Shared>, client: SocketAddr) -> io::Result<Lane> {
    let upstream = shared.upstream;
    let bind: SocketAddr = match upstream {
        SocketAddr::V4(a) if a.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(a) if a.ip().is_loopback() => (Ipv6Addr::LOCALHOST, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let std_socket = std::net::UdpSocket::bind(bind)?;
    std_socket.connect(upstream)?;
    std_socket.set_nonblocking(true)?;
    let socket = Arc::new(UdpSocket::from_std(std_socket)?);

    let (forward_tx, forward_rx) = mpsc::unbounded_channel();
    let sink = Sink { socket: socket.clone(), to: None };
    shared.spawn(deliver(forward_rx, sink, shared.clone(), Direction::Forward));

    let (backward_tx, backward_rx) = mpsc::unbounded_channel();
    let sink = Sink { socket: listener.clone(), to: Some(client) };
    shared.spawn(deliver(backward_rx, sink, shared.clone(), Direction::Backward));

    let receiver_shared = shared.clone();
    shared.spawn(async move {
        let mut lane = Lane::new(backward_tx);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match socket.recv(&mut buf).await {
                Ok(len) => lane.push(&receiver_shared.backward, &buf[..len]),
                // ECONNREFUSED after the upstream's port closed, etc.: keep going.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });
    Ok(Lane::new(forward_tx))
}

/// One relay per ordered pair of named regions: traffic from region `a` to region `b`'s
/// endpoint goes through [`Wan::addr`]`(a, b)`.
///
/// The relay for `(a, b)` forwards to `b`'s endpoint with forward delay `one_way(a, b)` and
/// backward delay `one_way(b, a)`.
#[derive(Debug)]
pub struct Wan {
    relays: HashMap<(String, String), Relay>,
}

impl Wan {
    /// Starts a relay for every ordered pair of distinct `regions` (name, endpoint), with the
    /// one-way latency from the first region to the second given by `one_way`, and RNG seeds
    /// derived from `seed`. Must be called within a tokio runtime.
    pub fn start(
        regions: &[(&str, SocketAddr)],
        one_way: impl Fn(&str, &str) -> Duration,
        seed: u64,
    ) -> io::Result<Wan> {
        let mut relays = HashMap::new();
        let mut n = 0u64;
        for &(from, _) in regions {
            for &(to, endpoint) in regions {
                if from == to {
                    continue;
                }
                n += 1;
                let relay = Relay::start_seeded(endpoint, seed.wrapping_add(n.wrapping_mul(0x9E37_79B9)))?;
                relay.set_forward(Impairment::delay(one_way(from, to)));
                relay.set_backward(Impairment::delay(one_way(to, from)));
                relays.insert((from.to_string(), to.to_string()), relay);
            }
        }
        Ok(Wan { relays })
    }

    /// The relay carrying traffic from `from` to `to`'s endpoint.
    pub fn relay(&self, from: &str, to: &str) -> Option<&Relay> {
        self.relays.get(&(from.to_string(), to.to_string()))
    }

    /// The address `from` dials to reach `to`'s endpoint.
    pub fn addr(&self, from: &str, to: &str) -> Option<SocketAddr> {
        self.relay(from, to).map(|r| r.local_addr())
    }

    /// Blocks all traffic between `a` and `b`, both relays and both directions.
    pub fn partition(&self, a: &str, b: &str) {
        for relay in [self.relay(a, b), self.relay(b, a)].into_iter().flatten() {
            relay.block();
        }
    }

    /// Clears every block.
    pub fn heal(&self) {
        for relay in self.relays.values() {
            relay.heal();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_payload_bytes_per_direction() {
        let upstream = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let relay = Relay::start_seeded(upstream.local_addr().unwrap(), 1).unwrap();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            client.send_to(&[7u8; 10], relay.local_addr()).await.unwrap();
            let (len, from) = upstream.recv_from(&mut buf).await.unwrap();
            assert_eq!(len, 10);
            upstream.send_to(&[9u8; 4], from).await.unwrap();
            assert_eq!(client.recv(&mut buf).await.unwrap(), 4);
        }
        relay.block_direction(Direction::Forward);
        client.send_to(&[7u8; 10], relay.local_addr()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.stats().forward.dropped_blocked == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stats = relay.stats();
        assert_eq!((stats.forward.received_bytes, stats.forward.forwarded_bytes), (40, 30), "{stats:?}");
        assert_eq!((stats.backward.received_bytes, stats.backward.forwarded_bytes), (12, 12), "{stats:?}");
    }
}
