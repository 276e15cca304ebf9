//! The anti-entropy threads, one per peer, started and stopped as the membership changes
//! (`peer_sync.rs` is what each thread runs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_crdt::NodeId;
use meridian_replication::antientropy::SyncConfig;
use tokio_util::sync::CancellationToken;

use crate::peer::PeerPool;
use crate::region::cluster::Cluster;
use crate::region::peer_sync::{spawn_peer_sync, SyncProgress};
use crate::store::sync_store::EngineSyncStore;

/// A running sync thread: how to stop it, and its progress.
type SyncThread = (CancellationToken, Arc<SyncProgress>);

/// The anti-entropy threads, one per peer, started and stopped as the membership changes.
pub struct SyncThreads {
    running: Mutex<BTreeMap<(NodeId, SocketAddr), SyncThread>>,
    handles: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl SyncThreads {
    /// No threads yet.
    pub fn new() -> Arc<SyncThreads> {
        Arc::new(SyncThreads { running: Mutex::new(BTreeMap::new()), handles: Mutex::new(Vec::new()) })
    }

    /// Progress of the sync with each peer.
    pub fn progress(&self) -> Vec<(NodeId, Arc<SyncProgress>)> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.iter().map(|((id, _), (_, progress))| (*id, progress.clone())).collect()
    }

    /// Takes the thread handles (to join them at shutdown).
    pub fn take_handles(&self) -> Vec<std::thread::JoinHandle<()>> {
        std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Keeps one thread per current peer until `shutdown`.
    #[allow(clippy::too_many_arguments)] // each is a distinct knob
    pub async fn supervise(
        self: Arc<Self>,
        cluster: Arc<Cluster>,
        store: EngineSyncStore,
        pool: Arc<PeerPool>,
        config: SyncConfig,
        interval: Duration,
        request_timeout: Duration,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(Duration::from_millis(500));
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            let wanted: Vec<(NodeId, SocketAddr)> = cluster.peers();
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.retain(|peer, (token, _)| {
                let keep = wanted.contains(peer);
                if !keep {
                    token.cancel();
                }
                keep
            });
            for (id, addr) in wanted {
                if running.contains_key(&(id, addr)) {
                    continue;
                }
                let token = shutdown.child_token();
                let progress = Arc::new(SyncProgress::default());
                let handle = spawn_peer_sync(
                    cluster.clone(),
                    store.clone(),
                    pool.clone(),
                    id,
                    addr,
                    config.clone(),
                    interval,
                    request_timeout,
                    progress.clone(),
                    token.clone(),
                );
                self.handles.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
                running.insert((id, addr), (token, progress));
                tracing::info!(peer = %id, %addr, "anti-entropy with a new peer");
            }
        }
    }
}
