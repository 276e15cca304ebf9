//! How a key's state is kept in storage: whole under its data key, or — for a set, a map or a
//! document — one record per part (a set's element, a map's field, a document's automerge change),
//! so that changing or testing one member or field, or changing a document, costs the same whatever
//! the collection's size or the document's history.
//!
//! # Collections kept per part (storage format 2)
//!
//! A set's or a map's `Data` value is a [`SplitHeader`]: the state without its parts (presence, a
//! set's causal context, the dependencies), their count and size. Each part is an `Elements` record
//! — a set element with the dots that tag it, a map field with its entry — and each dot of a set has
//! an index record naming its element.
//!
//! A write or a replicated delta never loads the whole collection. It loads the header and the
//! parts the delta can change, and joins the delta into them with the CRDT's own join:
//! - **a map** joins field by field, each field from its own entries alone, and a map delta names
//!   every field it changes (an update, a removal, a delete of the key: all name their fields). So
//!   the fields it names are all it can change;
//! - **a set**'s join decides each element from its own dots and the two contexts alone
//!   ([`AwSet::put_tagged`]), so joining a delta into the elements it names *and* those tagged by a
//!   dot its context covers (found through the dot index: a remove names only dots) gives, for
//!   those elements, what joining it into the whole would. A delta whose context covers more dots
//!   than the set has elements (and than [`MAX_INDEXED_DOTS`]) — a delete of the key, a whole state
//!   from a digest sync or a quorum read's write-back — loads the whole set instead: one scan reads
//!   less than a lookup per dot then.
//!
//! Every other part is left as it is: it is simply not rewritten. A delta of a higher-ranked type,
//! which wins over the collection (see `Entry::try_join`), loads it whole, deletes its records and
//! stores the winner (whole, or per part if it is a map); a lower-ranked one is absorbed.
//!
//! Whatever needs the whole state — a read of every member, a state shipped to a peer, a digest —
//! assembles it ([`load_whole`]), reading the header and the parts from one snapshot
//! ([`Engine::get_and_scan`]), so it never returns a mix of two states; so does a page read of a
//! set. A membership query reads the header before and after its element reads and retries if a
//! write came between (the header's version, new at every write).
//!
//! A collection stored whole by format 1 stays readable and moves to per-part records at its next
//! write.
//!
//! # Documents kept per change
//!
//! A document's parts are its automerge changes, named by their hashes; a delta's changes are all
//! it can add. A local write also needs the document itself, materialised from every change: the
//! view takes it from the cache under the header's version ([`CachedDoc`]) or, on a miss,
//! materialises it once ([`StateView::ready_for_local`]); the write caches the document it made
//! under the header's next version. Versions are drawn at random at every write
//! ([`SplitHeader::writes`]), so a version never names two contents and a cached document is
//! never stale. A read of the value takes the same cached document ([`load_for_read`]).

use std::collections::{BTreeMap, BTreeSet};

use meridian_crdt::doc::CachedDoc;
use meridian_crdt::{AwSet, Body, CrdtType, DocCrdt, Dot, Entry, Lattice, Mutation};

use crate::layout::{self, ChangeRecord, DotIndexRecord, ElementRecord, FieldRecord, SplitHeader, StateRecord, Stored};
use crate::storage::{Batch, Engine, Space, StorageError};

mod part_read;
pub use part_read::{part_of_map, part_of_set, read_map_part, read_set_part, PageBudget, PartRead};

/// A delta whose set context covers more dots than this, and than the set has elements, loads the
/// whole set instead of looking each dot up in the index; so does a map delta naming more fields.
pub const MAX_INDEXED_DOTS: usize = 256;

/// Elements read per scan while assembling a whole set.
const ELEMENT_PAGE: usize = 4096;

/// How often [`load_whole`] retries when writes keep coming between its reads.
const ASSEMBLY_ATTEMPTS: usize = 16;

/// Why a state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A record does not decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoder's complaint.
        detail: String,
    },
    /// Writes kept changing the collection while a point read (set members, map fields) read it
    /// (counts, whole and page reads use one read or a snapshot and never fail so).
    #[error("{0} kept changing while its members or fields were looked up; retry")]
    Busy(String),
}

type Result<T> = std::result::Result<T, StateError>;

fn corrupt(what: impl Into<String>, e: impl ToString) -> StateError {
    StateError::Corrupt { what: what.into(), detail: e.to_string() }
}

/// What one read of a key's `Data` value finds (see [`peek`]).
#[derive(Debug)]
pub enum Peek {
    /// Nothing is stored.
    Nothing,
    /// The whole state, stored whole.
    Whole(Stored),
    /// A collection kept per part, of this many part records: [`load_whole`] assembles it.
    Split {
        /// Its part records.
        parts: u64,
        /// Whether it is a document (a read materialises it, or takes it from the cache).
        doc: bool,
    },
}

/// Reads a key's `Data` value once: the state if it is stored whole, else how big the collection
/// kept per part is (so a reader can decide where to assemble it).
pub fn peek(engine: &dyn Engine, data_key: &[u8]) -> Result<Peek> {
    let Some(bytes) = engine.get(Space::Data, data_key)? else { return Ok(Peek::Nothing) };
    Ok(match decode(data_key, &bytes)? {
        StateRecord::Whole(stored) => Peek::Whole(stored),
        StateRecord::Split(header) => {
            Peek::Split { parts: header.elements, doc: kind_of(&header.stored) == Some(Kind::Doc) }
        }
    })
}

/// A key's whole state, assembled from its element records if it is kept per element (the header
/// and the elements read from one snapshot).
pub fn load_whole(engine: &dyn Engine, data_key: &[u8]) -> Result<Option<Stored>> {
    // Most keys are stored whole: one plain read, no snapshot.
    let Some(bytes) = engine.get(Space::Data, data_key)? else { return Ok(None) };
    if !layout::is_split_value(&bytes) {
        return match decode(data_key, &bytes)? {
            StateRecord::Whole(stored) => Ok(Some(stored)),
            StateRecord::Split(_) => unreachable!("checked by its variant byte"),
        };
    }
    Ok(assemble_split(engine, data_key)?.map(|(stored, _)| stored))
}

