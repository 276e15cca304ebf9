//! The node's storage layer: a small ordered key-value [`Engine`] over a few logical keyspaces.
//!
//! Everything the node persists (CRDT values, the replication log, metadata such as its
//! `NodeId` and version vector, idempotency records) goes through the [`Engine`]
//! trait. It is deliberately narrow — point reads, atomic multi-keyspace batches, bounded range
//! scans, "last key in a range" — so that it can be implemented twice:
//!
//! * [`RocksEngine`], the production engine: one RocksDB database, one column family per [`Space`].
//! * [`MemoryEngine`], an in-memory twin with the same semantics, one `RwLock<BTreeMap>` per space.
//!
//! # Why an in-memory twin
//!
//! The twin lets the rest of the node (and its tests, simulations and fuzzers) run without a disk
//! and without RocksDB's start-up cost, and it is a readable *specification* of the semantics:
//! the storage test-suite runs every behavioural test against both engines, and a property test
//! applies random batches to both and checks that they agree (a model check of RocksDB-backed code
//! against a `BTreeMap`). Nothing in a [`MemoryEngine`] survives a restart.
//!
//! # Durability model
//!
//! [`Engine::write`] applies a [`Batch`] atomically: after a crash either every operation of the
//! batch is visible or none is (RocksDB writes the whole `WriteBatch` as one WAL record). When
//! `write` returns is governed by the engine's [`Durability`]:
//!
//! * [`Durability::Fsync`] (the default): `write` returns only after the write-ahead log record is
//!   fsynced (`WriteOptions::set_sync(true)`). An acknowledged write survives process crashes,
//!   kernel crashes and power loss.
//! * [`Durability::Relaxed`]: `write` returns once the record has been written to the WAL file,
//!   i.e. handed to the OS page cache (`set_sync(false)`; RocksDB's manual WAL flush is *not*
//!   enabled, so nothing is buffered in user space). A *process* crash (panic, OOM kill,
//!   `kill -9`) therefore loses nothing; a *power loss or kernel crash* can lose the writes
//!   acknowledged since the last [`Engine::sync_wal`]. The node calls `sync_wal` on a timer, which
//!   bounds that window (the interval is configured by the node, not here). Because every batch is
//!   one WAL record and the WAL is replayed in order, what survives is always a *prefix* of the
//!   acknowledged writes, never a torn batch.
//!
//! # Group commit
//!
//! Under [`Durability::Fsync`] concurrent writers do not pay one fsync each. RocksDB queues
//! concurrent `Write` calls in its write thread: the writer at the head becomes the *leader*,
//! collects the batches queued behind it into a group, appends them to the WAL, issues **one**
//! fsync for the whole group and then wakes the followers. [`RocksEngine::write`] takes no lock of
//! ours, so callers on many threads get that grouping. The node itself goes one step further and
//! funnels its writes through one committer thread (`crate::store::commit`) that joins every waiting batch
//! into one `write` call — the same single fsync, without a thread per waiting writer.
//!
//! # The `MaxU64` merge operator
//!
//! Counters that only move forward (sequence numbers, "highest applied" watermarks) are written
//! with [`Batch::max_u64`]: the stored value becomes `max(existing, given)`, kept as 8 bytes
//! big-endian. In RocksDB this is a *merge* (operator name `meridian_max_u64`, registered as an
//! associative merge operator on every column family) rather than a read-modify-write: the write
//! needs no read and no lock, and two batches raising the same counter concurrently commute —
//! whichever order they reach the WAL in, the result is the maximum. `max` is associative and
//! commutative, so RocksDB may combine operands in any grouping during reads and compactions. The
//! in-memory twin computes the maximum directly under its write lock. In both engines an existing
//! value that is not exactly 8 bytes (say, one written by [`Batch::put`]) is treated as absent,
//! so the result is the given value — a rule the merge callback can apply without failing,
//! because a merge failure inside a RocksDB compaction would stop the database.
//!
//! # On-disk format marker
//!
//! On first open [`RocksEngine`] writes [`FORMAT_KEY`] = `[FORMAT_VERSION]` into [`Space::Meta`];
//! later opens migrate a database of an older version still readable ([`OLDEST_FORMAT_VERSION`])
//! and refuse any other version with [`StorageError::Corrupt`]. The
//! marker is reserved: batches that touch it are rejected, and [`MemoryEngine`] carries the same
//! entry so that both engines present identical contents.

mod baseline;
pub mod faulty;
mod memory;
pub mod partition_index;
mod rocks;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

pub use baseline::{raw_rocksdb_put_loop, RawPutReport};
pub use memory::MemoryEngine;
pub use rocks::{RocksEngine, RocksOptions};

