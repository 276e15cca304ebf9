//! Engines for fault tests: [`FaultyEngine`] wraps another engine and, once armed, refuses writes
//! and WAL syncs the way a disk that lost an fsync does (reads keep working); [`PowerLossEngine`]
//! is a `relaxed` engine whose power can be cut, losing the writes not yet synced.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{Batch, Durability, Engine, GotAndScanned, KeyValue, ScanRange, Space, SpaceUsage, StorageError};

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

    fn get_and_scan(&self, get: (Space, &[u8]), scan: ScanRange<'_>) -> Result<GotAndScanned, StorageError> {
        self.inner.get_and_scan(get, scan)
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

/// An engine with `relaxed` durability whose power can be cut: it keeps, besides the live state,
/// which batches a WAL sync made durable. [`PowerLossEngine::power_loss`] is what a machine that
/// lost power would find on disk — the synced batches plus a prefix of the unsynced ones (the WAL
/// is replayed in order, a batch is one WAL record: never a torn batch).
pub struct PowerLossEngine {
    live: super::MemoryEngine,
    wal: std::sync::Mutex<Wal>,
}

#[derive(Default)]
struct Wal {
    synced: Vec<Batch>,
    unsynced: Vec<Batch>,
}

impl Default for PowerLossEngine {
    fn default() -> Self {
        PowerLossEngine::new()
    }
}

impl PowerLossEngine {
    /// An empty engine.
    pub fn new() -> PowerLossEngine {
        PowerLossEngine { live: super::MemoryEngine::new(), wal: std::sync::Mutex::new(Wal::default()) }
    }

    /// The engine a restart after a power loss finds: every synced batch and the first `keep`
    /// unsynced ones.
    pub fn power_loss(&self, keep: usize) -> Result<PowerLossEngine, StorageError> {
        let kept: Vec<Batch> = {
            let wal = self.wal()?;
            wal.synced.iter().chain(wal.unsynced.iter().take(keep)).cloned().collect()
        };
        let mut after = PowerLossEngine::new();
        for batch in &kept {
            after.live.write(batch.clone())?;
        }
        after.wal = std::sync::Mutex::new(Wal { synced: kept, unsynced: Vec::new() });
        Ok(after)
    }

    fn wal(&self) -> Result<std::sync::MutexGuard<'_, Wal>, StorageError> {
        self.wal.lock().map_err(|_| StorageError::Internal("power-loss WAL lock poisoned".into()))
    }

    /// Batches written since the last WAL sync.
    pub fn unsynced(&self) -> usize {
        self.wal.lock().map_or(0, |wal| wal.unsynced.len())
    }
}

impl Engine for PowerLossEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.live.get(space, key)
    }

    fn get_and_scan(&self, get: (Space, &[u8]), scan: ScanRange<'_>) -> Result<GotAndScanned, StorageError> {
        self.live.get_and_scan(get, scan)
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        // One lock around both: the WAL's order is the order batches applied in.
        let mut wal = self.wal()?;
        self.live.write(batch.clone())?;
        wal.unsynced.push(batch);
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.live.scan(space, start, end, limit)
    }

    fn last_in_range(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        self.live.last_in_range(space, start, end)
    }

    fn estimate_keys(&self, space: Space) -> Result<u64, StorageError> {
        self.live.estimate_keys(space)
    }

    fn sync_wal(&self) -> Result<(), StorageError> {
        let mut wal = self.wal()?;
        let Wal { synced, unsynced } = &mut *wal;
        synced.append(unsynced);
        Ok(())
    }

    fn durability(&self) -> Durability {
        Durability::Relaxed
    }

    fn compact_all(&self) -> Result<(), StorageError> {
        self.live.compact_all()
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        self.live.checkpoint(dir)
    }

    fn space_usage(&self, space: Space) -> Result<SpaceUsage, StorageError> {
        self.live.space_usage(space)
    }

    fn wal_bytes(&self) -> Result<u64, StorageError> {
        self.live.wal_bytes()
    }
}
