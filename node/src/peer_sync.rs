//! Anti-entropy between nodes over the mutual-TLS peer transport.
//!
//! A first, full-replication step of the region design (`docs/design/replication.md`): every node
//! syncs every partition with every configured peer, so the nodes of a region converge without any
//! client reading their keys. Placement (which partitions a node holds) and quorums across nodes come
//! next; this module only moves state.
//!
//! # Protocol
//!
//! The sans-IO [`SyncSession`] decides what to send; this module carries its messages as requests on
//! the peer transport. Each request travels in a versioned envelope naming the sender's node id:
//!
//! * `Hello` → the peer's node id (sessions are keyed by it);
//! * `Sync(message)` → the messages the peer's side answers with. The answering side keeps no state
//!   between requests (a fresh session per request), so a restart of either side loses nothing.
//!
//! Each peer is served by one thread that runs the sessions of all partitions in turn, calling the
//! storage (which blocks, and joins replicated state under the node's key locks) and the network
//! (through the runtime handle). A round per partition per `sync_interval_ms` keeps an idle cluster
//! cheap: an offer whose vector matches costs one small request.

use meridian_crdt::{codec, NodeId};
use meridian_replication::antientropy::{PartitionId, SyncConfig, SyncMessage, SyncSession};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::keyspace::PARTITIONS;
use crate::node::Node;
use crate::peer::{PeerHandler, PeerIdentity, PeerPool};
use crate::sync_store::EngineSyncStore;

/// Largest peer message decoded.
const MAX_PEER_MESSAGE_BYTES: usize = 8 << 20;
/// Most request/reply exchanges one partition's session may make per pass (a bound on every loop).
const MAX_EXCHANGES_PER_PASS: usize = 1024;

/// A request between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Version 1.
    V1 {
        /// The sender's node id.
        from: NodeId,
        /// What it asks.
        message: PeerMessageV1,
    },
}

/// Version-1 peer requests.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerMessageV1 {
    /// Who are you?
    Hello,
    /// One anti-entropy message for the receiver's side of the partition's session.
    Sync(SyncMessage),
}

/// A reply between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Version 1: the answer, or why there is none.
    V1(Result<PeerReplyV1, String>),
}

/// Version-1 peer replies.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReplyV1 {
    /// The receiver's node id.
    Hello {
        /// Its id.
        node_id: NodeId,
    },
    /// The messages the receiver's session answered with.
    Sync(Vec<SyncMessage>),
}

fn now_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// Serves peers' anti-entropy requests from this node's storage.
pub struct SyncHandler {
    node: Arc<Node>,
    store: EngineSyncStore,
    config: SyncConfig,
    started: Instant,
}

impl SyncHandler {
    /// A handler over `node`'s storage, through `store` (share one store, and its clones, among
    /// everything that syncs this node: clones serialise their writes per partition).
    pub fn new(node: Arc<Node>, store: EngineSyncStore, config: SyncConfig) -> Self {
        SyncHandler { node, store, config, started: Instant::now() }
    }

    fn answer(&self, request: &[u8]) -> Result<PeerReplyV1, String> {
        let PeerRequest::V1 { from, message } =
            codec::decode(request, MAX_PEER_MESSAGE_BYTES).map_err(|e| format!("undecodable request: {e}"))?;
        match message {
            PeerMessageV1::Hello => Ok(PeerReplyV1::Hello { node_id: self.node.id() }),
            PeerMessageV1::Sync(message) => {
                let partition = message.partition();
                if partition.0 >= PARTITIONS {
                    return Err(format!("no partition {}", partition.0));
                }
                let mut store = self.store.clone();
                let mut session = SyncSession::new(self.config.clone(), partition, self.node.id(), from, 1)
                    .map_err(|e| e.to_string())?;
                session.step(&mut store, now_ms(self.started), message).map_err(|e| e.to_string())?;
                let mut replies = Vec::new();
                while let Some(reply) = session.poll_outbound() {
                    replies.push(reply);
                }
                Ok(PeerReplyV1::Sync(replies))
            }
        }
    }
}

