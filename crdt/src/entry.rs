//! A key's replicated state: which CRDT it holds, whether it exists, and the typed mutations on it.
//!
//! An [`Entry`] is a product of two lattices: a [`Presence`] flag (enable-wins) and a typed [`Body`].
//! Every write enables the flag and changes the body; a delete disables the flag *as observed* and
//! resets the body *as observed*, so a write concurrent with a delete survives it (add-wins, as in the
//! set) and a key re-created after a delete starts empty. Map fields are entries too, which gives the
//! OR-map its field-level merge and field removal for free.
//!
//! A key's type is fixed by its first write; a mutation of another type is refused with
//! [`CrdtError::WrongType`], never applied as an overwrite.
//!
//! # Concurrent creation with different types
//!
//! Two replicas that both see no state for a key (or a map field) can each create it, with different
//! types. Their states still join: the body join is an *ordinal sum* over the fixed order of
//! [`CrdtType::conflict_rank`] — the body of the higher-ranked type wins whole, the lower-ranked body
//! is discarded, and bodies of one type join as that type does (see [`Entry::try_join`]). So every
//! replica converges to the winner's full state: the body of a delta of the losing type arriving
//! later is absorbed (a no-op), and a delta of the winning type arriving at a replica that holds the
//! losing type replaces it and then keeps joining with the winner's other deltas, whatever their
//! order. Writes of the losing type accepted before the conflict was seen are discarded with the
//! losing body; the presence flag always joins, so such a write still counts as one that keeps the key
//! existing (showing the winner's state), like any write concurrent with a delete. Only the join of
//! replicated states resolves conflicts: a *client* mutation of another type than the key's current
//! state is still refused with [`CrdtError::WrongType`].
//!
//! The order is part of the stored data's semantics and must never change; see
//! [`CrdtType::conflict_rank`] for the order and why.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{
    AwSet, CrdtError, DocCrdt, DotContext, Hlc, Lattice, LwwRegister, MvRegister, NodeId, PnCounter, Presence,
};

/// The CRDT types a key can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CrdtType {
    /// PN-counter.
    Counter,
    /// Last-writer-wins register.
    Register,
    /// Multi-value register.
    MvRegister,
    /// Add-wins set.
    Set,
    /// Observed-remove map of nested CRDTs.
    Map,
    /// Automerge document.
    Doc,
}

impl CrdtType {
    /// Every type, in wire order.
    pub const ALL: [CrdtType; 6] =
        [CrdtType::Counter, CrdtType::Register, CrdtType::MvRegister, CrdtType::Set, CrdtType::Map, CrdtType::Doc];

    /// The lower-case name used by the CLI and the HTTP API.
    pub fn name(self) -> &'static str {
        match self {
            CrdtType::Counter => "counter",
            CrdtType::Register => "register",
            CrdtType::MvRegister => "mvregister",
            CrdtType::Set => "set",
            CrdtType::Map => "map",
            CrdtType::Doc => "doc",
        }
    }
}

impl CrdtType {
    /// The type's rank in the order that resolves concurrent creation with different types: when two
    /// replicated states of a key (or map field) hold different types, the body of the higher rank wins
    /// and the other is discarded.
    ///
    /// The order is `counter < register < mvregister < set < map < doc` — richer structure wins, so the
    /// surviving value is the one that can hold the most, and a map (whose fields may hold any of the
    /// lower types) never loses to a scalar. It happens to be the declaration (and wire) order, but it
    /// is spelled out here on purpose: it is part of the stored data's semantics, so it must never
    /// change, even if the enum is reordered or extended (a new type gets a new rank, above or below,
    /// chosen once and for all).
    pub const fn conflict_rank(self) -> u8 {
        match self {
            CrdtType::Counter => 0,
            CrdtType::Register => 1,
            CrdtType::MvRegister => 2,
            CrdtType::Set => 3,
            CrdtType::Map => 4,
            CrdtType::Doc => 5,
        }
    }
}

impl std::fmt::Display for CrdtType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CrdtType {
    type Err = CrdtError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CrdtType::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| CrdtError::UnknownType(s.to_string()))
    }
}

/// An observed-remove map from field names to nested CRDT entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrMap {
    #[serde(deserialize_with = "crate::depth::nested")]
    fields: BTreeMap<String, Entry>,
}

