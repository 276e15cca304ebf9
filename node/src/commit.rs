//! Group commit: one thread makes writes durable, many at a time.
//!
//! Every write the node coordinates hands its batch to the committer and awaits the verdict. The
//! committer thread takes the first waiting batch, drains whatever else is queued (up to
//! `max_group` batches), appends them into one RocksDB batch and writes it once — one WAL append
//! and, under `fsync` durability, one fsync for the whole group. While that fsync runs, the next
//! group queues up, so the group size adapts to the load by itself: one write alone is committed at
//! once, 32 concurrent writers share a handful of fsyncs.
//!
//! Why our own committer rather than only RocksDB's write-thread grouping: request tasks never block
//! a thread (they await a oneshot), so there are no blocking-pool hand-offs per write, and the queue
//! is bounded — when the disk cannot keep up, writers wait in `commit` (backpressure) instead of
//! piling up threads.
//!
//! Atomicity: each write's batch lands in full or not at all, because the joined batch does. Two
//! batches in one group never touch the same data key (the node holds the key's lock until its write
//! is committed); they may raise the same version-vector entry, which is a commutative max.

use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::storage::{Batch, Engine, StorageError};

struct Pending {
    batch: Batch,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle writers use; the thread stops when every handle is dropped.
#[derive(Clone)]
pub struct GroupCommitter {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommitter {
    /// Starts the committer thread over `engine`. `queue_depth` bounds the batches waiting;
    /// `max_group` bounds how many are joined into one write.
    pub fn start(engine: Arc<dyn Engine>, queue_depth: usize, max_group: usize) -> GroupCommitter {
        let (queue, mut receiver) = mpsc::channel::<Pending>(queue_depth.max(1));
        // Only a weak reference: the node owns the engine, so dropping the node closes it at once
        // (a restart on the same data_dir must not race this thread for RocksDB's lock).
        let engine = Arc::downgrade(&engine);
        std::thread::Builder::new()
            .name("meridian-commit".into())
            .spawn(move || {
                let mut group = Vec::with_capacity(max_group);
                while let Some(first) = receiver.blocking_recv() {
                    group.push(first);
                    while group.len() < max_group {
                        match receiver.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    let mut joined = Batch::new();
                    let mut waiters = Vec::with_capacity(group.len());
                    for pending in group.drain(..) {
                        joined.append(pending.batch);
                        waiters.push(pending.done);
                    }
                    metrics::histogram!("meridian_commit_group_size").record(waiters.len() as f64);
                    // StorageError is not Clone; every waiter gets the same failure as text.
                    // The strong reference ends before any waiter hears back.
                    let result = match engine.upgrade() {
                        Some(engine) => engine.write(joined).map_err(|e| e.to_string()),
                        None => Err("the storage engine is closed".to_string()),
                    };
                    for waiter in waiters {
                        // A writer that gave up (timed out) no longer listens; its write still counts.
                        let _ = waiter.send(result.clone());
                    }
                }
            })
            .expect("spawning the commit thread");
        GroupCommitter { queue }
    }

    /// Makes `batch` durable (per the engine's durability) together with whatever else is waiting.
    pub async fn commit(&self, batch: Batch) -> Result<(), StorageError> {
        let (done, verdict) = oneshot::channel();
        self.queue
            .send(Pending { batch, done })
            .await
            .map_err(|_| StorageError::Internal("the commit thread has stopped".into()))?;
        verdict
            .await
            .map_err(|_| StorageError::Internal("the commit thread dropped a write".into()))?
            .map_err(|e| StorageError::Internal(format!("group commit failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemoryEngine, Space};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_all_land() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let committer = GroupCommitter::start(engine.clone(), 16, 8);
        let mut writers = Vec::new();
        for i in 0..100u32 {
            let committer = committer.clone();
            writers.push(tokio::spawn(async move {
                let mut batch = Batch::new();
                batch.put(Space::Data, i.to_be_bytes().to_vec(), b"v".to_vec());
                batch.max_u64(Space::Meta, b"max".to_vec(), u64::from(i));
                committer.commit(batch).await
            }));
        }
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        for i in 0..100u32 {
            assert!(engine.get(Space::Data, &i.to_be_bytes()).unwrap().is_some());
        }
        let max = engine.get(Space::Meta, b"max").unwrap().unwrap();
        assert_eq!(crate::storage::decode_u64_be(&max).unwrap(), 99);
    }
}
