//! The process's logs and traces: `tracing` events to stderr (filtered by `MERIDIAN_LOG`), and for
//! `meridian serve`, the server's spans as OpenTelemetry spans, exported over OTLP/HTTP when
//! `[tracing] otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) names a collector.
//!
//! Without a collector the spans are not recorded (sampler off), but a request sent with a trace
//! context still carries it: its log lines show the caller's trace id, and the nodes it reaches
//! receive it — so one request can be followed through every node's log by its trace id. Requests
//! without a context get no span at all unless they are drawn to start a trace
//! (`meridian_server::telemetry`, "Only traced requests pay").

use std::time::Duration;

use anyhow::Context as _;
use meridian_server::config::Config;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// How long spans wait in the exporter's queue before a batch is sent.
const EXPORT_DELAY: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`init_node`] or [`init_logs`] set up; [`Telemetry::shutdown`] flushes the spans still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued (bounded by the export timeout) and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: flushing traces at exit: {e}");
            }
        }
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG").unwrap_or_else(|_| "info,quinn=warn".into())
}

/// Logs only (every command but `serve`).
pub fn init_logs() -> Telemetry {
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(log_filter()))
        .init();
    Telemetry { provider: None }
}

/// Logs and traces for the node `config` describes. Call it outside the async runtime (the OTLP
/// exporter's HTTP client runs its own).
pub fn init_node(config: &Config) -> anyhow::Result<Telemetry> {
    let settings = &config.tracing;
    let endpoint = settings
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()));
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", config.node_name.clone()),
            KeyValue::new("meridian.cluster", config.cluster_id.clone()),
            KeyValue::new("meridian.region", config.region.clone()),
            KeyValue::new("meridian.zone", config.zone.clone()),
        ])
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    provider = match &endpoint {
        Some(endpoint) => {
            let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .with_context(|| format!("the OTLP exporter to {url}"))?;
            let batches = BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build();
            let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
            // The server draws the traces that start here (a request it does not draw gets no span
            // at all); every span it does create is recorded unless its caller's context says
            // "not sampled".
            meridian_server::telemetry::sample_new_traces(settings.sample_ratio);
            provider.with_span_processor(processor).with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        }
        None => provider.with_sampler(Sampler::AlwaysOff),
    };
    let provider = provider.build();
    let tracer = provider.tracer("meridian");
    // Spans come from the server crate; the log filter does not apply to them (a node logging at
    // `warn` still traces its requests).
    let spans = tracing_subscriber::filter::Targets::new().with_target("meridian_server", tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(log_filter()))
        .with(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans))
        .init();
    if let Some(endpoint) = &endpoint {
        tracing::info!(%endpoint, sample_ratio = settings.sample_ratio, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider: Some(provider) })
}
