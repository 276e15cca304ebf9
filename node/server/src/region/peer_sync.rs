//! Anti-entropy between the replicas of each partition over the mutual-TLS peer transport.
//!
//! The sans-IO [`SyncSession`] decides what to send; this module carries its messages as
//! `Sync` (and, batched, `SyncBatch`) requests of the peer protocol ([`crate::api::peer_service`]). The answering side keeps no
//! state between requests (a fresh session per request), so a restart of either side loses nothing.
//!
//! Each peer is served by one thread that runs, in turn, the sessions of the partitions this node
//! shares with it under the current placement ([`Cluster::syncs_with`]: both are replicas, or this
//! node is draining and hands the partition to its new replicas). It calls the storage (which
//! blocks, and joins replicated state under the node's key locks) and the network (through the
//! runtime handle). A pass starts with one exchange comparing the vectors of every shared partition,
//! and runs rounds only for those that differ. With a peer of protocol version 5 the rounds run
//! together: their offers travel in `SyncBatch`es, the digest fallback's requests one per `Sync`
//! (`Link::pass_batched`). With an older peer they run one after the other, a round trip each,
//! and the vectors of what is left are compared again once per `sync_interval_ms` (a comparison
//! made during a burst of writes soon goes stale). An idle pair costs one small request per pass.
//! A peer the failure detector holds dead is skipped until it answers gossip again.

use meridian_crdt::{NodeId, VersionVector};
use meridian_replication::antientropy::{PartitionId, SyncConfig, SyncEvent, SyncMessage, SyncMessageV1, SyncSession};
use meridian_replication::SafeReport;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::layout::PARTITIONS;
use crate::peer::protocol::MAX_SYNC_BATCH;
use crate::peer::protocol::{
    combined_digest, decode_reply, encode_request, partition_bitmap, PeerCallError, PeerMessageV1, PeerRefusal,
    PeerReplyV1,
};
use crate::peer::{PeerPool, SYNC_BATCH_VERSION};
use crate::region::cluster::Cluster;
use crate::store::sync_store::{EngineSyncStore, SyncStoreError};

/// Most request/reply exchanges one partition's session may make per pass (a bound on every loop;
/// in a batched pass, per session).
const MAX_EXCHANGES_PER_PASS: usize = 1024;

/// The digest fallback's requests (each a walk of one hash range on the peer) a batched pass keeps
/// in flight together: a partition's fallback is a few round trips one after the other, so many
/// partitions caught up one at a time would cost a round trip each, hundreds over a WAN.
const FALLBACK_IN_FLIGHT: usize = 16;

fn now_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// Answers one anti-entropy message from `from` with a fresh session over `store`. Blocks.
pub fn answer_sync(
    mut store: EngineSyncStore,
    config: SyncConfig,
    local: NodeId,
    from: NodeId,
    message: SyncMessage,
    residency: Option<(&crate::residency::Residency, &str)>,
) -> Result<PeerReplyV1, PeerRefusal> {
    answer_one(&mut store, config, local, from, message, residency).map(PeerReplyV1::Sync)
}

/// The reply budget of a `SyncBatch`: well inside the peer protocol's message cap.
const BATCH_REPLY_BYTES: usize = 4 << 20;

/// Answers a `SyncBatch` of offers from `from`: each as [`answer_sync`] would, with the reply
/// budget shared between them (each answer's `max_bytes` is the budget's share, at least the
/// protocol's minimum: an offer's answer is a page of records, and its session asks for the next).
/// A refused offer is left out (logged, as a refused `Sync` is); at the first answer
/// that would take the reply past the budget, it and the rest are left out, and the sender asks
/// for them again first in its next batch. Blocks.
pub fn answer_sync_batch(
    mut store: EngineSyncStore,
    config: SyncConfig,
    local: NodeId,
    from: NodeId,
    messages: Vec<SyncMessage>,
    residency: Option<(&crate::residency::Residency, &str)>,
) -> Result<PeerReplyV1, PeerRefusal> {
    let share = (BATCH_REPLY_BYTES / messages.len().max(1)).max(meridian_replication::antientropy::MIN_MAX_BYTES);
    let config = SyncConfig { max_bytes: config.max_bytes.min(share), ..config };
    let mut replies = Vec::new();
    let mut bytes = 0usize;
    for message in messages {
        let partition = message.partition().0;
        let answers = match answer_one(&mut store, config.clone(), local, from, message, residency) {
            Ok(answers) => answers,
            Err(e) => {
                // As a refused `Sync` is: logged (it reaches the asker as a missing answer).
                tracing::warn!(peer = %from, partition, error = %e, "refused an anti-entropy request of a batch");
                continue;
            }
        };
        let size: usize = answers.iter().map(SyncMessage::wire_len).sum();
        if bytes > 0 && bytes + size > BATCH_REPLY_BYTES {
            // This one and the rest are asked again, this one first: it then travels alone if
            // it must (a single record larger than its share), as on the single path.
            break;
        }
        bytes += size;
        replies.extend(answers);
    }
    Ok(PeerReplyV1::Sync(replies))
}

