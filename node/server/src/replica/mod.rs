//! The local replica: executes reads and writes against this node's storage, whatever surface they
//! came in by and whether or not the node runs in a region. It knows nothing of regions: the region
//! layer (`crate::region`) builds fan-out, quorum reads and routing on top of it.
//!
//! # The write path
//!
//! A write runs in its own task, under the key's lock stripe (`write.rs`):
//!
//! 1. if it carries an idempotency id already recorded, return the recorded reply (applied once);
//! 2. read the key's state, take an HLC timestamp, compute the mutation's *delta* against the state
//!    (`meridian-crdt`) and join it;
//! 3. hand the new state, the idempotency record and the delta-log record to the group committer
//!    ([`crate::store::commit`]), which gives the record its log position `(partition, origin, seq)`
//!    and commits everything with the partition's version-vector entry in **one atomic batch**,
//!    fsynced (one fsync per group of concurrent writes) unless durability is relaxed;
//! 4. acknowledge per the consistency level: alone, every level is met once step 3 is durable (the
//!    rule itself lives in `meridian-replication` and is the same one a region uses); in a region
//!    the coordinator pushes the record to the other replicas first.
//!
//! # Causal tokens
//!
//! A token maps origin nodes to HLC timestamps (packed, see `docs/design/replication.md`). A write's
//! reply adds the write's own timestamp; a read's reply adds the key's *dependency vector* (the join
//! of the tokens of the writes in it), so a session that saw an effect carries its causes. The node's
//! *frontier* holds, for itself, the HLC below which every write it has timestamped is durable (the
//! newest timestamp issued when no write is in flight, else just below the oldest one in flight,
//! `clock.rs`); for other origins it knows, per partition, up to which HLC it holds their writes
//! (safe-time reports, [`crate::store::safe_times`]). A `causal` read of a key waits until the node
//! holds everything the session's token names *and* everything the key's state depends on, in the
//! key's partition, bounded by `limits.causal_wait_ms`, and then fails with `causal_timeout` instead
//! of showing the session an older state or an effect without its cause (`read.rs`).
//!
//! A token comes from a client, so it is screened (`read.rs`, `Replica::screen_token`): entries no
//! node of the cluster can have issued are refused, and a write records into the key's dependencies
//! only the entries of origins this node knows (itself, members of its cluster) — a made-up origin
//! cannot make every later causal read of the key wait for writes that will never come.

mod clock;
mod read;
mod write;

pub use read::{doc_changes_of, value_of};
pub use write::{Change, Durable, Kept};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use meridian_client::proto::{KeyInfo, NodeStatus, Operation, Reply, ReplyBody, RequestV1, SpaceReport, StorageReport};
use meridian_crdt::{Entry, Hlc, HlcClock, NodeId, VersionVector};
use meridian_replication::SafeReport;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::config::Config;
use crate::error::Error;
use crate::layout::{self, IdempotencyRecord, LogRecord, Stored};
use crate::residency::Residency;
use crate::states;
use crate::storage::{Batch, Durability, Engine, Space, StorageError};
use crate::store::commit::GroupCommitter;
use crate::store::safe_times::SafeTimeBook;
use crate::store::sync_store::{EngineSyncStore, Live};
use crate::store::writer::Writer;

use clock::ClockState;

/// Writes waiting for the committer before writers wait in line (backpressure).
const COMMIT_QUEUE_DEPTH: usize = 4096;
/// Most writes joined into one durable batch.
const COMMIT_MAX_GROUP: usize = 256;

/// Raw entries a key listing may skip (deleted keys) before returning a short page with a cursor.
const LIST_SCAN_FACTOR: usize = 8;

/// How a causal timeout names an origin (`"n2 (eu-west)"`), `None` for a node that is not a member
/// of the cluster as this node knows it; the region knows, the replica does not.
pub type OriginNames = Box<dyn Fn(NodeId) -> Option<String> + Send + Sync>;

