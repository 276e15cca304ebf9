//! Unit tests of the anti-entropy core: what gets shipped, the limits, idempotence, the fallback and
//! its byte cost, the timers, and the wire format. The seeded whole-cluster simulation is
//! `tests/antientropy_sim.rs`.

use std::collections::BTreeSet;

use meridian_crdt::{codec, NodeId, VersionVector};

use super::mem::{decode_set, encode_set};
use super::serve::Server;
use super::*;

const P: PartitionId = PartitionId(7);
const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

fn config() -> SyncConfig {
    SyncConfig { round_interval_ms: 10, retransmit_ms: 50, ..SyncConfig::default() }
}

fn set(elements: impl IntoIterator<Item = u64>) -> BTreeSet<u64> {
    elements.into_iter().collect()
}

fn vv(entries: &[(NodeId, u64)]) -> VersionVector {
    entries.iter().copied().collect()
}

/// Two replicas of `P` and their sessions with each other, on a lossless network that counts bytes.
struct Pair {
    a: MemStore,
    b: MemStore,
    sa: SyncSession,
    sb: SyncSession,
    now: u64,
    /// Encoded bytes delivered, both directions.
    bytes: usize,
    /// Every message delivered, in order.
    messages: Vec<SyncMessage>,
}

impl Pair {
    fn new(config: SyncConfig) -> Pair {
        Pair {
            a: MemStore::new(A),
            b: MemStore::new(B),
            sa: SyncSession::new(config.clone(), P, A, B, 1_000).unwrap(),
            sb: SyncSession::new(config, P, B, A, 2_000).unwrap(),
            now: 0,
            bytes: 0,
            messages: Vec::new(),
        }
    }

