//! # meridian-proto
//!
//! The native wire protocol between clients and nodes: the message types, their validation and
//! their framing. The SDK (`meridian-client`, which re-exports this crate as `meridian_client::proto`)
//! and the node speak it; the replication cores use its [`Consistency`] levels and residency
//! [`Rule`]s. It is the API boundary of Meridian: everything a client can ask and every answer it can
//! get is a type here.
//!
//! # Invariant
//!
//! Depends on `meridian-crdt` and `serde` only (plus `base64` for the token string and `thiserror`
//! for the error types); nothing async, no I/O, no transport. Reading a frame off a QUIC stream
//! (`meridian_client::proto::read_frame`) lives in the SDK, which owns quinn. The one exception is
//! `IdempotencyId::random`, behind the off-by-default `random` feature (adds `rand`; the SDK turns
//! it on), so that crates using only the types (such as `meridian-replication`) pull in neither an
//! async runtime, a TLS stack nor a random number generator.
//!
//! | items | what |
//! |---|---|
//! | [`Request`], [`RequestV1`], [`RequestV2`], [`Operation`], [`ClusterOp`], [`ResidencyOp`] | what a client asks |
//! | [`Response`], [`Reply`], [`ReplyBody`] and its reports | what a node answers |
//! | [`ErrorReply`], [`ErrorCode`] | failures, shared with the HTTP API, and whether a retry is safe |
//! | [`Key`], [`Consistency`], [`CausalToken`], [`IdempotencyId`], [`TraceContext`] | request parameters |
//! | [`Rule`], [`RuleSpec`] | data-residency rules |
//! | [`auth`]: [`AuthOp`], [`AuthReport`], [`Role`] | authentication, users, roles, tokens |
//! | [`encode_frame`], [`decode_frame_body`], [`FrameError`] | framing |
//!
//! # Transport
//!
//! QUIC (quinn) with TLS 1.3, ALPN [`ALPN`]. Every request opens its own bidirectional stream, so a
//! slow or malformed request never blocks or breaks another one on the same connection:
//!
//! ```text
//! client → node:  [u32 big-endian length][Request frame]   then finish
//! node → client:  [u32 big-endian length][Response frame]  then finish
//! ```
//!
//! A frame is [`meridian_crdt::codec`]'s encoding (format byte + bincode) of a versioned enum
//! ([`Request::V1`], [`Response::V1`]). The length is checked against the receiver's cap *before* the
//! body is read; an oversized or malformed frame gets a typed error response on that stream and closes
//! only that stream.
//!
//! # Versioning
//!
//! bincode is not self-describing: a message's layout never changes under its version. A new field
//! means a `V2` variant, which old nodes refuse with [`ErrorCode::Unsupported`].

#![warn(missing_docs)]

pub mod auth;
pub mod trace;

use base64::Engine as _;
use meridian_crdt::{codec, CrdtType, Mutation, NodeId, Value, VersionVector};
use serde::{Deserialize, Serialize};

pub use auth::{AuthOp, AuthReport, Role};
pub use meridian_crdt::codec::CodecError;
pub use trace::{TraceContext, TraceparentError};

/// ALPN protocol id of the native client protocol.
pub const ALPN: &[u8] = b"meridian-client/1";

/// Default cap on one frame, both directions (4 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;

/// Cap on an exported causal token string.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// A key: a namespace and a name within it, written `ns/key`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// The namespace (no `/`).
    pub namespace: String,
    /// The key within the namespace (may contain `/`).
    pub name: String,
}

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 128;
/// Longest key name, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

impl Key {
    /// A key, validated: non-empty namespace without `/` or control characters, non-empty name,
    /// both within their length limits.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Result<Key, KeyError> {
        let key = Key { namespace: namespace.into(), name: name.into() };
        key.validate()?;
        Ok(key)
    }

    /// Checks the rules of [`Key::new`] (for keys that arrived over the wire).
    pub fn validate(&self) -> Result<(), KeyError> {
        validate_namespace(&self.namespace)?;
        if self.name.is_empty() {
            return Err(KeyError("the key name is empty".into()));
        }
        if self.name.len() > MAX_KEY_BYTES {
            return Err(KeyError(format!("the key name is {} bytes, the limit is {MAX_KEY_BYTES}", self.name.len())));
        }
        if self.name.chars().any(char::is_control) {
            return Err(KeyError("the key name contains a control character".into()));
        }
        Ok(())
    }
}

/// Checks a namespace name.
pub fn validate_namespace(namespace: &str) -> Result<(), KeyError> {
    if namespace.is_empty() {
        return Err(KeyError("the namespace is empty".into()));
    }
    if namespace.len() > MAX_NAMESPACE_BYTES {
        return Err(KeyError(format!(
            "the namespace is {} bytes, the limit is {MAX_NAMESPACE_BYTES}",
            namespace.len()
        )));
    }
    if namespace.contains('/') || namespace.chars().any(char::is_control) {
        return Err(KeyError(format!("the namespace {namespace:?} contains '/' or a control character")));
    }
    Ok(())
}

/// Why a key or namespace is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key: {0}")]
pub struct KeyError(pub String);

impl std::str::FromStr for Key {
    type Err = KeyError;
    /// Parses `ns/key` (the key part may itself contain `/`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) =
            s.split_once('/').ok_or_else(|| KeyError(format!("{s:?} is not of the form namespace/key")))?;
        Key::new(namespace, name)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How much consistency a request pays for. See the README's table for the exact guarantees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consistency {
    /// Write: durable on one replica. Read: one replica's state.
    Eventual,
    /// Causal+: session guarantees across keys and regions, via the session's causal token.
    Causal,
    /// Majority of the key's replicas in the local region, repaired before a read returns.
    LocalQuorum,
    /// Majority of all the key's replicas in all its allowed regions, repaired before a read returns.
    Quorum,
}

impl Consistency {
    /// Every level, weakest first.
    pub const ALL: [Consistency; 4] =
        [Consistency::Eventual, Consistency::Causal, Consistency::LocalQuorum, Consistency::Quorum];

    /// The name used in config, the CLI and HTTP.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Eventual => "eventual",
            Consistency::Causal => "causal",
            Consistency::LocalQuorum => "local_quorum",
            Consistency::Quorum => "quorum",
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown consistency level name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown consistency level {0:?} (expected eventual, causal, local_quorum or quorum)")]
pub struct UnknownConsistency(pub String);

impl std::str::FromStr for Consistency {
    type Err = UnknownConsistency;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Consistency::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| UnknownConsistency(s.to_string()))
    }
}

