//! The per-node residency audit log: one JSON line per decision (proxy, refuse, reject, purge,
//! backfill, rule change) in `<data_dir>/audit.log`.
//!
//! It never holds a restricted key's bytes: entries name the rule and what happened (counts,
//! origins, positions, regions), not keys or values, so the audit log of a region that may not hold
//! a key is itself clean. Writes are appended and flushed per entry (decisions are rare next to
//! writes); a failure to write is logged and otherwise ignored — the decision itself stands.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// An append-only JSON-lines file (or tracing only).
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<Option<File>>,
}

impl AuditLog {
    /// Opens (creating) the log at `path`; `None` logs to tracing only.
    pub fn open(path: Option<PathBuf>) -> AuditLog {
        let file = path.as_ref().and_then(|p| match OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot open the residency audit log");
                None
            }
        });
        AuditLog { file: Mutex::new(file) }
    }

    /// Appends one entry: `kind` (proxy, refuse, reject, purge, backfill, rules), the rule (0: none)
    /// and prose. The caller keeps key bytes out of `detail`.
    pub fn record(&self, kind: &str, rule: u32, detail: &str) {
        metrics::counter!("meridian_residency_audit_entries_total", "kind" => kind.to_string()).increment(1);
        tracing::info!(kind, rule, detail, "residency");
        let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let line = serde_json::json!({ "ts_ms": ts_ms, "kind": kind, "rule": rule, "detail": detail });
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = file.as_mut() {
            if let Err(e) = writeln!(f, "{line}").and_then(|()| f.flush()) {
                tracing::warn!(error = %e, "cannot write the residency audit log");
            }
        }
    }
}
