//! The one real-network test: a scripted in-process QUIC server on loopback.
//!
//! No node is available to the SDK's own tests (end-to-end tests against a real node live
//! elsewhere), but the transport deserves a real wire: TLS with a certificate generated here, ALPN,
//! one stream per request, length-prefixed frames. The server answers each stream from a script of
//! canned responses and records every request it decoded, so the test can prove what was *sent*:
//! the same idempotency id on every retry of a write, the session token on the next request.
//!
//! The harness (`TestServer`, `ok`, `err`, `token`, `write_id`) is shared with `region_tests`, which
//! runs one or more servers per fake region; for that a server can delay its handshakes, go down
//! (close its connections and ignore new ones) and come back, or shut down for good.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_crdt::{Mutation, NodeId, Value};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::proto::{
    self, CausalToken, Consistency, ErrorCode, ErrorReply, Key, Operation, Reply, ReplyBody, Request, RequestV1,
    Response,
};
use crate::{Client, CrdtType, Error};

/// What the server does with one request.
pub(crate) enum Action {
    Reply(Box<Response>),
    /// Reads the request and never answers.
    Silent,
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Action>>,
    seen: Mutex<Vec<RequestV1>>,
    connections: AtomicUsize,
    /// Milliseconds to wait before answering a handshake.
    handshake_delay_ms: AtomicU64,
    /// Down: new handshakes are ignored (as by a dead host) and `live` connections were closed.
    down: AtomicBool,
    live: Mutex<Vec<quinn::Connection>>,
}

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) cert_pem: String,
    shared: Arc<Shared>,
    pub(crate) endpoint: quinn::Endpoint,
}

pub(crate) fn token(entries: &[(u64, u64)]) -> CausalToken {
    CausalToken(entries.iter().map(|&(n, s)| (NodeId(n), s)).collect())
}

pub(crate) fn ok(causal_token: CausalToken, body: ReplyBody) -> Action {
    Action::Reply(Box::new(Response::V1(Ok(Reply { causal_token, body }))))
}

pub(crate) fn err(code: ErrorCode) -> Action {
    Action::Reply(Box::new(Response::V1(Err(ErrorReply::new(code, format!("scripted {}", code.name()))))))
}

impl TestServer {
    pub(crate) fn start() -> TestServer {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert: CertificateDer<'static> = ck.cert.der().clone();
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        tls.alpn_protocols = vec![proto::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let shared = Arc::new(Shared::default());
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        TestServer { addr: endpoint.local_addr().unwrap(), cert_pem: ck.cert.pem(), shared, endpoint }
    }

    pub(crate) fn script(&self, actions: impl IntoIterator<Item = Action>) {
        self.shared.script.lock().unwrap().extend(actions);
    }

    pub(crate) fn take_seen(&self) -> Vec<RequestV1> {
        std::mem::take(&mut *self.shared.seen.lock().unwrap())
    }

    pub(crate) fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The address as a client endpoint string.
    pub(crate) fn endpoint_string(&self) -> String {
        self.addr.to_string()
    }

    /// Delays every later handshake by `delay` (a far-away region).
    pub(crate) fn delay_handshakes(&self, delay: Duration) {
        self.shared.handshake_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Down (`true`): closes every connection and ignores new handshakes, like a dead host; up again
    /// (`false`): accepts handshakes again.
    pub(crate) fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            for conn in self.shared.live.lock().unwrap().drain(..) {
                conn.close(0u32.into(), b"down");
            }
        }
    }

    /// Shuts the server down for good: closes its connections and refuses new ones.
    pub(crate) fn shut_down(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        self.endpoint.close(0u32.into(), b"shut down");
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        if shared.down.load(Ordering::SeqCst) {
            incoming.ignore();
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let delay = shared.handshake_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let Ok(conn) = incoming.await else { return };
            shared.connections.fetch_add(1, Ordering::SeqCst);
            shared.live.lock().unwrap().push(conn.clone());
            // A handshake that completed while the server went down does not survive it.
            if shared.down.load(Ordering::SeqCst) {
                conn.close(0u32.into(), b"down");
                return;
            }
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve_stream(send, recv, shared.clone()));
            }
        });
    }
}

