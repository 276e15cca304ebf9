//! How Meridian's records are laid out in the storage engine's spaces, and their versioned formats.
//!
//! | space | key | value |
//! |---|---|---|
//! | `Data` | `[ns len: u8][ns][name]` | [`StoredEntry`]: the key's merged CRDT state, or for a set or a map the header of its per-part records ([`StoredEntry::Split`]) |
//! | `Log` | `[partition: u16 BE][origin: u64 BE][seq: u64 BE]` | [`LogRecord`]: the delta one write produced (`V3`: with the write's idempotency record) |
//! | `Meta` | `node_id` | this node's id, `u64 BE` |
//! | `Meta` | `vv/[partition: u16 BE][origin: u64 BE]` | highest gap-free log seq of `origin` in `partition` here (max-merged) |
//! | `Meta` | `logfloor/[partition: u16 BE][origin: u64 BE]` | lowest seq anti-entropy may still ship (records below came in as full states, or were truncated; see `store/sync_store.rs`, `store/log_truncation.rs`) |
//! | `Meta` | `logcut/[partition: u16 BE][origin: u64 BE]` | no record of `origin` below this seq is left in the log (log truncation; max-merged) |
//! | `Meta` | `safe/[partition: u16 BE][origin: u64 BE]` | packed HLC up to which this node holds `origin`'s writes to `partition` (safe times, max-merged) |
//! | `Meta` | `membership` | this node's view of the cluster membership (a CRDT) |
//! | `Meta` | `run` | [`RunMarker`]: how the node's last run started and whether it stopped cleanly |
//! | `Meta` | `predecessors` | [`Predecessors`]: the ids this node ran under before a new log epoch |
//! | `Meta` | `residency/rules` | the residency rule set |
//! | `Meta` | `residency/covered/[rule: u32 BE][partition: u16 BE]` | the version vector a residency backfill covered |
//! | `Meta` | `residency/applied` | newest rules version whose purges and backfills completed here |
//! | `Meta` | `auth/state` | the cluster's users, grants and tokens (`crate::auth::state::AuthRecord`, a CRDT) |
//! | `Idempotency` | `[id: u128 BE]` | [`IdempotencyRecord`]: the reply the first attempt got (kept by the coordinator and by every replica that applies the write's `V3` log record) |
//! | `Hints` | `[target: u64 BE][partition: u16 BE][origin: u64 BE][seq: u64 BE]` | a log record (`SyncRecord`) kept for a replica that missed it |
//! | `Elements` | `[data key len: u16 BE][data key][0][element]` | [`ElementRecord`]: one element of a set and the dots that tag it; for a map, [`FieldRecord`] under the field's name: the field's entry |
//! | `Elements` | `[data key len: u16 BE][data key][1][origin: u64 BE][seq: u64 BE]` | [`DotIndexRecord`]: the element a live dot tags (how a remove, which names only dots, finds its elements) |
//!
//! Every key the node stores is built in this file; the modules that own the records (the store,
//! the region's membership and hints, residency) only call the builders.
//!
//! Data keys sort by namespace then name, so listing a namespace by prefix is one range scan. Log keys
//! sort by partition, origin, sequence, so "everything of partition P from origin X after seq N" —
//! what anti-entropy ships — is one range scan too. Partitions are fixed ([`PARTITIONS`]); see
//! `docs/design/replication.md`. Every value is a versioned enum encoded by the one codec module.

use meridian_client::proto::{Key, Operation, Reply};
use meridian_crdt::{codec, Entry, Hlc, NodeId, VersionVector};
use serde::{Deserialize, Serialize};

/// Largest stored record we will decode (guards against a corrupt length inside a record).
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Largest hint (a log record kept for a replica that missed it) decoded: a hint holds one record
/// a peer message carried, so the peer protocol's message cap (8 MiB) bounds it.
pub const MAX_HINT_BYTES: usize = 8 << 20;

