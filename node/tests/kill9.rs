//! End to end with a real `meridian` process: write under load through the SDK, `kill -9` the node
//! mid-load, restart it on the same data directory, and check that no acknowledged write was lost.
//! Then stop it with SIGTERM and check it exits cleanly.

mod process;

use meridian_client::Consistency;
use process::{connect, spawn_node};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WRITERS: usize = 8;
const MAX_WRITES_PER_WRITER: usize = 400;

#[derive(Default)]
struct Acked {
    members: BTreeSet<String>,
    increments: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut node = spawn_node(&data_dir).await;
    let client = connect(&node.client_addr, &data_dir).await;

    let acked = Arc::new(Mutex::new(Acked { increments: vec![0; WRITERS], ..Acked::default() }));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..MAX_WRITES_PER_WRITER {
                let member = format!("w{w}-{n}");
                let set = client.set("crash/members").consistency(Consistency::Eventual);
                if set.add([member.clone().into_bytes()]).await.is_err() {
                    return;
                }
                acked.lock().unwrap().members.insert(member);
                let counter = client.counter(format!("crash/count-{w}").as_str()).consistency(Consistency::Eventual);
                if counter.incr(1).await.is_err() {
                    return;
                }
                acked.lock().unwrap().increments[w] += 1;
            }
        }));
    }

    // Let the load run until a good number of writes are acknowledged, then kill -9 mid-load.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().members.len() < 200 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.child.start_kill().expect("SIGKILL");
    node.child.wait().await.expect("reaped");
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(30), writer).await.expect("writers stop after the kill").unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.members.len() >= 200, "the load ran before the kill ({} acked)", acked.members.len());
    assert!(acked.members.len() < WRITERS * MAX_WRITES_PER_WRITER, "the kill landed mid-load, not after it");

    let mut node = spawn_node(&data_dir).await;
    let client = connect(&node.client_addr, &data_dir).await;
    let members: BTreeSet<String> = client
        .set("crash/members")
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| String::from_utf8(m).unwrap())
        .collect();
    let lost: Vec<_> = acked.members.difference(&members).collect();
    assert!(lost.is_empty(), "acknowledged set adds lost after kill -9: {lost:?}");
    for (w, &count) in acked.increments.iter().enumerate() {
        let value = client.counter(format!("crash/count-{w}").as_str()).get().await.unwrap();
        assert!(value >= count as i64, "writer {w}: {count} acknowledged increments, counter reads {value}");
        assert!(value <= count as i64 + 1, "writer {w}: at most one unacknowledged increment may have applied");
    }

    // Graceful stop: SIGTERM, clean exit.
    let pid = node.child.id().expect("running");
    let status = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
    let exit =
        tokio::time::timeout(Duration::from_secs(30), node.child.wait()).await.expect("exits on SIGTERM").unwrap();
    assert!(exit.success(), "graceful shutdown exit status: {exit}");
}
