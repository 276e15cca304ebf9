//! The demo's workload: concurrent sessions per region at every consistency level, and probes of
//! cross-region convergence lag. Latencies go to HDR histograms; nothing here fails the demo.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_client::{Client, Consistency, Error, Session};
use meridian_wan::plan::GeoPlan;
use tokio::time::Instant;

/// Sessions per (region, level).
pub const SESSIONS_PER_LEVEL: usize = 2;
/// How long a lag probe polls a region before calling it not converged.
pub const LAG_BOUND: Duration = Duration::from_secs(10);
/// How often a lag probe reads.
const LAG_POLL: Duration = Duration::from_millis(2);
/// One operation's bound (beyond the SDK's own timeout and retries).
const OP_BOUND: Duration = Duration::from_secs(5);
/// Distinct keys per (session, type): a few, so reads mostly find data.
const KEYS: u64 = 8;

/// Latencies in microseconds, 1 µs … 1 min, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000);
    h.saturating_record(us);
}

/// Writes or reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    Write,
    Read,
}

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            OpKind::Write => "write",
            OpKind::Read => "read",
        }
    }
}

/// Successes (histogram) and failures of one (level, kind).
pub struct OpStats {
    pub latency: Histogram<u64>,
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats { latency: histogram(), errors: 0, first_error: None }
    }

    fn merge(&mut self, other: OpStats) {
        let _ = self.latency.add(&other.latency);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn observe(&mut self, started: Instant, result: Result<Result<(), Error>, tokio::time::error::Elapsed>) {
        match result {
            Ok(Ok(())) => record(&mut self.latency, started.elapsed()),
            Ok(Err(e)) => self.fail(e.to_string()),
            Err(_) => self.fail(format!("no answer within {} s", OP_BOUND.as_secs())),
        }
    }

    fn fail(&mut self, error: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }
}

/// What the workload measured.
pub struct WorkloadReport {
    pub elapsed: Duration,
    pub sessions: usize,
    pub ops: BTreeMap<(usize, OpKind), OpStats>,
}

/// Convergence lag of one ordered region pair.
pub struct LagStats {
    pub latency: Histogram<u64>,
    pub not_converged: u64,
    /// Probes whose marker write itself failed (counted once per destination region).
    pub write_failed: u64,
    pub one_way_ms: u64,
}

/// Every ordered region pair's lag, keyed by (from, to) region index in the plan.
pub struct LagReport {
    pub regions: Vec<String>,
    pub pairs: BTreeMap<(usize, usize), LagStats>,
    pub first_write_error: Option<String>,
}

/// The level's index in [`Consistency::ALL`] (the report's row order).
fn level_index(level: Consistency) -> usize {
    Consistency::ALL.iter().position(|l| *l == level).expect("a level")
}

/// Connects one client per (region, node), each preferring that node and failing over to the
/// rest of its region. Returned region by region.
pub async fn connect(plan: &GeoPlan, timeout: Duration) -> anyhow::Result<Vec<Vec<Client>>> {
    let mut out = Vec::new();
    for region in &plan.regions {
        let mut clients = Vec::new();
        for first in 0..region.nodes.len() {
            let mut builder = crate::demo::admin_client(&plan.ca_cert).timeout(Duration::from_secs(2)).max_retries(1);
            for i in 0..region.nodes.len() {
                builder = builder.endpoint(region.nodes[(first + i) % region.nodes.len()].client_addr.to_string());
            }
            let client = tokio::time::timeout(timeout, builder.connect())
                .await
                .map_err(|_| anyhow::anyhow!("connecting to {} timed out", region.nodes[first].name))?
                .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", region.nodes[first].name))?;
            clients.push(client);
        }
        out.push(clients);
    }
    Ok(out)
}

/// Runs [`SESSIONS_PER_LEVEL`] sessions per (region, level) until `duration` has passed: each
/// cycles through register set/get, counter incr/get and set add/contains on a few keys of its own.
pub async fn run_workload(plan: &GeoPlan, clients: &[Vec<Client>], duration: Duration) -> WorkloadReport {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (r, region) in plan.regions.iter().enumerate() {
        for level in Consistency::ALL {
            for s in 0..SESSIONS_PER_LEVEL {
                let client = &clients[r][(level_index(level) * SESSIONS_PER_LEVEL + s) % clients[r].len()];
                let session = client.session().with_consistency(level);
                let prefix = format!("demo/wl-{}-{}-s{s}", region.name, level.name());
                tasks.push(tokio::spawn(session_loop(session, level, prefix, deadline)));
            }
        }
    }
    let sessions = tasks.len();
    let mut ops: BTreeMap<(usize, OpKind), OpStats> = BTreeMap::new();
    for task in tasks {
        if let Ok(results) = task.await {
            for (key, stats) in results {
                ops.entry(key).or_insert_with(OpStats::new).merge(stats);
            }
        }
    }
    WorkloadReport { elapsed: started.elapsed(), sessions, ops }
}

