//! Client authentication and roles on the node: who a request acts as ([`Caller`]), what each
//! operation needs ([`needed`]), and the cluster's users, grants and tokens ([`state`]) as this node
//! holds them.
//!
//! | surface | how a client proves who it is | checked |
//! |---|---|---|
//! | QUIC client port | a client certificate from the cluster CA (principal = its client name), or `AuthOp::Login` with a bearer token | the certificate once per connection (TLS handshake + identity), the token at login and again on every request (a revoked token stops at once) |
//! | HTTP | `Authorization: Bearer <token>` | every request |
//! | peer port | (not a client surface) a forwarded request was authorized by the node the client reached | — |
//!
//! With `auth.enabled = false` every caller is [`Caller::Open`] and nothing is checked: allowed only
//! on loopback unless `auth.allow_unauthenticated_network` says otherwise (`Config::validate`).
//! Refusals are `unauthenticated` (401: no or bad credentials) or `permission_denied` (403: a known
//! principal without the role); both are counted (`meridian_auth_refused_total{reason}`) and audited
//! (one line per reason per window, with a count). Secrets never reach a message or a log line: a
//! token is named by its id only.

pub mod state;
pub mod token;

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_client::proto::auth::{AuthReport, GrantInfo, ALL_NAMESPACES};
use meridian_client::proto::{AuthOp, ClusterOp, ErrorCode, ErrorReply, Operation, ResidencyOp, Role};
use meridian_crdt::codec;

use crate::certs::revocation::RevocationFile;
use crate::layout;
use crate::residency::AuditLog;
use crate::storage::{Batch, Engine, Space, StorageError};
use state::{AuthEditError, AuthRecord, AuthState, TokenRecord};

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off on this node: everything is allowed.
    Open,
    /// A request a peer node forwarded (over mutual TLS) after authorizing it where the client
    /// reached the cluster.
    Forwarded,
    /// No credentials (authentication on): only logging in is allowed.
    Anonymous,
    /// A client that proved its name with a certificate from the cluster CA.
    Certificate {
        /// The certificate's client name.
        name: String,
        /// Its SHA-256 fingerprint (re-checked against the revocation list on every request).
        fingerprint: String,
    },
    /// Credentials were presented and refused at connection time (a revoked certificate, one that
    /// names no client of this cluster): every request is refused with `why`.
    Rejected {
        /// What was wrong, for the refusal message.
        why: String,
    },
    /// A client that presented a bearer token.
    Token {
        /// The token's user.
        user: String,
        /// The token's id (re-checked on every request: revocation takes effect at once).
        id: String,
    },
}

impl Caller {
    /// The principal's name, if the caller has one.
    pub fn principal(&self) -> Option<&str> {
        match self {
            Caller::Certificate { name, .. } => Some(name),
            Caller::Token { user, .. } => Some(user),
            Caller::Open | Caller::Forwarded | Caller::Anonymous | Caller::Rejected { .. } => None,
        }
    }

    /// How it proved who it is.
    pub fn method(&self) -> &'static str {
        match self {
            Caller::Certificate { .. } => "certificate",
            Caller::Token { .. } => "token",
            Caller::Forwarded => "peer",
            Caller::Open | Caller::Anonymous | Caller::Rejected { .. } => "none",
        }
    }
}

/// What an operation needs of its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing (logging in, asking who one is).
    Nothing,
    /// Any authenticated principal (status and introspection that reveal no data).
    Principal,
    /// At least `role` in `namespace` (`*`: the cluster).
    Role(Role, String),
}

