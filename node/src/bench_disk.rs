//! `meridian bench-disk`: does a node's disk use stop growing under a steady overwrite/delete
//! workload, how much disk does its live data take, and is every acknowledged write still there?
//!
//! One node in-process (as `meridian bench` starts it). Clients overwrite and delete registers,
//! add and remove set members, set and remove map fields and delete whole sets and maps, over a
//! fixed key space, for `--secs`. Every `--sample-secs` the run records what the node reports of
//! its disk (`Client::storage`: every file under the data directory, the WAL, each space's table
//! files) and of its live data (`Client::data_census`). Then it reads every key back and compares
//! it with what the acknowledged writes left: each key is written by one client, one operation at
//! a time, so its final state is known exactly, and a difference is a lost (or resurrected) write.
//!
//! What it reports: disk ÷ live data at the end (live data as the census counts it: the encoded
//! states a read would return), and the growth — the most disk used in the run's second half ÷ the
//! most in its first half, halves of the payload written: near 1 for a disk that stopped growing,
//! near 2 for one that grows with the writes. What a node keeps of its writes' history is bounded by the delta log's retention and
//! the idempotency TTL, both set by the run (`--log-retention-s`, `--idempotency-ttl-s`; the
//! node's defaults are a day, so a shorter soak at the defaults measures that history filling up,
//! not a plateau). `--log-retention-s 0` keeps the log forever: the negative control, whose disk
//! must keep growing. Benchmarks report; `node/tests/disk_soak.rs` runs a short one and asserts only
//! what must hold whatever the machine: nothing lost, and a growth near 1.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use meridian_client::{Client, Value};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::bench::{in_process_config, tempfile_dir};
use meridian_server::storage::Durability;

/// `meridian bench-disk …`.
#[derive(Clone, Debug, clap::Args)]
pub struct DiskBenchArgs {
    /// How long the workload runs, in seconds (at most, with `--payload-mb`).
    #[arg(long, default_value_t = 600)]
    pub secs: u64,
    /// Stop once the clients have written this much payload (MB), if before `--secs`: the disk's
    /// saw is paced by bytes written (WAL cap, flushes, compactions), so a run sized in bytes
    /// holds as many of its teeth on a slow machine as on a fast one.
    #[arg(long)]
    pub payload_mb: Option<u64>,
    /// Seconds between samples of the node's disk and live data.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Keys written (a third registers, a third sets, a third maps).
    #[arg(long, default_value_t = 30_000)]
    pub keys: u64,
    /// Clients writing at once (each owns its share of the keys).
    #[arg(long, default_value_t = 16)]
    pub clients: u64,
    /// Largest register value, in bytes (values are random bytes of 1/10 of it up to it; map
    /// fields a quarter of that).
    #[arg(long, default_value_t = 1_000)]
    pub value_bytes: usize,
    /// The node's `storage.log_retention_s` (0: the log is kept forever, the negative control).
    #[arg(long, default_value_t = 60)]
    pub log_retention_s: u64,
    /// The node's `limits.idempotency_ttl_s`.
    #[arg(long, default_value_t = 60)]
    pub idempotency_ttl_s: u64,
    /// `relaxed` durability (fsync off) instead of `fsync`.
    #[arg(long)]
    pub relaxed: bool,
    /// Seed of the workload's choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Members a set key draws from, and fields a map key draws from.
const MEMBERS: u64 = 64;
const FIELDS: u64 = 24;

/// What the node reported at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Since the workload started.
    pub at: Duration,
    /// Operations acknowledged so far.
    pub ops: u64,
    /// Payload bytes acknowledged so far.
    pub written_bytes: u64,
    /// Every file under the data directory.
    pub dir_bytes: u64,
    /// The write-ahead log files.
    pub wal_bytes: u64,
    /// Table files per space, `(name, bytes)`.
    pub sst_bytes: Vec<(String, u64)>,
    /// The census's live data (encoded states of the keys a read shows), once a pass has ended.
    pub live_bytes: Option<u64>,
    /// The census's deleted keys and their kept bytes.
    pub tombstones: Option<(u64, u64)>,
    /// When the census pass these figures come from ended (the node's Unix milliseconds).
    pub census_taken_ms: Option<u64>,
}

/// What one run measured.
#[derive(Debug)]
pub struct DiskReport {
    /// Samples during the workload, in order.
    pub samples: Vec<Sample>,
    /// After the workload, with a census pass that began after it.
    pub last: Sample,
    /// Operations acknowledged.
    pub ops: u64,
    /// Payload bytes the acknowledged operations carried (values, members, fields).
    pub written_bytes: u64,
    /// Keys read back and compared.
    pub keys_checked: u64,
    /// Keys whose state differs from what their acknowledged writes left (up to 20, described).
    pub lost: Vec<String>,
    /// How many keys differed in all.
    pub lost_count: u64,
}

