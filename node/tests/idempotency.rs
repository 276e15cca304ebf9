//! Idempotency that survives failover: a write's idempotency record travels with its push to the
//! key's other replicas (peer protocol version 4), so when the coordinator dies before the client
//! hears back, the client's retry — same idempotency id, another replica — is recognised there and
//! answered as the first attempt was, instead of applying a counter increment twice.
//!
//! The same scenario in a region pinned to protocol version 3 (which does not carry the record)
//! applies the increment twice: that is the test's negative control, run on every run.
//!
//! From protocol version 5 the record travels inside the write's log record, so it reaches the
//! replicas a push never reached: one that was down and caught up by anti-entropy from another
//! replica after the coordinator died (its hints died with it), and another region's replica that
//! got the write through the cross-region shipper. Each runs at version 4 as its negative control
//! (the record then travels only with the push, and the retry is applied twice).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, eventual_client as client, free_udp_addr, region_config_in, shutdown, wait_for_region};
use meridian_client::proto::{IdempotencyId, Operation, Reply, RequestV1};
use meridian_client::{Client, Consistency};
use meridian_crdt::Mutation;
use meridian_server::certs::generate_ca;
use meridian_server::layout;
use meridian_server::serve::{start_with_engine, RunningNode};
use meridian_server::storage::{Engine, MemoryEngine, Space};

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

/// Nodes started for one scenario, each on its own in-memory engine (kept, so a node can be
/// restarted on its data and a test can read what a replica itself holds).
struct Started {
    _dir: tempfile::TempDir,
    configs: Vec<meridian_server::config::Config>,
    engines: Vec<Arc<MemoryEngine>>,
    nodes: Vec<RunningNode>,
    clients: Vec<Client>,
}

/// Starts one node per entry of `regions` (in that region; rf 1 when they are all different),
/// each speaking at most protocol `version`, and waits until every node sees all the others.
async fn start_nodes(regions: &[&str], version: u8) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    let addrs: Vec<SocketAddr> = regions.iter().map(|_| free_udp_addr()).collect();
    let one_per_region = regions.iter().collect::<std::collections::BTreeSet<_>>().len() == regions.len();
    let (mut configs, mut engines, mut nodes, mut clients) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, region) in regions.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let mut config = region_config_in(dir.path(), region, &name, &name, addrs[i], &addrs, Path::new(&ca_dir));
        config.peer.max_protocol_version = version;
        if one_per_region {
            config.peer.rf = 1;
        }
        let engine = Arc::new(MemoryEngine::new());
        nodes.push(bounded("start", start_with_engine(config.clone(), engine.clone())).await.unwrap());
        configs.push(config);
        engines.push(engine);
    }
    for node in &nodes {
        clients.push(client(node).await);
    }
    for c in &clients {
        wait_for_region(c, regions.len() - 1).await;
    }
    Started { _dir: dir, configs, engines, nodes, clients }
}

impl Started {
    /// Closes the clients and shuts down every node still running.
    async fn stop(self) {
        for c in self.clients {
            c.close().await;
        }
        for node in self.nodes {
            shutdown(node).await;
        }
    }
}

/// Runs the scenario in a three-node region speaking at most `version`; returns the first
/// attempt's reply, the retry's, and the counter every surviving replica converges on.
async fn first_attempt_then_retry_elsewhere(version: u8) -> (Reply, Reply, i64) {
    let Started { _dir, mut nodes, mut clients, .. } = start_nodes(&["local"; 3], version).await;

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
    // Version 4 carries the record beside the push, version 5 inside the pushed record.
    for version in [4, meridian_server::peer::NEWEST_VERSION] {
        let (first, retried, converged) = first_attempt_then_retry_elsewhere(version).await;
        assert_eq!(retried, first, "the retry is answered as the first attempt was (version {version})");
        assert_eq!(converged, 5, "applied once (version {version})");
    }

    // Negative control: version 3 does not carry the record, and the retry applies again.
    let (_, _, doubled) = first_attempt_then_retry_elsewhere(3).await;
    assert_eq!(doubled, 10, "without the replicated record the retry is a second increment");
}

/// The counter `app/visits` as stored in `engine` (0 while it holds none): what that replica
/// itself holds, whichever node a client's read would be routed to.
fn stored_visits(engine: &MemoryEngine) -> i64 {
    let data_key = layout::data_key(&"app/visits".parse().unwrap());
    let Some(bytes) = engine.get(Space::Data, &data_key).unwrap() else { return 0 };
    match layout::decode_stored(&bytes).unwrap().entry.read() {
        Ok(Some(meridian_crdt::Value::Counter(value))) => value,
        other => panic!("app/visits holds {other:?}"),
    }
}

