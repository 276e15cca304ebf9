//! [`RocksEngine`]: the RocksDB-backed [`Engine`].
//!
//! One database, one column family per [`Space`] (named by [`Space::name`]), each with the
//! associative `meridian_max_u64` merge operator, LZ4 compression, a bloom filter and a block cache
//! shared by all column families. Writes go straight from the caller's thread into RocksDB with no
//! lock of ours in between, so RocksDB's write-thread group commit sees every concurrent writer (see
//! the [module docs](super#group-commit)).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBWithThreadMode, ErrorKind,
    MergeOperands, Options, ReadOptions, SingleThreaded, WriteBatch, WriteOptions,
};

use super::{
    max_u64_of, Batch, BatchOp, Durability, Engine, GotAndScanned, KeyValue, ScanRange, Space, SpaceUsage,
    StorageError, FORMAT_KEY, FORMAT_VERSION, OLDEST_FORMAT_VERSION,
};

/// The concrete RocksDB handle type. Spelled out (rather than `rocksdb::DB`) so that a workspace
/// member enabling the `multi-threaded-cf` feature cannot change our column-family handle types;
/// we never create or drop column families after open, so the single-threaded variant (no
/// internal lock around the column-family map) is the right one.
pub(super) type Db = DBWithThreadMode<SingleThreaded>;

/// Name under which the `MaxU64` merge operator is registered. RocksDB records it in the OPTIONS
/// file; renaming it makes existing databases with pending merge operands unreadable.
pub(super) const MERGE_OPERATOR_NAME: &str = "meridian_max_u64";

/// Whether RocksDB's pipelined write (separate WAL and memtable writer queues) is enabled, by both
/// [`RocksEngine`] and the raw baseline.
///
/// Off (RocksDB's default), by measurement: on the 2-core dev VM (ext4; one fsynced put alone
/// takes ≈ 0.15–0.3 ms), 32 threads × 200 fsynced 256-byte puts, 10 interleaved rounds (the
/// ignored test `bench_write_paths`), gave medians of raw 30.6k ops/s off vs 30.9k on and
/// RocksEngine 30.7k off vs 31.2k on — a 1–2 % difference, inside the run-to-run spread
/// (26k–37k), and an earlier, noisier run favoured "off". Group commit already amortises the
/// fsync, and with two cores there is no spare parallelism for the extra queue stage to exploit;
/// without a measurable gain we keep the default, which is also compatible with every other
/// write-path option (e.g. `unordered_write`, two write queues).
pub(super) const PIPELINED_WRITE: bool = false;

/// Options of [`RocksEngine::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RocksOptions {
    /// When `write` returns (default [`Durability::Fsync`]).
    pub durability: Durability,
    /// Size of the LRU block cache shared by all column families, in bytes (default 64 MiB).
    pub cache_bytes: usize,
    /// RocksDB `max_background_jobs`: flush and compaction threads (default 2).
    pub max_background_jobs: i32,
    /// RocksDB `max_total_wal_size`: past it, the memtables that pin the oldest WAL file are
    /// flushed so the file can go (default 64 MiB).
    pub max_wal_bytes: u64,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self { durability: Durability::Fsync, cache_bytes: 64 << 20, max_background_jobs: 2, max_wal_bytes: 64 << 20 }
    }
}

/// The RocksDB [`Engine`]. Cheap to clone: clones share one database handle, which is closed when
/// the last clone is dropped (after a final WAL fsync, so even [`Durability::Relaxed`] writes are
/// on disk after a clean shutdown).
#[derive(Clone)]
pub struct RocksEngine {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    path: PathBuf,
    durability: Durability,
    write_options: WriteOptions,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Make Relaxed writes durable on a clean shutdown. The DB itself is closed by `Db`'s own
        // Drop right after this, which waits for running background flushes/compactions.
        if let Err(e) = self.db.flush_wal(true) {
            tracing::warn!(path = %self.path.display(), error = %e, "storage: final WAL sync on close failed");
        }
    }
}

