//! Fuzzes the anti-entropy protocol (`meridian-replication`'s `antientropy`): the input is a list of
//! `SyncMessage`s as a peer's `Sync` reply carries them (decoded with the peer message cap), stepped
//! one by one into a session that has started a round (so replies to its offer, id 1, are live) over
//! an in-memory store holding a few writes of two origins, one log truncated. A message must be
//! answered or refused, never panic the session; the session stays usable afterwards (a tick).
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use meridian_crdt::{codec, NodeId};
use meridian_replication::antientropy::{MemStore, PartitionId, SyncConfig, SyncMessage, SyncSession};
use meridian_server::peer::protocol::MAX_PEER_MESSAGE_BYTES;

const PARTITION: PartitionId = PartitionId(7);

#[global_allocator]
static ALLOC: meridian_node_fuzz::CappedAlloc = meridian_node_fuzz::CappedAlloc;

fuzz_target!(init: meridian_node_fuzz::allow_caught_panics(), |data: &[u8]| {
    let Ok(messages) = codec::decode::<Vec<SyncMessage>>(data, MAX_PEER_MESSAGE_BYTES) else { return };
    let mut store = MemStore::new(NodeId(1));
    for (i, key) in [&b"a"[..], b"b", b"c"].into_iter().enumerate() {
        store.write(PARTITION, key, &BTreeSet::from([i as u64]), 100 + i as u64);
    }
    store.truncate_log(PARTITION, NodeId(1), 2);
    let mut session =
        SyncSession::new(SyncConfig::default(), PARTITION, NodeId(1), NodeId(2), 1).expect("default config is valid");
    session.start_round(&mut store, 1_000).expect("a round starts");
    let mut now = 1_000;
    for message in messages {
        now += 10;
        let _ = session.step(&mut store, now, message);
        while session.poll_outbound().is_some() {}
        while session.poll_event().is_some() {}
    }
    let _ = session.tick(&mut store, now + 60_000);
});
