//! The Prometheus exporter behind `/metrics`.
//!
//! The `metrics` facade has one process-wide recorder; it is installed once, and every node in the
//! process (tests run several) shares it.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours renders nothing, which tests notice.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