/// This node's replica of the data.
pub struct Replica {
    config: Config,
    engine: Arc<dyn Engine>,
    id: NodeId,
    clock: Mutex<ClockState>,
    /// This node's causal frontier (its own entry: every write it timestamped at or below it is
    /// durable or failed).
    visible: watch::Sender<VersionVector>,
    /// What this node knows of other origins' logs, per partition (for causal reads).
    safe_times: Arc<SafeTimeBook>,
    /// Key locks and the group committer: the one way writes enter storage.
    writer: Arc<Writer>,
    /// The anti-entropy store over this node's storage; every user gets a clone of this one, so
    /// they all serialise per partition.
    sync_store: EngineSyncStore,
    started: Instant,
    client_connections: AtomicU64,
    shutting_down: AtomicBool,
    /// Writes in flight, each in its own task; shutdown waits for them.
    writes: tokio_util::task::TaskTracker,
    /// Data-residency rules and decisions.
    residency: Arc<Residency>,
    /// Client authentication: settings, and the cluster's users, grants and tokens.
    auth: Arc<Auth>,
    origin_names: OnceLock<OriginNames>,
    /// What the last data census pass counted (`store/census.rs`), for `meridian status`.
    last_census: Mutex<Option<meridian_client::proto::CensusReport>>,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(e)
}

/// A state that could not be read: the engine's failure as such, anything else internal.
/// Bytes of every file under `dir`, its subdirectories included (symbolic links are not followed;
/// a file removed while listed counts as nothing).
fn directory_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => total += directory_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
            _ => {}
        }
    }
    total
}

pub(crate) fn state_error(e: states::StateError) -> Error {
    match e {
        states::StateError::Storage(e) => Error::Storage(e),
        // Retryable, as a node at its limits is: the writes that got in the way will pass.
        busy @ states::StateError::Busy(_) => Error::Busy(busy.to_string()),
        other => internal(other),
    }
}

impl Replica {
    /// Opens the replica over `engine`: loads or mints its id and resumes its log position.
    pub fn open(config: Config, engine: Arc<dyn Engine>) -> Result<Arc<Replica>, StorageError> {
        crate::metrics_export::prometheus();
        let run = begin_run_of(&config, engine.as_ref())?;
        let id = run.id;
        let (last_seqs, mut newest) = resume_own_log(engine.as_ref(), id)?;
        if let Some(old) = run.replaced {
            tracing::warn!(
                node_id = %id, previous_id = %old, reason = run.reason.as_deref().unwrap_or_default(),
                "starting a new log epoch under a fresh node id: the previous run may have lost writes it had already sent to peers"
            );
            // Timestamps issued under the old id are ours too: never go below them.
            newest = newest.max(resume_own_log(engine.as_ref(), old)?.1);
        }
        let mut clock = HlcClock::new(config.max_clock_drift_ms);
        // The newest timestamp is our own: no drift bound applies.
        let _ = clock.observe(newest, newest.wall_ms);
        clock.tick(clock::skewed_now_ms(config.clock_offset_ms));
        let clock = ClockState::new(clock);
        let frontier: VersionVector = [(id, clock.frontier())].into_iter().collect();
        let safe_times = Arc::new(SafeTimeBook::open(engine.clone(), id)?);
        let records: u64 = last_seqs.iter().sum();
        tracing::info!(node_id = %id, log_records = records, "node opened");
        // The audit log sits next to the data it speaks for; an in-memory node (no data directory)
        // logs its decisions to tracing only.
        let audit = config.data_dir.is_dir().then(|| config.data_dir.join("audit.log"));
        let residency = Arc::new(Residency::open(engine.clone(), &config.region, &config.node_name, audit)?);
        let auth = Arc::new(Auth::open(
            engine.clone(),
            config.auth.enabled,
            config.auth.admins.clone(),
            id.0,
            residency.shared_audit(),
        )?);
        let committer = GroupCommitter::start(engine.clone(), id, last_seqs, COMMIT_QUEUE_DEPTH, COMMIT_MAX_GROUP);
        let writer = Arc::new(Writer::new(committer));
        let visible = watch::channel(frontier).0;
        let live = Live {
            writer: writer.clone(),
            frontier: visible.subscribe(),
            safe_times: safe_times.clone(),
            residency: residency.clone(),
            max_clock_drift_ms: config.max_clock_drift_ms,
            clock_offset_ms: config.clock_offset_ms,
            key_caps: (config.limits.max_key_bytes, config.limits.max_merged_key_bytes),
            idempotency_ttl_ms: config.limits.idempotency_ttl_s.saturating_mul(1000),
        };
        Ok(Arc::new(Replica {
            sync_store: EngineSyncStore::live(engine.clone(), id, live),
            residency,
            auth,
            clock: Mutex::new(clock),
            visible,
            safe_times,
            writer,
            started: Instant::now(),
            client_connections: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            writes: tokio_util::task::TaskTracker::new(),
            origin_names: OnceLock::new(),
            last_census: Mutex::new(None),
            config,
            engine,
            id,
        }))
    }

