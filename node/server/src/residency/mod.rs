//! Data residency on the node: the rules this node holds, and the checks every path a key's bytes
//! can take goes through.
//!
//! The rules themselves (matching, validation, versions) are `meridian_replication::residency`.
//! This module applies them where bytes move:
//!
//! | path | sender | receiver |
//! |---|---|---|
//! | client request in a disallowed region | proxied to an allowed region, or refused (`strict`) ([`Residency::decide`]) | a forwarded request for a key its region may not hold is refused |
//! | pushes, relays, hint replay, quorum pushes | [`Residency::for_region`] redacts per target region (`Coordinator::call`) | [`Residency::screen_incoming`] in `EngineSyncStore` |
//! | hints | redacted for the target's region before they are stored | as pushes |
//! | anti-entropy (log records) | redacted per the requester's *certified* region (`peer_sync::answer_sync`) | as pushes |
//! | digest fallback, read repair, backfill (states) | disallowed keys left out | disallowed keys dropped and counted |
//! | quorum reads | only allowed regions' replicas are asked | `ReadKey` answers nothing for a disallowed key |
//!
//! A **redacted record** keeps a log position and its timestamp but carries no key and no value: a
//! [`SyncRecord`] with an empty key whose delta is a [`Redaction`]. Receivers store it as
//! `LogRecord::Redacted`, so version vectors stay gap-free (a causal wait on a position this region
//! may not hold ends once the redaction arrives) and nothing of the key is written. A receiver whose
//! region *may* hold the redacted key refuses the redaction (and that origin's later records in the
//! same message) and gets the record from a region that holds it.
//!
//! Rule changes: [`Residency::adopt`] stores a newer rule set *before* anything acts on it (so every
//! check sees the new rules at once), then queues purges of rules that now exclude this region and
//! backfills of rules that now include it; `crate::region::residency_jobs` runs them.

mod audit;
pub mod scan;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use meridian_client::proto::{ResidencyCounters, ResidencyProgress, Rule};
use meridian_crdt::{codec, NodeId};
use meridian_replication::antientropy::LogRecord as SyncRecord;
use meridian_replication::residency::{allows, RuleSet};
use serde::{Deserialize, Serialize};

use crate::layout;
use crate::storage::{Batch, Engine, Space, StorageError};

pub use audit::AuditLog;

/// The delta of a redacted record: which rule kept the key's bytes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Redaction {
    /// Version 1.
    V1 {
        /// The rule (ids are never reused).
        rule: u32,
    },
}

/// A redacted copy of a log position: no key, no value.
pub fn redacted(origin: NodeId, seq: u64, hlc: u64, rule: u32) -> SyncRecord {
    SyncRecord { origin, seq, key: Vec::new(), delta: codec::encode(&Redaction::V1 { rule }), hlc }
}

/// The rule of a redacted record, `None` for a record that carries its key.
pub fn redaction_of(record: &SyncRecord) -> Option<u32> {
    if !record.key.is_empty() {
        return None;
    }
    // An empty key with an undecodable delta is malformed; the store refuses it as such.
    codec::decode::<Redaction>(&record.delta, 64).ok().map(|Redaction::V1 { rule }| rule)
}

/// The namespace and name of a data key (`[ns len][ns][name]`), borrowed; `None` if malformed.
pub fn split_data_key(data_key: &[u8]) -> Option<(&str, &str)> {
    let (&len, rest) = data_key.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let ns = std::str::from_utf8(&rest[..len]).ok()?;
    let name = std::str::from_utf8(&rest[len..]).ok()?;
    Some((ns, name))
}

/// The message of a residency refusal: names the rule, what it allows and why.
pub fn residency_refusal(rule: &Rule, region: &str, why: &str) -> String {
    format!(
        "data residency: rule {} (namespace {:?}, prefix {:?}) keeps these keys in {}; region {region} may not serve them ({why})",
        rule.id,
        rule.spec.namespace,
        rule.spec.prefix,
        rule.spec.regions.join(", ")
    )
}