/// The data key of `key`.
pub fn data_key(key: &Key) -> Vec<u8> {
    let mut out = namespace_prefix(&key.namespace);
    out.extend_from_slice(key.name.as_bytes());
    out
}

/// The prefix shared by every data key of `namespace`.
pub fn namespace_prefix(namespace: &str) -> Vec<u8> {
    let len = u8::try_from(namespace.len()).expect("namespaces are validated to at most 128 bytes");
    let mut out = Vec::with_capacity(1 + namespace.len());
    out.push(len);
    out.extend_from_slice(namespace.as_bytes());
    out
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// How errors (which end up in logs and in refusals sent to peers) name a key: by a stable hash,
/// never its bytes — a key's name is data, and may belong to a region whose data must not show
/// up in this node's logs.
pub fn show_data_key(data_key: &[u8]) -> String {
    format!("#{:016x}", stable_hash(data_key))
}

/// Number of partitions the keyspace is cut into (fixed; see `docs/design/replication.md`).
pub use crate::storage::partition_index::PARTITIONS;

/// The cluster's stable hash (defined once, in `meridian-replication`, because placement and
/// partitioning must agree on every node).
pub use meridian_replication::hash::stable_hash;

/// The partition of a data key (defined with the storage's partition index, which keeps each
/// partition's keys together).
pub use crate::storage::partition_index::partition_of;

/// The log key of record `seq` of `origin` in `partition`.
pub fn log_key(partition: u16, origin: NodeId, seq: u64) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..2].copy_from_slice(&partition.to_be_bytes());
    out[2..10].copy_from_slice(&origin.0.to_be_bytes());
    out[10..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// Splits a log key into (partition, origin, seq).
pub fn parse_log_key(bytes: &[u8]) -> Option<(u16, NodeId, u64)> {
    let bytes: &[u8; 18] = bytes.try_into().ok()?;
    let partition = u16::from_be_bytes(bytes[..2].try_into().ok()?);
    let origin = u64::from_be_bytes(bytes[2..10].try_into().ok()?);
    let seq = u64::from_be_bytes(bytes[10..].try_into().ok()?);
    Some((partition, NodeId(origin), seq))
}

/// Meta key of this node's id.
pub const META_NODE_ID: &[u8] = b"node_id";

/// Meta key of `origin`'s version-vector entry in `partition`.
pub fn vv_key(partition: u16, origin: NodeId) -> Vec<u8> {
    let mut out = b"vv/".to_vec();
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&origin.0.to_be_bytes());
    out
}

/// Meta key of the [`RunMarker`] (`store/epoch.rs`).
pub const META_RUN: &[u8] = b"run";

/// Meta key of the [`Predecessors`] (`store/epoch.rs`).
pub const META_PREDECESSORS: &[u8] = b"predecessors";

/// How the node's current (or last) run started, and whether it stopped cleanly: what decides, at
/// the next start, whether a power loss may have taken back log positions peers already hold
/// (`store/epoch.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunMarker {
    /// Version 1.
    V1 {
        /// The run ended with every write durable (a clean stop wrote this after the last sync).
        clean: bool,
        /// The run's durability was `relaxed` (acknowledged writes could sit unsynced).
        relaxed: bool,
        /// The kernel boot the run started in (`None`: unknown); a different one at the next start
        /// means the machine rebooted, and the page cache with it.
        boot_id: Option<String>,
    },
}

/// The ids this node ran under before it started a new log epoch, oldest first (bounded; the
/// region layer marks each removed and gives its name to the current id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Predecessors {
    /// Version 1.
    V1(Vec<NodeId>),
}

impl Predecessors {
    /// The ids, oldest first.
    pub fn ids(&self) -> &[NodeId] {
        match self {
            Predecessors::V1(ids) => ids,
        }
    }
}

/// Meta key of this node's view of the cluster membership (`meridian_replication::Membership`).
pub const META_MEMBERSHIP: &[u8] = b"membership";

