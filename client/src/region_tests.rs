//! Region routing over real QUIC: fake regions made of in-process scripted servers
//! (`net_tests::TestServer`), each recording the requests — and so the causal tokens — it received.
//!
//! Times are never asserted, only orders and which region saw what. Every test is bounded.

use std::future::Future;
use std::time::Duration;

use crate::net_tests::{err, ok, token, write_id, Action, TestServer};
use crate::proto::{ErrorCode, ReplyBody};
use crate::{Client, ClientBuilder, Consistency, Value};

/// Every test finishes well within this.
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), test).await.expect("the test is bounded")
}

/// A builder trusting every server, with a short timeout so dead nodes cost little.
fn builder(servers: &[&TestServer]) -> ClientBuilder {
    servers.iter().fold(Client::builder(), |b, s| b.ca_cert_pem(s.cert_pem.clone())).timeout(Duration::from_millis(300))
}

fn names(client: &Client) -> Vec<String> {
    client.regions().into_iter().map(|r| r.name).collect()
}

fn written(counter: i64) -> ReplyBody {
    ReplyBody::Written { counter: Some(counter) }
}

#[tokio::test]
async fn preferred_region_first_without_measuring() {
    bounded(async {
        let (a, b, c) = (TestServer::start(), TestServer::start(), TestServer::start());
        let client = builder(&[&a, &b, &c])
            .region("a", [a.endpoint_string()])
            .region("b", [b.endpoint_string()])
            .region("c", [c.endpoint_string()])
            .prefer_region("c")
            .connect()
            .await
            .unwrap();
        assert_eq!(names(&client), ["c", "a", "b"]);
        assert!(client.regions().iter().all(|r| r.rtt.is_none()), "nothing measured");
        assert_eq!(client.regions()[0].endpoints, [c.endpoint_string()]);
        assert_eq!(client.current_region(), "c");
        assert_eq!(client.connected_endpoint().await, Some(c.endpoint_string()));
        client.counter("ns/k").incr(1).await.unwrap();
        assert_eq!(c.take_seen().len(), 1);
        assert_eq!((a.connections(), b.connections()), (0, 0), "the other regions were not contacted");
        client.close().await;
    })
    .await;
}

#[tokio::test]
async fn plain_endpoints_are_the_default_region() {
    bounded(async {
        let server = TestServer::start();
        let client = builder(&[&server]).endpoint(server.endpoint_string()).connect().await.unwrap();
        assert_eq!(names(&client), [crate::DEFAULT_REGION]);
        assert_eq!(client.current_region(), "default");
        assert_eq!(client.regions()[0].rtt, None, "a single region is not measured");
        client.close().await;
    })
    .await;
}

#[tokio::test]
async fn regions_ranked_by_measured_handshake_time() {
    bounded(async {
        let (slow, fast) = (TestServer::start(), TestServer::start());
        slow.delay_handshakes(Duration::from_millis(400));
        // A region whose only node never answers: unmeasured, ranked last.
        let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = black_hole.local_addr().unwrap().to_string();
        let client = builder(&[&slow, &fast])
            .timeout(Duration::from_millis(1500))
            .region("dead", [dead])
            .region("slow", [slow.endpoint_string()])
            .region("fast", [fast.endpoint_string()])
            .connect()
            .await
            .unwrap();
        assert_eq!(names(&client), ["fast", "slow", "dead"]);
        let regions = client.regions();
        let (fast_rtt, slow_rtt) = (regions[0].rtt.unwrap(), regions[1].rtt.unwrap());
        assert!(fast_rtt < slow_rtt, "{fast_rtt:?} vs {slow_rtt:?}");
        assert_eq!(regions[2].rtt, None);
        assert_eq!(client.current_region(), "fast");
        client.counter("ns/k").incr(1).await.unwrap();
        assert_eq!((fast.take_seen().len(), slow.take_seen().len()), (1, 0));
        client.close().await;
    })
    .await;
}

#[tokio::test]
async fn session_fails_over_to_the_next_region_with_its_token_and_write_id() {
    bounded(async {
        let (a1, a2, b1) = (TestServer::start(), TestServer::start(), TestServer::start());
        let client = builder(&[&a1, &a2, &b1])
            .region("a", [a1.endpoint_string(), a2.endpoint_string()])
            .region("b", [b1.endpoint_string()])
            .prefer_region("a")
            .connect()
            .await
            .unwrap();
        assert_eq!(client.current_region(), "a");

        // The session writes and reads in region a; its token is the merge of both replies.
        let session = client.session();
        a1.script([ok(token(&[(1, 5)]), written(1)), ok(token(&[(2, 3)]), ReplyBody::Value(Some(Value::Counter(1))))]);
        assert_eq!(session.counter("ns/k").incr(1).await.unwrap(), 1);
        assert_eq!(session.counter("ns/k").get().await.unwrap(), 1);
        let before = session.token();
        assert_eq!(before, token(&[(1, 5), (2, 3)]));
        assert_eq!(a1.take_seen().len(), 2);

        // A write reaches a1, then the whole region goes down before it answers.
        a1.script([Action::Silent]);
        b1.script([ok(token(&[(3, 1)]), written(3))]);
        let write = tokio::spawn({
            let session = session.clone();
            async move { session.counter("ns/k").incr(2).await }
        });
        while a1.take_seen().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a2.shut_down();
        a1.shut_down();
        assert_eq!(write.await.unwrap().unwrap(), 3);

        // Region b got the retry: same idempotency id, and exactly the token merged before failover.
        let seen = b1.take_seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].causal_token, Some(before.clone()));
        assert_eq!(seen[0].consistency, Some(Consistency::Causal));
        write_id(&seen[0]);
        assert_eq!(client.current_region(), "b");
        assert_eq!(client.connected_endpoint().await, Some(b1.endpoint_string()));

        // b's reply is merged in, and the next request (still in b) carries the whole token.
        assert_eq!(session.token(), token(&[(1, 5), (2, 3), (3, 1)]));
        b1.script([ok(token(&[]), ReplyBody::Value(Some(Value::Counter(3))))]);
        assert_eq!(session.counter("ns/k").get().await.unwrap(), 3);
        assert_eq!(b1.take_seen()[0].causal_token, Some(token(&[(1, 5), (2, 3), (3, 1)])));
        client.close().await;
    })
    .await;
}