/// A key's state for a read of its value: as [`load_whole`] reads it, but a document kept per
/// change comes as its header with the document materialised from every change (a partial value,
/// see [`DocCrdt`]) — from the cache when this version of the key was materialised before, else
/// assembled, materialised and cached. Only for reading the value: a partial value must not be
/// encoded.
pub fn load_for_read(engine: &dyn Engine, data_key: &[u8]) -> Result<Option<Stored>> {
    let Some(bytes) = engine.get(Space::Data, data_key)? else { return Ok(None) };
    let header = match decode(data_key, &bytes)? {
        StateRecord::Whole(stored) => return Ok(Some(stored)),
        StateRecord::Split(header) => header,
    };
    if kind_of(&header.stored) != Some(Kind::Doc) {
        return load_whole(engine, data_key);
    }
    if let Some(cached) = CachedDoc::get(data_key, header.writes) {
        let mut stored = header.stored;
        let doc = stored.entry.doc_mut().expect("a document's header");
        doc.set_partial(Some(cached));
        // Changes joined since it was materialised are applied once, for every later read.
        if let Ok(true) = doc.settle() {
            doc.cache_as(data_key, header.writes, header.elements as usize);
        }
        if doc.materialize().is_ok() {
            return Ok(Some(stored));
        }
    }
    let Some((stored, version)) = assemble_split(engine, data_key)? else { return Ok(None) };
    if let (Body::Doc(doc), Some(version)) = (stored.entry.body(), version) {
        // A document automerge cannot materialise is not cached: reading it fails the same way.
        if let Ok(materialized) = doc.materialize_uncached() {
            materialized.cache_as(data_key, version, doc.change_count());
        }
    }
    Ok(Some(stored))
}

/// The state of a key kept per part, assembled from one snapshot, with the version of its header
/// (`None`: it changed form between the reads, and is now stored whole).
fn assemble_split(engine: &dyn Engine, data_key: &[u8]) -> Result<Option<(Stored, Option<u64>)>> {
    let prefix = layout::elements_prefix(data_key);
    let end = layout::prefix_end(&prefix);
    // A set read whole is held in memory anyway: one scan, unbounded.
    let (bytes, scanned) =
        engine.get_and_scan((Space::Data, data_key), (Space::Elements, &prefix, end.as_deref(), usize::MAX))?;
    let Some(bytes) = bytes else { return Ok(None) };
    match decode(data_key, &bytes)? {
        // It changed form between the two reads (a type that won over the set).
        StateRecord::Whole(stored) => Ok(Some((stored, None))),
        StateRecord::Split(header) => {
            let kind = kind_of(&header.stored)
                .ok_or_else(|| corrupt(layout::show_data_key(data_key), "a header of no collection"))?;
            let mut parts = BTreeMap::new();
            for (key, value) in scanned {
                parts.insert(key[prefix.len()..].to_vec(), decode_part(kind, data_key, &value)?);
            }
            let version = header.writes;
            Ok(Some((assemble(header, parts), Some(version))))
        }
    }
}

/// A `Data` value read by a scan, as the whole state's encoding (what peers receive and digests
/// hash): unchanged when stored whole, assembled for a set kept per element; `None` if the key was
/// deleted since the scan.
pub fn whole_value(engine: &dyn Engine, data_key: &[u8], value: Vec<u8>) -> Result<Option<Vec<u8>>> {
    if !layout::is_split_value(&value) {
        return Ok(Some(value));
    }
    Ok(load_whole(engine, data_key)?.map(|stored| layout::encode_stored(&stored)))
}

/// Whether a `Data` value says the key exists, and its type, without reading its elements.
pub fn presence_in_value(data_key: &[u8], value: &[u8]) -> Result<(bool, CrdtType)> {
    let entry = match decode(data_key, value)? {
        StateRecord::Whole(stored) => stored.entry,
        StateRecord::Split(header) => header.stored.entry,
    };
    Ok((entry.exists(), entry.crdt_type()))
}

/// Adds to `batch` the deletion of everything stored for `data_key` (its value and, for a set kept
/// per element, its element and index records).
pub fn delete(engine: &dyn Engine, batch: &mut Batch, data_key: &[u8]) -> Result<()> {
    batch.delete(Space::Data, data_key.to_vec());
    delete_collection_records(engine, batch, data_key)
}

fn delete_collection_records(engine: &dyn Engine, batch: &mut Batch, data_key: &[u8]) -> Result<()> {
    let prefix = layout::collection_prefix(data_key);
    let end = layout::prefix_end(&prefix);
    let mut start = prefix.clone();
    loop {
        let page = engine.scan(Space::Elements, &start, end.as_deref(), ELEMENT_PAGE)?;
        let full = page.len() == ELEMENT_PAGE;
        if let Some((last, _)) = page.last() {
            start = [last.as_slice(), &[0]].concat();
        }
        for (key, _) in page {
            batch.delete(Space::Elements, key);
        }
        if !full {
            return Ok(());
        }
    }
}

fn decode(data_key: &[u8], bytes: &[u8]) -> Result<StateRecord> {
    layout::decode_state(bytes).map_err(|e| corrupt(format!("state of {}", layout::show_data_key(data_key)), e))
}

/// Every part record of the collection at `data_key` (one scan).
fn read_parts(engine: &dyn Engine, data_key: &[u8], kind: Kind) -> Result<BTreeMap<Vec<u8>, PartValue>> {
    let prefix = layout::elements_prefix(data_key);
    let end = layout::prefix_end(&prefix);
    let mut out = BTreeMap::new();
    for (key, value) in engine.scan(Space::Elements, &prefix, end.as_deref(), usize::MAX)? {
        out.insert(key[prefix.len()..].to_vec(), decode_part(kind, data_key, &value)?);
    }
    Ok(out)
}

fn decode_part(kind: Kind, data_key: &[u8], bytes: &[u8]) -> Result<PartValue> {
    let what = || match kind {
        Kind::Set => format!("element of {}", layout::show_data_key(data_key)),
        Kind::Map => format!("field of {}", layout::show_data_key(data_key)),
        Kind::Doc => format!("change of {}", layout::show_data_key(data_key)),
    };
    Ok(match kind {
        Kind::Set => {
            let ElementRecord::V1(dots) = layout::decode(bytes).map_err(|e| corrupt(what(), e))?;
            PartValue::Dots(dots.into_iter().collect())
        }
        Kind::Map => {
            let FieldRecord::V1(entry) = layout::decode(bytes).map_err(|e| corrupt(what(), e))?;
            PartValue::Field(entry)
        }
        Kind::Doc => {
            let ChangeRecord::V1(change) = layout::decode(bytes).map_err(|e| corrupt(what(), e))?;
            PartValue::Change(change)
        }
    })
}

fn assemble(header: SplitHeader, parts: BTreeMap<Vec<u8>, PartValue>) -> Stored {
    let mut stored = header.stored;
    for (name, value) in parts {
        put_part(&mut stored, name, Some(value));
    }
    stored
}

/// A key's state as a write or a replicated delta needs it, ready to take deltas and to be
/// written back: the whole state, or the header of a collection kept per part with the parts
/// loaded so far (see the module docs).
#[derive(Debug)]
pub struct StateView {
    data_key: Vec<u8>,
    /// The state as joined so far (for a collection kept per part: only the loaded parts).
    stored: Stored,
    form: Form,
    /// The whole state's encoded size as read (0: nothing was stored).
    read_len: usize,
}