/// Meta key written by `meridian restore`: the region the backup was taken in (UTF-8). A node of
/// another region refuses to open the store (its keys may not live there).
pub const META_RESTORED_REGION: &[u8] = b"restored/region";

/// Meta key of the residency rule set (`meridian_replication::residency::RuleSet`).
pub const RESIDENCY_RULES_KEY: &[u8] = b"residency/rules";
/// Meta prefix of the backfill coverage per (rule, partition): `[rule: u32 BE][partition: u16 BE]`
/// → the version vector a backfill covered (see `Residency::covers`).
pub const RESIDENCY_COVERED_PREFIX: &[u8] = b"residency/covered/";
/// Meta key of the newest residency rules version fully acted on here (max-merged u64).
pub const RESIDENCY_APPLIED_KEY: &[u8] = b"residency/applied";
/// Meta key of the cluster's authentication metadata (users, grants, hashed tokens).
pub const AUTH_STATE_KEY: &[u8] = b"auth/state";

/// Length of a hint's key.
pub const HINT_KEY_LEN: usize = 8 + 2 + 8 + 8;

/// `Hints` key of the record `(partition, origin, seq)` kept for `target`: one target's hints are
/// one range, replayed in log order, and the same record hinted twice is stored once.
pub fn hint_key(target: NodeId, partition: u16, origin: NodeId, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(HINT_KEY_LEN);
    key.extend_from_slice(&target.0.to_be_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&origin.0.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Prefix of the persisted safe-time knowledge (`Meta`).
pub const SAFE_PREFIX: &[u8] = b"safe/";

/// Meta key of what this node knows of `origin`'s log of `partition`: the packed HLC up to which it
/// holds every write (`meridian_replication::safe_time`), as a max-merged u64.
pub fn safe_key(partition: u16, origin: NodeId) -> Vec<u8> {
    let mut out = SAFE_PREFIX.to_vec();
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&origin.0.to_be_bytes());
    out
}

/// The partition and origin of a [`safe_key`].
pub fn parse_safe_key(key: &[u8]) -> Option<(u16, NodeId)> {
    let rest = key.strip_prefix(SAFE_PREFIX)?;
    let partition = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
    let origin = u64::from_be_bytes(rest.get(2..)?.try_into().ok()?);
    Some((partition, NodeId(origin)))
}

/// A key's state as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StoredEntry {
    /// Version 1: the state alone (read as having no dependencies).
    V1(Entry),
    /// Version 2: the state and its causal dependencies.
    V2(Stored),
    /// A write's delta with the write's idempotency record (peer protocol version 5): how a record
    /// of a write made with an idempotency id travels, so every replica that applies it — by push,
    /// hint, anti-entropy or another region's relay — keeps the record and recognises a retry. Never
    /// a key's stored state; stripped to `V2` for peers of earlier versions
    /// ([`strip_idempotency`]).
    V3(Stored, Box<KeptIdempotency>),
    /// The header of a set or a map kept one record per part (storage format 2, `crate::states`):
    /// only ever a `Data` value, never shipped — a peer's state or delta that is one is malformed.
    Split(SplitHeader),
}

/// What a set, a map or a document kept one record per part stores under its data key: the state
/// without its parts (presence, a set's causal context, the dependencies) and how many parts it
/// has. Its parts are `Elements` records ([`element_key`]): a set's elements, each with its dots
/// (and every dot has an index record, [`dot_index_key`], naming its element), a map's fields with
/// their entries, or a document's automerge changes named by their hashes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitHeader {
    /// The state with a set or map body that holds no part.
    pub stored: Stored,
    /// Number of part records.
    pub elements: u64,
    /// Number of parts a read shows (`scard`, `hlen`): every element of a set, the fields of a map
    /// that exist (a removed field keeps its record until it is collected).
    pub present: u64,
    /// What the elements add to the state's encoded size (see `crate::states`): with the header,
    /// the size the key's caps count, known without reading the elements.
    pub element_bytes: u64,
    /// The version of the key here, drawn at random by every write (local, not replicated): a
    /// reader that assembles the state from several reads sees the same value before and after
    /// only if no write came between, and a document materialised at one version is cached under
    /// it (a version is never drawn again for other content, even by a write that failed).
    pub writes: u64,
}

