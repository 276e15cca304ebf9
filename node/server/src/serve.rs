//! Assembles a running node — storage, the replica, the region, the node façade, the QUIC client
//! endpoint, the HTTP API, the peer service and background upkeep —
//! all stopped by one cancellation token (SIGTERM / Ctrl-C in the binary, `shutdown()` in tests).

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use meridian_replication::antientropy::SyncConfig;

use crate::api::http_serve::{serve_http, HttpBounds};
use crate::api::node::Node;
use crate::api::peer_service::PeerService;
use crate::config::Config;
use crate::peer::{PeerEndpoint, PeerPool, PeerTlsConfig, PeerTransportConfig};
use crate::region::cluster::Cluster;
use crate::region::coordinator::Coordinator;
use crate::region::hints::Hints;
use crate::region::sync_threads::SyncThreads;
use crate::replica::Replica;
use crate::storage::{Durability, Engine, RocksEngine, RocksOptions, Space};
use crate::store::sync_store::EngineSyncStore;

/// Idempotency records examined per upkeep tick.
const IDEMPOTENCY_SWEEP_BUDGET: usize = 10_000;
/// Most time between full idempotency sweeps (a short TTL is swept more often: a quarter of it).
const IDEMPOTENCY_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Pause between budget-sized steps of one sweep.
const IDEMPOTENCY_SWEEP_PAUSE: Duration = Duration::from_millis(50);

