//! Idempotency that survives failover: a write's idempotency record travels with its push to the
//! key's other replicas (peer protocol version 4), so when the coordinator dies before the client
//! hears back, the client's retry — same idempotency id, another replica — is recognised there and
//! answered as the first attempt was, instead of applying a counter increment twice.
//!
//! The same scenario in a region pinned to protocol version 3 (which does not carry the record)
//! applies the increment twice: that is the test's negative control, run on every run.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, eventual_client as client, free_udp_addr, region_config, shutdown, wait_for_region};
use meridian_client::proto::{IdempotencyId, Operation, Reply, RequestV1};
use meridian_client::{Client, Consistency};
use meridian_crdt::Mutation;
use meridian_server::certs::generate_ca;
use meridian_server::serve::start_with_engine;
use meridian_server::storage::MemoryEngine;

fn increment(amount: i64) -> RequestV1 {
    RequestV1 {
        consistency: Some(Consistency::LocalQuorum),
        causal_token: None,
        timeout_ms: 0,
        op: Operation::Write {
            key: "app/visits".parse().unwrap(),
            mutation: Mutation::CounterAdd { amount },
            idempotency_id: Some(IdempotencyId(0x1d3e_0001)),
        },
    }
}

async fn visits(client: &Client) -> i64 {
    client.counter("app/visits").get().await.unwrap_or(-1)
}

/// Runs the scenario in a three-node region speaking at most `version`; returns the first
/// attempt's reply, the retry's, and the counter every surviving replica converges on.
async fn first_attempt_then_retry_elsewhere(version: u8) -> (Reply, Reply, i64) {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    let addrs = [free_udp_addr(), free_udp_addr(), free_udp_addr()];
    let mut nodes = Vec::new();
    for i in 0..3 {
        let name = format!("n{}", i + 1);
        let mut config = region_config(dir.path(), &name, &name, addrs[i], &addrs, Path::new(&ca_dir));
        config.peer.max_protocol_version = version;
        nodes.push(bounded("start", start_with_engine(config, Arc::new(MemoryEngine::new()))).await.unwrap());
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(client(node).await);
    }
    for c in &clients {
        wait_for_region(c, 2).await;
    }

    // The first attempt, through n1: acknowledged once a majority holds it; wait until all do.
    let first = clients[0].raw(increment(5)).await.unwrap();
    let pushed = async {
        while visits(&clients[1]).await != 5 || visits(&clients[2]).await != 5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    bounded("every replica holds the first attempt", pushed).await;

    // n1 dies; the client never heard back, so it retries the same write on n2.
    let n1_client = clients.remove(0);
    n1_client.close().await;
    shutdown(nodes.remove(0)).await;
    let retried = clients[0].raw(increment(5)).await.unwrap();

    // Whatever each replica ends up with, they agree (anti-entropy between n2 and n3).
    let settled = async {
        loop {
            let (a, b) = (visits(&clients[0]).await, visits(&clients[1]).await);
            if a == b && a >= 5 {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let converged = bounded("n2 and n3 agree", settled).await;
    for c in clients {
        c.close().await;
    }
    for node in nodes {
        shutdown(node).await;
    }
    (first, retried, converged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_replica_after_the_coordinator_died_is_applied_once() {
    let (first, retried, converged) = first_attempt_then_retry_elsewhere(4).await;
    assert_eq!(retried, first, "the retry is answered as the first attempt was");
    assert_eq!(converged, 5, "applied once");

    // Negative control: version 3 does not carry the record, and the retry applies again.
    let (_, _, doubled) = first_attempt_then_retry_elsewhere(3).await;
    assert_eq!(doubled, 10, "without the replicated record the retry is a second increment");
}