async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, shared: Arc<Shared>) {
    let Ok(Request::V1(request)) = proto::read_frame::<Request>(&mut recv, proto::DEFAULT_MAX_FRAME_BYTES).await else {
        return;
    };
    shared.seen.lock().unwrap().push(request);
    let action = shared.script.lock().unwrap().pop_front();
    let response = match action {
        Some(Action::Reply(response)) => *response,
        Some(Action::Silent) => {
            // Hold the stream open without answering until the client gives up on it.
            let _ = send.stopped().await;
            return;
        }
        None => Response::V1(Ok(Reply { causal_token: token(&[]), body: ReplyBody::Written { counter: Some(0) } })),
    };
    let _ = send.write_all(&proto::encode_frame(&response)).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

pub(crate) fn write_id(request: &RequestV1) -> proto::IdempotencyId {
    match &request.op {
        Operation::Write { idempotency_id, .. } | Operation::Delete { idempotency_id, .. } => {
            idempotency_id.expect("writes always carry an idempotency id")
        }
        other => panic!("expected a write, got {other:?}"),
    }
}

#[tokio::test]
async fn loopback_round_trip_retries_sessions_and_failover() {
    tokio::time::timeout(Duration::from_secs(60), scenario()).await.expect("the scenario is bounded");
}

async fn scenario() {
    let server = TestServer::start();
    // A bound UDP socket that never reads: a node that never answers (and sends no ICMP errors).
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = black_hole.local_addr().unwrap().to_string();
    let live = server.addr.to_string();

    // Failover at connect: the first endpoint never answers, the second does.
    let client = Client::builder()
        .endpoint(&dead)
        .endpoint(&live)
        .ca_cert_pem(server.cert_pem.clone())
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    assert_eq!(client.connected_endpoint().await, Some(live.clone()));

    // A retried write reuses its idempotency id; the session token is sent and merged.
    let key = Key::new("ns", "k").unwrap();
    let session = client.session();
    server.script([err(ErrorCode::Overloaded), ok(token(&[(1, 5)]), ReplyBody::Written { counter: Some(3) })]);
    assert_eq!(session.counter("ns/k").incr(3).await.unwrap(), 3);
    let seen = server.take_seen();
    assert_eq!(seen.len(), 2, "one failure, one retry");
    assert_eq!(write_id(&seen[0]), write_id(&seen[1]));
    for request in &seen {
        assert_eq!(request.consistency, Some(Consistency::Causal));
        assert_eq!(request.causal_token, Some(CausalToken::empty()));
        assert_eq!(request.timeout_ms, 500);
        assert!(
            matches!(&request.op, Operation::Write { key: k, mutation: Mutation::CounterAdd { amount: 3 }, .. } if *k == key)
        );
    }
    assert_eq!(session.token(), token(&[(1, 5)]));
    assert_eq!(server.connections(), 1, "both attempts used the connection made by connect()");

    // The next request of the session carries the merged token; its reply's token is merged in turn.
    server.script([ok(token(&[(2, 1)]), ReplyBody::Value(Some(Value::Counter(3))))]);
    assert_eq!(session.counter(&key).get().await.unwrap(), 3);
    let seen = server.take_seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].causal_token, Some(token(&[(1, 5)])));
    assert_eq!(seen[0].op, Operation::Read { key: key.clone(), expected: Some(CrdtType::Counter) });
    assert_eq!(session.token(), token(&[(1, 5), (2, 1)]));

    // Non-retryable node errors come back at once, typed; no session, no token, default consistency.
    server.script([err(ErrorCode::WrongType)]);
    let error = client.register("ns/k").get().await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::WrongType));
    let seen = server.take_seen();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].consistency, seen[0].causal_token.clone()), (None, None));
    assert_eq!(seen[0].op, Operation::Read { key: key.clone(), expected: Some(CrdtType::Register) });

    // Retries stop after max_retries (default 3): four attempts, one id.
    server.script((0..4).map(|_| err(ErrorCode::Overloaded)));
    let error = client.delete("ns/k").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Overloaded));
    let seen = server.take_seen();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|r| write_id(r) == write_id(&seen[0])));

    // raw() adds an idempotency id to a write that has none, and otherwise sends what it is given.
    let request = RequestV1 {
        consistency: Some(Consistency::Quorum),
        causal_token: None,
        timeout_ms: 0,
        op: Operation::Write { key: key.clone(), mutation: Mutation::CounterAdd { amount: 1 }, idempotency_id: None },
    };
    let reply = client.raw(request).await.unwrap();
    assert_eq!(reply.body, ReplyBody::Written { counter: Some(0) });
    let seen = server.take_seen();
    assert_eq!((seen[0].consistency, seen[0].timeout_ms), (Some(Consistency::Quorum), 0));
    write_id(&seen[0]);

    // Invalid keys and arguments never reach the wire.
    assert!(matches!(client.counter("no-namespace").incr(1).await, Err(Error::InvalidArgument(_))));
    assert!(matches!(client.counter("ns/k").decr(i64::MIN).await, Err(Error::InvalidArgument(_))));
    assert!(matches!(client.keys("a/b").page().await, Err(Error::InvalidArgument(_))));
    assert!(server.take_seen().is_empty());

    // A node shutting down: drop the connection, fail over to the next endpoint (wrapping around to
    // the dead one, which times out, then back to the live one) and retry there.
    server.script([err(ErrorCode::ShuttingDown), ok(token(&[]), ReplyBody::Deleted { existed: true })]);
    assert!(client.delete("ns/k").await.unwrap());
    let seen = server.take_seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(write_id(&seen[0]), write_id(&seen[1]));
    assert_eq!(server.connections(), 2, "the retry ran on a new connection");

    // A node that never answers: Error::Timeout after the per-attempt timeout.
    let impatient = Client::builder()
        .endpoint(&live)
        .ca_cert_pem(server.cert_pem.clone())
        .timeout(Duration::from_millis(300))
        .max_retries(0)
        .connect()
        .await
        .unwrap();
    server.script([Action::Silent]);
    assert_eq!(impatient.status().await.unwrap_err(), Error::Timeout { after_ms: 300 });

    // A node whose certificate is not trusted: a TLS error, not a retryable connect error.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap().cert.pem();
    let refused =
        Client::builder().endpoint(&live).ca_cert_pem(stranger).timeout(Duration::from_secs(2)).connect().await;
    assert!(matches!(&refused, Err(Error::Tls(m)) if m.contains("handshake")), "{refused:?}");

    impatient.close().await;
    client.close().await;
    server.endpoint.close(0u32.into(), b"done");
    drop(black_hole);
}

