//! # meridian-server
//!
//! The Meridian server as a library: storage, the replica, the region and the surfaces clients and
//! peers reach it by. The `meridian` binary (`meridian-node`) runs it with `meridian serve`; tests
//! start it in-process with [`serve::start`]. Only this crate links RocksDB.
//!
//! Layers, bottom-up; each calls only its own layer and those below (`src/tests.rs` checks it,
//! `ARCHITECTURE.md` explains it):
//!
//! 1. foundation: [`config`], [`certs`], [`metrics_export`], [`tls`];
//! 2. [`storage`]: the engine trait, RocksDB and its in-memory twin;
//! 3. [`layout`]: every key the node stores and its versioned record formats; [`states`]: how a
//!    key's state is kept (whole, or a set one record per element);
//! 4. [`residency`], [`auth`]: the policies — residency (rules, decisions, screens, audit) and
//!    client authentication (users, roles, tokens);
//! 5. [`store`]: group commit, key locks, the anti-entropy store, safe times;
//!    [`error`]: what a request can fail with (the api turns it into the wire's `ErrorReply`);
//! 6. [`replica`]: the local replica — write path, reads, causal waits, listing, status;
//! 7. [`peer`]: the mutual-TLS peer transport and the peer protocol's messages;
//! 8. [`region`]: membership, placement, coordination, hints, gossip, anti-entropy, residency jobs;
//! 9. [`api`]: the node façade, the QUIC and HTTP surfaces, the peer service, admin;
//! 10. [`serve`]: assembly and shutdown.

pub mod api;
pub mod auth;
pub mod certs;
pub mod config;
pub mod error;
pub mod layout;
pub mod metrics_export;
pub mod peer;
pub mod region;
pub mod replica;
pub mod residency;
pub mod serve;
pub mod states;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod tls;

#[cfg(test)]
mod tests;
