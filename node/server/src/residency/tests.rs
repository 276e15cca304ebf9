//! The node-side residency checks, on an in-memory engine.

use super::*;
use crate::storage::MemoryEngine;
use meridian_client::proto::RuleSpec;
use std::collections::BTreeSet;

fn residency_in(region: &str, regions: &[&str]) -> Residency {
    let residency = Residency::open(Arc::new(MemoryEngine::new()), region, "n1", None).unwrap();
    let known: BTreeSet<String> = ["us-east", "eu-west", "ap-south"].map(String::from).into();
    let spec = RuleSpec {
        namespace: "app".into(),
        prefix: "eu/".into(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        replicas_per_region: None,
        home: None,
        strict: false,
    };
    let (rules, _) = RuleSet::default().with_added(spec, None, 1, &known).unwrap();
    assert!(residency.adopt(&rules).unwrap());
    residency
}

fn key(name: &str) -> Vec<u8> {
    crate::layout::data_key(&meridian_client::proto::Key { namespace: "app".into(), name: name.into() })
}

fn record(origin: u64, seq: u64, name: &str) -> SyncRecord {
    SyncRecord { origin: NodeId(origin), seq, key: key(name), delta: b"MARKER".to_vec(), hlc: seq << 16 }
}

#[test]
fn records_for_a_disallowed_region_carry_no_key_or_value() {
    let here = residency_in("eu-west", &["eu-west"]);
    let out = here.for_region("us-east", vec![record(1, 1, "eu/a"), record(1, 2, "us/b")]);
    assert_eq!(out.len(), 2);
    assert!(out[0].key.is_empty() && !out[0].delta.windows(6).any(|w| w == b"MARKER"));
    assert_eq!(redaction_of(&out[0]), Some(1));
    assert_eq!((out[0].origin, out[0].seq, out[0].hlc), (NodeId(1), 1, 1 << 16), "the position is kept");
    assert_eq!(out[1], record(1, 2, "us/b"), "unrestricted keys go as they are");
    // An allowed region gets the record itself.
    assert_eq!(here.for_region("eu-west", vec![record(1, 1, "eu/a")]), vec![record(1, 1, "eu/a")]);
}

#[test]
fn a_redaction_stands_in_for_a_record_the_receiver_may_hold_only_once_a_backfill_covers_it() {
    let here = residency_in("eu-west", &["eu-west"]);
    let redaction = redacted(NodeId(1), 5, 5 << 16, 1);
    // Redactions carry nothing of the key: they go anywhere, the receiver decides.
    assert_eq!(here.for_region("eu-west", vec![redaction.clone()]), vec![redaction.clone()]);
    // Received here (allowed), uncovered: refused with that origin's later records, and a
    // backfill of the rule in the partition is asked for.
    assert_eq!(
        here.screen_incoming(7, &[redaction.clone(), record(1, 6, "us/b"), record(2, 1, "us/c")]),
        vec![record(2, 1, "us/c")]
    );
    assert_eq!(here.take_wanted(), vec![(1, 7)]);
    // A backfill whose source had seen origin 1 up to 4 does not cover seq 5; up to 5 does.
    here.note_covered(1, 7, &[(NodeId(1), 4)].into_iter().collect()).unwrap();
    assert!(here.screen_incoming(7, std::slice::from_ref(&redaction)).is_empty());
    here.note_covered(1, 7, &[(NodeId(1), 5)].into_iter().collect()).unwrap();
    assert_eq!(here.screen_incoming(7, std::slice::from_ref(&redaction)), vec![redaction.clone()]);
    assert!(here.screen_incoming(8, std::slice::from_ref(&redaction)).is_empty(), "coverage is per partition");
    // A disallowed region takes it as it is.
    let there = residency_in("us-east", &["eu-west"]);
    assert_eq!(there.screen_incoming(7, std::slice::from_ref(&redaction)), vec![redaction]);
}

#[test]
fn a_receiver_stores_a_disallowed_record_redacted_and_counts_it() {
    let there = residency_in("us-east", &["eu-west"]);
    let out = there.screen_incoming(0, &[record(1, 1, "eu/a")]);
    assert_eq!(out, vec![redacted(NodeId(1), 1, 1 << 16, 1)]);
    assert_eq!(there.counters().snapshot().rejected, 1);
}

#[test]
fn requests_in_a_disallowed_region_are_proxied_or_refused() {
    let there = residency_in("us-east", &["eu-west"]);
    assert!(matches!(there.decide(&key("eu/a")), Decision::Proxy(_)));
    assert_eq!(there.decide(&key("us/a")), Decision::Serve);
    let here = residency_in("eu-west", &["eu-west"]);
    assert_eq!(here.decide(&key("eu/a")), Decision::Serve);
    let mut strict = (*there.rules()).clone();
    strict.rules[0].spec.strict = true;
    strict.version += 1;
    there.adopt(&strict).unwrap();
    assert!(matches!(there.decide(&key("eu/a")), Decision::Refuse(_)));
}

#[test]
fn adopting_a_narrower_rule_queues_a_purge_and_a_wider_one_a_backfill() {
    let there = residency_in("us-east", &["eu-west", "us-east"]);
    assert!(there.changes().iter().all(|c| c.kind != "purge"));
    let known: BTreeSet<String> = ["us-east", "eu-west", "ap-south"].map(String::from).into();
    let mut spec = there.rules().rules[0].spec.clone();
    spec.regions = vec!["eu-west".into()];
    let narrowed = there.rules().with_changed(1, spec.clone(), 1, &known).unwrap();
    there.adopt(&narrowed).unwrap();
    assert!(there.changes().iter().any(|c| c.kind == "purge" && c.rule == 1));
    spec.regions = vec!["eu-west".into(), "us-east".into()];
    let widened = there.rules().with_changed(1, spec, 1, &known).unwrap();
    there.adopt(&widened).unwrap();
    let backfill = there.changes().into_iter().find(|c| c.kind == "backfill").unwrap();
    assert_eq!(backfill.rule, 1);
    assert!(!there.adopt(&narrowed).unwrap(), "an older version is ignored");
}

#[test]
fn an_empty_key_that_is_not_a_redaction_is_refused_as_malformed() {
    use crate::store::sync_store::{EngineSyncStore, SyncStoreError};
    use meridian_replication::antientropy::{PartitionId, SyncStore as _};
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let mut store = EngineSyncStore::new(engine, NodeId(9));
    let bogus = SyncRecord { origin: NodeId(1), seq: 1, key: Vec::new(), delta: vec![0xff; 40], hlc: 1 };
    let refused = store.apply_remote(PartitionId(0), &[bogus]).unwrap_err();
    assert!(matches!(refused, SyncStoreError::Malformed { .. }), "{refused}");
    // A real redaction is stored as such and raises the vector.
    store.apply_remote(PartitionId(0), &[redacted(NodeId(1), 1, 1 << 16, 3)]).unwrap();
    assert_eq!(store.partition_vv(PartitionId(0)).unwrap().get(NodeId(1)), 1);
    let served = store.read_log(PartitionId(0), NodeId(1), 0, 10, 1 << 20).unwrap();
    assert_eq!(served, vec![redacted(NodeId(1), 1, 1 << 16, 3)], "served back as the same redaction");
}

#[test]
fn a_hundred_thousand_strict_refusals_leave_a_bounded_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let residency = Residency::open(Arc::new(MemoryEngine::new()), "us-east", "n1", Some(path.clone())).unwrap();
    let known: BTreeSet<String> = ["us-east", "eu-west"].map(String::from).into();
    let spec = RuleSpec {
        namespace: "app".into(),
        prefix: "eu/".into(),
        regions: vec!["eu-west".into()],
        replicas_per_region: None,
        home: None,
        strict: true,
    };
    let (rules, _) = RuleSet::default().with_added(spec, None, 1, &known).unwrap();
    assert!(residency.adopt(&rules).unwrap());
    let started = std::time::Instant::now();
    for i in 0..100_000 {
        let Decision::Refuse(rule) = residency.decide(&key(&format!("eu/{i}"))) else { panic!("strict rule") };
        residency.note_refused(&rule, "the rule is strict");
    }
    assert_eq!(residency.counters().snapshot().refused, 100_000, "every refusal is counted");
    let log = std::fs::read_to_string(&path).unwrap();
    // The rules change, then one refusal entry per 10 s window.
    let windows = started.elapsed().as_secs() / 10 + 1;
    let refusals = log.lines().filter(|l| l.contains("\"refuse\"")).count() as u64;
    assert!((1..=windows).contains(&refusals), "{refusals} refusal entries:\n{log}");
    assert!(log.len() < 4096, "{} bytes", log.len());
    assert!(!log.contains("eu/1"), "no key names in the audit log");
}