/// Waits (bounded) until `engine` holds the counter at `value`; `what` names the wait.
async fn wait_for_visits(engine: &MemoryEngine, value: i64, what: &str) {
    let held = async {
        while stored_visits(engine) != value {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    bounded(what, held).await;
}

/// A three-node region speaking at most `version`: n3 is down while the first attempt is made
/// through n1 (n2 acknowledges it, n1 keeps a hint for n3); n1 dies, its hint with it; n3 comes
/// back and gets the write by anti-entropy from n2 alone; the client retries on n3. Returns the
/// first attempt's reply, the retry's, and the counter n2 and n3 converge on.
async fn retry_on_a_replica_that_caught_up_by_anti_entropy(version: u8) -> (Reply, Reply, i64) {
    let Started { _dir, configs, engines, mut nodes, mut clients } = start_nodes(&["local"; 3], version).await;

    // n3 goes down; the first attempt through n1 is acknowledged by n1 and n2.
    clients.pop().unwrap().close().await;
    shutdown(nodes.pop().unwrap()).await;
    wait_for_region(&clients[0], 1).await;
    let first = clients[0].raw(increment(5)).await.unwrap();
    wait_for_visits(&engines[1], 5, "n2 holds the first attempt").await;

    // n1 dies before the client hears back (its hint for n3 dies with it); n3 comes back and
    // catches up from n2.
    clients.remove(0).close().await;
    shutdown(nodes.remove(0)).await;
    let n3 = bounded("restart n3", start_with_engine(configs[2].clone(), engines[2].clone())).await.unwrap();
    let n3_client = client(&n3).await;
    wait_for_visits(&engines[2], 5, "n3 catches up from n2 by anti-entropy").await;

    // The client retries the same write on n3.
    let retried = n3_client.raw(increment(5)).await.unwrap();
    let settled = async {
        loop {
            let (a, b) = (stored_visits(&engines[1]), stored_visits(&engines[2]));
            if a == b {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let converged = bounded("n2 and n3 agree", settled).await;
    for c in clients {
        c.close().await;
    }
    n3_client.close().await;
    shutdown(n3).await;
    for node in nodes {
        shutdown(node).await;
    }
    (first, retried, converged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_a_replica_that_got_the_write_by_anti_entropy_is_applied_once() {
    let (first, retried, converged) = retry_on_a_replica_that_caught_up_by_anti_entropy(5).await;
    assert_eq!(retried, first, "the retry is answered as the first attempt was");
    assert_eq!(converged, 5, "applied once");

    // Negative control: at version 4 the record travels with pushes only, never by anti-entropy.
    let (_, _, doubled) = retry_on_a_replica_that_caught_up_by_anti_entropy(4).await;
    assert_eq!(doubled, 10, "without the record in the log the retry is a second increment");
}

/// Two regions of one node each (rf 1), speaking at most `version`: the first attempt is made in
/// us-east at `local_quorum` and shipped to eu-west; the us-east node dies; the client fails over
/// to eu-west and retries there. Returns the first attempt's reply, the retry's, and the counter
/// eu-west ends with.
async fn retry_in_another_region(version: u8) -> (Reply, Reply, i64) {
    let mut started = start_nodes(&["us-east", "eu-west"], version).await;
    let first = started.clients[0].raw(increment(5)).await.unwrap();
    wait_for_visits(&started.engines[1], 5, "eu-west holds the first attempt").await;

    started.clients.remove(0).close().await;
    shutdown(started.nodes.remove(0)).await;
    let retried = started.clients[0].raw(increment(5)).await.unwrap();
    let after = stored_visits(&started.engines[1]);
    started.stop().await;
    (first, retried, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_in_another_region_after_the_first_died_is_applied_once() {
    let (first, retried, after) = retry_in_another_region(5).await;
    assert_eq!(retried, first, "the retry is answered as the first attempt was");
    assert_eq!(after, 5, "applied once");

    // Negative control: at version 4 the shipper's batches carry no record.
    let (_, _, doubled) = retry_in_another_region(4).await;
    assert_eq!(doubled, 10, "without the record in the shipped write the retry is a second increment");
}
