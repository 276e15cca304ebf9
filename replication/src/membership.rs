//! Cluster membership as replicated metadata that is itself a CRDT.
//!
//! There is no leader to own the member list, so the list converges the way data does: a [`Membership`]
//! is a map `NodeId → Member`, and two memberships join pointwise, keeping for each node the record that
//! *takes precedence* ([`Member::precedence`]). Precedence is a total order, so the join (a per-node
//! maximum) is commutative, associative and idempotent, and replicas that have received the same
//! records — in any order, any number of times, whole or as deltas — hold equal memberships. Gossip
//! compares [`Membership::digest`]s and ships the membership (or the deltas) when they differ.
//!
//! ## Precedence: incarnation, then lifecycle, then time
//!
//! A record carries a [`MemberVersion`] `(incarnation, hlc)`. One record takes precedence over another
//! of the same node when, compared in order:
//!
//! 1. its **incarnation** is higher — a node that re-joins after removal does so with a new incarnation,
//!    and a new incarnation replaces everything about the old one, tombstone included;
//! 2. its **state** is further along the lifecycle `Joining < Active < Draining < Removed`;
//! 3. its **HLC** is later — same incarnation and state: the newer attributes (addresses, zone, name);
//! 4. its remaining fields compare greater (name, region, zone, peer, client, http address) — only two
//!    records minted with the same timestamp get here; this makes the order total, so the join is
//!    commutative even then.
//!
//! Ordering the state before the timestamp is deliberate. Every allowed transition moves forward in the
//! lifecycle, so within an incarnation the state is a monotone register: an operator's drain or removal
//! can never be undone by a concurrent record with a later clock (say, the node itself re-announcing its
//! addresses before it heard of the drain). The price: such a concurrent attribute change loses to the
//! state change. A node owns its addresses, so the driver re-announces them with [`Membership::upsert`]
//! when the converged record disagrees with its own configuration.
//!
//! ## Lifecycle
//!
//! ```text
//! Joining ──► Active ──► Draining ──► Removed
//!    │           └──────────────────────▲ (forced remove: the node is gone, no handoff)
//!    └──────────────────────────────────┘ (a join abandoned before the node took data)
//! ```
//!
//! * `Joining`: known to the cluster, streaming the data of the partitions it will own; it is given no
//!   placements and serves nothing yet.
//! * `Active`: placed on ([`Membership::placement_nodes`]) and serving.
//! * `Draining`: leaving gracefully; receives no *new* placements (placement recomputed without it
//!   moves its partitions to their next replicas) but keeps serving what it holds until the handoff
//!   completes ([`Membership::serving_nodes`]).
//! * `Removed`: a tombstone. It stays in the map so that the removal wins against every older record
//!   still travelling; only a record with a higher incarnation replaces it.
//!
//! Local changes go through [`Membership::upsert`] (a node announcing itself or its new attributes) and
//! [`Membership::transition`] (lifecycle). Both return the *delta* — a membership holding just the
//! changed record — to gossip; joining the delta into any replica has the same effect as the change.
//!
//! ## Failure model
//!
//! Records may be delayed, duplicated, reordered or lost and re-sent; none of that changes the converged
//! result. Clocks may be skewed: the HLC only orders records of the same incarnation and state, and a
//! transition never moves a record's HLC backwards. Not defended against here: two writers minting
//! different records with the same version (the tie-break keeps the join convergent, but one write is
//! lost). Forged records are the next section's.
//!
//! ## Who may say what
//!
//! Gossip relays records, so a node could put words in another's mouth. Records carry no signature,
//! but every sender is authenticated (mutual TLS: its certificate binds its name, region and zone),
//! and [`Membership::check_claims`] refuses — before anything is merged — a gossiped membership that
//! says what its sender may not say:
//!
//! * **A node speaks for itself.** The sender's own record (under the id it sends as) must carry the
//!   name and region of its certificate ([`ClaimError::OwnEntry`]; not its zone, which only spreads
//!   placement — nodes configured with another zone than their certificate's predate this check),
//!   and the id must be the one
//!   its name is known under ([`Membership::check_sender`]: [`ClaimError::NotTheSender`],
//!   [`ClaimError::SomeoneElse`]), or a first contact — or a *successor*: a node that started a new
//!   log epoch runs under a fresh id and hands its name over in the same gossip, by a removal of
//!   the id it held the name under that wins the join ([`Membership::succeeds`]).
//! * **Relays only repeat.** A record of *another* known node that would win the join may change its
//!   lifecycle state and timestamp — an operator's `meridian cluster activate|drain|remove` runs on any
//!   node and spreads by relay — but not what only the node itself knows or its certificate fixes:
//!   name, region, zone, addresses ([`ClaimError::Rewritten`]), nor raise its incarnation
//!   ([`ClaimError::Reincarnated`]). Those changes reach each node from the node itself: every node
//!   gossips to every member it knows each round.
//! * **A name is one node's.** No record may give a name held by another live (not removed) node
//!   to a different id ([`ClaimError::NameTaken`]).
//! * Records of nodes not known yet are taken as relayed (that is how a new node learns its region);
//!   their identity is checked when they are dialled or when they first speak.
//!
//! What cannot be verified without signed records: that a relayed state change (a drain, a removal)
//! was really an operator's command — a compromised node with a valid certificate can still drain or
//! remove others, as an operator on it could; and that a relayed record of a node not known yet is
//! the node's own (a fabricated member with a fabricated address is refused when dialled — the
//! address answers with another certificate — or never answers).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use meridian_crdt::{Hlc, NodeId};
use serde::{Deserialize, Serialize};

use crate::hash::StableHasher;
use crate::placement::NodeSlot;
use crate::ReplicationError;

