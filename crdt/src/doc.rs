//! `doc`: a collaborative JSON-like document backed by automerge.
//!
//! The replicated state is the *set of automerge changes*, keyed by change hash, each kept in
//! automerge's own binary encoding. A grow-only set of changes is trivially a lattice (merge is union),
//! so delivery in any order, duplicated, converges; automerge itself orders the changes by their
//! dependency hashes when the document is materialised. Because the bytes are automerge's own, a JS or
//! Rust automerge app can send its changes here and receive changes it can apply directly.
//!
//! Cost: materialising replays the whole history (~20 µs and ~20 KB per small document, ~50 ms for
//! 10,000 changes), so the documents materialised last are cached (`doc_cache`): by their change
//! set, or — for a caller that keeps the changes itself, as the node does one storage record per
//! change — by a version the caller names, on a *partial* value ([`DocCrdt::set_partial`]) that
//! holds only the changes a write names. An operation on a cached document costs a copy of it
//! (~0.2–0.3 ms at 10,000 small changes) instead of a replay. Prefer the native types for anything
//! that is not really a document.
//!
//! Changes from clients are hostile until checked ([`DocCrdt::client_delta`]), before automerge
//! parses them: only change chunks are taken (a document or bundle chunk would be parsed, and its
//! columns inflated, before automerge said it is not a change), a deflate-compressed change is
//! inflated with a bound ([`inflated_len`]: a few kilobytes can inflate to gigabytes), and once
//! applied, objects may nest at most [`MAX_DOC_DEPTH`] levels (reading a document walks it
//! recursively). Actor ids of exactly 8 bytes are the replicas' own (`doc_put` and deletes are
//! authored as the coordinating node, its id big-endian). A client change under *another* replica's
//! actor that this document does not hold already is refused: that replica may be authoring its own
//! change with the same sequence number right now, and two changes with one actor and sequence
//! number make the document unreadable on every replica. Under the coordinating replica's own actor
//! a change is taken (the replica authors its next change after everything it holds of its own
//! actor, so nothing can collide: a document copied to another key on the same node stays
//! writable), and so is a replica's change the document holds (a client sending back everything it
//! has). Clients author under other actor ids (automerge's default is 16 random bytes).

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, AutomergeError, Change, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, ROOT};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{doc_cache, CrdtError, Lattice, NodeId};

/// Deepest nesting of objects (maps, lists, text) in a document; the same bound `doc_put` has
/// through its JSON parser's recursion limit.
pub const MAX_DOC_DEPTH: usize = 128;

/// Length of the actor ids replicas author their changes under (a node id, big-endian).
const REPLICA_ACTOR_LEN: usize = 8;

/// The automerge chunk header: magic bytes, then a 4-byte checksum, then the chunk type.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk types automerge gives its binary formats.
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED_CHANGE: u8 = 2;

/// The size of the automerge change `bytes` once inflated (its own size unless it is a compressed
/// change), reading at most `limit + 1` inflated bytes: more is [`CrdtError::TooLarge`]. Anything
/// but a change chunk is refused without being parsed further.
pub fn inflated_len(bytes: &[u8], limit: usize) -> Result<usize, CrdtError> {
    let invalid = |why: &str| CrdtError::InvalidDocChange(why.to_string());
    if bytes.len() < 9 || bytes[..4] != MAGIC {
        return Err(invalid("not an automerge change (bad magic bytes)"));
    }
    match bytes[8] {
        CHUNK_CHANGE if bytes.len() > limit => {
            Err(CrdtError::TooLarge(format!("a change of {} bytes; at most {limit} are accepted", bytes.len())))
        }
        CHUNK_CHANGE => Ok(bytes.len()),
        CHUNK_COMPRESSED_CHANGE => {
            let (data_len, leb_len) = uleb128(&bytes[9..]).ok_or_else(|| invalid("truncated chunk header"))?;
            let start = 9 + leb_len;
            let data = usize::try_from(data_len)
                .ok()
                .and_then(|len| bytes.get(start..start.checked_add(len)?))
                .ok_or_else(|| invalid("truncated compressed change"))?;
            let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            let mut inflated = std::io::Read::take(flate2::read::DeflateDecoder::new(data), bound);
            let len = std::io::copy(&mut inflated, &mut std::io::sink())
                .map_err(|e| CrdtError::InvalidDocChange(format!("compressed change: {e}")))?;
            let len = start as u64 + len;
            if len > limit as u64 {
                return Err(CrdtError::TooLarge(format!(
                    "a compressed change of {} bytes inflates past {limit} bytes",
                    bytes.len()
                )));
            }
            Ok(len as usize)
        }
        other => Err(CrdtError::InvalidDocChange(format!(
            "chunk type {other}: only automerge changes (chunk types 1 and 2) are accepted"
        ))),
    }
}

/// An unsigned LEB128 number at the start of `bytes`, and how many bytes it took.
fn uleb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The state of a `doc` key: every automerge change it has seen.
///
/// A value may also stand for a document whose changes it holds only some of
/// ([`DocCrdt::set_partial`]): the node keeps one storage record per change and loads only those a
/// write names, with the document materialised from all of them (from a cache) when the write
/// needs it. Such a value is a view for computing and joining deltas, never a state to encode:
/// serialising it would drop the changes it does not hold. Equality compares the changes held.
///
/// Keeping a partial value's document current costs little. Automerge applies a batch of changes
/// to a large document in about the time of one (~3 ms at 10,000 changes), so the changes a
/// partial value joins wait as *pending* until something needs the document
/// ([`DocCrdt::settle`]); and a delta made here from a partial value carries the document it made
/// (the change is already in it), so joining it back applies nothing.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct DocCrdt {
    changes: BTreeMap<[u8; 32], Vec<u8>>,
    /// Whether `changes` is only part of the document's changes.
    #[serde(skip)]
    partial: bool,
    /// For a partial value: the document materialised from every change but `pending`; `None`
    /// when it is not at hand (anything that needs the document then fails).
    #[serde(skip)]
    whole: Option<Arc<Automerge>>,
    /// For a partial value with a document: changes joined since, not applied to it yet.
    #[serde(skip)]
    pending: Arc<Vec<Vec<u8>>>,
    /// On a delta made from a partial value: the document it was made on and the one it made.
    #[serde(skip)]
    authored: Option<Authored>,
}

