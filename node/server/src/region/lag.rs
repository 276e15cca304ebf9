//! Cross-region replication lag, per origin region, as this node observes it: for every record
//! of another region's origin that becomes durable here, the time from the write's timestamp (taken
//! by its coordinator just before it was acknowledged) to now. Clocks of different nodes differ by
//! their skew, which the figure includes; HLC timestamps never run behind the writer's wall clock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use meridian_client::proto::RegionLagReport;

/// Lag of one origin region.
struct RegionLag {
    /// Milliseconds, 1 ms to 1 hour, 2 significant digits.
    histogram: Histogram<u64>,
    /// When (Unix ms) the last record arrived.
    last_applied_ms: u64,
}

/// Lag per origin region.
#[derive(Default)]
pub struct LagStats {
    regions: Mutex<BTreeMap<String, RegionLag>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl LagStats {
    /// Records that a write of `region` timestamped at `written_ms` (its HLC's wall time) is now
    /// durable here.
    pub fn record(&self, region: &str, written_ms: u64) {
        let now = now_ms();
        let lag_ms = now.saturating_sub(written_ms);
        metrics::histogram!("meridian_replication_lag_seconds", "from_region" => region.to_string())
            .record(lag_ms as f64 / 1000.0);
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = regions.entry(region.to_string()).or_insert_with(|| RegionLag {
            histogram: Histogram::new_with_bounds(1, 3_600_000, 2).expect("valid histogram bounds"),
            last_applied_ms: 0,
        });
        let _ = entry.histogram.record(lag_ms.clamp(1, 3_600_000));
        entry.last_applied_ms = now;
    }

    /// The figures per origin region, for `meridian status`.
    pub fn report(&self) -> Vec<RegionLagReport> {
        let regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        regions
            .iter()
            .map(|(region, lag)| RegionLagReport {
                from_region: region.clone(),
                records: lag.histogram.len(),
                lag_p50_ms: lag.histogram.value_at_quantile(0.5),
                lag_p99_ms: lag.histogram.value_at_quantile(0.99),
                lag_max_ms: lag.histogram.max(),
                last_applied_ms: lag.last_applied_ms,
                ..RegionLagReport::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_kept_per_origin_region() {
        let stats = LagStats::default();
        let now = now_ms();
        stats.record("eu-west", now - 40);
        stats.record("eu-west", now - 60);
        stats.record("ap-south", now - 100);
        let report = stats.report();
        assert_eq!(report.len(), 2);
        let eu = report.iter().find(|r| r.from_region == "eu-west").unwrap();
        assert_eq!(eu.records, 2);
        assert!(eu.lag_max_ms >= 60 && eu.lag_p50_ms >= 40, "{eu:?}");
    }
}
