//! The node side of anti-entropy: [`EngineSyncStore`], the [`SyncStore`] of a node's storage engine.
//!
//! The sans-IO core (`meridian_replication::antientropy`) decides *what* two replicas exchange; this
//! module reads and writes it in the node's record layout (`crate::layout`): the per-partition
//! delta log `[partition][origin][seq]`, the max-merged vectors `vv/[partition][origin]`, and the
//! keys' states in `Data`.
//!
//! # What travels, and how it is encoded
//!
//! | field | bytes |
//! |---|---|
//! | [`SyncRecord::key`], [`KeyState::key`] | the **data key** (`layout::data_key`): `[ns len: u8][ns][name]` |
//! | [`SyncRecord::delta`] | `layout::encode_delta(delta, kept)`, a *versioned* entry: `StoredEntry::V2` (the delta and its write's dependencies), or `V3` (also the write's idempotency record, kept where the record is applied; protocol version 5, stripped for older peers) |
//! | [`KeyState::state`] | the key's `Data` value as stored: `layout::encode_stored(state)` (`StoredEntry::V2`; `V1` still decodes) |
//! | [`SyncRecord::hlc`] | the record's `ts`, [`Hlc::pack`]ed |
//!
//! * The key is the data key because it is what the trait documents ("the data key written"), what
//!   [`layout::partition_of`] and the fallback's [`key_hash`] are computed over, and because it is
//!   invertible: the length-prefixed namespace splits it back into the `Key` the node's
//!   `LogRecord::V2` carries ([`parse_data_key`], which also validates it like a client's key).
//! * Deltas and states travel inside the `StoredEntry` enum rather than as a bare `Entry`: every
//!   stored record and wire value is a versioned enum (ARCHITECTURE.md), and a state then ships as
//!   the stored bytes themselves — no decode/re-encode to serve the fallback, and the digest of a key
//!   is the [`entry_hash`] of exactly the bytes a peer would receive. The codec's encoding of an
//!   entry is deterministic, so equal states stored the same way give equal digests; a state whose
//!   encoding is not canonical costs a spurious fetch, never correctness (a join is always safe).
//!
//! # Writes
//!
//! Each mutating call ([`SyncStore::apply_remote`], [`SyncStore::apply_states`]) is **one atomic
//! [`Batch`]**, as the trait requires: the joined states, the log records under their *origin's*
//! positions and the vector raises land together or not at all, so the vector never claims a record
//! whose effect is not in `Data`, after any crash. A batch is bounded by what one message carries
//! (`max_records`, `max_bytes`). Calls on the same partition are serialised by a per-partition lock
//! shared by every clone of the store (see [`EngineSyncStore::new`]). Everything is decoded, checked
//! and joined in memory first; any refusal returns an error with nothing written.
//!
//! Next to a live node ([`EngineSyncStore::live`]) the read-join-write runs under the touched
//! keys' locks and commits through the node's group committer ([`Writer::apply_under_key_locks`]), so a
//! remote join never races a local write of the same key (`sync_next_to_live_writes_loses_no_update`
//! fails without it). Those calls block: drive the store from a blocking thread.
//!
//! Refused (nothing of the call applied): a record whose origin is not a member of the cluster
//! ([`SyncStoreError::UnknownOrigin`], once the region set [`EngineSyncStore::check_origins_with`]) or
//! whose timestamp is beyond `max_clock_drift_ms` ahead of this node's clock
//! ([`SyncStoreError::ClockDrift`], next to a live node), a record that does not extend the vector gap-free
//! ([`SyncStoreError::Gap`]), an undecodable key or delta ([`SyncStoreError::Malformed`]), a key of
//! another partition ([`SyncStoreError::WrongPartition`]), a delta or state whose type conflicts
//! with the key's ([`SyncStoreError::TypeConflict`]), and any record of **this node's own origin**
//! beyond its own vector ([`SyncStoreError::OwnOriginAhead`]). The last one protects the group
//! committer: it hands out this node's positions from an in-memory counter resumed at open from the
//! node's own log, so a remote copy of "our" seq `n + 1` stored here would be overwritten by the next
//! local write with different content at the same position. A peer can only hold more of our log
//! than we do if we lost acknowledged writes (relaxed durability and a power loss); such a node
//! starts a new log epoch under a fresh id (`store/epoch.rs`), so its old id's records are then
//! foreign and come back like any other origin's. Refusing here keeps a fork visible should it
//! happen anyway (a node alone, which keeps its id, or a marker that says a clean stop wrongly).
//!
//! Remote records of other origins never touch the committer's state: it only counts positions of
//! `origin == node id`, and `Replica::open` resumes only from the node's own log range.
//!
//! # The log floor after a fallback
//!
//! When a digest fallback raises the vector of an origin past records this replica never received,
//! those positions must not be offered to others. Instead of deleting anything, the raise writes a
//! max-merged floor marker (`Meta` key [`log_floor_key`] = `logfloor/[partition][origin]`, 8 bytes BE)
//! in the same batch; [`SyncStore::log_floor`] never answers below it. Records below the marker that
//! were applied before the raise stay in the log until log truncation collects them
//! (`store/log_truncation.rs` starts each cut where the previous one ended, not at the floor).
//!
//! # Scans
//!
//! A partition's keys are spread over the whole `Data` space (partition = hash % 256), so the
//! fallback reads them through [`Space::PartitionIndex`], keyed `(partition, key hash, data key)`
//! and written by [`Batch`] beside every `Data` put and delete (whatever the code path: the node's
//! own writes, replicated joins, purges, restores; an overwrite of a key read under its lock finds
//! its entry there and writes none). [`SyncStore::range_digests`] walks the part of
//! the partition its ranges span, [`SyncStore::keys_in_range`] walks from its range's first key
//! (or the page's last) and stops after a page: a call costs the keys it covers, one point read
//! each, not every key of the node. Incremental per-bucket digests, which
//! [`RangeDigest::remove_entry_hash`] is designed for, would make digests free of reads; they are
//! not built. Each page is one engine iterator, not one snapshot of the whole scan; that is
//! enough, because states only grow and each key's state is read atomically (a mixed view costs
//! at most a spurious difference).
//!
//! # Next to the node's write path
//!
//! The replica joins a local write into a key's state under the key's lock stripe and commits it
//! through the group committer; a live store ([`EngineSyncStore::live`]) does the same for every
//! replicated write, so a remote apply racing a local write to the same key cannot lose either join.
//! A bare store ([`EngineSyncStore::new`]) writes the engine directly: use it only while no node
//! serves writes over that engine (tests, offline tools).

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use meridian_client::proto::Key;
use meridian_crdt::{CrdtError, Hlc, NodeId, VersionVector};
use meridian_replication::antientropy::{
    entry_hash, key_hash, HashRange, KeyPage, KeyState, LogRecord as SyncRecord, PartitionId, RangeDigest, SyncStore,
};

use crate::layout::{self, log_floor_key, parse_data_key, vv_prefix, LogContent, LogRecord, Stored, PARTITIONS};
use crate::residency::Residency;
use crate::states::{self, StateError, StateView};
use crate::storage::{decode_u64_be, partition_index, Batch, Engine, Space, StorageError};
use crate::store::safe_times::SafeTimeBook;
use crate::store::stability::PeerVectors;
use crate::store::writer::Writer;
use tokio::sync::watch;

/// `Data` entries fetched per page when scanning a partition's keys.
const DATA_PAGE: usize = 1024;
/// Log records fetched per page by [`SyncStore::read_log`] (small: the byte budget often stops a
/// page early, and records may be large).
const LOG_PAGE: usize = 64;