async fn session_loop(
    session: Session,
    level: Consistency,
    prefix: String,
    deadline: Instant,
) -> Vec<((usize, OpKind), OpStats)> {
    let mut writes = OpStats::new();
    let mut reads = OpStats::new();
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        let key = n / 6 % KEYS;
        let started = Instant::now();
        match n % 6 {
            0 => {
                let h = session.register(format!("{prefix}-reg-{key}"));
                writes.observe(started, tokio::time::timeout(OP_BOUND, h.set(format!("v{n}"))).await);
            }
            1 => {
                let h = session.register(format!("{prefix}-reg-{key}"));
                reads.observe(started, tokio::time::timeout(OP_BOUND, async { h.get().await.map(drop) }).await);
            }
            2 => {
                let h = session.counter(format!("{prefix}-cnt-{key}"));
                writes.observe(started, tokio::time::timeout(OP_BOUND, async { h.incr(1).await.map(drop) }).await);
            }
            3 => {
                let h = session.counter(format!("{prefix}-cnt-{key}"));
                reads.observe(started, tokio::time::timeout(OP_BOUND, async { h.get().await.map(drop) }).await);
            }
            4 => {
                let h = session.set(format!("{prefix}-set-{key}"));
                let member = format!("m{}", n % 32);
                writes.observe(started, tokio::time::timeout(OP_BOUND, h.add([member])).await);
            }
            _ => {
                let h = session.set(format!("{prefix}-set-{key}"));
                let member = format!("m{}", n % 32);
                reads.observe(
                    started,
                    tokio::time::timeout(OP_BOUND, async { h.contains(member).await.map(drop) }).await,
                );
            }
        }
        n += 1;
    }
    vec![((level_index(level), OpKind::Write), writes), ((level_index(level), OpKind::Read), reads)]
}

/// Until `until`, from every region at once (one probe at a time per source region): writes a
/// unique marker at `eventual` in the source region, then polls (eventual reads every
/// [`LAG_POLL`], at most [`LAG_BOUND`]) every other region until it shows there. The last probes may
/// finish up to [`LAG_BOUND`] after `until`.
pub async fn probe_lag(plan: &GeoPlan, clients: &[Vec<Client>], until: Instant) -> LagReport {
    let mut report = LagReport {
        regions: plan.regions.iter().map(|r| r.name.clone()).collect(),
        pairs: BTreeMap::new(),
        first_write_error: None,
    };
    for (f, from) in plan.regions.iter().enumerate() {
        for (t, to) in plan.regions.iter().enumerate().filter(|(t, _)| *t != f) {
            let one_way_ms = plan.links_between(&from.name, &to.name).next().map_or(0, |l| l.one_way_ms);
            report
                .pairs
                .insert((f, t), LagStats { latency: histogram(), not_converged: 0, write_failed: 0, one_way_ms });
        }
    }
    if plan.regions.len() < 2 {
        return report;
    }
    let sources = (0..plan.regions.len()).map(|src| probe_from(src, plan.regions.len(), clients, until));
    for (src, results, write_error) in futures::future::join_all(sources).await {
        if report.first_write_error.is_none() {
            report.first_write_error = write_error;
        }
        for (to, outcome) in results {
            let stats = report.pairs.get_mut(&(src, to)).expect("every pair");
            match outcome {
                ProbeOutcome::Converged(lag) => record(&mut stats.latency, lag),
                ProbeOutcome::NotConverged => stats.not_converged += 1,
                ProbeOutcome::WriteFailed => stats.write_failed += 1,
            }
        }
    }
    report
}

enum ProbeOutcome {
    Converged(Duration),
    NotConverged,
    WriteFailed,
}

