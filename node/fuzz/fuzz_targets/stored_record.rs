//! Fuzzes every decoder of bytes the node reads back from storage (`node/server/src/layout.rs` and
//! the modules that keep their records through it). The first byte picks the record kind, the rest
//! is the stored value (or key). A corrupt value must give an error, never a panic or an allocation
//! beyond the record cap; what decodes must encode back to a value that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_crdt::{codec, VersionVector};
use meridian_replication::antientropy::LogRecord as SyncRecord;
use meridian_replication::residency::RuleSet;
use meridian_replication::Membership;
use meridian_server::auth::state::{AuthRecord, AuthState};
use meridian_server::layout::{
    self, DotIndexRecord, ElementRecord, FieldRecord, IdempotencyRecord, LogContent, LogRecord, Predecessors, RunMarker, StateRecord,
    Stored,
};
use meridian_server::region::cluster::MAX_MEMBERSHIP_BYTES;
use meridian_server::storage::decode_u64_be;

#[global_allocator]
static ALLOC: meridian_node_fuzz::CappedAlloc = meridian_node_fuzz::CappedAlloc;

fuzz_target!(init: meridian_node_fuzz::allow_caught_panics(), |data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    match kind % 8 {
        // `Data`: a key's state (`StoredEntry`), then what a read and a join do with it; the same
        // bytes as a collection's header, and as its `Elements` records (an element's dots, a map
        // field's entry, a dot's element) and keys.
        0 => {
            if let Ok(stored) = layout::decode_stored(bytes) {
                round_trip_stored(&stored);
                let _ = meridian_node_fuzz::automerge_allowance(|| stored.entry.read());
                let mut joined = Stored::empty_like(&stored);
                let _ = joined.try_join(&stored);
            }
            if let Ok(StateRecord::Split(header)) = layout::decode_state(bytes) {
                assert!(layout::is_split_value(&layout::encode_split(&header)));
                let again = layout::decode_state(&layout::encode_split(&header)).expect("re-encoded header decodes");
                assert_eq!(again, StateRecord::Split(header));
            }
            if let Ok(element) = layout::decode::<ElementRecord>(bytes) {
                assert_eq!(layout::decode::<ElementRecord>(&layout::encode(&element)).expect("re-encoded element decodes"), element);
            }
            if let Ok(field) = layout::decode::<FieldRecord>(bytes) {
                assert_eq!(layout::decode::<FieldRecord>(&layout::encode(&field)).expect("re-encoded field decodes"), field);
            }
            if let Ok(index) = layout::decode::<DotIndexRecord>(bytes) {
                assert_eq!(layout::decode::<DotIndexRecord>(&layout::encode(&index)).expect("re-encoded index decodes"), index);
            }
            let _ = layout::collection_of(bytes);
        }
        // `Log`: a delta-log record.
        1 => {
            if let Ok(record) = layout::decode::<LogRecord>(bytes) {
                let again: LogRecord = layout::decode(&layout::encode(&record)).expect("re-encoded log record decodes");
                assert_eq!(again, record);
                if let (LogContent::Write(_, delta, _), _) = record.into_parts() {
                    let mut joined = Stored::empty_like(&delta);
                    let _ = joined.try_join(&delta);
                }
            }
        }
        // `Idempotency`: the first attempt's reply.
        2 => {
            if let Ok(record) = layout::decode::<IdempotencyRecord>(bytes) {
                let again: IdempotencyRecord = layout::decode(&layout::encode(&record)).expect("re-encoded record decodes");
                assert_eq!(again, record);
            }
        }
        // `Hints`: a log record kept for a replica that missed it, and the delta inside it.
        3 => {
            if let Ok(record) = codec::decode::<SyncRecord>(bytes, layout::MAX_HINT_BYTES) {
                let _ = layout::decode_stored(&record.delta);
                let _ = layout::parse_data_key(&record.key);
            }
        }
        // `Meta` membership.
        4 => {
            if let Ok(membership) = codec::decode::<Membership>(bytes, MAX_MEMBERSHIP_BYTES) {
                let mut merged = Membership::new();
                merged.merge(&membership);
                let _ = merged.digest();
            }
        }
        // `Meta` cluster metadata: the residency rules, and the same bytes as the authentication
        // metadata (users, grants, hashed tokens), checked and joined as a peer's would be.
        5 => {
            if let Ok(rules) = codec::decode::<RuleSet>(bytes, layout::MAX_RECORD_BYTES) {
                let _ = rules.check_shape();
            }
            if let Ok(AuthRecord::V1(state)) = codec::decode::<AuthRecord>(bytes, layout::MAX_RECORD_BYTES) {
                if state.check_shape().is_ok() {
                    let mut joined = AuthState::default();
                    joined.join(&state);
                    assert!(!joined.clone().join(&state), "joining the same metadata twice changes nothing");
                }
            }
        }
        // `Meta` residency coverage (a version vector), and the same bytes as the run marker and
        // the predecessors of a new log epoch.
        6 => {
            if let Ok(vv) = codec::decode::<VersionVector>(bytes, layout::MAX_RECORD_BYTES) {
                let again: VersionVector = codec::decode(&codec::encode(&vv), layout::MAX_RECORD_BYTES).expect("re-encoded vector decodes");
                assert_eq!(again, vv);
            }
            if let Ok(marker) = layout::decode::<RunMarker>(bytes) {
                assert_eq!(layout::decode::<RunMarker>(&layout::encode(&marker)).expect("re-encoded marker decodes"), marker);
            }
            if let Ok(predecessors) = layout::decode::<Predecessors>(bytes) {
                let again: Predecessors = layout::decode(&layout::encode(&predecessors)).expect("re-encoded predecessors decode");
                assert_eq!(again.ids(), predecessors.ids());
            }
        }
        // Max-merged u64 values (`vv/`, `logfloor/`, `safe/`, `residency/applied`) and stored keys
        // parsed back (log, safe-time and data keys).
        _ => {
            let _ = decode_u64_be(bytes);
            let _ = layout::parse_log_key(bytes);
            let _ = layout::parse_safe_key(bytes);
            let _ = layout::parse_data_key(bytes);
        }
    }
});

fn round_trip_stored(stored: &Stored) {
    let again = layout::decode_stored(&layout::encode_stored(stored)).expect("re-encoded state decodes");
    assert_eq!(&again, stored);
}
