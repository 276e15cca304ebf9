//! Add-wins observed-remove set (AW-set).
//!
//! Every add tags the element with a fresh dot; a remove names the dots it observed, by putting them in
//! its context without holding them. An add concurrent with a remove carries a dot the remove never saw,
//! so the add wins. Removes need no prior read by the client: the coordinating replica observes for it.
//! Removed dots leave no per-element tombstone; they live on only as the causal context, which compacts
//! to one counter per replica once deltas have arrived in full.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::{Dot, DotContext, Lattice, NodeId};

/// An add-wins set of `E`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwSet<E: Ord> {
    entries: BTreeMap<E, BTreeSet<Dot>>,
    ctx: DotContext,
}

impl<E: Ord> Default for AwSet<E> {
    fn default() -> Self {
        AwSet { entries: BTreeMap::new(), ctx: DotContext::new() }
    }
}

impl<E: Ord + Clone> AwSet<E> {
    /// Whether `element` is present.
    pub fn contains(&self, element: &E) -> bool {
        self.entries.contains_key(element)
    }

    /// The elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &E> {
        self.entries.keys()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set has no element.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The dots that tag `element`, if it is present.
    pub fn dots_of(&self, element: &E) -> Option<&BTreeSet<Dot>> {
        self.entries.get(element)
    }

    /// The elements with their dots, in order.
    pub fn tagged(&self) -> impl Iterator<Item = (&E, &BTreeSet<Dot>)> {
        self.entries.iter()
    }

    /// The causal context: every dot this state has seen (held or removed).
    pub fn context(&self) -> &DotContext {
        &self.ctx
    }

    /// Takes the elements out, leaving the context: a storage engine that keeps each element in its
    /// own record stores what is left as the set's header.
    pub fn take_tagged(&mut self) -> BTreeMap<E, BTreeSet<Dot>> {
        std::mem::take(&mut self.entries)
    }

    /// Puts `element` back with its `dots` (an empty set of dots removes it): how a storage engine
    /// rebuilds a state, or the part of it a delta touches, from its records.
    ///
    /// A part of a state joins like the whole for the elements it holds: [`Lattice::join`] decides
    /// each element from its own dots and the two contexts alone. So joining a delta into the part
    /// that holds every element the delta names *or whose dots its context covers* gives, for those
    /// elements, what joining it into the whole would, and leaves every other element as it was.
    pub fn put_tagged(&mut self, element: E, dots: BTreeSet<Dot>) {
        if dots.is_empty() {
            self.entries.remove(&element);
        } else {
            self.entries.insert(element, dots);
        }
    }

    /// The delta that adds every element of `elements` on behalf of `node` (one fresh dot each).
    pub fn add_delta<'a, I>(&self, node: NodeId, elements: I) -> AwSet<E>
    where
        I: IntoIterator<Item = &'a E>,
        E: 'a,
    {
        let mut delta = AwSet::default();
        let mut next = self.ctx.next_dot(node);
        for element in elements {
            if delta.entries.contains_key(element) {
                continue;
            }
            // Replacing the element's old dots keeps one dot per element per concurrent adder.
            for dot in self.entries.get(element).into_iter().flatten() {
                delta.ctx.insert(*dot);
            }
            delta.entries.insert(element.clone(), BTreeSet::from([next]));
            delta.ctx.insert(next);
            next.seq += 1;
        }
        delta
    }

    /// The delta that removes every element of `elements` observed here.
    pub fn remove_delta<'a, I>(&self, elements: I) -> AwSet<E>
    where
        I: IntoIterator<Item = &'a E>,
        E: 'a,
    {
        let mut delta = AwSet::default();
        for element in elements {
            for dot in self.entries.get(element).into_iter().flatten() {
                delta.ctx.insert(*dot);
            }
        }
        delta
    }

    /// The delta that removes every element observed here.
    ///
    /// It carries this replica's whole causal context, not just the dots it removes: every other dot
    /// seen here was already removed by a delta seen here, so the merged outcome is the same, but a
    /// replica that receives this delta before those (deltas travel per origin, not in causal order)
    /// does not show elements this replica had seen removed.
    pub fn reset_delta(&self) -> AwSet<E> {
        AwSet { entries: BTreeMap::new(), ctx: self.ctx.clone() }
    }
}

impl<E: Ord + Clone> Lattice for AwSet<E> {
    fn join(&mut self, other: &Self) {
        let keys: BTreeSet<E> = self.entries.keys().chain(other.entries.keys()).cloned().collect();
        let empty = BTreeSet::new();
        for key in keys {
            let ours = self.entries.get(&key).unwrap_or(&empty);
            let theirs = other.entries.get(&key).unwrap_or(&empty);
            let kept: BTreeSet<Dot> = ours
                .iter()
                .filter(|d| theirs.contains(d) || !other.ctx.contains(**d))
                .chain(theirs.iter().filter(|d| !ours.contains(d) && !self.ctx.contains(**d)))
                .copied()
                .collect();
            if kept.is_empty() {
                self.entries.remove(&key);
            } else {
                self.entries.insert(key, kept);
            }
        }
        self.ctx.merge(&other.ctx);
    }
}

/// An enable-wins flag: an [`AwSet`] of one possible element. Marks whether a key or map field exists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence(AwSet<()>);

impl Presence {
    /// Whether the flag is enabled.
    pub fn is_enabled(&self) -> bool {
        self.0.contains(&())
    }

    /// The delta that enables the flag on behalf of `node`.
    ///
    /// Like a disable, it carries the whole causal context: the flag's one element is re-tagged, so every
    /// dot seen here is either replaced by this delta or was already removed.
    pub fn enable_delta(&self, node: NodeId) -> Presence {
        let mut delta = self.0.add_delta(node, [&()]);
        delta.ctx.merge(&self.0.ctx);
        Presence(delta)
    }

    /// The delta that disables the flag as observed here.
    pub fn disable_delta(&self) -> Presence {
        Presence(self.0.reset_delta())
    }
}

impl Lattice for Presence {
    fn join(&mut self, other: &Self) {
        self.0.join(&other.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_wins_over_concurrent_remove() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut base = AwSet::<u8>::default();
        base.join(&base.add_delta(a, [&1]));
        let remove = base.remove_delta([&1]);
        let concurrent_add = base.add_delta(b, [&1]);
        let mut x = base.clone();
        x.join(&remove);
        x.join(&concurrent_add);
        assert!(x.contains(&1));
        let mut y = base.clone();
        y.join(&remove);
        assert!(!y.contains(&1));
    }
}