/// The most changes a partial value keeps pending: past it, it drops its document (a read then
/// materialises the document again) rather than grow without bound.
const MAX_PENDING: usize = 256;

/// What a delta made from a partial value knows of the document it was made on.
#[derive(Clone)]
struct Authored {
    /// The document it was made on (held, so that no other document can take its address).
    base: Arc<Automerge>,
    /// That document with the delta applied.
    after: Arc<Automerge>,
}

/// A document as a cache keeps it for a caller that names its versions (see
/// [`DocCrdt::cache_as`]): materialised, perhaps with changes pending.
#[derive(Clone)]
pub struct CachedDoc(doc_cache::Loaded);

impl CachedDoc {
    /// The document cached as version `version` of what `owner` names, if any.
    pub fn get(owner: &[u8], version: u64) -> Option<CachedDoc> {
        doc_cache::get(&doc_cache::version_tag(owner, version)).map(CachedDoc)
    }
}

impl PartialEq for DocCrdt {
    fn eq(&self, other: &Self) -> bool {
        self.changes == other.changes
    }
}

impl Eq for DocCrdt {}

impl std::fmt::Debug for DocCrdt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocCrdt")
            .field("changes", &self.changes.len())
            .field("partial", &self.partial)
            .field("whole", &self.whole.is_some())
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// A document materialised for reading (shared: cloning it is cheap).
#[derive(Clone)]
pub struct MaterializedDoc(Arc<Automerge>);

impl MaterializedDoc {
    /// Caches this document as version `version` of what `owner` names (see
    /// [`DocCrdt::cache_as`]), with nothing pending.
    pub fn cache_as(&self, owner: &[u8], version: u64, changes: usize) {
        cache_version(owner, version, changes, doc_cache::Loaded { doc: self.0.clone(), pending: Arc::default() });
    }

    /// The document as JSON (text and lists included). An error for a document automerge cannot
    /// serialise (0.12 panics on some malformed changes here too; see `guarded`).
    pub fn to_json(&self) -> Result<serde_json::Value, CrdtError> {
        guarded("to JSON", || {
            serde_json::to_value(automerge::AutoSerde::from(self.0.as_ref()))
                .map_err(|e| CrdtError::InvalidDocChange(format!("document does not serialise: {e}")))
        })
    }

    /// The document's heads, hex-encoded.
    pub fn heads(&self) -> Vec<String> {
        self.0.get_heads().iter().map(ToString::to_string).collect()
    }

    /// Whether objects nest deeper than `max` levels below the root: the first depth past it found,
    /// walking without recursion (and stopping there: a 100 000-level document costs `max` steps).
    pub fn depth_beyond(&self, max: usize) -> Option<usize> {
        let mut todo = vec![(ROOT, 0usize)];
        while let Some((obj, depth)) = todo.pop() {
            if depth > max {
                return Some(depth);
            }
            let children = match self.0.object_type(&obj) {
                Ok(ObjType::Map | ObjType::Table) => self
                    .0
                    .map_range(&obj, ..)
                    .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
                    .map(|item| item.id())
                    .collect::<Vec<_>>(),
                Ok(ObjType::List | ObjType::Text) => self
                    .0
                    .list_range(&obj, ..)
                    .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
                    .map(|item| item.id())
                    .collect(),
                Err(_) => Vec::new(),
            };
            todo.extend(children.into_iter().map(|child| (child, depth + 1)));
        }
        None
    }

    /// The changes a peer that has `heads` lacks, in automerge's binary encoding.
    pub fn changes_since(&self, heads: &[String]) -> Result<Vec<Vec<u8>>, CrdtError> {
        let heads = parse_heads(heads)?;
        guarded("changes since", || {
            Ok(self.0.get_changes(&heads).into_iter().map(|c| c.raw_bytes().to_vec()).collect())
        })
    }
}

/// Runs automerge over changes that came from outside (a client's, a peer's, the disk's). automerge
/// 0.12 panics on some malformed changes instead of answering an error (parsing them, applying them,
/// serialising or listing a document holding them; found by fuzzing, `docs/fuzzing.md`): such a panic
/// becomes [`CrdtError::InvalidDocChange`]. The panic hook still reports it. Unwind safety: `f` only
/// builds or reads a document that is dropped (or that the caller stops using) once this fails.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, CrdtError>) -> Result<T, CrdtError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(CrdtError::InvalidDocChange(format!("{what}: automerge failed on these changes: {reason}")))
    })
}

/// Parses hex change hashes.
pub fn parse_heads(heads: &[String]) -> Result<Vec<ChangeHash>, CrdtError> {
    heads
        .iter()
        .map(|h| h.parse::<ChangeHash>().map_err(|_| CrdtError::InvalidDocChange(format!("bad change hash {h:?}"))))
        .collect()
}

impl DocCrdt {
    /// Number of changes held.
    pub fn change_count(&self) -> usize {
        self.changes.len()
    }

    /// Replays every change into an automerge document. Changes whose dependencies have not arrived
    /// yet stay pending inside automerge and do not show.
    pub fn materialize(&self) -> Result<MaterializedDoc, CrdtError> {
        if self.partial {
            let whole = self.whole.clone().ok_or_else(|| {
                CrdtError::InvalidDocChange("the document is held only in part here and was not materialised".into())
            })?;
            if self.pending.is_empty() {
                return Ok(MaterializedDoc(whole));
            }
            let mut doc = Arc::unwrap_or_clone(whole);
            apply(&mut doc, &self.pending)?;
            return Ok(MaterializedDoc(Arc::new(doc)));
        }
        let fingerprint = self.fingerprint();
        if let Some(loaded) = doc_cache::get(&fingerprint) {
            return Ok(MaterializedDoc(loaded.doc));
        }
        let doc = self.replay()?;
        doc_cache::put(
            fingerprint,
            self.changes.len(),
            doc_cache::Loaded { doc: doc.0.clone(), pending: Arc::default() },
        );
        Ok(doc)
    }

    /// Like [`DocCrdt::materialize`], without keeping the result in the cache by change set: for a
    /// caller that caches it under its own name ([`DocCrdt::cache_as`]), so that it is not held
    /// (and counted against the cache's bound) twice.
    pub fn materialize_uncached(&self) -> Result<MaterializedDoc, CrdtError> {
        if self.partial {
            return self.materialize();
        }
        match doc_cache::get(&self.fingerprint()) {
            Some(loaded) => Ok(MaterializedDoc(loaded.doc)),
            None => self.replay(),
        }
    }