/// A key's `Data` value, decoded: the whole state, or the header of a collection kept per part.
#[derive(Clone, Debug, PartialEq)]
pub enum StateRecord {
    /// The whole state.
    Whole(Stored),
    /// The header of a set or map kept one record per part.
    Split(SplitHeader),
}

/// Decodes a key's `Data` value.
pub fn decode_state(bytes: &[u8]) -> Result<StateRecord, codec::CodecError> {
    Ok(match decode::<StoredEntry>(bytes)? {
        StoredEntry::Split(header) => StateRecord::Split(header),
        other => StateRecord::Whole(other.into_stored()?),
    })
}

/// Whether a `Data` value is a [`StoredEntry::Split`] header, from its variant byte alone (the
/// codec's format byte, then the variant index, one byte while below 251).
pub fn is_split_value(bytes: &[u8]) -> bool {
    bytes.get(1) == Some(&3)
}

/// Encodes the header of a collection kept per part.
pub fn encode_split(header: &SplitHeader) -> Vec<u8> {
    encode(&StoredEntry::Split(header.clone()))
}

/// An element's record (`Elements` space): the dots that tag it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ElementRecord {
    /// Version 1.
    V1(Vec<meridian_crdt::Dot>),
}

/// A map field's record (`Elements` space): the field's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FieldRecord {
    /// Version 1.
    V1(Entry),
}

/// A document's change record (`Elements` space, named by the change's hash): the change in
/// automerge's binary encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChangeRecord {
    /// Version 1.
    V1(Vec<u8>),
}

/// What a dot's index record (`Elements` space) names: the element the dot tags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DotIndexRecord {
    /// Version 1.
    V1(Vec<u8>),
}

/// The prefix of every `Elements` record of the collection at `data_key`:
/// `[data key length: u16 BE][data key]`, so one collection's records never share a prefix with
/// another's.
pub fn collection_prefix(data_key: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data_key.len()).expect("data keys are validated far below 64 KiB");
    let mut out = Vec::with_capacity(2 + data_key.len() + 1);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data_key);
    out
}

/// The prefix of the element records of the collection at `data_key` (tag `0`), in element order.
pub fn elements_prefix(data_key: &[u8]) -> Vec<u8> {
    let mut out = collection_prefix(data_key);
    out.push(0);
    out
}

/// The `Elements` key of `element` of the collection at `data_key`.
pub fn element_key(data_key: &[u8], element: &[u8]) -> Vec<u8> {
    let mut out = elements_prefix(data_key);
    out.extend_from_slice(element);
    out
}

/// The prefix of the dot index records of the collection at `data_key` (tag `1`).
pub fn dot_index_prefix(data_key: &[u8]) -> Vec<u8> {
    let mut out = collection_prefix(data_key);
    out.push(1);
    out
}

/// The `Elements` key of the index record of `dot` in the collection at `data_key`.
pub fn dot_index_key(data_key: &[u8], dot: meridian_crdt::Dot) -> Vec<u8> {
    let mut out = dot_index_prefix(data_key);
    out.extend_from_slice(&dot.node.0.to_be_bytes());
    out.extend_from_slice(&dot.seq.to_be_bytes());
    out
}

/// The data key an `Elements` record belongs to (`None`: not an `Elements` key).
pub fn collection_of(elements_key: &[u8]) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes(elements_key.get(..2)?.try_into().ok()?));
    elements_key.get(2..2 + len)
}

