//! The per-node audit log: one JSON line per decision in `<data_dir>/audit.log` — residency
//! decisions (proxy, refuse, reject, purge, backfill, rule change, storage audit) and whatever else a
//! caller records (authentication refusals, operator actions).
//!
//! It never holds a key's or a value's bytes: callers write what happened (rules, counts, origins,
//! positions, regions), so the audit log of a region that may not hold a key is itself clean.
//!
//! It stays bounded whatever clients send:
//! - **Rate limits.** [`AuditLog::record`] writes the first entry per `(kind, rate key)` per
//!   window; the others are counted, and the next entry written for that kind and rate key — or,
//!   once the window has passed, a summary entry — says how many were left out (`"suppressed"`).
//!   Rate keys are few by construction (a rule, a reason); past [`MAX_WINDOWS`] open windows, new
//!   keys share one window per kind. [`AuditLog::record_always`] is for decisions that are rare by
//!   nature (a purge, a rules change, an operator's edit): never suppressed.
//! - **Rotation.** Past `max_bytes`, `audit.log` is renamed `audit.log.1` (`.1` to `.2`, …) and a new
//!   one started; `keep` rotated files are kept, so the log takes at most `(keep + 1) × max_bytes`.
//!
//! Entries are appended and flushed one by one; a failure to write is logged and otherwise ignored —
//! the decision itself stands. The file is created `0600`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most rate-limit windows open at once; past it, new rate keys of a kind share one window.
pub const MAX_WINDOWS: usize = 4096;
/// The rate key new keys share once [`MAX_WINDOWS`] are open.
const OVERFLOW_KEY: &str = "(other)";

/// How big the audit log may grow and how often one kind of entry is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditLimits {
    /// Size at which `audit.log` is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.<keep>`).
    pub keep: usize,
    /// One entry per `(kind, rate key)` per this long ([`AuditLog::record`]).
    pub window: Duration,
}

impl Default for AuditLimits {
    /// 16 MiB per file, 4 rotated files kept (80 MiB at most), one entry per kind and key per 10 s.
    fn default() -> Self {
        AuditLimits { max_bytes: 16 << 20, keep: 4, window: Duration::from_secs(10) }
    }
}

/// An append-only, rotated, rate-limited JSON-lines file (or tracing only).
#[derive(Debug)]
pub struct AuditLog {
    limits: AuditLimits,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    windows: HashMap<(String, String), Window>,
    /// When windows were last swept for summaries.
    swept: Instant,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    suppressed: u64,
}

impl AuditLog {
    /// Opens (creating, `0600`) the log at `path` with the default limits; `None` logs to tracing only.
    pub fn open(path: Option<PathBuf>) -> AuditLog {
        AuditLog::with_limits(path, AuditLimits::default())
    }

    /// [`AuditLog::open`] with explicit limits.
    pub fn with_limits(path: Option<PathBuf>, limits: AuditLimits) -> AuditLog {
        let (file, size) = match path.as_deref().map(open_file) {
            Some(Ok((file, size))) => (Some(file), size),
            Some(Err(e)) => {
                tracing::warn!(path = %path.as_deref().unwrap_or(Path::new("")).display(), error = %e, "cannot open the audit log");
                (None, 0)
            }
            None => (None, 0),
        };
        let state = State { path, file, size, windows: HashMap::new(), swept: Instant::now() };
        AuditLog { limits, state: Mutex::new(state) }
    }

