//! Small HTTP(S)/1.1 GETs to a local node — the readiness probe and the test harness's API checks —
//! with no HTTP client library: one request per connection, `Connection: close`.
//!
//! A cluster made by `meridian region init` / `demo init` serves HTTPS with authentication on, so
//! [`NodeHttp`] trusts the cluster CA and may present a client certificate (the cluster's `admin`
//! one for the harness). The node crate's supervisor (`meridian region start`, `meridian demo`,
//! `meridian bench-geo`) polls [`NodeHttp::ready`] until every node is ready; the geo-tests'
//! multi-region harness polls it after starting or restarting a node.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest response read (the harness reads small JSON documents).
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// How to reach nodes' HTTP APIs: plain, or TLS trusting one CA (with an optional client certificate).
#[derive(Clone)]
pub struct NodeHttp {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl NodeHttp {
    /// Plain HTTP (a single node started with no configuration).
    pub fn plain() -> NodeHttp {
        NodeHttp { tls: None }
    }

    /// HTTPS trusting the CA in `ca_cert` (PEM), presenting `client` (certificate, key) if given.
    pub fn tls(ca_cert: &Path, client: Option<(&Path, &Path)>) -> anyhow::Result<NodeHttp> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca_cert)? {
            roots.add(cert).with_context(|| format!("trusting {}", ca_cert.display()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS with ring")?
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
                let key = rustls_pemfile::private_key(&mut pem.as_slice())?
                    .with_context(|| format!("no private key in {}", key.display()))?;
                builder.with_client_auth_cert(read_certs(cert)?, key).context("the client certificate")?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(NodeHttp { tls: Some(Arc::new(config)) })
    }

    /// The scheme these requests use.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Whether `GET /readyz` answers 200 (bounded to one second).
    pub async fn ready(&self, http: SocketAddr) -> bool {
        let probe = self.get(http, "/readyz");
        matches!(tokio::time::timeout(Duration::from_secs(1), probe).await, Ok(Ok((200, _))))
    }

    /// `GET path`: the status code and the body (bounded by 10 s).
    pub async fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        self.request(addr, "GET", path, None, None).await
    }

    /// `METHOD path` with an optional bearer token and JSON body: the status code and the body
    /// (bounded by 10 s).
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let authorization = bearer.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = authorization.iter().map(|value| ("Authorization", value.as_str())).collect();
        self.request_with_headers(addr, method, path, &headers, body).await
    }

    /// `METHOD path` with extra `headers` (name, value) and an optional JSON body: the status code
    /// and the body (bounded by 10 s).
    pub async fn request_with_headers(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        let request = format!("{head}\r\n{body}");
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
            match &self.tls {
                None => exchange(stream, &request).await,
                Some(config) => {
                    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, stream)
                        .await
                        .with_context(|| format!("TLS with {addr}"))?;
                    exchange(tls, &request).await
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| anyhow::anyhow!("{method} {}://{addr}{path}: no answer within 10 s", self.scheme()))?
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> anyhow::Result<(u16, String)> {
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // A TLS peer may close without close_notify after `Connection: close`: keep what arrived.
    let read = (&mut stream).take(MAX_RESPONSE_BYTES).read_to_end(&mut response).await;
    if response.is_empty() {
        read?;
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}
