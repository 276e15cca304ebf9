//! Turning a copied backup into a node's store (`meridian restore`).
//!
//! A backup holds the backed-up node's id, and its write log ends where the backup was taken —
//! while peers may already hold later writes of that log. A node that resumed the old id would
//! hand out log positions its peers already hold, and they would drop its new writes as
//! duplicates. So a restored store always gets a **fresh node id**: the old id's records stay as
//! any replica holds another node's log, anti-entropy brings what was written under it after the
//! backup, and the restored node's own writes start a new log.
//!
//! With `replace`, the backed-up node is also marked removed in the membership the restored node
//! starts with (a node replaced after its disks were lost, or a cluster rebuilt from backups):
//! the removal spreads by gossip, and the restored node may then take the old node's name.

use meridian_crdt::{codec, Hlc, NodeId};
use meridian_replication::membership::{MemberState, Membership};

use crate::layout;
use crate::region::cluster::MAX_MEMBERSHIP_BYTES;
use crate::storage::{decode_u64_be, Batch, Engine, Space, StorageError};

/// What [`adopt_restored_store`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adopted {
    /// The backed-up node's id.
    pub old_id: NodeId,
    /// The id the restored node will run under.
    pub new_id: NodeId,
    /// Whether the old id was marked removed (it may have been removed already).
    pub removed_old: bool,
}

/// Errors of [`adopt_restored_store`].
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The store could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The store is not a node's (no node id), or its membership is unreadable.
    #[error("{0}")]
    NotANodeStore(String),
}

/// Gives the store a fresh node id and, with `replace`, marks the old one removed; `now_ms` stamps
/// the removal. Records `region`, the backup's, so that only a node of that region opens the store
/// (`serve` checks: data residency).
pub fn adopt_restored_store(
    engine: &dyn Engine,
    replace: bool,
    now_ms: u64,
    region: &str,
) -> Result<Adopted, RestoreError> {
    let Some(bytes) = engine.get(Space::Meta, layout::META_NODE_ID)? else {
        return Err(RestoreError::NotANodeStore(
            "the backup holds no node id: it is not a Meridian node's store".into(),
        ));
    };
    let old_id = NodeId(decode_u64_be(&bytes)?);
    let new_id = loop {
        let id = NodeId(rand::random::<u64>().max(1));
        if id != old_id {
            break id;
        }
    };
    let mut batch = Batch::default();
    batch.put(Space::Meta, layout::META_NODE_ID, new_id.0.to_be_bytes().to_vec());
    batch.put(Space::Meta, layout::META_RESTORED_REGION, region.as_bytes().to_vec());
    // The backup's run marker is the backed-up node's live run: the new id has no log to protect,
    // so its first run must not start yet another epoch (`store/epoch.rs`).
    let clean = layout::RunMarker::V1 { clean: true, relaxed: false, boot_id: None };
    batch.put(Space::Meta, layout::META_RUN, layout::encode(&clean));
    batch.delete(Space::Meta, layout::META_PREDECESSORS);
    let mut removed_old = false;
    if replace {
        if let Some(bytes) = engine.get(Space::Meta, layout::META_MEMBERSHIP)? {
            let mut membership = codec::decode::<Membership>(&bytes, MAX_MEMBERSHIP_BYTES)
                .map_err(|e| RestoreError::NotANodeStore(format!("the backup's membership is unreadable: {e}")))?;
            if let Some(member) = membership.get(old_id) {
                removed_old = member.state != MemberState::Removed;
                if removed_old {
                    // Draining first where the state machine asks for it (Joining → Removed is allowed too).
                    let at = Hlc { wall_ms: now_ms, logical: 0 };
                    if !member.state.can_become(MemberState::Removed) {
                        let _ = membership.transition(old_id, MemberState::Draining, at);
                    }
                    membership
                        .transition(old_id, MemberState::Removed, Hlc { wall_ms: now_ms, logical: 1 })
                        .map_err(|e| RestoreError::NotANodeStore(format!("marking the backed-up node removed: {e}")))?;
                    batch.put(Space::Meta, layout::META_MEMBERSHIP, codec::encode(&membership));
                }
            }
        }
    }
    engine.write(batch)?;
    engine.sync_wal()?;
    Ok(Adopted { old_id, new_id, removed_old })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;
    use meridian_replication::membership::{Member, MemberVersion};

    fn member(name: &str, state: MemberState) -> Member {
        Member {
            name: name.into(),
            region: "eu".into(),
            zone: "a".into(),
            peer_addr: "127.0.0.1:1".into(),
            client_addr: "127.0.0.1:2".into(),
            http_addr: "127.0.0.1:3".into(),
            state,
            version: MemberVersion { incarnation: 1, hlc: Hlc { wall_ms: 10, logical: 0 } },
        }
    }

    fn store_of(id: u64, state: Option<MemberState>) -> MemoryEngine {
        let engine = MemoryEngine::new();
        let mut batch = Batch::default();
        batch.put(Space::Meta, layout::META_NODE_ID, id.to_be_bytes().to_vec());
        if let Some(state) = state {
            let mut membership = Membership::new();
            membership.upsert(NodeId(id), member("n1", state)).unwrap();
            membership.upsert(NodeId(id + 1), member("n2", MemberState::Active)).unwrap();
            batch.put(Space::Meta, layout::META_MEMBERSHIP, codec::encode(&membership));
        }
        engine.write(batch).unwrap();
        engine
    }

    fn membership_of(engine: &MemoryEngine) -> Membership {
        codec::decode(&engine.get(Space::Meta, layout::META_MEMBERSHIP).unwrap().unwrap(), MAX_MEMBERSHIP_BYTES)
            .unwrap()
    }

    #[test]
    fn a_restored_store_never_runs_under_the_backed_up_id() {
        let engine = store_of(7, Some(MemberState::Active));
        let adopted = adopt_restored_store(&engine, false, 1_000, "eu").unwrap();
        assert_eq!(adopted.old_id, NodeId(7));
        assert_ne!(adopted.new_id, NodeId(7));
        let stored = decode_u64_be(&engine.get(Space::Meta, layout::META_NODE_ID).unwrap().unwrap()).unwrap();
        assert_eq!(NodeId(stored), adopted.new_id);
        // Without `replace` the membership is left as it was.
        assert!(!adopted.removed_old);
        assert_eq!(membership_of(&engine).get(NodeId(7)).unwrap().state, MemberState::Active);
    }

    #[test]
    fn replace_marks_only_the_backed_up_node_removed() {
        for state in [MemberState::Joining, MemberState::Active, MemberState::Draining] {
            let engine = store_of(7, Some(state));
            let adopted = adopt_restored_store(&engine, true, 1_000, "eu").unwrap();
            assert!(adopted.removed_old, "from {state:?}");
            let membership = membership_of(&engine);
            assert_eq!(membership.get(NodeId(7)).unwrap().state, MemberState::Removed, "from {state:?}");
            assert_eq!(membership.get(NodeId(8)).unwrap().state, MemberState::Active);
        }
    }

    #[test]
    fn a_store_without_a_node_id_is_refused() {
        let engine = MemoryEngine::new();
        assert!(matches!(adopt_restored_store(&engine, true, 1, "eu"), Err(RestoreError::NotANodeStore(_))));
    }
}