#[derive(Debug)]
enum Form {
    /// Nothing was stored.
    Absent,
    /// Stored whole: `before` is the value as read.
    Whole { before: Stored },
    /// Kept per part.
    Split {
        /// The header as read (parts taken out).
        before: SplitHeader,
        /// What kind of collection the header is.
        kind: Kind,
        /// Each loaded part as stored (`None`: no record).
        loaded: BTreeMap<Vec<u8>, Option<PartValue>>,
        /// Whether every part is loaded.
        complete: bool,
    },
}

/// The collections kept one record per part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A set: a part is an element and its dots.
    Set,
    /// A map: a part is a field and its entry.
    Map,
    /// A document: a part is an automerge change, named by its hash.
    Doc,
}

/// One part of a collection, as its record holds it.
#[derive(Clone, Debug, PartialEq)]
enum PartValue {
    /// A set element's dots.
    Dots(BTreeSet<Dot>),
    /// A map field's entry.
    Field(Entry),
    /// A document's change, in automerge's binary encoding.
    Change(Vec<u8>),
}

impl StateView {
    /// The key's state for a change to the parts named in `parts` (set members, map fields; for any
    /// other type, or a collection stored whole, the whole state); `None` if nothing is stored.
    /// Call it under the key's lock: the view is written back as a diff against what it read.
    pub fn load<'a>(
        engine: &dyn Engine,
        data_key: &[u8],
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Option<StateView>> {
        let Some(bytes) = engine.get(Space::Data, data_key)? else { return Ok(None) };
        let mut view = match decode(data_key, &bytes)? {
            StateRecord::Whole(stored) => StateView {
                data_key: data_key.to_vec(),
                stored: stored.clone(),
                form: Form::Whole { before: stored },
                read_len: bytes.len(),
            },
            StateRecord::Split(header) => {
                let kind = kind_of(&header.stored)
                    .ok_or_else(|| corrupt(layout::show_data_key(data_key), "a header of no collection"))?;
                let mut stored = header.stored.clone();
                if let Some(doc) = stored.entry.doc_mut() {
                    // The document as materialised at this version, if that is cached: joins keep
                    // it current, and the write caches it under the key's next version.
                    doc.set_partial(CachedDoc::get(data_key, header.writes));
                }
                StateView {
                    data_key: data_key.to_vec(),
                    stored,
                    read_len: split_len(&header),
                    form: Form::Split { before: header, kind, loaded: BTreeMap::new(), complete: false },
                }
            }
        };
        view.load_parts(engine, parts)?;
        Ok(Some(view))
    }

    /// The view of a key that holds nothing yet, for joining `first` into.
    pub fn absent(data_key: &[u8], first: &Stored) -> StateView {
        StateView { data_key: data_key.to_vec(), stored: Stored::empty_like(first), form: Form::Absent, read_len: 0 }
    }

    /// The state (for a collection kept per part: header and loaded parts only — enough to compute
    /// a mutation's delta for the loaded parts, or to tell whether the key exists).
    pub fn stored(&self) -> &Stored {
        &self.stored
    }

    /// Loads what a local `mutation` (`None`: a delete of the key) needs beyond the parts it names
    /// (see [`StateView::load`]): a change to a document, or its delete, the document materialised;
    /// any other delete every part it removes.
    pub fn ready_for_local(&mut self, engine: &dyn Engine, mutation: Option<&Mutation>) -> Result<()> {
        let on_doc = matches!(self.stored.entry.body(), Body::Doc(_));
        match mutation {
            // A delete of a key that does not exist changes nothing (the write path answers it).
            None if !self.stored.entry.exists() => Ok(()),
            None | Some(Mutation::DocApply { .. } | Mutation::DocPut { .. }) if on_doc => self.materialize_doc(engine),
            None => self.load_all(engine),
            Some(_) => Ok(()),
        }
    }

    /// Makes sure a document kept per change has its materialised document at hand (a local write
    /// computes its change from it): from the cache (see [`StateView::load`]), or materialised from
    /// every change, read once. Nothing for any other state.
    fn materialize_doc(&mut self, engine: &dyn Engine) -> Result<()> {
        let Form::Split { kind: Kind::Doc, .. } = &self.form else { return Ok(()) };
        let Some(doc) = self.stored.entry.doc_mut().filter(|doc| doc.is_partial()) else { return Ok(()) };
        // A change is made on the current document: what is pending is applied first.
        if doc.settle().is_ok() && doc.materialize().is_ok() {
            return Ok(());
        }
        let mut all = DocCrdt::default();
        for (name, value) in read_parts(engine, &self.data_key, Kind::Doc)? {
            if let (Ok(hash), PartValue::Change(bytes)) = (<[u8; 32]>::try_from(name.as_slice()), value) {
                all.put_change(hash, Some(bytes));
            }
        }
        // These are the changes joined so far that the store does not hold yet (none, before the
        // first join: the write path materialises first).
        all.join(doc);
        // A document automerge cannot materialise stays without one: the write then fails (its
        // change cannot be made on a document that is not there).
        match all.materialize_uncached() {
            Ok(materialized) => doc.set_partial_materialized(materialized),
            Err(_) => doc.set_partial(None),
        }
        Ok(())
    }

    /// Loads every part not loaded yet (a collection kept per part).
    pub fn load_all(&mut self, engine: &dyn Engine) -> Result<()> {
        let Form::Split { kind, loaded, complete, .. } = &mut self.form else { return Ok(()) };
        if *complete {
            return Ok(());
        }
        for (name, value) in read_parts(engine, &self.data_key, *kind)? {
            if let std::collections::btree_map::Entry::Vacant(slot) = loaded.entry(name) {
                put_part(&mut self.stored, slot.key().clone(), Some(value.clone()));
                slot.insert(Some(value));
            }
        }
        *complete = true;
        Ok(())
    }

