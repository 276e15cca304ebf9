//! A power loss under `relaxed` durability takes back writes a node had already pushed to its
//! peers. The node must not hand those log positions (and CRDT dots, counter totals) out again:
//! it comes back under a fresh id — a new log epoch — takes its name over from the old id by
//! gossip, and the region converges on every write, the lost ones included (its peers held them).
//!
//! Negative controls (run by hand): restart n1 with `boot_id = "b1"` — the same boot, so no new
//! epoch — and the test fails at convergence: n1 reuses the positions of the lost writes and its
//! peers drop its new writes as duplicates. With the peers' vouches for the old id left out
//! (`region::gossip::vouch_for_successors`), the causal read through n1 never succeeds.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, eventual_client as client, free_udp_addr, region_config, shutdown, wait_for_region};
use meridian_client::{Client, ClusterOp, Consistency};
use meridian_server::certs::generate_ca;
use meridian_server::serve::start_with_engine;
use meridian_server::storage::faulty::PowerLossEngine;
use meridian_server::storage::{Engine, MemoryEngine, Space};

/// The counter and the set's members as `client`'s node reads them.
async fn state_of(client: &Client) -> (i64, Vec<String>) {
    let hits = client.counter("app/hits").get().await.unwrap_or(-1);
    let mut tags: Vec<String> = client
        .set("app/tags")
        .members()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .collect();
    tags.sort();
    (hits, tags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_acknowledged_writes_in_a_power_loss_comes_back_under_a_new_epoch_and_loses_nothing_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    let addrs = [free_udp_addr(), free_udp_addr(), free_udp_addr()];
    let config_of = |i: usize| {
        let name = format!("n{}", i + 1);
        region_config(dir.path(), &name, &name, addrs[i], &addrs, Path::new(&ca_dir))
    };
    let mut n1_config = config_of(0);
    n1_config.storage.durability = "relaxed".into();
    n1_config.storage.relaxed_sync_interval_ms = 3_600_000; // only the test syncs
    n1_config.storage.boot_id = "b1".into();
    let disk = Arc::new(PowerLossEngine::new());
    let n1 = bounded("start n1", start_with_engine(n1_config.clone(), disk.clone())).await.unwrap();
    let mut others = Vec::new();
    for i in 1..3 {
        others.push(bounded("start", start_with_engine(config_of(i), Arc::new(MemoryEngine::new()))).await.unwrap());
    }
    let c1 = client(&n1).await;
    let c2 = client(&others[0]).await;
    wait_for_region(&c1, 2).await;
    wait_for_region(&c2, 2).await;
    let old_id = n1.node.id();

    // A: synced on n1. B: acknowledged by every replica, but only in n1's page cache.
    c1.counter("app/hits").consistency(Consistency::LocalQuorum).incr(1).await.unwrap();
    c1.set("app/tags").consistency(Consistency::LocalQuorum).add(["a"]).await.unwrap();
    disk.sync_wal().unwrap();
    c1.counter("app/hits").consistency(Consistency::LocalQuorum).incr(10).await.unwrap();
    c1.set("app/tags").consistency(Consistency::LocalQuorum).add(["b"]).await.unwrap();
    assert!(disk.unsynced() > 0, "B is not synced on n1");
    let c3 = client(&others[1]).await;
    let pushed = async {
        while state_of(&c2).await != (11, vec!["a".into(), "b".into()])
            || state_of(&c3).await != (11, vec!["a".into(), "b".into()])
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    bounded("n2 and n3 hold B", pushed).await;

    // The power goes: what n1's disk keeps is the synced prefix. (The process is stopped too; its
    // clean stop lands on the old disk, not on the one the machine reboots with.)
    let after = Arc::new(disk.power_loss(0).unwrap());
    let logged = |engine: &dyn Engine| engine.scan(Space::Log, &[], None, usize::MAX).unwrap().len();
    assert!(logged(after.as_ref()) + 2 <= logged(disk.as_ref()), "precondition: the power loss took B back");
    c1.close().await;
    shutdown(n1).await;
    let mut rebooted = n1_config.clone();
    rebooted.storage.boot_id = "b2".into();
    let restarting = async {
        loop {
            // The stopped node's last tasks may still hold its peer port for a moment.
            match start_with_engine(rebooted.clone(), after.clone()).await {
                Ok(node) => return node,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    let n1 = bounded("restart n1", restarting).await;
    let new_id = n1.node.id();
    assert_ne!(new_id, old_id, "a new log epoch");
    let c1 = client(&n1).await;

    // C, on the same keys, through n1.
    c1.counter("app/hits").incr(100).await.unwrap();
    c1.set("app/tags").add(["c"]).await.unwrap();

    let want = (111, vec!["a".to_string(), "b".to_string(), "c".to_string()]);
    let converged = async {
        loop {
            let mut states = Vec::new();
            for c in [&c1, &c2, &c3] {
                states.push(state_of(c).await);
            }
            if states.iter().all(|s| *s == want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), converged).await.is_err() {
        let mut states = Vec::new();
        for c in [&c1, &c2, &c3] {
            states.push(state_of(c).await);
        }
        panic!("the region did not converge on A, B and C within 60 s: {states:?}");
    }

    // A causal read through n1 of a key the old id wrote: n1 ran under that id, so it only knows
    // what the old id's log covers from its peers' vouches (without them it waits until timeout).
    let causal = async {
        loop {
            match c1.counter("app/hits").consistency(Consistency::Causal).get().await {
                Ok(hits) => return hits,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    assert_eq!(bounded("a causal read through n1 of keys the old id wrote", causal).await, 111);

    // The old id is removed on the peers, and the name is the new id's.
    let handed_over = async {
        loop {
            let report = c2.cluster(ClusterOp::Status).await.unwrap();
            let old = report.members.iter().find(|m| m.id == old_id).map(|m| m.state.clone());
            let new = report.members.iter().find(|m| m.id == new_id).map(|m| (m.name.clone(), m.state.clone()));
            if old.as_deref() == Some("removed") && new == Some(("n1".into(), "active".into())) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    bounded("n2 sees the old id removed and n1 under the new one", handed_over).await;

    for c in [c1, c2, c3] {
        c.close().await;
    }
    shutdown(n1).await;
    for node in others {
        shutdown(node).await;
    }
}