    /// Applies a partial value's pending changes to its document (see the type's docs); whether
    /// there were any. If automerge refuses them the document is dropped, and anything needing it
    /// fails as materialising the whole would.
    pub fn settle(&mut self) -> Result<bool, CrdtError> {
        let Some(whole) = self.whole.as_mut().filter(|_| !self.pending.is_empty()) else { return Ok(false) };
        let applied = apply(Arc::make_mut(whole), &self.pending);
        self.pending = Arc::default();
        if applied.is_err() {
            self.whole = None;
        }
        applied.map(|()| true)
    }

    /// Caches a partial value's document (with what is pending) as version `version` of what
    /// `owner` names, `changes` the document's number of changes (the cache's bound); nothing if
    /// it has none. A caller that keeps a document's changes itself names its versions so (the
    /// node: a key and its storage header's version, new at every write), and a name must never
    /// come back for other changes.
    pub fn cache_as(&self, owner: &[u8], version: u64, changes: usize) {
        if let Some(doc) = self.whole.clone().filter(|_| self.partial) {
            cache_version(owner, version, changes, doc_cache::Loaded { doc, pending: self.pending.clone() });
        }
    }

    /// Makes this value stand for a document of which it holds only some changes (see the type's
    /// docs), `whole` the document materialised from all of them (some perhaps pending) if it is at
    /// hand.
    pub fn set_partial(&mut self, whole: Option<CachedDoc>) {
        self.partial = true;
        (self.whole, self.pending) = match whole {
            Some(CachedDoc(loaded)) => (Some(loaded.doc), loaded.pending),
            None => (None, Arc::default()),
        };
    }

    /// Like [`DocCrdt::set_partial`], with a document materialised from all of the changes.
    pub fn set_partial_materialized(&mut self, whole: MaterializedDoc) {
        self.set_partial(Some(CachedDoc(doc_cache::Loaded { doc: whole.0, pending: Arc::default() })));
    }

    /// Whether this value holds only some of its document's changes.
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// The change `hash`, in automerge's binary encoding, if this value holds it.
    pub fn change(&self, hash: &[u8; 32]) -> Option<&[u8]> {
        self.changes.get(hash).map(Vec::as_slice)
    }

    /// Every change held, by hash.
    pub fn changes(&self) -> impl Iterator<Item = (&[u8; 32], &[u8])> {
        self.changes.iter().map(|(hash, bytes)| (hash, bytes.as_slice()))
    }

    /// Puts the change `hash` in (`Some`) or takes it out (`None`) as storage holds it, without
    /// touching the materialised document: for assembling a value from its stored records.
    pub fn put_change(&mut self, hash: [u8; 32], bytes: Option<Vec<u8>>) {
        match bytes {
            Some(bytes) => {
                self.changes.insert(hash, bytes);
            }
            None => {
                self.changes.remove(&hash);
            }
        }
    }

    /// Takes every change out (and the materialised document): what is left is what a storage
    /// header keeps.
    pub fn take_changes(&mut self) -> BTreeMap<[u8; 32], Vec<u8>> {
        self.whole = None;
        self.pending = Arc::default();
        self.authored = None;
        self.partial = false;
        std::mem::take(&mut self.changes)
    }

    /// The hashes of the automerge changes `changes` (checked as [`DocCrdt::client_delta`] checks a
    /// client's before parsing them): the changes a write of them names.
    pub fn hashes_of(changes: &[Vec<u8>], max_inflated: usize) -> Result<Vec<[u8; 32]>, CrdtError> {
        for bytes in changes {
            inflated_len(bytes, max_inflated)?;
        }
        Ok(DocCrdt::apply_delta(changes)?.changes.into_keys().collect())
    }

    /// The fingerprint of this change set (the cache's key).
    fn fingerprint(&self) -> doc_cache::Fingerprint {
        doc_cache::fingerprint(self.changes.keys())
    }