impl Serialize for CausalToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for CausalToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        VersionVector::deserialize(d).map(CausalToken)
    }
}

/// A session's causal token: a compact vector clock over the nodes' write logs. A read carrying it
/// returns a state that includes everything the token has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CausalToken(pub VersionVector);

const TOKEN_PREFIX: &str = "mt1.";

impl CausalToken {
    /// The token that has seen nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Merges another token in (pointwise max).
    pub fn merge(&mut self, other: &CausalToken) {
        self.0.merge(&other.0);
    }

    /// Whether this token has seen everything `other` has.
    pub fn covers(&self, other: &CausalToken) -> bool {
        self.0.dominates(&other.0)
    }
}

impl std::fmt::Display for CausalToken {
    /// `mt1.` followed by URL-safe base64 of the codec encoding.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = codec::encode(&self.0);
        write!(f, "{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// A causal token string that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid causal token: {0}")]
pub struct TokenError(pub String);

impl std::str::FromStr for CausalToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_TOKEN_BYTES {
            return Err(TokenError(format!("{} bytes, the limit is {MAX_TOKEN_BYTES}", s.len())));
        }
        let body = s.strip_prefix(TOKEN_PREFIX).ok_or_else(|| TokenError(format!("missing {TOKEN_PREFIX} prefix")))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError(format!("not base64: {e}")))?;
        codec::decode(&bytes, MAX_TOKEN_BYTES).map(CausalToken).map_err(|e| TokenError(e.to_string()))
    }
}

/// An idempotency id: a retried write carrying the same id is applied once, and the retry gets the
/// first attempt's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyId(pub u128);

impl IdempotencyId {
    /// A fresh random id (feature `random`).
    #[cfg(feature = "random")]
    pub fn random() -> Self {
        IdempotencyId(rand::random())
    }
}

/// A request frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Version 1.
    V1(RequestV1),
    /// Version 2: a version-1 request with the caller's trace context. Clients send it only when
    /// they have a context, so untraced requests still reach nodes that know only `V1`.
    V2(RequestV2),
}

impl Request {
    /// A request, as `V2` when it carries a trace context.
    pub fn new(request: RequestV1, trace: Option<TraceContext>) -> Request {
        match trace {
            Some(trace) => Request::V2(RequestV2 { trace, request }),
            None => Request::V1(request),
        }
    }

    /// The request and its trace context, whatever the version.
    pub fn into_parts(self) -> (RequestV1, Option<TraceContext>) {
        match self {
            Request::V1(request) => (request, None),
            Request::V2(RequestV2 { trace, request }) => (request, Some(trace)),
        }
    }
}

/// A version-2 request: a [`RequestV1`] and where it sits in a distributed trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestV2 {
    /// The caller's trace context (W3C `traceparent`).
    pub trace: TraceContext,
    /// The request.
    pub request: RequestV1,
}

/// A version-1 request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestV1 {
    /// The level for this request; `None` uses the namespace's default.
    pub consistency: Option<Consistency>,
    /// The session's causal token, if it has one.
    pub causal_token: Option<CausalToken>,
    /// How long the node may work on the request before answering [`ErrorCode::Timeout`]
    /// (0: the node's default).
    pub timeout_ms: u32,
    /// What to do.
    pub op: Operation,
}

/// The operations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    /// Apply a typed mutation to a key (creating it with the mutation's type).
    Write {
        /// The key.
        key: Key,
        /// The typed change; its type must match the key's.
        mutation: Mutation,
        /// Deduplicates retries of this write (the SDK always sets one).
        idempotency_id: Option<IdempotencyId>,
    },
    /// Delete a key (a causal tombstone: writes concurrent with the delete survive it).
    Delete {
        /// The key.
        key: Key,
        /// Deduplicates retries of this delete (the SDK always sets one).
        idempotency_id: Option<IdempotencyId>,
    },
    /// Read a key. With `expected`, a key of another type is a [`ErrorCode::WrongType`] error.
    Read {
        /// The key.
        key: Key,
        /// The type the caller expects, if any.
        expected: Option<CrdtType>,
    },
    /// The automerge changes of a `doc` key that a peer holding `since_heads` lacks.
    DocChanges {
        /// The `doc` key.
        key: Key,
        /// The heads (hex change hashes) the caller already has; empty for every change.
        since_heads: Vec<String>,
    },
    /// List keys of a namespace whose names start with `prefix`, in byte order, after `start_after`.
    ListKeys {
        /// The namespace.
        namespace: String,
        /// Only names starting with this (empty: all).
        prefix: String,
        /// Only names after this one (exclusive): the previous page's cursor.
        start_after: Option<String>,
        /// At most this many keys (the node may cap it lower).
        limit: u32,
    },
    /// The node's status.
    Status,
    /// Region administration and introspection (membership, placement).
    Cluster(ClusterOp),
    /// Data-residency rules: list, add, change, remove, explain a key, audit this node's storage.
    Residency(ResidencyOp),
    /// Authentication: log in with a token, who am I, users, grants and tokens.
    Auth(AuthOp),
    /// Online backup of the answering node: take a checkpoint, read its files, release it.
    Backup(BackupOp),
    /// Whether the node is ready to serve, and why not (what `/readyz` answers over HTTP): a node
    /// whose storage failed still answers `Status` but takes no writes. Nodes before this variant
    /// answer [`ErrorCode::Unsupported`].
    Readiness,
    /// Read part of a set — membership of some members, the member count, or a page of members —
    /// without reading the rest (a node keeps a set one record per element). A node before this
    /// variant cannot decode it and answers [`ErrorCode::BadRequest`] ("malformed frame"); a node
    /// that forwards it to replicas that all predate it answers [`ErrorCode::Unsupported`]. The SDK
    /// then reads the whole set.
    ReadSet {
        /// The set's key (a key of another type is [`ErrorCode::WrongType`]; a missing key reads
        /// as an empty set).
        key: Key,
        /// Which part.
        part: SetPart,
    },
    /// Read part of a map — some fields' values, the field count, or a page of fields — without
    /// reading the rest (a node keeps a map one record per field). Older nodes answer as for
    /// [`Operation::ReadSet`]; the SDK then reads the whole map.
    ReadMap {
        /// The map's key (a key of another type is [`ErrorCode::WrongType`]; a missing key reads
        /// as an empty map).
        key: Key,
        /// Which part.
        part: MapPart,
    },
    /// What the node's storage holds on disk, per space (`meridian status` shows it). Nodes
    /// before this variant cannot decode it (`BadRequest`, "malformed frame").
    Storage,
    /// Several keyed operations in one frame, answered in one frame (as Redis clients pipeline):
    /// [`ReplyBody::Pipeline`] holds one result per operation, in order, and the reply's token
    /// covers them all. Each operation runs as a request of its own with the pipeline's level,
    /// token and timeout (its own authorization, admission, routing and metrics), so one refused
    /// operation fails only itself. Operations on the same key run in the order given, each seeing
    /// the ones before it; operations on different keys run concurrently, so their writes share
    /// group commits.
    ///
    /// Only keyed operations ([`Write`](Operation::Write), [`Delete`](Operation::Delete),
    /// [`Read`](Operation::Read), [`DocChanges`](Operation::DocChanges),
    /// [`ReadSet`](Operation::ReadSet), [`ReadMap`](Operation::ReadMap)) may be pipelined, at most
    /// `limits.max_pipeline_ops` of them ([`ErrorCode::TooLarge`] above it); anything else refuses
    /// the whole pipeline as [`ErrorCode::BadRequest`] before any operation runs. Nodes before this
    /// variant cannot decode it (`BadRequest`, "malformed frame"); the SDK then sends the
    /// operations one by one. A pipeline inside a pipeline does not decode (a hostile frame cannot
    /// nest them deep enough to overflow the decoding stack).
    Pipeline(#[serde(deserialize_with = "not_nested")] Vec<Operation>),
    /// What the node's last data census counted: live keys and the tombstones kept (`meridian
    /// status` shows it). Nodes before this variant cannot decode it (`BadRequest`, "malformed
    /// frame").
    DataCensus,
}

