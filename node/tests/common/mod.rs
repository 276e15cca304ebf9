//! Shared setup for the in-process node tests: configs on port 0 under a temp dir, nodes over RocksDB
//! or the in-memory engine, SDK clients, a raw QUIC client for bad-input tests, and a bound on every
//! await that could hang.

#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meridian_client::proto::{self, Request, Response};
use meridian_client::Client;
use meridian_server::api::Node;
use meridian_server::config::Config;
use meridian_server::serve::RunningNode;
use meridian_server::storage::MemoryEngine;

/// The bound on any one step of a test (start, connect, a request, shutdown).
pub const STEP: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`STEP`].
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no result within {STEP:?}"),
    }
}

/// A default config listening on loopback port 0, keeping its data under `data_dir`.
pub fn config(data_dir: &Path) -> Config {
    let mut config = Config { data_dir: data_dir.to_path_buf(), ..Config::default() };
    config.listen.client = "127.0.0.1:0".parse().unwrap();
    config.listen.http = "127.0.0.1:0".parse().unwrap();
    config
}

/// Starts a node over RocksDB in `config.data_dir`.
pub async fn start_rocks(config: Config) -> RunningNode {
    bounded("start a RocksDB node", meridian_server::serve::start(config)).await.expect("start the node")
}

/// Starts a node over the in-memory engine (its certificate still lives in `config.data_dir`).
pub async fn start_memory(config: Config) -> RunningNode {
    let engine = Arc::new(MemoryEngine::new());
    bounded("start an in-memory node", meridian_server::serve::start_with_engine(config, engine))
        .await
        .expect("start the node")
}

/// A node core without any listener, over the in-memory engine (for the HTTP router tests).
pub fn memory_node(config: Config) -> Arc<Node> {
    Node::open(config, Arc::new(MemoryEngine::new())).expect("open the node")
}

/// Connects an SDK client with the given retry budget and a per-attempt timeout of 5 s.
pub async fn connect_with_retries(running: &RunningNode, max_retries: u32) -> Client {
    bounded(
        "connect the SDK",
        Client::builder()
            .endpoint(running.client_addr.to_string())
            .ca_cert_file(&running.cert_path)
            .timeout(Duration::from_secs(5))
            .max_retries(max_retries)
            .connect(),
    )
    .await
    .expect("connect the SDK")
}

/// Connects an SDK client that never retries (so that a test sees the node's first answer).
pub async fn connect(running: &RunningNode) -> Client {
    connect_with_retries(running, 0).await
}

/// An SDK client of `node` whose requests default to `eventual` and are never retried (the region
/// tests read one replica's state and see each node's first answer).
pub async fn eventual_client(node: &RunningNode) -> Client {
    bounded(
        "connect",
        Client::builder()
            .endpoint(node.client_addr.to_string())
            .ca_cert_file(&node.cert_path)
            .max_retries(0)
            .default_consistency(proto::Consistency::Eventual)
            .connect(),
    )
    .await
    .expect("connect the SDK")
}

/// Starts a node again on its data directory, once the previous run's last tasks have let go of it
/// (RocksDB's lock), retrying for up to 20 s.
pub async fn restart(config: &Config) -> RunningNode {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match meridian_server::serve::start(config.clone()).await {
            Ok(node) => return node,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("restart: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("restarting {}: {e:#}", config.node_name),
        }
    }
}

/// Shuts a node down, bounded.
pub async fn shutdown(running: RunningNode) {
    bounded("shut the node down", running.shutdown()).await;
}

/// A raw QUIC connection speaking the client ALPN, for sending hand-made frames.
pub struct RawConn {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

/// Opens a raw QUIC connection to `addr`, trusting the certificate at `cert_path`.
pub async fn raw_connect(addr: SocketAddr, cert_path: &Path) -> Result<RawConn, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in meridian_server::tls::load_certs(cert_path).map_err(|e| e.to_string())? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![proto::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(quic)), addr, "localhost")
        .map_err(|e| e.to_string())?;
    let conn = bounded("QUIC handshake", connecting).await.map_err(|e| e.to_string())?;
    Ok(RawConn { endpoint, conn })
}

/// What came back on a stream after sending raw bytes.
#[derive(Debug)]
pub enum RawAnswer {
    /// A decoded response frame.
    Frame(Response),
    /// The stream ended (finished or reset) without any byte.
    Nothing,
    /// Bytes that are not a response frame.
    Garbage(Vec<u8>),
}

