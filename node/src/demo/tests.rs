use super::*;
use meridian_server::certs::CertIdentity;
use meridian_server::config::Config;
use std::collections::BTreeSet;

fn der(path: &Path) -> rustls::pki_types::CertificateDer<'static> {
    certs::certs_from_pem(&std::fs::read(path).unwrap(), "test").unwrap().remove(0)
}

#[test]
fn init_writes_the_default_three_region_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = init(&tmp.path().join("demo"), &DemoOptions::default()).unwrap();
    let dir = tmp.path().join("demo").canonicalize().unwrap();
    assert_eq!(GeoPlan::load(&dir).unwrap(), plan);
    assert_eq!((plan.cluster_id.as_str(), plan.rf), ("demo", 3));
    assert_eq!(plan.ca_cert, dir.join("certs/ca.crt"));
    assert_eq!(plan.regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["us-east", "eu-west", "ap-south"]);
    let names: Vec<&str> = plan.nodes().map(|(_, n)| n.name.as_str()).collect();
    assert_eq!(names.len(), 9);
    assert_eq!(names[..4], ["us-east-n1", "us-east-n2", "us-east-n3", "eu-west-n1"]);
    let zones: Vec<&str> = plan.region("eu-west").unwrap().nodes.iter().map(|n| n.zone.as_str()).collect();
    assert_eq!(zones, ["eu-west-a", "eu-west-b", "eu-west-c"]);

    // Node k across the cluster: base + 10k.
    let eu1 = &plan.region("eu-west").unwrap().nodes[0];
    assert_eq!((eu1.client_addr.port(), eu1.http_addr.port(), eu1.peer_addr.port()), (7640, 7641, 7642));

    // 3 regions × 6 nodes of other regions; ports from base + 1000, one each.
    assert_eq!(plan.links.len(), 18);
    let link_ports: Vec<u16> = plan.links.iter().map(|l| l.listen.port()).collect();
    assert_eq!(link_ports, (8600..8618).collect::<Vec<u16>>());
    let mut ports = BTreeSet::new();
    for (_, n) in plan.nodes() {
        for a in [n.client_addr, n.http_addr, n.peer_addr] {
            assert!(ports.insert(a.port()));
        }
    }
    for l in &plan.links {
        assert!(ports.insert(l.listen.port()), "link port {} also used by a node", l.listen.port());
        let to = plan.nodes().find(|(_, n)| n.name == l.to_node).unwrap();
        assert_eq!((to.0.name.as_str(), to.1.peer_addr), (l.to_region.as_str(), l.upstream));
        assert_ne!(l.from_region, l.to_region);
    }
    let one_way = |a: &str, b: &str| plan.links_between(a, b).map(|l| l.one_way_ms).collect::<BTreeSet<_>>();
    assert_eq!(one_way("us-east", "eu-west"), BTreeSet::from([40]));
    assert_eq!(one_way("us-east", "ap-south"), BTreeSet::from([100]));
    assert_eq!(one_way("ap-south", "eu-west"), BTreeSet::from([70]));

    for (region, node) in plan.nodes() {
        let config = Config::load(Some(&node.config)).unwrap();
        assert_eq!(config.node_name, node.name);
        assert_eq!((config.cluster_id.as_str(), config.region.as_str()), ("demo", region.name.as_str()));
        assert_eq!(config.zone, node.zone);
        assert_eq!(config.data_dir, dir.join(&node.name).join("data"));
        assert_eq!(node.log, dir.join(&node.name).join("node.log"));
        assert_eq!(config.peer.listen, Some(node.peer_addr));
        assert_eq!(config.peer.rf, 3);
        assert_eq!(config.storage.durability, "fsync");

        // Seeds: the region's other nodes directly, plus the link to each other region's first node.
        let mut expected: BTreeSet<SocketAddr> =
            region.nodes.iter().filter(|n| n.name != node.name).map(|n| n.peer_addr).collect();
        for other in plan.regions.iter().filter(|r| r.name != region.name) {
            let link =
                plan.links.iter().find(|l| l.from_region == region.name && l.to_node == other.nodes[0].name).unwrap();
            expected.insert(link.listen);
        }
        assert_eq!(config.peer.seeds.iter().copied().collect::<BTreeSet<_>>(), expected);
        assert_eq!(config.peer.seeds.len(), 4);

        // dial_via: every node of the other regions, through this region's link to it.
        assert_eq!(config.peer.dial_via.len(), 6);
        for (other_region, other) in plan.nodes().filter(|(r, _)| r.name != region.name) {
            let link = config.peer.dial_via[&other.name];
            let l = plan.links.iter().find(|l| l.listen == link).unwrap();
            assert_eq!(
                (l.from_region.as_str(), l.to_region.as_str(), l.to_node.as_str(), l.upstream),
                (region.name.as_str(), other_region.name.as_str(), other.name.as_str(), other.peer_addr)
            );
        }

        let cert = dir.join("certs").join(format!("{}.crt", node.name));
        assert_eq!(config.peer.cert.as_deref(), Some(cert.as_path()));
        assert_eq!(config.tls.cert, config.peer.cert);
        assert_eq!(config.peer.ca.as_deref(), Some(plan.ca_cert.as_path()));
        let summary = certs::summarize(&der(&cert)).unwrap();
        assert_eq!(
            summary.identity.unwrap(),
            CertIdentity::Node(NodeIdentity {
                cluster_id: "demo".into(),
                region: region.name.clone(),
                zone: node.zone.clone(),
                name: node.name.clone(),
            })
        );
        assert!(summary.dns_names.contains(&"localhost".to_string()));
    }
}

