//! Running a local cluster's node processes: the stop signals, and the [`Supervisor`] of the
//! `meridian serve` children (started, waited for until ready, watched, stopped).

use anyhow::{bail, Context as _};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

use meridian_wan::probe::NodeHttp;

use super::{NodePlan, STOP_GRACE};

/// Starts the line `meridian region start` appends to a node's log before each start.
const LOG_SEPARATOR: &str = "--- meridian region start:";

/// The signals that stop a running local cluster.
pub(crate) struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    /// Installs the handlers; from now on these signals no longer kill the process.
    pub(crate) fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for the next stop signal and names it.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// A node process started by a [`Supervisor`].
struct Running {
    node: NodePlan,
    child: tokio::process::Child,
    pid: Option<u32>,
    /// Set once the process has been reaped.
    exited: Option<ExitStatus>,
    /// Set once its unexpected exit has been reported.
    reported: bool,
}

impl Running {
    /// Reaps the process if it has exited.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }
}

/// The `meridian serve` child processes of a local cluster (`meridian region start`, `meridian
/// demo`): each in its own process group (a terminal's Ctrl-C reaches only the supervisor), output
/// appended to the node's log, no `MERIDIAN_*` environment but `MERIDIAN_LOG`, killed if the
/// supervisor is dropped without stopping them.
pub(crate) struct Supervisor {
    running: Vec<Running>,
}

impl Supervisor {
    /// Starts `meridian serve --config …` for every node (this executable); if one cannot be
    /// started, stops those that were.
    pub(crate) async fn spawn(nodes: &[NodePlan]) -> anyhow::Result<Supervisor> {
        let exe = std::env::current_exe().context("locating the meridian executable")?;
        let mut supervisor = Supervisor { running: Vec::with_capacity(nodes.len()) };
        for node in nodes {
            match spawn_node(&exe, node).await {
                Ok(child) => {
                    let pid = child.id();
                    supervisor.running.push(Running { node: node.clone(), child, pid, exited: None, reported: false });
                }
                Err(e) => {
                    supervisor.stop_all().await;
                    return Err(e);
                }
            }
        }
        Ok(supervisor)
    }

