//! Certificates for the cluster's mutual TLS (issued by `meridian certs`, whose command lives in the binary): a cluster CA, node and client
//! certificates whose identity lives in a URI subject alternative name, and the parser that reads
//! that identity back out of a certificate the TLS layer has verified.
//!
//! # Trust model
//!
//! * **One CA per cluster.** `meridian certs ca --cluster-id ID` creates a self-signed CA whose own
//!   certificate carries the URI SAN `urn:meridian:cluster:<ID>` and whose basic constraints allow it
//!   to sign end-entity certificates only (path length 0). The peer transport trusts exactly the
//!   cluster CA — never the system roots — so "signed by the cluster CA" is the only way into the
//!   cluster. The CA key is as powerful as the cluster: keep it offline, off the nodes.
//! * **Identity lives in one URI SAN.** A node certificate carries
//!   `urn:meridian:cluster:<cluster>:region:<region>:zone:<zone>:node:<name>`, a client certificate
//!   `urn:meridian:cluster:<cluster>:client:<name>`. Every component follows the node configuration's
//!   rule (1-64 characters of `[A-Za-z0-9-_.]`), so `:` never appears inside one and the URI parses
//!   unambiguously. A certificate with no such URI, or with more than one, has no identity. Other
//!   URI SANs (a SPIFFE id, say) are ignored. The DNS/IP SANs of a node certificate are the
//!   addresses peers dial it at; the dialling side checks them as the TLS server name.
//! * **Why the region is bound to the certificate.** Data residency decides which bytes may be sent
//!   to which region. If a node's region came from what it says in a message or its config, one
//!   misconfigured or compromised node could claim `eu-west` and be sent data that must stay in the
//!   EU. Instead the region, zone and name a peer is treated as having are the ones the CA signed
//!   into its certificate: the transport (`crate::peer`) extracts them after the TLS handshake
//!   and hands them to the request handler, and nothing a peer claims in a message can override
//!   them. Moving a node to another region takes a new certificate — an operator decision made with
//!   the CA key.
//! * **Purposes are separated.** Node certificates carry both `serverAuth` and `clientAuth` extended
//!   key usages (nodes dial each other); client certificates only `clientAuth`, so they cannot serve
//!   as a node's server certificate, and the peer transport refuses them as a dialling node.
//!
//! * **Revocation is a deny list.** [`revocation`] reads a file of SHA-256 certificate fingerprints
//!   (`peer.revoked`; `meridian certs fingerprint FILE` prints one); the peer transport refuses a
//!   listed certificate at every handshake, both ways, and on the next request of a connection
//!   opened before it was listed. The file is re-read when it changes. There is no CRL or OCSP:
//!   every node needs the list (distribute it like the CA certificate).
//!
//! Rotation works by trust overlap — a node's trusted CA PEM
//! may hold several CA certificates, so a new CA can be trusted everywhere before certificates
//! issued by it are rolled out, and the old one dropped afterwards.
//!
//! The CA is rebuilt from `ca.crt` + `ca.key` when issuing: this crate does not link an X.509
//! parser, so the CA's distinguished name is recomputed from the common name read out of `ca.crt`
//! (its shape is fixed by [`generate_ca`]) and the result is checked — the issued certificate's issuer must equal the CA
//! certificate's subject byte for byte, and `ca.key` must be the key of `ca.crt` — so a CA made by
//! other tools is refused with a clear error rather than producing certificates that do not chain.

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

/// Prefix of every Meridian identity URI.
pub const URN_PREFIX: &str = "urn:meridian:cluster:";

/// Default validity of a CA certificate (10 years).
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);

/// Default validity of node and client certificates (1 year). Re-issue before it runs out.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far back `notBefore` is set, so that a peer whose clock lags a little still accepts a
/// freshly issued certificate.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Hosts a node certificate is issued for when the CLI is given none.
pub const DEFAULT_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// File names inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// See [`CA_CERT_FILE`].
pub const CA_KEY_FILE: &str = "ca.key";

