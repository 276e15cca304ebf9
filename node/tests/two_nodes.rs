//! End to end with two real `meridian` processes syncing over the mutual-TLS peer transport: both
//! take writes under load, one is killed with `kill -9` mid-load and restarted, and afterwards both
//! hold every acknowledged write of both — without any client reading across nodes.

mod process;

use meridian_client::Consistency;
use meridian_server::certs::{generate_ca, issue_node_cert, CaBundle, NodeIdentity};
use process::{connect, spawn_node_with};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WRITES_PER_NODE: usize = 300;

fn free_udp_addr() -> String {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

struct NodeFiles {
    data: PathBuf,
    env: Vec<(String, String)>,
}

fn node_files(dir: &Path, ca: &CaBundle, name: &str, listen: &str, peer: &str) -> NodeFiles {
    let identity =
        NodeIdentity { cluster_id: "e2e".into(), region: "local".into(), zone: name.into(), name: name.into() };
    let (cert, key) = issue_node_cert(ca, &identity, &["127.0.0.1"]).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let env = [
        ("MERIDIAN_CLUSTER_ID", "e2e".to_string()),
        ("MERIDIAN_NODE_NAME", name.to_string()),
        ("MERIDIAN_PEER__LISTEN", listen.to_string()),
        ("MERIDIAN_PEER__SEEDS", format!("[\"{peer}\"]")),
        ("MERIDIAN_PEER__CA", dir.join("ca/ca.crt").display().to_string()),
        ("MERIDIAN_PEER__CERT", cert_path.display().to_string()),
        ("MERIDIAN_PEER__KEY", key_path.display().to_string()),
        ("MERIDIAN_PEER__SYNC_INTERVAL_MS", "100".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    NodeFiles { data: dir.join(format!("{name}-data")), env }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finally_both_nodes_hold_every_acknowledged_write_after_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let ca = generate_ca("e2e").unwrap();
    ca.write(&dir.path().join("ca"), false).unwrap();
    let (addr_1, addr_2) = (free_udp_addr(), free_udp_addr());
    let files =
        [node_files(dir.path(), &ca, "n1", &addr_1, &addr_2), node_files(dir.path(), &ca, "n2", &addr_2, &addr_1)];
    let mut n1 = spawn_node_with(&files[0].data, &files[0].env).await;
    let mut n2 = spawn_node_with(&files[1].data, &files[1].env).await;
    let clients = [connect(&n1.client_addr, &files[0].data).await, connect(&n2.client_addr, &files[1].data).await];

    // A new node serves once it has heard from its region.
    for client in &clients {
        let joined = async {
            loop {
                match client.cluster(meridian_client::ClusterOp::Status).await {
                    Ok(report) if report.members.iter().any(|m| m.liveness == "alive") => return,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), joined).await.expect("the nodes see each other within 60 s");
    }

    // Each node takes its own writer's set adds; n2 is killed mid-load.
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut writers = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let (client, acked) = (client.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..WRITES_PER_NODE {
                let member = format!("n{}-{n}", i + 1);
                let add = client.set("e2e/members").consistency(Consistency::Eventual).add([member.clone()]).await;
                if add.is_err() {
                    return;
                }
                acked.lock().unwrap().insert(member);
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().iter().filter(|m| m.starts_with("n2-")).count() < 50
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n2.child.start_kill().expect("SIGKILL");
    n2.child.wait().await.unwrap();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(60), writer).await.expect("writers finish").unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let from_n2 = acked.iter().filter(|m| m.starts_with("n2-")).count();
    assert!((50..WRITES_PER_NODE).contains(&from_n2), "the kill landed mid-load ({from_n2} of n2's writes acked)");

    // Restart n2 on the same data directory; anti-entropy must bring both nodes to the same state.
    n2 = spawn_node_with(&files[1].data, &files[1].env).await;
    let clients = [connect(&n1.client_addr, &files[0].data).await, connect(&n2.client_addr, &files[1].data).await];
    let converged = async {
        loop {
            let mut views = Vec::new();
            for client in &clients {
                let members: BTreeSet<String> = client
                    .set("e2e/members")
                    .members()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|m| String::from_utf8(m).unwrap())
                    .collect();
                views.push(members);
            }
            if views[0] == views[1] && acked.is_subset(&views[0]) {
                return views.remove(0);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let members = tokio::time::timeout(Duration::from_secs(90), converged)
        .await
        .expect("both nodes converge and hold every acknowledged write within 90 s");
    assert!(members.len() >= acked.len());
    for node in [&mut n1, &mut n2] {
        node.child.start_kill().unwrap();
        node.child.wait().await.unwrap();
    }
}
