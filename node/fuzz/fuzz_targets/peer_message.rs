//! Fuzzes the node-to-node envelopes as the peer service and the callers decode them: a
//! `PeerRequest` (what `api/peer_service.rs` decodes, capped at `MAX_PEER_MESSAGE_BYTES`) and a reply
//! (`peer::protocol::decode_reply`), then the stored states some of them carry, and the pure checks
//! the node runs on decoded membership and residency rules. Every input must give an error or a
//! value: never a panic, never an allocation beyond the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_crdt::codec;
use meridian_replication::residency::RuleSet;
use meridian_replication::Membership;
use meridian_server::layout;
use meridian_server::peer::protocol::{decode_reply, PeerMessageV1, PeerReplyV1, PeerRequest, MAX_PEER_MESSAGE_BYTES};

#[global_allocator]
static ALLOC: meridian_node_fuzz::CappedAlloc = meridian_node_fuzz::CappedAlloc;

fuzz_target!(init: meridian_node_fuzz::allow_caught_panics(), |data: &[u8]| {
    if let Ok(PeerRequest::V1 { message, .. }) = codec::decode::<PeerRequest>(data, MAX_PEER_MESSAGE_BYTES) {
        match message {
            PeerMessageV1::Repair { state, .. } => {
                let _ = layout::decode_stored(&state);
            }
            PeerMessageV1::Gossip { membership, .. } | PeerMessageV1::GossipReports { membership, .. } => {
                merge_membership(&membership);
            }
            PeerMessageV1::Residency { rules } => check_rules(&rules),
            PeerMessageV1::Replicate { records, .. } => {
                for record in records {
                    let _ = (layout::decode_delta(&record.delta), layout::strip_idempotency(&record.delta));
                }
            }
            PeerMessageV1::Push { records, .. } => {
                for record in records {
                    let _ = (layout::decode_delta(&record.delta), layout::strip_idempotency(&record.delta));
                }
            }
            PeerMessageV1::PushBatch { pushes, .. } => {
                for record in pushes.iter().flat_map(|push| &push.records) {
                    let _ = (layout::decode_delta(&record.delta), layout::strip_idempotency(&record.delta));
                }
            }
            PeerMessageV1::PushIdempotent { push, record, .. } => {
                for record in &push.records {
                    let _ = (layout::decode_delta(&record.delta), layout::strip_idempotency(&record.delta));
                }
                let layout::IdempotencyRecord::V1 { key, .. } = &record;
                let _ = layout::data_key(key);
            }
            PeerMessageV1::GossipCompact { membership: Some(membership), .. } => merge_membership(&membership),
            _ => {}
        }
    }
    match decode_reply(data) {
        Ok(PeerReplyV1::State(Some(state))) => {
            let _ = layout::decode_stored(&state);
        }
        Ok(PeerReplyV1::PrefixStates { states, .. }) => {
            for state in states {
                let _ = layout::decode_stored(&state.state);
            }
        }
        Ok(PeerReplyV1::Gossip { membership, .. } | PeerReplyV1::GossipReports { membership, .. }) => {
            merge_membership(&membership);
        }
        Ok(PeerReplyV1::Residency { rules }) => check_rules(&rules),
        _ => {}
    }
});

/// What gossip does with a peer's membership: merge it into ours (here: an empty one, then itself).
fn merge_membership(theirs: &Membership) {
    let mut ours = Membership::new();
    ours.merge(theirs);
    ours.merge(theirs);
    let _ = ours.digest();
}

/// What a node does with a peer's rules before adopting them: check their shape, merge.
fn check_rules(theirs: &RuleSet) {
    if theirs.check_shape().is_ok() {
        let mut ours = RuleSet::default();
        ours.merge(theirs);
    }
}
