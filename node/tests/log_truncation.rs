//! A replica that was away longer than the log retention catches up through the digest fallback:
//! two nodes of a region (real RocksDB, real QUIC), one stopped while the other writes and deletes
//! and truncates its log, then restarted. Nothing acknowledged is lost and nothing deleted comes
//! back. Negative control in the same test: with a day's retention the same absence is healed
//! from the log and no fallback runs, so the first half proves the truncation was really in the way.
//!
//! The control run also shows the cut by causal stability (`store/stability.rs`): with a day's
//! retention, `a` still cuts its log below what `b` holds while both are up, and keeps what `b`
//! then misses while it is away (no fallback). Cutting below what `b` has not reported (say,
//! ignoring the readers) makes the control need the fallback, and fail.

use meridian_client::{Client, Consistency, Value};
use meridian_server::certs::generate_ca;
use meridian_server::config::Config;
use meridian_server::serve::{start, RunningNode};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod common;
use common::{eventual_client, free_udp_addr, region_config, wait_for_region};

const KEYS: usize = 120;

fn node_config(dir: &Path, name: &str, listen: SocketAddr, peer: SocketAddr, retention_s: u64) -> Config {
    let ca = dir.parent().expect("a scenario folder").join("ca");
    let mut config = region_config(dir, name, name, listen, &[peer], &ca);
    config.peer.rf = 2;
    // No hints: what b misses must come back by anti-entropy, the path under test.
    config.peer.max_hints_per_node = 0;
    config.storage.log_retention_s = retention_s;
    config.storage.log_truncation_interval_ms = 200;
    config
}

fn fallbacks() -> u64 {
    let text = meridian_server::metrics_export::prometheus().render();
    text.lines()
        .find_map(|line| line.strip_prefix("meridian_sync_fallbacks_total "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// What `c` reads for key `i`: the counter's value, or `None` once deleted.
async fn read(c: &Client, i: usize) -> Option<i64> {
    match c.get(format!("t/k{i}")).await.unwrap() {
        Some(Value::Counter(n)) => Some(n),
        None => None,
        other => panic!("k{i}: {other:?}"),
    }
}

/// Key `i` after the run: deleted when `i % 3 == 0`, else `i + 3` (1 before the absence, 1 and
/// `i + 1` during it).
fn expected(i: usize) -> Option<i64> {
    (i % 3 != 0).then_some(i as i64 + 3)
}

/// Waits until some partition that `a` wrote to more than once keeps only its newest record of
/// `a`'s log; returns how many do.
async fn cut_to_newest(a: &RunningNode) -> usize {
    use meridian_replication::antientropy::{PartitionId, SyncStore as _};
    let store = a.node.replica().sync_store();
    let a_id = a.node.id();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let floors = (0..meridian_server::layout::PARTITIONS)
            .filter(|p| {
                let newest = store.partition_vv(PartitionId(*p)).unwrap().get(a_id);
                newest > 1 && store.log_floor(PartitionId(*p), a_id).unwrap() == newest
            })
            .count();
        if floors > 0 {
            return floors;
        }
    }
}

/// Runs the scenario with `retention_s` on both nodes; returns the fallbacks it caused.
async fn absence(dir: &Path, retention_s: u64) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let (addr_a, addr_b) = (free_udp_addr(), free_udp_addr());
    let a = start(node_config(dir, "a", addr_a, addr_b, retention_s)).await.unwrap();
    let b = start(node_config(dir, "b", addr_b, addr_a, retention_s)).await.unwrap();
    let (ca, cb) = (eventual_client(&a).await, eventual_client(&b).await);
    wait_for_region(&ca, 1).await;
    for i in 0..KEYS {
        ca.counter(format!("t/k{i}")).consistency(Consistency::LocalQuorum).incr(1).await.unwrap();
    }

    if retention_s > 2 {
        // Long before the retention: b reports holding it all, so a keeps only its newest records.
        let floors = tokio::time::timeout(Duration::from_secs(30), cut_to_newest(&a))
            .await
            .expect("a cuts its log below what b holds");
        assert!(floors > 0);
    }

    // b goes away; a keeps writing and deleting, then cuts its log past what b has.
    tokio::time::timeout(Duration::from_secs(60), b.shutdown()).await.expect("b stops");
    wait_for_region(&ca, 0).await;
    // Two writes per key: b ends at least two positions behind in every partition it missed, and
    // truncation always keeps the newest record, so only a gap of two or more needs the fallback.
    for i in 0..KEYS {
        ca.counter(format!("t/k{i}")).incr(1).await.unwrap();
        if i % 3 == 0 {
            ca.delete(format!("t/k{i}")).await.unwrap();
        } else {
            ca.counter(format!("t/k{i}")).incr(i as i64 + 1).await.unwrap();
        }
    }
    let before = fallbacks();
    if retention_s <= 2 {
        let floors =
            tokio::time::timeout(Duration::from_secs(30), cut_to_newest(&a)).await.expect("a truncates its log");
        assert!(floors > 0);
    }

    // b returns and must end with a's exact state. Compared in the replicas' own storage: a
    // client connected to b may be routed to a, which would prove nothing about b.
    let b = start(node_config(dir, "b", addr_b, addr_a, retention_s)).await.unwrap();
    drop(cb);
    let stored = |node: &RunningNode, i: usize| {
        let key = meridian_client::proto::Key::new("t", format!("k{i}")).unwrap();
        node.node.replica().load_entry(&meridian_server::layout::data_key(&key)).unwrap()
    };
    let converged = async {
        'outer: loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for i in 0..KEYS {
                if stored(&b, i) != stored(&a, i) {
                    continue 'outer;
                }
            }
            return;
        }
    };
    tokio::time::timeout(Duration::from_secs(90), converged).await.expect("b converges within 90 s");
    for i in 0..KEYS {
        assert_eq!(read(&ca, i).await, expected(i), "a, k{i}");
        assert_eq!(stored(&b, i).is_some_and(|e| e.exists()), expected(i).is_some(), "b, k{i}");
    }
    // Stays converged: nothing deleted comes back in later rounds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..KEYS {
        assert_eq!(stored(&b, i), stored(&a, i), "k{i} after more rounds");
    }
    for i in (0..KEYS).step_by(3) {
        assert_eq!(read(&ca, i).await, None, "k{i} stays deleted");
    }
    let caused = fallbacks() - before;
    tokio::time::timeout(Duration::from_secs(60), b.shutdown()).await.expect("b stops");
    tokio::time::timeout(Duration::from_secs(60), a.shutdown()).await.expect("a stops");
    caused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_away_past_the_retention_catches_up_by_states_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    generate_ca("test").unwrap().write(&dir.path().join("ca"), false).unwrap();

    // Control: a day's retention keeps the log, b heals from it, no fallback is needed.
    let kept = absence(&dir.path().join("kept"), 86_400).await;
    assert_eq!(kept, 0, "with the log kept, b catches up from it");

    // A 1 s retention: a's log is cut below what b holds; b catches up by the fallback.
    let cut = absence(&dir.path().join("cut"), 1).await;
    assert!(cut > 0, "the truncated log forced a digest fallback");
}
