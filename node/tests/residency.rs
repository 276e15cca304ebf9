//! Data residency over three in-process regions (one node each, rf 1), real RocksDB and mutual-TLS
//! QUIC: restricted keys never reach a disallowed region's storage (checked by the node's own audit
//! and by a raw byte scan of its data directory after a flush), requests arriving there are proxied
//! (or refused under `strict`), unrestricted keys sharing the same partitions still converge
//! everywhere (the redacted positions keep the logs gap-free), causal sessions are not held up by
//! writes their region may not see, quorums count only allowed replicas, and rule changes purge and
//! backfill.

use meridian_client::proto::{ResidencyOp, ResidencyReport, RuleSpec};
use meridian_client::{Client, ClusterOp, Consistency, ErrorCode};
use meridian_server::certs::generate_ca;
use meridian_server::serve::{start, RunningNode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::{free_udp_addr, region_config_in};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const US: usize = 0;
const EU: usize = 1;
const AP: usize = 2;

struct Regions {
    _dir: tempfile::TempDir,
    configs: Vec<meridian_server::config::Config>,
    data_dirs: Vec<PathBuf>,
    nodes: Vec<Option<RunningNode>>,
    clients: Vec<Client>,
}

/// A client of `node` that does not retry (tests see every failure).
async fn client_of(node: &RunningNode) -> Client {
    Client::builder()
        .endpoint(node.client_addr.to_string())
        .ca_cert_file(&node.cert_path)
        .max_retries(0)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

/// Waits until `client`'s node sees `nodes` members alive (itself included).
async fn wait_formed(client: &Client, nodes: usize) {
    eventually("the nodes see each other", || async {
        client
            .cluster(ClusterOp::Status)
            .await
            .is_ok_and(|r| r.members.iter().filter(|m| m.liveness == "alive" || m.liveness == "self").count() == nodes)
    })
    .await;
}

async fn regions() -> Regions {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    let addrs: Vec<SocketAddr> = REGIONS.iter().map(|_| free_udp_addr()).collect();
    let (mut nodes, mut clients, mut data_dirs, mut configs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (region, addr) in REGIONS.iter().zip(&addrs) {
        let mut config = region_config_in(
            dir.path(),
            region,
            &format!("{region}-n1"),
            &format!("{region}-a"),
            *addr,
            &addrs,
            &ca_dir,
        );
        config.peer.rf = 1;
        data_dirs.push(config.data_dir.clone());
        configs.push(config.clone());
        let node = start(config).await.unwrap();
        clients.push(client_of(&node).await);
        nodes.push(Some(node));
    }
    for client in &clients {
        wait_formed(client, 3).await;
    }
    Regions { _dir: dir, configs, data_dirs, nodes, clients }
}

impl Regions {
    async fn stop(mut self) {
        self.clients.clear();
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            tokio::time::timeout(Duration::from_secs(30), node.shutdown()).await.expect("a node shut down in 30 s");
        }
    }

    /// Adds a rule through `via` and waits until every node holds the new rules.
    async fn add_rule(&self, via: usize, spec: RuleSpec) -> u32 {
        let report = self.clients[via].residency(ResidencyOp::Add { rule: spec, position: None }).await.unwrap();
        self.wait_version(report.version).await;
        report.rule_id.unwrap()
    }

    async fn change_rule(&self, via: usize, id: u32, spec: RuleSpec) {
        let report = self.clients[via].residency(ResidencyOp::Change { id, rule: spec }).await.unwrap();
        self.wait_version(report.version).await;
    }

    async fn wait_version(&self, version: u64) {
        for client in &self.clients {
            eventually("the rules reach every node", || async {
                client.residency(ResidencyOp::List).await.is_ok_and(|r| r.version >= version)
            })
            .await;
        }
    }

    /// Waits until `node` has run every purge and backfill it queued.
    async fn wait_changes_done(&self, node: usize) -> ResidencyReport {
        let client = &self.clients[node];
        eventually("purges and backfills complete", || async {
            client.residency(ResidencyOp::List).await.is_ok_and(|r| r.changes.iter().all(|c| c.complete))
        })
        .await;
        client.residency(ResidencyOp::List).await.unwrap()
    }
}

fn rule(prefix: &str, regions: &[&str]) -> RuleSpec {
    RuleSpec {
        namespace: "app".into(),
        prefix: prefix.into(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        replicas_per_region: None,
        home: None,
        strict: false,
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 45 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A marker value and the token a raw scan looks for: random bytes, so RocksDB's LZ4 (4-byte
/// matches) never encodes part of the token as a back-reference, and random guards around it, so
/// a match found on the bytes that follow cannot be extended backwards into the token either.
fn marker() -> (Vec<u8>, Vec<u8>) {
    let random = |n: usize| (0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>();
    let token = random(16);
    ([random(8), token.clone(), random(8)].concat(), token)
}

/// The markers found verbatim in some file under `dir`, with the first file each was found in.
fn markers_in_files(dir: &Path, markers: &[Vec<u8>]) -> Vec<(usize, PathBuf)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                for (i, m) in markers.iter().enumerate() {
                    if !found.iter().any(|(f, _)| *f == i) && bytes.windows(m.len()).any(|w| w == m.as_slice()) {
                        found.push((i, path.clone()));
                    }
                }
            }
        }
    }
    found
}

/// Runs the node's audit with a flush and compaction first; asserts it is clean.
async fn audit_clean(client: &Client, who: &str) {
    let report = client.residency(ResidencyOp::Audit { compact: true }).await.unwrap();
    let audit = report.audit.unwrap();
    assert!(audit.compacted);
    assert_eq!(
        audit.violations_total,
        0,
        "{who}: the audit found {} violations, first: {:?}",
        audit.violations_total,
        audit.violations.iter().take(5).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_keys_stay_in_their_regions_and_everything_else_still_converges() {
    let r = regions().await;
    let eu_only = r.add_rule(US, rule("eu/", &["eu-west"])).await;
    // Restricted and unrestricted keys, interleaved and from every region, so that their records
    // share partitions and origin logs: the unrestricted ones can only converge in us-east and
    // ap-south if the redacted positions keep those logs gap-free.
    let mut markers = Vec::new();
    for i in 0..40 {
        for (n, client) in r.clients.iter().enumerate() {
            let (marker, token) = marker();
            markers.push(token);
            client.set(format!("app/eu/{i}").as_str()).consistency(Consistency::Eventual).add([marker]).await.unwrap();
            client
                .set(format!("app/open/{i}").as_str())
                .consistency(Consistency::Eventual)
                .add([format!("{}-{i}", REGIONS[n])])
                .await
                .unwrap();
        }
    }
    let us_report = r.clients[US].residency(ResidencyOp::List).await.unwrap();
    assert_eq!(us_report.counters.proxied, 40, "us-east proxied its writes: {:?}", us_report.counters);
    // Every region converges on the unrestricted keys (served locally everywhere).
    for (n, client) in r.clients.iter().enumerate() {
        for i in [0, 17, 39] {
            eventually(&format!("app/open/{i} converged in {}", REGIONS[n]), || async {
                client
                    .set(format!("app/open/{i}").as_str())
                    .consistency(Consistency::Eventual)
                    .members()
                    .await
                    .unwrap()
                    .len()
                    == 3
            })
            .await;
        }
    }
    // Restricted keys: read from anywhere (proxied), holding every region's write.
    for client in &r.clients {
        let members = client.set("app/eu/7").consistency(Consistency::Eventual).members().await.unwrap();
        assert_eq!(members.len(), 3, "{members:?}");
    }
    // A causal session that saw an eu-only write is not held up in a region that may never see it.
    let session = r.clients[EU].session().with_consistency(Consistency::Causal);
    let (causal_marker, token) = marker();
    markers.push(token);
    session.set("app/eu/causal").add([causal_marker]).await.unwrap();
    let moved =
        r.clients[AP].resume_session(&session.token().to_string()).unwrap().with_consistency(Consistency::Causal);
    moved.set("app/open/after-causal").add(["x"]).await.expect("not held up by a write ap-south may not hold");
    moved.set("app/open/0").members().await.expect("a causal read is not held up either");

    // The proof: audits clean everywhere, and no marker in the disallowed regions' files.
    for (n, client) in r.clients.iter().enumerate() {
        audit_clean(client, REGIONS[n]).await;
    }
    for n in [US, AP] {
        let found = markers_in_files(&r.data_dirs[n], &markers);
        assert!(found.is_empty(), "{} holds restricted bytes: {found:?}", REGIONS[n]);
    }
    // Positive control: the same scan finds every marker where it lives.
    let found = markers_in_files(&r.data_dirs[EU], &markers);
    assert_eq!(found.len(), markers.len(), "the scan finds every marker in eu-west's files");
    let explain = r.clients[US]
        .residency(ResidencyOp::Explain { key: meridian_client::IntoKey::into_key("app/eu/1").unwrap() })
        .await
        .unwrap()
        .explain
        .unwrap();
    assert_eq!(explain.rule.as_ref().map(|r| r.id), Some(eu_only));
    assert!(!explain.allowed_here && explain.nodes == vec!["eu-west-n1 (eu-west)".to_string()], "{explain:?}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_rules_refuse_and_quorums_count_only_allowed_replicas() {
    let mut r = regions().await;
    let strict = r.add_rule(EU, RuleSpec { strict: true, ..rule("vault/", &["eu-west"]) }).await;
    let refused =
        r.clients[US].set("app/vault/1").consistency(Consistency::Eventual).add(["MRK-STRICT"]).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ResidencyRefused), "{refused}");
    assert!(refused.to_string().contains(&format!("rule {strict}")), "{refused}");
    r.clients[EU].set("app/vault/1").consistency(Consistency::Eventual).add(["MRK-STRICT"]).await.unwrap();
    let counters = r.clients[US].residency(ResidencyOp::List).await.unwrap().counters;
    assert_eq!(counters.refused, 1, "{counters:?}");

    // With us-east and ap-south down, a global quorum has 1 of 3 replicas for an open key, but all
    // of the allowed ones for an eu-only key.
    for n in [US, AP] {
        let node = r.nodes[n].take().unwrap();
        node.shutdown().await;
    }
    let eu = &r.clients[EU];
    let open = eu.counter("app/open/q").consistency(Consistency::Quorum).incr(1).await.unwrap_err();
    assert_eq!(open.code(), Some(ErrorCode::QuorumUnavailable), "{open}");
    eu.counter("app/vault/q").consistency(Consistency::Quorum).incr(1).await.expect("the allowed replicas are all up");
    assert_eq!(eu.counter("app/vault/q").consistency(Consistency::Quorum).get().await.unwrap(), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_purges_and_widening_backfills() {
    let r = regions().await;
    let id = r.add_rule(US, rule("move/", &["eu-west", "us-east"])).await;
    let mut markers = Vec::new();
    for i in 0..30 {
        for n in [US, EU] {
            let (marker, token) = marker();
            markers.push(token);
            r.clients[n]
                .set(format!("app/move/{i}").as_str())
                .consistency(Consistency::Eventual)
                .add([marker])
                .await
                .unwrap();
        }
    }
    // Both allowed regions hold everything before the change.
    for n in [US, EU] {
        eventually("both allowed regions converged", || async {
            r.clients[n].set("app/move/29").consistency(Consistency::Eventual).members().await.unwrap().len() == 2
        })
        .await;
    }
    audit_clean(&r.clients[US], "us-east before narrowing").await;
    let held = markers_in_files(&r.data_dirs[US], &markers);
    assert_eq!(held.len(), markers.len(), "before the change, the scan finds every marker in us-east");
    // Narrow to eu-west: us-east purges.
    let started = std::time::Instant::now();
    r.change_rule(EU, id, rule("move/", &["eu-west"])).await;
    let us = r.wait_changes_done(US).await;
    eprintln!(
        "narrowing: rules everywhere and us-east purged (flush + compaction included) in {:?}",
        started.elapsed()
    );
    assert!(us.changes.iter().any(|c| c.kind == "purge" && c.rule == id), "{:?}", us.changes);
    // After it, none: not in the WAL, not in any SST.
    audit_clean(&r.clients[US], "us-east after narrowing").await;
    let found = markers_in_files(&r.data_dirs[US], &markers);
    assert!(found.is_empty(), "us-east still holds purged bytes: {found:?}");
    // Its reads are proxied now, and see everything.
    assert_eq!(r.clients[US].set("app/move/3").consistency(Consistency::Eventual).members().await.unwrap().len(), 2);
    // Widen to ap-south: it backfills, and then serves the keys locally.
    let started = std::time::Instant::now();
    r.change_rule(US, id, rule("move/", &["eu-west", "ap-south"])).await;
    let ap = r.wait_changes_done(AP).await;
    eprintln!("widening: rules everywhere and ap-south backfilled (256 partitions) in {:?}", started.elapsed());
    assert!(ap.changes.iter().any(|c| c.kind == "backfill" && c.rule == id && c.complete), "{:?}", ap.changes);
    let ap_node = r.nodes[AP].as_ref().unwrap().node.clone();
    for i in 0..30 {
        let key = meridian_client::IntoKey::into_key(format!("app/move/{i}").as_str()).unwrap();
        let held = ap_node.load_entry(&meridian_server::layout::data_key(&key)).unwrap();
        let members = held.and_then(|e| e.read().ok().flatten());
        assert!(members.is_some(), "ap-south holds app/move/{i} after the backfill");
    }
    audit_clean(&r.clients[AP], "ap-south after widening").await;
    audit_clean(&r.clients[US], "us-east after widening").await;
    let log = std::fs::read_to_string(r.data_dirs[US].join("audit.log")).unwrap();
    assert!(log.contains("\"purge\""), "{log}");
    assert_eq!(markers_in_files(&r.data_dirs[AP], &markers).len(), markers.len(), "ap-south holds every marker");
    r.stop().await;
}

/// Narrows rule `id` to `regions` through `via`, retrying while it is refused because a region
/// keeping the keys is still catching up; the refusals seen.
async fn narrow_when_allowed(r: &Regions, via: usize, id: u32, regions: &[&str]) -> Vec<String> {
    let mut refusals = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match r.clients[via].residency(ResidencyOp::Change { id, rule: rule("hop/", regions) }).await {
            Ok(report) => {
                r.wait_version(report.version).await;
                return refusals;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::ResidencyRefused), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "narrowing still refused after 60 s: {e}");
                refusals.push(e.to_string());
            }
        }
    }
}

/// Widening a rule and narrowing it at once must not purge the last complete copy: the narrowing
/// waits for the region that keeps the keys to finish its backfill, and is refused while a node
/// there cannot confirm it (here: it is down). Every key stays readable. Negative control (run by
/// hand): without `keepers_ready` the narrowing is accepted while eu-west is down, us-east purges,
/// and eu-west's backfill finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_then_narrowing_at_once_never_purges_the_last_copy() {
    let mut r = regions().await;
    let id = r.add_rule(US, rule("hop/", &["us-east"])).await;
    let mut values = Vec::new();
    for i in 0..30 {
        let (value, _) = marker();
        r.clients[US]
            .set(format!("app/hop/{i}").as_str())
            .consistency(Consistency::Eventual)
            .add([value.clone()])
            .await
            .unwrap();
        values.push(value);
    }
    // eu-west goes down; the rule is widened to it and narrowed to it at once.
    r.nodes[EU].take().unwrap().shutdown().await;
    let widened =
        r.clients[US].residency(ResidencyOp::Change { id, rule: rule("hop/", &["us-east", "eu-west"]) }).await.unwrap();
    let refused =
        r.clients[US].residency(ResidencyOp::Change { id, rule: rule("hop/", &["eu-west"]) }).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ResidencyRefused), "{refused}");
    assert!(refused.to_string().contains("eu-west-n1 (eu-west) could not be asked"), "{refused}");
    let listed = r.clients[US].residency(ResidencyOp::List).await.unwrap();
    assert_eq!(listed.version, widened.version, "the refused narrowing changed nothing");
    // eu-west comes back: the narrowing is refused until its backfill is done, then accepted.
    let restarted = start(r.configs[EU].clone()).await.unwrap();
    r.clients[EU] = client_of(&restarted).await;
    let eu_node = restarted.node.clone();
    r.nodes[EU] = Some(restarted);
    let refusals = narrow_when_allowed(&r, US, id, &["eu-west"]).await;
    eprintln!("narrowing refused {} times after eu-west restarted; last: {:?}", refusals.len(), refusals.last());
    let us = r.wait_changes_done(US).await;
    assert!(us.changes.iter().any(|c| c.kind == "purge" && c.rule == id && c.complete), "{:?}", us.changes);
    for (i, value) in values.iter().enumerate() {
        let key = meridian_client::IntoKey::into_key(format!("app/hop/{i}").as_str()).unwrap();
        let held = eu_node.load_entry(&meridian_server::layout::data_key(&key)).unwrap();
        assert!(held.is_some(), "eu-west holds app/hop/{i} after the narrowing");
        let members = r.clients[US]
            .set(format!("app/hop/{i}").as_str())
            .consistency(Consistency::Eventual)
            .members()
            .await
            .unwrap();
        assert_eq!(members, vec![value.clone()], "app/hop/{i} read through us-east (proxied to eu-west)");
    }
    // With every node up, widening to ap-south and narrowing to it at once loses nothing either.
    let widened = r.clients[EU]
        .residency(ResidencyOp::Change { id, rule: rule("hop/", &["eu-west", "ap-south"]) })
        .await
        .unwrap();
    r.wait_version(widened.version).await;
    narrow_when_allowed(&r, EU, id, &["ap-south"]).await;
    r.wait_changes_done(EU).await;
    let ap_node = r.nodes[AP].as_ref().unwrap().node.clone();
    for i in 0..30 {
        let key = meridian_client::IntoKey::into_key(format!("app/hop/{i}").as_str()).unwrap();
        assert!(
            ap_node.load_entry(&meridian_server::layout::data_key(&key)).unwrap().is_some(),
            "ap-south holds app/hop/{i}"
        );
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_are_refused_and_change_nothing() {
    let r = regions().await;
    let us = &r.clients[US];
    let id = r.add_rule(US, rule("ok/", &["us-east"])).await;
    let before = us.residency(ResidencyOp::List).await.unwrap();
    let cases: Vec<(ResidencyOp, &str)> = vec![
        (ResidencyOp::Add { rule: rule("a/", &["mars"]), position: None }, "unknown region \"mars\""),
        (ResidencyOp::Add { rule: rule("a/", &[]), position: None }, "no regions"),
        (
            ResidencyOp::Add {
                rule: RuleSpec { home: Some("ap-south".into()), ..rule("a/", &["us-east"]) },
                position: None,
            },
            "home",
        ),
        (
            ResidencyOp::Add {
                rule: RuleSpec { namespace: String::new(), ..rule("a/", &["us-east"]) },
                position: None,
            },
            "namespace",
        ),
        (ResidencyOp::Change { id, rule: rule("ok/", &["eu-west"]) }, "no allowed home"),
        (ResidencyOp::Remove { id: 999 }, "no rule with id 999"),
    ];
    for (op, expected) in cases {
        let error = us.residency(op.clone()).await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::BadRequest), "{op:?}: {error}");
        assert!(error.to_string().contains(expected), "{op:?}: {error}");
    }
    let after = us.residency(ResidencyOp::List).await.unwrap();
    assert_eq!((after.version, after.rules), (before.version, before.rules));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_another_region_than_its_certificate_is_refused() {
    use meridian_crdt::{Hlc, NodeId};
    use meridian_replication::{Member, MemberState, MemberVersion, Membership};
    use meridian_server::peer::protocol::{decode_reply, encode_request, PeerMessageV1};
    use meridian_server::peer::{PeerEndpoint, PeerTlsConfig, PeerTransportConfig};

    let r = regions().await;
    // Mallory holds a genuine certificate of this cluster, issued for eu-west…
    let ca_dir = r._dir.path().join("ca");
    let mallory = region_config_in(r._dir.path(), "eu-west", "mallory", "eu-west-a", free_udp_addr(), &[], &ca_dir);
    let tls = PeerTlsConfig::from_files(
        mallory.peer.ca.as_deref().unwrap(),
        mallory.peer.cert.as_deref().unwrap(),
        mallory.peer.key.as_deref().unwrap(),
        "test",
    )
    .unwrap();
    let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), tls, PeerTransportConfig::default()).unwrap();
    let us_east = r.nodes[US].as_ref().unwrap().peer_addr.unwrap();
    let connection = endpoint.connect(us_east, None).await.unwrap();
    // …but gossips a membership entry saying it is in us-east, where eu-only keys may not go but
    // us-east-only keys would.
    let me = NodeId(0xbad);
    let mut membership = Membership::new();
    let addr = endpoint.local_addr().unwrap().to_string();
    let claim = Member {
        name: "mallory".into(),
        region: "us-east".into(),
        zone: "us-east-a".into(),
        peer_addr: addr.clone(),
        client_addr: addr.clone(),
        http_addr: addr,
        state: MemberState::Active,
        version: MemberVersion { incarnation: 1, hlc: Hlc { wall_ms: 1, logical: 0 } },
    };
    membership.upsert(me, claim).unwrap();
    let request = encode_request(me, PeerMessageV1::Gossip { membership, handoff: Vec::new() });
    let reply = connection.request(request, Duration::from_secs(10)).await.unwrap();
    let refused = decode_reply(&reply).expect_err("a lying membership entry is refused").to_string();
    assert!(refused.contains("certificate was issued for region eu-west"), "{refused}");
    // Nothing of the claim was merged, and the refusal is counted.
    let members = r.clients[US].cluster(ClusterOp::Status).await.unwrap().members;
    assert!(members.iter().all(|m| m.name != "mallory"), "{members:?}");
    let counters = r.clients[US].residency(ResidencyOp::List).await.unwrap().counters;
    assert_eq!(counters.rejected, 1, "{counters:?}");
    connection.close();
    r.stop().await;
}