/// The first data key a rule's keys can have: `[ns len][ns][prefix]`; every key the rule matches
/// starts with it.
pub fn rule_data_prefix(rule: &Rule) -> Vec<u8> {
    let mut out = crate::layout::namespace_prefix(&rule.spec.namespace);
    out.extend_from_slice(rule.spec.prefix.as_bytes());
    out
}

/// Residency decisions counted since start (also exported as metrics).
#[derive(Debug, Default)]
pub struct Counters {
    proxied: AtomicU64,
    refused: AtomicU64,
    rejected: AtomicU64,
    redacted: AtomicU64,
    purged: AtomicU64,
}

impl Counters {
    /// A snapshot for reports.
    pub fn snapshot(&self) -> ResidencyCounters {
        ResidencyCounters {
            proxied: self.proxied.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            redacted: self.redacted.load(Ordering::Relaxed),
            purged: self.purged.load(Ordering::Relaxed),
        }
    }
}

/// What to do with a client request for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This region may hold the key: serve it here.
    Serve,
    /// Proxy it to a region the rule allows (its home first, then by measured round trip).
    Proxy(Rule),
    /// Refuse it (`strict`).
    Refuse(Rule),
}

/// The node's residency state: its region, the rules, the audit log and the pending changes.
pub struct Residency {
    region: String,
    node: String,
    engine: Arc<dyn Engine>,
    rules: RwLock<Arc<RuleSet>>,
    audit: Arc<AuditLog>,
    counters: Counters,
    changes: Mutex<Vec<Job>>,
    /// Per (rule, partition): the version vector of a source whose states of the rule's keys this
    /// node joined in (a backfill). A redaction of a key this region may hold is accepted only at a
    /// position this covers: the write's effect is then already here, through the state.
    covered: Mutex<std::collections::HashMap<(u32, u16), meridian_crdt::VersionVector>>,
    /// (rule, partition) pairs whose redactions were refused for want of coverage: backfilled next.
    wanted: Mutex<std::collections::BTreeSet<(u32, u16)>>,
    /// Woken when a rule change queued work, or a refused redaction asked for a backfill.
    pub wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Residency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Residency").field("region", &self.region).field("version", &self.rules().version).finish()
    }
}

impl Residency {
    /// Loads the stored rules (none: no rule) of a node in `region`; its audit log goes to `audit`
    /// (`None`: tracing only, for in-memory nodes).
    pub fn open(
        engine: Arc<dyn Engine>,
        region: &str,
        node: &str,
        audit: Option<std::path::PathBuf>,
    ) -> Result<Residency, StorageError> {
        let rules = match engine.get(Space::Meta, layout::RESIDENCY_RULES_KEY)? {
            Some(bytes) => codec::decode::<RuleSet>(&bytes, crate::layout::MAX_RECORD_BYTES)
                .map_err(|e| StorageError::Corrupt(format!("residency rules: {e}")))?,
            None => RuleSet::default(),
        };
        let mut covered = std::collections::HashMap::new();
        let end = crate::layout::prefix_end(layout::RESIDENCY_COVERED_PREFIX);
        for (key, value) in engine.scan(Space::Meta, layout::RESIDENCY_COVERED_PREFIX, end.as_deref(), usize::MAX)? {
            let Some(id) = key.get(layout::RESIDENCY_COVERED_PREFIX.len()..).filter(|id| id.len() == 6) else {
                continue;
            };
            let rule = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
            let partition = u16::from_be_bytes([id[4], id[5]]);
            let vv = codec::decode::<meridian_crdt::VersionVector>(&value, crate::layout::MAX_RECORD_BYTES)
                .map_err(|e| StorageError::Corrupt(format!("residency coverage: {e}")))?;
            covered.insert((rule, partition), vv);
        }
        let residency = Residency {
            covered: Mutex::new(covered),
            wanted: Mutex::new(std::collections::BTreeSet::new()),
            region: region.to_string(),
            node: node.to_string(),
            engine,
            rules: RwLock::new(Arc::new(rules)),
            audit: Arc::new(AuditLog::open(audit)),
            counters: Counters::default(),
            changes: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        };
        // Rules stored but not fully acted on (a crash mid-purge or mid-backfill): purge every
        // rule that excludes this region and backfill every one that includes it. Both are
        // idempotent; a node whose changes all completed skips this.
        let current = residency.rules();
        if residency.applied_version()? < current.version {
            residency.queue_changes(&RuleSet::default(), &current);
            let mut changes = residency.changes.lock().unwrap_or_else(|p| p.into_inner());
            for rule in current.rules.iter().filter(|r| allows(r, region)) {
                let progress = progress("backfill", rule.id, current.version);
                changes.push(Job { progress, sources: rule.spec.regions.clone(), rule: rule.clone() });
            }
        }
        Ok(residency)
    }