/// The answers of a fresh session over `store` to one message from `from`.
fn answer_one(
    store: &mut EngineSyncStore,
    config: SyncConfig,
    local: NodeId,
    from: NodeId,
    message: SyncMessage,
    residency: Option<(&crate::residency::Residency, &str)>,
) -> Result<Vec<SyncMessage>, PeerRefusal> {
    let partition = message.partition();
    if let SyncMessage::V1(SyncMessageV1::Offer { vv, .. }) = &message {
        // The offer states what the peer holds: what this node's log need not keep for it.
        store.peer_vectors().record(partition.0, from, vv);
    }
    let mut session =
        SyncSession::new(config, partition, local, from, 1).map_err(|e| PeerRefusal::Sync(e.to_string()))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    session.step(store, now, message).map_err(|e| PeerRefusal::Sync(e.to_string()))?;
    let mut replies = Vec::new();
    while let Some(reply) = session.poll_outbound() {
        let SyncMessage::V1(inner) = &reply;
        if let (meridian_replication::antientropy::SyncMessageV1::Truncated { .. }, Some((residency, region))) =
            (inner, residency)
        {
            // A backfill here means this node's vector may cover writes of a newly allowed rule
            // it holds only as redactions: a fallback raising another region's vector to it would
            // skip them. The requester tries again at its next pass.
            if region != residency.region() && residency.backfilling_any() {
                return Err(PeerRefusal::Sync("a residency backfill is running here; try again later".into()));
            }
        }
        replies.push(match residency {
            Some((residency, region)) => for_region(residency, region, reply),
            None => reply,
        });
    }
    Ok(replies)
}

/// An answer as a node of `region` (the requester's certified region) may receive it: records of
/// keys it may not hold redacted, states of such keys left out (`crate::residency`).
fn for_region(residency: &crate::residency::Residency, region: &str, reply: SyncMessage) -> SyncMessage {
    use meridian_replication::antientropy::SyncMessageV1;
    let SyncMessage::V1(message) = reply;
    SyncMessage::V1(match message {
        SyncMessageV1::Records { partition, request, records, more } => {
            SyncMessageV1::Records { partition, request, records: residency.for_region(region, records), more }
        }
        SyncMessageV1::States { partition, request, mut states, resume } => {
            states.retain(|state| residency.allowed_in(region, &state.key));
            SyncMessageV1::States { partition, request, states, resume }
        }
        other => other,
    })
}

/// A digest of this node's version vector of each of `partitions` (equal vectors, equal digests).
pub fn vv_digests(store: &EngineSyncStore, partitions: &[u16]) -> Result<Vec<u64>, SyncStoreError> {
    Ok(vectors_and_digests(store, partitions)?.1)
}

/// This node's version vector of each of `partitions`, and [`vv_digests`] of them: a peer whose
/// digests match holds what these vectors name (`store/stability.rs`).
pub fn vectors_and_digests(
    store: &EngineSyncStore,
    partitions: &[u16],
) -> Result<(Vec<VersionVector>, Vec<u64>), SyncStoreError> {
    use meridian_replication::antientropy::SyncStore as _;
    let vectors = partitions.iter().map(|p| store.partition_vv(PartitionId(*p))).collect::<Result<Vec<_>, _>>()?;
    let digests =
        vectors.iter().map(|vv| meridian_replication::stable_hash(&meridian_crdt::codec::encode(vv))).collect();
    Ok((vectors, digests))
}

