//! Authentication and roles on the wire: what a client sends to prove who it is, the roles a
//! principal holds per namespace, and the administration of users, grants and tokens
//! (`meridian auth …`).
//!
//! A client proves who it is in one of two ways:
//!
//! * a **client certificate** issued by the cluster CA (`meridian certs client --name NAME`),
//!   presented in the QUIC handshake: the principal is the certificate's client name;
//! * a **bearer token** (an API key, [`AuthOp::CreateToken`]): over QUIC the SDK sends
//!   [`AuthOp::Login`] once on each new connection, over HTTP it is the `Authorization: Bearer`
//!   header of every request.
//!
//! A token string is `mrd_<id>_<secret>`: the id names the token in listings and revocations, the
//! secret is 32 random bytes and is shown once, when the token is made. Nodes store only a hash of it.

use serde::{Deserialize, Serialize};

/// The namespace pattern that grants a role on every namespace (and, for `admin`, on the cluster:
/// membership, users, grants, tokens and the audit).
pub const ALL_NAMESPACES: &str = "*";

/// Prefix of every token string.
pub const TOKEN_PREFIX: &str = "mrd_";

/// Longest token string a node reads (anything longer is refused before it is parsed).
pub const MAX_TOKEN_STRING_BYTES: usize = 256;

/// What a principal may do in a namespace. Each role implies the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Read keys, list keys, fetch document changes.
    Read,
    /// Read, and write and delete keys.
    Write,
    /// Write, and administer: residency rules of the namespace; on `*`, also membership, users,
    /// grants, tokens and the audit.
    Admin,
}

impl Role {
    /// The lower-case name used by the CLI and the HTTP API.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (expected read, write or admin)")),
        }
    }
}

/// Authentication and role administration (`meridian auth …`). Everything but [`AuthOp::Login`] and
/// [`AuthOp::WhoAmI`] needs `admin` on `*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    /// Authenticates this connection with a bearer token (QUIC; the SDK sends it first on every
    /// connection it opens). Answered with who the connection now acts as.
    Login {
        /// The token string (`mrd_<id>_<secret>`).
        token: String,
    },
    /// Who this request acts as, and with which roles.
    WhoAmI,
    /// Users with their grants, and tokens (never their secrets).
    List,
    /// Adds a user (a principal: a client certificate's name, or the owner of tokens).
    AddUser {
        /// The user's name (1-64 characters of `[A-Za-z0-9-_.]`, as certificate names).
        name: String,
    },
    /// Removes a user, its grants and its tokens.
    RemoveUser {
        /// The user.
        name: String,
    },
    /// Gives a user a role in a namespace (`*`: every namespace), replacing the role it had there.
    Grant {
        /// The user.
        user: String,
        /// The namespace, or `*`.
        namespace: String,
        /// The role.
        role: Role,
    },
    /// Takes a user's role in a namespace away.
    Revoke {
        /// The user.
        user: String,
        /// The namespace, or `*`.
        namespace: String,
    },
    /// Makes a bearer token for a user; the answer carries the token string, shown this once.
    CreateToken {
        /// The user it acts as.
        user: String,
        /// Seconds until it expires (`None`: never).
        ttl_s: Option<u64>,
        /// What it is for (shown in listings).
        description: String,
    },
    /// Revokes a token by id: refused from then on, everywhere.
    RevokeToken {
        /// The token's id (the part after `mrd_`, before the second `_`).
        id: String,
    },
}

impl AuthOp {
    /// Whether the operation changes the cluster's authentication metadata.
    pub fn is_change(&self) -> bool {
        !matches!(self, AuthOp::Login { .. } | AuthOp::WhoAmI | AuthOp::List)
    }
}

/// A role held in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantInfo {
    /// The namespace, or `*`.
    pub namespace: String,
    /// The role.
    pub role: Role,
}

/// A user and what it may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user's name.
    pub name: String,
    /// Its roles.
    pub grants: Vec<GrantInfo>,
    /// Whether the node's configuration makes it a cluster admin (`auth.admins`), whatever its grants.
    pub configured_admin: bool,
}

/// A token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The token's id.
    pub id: String,
    /// The user it acts as.
    pub user: String,
    /// When it was made (Unix milliseconds).
    pub created_ms: u64,
    /// When it expires (Unix milliseconds), if it does.
    pub expires_ms: Option<u64>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// What it is for.
    pub description: String,
}

/// The answer to an [`AuthOp`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthReport {
    /// Whether the node enforces authentication.
    pub enabled: bool,
    /// The version of the cluster's authentication metadata this node holds.
    pub version: u64,
    /// Who the request acted as (`None`: anonymous, on a node with authentication off).
    pub principal: Option<String>,
    /// How it proved it: `certificate`, `token`, or `none`.
    pub method: String,
    /// The caller's roles (for `Login` and `WhoAmI`).
    pub grants: Vec<GrantInfo>,
    /// Users (for `List`).
    pub users: Vec<UserInfo>,
    /// Tokens (for `List`).
    pub tokens: Vec<TokenInfo>,
    /// The token string just made (for `CreateToken`; shown once, never stored).
    pub created_token: Option<String>,
    /// What changed, in prose (for changes).
    pub changed: Option<String>,
}