impl RawConn {
    /// Sends `bytes` on a fresh stream (finishing it unless `finish` is false), then reads the answer.
    /// Write errors are ignored: the node may stop reading early (that is the point of some tests).
    pub async fn send_raw(&self, bytes: &[u8], finish: bool) -> RawAnswer {
        let (mut send, mut recv) = bounded("open a stream", self.conn.open_bi()).await.expect("open a stream");
        let _ = bounded("write the frame", send.write_all(bytes)).await;
        if finish {
            let _ = send.finish();
        }
        let answer = match bounded("read the answer", recv.read_to_end(16 << 20)).await {
            Ok(answer) => answer,
            Err(_) => return RawAnswer::Nothing,
        };
        if answer.is_empty() {
            return RawAnswer::Nothing;
        }
        if answer.len() < 4 || u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize != answer.len() - 4 {
            return RawAnswer::Garbage(answer);
        }
        match proto::decode_frame_body::<Response>(&answer[4..], 16 << 20) {
            Ok(response) => RawAnswer::Frame(response),
            Err(_) => RawAnswer::Garbage(answer),
        }
    }

    /// Sends a well-formed request frame and returns the node's response.
    pub async fn request(&self, request: &Request) -> Response {
        match self.send_raw(&proto::encode_frame(request), true).await {
            RawAnswer::Frame(response) => response,
            other => panic!("expected a response frame, got {other:?}"),
        }
    }
}

/// A node of a test region: certificates from the CA in `ca_dir` (`meridian certs` layout), peer
/// transport on `listen`, every address in `seeds` to join through, fast gossip and failure detection.
pub fn region_config(
    dir: &Path,
    name: &str,
    zone: &str,
    listen: SocketAddr,
    seeds: &[SocketAddr],
    ca_dir: &Path,
) -> Config {
    region_config_in(dir, "local", name, zone, listen, seeds, ca_dir)
}

/// [`region_config`] for a node of region `region`.
#[allow(dead_code)] // not every test binary has several regions
pub fn region_config_in(
    dir: &Path,
    region: &str,
    name: &str,
    zone: &str,
    listen: SocketAddr,
    seeds: &[SocketAddr],
    ca_dir: &Path,
) -> Config {
    let ca = meridian_server::certs::CaBundle::load(ca_dir).expect("test CA");
    let identity = meridian_server::certs::NodeIdentity {
        cluster_id: "test".into(),
        region: region.into(),
        zone: zone.into(),
        name: name.into(),
    };
    let (cert, key) = meridian_server::certs::issue_node_cert(&ca, &identity, &["127.0.0.1", "localhost"]).unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let mut config = Config {
        node_name: name.into(),
        cluster_id: "test".into(),
        region: region.into(),
        zone: zone.into(),
        data_dir: dir.join(format!("{name}-data")),
        ..Config::default()
    };
    config.listen.client = "127.0.0.1:0".parse().unwrap();
    config.listen.http = "127.0.0.1:0".parse().unwrap();
    config.peer.listen = Some(listen);
    config.peer.seeds = seeds.iter().copied().filter(|s| *s != listen).collect();
    config.peer.ca = Some(ca_dir.join("ca.crt"));
    config.peer.cert = Some(cert_path);
    config.peer.key = Some(key_path);
    config.peer.sync_interval_ms = 100;
    config.peer.gossip_interval_ms = 100;
    config.peer.suspect_after_ms = 500;
    config.peer.dead_after_ms = 1_000;
    config
}

/// A free loopback UDP port (bound, read, released: a tiny race on a busy machine, acceptable here).
pub fn free_udp_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Waits (bounded) until `client`'s node sees `alive` other members alive.
pub async fn wait_for_region(client: &Client, alive: usize) {
    let formed = async {
        loop {
            if let Ok(report) = client.cluster(meridian_client::ClusterOp::Status).await {
                if report.members.iter().filter(|m| m.liveness == "alive").count() == alive {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), formed).await.expect("the region formed within 60 s");
}

/// Runs the `meridian` binary of this build (quiet logs).
pub fn meridian(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .env("MERIDIAN_LOG", "warn")
        .output()
        .expect("running meridian")
}

/// [`meridian`], which must succeed; its stdout.
pub fn succeed(args: &[&str]) -> String {
    let output = meridian(args);
    assert!(output.status.success(), "meridian {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}