    /// The newest rules version whose purges and backfills all completed here.
    fn applied_version(&self) -> Result<u64, StorageError> {
        match self.engine.get(Space::Meta, layout::RESIDENCY_APPLIED_KEY)? {
            Some(bytes) => crate::storage::decode_u64_be(&bytes),
            None => Ok(0),
        }
    }

    /// Records that every change queued up to the current rules version completed (called by the
    /// worker once its queue is empty).
    pub(crate) fn mark_applied(&self) -> Result<(), StorageError> {
        let version = self.rules().version;
        if self.next_change().is_some() {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.max_u64(Space::Meta, layout::RESIDENCY_APPLIED_KEY.to_vec(), version);
        self.engine.write(batch)
    }

    /// This node's region (from its certificate: `serve` refuses a config that disagrees).
    pub fn region(&self) -> &str {
        &self.region
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The current rules.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The audit log, shared (the authentication policy writes to the same file).
    pub fn shared_audit(&self) -> Arc<AuditLog> {
        self.audit.clone()
    }

    /// The rule governing `data_key`, if any.
    pub fn rule_for(&self, data_key: &[u8]) -> Option<Rule> {
        let (ns, name) = split_data_key(data_key)?;
        self.rules().rule_for(ns, name).cloned()
    }

    /// Whether `region` may hold `data_key`.
    pub fn allowed_in(&self, region: &str, data_key: &[u8]) -> bool {
        self.rule_for(data_key).is_none_or(|rule| allows(&rule, region))
    }

    /// Whether this node's region may hold `data_key`.
    pub fn allowed_here(&self, data_key: &[u8]) -> bool {
        self.allowed_in(&self.region, data_key)
    }

    /// What to do with a client request for `data_key` that arrived here.
    pub fn decide(&self, data_key: &[u8]) -> Decision {
        match self.rule_for(data_key) {
            Some(rule) if !allows(&rule, &self.region) => {
                if rule.spec.strict {
                    Decision::Refuse(rule)
                } else {
                    Decision::Proxy(rule)
                }
            }
            _ => Decision::Serve,
        }
    }

    /// Counts and audits a proxied request.
    pub fn note_proxied(&self, rule: &Rule, to_region: &str) {
        self.counters.proxied.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("meridian_residency_proxied_total").increment(1);
        let rule = rule.id;
        self.audit.record(
            "proxy",
            &format!("rule {rule} to {to_region}"),
            &format!("rule {rule}: proxied to {to_region}"),
        );
    }

    /// Counts and audits a refused request.
    pub fn note_refused(&self, rule: &Rule, why: &str) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("meridian_residency_refused_total").increment(1);
        let rule = rule.id;
        self.audit.record("refuse", &format!("rule {rule}: {why}"), &format!("rule {rule}: refused: {why}"));
    }

    /// Counts and audits something a peer sent that this region may not hold.
    ///
    /// Every rejection is counted; the audit log rate-limits its entries per rule ([`AuditLog`]: a
    /// stale sender can push thousands in a second, which would drown the log).
    pub fn note_rejected(&self, rule: u32, what: &str) {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("meridian_residency_rejected_total").increment(1);
        self.audit.record("reject", &format!("rule {rule}"), &format!("rule {rule}: {what}"));
    }

    /// Counts keys purged.
    pub fn note_purged(&self, keys: u64) {
        self.counters.purged.fetch_add(keys, Ordering::Relaxed);
        metrics::counter!("meridian_residency_purged_keys_total").increment(keys);
    }

    /// `records` as a node of `region` may receive them, in order: a record whose key `region` may
    /// not hold becomes a redaction; everything else goes as it is.
    pub fn for_region(&self, region: &str, records: Vec<SyncRecord>) -> Vec<SyncRecord> {
        let rules = self.rules();
        if self.passes_unscreened(&records) {
            return records;
        }
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            match redaction_of(&record) {
                // A redaction carries nothing of the key: it may go anywhere, and the receiver
                // decides whether it may stand in for the record there (`screen_incoming`).
                Some(_) => out.push(record),
                None => match split_data_key(&record.key).and_then(|(ns, name)| rules.rule_for(ns, name)) {
                    Some(rule) if !allows(rule, region) => {
                        self.counters.redacted.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("meridian_residency_redacted_total").increment(1);
                        out.push(redacted(record.origin, record.seq, record.hlc, rule.id));
                    }
                    _ => out.push(record),
                },
            }
        }
        out
    }