/// Why a gossiped membership (or a request's sender id) was refused: it says something its sender,
/// as certified, may not say (see the module docs, "Who may say what").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The sender's own record contradicts its certificate.
    #[error("node {node}'s own record says {field} {claimed:?}, its certificate says {certified:?}")]
    OwnEntry {
        /// The sender.
        node: NodeId,
        /// Which field.
        field: &'static str,
        /// What the record says.
        claimed: String,
        /// What the certificate says.
        certified: String,
    },
    /// The sender names an id as its own that belongs to another node.
    #[error("the request claims to be from node {claimed}, which is {owner:?}, not the certified {name:?}")]
    SomeoneElse {
        /// The id claimed.
        claimed: NodeId,
        /// The name that id is known under.
        owner: String,
        /// The sender's certified name.
        name: String,
    },
    /// The sender's certified name is known under another id (still a member).
    #[error("the request claims to be from node {claimed}, but {name:?} is node {known}")]
    NotTheSender {
        /// The id claimed.
        claimed: NodeId,
        /// The sender's certified name.
        name: String,
        /// The id that name is known under.
        known: NodeId,
    },
    /// A relayed record of another node changes what only that node may change.
    #[error("the record of node {node} changes its {field} from {held:?} to {claimed:?}: only the node itself may")]
    Rewritten {
        /// The node the record is about.
        node: NodeId,
        /// Which field.
        field: &'static str,
        /// What this node holds.
        held: String,
        /// What the record says.
        claimed: String,
    },
    /// A relayed record of another node raises its incarnation.
    #[error("the record of node {node} raises its incarnation from {held} to {claimed}: only the node itself may")]
    Reincarnated {
        /// The node the record is about.
        node: NodeId,
        /// The incarnation held.
        held: u64,
        /// The incarnation claimed.
        claimed: u64,
    },
    /// A record gives another live node's name to a different id.
    #[error("the record of node {node} names it {name:?}, which is node {holder}'s")]
    NameTaken {
        /// The node the record is about.
        node: NodeId,
        /// The name.
        name: String,
        /// The id holding it.
        holder: NodeId,
    },
}

/// What the sender's certificate says about it.
#[derive(Clone, Copy, Debug)]
pub struct Certified<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its region.
    pub region: &'a str,
    /// Its zone.
    pub zone: &'a str,
}

/// Where a member is in its lifecycle. Ordered along the lifecycle: `Joining < Active < Draining < Removed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Known, catching up; no placements, serves nothing.
    Joining,
    /// Placed on and serving.
    Active,
    /// Leaving: no new placements, still serves what it holds.
    Draining,
    /// Gone: a tombstone that only a higher incarnation replaces.
    Removed,
}

impl MemberState {
    /// Whether a member in this state may move to `to` by [`Membership::transition`]:
    /// `Joining→Active`, `Active→Draining`, `Draining→Removed`, plus `Active→Removed` (forced removal
    /// of a node that is gone for good, without a drain) and `Joining→Removed` (an abandoned join).
    /// Every allowed transition moves forward in the lifecycle order; `Removed` goes nowhere.
    pub fn can_become(self, to: MemberState) -> bool {
        use MemberState::*;
        matches!(
            (self, to),
            (Joining, Active) | (Active, Draining) | (Draining, Removed) | (Active, Removed) | (Joining, Removed)
        )
    }

    /// Whether placement may give this member new replicas (only `Active`).
    pub fn takes_placements(self) -> bool {
        self == MemberState::Active
    }

    /// Whether this member holds placements once the moves in progress end (`Active` and
    /// `Joining`: a joining member catches up the partitions it will hold).
    pub fn placed_after_moves(self) -> bool {
        matches!(self, MemberState::Active | MemberState::Joining)
    }

    /// Whether this member serves the data it holds (`Active` and `Draining`).
    pub fn serves(self) -> bool {
        matches!(self, MemberState::Active | MemberState::Draining)
    }

    fn code(self) -> u64 {
        match self {
            MemberState::Joining => 0,
            MemberState::Active => 1,
            MemberState::Draining => 2,
            MemberState::Removed => 3,
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Joining => "joining",
            MemberState::Active => "active",
            MemberState::Draining => "draining",
            MemberState::Removed => "removed",
        })
    }
}

/// The version of a member record: its incarnation and the HLC of its last change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberVersion {
    /// Bumped each time the node (re-)joins; a higher incarnation replaces everything before it.
    pub incarnation: u64,
    /// When the record last changed, from the HLC of the replica that changed it.
    pub hlc: Hlc,
}

/// What the cluster knows about one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Human-readable node name (shown by `meridian status`).
    pub name: String,
    /// The node's region, e.g. `eu-west`.
    pub region: String,
    /// The node's zone within its region (its failure domain, for placement).
    pub zone: String,
    /// Address other nodes reach it at (node-to-node QUIC).
    pub peer_addr: String,
    /// Address clients reach it at (client QUIC protocol).
    pub client_addr: String,
    /// Address of its HTTP API.
    pub http_addr: String,
    /// Lifecycle state.
    pub state: MemberState,
    /// Version of this record.
    pub version: MemberVersion,
}

impl Member {
    /// The total order the join keeps the maximum of: incarnation, then state, then HLC, then the
    /// remaining fields (see the module docs). `Equal` only for identical records.
    pub fn precedence(&self, other: &Member) -> Ordering {
        precedence_key(self).cmp(&precedence_key(other))
    }

    /// This member as placement sees it.
    pub fn slot(&self, id: NodeId) -> NodeSlot {
        NodeSlot { id, zone: self.zone.clone() }
    }
}

/// The fields of a record in precedence order (see [`Member::precedence`]).
#[allow(clippy::type_complexity)]
fn precedence_key(m: &Member) -> (u64, MemberState, Hlc, (&str, &str, &str), (&str, &str, &str)) {
    (
        m.version.incarnation,
        m.state,
        m.version.hlc,
        (m.name.as_str(), m.region.as_str(), m.zone.as_str()),
        (m.peer_addr.as_str(), m.client_addr.as_str(), m.http_addr.as_str()),
    )
}

/// The cluster's members: a join-semilattice under per-node precedence (see the module docs).
///
/// Also the type of deltas: [`Membership::upsert`] and [`Membership::transition`] return a membership
/// holding just the record they wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    members: BTreeMap<NodeId, Member>,
}

impl Membership {
    /// The empty membership.
    pub fn new() -> Self {
        Self::default()
    }

