//! Group commit: one thread makes writes durable, many at a time, and hands out their log positions.
//!
//! Every write the node coordinates hands its batch (and its delta-log record) to the committer and
//! awaits the verdict. The committer thread takes the first waiting write, drains whatever else is
//! queued (up to `max_group`), appends them into one RocksDB batch and writes it once — one WAL
//! append and, under `fsync` durability, one fsync for the whole group. While that fsync runs, the
//! next group queues up, so the group size adapts to the load by itself.
//!
//! # Log positions
//!
//! The committer, not the writer, gives each delta-log record its position `(partition, origin, seq)`,
//! in commit order. So a partition's own log is gap-free by construction: positions are taken only by
//! groups that committed (a failed group takes none), and a crash can only lose a *suffix* of
//! positions, never leave a hole that anti-entropy would wait on forever.
//!
//! Why our own committer rather than only RocksDB's write-thread grouping: request tasks never block
//! a thread (they await a oneshot), so there are no blocking-pool hand-offs per write, and the queue
//! is bounded — when the disk cannot keep up, writers wait in `commit` (backpressure) instead of
//! piling up threads.
//!
//! Atomicity: each write's batch lands in full or not at all, because the joined batch does. Two
//! batches in one group never touch the same data key (the node holds the key's lock until its write
//! is committed).
//!
//! # A failed commit fences the node
//!
//! When the engine refuses a group (an fsync or a write failed), nothing says whether the group is
//! on disk: the WAL append may have landed before the fsync failed, and the kernel may have dropped
//! the dirty pages it could not write. Going on would be unsafe either way — the next group would
//! reuse the failed group's log positions, which may already be on disk (or pushed) with other
//! contents. So the first failure **fences** the committer: every waiter of that group hears that
//! its write may have been applied ([`StorageError::Fenced`], retryable with the same idempotency
//! id), every later commit is refused without touching the engine, and the node reports itself
//! unready with the reason until it is restarted (RocksDB's recovery then decides what is durable,
//! and the log positions resume from what is really there).

use meridian_crdt::NodeId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use crate::layout::{self, PARTITIONS};
use crate::storage::{Batch, Engine, Space, StorageError};
use crate::telemetry;

/// A delta-log record to append to this node's log of `partition`.
pub struct LogAppend {
    /// The key's partition.
    pub partition: u16,
    /// The encoded [`layout::LogRecord`].
    pub record: Vec<u8>,
}

struct Pending {
    batch: Batch,
    log: Option<LogAppend>,
    done: oneshot::Sender<Result<Option<u64>, StorageError>>,
    /// When it was queued; `None` for replicated state (only client writes are timed per stage).
    queued: Option<Instant>,
}

/// The handle writers use; the thread stops when every handle is dropped.
#[derive(Clone)]
pub struct GroupCommitter {
    queue: mpsc::Sender<Pending>,
    committed_records: Arc<AtomicU64>,
    /// Per partition, the last position of this node's log known durable (raised before the writes
    /// of a batch hear back, so a write that was answered is always at or below it).
    last_durable: Arc<Vec<AtomicU64>>,
    /// Why the committer stopped taking writes, once a commit failed (see the module docs).
    fenced: Arc<OnceLock<String>>,
}