/// What `op` needs (`rule_namespace` finds the namespace of an existing residency rule).
pub fn needed(op: &Operation, rule_namespace: impl Fn(u32) -> Option<String>) -> Need {
    let cluster = || Need::Role(Role::Admin, ALL_NAMESPACES.to_string());
    match op {
        Operation::Write { key, .. } | Operation::Delete { key, .. } => Need::Role(Role::Write, key.namespace.clone()),
        Operation::Read { key, .. }
        | Operation::DocChanges { key, .. }
        | Operation::ReadSet { key, .. }
        | Operation::ReadMap { key, .. } => Need::Role(Role::Read, key.namespace.clone()),
        Operation::ListKeys { namespace, .. } => Need::Role(Role::Read, namespace.clone()),
        Operation::Status | Operation::Readiness | Operation::Storage | Operation::DataCensus => Need::Principal,
        Operation::Cluster(ClusterOp::Status | ClusterOp::Placement { .. }) => Need::Principal,
        Operation::Cluster(_) => cluster(),
        Operation::Residency(ResidencyOp::List | ResidencyOp::Explain { .. }) => Need::Principal,
        Operation::Residency(ResidencyOp::Add { rule, .. }) => Need::Role(Role::Admin, rule.namespace.clone()),
        // Changing a rule may move it to another namespace: admin of both (or of `*`).
        Operation::Residency(ResidencyOp::Change { id, rule }) => match rule_namespace(*id) {
            Some(ns) if ns == rule.namespace => Need::Role(Role::Admin, ns),
            _ => cluster(),
        },
        Operation::Residency(ResidencyOp::Remove { id }) => match rule_namespace(*id) {
            Some(ns) => Need::Role(Role::Admin, ns),
            None => cluster(),
        },
        Operation::Residency(ResidencyOp::Audit { .. }) => cluster(),
        Operation::Auth(AuthOp::Login { .. } | AuthOp::WhoAmI) => Need::Nothing,
        Operation::Auth(_) => cluster(),
        // A backup copies every namespace and the users' metadata.
        Operation::Backup(_) => cluster(),
        // Each of its operations is authorized as it runs, and a refused one fails alone.
        Operation::Pipeline(_) => Need::Nothing,
    }
}

/// The node's authentication: its settings and the cluster's metadata as held here.
pub struct Auth {
    enabled: bool,
    /// Principals the configuration makes cluster admins (`auth.admins`), whatever the metadata says.
    admins: Vec<String>,
    author: u64,
    engine: Arc<dyn Engine>,
    state: RwLock<Arc<AuthState>>,
    audit: Arc<AuditLog>,
    /// The certificate revocation list (`peer.revoked`), when the node has one.
    revoked: std::sync::OnceLock<Arc<RevocationFile>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("enabled", &self.enabled).field("version", &self.state().clock).finish()
    }
}

impl Auth {
    /// Loads the stored metadata (none: empty). `author` is this node's id (stamps its changes).
    pub fn open(
        engine: Arc<dyn Engine>,
        enabled: bool,
        admins: Vec<String>,
        author: u64,
        audit: Arc<AuditLog>,
    ) -> Result<Auth, StorageError> {
        let state = match engine.get(Space::Meta, layout::AUTH_STATE_KEY)? {
            Some(bytes) => match codec::decode::<AuthRecord>(&bytes, layout::MAX_RECORD_BYTES) {
                Ok(AuthRecord::V1(state)) => state,
                Err(e) => return Err(StorageError::Corrupt(format!("authentication metadata: {e}"))),
            },
            None => AuthState::default(),
        };
        Ok(Auth {
            enabled,
            admins,
            author,
            engine,
            state: RwLock::new(Arc::new(state)),
            audit,
            revoked: std::sync::OnceLock::new(),
        })
    }

    /// Whether requests must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The metadata as held here.
    pub fn state(&self) -> Arc<AuthState> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Who a connection without credentials acts as.
    pub fn anonymous(&self) -> Caller {
        if self.enabled {
            Caller::Anonymous
        } else {
            Caller::Open
        }
    }

    /// Who the holder of a client certificate (DER, verified against the cluster CA) naming client
    /// `name` acts as: refused if the revocation list holds it.
    pub fn certificate(&self, name: &str, cert_der: &[u8]) -> Caller {
        if !self.enabled {
            return Caller::Open;
        }
        let fingerprint = crate::certs::revocation::fingerprint(cert_der);
        if self.is_revoked(&fingerprint) {
            let why = format!("the client certificate of {name:?} (fingerprint {fingerprint}) is revoked");
            return Caller::Rejected { why };
        }
        Caller::Certificate { name: name.to_string(), fingerprint }
    }