#[tokio::test]
async fn write_retried_in_the_next_region_keeps_its_idempotency_id() {
    bounded(async {
        // Every node of region a is reachable but shutting down: the region is unavailable.
        let (a1, a2, b1) = (TestServer::start(), TestServer::start(), TestServer::start());
        let client = builder(&[&a1, &a2, &b1])
            .region("a", [a1.endpoint_string(), a2.endpoint_string()])
            .region("b", [b1.endpoint_string()])
            .prefer_region("a")
            .connect()
            .await
            .unwrap();
        a1.script([err(ErrorCode::ShuttingDown)]);
        a2.script([err(ErrorCode::ShuttingDown)]);
        b1.script([ok(token(&[]), written(7))]);
        assert_eq!(client.counter("ns/k").incr(7).await.unwrap(), 7);
        let (in_a1, in_a2, in_b1) = (a1.take_seen(), a2.take_seen(), b1.take_seen());
        assert_eq!((in_a1.len(), in_a2.len(), in_b1.len()), (1, 1, 1), "a1, then a2, then region b");
        assert_eq!(write_id(&in_a1[0]), write_id(&in_b1[0]));
        assert_eq!(write_id(&in_a2[0]), write_id(&in_b1[0]));
        assert_eq!(client.current_region(), "b");
        client.close().await;
    })
    .await;
}

#[tokio::test]
async fn causal_timeout_stays_quorum_unavailable_moves_only_at_local_quorum() {
    bounded(async {
        let (a, b) = (TestServer::start(), TestServer::start());
        let client = builder(&[&a, &b])
            .region("a", [a.endpoint_string()])
            .region("b", [b.endpoint_string()])
            .prefer_region("a")
            .max_retries(2)
            .connect()
            .await
            .unwrap();

        // causal_timeout: retried in place, then returned; region b never sees the request.
        let session = client.session();
        session.merge_token(&token(&[(9, 9)]));
        a.script((0..3).map(|_| err(ErrorCode::CausalTimeout)));
        let error = session.counter("ns/k").get().await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::CausalTimeout));
        let seen = a.take_seen();
        assert_eq!(seen.len(), 3, "the first attempt and two retries, all in a");
        assert!(seen.iter().all(|r| r.causal_token == Some(token(&[(9, 9)]))));
        assert!(b.take_seen().is_empty());
        assert_eq!(client.current_region(), "a");

        // quorum_unavailable at quorum: retried in place.
        a.script([err(ErrorCode::QuorumUnavailable)]);
        client.counter("ns/k").consistency(Consistency::Quorum).incr(1).await.unwrap();
        assert_eq!((a.take_seen().len(), b.take_seen().len()), (2, 0));
        assert_eq!(client.current_region(), "a");

        // quorum_unavailable at local_quorum: another region forms its own majority.
        a.script([err(ErrorCode::QuorumUnavailable)]);
        client.counter("ns/k").consistency(Consistency::LocalQuorum).incr(1).await.unwrap();
        let (in_a, in_b) = (a.take_seen(), b.take_seen());
        assert_eq!((in_a.len(), in_b.len()), (1, 1));
        assert_eq!(write_id(&in_a[0]), write_id(&in_b[0]));
        assert_eq!(in_b[0].consistency, Some(Consistency::LocalQuorum));
        assert_eq!(client.current_region(), "b");
        client.close().await;
    })
    .await;
}

#[tokio::test]
async fn traffic_returns_to_the_preferred_region_once_it_is_back() {
    bounded(async {
        let (a, b) = (TestServer::start(), TestServer::start());
        let client = builder(&[&a, &b])
            .region("a", [a.endpoint_string()])
            .region("b", [b.endpoint_string()])
            .prefer_region("a")
            .failback_interval(Duration::from_millis(200))
            .connect()
            .await
            .unwrap();

        a.set_down(true);
        client.counter("ns/k").incr(1).await.unwrap();
        assert_eq!(client.current_region(), "b");
        assert_eq!(b.take_seen().len(), 1);

        // While a is still down, probes fail in the background and traffic stays in b.
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.counter("ns/k").incr(1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(client.current_region(), "b");

        // a heals: a later request triggers a probe that succeeds, and traffic returns to a.
        a.set_down(false);
        a.take_seen();
        let mut requests = 0;
        while client.current_region() != "a" {
            assert!(requests < 100, "never failed back");
            client.counter("ns/k").incr(1).await.unwrap();
            requests += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(requests >= 1);
        client.counter("ns/k").incr(1).await.unwrap();
        assert_eq!(a.take_seen().len(), 1, "served by the preferred region again");
        assert_eq!(client.connected_endpoint().await, Some(a.endpoint_string()));
        client.close().await;
    })
    .await;
}