impl fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.inner.path)
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

/// The associative merge function behind [`BatchOp::MaxU64`]: used both as the full merge (with
/// the existing value) and as the partial merge (operands only, `existing` None). Never fails:
/// malformed values count as 0 (see [`max_u64_of`]), because a failing merge inside a compaction
/// would put the database into read-only mode.
fn max_u64_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    Some(max_u64_of(existing, operands.iter()).to_be_bytes().to_vec())
}

/// DB-wide write-path settings shared by [`RocksEngine`] and the raw baseline, so that the
/// benchmark compares like with like.
pub(super) fn apply_write_path_options(opts: &mut Options, pipelined_write: bool) {
    opts.set_enable_pipelined_write(pipelined_write);
}

/// The `WriteOptions` implementing a [`Durability`], shared with the raw baseline.
pub(super) fn write_options(durability: Durability) -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(durability == Durability::Fsync);
    wo
}

/// Maps a RocksDB error to a [`StorageError`] with context, keeping RocksDB's corruption
/// classification. Called only on the error path, so the context costs nothing on success.
pub(super) fn rocks_err(e: rocksdb::Error, context: fmt::Arguments<'_>) -> StorageError {
    match e.kind() {
        ErrorKind::Corruption => StorageError::Corrupt(format!("{context}: {e}")),
        _ => StorageError::Rocks(format!("{context}: {e}")),
    }
}

/// The MANIFEST size past which RocksDB starts a new one (see `open_with`): tiny on purpose.
const MANIFEST_ROLL_BYTES: usize = 1;

