//! Multi-value register with dotted version vectors.
//!
//! Each write is stored under the dot that created it, together with the causal context of what the
//! writer had seen. Merge keeps a (dot, value) pair if both sides hold it, or if one side holds it and
//! the other has never seen its dot; a pair one side has seen but no longer holds was overwritten. So
//! concurrent writes survive as siblings, and the next write whose context covers them replaces them
//! all — siblings never pile up beyond the number of truly concurrent writers.
//!
//! A write that replaces every sibling its coordinator holds (and a reset) carries the coordinator's
//! whole causal context, not just the dots it replaces. The extra dots are ones the coordinator has
//! seen overwritten, so the merged outcome is the same, but a replica that receives this delta before
//! the deltas that did the overwriting (deltas are shipped per origin, not in causal order) does not
//! resurrect them as siblings of the write that causally follows them.

//!
//! A client may pass a context that resolves nothing (empty, or from a read long ago): each such
//! write adds a sibling. So a write is refused when it would leave more than [`MAX_SIBLINGS`]
//! siblings at its coordinator ([`MvRegister::siblings_after`]); merges are untouched (still a
//! lattice join), so concurrent writers on `n` replicas can leave at most `n × MAX_SIBLINGS`, and
//! any write passing a read's context (or none) brings them back to one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::dot_store::join_dot_map;
use crate::{Dot, DotContext, Lattice, NodeId};

/// Most siblings a write may leave at its coordinator.
pub const MAX_SIBLINGS: usize = 64;

/// A multi-value register.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MvRegister {
    values: BTreeMap<Dot, Vec<u8>>,
    ctx: DotContext,
}

impl MvRegister {
    /// The current siblings, ordered by dot.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.values.values().map(Vec::as_slice)
    }

    /// The context a client passes back to resolve exactly the siblings it read.
    pub fn read_context(&self) -> DotContext {
        DotContext::from_dots(self.values.keys().copied())
    }

    /// The causal context of everything seen.
    pub fn context(&self) -> &DotContext {
        &self.ctx
    }

    /// The delta that writes `value` on behalf of `node`, replacing the siblings in `seen` (what the
    /// writer read; pass [`MvRegister::read_context`] to replace everything held here).
    pub fn set_delta(&self, node: NodeId, value: Option<Vec<u8>>, seen: &DotContext) -> MvRegister {
        let dot = self.ctx.next_dot(node);
        let mut ctx = seen.clone();
        if self.values.keys().all(|held| seen.contains(*held)) {
            // Replacing everything held here: every other dot seen here is already overwritten.
            ctx.merge(&self.ctx);
        }
        ctx.insert(dot);
        let mut values = BTreeMap::new();
        if let Some(value) = value {
            values.insert(dot, value);
        }
        MvRegister { values, ctx }
    }

    /// How many siblings a write replacing those in `seen` leaves here (itself included).
    pub fn siblings_after(&self, seen: &DotContext) -> usize {
        self.values.keys().filter(|held| !seen.contains(**held)).count() + 1
    }

    /// The delta that clears every sibling held here (and retires every overwritten one seen here).
    pub fn reset_delta(&self) -> MvRegister {
        MvRegister { values: BTreeMap::new(), ctx: self.ctx.clone() }
    }
}

impl Lattice for MvRegister {
    fn join(&mut self, other: &Self) {
        join_dot_map(&mut self.values, &self.ctx, &other.values, &other.ctx);
        self.ctx.merge(&other.ctx);
    }
}