    /// Uses `list` (the node's `peer.revoked` file) for client certificates too.
    pub fn use_revocations(&self, list: Arc<RevocationFile>) {
        let _ = self.revoked.set(list);
    }

    fn is_revoked(&self, fingerprint: &str) -> bool {
        self.revoked.get().is_some_and(|list| list.current().contains(fingerprint))
    }

    /// Who a bearer token's holder acts as; a bad token is `unauthenticated` naming what is wrong
    /// (its id at most, never its secret).
    pub fn login(&self, token: &str) -> Result<Caller, ErrorReply> {
        if !self.enabled {
            return Ok(Caller::Open);
        }
        let (id, secret) = token::parse(token).map_err(|why| self.refuse(ErrorCode::Unauthenticated, why.into()))?;
        let state = self.state();
        let record = state
            .usable_token(id, now_ms())
            .map_err(|why| self.refuse(ErrorCode::Unauthenticated, format!("token {id}: {why}")))?;
        if !token::matches(secret, &record.secret_sha256) {
            return Err(self.refuse(ErrorCode::Unauthenticated, format!("token {id}: the secret does not match")));
        }
        Ok(Caller::Token { user: record.user.clone(), id: id.to_string() })
    }

    /// Checks that `caller` may run `op`. `rule_namespace` finds an existing residency rule's namespace.
    pub fn authorize(
        &self,
        caller: &Caller,
        op: &Operation,
        rule_namespace: impl Fn(u32) -> Option<String>,
    ) -> Result<(), ErrorReply> {
        if matches!(caller, Caller::Open | Caller::Forwarded) {
            return Ok(());
        }
        let need = needed(op, rule_namespace);
        if need == Need::Nothing {
            return Ok(());
        }
        let user =
            match caller {
                Caller::Open | Caller::Forwarded => return Ok(()),
                Caller::Anonymous => return Err(self.refuse(
                    ErrorCode::Unauthenticated,
                    "authentication is required: present a client certificate from the cluster CA or a bearer token"
                        .into(),
                )),
                Caller::Rejected { why } => return Err(self.refuse(ErrorCode::Unauthenticated, why.clone())),
                Caller::Certificate { name, fingerprint } => {
                    // A certificate revoked after the connection opened stops at its next request.
                    if self.is_revoked(fingerprint) {
                        let why = format!("the client certificate of {name:?} (fingerprint {fingerprint}) is revoked");
                        return Err(self.refuse(ErrorCode::Unauthenticated, why));
                    }
                    name.as_str()
                }
                Caller::Token { user, id } => {
                    // Revocation and expiry take effect on connections that logged in before them.
                    if let Err(why) = self.state().usable_token(id, now_ms()) {
                        return Err(self.refuse(ErrorCode::Unauthenticated, format!("token {id}: {why}")));
                    }
                    user.as_str()
                }
            };
        let Need::Role(role, namespace) = need else { return Ok(()) };
        if self.role_of(user, &namespace).is_some_and(|held| held >= role) {
            return Ok(());
        }
        let where_ = if namespace == ALL_NAMESPACES {
            "the cluster (`*`)".to_string()
        } else {
            format!("namespace {namespace:?}")
        };
        Err(self.refuse(
            ErrorCode::PermissionDenied,
            format!("{user:?} lacks the {role} role in {where_} (`meridian auth grant {user} {namespace} {role}`)"),
        ))
    }

    /// The role `user` holds in `namespace`, configured admins included.
    pub fn role_of(&self, user: &str, namespace: &str) -> Option<Role> {
        if self.admins.iter().any(|a| a == user) {
            return Some(Role::Admin);
        }
        self.state().role(user, namespace)
    }

    /// Counts and audits a refusal (the audit log keeps one line per reason per window, with the
    /// count of those it left out); returns the error to send.
    fn refuse(&self, code: ErrorCode, message: String) -> ErrorReply {
        let reason = code.name();
        metrics::counter!("meridian_auth_refused_total", "reason" => reason).increment(1);
        self.audit.record(reason, reason, &message);
        ErrorReply::new(code, message)
    }