/// A node that is serving.
pub struct RunningNode {
    /// The node core.
    pub node: Arc<Node>,
    /// Where the QUIC client protocol listens (the real port when configured with port 0).
    pub client_addr: SocketAddr,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Whether the HTTP API is served over TLS (`https://`).
    pub http_https: bool,
    /// The certificate clients should trust.
    pub cert_path: PathBuf,
    /// Where the peer transport listens, when enabled.
    pub peer_addr: Option<SocketAddr>,
    sync_threads: Option<Arc<SyncThreads>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl RunningNode {
    /// The HTTP API's base URL (`https://…` unless the node serves plain HTTP on loopback).
    pub fn http_url(&self) -> String {
        format!("{}://{}", if self.http_https { "https" } else { "http" }, self.http_addr)
    }

    /// A token that, when cancelled, shuts the node down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, drains in-flight requests (bounded), flushes the WAL and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the node has shut down (after the token was cancelled).
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.node.begin_shutdown();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(threads) = self.sync_threads {
            let handles = threads.take_handles();
            let _ = tokio::task::spawn_blocking(move || handles.into_iter().for_each(|t| drop(t.join()))).await;
        }
        self.node.wait_for_writes().await;
        let node = self.node.clone();
        match tokio::task::spawn_blocking(move || node.replica().end_run()).await {
            Ok(Ok(())) => tracing::info!("node stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "node stopped, but its last WAL sync failed"),
            Err(e) => tracing::error!(error = %e, "node stopped, but ending its run panicked"),
        }
    }
}

/// Opens storage and starts serving.
pub async fn start(config: Config) -> anyhow::Result<RunningNode> {
    // The data directory holds every key and value, the TLS key and the audit log: only this user
    // may enter it, whatever the umask (an existing directory keeps the mode its owner gave it).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let durability = if config.storage.durability == "relaxed" { Durability::Relaxed } else { Durability::Fsync };
    let options = RocksOptions { durability, cache_bytes: config.storage.cache_mb << 20, ..RocksOptions::default() };
    let db_path = config.data_dir.join("db");
    let engine = tokio::task::spawn_blocking(move || RocksEngine::open(&db_path, options))
        .await?
        .context("opening RocksDB (is another meridian process using this data_dir?)")?;
    start_with_engine(config, Arc::new(engine)).await
}

/// Starts serving over an already-open engine (tests use the in-memory twin). Built bottom-up: the
/// replica, then the region over it (when `peer.listen` is set), then the node façade over both,
/// then the surfaces that call the façade.
pub async fn start_with_engine(config: Config, engine: Arc<dyn Engine>) -> anyhow::Result<RunningNode> {
    // `Config::load` validates too; a config built in code (tests, tools) gets the same checks.
    config.validate()?;
    crate::metrics_export::prometheus();
    let tls = crate::tls::ensure_certificate(&config)?;
    if let Ok(pem) = std::fs::read_to_string(&tls.cert) {
        crate::certs::export_expiry("client_tls", &pem);
    }
    let server_config = crate::tls::client_server_config(&tls, &config)?;
    if let Some(region) = engine.get(Space::Meta, crate::layout::META_RESTORED_REGION)? {
        let region = String::from_utf8_lossy(&region);
        anyhow::ensure!(
            region == config.region,
            "this data directory was restored from a backup taken in region {region:?}, and this node is in region {:?}: its keys may not live here (data residency); restore it into a node of region {region:?}",
            config.region
        );
    }
    let replica = Replica::open(config.clone(), engine).context("opening the node state")?;
    // One revocation list for peers and client certificates alike.
    let revoked = match &config.peer.revoked {
        Some(path) => Some(Arc::new(
            crate::certs::revocation::RevocationFile::open(path)
                .context("loading the certificate revocation list (peer.revoked)")?,
        )),
        None => None,
    };
    if let Some(list) = &revoked {
        replica.auth().use_revocations(list.clone());
    }

    let endpoint = quinn::Endpoint::server(server_config, config.listen.client)
        .with_context(|| format!("binding the client port {} (listen.client)", config.listen.client))?;
    let client_addr = endpoint.local_addr()?;
    let listener = tokio::net::TcpListener::bind(config.listen.http)
        .await
        .with_context(|| format!("binding the HTTP port {} (listen.http)", config.listen.http))?;
    let http_addr = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let region = join_region(&config, &replica, revoked, (client_addr, http_addr), &tasks, &shutdown)?;
    let node = Node::new(replica.clone(), region.as_ref().map(|r| r.coordinator.clone()));
    if let Some(region) = &region {
        serve_peers(region, &node, &tasks, &shutdown);
    }
    tasks.spawn(crate::api::server::serve_clients(endpoint, node.clone(), shutdown.clone()));
    let http_tls = if config.plain_http() { None } else { Some(crate::tls::http_server_config(&tls, &config)?) };
    let http_https = http_tls.is_some();
    let bounds = HttpBounds {
        max_connections: config.limits.max_http_connections,
        header_timeout: Duration::from_millis(config.limits.http_header_timeout_ms),
    };
    tasks.spawn(serve_http(listener, node.clone(), http_tls, bounds, shutdown.clone()));
    if durability_is_relaxed(&config) {
        tasks.spawn(sync_wal_periodically(
            replica.clone(),
            Duration::from_millis(config.storage.relaxed_sync_interval_ms),
            shutdown.clone(),
        ));
    }
    tasks.spawn(expire_idempotency_records(replica.clone(), shutdown.clone()));
    let census_interval = Duration::from_millis(config.storage.census_interval_ms);
    tasks.spawn(take_census_periodically(replica.clone(), census_interval, shutdown.clone()));
    if config.storage.log_retention_s > 0 {
        let cluster = region.as_ref().map(|r| r.coordinator.cluster().clone());
        tasks.spawn(truncate_logs_periodically(replica.clone(), cluster, config.storage.clone(), shutdown.clone()));
    }
    let (peer_addr, sync_threads) = match region {
        Some(region) => (Some(region.peer_addr), Some(region.threads)),
        None => (None, None),
    };
    tracing::info!(
        %client_addr, %http_addr, https = http_https, auth = config.auth.enabled,
        node = %config.node_name, region = %config.region, "meridian node serving"
    );
    Ok(RunningNode {
        node,
        client_addr,
        http_addr,
        http_https,
        cert_path: tls.cert,
        peer_addr,
        sync_threads,
        shutdown,
        tasks,
    })
}

/// The region side of a running node, once it has joined.
struct JoinedRegion {
    coordinator: Arc<Coordinator>,
    endpoint: PeerEndpoint,
    store: EngineSyncStore,
    sync_config: SyncConfig,
    peer_addr: SocketAddr,
    threads: Arc<SyncThreads>,
}

/// Binds the peer transport and joins the region (when `peer.listen` is set): membership gossip,
/// the coordinator (placement, fan-out, quorum reads, hints), anti-entropy with every peer and the
/// residency jobs. The peer service, which needs the node façade, starts in [`serve_peers`].
fn join_region(
    config: &Config,
    replica: &Arc<Replica>,
    revoked: Option<Arc<crate::certs::revocation::RevocationFile>>,
    (client_addr, http_addr): (SocketAddr, SocketAddr),
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<JoinedRegion>> {
    let Some(listen) = config.peer.listen else { return Ok(None) };
    let (ca, cert, key) = match (&config.peer.ca, &config.peer.cert, &config.peer.key) {
        (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
        _ => anyhow::bail!("peer.listen needs peer.ca, peer.cert and peer.key"),
    };
    let tls = PeerTlsConfig::from_files(ca, cert, key, &config.cluster_id)
        .context("loading the peer certificates (peer.ca, peer.cert, peer.key)")?;
    crate::certs::export_expiry("node", &tls.cert_pem);
    crate::certs::export_expiry("ca", &tls.ca_pem);
    let defaults = PeerTransportConfig::default();
    let transport = PeerTransportConfig {
        max_frame_bytes: config.limits.peer_frame_bytes(defaults.max_frame_bytes),
        max_protocol_version: config.peer.max_protocol_version,
        ..defaults
    };
    let endpoint = PeerEndpoint::bind_with(listen, tls, transport, revoked)
        .with_context(|| format!("binding the peer port {listen} (peer.listen)"))?;
    // A node's region is the one its certificate was issued for: residency decisions (what this
    // node may hold, what peers send it) rest on it, so a config that claims another is refused.
    let certified = endpoint.identity().region.clone();
    anyhow::ensure!(
        certified == config.region,
        "the config says region {:?} but the node certificate {} was issued for region {:?}: a node's region \
         comes from its certificate (issue one for {:?} with `meridian certs node`, or fix `region`)",
        config.region,
        cert.display(),
        certified,
        config.region
    );
    // Peers hold a node's own membership record to its certificate's name (and region, above): a
    // node announcing another would have all its gossip refused, so it does not start. The zone
    // only spreads placement; a mismatch is allowed (deployments predating the check have them).
    let identity = endpoint.identity();
    anyhow::ensure!(
        config.node_name == identity.name,
        "the config says node_name {:?} but the node certificate {} was issued for {:?}: peers refuse a node \
         whose membership record contradicts its certificate (fix `node_name`, or issue a certificate with \
         `meridian certs node`)",
        config.node_name,
        cert.display(),
        identity.name,
    );
    if config.zone != identity.zone {
        tracing::warn!(
            configured = %config.zone,
            certified = %identity.zone,
            "the zone in the config differs from the node certificate's; placement uses the configured one"
        );
    }
    let peer_addr = endpoint.local_addr()?;
    let advertised = config.peer.advertise.unwrap_or(peer_addr);
    let cluster = Cluster::open(replica.engine().clone(), replica.id(), config, advertised, client_addr, http_addr)
        .context("opening the cluster membership")?;
    let interval = Duration::from_millis(config.peer.interval_ms());
    let sync_config = SyncConfig { round_interval_ms: config.peer.interval_ms(), ..Default::default() };
    // One store for everything that writes replicated state: its clones serialise writes per partition.
    let store = replica.sync_store();
    let hints =
        Arc::new(Hints::open(replica.engine().clone(), config.peer.max_hints_per_node).context("opening the hints")?);
    let pool = Arc::new(PeerPool::new(endpoint.clone()));
    let request_timeout = Duration::from_millis(config.limits.request_timeout_ms);
    let threads = SyncThreads::new();
    let coordinator = Arc::new(Coordinator::new(
        replica.clone(),
        cluster.clone(),
        pool.clone(),
        hints,
        request_timeout / 2,
        threads.clone(),
    ));
    // Records pushed here from other regions count towards the lag from their region; causal
    // timeouts name origins by their member name and region.
    // (Held weakly: the replica's store must not keep the coordinator, which holds the replica, alive.)
    let lag_source = Arc::downgrade(&coordinator);
    store.observe_applied(Box::new(move |records| {
        if let Some(coordinator) = lag_source.upgrade() {
            coordinator.note_applied(records);
        }
    }));
    // Records of an origin that is not a member (tombstones included) are refused: no node of the
    // cluster wrote them.
    let members = Arc::downgrade(&cluster);
    store.check_origins_with(Box::new(move |origin| {
        members.upgrade().is_some_and(|cluster| cluster.member(origin).is_some())
    }));
    let names = cluster.clone();
    replica
        .name_origins_with(Box::new(move |origin| names.member(origin).map(|m| format!("{} ({})", m.name, m.region))));

    tasks.spawn(crate::region::gossip::gossip(
        replica.clone(),
        cluster.clone(),
        pool,
        Duration::from_millis(config.peer.gossip_interval_ms),
        shutdown.clone(),
    ));
    tasks.spawn(coordinator.clone().replay_hints(shutdown.clone()));
    tasks.spawn(replica.clone().persist_safe_times_every(Duration::from_secs(1), shutdown.clone()));
    tasks.spawn(coordinator.clone().track_handoff(shutdown.clone()));
    tasks.spawn(coordinator.clone().write_back_fetched(shutdown.clone()));
    tasks.spawn(crate::region::residency_jobs::run(coordinator.clone(), store.clone(), shutdown.clone()));
    // Anti-entropy gets connections of its own: bulk sync streams then never share a connection's
    // flow-control window with the requests clients are waiting for.
    let sync_pool = Arc::new(PeerPool::new(endpoint.clone()));
    tasks.spawn(threads.clone().supervise(
        cluster,
        store.clone(),
        sync_pool,
        sync_config.clone(),
        interval,
        request_timeout,
        shutdown.clone(),
    ));
    tracing::info!(%peer_addr, seeds = config.peer.seeds.len(), rf = config.peer.rf, "joined the region");
    Ok(Some(JoinedRegion { coordinator, endpoint, store, sync_config, peer_addr, threads }))
}

/// Answers peers: the peer service over the node façade (forwarded requests run through it).
fn serve_peers(region: &JoinedRegion, node: &Arc<Node>, tasks: &TaskTracker, shutdown: &CancellationToken) {
    let service = Arc::new(PeerService::new(
        node.clone(),
        Some(region.coordinator.cluster().clone()),
        region.store.clone(),
        region.sync_config.clone(),
    ));
    let (endpoint, serve_shutdown) = (region.endpoint.clone(), shutdown.clone());
    tasks.spawn(async move { endpoint.serve(service, serve_shutdown).await });
}

fn durability_is_relaxed(config: &Config) -> bool {
    config.storage.durability == "relaxed"
}

async fn sync_wal_periodically(node: Arc<Replica>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
        let node = node.clone();
        let syncing = node.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || syncing.engine().sync_wal()).await {
            // Writes acknowledged since the last sync may not be on disk: stop taking more (the
            // same fence as a failed commit; store/commit.rs).
            node.fence_storage(&format!("relaxed-mode WAL sync failed: {e}"));
        }
    }
}

/// Counts live keys and the tombstones kept, a pass every `interval` (`storage.census_interval_ms`;
/// the first within 5 s of start), each step of the pass on a blocking thread with a pause between
/// steps, and publishes each pass's counts at its end.
async fn take_census_periodically(node: Arc<Replica>, interval: Duration, shutdown: CancellationToken) {
    use crate::store::census::{Census, CENSUS_STEP};
    let mut wait = interval.min(Duration::from_secs(5));
    while shutdown.run_until_cancelled(tokio::time::sleep(wait)).await.is_some() {
        wait = interval;
        let mut census = Census::default();
        let mut start = Vec::new();
        loop {
            let engine = node.engine().clone();
            let step = tokio::task::spawn_blocking(move || {
                let next = census.step(engine.as_ref(), &start, CENSUS_STEP);
                (census, next)
            });
            // A failed step ends the pass unpublished: half a count would read as deletes undone.
            let (counted, next) = match step.await {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!(error = %e, "data census step panicked; the next pass starts over");
                    break;
                }
            };
            let next = match next {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "data census step failed; the next pass starts over");
                    break;
                }
            };
            census = counted;
            match next {
                Some(next) => start = next,
                None => {
                    census.publish();
                    node.record_census(&census);
                    break;
                }
            }
            if shutdown.run_until_cancelled(tokio::time::sleep(Duration::from_millis(20))).await.is_none() {
                return;
            }
        }
    }
}