impl PeerHandler for SyncHandler {
    async fn handle(&self, peer: &PeerIdentity, request: Vec<u8>) -> Vec<u8> {
        let handler = SyncHandler {
            node: self.node.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            started: self.started,
        };
        // Storage calls block (and take key locks): off the reactor.
        let answer = tokio::task::spawn_blocking(move || handler.answer(&request))
            .await
            .unwrap_or_else(|e| Err(format!("the sync handler failed: {e}")));
        if let Err(reason) = &answer {
            tracing::warn!(peer = %peer.name, %reason, "refused a peer sync request");
        }
        codec::encode(&PeerResponse::V1(answer))
    }
}

/// Runs anti-entropy with one peer until `shutdown`: a thread that passes over every partition each
/// `interval`.
#[allow(clippy::too_many_arguments)] // each is a distinct knob; a struct would only rename them
pub fn spawn_peer_sync(
    node: Arc<Node>,
    store: EngineSyncStore,
    pool: Arc<PeerPool>,
    peer: SocketAddr,
    config: SyncConfig,
    interval: Duration,
    request_timeout: Duration,
    shutdown: CancellationToken,
) -> std::thread::JoinHandle<()> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(format!("meridian-sync-{peer}"))
        .spawn(move || {
            let link = Link { node: &node, pool: &pool, peer, runtime: &runtime, timeout: request_timeout };
            let started = Instant::now();
            let mut peer_id = None;
            let mut sessions: Vec<SyncSession> = Vec::new();
            while !shutdown.is_cancelled() {
                let pass_started = Instant::now();
                if peer_id.is_none() {
                    peer_id = link.hello();
                    if let Some(id) = peer_id {
                        sessions = (0..PARTITIONS)
                            .map(|p| {
                                SyncSession::new(
                                    config.clone(),
                                    PartitionId(p),
                                    node.id(),
                                    id,
                                    rand::random::<u32>().into(),
                                )
                                .expect("validated sync config")
                            })
                            .collect();
                    }
                }
                if peer_id.is_some() {
                    let mut store = store.clone();
                    for session in &mut sessions {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        if let Err(e) = link.pass(session, &mut store, now_ms(started)) {
                            tracing::debug!(%peer, error = %e, "sync pass interrupted");
                            // The peer may have restarted with another id: ask again next pass.
                            peer_id = None;
                            break;
                        }
                    }
                }
                let rest = interval.saturating_sub(pass_started.elapsed());
                let _ = runtime.block_on(async { tokio::time::timeout(rest, shutdown.cancelled()).await });
            }
        })
        .expect("spawning a sync thread")
}

struct Link<'a> {
    node: &'a Arc<Node>,
    pool: &'a PeerPool,
    peer: SocketAddr,
    runtime: &'a tokio::runtime::Handle,
    timeout: Duration,
}

impl Link<'_> {
    fn call(&self, message: PeerMessageV1) -> Result<PeerReplyV1, String> {
        let request = codec::encode(&PeerRequest::V1 { from: self.node.id(), message });
        let reply = self
            .runtime
            .block_on(self.pool.request(self.peer, None, request, self.timeout))
            .map_err(|e| e.to_string())?;
        let PeerResponse::V1(answer) =
            codec::decode(&reply, MAX_PEER_MESSAGE_BYTES).map_err(|e| format!("undecodable reply: {e}"))?;
        answer
    }

    fn hello(&self) -> Option<NodeId> {
        match self.call(PeerMessageV1::Hello) {
            Ok(PeerReplyV1::Hello { node_id }) => Some(node_id),
            Ok(other) => {
                tracing::warn!(peer = %self.peer, "unexpected hello reply {other:?}");
                None
            }
            Err(reason) => {
                tracing::debug!(peer = %self.peer, %reason, "peer not reachable");
                None
            }
        }
    }

    /// Lets one partition's session run a round if one is due, carrying its requests to the peer.
    fn pass(&self, session: &mut SyncSession, store: &mut EngineSyncStore, now_ms: u64) -> Result<(), String> {
        session.tick(store, now_ms).map_err(|e| e.to_string())?;
        for _ in 0..MAX_EXCHANGES_PER_PASS {
            let Some(message) = session.poll_outbound() else { return Ok(()) };
            match self.call(PeerMessageV1::Sync(message))? {
                PeerReplyV1::Sync(replies) => {
                    for reply in replies {
                        session.step(store, now_ms, reply).map_err(|e| e.to_string())?;
                    }
                }
                other => return Err(format!("unexpected sync reply {other:?}")),
            }
        }
        Ok(())
    }
}
