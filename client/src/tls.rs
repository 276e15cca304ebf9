//! TLS 1.3 configuration for the QUIC connection.
//!
//! Nodes present self-signed certificates by default, so the client never consults the system trust
//! store: it trusts exactly the certificates it is given (a node's own certificate, or the CA that
//! signed the cluster's certificates). The rustls configuration names its crypto provider (ring)
//! explicitly, so the SDK works in a process that installed another default provider, or none.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::{proto, Error};

/// How often an idle connection pings the node, so that it stays open (and NAT bindings with it)
/// between requests, and a dead node is noticed before the next request needs it.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// PEM-encoded certificate chain and private key presented for mutual TLS.
#[derive(Clone)]
pub(crate) struct ClientIdentity {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
}

/// Parses every certificate in a PEM blob (at least one).
pub(crate) fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{what}: unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{what}: no CERTIFICATE block found in the PEM data")));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| Error::Tls(format!("client key: unreadable PEM: {e}")))?
        .ok_or_else(|| Error::Tls("client key: no PRIVATE KEY block found in the PEM data".into()))
}

/// Checks a server name the way the handshake will use it.
pub(crate) fn check_server_name(name: &str) -> Result<(), Error> {
    ServerName::try_from(name.to_string())
        .map(|_| ())
        .map_err(|e| Error::InvalidArgument(format!("server name {name:?} is not a DNS name or IP address: {e}")))
}

/// The quinn client configuration: TLS 1.3 only, ring, the given roots, optional client identity,
/// the Meridian ALPN.
pub(crate) fn client_config(
    roots_pem: &[Vec<u8>],
    identity: Option<&ClientIdentity>,
) -> Result<quinn::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for cert in parse_certs(pem, "trusted certificate")? {
            roots.add(cert).map_err(|e| Error::Tls(format!("trusted certificate: {e}")))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = parse_certs(&id.cert_pem, "client certificate")?;
            let key = parse_key(&id.key_pem)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| Error::Tls(format!("client certificate: {e}")))?
        }
    };
    config.alpn_protocols = vec![proto::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(|e| Error::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Whether a failed handshake was refused by TLS (a certificate problem) rather than by the network.
/// QUIC carries TLS alerts as transport error codes `0x100..=0x1ff`.
pub(crate) fn is_tls_failure(error: &quinn::ConnectionError) -> bool {
    let code = match error {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        _ => return false,
    };
    (0x100..=0x1ff).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (Vec<u8>, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        (ck.cert.pem().into_bytes(), ck.signing_key.serialize_pem().into_bytes())
    }

    #[test]
    fn builds_with_roots_and_optional_identity() {
        let (cert, key) = self_signed();
        client_config(std::slice::from_ref(&cert), None).unwrap();
        let identity = ClientIdentity { cert_pem: cert.clone(), key_pem: key };
        client_config(&[cert], Some(&identity)).unwrap();
    }

    #[test]
    fn rejects_bad_pem() {
        let err = client_config(&[b"not pem".to_vec()], None).unwrap_err();
        assert!(matches!(&err, Error::Tls(m) if m.contains("no CERTIFICATE")), "{err:?}");
        let (cert, _) = self_signed();
        let identity = ClientIdentity { cert_pem: cert.clone(), key_pem: b"garbage".to_vec() };
        let err = client_config(&[cert], Some(&identity)).unwrap_err();
        assert!(matches!(&err, Error::Tls(m) if m.contains("PRIVATE KEY")), "{err:?}");
    }

    #[test]
    fn server_names() {
        check_server_name("localhost").unwrap();
        check_server_name("127.0.0.1").unwrap();
        assert!(matches!(check_server_name("not a name"), Err(Error::InvalidArgument(_))));
    }
}