/// Which part of a map [`Operation::ReadMap`] reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapPart {
    /// The values of these fields (`hget`, `hmget`).
    Fields(Vec<String>),
    /// How many fields the map has (`hlen`).
    Count,
    /// Fields in name order (byte order of their UTF-8), after `after` (exclusive; `None`: from
    /// the first), at most `limit` (the node may cap it lower, and stops early at its reply
    /// budget).
    Page {
        /// The previous page's cursor.
        after: Option<String>,
        /// At most this many fields.
        limit: u32,
    },
}

/// The answer to [`Operation::ReadMap`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MapPartReply {
    /// Per field asked, in the order asked: its value, `None` if the map has no such field.
    Fields(Vec<Option<Value>>),
    /// The number of fields.
    Count(u64),
    /// A page of fields with their values, and the cursor of the next page (`None`: the map is
    /// read to its end). A page may hold fewer fields than asked — even none — while `next` is
    /// `Some`: the node reads a bounded number of records per page, and a removed field's record
    /// stays until it is collected.
    Page {
        /// The fields and their values, in name order.
        fields: Vec<(String, Value)>,
        /// The cursor (`after`) for the next page.
        next: Option<String>,
    },
}

/// Which part of a set [`Operation::ReadSet`] reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetPart {
    /// Whether each of these is a member (`sismember`, `smismember`).
    Contains(Vec<Vec<u8>>),
    /// How many members the set has (`scard`).
    Count,
    /// Members in byte order, after `after` (exclusive; `None`: from the first), at most `limit`
    /// (the node may cap it lower, and stops early at its reply budget).
    Page {
        /// The previous page's cursor.
        after: Option<Vec<u8>>,
        /// At most this many members.
        limit: u32,
    },
}

/// The answer to [`Operation::ReadSet`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetPartReply {
    /// Per member asked, in the order asked: whether it is in the set.
    Contains(Vec<bool>),
    /// The number of members.
    Count(u64),
    /// A page of members, and the cursor of the next page (`None`: the set is read to its end).
    Page {
        /// The members, in byte order.
        members: Vec<Vec<u8>>,
        /// The cursor (`after`) for the next page.
        next: Option<Vec<u8>>,
    },
}

/// Online backup of one node (`meridian backup`). A backup is a RocksDB checkpoint the node keeps
/// until [`BackupOp::Finish`] or until it has not been read for a while; the client copies its
/// files and keeps their SHA-256, so a later backup into the same folder transfers only the files
/// that changed (RocksDB's table files never change once written).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupOp {
    /// Take a consistent checkpoint of the node's storage and list its files.
    Begin,
    /// Up to `len` bytes of one of the checkpoint's files, from `offset`.
    Read {
        /// The checkpoint, as [`BackupOp::Begin`] named it.
        id: u64,
        /// A file name from the checkpoint's listing.
        file: String,
        /// Where to start.
        offset: u64,
        /// At most this many bytes (the node may send fewer; an empty chunk means end of file).
        len: u32,
    },
    /// Release the checkpoint (its files are deleted on the node).
    Finish {
        /// The checkpoint.
        id: u64,
    },
}

/// The answer to a [`BackupOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupReport {
    /// A checkpoint was taken.
    Begun(BackupSnapshot),
    /// Bytes of a checkpoint file.
    Chunk(Vec<u8>),
    /// The checkpoint was released.
    Finished,
}

/// A checkpoint the node took, and what it covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSnapshot {
    /// The checkpoint's id on the node, for [`BackupOp::Read`] and [`BackupOp::Finish`].
    pub id: u64,
    /// The node's id (its write log's origin).
    pub node_id: NodeId,
    /// The node's name.
    pub node_name: String,
    /// The node's region: a backup is restored only into this region (data residency).
    pub region: String,
    /// When the checkpoint was taken (Unix milliseconds, the node's clock).
    pub taken_at_ms: u64,
    /// The storage format version of the files.
    pub storage_format: u8,
    /// The node's version vector read just before the checkpoint: the checkpoint holds at least
    /// every write this cut names.
    pub version_vector: VersionVector,
    /// The checkpoint's files.
    pub files: Vec<BackupFile>,
}