/// The digest fallback between regions compares only keys both may hold: a restricted key's digest
/// and state never leave its regions, and a key only one side may hold does not make ranges differ.
#[test]
fn fallback_scans_for_another_region_leave_out_the_keys_it_may_not_hold() {
    use crate::layout::{encode_stored, partition_of, Stored};
    use meridian_crdt::{Entry, Hlc, Mutation, WriteContext};
    use meridian_replication::antientropy::{HashRange, KeyState, PartitionId, SyncStore as _};

    let config = crate::config::Config { region: "eu-west".into(), ..crate::config::Config::default() };
    let node = crate::replica::Replica::open(config, Arc::new(MemoryEngine::new())).unwrap();
    let rules = residency_in("eu-west", &["eu-west"]).rules();
    assert!(node.residency().adopt(&rules).unwrap());
    let write = WriteContext { node: NodeId(3), ts: Hlc { wall_ms: 1, logical: 0 } };
    let state =
        encode_stored(&Stored::bare(Entry::mutation_delta(None, &Mutation::CounterAdd { amount: 1 }, &write).unwrap()));
    let keys = [key("eu/a"), key("eu/b"), key("us/c")];
    for data_key in &keys {
        let p = PartitionId(partition_of(data_key));
        node.sync_store().apply_states(p, &[KeyState { key: data_key.clone(), state: state.clone() }], None).unwrap();
    }
    let seen = |store: &crate::store::sync_store::EngineSyncStore| -> (u64, Vec<Vec<u8>>) {
        let mut count = 0;
        let mut listed = Vec::new();
        for p in 0..crate::layout::PARTITIONS {
            count += store.range_digests(PartitionId(p), &[HashRange::ROOT]).unwrap()[0].count;
            let page = store.keys_in_range(PartitionId(p), HashRange::ROOT, None, 100, 1 << 20).unwrap();
            listed.extend(page.states.into_iter().map(|s| s.key));
        }
        listed.sort();
        (count, listed)
    };
    let mut all = keys.to_vec();
    all.sort();
    assert_eq!(seen(&node.sync_store()), (3, all.clone()), "no peer region: everything");
    assert_eq!(seen(&node.sync_store().for_peer_region("eu-west")), (3, all), "the same region: everything");
    assert_eq!(seen(&node.sync_store().for_peer_region("us-east")), (1, vec![key("us/c")]));
}

