//! TLS for the client protocol: load the configured certificate, or generate a self-signed one on
//! first start and keep it under `<data_dir>/tls/` so clients can pin it across restarts.
//!
//! Only TLS 1.3 is offered (QUIC requires it) and the ring provider is passed explicitly, never
//! installed process-wide.

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;

/// Certificate and key paths as used (configured or generated).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain; clients trust this file for a self-signed node.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Where a generated certificate lives.
pub fn generated_paths(data_dir: &Path) -> TlsFiles {
    let dir = data_dir.join("tls");
    TlsFiles { cert: dir.join("node.crt"), key: dir.join("node.key") }
}

/// The configured certificate, or a self-signed one generated (once) for `localhost`, `127.0.0.1`,
/// `::1` and the node name.
pub fn ensure_certificate(config: &Config) -> anyhow::Result<TlsFiles> {
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        return Ok(TlsFiles { cert: cert.clone(), key: key.clone() });
    }
    let files = generated_paths(&config.data_dir);
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into(), config.node_name.clone()];
    let generated = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    let dir = files.cert.parent().expect("generated paths have a parent");
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    write_with_mode(&files.key, generated.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_with_mode(&files.cert, generated.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %files.cert.display(), "generated a self-signed certificate");
    Ok(files)
}

/// Writes `path` with exactly `mode` (whatever the umask, and also when the file already existed:
/// a key left half-written by an earlier start is rewritten private).
fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading certificate {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing key {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

/// The quinn server config for the client protocol. With authentication on, clients may present a
/// certificate from the cluster CA (`auth.client_ca`, default `peer.ca`) — verified here, its
/// identity read by the server after the handshake — or none and log in with a token.
pub fn client_server_config(files: &TlsFiles, config: &Config) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = server_tls(files, config, &[&rustls::version::TLS13])?;
    tls.alpn_protocols = vec![meridian_client::proto::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS config")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(config.limits.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(std::time::Duration::from_secs(60).try_into().expect("60 s fits")))
        .keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// The node's certificate over `versions`, ring, and the client verifier when authentication is on:
/// what the QUIC and HTTPS surfaces share.
fn server_tls(
    files: &TlsFiles,
    config: &Config,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS with ring")?;
    let builder = match client_verifier(config, provider)? {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .context("the certificate does not match its key")
}

/// With authentication on: a verifier that accepts client certificates from the cluster CA
/// (`auth.client_ca`, default `peer.ca`) and clients without one (they may present a token).
fn client_verifier(
    config: &Config,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>> {
    let Some(ca) = config.auth.client_ca(&config.peer).filter(|_| config.auth.enabled) else { return Ok(None) };
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).with_context(|| format!("trusting the client CA {}", ca.display()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .context("the client certificate verifier")?;
    Ok(Some(verifier))
}

/// The rustls config of the HTTPS API: the node's certificate, TLS 1.2 and 1.3, HTTP/1.1; clients
/// authenticate with a bearer token or, as on QUIC, a client certificate from the cluster CA.
pub fn http_server_config(files: &TlsFiles, config: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut tls = server_tls(files, config, rustls::DEFAULT_VERSIONS)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