impl GroupCommitter {
    /// Starts the committer thread over `engine` for node `origin`, whose log of partition `p` ends
    /// at `last_seqs[p]`. `queue_depth` bounds the writes waiting; `max_group` bounds how many are
    /// joined into one durable batch.
    pub fn start(
        engine: Arc<dyn Engine>,
        origin: NodeId,
        mut last_seqs: Vec<u64>,
        queue_depth: usize,
        max_group: usize,
    ) -> GroupCommitter {
        assert_eq!(last_seqs.len(), usize::from(PARTITIONS), "one last sequence per partition");
        let (queue, mut receiver) = mpsc::channel::<Pending>(queue_depth.max(1));
        let committed_records = Arc::new(AtomicU64::new(last_seqs.iter().sum()));
        let last_durable: Arc<Vec<AtomicU64>> = Arc::new(last_seqs.iter().map(|s| AtomicU64::new(*s)).collect());
        let durable = last_durable.clone();
        let counter = committed_records.clone();
        let fenced = Arc::new(OnceLock::new());
        let fence = fenced.clone();
        metrics::gauge!("meridian_storage_failed").set(0.0);
        // Only a weak reference: the node owns the engine, so dropping the node closes it at once
        // (a restart on the same data_dir must not race this thread for RocksDB's lock).
        let engine = Arc::downgrade(&engine);
        std::thread::Builder::new()
            .name("meridian-commit".into())
            .spawn(move || {
                let mut group = Vec::with_capacity(max_group);
                while let Some(first) = receiver.blocking_recv() {
                    let group_started = Instant::now();
                    group.push(first);
                    while group.len() < max_group {
                        match receiver.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    let mut joined = Batch::new();
                    let mut next_seqs = last_seqs.clone();
                    let mut waiters = Vec::with_capacity(group.len());
                    let mut timed = Vec::new();
                    let mut write_took = Duration::ZERO;
                    for pending in group.drain(..) {
                        if let Some(queued) = pending.queued {
                            timed.push(group_started.saturating_duration_since(queued));
                        }
                        let seq = pending.log.map(|log| {
                            let p = usize::from(log.partition);
                            next_seqs[p] += 1;
                            let seq = next_seqs[p];
                            joined.put(Space::Log, layout::log_key(log.partition, origin, seq).to_vec(), log.record);
                            joined.max_u64(Space::Meta, layout::vv_key(log.partition, origin), seq);
                            seq
                        });
                        joined.append(pending.batch);
                        waiters.push((pending.done, seq));
                    }
                    metrics::histogram!("meridian_commit_group_size").record(waiters.len() as f64);
                    // The strong reference ends before any waiter hears back.
                    let result = match (fence.get(), engine.upgrade()) {
                        (Some(reason), _) => Err(StorageError::Fenced(format!(
                            "this node stopped taking writes after its storage failed ({reason}); nothing was written: retry on another node, or here once it is restarted"
                        ))),
                        (None, Some(engine)) => timed_write(&*engine, joined, &mut write_took).map_err(|e| {
                            let reason = e.to_string();
                            set_fence(&fence, &reason);
                            StorageError::Fenced(format!(
                                "the storage engine failed during this write ({reason}): it may have been applied; retry with the same idempotency id (on another node: this one takes no more writes until it is restarted)"
                            ))
                        }),
                        (None, None) => Err(StorageError::Internal("the storage engine is closed".to_string())),
                    };
                    if result.is_ok() {
                        let appended: u64 = next_seqs.iter().zip(&last_seqs).map(|(next, last)| next - last).sum();
                        counter.fetch_add(appended, Ordering::Relaxed);
                        for (p, seq) in next_seqs.iter().enumerate() {
                            durable[p].store(*seq, Ordering::SeqCst);
                        }
                        last_seqs = next_seqs;
                    }
                    for (waiter, seq) in waiters {
                        // A writer that gave up (timed out) no longer listens; its write still counts.
                        let _ = waiter.send(match &result {
                            Ok(()) => Ok(seq),
                            Err(e) => Err(same_failure(e)),
                        });
                    }
                    // After the verdicts: the waiters do not wait for the bookkeeping.
                    for wait in timed.drain(..) {
                        telemetry::write_stage_took("commit_queue", wait);
                        telemetry::write_stage_took("commit_write", write_took);
                    }
                }
            })
            .expect("spawning the commit thread");
        GroupCommitter { queue, committed_records, last_durable, fenced }
    }

    /// Why this committer takes no more writes, if a commit failed.
    pub fn fenced(&self) -> Option<&str> {
        self.fenced.get().map(String::as_str)
    }

    /// Stops taking writes for `reason` (storage failed outside a commit: a periodic WAL sync).
    pub fn fence(&self, reason: &str) {
        set_fence(&self.fenced, reason);
    }

    /// Makes `batch` durable (per the engine's durability) together with whatever else is waiting,
    /// appending `log` to this node's log; returns the record's sequence number in its partition.
    pub async fn commit(&self, batch: Batch, log: Option<LogAppend>) -> Result<Option<u64>, StorageError> {
        let (done, verdict) = oneshot::channel();
        self.queue
            .send(Pending { batch, log, done, queued: Some(Instant::now()) })
            .await
            .map_err(|_| StorageError::Internal("the commit thread has stopped".into()))?;
        verdict.await.map_err(|_| StorageError::Internal("the commit thread dropped a write".into()))?
    }

    /// [`GroupCommitter::commit`] for a thread that may block (never a runtime's reactor thread).
    pub fn commit_blocking(&self, batch: Batch, log: Option<LogAppend>) -> Result<Option<u64>, StorageError> {
        let (done, verdict) = oneshot::channel();
        self.queue
            .blocking_send(Pending { batch, log, done, queued: None })
            .map_err(|_| StorageError::Internal("the commit thread has stopped".into()))?;
        verdict.blocking_recv().map_err(|_| StorageError::Internal("the commit thread dropped a write".into()))?
    }

    /// The last position of this node's log of `partition` known durable.
    pub fn last_durable_seq(&self, partition: u16) -> u64 {
        self.last_durable[usize::from(partition)].load(Ordering::SeqCst)
    }

    /// Delta-log records this node has committed as origin (all partitions).
    pub fn committed_records(&self) -> u64 {
        self.committed_records.load(Ordering::Relaxed)
    }
}

/// Writes a group's batch, noting in `took` how long the engine's write (its fsync included) took:
/// the stage `commit_write` of each client write in the group.
fn timed_write(engine: &dyn Engine, joined: Batch, took: &mut Duration) -> Result<(), StorageError> {
    let started = Instant::now();
    let written = engine.write(joined);
    *took = started.elapsed();
    written
}

/// Fences the committer (the first reason stays), loudly.
fn set_fence(fence: &OnceLock<String>, reason: &str) {
    if fence.set(reason.to_string()).is_ok() {
        tracing::error!(error = %reason, "storage failed: this node takes no more writes until it is restarted");
        metrics::gauge!("meridian_storage_failed").set(1.0);
    }
}

/// Every waiter of a group gets the group's failure (`StorageError` is not `Clone`: it can hold
/// an `io::Error`; the committer only produces the text-carrying variants).
fn same_failure(e: &StorageError) -> StorageError {
    match e {
        StorageError::Fenced(why) => StorageError::Fenced(why.clone()),
        other => StorageError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_land_with_gap_free_positions_per_partition() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let origin = NodeId(7);
        let mut last = vec![0; usize::from(PARTITIONS)];
        last[3] = 10;
        let committer = GroupCommitter::start(engine.clone(), origin, last, 16, 8);
        let mut writers = Vec::new();
        for i in 0..100u32 {
            let committer = committer.clone();
            writers.push(tokio::spawn(async move {
                let mut batch = Batch::new();
                batch.put(Space::Data, i.to_be_bytes().to_vec(), b"v".to_vec());
                let log = LogAppend { partition: (i % 2 + 3) as u16, record: i.to_be_bytes().to_vec() };
                committer.commit(batch, Some(log)).await
            }));
        }
        let mut seqs = [Vec::new(), Vec::new()];
        for (i, writer) in writers.into_iter().enumerate() {
            let seq = writer.await.unwrap().unwrap().unwrap();
            seqs[i % 2].push(seq);
        }
        for s in &mut seqs {
            s.sort_unstable();
        }
        assert_eq!(seqs[0], (11..=60).collect::<Vec<_>>(), "partition 3 continues after 10");
        assert_eq!(seqs[1], (1..=50).collect::<Vec<_>>(), "partition 4 starts at 1");
        for i in 0..100u32 {
            assert!(engine.get(Space::Data, &i.to_be_bytes()).unwrap().is_some());
        }
        let vv = engine.get(Space::Meta, &layout::vv_key(3, origin)).unwrap().unwrap();
        assert_eq!(crate::storage::decode_u64_be(&vv).unwrap(), 60);
        assert_eq!(committer.committed_records(), 110);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fences_the_committer_and_no_position_is_reused() {
        let faulty = Arc::new(crate::storage::faulty::FaultyEngine::new(Arc::new(MemoryEngine::new())));
        let engine: Arc<dyn Engine> = faulty.clone();
        let committer = GroupCommitter::start(engine.clone(), NodeId(7), vec![0; usize::from(PARTITIONS)], 16, 8);
        let commit = |i: u8| {
            let committer = committer.clone();
            async move {
                let mut batch = Batch::new();
                batch.put(Space::Data, vec![i], b"v".to_vec());
                committer.commit(batch, Some(LogAppend { partition: 1, record: vec![i] })).await
            }
        };
        assert_eq!(commit(1).await.unwrap(), Some(1));
        assert!(committer.fenced().is_none());

        faulty.fail_writes(true);
        let failed = commit(2).await.unwrap_err();
        assert!(
            matches!(&failed, StorageError::Fenced(m) if m.contains("may have been applied")),
            "the failing write is told it may have been applied: {failed}"
        );
        assert!(committer.fenced().is_some_and(|why| why.contains("fsync failed")));

        // The disk "recovers": the committer still refuses, without touching the engine, so seq 2
        // (which the failed group may have put on disk) is never handed out again.
        faulty.fail_writes(false);
        let refused = commit(3).await.unwrap_err();
        assert!(matches!(&refused, StorageError::Fenced(m) if m.contains("nothing was written")), "{refused}");
        assert_eq!(faulty.writes(), 1, "only the first commit reached the engine");
        assert_eq!(faulty.refused(), 1);
        assert!(engine.get(Space::Data, &[3]).unwrap().is_none());
        assert_eq!(committer.last_durable_seq(1), 1);
    }
}
