//! The node core: executes client requests against local storage, whatever surface (QUIC, HTTP) they
//! came in by.
//!
//! # The write path
//!
//! A write runs in its own task, under the key's lock stripe:
//!
//! 1. if it carries an idempotency id already recorded, return the recorded reply (applied once);
//! 2. read the key's state, take an HLC timestamp, compute the mutation's *delta* against the state
//!    (`meridian-crdt`) and join it;
//! 3. hand the new state, the idempotency record and the delta-log record to the group committer
//!    ([`crate::commit`]), which gives the record its log position `(partition, origin, seq)` and
//!    commits everything with the partition's version-vector entry in **one atomic batch**, fsynced
//!    (one fsync per group of concurrent writes) unless durability is relaxed;
//! 4. acknowledge per the consistency level (one replica here: every level is met once step 3 is
//!    durable — the rule itself lives in `meridian-replication` and is the same one a region uses).
//!
//! # Causal tokens
//!
//! A token maps origin nodes to HLC timestamps (packed, see `docs/design/replication.md`). A write's
//! reply adds the write's own timestamp; a read's reply adds the key's *dependency vector* (the join
//! of the tokens of the writes in it), so a session that saw an effect carries its causes. The node's
//! *frontier* holds, for itself, the HLC below which every write it has timestamped is durable (the
//! newest timestamp issued when no write is in flight, else just below the oldest one in flight);
//! for other origins it knows, per partition, up to which HLC it holds their writes (safe-time
//! reports, `meridian_replication::safe_time`). A `causal` read of a key waits until the node holds
//! everything the session's token names *and* everything the key's state depends on, in the key's
//! partition, bounded by `limits.causal_wait_ms`, and then fails with `causal_timeout` instead of
//! showing the session an older state or an effect without its cause.

use meridian_client::proto::{
    CausalToken, Consistency, ErrorCode, ErrorReply, IdempotencyId, Key, KeyInfo, NodeStatus, Operation, Reply,
    ReplyBody, Request, RequestV1, Response,
};
use meridian_crdt::{CrdtError, CrdtType, Entry, Hlc, HlcClock, Mutation, NodeId, Value, VersionVector, WriteContext};
use meridian_replication::antientropy::LogRecord as SyncRecord;
use meridian_replication::{Outcome, QuorumTracker, ReplicaCounts, SafeReport, SafeTimes};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::commit::{GroupCommitter, LogAppend};
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::keyspace::{self, IdempotencyRecord, LogRecord, Stored};
use crate::residency::{Decision, Residency};
use crate::storage::{Batch, Durability, Engine, Space, StorageError};

/// Number of key lock stripes; writes to keys in different stripes never wait for each other.
const LOCK_STRIPES: usize = 1024;

/// Writes waiting for the committer before writers wait in line (backpressure).
const COMMIT_QUEUE_DEPTH: usize = 4096;
/// Most writes joined into one durable batch.
const COMMIT_MAX_GROUP: usize = 256;

/// How soon a causal read waiting on other origins first looks again (then twice as late each time,
/// up to [`CAUSAL_POLL_MAX`]).
const CAUSAL_POLL: Duration = Duration::from_millis(2);
/// The longest a waiting causal read goes without looking again.
const CAUSAL_POLL_MAX: Duration = Duration::from_millis(32);

/// Raw entries a key listing may skip (deleted keys) before returning a short page with a cursor.
const LIST_SCAN_FACTOR: usize = 8;

/// The node's HLC and the timestamps of writes not yet durable, which bound its causal frontier.
#[derive(Debug)]
struct ClockState {
    clock: HlcClock,
    in_flight: BTreeMap<u64, usize>,
}

impl ClockState {
    /// Every write this node timestamped at or below this packed HLC is durable (or failed).
    fn frontier(&self) -> u64 {
        match self.in_flight.keys().next() {
            Some(oldest) => oldest - 1,
            None => self.clock.last().pack(),
        }
    }
}

/// A write's timestamp, registered as in flight until dropped (after the write is durable or failed).
struct InFlightTs {
    node: Arc<Node>,
    ts: Hlc,
}

impl Drop for InFlightTs {
    fn drop(&mut self) {
        self.node.release_ts(self.ts);
    }
}

/// A write ready to commit, or already answered (an idempotent replay, a delete of nothing).
enum Prepared {
    Done(Reply),
    Commit { batch: Batch, log: LogAppend, push: Push, reply: Reply, ts: InFlightTs },
}

/// What a write's fan-out ships to the other replicas (its log record minus the position, which the
/// committer assigns).
struct Push {
    data_key: Vec<u8>,
    delta: Vec<u8>,
    hlc: u64,
}

/// A write's target change.
enum Change {
    Mutate(Mutation),
    Delete,
}

impl Change {
    /// Whether the change removes what the coordinator has observed (so a quorum-level one must
    /// first observe what a quorum holds).
    fn removes_observed(&self) -> bool {
        matches!(self, Change::Delete | Change::Mutate(Mutation::SetRemove { .. } | Mutation::MapRemove { .. }))
    }

    /// A fingerprint (the stable hash of the codec encoding) so a reused idempotency id naming a different
    /// operation is refused instead of replaying the other operation's reply.
    fn digest(&self) -> u64 {
        let bytes = match self {
            Change::Mutate(mutation) => meridian_crdt::codec::encode(mutation),
            Change::Delete => Vec::new(),
        };
        keyspace::stable_hash(&bytes)
    }
}

