//! [`ClientBuilder`]: every setting of a client, validated in one place before any I/O.
//!
//! Setters never fail (they only record), so configuration code stays a flat chain; all validation
//! happens in [`ClientBuilder::connect`], which reports the first problem as
//! [`Error::InvalidArgument`] (or [`Error::Tls`] for unusable certificates) naming the setter to fix.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::{self, Consistency};
use crate::region::{RegionConfig, DEFAULT_FAILBACK_INTERVAL, DEFAULT_REGION};
use crate::tls::{self, ClientIdentity};
use crate::transport::{Config, Transport};
use crate::{Client, Error};

/// Per-attempt timeout unless [`ClientBuilder::timeout`] says otherwise (5 s).
///
/// ```no_run
/// assert_eq!(meridian_client::DEFAULT_TIMEOUT.as_secs(), 5);
/// ```
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Retries after the first attempt unless [`ClientBuilder::max_retries`] says otherwise (3).
///
/// ```no_run
/// assert_eq!(meridian_client::DEFAULT_MAX_RETRIES, 3);
/// ```
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// The default TLS server name, which the nodes' self-signed certificates carry.
///
/// ```no_run
/// assert_eq!(meridian_client::DEFAULT_SERVER_NAME, "localhost");
/// ```
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// PEM data given inline or as a path, read when the client is built.
#[derive(Clone)]
enum Pem {
    Inline(Vec<u8>),
    File(PathBuf),
}

impl Pem {
    fn load(&self, what: &str) -> Result<Vec<u8>, Error> {
        match self {
            Pem::Inline(bytes) => Ok(bytes.clone()),
            Pem::File(path) => std::fs::read(path)
                .map_err(|e| Error::invalid(format!("cannot read the {what} file {}: {e}", path.display()))),
        }
    }
}

/// Configures and connects a [`Client`].
///
/// Nodes are given either as a flat list ([`ClientBuilder::endpoint`], one region) or grouped by
/// region ([`ClientBuilder::region`]); see [`ClientBuilder::region`] for how requests are routed
/// across regions.
///
/// ```no_run
/// use std::time::Duration;
/// use meridian_client::{Client, Consistency};
/// # async fn example() -> Result<(), meridian_client::Error> {
/// let client = Client::builder()
///     .endpoint("10.0.0.1:7400") // nearest first
///     .endpoint("10.0.1.1:7400")
///     .ca_cert_file("cluster-ca.pem")
///     .client_cert_files("app.crt", "app.key") // only if the nodes require mutual TLS
///     .timeout(Duration::from_secs(2))
///     .max_retries(5)
///     .default_consistency(Consistency::LocalQuorum)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    /// Declared regions in order: name, endpoints.
    regions: Vec<(String, Vec<String>)>,
    /// Which entry of `regions` collects the plain `.endpoint()`s, once there is one.
    plain: Option<usize>,
    prefer_region: Option<String>,
    failback_interval: Duration,
    roots: Vec<Pem>,
    identity: Option<(Pem, Pem)>,
    server_name: String,
    timeout: Duration,
    max_retries: u32,
    default_consistency: Option<Consistency>,
    max_frame_bytes: usize,
    token: Option<String>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Certificates and keys are left out: the key is a secret.
        f.debug_struct("ClientBuilder")
            .field("regions", &self.regions)
            .field("prefer_region", &self.prefer_region)
            .field("failback_interval", &self.failback_interval)
            .field("trusted_certificates", &self.roots.len())
            .field("client_certificate", &self.identity.is_some())
            .field("token", &self.token.is_some())
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("default_consistency", &self.default_consistency)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .finish()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder::new()
    }
}

