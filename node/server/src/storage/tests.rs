//! The storage test-suite. Every behavioural test is written once in [`suite`] against
//! `&dyn Engine` and instantiated for both engines by `engine_tests!` (modules `memory` and
//! `rocks`); `model` checks RocksEngine against MemoryEngine with random batches; `rocks_only`
//! covers persistence and the format marker; `bench_write_paths` (ignored) is the manual
//! write-path measurement.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::rocks::Db as RawDb;
use super::*;

fn open_memory() -> (MemoryEngine, Option<TempDir>) {
    (MemoryEngine::new(), None)
}

fn open_rocks() -> (RocksEngine, Option<TempDir>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = RocksEngine::open(dir.path(), RocksOptions::default()).expect("open rocks");
    (engine, Some(dir))
}

/// The spaces a batch may write directly: all but the partition index, which follows `Data`.
const WRITABLE: [Space; 6] = [Space::Data, Space::Log, Space::Meta, Space::Idempotency, Space::Hints, Space::Elements];

fn get(e: &dyn Engine, space: Space, key: &[u8]) -> Option<Vec<u8>> {
    e.get(space, key).expect("get")
}

fn put(e: &dyn Engine, space: Space, key: &[u8], value: &[u8]) {
    let mut b = Batch::new();
    b.put(space, key, value);
    e.write(b).expect("write");
}

fn max(e: &dyn Engine, space: Space, key: &[u8], value: u64) {
    let mut b = Batch::new();
    b.max_u64(space, key, value);
    e.write(b).expect("write");
}

fn get_u64(e: &dyn Engine, space: Space, key: &[u8]) -> Option<u64> {
    get(e, space, key).map(|v| decode_u64_be(&v).expect("8-byte value"))
}

