//! A bounded soak: steady overwrites and deletes on one node (`meridian bench-disk`, short) must
//! leave every acknowledged write in place and a disk that stopped growing.
//!
//! The node is alone, so no peer reads its delta log: each truncation pass (every second) cuts it
//! to each origin's newest record (`store/stability.rs`). It keeps 4 s of idempotency records; the
//! RocksDB WAL cycles through its 64 MiB cap again and again. The disk use is then a saw (flushes
//! fill table files, compactions empty them), paced by the bytes written, so the run is sized in
//! payload (300 MB, `MERIDIAN_DISK_SOAK_MB` for more) and the growth compared (most disk used while
//! the second half of it was written ÷ the first half) is taken over halves that hold several teeth
//! however fast the machine writes.
//!
//! Negative control (run by hand, 2026-12-07): the same shape with the log kept forever
//! (`meridian bench-disk --secs 240 --payload-mb 300 --sample-secs 2 --keys 6000 --value-bytes 4000
//! --log-retention-s 0 --idempotency-ttl-s 4 --relaxed --seed 7`; a retention of 0 turns truncation
//! off) grew 2.82× (the log's table files at 356 MB), past the bound below. This test's own run grew
//! 1.21× with the log cut by age only, 1.11× (disk ÷ live 1.79) with the cut by stability.
//!
//! The idempotency records get their own check: a broken sweep would move the disk's growth too
//! little to fail the bound above (tens of MB on a saw of 50–190), so the records the last sweep
//! kept are compared with the write rate. Its negative control (run by hand, 2026-12-07): with the
//! sweep deleting nothing and `MERIDIAN_DISK_SOAK_MB=150`, the growth stayed within its bound but
//! 201,644 records were kept against a bound of 48,810, and the test failed.

use std::time::Duration;

use meridian_node::bench_disk::{render, run, DiskBenchArgs};

/// The most the second half's peak may exceed the first half's: RocksDB's flushes and
/// compactions make the disk use a saw, whose teeth differ by some megabytes from one to the next.
const MAX_GROWTH: f64 = 1.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_use_stops_growing_and_nothing_acknowledged_is_lost() {
    let payload_mb = match std::env::var("MERIDIAN_DISK_SOAK_MB") {
        Ok(text) => text.parse().expect("MERIDIAN_DISK_SOAK_MB is a number of megabytes"),
        Err(_) => 300,
    };
    let args = DiskBenchArgs {
        // At most; the run ends once `payload_mb` is written (about 70 s here).
        secs: 240.max(payload_mb),
        payload_mb: Some(payload_mb),
        sample_secs: 2,
        keys: 6_000,
        clients: 16,
        value_bytes: 4_000,
        log_retention_s: 4,
        idempotency_ttl_s: 4,
        relaxed: true,
        seed: 7,
    };
    let bound = Duration::from_secs(args.secs + 300);
    let report = tokio::time::timeout(bound, run(&args)).await.expect("the soak ends in time").expect("the soak runs");
    let text = render(&report, &args);
    println!("{text}");
    assert_eq!(report.lost_count, 0, "acknowledged writes were lost:\n{text}");
    assert!(report.keys_checked == args.keys, "every key was read back:\n{text}");
    assert!(report.last.live_bytes.is_some_and(|live| live > 0), "the census counted the live data:\n{text}");
    let growth = report.growth();
    assert!(growth <= MAX_GROWTH, "disk use kept growing ({growth:.2} > {MAX_GROWTH}):\n{text}");
    // Every write left an idempotency record; the sweep keeps only those younger than the TTL.
    // After the run (the read-back and a census pass, seconds without writes) the last full sweep
    // kept at most a few seconds' worth: the TTL, a sweep interval and some slack. A sweep that
    // deleted nothing would have kept every write's.
    let kept = gauge("meridian_idempotency_records");
    let secs = report.samples.last().map_or(1.0, |s| s.at.as_secs_f64()).max(1.0);
    let bound = report.ops as f64 / secs * (args.idempotency_ttl_s as f64 + 6.0);
    println!("{kept} idempotency records kept by the last sweep (at most {bound:.0})");
    assert!(
        kept <= bound,
        "{kept} idempotency records kept, more than {bound:.0} (a TTL's worth of writes and slack) of {}:\n{text}",
        report.ops
    );
}

/// A gauge of this process's metrics (the soak's node runs in-process).
fn gauge(name: &str) -> f64 {
    let text = meridian_server::metrics_export::prometheus().render();
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map(|value| value.trim().parse().expect("a gauge's value"))
        .unwrap_or_else(|| panic!("{name} was never published"))
}