/// The first peer protocol version whose shipped deltas may carry idempotency records
/// ([`StoredEntry::V3`]; `meridian-peer/5`). A node pinned below it writes neither `V3` format.
pub const IDEMPOTENT_RECORDS_VERSION: u8 = 5;

/// A write's idempotency id and the record its coordinator kept under it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptIdempotency {
    /// The client's idempotency id.
    pub id: u128,
    /// What the coordinator recorded (the key, the request's fingerprint, the reply).
    pub record: IdempotencyRecord,
}

impl KeptIdempotency {
    /// Whether the record is about the write of `data_key` (a record naming another key is not
    /// kept: it could answer a retry of a write it is not about).
    pub fn is_about(&self, written: &[u8]) -> bool {
        let IdempotencyRecord::V1 { key, .. } = &self.record;
        data_key(key) == written
    }

    /// Whether the record is older than `ttl_ms` at `now_ms` (the idempotency sweep would delete
    /// it: a replica that applies the write later does not keep it).
    pub fn expired(&self, now_ms: u64, ttl_ms: u64) -> bool {
        let IdempotencyRecord::V1 { created_ms, .. } = &self.record;
        now_ms.saturating_sub(*created_ms) > ttl_ms
    }

    /// The record as this node keeps it: its age is this node's to judge (the sweep expires records
    /// by it), so a creation time in this node's future is brought back to now.
    pub fn encoded_record(&self, now_ms: u64) -> Vec<u8> {
        let IdempotencyRecord::V1 { created_ms, key, request_digest, reply } = self.record.clone();
        encode(&IdempotencyRecord::V1 { created_ms: created_ms.min(now_ms), key, request_digest, reply })
    }
}

/// A key's CRDT state with its *dependency vector*: the join of the causal tokens of every write
/// in it (each write's session token plus the write itself). A read hands it to the session, so a
/// session that sees an effect also carries its causes, and a later causal read waits for them
/// (`docs/design/replication.md`). Deltas travel in the same shape: a delta's deps are its write's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The CRDT state (or delta).
    pub entry: Entry,
    /// Origin node → packed HLC of the writes this state causally depends on.
    pub deps: VersionVector,
}

impl Stored {
    /// A state with no dependencies.
    pub fn bare(entry: Entry) -> Stored {
        Stored { entry, deps: VersionVector::new() }
    }

    /// An empty state of `other`'s type (to join `other` into).
    pub fn empty_like(other: &Stored) -> Stored {
        Stored::bare(Entry::empty(other.entry.crdt_type()))
    }

    /// Joins `other` in: the CRDT join of the states, the pointwise maximum of the dependencies.
    pub fn try_join(&mut self, other: &Stored) -> Result<(), meridian_crdt::CrdtError> {
        self.entry.try_join(&other.entry)?;
        self.deps.merge(&other.deps);
        Ok(())
    }
}

impl StoredEntry {
    /// The state and its dependencies, whatever the version; a [`StoredEntry::Split`] header is
    /// not a state (only `crate::states` reads one, with its elements).
    fn into_stored(self) -> Result<Stored, codec::CodecError> {
        match self {
            StoredEntry::V1(entry) => Ok(Stored::bare(entry)),
            StoredEntry::V2(stored) | StoredEntry::V3(stored, _) => Ok(stored),
            StoredEntry::Split(_) => {
                Err(codec::CodecError::Malformed("the header of a collection kept per part, not a state".into()))
            }
        }
    }
}

/// Encodes a key's state (or a delta) as stored and shipped.
pub fn encode_stored(stored: &Stored) -> Vec<u8> {
    encode(&StoredEntry::V2(stored.clone()))
}

/// Decodes what [`encode_stored`] wrote (or a version-1 state).
pub fn decode_stored(bytes: &[u8]) -> Result<Stored, codec::CodecError> {
    decode::<StoredEntry>(bytes)?.into_stored()
}

