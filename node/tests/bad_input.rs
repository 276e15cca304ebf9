//! Bad input against a real in-process node: hand-made frames over raw QUIC (oversized, garbage,
//! unknown versions and variants, truncated streams, fuzzed bodies), over-limit values and keys,
//! invalid keys and doc changes that bypass the SDK's checks, the connection limit, and config
//! validation. Every refusal must be a typed error on the offending stream only.

mod common;

use std::time::Duration;

use common::{bounded, config, connect, raw_connect, shutdown, start_memory, RawAnswer, RawConn};
use meridian_client::proto::{
    self, CausalToken, ErrorCode, ErrorReply, Key, MapPart, Operation, Reply, ReplyBody, Request, RequestV1, Response,
    SetPart,
};
use meridian_client::{Client, Error, Mutation};
use meridian_server::config::{Config, ConfigError, ConsistencyName, NamespaceConfig};
use meridian_server::serve::RunningNode;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const MAX_FRAME: usize = 64 << 10;
const MAX_VALUE: usize = 16 << 10;
const MAX_KEY: usize = 56 << 10;

/// A node with a 64 KiB frame limit, a 16 KiB value limit and a 56 KiB key limit.
async fn small_node(dir: &std::path::Path) -> RunningNode {
    let mut cfg = config(dir);
    cfg.limits.max_frame_bytes = MAX_FRAME;
    cfg.limits.max_value_bytes = MAX_VALUE;
    cfg.limits.max_key_bytes = MAX_KEY;
    cfg.validate().expect("the test config is valid");
    start_memory(cfg).await
}

fn request(op: Operation) -> RequestV1 {
    RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op }
}

fn status_request() -> Request {
    Request::V1(request(Operation::Status))
}

