//! `meridian bench-collections`: what one member change costs as a set grows, and one field update
//! as a map grows.
//!
//! One node in-process (as `meridian bench` starts it), one client. For each size it fills a fresh
//! set to that many members (writes of many members each), then times single-member adds and
//! removes of members it does not hold yet, one at a time; membership queries and pages of 100
//! members at places spread over the set; and a read of the whole set. Maps likewise: field updates,
//! single-field reads and pages of 100 fields. It reports each figure beside the one at the
//! smallest size of the same run: a collection kept one record per part should change and answer a
//! part read at about the same cost whatever its size (the goal is ≤ 2× at 1M), while a whole read
//! stays linear. Benchmarks report; they never assert.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use meridian_client::Client;

use crate::bench::{in_process_config, new_histogram, tempfile_dir};
use meridian_server::storage::Durability;

/// `meridian bench-collections …`.
#[derive(Clone, Debug, clap::Args)]
pub struct CollectionBenchArgs {
    /// Set sizes to probe, comma-separated (the first is the baseline of the ratios).
    #[arg(long, value_delimiter = ',', default_value = "0,10000,100000")]
    pub sizes: Vec<u64>,
    /// Map sizes (fields) to probe, comma-separated (empty: none). A map is filled one field per
    /// write (a map update names one field), from 8 writers at once.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000")]
    pub map_sizes: Vec<u64>,
    /// Document histories to probe, in changes (comma-separated; empty: none). A document is
    /// filled with client changes sent 1,000 per write, then probed with `doc_put`s and reads.
    #[arg(long, value_delimiter = ',', default_value = "0,10000")]
    pub doc_changes: Vec<u64>,
    /// Timed single-member adds (and as many removes) per size; as many field updates per map size.
    #[arg(long, default_value_t = 300)]
    pub probes: u64,
    /// Whole reads per size (skipped for sets whose whole state would not fit a reply).
    #[arg(long, default_value_t = 5)]
    pub reads: u64,
    /// `relaxed` durability (fsync off) instead of `fsync`.
    #[arg(long)]
    pub relaxed: bool,
}

/// Members written per filling write.
const FILL_CHUNK: u64 = 5_000;

/// A set's whole size allowed on the benchmark's node: sets are kept per element, but their whole
/// size still counts against `limits.max_key_bytes` (whole states still travel in one message
/// between replicas: quorum reads, digest sync). The largest the configuration allows (the merged
/// cap must be 4× it, below the codec's 64 MiB ceiling): about 600,000 members of 10 bytes.
const BENCH_KEY_BYTES: usize = 15 << 20;

/// One size's figures.
#[derive(Debug)]
pub struct SizeReport {
    /// Members in the set while probed.
    pub size: u64,
    /// Time to fill it.
    pub fill: Duration,
    /// Single-member adds, µs.
    pub add_us: Histogram<u64>,
    /// Single-member removes, µs.
    pub remove_us: Histogram<u64>,
    /// Membership queries (`sismember`) of members spread over the set, µs.
    pub contains_us: Histogram<u64>,
    /// Pages of [`PAGE`] members from places spread over the set, µs.
    pub page_us: Histogram<u64>,
    /// Whole reads, µs (empty: skipped).
    pub read_us: Histogram<u64>,
}

/// Members or fields per timed page read.
pub const PAGE: u32 = 100;

/// The `i`-th of `probes` places spread over `0..size` (0 for an empty collection).
fn spread(i: u64, size: u64) -> u64 {
    (i * 7_919) % size.max(1)
}

/// One map size's figures.
#[derive(Debug)]
pub struct MapSizeReport {
    /// Fields in the map while probed.
    pub size: u64,
    /// Time to fill it.
    pub fill: Duration,
    /// Single-field updates (a register field set), µs.
    pub update_us: Histogram<u64>,
    /// Single-field reads (`hget`) of fields spread over the map, µs.
    pub get_us: Histogram<u64>,
    /// Pages of [`PAGE`] fields from places spread over the map, µs.
    pub page_us: Histogram<u64>,
}

/// One document history's figures.
#[derive(Debug)]
pub struct DocReport {
    /// Changes in the document's history while probed.
    pub changes: u64,
    /// Bytes of the document as stored (its changes).
    pub stored_bytes: u64,
    /// `doc_put`s of one root field, µs.
    pub put_us: Histogram<u64>,
    /// Reads of the document as JSON, µs.
    pub read_us: Histogram<u64>,
}

