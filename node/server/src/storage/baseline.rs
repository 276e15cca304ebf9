//! The raw RocksDB baseline of `meridian bench`: what the `rocksdb` crate achieves on this machine
//! with the same WAL settings, measured in the same run as Meridian's own write path, so the
//! benchmark can report Meridian's throughput as a ratio rather than an absolute number that
//! depends on the disk.

use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rocksdb::Options;

use super::rocks::{apply_write_path_options, rocks_err, write_options, Db, PIPELINED_WRITE};
use super::{Durability, StorageError};

/// The result of [`raw_rocksdb_put_loop`].
#[derive(Clone, Debug)]
pub struct RawPutReport {
    /// Number of concurrent writer threads.
    pub writers: usize,
    /// Total puts performed (`writers × ops_per_writer`).
    pub ops: u64,
    /// Wall-clock time from releasing the writers to the last one finishing.
    pub elapsed: Duration,
    /// `ops / elapsed`.
    pub ops_per_sec: f64,
    /// Latency of each put, in microseconds (1 µs … 60 s, 3 significant figures).
    pub hist: Histogram<u64>,
}

/// A raw `rocksdb` crate put loop: `writers` OS threads each putting `ops_per_writer` values of
/// `value_bytes` bytes with the given durability (sync = [`Durability::Fsync`]) into a fresh DB at
/// `dir` (default options + the same WAL/sync settings [`RocksEngine`](super::RocksEngine) uses, no
/// column families, no merge operator) — the baseline Meridian's write path is compared to in the
/// same run.
///
/// Keys are 12 bytes (writer index, sequence number; big-endian), so every put inserts a new key.
/// All writers start together behind a barrier. `dir` is created if missing and must not already
/// hold a database (RocksDB `error_if_exists`); the database is closed before returning, and the
/// caller removes `dir`.
pub fn raw_rocksdb_put_loop(
    dir: &Path,
    writers: usize,
    ops_per_writer: u64,
    value_bytes: usize,
    durability: Durability,
) -> Result<RawPutReport, StorageError> {
    raw_put_loop_with(dir, writers, ops_per_writer, value_bytes, durability, PIPELINED_WRITE)
}

/// [`raw_rocksdb_put_loop`] with an explicit pipelined-write setting (for the write-path benchmark).
pub(super) fn raw_put_loop_with(
    dir: &Path,
    writers: usize,
    ops_per_writer: u64,
    value_bytes: usize,
    durability: Durability,
    pipelined_write: bool,
) -> Result<RawPutReport, StorageError> {
    std::fs::create_dir_all(dir)?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_error_if_exists(true);
    apply_write_path_options(&mut opts, pipelined_write);
    let db = Db::open(&opts, dir).map_err(|e| rocks_err(e, format_args!("baseline: opening {}", dir.display())))?;
    let wo = write_options(durability);
    let mut hist = new_latency_histogram()?;

    // Everything fallible happens before the barrier, so no writer can fail to reach it.
    let writer_hists = (0..writers).map(|_| new_latency_histogram()).collect::<Result<Vec<_>, _>>()?;
    let barrier = Barrier::new(writers + 1);
    let (elapsed, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = writer_hists
            .into_iter()
            .enumerate()
            .map(|(writer, mut hist)| {
                let (db, wo, barrier) = (&db, &wo, &barrier);
                scope.spawn(move || -> Result<Histogram<u64>, StorageError> {
                    let value = vec![writer as u8; value_bytes];
                    let mut key = [0u8; 12];
                    key[..4].copy_from_slice(&(writer as u32).to_be_bytes());
                    barrier.wait();
                    for seq in 0..ops_per_writer {
                        key[4..].copy_from_slice(&seq.to_be_bytes());
                        let t0 = Instant::now();
                        db.put_opt(key, &value, wo).map_err(|e| rocks_err(e, format_args!("baseline: put")))?;
                        hist.saturating_record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
                    }
                    Ok(hist)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles.into_iter().map(std::thread::ScopedJoinHandle::join).collect();
        (start.elapsed(), results)
    });
    for result in results {
        let writer_hist =
            result.map_err(|_| StorageError::Internal("baseline: a writer thread panicked".to_owned()))??;
        hist.add(&writer_hist).map_err(|e| StorageError::Internal(format!("baseline: merging histograms: {e}")))?;
    }
    drop(db);

    let ops = writers as u64 * ops_per_writer;
    let secs = elapsed.as_secs_f64();
    Ok(RawPutReport { writers, ops, elapsed, ops_per_sec: if secs > 0.0 { ops as f64 / secs } else { 0.0 }, hist })
}

/// A latency histogram in µs, 1 µs … 60 s, 3 significant figures.
pub(super) fn new_latency_histogram() -> Result<Histogram<u64>, StorageError> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| StorageError::Internal(format!("creating a latency histogram: {e}")))
}