/// The [`Space::Meta`] key holding the on-disk format version (reserved: batches may not touch it).
pub const FORMAT_KEY: &[u8] = b"storage_format";

/// The storage format version this build writes (stored as the single byte value of
/// [`FORMAT_KEY`]). Version 2 added [`Space::Elements`]: sets and maps kept one record per
/// element or field; version 3 [`Space::PartitionIndex`], built from `Data` when a version 1 or 2
/// directory is opened.
pub const FORMAT_VERSION: u8 = 3;

/// The oldest storage format this build opens: a directory of an older format than
/// [`FORMAT_VERSION`] is migrated in place when opened (1 → 2 needs no rewrite: a set or map stored
/// whole stays readable, and moves to one record per part at its next write; → 3 writes the
/// partition index of every `Data` key, then raises the marker).
/// There is no way back: a release that reads only version 1 refuses the directory.
pub const OLDEST_FORMAT_VERSION: u8 = 1;

/// A key and its value, as returned by [`Engine::scan`] and [`Engine::last_in_range`].
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A scan's arguments for [`Engine::get_and_scan`]: space, start, end (exclusive, `None`:
/// unbounded), limit.
pub type ScanRange<'a> = (Space, &'a [u8], Option<&'a [u8]>, usize);

/// What [`Engine::get_and_scan`] read: the value got, and the entries scanned.
pub type GotAndScanned = (Option<Vec<u8>>, Vec<KeyValue>);

/// A logical keyspace. Each is a RocksDB column family of the same [name](Space::name) in
/// [`RocksEngine`] and a separate `BTreeMap` in [`MemoryEngine`]; keys in different spaces never
/// collide, and scans never cross spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// CRDT values, keyed by user key.
    Data,
    /// The replication log, keyed by (origin, sequence number).
    Log,
    /// Node metadata (identity, version vectors, counters, the format marker).
    Meta,
    /// Idempotency records of client requests.
    Idempotency,
    /// Hinted handoff: writes kept for replicas that were down, keyed by (target node, position).
    Hints,
    /// The elements of collections kept one record per element, and their dot index (see
    /// `crate::states`).
    Elements,
    /// Every `Data` key by partition and anti-entropy key hash ([`partition_index`]), empty
    /// values. Derived: [`Batch`] adds its entry to every `Data` operation (but an overwrite of a
    /// key known present, `Batch::put_present`), so it holds exactly the keys of `Data`.
    PartitionIndex,
}

impl Space {
    /// Every space, in a fixed order (also the order [`MemoryEngine`] takes its locks in).
    pub const ALL: [Space; 7] = [
        Space::Data,
        Space::Log,
        Space::Meta,
        Space::Idempotency,
        Space::Hints,
        Space::Elements,
        Space::PartitionIndex,
    ];

    /// The space's name, which is also its RocksDB column family name.
    pub const fn name(self) -> &'static str {
        match self {
            Space::Data => "data",
            Space::Log => "log",
            Space::Meta => "meta",
            Space::Idempotency => "idempotency",
            Space::Hints => "hints",
            Space::Elements => "elements",
            Space::PartitionIndex => "partition_index",
        }
    }

    /// The position of the space in [`Space::ALL`].
    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One operation of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Set the key to this value.
    Put(Vec<u8>),
    /// Remove the key (a no-op if it is absent).
    Delete,
    /// Set the key to `max(existing, given)` where `existing` is the current value read as a
    /// big-endian u64 (absent, or not exactly 8 bytes long, counts as 0); the result is stored as
    /// 8 bytes big-endian (read it back with [`decode_u64_be`]). A RocksDB merge: commutes with
    /// concurrent `MaxU64`s on the same key.
    MaxU64(u64),
}