    /// The node's data-residency rules and decisions.
    pub fn residency(&self) -> &Arc<Residency> {
        &self.residency
    }

    /// Client authentication on this node.
    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
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

    /// Key locks and the group committer (how replicated state enters storage next to local writes).
    pub fn writer(&self) -> &Arc<Writer> {
        &self.writer
    }

    /// The anti-entropy store over this node's storage (a clone of the one store; see
    /// [`EngineSyncStore`] on why there must be one).
    pub fn sync_store(&self) -> EngineSyncStore {
        self.sync_store.clone()
    }

    /// Tells causal timeouts how to name an origin (set once, by the region).
    pub fn name_origins_with(&self, names: OriginNames) {
        let _ = self.origin_names.set(names);
    }

    fn origin_name(&self, origin: NodeId) -> String {
        self.origin_names.get().and_then(|names| names(origin)).unwrap_or_else(|| origin.to_string())
    }

    /// Whether this node knows `origin` as a node whose writes it can ever hold: itself, or a member
    /// of the cluster (any region, removed members included: their writes stay real). A node that
    /// runs alone knows only itself.
    fn knows_origin(&self, origin: NodeId) -> bool {
        origin == self.id || self.origin_names.get().is_some_and(|names| names(origin).is_some())
    }

    /// Whether this node runs alone (no region named its origins): then no origin but itself can
    /// ever become known, and waiting for one cannot help.
    fn runs_alone(&self) -> bool {
        self.origin_names.get().is_none()
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

    /// Whether [`Replica::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Why this node takes no more writes, if a commit failed (`store::commit`, "A failed commit
    /// fences the node").
    pub fn storage_failure(&self) -> Option<&str> {
        self.writer.committer().fenced()
    }

    /// Stops taking writes because storage failed outside a commit (a periodic WAL sync).
    pub fn fence_storage(&self, reason: &str) {
        self.writer.committer().fence(reason);
        self.require_new_epoch();
    }

    /// Ends the run: records, after a last WAL sync, that every write of this node is durable, so
    /// the next start keeps the node's id (`store/epoch.rs`). A run whose storage failed is not
    /// clean: under `relaxed` durability it leaves the next start a new epoch to begin instead.
    /// Call once no write can start ([`Replica::wait_for_writes`]).
    pub fn end_run(&self) -> Result<(), StorageError> {
        if self.storage_failure().is_some() {
            self.require_new_epoch();
            return Ok(());
        }
        if let Err(e) = self.engine.sync_wal() {
            self.require_new_epoch();
            return Err(e);
        }
        crate::store::epoch::mark_clean_stop(self.engine.as_ref())
    }

    /// Under `relaxed` durability, a failed storage may have dropped writes already sent to peers:
    /// leave the next start a file asking for a new log epoch (best effort: the marker of this
    /// unclean run asks for one after a reboot anyway).
    pub(crate) fn require_new_epoch(&self) {
        if self.engine.durability() != Durability::Relaxed || !self.config.data_dir.is_dir() {
            return;
        }
        let path = self.config.data_dir.join(crate::store::epoch::EPOCH_REQUIRED_FILE);
        if let Err(e) = std::fs::write(&path, b"the storage failed under relaxed durability\n") {
            tracing::error!(path = %path.display(), error = %e, "could not ask the next start for a new log epoch");
        }
    }

    /// Waits until every write already started is durable (or failed). Call after
    /// [`Replica::begin_shutdown`].
    pub async fn wait_for_writes(&self) {
        self.writes.close();
        self.writes.wait().await;
    }

    /// A key's whole state, encoded as peers receive it (what a quorum read's replica answers with).
    pub fn stored_state(&self, data_key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.load_stored(data_key)?.map(|stored| layout::encode_stored(&stored)))
    }

