//! Last-writer-wins register ordered by `(Hlc, NodeId)`.
//!
//! The node id breaks ties between equal timestamps, and the value bytes break the (impossible in
//! practice, possible in property tests) tie of one replica issuing one timestamp twice, so merge is a
//! total order's max: commutative, associative and idempotent. A delete writes an empty value at a
//! newer timestamp, so a later write wins over it and an older one does not.
//!
//! A write must win over every write its coordinator has already seen, whatever the clocks say: a
//! replica whose clock lags (or that refused a timestamp too far ahead) must not lose its own later
//! write, or delete, to an earlier one. So [`crate::Entry::mutation_delta`] and
//! [`crate::Entry::reset_delta`] stamp the write with the coordinator's timestamp, or just after the
//! current winner's if that is not newer.

use serde::{Deserialize, Serialize};

use crate::{Hlc, Lattice, NodeId};

/// A last-writer-wins register. `value == None` is empty (never written, or deleted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister {
    /// The winning write's timestamp.
    pub ts: Hlc,
    /// The replica that issued the winning write.
    pub node: NodeId,
    /// The winning value.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

impl LwwRegister {
    /// The delta that writes `value` (or clears, with `None`) at `ts` on behalf of `node`.
    pub fn set_delta(node: NodeId, ts: Hlc, value: Option<Vec<u8>>) -> LwwRegister {
        LwwRegister { ts, node, value }
    }

    /// The timestamp for a write issued at `ts` by a coordinator holding this register: `ts` if it is
    /// newer than the current winner's, else the current winner's successor, so the write, which
    /// causally follows the winner, wins over it.
    pub(crate) fn write_ts(&self, ts: Hlc) -> Hlc {
        if ts > self.ts {
            ts
        } else {
            self.ts.successor()
        }
    }

    fn order_key(&self) -> (Hlc, NodeId, &Option<Vec<u8>>) {
        (self.ts, self.node, &self.value)
    }
}

impl Lattice for LwwRegister {
    fn join(&mut self, other: &Self) {
        if other.order_key() > self.order_key() {
            *self = other.clone();
        }
    }
}