    /// Records an entry of `kind`, rate-limited per `(kind, rate_key)`: the first one per window
    /// is written, the others counted (module docs). `rate_key` groups entries that say the same
    /// thing (a rule and a reason, a refused credential's kind); it appears in summaries only. The
    /// caller keeps key names and values out of `line` and `rate_key`.
    pub fn record(&self, kind: &str, rate_key: &str, line: &str) {
        metrics::counter!("meridian_residency_audit_entries_total", "kind" => kind.to_string()).increment(1);
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.sweep(&mut state, now);
        let rate_key = if state.windows.len() >= MAX_WINDOWS
            && !state.windows.contains_key(&(kind.to_string(), rate_key.to_string()))
        {
            OVERFLOW_KEY
        } else {
            rate_key
        };
        let window = state.windows.entry((kind.to_string(), rate_key.to_string()));
        let suppressed = match window {
            std::collections::hash_map::Entry::Occupied(mut open) => {
                let open = open.get_mut();
                if now.duration_since(open.opened) < self.limits.window {
                    open.suppressed += 1;
                    metrics::counter!("meridian_audit_suppressed_total", "kind" => kind.to_string()).increment(1);
                    return;
                }
                let left_out = open.suppressed;
                *open = Window { opened: now, suppressed: 0 };
                left_out
            }
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Window { opened: now, suppressed: 0 });
                0
            }
        };
        self.write(&mut state, kind, line, suppressed);
    }

    /// Records an entry of `kind` that is never suppressed: for decisions rare by nature (a purge,
    /// a rules change, an operator's action). The caller keeps key names and values out of `line`.
    pub fn record_always(&self, kind: &str, line: &str) {
        metrics::counter!("meridian_residency_audit_entries_total", "kind" => kind.to_string()).increment(1);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.sweep(&mut state, Instant::now());
        self.write(&mut state, kind, line, 0);
    }

    /// Once per window: closes the windows that have passed, writing a summary for each that left
    /// entries out (so a burst's count reaches the log even if its kind never recurs).
    fn sweep(&self, state: &mut State, now: Instant) {
        if now.duration_since(state.swept) < self.limits.window {
            return;
        }
        state.swept = now;
        let window = self.limits.window;
        let mut closed = Vec::new();
        state.windows.retain(|(kind, rate_key), open| {
            let expired = now.duration_since(open.opened) >= window;
            if expired && open.suppressed > 0 {
                closed.push((kind.clone(), rate_key.clone(), open.suppressed));
            }
            !expired
        });
        for (kind, rate_key, suppressed) in closed {
            let line = format!("{suppressed} more {kind} entries ({rate_key}) left out after the last one written");
            self.write(state, &kind, &line, suppressed);
        }
    }

    fn write(&self, state: &mut State, kind: &str, detail: &str, suppressed: u64) {
        tracing::info!(kind, detail, suppressed, "audit");
        let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut entry = serde_json::json!({ "ts_ms": ts_ms, "kind": kind, "detail": detail });
        if suppressed > 0 {
            entry["suppressed"] = suppressed.into();
        }
        let line = format!("{entry}\n");
        if state.file.is_some() && state.size > 0 && state.size + line.len() as u64 > self.limits.max_bytes {
            self.rotate(state);
        }
        if let Some(f) = state.file.as_mut() {
            match f.write_all(line.as_bytes()).and_then(|()| f.flush()) {
                Ok(()) => state.size += line.len() as u64,
                Err(e) => tracing::warn!(error = %e, "cannot write the audit log"),
            }
        }
    }

    /// `audit.log.<keep-1>` → `.<keep>` (the oldest dropped), …, `audit.log` → `.1`; a new file.
    fn rotate(&self, state: &mut State) {
        let Some(path) = state.path.clone() else { return };
        state.file = None;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
        let renamed = (1..=self.limits.keep).rev().try_for_each(|n| {
            let from = if n == 1 { path.clone() } else { numbered(n - 1) };
            match std::fs::rename(&from, numbered(n)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        });
        // Nothing kept: the current file starts over.
        let reopened = renamed.and_then(|()| {
            if self.limits.keep == 0 {
                std::fs::remove_file(&path)?;
            }
            open_file(&path)
        });
        match reopened {
            Ok((file, size)) => (state.file, state.size) = (Some(file), size),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot rotate the audit log"),
        }
    }
}

/// Opens `path` for appending (created `0600`) and says how big it is.
fn open_file(path: &Path) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    }

    #[test]
    fn a_flood_of_one_kind_of_entry_is_a_few_lines_with_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let limits = AuditLimits { window: Duration::from_millis(200), ..AuditLimits::default() };
        let log = AuditLog::with_limits(Some(path.clone()), limits);
        let started = Instant::now();
        for i in 0..100_000u64 {
            log.record("refuse", "rule 1: strict", "rule 1: the rule is strict");
            if i % 2 == 0 {
                log.record("refuse", "rule 2: strict", "rule 2: the rule is strict");
            }
        }
        let elapsed = started.elapsed();
        std::thread::sleep(Duration::from_millis(250));
        log.record("rules", "rules", "something else");
        let written = lines(&path);
        // One line per window per key while the flood lasted, and a summary per key after it.
        let windows = (elapsed.as_millis() / 200 + 2) as usize;
        assert!(written.len() <= 2 * windows + 1, "{} lines for {elapsed:?}", written.len());
        let counted: u64 = written.iter().filter_map(|l| l.get("suppressed").and_then(|s| s.as_u64())).sum();
        let summary = |l: &serde_json::Value| l["detail"].as_str().unwrap().contains("left out");
        let refusals = written.iter().filter(|l| l["kind"] == "refuse" && !summary(l)).count() as u64;
        assert_eq!(counted + refusals, 150_000, "every refusal is written or counted: {written:?}");
    }

    #[test]
    fn past_max_bytes_the_log_rotates_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let limits = AuditLimits { max_bytes: 4096, keep: 3, window: Duration::from_secs(10) };
        let log = AuditLog::with_limits(Some(path.clone()), limits);
        for i in 0..2_000 {
            log.record_always("purge", &format!("entry {i} {}", "x".repeat(40)));
        }
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]);
        for name in &names {
            let meta = std::fs::metadata(dir.path().join(name)).unwrap();
            assert!(meta.len() <= 4096, "{name}: {} bytes", meta.len());
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
        // The newest entries are in audit.log, the ones before them in .1.
        let newest = lines(&path);
        assert!(newest.last().unwrap()["detail"].as_str().unwrap().starts_with("entry 1999 "));
        let previous = lines(&dir.path().join("audit.log.1"));
        let first_new: u64 = newest[0]["detail"].as_str().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let last_old: u64 =
            previous.last().unwrap()["detail"].as_str().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(last_old + 1, first_new);
        // A reopened log carries on in the same file.
        drop(log);
        let log = AuditLog::with_limits(Some(path.clone()), limits);
        log.record_always("rules", "after a restart");
        assert_eq!(lines(&path).last().unwrap()["detail"], "after a restart");
    }

    #[test]
    fn rate_keys_past_the_bound_share_a_window() {
        let log = AuditLog::with_limits(None, AuditLimits::default());
        for i in 0..(MAX_WINDOWS * 3) {
            log.record("auth", &format!("user {i}"), "refused");
        }
        let state = log.state.lock().unwrap();
        assert_eq!(state.windows.len(), MAX_WINDOWS + 1);
        assert_eq!(
            state.windows[&("auth".to_string(), OVERFLOW_KEY.to_string())].suppressed,
            (MAX_WINDOWS * 2 - 1) as u64
        );
    }
}
