//! The store layer: how the node's records change, above the raw engine and the layout.
//!
//! - [`commit`]: the group committer — one thread joins concurrent writes into one durable batch and
//!   hands out the node's own log positions in commit order.
//! - [`writer`]: key lock stripes plus the committer — the one way writes enter a live node's
//!   storage, local or replicated.
//! - [`sync_store`]: the anti-entropy `SyncStore` over the engine (replicated records, states,
//!   digests), screened by residency before anything is stored.
//! - [`log_truncation`]: cuts each origin's delta log to its retention (never the newest record),
//!   so a peer away longer catches up by the digest fallback.
//! - [`epoch`]: the node's id and log epoch — a new one after a run that may have lost writes it
//!   had already pushed (an unclean stop under `relaxed` durability).
//! - [`safe_times`]: what this node knows of other origins' logs, for causal reads.
//! - [`census`]: counts live keys and the tombstones kept (deleted keys, removed map fields).
//! - [`stability`]: what other nodes reported holding of each partition, so the log can be cut
//!   below what every node that reads it holds.
//!
//! Nothing here knows of requests or regions; peers appear only as the node ids whose vectors
//! they reported (the region layer says which of them read a partition's log).

pub mod census;
pub mod commit;
pub mod epoch;
pub mod log_truncation;
pub mod safe_times;
pub mod stability;
pub mod sync_store;
pub mod writer;
