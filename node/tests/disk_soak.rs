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
}