    /// Each node's pid, in the order they were given.
    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        self.running.iter().map(|r| r.pid).collect()
    }

    /// Waits until every node answers `GET /readyz` with 200, failing if one exits first or
    /// `timeout` passes (the error names the node and quotes its log).
    pub(crate) async fn wait_ready(&mut self, timeout: Duration, http: &NodeHttp) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ready = vec![false; self.running.len()];
        loop {
            for (i, r) in self.running.iter_mut().enumerate() {
                if ready[i] {
                    continue;
                }
                if let Some(status) = r.poll_exit() {
                    r.reported = true;
                    bail!(
                        "{} exited ({status}) before it was ready; see {}{}",
                        r.node.name,
                        r.node.log.display(),
                        log_tail(&r.node.log)
                    );
                }
                ready[i] = http.ready(r.node.http_addr).await;
            }
            if ready.iter().all(|&r| r) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let r = &self.running[ready.iter().position(|&r| !r).expect("one is not ready")];
                bail!(
                    "{} was not ready within {} s (GET {}://{}/readyz); see {}{}",
                    r.node.name,
                    timeout.as_secs(),
                    http.scheme(),
                    r.node.http_addr,
                    r.node.log.display(),
                    log_tail(&r.node.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reaps the nodes that exited since the last call, reports each on stderr (the others keep
    /// running), and returns one failure line per node.
    pub(crate) fn reap_unexpected(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        for r in &mut self.running {
            if r.reported {
                continue;
            }
            if let Some(status) = r.poll_exit() {
                r.reported = true;
                say_err!(
                    "{} (pid {}) exited unexpectedly: {status}; the other nodes keep running. See {}",
                    r.node.name,
                    r.pid.map_or("?".into(), |p| p.to_string()),
                    r.node.log.display()
                );
                failures.push(format!("{} exited unexpectedly ({status})", r.node.name));
            }
        }
        failures
    }

    /// Whether every node has exited.
    pub(crate) fn all_exited(&mut self) -> bool {
        self.running.iter_mut().all(|r| r.poll_exit().is_some())
    }

    /// Watches the nodes until a stop signal arrives (or every node has exited), reporting the
    /// ones that die. Returns their failure lines. Does not stop the nodes: see [`Self::stop_all`].
    pub(crate) async fn supervise(&mut self, signals: &mut StopSignals) -> Vec<String> {
        let mut failures = Vec::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                signal = signals.recv() => {
                    say!("received {signal}: stopping every node");
                    break;
                }
                _ = ticker.tick() => {}
            }
            failures.extend(self.reap_unexpected());
            if self.all_exited() {
                say_err!("every node has exited");
                break;
            }
        }
        failures
    }

    /// Sends SIGTERM to every node still running, waits up to [`STOP_GRACE`], kills the rest, and
    /// reports each exit. Returns what went wrong (nodes that had to be killed).
    pub(crate) async fn stop_all(&mut self) -> Vec<String> {
        for r in self.running.iter_mut() {
            if r.poll_exit().is_some() {
                continue;
            }
            // Not yet reaped, so the pid is still this child's: no risk of signalling a stranger.
            if let Some(pid) = r.pid {
                if !send_sigterm(pid).await {
                    say_err!("could not send SIGTERM to {} (pid {pid}); killing it", r.node.name);
                    let _ = r.child.start_kill();
                }
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        let mut failures = Vec::new();
        for r in self.running.iter_mut() {
            if r.exited.is_some() {
                continue;
            }
            match tokio::time::timeout_at(deadline, r.child.wait()).await {
                Ok(Ok(status)) => {
                    r.exited = Some(status);
                    say!("{} stopped ({status})", r.node.name);
                }
                Ok(Err(e)) => {
                    say_err!("{}: waiting for it failed: {e}", r.node.name);
                    failures.push(format!("{}: {e}", r.node.name));
                }
                Err(_) => {
                    let _ = r.child.start_kill();
                    let status = r.child.wait().await;
                    say_err!(
                        "{} did not stop within {} s of SIGTERM: killed ({})",
                        r.node.name,
                        STOP_GRACE.as_secs(),
                        status.map_or_else(|e| e.to_string(), |s| s.to_string())
                    );
                    failures.push(format!("{} had to be killed", r.node.name));
                }
            }
        }
        failures
    }
}

/// Refuses to start when any port of the nodes is taken (a cluster already running, say): the
/// readiness probe must not mistake another process for one of ours. `hint` ends the error.
pub(crate) fn check_ports_free(nodes: &[NodePlan], hint: &str) -> anyhow::Result<()> {
    for node in nodes {
        for (what, addr, tcp) in
            [("client", node.client_addr, false), ("HTTP", node.http_addr, true), ("peer", node.peer_addr, false)]
        {
            let bound = if tcp {
                std::net::TcpListener::bind(addr).map(drop)
            } else {
                std::net::UdpSocket::bind(addr).map(drop)
            };
            if let Err(e) = bound {
                bail!("{addr} ({} {what} port) is not free: {e}. {hint}", node.name);
            }
        }
    }
    Ok(())
}

/// `meridian serve --config …` for `node`, output appended to its log.
async fn spawn_node(exe: &Path, node: &NodePlan) -> anyhow::Result<tokio::process::Child> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&node.log)
        .with_context(|| format!("opening {}", node.log.display()))?;
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    {
        use std::io::Write as _;
        let _ = writeln!(log, "{LOG_SEPARATOR} {} (unix time {}) ---", node.name, since_epoch.as_secs());
    }
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("serve")
        .arg("--config")
        .arg(&node.config)
        .current_dir(node.config.parent().unwrap_or(Path::new("/")))
        // The output goes to a file: no terminal colour codes in it.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().with_context(|| format!("opening {}", node.log.display()))?)
        .stderr(log)
        // Ctrl-C in a terminal signals the whole foreground process group: keep the nodes out of it,
        // so that they are stopped by the supervisor, in order, and reported.
        .process_group(0)
        // If the supervisor fails before it can stop them, do not leave nodes behind.
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("MERIDIAN_") && k != "MERIDIAN_LOG") {
            command.env_remove(key);
        }
    }
    command.spawn().with_context(|| format!("starting {} ({} serve --config …)", node.name, exe.display()))
}

/// The last lines of a log, indented, for an error message.
fn log_tail(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else { return String::new() };
    // Only this run's output: what follows the last separator `spawn_node` wrote.
    let this_run = text.rfind(LOG_SEPARATOR).map_or(text.as_str(), |at| &text[at..]);
    let lines: Vec<&str> = this_run.lines().skip(1).collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    if tail.is_empty() {
        return String::new();
    }
    let mut out = String::from("; its last lines:");
    for line in tail {
        out += "\n    ";
        out += line;
    }
    out
}

/// `kill -TERM pid` (no libc binding in this crate).
async fn send_sigterm(pid: u32) -> bool {
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    matches!(status, Ok(s) if s.success())
}
