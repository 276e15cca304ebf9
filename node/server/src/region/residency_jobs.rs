//! Acting on rule changes: purges (a rule now excludes this region) and backfills (a rule now
//! includes it), one at a time, with progress in `meridian residency list` and entries in the audit
//! log.
//!
//! **Purge.** Runs after the new rules are stored, so every check already refuses the keys; then it
//! removes what is here: the keys' states (under their key locks, so an in-flight write cannot
//! resurrect one), their delta-log records (rewritten as redactions: the positions stay, so version
//! vectors stay gap-free), their hints (redacted in place) and their idempotency records; then it
//! flushes and compacts every RocksDB file so the bytes are gone from the WAL and SSTs too
//! ([`Engine::compact_all`](crate::storage::Engine::compact_all)). Idempotent: a node restarted
//! before every change of its rules version completed purges every rule excluding its region (and
//! backfills every rule including it) again.
//!
//! **Backfill.** For every partition this node replicates, it asks a replica in a region that held
//! the keys (`PrefixStates`, paged) for the states of the rule's keys and joins them in. Each answer
//! carries the source's vector of the partition, read before its states; it becomes this node's
//! *coverage* of the rule there (`Residency::note_covered`), and a partition is done once it covers
//! every redaction of the rule in this node's own log (writes that reached this region only as
//! redactions while it was excluded). Redactions refused for want of coverage ask for the same
//! backfill of one partition (`backfill_wanted`). After the backfill, anti-entropy and pushes carry
//! the keys here in full like any other.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;

use meridian_client::proto::Rule;
use meridian_replication::antientropy::{KeyState, LogRecord as SyncRecord, PartitionId, SyncStore as _};
use tokio_util::sync::CancellationToken;

use crate::layout::{self, IdempotencyRecord, LogContent, LogRecord, PARTITIONS};
use crate::peer::protocol::{PeerCallError, PeerMessageV1, PeerRefusal, PeerReplyV1};
use crate::region::cluster::Cluster;
use crate::region::coordinator::Coordinator;
use crate::replica::Replica;
use crate::residency::{for_each_page, rule_data_prefix, Job};
use crate::storage::{Batch, Space, StorageError};
use crate::store::sync_store::{EngineSyncStore, SyncStoreError};

/// Keys per `PrefixStates` page.
const PAGE_KEYS: u32 = 256;
/// Rows per scan page and per purge batch.
const SCAN_PAGE: usize = 1024;
/// How long a purge waits for hint replay to deliver hints owed to allowed regions.
const HINT_DRAIN: Duration = Duration::from_secs(15);
/// Partitions a backfill brings at once.
const BACKFILL_CONCURRENCY: usize = 16;
/// How long a backfill keeps asking for sources that cover this node's redactions.
const BACKFILL_PATIENCE: Duration = Duration::from_secs(60);

/// Runs queued purges and backfills until shutdown.
pub async fn run(coordinator: Arc<Coordinator>, store: EngineSyncStore, shutdown: CancellationToken) {
    let node = coordinator.replica().clone();
    let residency = node.residency().clone();
    let mut last_wanted = tokio::time::Instant::now();
    loop {
        while let Some(job) = residency.next_change() {
            if shutdown.is_cancelled() {
                return;
            }
            match job.progress.kind.as_str() {
                "purge" => {
                    let (node, cluster, job2) = (node.clone(), coordinator.cluster().clone(), job.clone());
                    match tokio::task::spawn_blocking(move || purge(&node, Some(&cluster), &job2)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(rule = job.rule.id, error = %e, "residency purge failed; retrying");
                            if shutdown.run_until_cancelled(tokio::time::sleep(Duration::from_secs(2))).await.is_none()
                            {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "residency purge panicked"),
                    }
                }
                _ => backfill(&node, &coordinator, &store, &job, &shutdown).await,
            }
        }
        // Refused redactions ask for backfills; anti-entropy refuses the same one every round until
        // a backfill covers it, so these run at most every 2 s.
        if residency.has_wanted() {
            let wait = Duration::from_secs(2).saturating_sub(last_wanted.elapsed());
            if shutdown.run_until_cancelled(tokio::time::sleep(wait)).await.is_none() {
                return;
            }
            backfill_wanted(&node, &coordinator, &store).await;
            last_wanted = tokio::time::Instant::now();
        }
        // Everything queued so far completed: a restart need not redo it.
        if let Err(e) = residency.mark_applied() {
            tracing::warn!(error = %e, "could not record the residency changes as applied");
        }
        if shutdown.run_until_cancelled(residency.wake.notified()).await.is_none() {
            return;
        }
    }
}