impl RocksEngine {
    /// [`Engine::scan`] with the read options given (the upper bound is set here).
    fn scan_with(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        mut ro: ReadOptions,
    ) -> Result<Vec<KeyValue>, StorageError> {
        if limit == 0 || end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end);
        }
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(space)?, ro);
        let mut out = Vec::new();
        it.seek(start);
        while out.len() < limit {
            let Some((key, value)) = it.item() else { break };
            if end.is_some_and(|end| key >= end) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
            it.next();
        }
        it.status().map_err(|e| rocks_err(e, format_args!("scanning {space}")))?;
        Ok(out)
    }

    /// Opens (creating if missing) the database at `path` with one column family per [`Space`].
    ///
    /// On first open writes the format marker ([`FORMAT_KEY`] = `[FORMAT_VERSION]`, fsynced). Fails
    /// with [`StorageError::Corrupt`] if the marker holds another version, or if it is missing but
    /// the database already holds data; with [`StorageError::Rocks`] if RocksDB cannot open the
    /// directory (locked by another process, unknown column families, …).
    pub fn open(path: &Path, options: RocksOptions) -> Result<Self, StorageError> {
        Self::open_with(path, options, PIPELINED_WRITE)
    }

    /// [`open`](Self::open) with an explicit pipelined-write setting (for the write-path benchmark).
    pub(super) fn open_with(path: &Path, options: RocksOptions, pipelined_write: bool) -> Result<Self, StorageError> {
        // Created 0700 whatever the umask: it holds every key and value.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(path)?;

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(options.max_background_jobs);
        // The WAL is shared by every column family and a file is deleted only once all of them have
        // flushed what it holds: column families written rarely (Meta, Idempotency, Hints) would
        // otherwise keep every WAL file alive until their own memtable filled, and the WAL grew to
        // the sum of all memtables (hundreds of MB) and stayed there. Past this total, RocksDB
        // flushes the column families that pin the oldest file, so the WAL stays near this size.
        db_opts.set_max_total_wal_size(options.max_wal_bytes);
        // The MANIFEST logs every flush and compaction with its files' smallest and largest keys,
        // and keeps that history until it is rewritten: a key purged for residency would survive
        // there, in plain text, after the purge compacted its values away. A new MANIFEST (a
        // snapshot of the live files only, the old one deleted) is started once the current one
        // reaches this size — so with one this small, at every change of the file set. A snapshot
        // is a few hundred bytes per file, against the megabytes a flush or compaction writes.
        db_opts.set_max_manifest_file_size(MANIFEST_ROLL_BYTES);
        // RocksDB's own info log (LOG): rotated, a few files kept.
        db_opts.set_max_log_file_size(8 << 20);
        db_opts.set_keep_log_file_num(4);
        apply_write_path_options(&mut db_opts, pipelined_write);

        let cache = Cache::new_lru_cache(options.cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);

        let cfs = Space::ALL.map(|space| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(DBCompressionType::Lz4);
            cf_opts.set_block_based_table_factory(&table);
            cf_opts.set_merge_operator_associative(MERGE_OPERATOR_NAME, max_u64_merge);
            ColumnFamilyDescriptor::new(space.name(), cf_opts)
        });

        let db = Db::open_cf_descriptors(&db_opts, path, cfs)
            .map_err(|e| rocks_err(e, format_args!("opening {}", path.display())))?;
        let engine = Self {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                durability: options.durability,
                write_options: write_options(options.durability),
            }),
        };
        engine.check_format()?;
        tracing::debug!(path = %path.display(), durability = ?options.durability, "storage: rocksdb opened");
        Ok(engine)
    }

    /// Verifies (or, on a fresh database, writes) the format marker.
    fn check_format(&self) -> Result<(), StorageError> {
        let path = self.inner.path.display();
        match self.get(Space::Meta, FORMAT_KEY)? {
            Some(found) if found == [FORMAT_VERSION] => Ok(()),
            Some(found) if matches!(found.as_slice(), [v] if (OLDEST_FORMAT_VERSION..FORMAT_VERSION).contains(v)) => {
                // Every older format still readable migrates by raising the marker (see
                // `OLDEST_FORMAT_VERSION`); the column families it lacked were created by the open.
                // Before version 3 there was no partition index: it is built first, so a crash
                // before the marker is raised builds it again (its puts are idempotent).
                tracing::info!(path = %path, from = found[0], to = FORMAT_VERSION, "storage: migrating the format");
                if found[0] < 3 {
                    let keys = self.build_partition_index()?;
                    tracing::info!(path = %path, keys, "storage: partition index built");
                }
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(Space::Meta)?, FORMAT_KEY, [FORMAT_VERSION]);
                self.inner
                    .db
                    .write_opt(batch, &write_options(Durability::Fsync))
                    .map_err(|e| rocks_err(e, format_args!("{path}: raising the storage format marker")))
            }
            Some(found) => {
                let found = match found.as_slice() {
                    [version] => format!("version {version}"),
                    other => format!("a malformed marker {other:02x?}"),
                };
                Err(StorageError::Corrupt(format!(
                    "{path}: storage format {found} found, this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}: open it with the release that wrote it"
                )))
            }
            None => {
                for space in Space::ALL {
                    if !self.scan(space, &[], None, 1)?.is_empty() {
                        return Err(StorageError::Corrupt(format!(
                            "{path}: no storage format marker, but space {space} already holds data"
                        )));
                    }
                }
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(Space::Meta)?, FORMAT_KEY, [FORMAT_VERSION]);
                self.inner
                    .db
                    .write_opt(batch, &write_options(Durability::Fsync))
                    .map_err(|e| rocks_err(e, format_args!("{path}: writing the storage format marker")))
            }
        }
    }

    /// Writes the [`Space::PartitionIndex`] entry of every `Data` key (a migration from a format
    /// without it), in pages; returns how many keys it indexed. The pages are written without a
    /// sync each: the marker's write after them is fsynced, and the WAL is replayed in order, so
    /// the marker never survives a crash without them (and without it the build runs again).
    fn build_partition_index(&self) -> Result<u64, StorageError> {
        const PAGE: usize = 4096;
        const REPORT_EVERY: u64 = 1 << 20;
        let index = self.cf(Space::PartitionIndex)?;
        let mut start = Vec::new();
        let mut keys = 0u64;
        loop {
            let page = self.scan_uncached(Space::Data, &start, PAGE)?;
            let mut batch = WriteBatch::default();
            for (data_key, _) in &page {
                batch.put_cf(index, super::partition_index::entry_key(data_key), []);
            }
            keys += page.len() as u64;
            if keys % REPORT_EVERY < page.len() as u64 {
                tracing::info!(path = %self.inner.path.display(), keys, "storage: building the partition index");
            }
            self.inner.db.write_opt(batch, &write_options(Durability::Relaxed)).map_err(|e| {
                rocks_err(e, format_args!("{}: building the partition index", self.inner.path.display()))
            })?;
            match page.last() {
                Some((last, _)) if page.len() == PAGE => start = [last.as_slice(), &[0]].concat(),
                _ => return Ok(keys),
            }
        }
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn cf(&self, space: Space) -> Result<&ColumnFamily, StorageError> {
        self.inner
            .db
            .cf_handle(space.name())
            .ok_or_else(|| StorageError::Rocks(format!("column family {space} missing from the open database")))
    }

    /// Flushes every memtable to SST files and compacts every column family, so that tests exercise
    /// reads and merges across SSTs, not just the memtable.
    #[cfg(test)]
    pub(super) fn flush_and_compact(&self) -> Result<(), StorageError> {
        for space in Space::ALL {
            let cf = self.cf(space)?;
            self.inner.db.flush_cf(cf).map_err(|e| rocks_err(e, format_args!("flushing {space}")))?;
            self.inner.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}

impl Engine for RocksEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self
            .inner
            .db
            .get_pinned_cf(self.cf(space)?, key)
            .map_err(|e| rocks_err(e, format_args!("get in {space}")))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn get_and_scan(&self, get: (Space, &[u8]), scan: ScanRange<'_>) -> Result<GotAndScanned, StorageError> {
        let (get_space, key) = get;
        let (scan_space, start, end, limit) = scan;
        let snapshot = self.inner.db.snapshot();
        let got = snapshot
            .get_cf(self.cf(get_space)?, key)
            .map_err(|e| rocks_err(e, format_args!("snapshot get in {get_space}")))?;
        if limit == 0 || end.is_some_and(|end| end <= start) {
            return Ok((got, Vec::new()));
        }
        let mut ro = ReadOptions::default();
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end);
        }
        let mut it = snapshot.raw_iterator_cf_opt(self.cf(scan_space)?, ro);
        let mut out = Vec::new();
        it.seek(start);
        while out.len() < limit {
            let Some((key, value)) = it.item() else { break };
            out.push((key.to_vec(), value.to_vec()));
            it.next();
        }
        it.status().map_err(|e| rocks_err(e, format_args!("snapshot scan of {scan_space}")))?;
        Ok((got, out))
    }

    /// Builds a `WriteBatch` and hands it to RocksDB on the caller's thread; no lock of ours is
    /// taken, so concurrent callers are group-committed (one WAL write + fsync per group).
    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.check_reserved()?;
        let mut wb = WriteBatch::default();
        for (space, key, op) in &batch.ops {
            let cf = self.cf(*space)?;
            match op {
                BatchOp::Put(value) => wb.put_cf(cf, key, value),
                BatchOp::Delete => wb.delete_cf(cf, key),
                BatchOp::MaxU64(value) => wb.merge_cf(cf, key, value.to_be_bytes()),
            }
        }
        self.inner
            .db
            .write_opt(wb, &self.inner.write_options)
            .map_err(|e| rocks_err(e, format_args!("writing a batch of {} ops", batch.len())))
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.scan_with(space, start, end, limit, ReadOptions::default())
    }

    fn scan_uncached(&self, space: Space, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        self.scan_with(space, start, None, limit, ro)
    }

    fn last_in_range(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        if end <= start {
            return Ok(None);
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start);
        ro.set_iterate_upper_bound(end);
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(space)?, ro);
        // With iterate_upper_bound set, SeekToLast lands on the last key < end.
        it.seek_to_last();
        let found = it.item().filter(|(key, _)| *key >= start && *key < end).map(|(k, v)| (k.to_vec(), v.to_vec()));
        it.status().map_err(|e| rocks_err(e, format_args!("reverse scan of {space}")))?;
        Ok(found)
    }

    fn estimate_keys(&self, space: Space) -> Result<u64, StorageError> {
        let estimate = self
            .inner
            .db
            .property_int_value_cf(self.cf(space)?, rocksdb::properties::ESTIMATE_NUM_KEYS)
            .map_err(|e| rocks_err(e, format_args!("estimating keys of {space}")))?;
        Ok(estimate.unwrap_or(0))
    }

    fn sync_wal(&self) -> Result<(), StorageError> {
        self.inner.db.flush_wal(true).map_err(|e| rocks_err(e, format_args!("syncing the WAL")))
    }

    fn space_usage(&self, space: Space) -> Result<SpaceUsage, StorageError> {
        let cf = self.cf(space)?;
        let property = |name: &std::ffi::CStr| -> Result<u64, StorageError> {
            let value = self.inner.db.property_int_value_cf(cf, name);
            Ok(value.map_err(|e| rocks_err(e, format_args!("reading {name:?} of {space}")))?.unwrap_or(0))
        };
        use rocksdb::properties;
        Ok(SpaceUsage {
            sst_bytes: property(properties::TOTAL_SST_FILES_SIZE)?,
            live_bytes_estimate: property(properties::ESTIMATE_LIVE_DATA_SIZE)?,
            memtable_bytes: property(properties::CUR_SIZE_ALL_MEM_TABLES)?,
            keys_estimate: property(properties::ESTIMATE_NUM_KEYS)?,
        })
    }

    fn wal_bytes(&self) -> Result<u64, StorageError> {
        let mut total = 0;
        for entry in std::fs::read_dir(&self.inner.path)? {
            let entry = entry?;
            if entry.path().extension().is_some_and(|x| x == "log") {
                // A WAL file may be deleted between listing and stat: count what is there.
                total += entry.metadata().map_or(0, |m| m.len());
            }
        }
        Ok(total)
    }

    fn durability(&self) -> Durability {
        self.inner.durability
    }

    fn compact_all(&self) -> Result<(), StorageError> {
        let db = &self.inner.db;
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        let cfs = Space::ALL.iter().map(|space| self.cf(*space)).collect::<Result<Vec<_>, _>>()?;
        db.flush_cfs_opt(&cfs, &flush).map_err(|e| rocks_err(e, format_args!("flushing memtables")))?;
        // Force the bottommost level to be rewritten too: a purged value that already sat in the
        // last level would otherwise survive until some later compaction happened to touch it.
        let mut compact = rocksdb::CompactOptions::default();
        compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        compact.set_exclusive_manual_compaction(true);
        for cf in &cfs {
            db.compact_range_cf_opt(*cf, None::<&[u8]>, None::<&[u8]>, &compact);
        }
        // The flush made every older WAL file obsolete (RocksDB deletes obsolete WAL files once
        // their memtables are flushed); sync the current one so what follows the purge is durable.
        db.flush_wal(true).map_err(|e| rocks_err(e, format_args!("syncing the WAL")))?;
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        // RocksDB flushes the memtables first and hard-links the table files; the copy is
        // consistent across column families (one sequence number, the WAL tail replayed on open).
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.inner.db)
            .map_err(|e| rocks_err(e, format_args!("preparing a checkpoint")))?;
        checkpoint
            .create_checkpoint(dir)
            .map_err(|e| rocks_err(e, format_args!("writing a checkpoint into {}", dir.display())))
    }
}