/// Encodes a write's delta as shipped: with its idempotency record when it has one
/// ([`StoredEntry::V3`]).
pub fn encode_delta(delta: &Stored, kept: Option<&KeptIdempotency>) -> Vec<u8> {
    match kept {
        Some(kept) => encode(&StoredEntry::V3(delta.clone(), Box::new(kept.clone()))),
        None => encode_stored(delta),
    }
}

/// Decodes a shipped delta and the idempotency record it carries, if any.
pub fn decode_delta(bytes: &[u8]) -> Result<(Stored, Option<KeptIdempotency>), codec::CodecError> {
    Ok(match decode::<StoredEntry>(bytes)? {
        StoredEntry::V1(entry) => (Stored::bare(entry), None),
        StoredEntry::V2(stored) => (stored, None),
        StoredEntry::V3(stored, kept) => (stored, Some(*kept)),
        split @ StoredEntry::Split(_) => (split.into_stored()?, None),
    })
}

/// A shipped delta as a peer of protocol version 4 or earlier can decode it: without its
/// idempotency record. `None` when it carries none (the bytes go unchanged).
pub fn strip_idempotency(bytes: &[u8]) -> Option<Vec<u8>> {
    // The codec's format byte, then the variant index (one byte while below 251): only `V3`
    // (index 2) is decoded, so a large document's delta is not decoded on every send.
    if bytes.get(1) != Some(&2) {
        return None;
    }
    match decode::<StoredEntry>(bytes) {
        Ok(StoredEntry::V3(stored, _)) => Some(encode_stored(&stored)),
        _ => None,
    }
}

/// One write in the delta log: enough for a peer to apply it without the rest of the key's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    /// Version 1.
    V1 {
        /// The key written.
        key: Key,
        /// The delta (join it into the key's state).
        delta: Entry,
        /// The coordinator's HLC timestamp for the write.
        ts: Hlc,
    },
    /// Version 2: with the write's causal dependencies.
    V2 {
        /// The key written.
        key: Key,
        /// The delta (join it into the key's state).
        delta: Entry,
        /// The coordinator's HLC timestamp for the write.
        ts: Hlc,
        /// The write's session token plus the write itself.
        deps: VersionVector,
    },
    /// A position whose write this node's region may not hold (data residency): the timestamp
    /// and the rule that kept the key and value away, nothing else.
    Redacted {
        /// The coordinator's HLC timestamp for the write.
        ts: Hlc,
        /// The residency rule.
        rule: u32,
    },
    /// Version 3: a write made with an idempotency id, with the record its coordinator kept, so the
    /// record travels wherever the write does (anti-entropy, hints, other regions).
    V3 {
        /// The key written.
        key: Key,
        /// The delta (join it into the key's state).
        delta: Entry,
        /// The coordinator's HLC timestamp for the write.
        ts: Hlc,
        /// The write's session token plus the write itself.
        deps: VersionVector,
        /// The write's idempotency id and record.
        kept: Box<KeptIdempotency>,
    },
}

/// A log record's content, whatever the version.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // Short-lived, one at a time: boxing would cost an allocation per record read.
pub enum LogContent {
    /// A write: the key, the delta with its dependencies, the write's idempotency record if any.
    Write(Key, Stored, Option<KeptIdempotency>),
    /// A redacted position: the rule.
    Redacted(u32),
}

impl LogRecord {
    /// The content and the timestamp, whatever the version.
    pub fn into_parts(self) -> (LogContent, Hlc) {
        match self {
            LogRecord::V1 { key, delta, ts } => (LogContent::Write(key, Stored::bare(delta), None), ts),
            LogRecord::V2 { key, delta, ts, deps } => (LogContent::Write(key, Stored { entry: delta, deps }, None), ts),
            LogRecord::V3 { key, delta, ts, deps, kept } => {
                (LogContent::Write(key, Stored { entry: delta, deps }, Some(*kept)), ts)
            }
            LogRecord::Redacted { ts, rule } => (LogContent::Redacted(rule), ts),
        }
    }
}