    fn load_parts<'a>(&mut self, engine: &dyn Engine, parts: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        let Form::Split { kind, loaded, complete: false, .. } = &mut self.form else { return Ok(()) };
        for name in parts {
            if loaded.contains_key(name) {
                continue;
            }
            let value = match engine.get(Space::Elements, &layout::element_key(&self.data_key, name))? {
                Some(bytes) => Some(decode_part(*kind, &self.data_key, &bytes)?),
                None => None,
            };
            put_part(&mut self.stored, name.to_vec(), value.clone());
            loaded.insert(name.to_vec(), value);
        }
        Ok(())
    }

    /// Loads whatever part of the state `delta` can change (see the module docs).
    fn load_for_delta(&mut self, engine: &dyn Engine, delta: &Stored) -> Result<()> {
        let Form::Split { before, kind, complete: false, .. } = &self.form else { return Ok(()) };
        let (kind, elements) = (*kind, before.elements);
        match (kind, delta.entry.body()) {
            (Kind::Set, Body::Set(delta_set)) => {
                let wanted = self.elements_for(engine, delta_set, elements)?;
                match wanted {
                    Some(wanted) => self.load_parts(engine, wanted.iter().map(Vec::as_slice)),
                    None => self.load_all(engine),
                }
            }
            // A map joins field by field: the fields the delta names are all it can change. One
            // scan of every field, or a lookup per named field: whichever reads less.
            (Kind::Map, Body::Map(delta_map)) => {
                let limit = lookup_limit(elements);
                if delta_map.len() > limit {
                    return self.load_all(engine);
                }
                let names: Vec<Vec<u8>> = delta_map.fields().map(|(name, _)| name.as_bytes().to_vec()).collect();
                self.load_parts(engine, names.iter().map(Vec::as_slice))
            }
            // A document's changes are its parts: a delta's are all it can add.
            (Kind::Doc, Body::Doc(delta_doc)) => {
                let limit = lookup_limit(elements);
                if delta_doc.change_count() > limit {
                    return self.load_all(engine);
                }
                let names: Vec<[u8; 32]> = delta_doc.changes().map(|(hash, _)| *hash).collect();
                self.load_parts(engine, names.iter().map(|hash| hash.as_slice()))
            }
            // Another type. A higher-ranked one wins over the collection (its parts then all go);
            // a lower-ranked one is absorbed and changes no part.
            (_, body) if body.crdt_type().conflict_rank() > self.stored.entry.crdt_type().conflict_rank() => {
                self.load_all(engine)
            }
            _ => Ok(()),
        }
    }

    /// The elements a set delta can change here — those it names and those tagged by a dot its
    /// context covers (through the dot index) — or `None` when one scan of every element reads less
    /// than a lookup per dot.
    fn elements_for(
        &self,
        engine: &dyn Engine,
        delta_set: &AwSet<Vec<u8>>,
        elements: u64,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let limit = lookup_limit(elements);
        let Some(dots) = delta_set.context().dots_within(limit) else { return Ok(None) };
        let state = as_set(&self.stored).expect("a set view holds a set until written");
        // Loaded elements are current (this view may have changed them); the index is for the rest.
        let loaded: std::collections::HashSet<Dot> =
            state.tagged().flat_map(|(_, tags)| tags.iter().copied()).collect();
        let mut wanted: Vec<Vec<u8>> = delta_set.elements().cloned().collect();
        for dot in dots {
            // A dot this state has not seen tags nothing here (a fresh add's own dots).
            if !state.context().contains(dot) || loaded.contains(&dot) {
                continue;
            }
            if let Some(bytes) = engine.get(Space::Elements, &layout::dot_index_key(&self.data_key, dot))? {
                let DotIndexRecord::V1(element) = layout::decode(&bytes)
                    .map_err(|e| corrupt(format!("dot index of {}", layout::show_data_key(&self.data_key)), e))?;
                wanted.push(element);
            }
        }
        Ok(Some(wanted))
    }

    /// Joins `delta` in, loading first what it can change.
    pub fn join(&mut self, engine: &dyn Engine, delta: &Stored) -> Result<()> {
        self.load_for_delta(engine, delta)?;
        // `try_join` never fails (the `Result` is the CRDT crate's API stability).
        self.stored.try_join(delta).map_err(|e| corrupt(layout::show_data_key(&self.data_key), e))
    }

    /// The counts and size a header keeps, after the joins so far (all 0: not a collection).
    fn tally(&self) -> Tally {
        match &self.form {
            Form::Split { before, kind, loaded, .. } if kind_of(&self.stored) == Some(*kind) => {
                let mut tally = Tally { parts: before.elements, present: before.present, bytes: before.element_bytes };
                for (name, old) in loaded {
                    if let Some(old) = old {
                        tally.take(name, old);
                    }
                    if let Some(new) = part_of(&self.stored, name) {
                        tally.add(name, &new);
                    }
                }
                tally
            }
            _ => {
                let mut tally = Tally::default();
                for (name, value) in all_parts(&self.stored) {
                    tally.add(&name, &value);
                }
                tally
            }
        }
    }

    /// The encoded size of the whole state as read — what the key caps count (for a collection kept
    /// per part, known from its header); 0 if nothing was stored.
    pub fn read_len(&self) -> usize {
        self.read_len
    }

    /// Whether the joins so far changed anything.
    pub fn changed(&self) -> bool {
        match &self.form {
            Form::Absent => true,
            Form::Whole { before } => *before != self.stored,
            Form::Split { before, kind, loaded, .. } => {
                kind_of(&self.stored) != Some(*kind)
                    || header_of(&self.stored) != before.stored
                    || loaded.iter().any(|(name, old)| part_of(&self.stored, name) != *old)
            }
        }
    }

    fn header(&self, writes: u64) -> SplitHeader {
        let Tally { parts, present, bytes } = self.tally();
        SplitHeader { stored: header_of(&self.stored), elements: parts, present, element_bytes: bytes, writes }
    }

    /// Adds to `batch` what must change in storage for the state to be what the joins made it, and
    /// returns the whole state's encoded size (see [`StateView::read_len`]). A set or a map is
    /// always written per part; a collection that lost to a higher-ranked type goes whole (or per
    /// part of its new kind), its old records deleted.
    pub fn write(self, engine: &dyn Engine, batch: &mut Batch) -> Result<usize> {
        let now = kind_of(&self.stored);
        // A key read from `Data` (under its lock) is indexed already.
        let present = !matches!(self.form, Form::Absent);
        let put = |batch: &mut Batch, key: &[u8], value: Vec<u8>| {
            if present {
                batch.put_present(key.to_vec(), value);
            } else {
                batch.put(Space::Data, key.to_vec(), value);
            }
        };
        if let Form::Split { kind, loaded, .. } = &self.form {
            if now == Some(*kind) {
                for (name, old) in loaded {
                    let new = part_of(&self.stored, name);
                    if new != *old {
                        put_part_record(batch, &self.data_key, name, old.as_ref(), new.as_ref());
                    }
                }
                let header = self.header(new_version());
                if let Body::Doc(doc) = self.stored.entry.body() {
                    // Cached before the batch commits: if it never does, no header will name this
                    // version (each is drawn afresh).
                    doc.cache_as(&self.data_key, header.writes, header.elements as usize);
                }
                put(batch, &self.data_key, layout::encode_split(&header));
                return Ok(split_len(&header));
            }
            // Another type won: the old kind's records all go.
            delete_collection_records(engine, batch, &self.data_key)?;
        }
        if now.is_none() {
            let value = layout::encode_stored(&self.stored);
            let len = value.len();
            put(batch, &self.data_key, value);
            return Ok(len);
        }
        // A new collection, one stored whole by format 1, or the winner of a type conflict: every
        // part gets its records.
        for (name, value) in all_parts(&self.stored) {
            put_part_record(batch, &self.data_key, &name, None, Some(&value));
        }
        let header = self.header(new_version());
        put(batch, &self.data_key, layout::encode_split(&header));
        Ok(split_len(&header))
    }
}

