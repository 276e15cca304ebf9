//! # meridian-crdt
//!
//! Meridian's data model, pure: no I/O, no tokio, no storage engine; time and node identity are
//! parameters. Everything a replica stores or ships for a key is a value of [`Entry`], a
//! delta-state CRDT:
//!
//! | type | module | semantics |
//! |---|---|---|
//! | `counter` | [`counter`] | PN-counter; increments from every replica add up |
//! | `register` | [`register`] | last-writer-wins by [`Hlc`], node id breaks ties |
//! | `mvregister` | [`mvregister`] | concurrent writes kept as siblings (dotted version vectors) |
//! | `set` | [`set`] | add-wins observed-remove set |
//! | `map` | [`entry`] | observed-remove map of nested CRDT entries, field-level merge |
//! | `doc` | [`doc`] | automerge document; changes in automerge's binary format |
//!
//! ## The laws
//!
//! Every type implements [`Lattice::join`] (or [`Entry::try_join`]), and for every type:
//!
//! * `a ⊔ b = b ⊔ a` (commutative), `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)` (associative), `a ⊔ a = a` (idempotent);
//! * so applying the same deltas in any order, any number of times, gives one state.
//!
//! `tests/laws.rs` proves these with proptest over states reachable by real operations.
//!
//! Mutations never edit state in place: [`Entry::mutation_delta`] computes a small delta from the
//! coordinator's current state, and the caller joins it locally and ships it to the other replicas.

pub mod codec;
pub mod counter;
pub mod depth;
pub mod doc;
mod doc_cache;
pub mod dot;
mod dot_store;
pub mod entry;
mod error;
pub mod hlc;
pub mod mvregister;
pub mod register;
pub mod set;

pub use counter::PnCounter;
pub use doc::DocCrdt;
pub use dot::{Dot, DotContext, NodeId, VersionVector};
pub use entry::{Body, CrdtType, Entry, Mutation, OrMap, Value, WriteContext};
pub use error::CrdtError;
pub use hlc::{Hlc, HlcClock};
pub use mvregister::MvRegister;
pub use register::LwwRegister;
pub use set::{AwSet, Presence};

/// A state-based CRDT: a join-semilattice.
///
/// Laws: `join` is commutative, associative and idempotent, so replicas that have received the same
/// set of states or deltas, in any order and with any duplication, are equal.
pub trait Lattice: Clone {
    /// Merges `other` into `self` (least upper bound).
    fn join(&mut self, other: &Self);
}
