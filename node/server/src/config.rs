//! Node configuration: defaults in code → a TOML file → `MERIDIAN_*` environment variables, validated
//! at start with an error that names the field.
//!
//! Every field is documented here and in `docs/config.md`; `meridian serve` with no file just works,
//! keeping data under `./meridian-data`. Environment variables use `__` between levels, e.g.
//! `MERIDIAN_LIMITS__MAX_VALUE_BYTES=2097152` or `MERIDIAN_STORAGE__DURABILITY=relaxed`.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use meridian_client::proto::{validate_namespace, Consistency};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole node configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name, shown in status and put in its certificate.
    pub node_name: String,
    /// The cluster this node belongs to; peers with another id are refused.
    pub cluster_id: String,
    /// The node's region (e.g. `eu-west`).
    pub region: String,
    /// The node's zone within its region.
    pub zone: String,
    /// Where RocksDB, the generated certificate and the node id live.
    pub data_dir: PathBuf,
    /// Listening addresses.
    pub listen: ListenConfig,
    /// TLS material for the client protocol.
    pub tls: TlsConfig,
    /// Durability and RocksDB settings.
    pub storage: StorageConfig,
    /// Limits on everything a client can make the node hold.
    pub limits: LimitsConfig,
    /// Consistency level of requests that do not choose one, for namespaces without their own.
    pub default_consistency: ConsistencyName,
    /// Per-namespace settings.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// How far ahead of local time a remote HLC timestamp may be before it is refused.
    pub max_clock_drift_ms: u64,
    /// Added to this node's wall clock when it timestamps writes (test knob: the geo-tests skew a
    /// node's HLC with it; leave it 0 in production).
    pub clock_offset_ms: i64,
    /// Node-to-node anti-entropy over mutual TLS (off unless `peer.listen` is set).
    pub peer: PeerConfig,
    /// Client authentication and roles (`docs/security.md`).
    pub auth: AuthConfig,
    /// Traces: where to export spans, how many to keep (`docs/monitoring.md`, "Traces").
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// Traces exported over OTLP. Without an endpoint, spans are not recorded, but every request still
/// gets a trace id (its caller's, or a new one) that its log lines carry and that peers receive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The OTLP/HTTP collector's base URL (spans go to `<it>/v1/traces`, protobuf), e.g.
    /// `http://127.0.0.1:4318`. `OTEL_EXPORTER_OTLP_ENDPOINT` sets it too when this is unset.
    pub otlp_endpoint: Option<String>,
    /// Fraction of requests that start a trace here (no `traceparent`, or one whose caller does not
    /// sample) that are recorded and exported; a caller's sampling decision is always followed.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig { otlp_endpoint: None, sample_ratio: 0.01, service_name: "meridian".into() }
    }
}

/// Client authentication: who may connect, and who administers the cluster from the start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Requests must authenticate (client certificate on QUIC, bearer token on QUIC or HTTP), and
    /// HTTP is served over TLS. Clusters made by `meridian demo` and `region init` turn
    /// it on; a single node started with no config runs open, on loopback only.
    pub enabled: bool,
    /// Principals that are cluster admins (`admin` on `*`) whatever the replicated metadata says:
    /// how the first admin gets in (`meridian certs client --name NAME` for one of these names).
    pub admins: Vec<String>,
    /// The CA whose client certificates the QUIC port accepts (default: `peer.ca`, the cluster CA).
    pub client_ca: Option<PathBuf>,
    /// Run with authentication off on a non-loopback address: anyone who reaches the node owns its
    /// data. The node refuses to start that way unless this is set.
    pub allow_unauthenticated_network: bool,
    /// `/metrics` needs a bearer token (any user) too; by default it answers without one, as
    /// Prometheus scrapers expect.
    pub metrics_require_token: bool,
}

impl AuthConfig {
    /// The CA that signs client certificates, if any.
    pub fn client_ca<'a>(&'a self, peer: &'a PeerConfig) -> Option<&'a Path> {
        self.client_ca.as_deref().or(peer.ca.as_deref())
    }
}

