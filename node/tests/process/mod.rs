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