    /// A key's state, decoded.
    pub fn load_entry(&self, data_key: &[u8]) -> Result<Option<Entry>, Error> {
        Ok(self.load_stored(data_key)?.map(|stored| stored.entry))
    }

    /// A key's whole state with its dependency vector (a set kept per element is assembled).
    pub fn load_stored(&self, data_key: &[u8]) -> Result<Option<Stored>, Error> {
        states::load_whole(self.engine.as_ref(), data_key).map_err(state_error)
    }

    /// The packed HLC up to which this node holds `origin`'s writes to `partition`.
    pub fn known_safe(&self, partition: u16, origin: NodeId) -> u64 {
        self.safe_times.known_safe(partition, origin)
    }

    /// What this node can vouch for about `origin`'s log, per partition it knows something of.
    pub fn vouch_for(&self, origin: NodeId) -> Vec<(u16, SafeReport)> {
        (0..layout::PARTITIONS).filter_map(|p| self.safe_times.vouch(p, origin).map(|report| (p, report))).collect()
    }

    /// Takes in what another node says about an origin's log of `partition`.
    pub fn take_report(&self, partition: u16, report: SafeReport) {
        self.safe_times.take_report(partition, report);
    }

    /// Takes in `from`'s reports about its own log: its frontier, and per partition the last
    /// durable position of its log there (what [`Replica::own_reports`] says on `from`).
    pub fn take_reports_of(&self, from: NodeId, (safe, seqs): &(u64, Vec<u64>)) {
        self.safe_times.take_all_reports_of(from, *safe, seqs);
    }

    /// Takes in `from`'s compact reports: its frontier `safe` and `(partition, position)` for the
    /// partitions whose position changed since its last reports (`full`: for every partition).
    /// Returns whether this node held the earlier reports the changes apply to; if not, only the
    /// named partitions were reported and `from` should send all of them next time.
    pub fn take_compact_reports_of(
        &self,
        from: NodeId,
        safe: u64,
        full: bool,
        base: u64,
        changed: &[(u16, u64)],
    ) -> bool {
        // "Full" must name every partition once: a partition left out would read as no writes.
        let names_all = changed.len() == usize::from(layout::PARTITIONS)
            && changed.iter().enumerate().all(|(i, (p, _))| usize::from(*p) == i);
        if full && names_all {
            let mut seqs = vec![0; usize::from(layout::PARTITIONS)];
            for &(partition, seq) in changed {
                if let Some(held) = seqs.get_mut(usize::from(partition)) {
                    *held = seq;
                }
            }
            self.safe_times.take_all_reports_of(from, safe, &seqs);
            return true;
        }
        if full {
            // Malformed: take only what it names, and ask for all again.
            self.safe_times.take_changed_reports_of(from, safe, u64::MAX, changed);
            return false;
        }
        self.safe_times.take_changed_reports_of(from, safe, base, changed)
    }

    /// Persists the safe-time knowledge gained since the last call (one small batch; blocks).
    pub fn persist_safe_times(&self) -> Result<(), StorageError> {
        self.safe_times.persist()
    }