fn kv(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

/// Behavioural tests, written once for any engine.
mod suite {
    use super::*;

    pub fn put_get_delete(e: &dyn Engine) {
        assert_eq!(get(e, Space::Data, b"k"), None);
        put(e, Space::Data, b"k", b"v1");
        assert_eq!(get(e, Space::Data, b"k"), Some(b"v1".to_vec()));
        put(e, Space::Data, b"k", b"v2");
        assert_eq!(get(e, Space::Data, b"k"), Some(b"v2".to_vec()), "overwrite");
        put(e, Space::Data, b"", b"");
        assert_eq!(get(e, Space::Data, b""), Some(Vec::new()), "empty key and empty value are values");
        let mut b = Batch::new();
        b.delete(Space::Data, b"k");
        b.delete(Space::Data, b"never-written");
        e.write(b).unwrap();
        assert_eq!(get(e, Space::Data, b"k"), None);
        assert_eq!(get(e, Space::Data, b""), Some(Vec::new()));
    }

    pub fn batch_ops_apply_in_order(e: &dyn Engine) {
        let mut b = Batch::new();
        b.put(Space::Data, b"a", b"1");
        b.delete(Space::Data, b"a");
        b.delete(Space::Data, b"b");
        b.put(Space::Data, b"b", b"2");
        b.put(Space::Data, b"c", b"x");
        b.put(Space::Data, b"c", b"y");
        b.put(Space::Meta, b"n", 5u64.to_be_bytes());
        b.max_u64(Space::Meta, b"n", 3);
        // Each of the six `Data` operations brings its partition index entry along.
        assert_eq!(b.len(), 8 + 6);
        e.write(b).unwrap();
        assert_eq!(get(e, Space::Data, b"a"), None);
        assert_eq!(get(e, Space::Data, b"b"), Some(b"2".to_vec()));
        assert_eq!(get(e, Space::Data, b"c"), Some(b"y".to_vec()));
        assert_eq!(get_u64(e, Space::Meta, b"n"), Some(5));
        let mut indexed: Vec<Vec<u8>> = [b"b", b"c"].map(|k| super::super::partition_index::entry_key(k)).to_vec();
        indexed.sort();
        let index: Vec<Vec<u8>> =
            e.scan(Space::PartitionIndex, b"", None, 10).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(index, indexed, "the index holds the keys left in data, and only those");
    }

    pub fn partition_index_is_written_only_through_data(e: &dyn Engine) {
        for op in [BatchOp::Put(Vec::new()), BatchOp::Delete, BatchOp::MaxU64(1)] {
            let mut b = Batch::new();
            b.put(Space::Data, b"k", b"v");
            b.push(Space::PartitionIndex, b"anything", op);
            let err = e.write(b).unwrap_err();
            assert!(matches!(&err, StorageError::Reserved(m) if m.contains("partition_index")), "{err}");
        }
        // The refused batch wrote nothing, its `Data` put included.
        assert_eq!(get(e, Space::Data, b"k"), None);
        assert!(e.scan(Space::PartitionIndex, b"", None, 10).unwrap().is_empty());
        // A batch joined from one that writes the index directly is refused too.
        let mut bad = Batch::new();
        bad.delete(Space::PartitionIndex, b"x");
        let mut joined = Batch::new();
        joined.append(bad);
        assert!(e.write(joined).is_err());
    }

    pub fn batch_is_atomic_across_spaces(e: &dyn Engine) {
        let mut b = Batch::new();
        for space in WRITABLE {
            b.put(space, b"atomic", space.name());
        }
        e.write(b).unwrap();
        for space in WRITABLE {
            assert_eq!(get(e, space, b"atomic"), Some(space.name().as_bytes().to_vec()));
        }

        // Concurrently: a writer sets the same counter in all spaces with one batch per round; a
        // reader reads the spaces in the batch's order. Once it has seen round n in one space, the
        // whole batch is applied, so every later read (in any space) must show >= n.
        const ROUNDS: u64 = 200;
        let key = b"round";
        let round_of = |space: Space| get(e, space, key).map_or(0, |v| decode_u64_be(&v).unwrap());
        std::thread::scope(|s| {
            s.spawn(|| {
                for round in 1..=ROUNDS {
                    let mut b = Batch::new();
                    for space in WRITABLE {
                        b.put(space, key, round.to_be_bytes());
                    }
                    e.write(b).unwrap();
                }
            });
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let seen: Vec<u64> = WRITABLE.iter().map(|&space| round_of(space)).collect();
                    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "torn batch observed: {seen:?}");
                    if seen[0] == ROUNDS {
                        break;
                    }
                    assert!(Instant::now() < deadline, "writer did not finish");
                }
            });
        });
    }

    pub fn empty_batch_ok(e: &dyn Engine) {
        let b = Batch::new();
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
        e.write(b).unwrap();
        e.write(Batch::default()).unwrap();
    }

    pub fn spaces_isolated(e: &dyn Engine) {
        for (i, space) in WRITABLE.into_iter().enumerate() {
            put(e, space, b"shared", &[i as u8]);
        }
        for (i, space) in WRITABLE.into_iter().enumerate() {
            assert_eq!(get(e, space, b"shared"), Some(vec![i as u8]));
        }
        let mut b = Batch::new();
        b.delete(Space::Log, b"shared");
        e.write(b).unwrap();
        assert_eq!(get(e, Space::Log, b"shared"), None);
        assert_eq!(get(e, Space::Data, b"shared"), Some(vec![0]));
        put(e, Space::Idempotency, b"only-here", b"x");
        assert_eq!(e.scan(Space::Data, b"", None, usize::MAX).unwrap(), vec![kv(b"shared", &[0])]);
        assert!(e.scan(Space::Log, b"", None, usize::MAX).unwrap().is_empty());
        assert_eq!(e.last_in_range(Space::Data, b"", b"\xff").unwrap(), Some(kv(b"shared", &[0])));
        assert_eq!(get(e, Space::Data, b"only-here"), None);
    }

    pub fn scan_order_bounds_limit(e: &dyn Engine) {
        let mut b = Batch::new();
        // Inserted out of order; includes keys that sort by bytes, not by length or as strings.
        for key in [&b"b"[..], b"a", b"ab", b"\xff", b"a\x00", b"c", b"", b"bb"] {
            b.put(Space::Log, key, [key, b"!"].concat());
        }
        put(e, Space::Data, b"b2", b"other space");
        e.write(b).unwrap();
        let keys = |rows: Vec<(Vec<u8>, Vec<u8>)>| {
            for (k, v) in &rows {
                assert_eq!(v, &[k.as_slice(), b"!"].concat(), "value belongs to its key");
            }
            rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
        };
        let all: Vec<Vec<u8>> =
            [&b""[..], b"a", b"a\x00", b"ab", b"b", b"bb", b"c", b"\xff"].iter().map(|k| k.to_vec()).collect();
        assert_eq!(keys(e.scan(Space::Log, b"", None, usize::MAX).unwrap()), all, "full scan in byte order");
        assert_eq!(keys(e.scan(Space::Log, b"a", Some(b"b"), 100).unwrap()), all[1..4], "start incl., end excl.");
        assert_eq!(keys(e.scan(Space::Log, b"aa", Some(b"bb"), 100).unwrap()), all[3..5], "bounds need not exist");
        assert_eq!(keys(e.scan(Space::Log, b"b", None, 100).unwrap()), all[4..], "unbounded end");
        assert_eq!(keys(e.scan(Space::Log, b"", None, 3).unwrap()), all[..3], "limit");
        assert_eq!(keys(e.scan(Space::Log, b"ab", Some(b"c"), 2).unwrap()), all[3..5], "limit within bounds");
        assert!(e.scan(Space::Log, b"", None, 0).unwrap().is_empty(), "limit 0");
        assert!(e.scan(Space::Log, b"b", Some(b"b"), 10).unwrap().is_empty(), "empty range");
        assert!(e.scan(Space::Log, b"c", Some(b"a"), 10).unwrap().is_empty(), "inverted range");
        assert!(e.scan(Space::Log, b"\xff\x00", None, 10).unwrap().is_empty(), "past the end");
        // The background walk's scan reads what the cached one does.
        for (start, limit) in [(&b""[..], usize::MAX), (b"ab", 3), (b"\xff", 10), (b"c", 0)] {
            let cached = e.scan(Space::Log, start, None, limit).unwrap();
            assert_eq!(e.scan_uncached(Space::Log, start, limit).unwrap(), cached, "from {start:?}, {limit}");
        }
        // Deleted keys disappear from scans.
        let mut d = Batch::new();
        d.delete(Space::Log, b"ab");
        e.write(d).unwrap();
        assert_eq!(keys(e.scan(Space::Log, b"a", Some(b"b"), 100).unwrap()), all[1..3]);
    }

    pub fn last_in_range(e: &dyn Engine) {
        let log_key = |origin: u64, seq: u64| [origin.to_be_bytes(), seq.to_be_bytes()].concat();
        assert_eq!(e.last_in_range(Space::Log, &log_key(1, 0), &log_key(1, u64::MAX)).unwrap(), None, "empty");
        let mut b = Batch::new();
        for (origin, seq) in [(1, 1), (1, 2), (1, 10), (2, 1), (2, 7), (3, 5)] {
            b.put(Space::Log, log_key(origin, seq), seq.to_be_bytes());
        }
        e.write(b).unwrap();
        let last = |origin: u64| {
            e.last_in_range(Space::Log, &log_key(origin, 0), &log_key(origin, u64::MAX))
                .unwrap()
                .map(|(k, v)| (k, decode_u64_be(&v).unwrap()))
        };
        assert_eq!(last(1), Some((log_key(1, 10), 10)));
        assert_eq!(last(2), Some((log_key(2, 7), 7)));
        assert_eq!(last(3), Some((log_key(3, 5), 5)));
        assert_eq!(last(4), None, "nothing for this origin, even with keys before the range");
        assert_eq!(last(0), None, "nothing for this origin, even with keys after the range");
        // End is exclusive, start inclusive.
        assert_eq!(
            e.last_in_range(Space::Log, &log_key(1, 2), &log_key(1, 10)).unwrap().map(|(k, _)| k),
            Some(log_key(1, 2))
        );
        assert_eq!(
            e.last_in_range(Space::Log, &log_key(1, 10), &log_key(1, 11)).unwrap().map(|(k, _)| k),
            Some(log_key(1, 10))
        );
        assert_eq!(e.last_in_range(Space::Log, &log_key(1, 3), &log_key(1, 10)).unwrap(), None);
        assert_eq!(e.last_in_range(Space::Log, &log_key(1, 5), &log_key(1, 5)).unwrap(), None, "empty range");
        assert_eq!(e.last_in_range(Space::Log, &log_key(2, 0), &log_key(1, 0)).unwrap(), None, "inverted range");
        assert_eq!(e.last_in_range(Space::Data, b"", b"\xff\xff").unwrap(), None, "other spaces untouched");
    }

    pub fn max_u64_semantics(e: &dyn Engine) {
        max(e, Space::Meta, b"c", 10);
        assert_eq!(get(e, Space::Meta, b"c"), Some(10u64.to_be_bytes().to_vec()), "absent key: stored as 8 bytes BE");
        max(e, Space::Meta, b"c", 3);
        assert_eq!(get_u64(e, Space::Meta, b"c"), Some(10), "a lower value does not lower it");
        max(e, Space::Meta, b"c", 10);
        assert_eq!(get_u64(e, Space::Meta, b"c"), Some(10));
        max(e, Space::Meta, b"c", 11);
        assert_eq!(get_u64(e, Space::Meta, b"c"), Some(11));
        max(e, Space::Meta, b"c", u64::MAX);
        assert_eq!(get_u64(e, Space::Meta, b"c"), Some(u64::MAX));
        max(e, Space::Meta, b"zero", 0);
        assert_eq!(get_u64(e, Space::Meta, b"zero"), Some(0), "max with nothing creates the key");

        // Several operands on one key in one batch.
        let mut b = Batch::new();
        for v in [4, 9, 2] {
            b.max_u64(Space::Meta, b"d", v);
        }
        e.write(b).unwrap();
        assert_eq!(get_u64(e, Space::Meta, b"d"), Some(9));

        // Interplay with put and delete: a put replaces, a delete resets.
        put(e, Space::Meta, b"d", &3u64.to_be_bytes());
        max(e, Space::Meta, b"d", 5);
        assert_eq!(get_u64(e, Space::Meta, b"d"), Some(5));
        put(e, Space::Meta, b"d", &50u64.to_be_bytes());
        max(e, Space::Meta, b"d", 5);
        assert_eq!(get_u64(e, Space::Meta, b"d"), Some(50));
        let mut b = Batch::new();
        b.delete(Space::Meta, b"d");
        b.max_u64(Space::Meta, b"d", 1);
        e.write(b).unwrap();
        assert_eq!(get_u64(e, Space::Meta, b"d"), Some(1));

        // A malformed existing value (not 8 bytes) counts as 0.
        put(e, Space::Meta, b"bad", b"not-a-u64");
        max(e, Space::Meta, b"bad", 7);
        assert_eq!(get_u64(e, Space::Meta, b"bad"), Some(7));

        // Merged values are visible to scans too, in every space.
        max(e, Space::Data, b"c", 1);
        assert_eq!(e.scan(Space::Data, b"c", Some(b"d"), 10).unwrap(), vec![kv(b"c", &1u64.to_be_bytes())]);
        assert_eq!(get_u64(e, Space::Meta, b"c"), Some(u64::MAX));
    }

    pub fn max_u64_concurrent_writers(e: &dyn Engine) {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 40;
        std::thread::scope(|s| {
            for t in 0..THREADS {
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        // Interleaved, non-monotonic per thread: thread t writes t, t+8, … shuffled.
                        let v = ((i * 17) % PER_THREAD) * THREADS + t;
                        let mut b = Batch::new();
                        b.max_u64(Space::Meta, b"counter", v);
                        b.put(Space::Data, format!("t{t}/{i}"), b"x");
                        e.write(b).unwrap();
                    }
                });
            }
        });
        assert_eq!(get_u64(e, Space::Meta, b"counter"), Some(THREADS * PER_THREAD - 1));
        assert_eq!(e.scan(Space::Data, b"t", Some(b"u"), usize::MAX).unwrap().len() as u64, THREADS * PER_THREAD);
    }

    /// One get and one scan, as of one moment: here their plain results (that no batch lands
    /// between them is what the snapshot or the held read locks give).
    pub fn get_and_scan_reads_both(e: &dyn Engine) {
        let mut b = Batch::new();
        b.put(Space::Data, b"head", b"h1");
        for k in [b"e1", b"e2", b"e3"] {
            b.put(Space::Elements, k.as_slice(), b"x");
        }
        e.write(b).unwrap();
        let (got, scanned) = e.get_and_scan((Space::Data, b"head"), (Space::Elements, b"e", Some(b"e3"), 10)).unwrap();
        assert_eq!(got, Some(b"h1".to_vec()));
        assert_eq!(scanned, vec![kv(b"e1", b"x"), kv(b"e2", b"x")]);
        let (got, scanned) = e.get_and_scan((Space::Data, b"none"), (Space::Elements, b"e", None, 1)).unwrap();
        assert_eq!((got, scanned), (None, vec![kv(b"e1", b"x")]));
        // The same space for both, an empty range.
        let (got, scanned) = e.get_and_scan((Space::Elements, b"e2"), (Space::Elements, b"f", Some(b"e"), 10)).unwrap();
        assert_eq!((got, scanned), (Some(b"x".to_vec()), vec![]));
    }

    pub fn reserved_format_key(e: &dyn Engine) {
        assert_eq!(get(e, Space::Meta, FORMAT_KEY), Some(vec![FORMAT_VERSION]), "marker present");
        let mut b = Batch::new();
        b.put(Space::Data, b"innocent", b"x");
        b.put(Space::Meta, FORMAT_KEY, [9]);
        assert!(matches!(e.write(b), Err(StorageError::Reserved(_))));
        assert_eq!(get(e, Space::Data, b"innocent"), None, "rejected batch applied nothing");
        let mut b = Batch::new();
        b.delete(Space::Meta, FORMAT_KEY);
        assert!(matches!(e.write(b), Err(StorageError::Reserved(_))));
        // The same key in another space is an ordinary key.
        put(e, Space::Data, FORMAT_KEY, b"fine");
        assert_eq!(get(e, Space::Meta, FORMAT_KEY), Some(vec![FORMAT_VERSION]));
    }

    pub fn estimate_keys(e: &dyn Engine) {
        assert_eq!(e.estimate_keys(Space::Data).unwrap(), 0);
        let mut b = Batch::new();
        for i in 0..100u32 {
            b.put(Space::Data, i.to_be_bytes(), b"v");
        }
        e.write(b).unwrap();
        let n = e.estimate_keys(Space::Data).unwrap();
        assert!((50..=200).contains(&n), "estimate {n} for 100 keys");
        assert_eq!(e.estimate_keys(Space::Log).unwrap(), 0);
    }

    pub fn sync_wal_and_durability(e: &dyn Engine) {
        assert_eq!(e.durability(), Durability::Fsync);
        put(e, Space::Data, b"k", b"v");
        e.sync_wal().unwrap();
        assert_eq!(get(e, Space::Data, b"k"), Some(b"v".to_vec()));
    }

    pub fn usable_as_shared_dyn_engine(e: &dyn Engine) {
        // The node shares one engine between many threads; writes from all of them are visible.
        std::thread::scope(|s| {
            for t in 0..4u8 {
                s.spawn(move || put(e, Space::Idempotency, &[t], &[t]));
            }
        });
        assert_eq!(e.scan(Space::Idempotency, b"", None, usize::MAX).unwrap().len(), 4);
    }
}