impl DiskReport {
    /// The most disk used in the second half of the workload ÷ the most in its first half, the
    /// halves split by payload written (what paces RocksDB's flushes and compactions), not time.
    pub fn growth(&self) -> f64 {
        let half = self.samples.last().map_or(0, |s| s.written_bytes) / 2;
        let max = |pick: &dyn Fn(&&Sample) -> bool| self.samples.iter().filter(pick).map(|s| s.dir_bytes).max();
        match (max(&|s| s.written_bytes <= half), max(&|s| s.written_bytes > half)) {
            (Some(first), Some(second)) if first > 0 => second as f64 / first as f64,
            _ => f64::NAN,
        }
    }

    /// Disk ÷ live data after the workload.
    pub fn disk_per_live(&self) -> Option<f64> {
        self.last.live_bytes.filter(|live| *live > 0).map(|live| self.last.dir_bytes as f64 / live as f64)
    }
}

/// What a key should hold, from its acknowledged writes.
#[derive(Clone, Debug, PartialEq)]
enum Expected {
    Register(Option<Vec<u8>>),
    Set(BTreeSet<Vec<u8>>),
    Map(BTreeMap<String, Vec<u8>>),
}

impl Expected {
    /// What key `index` holds before any write (its kind follows its index).
    fn empty(index: u64) -> Expected {
        match index % 3 {
            0 => Expected::Register(None),
            1 => Expected::Set(BTreeSet::new()),
            _ => Expected::Map(BTreeMap::new()),
        }
    }

    /// Whether `read` (a read of the key) shows this state; a deleted or emptied key reads as
    /// absent or empty.
    fn matches(&self, read: &Option<Value>) -> bool {
        match (self, read) {
            (Expected::Register(None), None | Some(Value::Register(None))) => true,
            (Expected::Register(Some(want)), Some(Value::Register(Some(got)))) => want == got,
            (Expected::Set(want), None) => want.is_empty(),
            (Expected::Set(want), Some(Value::Set(got))) => want.iter().eq(got.iter()),
            (Expected::Map(want), None) => want.is_empty(),
            (Expected::Map(want), Some(Value::Map(got))) => {
                want.len() == got.len()
                    && want
                        .iter()
                        .all(|(field, value)| matches!(got.get(field), Some(Value::Register(Some(v))) if v == value))
            }
            _ => false,
        }
    }
}

fn key_name(index: u64) -> String {
    let kind = ["r", "s", "m"][(index % 3) as usize];
    format!("soak/{kind}{index}")
}

fn member(n: u64) -> Vec<u8> {
    format!("member-{n:04}-of-a-set-kept-per-element").into_bytes()
}

/// Runs the benchmark and prints its report.
pub async fn run_cli(args: DiskBenchArgs) -> anyhow::Result<()> {
    let report = run(&args).await?;
    print!("{}", render(&report, &args));
    anyhow::ensure!(report.lost_count == 0, "{} keys lost acknowledged writes", report.lost_count);
    Ok(())
}

/// Runs the benchmark.
pub async fn run(args: &DiskBenchArgs) -> anyhow::Result<DiskReport> {
    anyhow::ensure!(args.clients > 0 && args.keys >= args.clients, "--keys must be at least --clients (> 0)");
    anyhow::ensure!(args.sample_secs > 0 && args.secs >= 2 * args.sample_secs, "--secs must be at least two samples");
    let scratch = tempfile_dir()?;
    let durability = if args.relaxed { Durability::Relaxed } else { Durability::Fsync };
    let mut config = in_process_config(&scratch, durability)?;
    config.storage.log_retention_s = args.log_retention_s;
    // Cut the log a few times per retention, so what it keeps is the retention's worth.
    config.storage.log_truncation_interval_ms = (args.log_retention_s * 250).clamp(500, 10_000);
    config.storage.census_interval_ms = (args.sample_secs * 1000 / 2).max(200);
    config.limits.idempotency_ttl_s = args.idempotency_ttl_s;
    let running = meridian_server::serve::start(config).await?;
    let result = async {
        let client = Client::builder()
            .endpoint(running.client_addr.to_string())
            .ca_cert_file(&running.cert_path)
            .connect()
            .await
            .context("connecting the benchmark client")?;
        soak(&client, args).await
    }
    .await;
    running.shutdown().await;
    result
}

