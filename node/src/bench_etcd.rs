//! `meridian bench-etcd`: the leader-based quorum anchor beside `meridian bench`. N concurrent
//! clients, dealt round-robin over the etcd members given (a follower forwards writes to the leader),
//! each with one keep-alive HTTP/1.1 connection to etcd's v3 JSON gateway (`etcd` 3.4 serves it on
//! the client URL): PUTs (`POST /v3/kv/put`), then reads of the same keys (`POST /v3/kv/range`,
//! linearizable unless `--serializable`). Latency goes into hdrhistogram and the table has the same
//! format as `meridian bench`'s, so the two can be set side by side (see `scripts/bench-region.sh`).
//!
//! etcd commits a write once a majority of members has appended it to its write-ahead log, which it
//! fsyncs; a linearizable read costs the leader a heartbeat round (ReadIndex). Only ratios measured
//! in one run on one machine mean anything; the absolute figures are printed for context.

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::{new_histogram, progress, render_line, PhaseReport};

/// `meridian bench-etcd …`.
#[derive(Clone, Debug, clap::Args)]
pub struct EtcdBenchArgs {
    /// etcd client URLs, comma-separated (http only); clients are dealt over them round-robin.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Concurrent clients, one keep-alive connection each.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// PUTs per client, and again reads per client.
    #[arg(long, default_value_t = 500)]
    pub ops: u64,
    /// Value size.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Serializable reads (any member's local state, possibly stale) instead of linearizable ones.
    #[arg(long)]
    pub serializable: bool,
    /// Per-request timeout; a request that exceeds it counts as an error and its connection is
    /// replaced.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
}

/// The figures of one run.
#[derive(Debug)]
pub struct EtcdBenchReport {
    /// The server version `GET /version` reported on the first endpoint.
    pub server_version: String,
    /// PUTs.
    pub writes: PhaseReport,
    /// Ranges of the keys written.
    pub reads: PhaseReport,
}

/// Runs `meridian bench-etcd` and prints its table.
pub async fn run_cli(args: EtcdBenchArgs) -> anyhow::Result<()> {
    let report = run(&args).await?;
    print!("{}", render(&report, &args));
    Ok(())
}

/// Runs the benchmark.
pub async fn run(args: &EtcdBenchArgs) -> anyhow::Result<EtcdBenchReport> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(!args.endpoints.is_empty(), "--endpoints needs at least one etcd client URL");
    let authorities = args.endpoints.iter().map(|e| authority(e)).collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = Duration::from_millis(args.request_timeout_ms.max(1));
    let server_version = {
        let mut conn = Conn::open(&authorities[0]).await?;
        let body = conn.call(hyper::Method::GET, "/version", Bytes::new(), timeout).await?;
        let json: serde_json::Value = serde_json::from_slice(&body).context("parsing etcd's /version")?;
        json.get("etcdserver").and_then(|v| v.as_str()).unwrap_or("?").to_string()
    };
    let tag = format!("{:08x}", rand::random::<u32>());
    let plan = Arc::new(Plan {
        authorities,
        tag,
        value_b64: b64(&vec![b'x'; args.value_bytes]),
        serializable: args.serializable,
        ops: args.ops,
        timeout,
    });
    let writes = phase(&plan, args.clients, Op::Put, "etcd writes").await?;
    let reads = phase(&plan, args.clients, Op::Range, "etcd reads").await?;
    Ok(EtcdBenchReport { server_version, writes, reads })
}

/// Formats the report in `meridian bench`'s table format.
pub fn render(report: &EtcdBenchReport, args: &EtcdBenchArgs) -> String {
    let reads = if args.serializable { "serializable" } else { "linearizable" };
    let mut out = format!(
        "etcd bench: {} clients, {} ops each, {}-byte values, etcd {} via the v3 JSON gateway on {} endpoint(s), \
         {reads} reads; etcd fsyncs its WAL before acknowledging a write\n",
        args.clients,
        args.ops,
        args.value_bytes,
        report.server_version,
        args.endpoints.len()
    );
    out += &render_line("etcd put", &report.writes);
    out += &render_line(&format!("etcd range ({reads})"), &report.reads);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Range,
}

/// What every client task shares.
struct Plan {
    authorities: Vec<String>,
    tag: String,
    value_b64: String,
    serializable: bool,
    ops: u64,
    timeout: Duration,
}