/// One file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Its name in the checkpoint directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// Data-residency administration (`meridian residency …`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResidencyOp {
    /// The rules (first match wins), their version, and this node's purge/backfill progress.
    List,
    /// Add a rule at the end of the list (or at `position`, 0-based).
    Add {
        /// The rule.
        rule: RuleSpec,
        /// Where in the list (first match wins); `None`: last.
        position: Option<u32>,
    },
    /// Replace the rule with this id (its match and its placement).
    Change {
        /// The rule's id.
        id: u32,
        /// What it becomes.
        rule: RuleSpec,
    },
    /// Remove the rule with this id (its keys then match a later rule, or go everywhere).
    Remove {
        /// The rule's id.
        id: u32,
    },
    /// Which rule a key matches, which regions and nodes may hold it, and why.
    Explain {
        /// The key.
        key: Key,
    },
    /// Scan the answering node's storage (state, delta log, hints, idempotency records) for keys its
    /// region may not hold. With `compact`, first flush memtables and compact every file, so that a
    /// raw scan of the data directory afterwards sees only what the node still holds.
    Audit {
        /// Flush and compact before scanning.
        compact: bool,
    },
}

/// A placement rule as an operator writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    /// The namespace it applies to.
    pub namespace: String,
    /// Key-name prefix it applies to (empty: the whole namespace).
    pub prefix: String,
    /// The regions allowed to hold matching keys (non-empty, each a region the cluster knows).
    pub regions: Vec<String>,
    /// Replicas per allowed region (`None`: the region's replication factor).
    pub replicas_per_region: Option<u32>,
    /// The region requests from disallowed regions are proxied to first (must be allowed).
    pub home: Option<String>,
    /// Refuse requests that arrive in a disallowed region instead of proxying them.
    pub strict: bool,
}

/// A rule as stored: its spec and its stable id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Stable id (never reused).
    pub id: u32,
    /// What it says.
    pub spec: RuleSpec,
}

/// The answer to a [`ResidencyOp`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyReport {
    /// The answering node's name.
    pub node: String,
    /// Its region (from its certificate).
    pub region: String,
    /// The rule-set version it holds (after the operation).
    pub version: u64,
    /// The rules in match order.
    pub rules: Vec<Rule>,
    /// For `Add`/`Change`: the rule's id.
    pub rule_id: Option<u32>,
    /// For `Explain`.
    pub explain: Option<ResidencyExplain>,
    /// For `Audit`.
    pub audit: Option<ResidencyAudit>,
    /// Purges and backfills this node has run or is running, newest last.
    pub changes: Vec<ResidencyProgress>,
    /// Counters since start: proxied, refused, rejected transfers, purged keys.
    pub counters: ResidencyCounters,
}

/// Why a key lives where it does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyExplain {
    /// The key.
    pub key: String,
    /// Its partition.
    pub partition: u16,
    /// The matching rule, if any (none: every region).
    pub rule: Option<Rule>,
    /// Regions allowed to hold it.
    pub allowed_regions: Vec<String>,
    /// Nodes holding it (`name (region)`), by the answering node's view of placement.
    pub nodes: Vec<String>,
    /// Whether the answering node's region may hold it.
    pub allowed_here: bool,
    /// Prose: which rule matched and why, or that none did.
    pub reason: String,
}

/// What `meridian residency audit` found on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyAudit {
    /// Keys scanned in the state space.
    pub data_keys: u64,
    /// Delta-log records scanned (redacted ones included).
    pub log_records: u64,
    /// Redacted delta-log records (positions kept, bytes removed).
    pub redacted_records: u64,
    /// Hints scanned.
    pub hints: u64,
    /// Idempotency records scanned.
    pub idempotency_records: u64,
    /// What the node holds that its region may not (the first 1,000); empty when clean.
    pub violations: Vec<ResidencyViolation>,
    /// How many violations there are in all.
    pub violations_total: u64,
    /// Whether memtables were flushed and files compacted first.
    pub compacted: bool,
}

/// One thing a node holds that its region may not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyViolation {
    /// `data`, `log`, `hints` or `idempotency`.
    pub space: String,
    /// The rule that forbids it here.
    pub rule: u32,
    /// The key (`namespace/name`).
    pub key: String,
}

/// One purge (rule narrowed away from this region) or backfill (widened into it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyProgress {
    /// `purge` or `backfill`.
    pub kind: String,
    /// The rule.
    pub rule: u32,
    /// The rule-set version that caused it.
    pub version: u64,
    /// Units done (keys purged; partitions backfilled).
    pub done: u64,
    /// Units in all (0 while counting).
    pub total: u64,
    /// Whether it finished.
    pub complete: bool,
}

/// Residency decisions counted on one node since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyCounters {
    /// Requests proxied to an allowed region.
    pub proxied: u64,
    /// Requests refused (strict rules, or no allowed region reachable).
    pub refused: u64,
    /// Incoming records, states or hints rejected because this region may not hold them.
    pub rejected: u64,
    /// Records sent redacted because the receiver's region may not hold them.
    pub redacted: u64,
    /// Keys purged by narrowed rules.
    pub purged: u64,
}

/// Region administration and introspection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterOp {
    /// Members, their liveness, partitions and hints, as this node sees them.
    Status,
    /// Let a joining node take placements (`Joining → Active`).
    Activate {
        /// Node name or id.
        node: String,
    },
    /// Stop placing partitions on a node; it hands what it holds to the new replicas (`Active → Draining`).
    Drain {
        /// Node name or id.
        node: String,
    },
    /// Remove a node from the region for good (`Draining/Active → Removed`).
    Remove {
        /// Node name or id.
        node: String,
    },
    /// Which nodes hold a key, and why.
    Placement {
        /// The key.
        key: Key,
    },
}

/// A region as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The answering node's name.
    pub local: String,
    /// The region's replication factor (as configured on the answering node).
    pub rf: u32,
    /// Every member, removed ones included, in node-id order.
    pub members: Vec<MemberReport>,
    /// For [`ClusterOp::Placement`]: the key's placement.
    pub placement: Option<PlacementReport>,
    /// When the answering node is draining: how far its handoff is.
    pub handoff: Option<HandoffReport>,
    /// Cross-region replication as the answering node sees it, one entry per other region.
    pub regions: Vec<RegionLagReport>,
}