/// How errors name a key (see [`layout::show_data_key`]).
fn show(data_key: &[u8]) -> String {
    layout::show_data_key(data_key)
}

impl From<StateError> for SyncStoreError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Storage(e) => SyncStoreError::Storage(e),
            StateError::Corrupt { what, detail } => SyncStoreError::Corrupt { what, detail },
            busy @ StateError::Busy(_) => {
                SyncStoreError::Corrupt { what: "a set read whole".into(), detail: busy.to_string() }
            }
        }
    }
}

/// What [`EngineSyncStore`] fails with.
#[derive(Debug, thiserror::Error)]
pub enum SyncStoreError {
    /// The engine failed (I/O, RocksDB).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A record stored here does not decode: local corruption.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoder's complaint.
        detail: String,
    },
    /// A partition id outside the keyspace.
    #[error("partition {0} does not exist (the keyspace has {PARTITIONS})")]
    NoSuchPartition(PartitionId),
    /// A key or delta or state from the peer that does not decode.
    #[error("{partition}: malformed {what} from the peer: {detail}")]
    Malformed {
        /// The partition.
        partition: PartitionId,
        /// Which field.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A key the peer shipped for this partition that belongs to another.
    #[error("{partition}: key {key} belongs to partition {actual}")]
    WrongPartition {
        /// The partition of the call.
        partition: PartitionId,
        /// The key.
        key: String,
        /// Its actual partition.
        actual: u16,
    },
    /// A record that does not extend the vector gap-free (the session never passes one).
    #[error("{partition}: record {seq} of origin {origin} does not follow {have}")]
    Gap {
        /// The partition.
        partition: PartitionId,
        /// The origin.
        origin: NodeId,
        /// What the vector (or an earlier record of the call) holds.
        have: u64,
        /// The record's seq.
        seq: u64,
    },
    /// A delta or state whose CRDT type differs from the key's here.
    #[error("{partition}: key {key}: {source}")]
    TypeConflict {
        /// The partition.
        partition: PartitionId,
        /// The key.
        key: String,
        /// The join's refusal.
        source: CrdtError,
    },
    /// A record claims an origin that is not a member of the cluster: no node of the cluster wrote
    /// it (see [`EngineSyncStore::check_origins_with`]).
    #[error("{partition}: record {seq} claims origin {origin}, which is not a member of the cluster")]
    UnknownOrigin {
        /// The partition.
        partition: PartitionId,
        /// The origin claimed.
        origin: NodeId,
        /// The record's seq.
        seq: u64,
    },
    /// A record's timestamp is further ahead of this node's clock than `max_clock_drift_ms`.
    #[error(
        "{partition}: record {seq} of origin {origin} is timestamped {ahead_ms} ms ahead of this node's clock \
         (max_clock_drift_ms is {max_drift_ms})"
    )]
    ClockDrift {
        /// The partition.
        partition: PartitionId,
        /// The record's origin.
        origin: NodeId,
        /// The record's seq.
        seq: u64,
        /// How far ahead of this node's clock its HLC is.
        ahead_ms: u64,
        /// The bound.
        max_drift_ms: u64,
    },
    /// The peer holds records of this node's own log beyond what this node holds.
    #[error(
        "{partition}: the peer has seq {got} of this node's own log, which ends at {have} here \
         (acknowledged writes lost here, e.g. relaxed durability and a power loss)"
    )]
    OwnOriginAhead {
        /// The partition.
        partition: PartitionId,
        /// This node's own vector entry.
        have: u64,
        /// What the peer shipped or claimed.
        got: u64,
    },
}

impl SyncStoreError {
    /// Whether the peer's data caused the refusal (the session reports store errors as
    /// `SyncError::Store`, so a driver that penalises peers asks here). A type conflict counts as the
    /// peer's, though two honest replicas produce one when clients write different types to the same
    /// key concurrently — the data model cannot merge those.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            SyncStoreError::Malformed { .. }
                | SyncStoreError::WrongPartition { .. }
                | SyncStoreError::Gap { .. }
                | SyncStoreError::TypeConflict { .. }
                | SyncStoreError::UnknownOrigin { .. }
                | SyncStoreError::ClockDrift { .. }
        )
    }

    /// The `reason` label this refusal is counted under in `meridian_peer_refused_total`, for the
    /// refusals that are a peer's claim found false.
    pub fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            SyncStoreError::UnknownOrigin { .. } => Some("unknown_origin"),
            SyncStoreError::ClockDrift { .. } => Some("clock_drift"),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, SyncStoreError>;

/// The states a call joins into, by data key: (as stored before, after the joins so far).
type Joined = HashMap<Vec<u8>, StateView>;

/// The [`SyncStore`] of a node's storage engine (see the [module docs](self)).
///
/// Cheap to clone; clones share the engine and the per-partition locks that serialise mutating
/// calls. Every store writing the same engine must be a clone of one store: two stores made by
/// separate constructor calls do not serialise against each other.
#[derive(Clone)]
pub struct EngineSyncStore {
    engine: Arc<dyn Engine>,
    local: NodeId,
    /// The live node this store writes next to (none: a bare engine).
    live: Option<Live>,
    /// Told about records made durable here (the region's lag figures), once set.
    on_applied: Arc<OnceLock<ApplyObserver>>,
    /// Whether a node id is a member of the cluster (records of others are refused), once set.
    known_origin: Arc<OnceLock<OriginCheck>>,
    /// The peer this clone takes records from, whose own records pass the origin check even before
    /// its membership record arrives ([`EngineSyncStore::with_sender`]).
    sender: Option<NodeId>,
    /// The region of the peer this clone syncs with, when it is another region: scans for the
    /// digest fallback then see only keys that region may hold ([`EngineSyncStore::for_peer_region`]).
    peer_region: Option<Arc<str>>,
    /// Keys whose states a digest fallback from another region joined here, for the region to
    /// write back to this region's other replicas ([`EngineSyncStore::take_fetched_elsewhere`]).
    fetched_elsewhere: Arc<Mutex<FetchedKeys>>,
    /// What peers reported holding, shared by every clone ([`EngineSyncStore::peer_vectors`]).
    peer_vectors: Arc<PeerVectors>,
    locks: Arc<[Mutex<()>]>,
    /// An idempotency record to keep with the pushed write it is about, in the same batch
    /// ([`EngineSyncStore::keeping_idempotency`]).
    keeping: Option<Arc<KeptRecord>>,
}