/// Probes from region `src` until `until`: (src, per destination outcomes, first write error).
async fn probe_from(
    src: usize,
    regions: usize,
    clients: &[Vec<Client>],
    until: Instant,
) -> (usize, Vec<(usize, ProbeOutcome)>, Option<String>) {
    let run = std::process::id();
    let mut results = Vec::new();
    let mut first_error = None;
    let mut probe: u64 = 0;
    while Instant::now() < until {
        let key = format!("demo/lag-{run}-r{src}-{probe}");
        let marker = format!("{run}-r{src}-{probe}");
        probe += 1;
        let writer = clients[src][0].register(key.as_str()).consistency(Consistency::Eventual);
        let written = tokio::time::timeout(OP_BOUND, writer.set(marker.as_str())).await;
        let written_at = Instant::now();
        if !matches!(written, Ok(Ok(()))) {
            let error = match written {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {} s", OP_BOUND.as_secs()),
            };
            first_error.get_or_insert(error);
            results.extend((0..regions).filter(|t| *t != src).map(|t| (t, ProbeOutcome::WriteFailed)));
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let polls = (0..regions).filter(|t| *t != src).map(|t| {
            let reader = clients[t][0].register(key.as_str()).consistency(Consistency::Eventual);
            let marker = marker.as_bytes().to_vec();
            async move {
                let deadline = written_at + LAG_BOUND;
                loop {
                    if let Ok(Ok(Some(value))) = tokio::time::timeout(LAG_POLL * 50, reader.get()).await {
                        if value == marker {
                            return (t, ProbeOutcome::Converged(written_at.elapsed()));
                        }
                    }
                    if Instant::now() >= deadline {
                        return (t, ProbeOutcome::NotConverged);
                    }
                    tokio::time::sleep(LAG_POLL).await;
                }
            }
        });
        results.extend(futures::future::join_all(polls).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (src, results, first_error)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The per-level table.
pub fn render_workload(report: &WorkloadReport) -> String {
    let secs = report.elapsed.as_secs_f64().max(0.001);
    let mut out = format!(
        "workload: {:.1} s, {} sessions ({SESSIONS_PER_LEVEL} per region and level), registers/counters/sets\n",
        secs, report.sessions
    );
    let _ = writeln!(
        out,
        "{:<14}{:<7}{:>9}{:>10}{:>10}{:>10}{:>9}",
        "LEVEL", "OP", "OPS", "OPS/S", "P50 ms", "P99 ms", "ERRORS"
    );
    let mut errors = Vec::new();
    for (i, level) in Consistency::ALL.iter().enumerate() {
        for kind in [OpKind::Write, OpKind::Read] {
            let Some(stats) = report.ops.get(&(i, kind)) else { continue };
            let h = &stats.latency;
            let (p50, p99) = if h.is_empty() {
                ("-".into(), "-".into())
            } else {
                (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)))
            };
            let _ = writeln!(
                out,
                "{:<14}{:<7}{:>9}{:>10.0}{:>10}{:>10}{:>9}",
                level.name(),
                kind.name(),
                h.len(),
                h.len() as f64 / secs,
                p50,
                p99,
                stats.errors
            );
            if let Some(e) = &stats.first_error {
                errors.push(format!("  {} {}: {} failed, e.g. {e}", level.name(), kind.name(), stats.errors));
            }
        }
    }
    if !errors.is_empty() {
        out += "errors:\n";
        for e in errors {
            out += &e;
            out.push('\n');
        }
    }
    out
}

/// The per-region-pair lag table.
pub fn render_lag(report: &LagReport) -> String {
    let mut out = format!(
        "cross-region convergence: a marker written at eventual in FROM, read at eventual in TO every {} ms \
         (at most {} s)\n",
        LAG_POLL.as_millis(),
        LAG_BOUND.as_secs()
    );
    let _ = writeln!(
        out,
        "{:<12}{:<12}{:>9}{:>7}{:>10}{:>10}{:>10}   NOTE",
        "FROM", "TO", "ONE-WAY", "COUNT", "P50 ms", "P99 ms", "MAX ms"
    );
    let mut any_converged = false;
    let mut any_stuck = false;
    for (&(f, t), stats) in &report.pairs {
        let (from, to) = (&report.regions[f], &report.regions[t]);
        let h = &stats.latency;
        let (p50, p99, max) = if h.is_empty() {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)), ms(h.max()))
        };
        any_converged |= !h.is_empty();
        any_stuck |= stats.not_converged > 0;
        let mut note = Vec::new();
        if stats.not_converged > 0 {
            note.push(format!("{} not converged within {} s", stats.not_converged, LAG_BOUND.as_secs()));
        }
        if stats.write_failed > 0 {
            note.push(format!("{} marker writes failed", stats.write_failed));
        }
        if h.is_empty() && stats.not_converged == 0 && stats.write_failed == 0 {
            note.push("not probed (workload too short)".into());
        }
        let _ = writeln!(
            out,
            "{:<12}{:<12}{:>6} ms{:>7}{:>10}{:>10}{:>10}   {}",
            from,
            to,
            stats.one_way_ms,
            h.len(),
            p50,
            p99,
            max,
            note.join("; ")
        );
    }
    if let Some(e) = &report.first_write_error {
        let _ = writeln!(out, "marker write error: {e}");
    }
    if any_stuck && !any_converged {
        out += "no write became visible in another region: this build may not replicate across regions yet \
                (cross-region push and anti-entropy are being finished); the regions still serve their own data.\n";
    } else if any_stuck {
        out += "some markers did not converge within the bound (see NOTE).\n";
    }
    out
}
