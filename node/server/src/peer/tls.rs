//! rustls and quinn configuration of the peer transport, and the post-handshake identity check.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;

use super::{alpns_up_to, PeerError, PeerTlsConfig, PeerTransportConfig};
use crate::certs::revocation::{fingerprint, RevocationFile};
use crate::certs::{self, CertIdentity, IdentityError, PeerIdentity};

/// Everything [`super::PeerEndpoint::bind`] needs, checked.
pub(super) struct Setup {
    pub(super) server: quinn::ServerConfig,
    pub(super) client: quinn::ClientConfig,
    /// Our own identity, from our certificate.
    pub(super) identity: PeerIdentity,
}

fn config_error(what: &str) -> impl FnOnce(String) -> PeerError + '_ {
    move |reason| PeerError::Config(format!("{what}: {reason}"))
}

/// Builds both TLS configurations after checking that our own certificate is a node of
/// `cluster_id`, signed by the trusted CA, and matching our key.
pub(super) fn setup(tls: &PeerTlsConfig, transport: &PeerTransportConfig) -> Result<Setup, PeerError> {
    transport.validate()?;
    certs::validate_name("cluster id", &tls.cluster_id).map_err(|e| PeerError::Config(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let ca_certs =
        certs::certs_from_pem(tls.ca_pem.as_bytes(), "cluster CA").map_err(|e| PeerError::Config(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in &ca_certs {
        if let Ok(CertIdentity::Ca { cluster_id }) = certs::parse_cert_identity(ca) {
            if cluster_id != tls.cluster_id {
                return Err(PeerError::Config(format!(
                    "the trusted CA is the CA of cluster {cluster_id:?}, this node is in cluster {:?}",
                    tls.cluster_id
                )));
            }
        }
        roots.add(ca.clone()).map_err(|e| config_error("cluster CA")(e.to_string()))?;
    }
    let roots = Arc::new(roots);

    let chain = certs::certs_from_pem(tls.cert_pem.as_bytes(), "node certificate")
        .map_err(|e| PeerError::Config(e.to_string()))?;
    let key = parse_key(&tls.key_pem)?;
    let identity = certs::parse_identity(&chain[0]).map_err(|e| config_error("node certificate")(e.to_string()))?;
    if identity.cluster_id != tls.cluster_id {
        return Err(PeerError::Config(format!(
            "the node certificate is for cluster {:?}, this node is in cluster {:?}",
            identity.cluster_id, tls.cluster_id
        )));
    }

    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| config_error("client verifier")(e.to_string()))?;
    // Catch a certificate from another CA, an expired one or one without clientAuth now, with a
    // clear error, rather than as handshake failures on every peer.
    client_verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| config_error("the node certificate does not verify against the cluster CA")(e.to_string()))?;

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("TLS 1.3 with ring")(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| config_error("node certificate and key")(e.to_string()))?;
    server.alpn_protocols = alpns_up_to(transport.max_protocol_version);
    // No 0-RTT (replayable) and no resumption: every connection verifies the full chain.
    server.max_early_data_size = 0;
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});

    let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| config_error("server verifier")(e.to_string()))?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("TLS 1.3 with ring")(e.to_string()))?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| config_error("node certificate and key")(e.to_string()))?;
    client.alpn_protocols = alpns_up_to(transport.max_protocol_version);
    client.resumption = rustls::client::Resumption::disabled();
    client.enable_early_data = false;

    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| config_error("QUIC server TLS")(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(Arc::new(transport_config(transport, transport.max_streams_per_connection)));

    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| config_error("QUIC client TLS")(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    // The accepting node never opens streams on a connection we dialled.
    client.transport_config(Arc::new(transport_config(transport, 0)));

    Ok(Setup { server, client, identity })
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, PeerError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| PeerError::Config(format!("node key: unreadable PEM: {e}")))?
        .ok_or_else(|| PeerError::Config("node key: no PRIVATE KEY block in the PEM data".into()))
}

/// The QUIC transport settings (see [`PeerTransportConfig`] for the reasoning behind each value).
fn transport_config(config: &PeerTransportConfig, incoming_bidi_streams: u32) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(incoming_bidi_streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(config.stream_receive_window.into())
        .receive_window(config.receive_window.into())
        .send_window(config.send_window)
        .max_idle_timeout(Some(config.idle_timeout.try_into().expect("checked by PeerTransportConfig::validate")))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .datagram_receive_buffer_size(None);
    transport
}

/// The verified identity of the peer of an established connection: a node of `cluster_id`, named
/// `expected_name` when given. The certificate chain itself was verified by the handshake.
pub(super) fn verify_connection(
    connection: &quinn::Connection,
    cluster_id: &str,
    expected_name: Option<&str>,
    revoked: Option<&RevocationFile>,
) -> Result<PeerIdentity, IdentityError> {
    let chain = peer_chain(connection)?;
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    let identity = check_peer_identity(leaf, cluster_id, expected_name)?;
    check_not_revoked(&chain, revoked)?;
    Ok(identity)
}

/// The certificate chain the peer of `connection` presented (leaf first).
fn peer_chain(connection: &quinn::Connection) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|chain| *chain)
        .ok_or(IdentityError::NoCertificate)
}