impl ClientBuilder {
    /// A builder with the defaults: no endpoint, no trusted certificate (both required), server name
    /// [`DEFAULT_SERVER_NAME`], timeout [`DEFAULT_TIMEOUT`], [`DEFAULT_MAX_RETRIES`] retries, the
    /// namespace's default consistency, [`proto::DEFAULT_MAX_FRAME_BYTES`] frames.
    ///
    /// ```no_run
    /// let builder = meridian_client::ClientBuilder::new(); // same as Client::builder()
    /// ```
    pub fn new() -> ClientBuilder {
        ClientBuilder {
            regions: Vec::new(),
            plain: None,
            prefer_region: None,
            failback_interval: DEFAULT_FAILBACK_INTERVAL,
            roots: Vec::new(),
            identity: None,
            server_name: DEFAULT_SERVER_NAME.to_string(),
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            default_consistency: None,
            max_frame_bytes: proto::DEFAULT_MAX_FRAME_BYTES,
            token: None,
        }
    }

    /// Adds a node's client address, `host:port` (`[v6]:port` for IPv6 literals). Call it once per
    /// node, nearest first: the client connects to the first reachable one and fails over in order,
    /// wrapping around.
    ///
    /// Plain endpoints form one region named [`DEFAULT_REGION`](crate::DEFAULT_REGION), declared
    /// where the first `.endpoint()` call stands among the [`ClientBuilder::region`] calls; with
    /// only plain endpoints the client behaves as a single-region client (no measurement, no region
    /// failover). A `.region("default", ..)` next to plain endpoints is a duplicate region.
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder().endpoint("127.0.0.1:7400").endpoint("node2.local:7400");
    /// ```
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        let plain = *self.plain.get_or_insert_with(|| {
            self.regions.push((DEFAULT_REGION.to_string(), Vec::new()));
            self.regions.len() - 1
        });
        self.regions[plain].1.push(endpoint.into());
        self
    }

    /// Declares a region and its nodes' client addresses (`host:port`, in the order to try them).
    /// Call it once per region; every region accepts every request, so this is about latency and
    /// availability, not about where data lives.
    ///
    /// Routing across regions:
    /// * **Order.** With [`ClientBuilder::prefer_region`], that region first, then the others in
    ///   declaration order. Without it, [`ClientBuilder::connect`] handshakes with every node of
    ///   every region in parallel (within one [`ClientBuilder::timeout`]) and ranks the regions by
    ///   their fastest node's handshake time; regions that did not answer come last. See
    ///   [`Client::regions`](crate::Client::regions).
    /// * **Failover.** Requests go to one node of the current region
    ///   ([`Client::current_region`](crate::Client::current_region)), failing over to its other
    ///   nodes as with plain endpoints. When no node of the region can be connected to, or as many
    ///   node-level failures (connection lost, no answer in time, `shutting_down`) as the region has
    ///   nodes happen in a row, the request moves to the next region in order (wrapping around) and
    ///   is retried there. `quorum_unavailable` at [`Consistency::LocalQuorum`] also moves to the
    ///   next region (which can form its own local majority); at other levels it is retried in
    ///   place. `causal_timeout` never moves: it means the session's writes have not reached that
    ///   region yet, so it is retried in place and then returned. Moves count against
    ///   [`ClientBuilder::max_retries`], and a retried write keeps its idempotency id in every
    ///   region.
    /// * **Sessions.** A [`Session`](crate::Session) sends the same causal token to whichever
    ///   region serves it and merges every region's reply into it, so read-your-writes and
    ///   monotonic reads survive a failover (a region that has not yet received the session's
    ///   writes answers `causal_timeout` instead of stale data).
    /// * **Failback.** Away from the first region, the client probes the better regions in the
    ///   background every [`ClientBuilder::failback_interval`] (on the next request after it
    ///   elapses) and moves back as soon as one completes a handshake.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), meridian_client::Error> {
    /// let client = meridian_client::Client::builder()
    ///     .region("us-east", ["10.0.0.1:7400", "10.0.0.2:7400"])
    ///     .region("eu-west", ["10.1.0.1:7400", "10.1.0.2:7400"])
    ///     .region("ap-south", ["10.2.0.1:7400"])
    ///     .ca_cert_file("cluster-ca.pem")
    ///     .connect() // measures each region and starts with the nearest
    ///     .await?;
    /// println!("using {}", client.current_region());
    /// # Ok(()) }
    /// ```
    pub fn region(mut self, name: impl Into<String>, endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.regions.push((name.into(), endpoints.into_iter().map(Into::into).collect()));
        self
    }

    /// Pins the home region: requests go there first, the other regions follow in declaration
    /// order, and [`ClientBuilder::connect`] measures nothing (it connects to the home region only,
    /// or fails over if it is unreachable). The name must be one given to
    /// [`ClientBuilder::region`] (or [`DEFAULT_REGION`](crate::DEFAULT_REGION) for plain
    /// endpoints).
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder()
    ///     .region("us-east", ["10.0.0.1:7400"])
    ///     .region("eu-west", ["10.1.0.1:7400"])
    ///     .prefer_region("eu-west");
    /// ```
    pub fn prefer_region(mut self, name: impl Into<String>) -> Self {
        self.prefer_region = Some(name.into());
        self
    }

    /// How long the client stays in a fallback region before it probes the better ones again
    /// (default [`DEFAULT_FAILBACK_INTERVAL`](crate::DEFAULT_FAILBACK_INTERVAL)). The probe runs
    /// in the background, started by the first request after the interval; it never delays a
    /// request. Zero probes on every request (one probe at a time).
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder()
    ///     .region("us-east", ["10.0.0.1:7400"])
    ///     .region("eu-west", ["10.1.0.1:7400"])
    ///     .failback_interval(std::time::Duration::from_secs(30));
    /// ```
    pub fn failback_interval(mut self, interval: Duration) -> Self {
        self.failback_interval = interval;
        self
    }

    /// Trusts the certificate(s) in this PEM data: a node's self-signed certificate or the CA that
    /// signed the nodes' certificates. May be called several times; at least one is required.
    ///
    /// ```no_run
    /// # fn example(pem: Vec<u8>) {
    /// let builder = meridian_client::Client::builder().ca_cert_pem(pem);
    /// # }
    /// ```
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots.push(Pem::Inline(pem.into()));
        self
    }

    /// Like [`ClientBuilder::ca_cert_pem`], reading the PEM file when the client is built.
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder().ca_cert_file("/etc/meridian/node.crt");
    /// ```
    pub fn ca_cert_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.roots.push(Pem::File(path.into()));
        self
    }

    /// Presents this certificate chain and private key (PEM) to nodes that require mutual TLS.
    ///
    /// Today's nodes do not yet ask clients for a certificate on the client protocol (node-to-node
    /// traffic is where mutual TLS is enforced first); the certificate is offered and ignored until
    /// they do.
    ///
    /// ```no_run
    /// # fn example(cert: Vec<u8>, key: Vec<u8>) {
    /// let builder = meridian_client::Client::builder().client_cert_pem(cert, key);
    /// # }
    /// ```
    pub fn client_cert_pem(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((Pem::Inline(cert_pem.into()), Pem::Inline(key_pem.into())));
        self
    }

    /// Like [`ClientBuilder::client_cert_pem`], reading the PEM files when the client is built.
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder().client_cert_files("app.crt", "app.key");
    /// ```
    pub fn client_cert_files(mut self, cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        self.identity = Some((Pem::File(cert_path.into()), Pem::File(key_path.into())));
        self
    }

    /// A bearer token (`mrd_…`, from `meridian auth token create`) to authenticate with, for a
    /// client that holds no certificate: the client logs in with it on every connection it opens.
    /// Wrong, expired or revoked, it fails `connect` (and later requests) with a non-retryable
    /// `unauthenticated` error.
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder().token(std::env::var("MERIDIAN_TOKEN").unwrap());
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The name the node's certificate must carry (default [`DEFAULT_SERVER_NAME`]).
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder().server_name("db.example.com");
    /// ```
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// How long one attempt may take (default [`DEFAULT_TIMEOUT`]): the handshake with each
    /// endpoint, and each request's round trip, which also tells the node (`timeout_ms`) when to
    /// give up. Must be at least 1 ms.
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder().timeout(std::time::Duration::from_millis(500));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times a retryable failure is retried (default [`DEFAULT_MAX_RETRIES`]; 0 disables
    /// retries), with exponential backoff from 50 ms, capped at 2 s, with jitter.
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder().max_retries(0);
    /// ```
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The consistency level for requests that do not choose one (sessions use
    /// [`Consistency::Causal`]). Unset, the node applies the namespace's default.
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder().default_consistency(meridian_client::Consistency::Quorum);
    /// ```
    pub fn default_consistency(mut self, consistency: Consistency) -> Self {
        self.default_consistency = Some(consistency);
        self
    }

    /// The largest frame sent or accepted (default [`proto::DEFAULT_MAX_FRAME_BYTES`]; at most
    /// [`meridian_crdt::codec::ABSOLUTE_MAX_BYTES`]). A larger response is an [`Error::Protocol`], a
    /// larger request an [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// let builder = meridian_client::Client::builder().max_frame_bytes(16 << 20);
    /// ```
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// Validates the settings and connects to the first reachable endpoint (with several regions
    /// and no [`ClientBuilder::prefer_region`], after ranking the regions by handshake time; see
    /// [`ClientBuilder::region`]).
    ///
    /// Errors: [`Error::InvalidArgument`] for missing or malformed settings, [`Error::Tls`] for
    /// unusable certificates or if every node refused the handshake, [`Error::Connect`] if no
    /// endpoint answered.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), meridian_client::Error> {
    /// let client = meridian_client::Client::builder()
    ///     .endpoint("127.0.0.1:7400")
    ///     .ca_cert_file("node.crt")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<Client, Error> {
        let transport = Arc::new(Transport::new(self.config()?));
        transport.connect().await?;
        Ok(Client::from_transport(transport))
    }

    /// Validates every setting and builds the TLS configuration (no network I/O).
    fn config(&self) -> Result<Config, Error> {
        if self.regions.is_empty() {
            return Err(Error::invalid(
                "no endpoint: call .endpoint(\"host:port\") or .region(name, endpoints) at least once",
            ));
        }
        let mut regions: Vec<RegionConfig> = Vec::with_capacity(self.regions.len());
        for (name, endpoints) in &self.regions {
            check_region_name(name)?;
            if regions.iter().any(|r| r.name == *name) {
                return Err(Error::invalid(format!(
                    "region {name:?} is declared twice (plain .endpoint() calls form the region {DEFAULT_REGION:?})"
                )));
            }
            if endpoints.is_empty() {
                return Err(Error::invalid(format!("region {name:?} has no endpoint")));
            }
            for endpoint in endpoints {
                check_endpoint(endpoint)?;
            }
            regions.push(RegionConfig { name: name.clone(), endpoints: endpoints.clone() });
        }
        let preferred_region = match &self.prefer_region {
            None => None,
            Some(name) => Some(regions.iter().position(|r| r.name == *name).ok_or_else(|| {
                let known: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
                Error::invalid(format!("prefer_region({name:?}): no such region (declared: {})", known.join(", ")))
            })?),
        };
        if self.roots.is_empty() {
            return Err(Error::invalid(
                "no trusted certificate: call .ca_cert_pem() or .ca_cert_file() with the node's certificate or CA",
            ));
        }
        if let Some(token) = &self.token {
            if !token.starts_with(proto::auth::TOKEN_PREFIX) || token.len() > proto::auth::MAX_TOKEN_STRING_BYTES {
                return Err(Error::invalid("the token is not a Meridian token (mrd_<id>_<secret>)"));
            }
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid("the timeout must be at least 1 ms"));
        }
        let max = meridian_crdt::codec::ABSOLUTE_MAX_BYTES;
        if self.max_frame_bytes == 0 || self.max_frame_bytes > max {
            return Err(Error::invalid(format!("max_frame_bytes must be between 1 and {max}")));
        }
        tls::check_server_name(&self.server_name)?;
        let roots = self.roots.iter().map(|pem| pem.load("trusted certificate")).collect::<Result<Vec<_>, _>>()?;
        let identity = match &self.identity {
            None => None,
            Some((cert, key)) => {
                Some(ClientIdentity { cert_pem: cert.load("client certificate")?, key_pem: key.load("client key")? })
            }
        };
        Ok(Config {
            endpoints: regions.iter().flat_map(|r| r.endpoints.iter().cloned()).collect(),
            regions,
            preferred_region,
            failback_interval: self.failback_interval,
            quic: tls::client_config(&roots, identity.as_ref())?,
            server_name: self.server_name.clone(),
            timeout: self.timeout,
            max_retries: self.max_retries,
            default_consistency: self.default_consistency,
            max_frame_bytes: self.max_frame_bytes,
            token: self.token.clone(),
        })
    }
}