/// `host:port` of an `http://host:port` client URL (a bare `host:port` is accepted too).
fn authority(endpoint: &str) -> anyhow::Result<String> {
    let with_scheme = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let uri: hyper::Uri = with_scheme.parse().with_context(|| format!("parsing the etcd endpoint {endpoint:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("etcd endpoint {endpoint:?}: only http:// is supported");
    }
    let authority = uri.authority().with_context(|| format!("etcd endpoint {endpoint:?} has no host"))?;
    ensure!(authority.port_u16().is_some(), "etcd endpoint {endpoint:?} has no port");
    Ok(authority.as_str().to_string())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One keep-alive HTTP/1.1 connection to one member.
struct Conn {
    authority: String,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(authority: &str) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to etcd at {authority}; is it running?"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with etcd at {authority}"))?;
        // Drives the connection until the sender is dropped or the peer closes it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { authority: authority.to_string(), sender })
    }

    /// One request; the body of a 2xx response, an error otherwise.
    async fn call(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> anyhow::Result<Bytes> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            ensure!(status.is_success(), "etcd answered {status}: {}", String::from_utf8_lossy(&body));
            anyhow::Ok(body)
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| anyhow::anyhow!("timed out after {timeout:?}"))?
    }
}

/// One operation; `Ok(false)` is a read that found nothing.
async fn one(conn: &mut Conn, plan: &Plan, op: Op, key: &str) -> anyhow::Result<bool> {
    let key = b64(key.as_bytes());
    match op {
        Op::Put => {
            let body = serde_json::json!({ "key": key, "value": plan.value_b64 });
            conn.call(hyper::Method::POST, "/v3/kv/put", Bytes::from(serde_json::to_vec(&body)?), plan.timeout).await?;
            Ok(true)
        }
        Op::Range => {
            let body = if plan.serializable {
                serde_json::json!({ "key": key, "serializable": true })
            } else {
                serde_json::json!({ "key": key })
            };
            let reply = conn
                .call(hyper::Method::POST, "/v3/kv/range", Bytes::from(serde_json::to_vec(&body)?), plan.timeout)
                .await?;
            let reply: serde_json::Value = serde_json::from_slice(&reply).context("parsing a range reply")?;
            Ok(reply.get("kvs").and_then(|kvs| kvs.as_array()).is_some_and(|kvs| !kvs.is_empty()))
        }
    }
}

/// All clients doing `ops` operations each; connections are opened before the clock starts.
async fn phase(plan: &Arc<Plan>, clients: usize, op: Op, label: &str) -> anyhow::Result<PhaseReport> {
    let mut conns = Vec::with_capacity(clients);
    for worker in 0..clients {
        conns.push(Conn::open(&plan.authorities[worker % plan.authorities.len()]).await?);
    }
    let bar = Arc::new(progress(clients as u64 * plan.ops, label));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(clients);
    for (worker, mut conn) in conns.into_iter().enumerate() {
        let plan = plan.clone();
        let bar = bar.clone();
        workers.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let (mut errors, mut missing) = (0u64, 0u64);
            let mut first_error = None;
            for n in 0..plan.ops {
                let key = format!("bench/{}-w{worker}-{n}", plan.tag);
                let t = Instant::now();
                match one(&mut conn, &plan, op, &key).await {
                    Ok(true) => hist.saturating_record(t.elapsed().as_micros() as u64),
                    Ok(false) => missing += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        // A timed-out or broken connection is replaced (failure to reconnect is
                        // counted on the next operation).
                        if let Ok(fresh) = Conn::open(&conn.authority).await {
                            conn = fresh;
                        }
                    }
                }
                bar.inc(1);
            }
            (hist, errors, missing, first_error)
        }));
    }
    let mut latency_us = new_histogram();
    let (mut errors, mut missing) = (0u64, 0u64);
    let mut first_error = None;
    for worker in workers {
        let (hist, failed, absent, error) = worker.await?;
        latency_us.add(&hist).expect("same bounds");
        errors += failed;
        missing += absent;
        first_error = first_error.or(error);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    if let Some(error) = first_error {
        eprintln!("{label}: {errors} errors; the first: {error}");
    }
    if missing > 0 {
        eprintln!("{label}: {missing} reads found no value (counted as errors)");
    }
    let ops = latency_us.len();
    Ok(PhaseReport { ops, errors: errors + missing, ops_per_sec: ops as f64 / elapsed.as_secs_f64(), latency_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_to_authorities() {
        assert_eq!(authority("http://127.0.0.1:23791").unwrap(), "127.0.0.1:23791");
        assert_eq!(authority("http://localhost:2379/").unwrap(), "localhost:2379");
        assert_eq!(authority("127.0.0.1:2379").unwrap(), "127.0.0.1:2379");
        assert!(authority("https://127.0.0.1:2379").is_err());
        assert!(authority("http://127.0.0.1").is_err());
    }
}