/// Refuses a chain any certificate of which is on the revocation list in force.
fn check_not_revoked(chain: &[CertificateDer<'static>], revoked: Option<&RevocationFile>) -> Result<(), IdentityError> {
    let Some(revoked) = revoked else { return Ok(()) };
    let list = revoked.current();
    match chain.iter().find(|cert| list.is_revoked(cert)) {
        Some(cert) => Err(IdentityError::Revoked { fingerprint: fingerprint(cert) }),
        None => Ok(()),
    }
}

/// Whether the peer of an established connection is still admitted by the revocation list in force
/// (a certificate listed after the handshake); the refusal to close it with otherwise.
pub(super) fn recheck_revocation(
    connection: &quinn::Connection,
    revoked: Option<&RevocationFile>,
) -> Result<(), IdentityError> {
    if revoked.is_none() {
        return Ok(());
    }
    check_not_revoked(&peer_chain(connection)?, revoked)
}

/// The identity check both sides apply to the peer's (already chain-verified) leaf certificate:
/// it must carry exactly one well-formed Meridian identity, of cluster `cluster_id`, of a node
/// (not a client or CA), named `expected_name` when given.
pub fn check_peer_identity(
    cert_der: &[u8],
    cluster_id: &str,
    expected_name: Option<&str>,
) -> Result<PeerIdentity, IdentityError> {
    let identity = certs::parse_cert_identity(cert_der)?;
    if identity.cluster_id() != cluster_id {
        return Err(IdentityError::WrongCluster {
            expected: cluster_id.to_string(),
            found: identity.cluster_id().to_string(),
        });
    }
    let CertIdentity::Node(node) = identity else {
        return Err(IdentityError::NotANode { found: identity.uri() });
    };
    if let Some(expected) = expected_name {
        if node.name != expected {
            return Err(IdentityError::UnexpectedName { expected: expected.to_string(), found: node.name });
        }
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{generate_ca, issue_client_cert, issue_node_cert, ClientIdentity, NodeIdentity};

    fn node(cluster: &str, name: &str) -> NodeIdentity {
        NodeIdentity {
            cluster_id: cluster.into(),
            region: "eu-west".into(),
            zone: "eu-west-1a".into(),
            name: name.into(),
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        certs::certs_from_pem(pem.as_bytes(), "test").unwrap().remove(0)
    }

    #[test]
    fn identity_check_accepts_nodes_of_our_cluster_only() {
        let ca = generate_ca("alpha").unwrap();
        let (cert, _) = issue_node_cert(&ca, &node("alpha", "n1"), &["localhost"]).unwrap();
        let cert = der(&cert);
        assert_eq!(check_peer_identity(&cert, "alpha", None).unwrap(), node("alpha", "n1"));
        assert_eq!(check_peer_identity(&cert, "alpha", Some("n1")).unwrap().region, "eu-west");
        assert!(matches!(check_peer_identity(&cert, "alpha", Some("n2")), Err(IdentityError::UnexpectedName { .. })));
        assert!(matches!(check_peer_identity(&cert, "beta", None), Err(IdentityError::WrongCluster { .. })));

        let (client, _) =
            issue_client_cert(&ca, &ClientIdentity { cluster_id: "alpha".into(), name: "app".into() }).unwrap();
        assert!(matches!(check_peer_identity(&der(&client), "alpha", None), Err(IdentityError::NotANode { .. })));
        assert!(matches!(check_peer_identity(&der(&ca.cert_pem), "alpha", None), Err(IdentityError::NotANode { .. })));
        assert!(matches!(check_peer_identity(b"garbage", "alpha", None), Err(IdentityError::Malformed(_))));
    }

    #[test]
    fn setup_checks_our_own_material() {
        let ca = generate_ca("alpha").unwrap();
        let (cert_pem, key_pem) = issue_node_cert(&ca, &node("alpha", "n1"), &["localhost"]).unwrap();
        let good = PeerTlsConfig {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
            cluster_id: "alpha".into(),
        };
        let transport = PeerTransportConfig::default();
        assert_eq!(setup(&good, &transport).unwrap().identity.name, "n1");

        let message = |config: &PeerTlsConfig| match setup(config, &transport) {
            Err(PeerError::Config(message)) => message,
            Err(other) => panic!("expected a configuration error, got {other}"),
            Ok(_) => panic!("expected a configuration error"),
        };
        // Our certificate names another cluster than configured.
        let m = message(&PeerTlsConfig { cluster_id: "beta".into(), ..good.clone() });
        assert!(m.contains("cluster"), "{m}");
        // Trusting another cluster's CA.
        let other = generate_ca("beta").unwrap();
        let m = message(&PeerTlsConfig { ca_pem: other.cert_pem.clone(), ..good.clone() });
        assert!(m.contains("beta"), "{m}");
        // A CA of the same cluster id that did not sign our certificate.
        let impostor = generate_ca("alpha").unwrap();
        let m = message(&PeerTlsConfig { ca_pem: impostor.cert_pem.clone(), ..good.clone() });
        assert!(m.contains("does not verify"), "{m}");
        // A key that is not the certificate's.
        let (_, other_key) = issue_node_cert(&ca, &node("alpha", "n2"), &["localhost"]).unwrap();
        let m = message(&PeerTlsConfig { key_pem: other_key, ..good.clone() });
        assert!(m.contains("key"), "{m}");
        // A client certificate cannot run a node.
        let (client_cert, client_key) =
            issue_client_cert(&ca, &ClientIdentity { cluster_id: "alpha".into(), name: "app".into() }).unwrap();
        let m = message(&PeerTlsConfig { cert_pem: client_cert, key_pem: client_key, ..good.clone() });
        assert!(m.contains("not a node"), "{m}");
        // Garbage.
        let m = message(&PeerTlsConfig { key_pem: "nope".into(), ..good.clone() });
        assert!(m.contains("PRIVATE KEY"), "{m}");
    }
}
