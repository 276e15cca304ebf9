//! The replica's write path: the causal precondition, then the write made durable under its key's
//! lock through the group committer (see the module docs of `crate::replica`).

use std::sync::Arc;
use std::time::Instant;

use meridian_client::proto::{CausalToken, Consistency, IdempotencyId, Key, Reply, ReplyBody};
use meridian_crdt::{CrdtError, CrdtType, DocCrdt, Entry, Mutation, Value, WriteContext};
use meridian_replication::antientropy::LogRecord as SyncRecord;
use meridian_replication::{Outcome, QuorumTracker, ReplicaCounts};
use tokio::sync::OwnedSemaphorePermit;

use super::clock::{now_ms, InFlightTs};
use super::{internal, Replica};
use crate::error::Error;
use crate::layout::{self, IdempotencyRecord, KeptIdempotency, LogRecord, Stored};
use crate::states::StateView;
use crate::storage::{Batch, Space};
use crate::store::commit::LogAppend;
use crate::telemetry;

/// A write's target change.
pub enum Change {
    /// Apply a mutation.
    Mutate(Mutation),
    /// Delete the key (reset what this replica has observed of it).
    Delete,
}

impl Change {
    /// Whether the change removes what the coordinator has observed (so a quorum-level one must
    /// first observe what a quorum holds).
    pub fn removes_observed(&self) -> bool {
        matches!(self, Change::Delete | Change::Mutate(Mutation::SetRemove { .. } | Mutation::MapRemove { .. }))
    }

    /// A fingerprint (the stable hash of the codec encoding) so a reused idempotency id naming a different
    /// operation is refused instead of replaying the other operation's reply.
    fn digest(&self) -> u64 {
        let bytes = match self {
            Change::Mutate(mutation) => meridian_crdt::codec::encode(mutation),
            Change::Delete => Vec::new(),
        };
        layout::stable_hash(&bytes)
    }
}

/// A write ready to commit, or already answered (an idempotent replay, a delete of nothing).
#[allow(clippy::large_enum_variant)] // One per write, moved once: boxing would cost an allocation per write.
enum Prepared {
    Done(Reply),
    Commit { batch: Batch, log: LogAppend, push: Push, reply: Reply, ts: InFlightTs, kept: Option<Kept> },
}

/// A write's idempotency record, as stored under its id (the replicas it is pushed to keep it too).
pub type Kept = (IdempotencyId, IdempotencyRecord);

/// What a write's fan-out ships to the other replicas (its log record minus the position, which the
/// committer assigns).
struct Push {
    data_key: Vec<u8>,
    delta: Vec<u8>,
    hlc: u64,
}

/// A write made durable here: its reply, its log record for the other replicas (none when it was
/// answered without one: an idempotent replay, a delete of nothing), and the request's in-flight
/// slot, held until the write has been acknowledged as its level requires.
pub struct Durable {
    /// The client's reply.
    pub reply: Reply,
    /// The record to push, with its partition.
    pub record: Option<(u16, SyncRecord)>,
    /// The write's idempotency record, to push with it (none for a write without an id, and for a
    /// replay: the replicas the first attempt reached keep it already).
    pub kept: Option<Kept>,
    /// The request's in-flight slot.
    pub permit: OwnedSemaphorePermit,
}

/// A write as [`Replica::write_to_completion`] leaves it.
type Completed = (Reply, Option<(u16, SyncRecord)>, Option<Kept>);

impl Replica {
    /// The level a request for `key` runs at (`requested`, else the namespace's default), once the
    /// key is known to be valid.
    pub fn level(&self, key: &Key, requested: Option<Consistency>) -> Result<Consistency, Error> {
        key.validate().map_err(|e| Error::BadRequest(e.to_string()))?;
        Ok(requested.unwrap_or_else(|| self.config.consistency_for(&key.namespace)))
    }