/// An idempotency record that travels with a pushed write.
struct KeptRecord {
    /// The data key of the write.
    data_key: Vec<u8>,
    /// Its `Idempotency` key and encoded record.
    id: Vec<u8>,
    record: Vec<u8>,
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `(partition, data key)` pairs ([`EngineSyncStore::take_fetched_elsewhere`]).
type FetchedKeys = std::collections::BTreeSet<(u16, Vec<u8>)>;

/// Most keys [`EngineSyncStore::take_fetched_elsewhere`] keeps between two takes; more are dropped
/// (the region's own anti-entropy still carries them once vectors move).
const MAX_FETCHED_ELSEWHERE: usize = 100_000;

/// Says whether a node id is a member of the cluster (see [`EngineSyncStore::check_origins_with`]).
pub type OriginCheck = Box<dyn Fn(NodeId) -> bool + Send + Sync>;

/// Called with records made durable here (see [`EngineSyncStore::observe_applied`]).
pub type ApplyObserver = Box<dyn Fn(&[SyncRecord]) + Send + Sync>;

/// What a store next to a live node shares with it: how to write (key locks and group committer),
/// the node's causal frontier, its safe times and its residency rules. Handed down by the replica,
/// so the store needs nothing above it.
#[derive(Clone)]
pub struct Live {
    /// Key locks and the group committer.
    pub writer: Arc<Writer>,
    /// The node's causal frontier (its own entry is what [`SyncStore::safe_hlc`] answers).
    pub frontier: watch::Receiver<VersionVector>,
    /// What the node knows of other origins' logs.
    pub safe_times: Arc<SafeTimeBook>,
    /// The node's residency rules: every record is screened before it is stored.
    pub residency: Arc<Residency>,
    /// Records timestamped further ahead of this node's clock than this are refused
    /// (`max_clock_drift_ms`).
    pub max_clock_drift_ms: u64,
    /// This node's clock skew (`clock_offset_ms`, a test knob): "now" is the node's skewed clock.
    pub clock_offset_ms: i64,
    /// `limits.max_key_bytes` and `limits.max_merged_key_bytes`: a join that takes a key past
    /// either is stored all the same (refusing it would break convergence) and counted.
    pub key_caps: (usize, usize),
    /// `limits.idempotency_ttl_s` in ms: an idempotency record a shipped record carries that is
    /// older than this is not kept (the sweep would delete it; until then it would answer retries).
    pub idempotency_ttl_ms: u64,
}

impl std::fmt::Debug for EngineSyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSyncStore").field("local", &self.local).finish_non_exhaustive()
    }
}

impl EngineSyncStore {
    /// A store over `engine`, whose own origin (the node id in its `Meta`) is `local`.
    ///
    /// Without the running node it cannot know which of its own writes are still in flight, so
    /// [`SyncStore::safe_hlc`] is always 0 (no claim); use [`EngineSyncStore::live`] next to a
    /// running node.
    pub fn new(engine: Arc<dyn Engine>, local: NodeId) -> EngineSyncStore {
        let locks = (0..PARTITIONS).map(|_| Mutex::new(())).collect();
        EngineSyncStore {
            engine,
            local,
            live: None,
            on_applied: Arc::new(OnceLock::new()),
            known_origin: Arc::new(OnceLock::new()),
            sender: None,
            peer_region: None,
            fetched_elsewhere: Arc::new(Mutex::new(Default::default())),
            peer_vectors: Arc::new(PeerVectors::new()),
            locks,
            keeping: None,
        }
    }

    /// The store of a live node's engine: writes under its key locks and through its group
    /// committer, its causal frontier as safe time, records screened by its residency rules.
    /// The replica makes one and hands out clones of it (`Replica::sync_store`).
    pub fn live(engine: Arc<dyn Engine>, local: NodeId, live: Live) -> EngineSyncStore {
        EngineSyncStore { live: Some(live), ..EngineSyncStore::new(engine, local) }
    }

    /// What peers reported holding of each partition (anti-entropy offers and vector comparisons),
    /// for cutting the log below what its readers hold (`store/log_truncation.rs`).
    pub fn peer_vectors(&self) -> &PeerVectors {
        &self.peer_vectors
    }

    /// From now on, every clone of this store tells `observer` about records made durable here
    /// ahead of a gap (pushes). Set once; later calls are ignored.
    pub fn observe_applied(&self, observer: ApplyObserver) {
        let _ = self.on_applied.set(observer);
    }

    /// From now on, every clone of this store refuses records whose origin `known` does not know
    /// ([`SyncStoreError::UnknownOrigin`]; this node's own origin always passes). The region sets it
    /// to "a member of the cluster, tombstones included" — records of a removed node stay legitimate.
    /// Set once; later calls are ignored.
    pub fn check_origins_with(&self, known: OriginCheck) {
        let _ = self.known_origin.set(known);
    }

    /// This store, taking records from the authenticated peer `sender`: records of `sender`'s own
    /// origin pass the origin check (a node's first push may arrive before its membership record).
    pub fn with_sender(mut self, sender: NodeId) -> EngineSyncStore {
        self.sender = Some(sender);
        self
    }

    /// This store, keeping `record` (an encoded idempotency record, under `id`) with the pushed
    /// write of `data_key` it is about: in the batch that applies the write (or that finds it
    /// applied already), under the key's lock, unless a record is kept under `id` already (the first
    /// one wins, as on the coordinator); not at all if the write is screened out (residency).
    pub fn keeping_idempotency(mut self, data_key: Vec<u8>, id: Vec<u8>, record: Vec<u8>) -> EngineSyncStore {
        self.keeping = Some(Arc::new(KeptRecord { data_key, id, record }));
        self
    }

    /// The idempotency record to keep with `records` (screened), if one of them is its write.
    fn kept_with(&self, records: &[SyncRecord]) -> Option<&KeptRecord> {
        self.keeping.as_deref().filter(|kept| records.iter().any(|r| r.key == kept.data_key))
    }

