//! The replica's reads and causal waits: a read at any level but `eventual` shows a state only once
//! this node holds everything the session saw and everything the state depends on.

use std::sync::Arc;
use std::time::Duration;

use meridian_client::proto::{CausalToken, Consistency, Key, MapPart, MapPartReply, ReplyBody, SetPart, SetPartReply};
use meridian_crdt::{CrdtError, CrdtType, Entry, Hlc, NodeId, Value};

use super::{internal, Replica};
use crate::error::Error;
use crate::layout;
use crate::states;

/// Most members or fields one page of a set or a map carries (`SetPart::Page`, `MapPart::Page`),
/// whatever the request asks.
pub const MAX_PAGE_ITEMS: usize = 10_000;

/// A set or a map with more parts than this is assembled (`block_in_place`) and turned into a value
/// (the blocking pool) without stalling the other tasks of the reactor thread that serves the read.
pub const INLINE_PARTS: u64 = 1_000;

/// What a causal read waits on: the dependencies of the state it shows.
trait HasDeps {
    fn deps(&self) -> &meridian_crdt::VersionVector;
}

impl HasDeps for layout::Stored {
    fn deps(&self) -> &meridian_crdt::VersionVector {
        &self.deps
    }
}

impl<R> HasDeps for states::PartRead<R> {
    fn deps(&self) -> &meridian_crdt::VersionVector {
        &self.header.deps
    }
}

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
        let load = |data_key: &[u8]| self.load_stored_for_read(data_key);
        let (stored, after) = self.read_causally(key, token, level, load).await?;
        Ok((stored.map(|s| s.entry), after))
    }

    /// The key's state for a read of its value ([`states::load_for_read`]: a set or map whole, a
    /// document as its header and the document materialised, usually cached). A document, and a
    /// collection of more than [`INLINE_PARTS`] parts, is read under `block_in_place` (tens of
    /// milliseconds at 100,000 members, or a document's history replayed): the reactor thread hands its other
    /// tasks to another worker first instead of stalling them. Anything smaller is a point read of
    /// microseconds, served inline.
    fn load_stored_for_read(&self, data_key: &[u8]) -> Result<Option<layout::Stored>, Error> {
        match states::peek(self.engine.as_ref(), data_key).map_err(super::state_error)? {
            states::Peek::Nothing => Ok(None),
            states::Peek::Whole(stored) => Ok(Some(stored)),
            // A document may be materialised (a cache miss replays its history).
            states::Peek::Split { parts, doc } if doc || parts > INLINE_PARTS => {
                off_the_reactor(|| self.load_for_read(data_key))
            }
            states::Peek::Split { .. } => self.load_for_read(data_key),
        }
    }

    /// A key's state for a read of its value ([`states::load_for_read`]: a document from the cache).
    fn load_for_read(&self, data_key: &[u8]) -> Result<Option<layout::Stored>, Error> {
        states::load_for_read(self.engine.as_ref(), data_key).map_err(super::state_error)
    }

    /// Reads part of a set here (membership, count, a page: see [`states::read_set_part`]) with the
    /// guarantees of [`Replica::read_entry`]; refuses a key of another type. A missing or deleted
    /// key reads as an empty set.
    pub async fn read_set_part(
        self: &Arc<Self>,
        key: &Key,
        part: &SetPart,
        token: CausalToken,
        level: Consistency,
    ) -> Result<(SetPartReply, CausalToken), Error> {
        let budget = self.page_budget();
        let read = |engine: &dyn crate::storage::Engine, data_key: &[u8]| {
            states::read_set_part(engine, data_key, part, budget)
        };
        let empty = || Ok(states::part_of_set(&Default::default(), false, part, budget));
        self.read_part(key, token, level, CrdtType::Set, read, empty).await
    }

    /// Reads part of a map here (some fields, the count, a page: see [`states::read_map_part`]) as
    /// [`Replica::read_set_part`] reads a set's.
    pub async fn read_map_part(
        self: &Arc<Self>,
        key: &Key,
        part: &MapPart,
        token: CausalToken,
        level: Consistency,
    ) -> Result<(MapPartReply, CausalToken), Error> {
        let budget = self.page_budget();
        let read = |engine: &dyn crate::storage::Engine, data_key: &[u8]| {
            states::read_map_part(engine, data_key, part, budget)
        };
        let empty = || states::part_of_map(&Default::default(), false, part, budget).map_err(Error::Crdt);
        self.read_part(key, token, level, CrdtType::Map, read, empty).await
    }

    /// A part read of a collection of type `requested` through `read`, with the causal waits of a
    /// whole read; `empty` answers for a key that holds nothing.
    async fn read_part<R>(
        self: &Arc<Self>,
        key: &Key,
        token: CausalToken,
        level: Consistency,
        requested: CrdtType,
        read: impl Fn(&dyn crate::storage::Engine, &[u8]) -> Result<Option<states::PartRead<R>>, states::StateError>,
        empty: impl FnOnce() -> Result<R, Error>,
    ) -> Result<(R, CausalToken), Error> {
        let engine = self.engine.as_ref();
        let load = |data_key: &[u8]| read(engine, data_key).map_err(super::state_error);
        let (found, after) = self.read_causally(key, token, level, load).await?;
        let reply = match found {
            None => empty()?,
            Some(states::PartRead { reply: Some(reply), .. }) => reply,
            Some(states::PartRead { header, reply: None }) => {
                return Err(Error::Crdt(CrdtError::WrongType { actual: header.entry.crdt_type(), requested }))
            }
        };
        Ok((reply, after))
    }

    /// How much one page of a set's members or a map's fields may carry: half a reply frame.
    pub fn page_budget(&self) -> states::PageBudget {
        states::PageBudget { max_items: MAX_PAGE_ITEMS, max_bytes: self.config.limits.max_frame_bytes / 2 }
    }

    /// A read of `key` through `load` (the key's state, or a part of it with its state's
    /// dependencies): at every level but `eventual`, waits (bounded) until the node has seen `token`
    /// and everything the state depends on, reading again after each wait. Returns what `load` gave
    /// and the token after the read.
    async fn read_causally<T: HasDeps>(
        self: &Arc<Self>,
        key: &Key,
        token: CausalToken,
        level: Consistency,
        load: impl Fn(&[u8]) -> Result<Option<T>, Error>,
    ) -> Result<(Option<T>, CausalToken), Error> {
        let data_key = layout::data_key(key);
        let partition = layout::partition_of(&data_key);
        // Every level but `eventual` keeps the session's guarantees (on one node the only replica
        // is the quorum); `eventual` answers with whatever this replica has.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.limits.causal_wait_ms);
        if level != Consistency::Eventual {
            self.screen_token(&token)?;
            self.wait_until(&token, Some(partition), deadline).await?;
        }
        let mut after = token;
        // A point read is served from RocksDB's memtable, block cache or page cache in microseconds;
        // running it inline saves the two thread hand-offs a blocking-pool trip costs (writes, which
        // wait for fsync, do go to the blocking pool).
        let mut found = load(&data_key)?;
        if level != Consistency::Eventual {
            // The state may hold an effect whose cause (in this key, or anywhere in the partition)
            // has not arrived: a push that overtook an earlier one, a quorum write pushed straight
            // from another region. Never show it before its causes: wait until the state's own
            // dependencies are held here too, and read again (bounded by the same deadline).
            // (On a node alone, an origin it does not know can only be in a state written before
            // tokens were screened: no wait can cover it, so it is not waited for.)
            let waited_deps = |deps: &meridian_crdt::VersionVector| {
                CausalToken(if self.runs_alone() { self.recordable_deps(deps) } else { deps.clone() })
            };
            while let Some(deps) = found.as_ref().map(|f| waited_deps(f.deps())) {
                if self.causal_gap(&deps, Some(partition)).is_none() {
                    break;
                }
                self.wait_until(&deps, Some(partition), deadline).await?;
                found = load(&data_key)?;
            }
        }
        // The key's dependencies join the session's token: a session that saw an effect then waits
        // for its causes wherever it reads them.
        if let Some(found) = &found {
            after.0.merge(found.deps());
        }
        Ok((found, after))
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

    /// Checks a session's causal token before a request relies on it (a write records it into the
    /// key's dependencies; a read at any level but `eventual` waits for it). Refused with
    /// `bad_request`, since no wait can ever cover them: an entry for this node beyond anything it
    /// issued (past the drift bound), an entry of another origin more than `max_clock_drift_ms`
    /// ahead of this node's clock (no node of the cluster can have issued it), and on a node that
    /// runs alone, any origin but itself (a token from another cluster).
    ///
    /// An origin a node in a region does not know passes: a session may carry a write of a member
    /// whose announcement has not reached this node yet. Reads wait for it (bounded, as for any
    /// origin); writes do not record it ([`Replica::recordable_deps`]).
    pub(super) fn screen_token(&self, token: &CausalToken) -> Result<(), Error> {
        let now = super::clock::skewed_now_ms(self.config.clock_offset_ms);
        let horizon = now.saturating_add(self.config.max_clock_drift_ms);
        for (origin, packed) in token.0.iter() {
            if origin == self.id {
                if packed > self.newest_issued() && !self.resume_clock_to(packed) {
                    return Err(Error::BadRequest(
                        "the causal token names writes this node never made (a token from another cluster or a wiped data directory?); start a new session".into(),
                    ));
                }
            } else if Hlc::unpack(packed).wall_ms > horizon {
                metrics::counter!("meridian_causal_tokens_refused_total", "reason" => "future").increment(1);
                return Err(Error::BadRequest(format!(
                    "the causal token names a write of origin {origin} timestamped {} ms ahead of this node's clock (max_clock_drift_ms is {}); no node of this cluster issued it; start a new session",
                    Hlc::unpack(packed).wall_ms - now,
                    self.config.max_clock_drift_ms
                )));
            } else if self.runs_alone() {
                metrics::counter!("meridian_causal_tokens_refused_total", "reason" => "unknown_origin").increment(1);
                return Err(Error::BadRequest(format!(
                    "the causal token names origin {origin}, which is not this node, and this node runs alone (a token from another cluster?); start a new session"
                )));
            }
        }
        Ok(())
    }

    /// The entries of `deps` a key's state may depend on here: those of origins this node knows.
    /// A write records only these into the key's dependency vector (and the record it ships), so a
    /// token naming an origin that does not exist cannot make every later causal read of the key
    /// wait for it; the session's own token keeps every entry it sent.
    pub(super) fn recordable_deps(&self, deps: &meridian_crdt::VersionVector) -> meridian_crdt::VersionVector {
        let kept: meridian_crdt::VersionVector = deps.iter().filter(|(origin, _)| self.knows_origin(*origin)).collect();
        if kept.len() < deps.len() {
            metrics::counter!("meridian_causal_token_entries_dropped_total")
                .increment((deps.len() - kept.len()) as u64);
        }
        kept
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
                let name = if self.knows_origin(origin) {
                    self.origin_name(origin)
                } else {
                    format!("{origin} (not a member this node knows of)")
                };
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
/// Materialising a document, or listing a large collection, runs off the reactor (`costly_to_read`).
pub async fn value_of(entry: Option<Entry>, expected: Option<CrdtType>) -> Result<Option<Value>, Error> {
    if let (Some(entry), Some(expected)) = (&entry, expected) {
        if entry.crdt_type() != expected {
            return Err(Error::Crdt(CrdtError::WrongType { actual: entry.crdt_type(), requested: expected }));
        }
    }
    match entry {
        Some(entry) if costly_to_read(&entry) => {
            tokio::task::spawn_blocking(move || entry.read()).await.map_err(internal)?.map_err(Error::Crdt)
        }
        Some(entry) => entry.read().map_err(Error::Crdt),
        None => Ok(None),
    }
}

/// Runs `work` (blocking, long) where it does not stall other tasks: under `block_in_place` on a
/// multi-threaded runtime (the node's); inline on a current-thread one (some tests), which has no
/// other worker to hand its tasks to.
fn off_the_reactor<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Whether turning `entry` into a value is work for the blocking pool: a document (materialising
/// it may replay its history) or a collection of more than [`INLINE_PARTS`] parts.
fn costly_to_read(entry: &Entry) -> bool {
    match entry.body() {
        meridian_crdt::Body::Doc(_) => true,
        meridian_crdt::Body::Set(set) => set.len() as u64 > INLINE_PARTS,
        meridian_crdt::Body::Map(map) => map.len() as u64 > INLINE_PARTS,
        _ => false,
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

#[cfg(test)]
mod tests {
    use super::off_the_reactor;

    /// Long work runs under `block_in_place` on the node's multi-threaded runtime, and inline where
    /// that would panic: on a current-thread runtime and outside any runtime.
    #[test]
    fn long_work_runs_on_every_kind_of_runtime() {
        let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        assert_eq!(multi.block_on(async { tokio::spawn(async { off_the_reactor(|| 7) }).await.unwrap() }), 7);
        let current = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(current.block_on(async { off_the_reactor(|| 8) }), 8);
        assert_eq!(off_the_reactor(|| 9), 9);
    }
}