/// A state that could not be read, as the storage failure this module reports.
fn state_storage_error(e: crate::states::StateError) -> StorageError {
    match e {
        crate::states::StateError::Storage(e) => e,
        other => StorageError::Corrupt(other.to_string()),
    }
}

/// Removes from this node every key `job.rule` covers that its region may not hold (see the module
/// docs), then compacts storage.
pub(crate) fn purge(node: &Replica, cluster: Option<&Cluster>, job: &Job) -> Result<(), StorageError> {
    let residency = node.residency();
    let engine = node.engine();
    let forbidden = |data_key: &[u8]| !residency.allowed_here(data_key);
    residency.set_progress(job, 0, 0, false);
    // 1. States, under the keys' locks.
    let prefix = rule_data_prefix(&job.rule);
    let end = layout::prefix_end(&prefix);
    let mut keys_purged = 0u64;
    for_each_page(engine.as_ref(), Space::Data, &prefix, end.as_deref(), |page| {
        let doomed: Vec<Vec<u8>> = page.into_iter().map(|(k, _)| k).filter(|k| forbidden(k)).collect();
        if !doomed.is_empty() {
            let locks: Vec<&[u8]> = doomed.iter().map(Vec::as_slice).collect();
            node.writer().apply_under_key_locks(&locks, || -> Result<Batch, StorageError> {
                let mut batch = Batch::new();
                for key in &doomed {
                    // With a set's element records.
                    crate::states::delete(engine.as_ref(), &mut batch, key).map_err(state_storage_error)?;
                }
                Ok(batch)
            })?;
            keys_purged += doomed.len() as u64;
            residency.set_progress(job, keys_purged, 0, false);
        }
        Ok(())
    })?;
    // 2. Delta-log records: rewritten as redactions (positions and timestamps stay).
    let mut log_redacted = 0u64;
    rewrite_space(engine.as_ref(), Space::Log, |value| {
        let record = layout::decode::<LogRecord>(value).ok()?;
        let (content, ts) = record.into_parts();
        match content {
            LogContent::Write(key, ..) if forbidden(&layout::data_key(&key)) => {
                log_redacted += 1;
                Some(Some(layout::encode(&LogRecord::Redacted { ts, rule: job.rule.id })))
            }
            _ => None,
        }
    })?;
    // 3. Hints: a hint of a forbidden key for a node of a region that may hold it is a write that
    //    region has not got yet; purging it now would lose it there. Give hint replay a bounded
    //    time to deliver those first, then redact whatever is left (the target still needs the
    //    position).
    let deadline = std::time::Instant::now() + HINT_DRAIN;
    loop {
        let owed = hints_owed_to_allowed(node, cluster, &forbidden)?;
        if owed == 0 || std::time::Instant::now() >= deadline {
            if owed > 0 {
                residency.audit().record_always(
                    "purge",
                    &format!(
                        "rule {}: {owed} hints for allowed regions not delivered within {HINT_DRAIN:?}: redacted",
                        job.rule.id
                    ),
                );
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut hints_redacted = 0u64;
    rewrite_space(engine.as_ref(), Space::Hints, |value| {
        let record = meridian_crdt::codec::decode::<SyncRecord>(value, layout::MAX_HINT_BYTES).ok()?;
        if record.key.is_empty() || !forbidden(&record.key) {
            return None;
        }
        hints_redacted += 1;
        let redacted = crate::residency::redacted(record.origin, record.seq, record.hlc, job.rule.id);
        Some(Some(meridian_crdt::codec::encode(&redacted)))
    })?;
    // 4. Idempotency records name their key and hold its reply: deleted.
    let mut idempotency_deleted = 0u64;
    rewrite_space(engine.as_ref(), Space::Idempotency, |value| {
        let IdempotencyRecord::V1 { key, .. } = layout::decode::<IdempotencyRecord>(value).ok()?;
        if !forbidden(&layout::data_key(&key)) {
            return None;
        }
        idempotency_deleted += 1;
        Some(None)
    })?;
    // 5. Out of the files: flush (the WAL holding the old writes is dropped) and compact.
    engine.compact_all()?;
    residency.note_purged(keys_purged);
    residency.audit().record_always(
        "purge",
        &format!(
            "rule {}: rules version {}: {keys_purged} keys deleted, {log_redacted} log records and {hints_redacted} hints \
             redacted, {idempotency_deleted} idempotency records deleted; storage flushed and compacted",
            job.rule.id,
            job.progress.version
        ),
    );
    residency.set_progress(job, keys_purged, keys_purged, true);
    Ok(())
}

/// Hints this node holds of keys `forbidden` here for nodes of regions that may hold them.
fn hints_owed_to_allowed(
    node: &Replica,
    cluster: Option<&Cluster>,
    forbidden: &dyn Fn(&[u8]) -> bool,
) -> Result<u64, StorageError> {
    let Some(cluster) = cluster else { return Ok(0) };
    let residency = node.residency();
    let mut owed = 0;
    for_each_page(node.engine().as_ref(), Space::Hints, &[], None, |page| {
        for (key, value) in &page {
            let Ok(record) = meridian_crdt::codec::decode::<SyncRecord>(value, layout::MAX_HINT_BYTES) else {
                continue;
            };
            if record.key.is_empty() || !forbidden(&record.key) {
                continue;
            }
            let target = key
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(|b| meridian_crdt::NodeId(u64::from_be_bytes(b)));
            if target
                .and_then(|t| cluster.region_of(t))
                .is_some_and(|region| residency.allowed_in(&region, &record.key))
            {
                owed += 1;
            }
        }
        Ok(())
    })?;
    Ok(owed)
}

/// Scans a whole space; `change` returns `None` to keep an entry, `Some(Some(v))` to replace its
/// value, `Some(None)` to delete it. Changes are written a page at a time.
fn rewrite_space(
    engine: &dyn crate::storage::Engine,
    space: Space,
    mut change: impl FnMut(&[u8]) -> Option<Option<Vec<u8>>>,
) -> Result<(), StorageError> {
    for_each_page(engine, space, &[], None, |page| {
        let mut batch = Batch::new();
        for (key, value) in page {
            match change(&value) {
                Some(Some(new)) => batch.put(space, key, new),
                Some(None) => batch.delete(space, key),
                None => {}
            }
        }
        if !batch.is_empty() {
            engine.write(batch)?;
        }
        Ok(())
    })
}

/// Brings the keys of `job.rule` into this node's partitions from the regions that held them.
///
/// A partition is done once a source's states were joined in *and* that source's vector covers
/// every redaction of the rule in this node's own log of the partition (received while the rule
/// still excluded this region): then the node holds the effect of every write its vector claims.
/// A source lagging behind is asked again; after `BACKFILL_PATIENCE` the job completes anyway and
/// the audit log names the partitions left uncovered (a write that reached no region allowed to
/// keep it, e.g. one purged by a narrowing before it was shipped).
async fn backfill(
    node: &Arc<Replica>,
    coordinator: &Arc<Coordinator>,
    store: &EngineSyncStore,
    job: &Job,
    shutdown: &CancellationToken,
) {
    let residency = node.residency();
    let cluster = coordinator.cluster();
    let mut pending: Vec<u16> = (0..PARTITIONS).filter(|p| cluster.is_replica(*p)).collect();
    let total = pending.len() as u64;
    residency.set_progress(job, 0, total, false);
    let started = tokio::time::Instant::now();
    let mut keys = 0u64;
    while !pending.is_empty() {
        let mut left = Vec::new();
        let mut done = total - pending.len() as u64;
        // Several partitions at once: each is a round trip to another region, often a WAN one.
        let mut results = futures::stream::iter(pending.iter().copied())
            .map(|partition| async move {
                (partition, backfill_partition(node, coordinator, store, &job.rule, &job.sources, partition).await)
            })
            .buffer_unordered(BACKFILL_CONCURRENCY);
        while let Some((partition, result)) = results.next().await {
            match result {
                Ok((n, true)) => {
                    keys += n;
                    done += 1;
                }
                Ok((n, false)) => {
                    keys += n;
                    left.push(partition);
                }
                Err(e) => {
                    tracing::debug!(partition, error = %e, "residency backfill: retrying the partition");
                    left.push(partition);
                }
            }
            residency.set_progress(job, done, total, false);
        }
        drop(results);
        residency.set_progress(job, total - left.len() as u64, total, false);
        pending = left;
        if pending.is_empty() || started.elapsed() >= BACKFILL_PATIENCE {
            break;
        }
        if shutdown.run_until_cancelled(tokio::time::sleep(Duration::from_secs(1))).await.is_none() {
            return;
        }
    }
    let uncovered =
        if pending.is_empty() { String::new() } else { format!("; partitions {pending:?} not covered by any source") };
    residency.audit().record_always(
        "backfill",
        &format!(
            "rule {}: rules version {}: {total} partitions backfilled ({keys} key states){uncovered}",
            job.rule.id, job.progress.version
        ),
    );
    residency.set_progress(job, total - pending.len() as u64, total, true);
}

/// Backfills the rule's keys in `partitions` asked for by refused redactions (see
/// `Residency::screen_incoming`), from any region the rule allows, this one included.
async fn backfill_wanted(node: &Arc<Replica>, coordinator: &Arc<Coordinator>, store: &EngineSyncStore) {
    let residency = node.residency();
    for (rule_id, partition) in residency.take_wanted() {
        let Some(rule) = residency.rules().rule(rule_id).cloned() else { continue };
        let sources = rule.spec.regions.clone();
        // Every allowed region: a replica of this region may be as far behind as this node (a
        // capped fallback raise waits for coverage beyond it; `Residency::raise_from`).
        match backfill_partition_from_each_region(node, coordinator, store, &rule, &sources, partition).await {
            Ok((keys, _)) => tracing::debug!(rule = rule_id, partition, keys, "residency: backfilled for redactions"),
            Err(e) => {
                tracing::debug!(rule = rule_id, partition, error = %e, "residency: backfill for redactions failed")
            }
        }
    }
}

/// Backfills one partition from the first replica of a source region that answers: the number
/// of key states joined, and whether the source's vector covers every redaction of the rule in
/// this node's log of the partition.
async fn backfill_partition(
    node: &Arc<Replica>,
    coordinator: &Arc<Coordinator>,
    store: &EngineSyncStore,
    rule: &Rule,
    sources: &[String],
    partition: u16,
) -> Result<(u64, bool), BackfillError> {
    let residency = node.residency();
    let cluster = coordinator.cluster();
    let mut candidates = Vec::new();
    if sources.iter().any(|r| r == residency.region()) {
        candidates
            .extend(cluster.replicas(partition).into_iter().filter(|r| *r != cluster.local() && cluster.reachable(*r)));
    }
    for (region, replicas) in cluster.remote_replicas(partition) {
        if sources.contains(&region) {
            candidates.extend(replicas.into_iter().filter(|r| cluster.reachable(*r)));
        }
    }
    let engine = node.engine().clone();
    let rule_id = rule.id;
    let own = tokio::task::spawn_blocking(move || redactions_in_log(engine.as_ref(), partition, rule_id)).await??;
    if candidates.is_empty() {
        // Nothing to bring from anywhere: done if nothing here waits for it.
        return if own.is_empty() { Ok((0, true)) } else { Err(BackfillError::NoSource) };
    }
    let mut errors = Vec::new();
    for source in candidates {
        match backfill_from(coordinator, store, rule, partition, source).await {
            Ok((keys, vv)) => {
                let engine_residency = residency.clone();
                let covered_vv = vv.clone();
                tokio::task::spawn_blocking(move || engine_residency.note_covered(rule_id, partition, &covered_vv))
                    .await??;
                let covers_own = own.iter().all(|(origin, seq)| vv.get(*origin) >= *seq);
                return Ok((keys, covers_own));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(BackfillError::NoSourceAnswered(errors.join("; ")))
}

/// [`backfill_partition`] from one replica of each allowed region in turn (this region first):
/// the coverage merges, so it reaches the furthest of them. The first error is returned only if no
/// region answered.
async fn backfill_partition_from_each_region(
    node: &Arc<Replica>,
    coordinator: &Arc<Coordinator>,
    store: &EngineSyncStore,
    rule: &Rule,
    sources: &[String],
    partition: u16,
) -> Result<(u64, bool), BackfillError> {
    let own = node.residency().region().to_string();
    let mut regions: Vec<&String> = sources.iter().filter(|r| **r == own).collect();
    regions.extend(sources.iter().filter(|r| **r != own));
    let (mut keys, mut covered, mut first_error) = (0, false, None);
    for region in regions {
        match backfill_partition(node, coordinator, store, rule, std::slice::from_ref(region), partition).await {
            Ok((k, c)) => {
                keys += k;
                covered |= c;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if keys == 0 && !covered => Err(e),
        _ => Ok((keys, covered)),
    }
}

/// Why a partition's backfill did not complete this time (it is asked again).
#[derive(Debug, thiserror::Error)]
enum BackfillError {
    /// No replica of an allowed region is reachable, and this node's log waits for one.
    #[error("no source reachable")]
    NoSource,
    /// Every reachable source failed; why, per source.
    #[error("{0}")]
    NoSourceAnswered(String),
    /// A source did not answer a page.
    #[error(transparent)]
    Peer(#[from] PeerCallError),
    /// Joining the states here failed.
    #[error(transparent)]
    Store(#[from] SyncStoreError),
    /// Reading this node's log or storing the coverage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A blocking storage task did not finish.
    #[error("a backfill task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The highest redacted position of `rule` per origin in this node's log of `partition`.
fn redactions_in_log(
    engine: &dyn crate::storage::Engine,
    partition: u16,
    rule: u32,
) -> Result<Vec<(meridian_crdt::NodeId, u64)>, StorageError> {
    let mut highest: std::collections::BTreeMap<meridian_crdt::NodeId, u64> = Default::default();
    let first = layout::log_key(partition, meridian_crdt::NodeId(0), 0);
    let end = layout::prefix_end(&first[..2]);
    for_each_page(engine, Space::Log, &first, end.as_deref(), |page| {
        for (key, value) in &page {
            if let (Some((_, origin, seq)), Ok(LogRecord::Redacted { rule: r, .. })) =
                (layout::parse_log_key(key), layout::decode::<LogRecord>(value))
            {
                if r == rule {
                    let top = highest.entry(origin).or_default();
                    *top = (*top).max(seq);
                }
            }
        }
        Ok(())
    })?;
    Ok(highest.into_iter().collect())
}

async fn backfill_from(
    coordinator: &Arc<Coordinator>,
    store: &EngineSyncStore,
    rule: &Rule,
    partition: u16,
    source: meridian_crdt::NodeId,
) -> Result<(u64, meridian_crdt::VersionVector), BackfillError> {
    let mut after = None;
    let mut keys = 0u64;
    let mut first_vv = None;
    loop {
        let message = PeerMessageV1::PrefixStates {
            partition,
            rule: rule.id,
            namespace: rule.spec.namespace.clone(),
            prefix: rule.spec.prefix.clone(),
            after: after.clone(),
            limit: PAGE_KEYS,
        };
        let (states, next, vv) = match coordinator.call(source, message, Duration::from_secs(5)).await? {
            PeerReplyV1::PrefixStates { states, next, vv } => (states, next, vv),
            other => return Err(PeerCallError::unexpected(&other).into()),
        };
        // The first page's vector was read before any state: it is what all of them cover.
        let vv = first_vv.get_or_insert(vv).clone();
        keys += states.len() as u64;
        let mut store = store.clone();
        tokio::task::spawn_blocking(move || store.apply_states(PartitionId(partition), &states, None)).await??;
        match next {
            Some(next) => after = Some(next),
            None => return Ok((keys, vv)),
        }
    }
}

/// A `PrefixStates` request.
#[derive(Debug)]
pub struct PrefixAsk {
    /// The partition.
    pub partition: u16,
    /// The rule asked about.
    pub rule: u32,
    /// Its namespace, as the asker knows it.
    pub namespace: String,
    /// Its prefix, as the asker knows it.
    pub prefix: String,
    /// Resume after this data key.
    pub after: Option<Vec<u8>>,
    /// At most this many keys.
    pub limit: u32,
}

/// Answers `PrefixStates` for a node of `region` (the asker's certified region): the states of
/// the partition's keys under the rule's namespace and prefix that `region` may hold, with this
/// node's vector of the partition read first. Refused unless this node's rules agree on the rule
/// (same namespace and prefix, allowing both regions) and it is not itself backfilling the rule
/// (its states could then be incomplete while its vector already claims the positions).
pub fn serve_prefix_states(node: &Replica, region: &str, ask: PrefixAsk) -> Result<PeerReplyV1, PeerRefusal> {
    let residency = node.residency();
    let rules = residency.rules();
    let agreed = rules.rule(ask.rule).filter(|r| {
        r.spec.namespace == ask.namespace
            && r.spec.prefix == ask.prefix
            && meridian_replication::residency::allows(r, residency.region())
            && meridian_replication::residency::allows(r, region)
    });
    if agreed.is_none() {
        return Err(PeerRefusal::NotNow(format!(
            "rule {} differs here (rules version {}); ask again when they agree",
            ask.rule, rules.version
        )));
    }
    if residency.backfilling(ask.rule) {
        return Err(PeerRefusal::NotNow(format!("this node is backfilling rule {} itself", ask.rule)));
    }
    let vv = EngineSyncStore::new(node.engine().clone(), node.id()).partition_vv(PartitionId(ask.partition))?;
    let mut first = layout::namespace_prefix(&ask.namespace);
    first.extend_from_slice(ask.prefix.as_bytes());
    let end = layout::prefix_end(&first);
    let mut start = match ask.after {
        Some(after) if after > first => [after.as_slice(), &[0]].concat(),
        _ => first,
    };
    let limit = (ask.limit as usize).clamp(1, 4096);
    let mut states = Vec::new();
    loop {
        let page = node.engine().scan(Space::Data, &start, end.as_deref(), SCAN_PAGE).map_err(PeerRefusal::Read)?;
        let full = page.len() == SCAN_PAGE;
        for (key, state) in page {
            start = [key.as_slice(), &[0]].concat();
            if layout::partition_of(&key) != ask.partition || !residency.allowed_in(region, &key) {
                continue;
            }
            // A set kept per element goes out whole.
            let whole = crate::states::whole_value(node.engine().as_ref(), &key, state)
                .map_err(|e| PeerRefusal::Read(state_storage_error(e)))?;
            let Some(state) = whole else { continue };
            states.push(KeyState { key, state });
            if states.len() == limit {
                let next = states.last().map(|s: &KeyState| s.key.clone());
                return Ok(PeerReplyV1::PrefixStates { states, next, vv });
            }
        }
        if !full {
            return Ok(PeerReplyV1::PrefixStates { states, next: None, vv });
        }
    }
}