/// Everything one run measured.
#[derive(Debug)]
pub struct Reports {
    /// Sets, by size.
    pub sets: Vec<SizeReport>,
    /// Maps, by size.
    pub maps: Vec<MapSizeReport>,
    /// Documents, by history length.
    pub docs: Vec<DocReport>,
}

/// Runs the benchmark and prints its tables.
pub async fn run_cli(args: CollectionBenchArgs) -> anyhow::Result<()> {
    let reports = run(&args).await?;
    print!("{}", render(&reports.sets, &args));
    print!("{}", render_maps(&reports.maps, &args));
    print!("{}", render_docs(&reports.docs, &args));
    Ok(())
}

/// Runs the benchmark.
pub async fn run(args: &CollectionBenchArgs) -> anyhow::Result<Reports> {
    let scratch = tempfile_dir()?;
    let durability = if args.relaxed { Durability::Relaxed } else { Durability::Fsync };
    let mut config = in_process_config(&scratch, durability)?;
    config.limits.max_key_bytes = BENCH_KEY_BYTES;
    config.limits.max_merged_key_bytes = 4 * BENCH_KEY_BYTES;
    let running = meridian_server::serve::start(config).await?;
    // Every failure past the start goes through the shutdown below (the scratch folder goes when
    // `scratch` drops).
    let result = async {
        let client = Client::builder()
            .endpoint(running.client_addr.to_string())
            .ca_cert_file(&running.cert_path)
            .max_frame_bytes(4 * BENCH_KEY_BYTES + (1 << 20))
            .max_retries(0)
            .connect()
            .await
            .context("connecting the benchmark client")?;
        let sets = probe_sizes(&client, args).await?;
        let maps = probe_map_sizes(&client, args).await?;
        let docs = probe_docs(&client, args).await?;
        Ok(Reports { sets, maps, docs })
    }
    .await;
    running.shutdown().await;
    result
}

async fn probe_map_sizes(client: &Client, args: &CollectionBenchArgs) -> anyhow::Result<Vec<MapSizeReport>> {
    const WRITERS: u64 = 8;
    let mut reports = Vec::new();
    for &size in &args.map_sizes {
        let key = format!("bench/map-{size}");
        let started = Instant::now();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let map = client.map(key.as_str());
            writers.push(tokio::spawn(async move {
                for i in (w..size).step_by(WRITERS as usize) {
                    map.set_field(format!("f{i:09}"), "v").await?;
                }
                Ok::<_, meridian_client::Error>(())
            }));
        }
        for writer in writers {
            writer.await?.context("filling the map")?;
        }
        let fill = started.elapsed();
        let map = client.map(key.as_str());
        let mut update_us = new_histogram();
        for i in 0..args.probes {
            let t = Instant::now();
            map.set_field(format!("p{i:09}"), "v").await.context("a probe update")?;
            update_us.record(t.elapsed().as_micros() as u64)?;
        }
        let (mut get_us, mut page_us) = (new_histogram(), new_histogram());
        for i in 0..args.probes {
            let field = format!("f{:09}", spread(i, size));
            let t = Instant::now();
            let value = map.get_field(field).await.context("a probe field read")?;
            get_us.record(t.elapsed().as_micros() as u64)?;
            anyhow::ensure!(value.is_some() || size == 0, "a field the map holds read as missing");
            let t = Instant::now();
            map.page(Some(format!("f{:09}", spread(i, size))), PAGE).await.context("a probe page")?;
            page_us.record(t.elapsed().as_micros() as u64)?;
        }
        reports.push(MapSizeReport { size, fill, update_us, get_us, page_us });
    }
    Ok(reports)
}

/// Client changes sent per filling write of a document.
const DOC_FILL_CHUNK: usize = 1_000;