/// What a write with an idempotency id got, kept so that a retry gets the same answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum IdempotencyRecord {
    /// Version 1.
    V1 {
        /// When the first attempt was applied (ms since the Unix epoch).
        created_ms: u64,
        /// The key it wrote (a retry naming another key is refused).
        key: Key,
        /// Fingerprint of the operation (a retry of another operation is refused).
        request_digest: u64,
        /// The reply of the first attempt.
        reply: Reply,
    },
}

/// Encodes a record.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    codec::encode(record)
}

/// Decodes a stored record; failure means corruption.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, codec::CodecError> {
    codec::decode(bytes, MAX_RECORD_BYTES)
}

/// Meta key of the log floor of `origin` in `partition`: records of `origin` below this seq are not
/// offered to peers (set by a digest fallback's vector raise; max-merged, 8 bytes big-endian).
pub fn log_floor_key(partition: u16, origin: NodeId) -> Vec<u8> {
    let mut out = b"logfloor/".to_vec();
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&origin.0.to_be_bytes());
    out
}

/// Meta key of where log truncation of `origin` in `partition` has reached: no record of `origin`
/// below this seq is left (`store/log_truncation.rs`; max-merged, 8 bytes big-endian). Unlike the
/// floor it is only raised by deleting, so truncation also collects records a fallback's floor hid.
pub fn log_cut_key(partition: u16, origin: NodeId) -> Vec<u8> {
    let mut out = b"logcut/".to_vec();
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&origin.0.to_be_bytes());
    out
}

/// The prefix of every `vv/` entry of `partition`.
pub fn vv_prefix(partition: u16) -> Vec<u8> {
    let mut out = b"vv/".to_vec();
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

/// Splits a data key back into the key it was made from (the inverse of [`data_key`]),
/// validated like a key that arrived from a client.
pub fn parse_data_key(bytes: &[u8]) -> std::result::Result<Key, String> {
    let (&len, rest) = bytes.split_first().ok_or("empty data key")?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(format!("namespace length {len} exceeds the {} bytes that follow", rest.len()));
    }
    let (namespace, name) = rest.split_at(len);
    let key = Key {
        namespace: String::from_utf8(namespace.to_vec()).map_err(|_| "namespace is not UTF-8".to_string())?,
        name: String::from_utf8(name.to_vec()).map_err(|_| "name is not UTF-8".to_string())?,
    };
    key.validate().map_err(|e| e.to_string())?;
    Ok(key)
}

