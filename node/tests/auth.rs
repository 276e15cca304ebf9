//! Client authentication and roles, end to end on one node with `auth.enabled`: client certificates
//! from the cluster CA and bearer tokens, on QUIC and HTTPS; refusals are `unauthenticated` (401) or
//! `permission_denied` (403), counted and audited; revocation and expiry take effect at once; a node
//! that would listen beyond loopback with authentication off refuses to start.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{bounded, config, shutdown, start_memory};
use meridian_client::proto::{AuthOp, BackupOp, ErrorCode, ResidencyOp, Role, RuleSpec};
use meridian_client::{Client, ClusterOp, Error};
use meridian_server::certs::{self, ClientIdentity};
use meridian_server::serve::RunningNode;
use meridian_wan::probe::NodeHttp;

const CLUSTER: &str = "authtest";

struct Setup {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    running: RunningNode,
}

/// A CA, client certificates `admin` (in `auth.admins`), `alice` and `bob` (no roles yet), and a
/// node with authentication on.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let ca = certs::generate_ca(CLUSTER).unwrap();
    let (ca_cert, _) = ca.write(&certs_dir, false).unwrap();
    for name in ["admin", "alice", "bob"] {
        issue(&ca, CLUSTER, name, &certs_dir);
    }
    let mut config = config(&dir.path().join("data"));
    config.cluster_id = CLUSTER.into();
    config.auth.enabled = true;
    config.auth.admins = vec!["admin".into()];
    config.auth.client_ca = Some(ca_cert.clone());
    let running = start_memory(config).await;
    Setup { _dir: dir, certs: certs_dir, running }
}

fn issue(ca: &certs::CaBundle, cluster: &str, name: &str, dir: &Path) {
    let identity = ClientIdentity { cluster_id: cluster.into(), name: name.into() };
    let (cert, key) = certs::issue_client_cert(ca, &identity).unwrap();
    certs::write_pair(dir, &format!("{name}.crt"), &cert, &format!("{name}.key"), &key, false).unwrap();
}

impl Setup {
    fn builder(&self) -> meridian_client::ClientBuilder {
        Client::builder()
            .endpoint(self.running.client_addr.to_string())
            .ca_cert_file(&self.running.cert_path)
            .timeout(Duration::from_secs(5))
            .max_retries(0)
    }

    async fn as_cert(&self, name: &str) -> Client {
        let builder = self
            .builder()
            .client_cert_files(self.certs.join(format!("{name}.crt")), self.certs.join(format!("{name}.key")));
        bounded("connect with a certificate", builder.connect()).await.expect("connect")
    }

    async fn anonymous(&self) -> Client {
        bounded("connect anonymously", self.builder().connect()).await.expect("connect")
    }

    fn https(&self) -> NodeHttp {
        NodeHttp::tls(&self.running.cert_path, None).unwrap()
    }

