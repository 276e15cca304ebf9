//! The peer transport's mutual TLS over loopback QUIC: nodes with certificates from one cluster CA
//! exchange requests in both directions and see each other's verified identity; everything else —
//! no certificate, another CA, another cluster, a client certificate posing as a node, the wrong
//! node — is refused with a clear error; bad streams are refused without killing the connection;
//! and the `meridian certs` CLI produces material the transport accepts. Every test is bounded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_server::certs::{
    self, generate_ca, issue_client_cert, issue_node_cert, parse_cert_identity, parse_identity, CaBundle, CertIdentity,
    ClientIdentity, IdentityError, NodeIdentity,
};
use meridian_server::peer::{
    codes, PeerConnection, PeerEndpoint, PeerError, PeerHandler, PeerIdentity, PeerPool, PeerTlsConfig,
    PeerTransportConfig, StreamRefusal, TraceContext, ALPN, ALPN_V2,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

mod common;
use common::{meridian, succeed};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `future` with a 60 s ceiling, so a hang fails the test instead of blocking the suite.
async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future).await.expect("the test timed out")
}

fn identity(cluster: &str, region: &str, zone: &str, name: &str) -> NodeIdentity {
    NodeIdentity { cluster_id: cluster.into(), region: region.into(), zone: zone.into(), name: name.into() }
}

fn tls_for(ca: &CaBundle, node: &NodeIdentity) -> PeerTlsConfig {
    let (cert_pem, key_pem) = issue_node_cert(ca, node, &["localhost", "127.0.0.1"]).unwrap();
    PeerTlsConfig { ca_pem: ca.cert_pem.clone(), cert_pem, key_pem, cluster_id: node.cluster_id.clone() }
}

/// Answers `<me> saw <peer name>/<region>/<zone>: <request>`, and a few special requests.
struct Echo {
    me: String,
    seen: Mutex<Vec<PeerIdentity>>,
    traces: Mutex<Vec<Option<TraceContext>>>,
}

impl PeerHandler for Echo {
    async fn handle(
        &self,
        peer: &PeerIdentity,
        _version: u8,
        trace: Option<TraceContext>,
        request: Vec<u8>,
    ) -> Vec<u8> {
        self.seen.lock().unwrap().push(peer.clone());
        self.traces.lock().unwrap().push(trace);
        match request.as_slice() {
            b"big" => vec![7; 100 << 10],
            b"panic" => panic!("handler panic requested by the test"),
            b"slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                b"slow done".to_vec()
            }
            _ => {
                let mut response =
                    format!("{} saw {}/{}/{}: ", self.me, peer.name, peer.region, peer.zone).into_bytes();
                response.extend_from_slice(&request);
                response
            }
        }
    }
}

/// A serving node.
struct Node {
    endpoint: PeerEndpoint,
    addr: SocketAddr,
    handler: Arc<Echo>,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start(tls: PeerTlsConfig, config: PeerTransportConfig) -> Node {
        let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), tls, config).expect("bind");
        let addr = endpoint.local_addr().unwrap();
        let handler = Arc::new(Echo {
            me: endpoint.identity().name.clone(),
            seen: Mutex::new(Vec::new()),
            traces: Mutex::new(Vec::new()),
        });
        let shutdown = CancellationToken::new();
        let served = tokio::spawn({
            let (endpoint, handler, shutdown) = (endpoint.clone(), handler.clone(), shutdown.clone());
            async move { endpoint.serve(handler, shutdown).await }
        });
        Node { endpoint, addr, handler, shutdown, served }
    }

    fn seen(&self) -> Vec<PeerIdentity> {
        self.handler.seen.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        bounded(self.served).await.unwrap();
    }
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    certs::certs_from_pem(pem.as_bytes(), "test").unwrap()
}