/// Notes that `peer` holds what `vectors` name of `partitions` (its digests of them matched).
/// Only the answering side notes it: there `peer` is the authenticated sender, and each node of a
/// pair pulls from the other, so each learns what the other holds.
pub fn note_matching_vectors(store: &EngineSyncStore, peer: NodeId, partitions: &[u16], vectors: &[VersionVector]) {
    for (partition, vv) in partitions.iter().zip(vectors) {
        store.peer_vectors().record(*partition, peer, vv);
    }
}

/// Progress of anti-entropy with one peer, for `meridian status` and `/metrics`.
#[derive(Debug, Default)]
pub struct SyncProgress {
    /// Passes over the shared partitions completed.
    pub passes: AtomicU64,
    /// Partitions shared with the peer in the last pass.
    pub shared_partitions: AtomicU64,
    /// Unix ms of the last pass that reached the peer for every shared partition (0: never).
    pub last_complete_ms: AtomicU64,
    /// Unix ms at which that pass started (0: never).
    pub last_complete_started_ms: AtomicU64,
    /// Unix ms of the last failed exchange (0: never).
    pub last_error_ms: AtomicU64,
}

/// Runs anti-entropy with one peer until `shutdown`: a thread that passes over the partitions it
/// shares with the peer each `interval`.
#[allow(clippy::too_many_arguments)] // each is a distinct knob; a struct would only rename them
pub fn spawn_peer_sync(
    cluster: Arc<Cluster>,
    store: EngineSyncStore,
    pool: Arc<PeerPool>,
    peer: NodeId,
    addr: SocketAddr,
    config: SyncConfig,
    interval: Duration,
    request_timeout: Duration,
    progress: Arc<SyncProgress>,
    shutdown: CancellationToken,
) -> std::thread::JoinHandle<()> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(format!("meridian-sync-{addr}"))
        .spawn(move || {
            let local = cluster.local();
            let link = Link { local, pool: &pool, peer: addr, runtime: &runtime, timeout: request_timeout };
            let started = Instant::now();
            let mut sessions: Vec<SyncSession> = (0..PARTITIONS)
                .map(|p| {
                    SyncSession::new(config.clone(), PartitionId(p), local, peer, rand::random::<u32>().into())
                        .expect("validated sync config")
                })
                .collect();
            while !shutdown.is_cancelled() {
                let pass_started = Instant::now();
                let pass_started_ms = unix_ms();
                if cluster.reachable(peer) {
                    let mut store = match cluster.region_of(peer) {
                        Some(region) => store.clone().for_peer_region(&region),
                        None => store.clone(),
                    };
                    let mut shared = 0;
                    let mut complete = true;
                    let partitions: Vec<u16> = (0..PARTITIONS).filter(|p| cluster.syncs_with(*p, peer)).collect();
                    // Partitions whose version vectors are equal on both sides have nothing to
                    // pull: one message compares them all, and only the others run a round.
                    let (mut in_sync, version) = link.compare(&store, &partitions, &progress);
                    let note_failure = |e: PassFailed| {
                        tracing::debug!(%addr, error = %e, "sync pass interrupted");
                        progress.last_error_ms.store(unix_ms(), Ordering::Relaxed);
                        metrics::counter!("meridian_sync_pass_errors_total").increment(1);
                    };
                    if version >= SYNC_BATCH_VERSION {
                        // Every due partition's round at once, its messages batched: a few round
                        // trips per pass instead of one per partition.
                        let mut due = Vec::new();
                        for session in &sessions {
                            let partition = session.partition().0;
                            if cluster.syncs_with(partition, peer) {
                                shared += 1;
                                if !(session.is_idle() && in_sync.contains(&partition)) {
                                    due.push(partition);
                                }
                            }
                        }
                        if let Err(e) = link.pass_batched(&mut sessions, &due, &mut store, now_ms(started), &shutdown) {
                            note_failure(e);
                            complete = false;
                        }
                    } else {
                        let mut compared = Instant::now();
                        for session in &mut sessions {
                            if shutdown.is_cancelled() {
                                break;
                            }
                            let partition = session.partition().0;
                            if !cluster.syncs_with(partition, peer) {
                                continue;
                            }
                            shared += 1;
                            if session.is_idle() && !in_sync.contains(&partition) && compared.elapsed() >= interval {
                                // Rounds run one after the other, a round trip each: a comparison
                                // made during a burst of writes goes stale while the pass walks
                                // the partitions, and would have it pull, one round trip at a
                                // time, partitions the pushes have brought in sync since. Compare
                                // what is left of the pass again, once per interval.
                                let rest: Vec<u16> = partitions.iter().copied().filter(|p| *p >= partition).collect();
                                in_sync.extend(link.compare(&store, &rest, &progress).0);
                                compared = Instant::now();
                            }
                            if session.is_idle() && in_sync.contains(&partition) {
                                continue;
                            }
                            let passed = link.pass(session, &mut store, now_ms(started));
                            take_events(session, &store);
                            if let Err(e) = passed {
                                note_failure(e);
                                complete = false;
                                break;
                            }
                        }
                    }
                    progress.shared_partitions.store(shared, Ordering::Relaxed);
                    progress.passes.fetch_add(1, Ordering::Relaxed);
                    if complete && !shutdown.is_cancelled() {
                        progress.last_complete_started_ms.store(pass_started_ms, Ordering::Relaxed);
                        metrics::counter!("meridian_sync_passes_total").increment(1);
                        progress.last_complete_ms.store(unix_ms(), Ordering::Relaxed);
                    }
                }
                let rest = interval.saturating_sub(pass_started.elapsed());
                let _ = runtime.block_on(async { tokio::time::timeout(rest, shutdown.cancelled()).await });
            }
        })
        .expect("spawning a sync thread")
}