/// One Meridian node.
pub struct Node {
    config: Config,
    engine: Arc<dyn Engine>,
    id: NodeId,
    clock: Mutex<ClockState>,
    /// This node's causal frontier (its own entry: every write it timestamped at or below it is
    /// durable or failed).
    visible: watch::Sender<VersionVector>,
    /// What this node knows of other origins' logs, per partition (for causal reads).
    safe_times: Mutex<SafeTimes>,
    key_locks: Vec<tokio::sync::Mutex<()>>,
    stripe_hasher: std::collections::hash_map::RandomState,
    committer: GroupCommitter,
    inflight: Arc<Semaphore>,
    started: Instant,
    client_connections: AtomicU64,
    shutting_down: AtomicBool,
    /// Writes in flight, each in its own task; shutdown waits for them.
    writes: tokio_util::task::TaskTracker,
    /// The region side (placement, fan-out, quorum reads), once the peer transport is up.
    coordinator: OnceLock<Arc<Coordinator>>,
    /// Data-residency rules and decisions.
    residency: Arc<Residency>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The wall clock this node timestamps writes with (`clock_offset_ms` skews it in fault tests).
fn skewed_now_ms(offset_ms: i64) -> u64 {
    now_ms().saturating_add_signed(offset_ms)
}

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

fn crdt_error(e: CrdtError) -> ErrorReply {
    let code = match e {
        CrdtError::WrongType { .. } => ErrorCode::WrongType,
        CrdtError::TypeConflict { .. } => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    ErrorReply::new(code, e.to_string())
}

impl Node {
    /// Opens the node over `engine`: loads or mints its id and resumes its log position.
    pub fn open(config: Config, engine: Arc<dyn Engine>) -> Result<Arc<Node>, StorageError> {
        crate::metrics_export::prometheus();
        let id = match engine.get(Space::Meta, keyspace::META_NODE_ID)? {
            Some(bytes) => NodeId(crate::storage::decode_u64_be(&bytes)?),
            None => {
                let id = NodeId(rand::random::<u64>().max(1));
                let mut batch = Batch::default();
                batch.put(Space::Meta, keyspace::META_NODE_ID, id.0.to_be_bytes().to_vec());
                engine.write(batch)?;
                id
            }
        };
        // Resume each partition's log after its last record, and the clock after the newest
        // timestamp in those records, so a wall clock that went back across a restart cannot make
        // the node issue timestamps below ones it issued before.
        let mut last_seqs = vec![0u64; usize::from(keyspace::PARTITIONS)];
        let mut newest = Hlc::default();
        for partition in 0..keyspace::PARTITIONS {
            let start = keyspace::log_key(partition, id, 0);
            let end = keyspace::log_key(partition, id, u64::MAX);
            if let Some((key, value)) = engine.last_in_range(Space::Log, &start, &end)? {
                if let Some((_, _, seq)) = keyspace::parse_log_key(&key) {
                    last_seqs[usize::from(partition)] = seq;
                }
                let (_, ts) = keyspace::decode::<LogRecord>(&value)
                    .map_err(|e| StorageError::Corrupt(format!("log record of partition {partition}: {e}")))?
                    .into_parts();
                newest = newest.max(ts);
            }
        }
        let mut clock = HlcClock::new(config.max_clock_drift_ms);
        // The newest timestamp is our own: no drift bound applies.
        let _ = clock.observe(newest, newest.wall_ms);
        clock.tick(skewed_now_ms(config.clock_offset_ms));
        let clock = ClockState { clock, in_flight: BTreeMap::new() };
        let frontier: VersionVector = [(id, clock.frontier())].into_iter().collect();
        // What this node knew of other origins' logs before it stopped: it is about data it holds
        // durably, so it still holds (and a session's causal reads need not wait for the origin).
        let mut safe_times = SafeTimes::new();
        let end = keyspace::prefix_end(keyspace::SAFE_PREFIX);
        for (key, value) in engine.scan(Space::Meta, keyspace::SAFE_PREFIX, end.as_deref(), usize::MAX)? {
            if let Some((partition, origin)) = keyspace::parse_safe_key(&key) {
                safe_times.restore(partition, origin, crate::storage::decode_u64_be(&value)?);
            }
        }
        let records: u64 = last_seqs.iter().sum();
        tracing::info!(node_id = %id, log_records = records, "node opened");
        // The audit log sits next to the data it speaks for; an in-memory node (no data directory)
        // logs its decisions to tracing only.
        let audit = config.data_dir.is_dir().then(|| config.data_dir.join("audit.log"));
        let residency = Arc::new(Residency::open(engine.clone(), &config.region, &config.node_name, audit)?);
        Ok(Arc::new(Node {
            residency,
            clock: Mutex::new(clock),
            visible: watch::channel(frontier).0,
            safe_times: Mutex::new(safe_times),
            key_locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            stripe_hasher: std::collections::hash_map::RandomState::new(),
            committer: GroupCommitter::start(engine.clone(), id, last_seqs, COMMIT_QUEUE_DEPTH, COMMIT_MAX_GROUP),
            inflight: Arc::new(Semaphore::new(config.limits.max_inflight_requests)),
            started: Instant::now(),
            client_connections: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            writes: tokio_util::task::TaskTracker::new(),
            coordinator: OnceLock::new(),
            config,
            engine,
            id,
        }))
    }

    /// Joins the node to its region: from now on requests are placed, fanned out and forwarded.
    pub fn attach_coordinator(&self, coordinator: Arc<Coordinator>) {
        if self.coordinator.set(coordinator).is_err() {
            tracing::warn!("the node already has a coordinator");
        }
    }

    /// The region side, if the node runs in a region.
    pub fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        self.coordinator.get()
    }

    /// The replicas a request for `data_key` at `level` counts: those of regions its residency rule
    /// allows (quorums count only allowed replicas).
    fn counted_replicas(&self, coordinator: &Coordinator, level: Consistency, data_key: &[u8]) -> Vec<NodeId> {
        let rule = self.residency.rule_for(data_key);
        let partition = keyspace::partition_of(data_key);
        coordinator.cluster().replicas_for_regions(level, partition, rule.as_ref().map(|r| r.spec.regions.as_slice()))
    }

    /// The node's data-residency rules and decisions.
    pub fn residency(&self) -> &Arc<Residency> {
        &self.residency
    }

    /// This node's replica id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The storage engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The version vector of every write visible here.
    pub fn version_vector(&self) -> VersionVector {
        self.visible.borrow().clone()
    }

    /// Counts a client connection opened (`+1`) or closed (`-1`).
    pub fn track_connection(&self, opened: bool) {
        if opened {
            self.client_connections.fetch_add(1, Ordering::Relaxed);
        } else {
            self.client_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// From now on, new requests are refused with `shutting_down`.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Waits until every write already started is durable (or failed). Call after [`Node::begin_shutdown`].
    pub async fn wait_for_writes(&self) {
        self.writes.close();
        self.writes.wait().await;
    }

    /// Whether the node accepts requests: not shutting down, and joined to its region if it runs in one.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::SeqCst) && self.coordinator.get().is_none_or(|c| c.cluster().has_joined())
    }

    /// Executes a request frame of any supported version.
    pub async fn execute(self: &Arc<Self>, request: Request) -> Response {
        match request {
            Request::V1(request) => Response::V1(self.execute_v1(request).await),
        }
    }

    /// Executes a version-1 request: admission, timeout, metrics, then the operation.
    pub async fn execute_v1(self: &Arc<Self>, request: RequestV1) -> Result<Reply, ErrorReply> {
        self.execute_routed(request, false).await
    }

    /// Executes a request another node forwarded here: coordinated here even if this node's view of
    /// placement disagrees (a forward is never forwarded again, so views in flux cannot loop).
    pub async fn execute_forwarded(self: Arc<Self>, request: RequestV1) -> Result<Reply, ErrorReply> {
        self.execute_routed(request, true).await
    }

    async fn execute_routed(self: &Arc<Self>, request: RequestV1, forwarded: bool) -> Result<Reply, ErrorReply> {
        let op_name = op_name(&request.op);
        let started = Instant::now();
        let result = self.admit_and_run(request, forwarded).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.name(),
        };
        metrics::counter!("meridian_requests_total", "op" => op_name, "result" => outcome).increment(1);
        metrics::histogram!("meridian_request_duration_seconds", "op" => op_name)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn admit_and_run(self: &Arc<Self>, request: RequestV1, forwarded: bool) -> Result<Reply, ErrorReply> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ErrorReply::new(ErrorCode::ShuttingDown, "the node is shutting down; retry on another node"));
        }
        let permit = self.inflight.clone().try_acquire_owned().map_err(|_| {
            ErrorReply::new(
                ErrorCode::Overloaded,
                format!(
                    "{} requests in flight (limits.max_inflight_requests); retry later",
                    self.config.limits.max_inflight_requests
                ),
            )
        })?;
        let timeout_ms = match request.timeout_ms {
            0 => self.config.limits.request_timeout_ms,
            ms => u64::from(ms).min(self.config.limits.request_timeout_ms),
        };
        let run = async {
            if let Some(coordinator) = self.coordinator.get() {
                if !coordinator.cluster().has_joined()
                    && !matches!(request.op, Operation::Status | Operation::Cluster(_) | Operation::Residency(_))
                {
                    return Err(ErrorReply::new(
                        ErrorCode::QuorumUnavailable,
                        "this node has not heard from its region yet (no seed answered); retry shortly or on another node",
                    ));
                }
            }
            if let Some(data_key) = keyed_data_key(&request.op) {
                let refuse = |rule: &meridian_client::proto::Rule, why: &str| {
                    self.residency.note_refused(rule, why);
                    Err(ErrorReply::new(
                        ErrorCode::ResidencyRefused,
                        residency_refusal(rule, self.residency.region(), why),
                    ))
                };
                match self.residency.decide(&data_key) {
                    Decision::Serve => {}
                    Decision::Refuse(rule) => return refuse(&rule, "the rule is strict"),
                    // A forward is never proxied again: views of the rules in flux cannot loop.
                    Decision::Proxy(rule) if forwarded => {
                        return refuse(&rule, "a forwarded request is not proxied again");
                    }
                    Decision::Proxy(rule) => {
                        let Some(coordinator) = self.coordinator.get() else {
                            return refuse(&rule, "this node runs in no cluster to proxy to");
                        };
                        return coordinator
                            .proxy(self, request, &rule, &data_key, Duration::from_millis(timeout_ms))
                            .await;
                    }
                }
            }
            if !forwarded {
                if let (Some(coordinator), Operation::ListKeys { limit, .. }) = (self.coordinator.get(), &request.op) {
                    let limit = (*limit).clamp(1, self.config.limits.max_list_keys) as usize;
                    return coordinator.list_keys(self, request.clone(), limit).await;
                }
                if let Some(forward) = self.route(&request) {
                    let (coordinator, replicas) = forward;
                    return coordinator.forward(request, &replicas, Duration::from_millis(timeout_ms)).await;
                }
            }
            self.run(request, permit).await
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), run).await {
            Ok(result) => result,
            Err(_) => Err(ErrorReply::new(
                ErrorCode::Timeout,
                format!("no answer within {timeout_ms} ms; a write may or may not have been applied (retry with the same idempotency id)"),
            )),
        }
    }

    /// Where a keyed request goes when this node holds no replica of its key: the coordinator and
    /// the key's replicas. `None`: run it here.
    fn route(&self, request: &RequestV1) -> Option<(Arc<Coordinator>, Vec<NodeId>)> {
        let coordinator = self.coordinator.get()?;
        let key = match &request.op {
            Operation::Write { key, .. }
            | Operation::Delete { key, .. }
            | Operation::Read { key, .. }
            | Operation::DocChanges { key, .. } => key,
            Operation::ListKeys { .. } | Operation::Status | Operation::Cluster(_) | Operation::Residency(_) => {
                return None
            }
        };
        // An invalid key is refused here, not forwarded.
        key.validate().ok()?;
        let replicas = coordinator.cluster().replicas(keyspace::partition_of(&keyspace::data_key(key)));
        if replicas.is_empty() || replicas.contains(&self.id) {
            return None;
        }
        Some((coordinator.clone(), replicas))
    }

    /// Runs one admitted request. `permit` is its in-flight slot: a write hands it to its own task,
    /// so a write that outlives its request's timeout still counts against the limit.
    async fn run(self: &Arc<Self>, request: RequestV1, permit: OwnedSemaphorePermit) -> Result<Reply, ErrorReply> {
        let token = request.causal_token.unwrap_or_default();
        match request.op {
            Operation::Write { key, mutation, idempotency_id } => {
                let level = self.level(&key, request.consistency)?;
                if mutation.payload_len() > self.config.limits.max_value_bytes {
                    return Err(ErrorReply::new(
                        ErrorCode::TooLarge,
                        format!(
                            "the write carries {} bytes, limits.max_value_bytes is {}",
                            mutation.payload_len(),
                            self.config.limits.max_value_bytes
                        ),
                    ));
                }
                self.write(key, Change::Mutate(mutation), idempotency_id, token, level, permit).await
            }
            Operation::Delete { key, idempotency_id } => {
                let level = self.level(&key, request.consistency)?;
                self.write(key, Change::Delete, idempotency_id, token, level, permit).await
            }
            Operation::Read { key, expected } => {
                let level = self.level(&key, request.consistency)?;
                let (entry, token) = self.read_entry(&key, token, level).await?;
                if let (Some(entry), Some(expected)) = (&entry, expected) {
                    if entry.crdt_type() != expected {
                        return Err(crdt_error(CrdtError::WrongType {
                            actual: entry.crdt_type(),
                            requested: expected,
                        }));
                    }
                }
                let value = match entry {
                    // Materialising an automerge document replays its history: keep it off the reactor.
                    Some(entry) if entry.crdt_type() == CrdtType::Doc => {
                        tokio::task::spawn_blocking(move || entry.read())
                            .await
                            .map_err(internal)?
                            .map_err(crdt_error)?
                    }
                    Some(entry) => entry.read().map_err(crdt_error)?,
                    None => None,
                };
                Ok(Reply { causal_token: token, body: ReplyBody::Value(value) })
            }
            Operation::DocChanges { key, since_heads } => {
                let level = self.level(&key, request.consistency)?;
                let (entry, token) = self.read_entry(&key, token, level).await?;
                let body = match entry.filter(Entry::exists) {
                    None => ReplyBody::DocChanges { changes: Vec::new(), heads: Vec::new() },
                    Some(entry) => {
                        // Materialising replays the document's history: off the reactor threads.
                        tokio::task::spawn_blocking(move || doc_changes(&entry, &since_heads))
                            .await
                            .map_err(internal)??
                    }
                };
                Ok(Reply { causal_token: token, body })
            }
            op @ Operation::ListKeys { .. } => {
                self.list_local(&RequestV1 { consistency: None, causal_token: Some(token), timeout_ms: 0, op }).await
            }
            Operation::Status => Ok(Reply { causal_token: token, body: ReplyBody::Status(self.status()?) }),
            Operation::Cluster(op) => {
                let coordinator = self.coordinator.get().ok_or_else(|| {
                    ErrorReply::new(
                        ErrorCode::Unsupported,
                        "this node runs alone (no [peer] section): it has no region",
                    )
                })?;
                let report = crate::admin::cluster_op(coordinator, &self.config, op)?;
                Ok(Reply { causal_token: token, body: ReplyBody::Cluster(report) })
            }
            Operation::Residency(op) => {
                let report = crate::residency::admin::residency_op(self, op).await?;
                Ok(Reply { causal_token: token, body: ReplyBody::Residency(Box::new(report)) })
            }
        }
    }

    fn level(&self, key: &Key, requested: Option<Consistency>) -> Result<Consistency, ErrorReply> {
        key.validate().map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
        let level = requested.unwrap_or_else(|| self.config.consistency_for(&key.namespace));
        Ok(level)
    }

    /// The replicas of a key, relative to this node. One node: itself.
    fn replicas(&self) -> ReplicaCounts {
        ReplicaCounts { local: 1, remote: 0 }
    }

    async fn write(
        self: &Arc<Self>,
        key: Key,
        change: Change,
        idempotency_id: Option<IdempotencyId>,
        token: CausalToken,
        level: Consistency,
        permit: OwnedSemaphorePermit,
    ) -> Result<Reply, ErrorReply> {
        // The write runs as its own task: if the request times out (its future is dropped), the write
        // still finishes — its log position is released and its key lock held until it is durable —
        // instead of being cut off between "queued for commit" and "committed".
        let data_key = keyspace::data_key(&key);
        let partition = keyspace::partition_of(&data_key);
        if level == Consistency::Causal {
            // Monotonic writes and writes-follow-reads for the key itself: its state here must
            // include what the session saw of it before this write joins in (a register's later
            // write must win). The write's timestamp then follows the session's too.
            self.wait_for(&token, Some(partition)).await?;
        }
        self.observe_token(&token);
        if let Some(coordinator) = self.coordinator.get() {
            // A delete or a remove takes away what its coordinator has observed; at a quorum level
            // that must include everything a majority holds (every write acknowledged at quorum
            // before it), so the coordinator first joins a quorum read of the key into its copy.
            if matches!(level, Consistency::LocalQuorum | Consistency::Quorum) && change.removes_observed() {
                let replicas = self.counted_replicas(coordinator, level, &data_key);
                if let Some(merged) = coordinator.quorum_read(self, &data_key, level, &replicas).await? {
                    coordinator.join_locally(&data_key, &merged).await?;
                }
            }
        }
        let node = self.clone();
        let (reply, permit) = self
            .writes
            .spawn(async move { (node.write_to_completion(key, change, idempotency_id, token).await, permit) })
            .await
            .map_err(internal)?;
        // The in-flight slot is held through the fan-out too: a write waiting on replicas is in flight.
        let _permit = permit;
        let (reply, pushed) = reply?;
        if let Some(coordinator) = self.coordinator.get() {
            let replicas = self.counted_replicas(coordinator, level, &data_key);
            match pushed {
                Some((partition, record)) => {
                    let report = self.own_report(partition);
                    coordinator.replicate(partition, record, level, &replicas, report).await?
                }
                None if matches!(level, Consistency::LocalQuorum | Consistency::Quorum) => {
                    coordinator.ensure_on_quorum(self, &data_key, level, &replicas).await?
                }
                None => {}
            }
            return Ok(reply);
        }
        let mut tracker = QuorumTracker::new(level, self.replicas());
        tracker.record(true, true);
        match tracker.outcome() {
            Outcome::Satisfied => Ok(reply),
            Outcome::Pending | Outcome::Unavailable { .. } => Err(ErrorReply::new(
                ErrorCode::QuorumUnavailable,
                format!("{level} needs more replicas than this node has answering: 1 of {:?}", self.replicas()),
            )),
        }
    }

    async fn write_to_completion(
        self: Arc<Self>,
        key: Key,
        change: Change,
        idempotency_id: Option<IdempotencyId>,
        token: CausalToken,
    ) -> Result<(Reply, Option<(u16, SyncRecord)>), ErrorReply> {
        let data_key = keyspace::data_key(&key);
        // Held until the write is durable, so the next write of this key reads the state this one made.
        let _guard = self.lock_for(&data_key).await;
        let is_doc = matches!(&change, Change::Mutate(m) if m.crdt_type() == CrdtType::Doc);
        let prepared = if is_doc {
            // Automerge replays the document's history: keep that off the reactor threads.
            let node = self.clone();
            tokio::task::spawn_blocking(move || node.prepare_write(key, data_key, change, idempotency_id, token))
                .await
                .map_err(internal)??
        } else {
            self.prepare_write(key, data_key, change, idempotency_id, token)?
        };
        match prepared {
            Prepared::Done(reply) => Ok((reply, None)),
            Prepared::Commit { batch, log, push, reply, ts } => {
                let partition = log.partition;
                let committed = self.committer.commit(batch, Some(log)).await;
                // Durable (or failed): the timestamp leaves the in-flight set, the frontier moves.
                drop(ts);
                let seq = committed.map_err(internal)?.ok_or_else(|| internal("the committer gave no log position"))?;
                let record = SyncRecord { origin: self.id, seq, key: push.data_key, delta: push.delta, hlc: push.hlc };
                Ok((reply, Some((partition, record))))
            }
        }
    }

    /// Everything of a write but making it durable: the idempotency check, the delta, the new state,
    /// the log position and the batch. Runs under the key's lock.
    fn prepare_write(
        self: &Arc<Self>,
        key: Key,
        data_key: Vec<u8>,
        change: Change,
        idempotency_id: Option<IdempotencyId>,
        mut token: CausalToken,
    ) -> Result<Prepared, ErrorReply> {
        let request_digest = change.digest();
        if let Some(id) = idempotency_id {
            if let Some(bytes) = self.engine.get(Space::Idempotency, &id.0.to_be_bytes()).map_err(internal)? {
                let IdempotencyRecord::V1 { key: first_key, request_digest: first_digest, reply, .. } =
                    keyspace::decode(&bytes).map_err(internal)?;
                if first_key != key || first_digest != request_digest {
                    return Err(ErrorReply::new(
                        ErrorCode::BadRequest,
                        format!("idempotency id already used for another operation (on key {first_key}); use a fresh id per write"),
                    ));
                }
                metrics::counter!("meridian_idempotent_replays_total").increment(1);
                return Ok(Prepared::Done(reply));
            }
        }
        let (state, mut deps) = match self.load_stored(&data_key)? {
            Some(stored) => (Some(stored.entry), stored.deps),
            None => (None, VersionVector::new()),
        };
        let exists = state.as_ref().is_some_and(Entry::exists);
        match &change {
            Change::Delete if !exists => {
                return Ok(Prepared::Done(Reply { causal_token: token, body: ReplyBody::Deleted { existed: false } }))
            }
            // Removing from a key that does not exist removes nothing and must not create it.
            Change::Mutate(mutation @ (Mutation::SetRemove { .. } | Mutation::MapRemove { .. })) if !exists => {
                if let Some(entry) = &state {
                    let requested = mutation.crdt_type();
                    if entry.crdt_type() != requested {
                        return Err(crdt_error(CrdtError::WrongType { actual: entry.crdt_type(), requested }));
                    }
                }
                return Ok(Prepared::Done(Reply { causal_token: token, body: ReplyBody::Written { counter: None } }));
            }
            _ => {}
        }
        let ts = self.issue_ts();
        let write = WriteContext { node: self.id, ts: ts.ts };
        let delta = match (&change, &state) {
            (Change::Mutate(mutation), _) => {
                Entry::mutation_delta(state.as_ref(), mutation, &write).map_err(crdt_error)?
            }
            (Change::Delete, Some(entry)) => entry.reset_delta(&write).map_err(crdt_error)?,
            (Change::Delete, None) => unreachable!("checked above"),
        };
        let mut next = state.unwrap_or_else(|| Entry::empty(delta.crdt_type()));
        next.try_join(&delta).map_err(crdt_error)?;
        let is_delete = matches!(change, Change::Delete);
        let body = match change {
            Change::Delete => ReplyBody::Deleted { existed: true },
            Change::Mutate(Mutation::CounterAdd { .. }) => match next.read() {
                Ok(Some(Value::Counter(value))) => ReplyBody::Written { counter: Some(value) },
                _ => ReplyBody::Written { counter: None },
            },
            Change::Mutate(_) => ReplyBody::Written { counter: None },
        };
        // The write depends on everything its session has seen, and on itself.
        token.0.observe(self.id, ts.ts.pack());
        deps.merge(&token.0);
        let stored = keyspace::encode_stored(&Stored { entry: next, deps });
        let max_entry = self.config.limits.max_frame_bytes.saturating_sub(4096);
        // A delete may grow a key (a tombstone records what it removed) but must always be possible.
        if stored.len() > max_entry && !is_delete {
            return Err(ErrorReply::new(
                ErrorCode::TooLarge,
                format!("the key would grow to {} bytes; a key may hold at most {max_entry} (limits.max_frame_bytes - 4096)", stored.len()),
            ));
        }

        let partition = keyspace::partition_of(&data_key);
        let push = Push {
            data_key: data_key.clone(),
            delta: keyspace::encode_stored(&Stored { entry: delta.clone(), deps: token.0.clone() }),
            hlc: ts.ts.pack(),
        };
        let record = keyspace::encode(&LogRecord::V2 { key: key.clone(), delta, ts: ts.ts, deps: token.0.clone() });
        let mut batch = Batch::default();
        batch.put(Space::Data, data_key, stored);
        let reply = Reply { causal_token: token, body };
        if let Some(id) = idempotency_id {
            let record = IdempotencyRecord::V1 { created_ms: now_ms(), key, request_digest, reply: reply.clone() };
            batch.put(Space::Idempotency, id.0.to_be_bytes().to_vec(), keyspace::encode(&record));
        }
        Ok(Prepared::Commit { batch, log: LogAppend { partition, record }, push, reply, ts })
    }

    /// A token names one of this node's own timestamps beyond its clock: after a restart, the clock
    /// resumes from the log, which may lack the newest timestamps it handed out (a frontier raised by
    /// [`Node::observe_token`], writes committed out of timestamp order). Within the drift bound that
    /// is our own past, and every write we acknowledged below it is durable: resume the clock past
    /// it. Beyond the bound the token is not ours (another cluster, a wiped data directory).
    fn resume_clock_to(&self, own: u64) -> bool {
        let frontier = {
            let mut state = self.clock.lock().expect("clock lock");
            let now = skewed_now_ms(self.config.clock_offset_ms);
            if state.clock.observe(Hlc::unpack(own), now).is_err() {
                return false;
            }
            state.frontier()
        };
        self.publish_frontier(frontier);
        true
    }

    /// Moves this node's clock past every timestamp in `token` (bounded by the drift limit), so a
    /// write that follows what its session saw is also timestamped after it: a register's later
    /// write wins even when this node's wall clock is behind the one that wrote the earlier value.
    fn observe_token(&self, token: &CausalToken) {
        let Some(newest) = token.0.iter().map(|(_, packed)| packed).max() else { return };
        let mut state = self.clock.lock().expect("clock lock");
        let now = skewed_now_ms(self.config.clock_offset_ms);
        // A timestamp too far ahead (a bad token) is ignored: the write keeps its own clock.
        let _ = state.clock.observe(Hlc::unpack(newest), now);
    }

    /// Timestamps a write and registers it in flight until the returned guard is dropped.
    fn issue_ts(self: &Arc<Self>) -> InFlightTs {
        let mut state = self.clock.lock().expect("clock lock");
        let ts = state.clock.tick(skewed_now_ms(self.config.clock_offset_ms));
        *state.in_flight.entry(ts.pack()).or_insert(0) += 1;
        InFlightTs { node: self.clone(), ts }
    }

    fn release_ts(&self, ts: Hlc) {
        let frontier = {
            let mut state = self.clock.lock().expect("clock lock");
            let packed = ts.pack();
            if let Some(count) = state.in_flight.get_mut(&packed) {
                *count -= 1;
                if *count == 0 {
                    state.in_flight.remove(&packed);
                }
            }
            state.frontier()
        };
        self.publish_frontier(frontier);
    }

    /// Raises this node's own entry of the causal frontier (waiting reads wake up).
    fn publish_frontier(&self, frontier: u64) {
        self.visible.send_if_modified(|vv| {
            let before = vv.get(self.id);
            vv.observe(self.id, frontier);
            vv.get(self.id) != before
        });
    }

    async fn lock_for(&self, data_key: &[u8]) -> tokio::sync::MutexGuard<'_, ()> {
        // Seeded per process: clients cannot choose keys that all land on one stripe.
        self.key_locks[self.stripe_of(data_key)].lock().await
    }

    fn stripe_of(&self, data_key: &[u8]) -> usize {
        use std::hash::BuildHasher;
        (self.stripe_hasher.hash_one(data_key) as usize) % LOCK_STRIPES
    }

    /// Runs `apply` holding the locks of every key in `data_keys`, then commits the batch it returns
    /// through the group committer — how replicated state (anti-entropy) enters this node without
    /// racing its own writes to the same keys. Stripes are taken in ascending order, and a local write
    /// holds one stripe at a time, so this cannot deadlock. Blocks: call it from a blocking thread.
    pub fn apply_under_key_locks<E>(
        &self,
        data_keys: &[&[u8]],
        apply: impl FnOnce() -> Result<Batch, E>,
    ) -> Result<(), E>
    where
        E: From<StorageError>,
    {
        let stripes: std::collections::BTreeSet<usize> = data_keys.iter().map(|k| self.stripe_of(k)).collect();
        let _guards: Vec<_> = stripes.into_iter().map(|stripe| self.key_locks[stripe].blocking_lock()).collect();
        let batch = apply()?;
        if !batch.is_empty() {
            self.committer.commit_blocking(batch, None)?;
        }
        Ok(())
    }

    /// The stored bytes of a key's state (what a quorum read's replica answers with).
    pub fn stored_state(&self, data_key: &[u8]) -> Result<Option<Vec<u8>>, ErrorReply> {
        self.engine.get(Space::Data, data_key).map_err(internal)
    }

    /// A key's state, decoded.
    pub fn load_entry(&self, data_key: &[u8]) -> Result<Option<Entry>, ErrorReply> {
        self.load(data_key)
    }

    fn load(&self, data_key: &[u8]) -> Result<Option<Entry>, ErrorReply> {
        Ok(self.load_stored(data_key)?.map(|stored| stored.entry))
    }

    /// A key's state with its dependency vector.
    pub fn load_stored(&self, data_key: &[u8]) -> Result<Option<Stored>, ErrorReply> {
        match self.engine.get(Space::Data, data_key).map_err(internal)? {
            None => Ok(None),
            Some(bytes) => {
                let stored =
                    keyspace::decode_stored(&bytes).map_err(|e| internal(format!("corrupt stored entry: {e}")))?;
                Ok(Some(stored))
            }
        }
    }

    /// Waits (bounded) until the node has seen `token` when the level is `causal`, then reads the key.
    /// Returns the entry (if any, deleted or not) and the token after the read.
    async fn read_entry(
        self: &Arc<Self>,
        key: &Key,
        token: CausalToken,
        level: Consistency,
    ) -> Result<(Option<Entry>, CausalToken), ErrorReply> {
        let data_key = keyspace::data_key(key);
        let partition = keyspace::partition_of(&data_key);
        if let Some(coordinator) = self.coordinator.get() {
            if matches!(level, Consistency::LocalQuorum | Consistency::Quorum) {
                // A read depends on what it shows, not on everything this node wrote: the token
                // gains the key's dependencies only (no false dependencies to wait for later).
                let mut after = token;
                let replicas = self.counted_replicas(coordinator, level, &data_key);
                let stored = coordinator.quorum_read(self, &data_key, level, &replicas).await?;
                if let Some(stored) = &stored {
                    after.0.merge(&stored.deps);
                }
                return Ok((stored.map(|s| s.entry), after));
            }
        }
        // Every level but `eventual` keeps the session's guarantees (on one node the only replica
        // is the quorum); `eventual` answers with whatever this replica has.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.limits.causal_wait_ms);
        if level != Consistency::Eventual {
            self.wait_until(&token, Some(partition), deadline).await?;
        }
        let mut after = token;
        // A point read is served from RocksDB's memtable, block cache or page cache in microseconds;
        // running it inline saves the two thread hand-offs a blocking-pool trip costs (writes, which
        // wait for fsync, do go to the blocking pool).
        let mut stored = self.load_stored(&data_key)?;
        if level != Consistency::Eventual {
            // The state may hold an effect whose cause (in this key, or anywhere in the partition)
            // has not arrived: a push that overtook an earlier one, a quorum write pushed straight
            // from another region. Never show it before its causes: wait until the state's own
            // dependencies are held here too, and read again (bounded by the same deadline).
            while let Some(deps) = stored.as_ref().map(|s| CausalToken(s.deps.clone())) {
                if self.causal_gap(&deps, Some(partition)).is_none() {
                    break;
                }
                self.wait_until(&deps, Some(partition), deadline).await?;
                stored = self.load_stored(&data_key)?;
            }
        }
        // The key's dependencies join the session's token: a session that saw an effect then waits
        // for its causes wherever it reads them.
        if let Some(stored) = &stored {
            after.0.merge(&stored.deps);
        }
        Ok((stored.map(|s| s.entry), after))
    }

    /// Waits (bounded by `limits.causal_wait_ms`) until this node holds every write `token` names
    /// that a read of `partition` could show: its own writes up to its entry (the frontier), and for
    /// every other origin, its writes *to that partition* up to its entry (safe times, see
    /// `meridian_replication::safe_time`). Without a partition (listings) only this node's own
    /// entry is checked.
    async fn wait_for(&self, token: &CausalToken, partition: Option<u16>) -> Result<(), ErrorReply> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.limits.causal_wait_ms);
        self.wait_until(token, partition, deadline).await
    }

    /// [`Node::wait_for`] with an explicit deadline.
    async fn wait_until(
        &self,
        token: &CausalToken,
        partition: Option<u16>,
        deadline: tokio::time::Instant,
    ) -> Result<(), ErrorReply> {
        let wait_ms = self.config.limits.causal_wait_ms;
        // Our own entry can only be ahead of our clock if the token was never issued by this node's
        // history (another cluster, a wiped data directory): waiting cannot help, so say so.
        let own = token.0.get(self.id);
        let newest_issued = self.clock.lock().expect("clock lock").clock.last().pack();
        if own > newest_issued && !self.resume_clock_to(own) {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                "the causal token names writes this node never made (a token from another cluster or a wiped data directory?); start a new session",
            ));
        }
        let mut visible = self.visible.subscribe();
        let mut waited = false;
        let mut poll = CAUSAL_POLL;
        loop {
            let Some((origin, needed, held)) = self.causal_gap(token, partition) else {
                if waited {
                    metrics::counter!("meridian_causal_waits_total", "result" => "served").increment(1);
                }
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                metrics::counter!("meridian_causal_waits_total", "result" => "timeout").increment(1);
                let name = self
                    .coordinator
                    .get()
                    .and_then(|c| c.cluster().member(origin))
                    .map_or_else(|| origin.to_string(), |m| format!("{} ({})", m.name, m.region));
                return Err(ErrorReply::new(
                    ErrorCode::CausalTimeout,
                    format!(
                        "this node has not yet seen the session's dependencies after {wait_ms} ms: the writes of {name} up to HLC {needed} (wall {} ms); it holds them up to {held}, need {needed}; retry, or read at another consistency level",
                        Hlc::unpack(needed).wall_ms,
                    ),
                ));
            }
            waited = true;
            // Remote records and reports arrive without a signal; poll them (backing off, so many
            // waiting reads during an incident cost little), and wake at once when this node's own
            // frontier moves.
            let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + poll), visible.changed()).await;
            poll = (poll * 2).min(CAUSAL_POLL_MAX);
        }
    }

    /// The first entry of `token` this node cannot yet vouch for: (origin, needed, held).
    fn causal_gap(&self, token: &CausalToken, partition: Option<u16>) -> Option<(NodeId, u64, u64)> {
        for (origin, needed) in token.0.iter() {
            let held = if origin == self.id {
                self.visible.borrow().get(self.id)
            } else if let Some(p) = partition {
                self.known_safe(p, origin)
            } else {
                continue;
            };
            if held < needed {
                return Some((origin, needed, held));
            }
        }
        None
    }

    /// This node's gap-free position of `origin` in `partition` (its version-vector entry).
    fn held_position(&self, partition: u16, origin: NodeId) -> u64 {
        match self.engine.get(Space::Meta, &keyspace::vv_key(partition, origin)) {
            Ok(Some(bytes)) => crate::storage::decode_u64_be(&bytes).unwrap_or(0),
            _ => 0,
        }
    }

    /// The packed HLC up to which this node holds `origin`'s writes to `partition`.
    pub fn known_safe(&self, partition: u16, origin: NodeId) -> u64 {
        let held = self.held_position(partition, origin);
        self.safe_times.lock().expect("safe times lock").known(partition, origin, held)
    }

    /// Takes in what another node says about an origin's log of `partition`.
    pub fn take_report(&self, partition: u16, report: SafeReport) {
        if report.origin == self.id {
            return;
        }
        let held = self.held_position(partition, report.origin);
        self.safe_times.lock().expect("safe times lock").report(partition, report, held);
    }

    /// Persists the safe-time knowledge gained since the last call (one small batch; blocks).
    /// Written after the data it is about, so a restart never restores a claim about data it lost.
    pub fn persist_safe_times(&self) -> Result<(), StorageError> {
        let changed = self.safe_times.lock().expect("safe times lock").take_changed();
        if changed.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (partition, origin, known) in changed {
            batch.max_u64(Space::Meta, keyspace::safe_key(partition, origin), known);
        }
        self.engine.write(batch)
    }

    /// Every `interval` until `shutdown`: [`Node::persist_safe_times`], off the reactor.
    pub async fn persist_safe_times_every(
        self: Arc<Self>,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            let node = self.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || node.persist_safe_times()).await {
                tracing::warn!(error = %e, "could not persist safe times");
            }
        }
    }

    /// What this node says about its own log of `partition`: its frontier, taken first, then the
    /// partition's last durable position — every write it timestamped at or below the frontier
    /// is durable, so it sits at or below that position.
    pub fn own_report(&self, partition: u16) -> SafeReport {
        let safe = self.visible.borrow().get(self.id);
        SafeReport { origin: self.id, seq: self.committer.last_durable_seq(partition), safe }
    }

    /// [`Node::own_report`] for every partition at once (one frontier): gossip carries it, so
    /// causal reads elsewhere need not wait for this node's next write to a partition it is idle in.
    pub fn own_reports(&self) -> (u64, Vec<u64>) {
        let safe = self.visible.borrow().get(self.id);
        (safe, (0..keyspace::PARTITIONS).map(|p| self.committer.last_durable_seq(p)).collect())
    }

    /// Runs a `ListKeys` request over this node's own keys only.
    pub async fn list_local(self: &Arc<Self>, request: &RequestV1) -> Result<Reply, ErrorReply> {
        let Operation::ListKeys { namespace, prefix, start_after, limit } = request.op.clone() else {
            return Err(ErrorReply::new(ErrorCode::BadRequest, "not a key listing"));
        };
        meridian_client::proto::validate_namespace(&namespace)
            .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
        let limit = limit.clamp(1, self.config.limits.max_list_keys) as usize;
        let node = self.clone();
        let (keys, next) =
            tokio::task::spawn_blocking(move || node.list_keys(&namespace, &prefix, start_after.as_deref(), limit))
                .await
                .map_err(internal)??;
        let token = request.causal_token.clone().unwrap_or_default();
        Ok(Reply { causal_token: token, body: ReplyBody::Keys { keys, next } })
    }

    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KeyInfo>, Option<String>), ErrorReply> {
        let ns_prefix = keyspace::namespace_prefix(namespace);
        let mut range_prefix = ns_prefix.clone();
        range_prefix.extend_from_slice(prefix.as_bytes());
        let end = keyspace::prefix_end(&range_prefix);
        let mut start = range_prefix.clone();
        if let Some(after) = start_after {
            let mut after_key = ns_prefix.clone();
            after_key.extend_from_slice(after.as_bytes());
            after_key.push(0);
            start = start.max(after_key);
        }
        let raw = self.engine.scan(Space::Data, &start, end.as_deref(), limit * LIST_SCAN_FACTOR).map_err(internal)?;
        let mut keys = Vec::new();
        let mut last_name = None;
        for (data_key, value) in &raw {
            let name = String::from_utf8_lossy(&data_key[ns_prefix.len()..]).into_owned();
            let entry = keyspace::decode_stored(value).map_err(internal)?.entry;
            last_name = Some(name.clone());
            if entry.exists() {
                keys.push(KeyInfo { name, crdt_type: entry.crdt_type() });
                if keys.len() == limit {
                    break;
                }
            }
        }
        let exhausted = raw.len() < limit * LIST_SCAN_FACTOR && keys.len() < limit;
        let next = if exhausted { None } else { last_name };
        Ok((keys, next))
    }

    /// The node's status.
    pub fn status(&self) -> Result<NodeStatus, ErrorReply> {
        Ok(NodeStatus {
            node_id: self.id,
            name: self.config.node_name.clone(),
            region: self.config.region.clone(),
            zone: self.config.zone.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            keys_estimate: self.engine.estimate_keys(Space::Data).map_err(internal)?,
            log_entries: self.committer.committed_records(),
            version_vector: self.version_vector(),
            durability: match self.engine.durability() {
                Durability::Fsync => "fsync".into(),
                Durability::Relaxed => "relaxed".into(),
            },
            client_connections: self.client_connections.load(Ordering::Relaxed),
        })
    }

    /// Deletes idempotency records older than the TTL; scans at most `budget` records from `cursor`
    /// and returns where to resume (`None`: wrapped around).
    pub fn expire_idempotency_records(
        &self,
        cursor: Option<Vec<u8>>,
        budget: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let start = cursor.unwrap_or_default();
        let records = self.engine.scan(Space::Idempotency, &start, None, budget)?;
        let cutoff = now_ms().saturating_sub(self.config.limits.idempotency_ttl_s * 1000);
        let mut batch = Batch::default();
        for (key, value) in &records {
            let expired = match keyspace::decode::<IdempotencyRecord>(value) {
                Ok(IdempotencyRecord::V1 { created_ms, .. }) => created_ms < cutoff,
                Err(_) => true,
            };
            if expired {
                batch.delete(Space::Idempotency, key.clone());
            }
        }
        if !batch.is_empty() {
            self.engine.write(batch)?;
        }
        Ok(if records.len() < budget { None } else { records.last().map(|(k, _)| [k.as_slice(), &[0]].concat()) })
    }
}

