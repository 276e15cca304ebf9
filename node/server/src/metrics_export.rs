//! The Prometheus exporter behind `/metrics`.
//!
//! The `metrics` facade has one process-wide recorder; it is installed once, and every node in the
//! process (tests run several) shares it.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first call; returns the handle that renders the exposition text.
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            // From 100 µs (a relaxed local write) to 5 s, dense around 50–500 ms where cross-region
            // quorums land.
            .set_buckets(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
                2.5, 5.0,
            ])
            .expect("static buckets are valid")
            // Replication lag reaches minutes while a region catches up after a cut: buckets to
            // 10 minutes, or every p99 beyond 5 s reads as 5 s.
            .set_buckets_for_metric(
                Matcher::Full("meridian_replication_lag_seconds".into()),
                &[
                    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0,
                ],
            )
            .expect("static buckets are valid")
            // A count of writes, not seconds.
            .set_buckets_for_metric(
                Matcher::Full("meridian_commit_group_size".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            )
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours renders nothing, which tests notice.
        if metrics::set_global_recorder(recorder).is_ok() {
            register_alerting_counters();
        }
        handle
    })
}

/// Counters that alerts read with `increase()` exist from the start, at 0: a series that appears
/// only with its first event has no earlier sample, so `increase()` misses that first burst.
fn register_alerting_counters() {
    for name in [
        "meridian_hints_dropped_total",
        "meridian_keys_over_cap_total",
        "meridian_revocation_reload_failures_total",
        "meridian_sync_pass_errors_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}