/// The requests of a batched pass waiting to go out ([`Link::pass_batched`]).
#[derive(Default)]
struct Queues {
    /// Offers, for `SyncBatch`es.
    offers: VecDeque<SyncMessage>,
    /// The digest fallback's requests, one per `Sync`.
    others: VecDeque<SyncMessage>,
    /// Whether a session reached its exchanges for the pass with requests left (they are sent
    /// again once due).
    capped: bool,
}

impl Queues {
    /// Queues what `session` has to send, unless it made its exchanges for the pass.
    fn take_from(&mut self, session: &mut SyncSession, exchanges: &mut [usize]) {
        let made = &mut exchanges[usize::from(session.partition().0)];
        while let Some(message) = session.poll_outbound() {
            if *made >= MAX_EXCHANGES_PER_PASS {
                self.capped = true;
                continue;
            }
            *made += 1;
            if is_offer(&message) {
                self.offers.push_back(message);
            } else {
                self.others.push_back(message);
            }
        }
    }

    /// Offers a batch's answer left out past its budget: first in the next batch, in order.
    fn offers_first(&mut self, cut: Vec<SyncMessage>) {
        for message in cut.into_iter().rev() {
            self.offers.push_front(message);
        }
    }

    /// The next requests — a batch of offers, or up to [`FALLBACK_IN_FLIGHT`] fallback requests
    /// sent together, taking turns — each with the messages it carries.
    fn next(&mut self, offers_turn: &mut bool) -> Vec<(Vec<SyncMessage>, PeerMessageV1)> {
        let take_offers = !self.offers.is_empty() && (*offers_turn || self.others.is_empty());
        *offers_turn = !*offers_turn;
        if take_offers {
            let batch: Vec<SyncMessage> = self.offers.drain(..self.offers.len().min(MAX_SYNC_BATCH)).collect();
            return vec![(batch.clone(), PeerMessageV1::SyncBatch(batch))];
        }
        let take = self.others.len().min(FALLBACK_IN_FLIGHT);
        self.others.drain(..take).map(|message| (vec![message.clone()], PeerMessageV1::Sync(message))).collect()
    }
}

/// Whether `message` is an offer (the only request a `SyncBatch` carries).
pub fn is_offer(message: &SyncMessage) -> bool {
    matches!(message, SyncMessage::V1(SyncMessageV1::Offer { .. }))
}

/// Takes what a session's exchanges produced: what the peer's offers proved about its own log
/// (causal reads here may now serve writes of its up to that time), and finished rounds' figures.
fn take_events(session: &mut SyncSession, store: &EngineSyncStore) {
    while let Some(event) = session.poll_event() {
        match event {
            SyncEvent::PeerSafeTime { partition, origin, hlc, covers_seq } => {
                store.take_report(partition.0, SafeReport { origin, seq: covers_seq, safe: hlc });
            }
            SyncEvent::RoundDone(report) => count_round(&report),
        }
    }
}