#[tokio::test]
async fn a_pipeline_goes_in_one_frame_retries_whole_and_falls_back_on_an_older_node() {
    tokio::time::timeout(Duration::from_secs(60), pipeline_scenario()).await.expect("the scenario is bounded");
}

async fn pipeline_scenario() {
    let server = TestServer::start();
    let client = Client::builder()
        .endpoint(server.endpoint_string())
        .ca_cert_pem(server.cert_pem.clone())
        .connect()
        .await
        .unwrap();
    let ops_of = |request: &RequestV1| match &request.op {
        Operation::Pipeline(ops) => ops.clone(),
        other => panic!("expected a pipeline, got {other:?}"),
    };

    // One frame; a retry resends it whole with the same idempotency ids; the session's token is
    // sent and the reply's merged.
    let session = client.session();
    let answers = vec![Ok(ReplyBody::Written { counter: Some(1) }), Ok(ReplyBody::Value(None))];
    server.script([err(ErrorCode::Overloaded), ok(token(&[(1, 5)]), ReplyBody::Pipeline(answers.clone()))]);
    let mut pipeline = session.pipeline();
    pipeline.incr("ns/a", 1).get("ns/b");
    let got = pipeline.run().await.unwrap();
    assert_eq!(got, answers.into_iter().map(|a| a.map_err(Error::from)).collect::<Vec<_>>());
    let seen = server.take_seen();
    assert_eq!(seen.len(), 2, "one refusal, one retry");
    let (first, second) = (ops_of(&seen[0]), ops_of(&seen[1]));
    assert_eq!(first, second, "the retry is the same pipeline, ids included");
    assert_eq!(first.len(), 2);
    write_id(&RequestV1 { op: first[0].clone(), ..seen[0].clone() });
    assert_eq!(first[1], Operation::Read { key: Key::new("ns", "b").unwrap(), expected: None });
    assert_eq!(seen[0].causal_token, Some(CausalToken::empty()));
    assert_eq!(session.token(), token(&[(1, 5)]));

    // An operation's own error stays in its place.
    let refused = Err(ErrorReply::new(ErrorCode::WrongType, "not a counter"));
    server.script([ok(token(&[]), ReplyBody::Pipeline(vec![refused, Ok(ReplyBody::Deleted { existed: true })]))]);
    let mut pipeline = client.pipeline();
    pipeline.incr("ns/a", 1).delete("ns/c");
    let got = pipeline.run().await.unwrap();
    assert_eq!(got[0].as_ref().unwrap_err().code(), Some(ErrorCode::WrongType));
    assert_eq!(got[1], Ok(ReplyBody::Deleted { existed: true }));
    server.take_seen();

    // A node older than pipelines cannot decode the frame: the operations go one by one, in order.
    let old = Action::Reply(Box::new(Response::V1(Err(ErrorReply::new(
        ErrorCode::BadRequest,
        "malformed frame: malformed: unexpected variant index 14",
    )))));
    server.script([
        old,
        ok(token(&[(2, 1)]), ReplyBody::Written { counter: Some(4) }),
        ok(token(&[(2, 1)]), ReplyBody::Value(Some(Value::Counter(4)))),
    ]);
    let mut pipeline = client.pipeline();
    pipeline.incr("ns/a", 3).get("ns/a");
    let got = pipeline.run().await.unwrap();
    assert_eq!(got, vec![Ok(ReplyBody::Written { counter: Some(4) }), Ok(ReplyBody::Value(Some(Value::Counter(4))))]);
    let seen = server.take_seen();
    assert_eq!(seen.len(), 3);
    assert!(matches!(&seen[1].op, Operation::Write { mutation: Mutation::CounterAdd { amount: 3 }, .. }));
    assert_eq!(ops_of(&seen[0])[0], seen[1].op, "the single write carries the pipeline's id");
    assert!(matches!(&seen[2].op, Operation::Read { .. }));

    // Running the same pipeline again sends the same ids: what was applied is not applied twice.
    let mut pipeline = client.pipeline();
    pipeline.incr("ns/a", 1).delete("ns/b");
    let answers = || {
        ReplyBody::Pipeline(vec![
            Ok(ReplyBody::Written { counter: Some(1) }),
            Ok(ReplyBody::Deleted { existed: false }),
        ])
    };
    server.script([ok(token(&[]), answers()), ok(token(&[]), answers())]);
    pipeline.run().await.unwrap();
    pipeline.run().await.unwrap();
    let seen = server.take_seen();
    assert_eq!(ops_of(&seen[0]), ops_of(&seen[1]));
    write_id(&RequestV1 { op: ops_of(&seen[0])[1].clone(), ..seen[0].clone() });

    // A reply that does not answer every operation is a protocol error.
    server.script([ok(token(&[]), ReplyBody::Pipeline(vec![Ok(ReplyBody::Value(None))]))]);
    let mut pipeline = client.pipeline();
    pipeline.get("ns/a").get("ns/b");
    assert!(matches!(pipeline.run().await, Err(Error::Protocol(_))));
    server.take_seen();

    // An invalid key fails the pipeline before anything is sent; an empty one sends nothing.
    let mut pipeline = client.pipeline();
    pipeline.get("ns/a").set("no-namespace", "v");
    assert_eq!(pipeline.len(), 2);
    assert!(matches!(pipeline.run().await, Err(Error::InvalidArgument(m)) if m.contains("operation 1")));
    assert_eq!(client.pipeline().run().await.unwrap(), Vec::new());
    assert!(server.take_seen().is_empty());

    client.close().await;
    server.endpoint.close(0u32.into(), b"done");
}