    /// Records an admin action in the audit log.
    pub fn audit_action(&self, caller: &Caller, what: &str) {
        let who = caller.principal().unwrap_or("(authentication off)");
        self.audit.record_always("admin", &format!("{who} via {}: {what}", caller.method()));
    }

    /// Joins metadata a peer sent; stores it first if it changed anything.
    pub fn adopt(&self, theirs: &AuthState) -> Result<bool, StorageError> {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        if !next.join(theirs) {
            return Ok(false);
        }
        self.store(&next)?;
        *guard = Arc::new(next);
        Ok(true)
    }

    fn store(&self, state: &AuthState) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.put(Space::Meta, layout::AUTH_STATE_KEY.to_vec(), codec::encode(&AuthRecord::V1(state.clone())));
        self.engine.write(batch)
    }

    /// Runs an [`AuthOp`] for `caller` (already authorized), storing any change before answering.
    pub fn run(&self, caller: &Caller, op: AuthOp) -> Result<AuthReport, ErrorReply> {
        let mut report = AuthReport {
            enabled: self.enabled,
            principal: caller.principal().map(str::to_string),
            method: caller.method().to_string(),
            ..AuthReport::default()
        };
        let changed = match op {
            AuthOp::Login { .. } | AuthOp::WhoAmI => None,
            AuthOp::List => {
                let state = self.state();
                report.users = state.user_infos(&self.admins);
                report.tokens = state.token_infos();
                None
            }
            op => Some(self.change(op, &mut report)?),
        };
        if let Some(what) = &changed {
            self.audit_action(caller, what);
        }
        report.changed = changed;
        report.version = self.state().clock;
        if let Some(user) = caller.principal() {
            report.grants = if self.admins.iter().any(|a| a == user) {
                vec![GrantInfo { namespace: ALL_NAMESPACES.into(), role: Role::Admin }]
            } else {
                self.state().grants_of(user)
            };
        }
        Ok(report)
    }

    fn change(&self, op: AuthOp, report: &mut AuthReport) -> Result<String, ErrorReply> {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        let author = self.author;
        let edit = |e: AuthEditError| match e {
            AuthEditError::Invalid(m) => ErrorReply::new(ErrorCode::BadRequest, m),
            AuthEditError::Full(m) => ErrorReply::new(ErrorCode::TooLarge, m),
        };
        let what = match op {
            AuthOp::AddUser { name } => {
                next.add_user(&name, author).map_err(edit)?;
                format!("added user {name}")
            }
            AuthOp::RemoveUser { name } => {
                next.remove_user(&name, author).map_err(edit)?;
                format!("removed user {name} (its grants and tokens revoked)")
            }
            AuthOp::Grant { user, namespace, role } => {
                next.grant(&user, &namespace, role, author).map_err(edit)?;
                format!("granted {role} in {namespace} to {user}")
            }
            AuthOp::Revoke { user, namespace } => {
                next.revoke(&user, &namespace, author).map_err(edit)?;
                format!("revoked {user}'s role in {namespace}")
            }
            AuthOp::CreateToken { user, ttl_s, description } => {
                let made = token::generate();
                let now = now_ms();
                let record = TokenRecord {
                    user: user.clone(),
                    secret_sha256: made.secret_sha256,
                    created_ms: now,
                    expires_ms: ttl_s.map(|s| now.saturating_add(s.saturating_mul(1000))),
                    revoked: false,
                    description,
                };
                next.add_token(&made.id, record).map_err(edit)?;
                report.created_token = Some(made.string);
                format!("made token {} for {user}", made.id)
            }
            AuthOp::RevokeToken { id } => {
                next.revoke_token(&id).map_err(edit)?;
                format!("revoked token {id}")
            }
            AuthOp::Login { .. } | AuthOp::WhoAmI | AuthOp::List => unreachable!("not a change"),
        };
        self.store(&next).map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("storing the change: {e}")))?;
        *guard = Arc::new(next);
        Ok(what)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