/// Instantiates every test of [`suite`] for one engine.
macro_rules! engine_tests {
    ($module:ident, $open:ident, [$($test:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    let (engine, _dir) = super::$open();
                    super::suite::$test(&engine);
                }
            )*
        }
    };
}

macro_rules! all_engine_tests {
    ($($module:ident => $open:ident),* $(,)?) => {
        $(
            engine_tests!($module, $open, [
                put_get_delete,
                batch_ops_apply_in_order,
                partition_index_is_written_only_through_data,
                batch_is_atomic_across_spaces,
                empty_batch_ok,
                spaces_isolated,
                scan_order_bounds_limit,
                last_in_range,
                max_u64_semantics,
                max_u64_concurrent_writers,
                reserved_format_key,
                get_and_scan_reads_both,
                estimate_keys,
                sync_wal_and_durability,
                usable_as_shared_dyn_engine,
            ]);
        )*
    };
}

all_engine_tests!(memory => open_memory, rocks => open_rocks);

#[test]
fn decode_u64_be_checks_length() {
    assert_eq!(decode_u64_be(&42u64.to_be_bytes()).unwrap(), 42);
    assert_eq!(decode_u64_be(&u64::MAX.to_be_bytes()).unwrap(), u64::MAX);
    for bad in [&b""[..], b"1234567", b"123456789"] {
        assert!(matches!(decode_u64_be(bad), Err(StorageError::Corrupt(_))));
    }
}