async fn probe_docs(client: &Client, args: &CollectionBenchArgs) -> anyhow::Result<Vec<DocReport>> {
    use automerge::transaction::Transactable as _;
    let mut reports = Vec::new();
    for &changes in &args.doc_changes {
        let doc = client.doc(format!("bench/doc-{changes}").as_str());
        // A client's history, made here as an automerge app would: one small change per edit.
        let mut local = automerge::AutoCommit::new();
        let mut history = Vec::new();
        for i in 0..changes {
            local.put(automerge::ROOT, format!("k{}", i % 100), i as i64)?;
            local.commit();
            history.push(local.get_last_local_change().context("a change just made")?.raw_bytes().to_vec());
        }
        let stored_bytes = history.iter().map(|c| c.len() as u64).sum();
        for chunk in history.chunks(DOC_FILL_CHUNK) {
            doc.apply_changes(chunk.to_vec()).await.context("filling the document")?;
        }
        let (mut put_us, mut read_us) = (new_histogram(), new_histogram());
        for i in 0..args.probes {
            let t = Instant::now();
            doc.put_json(&serde_json::json!({ "probe": i })).await.context("a probe doc_put")?;
            put_us.record(t.elapsed().as_micros() as u64)?;
            let t = Instant::now();
            let json = doc.get_json().await.context("a probe read")?;
            read_us.record(t.elapsed().as_micros() as u64)?;
            anyhow::ensure!(json["probe"] == serde_json::json!(i), "the read shows the put before it");
        }
        reports.push(DocReport { changes, stored_bytes, put_us, read_us });
    }
    Ok(reports)
}

/// The documents' table: per history length, p50, p99 and mean of a `doc_put` and p50 and mean of
/// a read, each with its ratio (of means) to the first length's.
pub fn render_docs(reports: &[DocReport], args: &CollectionBenchArgs) -> String {
    if reports.is_empty() {
        return String::new();
    }
    let mut out = format!("\ndocument operations by history length ({} probes each)\n\n", args.probes);
    out += "| changes | history bytes | doc_put p50 | doc_put p99 | doc_put mean | ÷ first | read p50 | read mean | ÷ first |\n";
    out += "|---|---|---|---|---|---|---|---|---|\n";
    let first = reports.first();
    for r in reports {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.changes,
            r.stored_bytes,
            ms(&r.put_us, Some(0.5)),
            ms(&r.put_us, Some(0.99)),
            ms(&r.put_us, None),
            ratio(&r.put_us, first.map(|f| &f.put_us)),
            ms(&r.read_us, Some(0.5)),
            ms(&r.read_us, None),
            ratio(&r.read_us, first.map(|f| &f.read_us)),
        );
    }
    out
}

/// The maps' table: per size, p50 and mean of a field update, p50 of a field read and of a page,
/// each with its ratio (of means) to the first size's.
pub fn render_maps(reports: &[MapSizeReport], args: &CollectionBenchArgs) -> String {
    if reports.is_empty() {
        return String::new();
    }
    let mut out = format!("\nmap field updates and part reads by map size ({} probes each)\n\n", args.probes);
    out += "| fields | fill | update p50 | update mean | ÷ first | hget p50 | ÷ first | page(100) p50 | ÷ first |\n";
    out += "|---|---|---|---|---|---|---|---|---|\n";
    let first = reports.first();
    for r in reports {
        out += &format!(
            "| {} | {:.1} s | {} | {} | {} | {} | {} | {} | {} |\n",
            r.size,
            r.fill.as_secs_f64(),
            ms(&r.update_us, Some(0.5)),
            ms(&r.update_us, None),
            ratio(&r.update_us, first.map(|f| &f.update_us)),
            ms(&r.get_us, Some(0.5)),
            ratio(&r.get_us, first.map(|f| &f.get_us)),
            ms(&r.page_us, Some(0.5)),
            ratio(&r.page_us, first.map(|f| &f.page_us)),
        );
    }
    out
}

/// `h`'s mean over `base`'s, or a dash when either is empty.
fn ratio(h: &Histogram<u64>, base: Option<&Histogram<u64>>) -> String {
    match base {
        Some(base) if !h.is_empty() && !base.is_empty() => format!("{:.2}", h.mean() / base.mean().max(1.0)),
        _ => "—".into(),
    }
}

/// `h`'s quantile `q` (its mean for `None`) in milliseconds, or `skipped` when it is empty.
fn ms(h: &Histogram<u64>, q: Option<f64>) -> String {
    if h.is_empty() {
        return "skipped".to_string();
    }
    let us = q.map_or_else(|| h.mean(), |q| h.value_at_quantile(q) as f64);
    format!("{:.2} ms", us / 1000.0)
}

