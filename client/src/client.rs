//! [`Client`]: the entry point. A cheap, clonable handle on one shared connection core.
//!
//! The client itself is thin: it hands out typed handles (which send requests through
//! [`crate::transport`]) and sessions. Everything stateful — the cached connection, failover
//! position, UDP sockets — lives behind one `Arc`, so clones share it and the last clone dropped
//! closes the connection.

use std::sync::Arc;

use meridian_crdt::Value;

use crate::handles::{unexpected, Ctx};
use crate::proto::{CausalToken, NodeStatus, Operation, Reply, ReplyBody, RequestV1};
use crate::transport::Transport;
use crate::{
    ClientBuilder, CounterHandle, DocHandle, Error, IntoKey, KeysQuery, MapHandle, MvRegisterHandle, RegionInfo,
    RegisterHandle, Session, SetHandle,
};

/// A connection to a Meridian cluster (one node at a time, with failover to the others, region by
/// region: see [`ClientBuilder::region`]).
///
/// Clone it freely: clones share the connection. Requests are retried on transient failures; writes
/// carry an idempotency id so a retried write is applied once.
///
/// ```no_run
/// use meridian_client::Client;
/// # async fn example() -> Result<(), meridian_client::Error> {
/// let client = Client::builder()
///     .endpoint("127.0.0.1:7400")
///     .ca_cert_file("node.crt")
///     .connect()
///     .await?;
/// let visits = client.counter("app/visits").incr(1).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Transport>,
    /// The trace context every request of this handle carries (see [`Client::traced`]).
    pub(crate) trace: Option<crate::proto::TraceContext>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = &self.inner.config;
        f.debug_struct("Client")
            .field("regions", &self.inner.order().iter().map(|r| &config.regions[r.region].name).collect::<Vec<_>>())
            .field("current_region", &self.current_region())
            .field("endpoints", &config.endpoints)
            .field("server_name", &config.server_name)
            .field("timeout", &config.timeout)
            .field("max_retries", &config.max_retries)
            .field("default_consistency", &config.default_consistency)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client. See [`ClientBuilder`].
    ///
    /// ```no_run
    /// # async fn example(ca_pem: Vec<u8>) -> Result<(), meridian_client::Error> {
    /// let client = meridian_client::Client::builder()
    ///     .endpoint("10.0.0.1:7400")
    ///     .endpoint("10.0.1.1:7400") // failover
    ///     .ca_cert_pem(ca_pem)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    pub(crate) fn from_transport(inner: Arc<Transport>) -> Client {
        Client { inner, trace: None }
    }

    /// A handle on the same connections whose requests carry `trace` (a W3C trace context), so the
    /// nodes' spans for them join the caller's trace. Cheap: clone one per traced operation.
    /// Requests with a context are sent as `Request::V2`, which nodes before that version refuse
    /// with `unsupported`; untraced handles send `V1`.
    ///
    /// ```no_run
    /// use meridian_client::proto::TraceContext;
    /// # async fn example(client: meridian_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let trace: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
    /// client.traced(trace).counter("app/visits").incr(1).await?;
    /// # Ok(()) }
    /// ```
    pub fn traced(&self, trace: crate::proto::TraceContext) -> Client {
        Client { inner: self.inner.clone(), trace: Some(trace) }
    }

    fn ctx(&self) -> Ctx {
        Ctx { client: self.clone(), session: None, consistency: self.inner.config.default_consistency }
    }

    /// Starts a causal session with an empty token. See [`Session`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let session = client.session();
    /// session.set("posts/42/tags").add(["rust"]).await?;
    /// assert!(session.set("posts/42/tags").contains("rust").await?); // read-your-writes
    /// # Ok(()) }
    /// ```
    pub fn session(&self) -> Session {
        Session::new(self.clone(), CausalToken::empty())
    }

    /// Resumes a session from a token exported by [`Session::export_token`]; a string that is not a
    /// token is [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client, token_from_cookie: String) -> Result<(), meridian_client::Error> {
    /// let session = client.resume_session(&token_from_cookie)?;
    /// # Ok(()) }
    /// ```
    pub fn resume_session(&self, token: &str) -> Result<Session, Error> {
        let token = token.parse::<CausalToken>().map_err(|e| Error::invalid(e.to_string()))?;
        Ok(Session::new(self.clone(), token))
    }

    /// A handle on a `counter` key. See [`CounterHandle`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let n = client.counter("app/visits").incr(1).await?;
    /// # Ok(()) }
    /// ```
    pub fn counter(&self, key: impl IntoKey) -> CounterHandle {
        CounterHandle::new(self.ctx(), key.into_key())
    }

    /// A handle on a `register` key. See [`RegisterHandle`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.register("cfg/motd").set("hello").await?;
    /// # Ok(()) }
    /// ```
    pub fn register(&self, key: impl IntoKey) -> RegisterHandle {
        RegisterHandle::new(self.ctx(), key.into_key())
    }

    /// A handle on an `mvregister` key. See [`MvRegisterHandle`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let siblings = client.mvregister("carts/alice").get().await?;
    /// # Ok(()) }
    /// ```
    pub fn mvregister(&self, key: impl IntoKey) -> MvRegisterHandle {
        MvRegisterHandle::new(self.ctx(), key.into_key())
    }

    /// A handle on a `set` key. See [`SetHandle`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let tags = client.set("posts/42/tags").members().await?;
    /// # Ok(()) }
    /// ```
    pub fn set(&self, key: impl IntoKey) -> SetHandle {
        SetHandle::new(self.ctx(), key.into_key())
    }

    /// A handle on a `map` key. See [`MapHandle`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let fields = client.map("users/alice").get().await?;
    /// # Ok(()) }
    /// ```
    pub fn map(&self, key: impl IntoKey) -> MapHandle {
        MapHandle::new(self.ctx(), key.into_key())
    }

    /// A handle on a `doc` key. See [`DocHandle`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let json = client.doc("notes/today").get_json().await?;
    /// # Ok(()) }
    /// ```
    pub fn doc(&self, key: impl IntoKey) -> DocHandle {
        DocHandle::new(self.ctx(), key.into_key())
    }

    /// A [`Pipeline`](crate::Pipeline): many keyed operations sent in one request.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let mut pipeline = client.pipeline();
    /// pipeline.set("users/alice/name", "Alice").incr("app/visits", 1);
    /// let answers = pipeline.run().await?;
    /// # Ok(()) }
    /// ```
    pub fn pipeline(&self) -> crate::Pipeline {
        crate::Pipeline::new(self.ctx())
    }

    /// Reads a key of any type; `None` if it does not exist.
    ///
    /// ```no_run
    /// use meridian_client::Value;
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// match client.get("app/anything").await? {
    ///     Some(Value::Counter(n)) => println!("counter {n}"),
    ///     Some(other) => println!("a {}", other.crdt_type()),
    ///     None => println!("absent"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl IntoKey) -> Result<Option<Value>, Error> {
        self.ctx().read(&key.into_key(), None).await
    }

    /// Deletes a key of any type; returns whether the coordinating node held it. Writes concurrent
    /// with the delete survive it.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let existed = client.delete("app/old").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: impl IntoKey) -> Result<bool, Error> {
        self.ctx().delete(&key.into_key()).await
    }

    /// Lists a namespace's keys. See [`KeysQuery`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let page = client.keys("users").prefix("a").limit(100).page().await?;
    /// let everything = client.keys("users").all_up_to(100_000).await?;
    /// # Ok(()) }
    /// ```
    pub fn keys(&self, namespace: impl Into<String>) -> KeysQuery {
        KeysQuery::new(self.ctx(), namespace.into())
    }

    /// The connected node's status.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let status = client.status().await?;
    /// println!("{} in {} up {} s", status.name, status.region, status.uptime_s);
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        match self.ctx().call(Operation::Status).await? {
            ReplyBody::Status(status) => Ok(status),
            other => Err(unexpected("status", &other)),
        }
    }

    /// What the node's storage holds on disk, per space (table files, live data, memtables, keys),
    /// with its WAL and the whole data directory.
    pub async fn storage(&self) -> Result<crate::proto::StorageReport, Error> {
        match self.ctx().call(Operation::Storage).await? {
            ReplyBody::Storage(report) => Ok(report),
            other => Err(unexpected("storage", &other)),
        }
    }

    /// What the node's last data census counted: live keys, and the deleted keys and removed map
    /// fields kept as tombstones; `None` before its first pass ends (a few seconds after start).
    pub async fn data_census(&self) -> Result<Option<crate::proto::CensusReport>, Error> {
        match self.ctx().call(Operation::DataCensus).await? {
            ReplyBody::DataCensus(report) => Ok(report),
            other => Err(unexpected("data census", &other)),
        }
    }

    /// Whether the node is ready to serve: `None`, or why not (for example a storage failure, after
    /// which it takes no writes until restarted) — what `GET /readyz` answers over HTTP.
    pub async fn readiness(&self) -> Result<Option<String>, Error> {
        match self.ctx().call(Operation::Readiness).await? {
            ReplyBody::Readiness(reason) => Ok(reason),
            other => Err(unexpected("readiness", &other)),
        }
    }

    /// Region administration and introspection: members, placement of a key, drain and removal.
    ///
    /// ```no_run
    /// use meridian_client::ClusterOp;
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let region = client.cluster(ClusterOp::Status).await?;
    /// for member in &region.members {
    ///     println!("{} {} {}", member.name, member.state, member.liveness);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cluster(&self, op: crate::proto::ClusterOp) -> Result<crate::proto::ClusterReport, Error> {
        match self.ctx().call(Operation::Cluster(op)).await? {
            ReplyBody::Cluster(report) => Ok(report),
            other => Err(unexpected("cluster", &other)),
        }
    }

    /// Data-residency administration: list, add, change and remove rules, explain a key, audit the
    /// answering node's storage.
    pub async fn residency(&self, op: crate::proto::ResidencyOp) -> Result<crate::proto::ResidencyReport, Error> {
        match self.ctx().call(Operation::Residency(op)).await? {
            ReplyBody::Residency(report) => Ok(*report),
            other => Err(unexpected("residency", &other)),
        }
    }

    /// Authentication administration: who am I, users, grants and tokens (`meridian auth …`).
    /// Everything but `WhoAmI` needs the `admin` role on `*`. (`Login` is sent by the client itself
    /// on each connection when built with [`ClientBuilder::token`](crate::ClientBuilder::token).)
    ///
    /// ```no_run
    /// use meridian_client::proto::{AuthOp, Role};
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.auth(AuthOp::AddUser { name: "orders-app".into() }).await?;
    /// client.auth(AuthOp::Grant { user: "orders-app".into(), namespace: "orders".into(), role: Role::Write }).await?;
    /// let made = client
    ///     .auth(AuthOp::CreateToken { user: "orders-app".into(), ttl_s: Some(90 * 86_400), description: "orders service".into() })
    ///     .await?;
    /// println!("token (shown once): {}", made.created_token.unwrap_or_default());
    /// # Ok(()) }
    /// ```
    pub async fn auth(&self, op: crate::proto::AuthOp) -> Result<crate::proto::AuthReport, Error> {
        match self.ctx().call(Operation::Auth(op)).await? {
            ReplyBody::Auth(report) => Ok(*report),
            other => Err(unexpected("auth", &other)),
        }
    }

    /// Online backup of the node this client talks to (`meridian backup` drives it): take a
    /// checkpoint, read its files in chunks, release it. Needs the `admin` role on `*`. Build the
    /// client with that one node's endpoint: a checkpoint lives on the node that took it.
    pub async fn backup(&self, op: crate::proto::BackupOp) -> Result<crate::proto::BackupReport, Error> {
        match self.ctx().call(Operation::Backup(op)).await? {
            ReplyBody::Backup(report) => Ok(*report),
            other => Err(unexpected("backup", &other)),
        }
    }

    /// Sends a request as given (for the CLI and benchmarks), with the client's retries and
    /// failover. The only change made to it: a write or delete without an idempotency id gets a
    /// random one, used on every attempt. Nothing is checked or interpreted beyond the frame limit;
    /// a node error reply is returned as [`Error::Server`].
    ///
    /// ```no_run
    /// use meridian_client::{Operation, RequestV1};
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let request = RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op: Operation::Status };
    /// let reply = client.raw(request).await?;
    /// # Ok(()) }
    /// ```
    pub async fn raw(&self, request: RequestV1) -> Result<Reply, Error> {
        self.inner.execute(request, self.trace).await
    }

    /// The endpoints as given to the builder: every region's, in declaration order (plain endpoints:
    /// in failover order).
    ///
    /// ```no_run
    /// # fn example(client: meridian_client::Client) {
    /// println!("nodes: {}", client.endpoints().join(", "));
    /// # }
    /// ```
    pub fn endpoints(&self) -> &[String] {
        &self.inner.config.endpoints
    }

    /// The regions in preference order — the order requests fail over in — with the handshake time
    /// measured to each when the client connected (see [`RegionInfo::rtt`]). A client built with
    /// plain endpoints has one region, [`DEFAULT_REGION`](crate::DEFAULT_REGION).
    ///
    /// ```no_run
    /// # fn example(client: meridian_client::Client) {
    /// let order: Vec<String> = client.regions().into_iter().map(|r| r.name).collect();
    /// println!("nearest first: {}", order.join(", "));
    /// # }
    /// ```
    pub fn regions(&self) -> Vec<RegionInfo> {
        let config = &self.inner.config;
        self.inner
            .order()
            .iter()
            .map(|r| {
                let region = &config.regions[r.region];
                RegionInfo { name: region.name.clone(), endpoints: region.endpoints.clone(), rtt: r.rtt }
            })
            .collect()
    }

    /// The region requests go to now: the first of [`Client::regions`] unless the client failed over
    /// (and has not yet failed back).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.counter("app/visits").incr(1).await?;
    /// println!("served from {}", client.current_region());
    /// # Ok(()) }
    /// ```
    pub fn current_region(&self) -> &str {
        self.inner.current_region()
    }

    /// The endpoint the client is connected to right now, if any (it reconnects lazily).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) {
    /// if let Some(endpoint) = client.connected_endpoint().await {
    ///     println!("talking to {endpoint}");
    /// }
    /// # }
    /// ```
    pub async fn connected_endpoint(&self) -> Option<String> {
        self.inner.connected_endpoint().await
    }

    /// Closes the connection gracefully (for every clone) and waits up to a second for the node to
    /// acknowledge. Not required — dropping the last clone also closes it — but lets the node free
    /// the connection at once. A later request reconnects.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) {
    /// client.close().await;
    /// # }
    /// ```
    pub async fn close(&self) {
        self.inner.close().await;
    }

    /// A client that is never connected (its endpoint is unroutable), for tests of local behaviour.
    #[cfg(test)]
    pub(crate) fn offline_for_tests() -> Client {
        let endpoints = vec!["192.0.2.1:7400".to_string()];
        let config = crate::transport::Config {
            regions: vec![crate::region::RegionConfig { name: "default".into(), endpoints: endpoints.clone() }],
            preferred_region: None,
            failback_interval: crate::DEFAULT_FAILBACK_INTERVAL,
            endpoints,
            quic: crate::tls::client_config(&[], None).expect("an empty trust store builds"),
            server_name: "localhost".into(),
            timeout: std::time::Duration::from_millis(100),
            max_retries: 0,
            default_consistency: None,
            max_frame_bytes: crate::proto::DEFAULT_MAX_FRAME_BYTES,
            token: None,
        };
        Client::from_transport(Arc::new(Transport::new(config)))
    }
}