fn doc_changes(entry: &Entry, since_heads: &[String]) -> Result<ReplyBody, ErrorReply> {
    match entry.body() {
        meridian_crdt::Body::Doc(doc) => {
            let doc = doc.materialize().map_err(crdt_error)?;
            let changes = doc.changes_since(since_heads).map_err(crdt_error)?;
            Ok(ReplyBody::DocChanges { changes, heads: doc.heads() })
        }
        other => Err(crdt_error(CrdtError::WrongType { actual: other.crdt_type(), requested: CrdtType::Doc })),
    }
}

/// The data key a keyed operation names, if it is valid (an invalid key is refused later, as usual).
pub fn keyed_data_key(op: &Operation) -> Option<Vec<u8>> {
    match op {
        Operation::Write { key, .. }
        | Operation::Delete { key, .. }
        | Operation::Read { key, .. }
        | Operation::DocChanges { key, .. } => key.validate().ok().map(|()| keyspace::data_key(key)),
        _ => None,
    }
}

/// The message of a residency refusal: names the rule, what it allows and why.
pub fn residency_refusal(rule: &meridian_client::proto::Rule, region: &str, why: &str) -> String {
    format!(
        "data residency: rule {} (namespace {:?}, prefix {:?}) keeps these keys in {}; region {region} may not serve them ({why})",
        rule.id,
        rule.spec.namespace,
        rule.spec.prefix,
        rule.spec.regions.join(", ")
    )
}

fn op_name(op: &Operation) -> &'static str {
    match op {
        Operation::Write { .. } => "write",
        Operation::Delete { .. } => "delete",
        Operation::Read { .. } => "read",
        Operation::DocChanges { .. } => "doc_changes",
        Operation::ListKeys { .. } => "list_keys",
        Operation::Status => "status",
        Operation::Cluster(_) => "cluster",
        Operation::Residency(_) => "residency",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::storage::MemoryEngine;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frontier_stays_below_writes_in_flight() {
        let node = Node::open(Config::default(), Arc::new(MemoryEngine::new())).unwrap();
        let first = node.issue_ts();
        let second = node.issue_ts();
        assert!(first.ts < second.ts);
        drop(second);
        let frontier = node.version_vector().get(node.id());
        assert!(frontier < first.ts.pack(), "a write still in flight bounds the frontier");
        drop(first);
        assert!(node.version_vector().get(node.id()) >= node.clock.lock().unwrap().clock.last().pack());
    }
}