/// What a finished round pulled in: log records, or, after the peer's log was truncated below this
/// node's vector, key states by the digest fallback (`/metrics`).
fn count_round(report: &meridian_replication::antientropy::RoundReport) {
    metrics::counter!("meridian_sync_records_applied_total").increment(report.records_applied);
    metrics::counter!("meridian_sync_states_applied_total").increment(report.states_applied);
    metrics::counter!("meridian_sync_fallbacks_total").increment(u64::from(report.fallbacks));
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why an exchange with the peer stopped (the thread tries again at its next pass).
#[derive(Debug, thiserror::Error)]
enum PassFailed {
    /// The peer did not answer usefully.
    #[error(transparent)]
    Peer(#[from] PeerCallError),
    /// The partition's session refused a message or failed on the store.
    #[error("{0}")]
    Session(String),
    /// Reading this node's vectors failed.
    #[error(transparent)]
    Store(#[from] SyncStoreError),
}

struct Link<'a> {
    local: NodeId,
    pool: &'a PeerPool,
    peer: SocketAddr,
    runtime: &'a tokio::runtime::Handle,
    timeout: Duration,
}

impl Link<'_> {
    fn call(&self, message: PeerMessageV1) -> Result<PeerReplyV1, PeerCallError> {
        let request = encode_request(self.local, message);
        let reply = self
            .runtime
            .block_on(self.pool.request(self.peer, None, request, self.timeout))
            .map_err(|e| PeerCallError::Transport(e.to_string()))?;
        decode_reply(&reply)
    }

    /// [`Link::partitions_in_sync`], or none when the comparison fails (every partition then runs
    /// a round, as without it, over protocol version 1); a failure is counted like a failed
    /// exchange.
    fn compare(&self, store: &EngineSyncStore, partitions: &[u16], progress: &SyncProgress) -> (BTreeSet<u16>, u8) {
        self.partitions_in_sync(store, partitions).unwrap_or_else(|e| {
            tracing::debug!(peer = %self.peer, error = %e, "comparing version vectors failed");
            progress.last_error_ms.store(unix_ms(), Ordering::Relaxed);
            metrics::counter!("meridian_sync_pass_errors_total").increment(1);
            (BTreeSet::new(), 1)
        })
    }

    /// Which of `partitions` have the same version vector here and at the peer (one exchange),
    /// and the protocol version the connection speaks.
    fn partitions_in_sync(
        &self,
        store: &EngineSyncStore,
        partitions: &[u16],
    ) -> Result<(BTreeSet<u16>, u8), PassFailed> {
        if partitions.is_empty() {
            // Nothing shared: no round to run, whichever version the connection speaks.
            return Ok((Default::default(), 1));
        }
        // Ascending and without duplicates: the order a version-3 answer comes back in.
        let partitions: Vec<u16> = partitions.iter().copied().collect::<BTreeSet<u16>>().into_iter().collect();
        let ours = vv_digests(store, &partitions)?;
        // Version 3 compares them all in one number first: an idle pair sends 50 bytes, not a
        // digest per partition. The message is built for the connection it goes out on.
        let build = |version: u8| {
            let message = if version >= 3 {
                PeerMessageV1::VvCombined { partitions: partition_bitmap(&partitions), digest: combined_digest(&ours) }
            } else {
                PeerMessageV1::VvDigests { partitions: partitions.clone() }
            };
            encode_request(self.local, message)
        };
        let (_, version, reply) = self
            .runtime
            .block_on(self.pool.request_versioned(self.peer, None, build, self.timeout))
            .map_err(|e| PeerCallError::Transport(e.to_string()))?;
        let theirs = match decode_reply(&reply)? {
            PeerReplyV1::VvDigests(digests) if version >= 3 && digests.is_empty() => {
                return Ok((partitions.into_iter().collect(), version))
            }
            PeerReplyV1::VvDigests(digests) if digests.len() == partitions.len() => digests,
            other => return Err(PeerCallError::unexpected(&other).into()),
        };
        let same = partitions.iter().zip(ours.iter().zip(&theirs)).filter(|(_, (a, b))| a == b).map(|(p, _)| *p);
        Ok((same.collect(), version))
    }

    /// Lets the sessions of `due` partitions (`sessions` is indexed by partition) run their rounds
    /// together. Their offers — the first request of every round, and the next one while records
    /// remain — go in `SyncBatch`es of at most [`MAX_SYNC_BATCH`]; the digest fallback's requests
    /// (each a scan of the partition on the peer) go one per `Sync`, a batch of offers and a
    /// fallback request taking turns so neither starves the other. Each answer goes to its
    /// partition's session, whose next request joins the queue; each session makes at most
    /// [`MAX_EXCHANGES_PER_PASS`] exchanges per pass.
    ///
    /// The answerer answers a batch's offers in order and stops at its byte budget, so the offers
    /// after the last one answered were cut by the budget: they go first in the next batch (the
    /// first offer of a batch always fits). An offer left out before one that was answered, or
    /// first in its batch, was refused, as is a fallback request left unanswered: the pass fails
    /// once the rest is done (the session sends it again once due). A transport failure ends the
    /// pass at once.
    fn pass_batched(
        &self,
        sessions: &mut [SyncSession],
        due: &[u16],
        store: &mut EngineSyncStore,
        now_ms: u64,
        shutdown: &CancellationToken,
    ) -> Result<(), PassFailed> {
        let mut failed = None;
        let mut queues = Queues::default();
        let mut exchanges = vec![0usize; sessions.len()];
        for &partition in due {
            let session = &mut sessions[usize::from(partition)];
            if let Err(e) = session.tick(store, now_ms) {
                failed.get_or_insert(PassFailed::Session(e.to_string()));
            }
            queues.take_from(session, &mut exchanges);
            take_events(session, store);
        }
        let mut offers_turn = true;
        while !shutdown.is_cancelled() {
            let requests = queues.next(&mut offers_turn);
            if requests.is_empty() {
                break;
            }
            let (batches, requests): (Vec<_>, Vec<_>) = requests.into_iter().unzip();
            for (batch, answer) in batches.into_iter().zip(self.call_together(requests)) {
                let replies = match answer {
                    Ok(PeerReplyV1::Sync(replies)) => replies,
                    Ok(other) => return Err(PeerCallError::unexpected(&other).into()),
                    Err(e @ PeerCallError::Transport(_)) => return Err(e.into()),
                    Err(e) => {
                        failed.get_or_insert(e.into());
                        continue;
                    }
                };
                let asked: BTreeSet<u16> = batch.iter().map(|m| m.partition().0).collect();
                let mut answered = BTreeSet::new();
                for reply in replies {
                    let partition = reply.partition().0;
                    if !asked.contains(&partition) {
                        continue;
                    }
                    if let Err(e) = sessions[usize::from(partition)].step(store, now_ms, reply) {
                        failed.get_or_insert(PassFailed::Session(e.to_string()));
                    }
                    answered.insert(partition);
                }
                let last_answered = batch.iter().rposition(|m| answered.contains(&m.partition().0));
                let mut cut = Vec::new();
                for (index, message) in batch.into_iter().enumerate() {
                    let partition = message.partition().0;
                    if answered.contains(&partition) {
                        continue;
                    }
                    if is_offer(&message) && last_answered.is_some_and(|last| index > last) {
                        cut.push(message);
                    } else {
                        failed
                            .get_or_insert(PassFailed::Session(format!("partition {partition}: the peer refused it")));
                    }
                }
                queues.offers_first(cut);
                for partition in answered {
                    let session = &mut sessions[usize::from(partition)];
                    queues.take_from(session, &mut exchanges);
                    take_events(session, store);
                }
            }
        }
        if failed.is_none() && !shutdown.is_cancelled() && queues.capped {
            failed =
                Some(PassFailed::Session(format!("a session made {MAX_EXCHANGES_PER_PASS} exchanges in this pass")));
        }
        failed.map_or(Ok(()), Err)
    }

    /// [`Link::call_for_batch`] of each of `requests`, all in flight at once (each on a stream of
    /// its own); the answers in the order of the requests. Blocks.
    fn call_together(&self, requests: Vec<PeerMessageV1>) -> Vec<Result<PeerReplyV1, PeerCallError>> {
        let calls = requests.into_iter().map(|request| self.call_for_batch(request));
        self.runtime.block_on(futures::future::join_all(calls))
    }

    /// Sends `request` (a `Sync`, or a `SyncBatch` of offers) built for the connection it goes out
    /// on: a connection dialled again to a node of version 4 or earlier gets the batch's first
    /// offer alone as a `Sync` (the others go unanswered, and are asked again).
    async fn call_for_batch(&self, request: PeerMessageV1) -> Result<PeerReplyV1, PeerCallError> {
        let build = |version: u8| {
            let request = match request {
                PeerMessageV1::SyncBatch(mut batch) if version < SYNC_BATCH_VERSION && !batch.is_empty() => {
                    PeerMessageV1::Sync(batch.swap_remove(0))
                }
                other => other,
            };
            encode_request(self.local, request)
        };
        let (_, _, reply) = self
            .pool
            .request_versioned(self.peer, None, build, self.timeout)
            .await
            .map_err(|e| PeerCallError::Transport(e.to_string()))?;
        decode_reply(&reply)
    }

    /// Lets one partition's session run a round if one is due, carrying its requests to the peer.
    fn pass(&self, session: &mut SyncSession, store: &mut EngineSyncStore, now_ms: u64) -> Result<(), PassFailed> {
        session.tick(store, now_ms).map_err(|e| PassFailed::Session(e.to_string()))?;
        for _ in 0..MAX_EXCHANGES_PER_PASS {
            let Some(message) = session.poll_outbound() else { return Ok(()) };
            match self.call(PeerMessageV1::Sync(message))? {
                PeerReplyV1::Sync(replies) => {
                    for reply in replies {
                        session.step(store, now_ms, reply).map_err(|e| PassFailed::Session(e.to_string()))?;
                    }
                }
                other => return Err(PeerCallError::unexpected(&other).into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{self, LogRecord};
    use crate::storage::{Batch, MemoryEngine, Space};
    use meridian_client::proto::Key;
    use meridian_crdt::{Entry, Hlc, Mutation, VersionVector, WriteContext};
    use meridian_replication::antientropy::SyncMessageV1;

    /// A store holding, in each of `partitions`, one record of origin 2 writing a register of
    /// `value_bytes` bytes; and an offer for each partition from a replica that holds nothing.
    fn store_and_offers(partitions: &[(&str, usize)]) -> (EngineSyncStore, Vec<SyncMessage>) {
        let store = EngineSyncStore::new(Arc::new(MemoryEngine::new()), NodeId(1));
        let mut offers = Vec::new();
        let mut batch = Batch::new();
        for (name, value_bytes) in partitions {
            let key = Key::new("t", *name).unwrap();
            let p = layout::partition_of(&layout::data_key(&key));
            let write = WriteContext { node: NodeId(2), ts: Hlc { wall_ms: 1, logical: 0 } };
            let delta =
                Entry::mutation_delta(None, &Mutation::RegisterSet { value: vec![7; *value_bytes] }, &write).unwrap();
            let record = LogRecord::V1 { key, delta, ts: Hlc::unpack(1 << 16) };
            batch.put(Space::Log, layout::log_key(p, NodeId(2), 1).to_vec(), layout::encode(&record));
            batch.max_u64(Space::Meta, layout::vv_key(p, NodeId(2)), 1);
            offers.push(SyncMessage::V1(SyncMessageV1::Offer {
                partition: PartitionId(p),
                request: u64::from(p),
                vv: VersionVector::new(),
                safe_hlc: 0,
            }));
        }
        store.engine().write(batch).unwrap();
        (store, offers)
    }

    fn answered(reply: PeerReplyV1) -> Vec<(u16, usize)> {
        let PeerReplyV1::Sync(replies) = reply else { panic!("{reply:?}") };
        replies
            .into_iter()
            .map(|m| match m {
                SyncMessage::V1(SyncMessageV1::Records { partition, records, .. }) => (partition.0, records.len()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_batch_answers_each_partition_as_a_sync_of_its_own_would() {
        let (store, offers) = store_and_offers(&[("a", 10), ("b", 10), ("c", 10)]);
        let partitions: Vec<u16> = offers.iter().map(|m| m.partition().0).collect();
        let reply = answer_sync_batch(store.clone(), SyncConfig::default(), NodeId(1), NodeId(3), offers.clone(), None)
            .unwrap();
        assert_eq!(answered(reply), partitions.iter().map(|p| (*p, 1)).collect::<Vec<_>>());
        for offer in offers {
            let alone = answer_sync(store.clone(), SyncConfig::default(), NodeId(1), NodeId(3), offer.clone(), None);
            assert_eq!(answered(alone.unwrap()), vec![(offer.partition().0, 1)]);
        }
    }

    #[test]
    fn a_batch_reply_stays_within_its_budget() {
        // Each record is larger than the budget's share: each travels alone, and the second would
        // take the reply past the budget, so it is left out (the asker's session asks again).
        let big = BATCH_REPLY_BYTES * 3 / 4;
        let (store, offers) = store_and_offers(&[("a", big), ("b", big)]);
        let first = offers[0].partition().0;
        let reply = answer_sync_batch(store, SyncConfig::default(), NodeId(1), NodeId(3), offers, None).unwrap();
        assert_eq!(answered(reply), vec![(first, 1)]);
    }

    fn offer(partition: u16) -> SyncMessage {
        SyncMessage::V1(SyncMessageV1::Offer {
            partition: PartitionId(partition),
            request: 1,
            vv: VersionVector::new(),
            safe_hlc: 0,
        })
    }

    fn digest_request(partition: u16) -> SyncMessage {
        SyncMessage::V1(SyncMessageV1::DigestRequest {
            partition: PartitionId(partition),
            request: 2,
            split_bits: 2,
            full: true,
            parents: vec![],
        })
    }

    fn partitions(messages: &[SyncMessage]) -> Vec<u16> {
        messages.iter().map(|m| m.partition().0).collect()
    }

    #[test]
    fn a_batched_pass_alternates_offer_batches_and_fallback_requests_and_resends_cut_offers_first() {
        let mut queues = Queues::default();
        queues.offers.extend((0..(MAX_SYNC_BATCH as u16 + 2)).map(offer));
        let fallbacks = 500..500 + FALLBACK_IN_FLIGHT as u16 + 1;
        queues.others.extend(fallbacks.clone().map(digest_request));
        let mut offers_turn = true;
        let mut next = |queues: &mut Queues| queues.next(&mut offers_turn);
        let [(batch, request)] = <[_; 1]>::try_from(next(&mut queues)).unwrap();
        assert!(matches!(request, PeerMessageV1::SyncBatch(_)));
        assert_eq!(partitions(&batch), (0..MAX_SYNC_BATCH as u16).collect::<Vec<_>>(), "a full batch, in order");
        // The budget cut the batch after its 10th answer: those go first next time, in order.
        queues.offers_first(batch[10..].to_vec());
        let together = next(&mut queues);
        assert!(together.iter().all(|(_, r)| matches!(r, PeerMessageV1::Sync(_))), "fallback requests' turn");
        let sent: Vec<u16> = together.iter().flat_map(|(batch, _)| partitions(batch)).collect();
        assert_eq!(sent, fallbacks.clone().take(FALLBACK_IN_FLIGHT).collect::<Vec<_>>(), "as many as go together");
        let [(batch, _)] = <[_; 1]>::try_from(next(&mut queues)).unwrap();
        let mut expected: Vec<u16> = (10..MAX_SYNC_BATCH as u16).collect();
        expected.extend([MAX_SYNC_BATCH as u16, MAX_SYNC_BATCH as u16 + 1]);
        assert_eq!(partitions(&batch), expected, "cut offers first, then the rest");
        let [(batch, _)] = <[_; 1]>::try_from(next(&mut queues)).unwrap();
        assert_eq!(partitions(&batch), [fallbacks.end - 1]);
        assert!(next(&mut queues).is_empty());
    }

    #[test]
    fn a_session_makes_a_bounded_number_of_exchanges_per_batched_pass() {
        let (mut store, _) = store_and_offers(&[]);
        let mut session = SyncSession::new(SyncConfig::default(), PartitionId(3), NodeId(1), NodeId(2), 1).unwrap();
        let mut exchanges = vec![0; 256];
        let mut queues = Queues::default();
        session.tick(&mut store, 0).unwrap();
        queues.take_from(&mut session, &mut exchanges);
        assert_eq!((partitions(&Vec::from(queues.offers.clone())), exchanges[3], queues.capped), (vec![3], 1, false));
        exchanges[3] = MAX_EXCHANGES_PER_PASS;
        let mut again = SyncSession::new(SyncConfig::default(), PartitionId(3), NodeId(1), NodeId(2), 9).unwrap();
        again.tick(&mut store, 0).unwrap();
        queues.take_from(&mut again, &mut exchanges);
        assert!(queues.capped && queues.offers.len() == 1, "not queued past the bound, and noted");
    }
}