/// The most parts (or set dots) a delta may name for them to be looked up one by one in a
/// collection of `elements` parts: beyond it, one scan of every part reads less.
fn lookup_limit(elements: u64) -> usize {
    MAX_INDEXED_DOTS.max(usize::try_from(elements).unwrap_or(usize::MAX))
}

/// A header's version for a write (see [`SplitHeader::writes`]): random, so that no version comes
/// back for other content — not after the key is deleted and created again, nor after a write
/// whose batch failed — and readers comparing versions, or the document cache, are never misled.
fn new_version() -> u64 {
    rand::random::<u64>()
}

/// What a header counts of its collection's parts.
#[derive(Default)]
struct Tally {
    /// Part records.
    parts: u64,
    /// Parts a read shows: every set element, a map's fields that exist.
    present: u64,
    /// What the parts add to the state's encoded size.
    bytes: u64,
}

impl Tally {
    fn add(&mut self, name: &[u8], value: &PartValue) {
        self.parts += 1;
        self.present += u64::from(shows(value));
        self.bytes += part_len(name, value);
    }

    fn take(&mut self, name: &[u8], value: &PartValue) {
        self.parts -= 1;
        self.present -= u64::from(shows(value));
        self.bytes -= part_len(name, value);
    }
}

/// Whether a read shows a part: a set element always, a map field only if it exists (a removed
/// field's record stays, disabled, until it is collected).
fn shows(value: &PartValue) -> bool {
    match value {
        PartValue::Dots(_) | PartValue::Change(_) => true,
        PartValue::Field(entry) => entry.exists(),
    }
}

/// The batch operations that take part `name` from `old` to `new` (`None`: no record): its record
/// and, for a set element, the index records of the dots that came and went.
fn put_part_record(batch: &mut Batch, data_key: &[u8], name: &[u8], old: Option<&PartValue>, new: Option<&PartValue>) {
    let key = layout::element_key(data_key, name);
    match new {
        None => batch.delete(Space::Elements, key),
        Some(value) => batch.put(Space::Elements, key, encode_part(value)),
    }
    let no_dots = BTreeSet::new();
    let dots = |value: Option<&PartValue>| match value {
        Some(PartValue::Dots(dots)) => dots.clone(),
        _ => no_dots.clone(),
    };
    let (old, new) = (dots(old), dots(new));
    for gone in old.difference(&new) {
        batch.delete(Space::Elements, layout::dot_index_key(data_key, *gone));
    }
    for came in new.difference(&old) {
        batch.put(
            Space::Elements,
            layout::dot_index_key(data_key, *came),
            layout::encode(&DotIndexRecord::V1(name.to_vec())),
        );
    }
}

/// The encoded size of the whole state a header stands for: the header's state (with an empty
/// collection) and what its parts add.
fn split_len(header: &SplitHeader) -> usize {
    layout::encode_stored(&header.stored).len() + header.element_bytes as usize
}

/// What a part adds to its collection's encoded size (a set encodes its elements, a map its fields,
/// as a map of name to value; an entry costs what the pair does).
fn part_len(name: &[u8], value: &PartValue) -> u64 {
    let len = match value {
        PartValue::Dots(dots) => meridian_crdt::codec::encode(&(name, dots)).len(),
        PartValue::Field(entry) => meridian_crdt::codec::encode(&(String::from_utf8_lossy(name), entry)).len(),
        // A document encodes its changes as a map of 32-byte hash to bytes.
        PartValue::Change(bytes) => 32 + meridian_crdt::codec::encode(bytes).len(),
    };
    (len - 1) as u64
}

fn encode_part(value: &PartValue) -> Vec<u8> {
    match value {
        PartValue::Dots(dots) => layout::encode(&ElementRecord::V1(dots.iter().copied().collect())),
        PartValue::Field(entry) => layout::encode(&FieldRecord::V1(entry.clone())),
        PartValue::Change(bytes) => layout::encode(&ChangeRecord::V1(bytes.clone())),
    }
}

/// Which collection kept per part `stored` is, if any.
fn kind_of(stored: &Stored) -> Option<Kind> {
    match stored.entry.body() {
        Body::Set(_) => Some(Kind::Set),
        Body::Map(_) => Some(Kind::Map),
        Body::Doc(_) => Some(Kind::Doc),
        _ => None,
    }
}

/// Part `name` of `stored`, if it holds it.
fn part_of(stored: &Stored, name: &[u8]) -> Option<PartValue> {
    match stored.entry.body() {
        Body::Set(set) => set.dots_of(&name.to_vec()).cloned().map(PartValue::Dots),
        Body::Map(map) => {
            std::str::from_utf8(name).ok().and_then(|name| map.field(name)).cloned().map(PartValue::Field)
        }
        Body::Doc(doc) => <&[u8; 32]>::try_from(name)
            .ok()
            .and_then(|hash| doc.change(hash))
            .map(|bytes| PartValue::Change(bytes.to_vec())),
        _ => None,
    }
}

/// Every part of `stored`, in name order.
fn all_parts(stored: &Stored) -> Vec<(Vec<u8>, PartValue)> {
    match stored.entry.body() {
        Body::Set(set) => set.tagged().map(|(e, dots)| (e.clone(), PartValue::Dots(dots.clone()))).collect(),
        Body::Map(map) => {
            map.fields().map(|(name, entry)| (name.as_bytes().to_vec(), PartValue::Field(entry.clone()))).collect()
        }
        Body::Doc(doc) => {
            doc.changes().map(|(hash, bytes)| (hash.to_vec(), PartValue::Change(bytes.to_vec()))).collect()
        }
        _ => Vec::new(),
    }
}

/// Puts part `name` into `stored` (`None`: takes it out).
fn put_part(stored: &mut Stored, name: Vec<u8>, value: Option<PartValue>) {
    if let Some(set) = stored.entry.set_mut() {
        let dots = match value {
            Some(PartValue::Dots(dots)) => dots,
            _ => BTreeSet::new(),
        };
        set.put_tagged(name, dots);
    } else if let Some(map) = stored.entry.map_mut() {
        let entry = match value {
            Some(PartValue::Field(entry)) => Some(entry),
            _ => None,
        };
        // Field names are strings: a record under another name is not one of this map's.
        if let Ok(name) = String::from_utf8(name) {
            map.put_field(name, entry);
        }
    } else if let Some(doc) = stored.entry.doc_mut() {
        let bytes = match value {
            Some(PartValue::Change(bytes)) => Some(bytes),
            _ => None,
        };
        // Changes are named by their 32-byte hashes: a record under another name is not one.
        if let Ok(hash) = <[u8; 32]>::try_from(name.as_slice()) {
            doc.put_change(hash, bytes);
        }
    }
}

