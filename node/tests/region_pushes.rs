//! Coalesced pushes (`region/coordinator/push.rs`): under concurrent `local_quorum` writes a
//! coordinator sends several writes to a replica in one request, and every write in such a batch
//! reaches every replica. Anti-entropy is off (an hour between rounds) and no push fails, so no
//! hint either: what a replica holds came by the pushes alone, and a record a batch dropped would
//! stay missing.
//!
//! A node that pushed must free its coordinator at shutdown (its pushers end).
//!
//! Negative controls (run by hand): with the replica applying all but the last partition of each
//! request of several (`api/peer_service.rs`, `accept_pushes_into`), the check below fails
//! (75, 101 and 124 of the 1,200 writes missing on the three replicas). Without waiting for the
//! first anti-entropy passes, that pass repaired them and the control was not caught. With
//! `Coordinator::stop_shipping` not dropping the pushers' queues, the last check fails.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bounded, eventual_client as client, free_udp_addr, region_config, shutdown, wait_for_region};
use meridian_client::Consistency;
use meridian_server::certs::generate_ca;
use meridian_server::layout;
use meridian_server::serve::start_with_engine;
use meridian_server::storage::{Engine, MemoryEngine, Space};

const NODES: usize = 3;
const WRITERS: usize = 48;
const WRITES_EACH: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_quorum_writes_share_requests_and_every_replica_gets_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    let addrs: Vec<SocketAddr> = (0..NODES).map(|_| free_udp_addr()).collect();
    let (mut engines, mut nodes, mut clients) = (Vec::new(), Vec::new(), Vec::new());
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let mut config = region_config(dir.path(), &name, &name, *addr, &addrs, Path::new(&ca_dir));
        config.peer.sync_interval_ms = 3_600_000; // anti-entropy off, after a first pass

        let engine = Arc::new(MemoryEngine::new());
        nodes.push(bounded("start", start_with_engine(config, engine.clone())).await.unwrap());
        engines.push(engine);
    }
    for node in &nodes {
        clients.push(client(node).await);
    }
    for c in &clients {
        wait_for_region(c, NODES - 1).await;
    }
    // Each sync thread makes one pass when it starts, then waits the hour: let those first passes
    // finish before writing, so none runs during the check.
    for c in &clients {
        wait_for_first_passes(c).await;
    }

    // Writers spread over the three coordinators, each writing its own keys at local_quorum.
    let writers = (0..WRITERS).map(|w| {
        let session = clients[w % NODES].session().with_consistency(Consistency::LocalQuorum);
        tokio::spawn(async move {
            for i in 0..WRITES_EACH {
                let key = format!("app/w{w}-{i}");
                session
                    .register(key.as_str())
                    .set(format!("value {w} {i}").into_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("write {key}: {e}"));
            }
        })
    });
    bounded("the writes", futures::future::try_join_all(writers)).await.unwrap();

    let batched: u64 = nodes.iter().map(|n| n.node.coordinator().unwrap().batched_pushes()).sum();
    assert!(batched > 0, "no write shared a request with another: the batching path did not run");

    // Every replica holds every write: a local_quorum write waits for one other replica, the
    // third push may still be in flight, so wait (bounded) for it.
    let keys: Vec<Vec<u8>> = (0..WRITERS)
        .flat_map(|w| (0..WRITES_EACH).map(move |i| layout::data_key(&format!("app/w{w}-{i}").parse().unwrap())))
        .collect();
    let missing = |engine: &MemoryEngine| keys.iter().filter(|k| engine.get(Space::Data, k).unwrap().is_none()).count();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<usize> = engines.iter().map(|e| missing(e)).collect();
        if counts.iter().all(|m| *m == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes missing per replica after 20 s, with anti-entropy off: {counts:?} of {} ({batched} writes were batched)",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A node that pushed frees its coordinator (and the storage under it) once shut down: its
    // pushers end (else a node restarted in the same process could not open its data directory).
    let coordinators: Vec<_> = nodes.iter().map(|n| Arc::downgrade(n.node.coordinator().unwrap())).collect();
    for c in clients {
        c.close().await;
    }
    for node in nodes {
        shutdown(node).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while coordinators.iter().any(|c| c.upgrade().is_some()) {
        assert!(Instant::now() < deadline, "a coordinator is still alive 20 s after its node shut down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `client`'s node has completed an anti-entropy pass with every other node.
async fn wait_for_first_passes(client: &meridian_client::Client) {
    let passed = async {
        loop {
            if let Ok(report) = client.cluster(meridian_client::ClusterOp::Status).await {
                let others = report.members.iter().filter(|m| m.liveness != "self");
                if others.clone().count() == NODES - 1 && others.clone().all(|m| m.last_sync_ms_ago.is_some()) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), passed).await.expect("first anti-entropy passes within 60 s");
}