/// The data key a keyed operation names, if it is valid (an invalid key is refused later, as usual).
pub fn keyed_data_key(op: &Operation) -> Option<Vec<u8>> {
    match op {
        Operation::Write { key, .. }
        | Operation::Delete { key, .. }
        | Operation::Read { key, .. }
        | Operation::DocChanges { key, .. }
        | Operation::ReadSet { key, .. }
        | Operation::ReadMap { key, .. } => key.validate().ok().map(|()| data_key(key)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter_delta() -> Stored {
        let write = meridian_crdt::WriteContext { node: NodeId(1), ts: Hlc::unpack(7 << 16) };
        let entry = Entry::mutation_delta(None, &meridian_crdt::Mutation::CounterAdd { amount: 5 }, &write).unwrap();
        Stored { entry, deps: [(NodeId(1), 7 << 16)].into_iter().collect() }
    }

    fn kept(key: &Key) -> KeptIdempotency {
        let reply = Reply {
            causal_token: Default::default(),
            body: meridian_client::proto::ReplyBody::Written { counter: Some(5) },
        };
        KeptIdempotency {
            id: 0x1d3e,
            record: IdempotencyRecord::V1 { created_ms: 1_000, key: key.clone(), request_digest: 42, reply },
        }
    }

    #[test]
    fn a_shipped_delta_carries_its_idempotency_record_and_strips_for_older_peers() {
        let key = Key::new("app", "visits").unwrap();
        let delta = counter_delta();
        // Without a record the bytes are the state's own encoding (what every version decodes).
        assert_eq!(encode_delta(&delta, None), encode_stored(&delta));
        assert_eq!(strip_idempotency(&encode_stored(&delta)), None, "nothing to strip");

        let carried = kept(&key);
        let shipped = encode_delta(&delta, Some(&carried));
        assert_eq!(decode_delta(&shipped).unwrap(), (delta.clone(), Some(carried.clone())));
        // Read as a state (a replica that only joins it), the record is ignored.
        assert_eq!(decode_stored(&shipped).unwrap(), delta);
        // For a peer of version 4 or earlier: exactly the V2 bytes it always got.
        assert_eq!(strip_idempotency(&shipped), Some(encode_stored(&delta)));

        assert!(carried.is_about(&data_key(&key)));
        assert!(!carried.is_about(&data_key(&Key::new("app", "other").unwrap())));
        // A creation time in this node's future comes back to now; a past one stays.
        let IdempotencyRecord::V1 { created_ms, .. } = decode(&carried.encoded_record(500)).unwrap();
        assert_eq!(created_ms, 500);
        let IdempotencyRecord::V1 { created_ms, .. } = decode(&carried.encoded_record(5_000)).unwrap();
        assert_eq!(created_ms, 1_000);
        assert!(!carried.expired(5_000, 4_000) && carried.expired(5_001, 4_000), "older than the ttl");
    }

    #[test]
    fn a_version_3_log_record_keeps_its_idempotency_record() {
        let key = Key::new("app", "visits").unwrap();
        let delta = counter_delta();
        let record = LogRecord::V3 {
            key: key.clone(),
            delta: delta.entry.clone(),
            ts: Hlc::unpack(7 << 16),
            deps: delta.deps.clone(),
            kept: Box::new(kept(&key)),
        };
        let decoded: LogRecord = decode(&encode(&record)).unwrap();
        assert_eq!(
            decoded.into_parts(),
            (LogContent::Write(key.clone(), delta, Some(kept(&key))), Hlc::unpack(7 << 16))
        );
        // Variants keep their wire index: a redaction written before V3 existed still decodes.
        let redacted = encode(&LogRecord::Redacted { ts: Hlc::unpack(1), rule: 3 });
        assert_eq!(redacted[1], 2, "Redacted stays variant 2");
    }

    #[test]
    fn namespace_scans_do_not_leak_into_longer_namespaces() {
        let a = data_key(&Key::new("ab", "c").unwrap());
        let b = data_key(&Key::new("abc", "").unwrap_or(Key { namespace: "abc".into(), name: String::new() }));
        let prefix = namespace_prefix("ab");
        assert!(a.starts_with(&prefix));
        assert!(!b.starts_with(&prefix));
    }

    #[test]
    fn prefix_end_bounds_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
    }

    #[test]
    fn log_keys_round_trip_and_sort_by_partition_origin_seq() {
        assert_eq!(parse_log_key(&log_key(5, NodeId(3), 9)), Some((5, NodeId(3), 9)));
        assert!(log_key(0, NodeId(9), 300) < log_key(1, NodeId(1), 1));
        assert!(log_key(1, NodeId(1), 300) < log_key(1, NodeId(2), 1));
        assert!(log_key(1, NodeId(1), 2) < log_key(1, NodeId(1), 256));
    }

    #[test]
    fn stable_hash_is_pinned() {
        // Golden values: partitions must never move between builds.
        assert_eq!(stable_hash(b"meridian"), 0x5fa6_f896_03b6_e64f);
        assert_eq!(partition_of(&data_key(&Key::new("shop", "visits").unwrap())), 31);
        assert!(partition_of(b"anything") < PARTITIONS);
    }
}