async fn soak(client: &Client, args: &DiskBenchArgs) -> anyhow::Result<DiskReport> {
    let ops = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop = Stop {
        deadline: started + Duration::from_secs(args.secs),
        payload: args.payload_mb.map_or(u64::MAX, |mb| mb.saturating_mul(1 << 20)),
    };
    // A writer's failure ends the run at once; dropping the set (any early return) aborts the rest.
    let mut writers = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let (client, ops, written, args) = (client.clone(), ops.clone(), written.clone(), args.clone());
        writers.spawn(async move { write_keys(&client, c, &args, stop, &ops, &written).await });
    }
    let mut samples = Vec::new();
    let mut expected = BTreeMap::new();
    let mut next = started;
    while !writers.is_empty() {
        next += Duration::from_secs(args.sample_secs);
        let tick = tokio::time::sleep_until(next.into());
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                Some(done) = writers.join_next() => {
                    expected.extend(done.context("a writer panicked")?.context("a writer")?);
                    if writers.is_empty() {
                        break;
                    }
                }
            }
        }
        samples.push(sample(client, started, &ops, &written).await?);
    }
    // The last sample waits for a census pass that began after the writes ended: the second pass to
    // end after them (passes run one after the other). The node runs in this process: its clock is
    // this one.
    let ended_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let census_deadline = Instant::now() + Duration::from_secs(args.sample_secs * 4 + 60);
    let mut first_after: Option<u64> = None;
    let last = loop {
        let last = sample(client, started, &ops, &written).await?;
        match (last.census_taken_ms, first_after) {
            (Some(taken), Some(first)) if taken > first => break last,
            (Some(taken), None) if taken > ended_ms => first_after = Some(taken),
            _ => {}
        }
        anyhow::ensure!(
            Instant::now() < census_deadline,
            "no data census pass began after the writes within {} s",
            args.sample_secs * 4 + 60
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (mut lost, mut lost_count) = (Vec::new(), 0);
    for (index, want) in &expected {
        let read =
            client.get(key_name(*index).as_str()).await.with_context(|| format!("reading {}", key_name(*index)))?;
        if !want.matches(&read) {
            lost_count += 1;
            if lost.len() < 20 {
                lost.push(format!("{}: expected {want:?}, read {read:?}", key_name(*index)));
            }
        }
    }
    Ok(DiskReport {
        samples,
        last,
        ops: ops.load(Ordering::Relaxed),
        written_bytes: written.load(Ordering::Relaxed),
        keys_checked: expected.len() as u64,
        lost,
        lost_count,
    })
}

/// When the writers stop: at the deadline, or once the payload written reaches `payload`.
#[derive(Clone, Copy)]
struct Stop {
    deadline: Instant,
    payload: u64,
}

impl Stop {
    fn reached(&self, written: &AtomicU64) -> bool {
        Instant::now() >= self.deadline || written.load(Ordering::Relaxed) >= self.payload
    }
}

async fn sample(client: &Client, started: Instant, ops: &AtomicU64, written: &AtomicU64) -> anyhow::Result<Sample> {
    let (ops, written_bytes) = (ops.load(Ordering::Relaxed), written.load(Ordering::Relaxed));
    let storage = client.storage().await.context("asking the node for its storage report")?;
    let census = client.data_census().await.context("asking the node for its data census")?;
    Ok(Sample {
        at: started.elapsed(),
        ops,
        written_bytes,
        dir_bytes: storage.dir_bytes,
        wal_bytes: storage.wal_bytes,
        sst_bytes: storage.spaces.iter().map(|space| (space.name.clone(), space.sst_bytes)).collect(),
        live_bytes: census.as_ref().map(|c| c.live_bytes),
        tombstones: census.as_ref().map(|c| (c.deleted_keys, c.deleted_bytes)),
        census_taken_ms: census.as_ref().map(|c| c.taken_ms),
    })
}

/// Client `c`'s writes until `stop`, on the keys whose index is `c` modulo the clients; returns
/// what each of its keys should hold.
async fn write_keys(
    client: &Client,
    c: u64,
    args: &DiskBenchArgs,
    stop: Stop,
    ops: &AtomicU64,
    written: &AtomicU64,
) -> anyhow::Result<BTreeMap<u64, Expected>> {
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(c));
    let mut expected: BTreeMap<u64, Expected> =
        (c..args.keys).step_by(args.clients as usize).map(|i| (i, Expected::empty(i))).collect();
    let owned: Vec<u64> = expected.keys().copied().collect();
    let value = |rng: &mut StdRng, max: usize| {
        let mut bytes = vec![0; rng.random_range((max / 10).max(1)..=max.max(1))];
        rng.fill_bytes(&mut bytes);
        bytes
    };
    while !stop.reached(written) {
        let index = owned[rng.random_range(0..owned.len())];
        let key = key_name(index);
        let roll = rng.random_range(0..100u32);
        let state = expected.get_mut(&index).expect("an owned key");
        let payload = match state {
            Expected::Register(held) if roll < 85 => {
                let bytes = value(&mut rng, args.value_bytes);
                client.register(key.as_str()).set(bytes.clone()).await.with_context(|| format!("set {key}"))?;
                let len = bytes.len();
                *held = Some(bytes);
                len
            }
            Expected::Set(held) if roll < 95 => {
                let picked = member(rng.random_range(0..MEMBERS));
                let set = client.set(key.as_str());
                if roll < 60 {
                    set.add([picked.clone()]).await.with_context(|| format!("sadd {key}"))?;
                    held.insert(picked.clone());
                } else {
                    set.remove([picked.clone()]).await.with_context(|| format!("srem {key}"))?;
                    held.remove(&picked);
                }
                picked.len()
            }
            Expected::Map(held) if roll < 95 => {
                let field = format!("field-{:02}", rng.random_range(0..FIELDS));
                let map = client.map(key.as_str());
                if roll < 60 {
                    let bytes = value(&mut rng, args.value_bytes / 4);
                    map.set_field(field.clone(), bytes.clone()).await.with_context(|| format!("map set {key}"))?;
                    let len = field.len() + bytes.len();
                    held.insert(field, bytes);
                    len
                } else {
                    map.remove(field.clone()).await.with_context(|| format!("map remove {key}"))?;
                    held.remove(&field);
                    field.len()
                }
            }
            _ => {
                client.delete(key.as_str()).await.with_context(|| format!("delete {key}"))?;
                *state = Expected::empty(index);
                0
            }
        };
        ops.fetch_add(1, Ordering::Relaxed);
        written.fetch_add(payload as u64, Ordering::Relaxed);
    }
    Ok(expected)
}