/// Log records read or deleted per truncation step; a step cut short goes on after a short pause.
const LOG_TRUNCATION_BUDGET: usize = 20_000;

/// Cuts the delta log (`store/log_truncation.rs`) every `storage.log_truncation_interval_ms`, in
/// budget-sized steps: below what every node that reads it holds (the `cluster`'s log readers; a
/// node without a region has none), and below its retention.
async fn truncate_logs_periodically(
    node: Arc<Replica>,
    cluster: Option<Arc<Cluster>>,
    storage: crate::config::StorageConfig,
    shutdown: CancellationToken,
) {
    use crate::store::log_truncation::RetentionController;
    let mut retention = RetentionController::new(
        storage.log_retention_s.saturating_mul(1000),
        storage.log_retention_mb.saturating_mul(1 << 20),
    );
    let interval = Duration::from_millis(storage.log_truncation_interval_ms);
    while shutdown.run_until_cancelled(tokio::time::sleep(interval)).await.is_some() {
        let log_bytes = node.engine().space_usage(Space::Log).map_or(0, |u| u.sst_bytes + u.memtable_bytes);
        let now_ms = unix_now_ms();
        let keep_ms = retention.next(log_bytes, now_ms);
        metrics::gauge!("meridian_log_retention_seconds").set(keep_ms as f64 / 1000.0);
        let mut from = 0;
        let mut stable_partitions = 0;
        loop {
            let store = node.sync_store();
            let cutoff_ms = now_ms.saturating_sub(keep_ms);
            let cluster = cluster.clone();
            let step = tokio::task::spawn_blocking(move || {
                let stable = |partition: u16, vv: &meridian_crdt::VersionVector| {
                    let readers = match &cluster {
                        Some(cluster) => cluster.log_readers(partition)?,
                        None => Vec::new(),
                    };
                    store.peer_vectors().stable(partition, &readers, vv)
                };
                store.truncate_from(cutoff_ms, stable, LOG_TRUNCATION_BUDGET, from)
            });
            match step.await {
                Ok(Ok(summary)) => {
                    stable_partitions += summary.stable_partitions;
                    if summary.resume_at.is_none() {
                        metrics::gauge!("meridian_log_stable_partitions").set(stable_partitions as f64);
                    }
                    metrics::counter!("meridian_log_truncated_records_total").increment(summary.deleted);
                    if summary.deleted > 0 {
                        tracing::debug!(deleted = summary.deleted, keep_ms, "delta log truncated");
                    }
                    match summary.resume_at {
                        Some(partition) => from = partition,
                        None => break,
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "log truncation failed");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "log truncation panicked");
                    break;
                }
            }
            if shutdown.run_until_cancelled(tokio::time::sleep(IDEMPOTENCY_SWEEP_PAUSE)).await.is_none() {
                return;
            }
        }
    }
}

