//! The replica's reads and causal waits: a read at any level but `eventual` shows a state only once
//! this node holds everything the session saw and everything the state depends on.

use std::sync::Arc;
use std::time::Duration;

use meridian_client::proto::{CausalToken, Consistency, Key, ReplyBody};
use meridian_crdt::{CrdtError, CrdtType, Entry, Hlc, NodeId, Value};

use super::{internal, Replica};
use crate::error::Error;
use crate::layout;

/// How soon a causal read waiting on other origins first looks again (then twice as late each time,
/// up to [`CAUSAL_POLL_MAX`]).
const CAUSAL_POLL: Duration = Duration::from_millis(2);
/// The longest a waiting causal read goes without looking again.
const CAUSAL_POLL_MAX: Duration = Duration::from_millis(32);

impl Replica {
    /// Reads the key here: at every level but `eventual`, first waits (bounded) until the node has
    /// seen `token` and everything the key's state depends on. Returns the entry (if any, deleted or
    /// not) and the token after the read.
    pub async fn read_entry(
        self: &Arc<Self>,
        key: &Key,
        token: CausalToken,
        level: Consistency,
    ) -> Result<(Option<Entry>, CausalToken), Error> {
        let data_key = layout::data_key(key);
        let partition = layout::partition_of(&data_key);
        // Every level but `eventual` keeps the session's guarantees (on one node the only replica
        // is the quorum); `eventual` answers with whatever this replica has.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.limits.causal_wait_ms);
        if level != Consistency::Eventual {
            self.wait_until(&token, Some(partition), deadline).await?;
        }
        let mut after = token;
        // A point read is served from RocksDB's memtable, block cache or page cache in microseconds;
        // running it inline saves the two thread hand-offs a blocking-pool trip costs (writes, which
        // wait for fsync, do go to the blocking pool).
        let mut stored = self.load_stored(&data_key)?;
        if level != Consistency::Eventual {
            // The state may hold an effect whose cause (in this key, or anywhere in the partition)
            // has not arrived: a push that overtook an earlier one, a quorum write pushed straight
            // from another region. Never show it before its causes: wait until the state's own
            // dependencies are held here too, and read again (bounded by the same deadline).
            while let Some(deps) = stored.as_ref().map(|s| CausalToken(s.deps.clone())) {
                if self.causal_gap(&deps, Some(partition)).is_none() {
                    break;
                }
                self.wait_until(&deps, Some(partition), deadline).await?;
                stored = self.load_stored(&data_key)?;
            }
        }
        // The key's dependencies join the session's token: a session that saw an effect then waits
        // for its causes wherever it reads them.
        if let Some(stored) = &stored {
            after.0.merge(&stored.deps);
        }
        Ok((stored.map(|s| s.entry), after))
    }

    /// Waits (bounded by `limits.causal_wait_ms`) until this node holds every write `token` names
    /// that a read of `partition` could show: its own writes up to its entry (the frontier), and for
    /// every other origin, its writes *to that partition* up to its entry (safe times, see
    /// `meridian_replication::safe_time`). Without a partition (listings) only this node's own
    /// entry is checked.
    pub async fn wait_for(&self, token: &CausalToken, partition: Option<u16>) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.limits.causal_wait_ms);
        self.wait_until(token, partition, deadline).await
    }

    /// [`Replica::wait_for`] with an explicit deadline.
    async fn wait_until(
        &self,
        token: &CausalToken,
        partition: Option<u16>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Error> {
        let wait_ms = self.config.limits.causal_wait_ms;
        // Our own entry can only be ahead of our clock if the token was never issued by this node's
        // history (another cluster, a wiped data directory): waiting cannot help, so say so.
        let own = token.0.get(self.id);
        if own > self.newest_issued() && !self.resume_clock_to(own) {
            return Err(Error::BadRequest("the causal token names writes this node never made (a token from another cluster or a wiped data directory?); start a new session".into(),
            ));
        }
        let mut visible = self.visible.subscribe();
        let mut waited = false;
        let mut poll = CAUSAL_POLL;
        loop {
            let Some((origin, needed, held)) = self.causal_gap(token, partition) else {
                if waited {
                    metrics::counter!("meridian_causal_waits_total", "result" => "served").increment(1);
                }
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                metrics::counter!("meridian_causal_waits_total", "result" => "timeout").increment(1);
                let name = self.origin_name(origin);
                return Err(Error::CausalTimeout(format!(
                        "this node has not yet seen the session's dependencies after {wait_ms} ms: the writes of {name} up to HLC {needed} (wall {} ms); it holds them up to {held}, need {needed}; retry, or read at another consistency level",
                        Hlc::unpack(needed).wall_ms,
                    ),
                ));
            }
            waited = true;
            // Remote records and reports arrive without a signal; poll them (backing off, so many
            // waiting reads during an incident cost little), and wake at once when this node's own
            // frontier moves.
            let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + poll), visible.changed()).await;
            poll = (poll * 2).min(CAUSAL_POLL_MAX);
        }
    }

    /// The first entry of `token` this node cannot yet vouch for: (origin, needed, held).
    fn causal_gap(&self, token: &CausalToken, partition: Option<u16>) -> Option<(NodeId, u64, u64)> {
        for (origin, needed) in token.0.iter() {
            let held = if origin == self.id {
                self.visible.borrow().get(self.id)
            } else if let Some(p) = partition {
                self.known_safe(p, origin)
            } else {
                continue;
            };
            if held < needed {
                return Some((origin, needed, held));
            }
        }
        None
    }
}

/// The value a read shows of `entry`, checked against the type the client `expected`.
/// Materialising an automerge document replays its history: that runs off the reactor.
pub async fn value_of(entry: Option<Entry>, expected: Option<CrdtType>) -> Result<Option<Value>, Error> {
    if let (Some(entry), Some(expected)) = (&entry, expected) {
        if entry.crdt_type() != expected {
            return Err(Error::Crdt(CrdtError::WrongType { actual: entry.crdt_type(), requested: expected }));
        }
    }
    match entry {
        Some(entry) if entry.crdt_type() == CrdtType::Doc => {
            tokio::task::spawn_blocking(move || entry.read()).await.map_err(internal)?.map_err(Error::Crdt)
        }
        Some(entry) => entry.read().map_err(Error::Crdt),
        None => Ok(None),
    }
}

/// A document's changes since `since_heads` (empty for a missing or deleted key); off the reactor,
/// since materialising replays the document's history.
pub async fn doc_changes_of(entry: Option<Entry>, since_heads: Vec<String>) -> Result<ReplyBody, Error> {
    match entry.filter(Entry::exists) {
        None => Ok(ReplyBody::DocChanges { changes: Vec::new(), heads: Vec::new() }),
        Some(entry) => {
            tokio::task::spawn_blocking(move || doc_changes(&entry, &since_heads)).await.map_err(internal)?
        }
    }
}

fn doc_changes(entry: &Entry, since_heads: &[String]) -> Result<ReplyBody, Error> {
    match entry.body() {
        meridian_crdt::Body::Doc(doc) => {
            let doc = doc.materialize().map_err(Error::Crdt)?;
            let changes = doc.changes_since(since_heads).map_err(Error::Crdt)?;
            Ok(ReplyBody::DocChanges { changes, heads: doc.heads() })
        }
        other => Err(Error::Crdt(CrdtError::WrongType { actual: other.crdt_type(), requested: CrdtType::Doc })),
    }
}