/// Why certificate material could not be generated, loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A cluster id, region, zone or name breaks the naming rule.
    #[error("invalid {field} {value:?}: must be 1-64 characters of [A-Za-z0-9-_.]")]
    InvalidName {
        /// Which component.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// A host is neither an IP address nor a valid DNS name (wildcards are refused).
    #[error("invalid host {0:?}: expected a DNS name or an IP address")]
    InvalidHost(String),
    /// The validity is outside 1 day to 100 years.
    #[error("a validity of {days} days is outside 1 day to 100 years")]
    Validity {
        /// The validity asked for, in whole days.
        days: u64,
    },
    /// A node certificate needs at least one host.
    #[error("a node certificate needs at least one host (DNS name or IP address)")]
    NoHosts,
    /// The identity to issue names another cluster than the CA's.
    #[error("the CA belongs to cluster {ca:?}, refusing to issue a certificate for cluster {requested:?}")]
    ClusterMismatch {
        /// The CA's cluster id.
        ca: String,
        /// The cluster id asked for.
        requested: String,
    },
    /// The CA certificate or key is unusable: unreadable, not ours, or not matching each other.
    #[error("unusable CA: {0}")]
    Ca(String),
    /// PEM data did not contain what was expected.
    #[error("{0}")]
    Pem(String),
    /// A certificate's identity could not be read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rcgen refused to build the certificate.
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The file exists and `force` was not given.
    #[error("{} already exists (use --force to overwrite)", .0.display())]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why a certificate's identity was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The certificate is not parseable DER.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The certificate has no `urn:meridian:cluster:` URI SAN.
    #[error("the certificate carries no `urn:meridian:cluster:` URI identity")]
    MissingUri,
    /// The certificate has several Meridian URIs; none is trusted.
    #[error("the certificate carries {0} `urn:meridian:` URI identities; exactly one is allowed")]
    AmbiguousUri(usize),
    /// The Meridian URI does not follow the grammar.
    #[error("malformed identity URI {uri:?}: {reason}")]
    BadUri {
        /// The URI found.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate belongs to another cluster.
    #[error("the certificate belongs to cluster {found:?}, this is cluster {expected:?}")]
    WrongCluster {
        /// Our cluster id.
        expected: String,
        /// The certificate's cluster id.
        found: String,
    },
    /// A node identity was required, the certificate is a client's (or the CA's).
    #[error("the certificate identifies {found}, not a node")]
    NotANode {
        /// The identity URI found.
        found: String,
    },
    /// The certificate is on the revocation list ([`revocation`]).
    #[error("the certificate {fingerprint} is revoked")]
    Revoked {
        /// Its SHA-256 fingerprint.
        fingerprint: String,
    },
    /// The peer is a node of this cluster, but not the one that was dialled.
    #[error("expected node {expected:?}, the certificate identifies node {found:?}")]
    UnexpectedName {
        /// The name asked for.
        expected: String,
        /// The name in the certificate.
        found: String,
    },
}

/// Checks a cluster id, region, zone or name against the rule of `Config::validate`
/// (`node/src/config.rs`): 1-64 characters of `[A-Za-z0-9-_.]`.
pub fn validate_name(field: &'static str, value: &str) -> Result<(), CertError> {
    if is_valid_name(value) {
        Ok(())
    } else {
        Err(CertError::InvalidName { field, value: value.to_string() })
    }
}

fn is_valid_name(value: &str) -> bool {
    !value.is_empty() && value.len() <= 64 && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A node's identity as signed into its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIdentity {
    /// The cluster the node belongs to.
    pub cluster_id: String,
    /// The node's region (e.g. `eu-west`).
    pub region: String,
    /// The node's zone within the region.
    pub zone: String,
    /// The node's name, unique in the cluster.
    pub name: String,
}

/// The verified identity of a peer node, as the transport hands it to request handlers.
pub type PeerIdentity = NodeIdentity;

impl NodeIdentity {
    /// Checks every component against [`validate_name`].
    pub fn validate(&self) -> Result<(), CertError> {
        validate_name("cluster id", &self.cluster_id)?;
        validate_name("region", &self.region)?;
        validate_name("zone", &self.zone)?;
        validate_name("node name", &self.name)
    }

    /// `urn:meridian:cluster:<cluster>:region:<region>:zone:<zone>:node:<name>`.
    pub fn uri(&self) -> String {
        format!("{URN_PREFIX}{}:region:{}:zone:{}:node:{}", self.cluster_id, self.region, self.zone, self.name)
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ({}/{}, cluster {})", self.name, self.region, self.zone, self.cluster_id)
    }
}

/// A client's identity as signed into its certificate (for SDK mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientIdentity {
    /// The cluster the client may talk to.
    pub cluster_id: String,
    /// The client's name.
    pub name: String,
}

