//! # meridian-node
//!
//! The `meridian` binary's tools, beside the server it runs ([`meridian_server`]): the certificate
//! command, a local region, the multi-region demo and the benchmarks. None of this is compiled into
//! the server library.

pub mod bench;
pub mod bench_etcd;
pub mod bench_geo;
pub mod certs_cli;
pub mod demo;
pub mod geo_plan;
pub mod local_region;
pub mod residency_cli;
pub mod wan_relay;
