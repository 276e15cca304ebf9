//! `meridian region start` end to end: three real nodes from one command, the real CLI writing and
//! reading through node 2 trusting only the region's CA, then SIGTERM stops the supervisor and every
//! node with it.

use meridian_node::local_region::RegionPlan;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod process;

const NODES: u16 = 3;

fn alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn signal(sig: &str, pid: u32) {
    let _ = std::process::Command::new("kill").args([sig, &pid.to_string()]).stderr(Stdio::null()).status();
}

/// Cleans up on a failed assertion: SIGTERM to the supervisor, then SIGKILL to anything left.
struct Cleanup {
    supervisor: u32,
    nodes: Vec<u32>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        signal("-TERM", self.supervisor);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && (alive(self.supervisor) || self.nodes.iter().any(|&p| alive(p))) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for &pid in self.nodes.iter().chain([&self.supervisor]) {
            signal("-KILL", pid);
        }
    }
}

/// The CLI as the region's admin (the client certificate `region init` wrote beside the CA).
async fn cli(plan: &RegionPlan, node: usize, args: &[&str]) -> (bool, String, String) {
    cli_as(plan, node, &process::admin_flags(plan), args).await
}

/// The CLI with the given credential flags (none: anonymous).
async fn cli_as(
    plan: &RegionPlan,
    node: usize,
    credentials: &[std::ffi::OsString],
    args: &[&str],
) -> (bool, String, String) {
    let out = process::region_cli(plan, node, credentials, args).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_start_runs_three_nodes_and_sigterm_stops_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("region");
    let base = process::free_base_port(NODES);
    let mut supervisor = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["region", "start", "--dir"])
        .arg(&dir)
        .args(["--nodes", &NODES.to_string(), "--base-port", &base.to_string(), "--durability", "relaxed"])
        .env("MERIDIAN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn meridian region start");
    let mut cleanup = Cleanup { supervisor: supervisor.id().unwrap(), nodes: Vec::new(), armed: true };

    // Read the output up to the "region ready" line, collecting the table.
    let mut lines = BufReader::new(supervisor.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("region ready");
            printed.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(ready, Ok(true)), "region start printed no ready line; it printed:\n{}", printed.join("\n"));
    let output = printed.join("\n");

    let plan = RegionPlan::load(&dir).unwrap();
    assert_eq!(plan.nodes.len(), usize::from(NODES));
    assert_eq!(plan.nodes[1].client_addr.port(), base + 20);
    assert!(plan.ca_cert.ends_with("certs/ca.crt"));
    // The table printed once every node is ready: one row per node, with its addresses and pid.
    let ready_at = printed.iter().position(|l| l.contains("nodes ready")).expect("a 'nodes ready' line");
    for node in &plan.nodes {
        let row = printed[ready_at..]
            .iter()
            .find(|l| l.split_whitespace().next() == Some(node.name.as_str()))
            .unwrap_or_else(|| panic!("no row for {} in:\n{output}", node.name));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[1], node.zone, "{row}");
        assert_eq!(columns[2], node.client_addr.to_string(), "{row}");
        assert_eq!(columns[3], node.http_addr.to_string(), "{row}");
        assert_eq!(columns[4], node.peer_addr.to_string(), "{row}");
        let pid: u32 = columns[5].parse().unwrap_or_else(|_| panic!("no pid in {row}"));
        assert!(alive(pid), "{} (pid {pid}) is running", node.name);
        cleanup.nodes.push(pid);
    }
    assert!(output.contains(&format!("--endpoint {} --ca-cert", plan.nodes[0].client_addr)), "{output}");

    // Authentication is on: without credentials the node refuses, naming what is missing.
    let (ok, _, stderr) = cli_as(&plan, 1, &[], &["get", "demo/greeting"]).await;
    assert!(!ok && stderr.contains("unauthenticated"), "an anonymous CLI was not refused: {stderr}");

    // The real CLI, through node 2, trusting only the region's CA.
    let (ok, stdout, stderr) = cli(&plan, 1, &["put", "demo/greeting", "hello"]).await;
    assert!(ok, "put through n2 failed: {stderr}");
    assert_eq!(stdout.trim(), "OK");
    let (ok, stdout, stderr) = cli(&plan, 1, &["get", "demo/greeting"]).await;
    assert!(ok, "get through n2 failed: {stderr}");
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(value, serde_json::json!({"type": "register", "value": "hello"}));
    let (ok, stdout, stderr) = cli(&plan, 2, &["status"]).await;
    assert!(ok, "status of n3 failed: {stderr}");
    assert!(stdout.contains("node        n3") && stdout.contains("region/zone local/z3"), "{stdout}");

    // SIGTERM to the supervisor: it stops every node and exits 0.
    signal("-TERM", cleanup.supervisor);
    let status = tokio::time::timeout(Duration::from_secs(30), supervisor.wait())
        .await
        .expect("region start exits within 30 s of SIGTERM")
        .unwrap();
    let mut rest = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
        rest.push(line);
    }
    let rest = rest.join("\n");
    assert!(status.success(), "region start exited with {status}; it printed after the table:\n{rest}");
    for node in &plan.nodes {
        assert!(rest.contains(&format!("{} stopped (exit status: 0)", node.name)), "{rest}");
    }
    for (node, &pid) in plan.nodes.iter().zip(&cleanup.nodes) {
        assert!(!alive(pid), "{} (pid {pid}) is still running", node.name);
    }
    for port in process::region_ports(base, NODES) {
        assert!(process::port_free(port), "port {port} is still bound");
    }
    cleanup.armed = false;
    assert!(Path::new(&plan.nodes[1].log).exists());
}