    /// The record of `node`, tombstones included.
    pub fn get(&self, node: NodeId) -> Option<&Member> {
        self.members.get(&node)
    }

    /// Every record, tombstones included, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Member)> + '_ {
        self.members.iter().map(|(id, m)| (*id, m))
    }

    /// Number of records, tombstones included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no records at all.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The incarnation a (re-)joining `node` should announce: one above its current record's, or 1 for
    /// a node never seen.
    pub fn next_incarnation(&self, node: NodeId) -> u64 {
        self.members.get(&node).map_or(1, |m| m.version.incarnation.saturating_add(1))
    }

    /// Writes `member` as the record of `node` and returns the delta to gossip.
    ///
    /// Two uses: a node announcing itself with a new incarnation (a first join, or a re-join after
    /// removal; any state), and a node changing its attributes (addresses, zone, name) within its current
    /// incarnation, with a fresh HLC and *the state it already has* — state changes within an incarnation
    /// go through [`Membership::transition`]. Refused, leaving the membership unchanged:
    ///
    /// * [`ReplicationError::Superseded`] when the record would lose the join (older incarnation, or
    ///   same incarnation and state with an older HLC);
    /// * [`ReplicationError::Removed`] when the node's record is a tombstone and `member` does not carry
    ///   a higher incarnation;
    /// * [`ReplicationError::InvalidTransition`] when `member` keeps the incarnation but changes the state.
    ///
    /// Writing the record already held is a successful no-op (its delta is that record).
    pub fn upsert(&mut self, node: NodeId, member: Member) -> Result<Membership, ReplicationError> {
        if let Some(held) = self.members.get(&node) {
            let held_incarnation = held.version.incarnation;
            if member.version.incarnation < held_incarnation {
                return Err(ReplicationError::Superseded { node, held_incarnation });
            }
            if member.version.incarnation == held_incarnation {
                if held.state == MemberState::Removed {
                    return Err(ReplicationError::Removed { node, incarnation: held_incarnation });
                }
                if member.state != held.state {
                    return Err(ReplicationError::InvalidTransition { node, from: held.state, to: member.state });
                }
                if member.precedence(held) == Ordering::Less {
                    return Err(ReplicationError::Superseded { node, held_incarnation });
                }
            }
        }
        self.members.insert(node, member.clone());
        Ok(Membership::single(node, member))
    }

    /// Moves `node` to state `to` (see [`MemberState::can_become`]), stamping the record with `at` — a
    /// fresh timestamp from the caller's HLC clock — or with the record's own HLC if that is later, so a
    /// lagging clock never moves a record back in time. Returns the delta to gossip.
    ///
    /// Asking for the state the node is already in is a successful no-op with an empty delta (so a
    /// retried command is harmless). Refused: [`ReplicationError::UnknownNode`], [`ReplicationError::Removed`]
    /// (a tombstone leaves only by a re-join through [`Membership::upsert`]) and
    /// [`ReplicationError::InvalidTransition`].
    pub fn transition(&mut self, node: NodeId, to: MemberState, at: Hlc) -> Result<Membership, ReplicationError> {
        let held = self.members.get_mut(&node).ok_or(ReplicationError::UnknownNode(node))?;
        if held.state == to {
            return Ok(Membership::new());
        }
        if held.state == MemberState::Removed {
            return Err(ReplicationError::Removed { node, incarnation: held.version.incarnation });
        }
        if !held.state.can_become(to) {
            return Err(ReplicationError::InvalidTransition { node, from: held.state, to });
        }
        held.state = to;
        held.version.hlc = held.version.hlc.max(at);
        Ok(Membership::single(node, held.clone()))
    }

    /// Joins `other` (a whole membership or a delta) into this one: per node, the record with the higher
    /// precedence. Returns whether anything changed.
    pub fn merge(&mut self, other: &Membership) -> bool {
        let mut changed = false;
        for (node, theirs) in &other.members {
            match self.members.get_mut(node) {
                Some(ours) => {
                    if theirs.precedence(ours) == Ordering::Greater {
                        *ours = theirs.clone();
                        changed = true;
                    }
                }
                None => {
                    self.members.insert(*node, theirs.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// Whether a node certified as `name` may send as `from`: `from` is known under that name, or
    /// `from` is not known and no live member holds the name (a first contact).
    pub fn check_sender(&self, from: NodeId, name: &str) -> Result<(), ClaimError> {
        match self.members.get(&from) {
            Some(m) if m.name == name => Ok(()),
            Some(m) => Err(ClaimError::SomeoneElse { claimed: from, owner: m.name.clone(), name: name.to_string() }),
            None => match self.live_holder_of(name, from) {
                Some(known) => Err(ClaimError::NotTheSender { claimed: from, name: name.to_string(), known }),
                None => Ok(()),
            },
        }
    }

    /// [`Membership::check_sender`] for a request that carries the sender's membership (`theirs`,
    /// gossip): a sender the name is known under another id passes when `theirs` hands the name
    /// over ([`Membership::succeeds`]).
    pub fn check_sender_gossiping(
        &self,
        from: NodeId,
        name: &str,
        theirs: Option<&Membership>,
    ) -> Result<(), ClaimError> {
        match self.check_sender(from, name) {
            Err(ClaimError::NotTheSender { .. }) if theirs.is_some_and(|theirs| self.succeeds(from, name, theirs)) => {
                Ok(())
            }
            checked => checked,
        }
    }

    /// Whether `theirs`, gossiped by `from` certified as `name`, hands `name` over from the live
    /// member holding it here to `from`: `theirs` has `from` under `name` in the holder's region,
    /// and the holder removed by a record that wins the join. A node that started a new log epoch
    /// (its previous run may have lost writes its peers hold) runs under a fresh id and says so.
    /// The removal is what any relay may say; the certificate proves the sender holds the name.
    pub fn succeeds(&self, from: NodeId, name: &str, theirs: &Membership) -> bool {
        let Some(holder) = self.live_holder_of(name, from) else { return false };
        let (Some(held), Some(claimed)) = (self.members.get(&holder), theirs.get(from)) else { return false };
        claimed.name == name
            && claimed.region == held.region
            && claimed.state != MemberState::Removed
            && theirs.removes(self, holder)
    }

    /// Whether this membership removes `node` by a record that wins the join with `ours`.
    fn removes(&self, ours: &Membership, node: NodeId) -> bool {
        match (self.members.get(&node), ours.members.get(&node)) {
            (Some(theirs), Some(held)) => {
                theirs.state == MemberState::Removed && theirs.precedence(held) == Ordering::Greater
            }
            (Some(theirs), None) => theirs.state == MemberState::Removed,
            _ => false,
        }
    }

    /// The live member other than `except` named `name`.
    fn live_holder_of(&self, name: &str, except: NodeId) -> Option<NodeId> {
        self.members
            .iter()
            .find(|(id, m)| **id != except && m.name == name && m.state != MemberState::Removed)
            .map(|(id, _)| *id)
    }

    /// Checks a membership `from` (certified as `certified`) gossiped before it is merged here (see
    /// the module docs, "Who may say what"). The first claim that fails is the error; nothing of a
    /// refused membership should be merged.
    pub fn check_claims(&self, from: NodeId, certified: Certified<'_>, theirs: &Membership) -> Result<(), ClaimError> {
        self.check_sender_gossiping(from, certified.name, Some(theirs))?;
        for (node, entry) in theirs.iter() {
            if node == from {
                // The zone is not held to the certificate: it only spreads placement, and nodes
                // configured with another zone than their certificate's predate this check.
                for (field, claimed, certified) in
                    [("name", &entry.name, certified.name), ("region", &entry.region, certified.region)]
                {
                    if claimed != certified {
                        return Err(ClaimError::OwnEntry {
                            node,
                            field,
                            claimed: claimed.clone(),
                            certified: certified.to_string(),
                        });
                    }
                }
                continue;
            }
            let held = self.members.get(&node);
            if held.is_some_and(|held| entry.precedence(held) != Ordering::Greater) {
                continue; // loses the join: changes nothing here
            }
            if entry.state != MemberState::Removed {
                let holder = if entry.name == certified.name {
                    Some(from)
                } else {
                    // A holder `theirs` removes, by a record that wins the join, frees the name: what
                    // a handover (a new log epoch, `succeeds`) looks like to the nodes it reaches by relay.
                    self.live_holder_of(&entry.name, node).filter(|holder| !theirs.removes(self, *holder))
                };
                if let Some(holder) = holder {
                    return Err(ClaimError::NameTaken { node, name: entry.name.clone(), holder });
                }
            }
            let Some(held) = held else { continue };
            if entry.version.incarnation > held.version.incarnation {
                return Err(ClaimError::Reincarnated {
                    node,
                    held: held.version.incarnation,
                    claimed: entry.version.incarnation,
                });
            }
            for (field, held, claimed) in [
                ("name", &held.name, &entry.name),
                ("region", &held.region, &entry.region),
                ("zone", &held.zone, &entry.zone),
                ("peer address", &held.peer_addr, &entry.peer_addr),
                ("client address", &held.client_addr, &entry.client_addr),
                ("http address", &held.http_addr, &entry.http_addr),
            ] {
                if held != claimed {
                    return Err(ClaimError::Rewritten { node, field, held: held.clone(), claimed: claimed.clone() });
                }
            }
        }
        Ok(())
    }

    /// The nodes of `region` that placement may put replicas on: `Active` members only, in node order.
    /// Pass these to [`crate::place`].
    pub fn placement_nodes(&self, region: &str) -> Vec<NodeSlot> {
        self.slots(region, MemberState::takes_placements)
    }

    /// The nodes of `region` that serve the data they hold: `Active` and `Draining` members, in node
    /// order. A draining node is still a valid read (and write) target for the keys it holds until its
    /// handoff completes; it is just not given new ones.
    pub fn serving_nodes(&self, region: &str) -> Vec<NodeSlot> {
        self.slots(region, MemberState::serves)
    }

    /// The nodes of `region` that hold placements once the moves in progress end: `Active` and
    /// `Joining` members, in node order. Placement over these is a moving partition's *new*
    /// replica set; over [`Membership::serving_nodes`], its *old* one.
    pub fn future_placement_nodes(&self, region: &str) -> Vec<NodeSlot> {
        self.slots(region, MemberState::placed_after_moves)
    }

    fn slots(&self, region: &str, keep: fn(MemberState) -> bool) -> Vec<NodeSlot> {
        self.members.iter().filter(|(_, m)| m.region == region && keep(m.state)).map(|(id, m)| m.slot(*id)).collect()
    }

    /// A 64-bit summary of every record (tombstones included), for gossip: equal memberships have equal
    /// digests on every node and platform; different ones differ except with probability about 2^-64.
    ///
    /// The [`crate::stable_hash`] of, in node order, each record's node id, incarnation, state code
    /// (0 joining … 3 removed), HLC wall time and logical counter (each as 8 big-endian bytes) and its six
    /// strings (each as its length then its bytes), preceded by the record count. O(records) per call.
    pub fn digest(&self) -> u64 {
        let mut h = StableHasher::new();
        h.write_u64(self.members.len() as u64);
        for (id, m) in &self.members {
            h.write_u64(id.0);
            h.write_u64(m.version.incarnation);
            h.write_u64(m.state.code());
            h.write_u64(m.version.hlc.wall_ms);
            h.write_u64(u64::from(m.version.hlc.logical));
            for field in [&m.name, &m.region, &m.zone, &m.peer_addr, &m.client_addr, &m.http_addr] {
                h.write_field(field.as_bytes());
            }
        }
        h.finish()
    }

    fn single(node: NodeId, member: Member) -> Membership {
        Membership { members: BTreeMap::from([(node, member)]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::mix64;
    use meridian_crdt::HlcClock;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use MemberState::*;

    fn hlc(wall_ms: u64) -> Hlc {
        Hlc { wall_ms, logical: 0 }
    }

    fn member(region: &str, zone: &str, state: MemberState, incarnation: u64, at: u64) -> Member {
        Member {
            name: format!("{region}-{zone}"),
            region: region.into(),
            zone: zone.into(),
            peer_addr: format!("10.0.0.1:{at}"),
            client_addr: "10.0.0.1:7400".into(),
            http_addr: "10.0.0.1:7480".into(),
            state,
            version: MemberVersion { incarnation, hlc: hlc(at) },
        }
    }

    fn joined(a: &Membership, b: &Membership) -> Membership {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    const N: NodeId = NodeId(1);

    #[test]
    fn lifecycle_allows_only_forward_transitions() {
        let all = [Joining, Active, Draining, Removed];
        let allowed: Vec<(MemberState, MemberState)> =
            all.iter().flat_map(|a| all.iter().map(move |b| (*a, *b))).filter(|(a, b)| a.can_become(*b)).collect();
        assert_eq!(
            allowed,
            vec![(Joining, Active), (Joining, Removed), (Active, Draining), (Active, Removed), (Draining, Removed)]
        );
        assert!(allowed.iter().all(|(a, b)| a < b), "every transition moves forward");

        let mut m = Membership::new();
        m.upsert(N, member("eu", "a", Joining, 1, 10)).unwrap();
        let delta = m.transition(N, Active, hlc(20)).unwrap();
        assert_eq!(delta.get(N).unwrap().state, Active);
        assert_eq!(
            m.transition(N, Joining, hlc(30)),
            Err(ReplicationError::InvalidTransition { node: N, from: Active, to: Joining })
        );
        assert!(m.transition(N, Active, hlc(30)).unwrap().is_empty(), "same state: no-op");
        m.transition(N, Draining, hlc(40)).unwrap();
        m.transition(N, Removed, hlc(50)).unwrap();
        assert_eq!(m.transition(NodeId(9), Active, hlc(60)), Err(ReplicationError::UnknownNode(NodeId(9))));
    }

    #[test]
    fn transition_never_moves_the_clock_back() {
        let mut m = Membership::new();
        m.upsert(N, member("eu", "a", Joining, 1, 1_000)).unwrap();
        let delta = m.transition(N, Active, hlc(5)).unwrap();
        assert_eq!(delta.get(N).unwrap().version.hlc, hlc(1_000));
    }

    #[test]
    fn removed_is_a_tombstone_until_a_new_incarnation() {
        let mut m = Membership::new();
        m.upsert(N, member("eu", "a", Active, 1, 10)).unwrap();
        let mut stale = m.clone();
        m.transition(N, Removed, hlc(20)).unwrap();

        // Neither local writes nor gossip of the same incarnation bring it back, whatever their clock.
        let removed = Err(ReplicationError::Removed { node: N, incarnation: 1 });
        assert_eq!(m.upsert(N, member("eu", "a", Active, 1, 99)), removed.clone());
        assert_eq!(m.transition(N, Active, hlc(99)), removed);
        stale.upsert(N, member("eu", "b", Active, 1, 99)).unwrap();
        assert!(!m.merge(&stale), "a later same-incarnation record loses to the tombstone");
        assert_eq!(m.get(N).unwrap().state, Removed);

        // A re-join with a higher incarnation replaces it, everywhere.
        assert_eq!(m.next_incarnation(N), 2);
        let delta = m.upsert(N, member("eu", "a", Joining, 2, 5)).unwrap();
        let mut other = stale.clone();
        other.merge(&delta);
        assert_eq!(other.get(N).unwrap().state, Joining);
        assert_eq!(other.get(N).unwrap().version.incarnation, 2);
    }

    #[test]
    fn concurrent_drain_beats_a_later_attribute_update() {
        let mut base = Membership::new();
        base.upsert(N, member("eu", "a", Active, 1, 10)).unwrap();
        let (mut operator, mut node) = (base.clone(), base);
        let drain = operator.transition(N, Draining, hlc(20)).unwrap();
        let announce = node.upsert(N, member("eu", "a", Active, 1, 30)).unwrap();
        assert_eq!(joined(&drain, &announce).get(N).unwrap().state, Draining);
        operator.merge(&announce);
        node.merge(&drain);
        assert_eq!(operator, node);
        assert_eq!(node.get(N).unwrap().state, Draining);
    }

    #[test]
    fn upsert_refuses_writes_that_would_be_lost() {
        let mut m = Membership::new();
        m.upsert(N, member("eu", "a", Active, 2, 50)).unwrap();
        assert_eq!(
            m.upsert(N, member("eu", "a", Active, 1, 90)),
            Err(ReplicationError::Superseded { node: N, held_incarnation: 2 })
        );
        assert_eq!(
            m.upsert(N, member("eu", "a", Active, 2, 40)),
            Err(ReplicationError::Superseded { node: N, held_incarnation: 2 })
        );
        assert_eq!(
            m.upsert(N, member("eu", "a", Draining, 2, 60)),
            Err(ReplicationError::InvalidTransition { node: N, from: Active, to: Draining })
        );
        let same = m.get(N).unwrap().clone();
        assert_eq!(m.upsert(N, same.clone()).unwrap().get(N), Some(&same), "rewriting the held record is a no-op");
        let moved = member("eu", "b", Active, 2, 60);
        m.upsert(N, moved.clone()).unwrap();
        assert_eq!(m.get(N), Some(&moved));
    }

    #[test]
    fn placement_and_serving_nodes_follow_state_and_region() {
        let mut m = Membership::new();
        for (id, region, zone, state) in [
            (1, "eu", "a", Active),
            (2, "eu", "b", Draining),
            (3, "eu", "c", Joining),
            (4, "eu", "a", Removed),
            (5, "us", "a", Active),
            (6, "eu", "c", Active),
        ] {
            m.upsert(NodeId(id), member(region, zone, state, 1, 10)).unwrap();
        }
        assert_eq!(m.placement_nodes("eu"), vec![NodeSlot::new(NodeId(1), "a"), NodeSlot::new(NodeId(6), "c")]);
        assert_eq!(
            m.serving_nodes("eu"),
            vec![NodeSlot::new(NodeId(1), "a"), NodeSlot::new(NodeId(2), "b"), NodeSlot::new(NodeId(6), "c")]
        );
        assert_eq!(m.placement_nodes("us"), vec![NodeSlot::new(NodeId(5), "a")]);
        assert!(m.placement_nodes("ap").is_empty());
    }

    #[test]
    fn digest_tracks_content() {
        let mut a = Membership::new();
        let empty = a.digest();
        a.upsert(N, member("eu", "a", Active, 1, 10)).unwrap();
        let one = a.digest();
        assert_ne!(empty, one);
        let mut b = Membership::new();
        b.merge(&a);
        assert_eq!(b.digest(), one, "equal memberships, equal digests");
        a.transition(N, Draining, hlc(10)).unwrap();
        assert_ne!(a.digest(), one, "a state change alone changes the digest");
        let mut c = b.clone();
        c.upsert(N, Member { http_addr: "10.0.0.1:7481".into(), ..member("eu", "a", Active, 1, 11) }).unwrap();
        assert_ne!(c.digest(), b.digest());
    }

    /// Pins the digest so that nodes built at different times agree on it.
    #[test]
    fn digest_golden_vector() {
        let mut m = Membership::new();
        m.upsert(N, member("eu-west", "a", Active, 1, 1_700_000_000_000)).unwrap();
        m.upsert(NodeId(u64::MAX), member("us-east", "b", Removed, 7, 1_700_000_000_001)).unwrap();
        assert_eq!(m.digest(), 0x91b2_1938_a995_60c5, "{:#018x}", m.digest());
    }

    /// Memberships travel in peer messages through the crdt codec: they must round-trip, and their
    /// layout is pinned like every wire format.
    #[test]
    fn a_node_speaks_only_for_itself() {
        const B: NodeId = NodeId(2);
        const C: NodeId = NodeId(3);
        let named = |name: &str, region: &str, zone: &str, state, at| Member {
            name: name.into(),
            region: region.into(),
            zone: zone.into(),
            ..member(region, zone, state, 1, at)
        };
        let b = named("b", "eu", "eu-a", Active, 10);
        let c = named("c", "eu", "eu-b", Active, 10);
        let mut ours = Membership::new();
        ours.upsert(B, b.clone()).unwrap();
        ours.upsert(C, c.clone()).unwrap();
        let cert = Certified { name: "b", region: "eu", zone: "eu-a" };
        let from_b = |records: &[(NodeId, Member)]| {
            let mut theirs = Membership::new();
            for (id, m) in records {
                theirs.merge(&Membership::single(*id, m.clone()));
            }
            ours.check_claims(B, cert, &theirs)
        };
        // Normal gossip: B's own newer record (a new address), C's record as held, C drained by an
        // operator on B, a node not known yet, and stale records.
        let moved_b = Member {
            peer_addr: "10.0.0.9:1".into(),
            version: MemberVersion { incarnation: 1, hlc: hlc(20) },
            ..b.clone()
        };
        let drained_c =
            Member { state: Draining, version: MemberVersion { incarnation: 1, hlc: hlc(30) }, ..c.clone() };
        let new_d = named("d", "us", "us-a", Active, 5);
        assert_eq!(from_b(&[(B, moved_b), (C, drained_c.clone()), (NodeId(4), new_d)]), Ok(()));
        assert_eq!(from_b(&[(C, named("c", "ap", "ap-a", Active, 1))]), Ok(()), "a stale record loses the join");
        let removed_c = Member { state: Removed, ..drained_c.clone() };
        assert_eq!(from_b(&[(C, removed_c)]), Ok(()));

        // B lying about itself.
        assert!(matches!(
            from_b(&[(B, named("b", "us", "eu-a", Active, 20))]),
            Err(ClaimError::OwnEntry { field: "region", .. })
        ));
        assert!(matches!(
            from_b(&[(B, named("x", "eu", "eu-a", Active, 20))]),
            Err(ClaimError::OwnEntry { field: "name", .. })
        ));
        assert_eq!(from_b(&[(B, named("b", "eu", "eu-z", Active, 20))]), Ok(()), "its zone is its own to set");
        // B rewriting C: its region, its address, its incarnation.
        let c_moved =
            Member { region: "us".into(), version: MemberVersion { incarnation: 1, hlc: hlc(20) }, ..c.clone() };
        assert!(matches!(from_b(&[(C, c_moved)]), Err(ClaimError::Rewritten { field: "region", .. })));
        let c_redirected = Member {
            peer_addr: "6.6.6.6:1".into(),
            version: MemberVersion { incarnation: 1, hlc: hlc(20) },
            ..c.clone()
        };
        assert!(matches!(from_b(&[(C, c_redirected)]), Err(ClaimError::Rewritten { field: "peer address", .. })));
        let c_reborn = Member { version: MemberVersion { incarnation: 2, hlc: hlc(1) }, ..c.clone() };
        assert!(matches!(from_b(&[(C, c_reborn)]), Err(ClaimError::Reincarnated { .. })));
        // C's name under another id, or B's.
        assert!(matches!(
            from_b(&[(NodeId(9), named("c", "eu", "eu-b", Active, 1))]),
            Err(ClaimError::NameTaken { holder: C, .. })
        ));
        assert!(matches!(
            from_b(&[(NodeId(9), named("b", "eu", "eu-a", Active, 1))]),
            Err(ClaimError::NameTaken { holder: B, .. })
        ));

        // The sender's id.
        assert_eq!(ours.check_sender(B, "b"), Ok(()));
        assert_eq!(ours.check_sender(NodeId(7), "e"), Ok(()), "a first contact");
        assert!(matches!(ours.check_sender(C, "b"), Err(ClaimError::SomeoneElse { .. })));
        assert!(matches!(ours.check_sender(NodeId(7), "c"), Err(ClaimError::NotTheSender { known: C, .. })));
        // A removed node's name may come back under a new id (a node re-joining with a new data dir).
        ours.transition(C, Removed, hlc(40)).unwrap();
        assert_eq!(ours.check_sender(NodeId(7), "c"), Ok(()));
    }

    /// A node that started a new log epoch gossips under a fresh id, with its old id removed: that
    /// hands its name over. Nothing less does.
    #[test]
    fn a_successor_takes_its_name_over_only_by_retiring_the_id_it_held_it_under() {
        const B: NodeId = NodeId(2);
        const C: NodeId = NodeId(3);
        const B2: NodeId = NodeId(20);
        let named = |name: &str, region: &str, state, at| Member {
            name: name.into(),
            region: region.into(),
            zone: format!("{region}-a"),
            ..member(region, "a", state, 1, at)
        };
        let mut ours = Membership::new();
        ours.upsert(B, named("b", "eu", Active, 10)).unwrap();
        ours.upsert(C, named("c", "eu", Active, 10)).unwrap();
        let cert = Certified { name: "b", region: "eu", zone: "eu-a" };
        let gossip = |records: &[(NodeId, Member)]| {
            let mut theirs = Membership::new();
            for (id, m) in records {
                theirs.merge(&Membership::single(*id, m.clone()));
            }
            theirs
        };
        let successor = named("b", "eu", Active, 50);
        let retired = Member {
            state: Removed,
            version: MemberVersion { incarnation: 1, hlc: hlc(50) },
            ..ours.get(B).unwrap().clone()
        };

        let handover = gossip(&[(B, retired.clone()), (B2, successor.clone())]);
        assert_eq!(ours.check_sender_gossiping(B2, "b", Some(&handover)), Ok(()));
        assert_eq!(ours.check_claims(B2, cert, &handover), Ok(()));
        ours.merge(&handover);
        assert_eq!(ours.get(B).unwrap().state, Removed);
        assert_eq!(ours.check_sender(B2, "b"), Ok(()), "the name is the successor's now");
        // A third node that has not heard of the handover yet still gossips B live: that record
        // loses the join here, so it is no claim on the name.
        let cert_c = Certified { name: "c", region: "eu", zone: "eu-a" };
        let stale = gossip(&[(B, named("b", "eu", Active, 10))]);
        assert_eq!(ours.check_claims(C, cert_c, &stale), Ok(()), "a stale record of the retired id");

        // And a node that has not heard of it takes the handover relayed by a third node.
        let mut unaware = Membership::new();
        unaware.upsert(B, named("b", "eu", Active, 10)).unwrap();
        unaware.upsert(C, named("c", "eu", Active, 10)).unwrap();
        let relayed = gossip(&[(B, retired.clone()), (B2, successor.clone()), (C, named("c", "eu", Active, 10))]);
        assert_eq!(unaware.check_claims(C, cert_c, &relayed), Ok(()), "the relayed handover");
        // Without the removal, the relay gives a live member's name away: refused.
        let forged = gossip(&[(B2, successor.clone())]);
        assert!(matches!(unaware.check_claims(C, cert_c, &forged), Err(ClaimError::NameTaken { holder: B, .. })));

        let mut ours = Membership::new();
        ours.upsert(B, named("b", "eu", Active, 10)).unwrap();
        ours.upsert(C, named("c", "eu", Active, 10)).unwrap();
        let refused = |theirs: &Membership| {
            matches!(ours.check_claims(B2, cert, theirs), Err(ClaimError::NotTheSender { known: B, .. }))
        };
        assert!(refused(&gossip(&[(B2, successor.clone())])), "without the removal");
        let stale_removal = Member { version: MemberVersion { incarnation: 0, hlc: hlc(60) }, ..retired.clone() };
        assert!(refused(&gossip(&[(B, stale_removal), (B2, successor.clone())])), "a removal that loses the join");
        assert!(refused(&gossip(&[(B, retired.clone()), (B2, named("b", "us", Active, 50))])), "in another region");
        assert!(refused(&gossip(&[(C, named("c", "eu", Removed, 50)), (B2, successor.clone())])), "retiring another");
        assert!(ours.check_sender_gossiping(B2, "b", None).is_err(), "a request without a membership");
        // A certificate of another name cannot retire B.
        let cert_c = Certified { name: "c", region: "eu", zone: "eu-a" };
        assert!(ours.check_claims(NodeId(30), cert_c, &gossip(&[(B, retired), (NodeId(30), successor)])).is_err());
    }

    #[test]
    fn survives_the_wire_codec() {
        use meridian_crdt::codec::{decode, encode};
        let mut m = Membership::new();
        m.upsert(NodeId(3), member("eu", "a", Active, 1, 10)).unwrap();
        m.upsert(NodeId(4), member("us", "b", Removed, 2, 11)).unwrap();
        let bytes = encode(&m);
        assert_eq!(decode::<Membership>(&bytes, 1 << 20).unwrap(), m);
        let mut one = Membership::new();
        one.upsert(NodeId(1), Member { version: MemberVersion::default(), ..member("r", "z", Draining, 0, 0) })
            .unwrap();
        #[rustfmt::skip]
        let golden: &[u8] = &[
            1, // format byte
            1, // one record
            1, // node id (varint)
            3, b'r', b'-', b'z', // name
            1, b'r', // region
            1, b'z', // zone
            10, b'1', b'0', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'0', // peer_addr
            13, b'1', b'0', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'7', b'4', b'0', b'0', // client_addr
            13, b'1', b'0', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'7', b'4', b'8', b'0', // http_addr
            2, // state: Draining (variant index)
            0, 0, 0, // version: incarnation, hlc.wall_ms, hlc.logical
        ];
        assert_eq!(encode(&one), golden, "{:?}", encode(&one));
    }

    // ---- Property tests: the join laws over states reachable by three replicas. ----

    const REPLICAS: usize = 3;
    const STATES: [MemberState; 4] = [Joining, Active, Draining, Removed];

    #[derive(Clone, Debug)]
    enum Op {
        /// A replica announces `node`: a new incarnation (`rejoin`, or an unknown node) in `state`, or an
        /// attribute change within the current incarnation.
        Announce { replica: usize, node: u64, zone: u8, port: u16, state: MemberState, rejoin: bool },
        /// A replica moves `node` to `to`.
        Transition { replica: usize, node: u64, to: MemberState },
        /// `to` receives `from`'s whole state.
        Sync { from: usize, to: usize },
        /// Physical time passes at a replica (its HLC may also be behind the others').
        Tick { replica: usize, ms: u16 },
    }

    fn op() -> impl Strategy<Value = Op> {
        let replica = 0..REPLICAS;
        let node = 1..=4u64;
        let state = proptest::sample::select(STATES.to_vec());
        prop_oneof![
            (replica.clone(), node.clone(), 0..3u8, any::<u16>(), state.clone(), proptest::bool::weighted(0.2))
                .prop_map(|(replica, node, zone, port, state, rejoin)| Op::Announce {
                    replica,
                    node,
                    zone,
                    port,
                    state,
                    rejoin
                }),
            (replica.clone(), node, state).prop_map(|(replica, node, to)| Op::Transition { replica, node, to }),
            (replica.clone(), 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
            (replica, 0..500u16).prop_map(|(replica, ms)| Op::Tick { replica, ms }),
        ]
    }

    /// What running `ops` produced: every state any replica passed through, every delta emitted, and the
    /// replicas' final states.
    struct Run {
        states: Vec<Membership>,
        deltas: Vec<Membership>,
        finals: Vec<Membership>,
    }

    fn run(ops: &[Op]) -> Run {
        let mut replicas = vec![Membership::new(); REPLICAS];
        let mut clocks: Vec<HlcClock> = (0..REPLICAS).map(|_| HlcClock::new(u64::MAX / 2)).collect();
        let mut now = [1_000u64; REPLICAS];
        let mut states = vec![Membership::new()];
        let mut deltas = Vec::new();
        for op in ops {
            let (replica, result) = match op.clone() {
                Op::Announce { replica, node, zone, port, state, rejoin } => {
                    let id = NodeId(node);
                    let at = clocks[replica].tick(now[replica]);
                    let (incarnation, state) = match replicas[replica].get(id) {
                        Some(held) if !rejoin => (held.version.incarnation, held.state),
                        _ => (replicas[replica].next_incarnation(id), state),
                    };
                    let record = Member {
                        zone: format!("z{zone}"),
                        peer_addr: format!("10.0.0.{node}:{port}"),
                        version: MemberVersion { incarnation, hlc: at },
                        ..member("eu", "z", state, incarnation, 0)
                    };
                    (replica, record_change(&mut replicas[replica], |m| m.upsert(id, record)))
                }
                Op::Transition { replica, node, to } => {
                    let at = clocks[replica].tick(now[replica]);
                    (replica, record_change(&mut replicas[replica], |m| m.transition(NodeId(node), to, at)))
                }
                Op::Sync { from, to } => {
                    let theirs = replicas[from].clone();
                    replicas[to].merge(&theirs);
                    (to, None)
                }
                Op::Tick { replica, ms } => {
                    now[replica] += u64::from(ms);
                    continue;
                }
            };
            deltas.extend(result);
            states.push(replicas[replica].clone());
        }
        Run { states, deltas, finals: replicas }
    }

    /// Applies a local change, checking that a refusal changes nothing and that the delta alone carries
    /// the change (joined into the pre-state it gives the post-state). Returns the delta, if any.
    fn record_change(
        m: &mut Membership,
        change: impl FnOnce(&mut Membership) -> Result<Membership, ReplicationError>,
    ) -> Option<Membership> {
        let before = m.clone();
        match change(m) {
            Ok(delta) => {
                assert_eq!(joined(&before, &delta), *m, "delta is exact");
                Some(delta)
            }
            Err(_) => {
                assert_eq!(before, *m, "a refused change leaves the membership as it was");
                None
            }
        }
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(op(), 0..60)
    }

    /// A deterministic permutation of `items` (Fisher–Yates driven by splitmix64 from `seed`), with
    /// every item delivered once and some twice.
    fn scramble<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
        let mut out: Vec<T> = items.to_vec();
        out.extend(items.iter().enumerate().filter(|(i, _)| mix64(seed ^ *i as u64) % 3 == 0).map(|(_, t)| t.clone()));
        for i in (1..out.len()).rev() {
            let j = (mix64(seed.wrapping_add(i as u64)) % (i as u64 + 1)) as usize;
            out.swap(i, j);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn join_is_commutative_associative_idempotent(
            ops in ops(),
            a in any::<Index>(),
            b in any::<Index>(),
            c in any::<Index>(),
        ) {
            let run = run(&ops);
            let pick = |i: &Index| run.states[i.index(run.states.len())].clone();
            let (a, b, c) = (pick(&a), pick(&b), pick(&c));
            prop_assert_eq!(joined(&a, &b), joined(&b, &a));
            prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
            prop_assert_eq!(joined(&a, &a), a.clone());
            // The join is an upper bound: merging either side in again changes nothing.
            let ab = joined(&a, &b);
            prop_assert_eq!(joined(&ab, &a), ab.clone());
            prop_assert_eq!(joined(&ab, &b).digest(), ab.digest());
        }

        #[test]
        fn any_order_delivery_converges(ops in ops(), seed in any::<u64>(), seed2 in any::<u64>()) {
            let run = run(&ops);
            let everything = run.finals.iter().fold(Membership::new(), |acc, m| joined(&acc, m));
            // Deltas, in any order, duplicated, rebuild the join of all final states...
            let mut from_deltas = Membership::new();
            for delta in scramble(&run.deltas, seed) {
                from_deltas.merge(&delta);
            }
            prop_assert_eq!(&from_deltas, &everything);
            // ...and so do whole states exchanged in any order.
            let mut from_states = Membership::new();
            for state in scramble(&run.finals, seed2) {
                from_states.merge(&state);
            }
            prop_assert_eq!(&from_states, &everything);
            prop_assert_eq!(from_states.digest(), everything.digest());
            // A tombstone is never undone by a record of the same incarnation.
            for delta in &run.deltas {
                for (id, record) in delta.iter() {
                    let converged = everything.get(id).unwrap();
                    prop_assert!(converged.precedence(record) != Ordering::Less);
                    if record.state == Removed {
                        prop_assert!(
                            converged.state == Removed || converged.version.incarnation > record.version.incarnation
                        );
                    }
                }
            }
        }
    }
}
