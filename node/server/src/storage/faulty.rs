//! An engine that fails on demand, for fault tests: wraps another engine and, once armed, refuses
//! writes and WAL syncs the way a disk that lost an fsync does. Reads keep working.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{Batch, Durability, Engine, KeyValue, Space, SpaceUsage, StorageError};

/// Wraps `inner`; [`FaultyEngine::fail_writes`] arms it.
pub struct FaultyEngine {
    inner: Arc<dyn Engine>,
    failing: AtomicBool,
    /// Writes that reached the inner engine.
    writes: AtomicU64,
    /// Writes refused while armed.
    refused: AtomicU64,
}

impl FaultyEngine {
    /// A pass-through over `inner` until armed.
    pub fn new(inner: Arc<dyn Engine>) -> FaultyEngine {
        FaultyEngine { inner, failing: AtomicBool::new(false), writes: AtomicU64::new(0), refused: AtomicU64::new(0) }
    }

    /// From now on (or, with `false`, no longer) every write and WAL sync fails as an fsync error.
    pub fn fail_writes(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Writes the inner engine applied.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Writes refused because the engine was armed.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.failing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StorageError::Io(std::io::Error::other("injected fault: fsync failed (EIO)")));
        }
        Ok(())
    }
}

impl Engine for FaultyEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(space, key)
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        self.check()?;
        self.inner.write(batch)?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(space, start, end, limit)
    }

    fn last_in_range(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        self.inner.last_in_range(space, start, end)
    }

    fn estimate_keys(&self, space: Space) -> Result<u64, StorageError> {
        self.inner.estimate_keys(space)
    }

    fn sync_wal(&self) -> Result<(), StorageError> {
        self.check()?;
        self.inner.sync_wal()
    }

    fn durability(&self) -> Durability {
        self.inner.durability()
    }

    fn compact_all(&self) -> Result<(), StorageError> {
        self.inner.compact_all()
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        self.inner.checkpoint(dir)
    }

    fn space_usage(&self, space: Space) -> Result<SpaceUsage, StorageError> {
        self.inner.space_usage(space)
    }

    fn wal_bytes(&self) -> Result<u64, StorageError> {
        self.inner.wal_bytes()
    }
}