fn pem_key(pem: &str) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes()).unwrap().unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A bare quinn client speaking the peer ALPN, trusting `ca_pem`, presenting `identity` (or nothing).
fn raw_client(ca_pem: &str, identity: Option<(&str, &str)>) -> quinn::Endpoint {
    raw_client_speaking(ca_pem, identity, ALPN)
}

/// [`raw_client`] offering only the protocol version `alpn`.
fn raw_client_speaking(ca_pem: &str, identity: Option<(&str, &str)>, alpn: &[u8]) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder.with_client_auth_cert(pem_certs(cert), pem_key(key)).unwrap(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

/// A bare quinn server speaking the peer ALPN and presenting `cert`; it asks for no client
/// certificate and holds every connection until the peer closes it.
fn raw_server(cert: &str, key: &str) -> (quinn::Endpoint, SocketAddr) {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pem_certs(cert), pem_key(key))
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let endpoint =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(quic)), "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                if let Ok(connection) = incoming.await {
                    connection.closed().await;
                }
            });
        }
    });
    (endpoint, addr)
}

/// Connects a raw client and returns how the server ended the connection: the handshake error, or
/// the error it closed the established connection with.
async fn raw_outcome(client: &quinn::Endpoint, addr: SocketAddr) -> quinn::ConnectionError {
    match client.connect(addr, "localhost").unwrap().await {
        Err(e) => e,
        Ok(connection) => {
            // The server judges the client's certificate after the client's side of the handshake
            // completed; a stream makes sure the refusal is observed.
            if let Ok((mut send, _recv)) = connection.open_bi().await {
                let _ = send.write_all(&5u32.to_be_bytes()).await;
                let _ = send.write_all(b"hello").await;
            }
            connection.closed().await
        }
    }
}

/// The TLS alert a connection was closed with (QUIC CRYPTO_ERROR 0x100 + alert).
fn tls_alert(error: &quinn::ConnectionError) -> Option<u64> {
    let code = match error {
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        _ => return None,
    };
    (0x100..=0x1ff).contains(&code).then(|| code - 0x100)
}

