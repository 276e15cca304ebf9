//! Online backup and restore of a node over RocksDB: `meridian backup`'s library half against a
//! live node under writes, incremental backups, a restored data directory opened by a real node
//! (fresh id, the backed-up state, nothing written after the backup), and refusals: a damaged
//! object, a non-empty target, an unknown backup, an abandoned checkpoint's id after release.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, config, connect, shutdown, start_rocks};
use meridian_client::proto::{BackupOp, ErrorCode};
use meridian_node::backup_cli::{backup_node, manifests, restore, Selector};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_holds_what_was_acknowledged_before_it_and_runs_under_a_new_id() {
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    let running = start_rocks(config(&tmp.path().join("node"))).await;
    let old_id = running.node.id();
    let client = connect(&running).await;
    for i in 0..200 {
        client.register(format!("app/r{i}")).set(format!("value {i}")).await.unwrap();
    }
    client.set("app/tags").add(["red", "green", "blue"]).await.unwrap();
    client.set("app/tags").remove(["green"]).await.unwrap();

    // A writer keeps incrementing while the backup runs: every increment acknowledged before the
    // backup began must be in it.
    let acked = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client.counter("app/hits").incr(1).await.unwrap();
                acked.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let acked_before = acked.load(Ordering::SeqCst);
    let first = bounded("first backup", backup_node(&client, &backups, false)).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(acked_before > 0, "the writer never got going");
    assert_eq!(first.manifest.node_id, old_id);
    assert_eq!(first.files_copied, first.manifest.files.len(), "a first backup copies everything");
    assert!(first.manifest.version_vector.get(old_id) > 0, "the cut names the node's own writes");
    assert!(first.manifest.files.iter().any(|f| f.name == "CURRENT"), "a checkpoint is a whole RocksDB");

    // Written after the first backup: in the second, not in a restore of the first.
    client.register("app/after").set("later").await.unwrap();
    let second = bounded("second backup", backup_node(&client, &backups, false)).await.unwrap();
    assert!(
        second.bytes_copied < second.manifest.bytes(),
        "the second backup copied {} of {} bytes: table files already in the folder must be reused",
        second.bytes_copied,
        second.manifest.bytes()
    );
    assert!(second.files_copied < second.manifest.files.len());
    assert_eq!(manifests(&backups).unwrap().len(), 2);
    // Both checkpoints were released on the node.
    assert!(std::fs::read_dir(tmp.path().join("node/backup-checkpoints")).unwrap().next().is_none());
    // A released checkpoint cannot be read any more.
    let err = client
        .backup(BackupOp::Read { id: first.checkpoint_id, file: "CURRENT".into(), offset: 0, len: 10 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    let final_hits = client.counter("app/hits").get().await.unwrap();
    // Disk use per space is on /metrics (the backups' flushes left table files in `data`).
    let request = axum::http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap();
    let response =
        tower::ServiceExt::oneshot(meridian_server::api::http::router(running.node.clone()), request).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    let metrics = String::from_utf8_lossy(&body);
    let data_sst = metrics
        .lines()
        .find(|l| {
            l.starts_with("meridian_storage_bytes{") && l.contains("space=\"data\"") && l.contains("kind=\"sst\"")
        })
        .unwrap_or_else(|| panic!("no data sst gauge in {metrics}"));
    assert!(data_sst.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 0.0, "{data_sst}");
    assert!(metrics.contains("meridian_storage_wal_bytes "), "{metrics}");
    client.close().await;
    shutdown(running).await;

    // Restore the first backup into a new data directory and run a node on it.
    let restored_dir = tmp.path().join("restored");
    let selector = Selector { backup: Some(first.manifest.id.clone()), node: None };
    let done = restore(&backups, &selector, &restored_dir, false).unwrap();
    assert_ne!(done.new_id, old_id, "a restored node must never reuse the backed-up node's log");
    // Only a node of the backup's region may open it (data residency).
    let mut elsewhere = config(&restored_dir);
    elsewhere.region = "eu-west".into();
    let refused =
        meridian_server::serve::start(elsewhere).await.err().expect("a node of another region refuses the store");
    assert!(format!("{refused:#}").contains("restored from a backup taken in region"), "{refused:#}");
    let running = start_rocks(config(&restored_dir)).await;
    assert_eq!(running.node.id(), done.new_id);
    let client = connect(&running).await;
    for i in [0, 57, 199] {
        assert_eq!(client.register(format!("app/r{i}")).get_string().await.unwrap(), Some(format!("value {i}")));
    }
    let mut tags = client.set("app/tags").members().await.unwrap();
    tags.sort();
    assert_eq!(tags, vec![b"blue".to_vec(), b"red".to_vec()]);
    let hits = client.counter("app/hits").get().await.unwrap();
    assert!(
        (acked_before..=final_hits).contains(&hits),
        "restored counter {hits}: {acked_before} increments were acknowledged before the backup, {final_hits} in all"
    );
    assert_eq!(client.register("app/after").get().await.unwrap(), None, "written after the backup");
    // The restored node takes writes under its new id.
    client.register("app/new").set("x").await.unwrap();
    assert!(client.status().await.unwrap().version_vector.get(done.new_id) > 0);
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_damage_a_used_data_dir_and_unknown_backups() {
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    let running = start_rocks(config(&tmp.path().join("node"))).await;
    let client = connect(&running).await;
    client.register("app/k").set("v").await.unwrap();
    let done = bounded("backup", backup_node(&client, &backups, false)).await.unwrap();
    // The same through the real CLI, then listed.
    let (endpoint, ca) = (running.client_addr.to_string(), running.cert_path.to_string_lossy().into_owned());
    let dir = backups.to_string_lossy().into_owned();
    let printed = common::succeed(&["backup", &dir, "--endpoint", &endpoint, "--ca-cert", &ca]);
    assert!(printed.starts_with("backup ") && printed.contains("copied"), "{printed}");
    let listed = common::succeed(&["restore", &dir, "--list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains(&done.manifest.id), "{listed}");
    client.close().await;
    shutdown(running).await;
    let selector = Selector { backup: Some(done.manifest.id.clone()), node: None };

    // Not empty.
    let used = tmp.path().join("used");
    std::fs::create_dir_all(&used).unwrap();
    std::fs::write(used.join("something"), b"x").unwrap();
    let err = restore(&backups, &selector, &used, false).unwrap_err().to_string();
    assert!(err.contains("is not empty"), "{err}");
    assert!(used.join("something").exists(), "a refused restore leaves the directory alone");

    // Unknown backup id, unknown node.
    let target = tmp.path().join("target");
    let err = restore(&backups, &Selector { backup: Some("nope".into()), node: None }, &target, false).unwrap_err();
    assert!(err.to_string().contains("no backup nope"), "{err}");
    let err = restore(&backups, &Selector { backup: None, node: Some("other".into()) }, &target, false).unwrap_err();
    assert!(err.to_string().contains("no backup of node other"), "{err}");

    // A damaged object: one flipped byte in the largest file.
    let largest = done.manifest.files.iter().max_by_key(|f| f.size).unwrap();
    let object = backups.join("objects").join(&largest.sha256);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    let err = restore(&backups, &selector, &target, false).unwrap_err().to_string();
    assert!(err.contains("is damaged") && err.contains(&largest.name), "{err}");
    assert!(!target.exists(), "a failed restore removes what it wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_files_refuses_a_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let running = common::start_memory(config(tmp.path())).await;
    let client = connect(&running).await;
    let err = client.backup(BackupOp::Begin).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unsupported), "{err}");
    client.close().await;
    shutdown(running).await;
}

/// Disaster on one node of a region: its disk is lost after a backup. The operator removes it,
/// restores the backup with `--replace`, and starts a node of the same name on it. The restored
/// node runs under a fresh id, holds the backup, gets what was written after the backup from its
/// peers by anti-entropy, and its own new writes reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_is_replaced_from_its_backup_and_catches_up() {
    use common::{eventual_client as client, free_udp_addr, region_config, wait_for_region};
    use meridian_client::{Client, ClusterOp, Value};
    use meridian_server::serve::start;
    async fn holds(client: &Client, key: &str, value: &str) -> bool {
        matches!(client.get(key).await, Ok(Some(Value::Register(Some(v)))) if v == value.as_bytes())
    }

    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    meridian_server::certs::generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    let addrs: Vec<_> = (0..3).map(|_| free_udp_addr()).collect();
    let configs: Vec<_> = (0..3)
        .map(|i| region_config(dir.path(), &format!("n{}", i + 1), &format!("z{}", i + 1), addrs[i], &addrs, &ca_dir))
        .collect();
    let mut nodes = Vec::new();
    for config in &configs {
        nodes.push(bounded("start", start(config.clone())).await.unwrap());
    }
    let n1 = client(&nodes[0]).await;
    let n3 = client(&nodes[2]).await;
    wait_for_region(&n1, 2).await;
    wait_for_region(&n3, 2).await;
    let members = meridian_node::backup_cli::region_members(&n1).await.unwrap();
    let names: Vec<&str> = members.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.len(), 3, "`backup --cluster` covers the region: {members:?}");
    for i in 0..100 {
        n1.register(format!("d/k{i:03}")).set(format!("before {i}")).await.unwrap();
    }
    // Backed up once n3 holds every write (rf 3: every node holds every key).
    let caught_up = async {
        while !holds(&n3, "d/k099", "before 99").await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), caught_up).await.expect("n3 holds the writes");
    let backups = dir.path().join("backups");
    let backed_up = bounded("backup n3", backup_node(&n3, &backups, false)).await.unwrap();
    let old_id = backed_up.manifest.node_id;

    // After the backup: more writes and overwrites; then n3's disk is lost.
    for i in 50..150 {
        n1.register(format!("d/k{i:03}")).set(format!("after {i}")).await.unwrap();
    }
    n3.close().await;
    let n3_node = nodes.pop().unwrap();
    shutdown(n3_node).await;
    std::fs::remove_dir_all(&configs[2].data_dir).unwrap();

    // The runbook: remove the lost node, restore with --replace, start a node of its name on it.
    n1.cluster(ClusterOp::Remove { node: old_id.to_string() }).await.unwrap();
    let done =
        restore(&backups, &Selector { backup: None, node: Some("n3".into()) }, &configs[2].data_dir, true).unwrap();
    assert!(done.removed_old);
    let restarted = bounded("start the restored n3", start(configs[2].clone())).await.unwrap();
    assert_eq!(restarted.node.id(), done.new_id);
    assert_ne!(done.new_id, old_id);
    let n3 = client(&restarted).await;
    let converged = async {
        loop {
            let mut all = true;
            for i in 0..150 {
                let expected = if i < 50 { format!("before {i}") } else { format!("after {i}") };
                if !holds(&n3, &format!("d/k{i:03}"), &expected).await {
                    all = false;
                    break;
                }
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), converged).await.expect("the restored n3 catches up by anti-entropy");
    // Its own writes reach the others.
    n3.register("d/from-restored").set("hello").await.unwrap();
    let spread = async {
        while !holds(&n1, "d/from-restored", "hello").await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), spread).await.expect("the restored node's writes reach n1");
    let members = n1.cluster(ClusterOp::Status).await.unwrap().members;
    let states: Vec<(String, String)> = members.iter().map(|m| (m.id.to_string(), m.state.clone())).collect();
    assert!(states.contains(&(old_id.to_string(), "removed".into())), "{states:?}");
    assert!(states.contains(&(done.new_id.to_string(), "active".into())), "{states:?}");
    n1.close().await;
    n3.close().await;
    shutdown(restarted).await;
    for node in nodes {
        shutdown(node).await;
    }
}