/// A fallback from a region that may not hold some keys this region may hold raises the vector
/// only as far as backfills of those keys cover (the peer holds their writes only as redactions, so
/// its vector covers writes its states cannot carry), and asks for the backfill. From its own
/// region, or from a region that may hold everything this one may, it rises all the way.
#[test]
fn a_fallback_from_a_narrower_region_raises_the_vector_only_as_far_as_backfills_cover() {
    use meridian_crdt::VersionVector;
    use meridian_replication::antientropy::{PartitionId, SyncStore as _};

    let node_in = |region: &str| {
        let config = crate::config::Config { region: region.into(), ..crate::config::Config::default() };
        let node = crate::replica::Replica::open(config, Arc::new(MemoryEngine::new())).unwrap();
        assert!(node.residency().adopt(&residency_in("eu-west", &["eu-west"]).rules()).unwrap());
        node
    };
    let p = PartitionId(5);
    let peer_vv: VersionVector = [(NodeId(7), 40)].into_iter().collect();
    let held = |node: &crate::replica::Replica| node.sync_store().partition_vv(p).unwrap().get(NodeId(7));
    // eu-west may hold `eu/` keys (rule 1), us-east may not: nothing covered yet, nothing raised,
    // and a backfill of rule 1 in the partition is asked for.
    let eu = node_in("eu-west");
    eu.residency().take_wanted();
    eu.sync_store().for_peer_region("us-east").apply_states(p, &[], Some(&peer_vv)).unwrap();
    assert_eq!(held(&eu), 0);
    assert_eq!(eu.residency().take_wanted(), vec![(1, 5)]);
    // A backfill covered position 25: the raise goes that far.
    eu.residency().note_covered(1, 5, &[(NodeId(7), 25)].into_iter().collect()).unwrap();
    eu.sync_store().for_peer_region("us-east").apply_states(p, &[], Some(&peer_vv)).unwrap();
    assert_eq!(held(&eu), 25);
    // From its own region: all the way.
    eu.sync_store().for_peer_region("eu-west").apply_states(p, &[], Some(&peer_vv)).unwrap();
    assert_eq!(held(&eu), 40);
    // us-east holds nothing eu-west may not: a fallback from eu-west raises it all the way.
    let us = node_in("us-east");
    us.sync_store().for_peer_region("eu-west").apply_states(p, &[], Some(&peer_vv)).unwrap();
    assert_eq!(held(&us), 40);
}

/// The storage audit reads the partition index too: a key this region may not hold is reported
/// there as well as in `Data` (an index entry names the key).
#[test]
fn the_audit_reports_a_forbidden_key_in_the_partition_index() {
    let here = residency_in("us-east", &["eu-west"]);
    let engine: Arc<dyn crate::storage::Engine> = Arc::new(MemoryEngine::new());
    let mut batch = crate::storage::Batch::new();
    batch.put(crate::storage::Space::Data, key("eu/a"), b"state".to_vec());
    batch.put(crate::storage::Space::Data, key("us/b"), b"state".to_vec());
    engine.write(batch).unwrap();
    let report = scan::audit(&engine, &here, false).unwrap();
    let mut spaces: Vec<&str> = report.violations.iter().map(|v| v.space.as_str()).collect();
    spaces.sort();
    assert_eq!(spaces, ["data", "partition_index"], "{:?}", report.violations);
    assert!(report.violations.iter().all(|v| v.key == "app/eu/a"), "{:?}", report.violations);
}