/// Node-to-node settings: the region's membership, placement and replication over mutual TLS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerConfig {
    /// UDP address of the peer transport; `None` runs the node alone.
    pub listen: Option<SocketAddr>,
    /// The peer address other nodes reach this one at (default: `listen`; set it when listening
    /// on a wildcard address).
    pub advertise: Option<SocketAddr>,
    /// Peer addresses of nodes to join through (any live member will do; the rest is gossiped).
    pub seeds: Vec<SocketAddr>,
    /// The cluster CA certificate (PEM), from `meridian certs ca`.
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM), from `meridian certs node`; its identity must name `cluster_id`.
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    pub key: Option<PathBuf>,
    /// A certificate revocation list: a file of SHA-256 certificate fingerprints (hex, one per line,
    /// `#` comments; `meridian certs fingerprint FILE` prints one). A peer presenting a listed
    /// certificate is refused at the handshake and on connections already open; the file is re-read
    /// when it changes. Unset: nothing is revoked.
    pub revoked: Option<PathBuf>,
    /// Replicas of each partition in the region (capped by the number of active nodes).
    pub rf: usize,
    /// Time between anti-entropy rounds of a partition with a peer (0: 1000 ms).
    pub sync_interval_ms: u64,
    /// Time between membership gossip exchanges (which double as heartbeats).
    pub gossip_interval_ms: u64,
    /// A node not heard from for this long is suspected (still tried, hints kept for it).
    pub suspect_after_ms: u64,
    /// A node not heard from for this long is down: requests skip it and hints queue for it.
    pub dead_after_ms: u64,
    /// Most hints (writes kept for a replica that was down) held per target node.
    pub max_hints_per_node: usize,
    /// Whether a node joining for the first time takes placements at once (`true`), or waits as
    /// `joining` until an operator runs `meridian cluster activate NODE`.
    pub auto_activate: bool,
    /// Addresses to dial instead of a member's advertised peer address, by node name. For a WAN
    /// emulator (`meridian demo` and the geo-tests put a delaying relay between regions) or a
    /// NAT/proxy in front of a remote region; the certificate checks are unchanged.
    pub dial_via: BTreeMap<String, SocketAddr>,
    /// The newest peer protocol version this node offers and accepts (default: the newest it
    /// speaks). Nodes negotiate the newest version both speak on their own; lower this to keep an
    /// upgraded region speaking what the previous release speaks until the upgrade is final.
    pub max_protocol_version: u8,
    /// Whether quorums count a moving partition's old and new replicas together while placement
    /// changes (`true`, the default: see `docs/operations.md`, "Adding, draining and removing
    /// nodes"). `false` is a test knob that brings back the unsafe instant moves (a quorum read
    /// right after a change may miss an acknowledged write); it logs a warning.
    pub pending_replicas: bool,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            listen: None,
            advertise: None,
            seeds: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            revoked: None,
            rf: 3,
            sync_interval_ms: 1_000,
            gossip_interval_ms: 250,
            suspect_after_ms: 1_500,
            dead_after_ms: 3_000,
            max_hints_per_node: 100_000,
            auto_activate: true,
            dial_via: BTreeMap::new(),
            // The newest version this release speaks (`peer::NEWEST_VERSION`; a test keeps them equal).
            max_protocol_version: 5,
            pending_replicas: true,
        }
    }
}

impl PeerConfig {
    /// The round interval in effect.
    pub fn interval_ms(&self) -> u64 {
        if self.sync_interval_ms == 0 {
            1_000
        } else {
            self.sync_interval_ms
        }
    }

    /// Whether this node runs as a member of a multi-node region.
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }

    /// The address peers reach this node at.
    pub fn advertised(&self) -> Option<SocketAddr> {
        self.advertise.or(self.listen)
    }
}

/// A consistency level as written in config (validated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConsistencyName(pub String);

impl ConsistencyName {
    /// The parsed level (valid after [`Config::validate`]).
    pub fn level(&self) -> Consistency {
        self.0.parse().unwrap_or(Consistency::Eventual)
    }
}

