//! The api layer: where requests enter the node.
//!
//! - [`node`]: the node façade — authorization, admission, residency gating, then the region or the
//!   replica.
//! - [`server`]: the QUIC client protocol; [`http`]: the HTTP/JSON API and `/metrics`;
//!   [`http_serve`]: HTTPS, connection cap and timeouts around it.
//! - [`pipeline`]: many keyed operations in one request, each run as a request of its own.
//! - [`peer_service`]: answers other nodes' peer requests.
//! - [`cluster_admin`] and [`residency_admin`]: `meridian cluster …` and `meridian residency …`.
//! - [`backup_admin`]: checkpoints for `meridian backup`.

pub mod backup_admin;
pub mod cluster_admin;
pub mod http;
pub mod http_serve;
pub mod node;
pub mod peer_service;
pub mod pipeline;
pub mod residency_admin;
pub mod server;

pub use node::Node;
