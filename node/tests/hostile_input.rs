//! Hostile input against a real in-process node: each gets a clear error and loses nothing — causal
//! tokens naming origins that do not exist, floods of refused requests (the audit log stays
//! bounded), handshakes that never complete on the client port.

mod common;

use std::collections::BTreeSet;

use common::{bounded, config, connect, connect_with_retries, shutdown, start_memory};
use meridian_client::proto::{CausalToken, Consistency, ErrorCode, Key, Operation, ReplyBody, RequestV1, RuleSpec};
use meridian_client::{Error, Mutation};
use meridian_crdt::{NodeId, Value};
use meridian_replication::residency::RuleSet;
use meridian_server::serve::RunningNode;

fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> ErrorCode {
    match result {
        Err(Error::Server { code, .. }) => code,
        other => panic!("expected a node error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_naming_an_origin_that_does_not_exist_poisons_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.causal_wait_ms = 300;
    let running = start_memory(cfg).await;
    let client = connect(&running).await;
    let key: Key = "app/poison".parse().unwrap();
    let request = |consistency, token: Option<CausalToken>, op| RequestV1 {
        consistency: Some(consistency),
        causal_token: token,
        timeout_ms: 0,
        op,
    };
    let stranger = CausalToken([(NodeId(0xdead_beef), 5)].into_iter().collect());
    bounded("a stranger's token", async {
        client.set("app/poison").add(["a"]).await.unwrap();
        // A write carrying a token from no node of this cluster (this node runs alone): refused,
        // at every level, and nothing is written.
        for level in [Consistency::Eventual, Consistency::Causal, Consistency::Quorum] {
            let write = Operation::Write {
                key: key.clone(),
                mutation: Mutation::SetAdd { members: vec![b"b".to_vec()] },
                idempotency_id: None,
            };
            assert_eq!(code(client.raw(request(level, Some(stranger.clone()), write)).await), ErrorCode::BadRequest);
        }
        // Causal reads of the key keep working, for fresh sessions and the session that wrote it.
        let session = client.session();
        for _ in 0..3 {
            let read = Operation::Read { key: key.clone(), expected: None };
            let reply = client.raw(request(Consistency::Causal, None, read)).await.unwrap();
            let ReplyBody::Value(Some(Value::Set(members))) = reply.body else { panic!("{:?}", reply.body) };
            assert_eq!(members, vec![b"a".to_vec()]);
            assert!(session.set("app/poison").members().await.unwrap().contains(&b"a".to_vec()));
        }
        // A causal read whose own token names the stranger is told why, at once.
        let read = Operation::Read { key: key.clone(), expected: None };
        assert_eq!(
            code(client.raw(request(Consistency::Causal, Some(stranger.clone()), read)).await),
            ErrorCode::BadRequest
        );
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_strict_refusals_leave_a_bounded_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_memory(config(dir.path())).await;
    let known: BTreeSet<String> = ["local", "elsewhere"].map(String::from).into();
    let spec = RuleSpec {
        namespace: "app".into(),
        prefix: "eu/".into(),
        regions: vec!["elsewhere".into()],
        replicas_per_region: None,
        home: None,
        strict: true,
    };
    let (rules, _) = RuleSet::default().with_added(spec, None, 1, &known).unwrap();
    assert!(running.node.residency().adopt(&rules).unwrap());
    let client = connect(&running).await;
    const REQUESTS: usize = 4_000;
    bounded("strict refusals", async {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..REQUESTS / 8 {
                    let result = client.counter(format!("app/eu/{t}-{i}").as_str()).incr(1).await;
                    assert_eq!(code(result), ErrorCode::ResidencyRefused);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    // The node still serves what it may.
    client.counter("app/us/ok").incr(1).await.unwrap();
    let counters = running.node.residency().counters();
    assert_eq!(counters.snapshot().refused, REQUESTS as u64);
    let log = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let refusals = log.lines().filter(|l| l.contains("\"refuse\"")).count();
    assert!((1..=3).contains(&refusals), "{refusals} refusal entries for {REQUESTS} refusals:\n{log}");
    assert!(!log.contains("app/eu/"), "no key names in the audit log:\n{log}");
    client.close().await;
    shutdown(running).await;
}

/// `meridian ARGS` run under `umask 0`.
fn meridian_under_umask_0(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", "umask 0 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_meridian")])
        .args(args)
        .env("MERIDIAN_LOG", "warn")
        .kill_on_drop(true);
    command
}

/// Every path under `root` (itself included) with its permission bits.
fn modes_under(root: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        out.push((path, meta.permissions().mode() & 0o777));
    }
    out
}

/// Directories are 0700, key files 0600, and nothing under `root` is writable or (but for
/// certificates and configurations) readable by anyone but the owner.
fn assert_private(root: &std::path::Path) {
    for (path, mode) in modes_under(root) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(mode & 0o022, 0, "{} is writable by others: {mode:o}", path.display());
        if path.is_dir() {
            assert_eq!(mode, 0o700, "directory {}: {mode:o}", path.display());
        } else if name.ends_with(".key") || name.starts_with("audit.log") {
            assert_eq!(mode, 0o600, "{}: {mode:o}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dirs_keys_and_certificates_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |p: &str| tmp.path().join(p).to_string_lossy().into_owned();
    // `meridian certs`.
    let ca = path("certs/ca");
    let out = meridian_under_umask_0(&["certs", "ca", "--cluster-id", "t", "--out", &ca]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let nodes = path("certs/nodes");
    let args = ["certs", "node", "--ca", &ca, "--name", "n1", "--region", "eu", "--zone", "z", "--out", &nodes];
    let out = meridian_under_umask_0(&args).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_private(&tmp.path().join("certs"));
    // `meridian region init`.
    let region = path("region");
    let out =
        meridian_under_umask_0(&["region", "init", "--dir", &region, "--nodes", "2", "--rf", "2", "--zones", "2"])
            .output()
            .await
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_private(&tmp.path().join("region"));
    // `meridian serve`: the data directory, RocksDB's, the generated TLS key and the audit log.
    let data = tmp.path().join("data/node");
    let mut child = meridian_under_umask_0(&["serve"])
        .env("MERIDIAN_DATA_DIR", &data)
        .env("MERIDIAN_LISTEN__CLIENT", "127.0.0.1:0")
        .env("MERIDIAN_LISTEN__HTTP", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = bounded("the node announces itself", lines.next_line()).await.unwrap().unwrap_or_default();
    assert!(line.contains("client protocol on"), "{line}");
    assert!(data.join("tls/node.key").exists() && data.join("db").is_dir() && data.join("audit.log").exists());
    assert_private(&tmp.path().join("data"));
    child.kill().await.unwrap();
}

/// Sends `count` QUIC Initial packets to `server`, each opening a handshake of its own, from one UDP
/// socket that never answers what comes back: to the server, handshakes that never complete (as from
/// spoofed source addresses). Paced, so the server's socket buffer takes them all.
async fn send_initials(server: std::net::SocketAddr, count: usize) -> tokio::net::UdpSocket {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    tls.alpn_protocols = vec![meridian_client::proto::ALPN.to_vec()];
    let crypto = std::sync::Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap());
    let mut endpoint =
        quinn_proto::Endpoint::new(std::sync::Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
    let mut held = Vec::new();
    for i in 0..count {
        let now = std::time::Instant::now();
        let config = quinn_proto::ClientConfig::new(crypto.clone());
        let (_, mut connection) = endpoint.connect(now, config, server, "localhost").unwrap();
        let mut buf = Vec::new();
        let transmit = connection.poll_transmit(now, 1, &mut buf).expect("an Initial to send");
        socket.send_to(&buf[..transmit.size], transmit.destination).await.unwrap();
        held.push(connection);
        if i % 16 == 15 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    socket
}

/// A node whose client port takes at most 128 connections.
async fn handshake_node(dir: &std::path::Path, handshake_timeout_ms: u64, max_unvalidated: usize) -> RunningNode {
    let mut cfg = config(dir);
    cfg.limits.max_connections = 128;
    cfg.limits.handshake_timeout_ms = handshake_timeout_ms;
    cfg.limits.max_unvalidated_handshakes = max_unvalidated;
    start_memory(cfg).await
}

/// A real client connects and is served within `deadline`.
async fn served_within(running: &RunningNode, deadline: std::time::Duration) {
    let served = tokio::time::timeout(deadline, async {
        let client = connect_with_retries(running, 0).await;
        client.counter("app/served").incr(1).await.unwrap();
        client.close().await;
    })
    .await;
    assert!(served.is_ok(), "a real client was not served within {deadline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_complete_cannot_hold_the_client_port() {
    // 1. 1,024 handshakes that never complete, 128 connection slots: past
    //    `max_unvalidated_handshakes` handshakes in progress, the rest are sent a Retry and hold
    //    nothing; a real client (which answers the Retry) is served at once.
    let dir = tempfile::tempdir().unwrap();
    let running = handshake_node(dir.path(), 60_000, 64).await;
    let _spoofer = send_initials(running.client_addr, 1024).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    served_within(&running, std::time::Duration::from_secs(5)).await;
    let _more = send_initials(running.client_addr, 256).await;
    served_within(&running, std::time::Duration::from_secs(5)).await;
    shutdown(running).await;

    // 2. Without Retry (a high `max_unvalidated_handshakes`) the handshakes take every slot, but
    //    only for `handshake_timeout_ms`.
    let dir = tempfile::tempdir().unwrap();
    let running = handshake_node(dir.path(), 1_000, 100_000).await;
    let _spoofer = send_initials(running.client_addr, 1024).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    served_within(&running, std::time::Duration::from_secs(5)).await;
    shutdown(running).await;
}