/// Listening addresses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// UDP address of the native QUIC client protocol.
    pub client: SocketAddr,
    /// TCP address of the HTTP/JSON API, `/metrics`, `/livez`, `/readyz`.
    pub http: SocketAddr,
}

/// TLS material. Without paths the node generates a self-signed certificate under
/// `<data_dir>/tls/` on first start and reuses it afterwards.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// Storage settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `fsync` (default): a write is acknowledged after the WAL is fsynced, concurrent writes share
    /// fsyncs (group commit). `relaxed`: acknowledged once in the OS page cache; a process crash loses
    /// nothing, a power loss or kernel crash loses at most `relaxed_sync_interval_ms` of writes.
    pub durability: String,
    /// How often the WAL is fsynced in `relaxed` mode.
    pub relaxed_sync_interval_ms: u64,
    /// RocksDB block cache size.
    pub cache_mb: usize,
    /// How long the delta log keeps a record (0: forever). A peer away longer than this catches up
    /// through the digest fallback (states of the keys that differ) instead of the log
    /// (`store/log_truncation.rs`).
    pub log_retention_s: u64,
    /// The delta log's byte budget: while its column family takes more, the retention is halved
    /// pass after pass (down to 1 s), and restored once it takes less than half.
    pub log_retention_mb: u64,
    /// How often the log is truncated.
    pub log_truncation_interval_ms: u64,
    /// How often the data census counts live keys and the tombstones kept (`store/census.rs`);
    /// the first pass starts a few seconds after the node.
    pub census_interval_ms: u64,
    /// Test knob: the kernel boot this run is in, instead of `/proc/sys/kernel/random/boot_id`
    /// (empty: read it). A node whose last `relaxed` run did not stop cleanly starts a new log
    /// epoch when the boot changed (`store/epoch.rs`); tests simulate a reboot with it.
    pub boot_id: String,
}

/// Limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request or response frame.
    pub max_frame_bytes: usize,
    /// Largest payload (value, members, changes) of one write.
    pub max_value_bytes: usize,
    /// Largest state (encoded, as stored) a client write may leave a key with; a write that would
    /// grow a key beyond it is refused `too_large` at the coordinator. A delete, and a write that
    /// does not grow the key, are always accepted.
    ///
    /// Replicas that accept writes while cut off from each other can each grow a key to this cap,
    /// and their merge is larger: up to one cap per such replica. Nothing refuses a merge (that
    /// would break convergence); `max_merged_key_bytes` is what reads and replication carry.
    pub max_key_bytes: usize,
    /// Largest key state that reads, quorum reads, read repair and anti-entropy carry whole: at
    /// least four times `max_key_bytes`, so the concurrent growth of one key by that many replicas
    /// stays readable and replicable. A key merged beyond it (more replicas than that, each growing
    /// it to the cap while cut off) is still stored and its deltas still replicate, but a read of it
    /// answers `too_large` until it is shrunk or deleted; `meridian_keys_over_cap_total` counts it.
    pub max_merged_key_bytes: usize,
    /// Open client connections (QUIC); further ones are refused.
    pub max_connections: usize,
    /// How long a client has to complete its QUIC handshake; its connection slot is freed after it.
    pub handshake_timeout_ms: u64,
    /// Client handshakes in progress before a client whose address is not validated yet is sent a
    /// QUIC Retry first (it must prove it receives packets at its address; 0: always).
    pub max_unvalidated_handshakes: usize,
    /// Concurrent requests (streams) per QUIC connection.
    pub max_streams_per_connection: u32,
    /// Requests being executed at once across all connections and HTTP; further ones get `overloaded`.
    pub max_inflight_requests: usize,
    /// Default time a request may take on the node.
    pub request_timeout_ms: u64,
    /// How long a `causal` read waits for missing dependencies before failing with `causal_timeout`.
    pub causal_wait_ms: u64,
    /// Largest page of `keys`.
    pub max_list_keys: u32,
    /// Most operations in one pipeline (`Operation::Pipeline`); a longer one is refused whole as
    /// `too_large`. Each operation still takes its own in-flight slot.
    pub max_pipeline_ops: u32,
    /// How long an idempotency record is kept (a retry later than this may apply twice).
    pub idempotency_ttl_s: u64,
    /// The idempotency records' byte budget: while they take more (keys and values, as the last
    /// sweep counted them), the TTL applied is halved, at most once a minute and not below a
    /// minute, and doubled back once they take less than half (`meridian_idempotency_ttl_seconds`). Every write leaves a record, so without a budget they
    /// would take the TTL times the write rate.
    pub idempotency_max_mb: u64,
    /// Open HTTP connections; further ones are closed at once.
    pub max_http_connections: usize,
    /// How long an HTTP client gets for its TLS handshake and for each request's header (also the
    /// longest an idle keep-alive connection is held); the body then gets `request_timeout_ms`.
    pub http_header_timeout_ms: u64,
}