/// A replica that was down while a rule widened to its region restarts with a gap in its log that
/// its region's other replica can fill only with redactions (received before the widening). Those
/// stand in for the records once its own backfill covers them, so it catches up on every origin —
/// without them it would wait forever on the partitions whose cross-region puller it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_while_its_region_was_allowed_catches_up() {
    use meridian_replication::antientropy::{PartitionId, SyncStore as _};
    use meridian_server::store::sync_store::EngineSyncStore;

    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
    // us-east-n1, eu-west-n1, eu-west-n2; rf 2, so both eu-west nodes hold every partition.
    let names = [("us-east", "us-east-n1"), ("eu-west", "eu-west-n1"), ("eu-west", "eu-west-n2")];
    let addrs: Vec<SocketAddr> = names.iter().map(|_| free_udp_addr()).collect();
    let configs: Vec<_> = names
        .iter()
        .zip(&addrs)
        .map(|((region, name), addr)| {
            let mut config = region_config_in(dir.path(), region, name, &format!("{region}-a"), *addr, &addrs, &ca_dir);
            config.peer.rf = 2;
            config
        })
        .collect();
    let mut nodes = Vec::new();
    for config in &configs {
        nodes.push(Some(start(config.clone()).await.unwrap()));
    }
    let us = client_of(nodes[0].as_ref().unwrap()).await;
    for node in nodes.iter().flatten() {
        wait_formed(&client_of(node).await, 3).await;
    }
    let report = us.residency(ResidencyOp::Add { rule: rule("late/", &["us-east"]), position: None }).await.unwrap();
    let id = report.rule_id.unwrap();
    let eu1 = client_of(nodes[1].as_ref().unwrap()).await;
    eventually("eu-west-n1 has the rule", || async {
        eu1.residency(ResidencyOp::List).await.is_ok_and(|r| r.version >= report.version)
    })
    .await;
    // eu-west-n2 goes down; us-east writes restricted and open keys (eu-west-n1 gets redactions).
    nodes[2].take().unwrap().shutdown().await;
    for i in 0..40 {
        us.set(format!("app/late/{i}").as_str()).consistency(Consistency::Eventual).add([marker().0]).await.unwrap();
        us.set(format!("app/open/{i}").as_str()).consistency(Consistency::Eventual).add(["x"]).await.unwrap();
    }
    let us_node = nodes[0].as_ref().unwrap().node.clone();
    let eu1_node = nodes[1].as_ref().unwrap().node.clone();
    let vv_of = |node: &std::sync::Arc<meridian_server::api::Node>, p: u16| {
        EngineSyncStore::new(node.engine().clone(), node.id()).partition_vv(PartitionId(p)).unwrap()
    };
    let caught_up = |node: &std::sync::Arc<meridian_server::api::Node>| {
        (0..meridian_server::layout::PARTITIONS)
            .all(|p| vv_of(node, p).get(us_node.id()) >= vv_of(&us_node, p).get(us_node.id()))
    };
    eventually("eu-west-n1 caught up with us-east", || async { caught_up(&eu1_node) }).await;
    // Widen to eu-west: eu-west-n1 backfills; then eu-west-n2 comes back.
    let widened = us.residency(ResidencyOp::Change { id, rule: rule("late/", &["us-east", "eu-west"]) }).await.unwrap();
    eventually("eu-west-n1 backfilled", || async {
        eu1.residency(ResidencyOp::List)
            .await
            .is_ok_and(|r| r.version >= widened.version && r.changes.iter().all(|c| c.complete))
    })
    .await;
    let restarted = start(configs[2].clone()).await.unwrap();
    let eu2_node = restarted.node.clone();
    nodes[2] = Some(restarted);
    eventually("eu-west-n2 caught up with us-east on every partition", || async { caught_up(&eu2_node) }).await;
    // Its vector alone is not enough: until it learns of the widening it takes eu-west-n1's
    // redactions as they are (the rule then still excluded it); its own backfill of the widened
    // rule then brings the states.
    let eu2 = client_of(nodes[2].as_ref().unwrap()).await;
    eventually("eu-west-n2 backfilled", || async {
        eu2.residency(ResidencyOp::List)
            .await
            .is_ok_and(|r| r.version >= widened.version && r.changes.iter().all(|c| c.complete))
    })
    .await;
    for i in 0..40 {
        let key = meridian_client::IntoKey::into_key(format!("app/late/{i}").as_str()).unwrap();
        assert!(
            eu2_node.load_entry(&meridian_server::layout::data_key(&key)).unwrap().is_some(),
            "eu-west-n2 holds app/late/{i}"
        );
    }
    drop((us, eu1, eu2));
    for node in nodes.into_iter().flatten() {
        tokio::time::timeout(Duration::from_secs(30), node.shutdown()).await.expect("a node shut down in 30 s");
    }
}