#[test]
fn rtt_ms_overrides_and_single_node_regions_work() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DemoOptions {
        regions: vec!["a".into(), "b".into()],
        nodes_per_region: 1,
        rf: 1,
        zones: 1,
        base_port: 30000,
        rtt_ms: Some(20),
        latency: "nonsense-is-ignored-with-rtt".into(),
        durability: "relaxed".into(),
        ..DemoOptions::default()
    };
    let plan = init(tmp.path(), &options).unwrap();
    assert_eq!(plan.links.len(), 2);
    assert!(plan.links.iter().all(|l| l.one_way_ms == 10));
    let a1 = &plan.region("a").unwrap().nodes[0];
    assert_eq!((a1.name.as_str(), a1.zone.as_str(), a1.client_addr.port()), ("a-n1", "a-a", 30010));
    let config = Config::load(Some(&a1.config)).unwrap();
    assert_eq!(config.peer.seeds, vec![plan.links[0].listen], "only the link to b");
    assert_eq!(config.storage.durability, "relaxed");
}

#[test]
fn an_existing_cluster_is_kept_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let options = DemoOptions { nodes_per_region: 1, ..DemoOptions::default() };
    let first = init(tmp.path(), &options).unwrap();
    let err = format!("{:#}", init(tmp.path(), &options).unwrap_err());
    assert!(err.contains("cluster.json already exists") && err.contains("--force"), "{err}");
    let data = &first.regions[0].nodes[0].data_dir;
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(data.join("marker"), "kept").unwrap();
    let second = init(tmp.path(), &DemoOptions { force: true, ..options }).unwrap();
    assert_eq!(GeoPlan::load(tmp.path()).unwrap(), second);
    assert!(data.join("marker").exists());
}

#[test]
fn latency_is_parsed_and_bad_options_are_refused() {
    let rtts = round_trips(&DemoOptions::default()).unwrap();
    assert_eq!(rtts[&("eu-west".to_string(), "us-east".to_string())], 80);
    assert_eq!(rtts[&("ap-south".to_string(), "eu-west".to_string())], 140);

    let tmp = tempfile::tempdir().unwrap();
    for (bad, expected) in [
        (DemoOptions { regions: vec!["x".into(), "y".into()], ..DemoOptions::default() }, "x/y"),
        (DemoOptions { latency: "us-east-eu-west=80".into(), ..DemoOptions::default() }, "--latency"),
        (DemoOptions { regions: vec!["a".into(), "a".into()], rtt_ms: Some(1), ..DemoOptions::default() }, "twice"),
        (DemoOptions { regions: vec!["a:b".into()], ..DemoOptions::default() }, "--regions"),
        (DemoOptions { nodes_per_region: 0, ..DemoOptions::default() }, "--nodes-per-region"),
        (DemoOptions { nodes_per_region: 40, ..DemoOptions::default() }, "99 nodes"),
        (DemoOptions { zones: 27, ..DemoOptions::default() }, "--zones"),
        (DemoOptions { rf: 0, ..DemoOptions::default() }, "--rf"),
        (DemoOptions { base_port: 65000, ..DemoOptions::default() }, "--base-port"),
        (DemoOptions { cluster_id: "a b".into(), ..DemoOptions::default() }, "--cluster-id"),
    ] {
        let err = format!("{:#}", init(&tmp.path().join("c"), &bad).unwrap_err());
        assert!(err.contains(expected), "{expected}: {err}");
    }
    assert!(!tmp.path().join("c").exists());
}