    /// A write on this node alone: made durable here, then acknowledged per `level` with this node
    /// as the only replica (every level is met once the write is durable).
    pub async fn write(
        self: &Arc<Self>,
        key: Key,
        change: Change,
        idempotency_id: Option<IdempotencyId>,
        token: CausalToken,
        level: Consistency,
        permit: OwnedSemaphorePermit,
    ) -> Result<Reply, Error> {
        let partition = layout::partition_of(&layout::data_key(&key));
        self.before_write(&token, level, partition).await?;
        let durable = self.write_durably(key, change, idempotency_id, token, permit).await?;
        let replicas = ReplicaCounts { local: 1, remote: 0 };
        let mut tracker = QuorumTracker::new(level, replicas);
        tracker.record(true, true);
        match tracker.outcome() {
            Outcome::Satisfied => Ok(durable.reply),
            Outcome::Pending | Outcome::Unavailable { .. } => Err(Error::QuorumUnavailable(format!(
                "{level} needs more replicas than this node has answering: 1 of {replicas:?}"
            ))),
        }
    }

    /// What must hold before a write at `level` to `partition` joins in: at `causal`, monotonic
    /// writes and writes-follow-reads for the key itself (its state here must include what the
    /// session saw of it, so a register's later write wins); at every level, the token is screened
    /// (`Replica::screen_token`) and the write's timestamp follows the session's.
    pub async fn before_write(&self, token: &CausalToken, level: Consistency, partition: u16) -> Result<(), Error> {
        self.screen_token(token)?;
        if level == Consistency::Causal {
            self.wait_for(token, Some(partition)).await?;
        }
        self.observe_token(token);
        Ok(())
    }

    /// Makes a write durable here. It runs as its own task: if the request times out (its future is
    /// dropped), the write still finishes — its log position is released and its key lock held until
    /// it is durable — instead of being cut off between "queued for commit" and "committed".
    pub async fn write_durably(
        self: &Arc<Self>,
        key: Key,
        change: Change,
        idempotency_id: Option<IdempotencyId>,
        token: CausalToken,
        permit: OwnedSemaphorePermit,
    ) -> Result<Durable, Error> {
        let replica = self.clone();
        let (written, permit) = self
            .writes
            .spawn(async move { (replica.write_to_completion(key, change, idempotency_id, token).await, permit) })
            .await
            .map_err(internal)?;
        let (reply, record, kept) = written?;
        Ok(Durable { reply, record, kept, permit })
    }

    async fn write_to_completion(
        self: Arc<Self>,
        key: Key,
        change: Change,
        idempotency_id: Option<IdempotencyId>,
        token: CausalToken,
    ) -> Result<Completed, Error> {
        let data_key = layout::data_key(&key);
        // Held until the write is durable, so the next write of this key reads the state this one made.
        let waited = Instant::now();
        let _guard = self.writer.lock(&data_key).await;
        telemetry::write_stage("lock", waited);
        let preparing = Instant::now();
        // A document's change is made on the document (materialised from its history on a cache
        // miss), and a delete may be one of a document or load a whole collection: keep those off
        // the reactor threads.
        let costly =
            matches!(&change, Change::Delete) || matches!(&change, Change::Mutate(m) if m.crdt_type() == CrdtType::Doc);
        let prepared = if costly {
            let replica = self.clone();
            tokio::task::spawn_blocking(move || replica.prepare_write(key, data_key, change, idempotency_id, token))
                .await
                .map_err(internal)??
        } else {
            self.prepare_write(key, data_key, change, idempotency_id, token)?
        };
        telemetry::write_stage("prepare", preparing);
        match prepared {
            Prepared::Done(reply) => Ok((reply, None, None)),
            Prepared::Commit { batch, log, push, reply, ts, kept } => {
                let partition = log.partition;
                let committing = Instant::now();
                let committed = self.writer.committer().commit(batch, Some(log)).await;
                telemetry::write_stage("commit", committing);
                if committed.is_err() {
                    // Under `relaxed`, writes acknowledged before this one may be gone with it.
                    self.require_new_epoch();
                }
                // Durable (or failed): the timestamp leaves the in-flight set, the frontier moves.
                drop(ts);
                let seq =
                    committed.map_err(Error::Storage)?.ok_or_else(|| internal("the committer gave no log position"))?;
                let record = SyncRecord { origin: self.id, seq, key: push.data_key, delta: push.delta, hlc: push.hlc };
                Ok((reply, Some((partition, record)), kept))
            }
        }
    }