    /// Every `interval` until `shutdown`: [`Replica::persist_safe_times`], off the reactor.
    pub async fn persist_safe_times_every(
        self: Arc<Self>,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            let replica = self.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || replica.persist_safe_times()).await {
                tracing::warn!(error = %e, "could not persist safe times");
            }
        }
    }

    /// What this node says about its own log of `partition`: its frontier, taken first, then the
    /// partition's last durable position — every write it timestamped at or below the frontier
    /// is durable, so it sits at or below that position.
    pub fn own_report(&self, partition: u16) -> SafeReport {
        let safe = self.visible.borrow().get(self.id);
        SafeReport { origin: self.id, seq: self.writer.committer().last_durable_seq(partition), safe }
    }

    /// [`Replica::own_report`] for every partition at once (one frontier): gossip carries it, so
    /// causal reads elsewhere need not wait for this node's next write to a partition it is idle in.
    pub fn own_reports(&self) -> (u64, Vec<u64>) {
        let safe = self.visible.borrow().get(self.id);
        let committer = self.writer.committer();
        (safe, (0..layout::PARTITIONS).map(|p| committer.last_durable_seq(p)).collect())
    }

    /// Runs a `ListKeys` request over this node's own keys only.
    pub async fn list_local(self: &Arc<Self>, request: &RequestV1) -> Result<Reply, Error> {
        let Operation::ListKeys { namespace, prefix, start_after, limit } = request.op.clone() else {
            return Err(Error::BadRequest("not a key listing".into()));
        };
        meridian_client::proto::validate_namespace(&namespace).map_err(|e| Error::BadRequest(e.to_string()))?;
        let limit = limit.clamp(1, self.config.limits.max_list_keys) as usize;
        let replica = self.clone();
        let (keys, next) =
            tokio::task::spawn_blocking(move || replica.list_keys(&namespace, &prefix, start_after.as_deref(), limit))
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
    ) -> Result<(Vec<KeyInfo>, Option<String>), Error> {
        let ns_prefix = layout::namespace_prefix(namespace);
        let mut range_prefix = ns_prefix.clone();
        range_prefix.extend_from_slice(prefix.as_bytes());
        let end = layout::prefix_end(&range_prefix);
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
            let (exists, crdt_type) = states::presence_in_value(data_key, value).map_err(state_error)?;
            last_name = Some(name.clone());
            if exists {
                keys.push(KeyInfo { name, crdt_type });
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
    pub fn status(&self) -> Result<NodeStatus, Error> {
        Ok(NodeStatus {
            node_id: self.id,
            name: self.config.node_name.clone(),
            region: self.config.region.clone(),
            zone: self.config.zone.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            keys_estimate: self.engine.estimate_keys(Space::Data).map_err(internal)?,
            log_entries: self.writer.committer().committed_records(),
            version_vector: self.version_vector(),
            durability: match self.engine.durability() {
                Durability::Fsync => "fsync".into(),
                Durability::Relaxed => "relaxed".into(),
            },
            client_connections: self.client_connections.load(Ordering::Relaxed),
        })
    }

    /// What the node's storage holds on disk (`Operation::Storage`). Blocking: it lists the data
    /// directory.
    pub fn storage_report(&self) -> Result<StorageReport, Error> {
        let mut spaces = Vec::new();
        for space in Space::ALL {
            let usage = self.engine.space_usage(space)?;
            spaces.push(SpaceReport {
                name: space.name().to_string(),
                sst_bytes: usage.sst_bytes,
                live_bytes_estimate: usage.live_bytes_estimate,
                memtable_bytes: usage.memtable_bytes,
                keys_estimate: usage.keys_estimate,
            });
        }
        Ok(StorageReport {
            format_version: u32::from(crate::storage::FORMAT_VERSION),
            spaces,
            wal_bytes: self.engine.wal_bytes()?,
            dir_bytes: directory_bytes(&self.config.data_dir),
        })
    }

    /// Keeps what a data census pass counted, as of now.
    pub fn record_census(&self, census: &crate::store::census::Census) {
        let report = census.report(clock::now_ms());
        *self.last_census.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(report);
    }

    /// What the last data census pass counted; `None` before the first one ended.
    pub fn last_census(&self) -> Option<meridian_client::proto::CensusReport> {
        self.last_census.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Deletes idempotency records older than `ttl_ms` (the configured TTL, or less while the
    /// records are over their byte budget); scans at most `budget` records from `cursor`. Returns
    /// where to resume (`None`: wrapped around) and the records it kept: summed over a whole sweep,
    /// what the records take without waiting for RocksDB to compact the deleted ones away.
    pub fn expire_idempotency_records(
        &self,
        cursor: Option<Vec<u8>>,
        budget: usize,
        ttl_ms: u64,
    ) -> Result<SweepStep, StorageError> {
        let start = cursor.unwrap_or_default();
        let records = self.engine.scan(Space::Idempotency, &start, None, budget)?;
        let cutoff = clock::now_ms().saturating_sub(ttl_ms);
        let mut batch = Batch::default();
        let (mut kept_records, mut kept_bytes) = (0, 0);
        for (key, value) in &records {
            let expired = match layout::decode::<IdempotencyRecord>(value) {
                Ok(IdempotencyRecord::V1 { created_ms, .. }) => created_ms < cutoff,
                Err(_) => true,
            };
            if expired {
                batch.delete(Space::Idempotency, key.clone());
            } else {
                kept_records += 1;
                kept_bytes += (key.len() + value.len()) as u64;
            }
        }
        if !batch.is_empty() {
            self.engine.write(batch)?;
        }
        let next =
            if records.len() < budget { None } else { records.last().map(|(k, _)| [k.as_slice(), &[0]].concat()) };
        Ok(SweepStep { next, kept_records, kept_bytes })
    }
}

/// What one step of the idempotency sweep did ([`Replica::expire_idempotency_records`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepStep {
    /// Where the next step starts (`None`: the sweep wrapped around).
    pub next: Option<Vec<u8>>,
    /// Records the step kept (not expired).
    pub kept_records: u64,
    /// Their bytes, keys and values.
    pub kept_bytes: u64,
}

/// Where this node's own log of each partition ends, and the newest timestamp in those records: a
/// reopened node resumes each partition's log after its last record, and its clock after the
/// newest timestamp, so a wall clock that went back across a restart cannot make it issue
/// timestamps below ones it issued before.
/// Starts this run's log epoch (`store/epoch.rs`): the boot it runs in, its durability, and
/// whether the previous run's storage failed (a file in the data directory, removed once acted on).
fn begin_run_of(config: &Config, engine: &dyn Engine) -> Result<crate::store::epoch::Run, StorageError> {
    use crate::store::epoch::{self, RunStart, EPOCH_REQUIRED_FILE};
    let boot_id = if config.storage.boot_id.is_empty() {
        epoch::current_boot_id()
    } else {
        tracing::warn!(boot_id = %config.storage.boot_id, "storage.boot_id is set: a test knob; a fixed value hides reboots from the log-epoch check");
        Some(config.storage.boot_id.clone())
    };
    let required = config.data_dir.join(EPOCH_REQUIRED_FILE);
    let start = RunStart {
        // A node alone has no peer holding its log: a reused position harms nobody, and a new id
        // would make every session token naming the old one unknown here.
        replicated: config.peer.listen.is_some(),
        relaxed: engine.durability() == Durability::Relaxed,
        boot_id: boot_id.as_deref(),
        epoch_required: required.exists(),
    };
    let run = epoch::begin_run(engine, &start)?;
    if start.epoch_required {
        std::fs::remove_file(&required)?;
    }
    Ok(run)
}

fn resume_own_log(engine: &dyn Engine, id: NodeId) -> Result<(Vec<u64>, Hlc), StorageError> {
    let mut last_seqs = vec![0u64; usize::from(layout::PARTITIONS)];
    let mut newest = Hlc::default();
    for partition in 0..layout::PARTITIONS {
        let start = layout::log_key(partition, id, 0);
        let end = layout::log_key(partition, id, u64::MAX);
        if let Some((key, value)) = engine.last_in_range(Space::Log, &start, &end)? {
            if let Some((_, _, seq)) = layout::parse_log_key(&key) {
                last_seqs[usize::from(partition)] = seq;
            }
            let (_, ts) = layout::decode::<LogRecord>(&value)
                .map_err(|e| StorageError::Corrupt(format!("log record of partition {partition}: {e}")))?
                .into_parts();
            newest = newest.max(ts);
        }
    }
    Ok((last_seqs, newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::storage::MemoryEngine;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frontier_stays_below_writes_in_flight() {
        let node = Replica::open(Config::default(), Arc::new(MemoryEngine::new())).unwrap();
        let first = node.issue_ts();
        let second = node.issue_ts();
        assert!(first.ts < second.ts);
        drop(second);
        let frontier = node.version_vector().get(node.id());
        assert!(frontier < first.ts.pack(), "a write still in flight bounds the frontier");
        drop(first);
        assert!(node.version_vector().get(node.id()) >= node.clock.lock().unwrap().clock.last().pack());
    }

    use meridian_client::proto::{CausalToken, Consistency, Key};
    use meridian_crdt::Mutation;

    const MEMBER: NodeId = NodeId(77);
    const STRANGER: NodeId = NodeId(0xdead_beef);

    /// A replica with a 200 ms causal wait; `in_region`: it knows `MEMBER` as a member (as a region
    /// tells it), else it runs alone.
    fn causal_replica(in_region: bool) -> Arc<Replica> {
        let mut config = Config::default();
        config.limits.causal_wait_ms = 200;
        let node = Replica::open(config, Arc::new(MemoryEngine::new())).unwrap();
        if in_region {
            node.name_origins_with(Box::new(|origin| (origin == MEMBER).then(|| "m (elsewhere)".to_string())));
        }
        node
    }

    async fn add(node: &Arc<Replica>, key: &Key, token: CausalToken, level: Consistency) -> Result<Reply, Error> {
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).acquire_owned().await.unwrap();
        let change = Change::Mutate(Mutation::SetAdd { members: vec![b"m".to_vec()] });
        node.write(key.clone(), change, None, token, level, permit).await
    }

    fn token(entries: &[(NodeId, u64)]) -> CausalToken {
        CausalToken(entries.iter().copied().collect())
    }

    /// Truncation keeps the newest record of the node's own log: a reopened node resumes its
    /// positions after it instead of handing one out twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_own_log_resumes_after_its_newest_record() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let key: Key = "ns/truncated".parse().unwrap();
        let p = layout::partition_of(&layout::data_key(&key));
        let node = Replica::open(Config::default(), engine.clone()).unwrap();
        for _ in 0..5 {
            add(&node, &key, CausalToken::default(), Consistency::Eventual).await.unwrap();
        }
        let id = node.id();
        let deleted = node.sync_store().truncate_older_than(u64::MAX, usize::MAX).unwrap().deleted;
        assert_eq!(deleted, 4);
        drop(node);
        let node = Replica::open(Config::default(), engine.clone()).unwrap();
        assert_eq!(node.id(), id);
        add(&node, &key, CausalToken::default(), Consistency::Eventual).await.unwrap();
        let own: Vec<u64> = engine
            .scan(Space::Log, &layout::log_key(p, id, 0), Some(&layout::log_key(p, id, u64::MAX)), 100)
            .unwrap()
            .iter()
            .map(|(k, _)| layout::parse_log_key(k).unwrap().2)
            .collect();
        assert_eq!(own, [5, 6], "position 6 is new, not a reused 1");
    }

    /// The positions of `origin`'s records of partition `p` in `engine`.
    fn log_of(engine: &dyn Engine, p: u16, origin: NodeId) -> Vec<u64> {
        engine
            .scan(Space::Log, &layout::log_key(p, origin, 0), Some(&layout::log_key(p, origin, u64::MAX)), 100)
            .unwrap()
            .iter()
            .map(|(k, _)| layout::parse_log_key(k).unwrap().2)
            .collect()
    }

    /// Under `relaxed`, positions 3..5 were handed out (and, in a region, pushed) but not synced
    /// when the power went. Restarted in the same boot (the harness pretending nothing was lost)
    /// the node hands position 3 out again — the divergence this guards against; in another boot
    /// it starts a new log epoch under a fresh id. A clean stop keeps the id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relaxed_node_that_lost_power_never_hands_out_a_position_twice() {
        use crate::storage::faulty::PowerLossEngine;
        let config_in = |boot: &str| {
            let mut config = Config::default();
            config.storage.boot_id = boot.into();
            config.peer.listen = Some("127.0.0.1:1".parse().unwrap()); // a node of a region (not started)
            config
        };
        let key: Key = "ns/power".parse().unwrap();
        let p = layout::partition_of(&layout::data_key(&key));
        let engine = Arc::new(PowerLossEngine::new());
        let node = Replica::open(config_in("b1"), engine.clone()).unwrap();
        let old = node.id();
        for written in 1..=5 {
            add(&node, &key, CausalToken::default(), Consistency::Eventual).await.unwrap();
            if written == 2 {
                engine.sync_wal().unwrap();
            }
        }
        assert_eq!(log_of(engine.as_ref(), p, old), [1, 2, 3, 4, 5]);
        drop(node); // no clean stop: the power went

        let same_boot = Arc::new(engine.power_loss(0).unwrap());
        let node = Replica::open(config_in("b1"), same_boot.clone()).unwrap();
        add(&node, &key, CausalToken::default(), Consistency::Eventual).await.unwrap();
        assert_eq!(node.id(), old, "a process crash keeps the id");
        assert_eq!(log_of(same_boot.as_ref(), p, old), [1, 2, 3], "position 3 handed out a second time");
        drop(node);

        let rebooted = Arc::new(engine.power_loss(0).unwrap());
        let node = Replica::open(config_in("b2"), rebooted.clone()).unwrap();
        add(&node, &key, CausalToken::default(), Consistency::Eventual).await.unwrap();
        let new = node.id();
        assert_ne!(new, old, "a new log epoch");
        assert_eq!(log_of(rebooted.as_ref(), p, old), [1, 2], "the old log is frozen");
        assert_eq!(log_of(rebooted.as_ref(), p, new), [1]);
        assert_eq!(crate::store::epoch::predecessors(rebooted.as_ref()).unwrap(), [old]);
        let (_, newest_of_old) = resume_own_log(rebooted.as_ref(), old).unwrap();
        let (_, newest_of_new) = resume_own_log(rebooted.as_ref(), new).unwrap();
        assert!(newest_of_new > newest_of_old, "timestamps go on after the old id's");

        // A clean stop keeps the new id, even across a reboot.
        node.end_run().unwrap();
        drop(node);
        let node = Replica::open(config_in("b3"), Arc::new(rebooted.power_loss(0).unwrap())).unwrap();
        assert_eq!(node.id(), new);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_naming_an_unknown_origin_does_not_poison_the_key() {
        let node = causal_replica(true);
        let key: Key = "ns/poisoned".parse().unwrap();
        // A session token naming an origin no member is (at HLC 5): the write is taken (a region
        // may not have heard of a member yet) but the entry is not recorded as a dependency.
        let reply = add(&node, &key, token(&[(STRANGER, 5)]), Consistency::Eventual).await.unwrap();
        assert_eq!(reply.causal_token.0.get(STRANGER), 5, "the session keeps what it sent");
        let stored = node.load_stored(&layout::data_key(&key)).unwrap().unwrap();
        assert_eq!(stored.deps.get(STRANGER), 0, "not recorded: {:?}", stored.deps);
        // Every later causal read of the key keeps working.
        for _ in 0..3 {
            let (entry, _) = node.read_entry(&key, CausalToken::default(), Consistency::Causal).await.unwrap();
            assert!(entry.is_some_and(|e| e.exists()));
        }
        // The session that sent the stranger waits for it (bounded) and is told why.
        let err = node.read_entry(&key, reply.causal_token, Consistency::Causal).await.unwrap_err();
        assert!(matches!(&err, Error::CausalTimeout(m) if m.contains("not a member")), "{err:?}");
        // A member's entry is recorded.
        let other: Key = "ns/member".parse().unwrap();
        add(&node, &other, token(&[(MEMBER, 5)]), Consistency::Eventual).await.unwrap();
        assert_eq!(node.load_stored(&layout::data_key(&other)).unwrap().unwrap().deps.get(MEMBER), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_no_node_could_have_issued_are_bad_requests() {
        let key: Key = "ns/k".parse().unwrap();
        let far = Hlc { wall_ms: clock::now_ms() + 10 * 60_000, logical: 0 }.pack();
        let region = causal_replica(true);
        for bad in [token(&[(MEMBER, far)]), token(&[(region.id(), far)])] {
            for level in [Consistency::Eventual, Consistency::Causal] {
                let err = add(&region, &key, bad.clone(), level).await.unwrap_err();
                assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
            }
            let err = region.read_entry(&key, bad, Consistency::Causal).await.unwrap_err();
            assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
        }
        assert!(region.load_stored(&layout::data_key(&key)).unwrap().is_none(), "nothing was written");
        // A node alone knows no origin but itself: a token naming another is from another cluster.
        let alone = causal_replica(false);
        let err = add(&alone, &key, token(&[(STRANGER, 5)]), Consistency::Eventual).await.unwrap_err();
        assert!(matches!(&err, Error::BadRequest(m) if m.contains("runs alone")), "{err:?}");
        let err = alone.read_entry(&key, token(&[(STRANGER, 5)]), Consistency::Causal).await.unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
        add(&alone, &key, CausalToken::default(), Consistency::Eventual).await.unwrap();
        let (entry, _) = alone.read_entry(&key, CausalToken::default(), Consistency::Causal).await.unwrap();
        assert!(entry.is_some());
    }
}