impl OrMap {
    /// The entry of field `name`, if the map holds one (a removed field's entry stays, disabled).
    pub fn field(&self, name: &str) -> Option<&Entry> {
        self.fields.get(name)
    }

    /// The fields with their entries, in name order.
    pub fn fields(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.fields.iter()
    }

    /// Number of field entries held (removed fields included: their entries remember the removal).
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the map holds no field entry.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Takes the field entries out: a storage engine that keeps each field in its own record stores
    /// what is left as the map's header.
    pub fn take_fields(&mut self) -> BTreeMap<String, Entry> {
        std::mem::take(&mut self.fields)
    }

    /// Puts field `name` back (`None` leaves it out): how a storage engine rebuilds a map, or the
    /// fields a delta names, from its records. A map joins field by field, each field from its own
    /// entries alone, so the fields a delta names are all of the map that joining it can change.
    pub fn put_field(&mut self, name: String, entry: Option<Entry>) {
        match entry {
            Some(entry) => self.fields.insert(name, entry),
            None => self.fields.remove(&name),
        };
    }

    /// Field-wise join; a field created with different types on two replicas resolves as a key does
    /// (see [`Entry::try_join`]).
    fn join(&mut self, other: &OrMap) {
        for (name, theirs) in &other.fields {
            match self.fields.get_mut(name) {
                Some(ours) => ours.join(theirs),
                None => {
                    self.fields.insert(name.clone(), theirs.clone());
                }
            }
        }
    }
}

/// The typed part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// See [`PnCounter`].
    Counter(PnCounter),
    /// See [`LwwRegister`].
    Register(LwwRegister),
    /// See [`MvRegister`].
    MvRegister(MvRegister),
    /// See [`AwSet`].
    Set(AwSet<Vec<u8>>),
    /// See [`OrMap`].
    Map(OrMap),
    /// See [`DocCrdt`].
    Doc(DocCrdt),
}

impl Body {
    /// The bottom element of type `crdt_type`.
    pub fn empty(crdt_type: CrdtType) -> Body {
        match crdt_type {
            CrdtType::Counter => Body::Counter(PnCounter::default()),
            CrdtType::Register => Body::Register(LwwRegister::default()),
            CrdtType::MvRegister => Body::MvRegister(MvRegister::default()),
            CrdtType::Set => Body::Set(AwSet::default()),
            CrdtType::Map => Body::Map(OrMap::default()),
            CrdtType::Doc => Body::Doc(DocCrdt::default()),
        }
    }

    /// Which type this is.
    pub fn crdt_type(&self) -> CrdtType {
        match self {
            Body::Counter(_) => CrdtType::Counter,
            Body::Register(_) => CrdtType::Register,
            Body::MvRegister(_) => CrdtType::MvRegister,
            Body::Set(_) => CrdtType::Set,
            Body::Map(_) => CrdtType::Map,
            Body::Doc(_) => CrdtType::Doc,
        }
    }

    /// The ordinal-sum join: bodies of one type join as that type; otherwise the body of the higher
    /// [`CrdtType::conflict_rank`] wins whole.
    fn join(&mut self, other: &Body) {
        match (&mut *self, other) {
            (Body::Counter(a), Body::Counter(b)) => a.join(b),
            (Body::Register(a), Body::Register(b)) => a.join(b),
            (Body::MvRegister(a), Body::MvRegister(b)) => a.join(b),
            (Body::Set(a), Body::Set(b)) => a.join(b),
            (Body::Doc(a), Body::Doc(b)) => a.join(b),
            (Body::Map(a), Body::Map(b)) => a.join(b),
            (ours, theirs) => {
                if theirs.crdt_type().conflict_rank() > ours.crdt_type().conflict_rank() {
                    *ours = theirs.clone();
                }
            }
        }
    }

    fn reset_delta(&self, w: &WriteContext) -> Result<Body, CrdtError> {
        Ok(match self {
            Body::Counter(c) => Body::Counter(c.reset_delta()),
            Body::Register(r) => Body::Register(LwwRegister::set_delta(w.node, r.write_ts(w.ts), None)),
            Body::MvRegister(r) => Body::MvRegister(r.reset_delta()),
            Body::Set(s) => Body::Set(s.reset_delta()),
            Body::Doc(d) => Body::Doc(d.reset_delta(w.node)?),
            Body::Map(m) => Body::Map(OrMap {
                fields: m
                    .fields
                    .iter()
                    .map(|(name, entry)| Ok((name.clone(), entry.reset_delta(w)?)))
                    .collect::<Result<_, CrdtError>>()?,
            }),
        })
    }
}