/// Replication from another region into the answering node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionLagReport {
    /// The other region.
    pub from_region: String,
    /// Its records that became durable on the answering node since it started.
    pub records: u64,
    /// Lag (write timestamp in the origin region to durable here), median, in ms.
    pub lag_p50_ms: u64,
    /// Lag, 99th percentile, in ms.
    pub lag_p99_ms: u64,
    /// Lag, largest seen, in ms.
    pub lag_max_ms: u64,
    /// When (Unix ms) the last of its records arrived (0: never).
    pub last_applied_ms: u64,
    /// Writes the answering node holds as hints for that region's nodes (pending deltas).
    pub hints_pending: u64,
    /// When (Unix ms) the answering node last completed an anti-entropy pass with a node of that
    /// region (0: never).
    pub last_sync_ms: u64,
}

/// One member of the region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Lifecycle state: joining, active, draining, removed.
    pub state: String,
    /// What the answering node's failure detector believes: self, alive, suspect, dead, unknown.
    pub liveness: String,
    /// Node-to-node address.
    pub peer_addr: String,
    /// Client protocol address.
    pub client_addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// Partitions placed on it.
    pub partitions: u32,
    /// Hints the answering node holds for it.
    pub hints_queued: u64,
    /// Milliseconds since the answering node last completed an anti-entropy pass with it.
    pub last_sync_ms_ago: Option<u64>,
}

/// Where a key lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementReport {
    /// The key.
    pub key: Key,
    /// Its partition.
    pub partition: u16,
    /// Active nodes placement chose from.
    pub candidates: u32,
    /// The replicas, best first.
    pub replicas: Vec<PlacedReplica>,
}

/// One replica of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedReplica {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Rendezvous score of (node, partition).
    pub score: u64,
    /// Rank by score among the candidates (1 = highest).
    pub rank: u32,
    /// Why it was chosen.
    pub reason: String,
}

/// Progress of a draining node's handoff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffReport {
    /// Partitions it holds whose every new replica's version vector covers its own.
    pub partitions_synced: u32,
    /// Partitions it holds data of.
    pub partitions_total: u32,
}

impl HandoffReport {
    /// Whether everything the node holds has reached the partitions' new replicas.
    pub fn is_complete(&self) -> bool {
        self.partitions_synced >= self.partitions_total
    }
}

thread_local! {
    /// Whether this thread is decoding the operations (or answers) of a pipeline.
    static IN_PIPELINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Decodes a pipeline's operations (or answers), refusing a pipeline among them. bincode has no
/// recursion limit: without this, a hostile frame of a few megabytes could nest a pipeline a
/// million levels deep and overflow the decoding thread's stack, killing the node instead of
/// failing one request. (Map values nest too, bounded the same way by `meridian_crdt`'s depth
/// guard.)
fn not_nested<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    use serde::de::Error as _;
    /// Clears the flag however the decode ends (a panic included: a runtime worker that caught
    /// one must still decode the next pipeline).
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            IN_PIPELINE.with(|in_pipeline| in_pipeline.set(false));
        }
    }
    if IN_PIPELINE.with(std::cell::Cell::get) {
        return Err(D::Error::custom("a pipeline inside a pipeline"));
    }
    IN_PIPELINE.with(|in_pipeline| in_pipeline.set(true));
    let _leave = Leave;
    T::deserialize(deserializer)
}

impl Operation {
    /// Whether the operation changes state.
    pub fn is_write(&self) -> bool {
        matches!(self, Operation::Write { .. } | Operation::Delete { .. })
    }

    /// Whether the operation names one key (and so may be pipelined).
    pub fn is_keyed(&self) -> bool {
        matches!(
            self,
            Operation::Write { .. }
                | Operation::Delete { .. }
                | Operation::Read { .. }
                | Operation::DocChanges { .. }
                | Operation::ReadSet { .. }
                | Operation::ReadMap { .. }
        )
    }
}

/// A response frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Version 1.
    V1(Result<Reply, ErrorReply>),
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The token after this request: the session's token merged with what this request wrote or read.
    pub causal_token: CausalToken,
    /// The answer.
    pub body: ReplyBody,
}

/// The answer to each operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReplyBody {
    /// The write is durable per the consistency level. `counter` is the counter's value after the
    /// write at the coordinator, for counter writes.
    Written {
        /// The counter's value after the write, for counter writes.
        counter: Option<i64>,
    },
    /// The delete is durable; `existed` says whether the coordinator held the key.
    Deleted {
        /// Whether the coordinator held the key.
        existed: bool,
    },
    /// The key's value, `None` if it does not exist.
    Value(Option<Value>),
    /// Automerge changes and the document's current heads.
    DocChanges {
        /// Automerge changes in their binary encoding.
        changes: Vec<Vec<u8>>,
        /// The document's current heads (hex change hashes).
        heads: Vec<String>,
    },
    /// A page of keys, and the cursor for the next page if there is one.
    Keys {
        /// The keys of this page, in byte order of their names.
        keys: Vec<KeyInfo>,
        /// The cursor (`start_after`) for the next page; `None` when the listing is complete.
        next: Option<String>,
    },
    /// The node's status.
    Status(NodeStatus),
    /// The region, as the answering node sees it.
    Cluster(ClusterReport),
    /// Data-residency rules and this node's view of them.
    Residency(Box<ResidencyReport>),
    /// Authentication metadata, or who the caller is.
    Auth(Box<AuthReport>),
    /// An online backup's checkpoint, or bytes of it.
    Backup(Box<BackupReport>),
    /// The answer to [`Operation::Readiness`]: `None` when the node is ready, else why it is not.
    Readiness(Option<String>),
    /// The answer to [`Operation::ReadSet`].
    SetPart(SetPartReply),
    /// The answer to [`Operation::ReadMap`].
    MapPart(MapPartReply),
    /// The answer to [`Operation::Storage`].
    Storage(StorageReport),
    /// The answer to [`Operation::Pipeline`]: each operation's answer or error, in order.
    Pipeline(#[serde(deserialize_with = "not_nested")] Vec<Result<ReplyBody, ErrorReply>>),
    /// The answer to [`Operation::DataCensus`]: `None` until the node's first census pass ends
    /// (a few seconds after it starts).
    DataCensus(Option<CensusReport>),
}

