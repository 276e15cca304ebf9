//! Two in-process nodes with mutual-TLS peer transports converge by anti-entropy alone: writes made
//! on either node become readable on the other without any client touching both.

use meridian_client::{Client, Consistency, Value};
use meridian_server::certs::generate_ca;
use meridian_server::config::Config;
use meridian_server::serve::{start, RunningNode};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod common;
use common::{free_udp_addr, region_config, wait_for_region};

fn node_config(dir: &Path, name: &str, listen: SocketAddr, peer: SocketAddr, ca: &str) -> Config {
    region_config(dir, name, name, listen, &[peer], Path::new(ca))
}

async fn client(node: &RunningNode) -> Client {
    Client::builder()
        .endpoint(node.client_addr.to_string())
        .ca_cert_file(&node.cert_path)
        .max_retries(0)
        .default_consistency(Consistency::Eventual)
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventually_two_nodes_converge_over_the_peer_transport() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    let ca = ca_dir.to_str().unwrap().to_string();
    let (addr_a, addr_b) = (free_udp_addr(), free_udp_addr());
    let a = start(node_config(dir.path(), "a", addr_a, addr_b, &ca)).await.unwrap();
    let b = start(node_config(dir.path(), "b", addr_b, addr_a, &ca)).await.unwrap();
    let (ca_client, cb_client) = (client(&a).await, client(&b).await);
    wait_for_region(&ca_client, 1).await;
    wait_for_region(&cb_client, 1).await;

    ca_client.counter("s/visits").incr(5).await.unwrap();
    cb_client.counter("s/visits").incr(7).await.unwrap();
    ca_client.set("s/tags").add(["from-a"]).await.unwrap();
    cb_client.set("s/tags").add(["from-b"]).await.unwrap();
    ca_client.register("s/only-a").set("hello").await.unwrap();

    let converged = async {
        loop {
            let mut done = true;
            for c in [&ca_client, &cb_client] {
                done &= c.counter("s/visits").get().await.unwrap() == 12;
                done &= c.set("s/tags").members().await.unwrap().len() == 2;
                done &= c.get("s/only-a").await.unwrap() == Some(Value::Register(Some(b"hello".to_vec())));
            }
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), converged).await.expect("both nodes converge within 60 s");

    // Two nodes, rf 3 capped at 2: a local_quorum write is durable on both before it is
    // acknowledged, so a local_quorum read through the other node sees it at once.
    ca_client.counter("s/visits").consistency(Consistency::LocalQuorum).incr(1).await.unwrap();
    assert_eq!(cb_client.counter("s/visits").consistency(Consistency::LocalQuorum).get().await.unwrap(), 13);

    // Part reads at the quorum levels go through the coordinator's quorum read of the whole
    // collection (rf 2: both replicas), answered from the joined state.
    let profile = ca_client.map("s/profile").consistency(Consistency::LocalQuorum);
    profile.set_field("name", "Ada").await.unwrap();
    profile.incr_field("logins", 2).await.unwrap();
    ca_client.set("s/tags").consistency(Consistency::LocalQuorum).add(["late"]).await.unwrap();
    for level in [Consistency::LocalQuorum, Consistency::Quorum] {
        let map = cb_client.map("s/profile").consistency(level);
        assert_eq!(map.len().await.unwrap(), 2, "{level:?}");
        let fields = map.get_fields(["logins", "nope"]).await.unwrap();
        assert_eq!(fields, vec![Some(Value::Counter(2)), None], "{level:?}");
        let (page, next) = map.page(Some("logins".into()), 10).await.unwrap();
        assert_eq!((page, next), (vec![("name".into(), Value::Register(Some(b"Ada".to_vec())))], None));
        let set = cb_client.set("s/tags").consistency(level);
        assert_eq!(set.len().await.unwrap(), 3, "{level:?}");
        assert_eq!(set.contains_each(["late", "nope"]).await.unwrap(), vec![true, false], "{level:?}");
        assert_eq!(set.page(None, 2).await.unwrap().1, Some(b"from-b".to_vec()), "{level:?}");
        let wrong = cb_client.map("s/tags").consistency(level).len().await.unwrap_err();
        assert!(matches!(wrong, meridian_client::Error::Server { code: meridian_client::ErrorCode::WrongType, .. }));
    }

    // A later eventual write still flows (the sync keeps running).
    cb_client.counter("s/visits").incr(1).await.unwrap();
    let caught_up = async {
        while ca_client.counter("s/visits").get().await.unwrap() != 14 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), caught_up).await.expect("a later write reaches the other node");

    // With b gone, a majority of 2 replicas is out of reach: local_quorum says so and how many
    // answered; eventual writes still succeed and leave a hint for b.
    let b_id = b.node.id();
    tokio::time::timeout(Duration::from_secs(60), b.shutdown()).await.expect("b stops");
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ca_client.counter("s/visits").consistency(Consistency::LocalQuorum).incr(1).await {
                Err(e) => return e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("local_quorum fails once b is gone");
    assert_eq!(refused.code(), Some(meridian_client::ErrorCode::QuorumUnavailable), "{refused}");
    assert!(refused.to_string().contains("1 acknowledged"), "{refused}");
    ca_client.counter("s/visits").incr(1).await.unwrap();
    let hints = a.node.coordinator().expect("a region node").hints().depth(b_id);
    assert!(hints >= 1, "writes b missed are kept as hints ({hints})");
    tokio::time::timeout(Duration::from_secs(60), a.shutdown()).await.expect("a stops");
}