    /// Adds each of `kept` to `batch` unless a record is kept under its id already (read under
    /// the keys' locks) or earlier in `kept`: the first one wins, as on the coordinator.
    fn put_kept<'a>(&self, batch: &mut Batch, kept: impl IntoIterator<Item = &'a KeptRecord>) -> Result<()> {
        let mut added = std::collections::HashSet::new();
        for kept in kept {
            if !added.contains(&kept.id) && self.engine.get(Space::Idempotency, &kept.id)?.is_none() {
                batch.put(Space::Idempotency, kept.id.clone(), kept.record.clone());
                added.insert(kept.id.clone());
            }
        }
        Ok(())
    }

    /// This store, syncing with a peer of `region`: when that is another region than this node's,
    /// the digest fallback's scans ([`SyncStore::range_digests`], [`SyncStore::keys_in_range`]) leave
    /// out the keys its residency rules keep from that region. Both sides leave out what the other
    /// may not hold, so their digests compare the keys both may hold: no digest of a restricted key
    /// leaves its regions, and a key only one side may hold does not make ranges differ forever.
    pub fn for_peer_region(mut self, region: &str) -> EngineSyncStore {
        let elsewhere = self.residency().is_some_and(|residency| residency.region() != region);
        self.peer_region = elsewhere.then(|| Arc::from(region));
        self
    }

    /// The keys whose states digest fallbacks from other regions joined here since the last call,
    /// by partition. A fallback between regions may join states without raising this node's
    /// vector (`Residency::raise_from`); this region's other replicas, whose vectors then match
    /// this one's, would never pull them, so the region writes them back to those replicas.
    pub fn take_fetched_elsewhere(&self) -> Vec<(u16, Vec<u8>)> {
        let mut fetched = self.fetched_elsewhere.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *fetched).into_iter().collect()
    }

    /// Queues keys for [`EngineSyncStore::take_fetched_elsewhere`] (again, after a failed
    /// write-back); beyond 100,000 queued keys they are dropped and counted.
    pub fn note_fetched_elsewhere(&self, keys: impl IntoIterator<Item = (u16, Vec<u8>)>) {
        let mut fetched = self.fetched_elsewhere.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if fetched.len() >= MAX_FETCHED_ELSEWHERE {
                metrics::counter!("meridian_sync_write_backs_dropped_total").increment(1);
                return;
            }
            fetched.insert(key);
        }
    }

    /// What a peer claims about the records it sends, checked before anything is stored: every
    /// origin is a member of the cluster, and no timestamp is further ahead of this node's clock
    /// than `max_clock_drift_ms` (a node with a broken or lying clock must not drag registers —
    /// last writer wins — and every causal frontier into the future). Each refusal is counted in
    /// `meridian_peer_refused_total{reason}`.
    fn check_claims(&self, partition: PartitionId, records: &[SyncRecord]) -> Result<()> {
        let refused = |error: SyncStoreError| {
            if let Some(reason) = error.refusal_reason() {
                metrics::counter!("meridian_peer_refused_total", "reason" => reason).increment(1);
            }
            Err(error)
        };
        if let Some(known) = self.known_origin.get() {
            if let Some(r) =
                records.iter().find(|r| r.origin != self.local && Some(r.origin) != self.sender && !known(r.origin))
            {
                return refused(SyncStoreError::UnknownOrigin { partition, origin: r.origin, seq: r.seq });
            }
        }
        if let Some(live) = &self.live {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                .saturating_add_signed(live.clock_offset_ms);
            let limit = now.saturating_add(live.max_clock_drift_ms);
            if let Some(r) = records.iter().find(|r| Hlc::unpack(r.hlc).wall_ms > limit) {
                return refused(SyncStoreError::ClockDrift {
                    partition,
                    origin: r.origin,
                    seq: r.seq,
                    ahead_ms: Hlc::unpack(r.hlc).wall_ms - now,
                    max_drift_ms: live.max_clock_drift_ms,
                });
            }
        }
        Ok(())
    }

    /// Makes records another replica pushed durable here (a write's fan-out or a replayed hint).
    ///
    /// Records that extend this replica's vector gap-free are applied as anti-entropy would apply
    /// them (logged under the origin's position, vector raised). Records that arrive ahead of a gap
    /// — pushes of one partition race each other — are joined into the keys' states without a log
    /// entry or vector raise: the write is durable here at once, and anti-entropy later ships the
    /// records in order (joining them again changes nothing).
    pub fn accept_pushed(&mut self, partition: PartitionId, records: &[SyncRecord]) -> Result<()> {
        match self.apply_remote(partition, records) {
            Err(SyncStoreError::Gap { .. }) => {
                self.store_ahead(partition, records)?;
                self.note_applied(records);
                // A push can fill a gap and leave another: a hint replay of [k+1, k+3] where k+2
                // was stored ahead by an earlier push. Its records are all logged now; raise the
                // vector over what the log holds gap-free, as `apply_remote` does once a gap fills
                // (else it stays at k until anti-entropy ships k+1 again).
                self.raise_over_logged(partition, records)
            }
            other => other,
        }
    }

    /// The highest position of `origin`'s log in partition `p` stored gap-free from `from` on
    /// (`from` itself when the next one is missing).
    fn logged_through(&self, p: u16, origin: NodeId, from: u64) -> Result<u64> {
        let mut seq = from;
        while let Some(next) = seq.checked_add(1) {
            if self.engine.get(Space::Log, &layout::log_key(p, origin, next))?.is_none() {
                break;
            }
            seq = next;
        }
        Ok(seq)
    }

    /// Raises the vector entry of each origin of `records` over the records of its log stored
    /// gap-free above it.
    fn raise_over_logged(&self, partition: PartitionId, records: &[SyncRecord]) -> Result<()> {
        let p = Self::check(partition)?;
        let _serial = self.lock(p);
        let origins: std::collections::BTreeSet<NodeId> = records.iter().map(|r| r.origin).collect();
        let mut raised = Vec::new();
        for origin in origins.into_iter().filter(|o| *o != self.local) {
            let held = self.vv_entry(p, origin)?;
            let seq = self.logged_through(p, origin, held)?;
            if seq > held {
                raised.push((origin, seq));
            }
        }
        if raised.is_empty() {
            return Ok(());
        }
        self.commit_under_locks(&[], || {
            let mut batch = Batch::new();
            for (origin, seq) in &raised {
                batch.max_u64(Space::Meta, layout::vv_key(p, *origin), *seq);
            }
            Ok(batch)
        })
    }

    /// Tells the observer (the region's lag figures) that `records` are durable here.
    fn note_applied(&self, records: &[SyncRecord]) {
        if let Some(observer) = self.on_applied.get() {
            observer(records);
        }
    }

    /// Joins records that arrived ahead of a gap into their keys' states and stores them under their
    /// origin's positions, without raising the vector: it claims only gap-free prefixes, and
    /// [`SyncStore::apply_remote`] raises it over these once the gap is filled. Until then they are
    /// durable here (a pushed write counts towards its quorum), and never offered to peers beyond
    /// the gap ([`SyncStore::read_log`] stops at the first missing position).
    fn store_ahead(&mut self, partition: PartitionId, records: &[SyncRecord]) -> Result<()> {
        let p = Self::check(partition)?;
        self.check_claims(partition, records)?;
        let screened = self.screen(p, records);
        let records = screened.as_ref();
        let _serial = self.lock(p);
        let mut ahead = Vec::with_capacity(records.len());
        for record in records {
            if record.origin == self.local {
                return Err(SyncStoreError::OwnOriginAhead {
                    partition,
                    have: self.vv_entry(p, record.origin)?,
                    got: record.seq,
                });
            }
            if record.seq > self.vv_entry(p, record.origin)? {
                ahead.push(record);
            }
        }
        let kept = self.kept_with(records);
        let mut keys: Vec<&[u8]> = ahead.iter().filter(|r| !r.key.is_empty()).map(|r| r.key.as_slice()).collect();
        keys.extend(kept.map(|kept| kept.data_key.as_slice()));
        let build = || -> Result<Batch> {
            let mut batch = Batch::new();
            let mut joined = Joined::new();
            let mut carried = Vec::new();
            for record in &ahead {
                let log = self.log_entry(partition, record, &mut joined, &mut carried)?;
                batch.put(Space::Log, layout::log_key(p, record.origin, record.seq).to_vec(), layout::encode(&log));
            }
            self.put_states(&mut batch, joined)?;
            self.put_kept(&mut batch, kept.into_iter().chain(&carried))?;
            Ok(batch)
        };
        self.commit_under_locks(&keys, build)
    }

    /// This replica's id (its own origin).
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The node's residency rules, when the store runs next to a node.
    fn residency(&self) -> Option<&Arc<Residency>> {
        self.live.as_ref().map(|live| &live.residency)
    }

    /// `records` as this node may store them ([`crate::residency::Residency::screen_incoming`]);
    /// unchanged without a node.
    /// Borrowed when there is nothing to screen (no node, or no rules and no redactions).
    fn screen<'a>(&self, partition: u16, records: &'a [SyncRecord]) -> std::borrow::Cow<'a, [SyncRecord]> {
        match self.residency() {
            Some(residency) if !residency.passes_unscreened(records) => {
                std::borrow::Cow::Owned(residency.screen_incoming(partition, records))
            }
            _ => std::borrow::Cow::Borrowed(records),
        }
    }

    /// The log entry of a checked record; a write's delta is joined into `joined`, and the
    /// idempotency record it carries (a write made with an idempotency id) is added to `kept`. A
    /// redaction (no key, see `crate::residency`) is stored as such and joins nothing.
    fn log_entry(
        &self,
        partition: PartitionId,
        record: &SyncRecord,
        joined: &mut Joined,
        kept: &mut Vec<KeptRecord>,
    ) -> Result<LogRecord> {
        if record.key.is_empty() {
            let rule = crate::residency::redaction_of(record).ok_or_else(|| SyncStoreError::Malformed {
                partition,
                what: "key",
                detail: "an empty key that is not a redaction".into(),
            })?;
            return Ok(LogRecord::Redacted { ts: Hlc::unpack(record.hlc), rule });
        }
        let key = Self::check_key(partition, &record.key)?;
        let (delta, carried) = layout::decode_delta(&record.delta).map_err(|e| SyncStoreError::Malformed {
            partition,
            what: "delta",
            detail: e.to_string(),
        })?;
        self.join_into(joined, &record.key, &delta)?;
        let ts = Hlc::unpack(record.hlc);
        let Some(carried) = carried else {
            return Ok(LogRecord::V2 { key, delta: delta.entry, ts, deps: delta.deps });
        };
        if !carried.is_about(&record.key) {
            // It could answer a retry of a write it is not about; relayed or hinted on, it would
            // carry a key residency scans do not see. Only a forged or corrupt record does this.
            return Err(SyncStoreError::Malformed {
                partition,
                what: "delta",
                detail: "an idempotency record of another key than the record's".into(),
            });
        }
        let now = unix_ms();
        let ttl = self.live.as_ref().map_or(u64::MAX, |live| live.idempotency_ttl_ms);
        if !carried.expired(now, ttl) {
            kept.push(KeptRecord {
                data_key: record.key.clone(),
                id: carried.id.to_be_bytes().to_vec(),
                record: carried.encoded_record(now),
            });
        }
        Ok(LogRecord::V3 { key, delta: delta.entry, ts, deps: delta.deps, kept: Box::new(carried) })
    }

    fn check(partition: PartitionId) -> Result<u16> {
        if partition.0 < PARTITIONS {
            Ok(partition.0)
        } else {
            Err(SyncStoreError::NoSuchPartition(partition))
        }
    }

    /// Builds a batch and writes it: next to a live node under the keys' locks and through its group
    /// committer ([`Writer::apply_under_key_locks`]; blocks, so never call it on a reactor thread);
    /// over a bare engine, directly.
    fn commit_under_locks(&self, keys: &[&[u8]], build: impl FnOnce() -> Result<Batch>) -> Result<()> {
        match &self.live {
            Some(live) => live.writer.apply_under_key_locks(keys, build),
            None => {
                let batch = build()?;
                self.engine.write(batch)?;
                Ok(())
            }
        }
    }

    pub(super) fn lock(&self, partition: u16) -> MutexGuard<'_, ()> {
        // The lock guards no data (a panic mid-call leaves nothing torn: the batch is atomic).
        self.locks[usize::from(partition)].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A max-merged `Meta` counter (absent: 0).
    pub(super) fn meta_u64(&self, key: &[u8]) -> Result<u64> {
        match self.engine.get(Space::Meta, key)? {
            Some(bytes) => Ok(decode_u64_be(&bytes)?),
            None => Ok(0),
        }
    }

    /// Hands a safe-time report to the node this store belongs to (if it is still up).
    pub fn take_report(&self, partition: u16, report: meridian_replication::SafeReport) {
        if let Some(live) = &self.live {
            live.safe_times.take_report(partition, report);
        }
    }

    pub(super) fn vv_entry(&self, partition: u16, origin: NodeId) -> Result<u64> {
        self.meta_u64(&layout::vv_key(partition, origin))
    }

    /// Checks a key the peer shipped for `partition`; returns it parsed.
    fn check_key(partition: PartitionId, data_key: &[u8]) -> Result<Key> {
        let key =
            parse_data_key(data_key).map_err(|detail| SyncStoreError::Malformed { partition, what: "key", detail })?;
        let actual = layout::partition_of(data_key);
        if actual != partition.0 {
            return Err(SyncStoreError::WrongPartition { partition, key: show(data_key), actual });
        }
        Ok(key)
    }

    /// Decodes a delta or state the peer shipped.
    fn decode_entry(partition: PartitionId, what: &'static str, bytes: &[u8]) -> Result<Stored> {
        // The cap is the one every stored record is read back with: anything larger could be
        // stored here but never read again.
        layout::decode_stored(bytes).map_err(|e| SyncStoreError::Malformed { partition, what, detail: e.to_string() })
    }

    /// Joins `delta` into the key's state in `joined` (loading on first use what it can change).
    fn join_into(&self, joined: &mut Joined, data_key: &[u8], delta: &Stored) -> Result<()> {
        let view = match joined.entry(data_key.to_vec()) {
            Slot::Occupied(slot) => slot.into_mut(),
            Slot::Vacant(slot) => {
                let loaded = StateView::load(self.engine.as_ref(), data_key, [])?;
                slot.insert(loaded.unwrap_or_else(|| StateView::absent(data_key, delta)))
            }
        };
        Ok(view.join(self.engine.as_ref(), delta)?)
    }

    /// Adds the changed states of `joined` to `batch`.
    fn put_states(&self, batch: &mut Batch, joined: Joined) -> Result<()> {
        for view in joined.into_values() {
            if view.changed() {
                let before_len = view.read_len();
                let after_len = view.write(self.engine.as_ref(), batch)?;
                self.count_over_cap(before_len, after_len);
            }
        }
        Ok(())
    }

    /// Counts a join that took a key past a cap it was under (concurrent growth elsewhere): the
    /// operator's signal that a key needs shrinking, or that the caps are too tight for the number
    /// of replicas that accept writes while cut off from each other.
    fn count_over_cap(&self, before_len: usize, after_len: usize) {
        let Some(live) = &self.live else { return };
        let (key_cap, merged_cap) = live.key_caps;
        if after_len <= key_cap {
            return;
        }
        for (cap, name) in [(key_cap, "max_key_bytes"), (merged_cap, "max_merged_key_bytes")] {
            if after_len > cap && before_len <= cap {
                metrics::counter!("meridian_keys_over_cap_total", "cap" => name).increment(1);
                tracing::warn!(cap = name, bytes = after_len, "a merge took a key past limits.{name}");
            }
        }
    }

    /// Calls `visit` with the `Data` entry of every key of `partition` whose key hash is in `range`
    /// and whose (key hash, key) position is past `after`'s, in (key hash, key) order, until
    /// `visit` answers `false`: a walk over the partition index, one point read per key. Each
    /// entry is its whole state's encoding (a set kept per element is assembled); with a peer
    /// region set, only the keys that region may hold.
    fn scan_partition(
        &self,
        partition: u16,
        range: HashRange,
        after: Option<&[u8]>,
        mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> bool,
    ) -> Result<()> {
        let outside = |data_key: &[u8]| match (&self.peer_region, self.residency()) {
            (Some(region), Some(residency)) => !residency.allowed_in(region, data_key),
            _ => false,
        };
        let mut start = partition_index::range_start(partition, range.lo()).to_vec();
        if let Some(after) = after {
            start = start.max([partition_index::entry_key(after).as_slice(), &[0]].concat());
        }
        let end = partition_index::range_end(partition, range.hi());
        loop {
            let page = self.engine.scan(Space::PartitionIndex, &start, end.as_deref(), DATA_PAGE)?;
            let full = page.len() == DATA_PAGE;
            if let Some((last, _)) = page.last() {
                start = [last.as_slice(), &[0]].concat();
            }
            for (index_key, _) in page {
                let Some((_, data_key)) = partition_index::parse_entry_key(&index_key) else { continue };
                if outside(data_key) {
                    continue;
                }
                // Gone since the index was read: a key deleted meanwhile (a purge) is not there.
                let Some(value) = self.engine.get(Space::Data, data_key)? else { continue };
                // A set kept per element goes out (and is hashed) as its whole state.
                if let Some(value) = states::whole_value(self.engine.as_ref(), data_key, value)? {
                    if !visit(data_key.to_vec(), value) {
                        return Ok(());
                    }
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

impl SyncStore for EngineSyncStore {
    type Error = SyncStoreError;

    /// The `vv/[partition]` entries of `Meta`.
    fn partition_vv(&self, partition: PartitionId) -> Result<VersionVector> {
        let p = Self::check(partition)?;
        let prefix = vv_prefix(p);
        let end = layout::prefix_end(&prefix);
        let mut vv = VersionVector::new();
        for (key, value) in self.engine.scan(Space::Meta, &prefix, end.as_deref(), usize::MAX)? {
            let origin = <[u8; 8]>::try_from(&key[prefix.len()..]).map_err(|_| SyncStoreError::Corrupt {
                what: "version-vector key".into(),
                detail: format!("{} bytes", key.len()),
            })?;
            vv.observe(NodeId(u64::from_be_bytes(origin)), decode_u64_be(&value)?);
        }
        Ok(vv)
    }

    /// The node's causal frontier (its own entry) when built by [`EngineSyncStore::live`], else 0.
    ///
    /// The claim is "every write this node originates in the partition with an HLC at or below the
    /// value has a seq at or below `vv[self]`, read afterwards". The HLC of the newest record of our
    /// own log is **not** such a value: the committer assigns positions in commit order, not in
    /// timestamp order, so a write timestamped earlier may still be in flight (its record and vector
    /// raise not yet committed) while a later-timestamped one is already in the log. The node's
    /// frontier is: every write it timestamped at or below it is durable (committed with its vector
    /// entry in one batch) or failed (no position), and every later write gets a larger timestamp.
    /// It is node-wide, hence true for every partition. The engine alone holds no trace of writes in
    /// flight, so without the node the only true answer is 0. (Under relaxed durability, "durable"
    /// means written to the WAL; a power loss may take back what was claimed, as it takes the data.)
    fn safe_hlc(&self, partition: PartitionId) -> Result<u64> {
        Self::check(partition)?;
        Ok(match &self.live {
            Some(live) => live.frontier.borrow().get(self.local),
            None => 0,
        })
    }

    /// The first record of `origin` at or above the floor marker, if the vector covers it; else
    /// `vv[origin] + 1` (no record of `origin` held, or all below the marker).
    fn log_floor(&self, partition: PartitionId, origin: NodeId) -> Result<u64> {
        let p = Self::check(partition)?;
        let vv = self.vv_entry(p, origin)?;
        let marker = self.meta_u64(&log_floor_key(p, origin))?.max(1);
        let end = layout::prefix_end(&layout::log_key(p, origin, 0)[..10]);
        let first = self.engine.scan(Space::Log, &layout::log_key(p, origin, marker), end.as_deref(), 1)?;
        let first_seq = first.first().and_then(|(key, _)| layout::parse_log_key(key)).map(|(_, _, seq)| seq);
        Ok(match first_seq {
            Some(seq) if seq <= vv => seq,
            _ => vv.saturating_add(1),
        })
    }

    /// A range scan of `[partition][origin][after_seq + 1..]`, stopping at the first missing seq.
    fn read_log(
        &self,
        partition: PartitionId,
        origin: NodeId,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<SyncRecord>> {
        let p = Self::check(partition)?;
        let end = layout::prefix_end(&layout::log_key(p, origin, 0)[..10]);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let Some(mut next) = after_seq.checked_add(1) else { return Ok(out) };
        while out.len() < max_records {
            let want = (max_records - out.len()).min(LOG_PAGE);
            let page = self.engine.scan(Space::Log, &layout::log_key(p, origin, next), end.as_deref(), want)?;
            let short = page.len() < want;
            for (key, value) in page {
                let seq = layout::parse_log_key(&key).map(|(_, _, seq)| seq);
                if seq != Some(next) {
                    // A hole (never in a healthy log): the records after it are not gap-free.
                    return Ok(out);
                }
                let (content, ts) = layout::decode::<LogRecord>(&value)
                    .map_err(|e| SyncStoreError::Corrupt {
                        what: format!("log record {partition}/{origin}/{next}"),
                        detail: e.to_string(),
                    })?
                    .into_parts();
                let record = match content {
                    LogContent::Write(key, delta, kept) => SyncRecord {
                        origin,
                        seq: next,
                        key: layout::data_key(&key),
                        delta: layout::encode_delta(&delta, kept.as_ref()),
                        hlc: ts.pack(),
                    },
                    LogContent::Redacted(rule) => crate::residency::redacted(origin, next, ts.pack(), rule),
                };
                bytes = bytes.saturating_add(record.wire_len());
                if bytes > max_bytes && !out.is_empty() {
                    return Ok(out);
                }
                out.push(record);
                match next.checked_add(1) {
                    Some(n) => next = n,
                    None => return Ok(out),
                }
            }
            if short {
                break;
            }
        }
        Ok(out)
    }

    /// One batch: the joined states, each record under `log_key(partition, origin, seq)` (as the
    /// node's own `LogRecord::V2`, or `V3` with the write's idempotency record), and `max_u64(vv/[partition][origin], last seq)` per origin.
    fn apply_remote(&mut self, partition: PartitionId, records: &[SyncRecord]) -> Result<()> {
        let p = Self::check(partition)?;
        self.check_claims(partition, records)?;
        let screened = self.screen(p, records);
        let records = screened.as_ref();
        if records.is_empty() {
            return Ok(());
        }
        let _serial = self.lock(p);
        // Which records extend the vector, read under the partition's lock.
        let mut have: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut raised: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut fresh = Vec::with_capacity(records.len());
        for record in records {
            let held = match have.get(&record.origin) {
                Some(held) => *held,
                None => self.vv_entry(p, record.origin)?,
            };
            have.insert(record.origin, held);
            if record.seq <= held {
                continue;
            }
            if record.origin == self.local {
                return Err(SyncStoreError::OwnOriginAhead { partition, have: held, got: record.seq });
            }
            if Some(record.seq) != held.checked_add(1) {
                return Err(SyncStoreError::Gap { partition, origin: record.origin, have: held, seq: record.seq });
            }
            have.insert(record.origin, record.seq);
            raised.insert(record.origin, record.seq);
            fresh.push(record);
        }
        // Records pushed ahead of a gap were stored (and joined) already ([`accept_pushed`]): once
        // the gap is filled, the vector covers them too.
        for (origin, seq) in raised.iter_mut() {
            *seq = self.logged_through(p, *origin, *seq)?;
        }
        // Decode, check and join everything in memory: a refusal leaves the store untouched. Next to
        // a running node this happens under the touched keys' locks and commits through the node's
        // group committer, so it cannot race the node's own writes to the same keys.
        let kept = self.kept_with(records);
        let mut keys: Vec<&[u8]> = fresh.iter().filter(|r| !r.key.is_empty()).map(|r| r.key.as_slice()).collect();
        keys.extend(kept.map(|kept| kept.data_key.as_slice()));
        let build = || -> Result<Batch> {
            let mut batch = Batch::new();
            let mut joined = Joined::new();
            let mut carried = Vec::new();
            for record in &fresh {
                let log = self.log_entry(partition, record, &mut joined, &mut carried)?;
                batch.put(Space::Log, layout::log_key(p, record.origin, record.seq).to_vec(), layout::encode(&log));
            }
            for (origin, seq) in &raised {
                batch.max_u64(Space::Meta, layout::vv_key(p, *origin), *seq);
            }
            self.put_states(&mut batch, joined)?;
            self.put_kept(&mut batch, kept.into_iter().chain(&carried))?;
            Ok(batch)
        };
        self.commit_under_locks(&keys, build)?;
        let fresh: Vec<SyncRecord> = fresh.into_iter().cloned().collect();
        self.note_applied(&fresh);
        Ok(())
    }

    /// The keys of the partition from the lowest range's first hash to the highest range's last
    /// (one walk of the partition index), each hashed as stored into every range holding it.
    fn range_digests(&self, partition: PartitionId, ranges: &[HashRange]) -> Result<Vec<RangeDigest>> {
        let p = Self::check(partition)?;
        let mut digests = vec![RangeDigest::default(); ranges.len()];
        // Ranges by depth, then by prefix: one lookup per depth per key.
        let mut by_depth: BTreeMap<u8, HashMap<u64, Vec<usize>>> = BTreeMap::new();
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for (i, range) in ranges.iter().enumerate().filter(|(_, r)| r.is_valid()) {
            by_depth.entry(range.bits()).or_default().entry(range.index()).or_default().push(i);
            (lo, hi) = (lo.min(range.lo()), hi.max(range.hi()));
        }
        if by_depth.is_empty() {
            return Ok(digests);
        }
        // The smallest range covering them all: the common prefix of `lo` and `hi`.
        let bits = (lo ^ hi).leading_zeros().min(64) as u8;
        let span = HashRange::new(bits, lo.checked_shr(64 - u32::from(bits)).unwrap_or(0))
            .expect("a prefix of a valid hash is a valid range");
        self.scan_partition(p, span, None, |data_key, state| {
            let hash = key_hash(&data_key);
            let entry = entry_hash(&data_key, &state);
            for (bits, prefixes) in &by_depth {
                let prefix = hash.checked_shr(64 - u32::from(*bits)).unwrap_or(0);
                for &i in prefixes.get(&prefix).into_iter().flatten() {
                    digests[i].add_entry_hash(entry);
                }
            }
            true
        })?;
        Ok(digests)
    }

    /// The first `max_keys + 1` keys of `range` past `after_key`, in (key hash, key) order: the
    /// partition index is in that order, so the walk stops there.
    fn keys_in_range(
        &self,
        partition: PartitionId,
        range: HashRange,
        after_key: Option<&[u8]>,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<KeyPage> {
        let p = Self::check(partition)?;
        // One more than a page, to know whether keys remain.
        let keep = max_keys.saturating_add(1);
        let mut first: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if range.is_valid() {
            self.scan_partition(p, range, after_key, |data_key, state| {
                first.push((data_key, state));
                first.len() < keep
            })?;
        }
        let mut page = KeyPage::default();
        let mut bytes = 0usize;
        for (key, state) in first {
            let state = KeyState { key, state };
            bytes = bytes.saturating_add(state.wire_len());
            if page.states.len() == max_keys || (bytes > max_bytes && !page.states.is_empty()) {
                page.more = true;
                break;
            }
            page.states.push(state);
        }
        Ok(page)
    }

    /// One batch: every state joined into the key's, and with `raise_vv_to`, for every origin it
    /// raises, `max_u64` of its `vv/` entry and of its [`log_floor_key`] (to the new `vv + 1`).
    fn apply_states(
        &mut self,
        partition: PartitionId,
        states: &[KeyState],
        raise_vv_to: Option<&VersionVector>,
    ) -> Result<()> {
        let p = Self::check(partition)?;
        let allowed: Vec<KeyState>;
        let states = match self.residency() {
            Some(residency) => {
                allowed = states
                    .iter()
                    .filter(|state| match residency.rule_for(&state.key) {
                        Some(rule) if !meridian_replication::residency::allows(&rule, residency.region()) => {
                            residency.note_rejected(rule.id, "a key's state (dropped)");
                            false
                        }
                        _ => true,
                    })
                    .cloned()
                    .collect();
                allowed.as_slice()
            }
            None => states,
        };
        let capped;
        let raise_vv_to = match (raise_vv_to, &self.peer_region, self.residency()) {
            (Some(theirs), Some(peer), Some(residency)) => {
                capped = residency.raise_from(peer, p, theirs);
                if capped != *theirs {
                    metrics::counter!("meridian_sync_raises_capped_total").increment(1);
                }
                Some(&capped)
            }
            (other, _, _) => other,
        };
        let _serial = self.lock(p);
        let keys: Vec<&[u8]> = states.iter().map(|s| s.key.as_slice()).collect();
        let build = || -> Result<Batch> {
            let mut batch = Batch::new();
            let mut joined = Joined::new();
            for state in states {
                Self::check_key(partition, &state.key)?;
                let entry = Self::decode_entry(partition, "state", &state.state)?;
                self.join_into(&mut joined, &state.key, &entry)?;
            }
            if let Some(target) = raise_vv_to {
                for (origin, seq) in target.iter() {
                    let held = self.vv_entry(p, origin)?;
                    if seq <= held {
                        continue;
                    }
                    if origin == self.local {
                        return Err(SyncStoreError::OwnOriginAhead { partition, have: held, got: seq });
                    }
                    batch.max_u64(Space::Meta, layout::vv_key(p, origin), seq);
                    batch.max_u64(Space::Meta, log_floor_key(p, origin), seq.saturating_add(1));
                }
            }
            self.put_states(&mut batch, joined)?;
            Ok(batch)
        };
        self.commit_under_locks(&keys, build)?;
        // Noted once joined, so the write-back reads the joined state.
        if self.peer_region.is_some() {
            self.note_fetched_elsewhere(states.iter().map(|state| (p, state.key.clone())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::StoredEntry;
    use crate::storage::MemoryEngine;
    use meridian_crdt::{Entry, Mutation, WriteContext};

    #[test]
    fn data_keys_parse_back_to_their_keys() {
        for (ns, name) in [("t", "k"), ("shop", "a/b/c"), ("ns", "é")] {
            let key = Key::new(ns, name).unwrap();
            assert_eq!(parse_data_key(&layout::data_key(&key)), Ok(key));
        }
        assert!(parse_data_key(b"").is_err());
        assert!(parse_data_key(&[5, b'a']).is_err(), "namespace longer than the key");
        assert!(parse_data_key(&[1, b'a']).is_err(), "empty name");
        assert!(parse_data_key(&[1, b'a', 0xff]).is_err(), "not UTF-8");
        assert!(parse_data_key(&[1, b'/', b'x']).is_err(), "namespace with a slash");
    }

    #[test]
    fn floor_keys_do_not_fall_in_vector_scans() {
        let floor = log_floor_key(3, NodeId(9));
        assert!(!floor.starts_with(b"vv/"));
        assert_ne!(floor.as_slice(), layout::META_NODE_ID);
    }

    fn counter(amount: i64) -> Entry {
        let write = WriteContext { node: NodeId(9), ts: Hlc { wall_ms: 1, logical: 0 } };
        Entry::mutation_delta(None, &Mutation::CounterAdd { amount }, &write).unwrap()
    }

    /// `count` data keys of one partition, each stored with a distinct counter state.
    fn seeded(count: usize) -> (EngineSyncStore, PartitionId, BTreeMap<Vec<u8>, Vec<u8>>) {
        let engine = Arc::new(MemoryEngine::new());
        let target = layout::partition_of(&layout::data_key(&Key::new("s", "k0").unwrap()));
        let mut batch = Batch::new();
        let mut stored = BTreeMap::new();
        for (i, key) in (0..)
            .map(|i| layout::data_key(&Key::new("s", format!("k{i}")).unwrap()))
            .filter(|k| layout::partition_of(k) == target)
            .take(count)
            .enumerate()
        {
            let state = layout::encode(&StoredEntry::V1(counter(i as i64 + 1)));
            batch.put(Space::Data, key.clone(), state.clone());
            stored.insert(key, state);
        }
        // A key of another partition, which no scan of `target` may see.
        let other = layout::data_key(&Key::new("s", "other").unwrap());
        assert_ne!(layout::partition_of(&other), target);
        batch.put(Space::Data, other, layout::encode(&StoredEntry::V1(counter(1))));
        engine.write(batch).unwrap();
        (EngineSyncStore::new(engine, NodeId(1)), PartitionId(target), stored)
    }

    #[test]
    fn scans_match_a_brute_force_over_the_partition() {
        let (store, p, stored) = seeded(40);
        let mut ranges = vec![HashRange::ROOT];
        ranges.extend(HashRange::ROOT.children(2));
        ranges.extend(HashRange::new(3, 5).unwrap().children(1));
        let expected: Vec<RangeDigest> = ranges
            .iter()
            .map(|range| {
                let mut digest = RangeDigest::default();
                stored.iter().filter(|(k, _)| range.contains_key(k)).for_each(|(k, v)| digest.add(k, v));
                digest
            })
            .collect();
        assert_eq!(store.range_digests(p, &ranges).unwrap(), expected);
        assert_eq!(expected[0].count, 40);

        for range in &ranges {
            let mut want: Vec<(u64, &Vec<u8>)> =
                stored.keys().filter(|k| range.contains_key(k)).map(|k| (key_hash(k), k)).collect();
            want.sort();
            // Pages of 7, resumed after the last key of each.
            let mut got = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = store.keys_in_range(p, *range, after.as_deref(), 7, 1 << 20).unwrap();
                assert!(page.states.len() <= 7);
                assert!(page.states.iter().all(|s| stored[&s.key] == s.state));
                after = page.states.last().map(|s| s.key.clone());
                got.extend(page.states.into_iter().map(|s| s.key));
                if !page.more {
                    break;
                }
            }
            assert_eq!(got, want.iter().map(|(_, k)| (*k).clone()).collect::<Vec<_>>(), "{range:?}");
        }
        // A byte budget below one key still returns that key, alone.
        let page = store.keys_in_range(p, HashRange::ROOT, None, 100, 1).unwrap();
        assert_eq!((page.states.len(), page.more), (1, true));
    }

    #[test]
    fn read_log_is_gap_free_and_bounded() {
        let store = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let key = Key::new("s", "k").unwrap();
        let p = layout::partition_of(&layout::data_key(&key));
        let origin = NodeId(2);
        let mut batch = Batch::new();
        for seq in [1, 2, 3, 5] {
            let record = LogRecord::V1 { key: key.clone(), delta: counter(seq as i64), ts: Hlc::unpack(seq << 16) };
            batch.put(Space::Log, layout::log_key(p, origin, seq).to_vec(), layout::encode(&record));
        }
        batch.max_u64(Space::Meta, layout::vv_key(p, origin), 3);
        store.engine.write(batch).unwrap();
        let p = PartitionId(p);
        let seqs = |records: Vec<SyncRecord>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.read_log(p, origin, 0, 10, 1 << 20).unwrap()), [1, 2, 3], "stops at the hole");
        assert_eq!(seqs(store.read_log(p, origin, 1, 1, 1 << 20).unwrap()), [2]);
        assert_eq!(seqs(store.read_log(p, origin, 0, 10, 1).unwrap()), [1], "the first record travels alone");
        let one = store.read_log(p, origin, 0, 1, 1 << 20).unwrap()[0].wire_len();
        assert_eq!(seqs(store.read_log(p, origin, 0, 10, 2 * one).unwrap()), [1, 2]);
        assert!(store.read_log(p, origin, 3, 10, 1 << 20).unwrap().is_empty());
        let first = &store.read_log(p, origin, 0, 1, 1 << 20).unwrap()[0];
        assert_eq!((first.key.clone(), first.hlc), (layout::data_key(&key), 1 << 16));
        assert_eq!(delta_of(first), counter(1));
        assert_eq!(store.log_floor(p, origin).unwrap(), 1);
        // A fallback's floor marker hides what lies below it.
        let mut batch = Batch::new();
        batch.max_u64(Space::Meta, log_floor_key(p.0, origin), 3);
        store.engine.write(batch).unwrap();
        assert_eq!(store.log_floor(p, origin).unwrap(), 3);
        let mut batch = Batch::new();
        batch.max_u64(Space::Meta, log_floor_key(p.0, origin), 4);
        store.engine.write(batch).unwrap();
        assert_eq!(store.log_floor(p, origin).unwrap(), 4, "vv + 1: nothing at or above the marker is covered");
    }

    #[test]
    fn a_record_carrying_an_idempotency_record_keeps_it_and_ships_it_on() {
        use crate::layout::{IdempotencyRecord, KeptIdempotency};
        use meridian_client::proto::{Reply, ReplyBody};
        let mut store = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let key = Key::new("s", "k").unwrap();
        let data_key = layout::data_key(&key);
        let p = PartitionId(layout::partition_of(&data_key));
        let kept = |key: &Key, id: u128| KeptIdempotency {
            id,
            record: IdempotencyRecord::V1 {
                created_ms: 1,
                key: key.clone(),
                request_digest: 3,
                reply: Reply { causal_token: Default::default(), body: ReplyBody::Written { counter: Some(1) } },
            },
        };
        let record = |seq: u64, kept: &KeptIdempotency| SyncRecord {
            origin: NodeId(2),
            seq,
            key: data_key.clone(),
            delta: layout::encode_delta(&Stored::bare(counter(1)), Some(kept)),
            hlc: seq << 16,
        };
        store.apply_remote(p, &[record(1, &kept(&key, 7))]).unwrap();
        assert!(store.engine.get(Space::Idempotency, &7u128.to_be_bytes()).unwrap().is_some(), "kept");
        let shipped = &store.read_log(p, NodeId(2), 0, 10, 1 << 20).unwrap()[0];
        assert_eq!(layout::decode_delta(&shipped.delta).unwrap().1, Some(kept(&key, 7)), "and shipped on");

        // A record naming another key is refused whole: nothing of it is stored.
        let other = Key::new("s", "other").unwrap();
        assert!(matches!(
            store.apply_remote(p, &[record(2, &kept(&other, 8))]),
            Err(SyncStoreError::Malformed { what: "delta", .. })
        ));
        assert!(store.engine.get(Space::Idempotency, &8u128.to_be_bytes()).unwrap().is_none());
        assert_eq!(store.partition_vv(p).unwrap().get(NodeId(2)), 1);
    }

    fn delta_of(record: &SyncRecord) -> Entry {
        layout::decode_stored(&record.delta).unwrap().entry
    }

    #[test]
    fn an_empty_store_answers_like_a_fresh_replica() {
        let store = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let p = PartitionId(7);
        assert!(store.partition_vv(p).unwrap().is_empty());
        assert_eq!(store.safe_hlc(p).unwrap(), 0);
        assert_eq!(store.log_floor(p, NodeId(2)).unwrap(), 1);
        assert!(store.read_log(p, NodeId(2), 0, 10, 1 << 20).unwrap().is_empty());
        assert_eq!(store.range_digests(p, &[HashRange::ROOT]).unwrap(), vec![RangeDigest::default()]);
        assert_eq!(store.keys_in_range(p, HashRange::ROOT, None, 10, 1 << 20).unwrap(), KeyPage::default());
        assert!(matches!(store.partition_vv(PartitionId(PARTITIONS)), Err(SyncStoreError::NoSuchPartition(_))));
    }
}
