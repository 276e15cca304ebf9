//! `meridian demo --exit` end to end: the real binary writes a three-region cluster (one node per
//! region), starts its WAN links and nodes, runs the workload at every level, reports, stops
//! everything and exits 0, leaving no node behind. Latencies and lag convergence are printed, not
//! asserted.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Regions of the test cluster (the default three), one node each.
const REGIONS: u16 = 3;
/// Kill the demo if it runs longer than this.
const BOUND: Duration = Duration::from_secs(120);

/// Every port the demo at `base` uses: node k at base+10k, +1 (TCP), +2; links from base+1000, one per
/// (region, node of another region).
fn demo_ports(base: u16) -> Vec<u16> {
    let nodes = (1..=REGIONS).flat_map(|k| [base + 10 * k, base + 10 * k + 1, base + 10 * k + 2]);
    let links = (0..REGIONS * (REGIONS - 1)).map(|j| base + 1000 + j);
    nodes.chain(links).collect()
}

fn port_free(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

/// A base port whose ports are all free on 127.0.0.1 (TCP and UDP).
fn free_base_port() -> u16 {
    for _ in 0..200 {
        let base = rand::random_range(20_000u16..50_000);
        if demo_ports(base).into_iter().all(port_free) {
            return base;
        }
    }
    panic!("no free port range found");
}

/// Pids of the processes whose command line mentions `dir` (the nodes: `serve --config DIR/…`).
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && cmdline.contains(" serve ") {
            pids.push(pid);
        }
    }
    pids
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill").args([signal, &pid.to_string()]).stderr(Stdio::null()).status();
}

#[test]
fn demo_runs_reports_and_stops_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let base = free_base_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        .args(["--nodes-per-region", "1", "--rf", "1", "--rtt-ms", "20", "--workload-secs", "3", "--exit"])
        .args(["--base-port", &base.to_string()])
        .env("MERIDIAN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running meridian demo");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOUND && !timed_out {
            // The supervisor stops its nodes on SIGTERM; SIGKILL it (and any node left) if it does not.
            timed_out = true;
            kill("-TERM", child.id());
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(20) && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    println!("--- meridian demo stdout ({:.1} s) ---\n{stdout}", started.elapsed().as_secs_f64());
    println!("--- meridian demo stderr ---\n{stderr}");

    let left = processes_under(&dir);
    for pid in &left {
        kill("-KILL", *pid);
    }
    assert!(!timed_out, "meridian demo --exit did not finish within {} s", BOUND.as_secs());
    assert!(status.success(), "meridian demo exited with {status}");
    assert!(left.is_empty(), "node processes left running: {left:?}");

    for level in ["eventual", "causal", "local_quorum", "quorum"] {
        for op in ["write", "read"] {
            assert!(
                stdout.lines().any(|l| l.starts_with(level) && l.split_whitespace().nth(1) == Some(op)),
                "no {level} {op} row in the report"
            );
        }
    }
    assert!(stdout.contains("P50 ms") && stdout.contains("P99 ms") && stdout.contains("OPS"));
    assert!(stdout.contains("cross-region convergence"), "no lag table");
    assert!(stdout.contains("demo stopped"));
    assert!(dir.join("cluster.json").exists());
    // Every node's ports are free again.
    for port in demo_ports(base) {
        assert!(port_free(port), "port {port} still taken after the demo stopped");
    }
}
