//! # meridian-wan
//!
//! Local multi-region clusters without the server: what both the `meridian` binary
//! (`meridian demo`, `meridian bench-geo`, `meridian region`) and the geo-tests need, in a crate
//! that links neither RocksDB nor the node, so the geo-tests do not build the server to get it.
//!
//! | module | what |
//! |---|---|
//! | [`relay`] | a user-space UDP relay emulating a WAN link (delay, jitter, loss, one- and two-way partitions) |
//! | [`plan`] | the cluster plan `meridian demo init` writes (`DIR/cluster.json`: regions, nodes, links) and [`NodePlan`](plan::NodePlan), also used by `region.json` |
//! | [`probe`] | [`NodeHttp`](probe::NodeHttp): HTTP(S) GETs to a node — is it ready, what does the API answer |

pub mod plan;
pub mod probe;
pub mod relay;