/// Checks a region name: not empty, no whitespace or control characters, at most 64 bytes.
fn check_region_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 64 || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(format!(
            "region name {name:?}: expected 1 to 64 bytes without whitespace (e.g. \"us-east\")"
        )));
    }
    Ok(())
}

/// Checks `host:port` syntax (resolution happens when connecting).
fn check_endpoint(endpoint: &str) -> Result<(), Error> {
    let bad = |why: &str| Error::invalid(format!("endpoint {endpoint:?}: {why} (expected host:port)"));
    if let Ok(addr) = endpoint.parse::<std::net::SocketAddr>() {
        return if addr.port() == 0 { Err(bad("port 0")) } else { Ok(()) };
    }
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
        return Err(bad("bad host name (IPv6 addresses need brackets)"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(bad("port 0")),
        Ok(_) => Ok(()),
        Err(_) => Err(bad("bad port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem() -> Vec<u8> {
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap().cert.pem().into_bytes()
    }

    fn invalid(builder: ClientBuilder) -> String {
        match builder.config() {
            Err(Error::InvalidArgument(message)) => message,
            Err(other) => panic!("expected InvalidArgument, got {other:?}"),
            Ok(_) => panic!("expected InvalidArgument, got a config"),
        }
    }

    #[test]
    fn requires_an_endpoint_and_a_trust_root() {
        assert!(invalid(ClientBuilder::new().ca_cert_pem(pem())).contains("no endpoint"));
        assert!(invalid(ClientBuilder::new().endpoint("127.0.0.1:7400")).contains("no trusted certificate"));
        let config = ClientBuilder::new().endpoint("127.0.0.1:7400").ca_cert_pem(pem()).config().unwrap();
        assert_eq!(config.endpoints, ["127.0.0.1:7400"]);
        assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        assert_eq!(config.timeout_ms(), 5000);
        assert_eq!(config.max_retries, DEFAULT_MAX_RETRIES);
        assert_eq!(config.server_name, "localhost");
        assert_eq!(config.default_consistency, None);
    }

    #[tokio::test]
    async fn connect_fails_fast_on_bad_settings() {
        // Validation happens before any network I/O, so this returns at once.
        let result = tokio::time::timeout(Duration::from_secs(5), Client::builder().ca_cert_pem(pem()).connect()).await;
        assert!(matches!(result, Ok(Err(Error::InvalidArgument(m))) if m.contains("no endpoint")));
    }

    #[test]
    fn validates_endpoints() {
        let base = || ClientBuilder::new().ca_cert_pem(pem());
        for good in ["127.0.0.1:7400", "[::1]:7400", "localhost:1", "node-2.example.com:65535"] {
            base().endpoint(good).config().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["127.0.0.1", "localhost", ":7400", "host:0", "host:99999", "::1:7400", "a b:1", "host:port"] {
            assert!(invalid(base().endpoint(bad)).contains("expected host:port"), "{bad}");
        }
        // Every endpoint is checked, not only the first.
        assert!(invalid(base().endpoint("127.0.0.1:1").endpoint("nope")).contains("\"nope\""));
    }

    #[test]
    fn validates_other_settings() {
        let base = || ClientBuilder::new().endpoint("127.0.0.1:7400").ca_cert_pem(pem());
        assert!(invalid(base().timeout(Duration::ZERO)).contains("timeout"));
        assert!(invalid(base().max_frame_bytes(0)).contains("max_frame_bytes"));
        assert!(invalid(base().max_frame_bytes(usize::MAX)).contains("max_frame_bytes"));
        assert!(invalid(base().server_name("not a name")).contains("server name"));
        assert!(invalid(base().ca_cert_file("/nonexistent/ca.pem")).contains("/nonexistent/ca.pem"));
        assert!(matches!(base().ca_cert_pem("garbage").config(), Err(Error::Tls(_))));
        let config = base()
            .timeout(Duration::from_millis(1500))
            .max_retries(0)
            .default_consistency(Consistency::Quorum)
            .server_name("127.0.0.1")
            .config()
            .unwrap();
        assert_eq!(config.timeout_ms(), 1500);
        assert_eq!(config.max_retries, 0);
        assert_eq!(config.default_consistency, Some(Consistency::Quorum));
        assert_eq!(config.failback_interval, DEFAULT_FAILBACK_INTERVAL);
        // The builder's Debug output never shows key material.
        let debug = format!("{:?}", base().client_cert_pem(pem(), "SECRET KEY"));
        assert!(!debug.contains("SECRET") && debug.contains("client_certificate: true"), "{debug}");
    }

    fn names(config: &Config) -> Vec<&str> {
        config.regions.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn regions_and_plain_endpoints() {
        // Plain endpoints are one region, "default", exactly as before.
        let config = ClientBuilder::new().endpoint("a:1").endpoint("b:1").ca_cert_pem(pem()).config().unwrap();
        assert_eq!(names(&config), ["default"]);
        assert_eq!(config.regions[0].endpoints, ["a:1", "b:1"]);
        assert_eq!(config.preferred_region, None);

        // Mixed: the plain region stands where the first .endpoint() call stands.
        let config = ClientBuilder::new()
            .region("us-east", ["u1:1", "u2:1"])
            .endpoint("p1:1")
            .region("eu-west", vec![String::from("e1:1")])
            .endpoint("p2:1")
            .prefer_region("eu-west")
            .failback_interval(Duration::from_millis(10))
            .ca_cert_pem(pem())
            .config()
            .unwrap();
        assert_eq!(names(&config), ["us-east", "default", "eu-west"]);
        assert_eq!(config.regions[1].endpoints, ["p1:1", "p2:1"]);
        assert_eq!(config.endpoints, ["u1:1", "u2:1", "p1:1", "p2:1", "e1:1"]);
        assert_eq!(config.preferred_region, Some(2));
        assert_eq!(config.failback_interval, Duration::from_millis(10));

        let base = || ClientBuilder::new().ca_cert_pem(pem());
        assert!(invalid(base().region("a", ["x:1"]).region("a", ["y:1"])).contains("declared twice"));
        assert!(invalid(base().region("default", ["x:1"]).endpoint("y:1")).contains("declared twice"));
        assert!(invalid(base().region("a", Vec::<String>::new())).contains("no endpoint"));
        assert!(invalid(base().region("a", ["nope"])).contains("\"nope\""));
        assert!(invalid(base().region("", ["x:1"])).contains("region name"));
        assert!(invalid(base().region("us east", ["x:1"])).contains("region name"));
        assert!(invalid(base().region("a", ["x:1"]).prefer_region("b")).contains("no such region"));
        assert!(invalid(base().endpoint("x:1").prefer_region("b")).contains("declared: default"));
        base().endpoint("x:1").prefer_region("default").config().unwrap();
    }
}