/// The wall clock in Unix milliseconds (what the retention controllers are stepped by).
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Time between full sweeps: a quarter of the TTL applied, at least a second and at most
/// [`IDEMPOTENCY_SWEEP_INTERVAL`], so expired records wait at most a quarter of their TTL longer.
fn idempotency_sweep_interval(ttl_ms: u64) -> Duration {
    Duration::from_millis(ttl_ms / 4).clamp(Duration::from_secs(1), IDEMPOTENCY_SWEEP_INTERVAL)
}

/// Sweeps expired idempotency records, full pass after full pass. The TTL applied is
/// `limits.idempotency_ttl_s`, shortened while the records take more than
/// `limits.idempotency_max_mb` — as measured by the previous full pass (the bytes of the records it
/// kept), which, unlike the space's table files, does not wait for compactions.
async fn expire_idempotency_records(node: Arc<Replica>, shutdown: CancellationToken) {
    use crate::store::log_truncation::RetentionController;
    let limits = &node.config().limits;
    let configured_ms = limits.idempotency_ttl_s.saturating_mul(1000);
    let mut ttl = RetentionController::new(configured_ms, limits.idempotency_max_mb.saturating_mul(1 << 20));
    let mut ttl_ms = configured_ms;
    let (mut cursor, mut kept_this_pass, mut kept_last_pass) = (None, (0u64, 0u64), 0u64);
    loop {
        if cursor.is_none() {
            ttl_ms = ttl.next(kept_last_pass, unix_now_ms());
            metrics::gauge!("meridian_idempotency_ttl_seconds").set(ttl_ms as f64 / 1000.0);
        }
        let sweeper = node.clone();
        let from = cursor.take();
        match tokio::task::spawn_blocking(move || {
            sweeper.expire_idempotency_records(from, IDEMPOTENCY_SWEEP_BUDGET, ttl_ms)
        })
        .await
        {
            Ok(Ok(step)) => {
                cursor = step.next;
                kept_this_pass.0 += step.kept_records;
                kept_this_pass.1 += step.kept_bytes;
                if cursor.is_none() {
                    let (records, bytes) = std::mem::take(&mut kept_this_pass);
                    metrics::gauge!("meridian_idempotency_records").set(records as f64);
                    metrics::gauge!("meridian_idempotency_bytes").set(bytes as f64);
                    kept_last_pass = bytes;
                }
            }
            // The pass goes on from the start: its total so far would undercount.
            Ok(Err(e)) => {
                kept_this_pass = (0, 0);
                tracing::warn!(error = %e, "idempotency sweep failed")
            }
            Err(e) => {
                kept_this_pass = (0, 0);
                tracing::warn!(error = %e, "idempotency sweep panicked")
            }
        }
        // A full pass rests for the interval; a pass cut short by the budget goes on at once (after a
        // short pause that keeps it from hogging the disk), so sweeping keeps up with any write rate.
        let pause = if cursor.is_some() { IDEMPOTENCY_SWEEP_PAUSE } else { idempotency_sweep_interval(ttl_ms) };
        if shutdown.run_until_cancelled(tokio::time::sleep(pause)).await.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_idempotency_ttl_is_swept_more_often() {
        assert_eq!(
            idempotency_sweep_interval(24 * 3_600_000),
            IDEMPOTENCY_SWEEP_INTERVAL,
            "the default: once a minute"
        );
        assert_eq!(idempotency_sweep_interval(60_000), Duration::from_secs(15));
        assert_eq!(idempotency_sweep_interval(2_000), Duration::from_secs(1), "at least a second");
    }
}