    /// The recorded reply of an idempotency id already used, if any; refuses an id reused for
    /// another operation.
    fn replay(&self, id: IdempotencyId, key: &Key, request_digest: u64) -> Result<Option<Reply>, Error> {
        let Some(bytes) = self.engine.get(Space::Idempotency, &id.0.to_be_bytes()).map_err(internal)? else {
            return Ok(None);
        };
        let IdempotencyRecord::V1 { key: first_key, request_digest: first_digest, reply, .. } =
            layout::decode(&bytes).map_err(internal)?;
        if first_key != *key || first_digest != request_digest {
            // (Not naming the first request's key: it may be another client's.)
            return Err(Error::BadRequest(
                "idempotency id already used for another operation; use a fresh id per write".into(),
            ));
        }
        metrics::counter!("meridian_idempotent_replays_total").increment(1);
        Ok(Some(reply))
    }

    /// Everything of a write but making it durable: the idempotency check, the delta, the new state,
    /// the log position and the batch. Runs under the key's lock.
    fn prepare_write(
        self: &Arc<Self>,
        key: Key,
        data_key: Vec<u8>,
        change: Change,
        idempotency_id: Option<IdempotencyId>,
        mut token: CausalToken,
    ) -> Result<Prepared, Error> {
        let request_digest = change.digest();
        if let Some(id) = idempotency_id {
            if let Some(reply) = self.replay(id, &key, request_digest)? {
                return Ok(Prepared::Done(reply));
            }
        }
        let engine = self.engine.as_ref();
        // A set's member changes read only the members they name, a map's only the field (see
        // `crate::states`).
        // A document's changes are named by their hashes: those a client sends are looked up
        // (whether the document holds them decides what `client_delta` accepts).
        let change_hashes = match &change {
            Change::Mutate(Mutation::DocApply { changes }) => {
                match DocCrdt::hashes_of(changes, meridian_crdt::codec::ABSOLUTE_MAX_BYTES) {
                    Ok(hashes) => hashes,
                    // The key's type is checked first, as for any other mutation: changes that
                    // pass the node's size check but do not parse, sent to a key holding another
                    // type, are refused as a wrong type (a bad chunk header is refused earlier,
                    // with the size check, as a bad request).
                    Err(malformed) => return Err(wrong_type_or(engine_type(self, &data_key)?, malformed)),
                }
            }
            _ => Vec::new(),
        };
        let parts: Vec<&[u8]> = match &change {
            Change::Mutate(Mutation::SetAdd { members } | Mutation::SetRemove { members }) => {
                members.iter().map(Vec::as_slice).collect()
            }
            Change::Mutate(Mutation::MapUpdate { field, .. } | Mutation::MapRemove { field }) => vec![field.as_bytes()],
            _ => change_hashes.iter().map(|hash| hash.as_slice()).collect(),
        };
        let mut view = StateView::load(engine, &data_key, parts).map_err(super::state_error)?;
        if let Some(view) = &mut view {
            // A delete removes every element it observed; a document's change is computed from the
            // whole document (cached, usually).
            let mutation = match &change {
                Change::Mutate(mutation) => Some(mutation),
                Change::Delete => None,
            };
            view.ready_for_local(engine, mutation).map_err(super::state_error)?;
        }
        let state = view.as_ref().map(|view| &view.stored().entry);
        if let Some(reply) = nothing_to_change(&change, state, &token)? {
            return Ok(Prepared::Done(reply));
        }
        let size_before = view.as_ref().map_or(0, StateView::read_len);
        let ts = self.issue_ts();
        let write = WriteContext { node: self.id, ts: ts.ts };
        let delta = match (&change, state) {
            (Change::Mutate(mutation), _) => Entry::mutation_delta(state, mutation, &write).map_err(Error::Crdt)?,
            (Change::Delete, Some(entry)) => entry.reset_delta(&write).map_err(Error::Crdt)?,
            (Change::Delete, None) => unreachable!("nothing_to_change answers a delete of nothing"),
        };
        // The write depends on everything its session has seen, and on itself — as far as this node
        // knows the origins: an entry naming no member is not recorded (see `recordable_deps`).
        token.0.observe(self.id, ts.ts.pack());
        let write_deps = self.recordable_deps(&token.0);
        let delta = Stored { entry: delta, deps: write_deps };
        let mut view = view.unwrap_or_else(|| StateView::absent(&data_key, &delta));
        view.join(engine, &delta).map_err(super::state_error)?;
        let is_delete = matches!(change, Change::Delete);
        let body = match change {
            Change::Delete => ReplyBody::Deleted { existed: true },
            Change::Mutate(Mutation::CounterAdd { .. }) => match view.stored().entry.read() {
                Ok(Some(Value::Counter(value))) => ReplyBody::Written { counter: Some(value) },
                _ => ReplyBody::Written { counter: None },
            },
            Change::Mutate(_) => ReplyBody::Written { counter: None },
        };
        let mut batch = Batch::default();
        let size_after = view.write(engine, &mut batch).map_err(super::state_error)?;
        let max_key = self.config.limits.max_key_bytes;
        // A delete may grow a key (a tombstone records what it removed) but must always be possible,
        // and so must a write that does not grow it: a key merged beyond the cap from concurrent
        // growth elsewhere (see `LimitsConfig::max_key_bytes`) can still be shrunk.
        if size_after > max_key && size_after > size_before && !is_delete {
            return Err(Error::TooLarge(format!(
                "the key would grow to {size_after} bytes; a write may leave a key with at most {max_key} (limits.max_key_bytes)"
            )));
        }
        let Stored { entry: delta, deps: write_deps } = delta;

        let partition = layout::partition_of(&data_key);
        let reply = Reply { causal_token: token, body };
        // The idempotency record goes into the write's log record (and its delta as shipped), so
        // every replica that applies the write keeps it, however the write reaches it. Not while
        // the node is pinned below protocol version 5: a release of version 4 reads neither format
        // (its log, hints and backups must stay readable to it for a rollback).
        let kept = idempotency_id.map(|id| {
            let record =
                IdempotencyRecord::V1 { created_ms: now_ms(), key: key.clone(), request_digest, reply: reply.clone() };
            (id, record)
        });
        let carried = kept
            .as_ref()
            .filter(|_| self.config.peer.max_protocol_version >= layout::IDEMPOTENT_RECORDS_VERSION)
            .map(|(id, record)| KeptIdempotency { id: id.0, record: record.clone() });
        let push = Push {
            data_key: data_key.clone(),
            delta: layout::encode_delta(&Stored { entry: delta.clone(), deps: write_deps.clone() }, carried.as_ref()),
            hlc: ts.ts.pack(),
        };
        let record = match carried {
            Some(kept) => {
                layout::encode(&LogRecord::V3 { key, delta, ts: ts.ts, deps: write_deps, kept: Box::new(kept) })
            }
            None => layout::encode(&LogRecord::V2 { key, delta, ts: ts.ts, deps: write_deps }),
        };
        if let Some((id, record)) = &kept {
            batch.put(Space::Idempotency, id.0.to_be_bytes().to_vec(), layout::encode(record));
        }
        Ok(Prepared::Commit { batch, log: LogAppend { partition, record }, push, reply, ts, kept })
    }
}