impl ClientIdentity {
    /// Checks every component against [`validate_name`].
    pub fn validate(&self) -> Result<(), CertError> {
        validate_name("cluster id", &self.cluster_id)?;
        validate_name("client name", &self.name)
    }

    /// `urn:meridian:cluster:<cluster>:client:<name>`.
    pub fn uri(&self) -> String {
        format!("{URN_PREFIX}{}:client:{}", self.cluster_id, self.name)
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} (cluster {})", self.name, self.cluster_id)
    }
}

/// Any identity a Meridian certificate can carry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CertIdentity {
    /// The cluster CA itself (`urn:meridian:cluster:<id>`).
    Ca {
        /// The cluster id.
        cluster_id: String,
    },
    /// A node.
    Node(NodeIdentity),
    /// A client.
    Client(ClientIdentity),
}

impl CertIdentity {
    /// The cluster the identity belongs to.
    pub fn cluster_id(&self) -> &str {
        match self {
            CertIdentity::Ca { cluster_id } => cluster_id,
            CertIdentity::Node(node) => &node.cluster_id,
            CertIdentity::Client(client) => &client.cluster_id,
        }
    }

    /// The identity URI.
    pub fn uri(&self) -> String {
        match self {
            CertIdentity::Ca { cluster_id } => format!("{URN_PREFIX}{cluster_id}"),
            CertIdentity::Node(node) => node.uri(),
            CertIdentity::Client(client) => client.uri(),
        }
    }
}

impl fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertIdentity::Ca { cluster_id } => write!(f, "the CA of cluster {cluster_id}"),
            CertIdentity::Node(node) => node.fmt(f),
            CertIdentity::Client(client) => client.fmt(f),
        }
    }
}

/// Parses a Meridian identity URI (exact, case-sensitive grammar; see the module docs).
pub fn parse_uri(uri: &str) -> Result<CertIdentity, IdentityError> {
    let bad = |reason: &str| IdentityError::BadUri { uri: uri.to_string(), reason: reason.to_string() };
    let rest = uri.strip_prefix(URN_PREFIX).ok_or_else(|| bad("does not start with urn:meridian:cluster:"))?;
    let parts: Vec<&str> = rest.split(':').collect();
    if let Some(invalid) = parts.iter().find(|p| !is_valid_name(p)) {
        return Err(bad(&format!("component {invalid:?} is not 1-64 characters of [A-Za-z0-9-_.]")));
    }
    let owned = |s: &str| s.to_string();
    match parts.as_slice() {
        [cluster] => Ok(CertIdentity::Ca { cluster_id: owned(cluster) }),
        [cluster, "client", name] => {
            Ok(CertIdentity::Client(ClientIdentity { cluster_id: owned(cluster), name: owned(name) }))
        }
        [cluster, "region", region, "zone", zone, "node", name] => Ok(CertIdentity::Node(NodeIdentity {
            cluster_id: owned(cluster),
            region: owned(region),
            zone: owned(zone),
            name: owned(name),
        })),
        _ => Err(bad("expected <cluster>, <cluster>:client:<name> or <cluster>:region:<r>:zone:<z>:node:<name>")),
    }
}

/// Reads the identity of any Meridian certificate (CA, node or client) from its DER encoding.
///
/// This does not verify the certificate: call it on a certificate the TLS layer has verified
/// against the cluster CA (as the peer transport does), or for display.
pub fn parse_cert_identity(cert_der: &[u8]) -> Result<CertIdentity, IdentityError> {
    let info = der::parse_certificate(cert_der).map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let ours: Vec<&String> = info.uris.iter().filter(|u| u.starts_with("urn:meridian:")).collect();
    match ours.as_slice() {
        [] => Err(IdentityError::MissingUri),
        [uri] => parse_uri(uri),
        many => Err(IdentityError::AmbiguousUri(many.len())),
    }
}

