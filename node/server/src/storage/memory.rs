//! [`MemoryEngine`]: the in-memory twin of [`RocksEngine`](super::RocksEngine).
//!
//! One `RwLock<BTreeMap>` per [`Space`]. A write takes the write locks of every space its batch
//! touches, always in [`Space::ALL`] order (so two writers cannot deadlock), applies every
//! operation, and releases them together: a reader of any one space sees either none or all of a
//! batch's operations on that space, and once it has seen one of them, every later read of any
//! space sees the whole batch — the same guarantee RocksDB gives for a `WriteBatch`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use super::{
    max_u64_of, Batch, BatchOp, Durability, Engine, GotAndScanned, KeyValue, ScanRange, Space, StorageError,
    FORMAT_KEY, FORMAT_VERSION,
};

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;
type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// An in-memory [`Engine`] with exactly the semantics of [`RocksEngine`](super::RocksEngine)
/// (atomic batches, `MaxU64`, scans, the reserved format marker) and no persistence: **nothing
/// survives a restart** (or the last clone being dropped).
///
/// Clones share the same contents. [`durability`](Engine::durability) reports
/// [`Durability::Fsync`]: a write is "as durable as it will ever be" once `write` returns, and
/// `sync_wal` is a no-op.
#[derive(Clone)]
pub struct MemoryEngine {
    spaces: Arc<[RwLock<Tree>; Space::ALL.len()]>,
}

impl MemoryEngine {
    /// An empty engine (holding only the format marker, like a freshly created RocksDB).
    pub fn new() -> Self {
        let mut spaces: [Tree; Space::ALL.len()] = Default::default();
        spaces[Space::Meta.index()].insert(FORMAT_KEY.to_vec(), vec![FORMAT_VERSION]);
        Self { spaces: Arc::new(spaces.map(RwLock::new)) }
    }

    /// Runs `f` with a read lock on `space`.
    fn read<T>(&self, space: Space, f: impl FnOnce(&Tree) -> T) -> Result<T, StorageError> {
        let tree = self.spaces[space.index()].read().map_err(|_| poisoned(space))?;
        Ok(f(&tree))
    }
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryEngine").finish_non_exhaustive()
    }
}

fn poisoned(space: Space) -> StorageError {
    StorageError::Internal(format!("memory engine: lock of space {space} poisoned by a panicked writer"))
}

/// The half-open key range `[start, end)`, or None if it is empty (BTreeMap::range panics on
/// inverted ranges).
fn range_bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> Option<KeyRange<'a>> {
    match end {
        Some(end) if end <= start => None,
        Some(end) => Some((Bound::Included(start), Bound::Excluded(end))),
        None => Some((Bound::Included(start), Bound::Unbounded)),
    }
}

impl Engine for MemoryEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.read(space, |tree| tree.get(key).cloned())
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.check_reserved()?;
        let mut touched = [false; Space::ALL.len()];
        for (space, _, _) in &batch.ops {
            touched[space.index()] = true;
        }
        // Lock in Space::ALL order; hold every lock until the whole batch is applied.
        let mut guards: [Option<RwLockWriteGuard<'_, Tree>>; Space::ALL.len()] = Default::default();
        for space in Space::ALL {
            if touched[space.index()] {
                guards[space.index()] = Some(self.spaces[space.index()].write().map_err(|_| poisoned(space))?);
            }
        }
        for (space, key, op) in batch.ops {
            let tree = guards[space.index()].as_mut().expect("lock taken for every touched space");
            match op {
                BatchOp::Put(value) => {
                    tree.insert(key, value);
                }
                BatchOp::Delete => {
                    tree.remove(&key);
                }
                BatchOp::MaxU64(value) => {
                    let new = max_u64_of(tree.get(&key).map(Vec::as_slice), [value.to_be_bytes().as_slice()]);
                    tree.insert(key, new.to_be_bytes().to_vec());
                }
            }
        }
        Ok(())
    }

    fn get_and_scan(&self, get: (Space, &[u8]), scan: ScanRange<'_>) -> Result<GotAndScanned, StorageError> {
        let (get_space, key) = get;
        let (scan_space, start, end, limit) = scan;
        // Read locks in the order writers take their write locks (`Space::ALL`), held across both
        // reads: no batch lands between them.
        let mut order = [get_space, scan_space];
        order.sort_by_key(|s| s.index());
        let first = self.spaces[order[0].index()].read().map_err(|_| poisoned(order[0]))?;
        let second = match order[1] == order[0] {
            true => None,
            false => Some(self.spaces[order[1].index()].read().map_err(|_| poisoned(order[1]))?),
        };
        let tree_of = |space: Space| if space == order[0] { &*first } else { second.as_deref().unwrap_or(&*first) };
        let got = tree_of(get_space).get(key).cloned();
        let scanned = match range_bounds(start, end) {
            Some(bounds) => {
                tree_of(scan_space).range::<[u8], _>(bounds).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            None => Vec::new(),
        };
        Ok((got, scanned))
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let Some(bounds) = range_bounds(start, end) else { return Ok(Vec::new()) };
        self.read(space, |tree| {
            tree.range::<[u8], _>(bounds).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect()
        })
    }

    fn last_in_range(&self, space: Space, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        let Some(bounds) = range_bounds(start, Some(end)) else { return Ok(None) };
        self.read(space, |tree| tree.range::<[u8], _>(bounds).next_back().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn estimate_keys(&self, space: Space) -> Result<u64, StorageError> {
        self.read(space, |tree| tree.len() as u64)
    }

    fn sync_wal(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn durability(&self) -> Durability {
        Durability::Fsync
    }
}
