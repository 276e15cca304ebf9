//! The region layer: everything a node does with its peers, built on the local replica.
//!
//! - [`cluster`]: this node's view — membership (a CRDT), failure detection, placement of every
//!   partition over every region.
//! - [`coordinator`]: requests in a region — routing and forwarding, residency proxies, writes
//!   pushed to replicas and shipped to other regions, quorum reads with write-back, hints,
//!   handoff, region-wide listings.
//! - [`hints`]: durable, bounded hints for replicas that missed a write.
//! - [`gossip`]: membership exchange, heartbeats, safe-time reports, residency rule exchange.
//! - [`sync_threads`] and [`peer_sync`]: anti-entropy, one thread per peer.
//! - [`lag`]: replication lag from every other region.
//! - [`residency_jobs`]: purges and backfills after a residency rule change.
//! - [`restored`]: a copied backup made a node's store (fresh node id, the old one removed).
//!
//! It calls the replica, the store, the peer transport and the layers below; it never calls the
//! api layer (the peer service calls it).

pub mod cluster;
pub mod coordinator;
pub mod gossip;
pub mod hints;
pub mod lag;
pub mod peer_sync;
pub mod residency_jobs;
pub mod restored;
pub mod sync_threads;
