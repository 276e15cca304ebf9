//! Three regions of one in-process node each (rf 1 per region), over real RocksDB and mutual-TLS
//! QUIC on loopback: writes reach every region, a causal session that moves to another region keeps
//! its guarantees (its reads there wait for what it saw), and `quorum` needs a majority of the key's
//! replicas across regions while `local_quorum` needs only the local region.

use meridian_client::{Client, ClusterOp, Consistency, ErrorCode};
use meridian_server::certs::generate_ca;
use meridian_server::config::Config;
use meridian_server::serve::{start, RunningNode};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod common;
use common::{free_udp_addr, region_config_in};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

fn node_config(dir: &Path, region: &str, listen: SocketAddr, seeds: &[SocketAddr], ca: &Path) -> Config {
    let mut config = region_config_in(dir, region, &format!("{region}-n1"), &format!("{region}-a"), listen, seeds, ca);
    config.peer.rf = 1;
    config
}

async fn client(node: &RunningNode) -> Client {
    Client::builder()
        .endpoint(node.client_addr.to_string())
        .ca_cert_file(&node.cert_path)
        .max_retries(0)
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

struct Cluster {
    _dir: tempfile::TempDir,
    configs: Vec<Config>,
    nodes: Vec<Option<RunningNode>>,
    clients: Vec<Client>,
}

async fn cluster() -> Cluster {
    cluster_speaking([meridian_server::peer::NEWEST_VERSION; 3]).await
}

/// [`cluster`] with each region's node offering peer protocol versions up to `versions[i]` (a
/// node of an older release speaks only the older ones).
async fn cluster_speaking(versions: [u8; 3]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    let addrs: Vec<SocketAddr> = REGIONS.iter().map(|_| free_udp_addr()).collect();
    let mut nodes = Vec::new();
    let mut configs = Vec::new();
    for ((region, addr), version) in REGIONS.iter().zip(&addrs).zip(versions) {
        let mut config = node_config(dir.path(), region, *addr, &addrs, &ca_dir);
        config.peer.max_protocol_version = version;
        configs.push(config.clone());
        nodes.push(start(config).await.unwrap());
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(client(node).await);
    }
    for c in &clients {
        wait_for_members(c, 3).await;
    }
    Cluster { _dir: dir, configs, nodes: nodes.into_iter().map(Some).collect(), clients }
}

impl Cluster {
    /// Shuts every node still running down (RocksDB must close before the process exits).
    async fn stop(mut self) {
        self.clients.clear();
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            tokio::time::timeout(Duration::from_secs(30), node.shutdown()).await.expect("a node shut down in 30 s");
        }
    }
}