/// An ordered list of operations over any spaces, applied atomically by [`Engine::write`].
///
/// Operations apply in the order they were added, so a later operation on the same key sees the
/// effect of an earlier one (e.g. `put` then `max_u64` on the same key).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    ops: Vec<(Space, Vec<u8>, BatchOp)>,
    /// Whether an operation was added into [`Space::PartitionIndex`] directly (refused).
    writes_index: bool,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds "set `key` in `space` to `value`".
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.push(space, key, BatchOp::Put(value.into()));
    }

    /// Adds "set `key` in `Data` to `value`" for a key that is in `Data` already and stays there
    /// until this batch commits (its state was read under the key's lock, which every write of it
    /// takes): its partition index entry is there, so none is written. An overwrite then costs no
    /// index write (a random-order memtable insert, a quarter of a relaxed write's engine time).
    pub(crate) fn put_present(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((Space::Data, key.into(), BatchOp::Put(value.into())));
    }

    /// Adds "remove `key` from `space`".
    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.push(space, key, BatchOp::Delete);
    }

    /// Adds "raise `key` in `space` to at least `value`" (see [`BatchOp::MaxU64`]).
    pub fn max_u64(&mut self, space: Space, key: impl Into<Vec<u8>>, value: u64) {
        self.push(space, key, BatchOp::MaxU64(value));
    }

    /// Adds an already-built operation. An operation in [`Space::Data`] brings its
    /// [`Space::PartitionIndex`] entry along, in the same batch: the index can then never disagree
    /// with `Data`, after any crash, whichever code path wrote.
    pub fn push(&mut self, space: Space, key: impl Into<Vec<u8>>, op: BatchOp) {
        let key = key.into();
        self.writes_index |= space == Space::PartitionIndex;
        if space == Space::Data {
            // A put or a merge leaves the key present, a delete absent.
            let index = if op == BatchOp::Delete { BatchOp::Delete } else { BatchOp::Put(Vec::new()) };
            self.ops.push((Space::PartitionIndex, partition_index::entry_key(&key), index));
        }
        self.ops.push((space, key, op));
    }

    /// Moves every operation of `other` to the end of this batch (group commit joins batches).
    pub fn append(&mut self, mut other: Batch) {
        self.writes_index |= other.writes_index;
        self.ops.append(&mut other.ops);
    }

    /// The number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in the order they will be applied.
    pub fn iter(&self) -> impl Iterator<Item = (Space, &[u8], &BatchOp)> {
        self.ops.iter().map(|(space, key, op)| (*space, key.as_slice(), op))
    }

    /// Rejects batches that touch the reserved [`FORMAT_KEY`], or write the partition index other
    /// than through `Data`.
    fn check_reserved(&self) -> Result<(), StorageError> {
        if self.writes_index {
            return Err(StorageError::Reserved(format!(
                "{} follows {}: it is written only through {}'s operations",
                Space::PartitionIndex,
                Space::Data,
                Space::Data
            )));
        }
        match self.ops.iter().find(|(space, key, _)| *space == Space::Meta && key.as_slice() == FORMAT_KEY) {
            Some(_) => Err(StorageError::Reserved(format!(
                "{}/{} is the storage format marker and cannot be written",
                Space::Meta,
                String::from_utf8_lossy(FORMAT_KEY)
            ))),
            None => Ok(()),
        }
    }
}

/// When [`Engine::write`] returns relative to the data reaching stable storage (see the
/// [module docs](self#durability-model)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// `write` returns after the WAL is fsynced (`WriteOptions::set_sync(true)`); concurrent writers
    /// are group-committed by RocksDB (one fsync per group). Survives power loss.
    #[default]
    Fsync,
    /// `write` returns once the WAL record is in the OS page cache (`set_sync(false)`): survives a
    /// process crash (`kill -9`), but power loss or a kernel crash can lose writes acknowledged since
    /// the last [`Engine::sync_wal`], which the node calls on a timer.
    Relaxed,
}

