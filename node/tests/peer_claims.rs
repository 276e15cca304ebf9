//! Peers cannot lie about others: a node holding a genuine certificate of the cluster ("mallory")
//! speaks the peer protocol directly to a running node and tries to claim what it may not — another
//! node's id, a forged membership record of another node, records of an origin that is not a
//! member, a timestamp far in the future, residency rules naming a region nobody is in, a relay from
//! its own region — and a revoked certificate tries to connect at all. Each is refused with a typed
//! reason and counted in `meridian_peer_refused_total{reason}` (revocations in
//! `meridian_peer_connections_refused_total{reason="revoked"}`), and nothing of it is stored.
//!
//! Nor about what they hold: a peer is noted holding what a vector comparison proved, under its own
//! id only, and the node's log is then cut below it (`store/stability.rs`).
//!
//! The counters are process-wide (every node of this test binary shares one recorder), so each test
//! owns one `reason` label and compares it before and after.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian_client::proto::{Key, Operation, RequestV1, Rule, RuleSpec};
use meridian_crdt::{Hlc, Mutation, NodeId};
use meridian_replication::antientropy::{LogRecord as SyncRecord, PartitionId, SyncStore as _};
use meridian_replication::residency::RuleSet;
use meridian_replication::{Member, MemberState, MemberVersion, Membership};
use meridian_server::certs::generate_ca;
use meridian_server::certs::revocation::fingerprint;
use meridian_server::config::Config;
use meridian_server::peer::protocol::{
    combined_digest, decode_reply, encode_request, partition_bitmap, PeerCallError, PeerMessageV1, PeerReplyV1,
};
use meridian_server::peer::{codes, PeerConnection, PeerEndpoint, PeerError, PeerTlsConfig, PeerTransportConfig};
use meridian_server::serve::RunningNode;

mod common;
use common::{bounded, free_udp_addr, region_config_in, start_memory};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One running node (`n1`, region eu-west) and the directory holding the cluster CA.
struct Setup {
    dir: tempfile::TempDir,
    node: RunningNode,
}

impl Setup {
    async fn start(adjust: impl FnOnce(&mut Config, &Path)) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        generate_ca("test").unwrap().write(&ca_dir, false).unwrap();
        let mut config = region_config_in(dir.path(), "eu-west", "n1", "eu-west-a", free_udp_addr(), &[], &ca_dir);
        adjust(&mut config, dir.path());
        let node = start_memory(config).await;
        Setup { dir, node }
    }

    fn peer_addr(&self) -> SocketAddr {
        self.node.peer_addr.unwrap()
    }

    /// A peer endpoint holding a genuine node certificate of the cluster, issued for `name` in
    /// `region`, and the PEM path of that certificate.
    fn certified(&self, region: &str, name: &str) -> (PeerEndpoint, std::path::PathBuf) {
        let ca_dir = self.dir.path().join("ca");
        let config =
            region_config_in(self.dir.path(), region, name, &format!("{region}-a"), free_udp_addr(), &[], &ca_dir);
        let tls = PeerTlsConfig::from_files(
            config.peer.ca.as_deref().unwrap(),
            config.peer.cert.as_deref().unwrap(),
            config.peer.key.as_deref().unwrap(),
            "test",
        )
        .unwrap();
        let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), tls, PeerTransportConfig::default()).unwrap();
        (endpoint, config.peer.cert.unwrap())
    }

    async fn connect(&self, endpoint: &PeerEndpoint) -> PeerConnection {
        bounded("connect to the node", endpoint.connect(self.peer_addr(), None)).await.unwrap()
    }

    async fn stop(self) {
        bounded("shut the node down", self.node.shutdown()).await;
    }
}

/// Sends `message` as `from` and decodes the answer.
async fn ask(connection: &PeerConnection, from: NodeId, message: PeerMessageV1) -> Result<PeerReplyV1, PeerCallError> {
    let reply = bounded("a peer request", connection.request(encode_request(from, message), TIMEOUT)).await.unwrap();
    decode_reply(&reply)
}

/// The value of `meridian_peer_refused_total{reason}` (or another counter with a `reason` label).
fn counter(name: &str, reason: &str) -> u64 {
    let text = meridian_server::metrics_export::prometheus().render();
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn refused(name: &str) -> impl Fn() -> u64 + '_ {
    move || counter("meridian_peer_refused_total", name)
}