    /// One round in which `a` pulls from `b`, every message delivered; returns its report.
    fn pull_a(&mut self) -> RoundReport {
        self.now += 100;
        assert!(self.sa.start_round(&mut self.a, self.now).unwrap());
        self.exchange();
        assert!(self.sa.is_idle(), "the round must end once the network is quiet");
        let mut report = None;
        while let Some(event) = self.sa.poll_event() {
            if let SyncEvent::RoundDone(r) = event {
                report = Some(r);
            }
        }
        report.expect("a round-done event")
    }

    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            while let Some(m) = self.sa.poll_outbound() {
                let m = self.carry(m);
                self.sb.step(&mut self.b, self.now, m).unwrap();
                moved = true;
            }
            while let Some(m) = self.sb.poll_outbound() {
                let m = self.carry(m);
                self.sa.step(&mut self.a, self.now, m).unwrap();
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn carry(&mut self, message: SyncMessage) -> SyncMessage {
        let decoded = round_trip(&message);
        self.bytes += message.wire_len();
        self.messages.push(message);
        decoded
    }

    fn assert_converged(&self) {
        assert_eq!(self.a.snapshot(P), self.b.snapshot(P));
        assert_eq!(self.a.partition_vv(P).unwrap(), self.b.partition_vv(P).unwrap());
    }
}

/// Encodes and decodes through the codec, checking `wire_len` is exact.
fn round_trip(message: &SyncMessage) -> SyncMessage {
    let bytes = codec::encode(message);
    assert_eq!(message.wire_len(), bytes.len(), "wire_len of {message:?}");
    codec::decode(&bytes, codec::ABSOLUTE_MAX_BYTES).unwrap()
}

fn records_of(message: &SyncMessage) -> Option<&Vec<LogRecord>> {
    match message {
        SyncMessage::V1(SyncMessageV1::Records { records, .. }) => Some(records),
        _ => None,
    }
}

#[test]
fn missing_lists_per_origin_intervals() {
    let mine = vv(&[(A, 5), (B, 3), (C, 1)]);
    let theirs = vv(&[(A, 2), (B, 3), (NodeId(4), 9)]);
    assert_eq!(
        missing(&mine, &theirs),
        vec![Missing { origin: A, after: 2, upto: 5 }, Missing { origin: C, after: 0, upto: 1 }]
    );
    assert!(missing(&theirs, &theirs).is_empty());
    assert!(missing(&VersionVector::new(), &mine).is_empty());
}

#[test]
fn an_offer_is_answered_with_exactly_what_the_peer_lacks() {
    let mut b = MemStore::new(B);
    for i in 0..5 {
        b.write(P, format!("k{i}").as_bytes(), &set([i]), 10 + i);
    }
    let from_c: Vec<LogRecord> = (1..=3)
        .map(|seq| LogRecord { origin: C, seq, key: b"c".to_vec(), delta: encode_set(&set([100 + seq])), hlc: seq })
        .collect();
    b.apply_remote(P, &from_c).unwrap();
    let config = config();
    let server = Server { store: &b, config: &config, peer: A, partition: P };
    let (answer, mine) = server.offer(9, &vv(&[(B, 2)])).unwrap();
    assert_eq!(mine, vv(&[(B, 5), (C, 3)]));
    let SyncMessageV1::Records { request: 9, records, more: false, .. } = answer else { panic!("{answer:?}") };
    let positions: Vec<_> = records.iter().map(|r| (r.origin, r.seq)).collect();
    assert_eq!(positions, vec![(B, 3), (B, 4), (B, 5), (C, 1), (C, 2), (C, 3)]);
    let (answer, _) = server.offer(10, &mine).unwrap();
    assert!(matches!(answer, SyncMessageV1::Records { ref records, more: false, .. } if records.is_empty()));
}

#[test]
fn records_respect_max_records_and_max_bytes_and_more_continues() {
    let config = SyncConfig { max_records: 64, max_bytes: MIN_MAX_BYTES, ..config() };
    let mut pair = Pair::new(config.clone());
    for i in 0..300u64 {
        pair.b.write(P, format!("key-{}", i % 40).as_bytes(), &set((0..6).map(|j| (i * 1_000_003 + j) << 20)), i);
    }
    let report = pair.pull_a();
    assert_eq!(report.outcome, RoundOutcome::Completed);
    assert_eq!(report.records_applied, 300);
    pair.assert_converged();
    let batches: Vec<_> = pair.messages.iter().filter_map(records_of).collect();
    assert!(batches.len() > 300 / 64 && report.requests as usize == batches.len(), "{}", batches.len());
    for message in &pair.messages {
        assert!(message.wire_len() <= config.max_bytes, "{} bytes", message.wire_len());
        assert!(records_of(message).is_none_or(|r| r.len() <= config.max_records));
    }
    // Byte-bound batches, not only count-bound ones, occurred.
    assert!(batches.iter().any(|r| r.len() < config.max_records && r.len() > 1));
    let shipped: Vec<u64> = batches.iter().flat_map(|r| r.iter().map(|r| r.seq)).collect();
    assert_eq!(shipped, (1..=300).collect::<Vec<_>>(), "in seq order, each once");
}

#[test]
fn an_oversized_record_travels_alone() {
    let config = SyncConfig { max_bytes: MIN_MAX_BYTES, ..config() };
    let mut pair = Pair::new(config.clone());
    pair.b.write(P, b"small-1", &set([1]), 1);
    pair.b.write(P, b"huge", &set(0..2_000), 2);
    pair.b.write(P, b"small-2", &set([2]), 3);
    assert_eq!(pair.pull_a().outcome, RoundOutcome::Completed);
    pair.assert_converged();
    for message in &pair.messages {
        if message.wire_len() > config.max_bytes {
            assert_eq!(records_of(message).map(Vec::len), Some(1), "only a lone record may exceed max_bytes");
        }
    }
}

#[test]
fn reapplying_records_is_idempotent() {
    let mut pair = Pair::new(config());
    for i in 0..5 {
        pair.b.write(P, b"k", &set([i]), i);
    }
    pair.sa.start_round(&mut pair.a, 1).unwrap();
    let offer = pair.sa.poll_outbound().unwrap();
    pair.sb.step(&mut pair.b, 1, offer).unwrap();
    let reply = pair.sb.poll_outbound().unwrap();
    pair.sa.step(&mut pair.a, 1, reply.clone()).unwrap();
    let (state, vector) = (pair.a.snapshot(P), pair.a.partition_vv(P).unwrap());
    assert_eq!(vector, vv(&[(B, 5)]));
    // A duplicate reply is stale for the session...
    pair.sa.step(&mut pair.a, 2, reply.clone()).unwrap();
    assert_eq!(pair.sa.stats().stale_replies, 1);
    // ...and the store skips records it already holds.
    let records = records_of(&reply).unwrap().clone();
    pair.a.apply_remote(P, &records).unwrap();
    pair.a.apply_remote(P, &records[2..]).unwrap();
    assert_eq!((pair.a.snapshot(P), pair.a.partition_vv(P).unwrap()), (state, vector));
    assert_eq!(pair.a.log_len(P), 5);
}

#[test]
fn records_with_a_gap_are_refused_and_nothing_is_applied() {
    let mut pair = Pair::new(config());
    pair.sa.start_round(&mut pair.a, 1).unwrap();
    let request = pair.sa.poll_outbound().unwrap().request();
    let record = |seq| LogRecord { origin: B, seq, key: b"k".to_vec(), delta: encode_set(&set([seq])), hlc: seq };
    let reply = SyncMessageV1::Records { partition: P, request, records: vec![record(1), record(3)], more: false };
    let err = pair.sa.step(&mut pair.a, 2, SyncMessage::V1(reply)).unwrap_err();
    assert!(matches!(err, SyncError::Peer { error: PeerError::Gap { have: 1, got: 3, .. }, .. }), "{err}");
    assert!(err.is_peer_fault());
    assert!(pair.a.snapshot(P).is_empty() && pair.a.partition_vv(P).unwrap().is_empty());
    assert!(matches!(
        pair.sa.poll_event(),
        Some(SyncEvent::RoundDone(RoundReport { outcome: RoundOutcome::Failed, .. }))
    ));
}

#[test]
fn a_truncated_log_triggers_the_fallback_which_raises_the_vector() {
    let mut pair = Pair::new(config());
    for i in 0..50u64 {
        pair.b.write(P, format!("k{}", i % 20).as_bytes(), &set([i]), i);
    }
    // a already has the first 10 records; b then truncates everything.
    let early = pair.b.read_log(P, B, 0, 10, usize::MAX).unwrap();
    pair.a.apply_remote(P, &early).unwrap();
    pair.b.truncate_log(P, B, 51);
    let config = config();
    let server = Server { store: &pair.b, config: &config, peer: A, partition: P };
    let (answer, _) = server.offer(1, &vv(&[(B, 10)])).unwrap();
    assert!(matches!(answer, SyncMessageV1::Truncated { origin: B, floor: 51, ref vv, .. } if vv.get(B) == 50));

    let report = pair.pull_a();
    assert_eq!((report.outcome, report.fallbacks), (RoundOutcome::Completed, 1));
    assert!(report.states_applied > 0 && report.states_applied <= 20);
    pair.assert_converged();
    assert_eq!(pair.sa.stats().fallbacks_completed, 1);
    // a lacks b's records 11..=50, so it must not offer them to anyone.
    assert_eq!(pair.a.log_floor(P, B).unwrap(), 51);

    // Later writes flow through the log again.
    pair.b.write(P, b"k1", &set([1_000]), 60);
    let report = pair.pull_a();
    assert_eq!((report.outcome, report.fallbacks, report.records_applied), (RoundOutcome::Completed, 0, 1));
    pair.assert_converged();
}

/// Runs the fallback over a `keys`-key partition of which `changed` keys changed, and returns
/// (bytes shipped, bytes of what changed: the changed keys with their new states).
fn fallback_cost(keys: u64, changed: u64, elements_per_key: u64) -> (usize, usize) {
    let mut pair = Pair::new(config());
    let key = |i: u64| format!("user:{i:06}").into_bytes();
    let elements = |i: u64| set((0..elements_per_key).map(|j| (i << 32 | j).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    for i in 0..keys {
        pair.a.seed_state(P, &key(i), &elements(i));
        pair.b.seed_state(P, &key(i), &elements(i));
    }
    let mut what_changed = 0;
    for c in 0..changed {
        let i = c * (keys / changed);
        pair.b.write(P, &key(i), &set([u64::MAX - c]), c);
        what_changed += key(i).len() + encode_set(pair.b.get(P, &key(i)).unwrap()).len();
    }
    pair.b.truncate_log(P, B, u64::MAX);
    let report = pair.pull_a();
    assert_eq!((report.outcome, report.fallbacks), (RoundOutcome::Completed, 1));
    pair.assert_converged();
    (pair.bytes, what_changed)
}

#[test]
fn fallback_bytes_stay_within_three_times_what_changed() {
    // 10k keys, 10 changed, entries of about 130 bytes (key and state).
    let (shipped, changed) = fallback_cost(10_000, 10, 12);
    let ratio = shipped as f64 / changed as f64;
    println!("10k keys, 10 changed (~130 B entries): shipped {shipped} B for {changed} B changed = {ratio:.2}x");
    assert!(shipped <= 3 * changed, "shipped {shipped} B for {changed} B changed ({ratio:.2}x)");
}

#[test]
fn fallback_bytes_per_changed_key_are_bounded_whatever_the_entry_size() {
    // Small entries cannot meet 3x with 64-bit range digests (the tree walk alone costs ~170 B per
    // changed key); the fixed cost per changed key is what is bounded. Printed for the record.
    for elements in [1, 4, 12, 40] {
        let (shipped, changed) = fallback_cost(10_000, 10, elements);
        let overhead_per_key = shipped.saturating_sub(changed) / 10;
        println!(
            "10k keys, 10 changed, {} B entries: shipped {shipped} B, {:.2}x, {overhead_per_key} B overhead per changed key",
            changed / 10,
            shipped as f64 / changed as f64
        );
        assert!(overhead_per_key <= 300, "{overhead_per_key} B per changed key");
    }
}

#[test]
fn an_empty_replica_bootstraps_by_paginated_fetch() {
    let config = SyncConfig { max_bytes: MIN_MAX_BYTES, max_records: 100, ..config() };
    let mut pair = Pair::new(config.clone());
    for i in 0..2_000u64 {
        pair.b.write(P, format!("key-{i}").as_bytes(), &set([i, i * 7]), i);
    }
    pair.b.truncate_log(P, B, 1_500);
    let report = pair.pull_a();
    assert_eq!((report.outcome, report.fallbacks), (RoundOutcome::Completed, 1));
    pair.assert_converged();
    let pages = pair.messages.iter().filter(|m| matches!(m, SyncMessage::V1(SyncMessageV1::States { .. }))).count();
    assert!(pages >= 2_000 / 100, "{pages} pages");
    assert!(pair.messages.iter().all(|m| m.wire_len() <= config.max_bytes));
}

#[test]
fn stale_and_foreign_replies_are_ignored_or_refused() {
    let mut pair = Pair::new(config());
    pair.b.write(P, b"k", &set([1]), 1);
    pair.sa.start_round(&mut pair.a, 1).unwrap();
    let offer = pair.sa.poll_outbound().unwrap();
    let stale = SyncMessageV1::Records { partition: P, request: offer.request() + 99, records: vec![], more: false };
    pair.sa.step(&mut pair.a, 2, SyncMessage::V1(stale)).unwrap();
    assert_eq!(pair.sa.stats().stale_replies, 1);
    assert!(!pair.sa.is_idle(), "a stale reply must not end the round");
    let foreign =
        SyncMessageV1::Records { partition: PartitionId(8), request: offer.request(), records: vec![], more: false };
    let err = pair.sa.step(&mut pair.a, 2, SyncMessage::V1(foreign)).unwrap_err();
    assert!(matches!(err, SyncError::Peer { error: PeerError::WrongPartition { .. }, .. }));
    let wrong_kind = SyncMessageV1::DigestReply { partition: P, request: offer.request(), digests: vec![] };
    let err = pair.sa.step(&mut pair.a, 2, SyncMessage::V1(wrong_kind)).unwrap_err();
    assert!(matches!(err, SyncError::Peer { error: PeerError::UnexpectedReply { .. }, .. }), "{err}");
    assert!(pair.sa.is_idle());
}

#[test]
fn unanswered_requests_are_retransmitted_then_the_round_times_out() {
    let config = config();
    let mut pair = Pair::new(config.clone());
    pair.sa.tick(&mut pair.a, 0).unwrap();
    let first = pair.sa.poll_outbound().expect("the first tick starts a round");
    let first_id = first.request();
    assert_eq!(pair.sa.poll_timeout(), config.retransmit_ms);
    pair.sa.tick(&mut pair.a, config.retransmit_ms - 1).unwrap();
    assert!(pair.sa.poll_outbound().is_none());
    let mut now = 0;
    for _ in 1..config.max_attempts {
        now += config.retransmit_ms;
        pair.sa.tick(&mut pair.a, now).unwrap();
        assert_eq!(pair.sa.poll_outbound().as_ref(), Some(&first), "a retransmit is the same request");
    }
    now += config.retransmit_ms;
    pair.sa.tick(&mut pair.a, now).unwrap();
    assert!(pair.sa.is_idle() && pair.sa.poll_outbound().is_none());
    let Some(SyncEvent::RoundDone(report)) = pair.sa.poll_event() else { panic!("round done") };
    assert_eq!(report.outcome, RoundOutcome::TimedOut);
    // A late answer to the abandoned request is ignored; the next round starts on schedule.
    pair.sb.step(&mut pair.b, now, first).unwrap();
    pair.sa.step(&mut pair.a, now, pair.sb.poll_outbound().unwrap()).unwrap();
    assert_eq!(pair.sa.stats().stale_replies, 1);
    pair.sa.tick(&mut pair.a, now + config.round_interval_ms).unwrap();
    assert_eq!(pair.sa.poll_outbound().map(|m| m.request()), Some(first_id + 1));
    assert_eq!(pair.sa.stats().retransmits, u64::from(config.max_attempts - 1));
}

#[test]
fn the_peer_safe_time_is_reported_with_the_seq_it_covers() {
    let mut pair = Pair::new(config());
    pair.a.write(P, b"k", &set([1]), 100);
    pair.a.set_safe_hlc(P, 120);
    pair.sa.start_round(&mut pair.a, 1).unwrap();
    pair.sb.step(&mut pair.b, 1, pair.sa.poll_outbound().unwrap()).unwrap();
    assert_eq!(
        pair.sb.poll_event(),
        Some(SyncEvent::PeerSafeTime { partition: P, origin: A, hlc: 120, covers_seq: 1 })
    );
    // b lacks a's write, so its own next round is due at once.
    assert_eq!(pair.sb.poll_timeout(), 0);
}

#[test]
fn states_outside_the_requested_ranges_are_refused() {
    let mut pair = Pair::new(config());
    for i in 0..8u64 {
        pair.a.seed_state(P, format!("a{i}").as_bytes(), &set([i]));
        pair.b.write(P, format!("b{i}").as_bytes(), &set([i]), i);
    }
    pair.b.truncate_log(P, B, u64::MAX);
    pair.sa.start_round(&mut pair.a, 1).unwrap();
    // Deliver until a asks for states.
    let ranges = loop {
        let request = pair.sa.poll_outbound().unwrap();
        if let SyncMessage::V1(SyncMessageV1::StatesRequest { ranges, .. }) = &request {
            break (ranges.clone(), request.request());
        }
        pair.sb.step(&mut pair.b, 1, request).unwrap();
        pair.sa.step(&mut pair.a, 1, pair.sb.poll_outbound().unwrap()).unwrap();
    };
    let outside =
        (0..).map(|i| format!("x{i}").into_bytes()).find(|k| !ranges.0.iter().any(|r| r.contains_key(k))).unwrap();
    let state = KeyState { key: outside, state: encode_set(&set([1])) };
    let reply = SyncMessageV1::States { partition: P, request: ranges.1, states: vec![state], resume: None };
    let err = pair.sa.step(&mut pair.a, 1, SyncMessage::V1(reply)).unwrap_err();
    assert!(matches!(err, SyncError::Peer { error: PeerError::OutOfRange, .. }), "{err}");
    assert_eq!(pair.a.partition_vv(P).unwrap(), VersionVector::new(), "no vector raise after a refused fallback");
}

#[test]
fn requests_beyond_the_limits_are_refused() {
    let b = MemStore::new(B);
    let config = config();
    let server = Server { store: &b, config: &config, peer: A, partition: P };
    assert!(server.digests(1, 9, true, &[HashRange::ROOT]).is_err());
    assert!(server.digests(1, 2, true, &[HashRange::new(63, 0).unwrap()]).is_err());
    assert!(server.digests(1, 2, false, &vec![HashRange::ROOT; 100_000]).is_err());
    assert!(server.states(1, &[], None).is_err());
    let ok = server.digests(1, 2, false, &[HashRange::ROOT]).unwrap();
    assert!(matches!(ok, SyncMessageV1::DigestReply { ref digests, .. } if digests.len() == 3 * 8));
}

#[test]
fn config_validation_names_the_field() {
    assert!(SyncConfig::default().validate().is_ok());
    let bad = SyncConfig { split_bits: 0, ..SyncConfig::default() };
    assert_eq!(bad.validate().unwrap_err().field, "split_bits");
    let bad = SyncConfig { max_bytes: 100, ..SyncConfig::default() };
    assert_eq!(bad.validate().unwrap_err().field, "max_bytes");
    assert!(SyncSession::new(bad, P, A, B, 0).is_err());
}

#[test]
fn wire_len_is_exact_for_every_message() {
    let big_vv = vv(&[(A, 1), (NodeId(u64::MAX), 70_000), (NodeId(300), u64::MAX)]);
    let record =
        LogRecord { origin: NodeId(1 << 40), seq: 251, key: vec![7; 300], delta: vec![1; 70_000], hlc: 1 << 50 };
    let range = HashRange::new(20, 99_999).unwrap();
    let messages = [
        SyncMessageV1::Offer { partition: PartitionId(300), request: 1 << 33, vv: big_vv.clone(), safe_hlc: 12 },
        SyncMessageV1::Records { partition: P, request: 0, records: vec![record.clone(); 3], more: true },
        SyncMessageV1::Records { partition: P, request: 0, records: vec![], more: false },
        SyncMessageV1::Truncated { partition: P, request: 5, origin: B, floor: 1 << 20, vv: big_vv },
        SyncMessageV1::DigestRequest {
            partition: P,
            request: 5,
            split_bits: 2,
            full: false,
            parents: vec![range; 300],
        },
        SyncMessageV1::DigestReply { partition: P, request: 5, digests: vec![9; 24 * 11] },
        SyncMessageV1::StatesRequest {
            partition: P,
            request: 5,
            ranges: vec![range, HashRange::ROOT],
            after_key: None,
        },
        SyncMessageV1::StatesRequest { partition: P, request: 5, ranges: vec![range], after_key: Some(vec![3; 260]) },
        SyncMessageV1::States {
            partition: P,
            request: 5,
            states: vec![KeyState { key: vec![1; 3], state: vec![2; 400] }; 2],
            resume: Some(Resume { done_ranges: 70_000, after_key: Some(vec![5; 9]) }),
        },
        SyncMessageV1::States { partition: P, request: 5, states: vec![], resume: None },
    ];
    for message in messages {
        round_trip(&SyncMessage::V1(message));
    }
    assert_eq!(record.wire_len() + 1, codec::encode(&record).len());
}

#[test]
fn golden_wire_bytes() {
    // format 1 | V1 0 | Offer 0 | partition 7 | request 2 | vv len 1, node 1 -> 4 | safe_hlc 5
    let offer = SyncMessageV1::Offer { partition: P, request: 2, vv: vv(&[(A, 4)]), safe_hlc: 5 };
    assert_eq!(codec::encode(&SyncMessage::V1(offer)), vec![1, 0, 0, 7, 2, 1, 1, 4, 5]);
    // ... | Records 1 | 7 | 3 | one record: origin 2, seq 1, key "k", delta [9], hlc 6 | more 0
    let record = LogRecord { origin: B, seq: 1, key: b"k".to_vec(), delta: vec![9], hlc: 6 };
    let records = SyncMessageV1::Records { partition: P, request: 3, records: vec![record], more: false };
    assert_eq!(codec::encode(&SyncMessage::V1(records)), vec![1, 0, 1, 7, 3, 1, 2, 1, 1, b'k', 1, 9, 6, 0]);
    // ... | DigestRequest 3 | 7 | 4 | split 2 | full 1 | one parent: bits 2, index 3
    let ask = SyncMessageV1::DigestRequest {
        partition: P,
        request: 4,
        split_bits: 2,
        full: true,
        parents: vec![HashRange::new(2, 3).unwrap()],
    };
    assert_eq!(codec::encode(&SyncMessage::V1(ask)), vec![1, 0, 3, 7, 4, 2, 1, 1, 2, 3]);
    // A byte string is one length-prefixed blob, the same layout as a `Vec<u8>` sequence.
    let state = KeyState { key: vec![1, 2], state: vec![3] };
    assert_eq!(codec::encode(&state), codec::encode(&(vec![1u8, 2], vec![3u8])));
    assert_eq!(decode_set(&encode_set(&set([3, 1]))).unwrap(), set([1, 3]));
}