/// What a node's storage holds ([`Operation::Storage`]). The figures come from RocksDB's own
/// properties and a listing of the data directory at the time of the request; a node running on
/// the in-memory engine reports zeros for its spaces and WAL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageReport {
    /// The on-disk format version of the data directory.
    pub format_version: u32,
    /// Per storage space (one RocksDB column family each), in a fixed order.
    pub spaces: Vec<SpaceReport>,
    /// Bytes of write-ahead log files.
    pub wal_bytes: u64,
    /// Bytes of every file under the data directory: what the node takes on disk (table files,
    /// WAL, manifests, backups kept inside it).
    pub dir_bytes: u64,
}

/// What a node's data census counted in its `Data` space ([`Operation::DataCensus`]): passes start
/// `storage.census_interval_ms` (60 s) after the previous one ended, so the figures are that old at
/// most, plus a pass's own time. Bytes are encoded sizes (what the key caps count), not disk use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusReport {
    /// Keys a read shows.
    pub live_keys: u64,
    /// Their bytes (a collection's parts included).
    pub live_bytes: u64,
    /// Deleted keys whose state is kept: tombstones, which nothing collects yet.
    pub deleted_keys: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Removed fields of live maps whose records are kept.
    pub removed_fields: u64,
    /// Records that did not decode (0 on a healthy node).
    pub unreadable: u64,
    /// When the pass ended (Unix milliseconds, the node's clock).
    pub taken_ms: u64,
}

/// One storage space in a [`StorageReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceReport {
    /// The space (`data`, `log`, `meta`, `idempotency`, `hints`, `elements`).
    pub name: String,
    /// Bytes of its table files on disk.
    pub sst_bytes: u64,
    /// RocksDB's estimate of the live data in those files (what compaction would leave).
    pub live_bytes_estimate: u64,
    /// Bytes in its memtables (in memory, also in the WAL).
    pub memtable_bytes: u64,
    /// RocksDB's estimate of its keys.
    pub keys_estimate: u64,
}

/// One listed key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key's name within the namespace.
    pub name: String,
    /// Its type.
    pub crdt_type: CrdtType,
}

/// What `meridian status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's replica id.
    pub node_id: NodeId,
    /// Its configured name.
    pub name: String,
    /// Its region.
    pub region: String,
    /// Its zone.
    pub zone: String,
    /// The software version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Keys stored (RocksDB's estimate).
    pub keys_estimate: u64,
    /// Writes in the node's delta log.
    pub log_entries: u64,
    /// The node's version vector over all write logs it holds.
    pub version_vector: VersionVector,
    /// `"fsync"` or `"relaxed"`.
    pub durability: String,
    /// Open client connections.
    pub client_connections: u64,
}

/// A failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure; decides whether a retry is safe.
    pub code: ErrorCode,
    /// A human-readable explanation naming the problem.
    pub message: String,
}

/// Failure classes shared by the wire protocol, the HTTP API and the SDK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or invalid (bad key, bad argument, undecodable frame).
    BadRequest,
    /// The key holds another CRDT type than the operation needs.
    WrongType,
    /// A value, member, change or frame exceeds a configured limit.
    TooLarge,
    /// A message version or feature this node does not support.
    Unsupported,
    /// Too few replicas answered in time for the requested consistency level.
    QuorumUnavailable,
    /// A causal read could not be served within the causal wait bound.
    CausalTimeout,
    /// The request did not finish within its timeout; a write may or may not have been applied.
    Timeout,
    /// The node is at a connection, stream or queue limit.
    Overloaded,
    /// The node is shutting down.
    ShuttingDown,
    /// A storage or internal failure on the node.
    Internal,
    /// A data-residency rule forbids serving this key here (a `strict` rule, or no allowed region
    /// reachable to proxy to); the message names the rule.
    ResidencyRefused,
    /// The request carries no credentials, or credentials the node does not accept (unknown,
    /// expired or revoked token; certificate of another cluster). HTTP 401.
    Unauthenticated,
    /// The caller is known but its roles do not allow this operation here; the message names the
    /// role and namespace it lacks. HTTP 403.
    PermissionDenied,
}

impl ErrorCode {
    /// Whether retrying the same request (with the same idempotency id, for writes) is safe and may
    /// succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::QuorumUnavailable
                | ErrorCode::CausalTimeout
                | ErrorCode::Timeout
                | ErrorCode::Overloaded
                | ErrorCode::ShuttingDown
        )
    }

    /// The snake_case name used in HTTP JSON error bodies.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::WrongType => "wrong_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::QuorumUnavailable => "quorum_unavailable",
            ErrorCode::CausalTimeout => "causal_timeout",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::ResidencyRefused => "residency_refused",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
        }
    }
}

impl ErrorReply {
    /// An error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { code, message: message.into() }
    }
}

/// Encodes a frame body with its 4-byte length prefix.
pub fn encode_frame<T: Serialize>(message: &T) -> Vec<u8> {
    let body = codec::encode(message);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).expect("frames are far below 4 GiB").to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length exceeds the cap; the body was not read.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The body did not decode.
    #[error("malformed frame: {0}")]
    Malformed(#[from] CodecError),
    /// The stream ended early or failed.
    #[error("stream error: {0}")]
    Stream(String),
}