fn member(name: &str, region: &str, addr: &str, at: u64) -> Member {
    Member {
        name: name.into(),
        region: region.into(),
        zone: format!("{region}-a"),
        peer_addr: addr.into(),
        client_addr: addr.into(),
        http_addr: addr.into(),
        state: MemberState::Active,
        version: MemberVersion { incarnation: 1, hlc: Hlc { wall_ms: at, logical: 0 } },
    }
}

fn one(id: NodeId, member: Member) -> Membership {
    let mut membership = Membership::new();
    membership.upsert(id, member).unwrap();
    membership
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A well-formed record the node would store: its own first write of `app/k`, re-labelled.
async fn a_record(node: &RunningNode) -> (u16, SyncRecord) {
    let key = Key::new("app", "k").unwrap();
    let request = RequestV1 {
        consistency: None,
        causal_token: None,
        timeout_ms: 0,
        op: Operation::Write { key: key.clone(), mutation: Mutation::CounterAdd { amount: 1 }, idempotency_id: None },
    };
    let _ = node.node.clone().execute_forwarded(request).await.expect("a local write");
    let partition = meridian_server::layout::partition_of(&meridian_server::layout::data_key(&key));
    let store = node.node.replica().sync_store();
    let records = store.read_log(PartitionId(partition), node.node.id(), 0, 10, 1 << 20).unwrap();
    (partition, records.into_iter().next().expect("the write's record"))
}

fn push(partition: u16, record: SyncRecord, relay: bool) -> PeerMessageV1 {
    PeerMessageV1::Push { partition, records: vec![record], reports: Vec::new(), relay }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_another_node_as_its_sender_is_refused() {
    let s = Setup::start(|_, _| {}).await;
    let (mallory, _) = s.certified("eu-west", "mallory");
    let connection = s.connect(&mallory).await;
    let before = refused("from_mismatch")();
    // The node's own id is known under its name, n1: mallory cannot speak as it.
    let err = ask(&connection, s.node.node.id(), PeerMessageV1::Hello).await.unwrap_err().to_string();
    assert!(err.contains("which is \"n1\", not the certified \"mallory\""), "{err}");
    assert_eq!(refused("from_mismatch")(), before + 1);
    // Under an id of its own (a first contact) it is answered.
    assert!(matches!(ask(&connection, NodeId(0xbad), PeerMessageV1::Hello).await, Ok(PeerReplyV1::Hello { .. })));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_noted_holding_only_what_a_vector_comparison_proved() {
    let s = Setup::start(|_, _| {}).await;
    let (partition, _) = a_record(&s.node).await;
    let (peer, _) = s.certified("eu-west", "p2");
    let connection = s.connect(&peer).await;
    let (from, own) = (NodeId(0x5eed), s.node.node.id());
    let store = s.node.node.replica().sync_store();
    let ours = store.partition_vv(PartitionId(partition)).unwrap();
    assert!(ours.get(own) > 0);
    let stable = || store.peer_vectors().stable(partition, &[from], &ours);
    let digest = combined_digest(&meridian_server::region::peer_sync::vv_digests(&store, &[partition]).unwrap());
    let compare = |digest| PeerMessageV1::VvCombined { partitions: partition_bitmap(&[partition]), digest };
    // Vectors that differ prove nothing.
    let reply = ask(&connection, from, compare(digest ^ 1)).await.unwrap();
    assert!(matches!(&reply, PeerReplyV1::VvDigests(digests) if digests.len() == 1), "{reply:?}");
    assert_eq!(stable(), None);
    // Under another node's id, the comparison is refused before anything is noted.
    assert!(ask(&connection, own, compare(digest)).await.is_err());
    assert_eq!(store.peer_vectors().stable(partition, &[own], &ours), None);
    // Vectors that match: the peer holds what this node holds.
    let reply = ask(&connection, from, compare(digest)).await.unwrap();
    assert!(matches!(&reply, PeerReplyV1::VvDigests(digests) if digests.is_empty()), "{reply:?}");
    assert_eq!(stable().expect("the peer's report").upto(own), ours.get(own));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_membership_record_of_another_node_is_refused() {
    let s = Setup::start(|_, _| {}).await;
    // Carol, a genuine member, announces herself.
    let (carol, _) = s.certified("eu-west", "carol");
    let carol_id = NodeId(0xca);
    let carol_record = member("carol", "eu-west", "127.0.0.1:1111", 10);
    let to_carol = s.connect(&carol).await;
    let gossip = |membership| PeerMessageV1::Gossip { membership, handoff: Vec::new() };
    ask(&to_carol, carol_id, gossip(one(carol_id, carol_record.clone()))).await.expect("carol joins");

    let (mallory, _) = s.certified("eu-west", "mallory");
    let connection = s.connect(&mallory).await;
    let me = NodeId(0xbad);
    let honest = one(me, member("mallory", "eu-west", "127.0.0.1:2222", 10));
    let before = refused("forged_member")();
    let forgeries = [
        // Carol moved to another region…
        Member {
            region: "us-east".into(),
            zone: "us-east-a".into(),
            ..member("carol", "us-east", "127.0.0.1:1111", 20)
        },
        // …or to mallory's address…
        member("carol", "eu-west", "127.0.0.1:2222", 20),
    ];
    for forged in forgeries {
        let mut membership = honest.clone();
        membership.merge(&one(carol_id, forged));
        let err = ask(&connection, me, gossip(membership)).await.unwrap_err().to_string();
        assert!(err.contains("only the node itself may"), "{err}");
    }
    // …or carol's name under another id.
    let mut membership = honest.clone();
    membership.merge(&one(NodeId(0xc0), member("carol", "eu-west", "127.0.0.1:2222", 20)));
    let err = ask(&connection, me, gossip(membership)).await.unwrap_err().to_string();
    assert!(err.contains("which is node"), "{err}");
    assert_eq!(refused("forged_member")(), before + 3);

    // Nothing of it was merged: carol's record is hers, mallory is not even known.
    let cluster = s.node.node.coordinator().unwrap().cluster().clone();
    assert_eq!(cluster.member(carol_id), Some(carol_record));
    assert_eq!(cluster.member(NodeId(0xc0)), None);
    assert_eq!(cluster.member(me), None);
    // Honest gossip still works: mallory's own record, and carol's drained by an operator.
    let mut membership = honest.clone();
    let drained = Member {
        state: MemberState::Draining,
        version: MemberVersion { incarnation: 1, hlc: Hlc { wall_ms: 30, logical: 0 } },
        ..member("carol", "eu-west", "127.0.0.1:1111", 30)
    };
    membership.merge(&one(carol_id, drained));
    assert!(matches!(ask(&connection, me, gossip(membership)).await, Ok(PeerReplyV1::Gossip { .. })));
    assert_eq!(cluster.member(carol_id).unwrap().state, MemberState::Draining);
    assert!(cluster.member(me).is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_an_origin_that_is_not_a_member_are_refused() {
    let s = Setup::start(|_, _| {}).await;
    let (partition, record) = a_record(&s.node).await;
    let (mallory, _) = s.certified("eu-west", "mallory");
    let connection = s.connect(&mallory).await;
    let me = NodeId(0xbad);
    let stranger = NodeId(0xdead);
    let before = refused("unknown_origin")();
    let forged = SyncRecord { origin: stranger, seq: 1, ..record.clone() };
    let err = ask(&connection, me, push(partition, forged.clone(), false)).await.unwrap_err().to_string();
    assert!(err.contains("not a member of the cluster"), "{err}");
    let batch = PeerMessageV1::Replicate { partition, records: vec![forged] };
    assert!(ask(&connection, me, batch).await.is_err());
    assert_eq!(refused("unknown_origin")(), before + 2);
    let store = s.node.node.replica().sync_store();
    assert_eq!(store.partition_vv(PartitionId(partition)).unwrap().get(stranger), 0, "nothing stored");
    // The sender's own records are taken, even before its membership record arrived.
    let own = SyncRecord { origin: me, seq: 1, ..record };
    assert!(matches!(ask(&connection, me, push(partition, own, false)).await, Ok(PeerReplyV1::Applied)));
    assert_eq!(store.partition_vv(PartitionId(partition)).unwrap().get(me), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_from_the_nodes_own_region_is_refused() {
    let s = Setup::start(|_, _| {}).await;
    let (partition, record) = a_record(&s.node).await;
    let (mallory, _) = s.certified("eu-west", "mallory");
    let connection = s.connect(&mallory).await;
    let me = NodeId(0xbad);
    let before = refused("forged_relay")();
    let own = SyncRecord { origin: me, seq: 1, ..record };
    let err = ask(&connection, me, push(partition, own, true)).await.unwrap_err().to_string();
    assert!(err.contains("this node's own"), "{err}");
    assert_eq!(refused("forged_relay")(), before + 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timestamp_beyond_the_drift_bound_is_refused() {
    let s = Setup::start(|config, _| config.max_clock_drift_ms = 5_000).await;
    let (partition, record) = a_record(&s.node).await;
    let (mallory, _) = s.certified("eu-west", "mallory");
    let connection = s.connect(&mallory).await;
    let me = NodeId(0xbad);
    let before = refused("clock_drift")();
    let future = Hlc { wall_ms: now_ms() + 3_600_000, logical: 0 }.pack();
    let forged = SyncRecord { origin: me, seq: 1, hlc: future, ..record.clone() };
    let err = ask(&connection, me, push(partition, forged, false)).await.unwrap_err().to_string();
    assert!(err.contains("ahead of this node's clock"), "{err}");
    assert_eq!(refused("clock_drift")(), before + 1);
    let store = s.node.node.replica().sync_store();
    assert_eq!(store.partition_vv(PartitionId(partition)).unwrap().get(me), 0, "nothing stored");
    // Within the bound it is taken.
    let near = Hlc { wall_ms: now_ms() + 1_000, logical: 0 }.pack();
    let fine = SyncRecord { origin: me, seq: 1, hlc: near, ..record };
    assert!(matches!(ask(&connection, me, push(partition, fine, false)).await, Ok(PeerReplyV1::Applied)));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_rules_naming_an_unknown_region_are_refused() {
    let s = Setup::start(|_, _| {}).await;
    let (mallory, _) = s.certified("eu-west", "mallory");
    let connection = s.connect(&mallory).await;
    let me = NodeId(0xbad);
    let spec = |regions: &[&str]| RuleSpec {
        namespace: "app".into(),
        prefix: String::new(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        replicas_per_region: None,
        home: None,
        strict: false,
    };
    let rules = |regions: &[&str]| RuleSet {
        version: 7,
        author: me.0,
        next_id: 2,
        rules: vec![Rule { id: 1, spec: spec(regions) }],
    };
    let before = refused("unknown_region_rules")();
    let err = ask(&connection, me, PeerMessageV1::Residency { rules: rules(&["mars"]) }).await.unwrap_err().to_string();
    assert!(err.contains("unknown regions [\"mars\"]"), "{err}");
    assert_eq!(refused("unknown_region_rules")(), before + 1);
    assert_eq!(s.node.node.replica().residency().rules().version, 0, "not adopted");
    // Rules naming the cluster's regions are adopted.
    let reply = ask(&connection, me, PeerMessageV1::Residency { rules: rules(&["eu-west"]) }).await.unwrap();
    assert!(matches!(reply, PeerReplyV1::Residency { rules } if rules.version == 7));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_at_the_handshake_and_on_open_connections() {
    let s = Setup::start(|config, dir| {
        let list = dir.join("revoked.txt");
        std::fs::write(&list, "# revoked node certificates\n").unwrap();
        config.peer.revoked = Some(list);
    })
    .await;
    let (eve, eve_cert) = s.certified("eu-west", "eve");
    let open = s.connect(&eve).await;
    let me = NodeId(0xe);
    assert!(ask(&open, me, PeerMessageV1::Hello).await.is_ok(), "not revoked yet");

    // The operator revokes eve's certificate: the line `meridian certs fingerprint` prints.
    let pem = std::fs::read(&eve_cert).unwrap();
    let der = meridian_server::certs::certs_from_pem(&pem, "eve").unwrap().remove(0);
    let list = s.dir.path().join("revoked.txt");
    std::fs::write(&list, format!("# revoked node certificates\n{}  # eve, key lost\n", fingerprint(&der))).unwrap();
    let before = counter("meridian_peer_connections_refused_total", "revoked");

    // A new connection is refused at the handshake with the revocation code (eve's side completes
    // its handshake first, so the refusal may reach it as the close of its first request)…
    let err = match bounded("connect", eve.connect(s.peer_addr(), None)).await {
        Err(e) => e,
        Ok(connection) => bounded("a request", connection.request(encode_request(me, PeerMessageV1::Hello), TIMEOUT))
            .await
            .unwrap_err(),
    };
    match &err {
        PeerError::RefusedByPeer { code, reason, .. } => {
            assert_eq!(*code, u64::from(codes::CLOSE_REVOKED), "{err}");
            assert!(reason.contains("revoked"), "{err}");
        }
        other => panic!("expected a refusal by the peer, got {other}"),
    }
    // …and the connection opened before is cut at its next request.
    let cut = bounded("a request", open.request(encode_request(me, PeerMessageV1::Hello), TIMEOUT)).await;
    assert!(cut.is_err(), "{cut:?}");
    assert!(counter("meridian_peer_connections_refused_total", "revoked") >= before + 2);
    s.stop().await;
}