/// The type of the state `data_key` holds here, if any (its header only, for a collection).
fn engine_type(replica: &Replica, data_key: &[u8]) -> Result<Option<CrdtType>, Error> {
    let view = StateView::load(replica.engine.as_ref(), data_key, Vec::new()).map_err(super::state_error)?;
    Ok(view.map(|view| view.stored().entry.crdt_type()))
}

/// `WrongType` for a document change to a key holding another type; `malformed` otherwise.
fn wrong_type_or(actual: Option<CrdtType>, malformed: CrdtError) -> Error {
    match actual {
        Some(actual) if actual != CrdtType::Doc => {
            Error::Crdt(CrdtError::WrongType { actual, requested: CrdtType::Doc })
        }
        _ => Error::Crdt(malformed),
    }
}

/// The reply of a change that changes nothing (a delete or a remove on a key that does not exist:
/// it must not create it), if it is one.
fn nothing_to_change(change: &Change, state: Option<&Entry>, token: &CausalToken) -> Result<Option<Reply>, Error> {
    let exists = state.is_some_and(Entry::exists);
    match change {
        Change::Delete if !exists => {
            Ok(Some(Reply { causal_token: token.clone(), body: ReplyBody::Deleted { existed: false } }))
        }
        Change::Mutate(mutation @ (Mutation::SetRemove { .. } | Mutation::MapRemove { .. })) if !exists => {
            if let Some(entry) = state {
                let requested = mutation.crdt_type();
                if entry.crdt_type() != requested {
                    return Err(Error::Crdt(CrdtError::WrongType { actual: entry.crdt_type(), requested }));
                }
            }
            Ok(Some(Reply { causal_token: token.clone(), body: ReplyBody::Written { counter: None } }))
        }
        _ => Ok(None),
    }
}