/// An ordered key-value store over the [`Space`]s. Implemented by [`RocksEngine`] and
/// [`MemoryEngine`], which behave identically apart from persistence.
///
/// All methods take `&self` and may be called from many threads at once; they block (on disk I/O
/// for [`RocksEngine`]), so async callers should use `spawn_blocking`.
pub trait Engine: Send + Sync + 'static {
    /// The value of `key` in `space`, if present.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies the batch atomically (all or nothing) with the engine's durability.
    ///
    /// An empty batch succeeds without doing any I/O. A batch touching the reserved
    /// [`FORMAT_KEY`] is rejected with [`StorageError::Reserved`] and nothing is applied.
    fn write(&self, batch: Batch) -> Result<(), StorageError>;

    /// [`Engine::get`] of `get` and [`Engine::scan`] of `scan`, both read at one point in time (a
    /// snapshot): what a reader needs that must not see half of a write spanning both (a set's
    /// header and its element records).
    fn get_and_scan(&self, get: (Space, &[u8]), scan: ScanRange<'_>) -> Result<GotAndScanned, StorageError>;

    /// Up to `limit` entries with `start <= key < end` (`end` None = unbounded), in key order
    /// (bytewise). An empty or inverted range yields no entries.
    fn scan(&self, space: Space, start: &[u8], end: Option<&[u8]>, limit: usize)
        -> Result<Vec<KeyValue>, StorageError>;

    /// [`scan`](Engine::scan) from `start` to the end of the space for a background walk over all
    /// of it (the data census): what it reads is not kept in the block cache, where it would push
    /// out the blocks that requests read. Engines without such a cache just scan.
    fn scan_uncached(&self, space: Space, start: &[u8], limit: usize) -> Result<Vec<KeyValue>, StorageError> {
        self.scan(space, start, None, limit)
    }

    /// The last entry with `start <= key < end`, if any (used to recover sequence numbers).
    fn last_in_range(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError>;

    /// Estimated number of keys in the space (RocksDB "rocksdb.estimate-num-keys"; exact in memory).
    fn estimate_keys(&self, space: Space) -> Result<u64, StorageError>;

    /// Makes every completed write durable (fsync the WAL). A no-op in memory.
    fn sync_wal(&self) -> Result<(), StorageError>;

    /// The durability [`write`](Engine::write) provides.
    fn durability(&self) -> Durability;

    /// Rewrites storage so that nothing deleted or overwritten survives in its files: flushes every
    /// space's memtable (the WAL files holding the old writes become obsolete and are deleted) and
    /// compacts every file down to the last level, dropping shadowed values and tombstones. Used
    /// after a residency purge. A no-op in memory.
    fn compact_all(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// What `space` takes on disk and in memory (all zeros in memory), for `/metrics`.
    fn space_usage(&self, _space: Space) -> Result<SpaceUsage, StorageError> {
        Ok(SpaceUsage::default())
    }

    /// Bytes of write-ahead log files (0 in memory), for `/metrics`.
    fn wal_bytes(&self) -> Result<u64, StorageError> {
        Ok(0)
    }

    /// Writes a consistent copy of the whole store into `dir` (which must not exist yet, on the
    /// same filesystem for RocksDB to hard-link its table files): every space as of one instant,
    /// openable as a store of its own. Online backups are made of these. The in-memory engine has
    /// no files and refuses.
    fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        Err(StorageError::Unsupported(format!(
            "this node keeps its data in memory: there is nothing to copy into {}",
            dir.display()
        )))
    }
}

/// What one space takes (RocksDB's own accounting for its column family).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceUsage {
    /// Bytes of its table files, obsolete versions awaiting compaction included.
    pub sst_bytes: u64,
    /// RocksDB's estimate of the live data in them.
    pub live_bytes_estimate: u64,
    /// Bytes in its memtables (not yet flushed).
    pub memtable_bytes: u64,
    /// RocksDB's estimate of its keys.
    pub keys_estimate: u64,
}

/// Decodes a value written by [`Batch::max_u64`] (8 bytes, big-endian).
///
/// Returns [`StorageError::Corrupt`] if `bytes` is not exactly 8 bytes long.
pub fn decode_u64_be(bytes: &[u8]) -> Result<u64, StorageError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::Corrupt(format!("expected an 8-byte big-endian u64, found {} bytes", bytes.len())))
}

/// The `MaxU64` rule shared by both engines: `max(existing, operands…)`, where an absent or
/// malformed (not 8-byte) existing value or operand counts as 0.
fn max_u64_of<'a>(existing: Option<&[u8]>, operands: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let existing = existing.and_then(|v| decode_u64_be(v).ok()).unwrap_or(0);
    operands.into_iter().filter_map(|op| decode_u64_be(op).ok()).fold(existing, u64::max)
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error (I/O failure, invalid options, a column family mismatch, …).
    /// The message says which operation on which space failed, followed by RocksDB's message.
    #[error("rocksdb: {0}")]
    Rocks(String),
    /// Stored data is not what this code wrote: an unknown on-disk format version, a database
    /// without a format marker that already holds data, a value that should be an 8-byte u64 and
    /// is not, or corruption detected by RocksDB (checksum mismatch, …).
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// A filesystem operation of our own (creating the database directory, …) failed.
    #[error("storage i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The batch tried to write a key reserved by the storage layer ([`FORMAT_KEY`]).
    #[error("reserved key: {0}")]
    Reserved(String),
    /// An internal failure that is a bug rather than a data or I/O problem: a poisoned lock in
    /// [`MemoryEngine`] (a thread panicked mid-write) or a panicked benchmark writer thread.
    #[error("storage internal error: {0}")]
    Internal(String),
    /// A write failed in a way that leaves unknown what is on disk (or failed earlier, and the node
    /// stopped writing): the node takes no more writes until it is restarted. The message says
    /// whether this write may have been applied.
    #[error("{0}")]
    Fenced(String),
    /// The engine cannot do this (a checkpoint of the in-memory engine).
    #[error("not supported by this storage engine: {0}")]
    Unsupported(String),
}