/// A frame: big-endian length then `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// The error code of a raw answer that must be an error reply.
fn error_of(answer: RawAnswer) -> ErrorReply {
    match answer {
        RawAnswer::Frame(Response::V1(Err(error))) => error,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// The connection still serves a well-formed request.
async fn still_serves(raw: &RawConn) {
    match raw.request(&status_request()).await {
        Response::V1(Ok(Reply { body: ReplyBody::Status(_), .. })) => {}
        other => panic!("the connection no longer serves requests: {other:?}"),
    }
    assert!(raw.conn.close_reason().is_none(), "the connection was closed: {:?}", raw.conn.close_reason());
}

fn server_code<T: std::fmt::Debug>(result: Result<T, Error>) -> ErrorCode {
    match result {
        Err(Error::Server { code, .. }) => code,
        other => panic!("expected a node error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length_prefix_is_too_large_and_the_connection_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let running = small_node(dir.path()).await;
    let raw = raw_connect(running.client_addr, &running.cert_path).await.unwrap();
    bounded("oversized frames", async {
        still_serves(&raw).await;
        for len in [MAX_FRAME as u32 + 1, 10 << 20, u32::MAX] {
            // Only the length and a few bytes are sent: the node must answer without waiting for the body.
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[1, 0, 0, 0]);
            let error = error_of(raw.send_raw(&bytes, false).await);
            assert_eq!(error.code, ErrorCode::TooLarge, "{error:?}");
            assert!(error.message.contains(&len.to_string()), "{error:?}");
            still_serves(&raw).await;
        }
        // Exactly at the limit is read (and then refused only for its content).
        let mut body = vec![1u8, 0xff];
        body.resize(MAX_FRAME, 0xff);
        let error = error_of(raw.send_raw(&framed(&body), true).await);
        assert_eq!(error.code, ErrorCode::BadRequest, "{error:?}");
        still_serves(&raw).await;
    })
    .await;
    raw.conn.close(0u32.into(), b"done");
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_unknown_versions_and_unknown_variants_are_refused_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let running = small_node(dir.path()).await;
    let raw = raw_connect(running.client_addr, &running.cert_path).await.unwrap();
    let valid_status = proto::encode_frame(&status_request());
    bounded("garbage frames", async {
        // (b) garbage after a valid format byte, an empty body, trailing bytes after a valid request.
        let mut trailing = valid_status[4..].to_vec();
        trailing.push(0);
        for body in [vec![1u8, 0xff, 0xff, 0xff, 0xff, 0x13, 0x37], vec![], vec![1], trailing] {
            let error = error_of(raw.send_raw(&framed(&body), true).await);
            assert_eq!(error.code, ErrorCode::BadRequest, "{body:?}: {error:?}");
            still_serves(&raw).await;
        }
        // (c) an unknown format byte.
        let mut v9 = valid_status[4..].to_vec();
        v9[0] = 9;
        let error = error_of(raw.send_raw(&framed(&v9), true).await);
        assert_eq!(error.code, ErrorCode::Unsupported, "{error:?}");
        assert!(error.message.contains('9'), "{error:?}");
        still_serves(&raw).await;
        // (d) an unknown Request variant (only V1 = 0 exists), and an unknown Operation variant.
        let error = error_of(raw.send_raw(&framed(&[1, 1, 0, 0, 0, 5]), true).await);
        assert_eq!(error.code, ErrorCode::BadRequest, "{error:?}");
        let mut unknown_op = valid_status[4..].to_vec();
        *unknown_op.last_mut().unwrap() = 6; // Status is 5, the last operation
        let error = error_of(raw.send_raw(&framed(&unknown_op), true).await);
        assert_eq!(error.code, ErrorCode::BadRequest, "{error:?}");
        still_serves(&raw).await;
        // Several bad streams in flight at once do not disturb a good one.
        let bad = framed(&[1, 0xff, 0xff]);
        let (a, b, good) =
            tokio::join!(raw.send_raw(&bad, true), raw.send_raw(&bad, true), raw.send_raw(&valid_status, true));
        assert_eq!(error_of(a).code, ErrorCode::BadRequest);
        assert_eq!(error_of(b).code, ErrorCode::BadRequest);
        assert!(matches!(good, RawAnswer::Frame(Response::V1(Ok(_)))), "{good:?}");
    })
    .await;
    raw.conn.close(0u32.into(), b"done");
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_ending_mid_frame_are_dropped_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let running = small_node(dir.path()).await;
    let raw = raw_connect(running.client_addr, &running.cert_path).await.unwrap();
    let valid = proto::encode_frame(&status_request());
    bounded("truncated streams", async {
        // Mid-length-prefix, right after the prefix, mid-body; then a finished stream with nothing.
        for cut in [2, 4, valid.len() - 1, 0] {
            let answer = raw.send_raw(&valid[..cut], true).await;
            assert!(matches!(answer, RawAnswer::Nothing), "cut at {cut}: {answer:?}");
            still_serves(&raw).await;
        }
        // A length promising far more than is ever sent.
        let mut promise = framed(&[1, 0]);
        promise[..4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(raw.send_raw(&promise, true).await, RawAnswer::Nothing));
        // A stream reset by the client mid-frame.
        let (mut send, _recv) = raw.conn.open_bi().await.unwrap();
        send.write_all(&valid[..5]).await.unwrap();
        send.reset(7u32.into()).unwrap();
        still_serves(&raw).await;
    })
    .await;
    // The node is still healthy for new connections too.
    let client = connect(&running).await;
    bounded("status after truncated streams", client.status()).await.unwrap();
    client.close().await;
    raw.conn.close(0u32.into(), b"done");
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_neither_blocks_other_requests_nor_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.request_timeout_ms = 1_000;
    let running = start_memory(cfg).await;
    let raw = raw_connect(running.client_addr, &running.cert_path).await.unwrap();
    // Half a length prefix, never finished: the node waits on that stream only.
    let (mut stalled, _recv) = raw.conn.open_bi().await.unwrap();
    stalled.write_all(&[0, 0]).await.unwrap();
    still_serves(&raw).await;
    let client = connect(&running).await;
    bounded("a request beside the stalled stream", client.counter("stall/n").incr(1)).await.unwrap();
    client.close().await;
    // Shutdown drains for at most request_timeout_ms, then closes the connection under the stream.
    shutdown(running).await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_and_keys_over_the_limits_are_too_large_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let running = small_node(dir.path()).await;
    let client = connect(&running).await;
    bounded("size limits", async {
        // (f) One value over max_value_bytes, through the SDK: refused, nothing written.
        let big = vec![b'v'; MAX_VALUE + 1];
        let err = client.register("lim/reg").set(big.clone()).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TooLarge), "{err:?}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("max_value_bytes"), "{err}");
        assert_eq!(client.register("lim/reg").get().await.unwrap(), None);
        assert_eq!(client.get("lim/reg").await.unwrap(), None);
        // Every payload-carrying mutation is measured: set members, map fields, doc JSON.
        assert_eq!(server_code(client.set("lim/set").add([big.clone()]).await), ErrorCode::TooLarge);
        let halves = [vec![b'a'; MAX_VALUE / 2 + 1], vec![b'b'; MAX_VALUE / 2 + 1]];
        assert_eq!(server_code(client.set("lim/set").add(halves).await), ErrorCode::TooLarge);
        assert_eq!(server_code(client.map("lim/map").set_field("f", big.clone()).await), ErrorCode::TooLarge);
        let json = serde_json::json!({"text": "x".repeat(MAX_VALUE)});
        assert_eq!(server_code(client.doc("lim/doc").put_json(&json).await), ErrorCode::TooLarge);
        assert!(client.keys("lim").page().await.unwrap().keys.is_empty());
        // Exactly at the limit is fine.
        client.register("lim/reg").set(vec![b'v'; MAX_VALUE]).await.unwrap();
        assert_eq!(client.register("lim/reg").get().await.unwrap().map(|v| v.len()), Some(MAX_VALUE));

        // (g) A set grown member by member until the key would outgrow max_key_bytes.
        let set = client.set("lim/grow");
        let mut added = Vec::new();
        let refused = loop {
            let member =
                format!("{:04}", added.len()).into_bytes().into_iter().chain(vec![b'm'; 8 << 10]).collect::<Vec<u8>>();
            match set.add([member.clone()]).await {
                Ok(()) => added.push(member),
                Err(e) => break e,
            }
            assert!(added.len() < 16, "the set grew past the frame limit");
        };
        assert_eq!(refused.code(), Some(ErrorCode::TooLarge), "{refused:?}");
        assert!(refused.to_string().contains("max_key_bytes"), "{refused}");
        assert!(added.len() >= 5, "only {} members fit", added.len());
        assert_eq!(set.members().await.unwrap(), added);
        // Removing still works and frees room.
        set.remove([added[0].clone()]).await.unwrap();
        assert_eq!(set.members().await.unwrap(), added[1..].to_vec());
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_sent_raw_are_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let running = small_node(dir.path()).await;
    let client = connect(&running).await;
    bounded("invalid keys", async {
        let bad_keys = [
            Key { namespace: String::new(), name: "x".into() },
            Key { namespace: "ns".into(), name: String::new() },
            Key { namespace: "n\u{1}s".into(), name: "x".into() },
            Key { namespace: "ns".into(), name: "a\nb".into() },
            Key { namespace: "ns".into(), name: "nul\0".into() },
            Key { namespace: "a/b".into(), name: "x".into() },
            Key { namespace: "n".repeat(129), name: "x".into() },
            Key { namespace: "n".repeat(300), name: "x".into() },
            Key { namespace: "ns".into(), name: "k".repeat(1025) },
        ];
        for key in bad_keys {
            let ops = [
                Operation::Write {
                    key: key.clone(),
                    mutation: Mutation::CounterAdd { amount: 1 },
                    idempotency_id: None,
                },
                Operation::Delete { key: key.clone(), idempotency_id: None },
                Operation::Read { key: key.clone(), expected: None },
                Operation::DocChanges { key: key.clone(), since_heads: vec![] },
                Operation::ReadSet { key: key.clone(), part: SetPart::Count },
                Operation::ReadMap { key: key.clone(), part: MapPart::Count },
            ];
            for op in ops {
                let err = client.raw(request(op.clone())).await.unwrap_err();
                assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{key:?} {op:?}: {err:?}");
                assert!(err.to_string().contains("invalid key"), "{err}");
            }
        }
        for namespace in [String::new(), "a/b".into(), "t\tab".into(), "n".repeat(129), "n".repeat(300)] {
            let op = Operation::ListKeys {
                namespace: namespace.clone(),
                prefix: String::new(),
                start_after: None,
                limit: 10,
            };
            assert_eq!(server_code(client.raw(request(op)).await), ErrorCode::BadRequest, "{namespace:?}");
        }
        // The SDK refuses the same keys before sending anything.
        assert!(matches!(client.counter("/x").incr(1).await, Err(Error::InvalidArgument(_))));
        assert!(matches!(client.counter("ns/a\nb").get().await, Err(Error::InvalidArgument(_))));
        assert!(matches!(client.keys("a/b").page().await, Err(Error::InvalidArgument(_))));
        // Nothing was written and the node is fine.
        assert!(client.keys("ns").page().await.unwrap().keys.is_empty());
        assert_eq!(client.status().await.unwrap().log_entries, 0);
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_doc_input_and_counter_overflow_are_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let running = small_node(dir.path()).await;
    let client = connect(&running).await;
    let key: Key = "docs/d".parse().unwrap();
    let write = |mutation| request(Operation::Write { key: key.clone(), mutation, idempotency_id: None });
    bounded("bad doc input", async {
        // (i) garbage automerge changes, on a new key and on an existing doc.
        let garbage = Mutation::DocApply { changes: vec![vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3]] };
        assert_eq!(server_code(client.raw(write(garbage.clone())).await), ErrorCode::BadRequest);
        assert_eq!(
            server_code(client.raw(write(Mutation::DocApply { changes: vec![vec![]] })).await),
            ErrorCode::BadRequest
        );
        assert_eq!(client.get("docs/d").await.unwrap(), None);
        for json in ["[1, 2]", "42", "\"text\"", "null", "{", "not json"] {
            let err = client.raw(write(Mutation::DocPut { json: json.into() })).await.unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{json}: {err:?}");
        }
        assert_eq!(client.get("docs/d").await.unwrap(), None);
        client.doc("docs/d").put_json(&serde_json::json!({"a": 1})).await.unwrap();
        assert_eq!(server_code(client.raw(write(garbage)).await), ErrorCode::BadRequest);
        assert_eq!(server_code(client.raw(write(Mutation::DocPut { json: "[]".into() })).await), ErrorCode::BadRequest);
        assert_eq!(client.doc("docs/d").get_json().await.unwrap(), serde_json::json!({"a": 1}));
        // A change with a valid chunk header and a broken body (it passes the size check, not the
        // parse) sent to a key of another type: the type is refused first, as for any other
        // mutation of the wrong type.
        client.counter("docs/c").incr(1).await.unwrap();
        let to_counter = request(Operation::Write {
            key: "docs/c".parse().unwrap(),
            mutation: Mutation::DocApply {
                changes: vec![vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 5, 1, 2, 3, 4, 5]],
            },
            idempotency_id: None,
        });
        assert_eq!(server_code(client.raw(to_counter).await), ErrorCode::WrongType);
        assert_eq!(client.counter("docs/c").get().await.unwrap(), 1);
        // The SDK refuses non-object JSON locally.
        assert!(matches!(client.doc("docs/e").put_json(&serde_json::json!([1])).await, Err(Error::InvalidArgument(_))));

        // A counter total beyond 2^64 - 1 is refused; the value stays where it was (saturated).
        let counter = client.counter("docs/n");
        counter.incr(i64::MAX).await.unwrap();
        assert_eq!(counter.incr(i64::MAX).await.unwrap(), i64::MAX);
        let err = counter.incr(i64::MAX).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err:?}");
        assert!(err.to_string().contains("overflow"), "{err}");
        assert_eq!(counter.get().await.unwrap(), i64::MAX);
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[test]
fn unknown_consistency_and_bad_tokens_fail_at_parse() {
    let err = "strong".parse::<meridian_client::Consistency>().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("\"strong\"") && text.contains("local_quorum"), "{text}");
    assert!("Causal".parse::<meridian_client::Consistency>().is_err());
    assert!("".parse::<meridian_client::Consistency>().is_err());

    for (bad, reason) in [
        ("mt1.zz", "base64"),
        ("xyz", "prefix"),
        ("", "prefix"),
        ("mt2.AQA", "prefix"),
        ("mt1.!!!", "base64"),
        ("mt1.AQ", ""),
        ("mt1.CQA", "format"),
    ] {
        let err = bad.parse::<CausalToken>().unwrap_err().to_string();
        assert!(err.starts_with("invalid causal token"), "{bad}: {err}");
        assert!(err.contains(reason), "{bad}: {err}");
    }
    let huge = format!("mt1.{}", "A".repeat(proto::MAX_TOKEN_BYTES));
    assert!(huge.parse::<CausalToken>().unwrap_err().to_string().contains("limit"));
    // The empty token round-trips.
    let empty = CausalToken::empty().to_string();
    assert_eq!(empty.parse::<CausalToken>().unwrap(), CausalToken::empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decoding_arbitrary_frame_bodies_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = proto::decode_frame_body::<Request>(&body, MAX_FRAME);
        // The same bytes behind a valid format byte and version tag reach deeper into the decoder.
        let deeper: Vec<u8> = [1u8, 0].iter().copied().chain(body.iter().copied()).collect();
        if let Ok(request) = proto::decode_frame_body::<Request>(&deeper, MAX_FRAME) {
            // Whatever decodes re-encodes to a frame that decodes to the same request.
            let frame = proto::encode_frame(&request);
            prop_assert_eq!(proto::decode_frame_body::<Request>(&frame[4..], MAX_FRAME).unwrap(), request);
        }
        let _ = proto::decode_frame_body::<Response>(&deeper, MAX_FRAME);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_answers_random_frame_bodies_with_errors_and_keeps_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let running = small_node(dir.path()).await;
    let raw = raw_connect(running.client_addr, &running.cert_path).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6d65_7269_6469_616e);
    bounded("random frames", async {
        for i in 0..20 {
            let len = rng.random_range(0..300);
            let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if i % 2 == 0 && body.len() >= 2 {
                body[0] = 1; // format byte
                body[1] = 0; // Request::V1
            }
            let valid = proto::decode_frame_body::<Request>(&body, MAX_FRAME).is_ok();
            match raw.send_raw(&framed(&body), true).await {
                RawAnswer::Frame(Response::V1(Err(error))) => {
                    let expected = [ErrorCode::BadRequest, ErrorCode::Unsupported];
                    assert!(valid || expected.contains(&error.code), "body {body:?}: {error:?}");
                }
                RawAnswer::Frame(Response::V1(Ok(reply))) => {
                    assert!(valid, "an undecodable body {body:?} was answered with {reply:?}");
                }
                other => panic!("body {body:?}: no response frame: {other:?}"),
            }
            still_serves(&raw).await;
        }
    })
    .await;
    raw.conn.close(0u32.into(), b"done");
    shutdown(running).await;
}

async fn try_connect(running: &RunningNode) -> Result<Client, Error> {
    bounded(
        "connect",
        Client::builder()
            .endpoint(running.client_addr.to_string())
            .ca_cert_file(&running.cert_path)
            .timeout(Duration::from_secs(2))
            .max_retries(0)
            .connect(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_while_the_first_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_connections = 1;
    let running = start_memory(cfg).await;
    let first = connect(&running).await;
    bounded("first connection", first.counter("conn/n").incr(1)).await.unwrap();

    let second = try_connect(&running).await;
    let refused = match second {
        Err(e) => e,
        // If the handshake slipped through, its first request must fail instead.
        Ok(client) => bounded("second request", client.status()).await.expect_err("a second connection was served"),
    };
    assert!(!matches!(refused, Error::Server { .. }), "{refused:?}");
    // A raw QUIC connection is refused as well.
    assert!(raw_connect(running.client_addr, &running.cert_path).await.is_err());

    assert_eq!(bounded("first still works", first.counter("conn/n").incr(1)).await.unwrap(), 2);
    assert_eq!(bounded("status", first.status()).await.unwrap().client_connections, 1);

    // Once the first closes, a new connection gets its slot.
    first.close().await;
    let replacement = bounded("a slot frees up", async {
        loop {
            if let Ok(client) = try_connect(&running).await {
                if client.status().await.is_ok() {
                    return client;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(bounded("read", replacement.counter("conn/n").get()).await.unwrap(), 2);
    replacement.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_inflight_limit_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_inflight_requests = 1;
    let running = start_memory(cfg).await;
    let client = connect(&running).await;
    let (applied, refused) = bounded("a burst over the inflight limit", async {
        let mut burst = Vec::new();
        for _ in 0..64 {
            let client = client.clone();
            burst.push(tokio::spawn(async move { client.counter("busy/n").incr(1).await }));
        }
        let (mut applied, mut refused) = (0, 0);
        for request in burst {
            match request.await.unwrap() {
                Ok(_) => applied += 1,
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::Overloaded), "{e:?}");
                    assert!(e.is_retryable());
                    refused += 1;
                }
            }
        }
        (applied, refused)
    })
    .await;
    assert_eq!(applied + refused, 64);
    assert!(applied >= 1);
    // A refused request was not applied at all: the counter counts exactly the acknowledged ones.
    assert_eq!(bounded("read", client.counter("busy/n").get()).await.unwrap(), applied);
    client.close().await;
    shutdown(running).await;
}

fn invalid_field(config: &Config) -> String {
    match config.validate() {
        Err(ConfigError::Invalid { field, reason }) => {
            assert!(!reason.is_empty());
            let shown = config.validate().unwrap_err().to_string();
            assert!(shown.contains(&format!("`{field}`")), "{shown}");
            field
        }
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn config_validation_names_the_field() {
    let base = Config::default();
    base.validate().unwrap();

    let mut c = base.clone();
    c.limits.max_value_bytes = c.limits.max_frame_bytes + 1;
    assert_eq!(invalid_field(&c), "limits.max_value_bytes");
    c.limits.max_value_bytes = c.limits.max_frame_bytes - 100; // not enough headroom either
    assert_eq!(invalid_field(&c), "limits.max_value_bytes");
    // A key must hold a write at the payload cap; merged state must have room for concurrent growth.
    let mut c = base.clone();
    c.limits.max_key_bytes = c.limits.max_value_bytes;
    assert_eq!(invalid_field(&c), "limits.max_key_bytes");
    let mut c = base.clone();
    c.limits.max_merged_key_bytes = 4 * c.limits.max_key_bytes - 1;
    assert_eq!(invalid_field(&c), "limits.max_merged_key_bytes");
    c.limits.max_merged_key_bytes = meridian_crdt::codec::ABSOLUTE_MAX_BYTES;
    assert_eq!(invalid_field(&c), "limits.max_merged_key_bytes");

    let long = "r".repeat(65);
    for region in ["eu west", "", "eu/west", "région", long.as_str()] {
        let mut c = base.clone();
        c.region = region.to_string();
        assert_eq!(invalid_field(&c), "region", "{region:?}");
    }
    let mut c = base.clone();
    c.node_name = "node\n1".into();
    assert_eq!(invalid_field(&c), "node_name");
    let mut c = base.clone();
    c.zone = "a:b".into();
    assert_eq!(invalid_field(&c), "zone");

    let mut c = base.clone();
    c.limits.max_frame_bytes = 100;
    assert_eq!(invalid_field(&c), "limits.max_frame_bytes");
    let mut c = base.clone();
    c.limits.max_frame_bytes = usize::MAX / 2;
    assert_eq!(invalid_field(&c), "limits.max_frame_bytes");
    let mut c = base.clone();
    c.limits.max_connections = 0;
    assert_eq!(invalid_field(&c), "limits.max_connections");
    let mut c = base.clone();
    c.storage.durability = "sometimes".into();
    assert_eq!(invalid_field(&c), "storage.durability");
    let mut c = base.clone();
    c.default_consistency = ConsistencyName("strong".into());
    assert_eq!(invalid_field(&c), "default_consistency");
    let mut c = base.clone();
    c.namespaces.insert("orders".into(), NamespaceConfig { consistency: ConsistencyName("strong".into()) });
    assert_eq!(invalid_field(&c), "namespaces.orders.consistency");
    let mut c = base.clone();
    c.namespaces.insert("a/b".into(), NamespaceConfig { consistency: ConsistencyName("causal".into()) });
    assert_eq!(invalid_field(&c), "namespaces.a/b");
    let mut c = base;
    c.tls.cert = Some("node.crt".into());
    assert_eq!(invalid_field(&c), "tls");
}