    /// Whether `records` need no screening: there are no rules and none of them is a redaction
    /// (the common case, kept free of copies).
    pub fn passes_unscreened(&self, records: &[SyncRecord]) -> bool {
        self.rules().rules.is_empty() && records.iter().all(|r| !r.key.is_empty())
    }

    /// `records` as this node may store them (the receiver's check): a record whose key this region
    /// may not hold is counted, audited and stored as a redaction (its position is real: keeping it
    /// keeps the vector gap-free); a redaction of a key this region may hold is refused with that
    /// origin's later records, unless a backfill already brought this position's effect (see
    /// `covered`); refusing one asks for that backfill.
    pub fn screen_incoming(&self, partition: u16, records: &[SyncRecord]) -> Vec<SyncRecord> {
        let rules = self.rules();
        let mut stopped: Vec<NodeId> = Vec::new();
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            if stopped.contains(&record.origin) {
                continue;
            }
            match redaction_of(record) {
                Some(rule) => {
                    let may_hold = rules.rule(rule).is_none_or(|r| allows(r, &self.region));
                    if !may_hold || self.covers(rule, partition, record.origin, record.seq) {
                        out.push(record.clone());
                    } else {
                        // The write's effect must come some other way: the record itself from a
                        // region that holds it, or a backfill of the rule's keys in the partition
                        // whose source covers this position (asked for here).
                        stopped.push(record.origin);
                        if rules.rule(rule).is_some()
                            && self.wanted.lock().unwrap_or_else(|p| p.into_inner()).insert((rule, partition))
                        {
                            self.wake.notify_one();
                        }
                    }
                }
                None => match split_data_key(&record.key).and_then(|(ns, name)| rules.rule_for(ns, name)) {
                    Some(rule) if !allows(rule, &self.region) => {
                        self.note_rejected(
                            rule.id,
                            &format!("a record of origin {} seq {} (stored redacted)", record.origin, record.seq),
                        );
                        out.push(redacted(record.origin, record.seq, record.hlc, rule.id));
                    }
                    _ => out.push(record.clone()),
                },
            }
        }
        out
    }

    /// Whether a backfill of `rule`'s keys in `partition` brought the effect of `origin`'s write
    /// at `seq`: its source's vector covered that position.
    pub fn covers(&self, rule: u32, partition: u16, origin: NodeId, seq: u64) -> bool {
        let covered = self.covered.lock().unwrap_or_else(|p| p.into_inner());
        covered.get(&(rule, partition)).is_some_and(|vv| vv.get(origin) >= seq)
    }

    /// Records that this node joined in the states of `rule`'s keys in `partition` as a source
    /// with vector `vv` held them (merged with what was covered before, and persisted).
    pub fn note_covered(
        &self,
        rule: u32,
        partition: u16,
        vv: &meridian_crdt::VersionVector,
    ) -> Result<(), StorageError> {
        let mut covered = self.covered.lock().unwrap_or_else(|p| p.into_inner());
        let entry = covered.entry((rule, partition)).or_default();
        entry.merge(vv);
        let mut key = layout::RESIDENCY_COVERED_PREFIX.to_vec();
        key.extend_from_slice(&rule.to_be_bytes());
        key.extend_from_slice(&partition.to_be_bytes());
        let mut batch = Batch::new();
        batch.put(Space::Meta, key, codec::encode(&*entry));
        self.engine.write(batch)
    }

    /// How far a digest fallback from a node of `peer_region` may raise this node's vector of
    /// `partition`: `theirs`, capped per origin, for every rule this region may hold and
    /// `peer_region` may not, at what a backfill of that rule's keys covered here.
    ///
    /// The peer holds writes of such keys only as redactions, so its states cannot carry them and
    /// its vector covers them all the same; a backfill's coverage is where this node is known to
    /// have them anyway (as for a redaction, `screen_incoming`). Where the cap bites, that backfill
    /// is asked for, so the next fallback can raise further.
    pub fn raise_from(
        &self,
        peer_region: &str,
        partition: u16,
        theirs: &meridian_crdt::VersionVector,
    ) -> meridian_crdt::VersionVector {
        let rules = self.rules();
        let restricted: Vec<u32> = rules
            .rules
            .iter()
            .filter(|rule| allows(rule, &self.region) && !allows(rule, peer_region))
            .map(|rule| rule.id)
            .collect();
        if restricted.is_empty() {
            return theirs.clone();
        }
        let covered = self.covered.lock().unwrap_or_else(|p| p.into_inner());
        let mut capped = meridian_crdt::VersionVector::new();
        let mut short: Vec<u32> = Vec::new();
        for (origin, seq) in theirs.iter() {
            let mut allowed = seq;
            for rule in &restricted {
                let cover = covered.get(&(*rule, partition)).map_or(0, |vv| vv.get(origin));
                if cover < allowed {
                    allowed = cover;
                    if !short.contains(rule) {
                        short.push(*rule);
                    }
                }
            }
            capped.observe(origin, allowed);
        }
        drop(covered);
        let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        let mut asked = false;
        for rule in short {
            asked |= wanted.insert((rule, partition));
        }
        drop(wanted);
        if asked {
            self.wake.notify_one();
        }
        capped
    }

    /// Whether refused redactions asked for backfills.
    pub(crate) fn has_wanted(&self) -> bool {
        !self.wanted.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The (rule, partition) pairs refused redactions asked to backfill, emptied.
    pub(crate) fn take_wanted(&self) -> Vec<(u32, u16)> {
        std::mem::take(&mut *self.wanted.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect()
    }

    /// Whether a backfill of `rule` is queued or running here (this node's states of the rule's
    /// keys may be incomplete: it does not serve them as a backfill source meanwhile).
    pub fn backfilling(&self, rule: u32) -> bool {
        let changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        changes.iter().any(|job| job.progress.kind == "backfill" && job.rule.id == rule && !job.progress.complete)
    }

    /// Whether any backfill is queued or running here: this node's vectors may then cover writes of
    /// a newly allowed rule it holds only as redactions, so it answers no digest fallback of
    /// another region meanwhile (`peer_sync::answer_sync`), as it serves no backfill.
    pub fn backfilling_any(&self) -> bool {
        let changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        changes.iter().any(|job| job.progress.kind == "backfill" && !job.progress.complete)
    }

    /// Adopts `theirs` if newer: stores it, then queues the purges and backfills it implies here.
    /// Returns whether it was newer.
    pub fn adopt(&self, theirs: &RuleSet) -> Result<bool, StorageError> {
        let (before, after) = {
            let mut rules = self.rules.write().unwrap_or_else(|p| p.into_inner());
            let mut next = (**rules).clone();
            if !next.merge(theirs) {
                return Ok(false);
            }
            let mut batch = Batch::new();
            batch.put(Space::Meta, layout::RESIDENCY_RULES_KEY.to_vec(), codec::encode(&next));
            self.engine.write(batch)?;
            let after = Arc::new(next);
            let before = std::mem::replace(&mut *rules, after.clone());
            // Queued before the new version becomes visible: whoever sees the version also sees
            // the purges and backfills it implies (a report never shows a version "done" early).
            self.queue_changes(&before, &after);
            (before, after)
        };
        self.audit.record_always(
            "rules",
            &format!("rules version {} → {} ({} rules)", before.version, after.version, after.rules.len()),
        );
        metrics::gauge!("meridian_residency_rules_version").set(after.version as f64);
        Ok(true)
    }

    fn queue_changes(&self, before: &RuleSet, after: &RuleSet) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        for rule in before.purges_for(after, &self.region) {
            let progress = progress("purge", rule.id, after.version);
            changes.push(Job { progress, sources: Vec::new(), rule });
        }
        for (rule, sources) in before.backfills_for(after, &self.region) {
            let progress = progress("backfill", rule.id, after.version);
            changes.push(Job { progress, sources, rule });
        }
        // Keep the report short: completed entries beyond the 64 newest go.
        while changes.len() > 64 {
            match changes.iter().position(|job| job.progress.complete) {
                Some(done) => changes.remove(done),
                None => break,
            };
        }
        drop(changes);
        self.wake.notify_one();
    }

    /// Every purge and backfill run or queued, oldest first.
    pub fn changes(&self) -> Vec<ResidencyProgress> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|job| job.progress.clone()).collect()
    }

    /// The first queued change not yet complete.
    pub(crate) fn next_change(&self) -> Option<Job> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|job| !job.progress.complete).cloned()
    }

    /// Records progress of `job`.
    pub(crate) fn set_progress(&self, job: &Job, done: u64, total: u64, complete: bool) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let of = &job.progress;
        if let Some(c) = changes
            .iter_mut()
            .map(|job| &mut job.progress)
            .find(|c| c.kind == of.kind && c.rule == of.rule && c.version == of.version && !c.complete)
        {
            c.done = done;
            c.total = total;
            c.complete = complete;
        }
    }
}

