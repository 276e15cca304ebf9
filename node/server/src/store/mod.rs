//! The store layer: how the node's records change, above the raw engine and the layout.
//!
//! - [`commit`]: the group committer — one thread joins concurrent writes into one durable batch and
//!   hands out the node's own log positions in commit order.
//! - [`writer`]: key lock stripes plus the committer — the one way writes enter a live node's
//!   storage, local or replicated.
//! - [`sync_store`]: the anti-entropy `SyncStore` over the engine (replicated records, states,
//!   digests), screened by residency before anything is stored.
//! - [`safe_times`]: what this node knows of other origins' logs, for causal reads.
//!
//! Nothing here knows of requests, regions or peers.

pub mod commit;
pub mod safe_times;
pub mod sync_store;
pub mod writer;