fn as_set(stored: &Stored) -> Option<&AwSet<Vec<u8>>> {
    match stored.entry.body() {
        Body::Set(set) => Some(set),
        _ => None,
    }
}

/// `stored` without its collection's parts.
fn header_of(stored: &Stored) -> Stored {
    let mut header = stored.clone();
    if let Some(set) = header.entry.set_mut() {
        set.take_tagged();
    } else if let Some(map) = header.entry.map_mut() {
        map.take_fields();
    } else if let Some(doc) = header.entry.doc_mut() {
        doc.take_changes();
    }
    header
}

#[cfg(test)]
mod tests {
    //! The per-part form against the whole state as its model: for any sequence of local set and
    //! map writes, deletes, writes of other types, and deltas and whole states delivered between
    //! replicas in any order (duplicates included), every replica's stored form assembles to the
    //! model's state, the write path computes the same deltas from its partial view as from the
    //! whole state, and the header's counts and the dot index agree with the parts.

    use super::*;
    use crate::storage::MemoryEngine;
    use meridian_crdt::{Entry, Hlc, NodeId, WriteContext};
    use proptest::prelude::*;

    const KEY: &[u8] = b"\x02nsset";

    #[derive(Clone, Debug)]
    enum Step {
        Add(usize, Vec<u8>),
        Remove(usize, Vec<u8>),
        Delete(usize),
        /// A map field update (a counter added to, or a nested set added to), which wins over a set.
        Field(usize, u8, bool),
        /// A map field removed.
        Unfield(usize, u8),
        /// A write of the highest-ranked type (a doc), which wins over both.
        Doc(usize),
        /// A write of a lower-ranked type (a counter), which both absorb.
        Counter(usize),
        /// Delta number `i` (modulo those made so far) to replica `to`, with the next one through
        /// the same view when `pair` (as anti-entropy joins several records of a key at once).
        Deliver(usize, usize, bool),
        /// A doc written by a fourth replica that held nothing, its delta delivered later: the
        /// highest rank, which wins over sets and maps.
        ForeignDoc,
        /// Replica `from`'s whole state to replica `to` (a digest sync, a quorum write-back).
        Whole(usize, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        let r = 0..3usize;
        let member = prop::collection::vec(0u8..6, 1..3);
        prop_oneof![
            4 => (r.clone(), member.clone()).prop_map(|(r, m)| Step::Add(r, m)),
            3 => (r.clone(), member).prop_map(|(r, m)| Step::Remove(r, m)),
            1 => r.clone().prop_map(Step::Delete),
            2 => (r.clone(), 0u8..3, any::<bool>()).prop_map(|(r, f, nested)| Step::Field(r, f, nested)),
            1 => (r.clone(), 0u8..3).prop_map(|(r, f)| Step::Unfield(r, f)),
            1 => (r.clone(), 0..40u8).prop_map(|(r, roll)| if roll == 0 { Step::Doc(r) } else { Step::Counter(r) }),
            6 => (any::<usize>(), r.clone(), any::<bool>()).prop_map(|(i, to, pair)| Step::Deliver(i, to, pair)),
            1 => Just(Step::ForeignDoc),
            1 => (r.clone(), r).prop_map(|(from, to)| Step::Whole(from, to)),
        ]
    }

    struct Replica {
        engine: MemoryEngine,
        model: Option<Stored>,
    }

    impl Replica {
        fn apply(&mut self, delta: &Stored) {
            self.apply_all(std::slice::from_ref(delta));
        }

        /// Joins `deltas` through one view, as anti-entropy joins several records of a key.
        fn apply_all(&mut self, deltas: &[Stored]) {
            let mut view =
                StateView::load(&self.engine, KEY, []).unwrap().unwrap_or_else(|| StateView::absent(KEY, &deltas[0]));
            for delta in deltas {
                view.join(&self.engine, delta).unwrap();
                let model = self.model.get_or_insert_with(|| Stored::empty_like(delta));
                model.try_join(delta).unwrap();
            }
            if view.changed() {
                let mut batch = Batch::new();
                view.write(&self.engine, &mut batch).unwrap();
                self.engine.write(batch).unwrap();
            }
        }

