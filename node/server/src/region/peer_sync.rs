//! Anti-entropy between the replicas of each partition over the mutual-TLS peer transport.
//!
//! The sans-IO [`SyncSession`] decides what to send; this module carries its messages as
//! `Sync` requests of the peer protocol ((`crate::api::peer_service`)). The answering side keeps no
//! state between requests (a fresh session per request), so a restart of either side loses nothing.
//!
//! Each peer is served by one thread that runs, in turn, the sessions of the partitions this node
//! shares with it under the current placement ([`Cluster::syncs_with`]: both are replicas, or this
//! node is draining and hands the partition to its new replicas). It calls the storage (which
//! blocks, and joins replicated state under the node's key locks) and the network (through the
//! runtime handle). A pass starts with one exchange comparing the vectors of every shared partition,
//! and runs rounds only for those that differ — compared again once per `sync_interval_ms` while the
//! pass lasts, since each round costs a round trip and a comparison made during a burst of writes
//! soon goes stale. An idle pair costs one small request per pass. A peer the failure detector
//! holds dead is skipped until it answers gossip again.

use meridian_crdt::NodeId;
use meridian_replication::antientropy::{PartitionId, SyncConfig, SyncEvent, SyncMessage, SyncSession};
use meridian_replication::SafeReport;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::layout::PARTITIONS;
use crate::peer::protocol::{
    combined_digest, decode_reply, encode_request, partition_bitmap, PeerCallError, PeerMessageV1, PeerRefusal,
    PeerReplyV1,
};
use crate::peer::PeerPool;
use crate::region::cluster::Cluster;
use crate::store::sync_store::{EngineSyncStore, SyncStoreError};

/// Most request/reply exchanges one partition's session may make per pass (a bound on every loop).
const MAX_EXCHANGES_PER_PASS: usize = 1024;

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
    let partition = message.partition();
    let mut session =
        SyncSession::new(config, partition, local, from, 1).map_err(|e| PeerRefusal::Sync(e.to_string()))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    session.step(&mut store, now, message).map_err(|e| PeerRefusal::Sync(e.to_string()))?;
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
    Ok(PeerReplyV1::Sync(replies))
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
    use meridian_replication::antientropy::SyncStore as _;
    partitions
        .iter()
        .map(|p| {
            let vv = store.partition_vv(PartitionId(*p))?;
            Ok(meridian_replication::stable_hash(&meridian_crdt::codec::encode(&vv)))
        })
        .collect()
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
                    let mut in_sync = link.compare(&store, &partitions, &progress);
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
                            // Rounds run one after the other, a round trip each: a comparison made
                            // during a burst of writes goes stale while the pass walks the
                            // partitions, and would have it pull, one round trip at a time,
                            // partitions the pushes have brought in sync since. Compare what is
                            // left of the pass again, once per interval.
                            let rest: Vec<u16> = partitions.iter().copied().filter(|p| *p >= partition).collect();
                            in_sync.extend(link.compare(&store, &rest, &progress));
                            compared = Instant::now();
                        }
                        if session.is_idle() && in_sync.contains(&partition) {
                            continue;
                        }
                        let passed = link.pass(session, &mut store, now_ms(started));
                        // What the peer's offers proved about its own log: causal reads here may
                        // now serve writes of its up to that time.
                        while let Some(event) = session.poll_event() {
                            match event {
                                SyncEvent::PeerSafeTime { partition, origin, hlc, covers_seq } => {
                                    store.take_report(partition.0, SafeReport { origin, seq: covers_seq, safe: hlc });
                                }
                                SyncEvent::RoundDone(report) => count_round(&report),
                            }
                        }
                        if let Err(e) = passed {
                            tracing::debug!(%addr, error = %e, "sync pass interrupted");
                            progress.last_error_ms.store(unix_ms(), Ordering::Relaxed);
                            metrics::counter!("meridian_sync_pass_errors_total").increment(1);
                            complete = false;
                            break;
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
    /// a round, as without it); a failure is counted like a failed exchange.
    fn compare(&self, store: &EngineSyncStore, partitions: &[u16], progress: &SyncProgress) -> BTreeSet<u16> {
        self.partitions_in_sync(store, partitions).unwrap_or_else(|e| {
            tracing::debug!(peer = %self.peer, error = %e, "comparing version vectors failed");
            progress.last_error_ms.store(unix_ms(), Ordering::Relaxed);
            metrics::counter!("meridian_sync_pass_errors_total").increment(1);
            BTreeSet::new()
        })
    }

    /// Which of `partitions` have the same version vector here and at the peer (one exchange).
    fn partitions_in_sync(&self, store: &EngineSyncStore, partitions: &[u16]) -> Result<BTreeSet<u16>, PassFailed> {
        if partitions.is_empty() {
            return Ok(Default::default());
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
                return Ok(partitions.into_iter().collect())
            }
            PeerReplyV1::VvDigests(digests) if digests.len() == partitions.len() => digests,
            other => return Err(PeerCallError::unexpected(&other).into()),
        };
        Ok(partitions.iter().zip(ours.iter().zip(&theirs)).filter(|(_, (a, b))| a == b).map(|(p, _)| *p).collect())
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
