//! # meridian-node
//!
//! The `meridian` binary's library: a node (storage, the QUIC client protocol, the HTTP API) and the
//! operator CLI's helpers. Only this crate links RocksDB.
//!
//! Reading order, bottom-up: [`storage`] (engine trait, RocksDB, in-memory twin) → [`keyspace`]
//! (record layout and formats) → [`node`] (request execution, the write path, causal tokens) →
//! [`server`] and [`http`] (the two surfaces) → [`serve`] (assembly, shutdown) → [`bench`](mod@bench).

pub mod admin;
pub mod bench;
pub mod bench_etcd;
pub mod bench_geo;
pub mod certs;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod coordinator;
pub mod demo;
pub mod gossip;
pub mod hints;
pub mod http;
pub mod keyspace;
pub mod lag;
pub mod local_region;
pub mod metrics_export;
pub mod node;
pub mod peer;
pub mod peer_service;
pub mod peer_sync;
pub mod residency;
pub mod serve;
pub mod server;
pub mod storage;
pub mod sync_store;
pub mod tls;
