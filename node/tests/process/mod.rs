//! Real `meridian` processes for end-to-end tests.
#![allow(dead_code)]

use meridian_client::Client;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Spawned {
    pub child: Child,
    pub client_addr: String,
    pub http_addr: String,
}

/// Starts `meridian serve` on ephemeral ports and waits for its "serving" line.
pub async fn spawn_node(data_dir: &Path) -> Spawned {
    spawn_node_with(data_dir, &[]).await
}

/// [`spawn_node`] with extra `MERIDIAN_*` environment (e.g. the `[peer]` settings).
pub async fn spawn_node_with(data_dir: &Path, env: &[(String, String)]) -> Spawned {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("MERIDIAN_DATA_DIR", data_dir)
        .env("MERIDIAN_LISTEN__CLIENT", "127.0.0.1:0")
        .env("MERIDIAN_LISTEN__HTTP", "127.0.0.1:0")
        .env("MERIDIAN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn meridian");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("node announced itself within 60 s")
        .expect("read stdout")
        .expect("a line");
    // "... client protocol on 127.0.0.1:PORT (QUIC), HTTP on ..."
    let client_addr = line
        .split("client protocol on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let http_addr = line
        .split("HTTP on http://")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Spawned { child, client_addr, http_addr }
}

pub async fn connect(addr: &str, data_dir: &Path) -> Client {
    Client::builder()
        .endpoint(addr.to_string())
        .ca_cert_file(data_dir.join("tls/node.crt"))
        .timeout(Duration::from_secs(5))
        .max_retries(0)
        .connect()
        .await
        .expect("connect")
}

/// Runs this build's `meridian` against the node at `endpoint`, trusting the certificate a
/// self-signed node keeps in `data_dir` (quiet logs).
pub fn cli(endpoint: &str, data_dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .env("MERIDIAN_ENDPOINT", endpoint)
        .env("MERIDIAN_CA_CERT", data_dir.join("tls/node.crt"))
        .env("MERIDIAN_LOG", "warn")
        .output()
        .expect("run meridian")
}

/// [`cli`] that must succeed; returns what it printed.
pub fn cli_ok(endpoint: &str, data_dir: &Path, args: &[&str]) -> String {
    let out = cli(endpoint, data_dir, args);
    assert!(out.status.success(), "meridian {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every port node i (1-based) of a local region of `nodes` nodes at `base` uses: base+10i (client,
/// UDP), +1 (HTTP, TCP), +2 (peer, UDP) — the layout `meridian region init` writes.
pub fn region_ports(base: u16, nodes: u16) -> Vec<u16> {
    (1..=nodes).flat_map(|i| [base + 10 * i, base + 10 * i + 1, base + 10 * i + 2]).collect()
}

/// Whether `port` is free on 127.0.0.1 for both TCP and UDP.
pub fn port_free(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok()
}

/// A base port whose whole range for a region of `nodes` nodes is free on 127.0.0.1.
pub fn free_base_port(nodes: u16) -> u16 {
    for _ in 0..200 {
        let base = rand::random_range(20_000u16..50_000);
        if region_ports(base, nodes).into_iter().all(port_free) {
            return base;
        }
    }
    panic!("no free port range found");
}

/// The real CLI against node `node` of a local region, trusting only its CA, with the given
/// credential flags (none: anonymous); no `MERIDIAN_*` or `TRACEPARENT` from the environment.
/// Bounded by 30 s.
pub async fn region_cli(
    plan: &meridian_node::local_region::RegionPlan,
    node: usize,
    credentials: &[std::ffi::OsString],
    args: &[&str],
) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(env!("CARGO_BIN_EXE_meridian"))
            .arg("--endpoint")
            .arg(plan.nodes[node].client_addr.to_string())
            .arg("--ca-cert")
            .arg(&plan.ca_cert)
            .args(credentials)
            .args(args)
            .env_remove("MERIDIAN_ENDPOINT")
            .env_remove("MERIDIAN_CLIENT_CERT")
            .env_remove("MERIDIAN_CLIENT_KEY")
            .env_remove("MERIDIAN_AUTH_TOKEN")
            .env_remove("MERIDIAN_CA_CERT")
            .env_remove("TRACEPARENT")
            .env("MERIDIAN_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the CLI finishes within 30 s")
    .expect("run meridian")
}

/// The credential flags of the region's admin (the client certificate `region init` wrote beside
/// the CA).
pub fn admin_flags(plan: &meridian_node::local_region::RegionPlan) -> Vec<std::ffi::OsString> {
    let (cert, key) = meridian_wan::plan::admin_credentials(&plan.ca_cert);
    vec!["--cert".into(), cert.into_os_string(), "--key".into(), key.into_os_string()]
}