/// Settings of one namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Default consistency of requests in this namespace.
    pub consistency: ConsistencyName,
}

/// Room a frame leaves around the largest key state it carries whole (the reply or message around
/// it, a page's other small keys).
const FRAME_OVERHEAD_BYTES: usize = 1 << 20;

impl LimitsConfig {
    /// Largest response frame to a client: a whole key state up to `max_merged_key_bytes` must fit,
    /// even when requests are capped lower.
    pub fn max_response_bytes(&self) -> usize {
        self.max_frame_bytes.max(self.max_merged_key_bytes + FRAME_OVERHEAD_BYTES)
    }

    /// Largest frame between peers, each direction: at least the transport's default, and a whole
    /// key state up to `max_merged_key_bytes` with its message around it.
    pub fn peer_frame_bytes(&self, transport_default: usize) -> usize {
        transport_default.max(self.max_merged_key_bytes + FRAME_OVERHEAD_BYTES)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: "meridian-1".into(),
            cluster_id: "local".into(),
            region: "local".into(),
            zone: "local-a".into(),
            data_dir: PathBuf::from("./meridian-data"),
            listen: ListenConfig {
                client: "127.0.0.1:7400".parse().expect("valid literal"),
                http: "127.0.0.1:7480".parse().expect("valid literal"),
            },
            tls: TlsConfig::default(),
            storage: StorageConfig {
                durability: "fsync".into(),
                relaxed_sync_interval_ms: 100,
                cache_mb: 64,
                log_retention_s: 86_400,
                log_retention_mb: 4_096,
                log_truncation_interval_ms: 10_000,
                census_interval_ms: 60_000,
                boot_id: String::new(),
            },
            limits: LimitsConfig {
                max_frame_bytes: 4 << 20,
                max_value_bytes: 1 << 20,
                max_key_bytes: 2 << 20,
                max_merged_key_bytes: 16 << 20,
                max_connections: 1024,
                handshake_timeout_ms: 10_000,
                max_unvalidated_handshakes: 64,
                max_streams_per_connection: 256,
                max_inflight_requests: 4096,
                request_timeout_ms: 5_000,
                causal_wait_ms: 2_000,
                max_list_keys: 1_000,
                max_pipeline_ops: 1_024,
                idempotency_ttl_s: 24 * 3600,
                idempotency_max_mb: 1_024,
                max_http_connections: 4096,
                http_header_timeout_ms: 10_000,
            },
            default_consistency: ConsistencyName("eventual".into()),
            namespaces: BTreeMap::new(),
            max_clock_drift_ms: 60_000,
            clock_offset_ms: 0,
            peer: PeerConfig::default(),
            auth: AuthConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed into the schema.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A field has an invalid value.
    #[error("invalid configuration field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Top-level fields, used to keep unrelated `MERIDIAN_*` variables (like the CLI's
/// `MERIDIAN_ENDPOINT`) out of the node's schema.
const TOP_LEVEL_FIELDS: &[&str] = &[
    "node_name",
    "cluster_id",
    "region",
    "zone",
    "data_dir",
    "listen",
    "tls",
    "storage",
    "limits",
    "default_consistency",
    "namespaces",
    "max_clock_drift_ms",
    "clock_offset_ms",
    "peer",
    "auth",
];

impl Config {
    /// Loads defaults, then `file` (if given), then the `MERIDIAN_*` environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::figment(file, Env::prefixed("MERIDIAN_"))
    }

    /// Like [`Config::load`] with an explicit environment provider (for tests).
    pub fn figment(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Parse(format!("config file {} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        let env = env.split("__").filter(|key| {
            let top = key.as_str().split('.').next().unwrap_or_default();
            TOP_LEVEL_FIELDS.iter().any(|field| field.eq_ignore_ascii_case(top))
        });
        let config: Config = figment.merge(env).extract().map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field that serde's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| Err(ConfigError::Invalid { field: field.into(), reason });
        for (field, value) in [
            ("node_name", &self.node_name),
            ("cluster_id", &self.cluster_id),
            ("region", &self.region),
            ("zone", &self.zone),
        ] {
            if value.is_empty()
                || value.len() > 64
                || !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return invalid(field, format!("{value:?} must be 1-64 characters of [A-Za-z0-9-_.]"));
            }
        }
        if !["fsync", "relaxed"].contains(&self.storage.durability.as_str()) {
            return invalid(
                "storage.durability",
                format!("{:?} must be \"fsync\" or \"relaxed\"", self.storage.durability),
            );
        }
        if self.storage.relaxed_sync_interval_ms == 0 {
            return invalid("storage.relaxed_sync_interval_ms", "must be at least 1".into());
        }
        for (field, value, min) in [
            ("storage.log_retention_mb", self.storage.log_retention_mb, 1),
            ("storage.log_truncation_interval_ms", self.storage.log_truncation_interval_ms, 100),
            ("storage.census_interval_ms", self.storage.census_interval_ms, 100),
        ] {
            if value < min {
                return invalid(field, format!("must be at least {min}"));
            }
        }
        let limits = &self.limits;
        for (field, value, min) in [
            ("limits.max_frame_bytes", limits.max_frame_bytes, 1024),
            ("limits.max_value_bytes", limits.max_value_bytes, 1),
            ("limits.max_connections", limits.max_connections, 1),
            ("limits.handshake_timeout_ms", limits.handshake_timeout_ms as usize, 1),
            ("limits.max_streams_per_connection", limits.max_streams_per_connection as usize, 1),
            ("limits.max_inflight_requests", limits.max_inflight_requests, 1),
            ("limits.request_timeout_ms", limits.request_timeout_ms as usize, 1),
            ("limits.max_list_keys", limits.max_list_keys as usize, 1),
            ("limits.max_pipeline_ops", limits.max_pipeline_ops as usize, 1),
            ("limits.idempotency_max_mb", limits.idempotency_max_mb as usize, 1),
            ("limits.max_http_connections", limits.max_http_connections, 1),
            ("limits.http_header_timeout_ms", limits.http_header_timeout_ms as usize, 1),
        ] {
            if value < min {
                return invalid(field, format!("{value} is below the minimum {min}"));
            }
        }
        if limits.max_frame_bytes > meridian_crdt::codec::ABSOLUTE_MAX_BYTES {
            return invalid(
                "limits.max_frame_bytes",
                format!(
                    "{} exceeds the codec's ceiling {}",
                    limits.max_frame_bytes,
                    meridian_crdt::codec::ABSOLUTE_MAX_BYTES
                ),
            );
        }
        if limits.max_value_bytes + 4096 > limits.max_frame_bytes {
            return invalid(
                "limits.max_value_bytes",
                format!("{} must leave 4096 bytes of headroom below limits.max_frame_bytes", limits.max_value_bytes),
            );
        }
        if limits.max_key_bytes < limits.max_value_bytes + 4096 {
            return invalid(
                "limits.max_key_bytes",
                format!(
                    "{} must be at least limits.max_value_bytes + 4096 (a write at the payload cap must fit a new key)",
                    limits.max_key_bytes
                ),
            );
        }
        if limits.max_merged_key_bytes < 4 * limits.max_key_bytes {
            return invalid(
                "limits.max_merged_key_bytes",
                format!(
                    "{} must be at least 4 × limits.max_key_bytes ({}): the merge of concurrent growth must stay readable",
                    limits.max_merged_key_bytes,
                    4 * limits.max_key_bytes
                ),
            );
        }
        if limits.max_merged_key_bytes + FRAME_OVERHEAD_BYTES > meridian_crdt::codec::ABSOLUTE_MAX_BYTES {
            return invalid(
                "limits.max_merged_key_bytes",
                format!(
                    "{} must leave {FRAME_OVERHEAD_BYTES} bytes below the codec's ceiling {}",
                    limits.max_merged_key_bytes,
                    meridian_crdt::codec::ABSOLUTE_MAX_BYTES
                ),
            );
        }
        if let Err(e) = self.default_consistency.0.parse::<Consistency>() {
            return invalid("default_consistency", e.to_string());
        }
        for (namespace, ns) in &self.namespaces {
            if let Err(e) = validate_namespace(namespace) {
                return invalid(&format!("namespaces.{namespace}"), e.to_string());
            }
            if let Err(e) = ns.consistency.0.parse::<Consistency>() {
                return invalid(&format!("namespaces.{namespace}.consistency"), e.to_string());
            }
        }
        if self.peer.listen.is_some() && (self.peer.ca.is_none() || self.peer.cert.is_none() || self.peer.key.is_none())
        {
            return invalid("peer", "peer.listen needs peer.ca, peer.cert and peer.key (see `meridian certs`)".into());
        }
        if self.peer.listen.is_none() && !self.peer.seeds.is_empty() {
            return invalid("peer.seeds", "listing seeds needs peer.listen (and the certificates)".into());
        }
        if self.peer.rf == 0 {
            return invalid("peer.rf", "the replication factor must be at least 1".into());
        }
        if self.peer.gossip_interval_ms == 0 || self.peer.suspect_after_ms == 0 {
            return invalid("peer", "gossip_interval_ms and suspect_after_ms must be positive".into());
        }
        if self.peer.dead_after_ms < self.peer.suspect_after_ms {
            return invalid("peer.dead_after_ms", "must be at least peer.suspect_after_ms".into());
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls", "set both tls.cert and tls.key, or neither".into());
        }
        self.validate_tracing()?;
        self.validate_auth()
    }