async fn probe_sizes(client: &Client, args: &CollectionBenchArgs) -> anyhow::Result<Vec<SizeReport>> {
    let mut reports = Vec::new();
    for &size in &args.sizes {
        let set = client.set(format!("bench/set-{size}").as_str());
        let started = Instant::now();
        let mut filled = 0;
        while filled < size {
            let chunk = FILL_CHUNK.min(size - filled);
            set.add((filled..filled + chunk).map(member)).await.context("filling the set")?;
            filled += chunk;
        }
        let fill = started.elapsed();
        let (mut add_us, mut remove_us, mut read_us) = (new_histogram(), new_histogram(), new_histogram());
        let (mut contains_us, mut page_us) = (new_histogram(), new_histogram());
        for i in 0..args.probes {
            let probe = member(size + i);
            let t = Instant::now();
            set.add([probe]).await.context("a probe add")?;
            add_us.record(t.elapsed().as_micros() as u64)?;
        }
        for i in 0..args.probes {
            let probe = member(size + i);
            let t = Instant::now();
            set.remove([probe]).await.context("a probe remove")?;
            remove_us.record(t.elapsed().as_micros() as u64)?;
        }
        for i in 0..args.probes {
            let t = Instant::now();
            let found = set.contains(member(spread(i, size))).await.context("a probe membership query")?;
            contains_us.record(t.elapsed().as_micros() as u64)?;
            anyhow::ensure!(found || size == 0, "a member the set holds read as missing");
            let t = Instant::now();
            set.page(Some(member(spread(i, size))), PAGE).await.context("a probe page")?;
            page_us.record(t.elapsed().as_micros() as u64)?;
        }
        for _ in 0..args.reads {
            let t = Instant::now();
            match set.members().await {
                Ok(members) => {
                    anyhow::ensure!(members.len() as u64 == size, "read {} members, expected {size}", members.len());
                    read_us.record(t.elapsed().as_micros() as u64)?;
                }
                // A whole read larger than a reply: reported as skipped.
                Err(e) if e.code() == Some(meridian_client::proto::ErrorCode::TooLarge) => break,
                Err(e) => return Err(e).context("a whole read"),
            }
        }
        reports.push(SizeReport { size, fill, add_us, remove_us, contains_us, page_us, read_us });
    }
    Ok(reports)
}

fn member(i: u64) -> Vec<u8> {
    format!("m{i:09}").into_bytes()
}

/// The sets' tables: per size, p50 and mean of each change, p50 of each read, each with its ratio
/// (of means) to the first size's.
pub fn render(reports: &[SizeReport], args: &CollectionBenchArgs) -> String {
    let mut out = format!(
        "set member changes by set size ({} probes each, {} durability, one node in-process)\n\n",
        args.probes,
        if args.relaxed { "relaxed" } else { "fsync" }
    );
    out += "| members | fill | sadd p50 | sadd mean | ÷ first | srem p50 | srem mean | ÷ first |\n";
    out += "|---|---|---|---|---|---|---|---|\n";
    let first = reports.first();
    for r in reports {
        out += &format!(
            "| {} | {:.1} s | {} | {} | {} | {} | {} | {} |\n",
            r.size,
            r.fill.as_secs_f64(),
            ms(&r.add_us, Some(0.5)),
            ms(&r.add_us, None),
            ratio(&r.add_us, first.map(|f| &f.add_us)),
            ms(&r.remove_us, Some(0.5)),
            ms(&r.remove_us, None),
            ratio(&r.remove_us, first.map(|f| &f.remove_us)),
        );
    }
    out += "\nset reads by set size\n\n";
    out += "| members | sismember p50 | ÷ first | page(100) p50 | ÷ first | whole read p50 | ÷ first |\n";
    out += "|---|---|---|---|---|---|---|\n";
    for r in reports {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.size,
            ms(&r.contains_us, Some(0.5)),
            ratio(&r.contains_us, first.map(|f| &f.contains_us)),
            ms(&r.page_us, Some(0.5)),
            ratio(&r.page_us, first.map(|f| &f.page_us)),
            ms(&r.read_us, Some(0.5)),
            ratio(&r.read_us, first.map(|f| &f.read_us)),
        );
    }
    out
}