/// Reads a **node** identity from a certificate's DER encoding; a client or CA certificate is
/// [`IdentityError::NotANode`]. Does not verify the certificate (see [`parse_cert_identity`]).
pub fn parse_identity(cert_der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    match parse_cert_identity(cert_der)? {
        CertIdentity::Node(node) => Ok(node),
        other => Err(IdentityError::NotANode { found: other.uri() }),
    }
}

/// What a certificate says about itself beyond its identity (for `meridian certs show`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// The Meridian identity, if the certificate has a valid one.
    pub identity: Result<CertIdentity, IdentityError>,
    /// DNS name SANs.
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ips: Vec<IpAddr>,
    /// End of the validity period (`notAfter`), Unix seconds.
    pub not_after: Option<i64>,
}

/// Summarises a certificate (DER).
pub fn summarize(cert_der: &[u8]) -> Result<CertSummary, IdentityError> {
    let info = der::parse_certificate(cert_der).map_err(|e| IdentityError::Malformed(e.to_string()))?;
    Ok(CertSummary {
        identity: parse_cert_identity(cert_der),
        dns_names: info.dns_names,
        ips: info.ips,
        not_after: info.not_after,
    })
}

/// Exports when the first certificate of `pem` expires, as
/// `meridian_certificate_expiry_timestamp_seconds{certificate=<which>}` (Unix seconds), for the
/// `MeridianCertificateExpiringSoon` alert. Certificates are read at start-up; a renewed one is
/// picked up (and exported) by the restart that loads it.
pub fn export_expiry(which: &'static str, pem: &str) {
    let expiry = certs_from_pem(pem.as_bytes(), which)
        .ok()
        .and_then(|certs| der::parse_certificate(&certs[0]).ok())
        .and_then(|info| info.not_after);
    match expiry {
        Some(at) => {
            metrics::gauge!("meridian_certificate_expiry_timestamp_seconds", "certificate" => which).set(at as f64)
        }
        None => tracing::warn!(certificate = which, "cannot read the certificate's expiry; it is not exported"),
    }
}

/// Every certificate in a PEM blob, in order (at least one).
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(format!("{what}: unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(CertError::Pem(format!("{what}: no CERTIFICATE block in the PEM data")));
    }
    Ok(certs)
}

/// A cluster CA: its certificate and private key, PEM-encoded.
#[derive(Clone)]
pub struct CaBundle {
    /// The CA certificate (what every node trusts).
    pub cert_pem: String,
    /// The CA private key (keep offline).
    pub key_pem: String,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl CaBundle {
    /// The cluster id in the CA certificate's own URI SAN.
    pub fn cluster_id(&self) -> Result<String, CertError> {
        let certs = certs_from_pem(self.cert_pem.as_bytes(), "CA certificate")?;
        match parse_cert_identity(&certs[0])? {
            CertIdentity::Ca { cluster_id } => Ok(cluster_id),
            other => Err(CertError::Ca(format!("the certificate identifies {other}, not a cluster CA"))),
        }
    }

    /// Reads `DIR/ca.crt` and `DIR/ca.key` (warns when the key is readable by others).
    pub fn load(dir: &Path) -> Result<CaBundle, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CertError::Io { path, source })
        };
        let key_path = dir.join(CA_KEY_FILE);
        if let Ok(meta) = std::fs::metadata(&key_path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %key_path.display(), "the CA key is readable by other users; chmod 600 it");
            }
        }
        Ok(CaBundle { cert_pem: read(CA_CERT_FILE)?, key_pem: read(CA_KEY_FILE)? })
    }

    /// Writes `DIR/ca.crt` (0644) and `DIR/ca.key` (0600), creating `DIR` (0700) if needed. Refuses
    /// to replace either file unless `force`. Returns the two paths.
    pub fn write(&self, dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), CertError> {
        write_pair(dir, CA_CERT_FILE, &self.cert_pem, CA_KEY_FILE, &self.key_pem, force)
    }
}

