//! Traces across nodes, end to end: a real three-node region (`meridian region start`, mutual-TLS
//! QUIC between the nodes, authentication on) exports its spans over OTLP/HTTP to a small collector
//! started here. A `local_quorum` write sent with a W3C trace context — once through the native
//! protocol (the CLI's `--traceparent`), once over HTTPS (`traceparent` header) — must come back as
//! one tree under the caller's span, spanning the coordinator and the replicas it pushed to.
//!
//! Negative control (run by hand when this test was written): with the peer transport's stream
//! header left empty (`stream_header(None)` in `PeerConnection::request`), the replicas' spans start
//! traces of their own and the test fails with "spans from 1 node(s)".

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use meridian_node::local_region::{self, RegionOptions, RegionPlan};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod process;

const NODES: u16 = 3;

/// One exported span, as the collector received it.
#[derive(Clone, Debug)]
struct Span {
    node: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// A minimal OTLP/HTTP collector: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
async fn start_collector() -> (SocketAddr, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                let mut sink = sink.lock().unwrap();
                for resource in request.resource_spans {
                    let node = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.instance.id")
                        .and_then(|a| a.value.as_ref()?.value.as_ref())
                        .map(|value| match value {
                            any_value::Value::StringValue(name) => name.clone(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            sink.push(Span {
                                node: node.clone(),
                                name: span.name,
                                trace_id: span.trace_id,
                                span_id: span.span_id,
                                parent_span_id: span.parent_span_id,
                            });
                        }
                    }
                }
                // An empty ExportTraceServiceResponse.
                ([(axum::http::header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, spans)
}

/// Points every node's configuration at the collector, recording every trace.
fn export_traces_to(plan: &RegionPlan, collector: SocketAddr) {
    for node in &plan.nodes {
        let text = std::fs::read_to_string(&node.config).unwrap();
        let mut config: toml::Table = text.parse().unwrap();
        let tracing = config.entry("tracing").or_insert_with(|| toml::Value::Table(Default::default()));
        let tracing = tracing.as_table_mut().unwrap();
        tracing.insert("otlp_endpoint".into(), toml::Value::String(format!("http://{collector}")));
        tracing.insert("sample_ratio".into(), toml::Value::Float(1.0));
        std::fs::write(&node.config, toml::to_string(&config).unwrap()).unwrap();
    }
}

/// The CLI as the region's admin against node `node`, with extra arguments.
async fn cli(plan: &RegionPlan, node: usize, args: &[&str]) -> String {
    let out = cli_output(plan, node, args).await;
    assert!(out.status.success(), "meridian {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the CLI command exits 0.
async fn cli_succeeds(plan: &RegionPlan, node: usize, args: &[&str]) -> bool {
    cli_output(plan, node, args).await.status.success()
}

async fn cli_output(plan: &RegionPlan, node: usize, args: &[&str]) -> std::process::Output {
    process::region_cli(plan, node, &process::admin_flags(plan), args).await
}

/// Waits (at most 20 s) until the spans of `trace_id` come from `nodes` distinct nodes and every
/// span's parent has arrived (spans are exported as they end, the request's own last), then
/// returns them.
async fn spans_of(collected: &Mutex<Vec<Span>>, trace_id: &[u8], root: &[u8], nodes: usize) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans: Vec<Span> = collected.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        let seen: BTreeSet<&str> = spans.iter().map(|s| s.node.as_str()).collect();
        let ids: BTreeSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
        let whole = spans.iter().all(|s| s.parent_span_id == root || ids.contains(s.parent_span_id.as_slice()));
        if (seen.len() >= nodes && whole) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that `spans` form one tree hanging from the caller's span `root`, across `nodes` nodes,
/// with the stages a replicated write goes through.
fn assert_one_tree(spans: &[Span], root: &[u8], nodes: usize, via: &str) {
    let listing = || {
        spans
            .iter()
            .map(|s| format!("  {} {} parent {:02x?}", s.node, s.name, s.parent_span_id))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ids: BTreeMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique ({via}):\n{}", listing());
    let seen: BTreeSet<&str> = spans.iter().map(|s| s.node.as_str()).collect();
    assert!(seen.len() >= nodes, "spans from {} node(s) ({via}), expected {nodes}:\n{}", seen.len(), listing());
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent_span_id == root).collect();
    assert_eq!(roots.len(), 1, "exactly one span is the caller's child ({via}):\n{}", listing());
    assert_eq!(roots[0].name, "write", "the coordinator's request span ({via}):\n{}", listing());
    for span in spans {
        // Every span reaches the caller's span by parent links within the trace (no orphans, no cycle).
        let mut at = span;
        for _ in 0..=spans.len() {
            if at.parent_span_id == root {
                break;
            }
            at = ids.get(at.parent_span_id.as_slice()).unwrap_or_else(|| {
                panic!("{} on {} has a parent outside the trace ({via}):\n{}", span.name, span.node, listing())
            });
        }
        assert_eq!(at.parent_span_id, root, "{} on {} is not under the caller ({via})", span.name, span.node);
    }
    for stage in ["local_write", "replicate", "peer.push"] {
        assert!(spans.iter().any(|s| s.name == stage), "no {stage} span ({via}):\n{}", listing());
    }
    // A replica's span for the push is the child of the coordinator's call to it.
    for push in spans.iter().filter(|s| s.name == "peer.push" && s.node != roots[0].node) {
        let call = ids[push.parent_span_id.as_slice()];
        assert_eq!(call.node, roots[0].node, "a push's parent is the coordinator's call ({via})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_write_is_one_trace_across_the_region() {
    let (collector, collected) = start_collector().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("region");
    let options = RegionOptions {
        nodes: usize::from(NODES),
        base_port: process::free_base_port(NODES),
        durability: "relaxed".into(),
        ..RegionOptions::default()
    };
    let plan = local_region::init(&dir, &options).unwrap();
    export_traces_to(&plan, collector);

    let mut supervisor = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["region", "start", "--dir"])
        .arg(&dir)
        .env("MERIDIAN_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn meridian region start");
    let mut lines = BufReader::new(supervisor.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("region ready") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(ready, Ok(true)), "the region did not start");
    // Drain the supervisor's output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // Every node must see every other alive, or a push is a hint rather than a traced request.
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in 0..plan.nodes.len() {
        while !cli_succeeds(&plan, node, &["cluster", "status", "--check"]).await {
            assert!(Instant::now() < deadline, "node {node} never saw the whole region alive");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The native protocol: the CLI sends Request::V2 with the context.
    let trace_id = rand::random::<[u8; 16]>();
    let parent = rand::random::<[u8; 8]>().map(|b| b | 1);
    let traceparent = format!("00-{}-{}-01", hex(&trace_id), hex(&parent));
    let out =
        cli(&plan, 0, &["--traceparent", &traceparent, "--consistency", "local_quorum", "put", "traced/one", "v"])
            .await;
    assert_eq!(out.trim(), "OK");
    let spans = spans_of(&collected, &trace_id, &parent, usize::from(NODES)).await;
    assert_one_tree(&spans, &parent, usize::from(NODES), "native protocol");

    // HTTPS with a `traceparent` header, through another node.
    let trace_id = rand::random::<[u8; 16]>();
    let parent = rand::random::<[u8; 8]>().map(|b| b | 1);
    let traceparent = format!("00-{}-{}-01", hex(&trace_id), hex(&parent));
    let (cert, key) = meridian_wan::plan::admin_credentials(&plan.ca_cert);
    let http = meridian_wan::probe::NodeHttp::tls(&plan.ca_cert, Some((cert.as_path(), key.as_path()))).unwrap();
    let (status, body) = http
        .request_with_headers(
            plan.nodes[1].http_addr,
            "POST",
            "/v1/kv/traced/two?consistency=local_quorum",
            &[("traceparent", &traceparent)],
            Some(r#"{"op":"incr","by":1}"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let spans = spans_of(&collected, &trace_id, &parent, usize::from(NODES)).await;
    assert_one_tree(&spans, &parent, usize::from(NODES), "HTTP");

    // An untraced request is not exported as part of either trace, and a malformed traceparent
    // does not fail the request (the node starts a trace of its own).
    let (status, body) = http
        .request_with_headers(
            plan.nodes[2].http_addr,
            "POST",
            "/v1/kv/traced/three",
            &[("traceparent", "00-not-a-trace-01")],
            Some(r#"{"op":"incr","by":1}"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "a malformed traceparent is ignored: {body}");

    let _ = std::process::Command::new("kill").args(["-TERM", &supervisor.id().unwrap().to_string()]).status();
    let status = tokio::time::timeout(Duration::from_secs(30), supervisor.wait()).await.expect("region stops").unwrap();
    assert!(status.success(), "region start exited with {status}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