/// The application close code and reason of a refused connection.
fn app_close(error: &quinn::ConnectionError) -> (u64, String) {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (close.error_code.into_inner(), String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

/// TLS alert numbers (RFC 8446 §6).
const ALERT_UNKNOWN_CA: u64 = 48;
const ALERT_CERTIFICATE_REQUIRED: u64 = 116;

#[tokio::test]
async fn nodes_exchange_requests_both_ways_with_verified_identities() {
    bounded(async {
        let ca = generate_ca("alpha").unwrap();
        let a_id = identity("alpha", "eu-west", "eu-west-1a", "node-a");
        let b_id = identity("alpha", "us-east", "us-east-1b", "node-b");
        let a = Node::start(tls_for(&ca, &a_id), PeerTransportConfig::default()).await;
        let b = Node::start(tls_for(&ca, &b_id), PeerTransportConfig::default()).await;
        assert_eq!(a.endpoint.identity(), &a_id);

        let a_to_b = a.endpoint.connect(b.addr, Some("node-b")).await.unwrap();
        assert_eq!(a_to_b.peer(), &b_id, "the dialler sees the verified identity of the node it dialled");
        let b_to_a = b.endpoint.connect(a.addr, None).await.unwrap();
        assert_eq!(b_to_a.peer(), &a_id);

        let reply = a_to_b.request(b"hello".to_vec(), TIMEOUT).await.unwrap();
        assert_eq!(reply, b"node-b saw node-a/eu-west/eu-west-1a: hello");
        let reply = b_to_a.request(b"hi".to_vec(), TIMEOUT).await.unwrap();
        assert_eq!(reply, b"node-a saw node-b/us-east/us-east-1b: hi");

        // Many concurrent requests multiplex over one connection, each on its own stream.
        let replies = futures::future::join_all(
            (0..50).map(|i| a_to_b.request(format!("#{i}").into_bytes(), TIMEOUT)),
        )
        .await;
        for (i, reply) in replies.into_iter().enumerate() {
            assert_eq!(reply.unwrap(), format!("node-b saw node-a/eu-west/eu-west-1a: #{i}").into_bytes());
        }
        // An empty request is a valid request.
        assert_eq!(a_to_b.request(Vec::new(), TIMEOUT).await.unwrap(), b"node-b saw node-a/eu-west/eu-west-1a: ");

        assert!(b.seen().iter().all(|peer| peer == &a_id), "every request B handled came from A's certificate");
        assert_eq!(b.seen().len(), 52);
        assert_eq!(a.seen(), [b_id]);

        // Dialling a node under another name is refused after the handshake.
        let err = a.endpoint.connect(b.addr, Some("node-c")).await.unwrap_err();
        assert!(
            matches!(&err, PeerError::Identity { source: IdentityError::UnexpectedName { found, .. }, .. } if found == "node-b"),
            "{err}"
        );
        assert!(!err.is_retryable());

        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    bounded(async {
        let ca = generate_ca("alpha").unwrap();
        let a = Node::start(tls_for(&ca, &identity("alpha", "eu", "eu-1", "node-a")), Default::default()).await;
        let client = raw_client(&ca.cert_pem, None);
        let outcome = raw_outcome(&client, a.addr).await;
        assert_eq!(tls_alert(&outcome), Some(ALERT_CERTIFICATE_REQUIRED), "{outcome}");
        assert!(a.seen().is_empty(), "no request reached the handler");
        a.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    bounded(async {
        let ca = generate_ca("alpha").unwrap();
        // Same software, same cluster id, but another CA: nothing it signed is trusted.
        let rogue_ca = generate_ca("alpha").unwrap();
        let a = Node::start(tls_for(&ca, &identity("alpha", "eu", "eu-1", "node-a")), Default::default()).await;
        let mallory = identity("alpha", "eu", "eu-1", "mallory");
        let rogue_tls = tls_for(&rogue_ca, &mallory);

        // Presented to our node (by a client that trusts our CA): refused by the TLS layer.
        let client = raw_client(&ca.cert_pem, Some((&rogue_tls.cert_pem, &rogue_tls.key_pem)));
        let outcome = raw_outcome(&client, a.addr).await;
        assert_eq!(tls_alert(&outcome), Some(ALERT_UNKNOWN_CA), "{outcome}");

        // Presented by a node we dial: refused by our side of the handshake.
        let rogue = Node::start(rogue_tls, Default::default()).await;
        let err = a.endpoint.connect(rogue.addr, None).await.unwrap_err();
        assert!(matches!(err, PeerError::Tls { .. }), "{err}");
        assert!(!err.is_retryable());
        // And the rogue node cannot reach us either (it does not trust our CA).
        let err = rogue.endpoint.connect(a.addr, None).await.unwrap_err();
        assert!(matches!(err, PeerError::Tls { .. }), "{err}");

        assert!(a.seen().is_empty() && rogue.seen().is_empty());
        a.stop().await;
        rogue.stop().await;
    })
    .await;
}

/// A CA made directly with rcgen, able to sign identities `meridian certs` would refuse to issue.
struct HandCa {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl HandCa {
    fn new(cluster: &str) -> HandCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("hand-made CA {cluster}"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        params.subject_alt_names =
            vec![rcgen::SanType::URI(format!("urn:meridian:cluster:{cluster}").try_into().unwrap())];
        let cert_pem = params.self_signed(&key).unwrap().pem();
        HandCa { cert_pem, issuer: rcgen::Issuer::new(params, key) }
    }

    /// A leaf for localhost/127.0.0.1 with `uri` as its identity.
    fn sign(&self, uri: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }

    fn tls(&self, node: &NodeIdentity) -> PeerTlsConfig {
        let (cert_pem, key_pem) = self.sign(&node.uri());
        PeerTlsConfig { ca_pem: self.cert_pem.clone(), cert_pem, key_pem, cluster_id: node.cluster_id.clone() }
    }
}

#[tokio::test]
async fn another_cluster_is_refused() {
    bounded(async {
        // (1) Another cluster's CA (same software, another cluster id): the chain does not verify.
        let ca = generate_ca("alpha").unwrap();
        let beta_ca = generate_ca("beta").unwrap();
        let a = Node::start(tls_for(&ca, &identity("alpha", "eu", "eu-1", "node-a")), Default::default()).await;
        let beta_tls = tls_for(&beta_ca, &identity("beta", "eu", "eu-1", "node-x"));
        let client = raw_client(&ca.cert_pem, Some((&beta_tls.cert_pem, &beta_tls.key_pem)));
        assert_eq!(tls_alert(&raw_outcome(&client, a.addr).await), Some(ALERT_UNKNOWN_CA));
        let beta = Node::start(beta_tls, Default::default()).await;
        assert!(matches!(a.endpoint.connect(beta.addr, None).await, Err(PeerError::Tls { .. })));
        // A node configured for cluster alpha that trusts beta's CA does not even start.
        let (cert_pem, key_pem) = issue_node_cert(&ca, &identity("alpha", "eu", "eu-1", "node-z"), &["localhost"]).unwrap();
        let err = PeerEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            PeerTlsConfig { ca_pem: beta_ca.cert_pem.clone(), cert_pem, key_pem, cluster_id: "alpha".into() },
            Default::default(),
        )
        .unwrap_err();
        assert!(matches!(&err, PeerError::Config(m) if m.contains("beta")), "{err}");

        // (2) A certificate signed by *our* CA whose URI names another cluster: the chain verifies,
        // the identity check refuses it, on both sides.
        let hand = HandCa::new("alpha");
        let h = Node::start(hand.tls(&identity("alpha", "eu", "eu-1", "node-h")), Default::default()).await;
        let (forged_cert, forged_key) = hand.sign("urn:meridian:cluster:beta:region:eu:zone:eu-1:node:node-f");

        // A forged dialler: refused by the accepting node with CLOSE_WRONG_CLUSTER.
        let client = raw_client(&hand.cert_pem, Some((&forged_cert, &forged_key)));
        let (code, reason) = app_close(&raw_outcome(&client, h.addr).await);
        assert_eq!(code, u64::from(codes::CLOSE_WRONG_CLUSTER));
        assert!(reason.contains("\"beta\"") && reason.contains("\"alpha\""), "{reason}");

        // A forged acceptor: refused by the dialling node.
        let (_server, forged_addr) = raw_server(&forged_cert, &forged_key);
        let err = h.endpoint.connect(forged_addr, None).await.unwrap_err();
        assert!(
            matches!(&err, PeerError::Identity { source: IdentityError::WrongCluster { found, .. }, .. } if found == "beta"),
            "{err}"
        );
        assert!(!err.is_retryable());

        // Malformed and missing identities signed by our CA: CLOSE_BAD_IDENTITY.
        for uri in ["urn:meridian:cluster:alpha:region:eu:node:x", "spiffe://alpha/node-x"] {
            let (cert, key) = hand.sign(uri);
            let client = raw_client(&hand.cert_pem, Some((&cert, &key)));
            let (code, reason) = app_close(&raw_outcome(&client, h.addr).await);
            assert_eq!(code, u64::from(codes::CLOSE_BAD_IDENTITY), "{uri}: {reason}");
        }

        assert!(a.seen().is_empty() && h.seen().is_empty(), "no refused peer reached a handler");
        for node in [a, beta, h] {
            node.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_certificate_cannot_act_as_a_node() {
    bounded(async {
        let ca = generate_ca("alpha").unwrap();
        let a = Node::start(tls_for(&ca, &identity("alpha", "eu", "eu-1", "node-a")), Default::default()).await;
        let (cert, key) =
            issue_client_cert(&ca, &ClientIdentity { cluster_id: "alpha".into(), name: "app".into() }).unwrap();

        // Dialling a node with it: the chain verifies (clientAuth), the identity is refused.
        let client = raw_client(&ca.cert_pem, Some((&cert, &key)));
        let (code, reason) = app_close(&raw_outcome(&client, a.addr).await);
        assert_eq!(code, u64::from(codes::CLOSE_NOT_A_NODE));
        assert!(reason.contains("urn:meridian:cluster:alpha:client:app") && reason.contains("not a node"), "{reason}");

        // Serving with it: it has no serverAuth usage, so the dialling node's TLS refuses it.
        let (_server, addr) = raw_server(&cert, &key);
        let err = a.endpoint.connect(addr, None).await.unwrap_err();
        assert!(matches!(err, PeerError::Tls { .. }), "{err}");

        // Running a node with it: refused at bind.
        let err = PeerEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            PeerTlsConfig { ca_pem: ca.cert_pem.clone(), cert_pem: cert, key_pem: key, cluster_id: "alpha".into() },
            Default::default(),
        )
        .unwrap_err();
        assert!(matches!(&err, PeerError::Config(m) if m.contains("not a node")), "{err}");

        assert!(a.seen().is_empty());
        a.stop().await;
    })
    .await;
}

/// Frames `payload` as the transport does.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// The stream error code a raw stream was reset with.
async fn reset_code(recv: &mut quinn::RecvStream) -> u64 {
    let mut buf = [0u8; 4];
    match recv.read_exact(&mut buf).await {
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))) => code.into_inner(),
        other => panic!("expected a stream reset, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_frames_are_refused_without_killing_the_connection() {
    bounded(async {
        let ca = generate_ca("alpha").unwrap();
        let small = PeerTransportConfig {
            max_frame_bytes: 64 << 10,
            request_read_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let b = Node::start(tls_for(&ca, &identity("alpha", "us", "us-1", "node-b")), small.clone()).await;
        let a_config = PeerTransportConfig { max_frame_bytes: 1 << 20, ..Default::default() };
        let a = Node::start(tls_for(&ca, &identity("alpha", "eu", "eu-1", "node-a")), a_config).await;
        let conn = a.endpoint.connect(b.addr, Some("node-b")).await.unwrap();
        let id = conn.stable_id();

        // Over the receiver's cap: refused on its stream, before the payload is read.
        let err = conn.request(vec![1; 100 << 10], TIMEOUT).await.unwrap_err();
        assert!(matches!(err, PeerError::Refused(StreamRefusal::RequestTooLarge)), "{err}");
        assert!(!err.is_retryable());
        // Over our own cap: refused locally, nothing sent.
        let err = conn.request(vec![1; 2 << 20], TIMEOUT).await.unwrap_err();
        assert!(matches!(err, PeerError::RequestTooLarge { len, max } if len == 2 << 20 && max == 1 << 20), "{err}");
        // A response over the responder's cap: refused by the responder.
        let err = conn.request(b"big".to_vec(), TIMEOUT).await.unwrap_err();
        assert!(matches!(err, PeerError::Refused(StreamRefusal::ResponseTooLarge)), "{err}");
        // A handler that panics: its stream is reset, nothing else happens.
        let err = conn.request(b"panic".to_vec(), TIMEOUT).await.unwrap_err();
        assert!(matches!(err, PeerError::Refused(StreamRefusal::HandlerFailed)), "{err}");
        // A request that outlives its timeout: cancelled, retryable.
        let err = conn.request(b"slow".to_vec(), Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, PeerError::Timeout { .. }) && err.is_retryable(), "{err}");

        // The connection survived all of it.
        assert!(conn.is_open());
        assert_eq!(
            conn.request(b"still here".to_vec(), TIMEOUT).await.unwrap(),
            b"node-b saw node-a/eu/eu-1: still here"
        );
        assert_eq!(conn.stable_id(), id);

        // A response over *our* cap (B dials A, whose handler answers 100 KiB to B's 64 KiB cap).
        let back = b.endpoint.connect(a.addr, None).await.unwrap();
        let err = back.request(b"big".to_vec(), TIMEOUT).await.unwrap_err();
        assert!(
            matches!(err, PeerError::ResponseTooLarge { len, max } if len == 100 << 10 && max == 64 << 10),
            "{err}"
        );
        assert_eq!(back.request(b"ok".to_vec(), TIMEOUT).await.unwrap(), b"node-a saw node-b/us/us-1: ok");

        // Hand-made streams from a node certificate: truncated, and too slow.
        let c_tls = tls_for(&ca, &identity("alpha", "eu", "eu-2", "node-c"));
        let raw = raw_client(&ca.cert_pem, Some((&c_tls.cert_pem, &c_tls.key_pem)));
        let connection = raw.connect(b.addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&frame(b"hello")[..6]).await.unwrap();
        send.finish().unwrap();
        assert_eq!(reset_code(&mut recv).await, u64::from(codes::STREAM_TRUNCATED));
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&100u32.to_be_bytes()).await.unwrap();
        assert_eq!(reset_code(&mut recv).await, u64::from(codes::STREAM_READ_TIMEOUT));
        drop(send);
        // An oversized announced length is refused without the body ever being sent.
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert_eq!(reset_code(&mut recv).await, u64::from(codes::STREAM_REQUEST_TOO_LARGE));
        drop(send);
        // …and the same raw connection still serves a good request.
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&frame(b"fine")).await.unwrap();
        send.finish().unwrap();
        let response = recv.read_to_end(1 << 20).await.unwrap();
        assert_eq!(&response[4..], b"node-b saw node-c/eu/eu-2: fine");
        assert!(connection.close_reason().is_none());

        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_pool_caches_and_reconnects_and_shutdown_is_retryable() {
    bounded(async {
        let ca = generate_ca("alpha").unwrap();
        let a = Node::start(tls_for(&ca, &identity("alpha", "eu", "eu-1", "node-a")), Default::default()).await;
        let b = Node::start(tls_for(&ca, &identity("alpha", "us", "us-1", "node-b")), Default::default()).await;
        let pool = PeerPool::new(a.endpoint.clone());

        let reply = pool.request(b.addr, Some("node-b"), b"one".to_vec(), TIMEOUT).await.unwrap();
        assert_eq!(reply, b"node-b saw node-a/eu/eu-1: one");
        let first: PeerConnection = pool.get(b.addr, Some("node-b")).await.unwrap();
        let again = pool.get(b.addr, None).await.unwrap();
        assert_eq!(first.stable_id(), again.stable_id(), "one cached connection per peer");
        assert!(matches!(
            pool.get(b.addr, Some("node-x")).await,
            Err(PeerError::Identity { source: IdentityError::UnexpectedName { .. }, .. })
        ));

        // A closed connection is replaced on the next request.
        first.close();
        pool.request(b.addr, None, b"two".to_vec(), TIMEOUT).await.unwrap();
        let second = pool.get(b.addr, None).await.unwrap();
        assert_ne!(second.stable_id(), first.stable_id());
        assert_eq!(pool.len(), 1);

        // B shuts down: requests fail with a retryable error, and so do new connection attempts.
        b.stop().await;
        let err =
            pool.request(second.remote_addr(), None, b"three".to_vec(), Duration::from_secs(2)).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(!second.is_open());

        pool.remove(second.remote_addr()).await;
        assert!(pool.is_empty());
        a.stop().await;
    })
    .await;
}

#[tokio::test]
async fn certs_cli_round_trip() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let (ca_dir, nodes) = (path("ca"), path("nodes"));

    succeed(&["certs", "ca", "--cluster-id", "prod-1", "--out", &ca_dir]);
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&format!("{ca_dir}/ca.key")), 0o600);
    // No silent overwrite of a CA.
    let output = meridian(&["certs", "ca", "--cluster-id", "prod-1", "--out", &ca_dir]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
    let ca_key = std::fs::read_to_string(format!("{ca_dir}/ca.key")).unwrap();
    succeed(&["certs", "ca", "--cluster-id", "prod-1", "--out", &ca_dir, "--force"]);
    assert_ne!(std::fs::read_to_string(format!("{ca_dir}/ca.key")).unwrap(), ca_key, "--force replaced the CA");

    for (name, region, zone) in [("n1", "eu-west", "eu-west-1a"), ("n2", "us-east", "us-east-1b")] {
        let out = succeed(&[
            "certs",
            "node",
            "--ca",
            &ca_dir,
            "--name",
            name,
            "--region",
            region,
            "--zone",
            zone,
            "--host",
            "localhost",
            "--host",
            "127.0.0.1,::1",
            "--out",
            &nodes,
        ]);
        assert!(out.contains(&format!("urn:meridian:cluster:prod-1:region:{region}:zone:{zone}:node:{name}")), "{out}");
        assert_eq!(mode(&format!("{nodes}/{name}.key")), 0o600);
        let pem = std::fs::read_to_string(format!("{nodes}/{name}.crt")).unwrap();
        let der = certs::certs_from_pem(pem.as_bytes(), "node").unwrap().remove(0);
        assert_eq!(parse_identity(&der).unwrap(), identity("prod-1", region, zone, name));
        let summary = certs::summarize(&der).unwrap();
        assert_eq!(summary.dns_names, ["localhost"]);
        assert_eq!(summary.ips.len(), 2);
    }
    // Names follow the config's rule.
    let output = meridian(&[
        "certs", "node", "--ca", &ca_dir, "--name", "bad:name", "--region", "eu", "--zone", "z", "--out", &nodes,
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("[A-Za-z0-9-_.]"));

    // A certificate named `ca` cannot replace the CA's own files, even with --force.
    let ca_key = std::fs::read_to_string(format!("{ca_dir}/ca.key")).unwrap();
    let output = meridian(&["certs", "client", "--ca", &ca_dir, "--name", "ca", "--out", &ca_dir, "--force"]);
    assert!(!output.status.success());
    assert_eq!(std::fs::read_to_string(format!("{ca_dir}/ca.key")).unwrap(), ca_key, "the CA is intact");
    // Without --host: localhost and 127.0.0.1.
    succeed(&["certs", "node", "--ca", &ca_dir, "--name", "n3", "--region", "eu", "--zone", "z", "--out", &nodes]);
    let pem = std::fs::read_to_string(format!("{nodes}/n3.crt")).unwrap();
    let summary = certs::summarize(&certs::certs_from_pem(pem.as_bytes(), "n3").unwrap()[0]).unwrap();
    assert_eq!(summary.dns_names, ["localhost"]);
    assert_eq!(summary.ips, ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]);

    succeed(&["certs", "client", "--ca", &ca_dir, "--name", "app", "--out", &path("clients")]);
    let pem = std::fs::read_to_string(path("clients/app.crt")).unwrap();
    let der = certs::certs_from_pem(pem.as_bytes(), "client").unwrap().remove(0);
    assert_eq!(
        parse_cert_identity(&der).unwrap(),
        CertIdentity::Client(ClientIdentity { cluster_id: "prod-1".into(), name: "app".into() })
    );
    let shown = succeed(&["certs", "show", &format!("{nodes}/n1.crt")]);
    assert!(shown.contains("urn:meridian:cluster:prod-1:region:eu-west:zone:eu-west-1a:node:n1"), "{shown}");

    // The files drive the transport as they are.
    bounded(async {
        let tls = |name: &str| {
            PeerTlsConfig::from_files(
                &dir.path().join("ca/ca.crt"),
                &dir.path().join(format!("nodes/{name}.crt")),
                &dir.path().join(format!("nodes/{name}.key")),
                "prod-1",
            )
            .unwrap()
        };
        let n1 = Node::start(tls("n1"), Default::default()).await;
        let n2 = Node::start(tls("n2"), Default::default()).await;
        let conn = n1.endpoint.connect(n2.addr, Some("n2")).await.unwrap();
        assert_eq!(conn.peer().region, "us-east");
        assert_eq!(conn.request(b"x".to_vec(), TIMEOUT).await.unwrap(), b"n2 saw n1/eu-west/eu-west-1a: x");
        n1.stop().await;
        n2.stop().await;
    })
    .await;
}

#[tokio::test]
async fn peers_negotiate_the_newest_version_and_still_serve_the_previous_one() {
    bounded(async {
        let ca = generate_ca("alpha").unwrap();
        let b = Node::start(tls_for(&ca, &identity("alpha", "us", "us-1", "node-b")), Default::default()).await;
        let a = Node::start(tls_for(&ca, &identity("alpha", "eu", "eu-1", "node-a")), Default::default()).await;

        // Two nodes of this release speak the newest version (version 2 framing plus new
        // messages); outside any span, no context is sent.
        let conn = a.endpoint.connect(b.addr, Some("node-b")).await.unwrap();
        assert_eq!(conn.version(), meridian_server::peer::NEWEST_VERSION);
        assert_eq!(conn.request(b"v2".to_vec(), TIMEOUT).await.unwrap(), b"node-b saw node-a/eu/eu-1: v2");
        assert_eq!(b.handler.traces.lock().unwrap().pop(), Some(None));

        // A node of the previous release offers only version 1: served, with frames as they were.
        let c_tls = tls_for(&ca, &identity("alpha", "eu", "eu-2", "node-c"));
        let v1 = raw_client_speaking(&ca.cert_pem, Some((&c_tls.cert_pem, &c_tls.key_pem)), ALPN);
        let connection = v1.connect(b.addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&frame(b"v1")).await.unwrap();
        send.finish().unwrap();
        assert_eq!(&recv.read_to_end(1 << 20).await.unwrap()[4..], b"node-b saw node-c/eu/eu-2: v1");
        assert_eq!(b.handler.traces.lock().unwrap().pop(), Some(None));

        // Version 2 by hand: the stream header's trace context reaches the handler.
        let v2 = raw_client_speaking(&ca.cert_pem, Some((&c_tls.cert_pem, &c_tls.key_pem)), ALPN_V2);
        let connection = v2.connect(b.addr, "localhost").unwrap().await.unwrap();
        let trace = TraceContext { trace_id: [3; 16], parent_span_id: [4; 8], flags: 1 };
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&meridian_server::peer::endpoint::stream_header(Some(&trace))).await.unwrap();
        send.write_all(&frame(b"traced")).await.unwrap();
        send.finish().unwrap();
        assert_eq!(&recv.read_to_end(1 << 20).await.unwrap()[4..], b"node-b saw node-c/eu/eu-2: traced");
        assert_eq!(b.handler.traces.lock().unwrap().pop(), Some(Some(trace)));
        // A header of another length, or with an all-zero trace id, is refused on its stream only.
        for header in [vec![7u8, 1, 2, 3, 4, 5, 6, 7], [&[25u8][..], &[0; 25]].concat()] {
            let (mut send, mut recv) = connection.open_bi().await.unwrap();
            send.write_all(&header).await.unwrap();
            send.write_all(&frame(b"bad")).await.unwrap();
            let _ = send.finish();
            assert_eq!(reset_code(&mut recv).await, u64::from(codes::STREAM_BAD_HEADER));
        }
        assert!(connection.close_reason().is_none(), "a bad header closes only its stream");

        a.stop().await;
        b.stop().await;
    })
    .await;
}