    /// Authentication: a CA when it is on, and never off beyond loopback unless said explicitly.
    fn validate_tracing(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| Err(ConfigError::Invalid { field: field.into(), reason });
        let tracing = &self.tracing;
        if !(0.0..=1.0).contains(&tracing.sample_ratio) {
            return invalid("tracing.sample_ratio", format!("{} is not between 0 and 1", tracing.sample_ratio));
        }
        if let Some(endpoint) = &tracing.otlp_endpoint {
            // Plain HTTP: spans go to a collector beside the node (an agent on the host or pod), which
            // forwards them on; the exporter carries no TLS stack of its own.
            if !endpoint.starts_with("http://") {
                return invalid("tracing.otlp_endpoint", format!("{endpoint:?} is not an http:// URL"));
            }
        }
        if tracing.service_name.is_empty() {
            return invalid("tracing.service_name", "must not be empty".into());
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| Err(ConfigError::Invalid { field: field.into(), reason });
        for admin in &self.auth.admins {
            if admin.is_empty()
                || admin.len() > 64
                || !admin.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return invalid("auth.admins", format!("{admin:?} must be 1-64 characters of [A-Za-z0-9-_.]"));
            }
        }
        if self.auth.enabled && self.auth.client_ca(&self.peer).is_none() {
            return invalid(
                "auth.client_ca",
                "authentication needs the cluster CA that signs client certificates (auth.client_ca, or peer.ca)"
                    .into(),
            );
        }
        if !self.auth.enabled && !self.auth.allow_unauthenticated_network {
            let exposed: Vec<String> = [("listen.client", self.listen.client), ("listen.http", self.listen.http)]
                .into_iter()
                .filter(|(_, addr)| !addr.ip().is_loopback())
                .map(|(field, addr)| format!("{field} = {addr}"))
                .collect();
            if !exposed.is_empty() {
                return invalid(
                    "auth.enabled",
                    format!(
                        "authentication is off and the node listens beyond loopback ({}): anyone who reaches it could \
                         read, write and delete every key. Turn authentication on (auth.enabled = true, see \
                         docs/security.md), or set auth.allow_unauthenticated_network = true to run open on purpose",
                        exposed.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }

    /// Whether HTTP is served in plaintext: only with authentication off and every client port on
    /// loopback (the single node of the five-minute tour). Everything else serves HTTPS.
    pub fn plain_http(&self) -> bool {
        !self.auth.enabled && self.listen.client.ip().is_loopback() && self.listen.http.ip().is_loopback()
    }

    /// The default consistency of `namespace`.
    pub fn consistency_for(&self, namespace: &str) -> Consistency {
        self.namespaces.get(namespace).map_or(self.default_consistency.level(), |ns| ns.consistency.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn no_env() -> Env {
        Env::prefixed("MERIDIAN_TEST_NOTHING_")
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::figment(None, no_env()).unwrap(), Config::default());
    }

    #[test]
    fn file_overrides_defaults_and_errors_name_the_field() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "node_name = \"n2\"\n[namespaces.orders]\nconsistency = \"local_quorum\"").unwrap();
        let config = Config::figment(Some(file.path()), no_env()).unwrap();
        assert_eq!(config.node_name, "n2");
        assert_eq!(config.consistency_for("orders"), Consistency::LocalQuorum);
        assert_eq!(config.consistency_for("other"), Consistency::Eventual);

        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "[namespaces.orders]\nconsistency = \"strong\"").unwrap();
        let err = Config::figment(Some(bad.path()), no_env()).unwrap_err().to_string();
        assert!(err.contains("namespaces.orders.consistency"), "{err}");

        let mut typo = tempfile::NamedTempFile::new().unwrap();
        writeln!(typo, "[limits]\nmax_value_byte = 3").unwrap();
        let err = Config::figment(Some(typo.path()), no_env()).unwrap_err().to_string();
        assert!(err.contains("max_value_byte"), "{err}");

        let mut durability = tempfile::NamedTempFile::new().unwrap();
        writeln!(durability, "[storage]\ndurability = \"sometimes\"").unwrap();
        let err = Config::figment(Some(durability.path()), no_env()).unwrap_err().to_string();
        assert!(err.contains("storage.durability"), "{err}");
    }

    #[test]
    fn open_node_beyond_loopback_is_refused_unless_said_explicitly() {
        let mut config = Config::default();
        config.listen.http = "0.0.0.0:7480".parse().unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("auth.enabled") && err.contains("listen.http = 0.0.0.0:7480"), "{err}");
        config.auth.allow_unauthenticated_network = true;
        config.validate().unwrap();
        assert!(!config.plain_http(), "an exposed node serves HTTPS even when open");

        let mut config = Config::default();
        config.auth.enabled = true;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("auth.client_ca"), "{err}");
        config.auth.client_ca = Some("ca.crt".into());
        config.listen.client = "0.0.0.0:7400".parse().unwrap();
        config.validate().unwrap();
        assert!(Config::default().plain_http());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error type
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MERIDIAN_CFGTEST_LIMITS__MAX_VALUE_BYTES", "2048");
            jail.set_env("MERIDIAN_CFGTEST_ENDPOINT", "ignored: not a node field");
            let config = Config::figment(None, Env::prefixed("MERIDIAN_CFGTEST_")).unwrap();
            assert_eq!(config.limits.max_value_bytes, 2048);
            Ok(())
        });
    }
}