async fn wait_for_members(client: &Client, alive: usize) {
    let formed = async {
        loop {
            if let Ok(report) = client.cluster(ClusterOp::Status).await {
                if report.members.iter().filter(|m| m.liveness == "alive" || m.liveness == "self").count() >= alive {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), formed).await.expect("the regions see each other within 60 s");
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventually_every_region_sees_every_write_and_reports_its_lag() {
    let cluster = cluster().await;
    let (us, eu, ap) = (cluster.clients[0].clone(), cluster.clients[1].clone(), cluster.clients[2].clone());
    let (us, eu, ap) = (&us, &eu, &ap);
    us.counter("app/hits").consistency(Consistency::Eventual).incr(3).await.unwrap();
    eu.counter("app/hits").consistency(Consistency::Eventual).incr(4).await.unwrap();
    ap.set("app/tags").consistency(Consistency::Eventual).add(["from-ap"]).await.unwrap();
    for c in [us, eu, ap] {
        eventually("counter converged", || async {
            c.counter("app/hits").consistency(Consistency::Eventual).get().await.unwrap() == 7
        })
        .await;
        eventually("set converged", || async {
            c.set("app/tags").consistency(Consistency::Eventual).members().await.unwrap() == vec![b"from-ap".to_vec()]
        })
        .await;
    }
    let report = eu.cluster(ClusterOp::Status).await.unwrap();
    let from_us = report.regions.iter().find(|r| r.from_region == "us-east").expect("us-east lag is reported");
    assert!(from_us.records >= 1, "{report:?}");
    assert!(report.regions.iter().all(|r| r.from_region != "eu-west"), "no lag from its own region");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anytime_a_causal_session_keeps_its_guarantees_across_regions() {
    let cluster = cluster().await;
    let (us, eu, ap) = (cluster.clients[0].clone(), cluster.clients[1].clone(), cluster.clients[2].clone());
    let (us, eu, ap) = (&us, &eu, &ap);
    for round in 0..20 {
        // A session writes in us-east, then moves to eu-west and must read its own write there.
        let session = us.session().with_consistency(Consistency::Causal);
        let value = format!("v{round}");
        session.register("app/profile").set(value.clone()).await.unwrap();
        let moved = eu.session().with_consistency(Consistency::Causal);
        moved.merge_token(&session.token());
        assert_eq!(moved.register("app/profile").get_string().await.unwrap(), Some(value.clone()), "read-your-writes");

        // Cross-key causality: after the cause, an effect on another key; a third session in
        // ap-south that sees the effect must then see the cause.
        let cause = format!("cause-{round}");
        moved.set("app/causes").add([cause.clone()]).await.unwrap();
        moved.register("app/effect").set(cause.clone()).await.unwrap();
        let observer = ap.session().with_consistency(Consistency::Causal);
        let seen = observer.register("app/effect").get_string().await;
        if seen.as_ref().is_ok_and(|s| s.as_deref() == Some(cause.as_str())) {
            let causes = observer.set("app/causes").members().await.unwrap();
            assert!(causes.contains(&cause.clone().into_bytes()), "an effect without its cause in round {round}");
        }
    }
    cluster.stop().await;
}

/// A rolling upgrade's mixed cluster: us-east and eu-west speak the newest peer protocol (compact
/// gossip, combined vector digests, pushes with idempotency records), ap-south only version 2 (full
/// gossip and digests, plain pushes). Writes
/// converge everywhere, causal sessions keep their guarantees through ap-south (its safe-time
/// reports travel the old way, the others' the new way), and a residency rule made on ap-south
/// reaches every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_speaking_the_previous_protocol_still_gossips_syncs_and_serves_causal_sessions() {
    use meridian_client::proto::{ResidencyOp, RuleSpec};
    let newest = meridian_server::peer::NEWEST_VERSION;
    let cluster = cluster_speaking([newest, newest, 2]).await;
    let (us, eu, ap) = (cluster.clients[0].clone(), cluster.clients[1].clone(), cluster.clients[2].clone());
    let (us, eu, ap) = (&us, &eu, &ap);
    for round in 0..10 {
        let value = format!("v{round}");
        let writer = us.session().with_consistency(Consistency::Causal);
        writer.register("app/profile").set(value.clone()).await.unwrap();
        for reader in [ap, eu] {
            let moved = reader.session().with_consistency(Consistency::Causal);
            moved.merge_token(&writer.token());
            let read = moved.register("app/profile").get_string().await.unwrap();
            assert_eq!(read, Some(value.clone()), "read-your-writes in round {round}");
        }
        let from_ap = ap.session().with_consistency(Consistency::Causal);
        from_ap.counter("app/ap-writes").incr(1).await.unwrap();
        let moved = us.session().with_consistency(Consistency::Causal);
        moved.merge_token(&from_ap.token());
        assert!(moved.counter("app/ap-writes").get().await.unwrap() > round, "ap-south's write in round {round}");
    }
    for c in [us, eu, ap] {
        eventually("every region holds every write", || async {
            c.counter("app/ap-writes").consistency(Consistency::Eventual).get().await.unwrap() == 10
        })
        .await;
    }
    let rule = RuleSpec {
        namespace: "app".into(),
        prefix: "mixed/".into(),
        regions: vec!["us-east".into(), "ap-south".into()],
        replicas_per_region: None,
        home: None,
        strict: false,
    };
    let version = ap.residency(ResidencyOp::Add { rule, position: None }).await.unwrap().version;
    for c in [us, eu] {
        eventually("the rule made on ap-south reaches every node", || async {
            c.residency(ResidencyOp::List).await.is_ok_and(|r| r.version >= version)
        })
        .await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_needs_a_global_majority_and_local_quorum_a_local_one() {
    let mut cluster = cluster().await;
    let us = cluster.clients[0].clone();
    us.register("q/k").consistency(Consistency::Quorum).set("one").await.unwrap();
    assert_eq!(
        cluster.clients[1].register("q/k").consistency(Consistency::Quorum).get_string().await.unwrap(),
        Some("one".into()),
        "a quorum read in another region sees an acknowledged quorum write"
    );
    // With ap-south down, two of three replicas remain: still a majority.
    cluster.nodes[2].take().unwrap().shutdown().await;
    us.register("q/k").consistency(Consistency::Quorum).set("two").await.unwrap();
    // With eu-west down too, one of three: a global quorum is impossible, the local one is not.
    cluster.nodes[1].take().unwrap().shutdown().await;
    let err = us.register("q/k").consistency(Consistency::Quorum).set("three").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::QuorumUnavailable), "{err}");
    us.register("q/k").consistency(Consistency::LocalQuorum).set("four").await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_reader_keeps_serving_sessions_that_name_a_region_now_down() {
    let mut cluster = cluster().await;
    let (us, eu) = (cluster.clients[0].clone(), cluster.clients[1].clone());
    let writer = us.session().with_consistency(Consistency::Causal);
    writer.register("r/k").set("from-us").await.unwrap();
    eventually("the write reached eu-west", || async {
        eu.register("r/k").consistency(Consistency::Eventual).get_string().await.unwrap() == Some("from-us".into())
    })
    .await;
    // Let eu-west learn (gossip) and persist (every second) how far it holds us-east's log.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    cluster.nodes[0].take().unwrap().shutdown().await;
    cluster.nodes[1].take().unwrap().shutdown().await;
    let restarted = start(cluster.configs[1].clone()).await.unwrap();
    let eu = client(&restarted).await;
    cluster.nodes[1] = Some(restarted);
    cluster.clients[1] = eu.clone();
    let moved = eu.session().with_consistency(Consistency::Causal);
    moved.merge_token(&writer.token());
    let read = async {
        loop {
            match moved.register("r/k").get_string().await {
                Ok(value) => return value,
                // The node may still be rejoining its peers.
                Err(e) if e.code() == Some(ErrorCode::QuorumUnavailable) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("a causal read after the restart: {e}"),
            }
        }
    };
    let value = tokio::time::timeout(Duration::from_secs(30), read).await.expect("served within 30 s");
    assert_eq!(value, Some("from-us".into()), "read-your-writes across regions and a restart");
    for i in 0..8 {
        // Other keys (other partitions) are served too: the session names us-east, which is down,
        // but eu-west remembers how far it holds us-east's writes.
        moved.register(format!("r/other-{i}")).get_string().await.unwrap();
    }
    cluster.stop().await;
}