/// Sets `notBefore` an hour back (clock skew) and `notAfter` `validity` from now.
fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<(), CertError> {
    const MAX: Duration = Duration::from_secs(100 * 366 * 24 * 3600);
    if validity < Duration::from_secs(24 * 3600) || validity > MAX {
        return Err(CertError::Validity { days: validity.as_secs() / 86400 });
    }
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(since_epoch.as_secs());
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    Ok(())
}

/// 16 random bytes, positive and without a leading zero byte.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

/// The CA's parameters. Its distinguished name is `O=Meridian, CN=<common_name>`, where the
/// common name is `Meridian cluster CA <cluster_id> <8 random hex digits>`: unique per CA, so two
/// CAs of one cluster (a rotation, an impostor) are told apart by name, and rebuildable from
/// `ca.crt` (see the module docs).
fn ca_params(cluster_id: &str, common_name: &str) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Meridian");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.subject_alt_names = vec![SanType::URI(format!("{URN_PREFIX}{cluster_id}").try_into()?)];
    Ok(params)
}

/// A new cluster CA (ECDSA P-256) valid for [`DEFAULT_CA_VALIDITY`].
pub fn generate_ca(cluster_id: &str) -> Result<CaBundle, CertError> {
    generate_ca_valid_for(cluster_id, DEFAULT_CA_VALIDITY)
}