/// A purge or backfill to run.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    /// What is reported.
    pub progress: ResidencyProgress,
    /// The rule (for a removed rule, as it was).
    pub rule: Rule,
    /// For a backfill: the regions that held the keys.
    pub sources: Vec<String>,
}

/// Rows per page of [`for_each_page`].
const SCAN_PAGE: usize = 1024;

/// Calls `visit` with every page of `space` from `start` to `end` (`None`: the end), in key order:
/// the one paged walk the purge, the backfill and the audit make over storage.
pub(crate) fn for_each_page(
    engine: &dyn Engine,
    space: Space,
    start: &[u8],
    end: Option<&[u8]>,
    mut visit: impl FnMut(Vec<crate::storage::KeyValue>) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut start = start.to_vec();
    loop {
        let page = engine.scan(space, &start, end, SCAN_PAGE)?;
        let full = page.len() == SCAN_PAGE;
        if let Some((last, _)) = page.last() {
            start = [last.as_slice(), &[0]].concat();
        }
        visit(page)?;
        if !full {
            return Ok(());
        }
    }
}

fn progress(kind: &str, rule: u32, version: u64) -> ResidencyProgress {
    ResidencyProgress { kind: kind.into(), rule, version, done: 0, total: 0, complete: false }
}

#[cfg(test)]
mod tests;