    /// Applies every change to a new automerge document.
    fn replay(&self) -> Result<MaterializedDoc, CrdtError> {
        guarded("materialize", || {
            let mut doc = Automerge::new();
            let changes = self
                .changes
                .values()
                .map(|bytes| Change::try_from(bytes.as_slice()).map_err(|e| CrdtError::InvalidDocChange(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            doc.apply_changes(changes).map_err(|e| CrdtError::InvalidDocChange(e.to_string()))?;
            Ok(MaterializedDoc(Arc::new(doc)))
        })
    }

    /// The delta holding changes sent by an automerge peer, validated.
    pub fn apply_delta(changes: &[Vec<u8>]) -> Result<DocCrdt, CrdtError> {
        guarded("parse", || {
            let mut delta = DocCrdt::default();
            for bytes in changes {
                let change =
                    Change::try_from(bytes.as_slice()).map_err(|e| CrdtError::InvalidDocChange(e.to_string()))?;
                delta.changes.insert(change.hash().0, change.raw_bytes().to_vec());
            }
            Ok(delta)
        })
    }

    /// Like [`DocCrdt::apply_delta`], for changes a *client* sends (module docs): each must be a
    /// change chunk inflating to at most `max_inflated` bytes (checked before automerge parses it),
    /// not authored under another replica's actor id than the `coordinator`'s unless the document
    /// holds it already; and the document must stay readable —
    /// automerge refuses two different changes with the same actor and sequence number, which would
    /// make the key fail every later read, and fails to serialise some malformed ones — and nest at
    /// most [`MAX_DOC_DEPTH`] levels.
    pub fn client_delta(
        &self,
        changes: &[Vec<u8>],
        max_inflated: usize,
        coordinator: NodeId,
    ) -> Result<DocCrdt, CrdtError> {
        for bytes in changes {
            inflated_len(bytes, max_inflated)?;
        }
        let delta = DocCrdt::apply_delta(changes)?;
        for (hash, bytes) in &delta.changes {
            // A replica's change sent back (a client syncing all it has) is harmless: it is the
            // very change, held here already. Any other is refused.
            if self.changes.contains_key(hash) {
                continue;
            }
            let change = Change::try_from(bytes.as_slice()).map_err(|e| CrdtError::InvalidDocChange(e.to_string()))?;
            let actor = change.actor_id().to_bytes();
            if actor.len() == REPLICA_ACTOR_LEN && actor != coordinator.0.to_be_bytes() {
                return Err(CrdtError::InvalidDocChange(format!(
                    "actor ids of {REPLICA_ACTOR_LEN} bytes are reserved for Meridian's replicas, and this node does \
                     not hold this change of another replica; author changes under another actor id (automerge's \
                     default is 16 random bytes), or send it to the node that made it"
                )));
            }
        }
        let materialized = if self.partial {
            // The document with the client's changes applied in one batch (automerge ignores any it
            // has): what joining the delta makes.
            let mut doc = Arc::unwrap_or_clone(self.materialize()?.0);
            let changes: Vec<Vec<u8>> = delta.changes.values().cloned().collect();
            apply(&mut doc, &changes)?;
            MaterializedDoc(Arc::new(doc))
        } else {
            let mut joined = self.clone();
            joined.join(&delta);
            joined.materialize()?
        };
        let mut delta = delta;
        delta.authored = self.authored_on(&materialized);
        // Depth first: serialising to JSON recurses, so a very deep document must be refused before.
        if let Some(depth) = materialized.depth_beyond(MAX_DOC_DEPTH) {
            return Err(CrdtError::InvalidDocChange(format!(
                "objects would nest {depth} levels deep; a document may nest at most {MAX_DOC_DEPTH}"
            )));
        }
        materialized.to_json()?;
        Ok(delta)
    }

    /// For a delta made from this value, when it is partial and its document current: what lets
    /// joining the delta back take `after` instead of applying it.
    fn authored_on(&self, after: &MaterializedDoc) -> Option<Authored> {
        let base = self.whole.as_ref().filter(|_| self.partial && self.pending.is_empty())?;
        Some(Authored { base: base.clone(), after: after.0.clone() })
    }

    /// The delta that sets each field of the JSON object `fields` at the document root, authored by `node`.
    pub fn put_root_delta(&self, node: NodeId, fields: &serde_json::Value) -> Result<DocCrdt, CrdtError> {
        let serde_json::Value::Object(fields) = fields else {
            return Err(CrdtError::InvalidDocChange("doc_put needs a JSON object".into()));
        };
        self.local_change(node, |tx| {
            for (key, value) in fields {
                put_json(tx, &ROOT, key.as_str().into(), value)?;
            }
            Ok(())
        })
    }

    /// The delta that deletes every root field observed here (the document's part of a key delete).
    pub fn reset_delta(&self, node: NodeId) -> Result<DocCrdt, CrdtError> {
        let doc = self.materialize()?;
        let keys: Vec<String> = guarded("list fields", || Ok(doc.0.keys(ROOT).collect()))?;
        self.local_change(node, |tx| {
            for key in &keys {
                tx.delete(ROOT, key.as_str())?;
            }
            Ok(())
        })
    }

    fn local_change<F>(&self, node: NodeId, f: F) -> Result<DocCrdt, CrdtError>
    where
        F: FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), AutomergeError>,
    {
        let MaterializedDoc(doc) = self.materialize()?;
        let mut doc = Arc::unwrap_or_clone(doc).with_actor(ActorId::from(node.0.to_be_bytes().to_vec()));
        let success = guarded("local change", || {
            doc.transact(f).map_err(|failure| CrdtError::InvalidDocChange(failure.error.to_string()))
        })?;
        // Only the change this transaction made: an empty transaction makes none, and then the delta is
        // empty (`get_last_local_change` would hand back an older change of the same actor instead).
        let mut delta = DocCrdt::default();
        if let Some(hash) = success.hash {
            let change = doc
                .get_change_by_hash(&hash)
                .ok_or_else(|| CrdtError::InvalidDocChange(format!("committed change {hash} not found")))?;
            delta.changes.insert(hash.0, change.raw_bytes().to_vec());
            // `doc` is now this state joined with the delta: the state the write will store, and
            // what the next operation on the document materialises. (A partial value's caller
            // caches under its own names: its changes are not the document's.)
            if self.partial {
                delta.authored = self.authored_on(&MaterializedDoc(Arc::new(doc)));
                return Ok(delta);
            }
            let mut after: Vec<&[u8; 32]> = self.changes.keys().collect();
            if let Err(at) = after.binary_search(&&hash.0) {
                after.insert(at, &hash.0);
            }
            let count = after.len();
            doc_cache::put(
                doc_cache::fingerprint(after.into_iter()),
                count,
                doc_cache::Loaded { doc: Arc::new(doc), pending: Arc::default() },
            );
        }
        Ok(delta)
    }
}

fn put_json(
    tx: &mut automerge::transaction::Transaction<'_>,
    obj: &ObjId,
    prop: automerge::Prop,
    value: &serde_json::Value,
) -> Result<(), AutomergeError> {
    use serde_json::Value as J;
    match value {
        J::Object(map) => {
            let child = tx.put_object(obj, prop, ObjType::Map)?;
            for (key, value) in map {
                put_json(tx, &child, key.as_str().into(), value)?;
            }
        }
        J::Array(items) => {
            let child = tx.put_object(obj, prop, ObjType::List)?;
            for (index, item) in items.iter().enumerate() {
                insert_json(tx, &child, index, item)?;
            }
        }
        // Strings become automerge text, as automerge 2+/3 JavaScript apps write and expect them
        // (a scalar string there is an immutable `RawString`, not editable text).
        J::String(text) => {
            let child = tx.put_object(obj, prop, ObjType::Text)?;
            tx.splice_text(&child, 0, 0, text)?;
        }
        scalar => tx.put(obj, prop, json_scalar(scalar))?,
    }
    Ok(())
}

fn insert_json(
    tx: &mut automerge::transaction::Transaction<'_>,
    list: &ObjId,
    index: usize,
    value: &serde_json::Value,
) -> Result<(), AutomergeError> {
    use serde_json::Value as J;
    match value {
        J::Object(map) => {
            let child = tx.insert_object(list, index, ObjType::Map)?;
            for (key, value) in map {
                put_json(tx, &child, key.as_str().into(), value)?;
            }
        }
        J::Array(items) => {
            let child = tx.insert_object(list, index, ObjType::List)?;
            for (i, item) in items.iter().enumerate() {
                insert_json(tx, &child, i, item)?;
            }
        }
        J::String(text) => {
            let child = tx.insert_object(list, index, ObjType::Text)?;
            tx.splice_text(&child, 0, 0, text)?;
        }
        scalar => tx.insert(list, index, json_scalar(scalar))?,
    }
    Ok(())
}

fn json_scalar(value: &serde_json::Value) -> ScalarValue {
    use serde_json::Value as J;
    match value {
        J::Null => ScalarValue::Null,
        J::Bool(b) => ScalarValue::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(u)) => ScalarValue::Uint(u),
            _ => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        J::Array(_) | J::Object(_) | J::String(_) => unreachable!("containers and text are handled by the caller"),
    }
}

impl Lattice for DocCrdt {
    /// The union of the changes. A partial value (see the type's docs) also brings its document up
    /// to date: it takes the document a delta made from it carries, or keeps the changes it did
    /// not hold pending. So the caller must have given it every change of `other` that the whole
    /// holds (or this would count them as new; automerge itself ignores a change it has).
    fn join(&mut self, other: &Self) {
        let mut added = Vec::new();
        for (hash, bytes) in &other.changes {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.changes.entry(*hash) {
                slot.insert(bytes.clone());
                added.push(bytes.clone());
            }
        }
        let Some(whole) = self.whole.as_mut().filter(|_| !added.is_empty()) else { return };
        match &other.authored {
            // Made from this very document, with nothing pending: `after` is it, joined with `other`.
            Some(authored) if Arc::ptr_eq(&authored.base, whole) && self.pending.is_empty() => {
                *whole = authored.after.clone();
            }
            _ if self.pending.len() + added.len() > MAX_PENDING => {
                self.whole = None;
                self.pending = Arc::default();
            }
            _ => Arc::make_mut(&mut self.pending).extend(added),
        }
    }
}

/// Keeps `loaded` in the cache as version `version` of what `owner` names.
fn cache_version(owner: &[u8], version: u64, changes: usize, loaded: doc_cache::Loaded) {
    doc_cache::put(doc_cache::version_tag(owner, version), changes, loaded);
}

/// Applies the automerge changes `changes` to `doc` in one batch.
fn apply(doc: &mut Automerge, changes: &[Vec<u8>]) -> Result<(), CrdtError> {
    guarded("apply", || {
        let changes = changes
            .iter()
            .map(|bytes| Change::try_from(bytes.as_slice()).map_err(|e| CrdtError::InvalidDocChange(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        doc.apply_changes(changes).map_err(|e| CrdtError::InvalidDocChange(e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a document reads as, and its heads.
    fn seen(doc: &MaterializedDoc) -> (serde_json::Value, Vec<String>) {
        (doc.to_json().unwrap(), doc.heads())
    }

    proptest::proptest! {
        /// Whatever mix of local writes, deletes and merges two replicas make, the cached document
        /// reads exactly as the one replayed from every change.
        #[test]
        fn the_cache_never_changes_what_a_document_reads(
            ops in proptest::collection::vec((0u8..4, 0u8..2, 0u8..3, 0i64..100), 1..24)
        ) {
            let mut replicas = [DocCrdt::default(), DocCrdt::default()];
            for (op, r, field, value) in ops {
                let r = r as usize;
                let node = NodeId(r as u64 + 1);
                match op {
                    0 | 1 => {
                        let delta = replicas[r].put_root_delta(node, &json!({ format!("f{field}"): value })).unwrap();
                        replicas[r].join(&delta);
                    }
                    2 => {
                        let delta = replicas[r].reset_delta(node).unwrap();
                        replicas[r].join(&delta);
                    }
                    _ => {
                        let other = replicas[1 - r].clone();
                        replicas[r].join(&other);
                    }
                }
                for replica in &replicas {
                    proptest::prop_assert_eq!(seen(&replica.materialize().unwrap()), seen(&replica.replay().unwrap()));
                }
            }
        }
    }

    proptest::proptest! {
        /// A partial value (some changes and the materialised whole, as the node keeps a document
        /// per change) computes the same deltas as the whole value, and whatever it joins — its
        /// own deltas (taking the document they carry), a peer's (kept pending), duplicates — its
        /// document stays the one the whole value materialises, settled or not.
        #[test]
        fn a_partial_value_acts_as_the_whole(
            ops in proptest::collection::vec((0u8..6, 0u8..3, 0i64..100), 1..24)
        ) {
            let node = NodeId(7);
            let mut whole = DocCrdt::default();
            let mut peer = DocCrdt::default();
            // The partial view starts with none of the changes but the materialised document.
            let mut partial = DocCrdt::default();
            partial.set_partial_materialized(whole.materialize().unwrap());
            for (step, (op, field, value)) in ops.into_iter().enumerate() {
                let json = json!({ format!("f{field}"): value });
                let (from_whole, from_partial) = match op {
                    0 | 1 => (whole.put_root_delta(node, &json).unwrap(), partial.put_root_delta(node, &json).unwrap()),
                    2 => (whole.reset_delta(node).unwrap(), partial.reset_delta(node).unwrap()),
                    3 => {
                        let delta = peer.put_root_delta(NodeId(8), &json).unwrap();
                        peer.join(&delta);
                        (delta.clone(), delta)
                    }
                    4 => {
                        // A client's change (under its own actor), as the node checks it.
                        let mut client = whole.materialize().unwrap().0.as_ref().clone().with_actor(ActorId::random());
                        let mut tx = client.transaction();
                        // (A value the field does not hold: putting the same one makes no change.)
                        tx.put(ROOT, format!("c{field}"), step as i64).unwrap();
                        tx.commit();
                        let change = client.get_last_local_change().unwrap().raw_bytes().to_vec();
                        let changes = [change];
                        (whole.client_delta(&changes, 1 << 20, node).unwrap(), partial.client_delta(&changes, 1 << 20, node).unwrap())
                    }
                    _ => {
                        proptest::prop_assert!(partial.settle().is_ok());
                        continue;
                    }
                };
                proptest::prop_assert_eq!(&from_whole, &from_partial);
                whole.join(&from_whole);
                partial.join(&from_partial);
                // A duplicate changes nothing.
                partial.join(&from_partial);
                proptest::prop_assert_eq!(seen(&partial.materialize().unwrap()), seen(&whole.replay().unwrap()));
            }
        }
    }

    #[test]
    fn a_partial_value_without_its_document_refuses_to_materialise() {
        let mut partial = DocCrdt::default();
        partial.set_partial(None);
        assert!(partial.materialize().is_err());
        assert!(partial.put_root_delta(NodeId(1), &json!({"a": 1})).is_err());
    }

    #[test]
    fn doc_put_writes_strings_as_automerge_text() {
        use automerge::ReadDoc as _;
        let node = NodeId(42);
        let mut doc = DocCrdt::default();
        doc.join(&doc.put_root_delta(node, &json!({"title": "hello", "tags": ["a"], "n": 1})).unwrap());
        let view = doc.materialize().unwrap();
        let (title, title_id) = view.0.get(ROOT, "title").unwrap().unwrap();
        assert!(matches!(title, automerge::Value::Object(ObjType::Text)), "{title:?}");
        assert_eq!(view.0.text(&title_id).unwrap(), "hello");
        let (tags, tags_id) = view.0.get(ROOT, "tags").unwrap().unwrap();
        assert!(matches!(tags, automerge::Value::Object(ObjType::List)), "{tags:?}");
        let (tag, _) = view.0.get(&tags_id, 0).unwrap().unwrap();
        assert!(matches!(tag, automerge::Value::Object(ObjType::Text)), "list items too: {tag:?}");
        assert!(matches!(view.0.get(ROOT, "n").unwrap().unwrap().0, automerge::Value::Scalar(_)));
        // Read back as JSON, text is a string again.
        assert_eq!(view.to_json().unwrap(), json!({"title": "hello", "tags": ["a"], "n": 1}));
    }

    #[test]
    fn put_then_read_as_json_and_sync_changes() {
        let node = NodeId(42);
        let mut doc = DocCrdt::default();
        doc.join(&doc.put_root_delta(node, &json!({"title": "hi", "tags": ["a", "b"]})).unwrap());
        let heads = doc.materialize().unwrap().heads();
        doc.join(&doc.put_root_delta(node, &json!({"n": 3})).unwrap());
        let view = doc.materialize().unwrap();
        assert_eq!(view.to_json().unwrap(), json!({"title": "hi", "tags": ["a", "b"], "n": 3}));
        let since = view.changes_since(&heads).unwrap();
        assert_eq!(since.len(), 1);
        // A peer holding the first change receives only the second, in automerge's own format.
        let mut peer = Automerge::new();
        let first = doc.materialize().unwrap().changes_since(&[]).unwrap();
        peer.apply_changes(first.iter().map(|b| Change::try_from(b.as_slice()).unwrap())).unwrap();
        assert_eq!(peer.get_heads().len(), 1);
    }

    const LIMIT: usize = 1 << 20;

    /// A change a client makes under its own 16-byte actor id.
    fn client_change(actor: u8, f: impl FnOnce(&mut automerge::transaction::Transaction<'_>)) -> Vec<u8> {
        let mut doc = Automerge::new().with_actor(ActorId::from(vec![actor; 16]));
        doc.transact::<_, _, AutomergeError>(|tx| {
            f(tx);
            Ok(())
        })
        .unwrap();
        doc.get_last_local_change().unwrap().raw_bytes().to_vec()
    }

    #[test]
    fn client_changes_that_would_break_the_document_are_refused() {
        let node = NodeId(42);
        let mut doc = DocCrdt::default();
        doc.join(&doc.put_root_delta(node, &json!({"a": 1})).unwrap());
        // Two different changes with the same actor and seq would make the document unreadable.
        let first = client_change(7, |tx| tx.put(ROOT, "c", 1).unwrap());
        let clash = client_change(7, |tx| tx.put(ROOT, "c", 2).unwrap());
        doc.join(&doc.client_delta(&[first], LIMIT, NodeId(42)).unwrap());
        assert!(doc.client_delta(&[clash], LIMIT, NodeId(42)).is_err());
        assert!(doc.materialize().is_ok());
    }

    #[test]
    fn client_changes_under_another_replicas_actor_id_are_refused() {
        let (here, other) = (NodeId(42), NodeId(7));
        let mut doc = DocCrdt::default();
        doc.join(&doc.put_root_delta(here, &json!({"a": 1})).unwrap());
        // A change under replica 7's actor this node does not hold: replica 7 may be making its
        // own change with that sequence number right now.
        let theirs = DocCrdt::default().put_root_delta(other, &json!({"b": 1})).unwrap();
        let theirs: Vec<Vec<u8>> = theirs.changes.values().cloned().collect();
        let err = doc.client_delta(&theirs, LIMIT, here).unwrap_err();
        assert!(matches!(&err, CrdtError::InvalidDocChange(m) if m.contains("reserved")), "{err:?}");
        // On replica 7 itself it is taken (it authors after what it holds of its own actor).
        DocCrdt::default().client_delta(&theirs, LIMIT, other).unwrap();
        // Once held (replicated), sending it again is harmless.
        let mut holding = doc.clone();
        holding.join(&DocCrdt::apply_delta(&theirs).unwrap());
        holding.client_delta(&theirs, LIMIT, here).unwrap();
        // A client's own actor is fine, and so is sending back everything it has.
        let ours = client_change(9, |tx| tx.put(ROOT, "c", 1).unwrap());
        doc.join(&doc.client_delta(&[ours], LIMIT, here).unwrap());
        let everything = doc.materialize().unwrap().changes_since(&[]).unwrap();
        assert_eq!(everything.len(), 2);
        doc.client_delta(&everything, LIMIT, here).unwrap();
        assert_eq!(doc.materialize().unwrap().to_json().unwrap(), json!({"a": 1, "c": 1}));
    }

    #[test]
    fn a_deflate_bomb_is_too_large_before_automerge_inflates_it() {
        use std::io::Write as _;
        // 256 MiB of zeros deflate to a few hundred kilobytes.
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            encoder.write_all(&zeros).unwrap();
        }
        let data = encoder.finish().unwrap();
        let mut bomb = MAGIC.to_vec();
        bomb.extend([0, 0, 0, 0, CHUNK_COMPRESSED_CHANGE]);
        let mut len = data.len();
        while len >= 0x80 {
            bomb.push((len as u8) | 0x80);
            len >>= 7;
        }
        bomb.push(len as u8);
        bomb.extend(&data);
        assert!(bomb.len() < LIMIT, "{} bytes on the wire", bomb.len());
        assert!(matches!(inflated_len(&bomb, LIMIT), Err(CrdtError::TooLarge(_))));
        let err = DocCrdt::default().client_delta(&[bomb], LIMIT, NodeId(1)).unwrap_err();
        assert!(matches!(err, CrdtError::TooLarge(_)), "{err:?}");
        // Other chunks (a whole document, a bundle) are not parsed at all.
        let mut document = MAGIC.to_vec();
        document.extend([0, 0, 0, 0, 0, 1, 0]);
        assert!(matches!(inflated_len(&document, LIMIT), Err(CrdtError::InvalidDocChange(_))));
        // A real change, compressed or not, passes with its inflated size.
        let big = client_change(3, |tx| tx.put(ROOT, "text", "abc".repeat(20_000)).unwrap());
        let compressed = Change::try_from(big.as_slice()).unwrap().bytes().to_vec();
        assert_eq!(compressed[8], CHUNK_COMPRESSED_CHANGE, "automerge compresses a big change");
        assert!(compressed.len() < big.len());
        let inflated = inflated_len(&compressed, LIMIT).unwrap();
        assert!(inflated >= 60_000, "{inflated}");
        assert!(matches!(inflated_len(&compressed, 10_000), Err(CrdtError::TooLarge(_))));
        DocCrdt::default().client_delta(&[compressed], LIMIT, NodeId(1)).unwrap();
    }

    #[test]
    fn a_change_nesting_a_hundred_thousand_levels_is_refused() {
        let deep = client_change(5, |tx| {
            let mut obj = ROOT;
            for _ in 0..100_000 {
                obj = tx.put_object(&obj, "n", ObjType::Map).unwrap();
            }
        });
        let err = DocCrdt::default().client_delta(&[deep], 64 << 20, NodeId(1)).unwrap_err();
        assert!(matches!(&err, CrdtError::InvalidDocChange(m) if m.contains("nest")), "{err:?}");
        // As deep as allowed is fine (and reads).
        let ok = client_change(6, |tx| {
            let mut obj = ROOT;
            for _ in 0..MAX_DOC_DEPTH {
                obj = tx.put_object(&obj, "n", ObjType::Map).unwrap();
            }
        });
        let mut doc = DocCrdt::default();
        doc.join(&doc.client_delta(&[ok], LIMIT, NodeId(1)).unwrap());
        assert!(doc.materialize().unwrap().to_json().unwrap().is_object());
    }

    #[test]
    fn garbage_changes_are_refused() {
        assert!(matches!(DocCrdt::apply_delta(&[vec![1, 2, 3]]), Err(CrdtError::InvalidDocChange(_))));
    }

    /// Found by fuzzing (`node/fuzz`, target `stored_record`; the input is in its corpus as
    /// `crash-automerge-apply-panics`): a stored doc state whose changes make automerge 0.12's
    /// `apply_changes` panic ("Missing from Index"). A read of such a state must fail, not panic.
    #[test]
    fn changes_automerge_panics_on_while_applying_are_an_error() {
        // The stored entry (presence, doc body) and its dependency vector, after the format byte.
        const STORED: &[u8] = &[
            1, 1, 2, 1, 2, 1, 1, 2, 1, 0, 5, 2, 115, 8, 236, 39, 59, 17, 146, 232, 251, 155, 98, 1, 169, 229, 88, 73,
            91, 187, 167, 29, 24, 115, 241, 251, 38, 45, 250, 235, 248, 159, 95, 29, 107, 133, 111, 74, 131, 115, 8,
            236, 39, 1, 97, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3, 0, 0, 0, 10, 1, 6, 2, 6, 17, 6, 19, 7, 21, 17, 52, 3,
            66, 5, 86, 5, 87, 4, 112, 2, 0, 2, 2, 0, 0, 1, 0, 2, 2, 2, 0, 1, 0, 3, 127, 0, 0, 1, 0, 2, 126, 0, 3, 0, 1,
            126, 1, 110, 4, 116, 97, 103, 115, 0, 2, 127, 5, 116, 105, 116, 108, 101, 2, 2, 1, 126, 1, 2, 3, 1, 126,
            20, 0, 3, 22, 1, 97, 98, 116, 5, 0, 120, 206, 173, 9, 15, 227, 192, 215, 135, 62, 218, 7, 61, 163, 130, 40,
            252, 227, 221, 106, 198, 168, 37, 19, 79, 144, 244, 3, 41, 188, 91, 142, 133, 133, 111, 74, 131, 120, 206,
            173, 9, 1, 123, 1, 115, 8, 236, 39, 59, 17, 146, 232, 251, 155, 98, 101, 117, 229, 88, 73, 91, 187, 167,
            29, 24, 115, 241, 251, 38, 45, 250, 235, 248, 159, 95, 29, 8, 0, 0, 0, 0, 0, 0, 0, 2, 1, 6, 0, 0, 1, 8, 0,
            0, 0, 0, 0, 0, 0, 1, 10, 1, 6, 2, 6, 21, 16, 52, 1, 66, 4, 86, 4, 87, 1, 112, 4, 113, 2, 115, 2, 0, 1, 127,
            0, 0, 1, 0, 1, 127, 6, 0, 1, 125, 6, 110, 101, 115, 116, 101, 100, 1, 120, 5, 116, 105, 116, 108, 101, 3,
            127, 0, 2, 1, 125, 0, 2, 22, 117, 2, 0, 127, 1, 127, 1, 127, 5, 2, 1, 252, 0, 0, 232, 3, 2, 252, 0, 0, 132,
            3,
        ];
        let bytes = [&[crate::codec::FORMAT_V1][..], STORED].concat();
        let (entry, _deps) = crate::codec::decode::<(crate::Entry, crate::VersionVector)>(&bytes, 1 << 20).unwrap();
        let crate::Body::Doc(doc) = entry.body() else { panic!("a doc") };
        assert!(matches!(doc.materialize(), Err(CrdtError::InvalidDocChange(e)) if e.contains("automerge failed")));
        assert!(matches!(entry.read(), Err(CrdtError::InvalidDocChange(_))));
    }

    /// Found by fuzzing (`node/fuzz`, target `doc_changes`; the input is in its corpus as
    /// `crash-automerge-get-changes-panics`): two changes a client may send (each validated), after
    /// which automerge 0.12's `get_changes` panics (an unwrapped `MissingDep`) when asked for every
    /// change (no heads). The changes-since query must answer, or fail, not panic.
    #[test]
    fn changes_since_over_changes_automerge_panics_on_is_an_error() {
        const CHANGES: &[u8] = &[
            133, 111, 74, 131, 115, 8, 236, 39, 1, 97, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 10, 1, 6, 2, 6, 17,
            6, 19, 7, 21, 17, 52, 3, 66, 5, 86, 5, 87, 4, 112, 2, 0, 2, 2, 0, 0, 1, 0, 2, 2, 2, 0, 1, 0, 3, 127, 0, 0,
            1, 0, 2, 126, 0, 3, 0, 1, 126, 1, 110, 4, 116, 97, 103, 115, 0, 2, 35, 5, 116, 105, 116, 108, 101, 2, 2, 1,
            126, 1, 2, 3, 1, 126, 20, 0, 3, 22, 1, 97, 98, 116, 5, 0, 133, 111, 74, 131, 120, 206, 173, 9, 1, 123, 1,
            115, 8, 236, 39, 59, 17, 146, 232, 251, 155, 98, 1, 169, 229, 88, 73, 91, 187, 167, 29, 24, 115, 241, 251,
            38, 45, 250, 235, 248, 159, 95, 29, 8, 0, 0, 0, 0, 0, 0, 0, 2, 1, 6, 0, 0, 1, 8, 0, 0, 0, 0, 0, 0, 0, 1,
            10, 1, 6, 2, 6, 21, 16, 52, 1, 66, 4, 86, 4, 87, 1, 112, 4, 113, 2, 115, 2, 0, 1, 127, 0, 0, 1, 0, 1, 127,
            6, 0, 1, 125, 6, 110, 101, 115, 116, 101, 100, 1, 120, 5, 116, 105, 116, 108, 101, 3, 127, 0, 2, 1, 125, 0,
            2, 22, 117, 2, 0, 127, 1, 127, 1, 127, 5,
        ];
        let second = CHANGES.windows(4).skip(1).position(|w| w == [0x85, 0x6f, 0x4a, 0x83]).unwrap() + 1;
        let (first, second) = CHANGES.split_at(second);
        // As a peer would send them (these changes are authored under an 8-byte, replica-style actor,
        // which a client may not use).
        let state = DocCrdt::apply_delta(&[first.to_vec()]).unwrap();
        let delta = DocCrdt::apply_delta(&[second.to_vec()]).unwrap();
        let mut joined = state.clone();
        joined.join(&delta);
        let doc = joined.materialize().unwrap();
        for heads in [doc.heads(), Vec::new()] {
            let since = doc.changes_since(&heads);
            assert!(matches!(since, Ok(_) | Err(CrdtError::InvalidDocChange(_))), "{since:?}");
        }
    }

    /// Found by fuzzing (`node/fuzz`, target `doc_changes`; the input is in its corpus as
    /// `crash-automerge-to-json-panics`): changes that apply, after which automerge 0.12's JSON
    /// serialisation panics (an unwrapped `None` in `AutoSerde`). A client sending them is refused,
    /// so the key stays readable; a state already holding them reads as an error, not a panic.
    #[test]
    fn changes_automerge_cannot_serialise_are_refused() {
        const CHANGES: &[&[u8]] = &[&[
            133, 111, 74, 131, 115, 8, 236, 39, 1, 97, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 10, 1, 6, 2, 6, 17,
            6, 19, 7, 21, 17, 52, 3, 66, 5, 86, 5, 87, 4, 112, 2, 0, 2, 2, 0, 0, 1, 0, 2, 2, 2, 0, 1, 0, 3, 127, 0, 0,
            1, 0, 2, 126, 0, 3, 0, 1, 126, 1, 110, 4, 116, 97, 103, 115, 0, 2, 127, 5, 116, 105, 116, 108, 101, 2, 2,
            1, 126, 1, 0, 3, 1, 126, 20, 0, 3, 22, 1, 97, 98, 116, 5, 0,
        ]];
        // The input's control byte is 0: the key holds nothing, the client sends every change.
        let sent: Vec<Vec<u8>> = CHANGES.iter().map(|c| c.to_vec()).collect();
        let state = DocCrdt::default();
        assert!(matches!(state.client_delta(&sent, LIMIT, NodeId(1)), Err(CrdtError::InvalidDocChange(_))));
        let mut joined = state.clone();
        joined.join(&DocCrdt::apply_delta(&sent).unwrap());
        if let Ok(doc) = joined.materialize() {
            assert!(matches!(doc.to_json(), Err(CrdtError::InvalidDocChange(_))));
        }
    }

    /// Found by fuzzing (`node/fuzz`, target `doc_changes`; the input is in its corpus as
    /// `crash-automerge-parse-panics`): bytes automerge 0.12 panics on while parsing them as a change
    /// (an unwrapped integer conversion). A client or a peer sending them is refused.
    #[test]
    fn changes_automerge_panics_on_while_parsing_are_refused() {
        const INPUT: &[u8] = &[
            133, 111, 74, 131, 115, 8, 236, 39, 1, 97, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 10, 1, 6, 2, 6, 17,
            6, 19, 7, 21, 17, 52, 3, 66, 5, 86, 5, 87, 4, 112, 2, 120, 0, 206, 2, 173, 9, 15, 227, 192, 215, 135, 62,
            218, 7, 61, 163, 130, 40, 252, 227, 221, 106, 198, 168, 37, 19, 79, 144, 244, 3, 41, 188, 91, 142, 2, 35,
            5, 116, 105, 116, 108, 101, 2, 2, 1, 126, 113, 2, 3, 1, 126, 20, 0, 3, 22, 1, 97, 98, 116, 5, 0, 133, 111,
            74, 131, 116, 206, 173, 9, 0, 2, 2, 0, 0, 1, 0, 2, 2, 0,
        ];
        // Two changes back to back; automerge panics on one of them.
        let (first, second) = INPUT.split_at(107);
        let parsed = [DocCrdt::apply_delta(&[first.to_vec()]), DocCrdt::apply_delta(&[second.to_vec()])];
        assert!(parsed.iter().all(|p| matches!(p, Ok(_) | Err(CrdtError::InvalidDocChange(_)))));
        assert!(parsed
            .iter()
            .any(|p| matches!(p, Err(CrdtError::InvalidDocChange(e)) if e.contains("automerge failed"))));
    }
}