#[test]
fn space_names_and_order() {
    assert_eq!(
        Space::ALL.map(Space::name),
        ["data", "log", "meta", "idempotency", "hints", "elements", "partition_index"]
    );
    for (i, space) in Space::ALL.into_iter().enumerate() {
        assert_eq!(space.index(), i);
    }
    assert_eq!(Durability::default(), Durability::Fsync);
    let o = RocksOptions::default();
    assert_eq!((o.durability, o.cache_bytes, o.max_background_jobs), (Durability::Fsync, 64 << 20, 2));
}

#[test]
fn engines_are_object_safe_and_shareable() {
    let dir = tempfile::tempdir().unwrap();
    let engines: Vec<Arc<dyn Engine>> = vec![Arc::new(MemoryEngine::new()), Arc::new(open_rocks_relaxed(&dir))];
    for e in engines {
        let e2 = Arc::clone(&e);
        std::thread::spawn(move || put(&*e2, Space::Data, b"k", b"v")).join().unwrap();
        assert_eq!(get(&*e, Space::Data, b"k"), Some(b"v".to_vec()));
    }
}

fn open_rocks_relaxed(dir: &TempDir) -> RocksEngine {
    RocksEngine::open(dir.path(), RocksOptions { durability: Durability::Relaxed, ..RocksOptions::default() }).unwrap()
}