/// Decodes a frame body that has already been read (used by the fuzz target and tests).
pub fn decode_frame_body<T: serde::de::DeserializeOwned>(body: &[u8], max_frame_bytes: usize) -> Result<T, CodecError> {
    codec::decode(body, max_frame_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_validate() {
        let key: Key = "users/alice/profile".parse().unwrap();
        assert_eq!(key.namespace, "users");
        assert_eq!(key.name, "alice/profile");
        assert!("nokey".parse::<Key>().is_err());
        assert!("/x".parse::<Key>().is_err());
        assert!("ns/".parse::<Key>().is_err());
        assert!(Key::new("ns", "a".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn consistency_names_round_trip() {
        for level in Consistency::ALL {
            assert_eq!(level.name().parse::<Consistency>().unwrap(), level);
        }
        assert!("strong".parse::<Consistency>().is_err());
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = CausalToken([(NodeId(9), 41)].into_iter().collect());
        let text = token.to_string();
        assert!(text.starts_with("mt1."));
        assert_eq!(text.parse::<CausalToken>().unwrap(), token);
        assert!("mt1.!!!".parse::<CausalToken>().is_err());
        assert!("xyz".parse::<CausalToken>().is_err());
        assert!("mt1.AQ".parse::<CausalToken>().is_err());
    }

    #[test]
    fn golden_request_frame() {
        let request = Request::V1(RequestV1 {
            consistency: Some(Consistency::Eventual),
            causal_token: None,
            timeout_ms: 0,
            op: Operation::Status,
        });
        // length 7 | format 1 | V1=0 | Some=1, Eventual=0 | None=0 | timeout 0 | Status=5
        assert_eq!(encode_frame(&request), vec![0, 0, 0, 7, 1, 0, 1, 0, 0, 0, 5]);
    }

    #[test]
    fn golden_traced_request_frame() {
        let status = RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op: Operation::Status };
        // Without a context the request stays V1, which every node version reads.
        assert_eq!(Request::new(status.clone(), None), Request::V1(status.clone()));
        let trace = TraceContext { trace_id: [0xab; 16], parent_span_id: [0xcd; 8], flags: 1 };
        let request = Request::new(status.clone(), Some(trace));
        // length 31 | format 1 | V2=1 | trace id (16) | span id (8) | flags 1 | V1 body: None, None, 0, Status=5
        let mut expected = vec![0, 0, 0, 31, 1, 1];
        expected.extend([0xab; 16]);
        expected.extend([0xcd; 8]);
        expected.extend([1, 0, 0, 0, 5]);
        let frame = encode_frame(&request);
        assert_eq!(frame, expected);
        let decoded = decode_frame_body::<Request>(&frame[4..], 1 << 20).unwrap();
        assert_eq!(decoded.into_parts(), (status, Some(trace)));
    }

    #[test]
    fn golden_backup_frames() {
        let request = |op| Request::V1(RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op });
        // length 7 | format 1 | V1=0 | None=0 | None=0 | timeout 0 | Backup=9 | Begin=0
        assert_eq!(encode_frame(&request(Operation::Backup(BackupOp::Begin))), vec![0, 0, 0, 7, 1, 0, 0, 0, 0, 9, 0]);
        // … | Read=1 | id 5 | file "C" (len 1, 'C') | offset 2 | len 3
        let read = BackupOp::Read { id: 5, file: "C".into(), offset: 2, len: 3 };
        assert_eq!(
            encode_frame(&request(Operation::Backup(read))),
            vec![0, 0, 0, 12, 1, 0, 0, 0, 0, 9, 1, 5, 1, b'C', 2, 3]
        );
        let reply = Response::V1(Ok(Reply {
            causal_token: CausalToken::default(),
            body: ReplyBody::Backup(Box::new(BackupReport::Chunk(vec![9, 9]))),
        }));
        let frame = encode_frame(&reply);
        assert_eq!(decode_frame_body::<Response>(&frame[4..], 1 << 20).unwrap(), reply);
    }

    #[test]
    fn golden_read_set_frames() {
        let request = |op| Request::V1(RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op });
        let key: Key = "a/b".parse().unwrap();
        // length 11 | format 1 | V1=0 | None=0 | None=0 | timeout 0 | ReadSet=11 | key "a" "b" | Count=1
        assert_eq!(
            encode_frame(&request(Operation::ReadSet { key: key.clone(), part: SetPart::Count })),
            vec![0, 0, 0, 11, 1, 0, 0, 0, 0, 11, 1, b'a', 1, b'b', 1]
        );
        // … | Page=2 | Some=1 after "x" | limit 5
        let page = SetPart::Page { after: Some(b"x".to_vec()), limit: 5 };
        assert_eq!(
            encode_frame(&request(Operation::ReadSet { key, part: page })),
            vec![0, 0, 0, 15, 1, 0, 0, 0, 0, 11, 1, b'a', 1, b'b', 2, 1, 1, b'x', 5]
        );
        // Reply: V1=0 | Ok=0 | empty token | SetPart=11 | Contains=0 | [true, false]
        let reply = Response::V1(Ok(Reply {
            causal_token: CausalToken::default(),
            body: ReplyBody::SetPart(SetPartReply::Contains(vec![true, false])),
        }));
        let frame = encode_frame(&reply);
        assert_eq!(&frame[4..], &[1, 0, 0, 0, 11, 0, 2, 1, 0]);
        assert_eq!(decode_frame_body::<Response>(&frame[4..], 1 << 20).unwrap(), reply);
    }

    #[test]
    fn golden_storage_frames() {
        let request =
            Request::V1(RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op: Operation::Storage });
        // length 6 | format 1 | V1=0 | None=0 | None=0 | timeout 0 | Storage=13
        assert_eq!(encode_frame(&request), vec![0, 0, 0, 6, 1, 0, 0, 0, 0, 13]);
        let space = SpaceReport {
            name: "data".into(),
            sst_bytes: 1,
            live_bytes_estimate: 2,
            memtable_bytes: 3,
            keys_estimate: 4,
        };
        let report = StorageReport { format_version: 2, spaces: vec![space], wal_bytes: 5, dir_bytes: 6 };
        let reply = Response::V1(Ok(Reply { causal_token: CausalToken::default(), body: ReplyBody::Storage(report) }));
        let frame = encode_frame(&reply);
        // … | Storage=13 | format 2 | [ "data" 1 2 3 4 ] | 5 | 6
        assert_eq!(&frame[4..], &[1, 0, 0, 0, 13, 2, 1, 4, b'd', b'a', b't', b'a', 1, 2, 3, 4, 5, 6]);
        assert_eq!(decode_frame_body::<Response>(&frame[4..], 1 << 20).unwrap(), reply);
    }

    #[test]
    fn golden_read_map_frames() {
        let request = |op| Request::V1(RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op });
        let key: Key = "a/b".parse().unwrap();
        // length 14 | format 1 | V1=0 | None=0 | None=0 | timeout 0 | ReadMap=12 | key "a" "b" |
        // Fields=0 | ["f"]
        assert_eq!(
            encode_frame(&request(Operation::ReadMap { key: key.clone(), part: MapPart::Fields(vec!["f".into()]) })),
            vec![0, 0, 0, 14, 1, 0, 0, 0, 0, 12, 1, b'a', 1, b'b', 0, 1, 1, b'f']
        );
        // … | Page=2 | Some=1 after "x" | limit 5
        let page = MapPart::Page { after: Some("x".into()), limit: 5 };
        assert_eq!(
            encode_frame(&request(Operation::ReadMap { key, part: page })),
            vec![0, 0, 0, 15, 1, 0, 0, 0, 0, 12, 1, b'a', 1, b'b', 2, 1, 1, b'x', 5]
        );
        // Reply: V1=0 | Ok=0 | empty token | MapPart=12 | Fields=0 | [Some(Counter(3)), None]
        let reply = Response::V1(Ok(Reply {
            causal_token: CausalToken::default(),
            body: ReplyBody::MapPart(MapPartReply::Fields(vec![Some(Value::Counter(3)), None])),
        }));
        let frame = encode_frame(&reply);
        assert_eq!(&frame[4..], &[1, 0, 0, 0, 12, 0, 2, 1, 0, 6, 0]);
        assert_eq!(decode_frame_body::<Response>(&frame[4..], 1 << 20).unwrap(), reply);
        // … | MapPart=12 | Page=2 | [("n", Counter(3))] | Some=1 "n"
        let page = MapPartReply::Page { fields: vec![("n".into(), Value::Counter(3))], next: Some("n".into()) };
        let reply = Response::V1(Ok(Reply { causal_token: CausalToken::default(), body: ReplyBody::MapPart(page) }));
        let frame = encode_frame(&reply);
        assert_eq!(&frame[4..], &[1, 0, 0, 0, 12, 2, 1, 1, b'n', 0, 6, 1, 1, b'n']);
        assert_eq!(decode_frame_body::<Response>(&frame[4..], 1 << 20).unwrap(), reply);
    }

    #[test]
    fn golden_pipeline_frames() {
        let key: Key = "a/b".parse().unwrap();
        let request = Request::V1(RequestV1 {
            consistency: None,
            causal_token: None,
            timeout_ms: 0,
            op: Operation::Pipeline(vec![Operation::Read { key, expected: None }]),
        });
        // length 13 | format 1 | V1=0 | None=0 | None=0 | timeout 0 | Pipeline=14 | 1 op | Read=2 |
        // key "a" "b" | None=0
        assert_eq!(encode_frame(&request), vec![0, 0, 0, 13, 1, 0, 0, 0, 0, 14, 1, 2, 1, b'a', 1, b'b', 0]);
        let answers = vec![Ok(ReplyBody::Written { counter: None }), Err(ErrorReply::new(ErrorCode::WrongType, "x"))];
        let reply =
            Response::V1(Ok(Reply { causal_token: CausalToken::default(), body: ReplyBody::Pipeline(answers) }));
        let frame = encode_frame(&reply);
        // V1=0 | Ok=0 | empty token | Pipeline=14 | 2 answers | Ok=0 Written=0 None=0 |
        // Err=1 WrongType=1 "x"
        assert_eq!(&frame[4..], &[1, 0, 0, 0, 14, 2, 0, 0, 0, 1, 1, 1, b'x']);
        assert_eq!(decode_frame_body::<Response>(&frame[4..], 1 << 20).unwrap(), reply);
    }

    #[test]
    fn nested_pipelines_do_not_decode_however_deep() {
        let frame = |depth: usize, body: &[u8]| {
            // format 1 | V1=0 | None=0 | None=0 | timeout 0 | then `depth` × (Pipeline=14, 1 op) | body
            let mut bytes = vec![1, 0, 0, 0, 0];
            for _ in 0..depth {
                bytes.extend([14, 1]);
            }
            bytes.extend(body);
            bytes
        };
        let read = [2, 1, b'a', 1, b'b', 0];
        assert!(decode_frame_body::<Request>(&frame(1, &read), 1 << 20).is_ok());
        for depth in [2, 3, 1_000_000] {
            let err = decode_frame_body::<Request>(&frame(depth, &read), 4 << 20).unwrap_err();
            assert!(err.to_string().contains("a pipeline inside a pipeline"), "depth {depth}: {err}");
        }
        // The guard is released after a refusal: the next pipeline on this thread decodes.
        assert!(decode_frame_body::<Request>(&frame(1, &read), 1 << 20).is_ok());

        // Answers: V1=0 | Ok=0 | empty token | then `depth` × (Pipeline=14, 1 answer, Ok=0) | Value(None)
        let answers = |depth: usize| {
            let mut bytes = vec![1, 0, 0, 0];
            for _ in 0..depth {
                bytes.extend([14, 1, 0]);
            }
            bytes.extend([2, 0]);
            bytes
        };
        assert!(decode_frame_body::<Response>(&answers(1), 1 << 20).is_ok());
        let err = decode_frame_body::<Response>(&answers(1_000_000), 4 << 20).unwrap_err();
        assert!(err.to_string().contains("a pipeline inside a pipeline"), "{err}");
    }

    #[test]
    fn golden_data_census_frames() {
        let request =
            Request::V1(RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op: Operation::DataCensus });
        // length 6 | format 1 | V1=0 | None=0 | None=0 | timeout 0 | DataCensus=15
        assert_eq!(encode_frame(&request), vec![0, 0, 0, 6, 1, 0, 0, 0, 0, 15]);
        let report = CensusReport {
            live_keys: 1,
            live_bytes: 2,
            deleted_keys: 3,
            deleted_bytes: 4,
            removed_fields: 5,
            unreadable: 0,
            taken_ms: 6,
        };
        let reply =
            Response::V1(Ok(Reply { causal_token: CausalToken::default(), body: ReplyBody::DataCensus(Some(report)) }));
        let frame = encode_frame(&reply);
        // V1=0 | Ok=0 | empty token | DataCensus=15 | Some=1 | 1 2 3 4 5 0 6
        assert_eq!(&frame[4..], &[1, 0, 0, 0, 15, 1, 1, 2, 3, 4, 5, 0, 6]);
        assert_eq!(decode_frame_body::<Response>(&frame[4..], 1 << 20).unwrap(), reply);
    }

    #[test]
    fn frames_round_trip() {
        let request = Request::V1(RequestV1 {
            consistency: Some(Consistency::Quorum),
            causal_token: Some(CausalToken([(NodeId(1), 2)].into_iter().collect())),
            timeout_ms: 500,
            op: Operation::Write {
                key: "a/b".parse().unwrap(),
                mutation: Mutation::SetAdd { members: vec![b"x".to_vec()] },
                idempotency_id: Some(IdempotencyId(7)),
            },
        });
        let frame = encode_frame(&request);
        assert_eq!(decode_frame_body::<Request>(&frame[4..], 1 << 20).unwrap(), request);
    }
}
