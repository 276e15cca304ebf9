//! Data residency refusals that need a real `meridian` process: a node's region comes from its
//! certificate, so a node whose configuration claims another region than its certificate carries
//! must refuse to start (otherwise it could take another region's data).
//!
//! (The strict-rule and invalid-rule refusals run against a multi-region cluster in
//! `geo-tests/tests/residency.rs`.)

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_server::config::Config;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::Command;

mod common;
use common::succeed;

/// How long a refusing node may take to exit.
const EXIT_BOUND: Duration = Duration::from_secs(30);
/// How long an accepted node may take to announce that it serves.
const ANNOUNCE_BOUND: Duration = Duration::from_secs(60);

/// A node configuration (TOML) for `meridian serve --config`: the certificate `certs/<name>.*`
/// of the CA in `ca_dir`, `region`/`zone` as given, everything on loopback port 0 except the peer
/// port (a free UDP port), data in `data_dir`.
fn write_config(dir: &Path, name: &str, region: &str, zone: &str, data_dir: &Path) -> PathBuf {
    let mut config = Config {
        node_name: name.into(),
        cluster_id: "test".into(),
        region: region.into(),
        zone: zone.into(),
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.client = "127.0.0.1:0".parse().unwrap();
    config.listen.http = "127.0.0.1:0".parse().unwrap();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    config.peer.listen = Some(peer);
    config.peer.ca = Some(dir.join("ca/ca.crt"));
    config.peer.cert = Some(dir.join(format!("certs/{name}.crt")));
    config.peer.key = Some(dir.join(format!("certs/{name}.key")));
    let path = dir.join(format!("{name}-{region}.toml"));
    std::fs::write(&path, toml::to_string(&config).expect("the config serialises")).unwrap();
    path
}

/// How a `meridian serve` run ended within its bound (the output is shown through `Debug` when a
/// check fails).
#[derive(Debug)]
#[allow(dead_code)]
enum Served {
    /// The process exited.
    Exited { status: ExitStatus, stdout: String, stderr: String },
    /// It announced `client protocol on …` (and was killed afterwards).
    Announced { stdout: String, stderr: String },
    /// Neither, within the bound (killed).
    Hung { stdout: String, stderr: String },
}

/// Collects a child's output into a shared string, line by line.
fn collect(stream: impl AsyncRead + Unpin + Send + 'static, into: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = into.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
}

/// Runs `meridian serve --config CONFIG` until it exits or (when `stop_when_announced`) announces
/// that it serves, at most `bound`; the process is killed before returning.
async fn serve(config: &Path, bound: Duration, stop_when_announced: bool) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meridian"));
    command.arg("serve").arg("--config").arg(config);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("MERIDIAN_")) {
            command.env_remove(key);
        }
    }
    let mut child = command
        .env("MERIDIAN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn meridian serve");
    let (stdout, stderr) = (Arc::new(Mutex::new(String::new())), Arc::new(Mutex::new(String::new())));
    collect(child.stdout.take().unwrap(), stdout.clone());
    collect(child.stderr.take().unwrap(), stderr.clone());
    let deadline = tokio::time::Instant::now() + bound;
    let text = |s: &Arc<Mutex<String>>| s.lock().unwrap().clone();
    loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            // Let the readers drain what the process wrote before it exited.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Served::Exited { status, stdout: text(&stdout), stderr: text(&stderr) };
        }
        if stop_when_announced && text(&stdout).contains("client protocol on ") {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Served::Announced { stdout: text(&stdout), stderr: text(&stderr) };
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Served::Hung { stdout: text(&stdout), stderr: text(&stderr) };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_config_region_differs_from_its_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    succeed(&["certs", "ca", "--cluster-id", "test", "--out", &path("ca")]);
    succeed(&[
        "certs",
        "node",
        "--ca",
        &path("ca"),
        "--name",
        "n1",
        "--region",
        "us-east",
        "--zone",
        "us-east-a",
        "--host",
        "127.0.0.1",
        "--out",
        &path("certs"),
    ]);

    // The configuration claims eu-west; the certificate says us-east.
    let wrong = write_config(dir.path(), "n1", "eu-west", "us-east-a", &dir.path().join("data-wrong"));
    let served = serve(&wrong, EXIT_BOUND, false).await;
    match &served {
        Served::Exited { status, stdout, stderr } => {
            assert!(!status.success(), "the node exited successfully ({status}) instead of refusing: {stderr}");
            let said = format!("{stdout}{stderr}");
            let lower = said.to_lowercase();
            assert!(
                lower.contains("certificate"),
                "the refusal does not mention the certificate ({status}):\n--- stdout\n{stdout}--- stderr\n{stderr}"
            );
            assert!(
                said.contains("us-east") || said.contains("eu-west"),
                "the refusal names neither the configured region (eu-west) nor the certificate's (us-east) \
                 ({status}):\n--- stdout\n{stdout}--- stderr\n{stderr}"
            );
            assert!(
                !stdout.contains("client protocol on "),
                "the node announced that it serves before refusing:\n{stdout}"
            );
            println!("refused as expected ({status}): {}", stderr.trim());
        }
        other => panic!(
            "a node configured for eu-west with a us-east certificate did not exit within {} s: {other:?}",
            EXIT_BOUND.as_secs()
        ),
    }

    // Control: the same certificate with its own region starts (so the refusal above was about the
    // region, not about the rest of the configuration).
    let right = write_config(dir.path(), "n1", "us-east", "us-east-a", &dir.path().join("data-right"));
    match serve(&right, ANNOUNCE_BOUND, true).await {
        Served::Announced { .. } => {}
        other => panic!("the control node (config region = certificate region) did not start: {other:?}"),
    }
}
