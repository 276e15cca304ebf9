//! Traces: where each request's spans come from and how their context crosses nodes.
//!
//! The server only creates `tracing` spans and reads or sets their OpenTelemetry context through
//! `tracing-opentelemetry`; whether they are recorded and exported is the process's choice (the
//! `meridian` binary installs the layer and, when `[tracing] otlp_endpoint` is set, an OTLP
//! exporter). Without the layer — a library user, the in-process tests — every function here is a
//! no-op and nothing is propagated.
//!
//! A request's context comes from its caller (the `traceparent` HTTP header, `Request::V2` in the
//! native protocol, the stream header of `meridian-peer/2` between nodes), and every peer request
//! made while one of its spans is current carries it on ([`current`] is read by the peer transport).
//!
//! **Only traced requests pay.** A request gets spans when its caller sent a context, or when it is
//! drawn to start a trace here ([`sample_new_traces`], set by the binary when it exports); every
//! other request runs with no span at all (creating spans for each request and stage cost a
//! single node a fifth of its throughput, measured). Stage spans ([`stage`]) and peer-call spans
//! exist only inside a request's span.

use std::sync::atomic::{AtomicU64, Ordering};

use meridian_client::proto::TraceContext;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The span of one request a node serves: a client's (`hop = "client"`) or one another node
/// forwarded (`hop = "forwarded"`). Its parent is `remote` (the caller's context) when there is one,
/// else the current span (a forward's peer span), else none (a new trace). Its `trace_id` field puts
/// the trace id on every log line written inside it.
pub fn request_span(
    op: &'static str,
    consistency: &'static str,
    hop: &'static str,
    remote: Option<&TraceContext>,
) -> tracing::Span {
    let in_a_trace = remote.is_some() || !tracing::Span::current().is_disabled();
    if !in_a_trace && !starts_trace() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "request",
        otel.name = op,
        otel.kind = "server",
        op,
        consistency,
        hop,
        error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(remote) = remote {
        adopt(&span, remote);
    }
    record_trace_id(&span);
    span
}

/// The span in which a node answers a peer's request (`kind`: the peer message), child of the
/// sender's span. Requests sent outside any span (gossip, anti-entropy rounds, hint replay) carry no
/// context and get no span: background chatter does not start traces of its own.
pub fn peer_span(kind: &'static str, from: &dyn std::fmt::Display, remote: Option<&TraceContext>) -> tracing::Span {
    let Some(remote) = remote else { return tracing::Span::none() };
    let span = tracing::info_span!(
        "peer_request",
        otel.name = kind,
        otel.kind = "server",
        from = %from,
        trace_id = tracing::field::Empty,
    );
    adopt(&span, remote);
    record_trace_id(&span);
    span
}

/// The share of requests without a caller's context that start a trace here (0 to 1; `f64` bits).
static NEW_TRACE_RATIO: AtomicU64 = AtomicU64::new(0);

/// Makes `ratio` of the requests that arrive without a trace context start one here (the binary
/// sets `[tracing] sample_ratio` when it exports spans; 0, the default, starts none).
pub fn sample_new_traces(ratio: f64) {
    NEW_TRACE_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

/// Whether this request starts a trace (drawn at [`sample_new_traces`]'s ratio).
fn starts_trace() -> bool {
    let ratio = f64::from_bits(NEW_TRACE_RATIO.load(Ordering::Relaxed));
    ratio > 0.0 && (ratio >= 1.0 || rand::random::<f64>() < ratio)
}

/// A span for one stage of the request being served (`name`: `local_write`, `replicate`,
/// `quorum_read`, …); none outside a request's span, so untraced requests pay nothing.
pub fn stage(name: &'static str) -> tracing::Span {
    if tracing::Span::current().is_disabled() {
        return tracing::Span::none();
    }
    tracing::info_span!("stage", otel.name = name)
}

/// The histogram of how long each stage of a client write takes (label `stage`), in seconds: the
/// per-stage breakdown `meridian bench` prints (`docs/benchmarks.md`). Recorded for every write.
pub const WRITE_STAGE_SECONDS: &str = "meridian_write_stage_seconds";

/// Records that stage `stage` of a client write took from `since` until now.
pub fn write_stage(stage: &'static str, since: std::time::Instant) {
    write_stage_took(stage, since.elapsed());
}

/// Records that stage `stage` of a client write took `took`.
pub fn write_stage_took(stage: &'static str, took: std::time::Duration) {
    metrics::histogram!(WRITE_STAGE_SECONDS, "stage" => stage).record(took.as_secs_f64());
}

/// The client span of a request this node sends to `target` (`kind`: the peer message), inside the
/// request being served; none outside one.
pub fn peer_call_span(kind: &'static str, target: &dyn std::fmt::Display) -> tracing::Span {
    if tracing::Span::current().is_disabled() {
        return tracing::Span::none();
    }
    tracing::info_span!("peer_call", otel.name = kind, otel.kind = "client", target = %target)
}

/// Marks a request's span failed with the error code `code` (the trace viewer shows it as an
/// error; the code, not the message, so no key name leaves the node this way).
pub fn record_failure(span: &tracing::Span, code: &'static str) {
    span.record("error", code);
    span.record("otel.status_code", "ERROR");
}

/// Makes `remote` (a caller's context) the parent of `span`.
fn adopt(span: &tracing::Span, remote: &TraceContext) {
    let context = SpanContext::new(
        TraceId::from_bytes(remote.trace_id),
        SpanId::from_bytes(remote.parent_span_id),
        TraceFlags::new(remote.flags),
        true,
        TraceState::default(),
    );
    // Refused only when no OpenTelemetry layer is installed: then there is no trace to join.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
}

/// Writes the span's trace id into its `trace_id` field (when it has one).
fn record_trace_id(span: &tracing::Span) {
    if let Some(context) = context_of(span) {
        span.record("trace_id", tracing::field::display(context.trace_id_hex()));
    }
}

/// The context of `span` as a peer request would carry it (its ids and sampling flag).
fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| TraceContext {
        trace_id: span_context.trace_id().to_bytes(),
        parent_span_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}

/// The current span's context, for a request this node sends now (the peer transport puts it in
/// the stream header); `None` outside any traced span.
pub fn current() -> Option<TraceContext> {
    context_of(&tracing::Span::current())
}
