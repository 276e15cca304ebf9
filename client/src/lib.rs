//! # meridian-client
//!
//! The async Rust SDK for Meridian. It re-exports the native wire protocol it shares with the node
//! (the `meridian-proto` crate) as [`proto`], adding the QUIC frame reader [`proto::read_frame`].
//!
//! The SDK speaks QUIC + TLS 1.3 to one node at a time, one stream per request, and gives each CRDT
//! type a typed handle so that a counter cannot be read as a set by accident (the node refuses with
//! [`ErrorCode::WrongType`]). Transient failures are retried with backoff and failover across the
//! configured endpoints; writes carry an idempotency id so a retry is applied once. Causal sessions
//! ([`Session`]) give read-your-writes and monotonic reads across nodes and regions.
//!
//! ## Regions
//!
//! A multi-region cluster is declared region by region ([`ClientBuilder::region`]). The client
//! ranks the regions — the one pinned with [`ClientBuilder::prefer_region`] first, otherwise by the
//! handshake time it measures when connecting ([`Client::regions`]) — sends requests to the nearest
//! one ([`Client::current_region`]), moves to the next when no node of that region can serve
//! (connection failures, `shutting_down`, `quorum_unavailable` at `local_quorum`; never on
//! `causal_timeout`), and returns to a better region once it answers again. Sessions keep their
//! causal token across regions, so read-your-writes survives a failover.
//!
//! ```no_run
//! # async fn example() -> Result<(), meridian_client::Error> {
//! let client = meridian_client::Client::builder()
//!     .region("us-east", ["10.0.0.1:7400", "10.0.0.2:7400"])
//!     .region("eu-west", ["10.1.0.1:7400", "10.1.0.2:7400"])
//!     .prefer_region("us-east")
//!     .ca_cert_file("cluster-ca.pem")
//!     .connect()
//!     .await?;
//! let session = client.session();
//! session.counter("app/visits").incr(1).await?;
//! // If us-east goes down now, this read is served by eu-west with the same causal token: it
//! // sees the increment or fails with `causal_timeout`, never a stale value.
//! let visits = session.counter("app/visits").get().await?;
//! # Ok(()) }
//! ```
//!
//! ```no_run
//! use meridian_client::{Client, Consistency};
//! # async fn example() -> Result<(), meridian_client::Error> {
//! let client = Client::builder()
//!     .endpoint("127.0.0.1:7400")
//!     .ca_cert_file("node.crt") // the node's self-signed certificate
//!     .connect()
//!     .await?;
//!
//! client.counter("app/visits").incr(1).await?;
//! client.register("users/alice/name").set("Alice").await?;
//! client.set("posts/42/tags").add(["rust", "crdt"]).await?;
//! let visits = client.counter("app/visits").consistency(Consistency::Quorum).get().await?;
//!
//! let session = client.session();
//! session.map("users/alice").incr_field("logins", 1).await?;
//! let fields = session.map("users/alice").get().await?; // sees the increment
//! # Ok(()) }
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`proto`] | wire messages and framing (the `meridian-proto` crate, shared with the node) and [`proto::read_frame`] |
//! | `quic_frame` | reading a frame off a QUIC stream |
//! | `builder`, `client` | configuring and holding a connection |
//! | `transport` | connection cache, region ranking, failover and failback, retries with backoff |
//! | `region` | [`RegionInfo`], region constants |
//! | `handles`, `map_doc`, `keys` | typed handles per CRDT type, key listing |
//! | `session` | causal tokens |
//! | `error` | [`Error`] and its retry classification |

#![warn(missing_docs)]

mod builder;
mod client;
mod error;
mod handles;
mod key;
mod keys;
mod map_doc;
mod pipeline;
mod quic_frame;
mod region;
mod session;
mod tls;
mod transport;

pub mod proto {
    //! The native wire protocol: every item of [`meridian_proto`], plus [`read_frame`], which reads a
    //! frame off a QUIC stream (the node uses it too). The transport and versioning rules are in
    //! [`meridian_proto`]'s documentation.

    pub use crate::quic_frame::read_frame;
    pub use meridian_proto::*;
}

#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod region_tests;

pub use builder::{ClientBuilder, DEFAULT_MAX_RETRIES, DEFAULT_SERVER_NAME, DEFAULT_TIMEOUT};
pub use client::Client;
pub use error::Error;
pub use handles::{CounterHandle, MvRegisterHandle, RegisterHandle, SetHandle, Siblings};
pub use key::IntoKey;
pub use keys::{KeysPage, KeysQuery, DEFAULT_PAGE_LIMIT};
pub use map_doc::{DocHandle, MapHandle, MapPage};
pub use pipeline::Pipeline;
pub use region::{RegionInfo, DEFAULT_FAILBACK_INTERVAL, DEFAULT_REGION};
pub use session::Session;

pub use meridian_crdt::{CrdtType, DotContext, Mutation, Value};
pub use proto::{
    CausalToken, ClusterOp, ClusterReport, Consistency, ErrorCode, HandoffReport, IdempotencyId, Key, KeyInfo,
    MemberReport, NodeStatus, Operation, PlacedReplica, PlacementReport, Reply, ReplyBody, RequestV1, ResidencyAudit,
    ResidencyCounters, ResidencyExplain, ResidencyOp, ResidencyProgress, ResidencyReport, ResidencyViolation, Rule,
    RuleSpec,
};
