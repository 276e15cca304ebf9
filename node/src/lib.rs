//! # meridian-node
//!
//! The `meridian` binary's tools, beside the server it runs ([`meridian_server`]): the certificate
//! command, a local region, the multi-region demo and the benchmarks. None of this is compiled into
//! the server library; the WAN relay and cluster plans they share with the geo tests are
//! `meridian_wan`'s.

pub mod auth_apply;
pub mod auth_cli;
pub mod backup_cli;
pub mod bench;
pub mod bench_collections;
pub mod bench_disk;
pub mod bench_etcd;
pub mod bench_geo;
pub mod certs_cli;
pub mod config_cli;
pub mod demo;
pub mod document;
pub mod health;
pub mod local_region;
pub mod residency_apply;
pub mod residency_cli;
pub mod telemetry;
