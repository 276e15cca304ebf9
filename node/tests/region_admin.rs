//! Region administration with in-process nodes over real RocksDB and real mutual-TLS QUIC:
//! requests forwarded to a key's replicas, key listings merged across nodes, placement explained,
//! a node added as `joining` and activated once it has caught up (its partitions' data follows
//! it), a join given up, and a drain that hands a node's partitions to their new owners before it
//! is removed.

mod common;

use std::time::Duration;

use common::{bounded, eventual_client as client, free_udp_addr, region_config, wait_for_region};
use meridian_client::{ClusterOp, ErrorCode, Value};
use meridian_server::certs::generate_ca;
use meridian_server::serve::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_added_and_drained_with_their_data_and_listing_spans_the_region() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    let addrs: Vec<_> = (0..3).map(|_| free_udp_addr()).collect();
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let mut config = region_config(dir.path(), &name, &format!("z{}", i + 1), *addr, &addrs, &ca_dir);
        // One replica per partition: after the drain, only the handoff can have moved n3's keys.
        config.peer.rf = 1;
        nodes.push(bounded("start", start(config)).await.unwrap());
    }
    let clients = [client(&nodes[0]).await, client(&nodes[1]).await, client(&nodes[2]).await];
    wait_for_region(&clients[0], 2).await;
    wait_for_region(&clients[2], 2).await;

    // The same view over HTTP, for operators and scripts.
    let request = axum::http::Request::get("/v1/cluster").body(axum::body::Body::empty()).unwrap();
    let response =
        tower::ServiceExt::oneshot(meridian_server::api::http::router(nodes[0].node.clone()), request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["members"].as_array().unwrap().len(), 3, "{json}");
    assert!(json["members"][0]["id"].is_string(), "64-bit ids travel as strings: {json}");

    // Every write through n1 is forwarded to the key's one replica.
    for i in 0..150 {
        clients[0].register(format!("d/k{i:03}").as_str()).set(format!("v{i}")).await.unwrap();
    }
    let owned_by_n3 = clients[0].cluster(ClusterOp::Status).await.unwrap();
    let n3 = owned_by_n3.members.iter().find(|m| m.name == "n3").unwrap();
    assert!(n3.partitions > 0, "n3 holds partitions before the drain");

    // A listing through any node spans every node's keys, page by page.
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = clients[1].keys("d").limit(40);
        if let Some(after) = &after {
            query = query.start_after(after.as_str());
        }
        let page = query.page().await.unwrap();
        listed.extend(page.keys.iter().map(|k| k.name.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..150).map(|i| format!("k{i:03}")).collect();
    assert_eq!(listed, expected, "the merged listing is complete and ordered");

    // Placement is explained per key.
    let explained = clients[0].cluster(ClusterOp::Placement { key: "d/k007".parse().unwrap() }).await.unwrap();
    let placement = explained.placement.expect("a placement report");
    assert_eq!(placement.replicas.len(), 1);
    assert_eq!(placement.candidates, 3);

    // Add a node: it joins as `joining` (no placements) until an operator activates it, then the
    // partitions that move to it are pulled from the nodes that held them.
    let n4_addr = free_udp_addr();
    let mut config = region_config(dir.path(), "n4", "z1", n4_addr, &addrs, &ca_dir);
    config.peer.rf = 1;
    config.peer.auto_activate = false;
    let n4 = bounded("start n4", start(config)).await.unwrap();
    let n4_client = client(&n4).await;
    wait_for_region(&n4_client, 3).await;
    let joined = clients[0].cluster(ClusterOp::Status).await.unwrap();
    let member = joined.members.iter().find(|m| m.name == "n4").expect("n4 is known by gossip");
    assert_eq!((member.state.as_str(), member.partitions), ("joining", 0));
    // Activation waits until n4 has caught up what it joins (pulled from the old replicas while
    // quorums counted it beside them): a refusal until then is retryable and says how far it is.
    let activated = async {
        loop {
            match clients[0].cluster(ClusterOp::Activate { node: "n4".into() }).await {
                Ok(_) => return,
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::QuorumUnavailable), "{e}");
                    assert!(e.to_string().contains("changes the replicas of"), "{e}");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), activated).await.expect("n4 catches up within 60 s");
    let rebalanced = async {
        loop {
            let report = n4_client.cluster(ClusterOp::Status).await.unwrap();
            let mine = report.members.iter().find(|m| m.name == "n4").map_or(0, |m| m.partitions);
            let mut all = mine > 0;
            for i in 0..150 {
                if !all {
                    break;
                }
                let value = n4_client.get(format!("d/k{i:03}").as_str()).await;
                all &= matches!(value, Ok(Some(Value::Register(Some(v)))) if v == format!("v{i}").into_bytes());
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), rebalanced).await.expect("n4 takes partitions and their data");
    nodes.push(n4);

    // A join given up: removing a joining node is never held back, caught up or not, and ends
    // its move (nothing moves any more once it is gone).
    let n5_addr = free_udp_addr();
    let mut config = region_config(dir.path(), "n5", "z2", n5_addr, &addrs, &ca_dir);
    config.peer.rf = 1;
    config.peer.auto_activate = false;
    let n5 = bounded("start n5", start(config)).await.unwrap();
    wait_for_region(&clients[0], 4).await;
    // One move at a time: no drain starts while n5 joins.
    let busy = clients[0].cluster(ClusterOp::Drain { node: "n3".into() }).await.unwrap_err();
    assert_eq!(busy.code(), Some(ErrorCode::BadRequest), "{busy}");
    assert!(busy.to_string().contains("n5 is joining"), "{busy}");
    let report = clients[0].cluster(ClusterOp::Remove { node: "n5".into() }).await.unwrap();
    assert!(report.members.iter().any(|m| m.name == "n5" && m.state == "removed"), "{report:?}");
    bounded("stop n5", n5.shutdown()).await;

    let unknown = clients[0].cluster(ClusterOp::Drain { node: "n9".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::BadRequest), "{unknown}");

    // Drain n3: its partitions move, and it hands what it holds to the new owners.
    clients[0].cluster(ClusterOp::Drain { node: "n3".into() }).await.unwrap();
    let handed_off = async {
        loop {
            if let Ok(report) = clients[2].cluster(ClusterOp::Status).await {
                if let Some(handoff) = report.handoff {
                    if handoff.is_complete() && report.members.iter().all(|m| m.name != "n3" || m.partitions == 0) {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), handed_off).await.expect("the handoff completes within 60 s");
    clients[0].cluster(ClusterOp::Remove { node: "n3".into() }).await.unwrap();
    let n3 = nodes.remove(2);
    bounded("stop n3", n3.shutdown()).await;

    // n3 is gone for good: every key is still there, served by its new owner.
    for i in 0..150 {
        let value = clients[0].get(format!("d/k{i:03}").as_str()).await.unwrap();
        assert_eq!(value, Some(Value::Register(Some(format!("v{i}").into_bytes()))), "d/k{i:03} after the drain");
    }
    let report = clients[0].cluster(ClusterOp::Status).await.unwrap();
    assert!(report.members.iter().any(|m| m.name == "n3" && m.state == "removed"));
    assert_eq!(report.members.iter().map(|m| m.partitions).sum::<u32>(), 256);
    assert_eq!(report.members.iter().find(|m| m.name == "n3").unwrap().partitions, 0);
    for node in nodes {
        bounded("shutdown", node.shutdown()).await;
    }
}
