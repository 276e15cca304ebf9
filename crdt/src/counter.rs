//! PN-counter: increments from every replica add up.
//!
//! Each replica owns one monotone pair of totals (increments, decrements) and only ever raises its
//! own; merge is a pointwise max, so it is commutative, associative and idempotent. A delete cannot
//! lower a total, so it records the totals it observed as a *reset floor*, also merged by max; the
//! value counts only what lies above the floor. An increment concurrent with a delete survives it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{CrdtError, Lattice, NodeId};

/// A PN-counter with an observed-reset floor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    inc: BTreeMap<NodeId, u64>,
    dec: BTreeMap<NodeId, u64>,
    reset_inc: BTreeMap<NodeId, u64>,
    reset_dec: BTreeMap<NodeId, u64>,
}

impl PnCounter {
    /// The counter's value.
    pub fn value(&self) -> i64 {
        let above = |totals: &BTreeMap<NodeId, u64>, floor: &BTreeMap<NodeId, u64>| -> i128 {
            totals
                .iter()
                .map(|(node, total)| i128::from(total - floor.get(node).copied().unwrap_or(0).min(*total)))
                .sum()
        };
        let value = above(&self.inc, &self.reset_inc) - above(&self.dec, &self.reset_dec);
        value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The delta that adds `amount` (negative to decrement) on behalf of `node`.
    pub fn add_delta(&self, node: NodeId, amount: i64) -> Result<PnCounter, CrdtError> {
        let mut delta = PnCounter::default();
        let (totals, out) = if amount >= 0 { (&self.inc, &mut delta.inc) } else { (&self.dec, &mut delta.dec) };
        let current = totals.get(&node).copied().unwrap_or(0);
        let next = current.checked_add(amount.unsigned_abs()).ok_or(CrdtError::CounterOverflow)?;
        out.insert(node, next);
        Ok(delta)
    }

    /// The delta that resets everything observed here to zero.
    pub fn reset_delta(&self) -> PnCounter {
        PnCounter { reset_inc: self.inc.clone(), reset_dec: self.dec.clone(), ..PnCounter::default() }
    }
}

fn join_max(into: &mut BTreeMap<NodeId, u64>, from: &BTreeMap<NodeId, u64>) {
    for (node, total) in from {
        let entry = into.entry(*node).or_insert(0);
        *entry = (*entry).max(*total);
    }
}

impl Lattice for PnCounter {
    fn join(&mut self, other: &Self) {
        join_max(&mut self.inc, &other.inc);
        join_max(&mut self.dec, &other.dec);
        join_max(&mut self.reset_inc, &other.reset_inc);
        join_max(&mut self.reset_dec, &other.reset_dec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_from_replicas_add_up_and_reset_keeps_concurrent_ones() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut x = PnCounter::default();
        x.join(&x.add_delta(a, 5).unwrap());
        x.join(&x.add_delta(b, -2).unwrap());
        assert_eq!(x.value(), 3);
        let reset = x.reset_delta();
        let concurrent = x.add_delta(a, 4).unwrap();
        x.join(&reset);
        x.join(&concurrent);
        assert_eq!(x.value(), 4);
    }
}