/// The report as text: one line per sample, then the figures.
pub fn render(report: &DiskReport, args: &DiskBenchArgs) -> String {
    const MB: f64 = 1_048_576.0;
    let mb = |bytes: u64| bytes as f64 / MB;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench-disk: {} s{}, {} clients, {} keys, values up to {} B, {}, log retention {} s, idempotency TTL {} s",
        args.secs,
        args.payload_mb.map_or(String::new(), |mb| format!(" or {mb} MB of payload")),
        args.clients,
        args.keys,
        args.value_bytes,
        if args.relaxed { "relaxed" } else { "fsync" },
        args.log_retention_s,
        args.idempotency_ttl_s
    );
    let names: Vec<&str> = report.last.sst_bytes.iter().map(|(name, _)| name.as_str()).collect();
    let _ = writeln!(
        out,
        "{:>7} {:>10} {:>10} {:>9} {:>8} {}  {:>8} {:>10}",
        "at s",
        "ops",
        "written MB",
        "disk MB",
        "wal MB",
        names.iter().map(|n| format!("{n:>11}")).collect::<String>(),
        "live MB",
        "tombstones"
    );
    for s in report.samples.iter().chain(std::iter::once(&report.last)) {
        let _ = writeln!(
            out,
            "{:>7.1} {:>10} {:>10.1} {:>9.1} {:>8.1} {}  {:>8} {:>10}",
            s.at.as_secs_f64(),
            s.ops,
            mb(s.written_bytes),
            mb(s.dir_bytes),
            mb(s.wal_bytes),
            s.sst_bytes.iter().map(|(_, b)| format!("{:>11.1}", mb(*b))).collect::<String>(),
            s.live_bytes.map_or("-".into(), |b| format!("{:.1}", mb(b))),
            s.tombstones.map_or("-".into(), |(keys, _)| keys.to_string()),
        );
    }
    let secs = report.samples.last().map_or(1.0, |s| s.at.as_secs_f64().max(1e-3));
    let _ = writeln!(
        out,
        "{} operations ({:.0}/s), {:.1} MB of payload written; growth (max disk in the 2nd half ÷ 1st half) {:.2}; \
         disk ÷ live after the run {}",
        report.ops,
        report.ops as f64 / secs,
        mb(report.written_bytes),
        report.growth(),
        report.disk_per_live().map_or("-".into(), |r| format!("{r:.2}")),
    );
    let _ = writeln!(
        out,
        "{} keys read back: {} differ from their acknowledged writes{}",
        report.keys_checked,
        report.lost_count,
        report.lost.iter().map(|l| format!("\n  {l}")).collect::<String>()
    );
    out
}