/// Tests that only make sense for the persistent engine.
mod rocks_only {
    use super::*;

    /// Bytes of write-ahead log files in `dir`.
    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    /// Writes 48 MiB to `Data` after one small write to `Meta` (a column family written rarely,
    /// which pins the WAL file it went to); returns the WAL's size afterwards, waiting up to
    /// `settle` for it to fall below `target`. RocksDB checks the cap on the write path and
    /// flushes in the background, so on a busy machine a burst can end with several WAL files
    /// still waiting; a node keeps writing, so the wait goes on with one small write every
    /// 50 ms, as a live node would.
    fn wal_after_bulk_writes(max_wal_bytes: u64, target: u64, settle: Duration) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksOptions { durability: Durability::Relaxed, max_wal_bytes, ..RocksOptions::default() };
        let e = RocksEngine::open(dir.path(), options).unwrap();
        put(&e, Space::Meta, b"rare", b"pin");
        let value = vec![7u8; 64 << 10];
        for i in 0u32..768 {
            put(&e, Space::Data, &i.to_be_bytes(), &value);
        }
        let deadline = Instant::now() + settle;
        loop {
            let bytes = wal_bytes(dir.path());
            if bytes < target || Instant::now() >= deadline {
                return bytes;
            }
            std::thread::sleep(Duration::from_millis(50));
            put(&e, Space::Data, b"trickle", b"t");
        }
    }

    #[test]
    fn the_wal_stays_near_its_cap_while_a_column_family_is_written_rarely() {
        let capped = wal_after_bulk_writes(4 << 20, 12 << 20, Duration::from_secs(30));
        assert!(capped < 12 << 20, "WAL of {capped} bytes with a 4 MiB cap, 30 s after the last write");
        // Negative control: without the cap (RocksDB's default, 0: four times the memtables), the
        // same writes leave every byte of them in the WAL.
        // Nothing would shrink it, so it is measured at once.
        let uncapped = wal_after_bulk_writes(0, 0, Duration::ZERO);
        assert!(uncapped > 40 << 20, "WAL of {uncapped} bytes without a cap");
    }

    #[test]
    fn usage_reports_table_memtable_and_wal_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(dir.path(), RocksOptions::default()).unwrap();
        let value = vec![3u8; 1024];
        for i in 0u32..200 {
            put(&e, Space::Data, &i.to_be_bytes(), &value);
        }
        let before = e.space_usage(Space::Data).unwrap();
        assert!(before.memtable_bytes >= 200 * 1024, "{before:?}");
        assert!(e.wal_bytes().unwrap() >= 200 * 1024);
        e.compact_all().unwrap();
        let after = e.space_usage(Space::Data).unwrap();
        assert!(after.sst_bytes > 0 && after.live_bytes_estimate > 0, "{after:?}");
        assert_eq!(after.keys_estimate, 200);
        assert_eq!(e.space_usage(Space::Hints).unwrap().sst_bytes, 0, "spaces are counted apart");
    }

    #[test]
    fn data_survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = RocksEngine::open(dir.path(), RocksOptions::default()).unwrap();
            assert_eq!(e.path(), dir.path());
            let mut b = Batch::new();
            b.put(Space::Data, b"k", b"v");
            b.put(Space::Log, b"l", b"w");
            b.max_u64(Space::Meta, b"seq", 7);
            e.write(b).unwrap();
            max(&e, Space::Meta, b"seq", 3);
            let clone = e.clone();
            drop(e);
            // The clone keeps the database open.
            max(&clone, Space::Meta, b"seq", 9);
        }
        let e = RocksEngine::open(dir.path(), RocksOptions::default()).unwrap();
        assert_eq!(get(&e, Space::Data, b"k"), Some(b"v".to_vec()));
        assert_eq!(get(&e, Space::Log, b"l"), Some(b"w".to_vec()));
        assert_eq!(get_u64(&e, Space::Meta, b"seq"), Some(9));
        // Merge operands survive flush + compaction and keep merging afterwards.
        e.flush_and_compact().unwrap();
        max(&e, Space::Meta, b"seq", 8);
        assert_eq!(get_u64(&e, Space::Meta, b"seq"), Some(9));
        max(&e, Space::Meta, b"seq", 12);
        drop(e);
        let e = RocksEngine::open(dir.path(), RocksOptions::default()).unwrap();
        assert_eq!(get_u64(&e, Space::Meta, b"seq"), Some(12));
    }

    #[test]
    fn relaxed_writes_survive_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = open_rocks_relaxed(&dir);
            assert_eq!(e.durability(), Durability::Relaxed);
            for i in 0..50u32 {
                put(&e, Space::Data, &i.to_be_bytes(), b"v");
            }
            e.sync_wal().unwrap();
            put(&e, Space::Data, b"after-sync", b"v");
        }
        let e = open_rocks_relaxed(&dir);
        assert_eq!(e.scan(Space::Data, b"", None, usize::MAX).unwrap().len(), 51);
    }

    /// Writes a format marker behind the engine's back (the engine refuses to).
    fn overwrite_marker(path: &Path, marker: &[u8]) {
        let db = RawDb::open_cf(&rocksdb::Options::default(), path, Space::ALL.map(Space::name)).unwrap();
        db.put_cf(db.cf_handle(Space::Meta.name()).unwrap(), FORMAT_KEY, marker).unwrap();
    }

    #[test]
    fn format_marker_written_and_mismatch_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(RocksEngine::open(dir.path(), RocksOptions::default()).unwrap());
        let db =
            RawDb::open_cf_for_read_only(&rocksdb::Options::default(), dir.path(), Space::ALL.map(Space::name), false)
                .unwrap();
        assert_eq!(db.get_cf(db.cf_handle("meta").unwrap(), b"storage_format").unwrap(), Some(vec![FORMAT_VERSION]));
        drop(db);

        overwrite_marker(dir.path(), &[FORMAT_VERSION + 1]);
        let err = RocksEngine::open(dir.path(), RocksOptions::default()).unwrap_err();
        let newer = format!("version {}", FORMAT_VERSION + 1);
        assert!(matches!(&err, StorageError::Corrupt(msg) if msg.contains(&newer)), "{err}");

        overwrite_marker(dir.path(), b"xyz");
        let err = RocksEngine::open(dir.path(), RocksOptions::default()).unwrap_err();
        assert!(matches!(&err, StorageError::Corrupt(msg) if msg.contains("malformed")), "{err}");

        overwrite_marker(dir.path(), &[FORMAT_VERSION]);
        RocksEngine::open(dir.path(), RocksOptions::default()).expect("this version opens again");
    }

    /// A directory of format 1, as the release before decomposed sets left it: five column
    /// families, marker 1, a key. It opens, gains the elements and partition index column
    /// families, keeps its data (indexed), and says the current format from then on.
    #[test]
    fn a_format_1_directory_migrates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let v1_spaces = ["data", "log", "meta", "idempotency", "hints"];
            let db = RawDb::open_cf(&opts, dir.path(), v1_spaces).unwrap();
            db.put_cf(db.cf_handle("meta").unwrap(), FORMAT_KEY, [1]).unwrap();
            db.put_cf(db.cf_handle("data").unwrap(), b"k", b"v").unwrap();
        }
        let engine = RocksEngine::open(dir.path(), RocksOptions::default()).expect("format 1 migrates");
        assert_eq!(get(&engine, Space::Meta, FORMAT_KEY), Some(vec![FORMAT_VERSION]));
        assert_eq!(get(&engine, Space::Data, b"k"), Some(b"v".to_vec()));
        let index = engine.scan(Space::PartitionIndex, b"", None, 10).unwrap();
        assert_eq!(index, vec![(super::super::partition_index::entry_key(b"k"), Vec::new())]);
        put(&engine, Space::Elements, b"e", b"x");
        drop(engine);
        let engine = RocksEngine::open(dir.path(), RocksOptions::default()).expect("reopens at the current format");
        assert_eq!(get(&engine, Space::Elements, b"e"), Some(b"x".to_vec()));
    }

    /// A directory of format 2, as the release before the partition index left it: six column
    /// families, marker 2, keys in several partitions. It opens, gains the partition index of
    /// every key (more than one page of the build), and says format 3 from then on.
    #[test]
    fn a_format_2_directory_gains_its_partition_index() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Vec<u8>> = (0..5000u32).map(|i| format!("\x01n/key-{i}").into_bytes()).collect();
        {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let v2_spaces = ["data", "log", "meta", "idempotency", "hints", "elements"];
            let db = RawDb::open_cf(&opts, dir.path(), v2_spaces).unwrap();
            db.put_cf(db.cf_handle("meta").unwrap(), FORMAT_KEY, [2]).unwrap();
            for key in &keys {
                db.put_cf(db.cf_handle("data").unwrap(), key, b"v").unwrap();
            }
        }
        let engine = RocksEngine::open(dir.path(), RocksOptions::default()).expect("format 2 migrates");
        assert_eq!(get(&engine, Space::Meta, FORMAT_KEY), Some(vec![FORMAT_VERSION]));
        let mut expected: Vec<Vec<u8>> = keys.iter().map(|k| super::super::partition_index::entry_key(k)).collect();
        expected.sort();
        let index: Vec<Vec<u8>> =
            engine.scan(Space::PartitionIndex, b"", None, usize::MAX).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(index.len(), keys.len());
        assert!(index == expected, "every key of data is indexed, nothing else");
        drop(engine);
        RocksEngine::open(dir.path(), RocksOptions::default()).expect("reopens at format 3");
    }

    #[test]
    fn data_without_marker_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = RawDb::open_cf(&opts, dir.path(), Space::ALL.map(Space::name)).unwrap();
            db.put_cf(db.cf_handle("log").unwrap(), b"k", b"v").unwrap();
        }
        let err = RocksEngine::open(dir.path(), RocksOptions::default()).unwrap_err();
        assert!(matches!(&err, StorageError::Corrupt(msg) if msg.contains("log")), "{err}");
    }

    #[test]
    fn second_open_of_same_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RocksEngine::open(dir.path(), RocksOptions::default()).unwrap();
        let err = RocksEngine::open(dir.path(), RocksOptions::default()).unwrap_err();
        assert!(matches!(err, StorageError::Rocks(_)), "{err}");
    }

    #[test]
    fn raw_put_loop_smoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw");
        let report = raw_rocksdb_put_loop(&path, 2, 50, 100, Durability::Relaxed).unwrap();
        assert_eq!((report.writers, report.ops, report.hist.len()), (2, 100, 100));
        assert!(report.ops_per_sec > 0.0);
        let db = RawDb::open_default(&path).unwrap();
        assert_eq!(db.iterator(rocksdb::IteratorMode::Start).count(), 100);
        drop(db);
        assert!(raw_rocksdb_put_loop(&path, 1, 1, 1, Durability::Relaxed).is_err(), "refuses an existing DB");
    }
}

