//! The one merge rule every dot-based CRDT shares (Almeida, Shoker, Baquero, "Delta State Replicated
//! Data Types", 2018): an entry survives a merge if both sides hold it, or one side holds it and the
//! other side's context has not seen its dot. Seen-but-absent means removed.

use std::collections::BTreeMap;

use crate::{Dot, DotContext};

/// Joins `theirs` (with context `their_ctx`) into `ours` (with context `our_ctx`), dot by dot.
/// The caller merges the contexts afterwards.
pub(crate) fn join_dot_map<V: Clone + PartialEq>(
    ours: &mut BTreeMap<Dot, V>,
    our_ctx: &DotContext,
    theirs: &BTreeMap<Dot, V>,
    their_ctx: &DotContext,
) {
    ours.retain(|dot, _| theirs.contains_key(dot) || !their_ctx.contains(*dot));
    for (dot, value) in theirs {
        if !ours.contains_key(dot) && !our_ctx.contains(*dot) {
            ours.insert(*dot, value.clone());
        }
    }
}