    fn https_as(&self, name: &str) -> NodeHttp {
        let (cert, key) = (self.certs.join(format!("{name}.crt")), self.certs.join(format!("{name}.key")));
        NodeHttp::tls(&self.running.cert_path, Some((&cert, &key))).unwrap()
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> Option<ErrorCode> {
    match result {
        Err(e) => e.code(),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

fn rule(namespace: &str) -> ResidencyOp {
    ResidencyOp::Add {
        rule: RuleSpec {
            namespace: namespace.into(),
            prefix: "eu/".into(),
            regions: vec!["local".into()],
            replicas_per_region: None,
            home: None,
            strict: false,
        },
        position: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_wrong_role_are_refused_on_quic() {
    let s = setup().await;
    let anonymous = s.anonymous().await;
    // Data, rules, membership and users: all need credentials.
    assert_eq!(code(anonymous.register("app/k").get().await), Some(ErrorCode::Unauthenticated));
    assert_eq!(code(anonymous.register("app/k").set("v").await), Some(ErrorCode::Unauthenticated));
    assert_eq!(code(anonymous.residency(rule("app")).await), Some(ErrorCode::Unauthenticated));
    let drain = anonymous.cluster(ClusterOp::Drain { node: "n1".into() }).await;
    assert_eq!(code(drain), Some(ErrorCode::Unauthenticated));
    assert_eq!(code(anonymous.auth(AuthOp::AddUser { name: "eve".into() }).await), Some(ErrorCode::Unauthenticated));
    assert_eq!(code(anonymous.backup(BackupOp::Begin).await), Some(ErrorCode::Unauthenticated));
    let refusal = anonymous.register("app/k").get().await.unwrap_err();
    assert!(!refusal.is_retryable() && refusal.to_string().contains("certificate"), "{refusal}");

    // A certificate of the cluster, but no role yet.
    let alice = s.as_cert("alice").await;
    let whoami = alice.auth(AuthOp::WhoAmI).await.unwrap();
    assert_eq!((whoami.principal.as_deref(), whoami.method.as_str()), (Some("alice"), "certificate"));
    assert_eq!(code(alice.register("app/k").get().await), Some(ErrorCode::PermissionDenied));
    assert_eq!(code(alice.auth(AuthOp::List).await), Some(ErrorCode::PermissionDenied));
    assert_eq!(code(alice.residency(rule("app")).await), Some(ErrorCode::PermissionDenied));
    let denied = alice.cluster(ClusterOp::Remove { node: "n1".into() }).await.unwrap_err();
    assert!(denied.to_string().contains("lacks the admin role"), "{denied}");

    // The configured admin grants roles; they take effect on alice's open connection.
    let admin = s.as_cert("admin").await;
    admin.auth(AuthOp::AddUser { name: "alice".into() }).await.unwrap();
    admin.auth(AuthOp::Grant { user: "alice".into(), namespace: "app".into(), role: Role::Read }).await.unwrap();
    assert_eq!(alice.register("app/k").get().await.unwrap(), None);
    let write = alice.register("app/k").set("v").await;
    assert_eq!(code(write), Some(ErrorCode::PermissionDenied), "read does not imply write");
    admin.auth(AuthOp::Grant { user: "alice".into(), namespace: "app".into(), role: Role::Write }).await.unwrap();
    alice.register("app/k").set("v").await.unwrap();
    assert_eq!(code(alice.register("billing/k").get().await), Some(ErrorCode::PermissionDenied), "per namespace");
    assert_eq!(code(alice.residency(rule("app")).await), Some(ErrorCode::PermissionDenied), "rules need admin");
    admin.auth(AuthOp::Grant { user: "alice".into(), namespace: "app".into(), role: Role::Admin }).await.unwrap();
    alice.residency(rule("app")).await.expect("admin of app may add app's rules");
    assert_eq!(code(alice.residency(rule("billing")).await), Some(ErrorCode::PermissionDenied));
    // A backup copies every namespace and the users: admin of one namespace is not enough.
    assert_eq!(code(alice.backup(BackupOp::Begin).await), Some(ErrorCode::PermissionDenied));
    assert_eq!(code(alice.auth(AuthOp::AddUser { name: "x".into() }).await), Some(ErrorCode::PermissionDenied));

    // Revoking the grant takes effect at once.
    admin.auth(AuthOp::Revoke { user: "alice".into(), namespace: "app".into() }).await.unwrap();
    assert_eq!(code(alice.register("app/k").get().await), Some(ErrorCode::PermissionDenied));

    // Refusals are counted on /metrics, which answers without credentials by default.
    let (status, metrics) = s.https().get(s.running.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for reason in ["unauthenticated", "permission_denied"] {
        assert!(metrics.contains(&format!("meridian_auth_refused_total{{reason=\"{reason}\"}}")), "{reason}");
    }
    for client in [anonymous, alice, admin] {
        client.close().await;
    }
    shutdown(s.running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_cluster_ca_is_refused_in_the_handshake() {
    let s = setup().await;
    let other = certs::generate_ca("othercluster").unwrap();
    let dir = tempfile::tempdir().unwrap();
    issue(&other, "othercluster", "mallory", dir.path());
    let builder = s.builder().client_cert_files(dir.path().join("mallory.crt"), dir.path().join("mallory.key"));
    // TLS 1.3: the client may finish its side before the node checks its certificate; the node's
    // alert then ends the connection before any request is served.
    match bounded("connect with a foreign certificate", builder.connect()).await {
        Err(Error::Tls(_)) => {}
        Err(other) => panic!("expected a TLS refusal, got {other:?}"),
        Ok(client) => {
            let served = bounded("a request over the refused connection", client.status()).await;
            assert!(matches!(served, Err(Error::Tls(_) | Error::Transport(_) | Error::Connect { .. })), "{served:?}");
        }
    }
    shutdown(s.running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_work_on_quic_and_https_until_revoked_or_expired() {
    let s = setup().await;
    let admin = s.as_cert("admin").await;
    admin.auth(AuthOp::AddUser { name: "ci".into() }).await.unwrap();
    admin.auth(AuthOp::Grant { user: "ci".into(), namespace: "app".into(), role: Role::Write }).await.unwrap();
    let made = admin
        .auth(AuthOp::CreateToken { user: "ci".into(), ttl_s: None, description: "the CI job".into() })
        .await
        .unwrap();
    let token = made.created_token.expect("the token, once");
    // `mrd_<id>_<secret>`; the secret is URL-safe base64, which may itself hold `_`.
    let mut parts = token.splitn(3, '_');
    let id = parts.nth(1).unwrap().to_string();
    let secret = parts.next().unwrap().to_string();
    assert_eq!(secret.len(), 43, "32 bytes of unpadded base64");

    // Listings name the token, never its secret.
    let listed = admin.auth(AuthOp::List).await.unwrap();
    assert!(listed.tokens.iter().any(|t| t.id == id && t.user == "ci" && !t.revoked));
    assert!(listed.created_token.is_none());
    assert!(!serde_json::to_string(&listed).unwrap().contains(&secret));

    // QUIC: the SDK logs in on connect.
    let ci = bounded("connect with a token", s.builder().token(token.clone()).connect()).await.unwrap();
    ci.register("app/greeting").set("hi").await.unwrap();
    assert_eq!(code(ci.register("other/k").get().await), Some(ErrorCode::PermissionDenied));

    // HTTPS: bearer token per request; probes need nothing.
    let http = s.https();
    let addr = s.running.http_addr;
    assert!(s.running.http_https, "a node with authentication serves HTTPS");
    let (status, body) = http.request(addr, "GET", "/v1/kv/app/greeting", Some(&token), None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hi"), "{body}");
    let (status, body) = http.get(addr, "/v1/kv/app/greeting").await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthenticated") && body.contains("\"retryable\":false"), "{body}");
    let wrong = format!("mrd_{id}_{}", "x".repeat(43));
    let (status, body) = http.request(addr, "GET", "/v1/kv/app/greeting", Some(&wrong), None).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(&id) && !body.contains(&"x".repeat(43)), "names the token, never the secret: {body}");
    let (status, _) =
        http.request(addr, "POST", "/v1/kv/other/k", Some(&token), Some(r#"{"op":"set","value":"v"}"#)).await.unwrap();
    assert_eq!(status, 403);
    for probe in ["/livez", "/readyz"] {
        assert_eq!(http.get(addr, probe).await.unwrap().0, 200, "{probe}");
    }
    // A client certificate works on HTTPS too.
    let (status, body) = s.https_as("admin").get(addr, "/v1/auth").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ci\"") && !body.contains(&secret), "{body}");

    // Revocation: the logged-in connection, new connections and HTTPS are refused from now on.
    admin.auth(AuthOp::RevokeToken { id: id.clone() }).await.unwrap();
    assert_eq!(code(ci.register("app/greeting").get().await), Some(ErrorCode::Unauthenticated));
    let again = bounded("connect with a revoked token", s.builder().token(token.clone()).connect()).await;
    assert!(
        matches!(&again, Err(Error::Server { code: ErrorCode::Unauthenticated, message }) if message.contains("revoked")),
        "{again:?}"
    );
    let (status, body) = http.request(addr, "GET", "/v1/kv/app/greeting", Some(&token), None).await.unwrap();
    assert_eq!(status, 401, "{body}");

    // Expiry.
    let short = admin
        .auth(AuthOp::CreateToken { user: "ci".into(), ttl_s: Some(1), description: String::new() })
        .await
        .unwrap()
        .created_token
        .unwrap();
    let (status, _) = http.request(addr, "GET", "/v1/kv/app/greeting", Some(&short), None).await.unwrap();
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, body) = http.request(addr, "GET", "/v1/kv/app/greeting", Some(&short), None).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");

    // Admin actions and refusals are in the audit log; secrets never are.
    let audit = std::fs::read_to_string(s._dir.path().join("data/audit.log")).unwrap_or_default();
    assert!(audit.contains("granted write in app to ci") && audit.contains(&format!("revoked token {id}")), "{audit}");
    assert!(audit.contains("unauthenticated"), "{audit}");
    assert!(!audit.contains(&secret), "the audit log holds no secret");
    ci.close().await;
    admin.close().await;
    shutdown(s.running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let ca = certs::generate_ca(CLUSTER).unwrap();
    let (ca_cert, _) = ca.write(&certs_dir, false).unwrap();
    for name in ["admin", "bob"] {
        issue(&ca, CLUSTER, name, &certs_dir);
    }
    let list = dir.path().join("revoked.txt");
    std::fs::write(&list, "# revoked certificates\n").unwrap();
    let mut settings = config(&dir.path().join("data"));
    settings.cluster_id = CLUSTER.into();
    settings.auth.enabled = true;
    settings.auth.admins = vec!["admin".into(), "bob".into()];
    settings.auth.client_ca = Some(ca_cert);
    settings.peer.revoked = Some(list.clone());
    let running = start_memory(settings).await;
    let s = Setup { _dir: dir, certs: certs_dir, running };
    let bob = s.as_cert("bob").await;
    bob.register("app/k").set("v").await.expect("bob may write before revocation");

    let der = meridian_server::tls::load_certs(&s.certs.join("bob.crt")).unwrap().remove(0);
    let fingerprint = meridian_server::certs::revocation::fingerprint(&der);
    std::fs::write(&list, format!("# revoked certificates\n{fingerprint}\n")).unwrap();
    let refused = bob.register("app/k").get().await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Unauthenticated), "{refused}");
    assert!(refused.to_string().contains("revoked"), "{refused}");
    let again = s.as_cert("bob").await;
    assert_eq!(code(again.register("app/k").get().await), Some(ErrorCode::Unauthenticated));
    let (status, _) = s.https_as("bob").get(s.running.http_addr, "/v1/kv/app/k").await.unwrap();
    assert_eq!(status, 401, "HTTPS refuses the revoked certificate too");
    s.as_cert("admin").await.register("app/k").get().await.expect("other certificates still work");
    bob.close().await;
    again.close().await;
    shutdown(s.running).await;
}

#[tokio::test]
async fn a_node_beyond_loopback_with_authentication_off_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut open = config(dir.path());
    open.listen.http = "0.0.0.0:0".parse().unwrap();
    let refused = meridian_server::config::Config::validate(&open).unwrap_err().to_string();
    assert!(refused.contains("auth.enabled") && refused.contains("allow_unauthenticated_network"), "{refused}");
    // Said explicitly, it starts (and still serves HTTPS, being reachable).
    open.auth.allow_unauthenticated_network = true;
    open.validate().unwrap();
    let running = start_memory(open).await;
    assert!(running.http_https);
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_of_a_pipeline_is_authorized_on_its_own() {
    let s = setup().await;
    let admin = s.as_cert("admin").await;
    admin.auth(AuthOp::AddUser { name: "alice".into() }).await.unwrap();
    admin.auth(AuthOp::Grant { user: "alice".into(), namespace: "app".into(), role: Role::Write }).await.unwrap();
    let alice = s.as_cert("alice").await;
    let mut pipeline = alice.pipeline();
    pipeline.set("app/k", "v").set("billing/k", "v").get("billing/k").incr("app/n", 2);
    let answers = bounded("alice's pipeline", pipeline.run()).await.expect("the pipeline itself is allowed");
    assert!(answers[0].is_ok(), "{answers:?}");
    for refused in [&answers[1], &answers[2]] {
        assert_eq!(refused.as_ref().unwrap_err().code(), Some(ErrorCode::PermissionDenied), "{answers:?}");
    }
    assert!(answers[3].is_ok(), "{answers:?}");
    assert_eq!(admin.register("billing/k").get().await.unwrap(), None, "the refused write did not happen");
    assert_eq!(admin.register("app/k").get().await.unwrap(), Some(b"v".to_vec()));

    // Anonymous: every operation is refused, nothing is written.
    let anonymous = s.anonymous().await;
    let mut pipeline = anonymous.pipeline();
    pipeline.set("app/k", "w").set("app/j", "w");
    for answer in bounded("an anonymous pipeline", pipeline.run()).await.unwrap() {
        assert_eq!(answer.unwrap_err().code(), Some(ErrorCode::Unauthenticated));
    }
    assert_eq!(admin.register("app/k").get().await.unwrap(), Some(b"v".to_vec()));
    for client in [anonymous, alice, admin] {
        client.close().await;
    }
    shutdown(s.running).await;
}