/// Model check: random batches (and flushes, reopens) applied to RocksEngine and MemoryEngine must
/// leave them with identical contents and identical answers to random queries.
mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Write(Vec<(Space, Vec<u8>, BatchOp)>),
        /// Flush memtables and compact (RocksDB only), so merges meet SST files.
        FlushCompact,
        /// Close and reopen the RocksDB engine.
        Reopen,
    }

    /// A query asked of both engines after every step.
    #[derive(Clone, Debug)]
    struct Query {
        space: Space,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    }

    fn space() -> impl Strategy<Value = Space> {
        proptest::sample::select(Space::ALL.to_vec())
    }

    /// Short keys over a tiny alphabet, so operations collide often.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 2, 0xff]), 0..3)
    }

    fn op() -> impl Strategy<Value = BatchOp> {
        prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..10).prop_map(BatchOp::Put),
            // 8-byte puts, so that MaxU64 meets well-formed put values too.
            1 => (0u64..100).prop_map(|v| BatchOp::Put(v.to_be_bytes().to_vec())),
            2 => Just(BatchOp::Delete),
            3 => prop_oneof![0u64..100, any::<u64>()].prop_map(BatchOp::MaxU64),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            // Not into the partition index: batches refuse that (it follows `Data`).
            8 => proptest::collection::vec((space().prop_filter("derived", |s| *s != Space::PartitionIndex), key(), op()), 0..8)
                .prop_map(Step::Write),
            1 => Just(Step::FlushCompact),
            1 => Just(Step::Reopen),
        ]
    }

    fn query() -> impl Strategy<Value = Query> {
        (space(), key(), proptest::option::of(key()), 0usize..6).prop_map(|(space, start, end, limit)| Query {
            space,
            start,
            end,
            limit,
        })
    }

    fn assert_agree(rocks: &RocksEngine, memory: &MemoryEngine, queries: &[Query]) -> Result<(), TestCaseError> {
        let mut indexed: Vec<Vec<u8>> = memory
            .scan(Space::Data, b"", None, usize::MAX)
            .unwrap()
            .iter()
            .map(|(k, _)| super::super::partition_index::entry_key(k))
            .collect();
        indexed.sort();
        let index: Vec<Vec<u8>> =
            memory.scan(Space::PartitionIndex, b"", None, usize::MAX).unwrap().into_iter().map(|(k, _)| k).collect();
        prop_assert_eq!(index, indexed, "the partition index holds exactly the keys of data");
        for space in Space::ALL {
            let all = memory.scan(space, b"", None, usize::MAX).unwrap();
            prop_assert_eq!(&rocks.scan(space, b"", None, usize::MAX).unwrap(), &all, "contents of {}", space);
            for (k, v) in &all {
                let got = rocks.get(space, k).unwrap();
                prop_assert_eq!(got.as_ref(), Some(v));
            }
        }
        for q in queries {
            let end = q.end.as_deref();
            prop_assert_eq!(
                rocks.scan(q.space, &q.start, end, q.limit).unwrap(),
                memory.scan(q.space, &q.start, end, q.limit).unwrap(),
                "{:?}",
                q
            );
            prop_assert_eq!(rocks.get(q.space, &q.start).unwrap(), memory.get(q.space, &q.start).unwrap());
            if let Some(end) = end {
                prop_assert_eq!(
                    rocks.last_in_range(q.space, &q.start, end).unwrap(),
                    memory.last_in_range(q.space, &q.start, end).unwrap(),
                    "last_in_range {:?}",
                    q
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn rocks_matches_memory(
            steps in proptest::collection::vec(step(), 1..16),
            queries in proptest::collection::vec(query(), 0..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut rocks = Some(open_rocks_relaxed(&dir));
            let memory = MemoryEngine::new();
            for step in steps {
                match step {
                    Step::Write(ops) => {
                        let mut batch = Batch::new();
                        for (space, key, op) in ops {
                            batch.push(space, key, op);
                        }
                        let r = rocks.as_ref().unwrap().write(batch.clone());
                        let m = memory.write(batch);
                        prop_assert!(r.is_ok() && m.is_ok(), "{:?} / {:?}", r, m);
                    }
                    Step::FlushCompact => rocks.as_ref().unwrap().flush_and_compact().unwrap(),
                    Step::Reopen => {
                        drop(rocks.take());
                        rocks = Some(open_rocks_relaxed(&dir));
                    }
                }
                assert_agree(rocks.as_ref().unwrap(), &memory, &queries)?;
            }
        }
    }
}

/// Write throughput of one engine: `writers` threads × `ops_per_writer` single-put batches into
/// `Space::Data`, with the same key and value shapes as the raw baseline.
fn engine_put_loop(e: &dyn Engine, writers: usize, ops_per_writer: u64, value_bytes: usize) -> (Duration, f64) {
    engine_put_loop_into(e, (Space::Data, false), writers, ops_per_writer, value_bytes)
}

/// [`engine_put_loop`] into `space`; `write_shaped`: each batch also carries what a node's write
/// commits beside the state (a log record, a vector merge, an idempotency record).
fn engine_put_loop_into(
    e: &dyn Engine,
    (space, write_shaped): (Space, bool),
    writers: usize,
    ops_per_writer: u64,
    value_bytes: usize,
) -> (Duration, f64) {
    let barrier = std::sync::Barrier::new(writers + 1);
    let elapsed = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                let barrier = &barrier;
                s.spawn(move || {
                    let value = vec![writer as u8; value_bytes];
                    barrier.wait();
                    for seq in 0..ops_per_writer {
                        let mut key = (writer as u32).to_be_bytes().to_vec();
                        key.extend_from_slice(&seq.to_be_bytes());
                        let ordered = key.clone();
                        if write_shaped {
                            // User keys arrive in no order (memtable inserts then cost a search
                            // each, as the index's hash-ordered keys do).
                            key = meridian_replication::hash::mix64(seq ^ (writer as u64) << 48).to_be_bytes().to_vec();
                        }
                        let mut b = Batch::new();
                        if write_shaped {
                            // What a node's write commits besides the state: its log record (log
                            // positions are ordered), its vector entry and its idempotency record.
                            b.put(Space::Log, ordered, value.clone());
                            b.max_u64(Space::Meta, key[..4].to_vec(), seq);
                            b.put(Space::Idempotency, key.clone(), value[..value.len().min(64)].to_vec());
                        }
                        b.put(space, key, value.clone());
                        e.write(b).unwrap();
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().unwrap();
        }
        start.elapsed()
    });
    (elapsed, (writers as u64 * ops_per_writer) as f64 / elapsed.as_secs_f64())
}

/// Manual measurement (not a test): what the partition index costs a write. The same puts, same
/// keys and values, into `Data` (each bringing its index entry) and into `Hints` (no index), on
/// fresh engines, alternating, `BENCH_ROUNDS` rounds; 32 fsync writers by default, `BENCH_RELAXED=1`
/// for relaxed; `BENCH_SINGLE=1` for batches of the one put (by default each batch also carries
/// what a node's write commits beside the state). Run with
/// `cargo test -p meridian-server --lib storage::tests::bench_partition_index_cost -- --ignored --nocapture`.
#[test]
#[ignore = "manual benchmark; timing-dependent"]
fn bench_partition_index_cost() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (writers, ops, value_bytes, rounds) = (
        env("BENCH_WRITERS", 32) as usize,
        env("BENCH_OPS", 300),
        env("BENCH_VALUE", 100) as usize,
        env("BENCH_ROUNDS", 4),
    );
    let durability = if env("BENCH_RELAXED", 0) == 1 { Durability::Relaxed } else { Durability::Fsync };
    let write_shaped = env("BENCH_SINGLE", 0) != 1;
    println!(
        "{writers} writers x {ops} ops, {value_bytes}-byte values, {durability:?}, {}",
        if write_shaped { "batches shaped like a node's write" } else { "one put per batch" }
    );
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let rate = |space: Space| {
            let dir = tempfile::tempdir().unwrap();
            let engine = RocksEngine::open(dir.path(), RocksOptions { durability, ..RocksOptions::default() }).unwrap();
            engine_put_loop_into(&engine, (space, write_shaped), writers, ops, value_bytes).1
        };
        let (indexed, plain) = if round % 2 == 0 {
            let indexed = rate(Space::Data);
            (indexed, rate(Space::Hints))
        } else {
            let plain = rate(Space::Hints);
            (rate(Space::Data), plain)
        };
        ratios.push(indexed / plain);
        println!(
            "round {round}: data + index {indexed:8.0} ops/s | hints (no index) {plain:8.0} ops/s | ratio {:.3}",
            indexed / plain
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio {:.3}", ratios[ratios.len() / 2]);
}

/// Manual measurement (not a test): raw RocksDB vs RocksEngine, 32 fsync writers, with and without
/// pipelined write. Run with
/// `cargo test -p meridian-node --lib storage::tests::bench_write_paths -- --ignored --nocapture`.
/// Environment: `BENCH_WRITERS`, `BENCH_OPS` (per writer), `BENCH_VALUE`, `BENCH_ROUNDS`, `BENCH_DIR`.
#[test]
#[ignore = "manual benchmark; timing-dependent"]
fn bench_write_paths() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let writers = env("BENCH_WRITERS", 32) as usize;
    let ops = env("BENCH_OPS", 200);
    let value_bytes = env("BENCH_VALUE", 256) as usize;
    let rounds = env("BENCH_ROUNDS", 3);
    let base = std::env::var("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    println!("{writers} writers x {ops} ops, {value_bytes}-byte values, Fsync, dir {}", base.display());
    for round in 0..rounds {
        for pipelined in [false, true] {
            let dir = tempfile::tempdir_in(&base).unwrap();
            let raw = baseline::raw_put_loop_with(
                &dir.path().join("raw"),
                writers,
                ops,
                value_bytes,
                Durability::Fsync,
                pipelined,
            )
            .unwrap();
            let engine =
                RocksEngine::open_with(&dir.path().join("engine"), RocksOptions::default(), pipelined).unwrap();
            let (elapsed, engine_ops) = engine_put_loop(&engine, writers, ops, value_bytes);
            drop(engine);
            println!(
                "round {round} pipelined={pipelined:5}: raw {:8.0} ops/s ({:?}, p50 {} µs, p99 {} µs) | RocksEngine {:8.0} ops/s ({:?}) | ratio {:.2}",
                raw.ops_per_sec,
                raw.elapsed,
                raw.hist.value_at_quantile(0.5),
                raw.hist.value_at_quantile(0.99),
                engine_ops,
                elapsed,
                engine_ops / raw.ops_per_sec,
            );
        }
    }
}