/// [`generate_ca`] with an explicit validity (1 day to 100 years).
pub fn generate_ca_valid_for(cluster_id: &str, validity: Duration) -> Result<CaBundle, CertError> {
    validate_name("cluster id", cluster_id)?;
    let key = KeyPair::generate()?;
    let common_name = format!("Meridian cluster CA {cluster_id} {:08x}", rand::random::<u32>());
    let mut params = ca_params(cluster_id, &common_name)?;
    set_validity(&mut params, validity)?;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok(CaBundle { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A node certificate and key (PEM) for `node`, valid for [`DEFAULT_LEAF_VALIDITY`], signed by `ca`.
///
/// SANs: every host (a DNS name or an IP address; at least one) and the node's identity URI.
/// Extended key usages: server and client authentication. `node.cluster_id` must be the CA's.
pub fn issue_node_cert<S: AsRef<str>>(
    ca: &CaBundle,
    node: &NodeIdentity,
    hosts: &[S],
) -> Result<(String, String), CertError> {
    issue_node_cert_valid_for(ca, node, hosts, DEFAULT_LEAF_VALIDITY)
}

/// [`issue_node_cert`] with an explicit validity (1 day to 100 years).
pub fn issue_node_cert_valid_for<S: AsRef<str>>(
    ca: &CaBundle,
    node: &NodeIdentity,
    hosts: &[S],
    validity: Duration,
) -> Result<(String, String), CertError> {
    node.validate()?;
    if hosts.is_empty() {
        return Err(CertError::NoHosts);
    }
    let mut sans = Vec::with_capacity(hosts.len() + 1);
    for host in hosts {
        let san = host_san(host.as_ref())?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    sans.push(SanType::URI(node.uri().try_into()?));
    let mut params = CertificateParams::default();
    params.distinguished_name = leaf_name(&node.cluster_id, &node.name);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    issue(ca, &node.cluster_id, params, validity)
}

/// A client certificate and key (PEM) for `client`, valid for [`DEFAULT_LEAF_VALIDITY`], signed by
/// `ca`: the identity URI as its only SAN, client authentication as its only extended key usage.
pub fn issue_client_cert(ca: &CaBundle, client: &ClientIdentity) -> Result<(String, String), CertError> {
    issue_client_cert_valid_for(ca, client, DEFAULT_LEAF_VALIDITY)
}

/// [`issue_client_cert`] with an explicit validity (1 day to 100 years).
pub fn issue_client_cert_valid_for(
    ca: &CaBundle,
    client: &ClientIdentity,
    validity: Duration,
) -> Result<(String, String), CertError> {
    client.validate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = leaf_name(&client.cluster_id, &client.name);
    params.subject_alt_names = vec![SanType::URI(client.uri().try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(ca, &client.cluster_id, params, validity)
}

fn leaf_name(cluster_id: &str, name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Meridian");
    dn.push(DnType::OrganizationalUnitName, cluster_id);
    dn.push(DnType::CommonName, name);
    dn
}

fn host_san(host: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || CertError::InvalidHost(host.to_string());
    if host.contains('*') || rustls::pki_types::DnsName::try_from(host).is_err() {
        return Err(invalid());
    }
    Ok(SanType::DnsName(host.try_into().map_err(|_| invalid())?))
}

/// Signs `params` (a leaf of cluster `cluster_id`) with `ca`, checking the result chains.
fn issue(
    ca: &CaBundle,
    cluster_id: &str,
    mut params: CertificateParams,
    validity: Duration,
) -> Result<(String, String), CertError> {
    let ca_certs = certs_from_pem(ca.cert_pem.as_bytes(), "CA certificate")?;
    let ca_info = der::parse_certificate(&ca_certs[0]).map_err(|e| CertError::Ca(format!("CA certificate: {e}")))?;
    let ca_cluster = ca.cluster_id()?;
    if ca_cluster != cluster_id {
        return Err(CertError::ClusterMismatch { ca: ca_cluster, requested: cluster_id.to_string() });
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| CertError::Ca(format!("CA key: {e}")))?;
    if ca_key.subject_public_key_info() != ca_info.spki {
        return Err(CertError::Ca("the CA key does not belong to the CA certificate".into()));
    }
    let common_name = ca_info
        .common_name
        .as_deref()
        .ok_or_else(|| CertError::Ca("the CA certificate's subject has no common name".into()))?;
    let issuer = Issuer::new(ca_params(&ca_cluster, common_name)?, ca_key);

    set_validity(&mut params, validity)?;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let issued = der::parse_certificate(cert.der()).map_err(|e| CertError::Ca(format!("issued certificate: {e}")))?;
    if issued.issuer != ca_info.subject {
        return Err(CertError::Ca(
            "the CA certificate's subject is not the one `meridian certs ca` writes; \
             certificates it signed would not chain (was it made by another tool?)"
                .into(),
        ));
    }
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `DIR/cert_name` (0644) and `DIR/key_name` (0600), creating `DIR` (0700) if needed.
///
/// Without `force`, refuses when either file exists (checked for both before writing either) and
/// creates each exclusively. With `force`, each file is replaced atomically (temporary file, fsync,
/// rename). Returns the certificate and key paths.
pub fn write_pair(
    dir: &Path,
    cert_name: &str,
    cert_pem: &str,
    key_name: &str,
    key_pem: &str,
    force: bool,
) -> Result<(PathBuf, PathBuf), CertError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Io { path, source }
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    let cert_path = dir.join(cert_name);
    let key_path = dir.join(key_name);
    if !force {
        for path in [&cert_path, &key_path] {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(CertError::Exists(path.clone()));
            }
        }
    }
    write_file(&key_path, key_pem.as_bytes(), 0o600, force)?;
    write_file(&cert_path, cert_pem.as_bytes(), 0o644, force)?;
    if let Ok(dir_handle) = std::fs::File::open(dir) {
        let _ = dir_handle.sync_all();
    }
    Ok((cert_path, key_path))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_path_buf(), source };
    let write = |target: &Path| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(target)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    if !force {
        return write(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CertError::Exists(path.to_path_buf()),
            _ => io(e),
        });
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{:016x}", rand::random::<u64>()));
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

mod der;
pub mod revocation;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(cluster: &str, name: &str) -> NodeIdentity {
        NodeIdentity {
            cluster_id: cluster.into(),
            region: "eu-west".into(),
            zone: "eu-west-1a".into(),
            name: name.into(),
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        certs_from_pem(pem.as_bytes(), "test").unwrap().remove(0)
    }

    #[test]
    fn ca_node_and_client_round_trip() {
        let ca = generate_ca("prod-1").unwrap();
        assert_eq!(ca.cluster_id().unwrap(), "prod-1");
        assert_eq!(parse_cert_identity(&der(&ca.cert_pem)).unwrap(), CertIdentity::Ca { cluster_id: "prod-1".into() });

        let identity = node("prod-1", "n1");
        let (cert, key) =
            issue_node_cert(&ca, &identity, &["localhost", "127.0.0.1", "::1", "n1.example.com"]).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert_eq!(parse_identity(&der(&cert)).unwrap(), identity);
        let summary = summarize(&der(&cert)).unwrap();
        assert_eq!(summary.dns_names, ["localhost", "n1.example.com"]);
        assert_eq!(summary.ips, ["127.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
        // Node certificates are valid for a year (notAfter read back from the DER, for the expiry
        // gauge and `meridian certs show`); the CA for ten.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let in_days = |at: Option<i64>| (at.unwrap() - now) as f64 / 86_400.0;
        assert!((364.9..=365.1).contains(&in_days(summary.not_after)), "{:?}", summary.not_after);
        let ca_summary = summarize(&der(&ca.cert_pem)).unwrap();
        assert!((3640.0..=3660.0).contains(&in_days(ca_summary.not_after)), "{:?}", ca_summary.not_after);

        let client = ClientIdentity { cluster_id: "prod-1".into(), name: "app".into() };
        let (cert, _) = issue_client_cert(&ca, &client).unwrap();
        assert_eq!(parse_cert_identity(&der(&cert)).unwrap(), CertIdentity::Client(client.clone()));
        assert_eq!(
            parse_identity(&der(&cert)),
            Err(IdentityError::NotANode { found: "urn:meridian:cluster:prod-1:client:app".into() })
        );
    }

    #[test]
    fn issuing_refuses_bad_input() {
        let ca = generate_ca("alpha").unwrap();
        assert!(matches!(
            issue_node_cert(&ca, &node("beta", "n1"), &["localhost"]),
            Err(CertError::ClusterMismatch { .. })
        ));
        for bad in ["", "a:b", "a b", "é", &"x".repeat(65)] {
            assert!(
                matches!(issue_node_cert(&ca, &node("alpha", bad), &["localhost"]), Err(CertError::InvalidName { .. })),
                "{bad:?}"
            );
            assert!(matches!(generate_ca(bad), Err(CertError::InvalidName { .. })), "{bad:?}");
        }
        for bad in ["*.example.com", "bad host", "", "-x..y"] {
            assert!(
                matches!(issue_node_cert(&ca, &node("alpha", "n1"), &[bad]), Err(CertError::InvalidHost(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(issue_node_cert::<&str>(&ca, &node("alpha", "n1"), &[]), Err(CertError::NoHosts)));
        assert!(matches!(
            issue_node_cert_valid_for(&ca, &node("alpha", "n1"), &["localhost"], Duration::from_secs(5)),
            Err(CertError::Validity { .. })
        ));
    }

    #[test]
    fn two_cas_of_one_cluster_have_distinct_names() {
        let subject = |ca: &CaBundle| der::parse_certificate(&der(&ca.cert_pem)).unwrap().subject;
        let (one, two) = (generate_ca("alpha").unwrap(), generate_ca("alpha").unwrap());
        assert_ne!(subject(&one), subject(&two));
        let info = der::parse_certificate(&der(&one.cert_pem)).unwrap();
        assert!(info.common_name.unwrap().starts_with("Meridian cluster CA alpha "));
    }

    #[test]
    fn a_mismatched_or_foreign_ca_is_refused() {
        let ca = generate_ca("alpha").unwrap();
        let other = generate_ca("alpha").unwrap();
        let mixed = CaBundle { cert_pem: ca.cert_pem.clone(), key_pem: other.key_pem.clone() };
        let err = issue_node_cert(&mixed, &node("alpha", "n1"), &["localhost"]).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");

        // A CA with our URI but another subject (made by another tool) would sign certificates that
        // do not chain: refused.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.subject_alt_names = vec![SanType::URI("urn:meridian:cluster:alpha".try_into().unwrap())];
        let foreign = CaBundle { cert_pem: params.self_signed(&key).unwrap().pem(), key_pem: key.serialize_pem() };
        let err = issue_node_cert(&foreign, &node("alpha", "n1"), &["localhost"]).unwrap_err();
        assert!(err.to_string().contains("another tool"), "{err}");
    }

    #[test]
    fn uri_grammar() {
        let ok = [
            ("urn:meridian:cluster:c", CertIdentity::Ca { cluster_id: "c".into() }),
            (
                "urn:meridian:cluster:c:client:x",
                CertIdentity::Client(ClientIdentity { cluster_id: "c".into(), name: "x".into() }),
            ),
            (
                "urn:meridian:cluster:c:region:r:zone:z:node:n",
                CertIdentity::Node(NodeIdentity {
                    cluster_id: "c".into(),
                    region: "r".into(),
                    zone: "z".into(),
                    name: "n".into(),
                }),
            ),
        ];
        for (uri, identity) in ok {
            assert_eq!(parse_uri(uri).unwrap(), identity);
            assert_eq!(identity.uri(), uri);
        }
        for bad in [
            "urn:meridian:cluster:",
            "urn:meridian:cluster:c:",
            "URN:meridian:cluster:c",
            "urn:meridian:cluster:c:region:r:zone:z:node:",
            "urn:meridian:cluster:c:region:r:zone:z:node:n:extra",
            "urn:meridian:cluster:c:zone:z:region:r:node:n",
            "urn:meridian:cluster:c:client:x y",
            "urn:meridian:cluster:c:node:n",
            "urn:meridian:cluster:c:region:r:zone:z:client:n",
        ] {
            assert!(matches!(parse_uri(bad), Err(IdentityError::BadUri { .. })), "{bad:?}");
        }
    }

    fn self_signed_with_uris(uris: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        for uri in uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn exactly_one_meridian_uri() {
        assert_eq!(parse_cert_identity(&self_signed_with_uris(&[])), Err(IdentityError::MissingUri));
        assert_eq!(
            parse_cert_identity(&self_signed_with_uris(&["spiffe://example.org/x"])),
            Err(IdentityError::MissingUri)
        );
        let node_uri = "urn:meridian:cluster:c:region:r:zone:z:node:n";
        assert!(parse_identity(&self_signed_with_uris(&["spiffe://example.org/x", node_uri])).is_ok());
        assert_eq!(
            parse_cert_identity(&self_signed_with_uris(&[node_uri, "urn:meridian:cluster:c:region:eu:zone:z:node:n"])),
            Err(IdentityError::AmbiguousUri(2))
        );
        assert!(matches!(
            parse_cert_identity(&self_signed_with_uris(&["urn:meridian:other"])),
            Err(IdentityError::BadUri { .. })
        ));
    }

    #[test]
    fn writing_refuses_to_overwrite_and_keeps_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ca");
        let ca = generate_ca("alpha").unwrap();
        let (cert, key) = ca.write(&out, false).unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o700);

        let again = generate_ca("alpha").unwrap();
        assert!(matches!(again.write(&out, false), Err(CertError::Exists(_))));
        assert_eq!(CaBundle::load(&out).unwrap().key_pem, ca.key_pem, "nothing was overwritten");
        // Refused even when only one of the two exists, before anything is written.
        std::fs::remove_file(&cert).unwrap();
        assert!(matches!(again.write(&out, false), Err(CertError::Exists(_))));
        assert!(!cert.exists());

        again.write(&out, true).unwrap();
        let loaded = CaBundle::load(&out).unwrap();
        assert_eq!(loaded.key_pem, again.key_pem);
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2, "no temporary files left behind");
        assert!(!format!("{loaded:?}").contains("PRIVATE"), "Debug redacts the key");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The DER walker never panics: not on garbage, not on truncated or bit-flipped certificates.
        #[test]
        fn der_parser_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..2000, flip in 0usize..2000, bit in 0u8..8) {
            let _ = parse_cert_identity(&garbage);
            let mut cert = CERT.with(|c| c.clone());
            let _ = parse_cert_identity(&cert[..cut.min(cert.len())]);
            let at = flip % cert.len();
            cert[at] ^= 1 << bit;
            let _ = parse_cert_identity(&cert);
            let _ = summarize(&cert);
        }
    }

    thread_local! {
        static CERT: Vec<u8> = {
            let ca = generate_ca("alpha").unwrap();
            let (cert, _) = issue_node_cert(&ca, &node("alpha", "n1"), &["localhost", "127.0.0.1"]).unwrap();
            der(&cert).to_vec()
        };
    }
}