        /// A local write as the write path makes it: the delta from the partial view, checked
        /// against the delta from the whole state.
        fn write(&mut self, node: NodeId, tick: u64, mutation: Option<Mutation>) -> Option<Stored> {
            let parts: Vec<Vec<u8>> = match &mutation {
                Some(Mutation::SetAdd { members } | Mutation::SetRemove { members }) => members.clone(),
                Some(Mutation::MapUpdate { field, .. } | Mutation::MapRemove { field }) => {
                    vec![field.as_bytes().to_vec()]
                }
                _ => Vec::new(),
            };
            let mut view = StateView::load(&self.engine, KEY, parts.iter().map(Vec::as_slice)).unwrap();
            if let Some(view) = &mut view {
                view.ready_for_local(&self.engine, mutation.as_ref()).unwrap();
            }
            let w = WriteContext { node, ts: Hlc { wall_ms: tick, logical: 0 } };
            let partial = view.as_ref().map(|v| &v.stored().entry);
            let whole = self.model.as_ref().map(|m| &m.entry);
            let (from_view, from_model) = match &mutation {
                Some(m) => (Entry::mutation_delta(partial, m, &w), Entry::mutation_delta(whole, m, &w)),
                // A delete of a key that does not exist changes nothing (`nothing_to_change`).
                None => match (partial, whole) {
                    (Some(p), Some(m)) if m.exists() => (p.reset_delta(&w), m.reset_delta(&w)),
                    _ => return None,
                },
            };
            match (from_view, from_model) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "the partial view and the whole state give the same delta");
                    let delta = Stored::bare(a);
                    self.apply(&delta);
                    Some(delta)
                }
                (Err(_), Err(_)) => None,
                (a, b) => panic!("the view and the model disagree on the write: {a:?} vs {b:?}"),
            }
        }

        fn check(&self) {
            assert_eq!(load_whole(&self.engine, KEY).unwrap(), self.model, "the stored form assembles to the model");
            let Some(bytes) = self.engine.get(Space::Data, KEY).unwrap() else { return };
            let elements = self.engine.scan(Space::Elements, &[], None, usize::MAX).unwrap();
            let model = self.model.as_ref().unwrap();
            let StateRecord::Split(header) = layout::decode_state(&bytes).unwrap() else {
                assert!(kind_of(model).is_none(), "a set or a map is always kept per part");
                assert!(elements.is_empty(), "no part records outlive their collection");
                return;
            };
            assert_eq!(kind_of(&header.stored), kind_of(model), "a header stands for the model's kind");
            assert_eq!(header.elements, all_parts(model).len() as u64);
            let whole = layout::encode_stored(model).len() as i64;
            assert!(
                (split_len(&header) as i64 - whole).abs() <= 8,
                "the header knows the whole size: {} vs {whole}",
                split_len(&header)
            );
            let mut index = BTreeMap::new();
            if let Some(set) = as_set(model) {
                for (element, dots) in set.tagged() {
                    for dot in dots {
                        let record = layout::encode(&DotIndexRecord::V1(element.clone()));
                        index.insert(layout::dot_index_key(KEY, *dot), record);
                    }
                }
            }
            let stored_index: BTreeMap<Vec<u8>, Vec<u8>> =
                elements.into_iter().filter(|(k, _)| k.starts_with(&layout::dot_index_prefix(KEY))).collect();
            assert_eq!(stored_index, index, "one index record per live set dot, naming its element");
        }

        /// Every part read (counts, point reads, page walks of two items) answers what a read of the
        /// model shows, and refuses a key of another type.
        fn check_part_reads(&self) {
            use meridian_client::proto::{MapPart, MapPartReply, SetPart, SetPartReply};
            use meridian_crdt::Value;
            let budget = PageBudget { max_items: 2, max_bytes: 1 << 20 };
            let kind = self.model.as_ref().map(|m| m.entry.crdt_type());
            // (Docs are not read: the model's docs are made by actors that restart their sequence.)
            let collection = |m: &&Stored| matches!(m.entry.crdt_type(), CrdtType::Set | CrdtType::Map);
            let shown = self.model.as_ref().filter(collection).and_then(|m| m.entry.read().unwrap());
            let set_read = |part: SetPart| read_set_part(&self.engine, KEY, &part, budget).unwrap();
            let map_read = |part: MapPart| read_map_part(&self.engine, KEY, &part, budget).unwrap();
            let Some(kind) = kind else {
                assert!(set_read(SetPart::Count).is_none() && map_read(MapPart::Count).is_none());
                return;
            };
            if kind != CrdtType::Set {
                assert!(set_read(SetPart::Count).unwrap().reply.is_none(), "a set read of a {kind:?} is refused");
            }
            if kind != CrdtType::Map {
                assert!(map_read(MapPart::Count).unwrap().reply.is_none(), "a map read of a {kind:?} is refused");
            }
            if kind == CrdtType::Set {
                let members = match shown.clone() {
                    Some(Value::Set(members)) => members,
                    _ => Vec::new(),
                };
                assert_eq!(set_read(SetPart::Count).unwrap().reply, Some(SetPartReply::Count(members.len() as u64)));
                let probes: Vec<Vec<u8>> = members.iter().cloned().chain([vec![9], vec![0, 9]]).collect();
                let expected = probes.iter().map(|p| members.contains(p)).collect();
                assert_eq!(set_read(SetPart::Contains(probes)).unwrap().reply, Some(SetPartReply::Contains(expected)));
                let (mut walked, mut after) = (Vec::new(), None);
                loop {
                    let Some(SetPartReply::Page { members, next }) =
                        set_read(SetPart::Page { after: after.take(), limit: 5 }).unwrap().reply
                    else {
                        panic!("a page answers a page")
                    };
                    assert!(members.len() <= 2, "a page keeps to the budget");
                    walked.extend(members);
                    match next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                assert_eq!(walked, members, "the pages walk the set");
            }
            if kind == CrdtType::Map {
                let fields = match shown {
                    Some(Value::Map(fields)) => fields,
                    _ => BTreeMap::new(),
                };
                assert_eq!(map_read(MapPart::Count).unwrap().reply, Some(MapPartReply::Count(fields.len() as u64)));
                let names: Vec<String> = (0..3).map(|f| format!("f{f}")).chain(["zz".to_string()]).collect();
                let expected = names.iter().map(|n| fields.get(n).cloned()).collect();
                assert_eq!(map_read(MapPart::Fields(names)).unwrap().reply, Some(MapPartReply::Fields(expected)));
                let (mut walked, mut after) = (BTreeMap::new(), None);
                loop {
                    let Some(MapPartReply::Page { fields, next }) =
                        map_read(MapPart::Page { after: after.take(), limit: 5 }).unwrap().reply
                    else {
                        panic!("a page answers a page")
                    };
                    assert!(fields.len() <= 2, "a page keeps to the budget");
                    walked.extend(fields);
                    match next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                assert_eq!(walked, fields, "the pages walk the map");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn the_per_element_form_behaves_as_the_whole_state(steps in prop::collection::vec(step(), 1..60)) {
            let mut replicas: Vec<Replica> =
                (0..3).map(|_| Replica { engine: MemoryEngine::new(), model: None }).collect();
            let mut deltas: Vec<Stored> = Vec::new();
            for (tick, step) in steps.into_iter().enumerate() {
                let tick = tick as u64 + 1;
                let local = |r: usize| (r, NodeId(r as u64 + 1));
                let made = match step {
                    Step::Add(r, m) => { let (r, n) = local(r); replicas[r].write(n, tick, Some(Mutation::SetAdd { members: vec![m] })) }
                    Step::Remove(r, m) => { let (r, n) = local(r); replicas[r].write(n, tick, Some(Mutation::SetRemove { members: vec![m] })) }
                    Step::Delete(r) => { let (r, n) = local(r); replicas[r].write(n, tick, None) }
                    Step::Field(r, f, nested_set) => {
                        let (r, n) = local(r);
                        let nested = if nested_set {
                            Mutation::SetAdd { members: vec![vec![f, tick as u8]] }
                        } else {
                            Mutation::CounterAdd { amount: 1 }
                        };
                        let update = Mutation::MapUpdate { field: format!("f{f}"), mutation: Box::new(nested) };
                        replicas[r].write(n, tick, Some(update))
                    }
                    Step::Unfield(r, f) => {
                        let (r, n) = local(r);
                        replicas[r].write(n, tick, Some(Mutation::MapRemove { field: format!("f{f}") }))
                    }
                    Step::Doc(r) => {
                        let (r, n) = local(r);
                        replicas[r].write(n, tick, Some(Mutation::DocPut { json: format!("{{\"t\":{tick}}}") }))
                    }
                    Step::Counter(r) => { let (r, n) = local(r); replicas[r].write(n, tick, Some(Mutation::CounterAdd { amount: 1 })) }
                    Step::Deliver(i, to, pair) => {
                        if !deltas.is_empty() {
                            let first = i % deltas.len();
                            let last = if pair { (first + 2).min(deltas.len()) } else { first + 1 };
                            replicas[to].apply_all(&deltas[first..last]);
                        }
                        None
                    }
                    Step::ForeignDoc => {
                        let w = WriteContext { node: NodeId(9), ts: Hlc { wall_ms: tick, logical: 0 } };
                        let json = format!("{{\"d\":{tick}}}");
                        let doc = Entry::mutation_delta(None, &Mutation::DocPut { json }, &w).unwrap();
                        Some(Stored::bare(doc))
                    }
                    Step::Whole(from, to) => {
                        if let Some(state) = load_whole(&replicas[from].engine, KEY).unwrap() {
                            replicas[to].apply(&state);
                        }
                        None
                    }
                };
                deltas.extend(made);
                for replica in &replicas {
                    replica.check();
                    replica.check_part_reads();
                    // Overwrites skip the partition index (`Batch::put_present`): it must still
                    // name exactly the keys of `Data`.
                    let keys = |space| replica.engine.scan(space, b"", None, 10).unwrap().into_iter().map(|(k, _)| k);
                    let indexed: Vec<Vec<u8>> =
                        keys(Space::Data).map(|k| crate::storage::partition_index::entry_key(&k)).collect();
                    prop_assert_eq!(keys(Space::PartitionIndex).collect::<Vec<_>>(), indexed);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// A document kept per change, with its materialised document cached by version: local
        /// `doc_put`s and deletes compute the same changes as from the whole state, deltas from a
        /// peer and whole states join in any order, and a read shows what the whole state does —
        /// so the cache is never stale, whichever path changed the key.
        #[test]
        fn a_document_kept_per_change_acts_as_the_whole(
            steps in prop::collection::vec((0u8..6, 0usize..2, 0u8..3), 1..40)
        ) {
            let mut replicas: Vec<Replica> =
                (0..2).map(|_| Replica { engine: MemoryEngine::new(), model: None }).collect();
            let mut peer = meridian_crdt::DocCrdt::default();
            let mut deltas: Vec<Stored> = Vec::new();
            for (tick, (op, r, field)) in steps.into_iter().enumerate() {
                let tick = tick as u64 + 1;
                let node = NodeId(r as u64 + 1);
                let made = match op {
                    0 | 1 => {
                        let json = format!("{{\"f{field}\":{tick}}}");
                        replicas[r].write(node, tick, Some(Mutation::DocPut { json }))
                    }
                    2 => replicas[r].write(node, tick, None),
                    3 => {
                        // Another replica's change, made on a document of its own.
                        let json = serde_json::json!({ format!("p{field}"): tick });
                        let delta = peer.put_root_delta(NodeId(9), &json).unwrap();
                        meridian_crdt::Lattice::join(&mut peer, &delta);
                        let w = WriteContext { node: NodeId(9), ts: Hlc { wall_ms: tick, logical: 0 } };
                        let mut entry = Entry::mutation_delta(None, &Mutation::DocApply { changes: Vec::new() }, &w).unwrap();
                        meridian_crdt::Lattice::join(entry.doc_mut().unwrap(), &delta);
                        let delta = Stored::bare(entry);
                        replicas[r].apply(&delta);
                        Some(delta)
                    }
                    4 => {
                        if !deltas.is_empty() {
                            let i = (field as usize * 7 + tick as usize) % deltas.len();
                            replicas[r].apply(&deltas[i].clone());
                        }
                        None
                    }
                    _ => {
                        if let Some(state) = load_whole(&replicas[1 - r].engine, KEY).unwrap() {
                            replicas[r].apply(&state);
                        }
                        None
                    }
                };
                deltas.extend(made);
                for replica in &replicas {
                    replica.check();
                    let read = load_for_read(&replica.engine, KEY).unwrap().map(|s| s.entry.read().unwrap());
                    let model = replica.model.as_ref().map(|m| m.entry.read().unwrap());
                    prop_assert_eq!(read, model, "a read shows the whole state's document");
                }
            }
        }
    }

    /// A map (and a set) that format 1 stored whole: readable as is, and kept per part from its
    /// next write on, with nothing lost.
    #[test]
    fn collections_stored_whole_by_format_1_move_per_part_at_their_next_write() {
        for first in [
            Mutation::MapUpdate { field: "a".into(), mutation: Box::new(Mutation::CounterAdd { amount: 2 }) },
            Mutation::SetAdd { members: vec![b"a".to_vec(), b"b".to_vec()] },
        ] {
            let engine = MemoryEngine::new();
            let w = WriteContext { node: NodeId(1), ts: Hlc { wall_ms: 1, logical: 0 } };
            let whole = Stored::bare(Entry::mutation_delta(None, &first, &w).unwrap());
            let mut batch = Batch::new();
            batch.put(Space::Data, KEY.to_vec(), layout::encode_stored(&whole));
            engine.write(batch).unwrap();
            assert_eq!(load_whole(&engine, KEY).unwrap(), Some(whole.clone()), "format 1 reads as it was");
            let mut replica = Replica { engine, model: Some(whole) };
            let next = match first {
                Mutation::MapUpdate { .. } => {
                    Mutation::MapUpdate { field: "b".into(), mutation: Box::new(Mutation::CounterAdd { amount: 1 }) }
                }
                _ => Mutation::SetRemove { members: vec![b"a".to_vec()] },
            };
            replica.write(NodeId(1), 2, Some(next)).unwrap();
            replica.check();
            let bytes = replica.engine.get(Space::Data, KEY).unwrap().unwrap();
            assert!(layout::is_split_value(&bytes), "kept per part after the write");
        }
    }

    /// Negative control: a view that skipped the dot index (loading only the elements a delta
    /// names) would miss what a remove delta takes away — the model check above catches it.
    #[test]
    fn a_remove_found_only_through_the_index_is_applied() {
        let engine = MemoryEngine::new();
        let mut replica = Replica { engine, model: None };
        let add = replica.write(NodeId(1), 1, Some(Mutation::SetAdd { members: vec![b"a".to_vec()] })).unwrap();
        let mut other = Replica { engine: MemoryEngine::new(), model: None };
        other.apply(&add);
        let remove = replica.write(NodeId(1), 2, Some(Mutation::SetRemove { members: vec![b"a".to_vec()] })).unwrap();
        assert!(as_set(&remove).unwrap().is_empty(), "a remove names no element, only dots");
        other.apply(&remove);
        other.check();
        assert!(!as_set(&load_whole(&other.engine, KEY).unwrap().unwrap()).unwrap().contains(&b"a".to_vec()));
    }
}