/// Who writes and when: the coordinating replica and the HLC timestamp it issued for this write.
#[derive(Clone, Copy, Debug)]
pub struct WriteContext {
    /// The coordinating replica.
    pub node: NodeId,
    /// Its timestamp for this write. A register write is stamped with it, or, if the coordinator's
    /// register already holds a write at this timestamp or a later one (a lagging clock), just after that
    /// write, so a write always wins over the writes its coordinator has seen.
    pub ts: Hlc,
}

/// A typed mutation, as requested by a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Mutation {
    /// Counter: add `amount` (negative decrements).
    CounterAdd { amount: i64 },
    /// Register: set the value.
    RegisterSet {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Multi-value register: write, replacing the siblings in `context` (all siblings the coordinator
    /// holds when `None`).
    MvRegisterSet {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        context: Option<DotContext>,
    },
    /// Set: add members.
    SetAdd { members: Vec<Vec<u8>> },
    /// Set: remove members (as observed by the coordinator; no prior read needed).
    SetRemove { members: Vec<Vec<u8>> },
    /// Map: apply a nested mutation to `field`, creating it with the nested mutation's type.
    MapUpdate {
        field: String,
        #[serde(deserialize_with = "crate::depth::nested")]
        mutation: Box<Mutation>,
    },
    /// Map: remove `field` as observed.
    MapRemove { field: String },
    /// Doc: apply automerge changes (automerge's binary change encoding, one per element).
    DocApply { changes: Vec<Vec<u8>> },
    /// Doc: set the root fields of a JSON object (a change authored by the coordinator).
    DocPut { json: String },
}

impl Mutation {
    /// The type of CRDT this mutation applies to.
    pub fn crdt_type(&self) -> CrdtType {
        match self {
            Mutation::CounterAdd { .. } => CrdtType::Counter,
            Mutation::RegisterSet { .. } => CrdtType::Register,
            Mutation::MvRegisterSet { .. } => CrdtType::MvRegister,
            Mutation::SetAdd { .. } | Mutation::SetRemove { .. } => CrdtType::Set,
            Mutation::MapUpdate { .. } | Mutation::MapRemove { .. } => CrdtType::Map,
            Mutation::DocApply { .. } | Mutation::DocPut { .. } => CrdtType::Doc,
        }
    }

    /// How many map levels the mutation reaches into (1 for a mutation of the key itself).
    pub fn depth(&self) -> usize {
        match self {
            Mutation::MapUpdate { mutation, .. } => 1 + mutation.depth(),
            _ => 1,
        }
    }

    /// Total payload bytes carried (values, members, changes), for size limits.
    pub fn payload_len(&self) -> usize {
        match self {
            Mutation::CounterAdd { .. } | Mutation::MapRemove { .. } => 0,
            Mutation::RegisterSet { value } | Mutation::MvRegisterSet { value, .. } => value.len(),
            Mutation::SetAdd { members } | Mutation::SetRemove { members } => members.iter().map(Vec::len).sum(),
            Mutation::MapUpdate { field, mutation } => field.len() + mutation.payload_len(),
            Mutation::DocApply { changes } => changes.iter().map(Vec::len).sum(),
            Mutation::DocPut { json } => json.len(),
        }
    }
}

/// A key's (or map field's) replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    presence: Presence,
    body: Body,
}

/// A read view of a CRDT's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A counter's value.
    Counter(i64),
    /// A register's value (`None` once cleared).
    Register(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// A multi-value register's siblings and the context to pass back to resolve them.
    MvRegister { values: Vec<Vec<u8>>, context: DotContext },
    /// A set's members, in byte order.
    Set(Vec<Vec<u8>>),
    /// A map's present fields.
    Map(#[serde(deserialize_with = "crate::depth::nested")] BTreeMap<String, Value>),
    /// A document as JSON text, with its heads (hex change hashes).
    Doc { json: String, heads: Vec<String> },
}

impl Value {
    /// The type this value was read from.
    pub fn crdt_type(&self) -> CrdtType {
        match self {
            Value::Counter(_) => CrdtType::Counter,
            Value::Register(_) => CrdtType::Register,
            Value::MvRegister { .. } => CrdtType::MvRegister,
            Value::Set(_) => CrdtType::Set,
            Value::Map(_) => CrdtType::Map,
            Value::Doc { .. } => CrdtType::Doc,
        }
    }
}

impl Entry {
    /// An empty entry of `crdt_type` (absent, bottom body).
    ///
    /// It is the identity of [`Entry::try_join`] for entries of its type and of higher-ranked types
    /// ([`CrdtType::conflict_rank`]); joined with a lower-ranked entry it keeps its own (empty) body.
    /// `Entry::empty(CrdtType::Counter)`, of the lowest rank, is the identity for every entry.
    pub fn empty(crdt_type: CrdtType) -> Entry {
        Entry { presence: Presence::default(), body: Body::empty(crdt_type) }
    }

    /// Which type the entry holds.
    pub fn crdt_type(&self) -> CrdtType {
        self.body.crdt_type()
    }

    /// Whether the key exists (written and not deleted since, as far as this replica knows).
    pub fn exists(&self) -> bool {
        self.presence.is_enabled()
    }

    /// The typed body.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// The map body, if the entry holds a map: for a storage engine that keeps a map's fields in
    /// records of their own (see [`OrMap::put_field`]).
    pub fn map_mut(&mut self) -> Option<&mut OrMap> {
        match &mut self.body {
            Body::Map(map) => Some(map),
            _ => None,
        }
    }

    /// The set body, if the entry holds a set: for a storage engine that keeps a set's elements in
    /// records of their own (see [`AwSet::put_tagged`]).
    pub fn set_mut(&mut self) -> Option<&mut AwSet<Vec<u8>>> {
        match &mut self.body {
            Body::Set(set) => Some(set),
            _ => None,
        }
    }

    /// The document body, if the entry holds a document: for a storage engine that keeps a
    /// document's changes in records of their own (see [`DocCrdt::set_partial`]).
    pub fn doc_mut(&mut self) -> Option<&mut DocCrdt> {
        match &mut self.body {
            Body::Doc(doc) => Some(doc),
            _ => None,
        }
    }

    /// Joins another replica's state (or a delta) into this one. Never fails: the `Result` is kept for
    /// API stability, and [`CrdtError::TypeConflict`] is no longer produced.
    ///
    /// Presence always joins. Bodies of one type join as that type (a map field-wise, recursively);
    /// bodies of different types resolve by [`CrdtType::conflict_rank`]: the higher-ranked body wins
    /// whole and the other is discarded (see the [module docs](self)).
    ///
    /// Laws (proved by the property tests in `tests/laws.rs`, across mixed types too): commutative,
    /// associative, idempotent, with `Entry::empty(CrdtType::Counter)` (the lowest rank) as identity.
    /// Proof sketch: the body join is the ordinal sum of the per-type lattices, ordered by rank. The
    /// rank of a join is the max of its operands' ranks, and an operand of lower rank is dropped at
    /// whichever step it meets one of higher rank, so any grouping and any order of `a ⊔ b ⊔ c` gives
    /// the per-type join of exactly the operands of the top rank — commutative and associative because
    /// each per-type join is (a map's fields are entries, so this holds for them by induction on
    /// nesting depth); `a ⊔ a` has one rank and is `a` by the per-type idempotence. An entry is the
    /// product of this body lattice and the presence lattice, joined componentwise, so it is a
    /// semilattice as well.
    pub fn try_join(&mut self, other: &Entry) -> Result<(), CrdtError> {
        self.join(other);
        Ok(())
    }

    fn join(&mut self, other: &Entry) {
        self.body.join(&other.body);
        self.presence.join(&other.presence);
    }

    /// Computes the delta of `mutation` against `state` (the coordinator's current state of the key,
    /// `None` if it has none). The caller joins the delta into its state and ships it to other replicas.
    pub fn mutation_delta(state: Option<&Entry>, mutation: &Mutation, w: &WriteContext) -> Result<Entry, CrdtError> {
        if mutation.depth() > crate::depth::MAX_NESTING {
            return Err(CrdtError::InvalidMutation(format!(
                "map updates nest at most {} levels",
                crate::depth::MAX_NESTING
            )));
        }
        let crdt_type = mutation.crdt_type();
        let empty;
        let state = match state {
            Some(s) if s.crdt_type() != crdt_type => {
                return Err(CrdtError::WrongType { actual: s.crdt_type(), requested: crdt_type })
            }
            Some(s) => s,
            None => {
                empty = Entry::empty(crdt_type);
                &empty
            }
        };
        let body = match (&state.body, mutation) {
            (Body::Counter(c), Mutation::CounterAdd { amount }) => Body::Counter(c.add_delta(w.node, *amount)?),
            (Body::Register(r), Mutation::RegisterSet { value }) => {
                Body::Register(LwwRegister::set_delta(w.node, r.write_ts(w.ts), Some(value.clone())))
            }
            (Body::MvRegister(r), Mutation::MvRegisterSet { value, context }) => {
                // Only dots this replica has seen count: a client cannot claim to have read writes
                // that do not exist here.
                let seen = context.as_ref().map_or_else(|| r.read_context(), |c| c.intersect(r.context()));
                let siblings = r.siblings_after(&seen);
                if siblings > crate::mvregister::MAX_SIBLINGS {
                    return Err(CrdtError::InvalidMutation(format!(
                        "the write would leave {siblings} siblings; a multi-value register keeps at most {}: pass \
                         the context of a read (or none) to replace them",
                        crate::mvregister::MAX_SIBLINGS
                    )));
                }
                Body::MvRegister(r.set_delta(w.node, Some(value.clone()), &seen))
            }
            (Body::Set(s), Mutation::SetAdd { members }) => Body::Set(s.add_delta(w.node, members)),
            (Body::Set(s), Mutation::SetRemove { members }) => Body::Set(s.remove_delta(members)),
            (Body::Map(m), Mutation::MapUpdate { field, mutation }) => {
                if matches!(mutation.crdt_type(), CrdtType::Doc) {
                    return Err(CrdtError::InvalidMutation("a map field cannot hold a doc".into()));
                }
                let field_delta = Entry::mutation_delta(m.fields.get(field), mutation, w)?;
                Body::Map(OrMap { fields: BTreeMap::from([(field.clone(), field_delta)]) })
            }
            (Body::Map(m), Mutation::MapRemove { field }) => {
                let mut fields = BTreeMap::new();
                if let Some(entry) = m.fields.get(field) {
                    fields.insert(field.clone(), entry.reset_delta(w)?);
                }
                Body::Map(OrMap { fields })
            }
            (Body::Doc(d), Mutation::DocApply { changes }) => {
                // The configured value cap is checked (inflated) before the write gets here; this
                // is the codec's ceiling, for any other caller.
                Body::Doc(d.client_delta(changes, crate::codec::ABSOLUTE_MAX_BYTES, w.node)?)
            }
            (Body::Doc(d), Mutation::DocPut { json }) => {
                let value: serde_json::Value = serde_json::from_str(json)
                    .map_err(|e| CrdtError::InvalidDocChange(format!("doc_put JSON: {e}")))?;
                Body::Doc(d.put_root_delta(w.node, &value)?)
            }
            (body, mutation) => {
                unreachable!("type checked above: {:?} vs {:?}", body.crdt_type(), mutation.crdt_type())
            }
        };
        Ok(Entry { presence: state.presence.enable_delta(w.node), body })
    }

    /// The delta that deletes the key as observed here: presence off, body reset.
    pub fn reset_delta(&self, w: &WriteContext) -> Result<Entry, CrdtError> {
        Ok(Entry { presence: self.presence.disable_delta(), body: self.body.reset_delta(w)? })
    }

    /// The value, or `None` if the key does not exist.
    pub fn read(&self) -> Result<Option<Value>, CrdtError> {
        if !self.exists() {
            return Ok(None);
        }
        Ok(Some(match &self.body {
            Body::Counter(c) => Value::Counter(c.value()),
            Body::Register(r) => Value::Register(r.value.clone()),
            Body::MvRegister(r) => {
                Value::MvRegister { values: r.values().map(<[u8]>::to_vec).collect(), context: r.read_context() }
            }
            Body::Set(s) => Value::Set(s.elements().cloned().collect()),
            Body::Map(m) => {
                let mut fields = BTreeMap::new();
                for (name, entry) in &m.fields {
                    if let Some(value) = entry.read()? {
                        fields.insert(name.clone(), value);
                    }
                }
                Value::Map(fields)
            }
            Body::Doc(d) => {
                let doc = d.materialize()?;
                Value::Doc { json: doc.to_json()?.to_string(), heads: doc.heads() }
            }
        }))
    }
}
