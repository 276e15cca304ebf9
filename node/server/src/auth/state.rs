//! The cluster's authentication metadata — users, their roles per namespace, bearer tokens — as a
//! state-based CRDT, replicated like the residency rules (stored, gossiped, joined on every node).
//!
//! Unlike the rule set (one version wins whole), two admins editing through two nodes at once must
//! not undo each other, and above all a revocation must never be lost to a concurrent change:
//!
//! * a user and each `(user, namespace)` grant is a last-writer-wins register stamped with a Lamport
//!   pair `(counter, author)`; removing writes a stamped tombstone;
//! * tokens are a grow-only map (ids are random) whose `revoked` flag only ever turns on, so a
//!   revocation wins over anything concurrent with it;
//! * `clock` is the largest counter seen; a change stamps `clock + 1`.
//!
//! The join is commutative, associative and idempotent (property tests below), so every node ends
//! with the same metadata whatever order gossip delivers it in.
//!
//! Known limit: a token made through one node concurrently with its user's removal through another
//! is not revoked by that removal (the removal revoked only the tokens it saw); it cannot be used
//! while the user is removed, but would work again if the same name were added back. Revoke it by id.

use std::collections::BTreeMap;

use meridian_client::proto::auth::{GrantInfo, Role, TokenInfo, UserInfo, ALL_NAMESPACES};
use serde::{Deserialize, Serialize};

/// Most users the metadata holds (keeps it well inside one peer message).
pub const MAX_USERS: usize = 10_000;
/// Most tokens the metadata holds, revoked ones included.
pub const MAX_TOKENS: usize = 20_000;
/// Most grants per user.
pub const MAX_GRANTS_PER_USER: usize = 256;

/// A Lamport stamp: `(counter, author node id)`; the larger wins.
pub type Stamp = (u64, u64);

/// One user: present or removed, as of `stamp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// When it was last added or removed.
    pub stamp: Stamp,
    /// Whether the last change removed it.
    pub removed: bool,
}

/// One user's role in one namespace, as of `stamp` (`None`: revoked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// When it was last set.
    pub stamp: Stamp,
    /// The role, or `None` once revoked.
    pub role: Option<Role>,
}

/// A bearer token as stored: its secret only as a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The user it acts as.
    pub user: String,
    /// SHA-256 of its secret.
    pub secret_sha256: [u8; 32],
    /// When it was made (Unix ms).
    pub created_ms: u64,
    /// When it expires (Unix ms).
    pub expires_ms: Option<u64>,
    /// Revoked: refused everywhere from then on (never turns off).
    pub revoked: bool,
    /// What it is for.
    pub description: String,
}

/// The metadata (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// The largest stamp counter seen: the metadata's version.
    pub clock: u64,
    /// Users by name.
    pub users: BTreeMap<String, UserRecord>,
    /// Roles by `(user, namespace)`.
    pub grants: BTreeMap<(String, String), GrantRecord>,
    /// Tokens by id.
    pub tokens: BTreeMap<String, TokenRecord>,
}

/// The stored and gossiped form (versioned: bincode is not self-describing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRecord {
    /// Version 1.
    V1(AuthState),
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthEditError {
    /// A name, namespace or argument is invalid, or names something that does not exist.
    #[error("{0}")]
    Invalid(String),
    /// The metadata is at a cap.
    #[error("{0}")]
    Full(String),
}

impl AuthState {
    /// Joins `other` into `self`; returns whether anything changed.
    pub fn join(&mut self, other: &AuthState) -> bool {
        let before = self.clone();
        self.clock = self.clock.max(other.clock);
        for (name, theirs) in &other.users {
            match self.users.get_mut(name) {
                Some(ours) if ours.stamp >= theirs.stamp => {}
                Some(ours) => *ours = theirs.clone(),
                None => {
                    self.users.insert(name.clone(), theirs.clone());
                }
            }
        }
        for (key, theirs) in &other.grants {
            match self.grants.get_mut(key) {
                Some(ours) if ours.stamp >= theirs.stamp => {}
                Some(ours) => *ours = theirs.clone(),
                None => {
                    self.grants.insert(key.clone(), theirs.clone());
                }
            }
        }
        for (id, theirs) in &other.tokens {
            match self.tokens.get_mut(id) {
                Some(ours) => ours.revoked |= theirs.revoked,
                None => {
                    self.tokens.insert(id.clone(), theirs.clone());
                }
            }
        }
        *self != before
    }

    /// Whether `name` is a current user.
    pub fn has_user(&self, name: &str) -> bool {
        self.users.get(name).is_some_and(|u| !u.removed)
    }

    /// The user's role in `namespace`: the higher of its role there and its role on `*`.
    pub fn role(&self, user: &str, namespace: &str) -> Option<Role> {
        if !self.has_user(user) {
            return None;
        }
        let held = |ns: &str| self.grants.get(&(user.to_string(), ns.to_string())).and_then(|g| g.role);
        held(namespace).max(held(ALL_NAMESPACES))
    }

    /// The user's current grants.
    pub fn grants_of(&self, user: &str) -> Vec<GrantInfo> {
        self.grants
            .range((user.to_string(), String::new())..)
            .take_while(|((u, _), _)| u == user)
            .filter_map(|((_, ns), g)| g.role.map(|role| GrantInfo { namespace: ns.clone(), role }))
            .collect()
    }

    /// The token with `id`, if it may be used at `now_ms` (exists, not revoked, not expired, its user
    /// current).
    pub fn usable_token(&self, id: &str, now_ms: u64) -> Result<&TokenRecord, &'static str> {
        let token = self.tokens.get(id).ok_or("unknown token")?;
        if token.revoked {
            return Err("the token was revoked");
        }
        if token.expires_ms.is_some_and(|at| at <= now_ms) {
            return Err("the token expired");
        }
        if !self.has_user(&token.user) {
            return Err("the token's user was removed");
        }
        Ok(token)
    }

    /// Users with their grants (`configured` marks the configuration's admins).
    pub fn user_infos(&self, configured: &[String]) -> Vec<UserInfo> {
        let mut names: Vec<&String> = self.users.iter().filter(|(_, u)| !u.removed).map(|(n, _)| n).collect();
        names.extend(configured.iter().filter(|n| !self.has_user(n)));
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| UserInfo {
                name: name.clone(),
                grants: self.grants_of(name),
                configured_admin: configured.contains(name),
            })
            .collect()
    }

    /// Tokens, without secrets.
    pub fn token_infos(&self) -> Vec<TokenInfo> {
        self.tokens
            .iter()
            .map(|(id, t)| TokenInfo {
                id: id.clone(),
                user: t.user.clone(),
                created_ms: t.created_ms,
                expires_ms: t.expires_ms,
                revoked: t.revoked,
                description: t.description.clone(),
            })
            .collect()
    }

    fn next_stamp(&mut self, author: u64) -> Stamp {
        self.clock += 1;
        (self.clock, author)
    }

    /// Adds (or re-adds) a user.
    pub fn add_user(&mut self, name: &str, author: u64) -> Result<(), AuthEditError> {
        check_name("user", name)?;
        if self.has_user(name) {
            return Err(AuthEditError::Invalid(format!("user {name:?} already exists")));
        }
        if self.users.len() >= MAX_USERS && !self.users.contains_key(name) {
            return Err(AuthEditError::Full(format!("{MAX_USERS} users is the most the cluster holds")));
        }
        let stamp = self.next_stamp(author);
        self.users.insert(name.to_string(), UserRecord { stamp, removed: false });
        Ok(())
    }

    /// Removes a user: its grants are revoked and its tokens revoked.
    pub fn remove_user(&mut self, name: &str, author: u64) -> Result<(), AuthEditError> {
        self.require_user(name)?;
        let stamp = self.next_stamp(author);
        self.users.insert(name.to_string(), UserRecord { stamp, removed: true });
        for ((user, _), grant) in self.grants.iter_mut() {
            if user == name && grant.role.is_some() {
                *grant = GrantRecord { stamp, role: None };
            }
        }
        for token in self.tokens.values_mut().filter(|t| t.user == name) {
            token.revoked = true;
        }
        Ok(())
    }

    /// Sets a user's role in a namespace (or `*`).
    pub fn grant(&mut self, user: &str, namespace: &str, role: Role, author: u64) -> Result<(), AuthEditError> {
        self.require_user(user)?;
        check_namespace(namespace)?;
        let key = (user.to_string(), namespace.to_string());
        if !self.grants.contains_key(&key) && self.grants_of(user).len() >= MAX_GRANTS_PER_USER {
            return Err(AuthEditError::Full(format!("{MAX_GRANTS_PER_USER} grants per user is the most")));
        }
        let stamp = self.next_stamp(author);
        self.grants.insert(key, GrantRecord { stamp, role: Some(role) });
        Ok(())
    }

    /// Takes a user's role in a namespace away.
    pub fn revoke(&mut self, user: &str, namespace: &str, author: u64) -> Result<(), AuthEditError> {
        self.require_user(user)?;
        let key = (user.to_string(), namespace.to_string());
        if self.grants.get(&key).and_then(|g| g.role).is_none() {
            return Err(AuthEditError::Invalid(format!("user {user:?} holds no role in {namespace:?}")));
        }
        let stamp = self.next_stamp(author);
        self.grants.insert(key, GrantRecord { stamp, role: None });
        Ok(())
    }

    /// Stores a new token for a user.
    pub fn add_token(&mut self, id: &str, record: TokenRecord) -> Result<(), AuthEditError> {
        self.require_user(&record.user)?;
        if self.tokens.len() >= MAX_TOKENS {
            return Err(AuthEditError::Full(format!(
                "{MAX_TOKENS} tokens (revoked ones included) is the most the cluster holds"
            )));
        }
        if record.description.len() > 256 {
            return Err(AuthEditError::Invalid("a token description is at most 256 bytes".into()));
        }
        if self.tokens.contains_key(id) {
            return Err(AuthEditError::Invalid("a token with this id exists; make another".into()));
        }
        self.clock += 1;
        self.tokens.insert(id.to_string(), record);
        Ok(())
    }

    /// Revokes a token by id.
    pub fn revoke_token(&mut self, id: &str) -> Result<(), AuthEditError> {
        let token = self.tokens.get_mut(id).ok_or_else(|| AuthEditError::Invalid(format!("no token {id:?}")))?;
        if token.revoked {
            return Err(AuthEditError::Invalid(format!("token {id:?} is already revoked")));
        }
        token.revoked = true;
        self.clock += 1;
        Ok(())
    }

    fn require_user(&self, name: &str) -> Result<(), AuthEditError> {
        if self.has_user(name) {
            Ok(())
        } else {
            Err(AuthEditError::Invalid(format!("no user {name:?} (add it with `meridian auth user add`)")))
        }
    }

    /// Checks the shape of metadata a peer sent (caps, names), before it is joined.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.users.len() > MAX_USERS || self.tokens.len() > MAX_TOKENS {
            return Err("authentication metadata over its caps".into());
        }
        for name in self.users.keys() {
            check_name("user", name).map_err(|e| e.to_string())?;
        }
        for (user, ns) in self.grants.keys() {
            check_name("user", user).map_err(|e| e.to_string())?;
            check_namespace(ns).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn check_name(field: &str, name: &str) -> Result<(), AuthEditError> {
    crate::certs::validate_name("user", name)
        .map_err(|_| AuthEditError::Invalid(format!("{field} {name:?}: 1-64 characters of [A-Za-z0-9-_.]")))
}

fn check_namespace(namespace: &str) -> Result<(), AuthEditError> {
    if namespace == ALL_NAMESPACES {
        return Ok(());
    }
    meridian_client::proto::validate_namespace(namespace)
        .map_err(|e| AuthEditError::Invalid(format!("namespace {namespace:?}: {}", e.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One edit an admin could make through some node.
    #[derive(Clone, Debug)]
    enum Edit {
        AddUser(u8),
        RemoveUser(u8),
        Grant(u8, u8, u8),
        Revoke(u8, u8),
        Token(u8, u8),
        RevokeToken(u8),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0u8..4).prop_map(Edit::AddUser),
            (0u8..4).prop_map(Edit::RemoveUser),
            (0u8..4, 0u8..3, 0u8..3).prop_map(|(u, n, r)| Edit::Grant(u, n, r)),
            (0u8..4, 0u8..3).prop_map(|(u, n)| Edit::Revoke(u, n)),
            (0u8..4, 0u8..6).prop_map(|(u, t)| Edit::Token(u, t)),
            (0u8..6).prop_map(Edit::RevokeToken),
        ]
    }

    fn apply(state: &mut AuthState, edit: &Edit, author: u64) {
        let user = |u: &u8| format!("u{u}");
        let ns = |n: &u8| ["*", "app", "billing"][usize::from(*n)].to_string();
        let role = |r: &u8| [Role::Read, Role::Write, Role::Admin][usize::from(*r)];
        let _ = match edit {
            Edit::AddUser(u) => state.add_user(&user(u), author),
            Edit::RemoveUser(u) => state.remove_user(&user(u), author),
            Edit::Grant(u, n, r) => state.grant(&user(u), &ns(n), role(r), author),
            Edit::Revoke(u, n) => state.revoke(&user(u), &ns(n), author),
            Edit::Token(u, t) => {
                let record = TokenRecord {
                    user: user(u),
                    secret_sha256: [*t; 32],
                    created_ms: 1,
                    expires_ms: None,
                    revoked: false,
                    description: String::new(),
                };
                state.add_token(&format!("{author}-{t}"), record)
            }
            Edit::RevokeToken(t) => state.revoke_token(&format!("{author}-{t}")),
        };
    }

    /// A replica's state after its own edits and some joins: three replicas edit independently.
    fn replicas() -> impl Strategy<Value = Vec<AuthState>> {
        proptest::collection::vec(proptest::collection::vec(edit(), 0..12), 3).prop_map(|per_node| {
            per_node
                .iter()
                .enumerate()
                .map(|(author, edits)| {
                    let mut state = AuthState::default();
                    for e in edits {
                        apply(&mut state, e, author as u64 + 1);
                    }
                    state
                })
                .collect()
        })
    }

    fn joined(a: &AuthState, b: &AuthState) -> AuthState {
        let mut out = a.clone();
        out.join(b);
        out
    }

    proptest! {
        #[test]
        fn join_is_commutative_associative_idempotent(states in replicas()) {
            let (a, b, c) = (&states[0], &states[1], &states[2]);
            prop_assert_eq!(joined(a, b), joined(b, a));
            prop_assert_eq!(joined(&joined(a, b), c), joined(a, &joined(b, c)));
            prop_assert_eq!(joined(a, a), a.clone());
        }

        #[test]
        fn a_revoked_token_stays_revoked_whatever_it_meets(states in replicas()) {
            for s in &states {
                for (id, t) in s.tokens.iter().filter(|(_, t)| t.revoked) {
                    for other in &states {
                        prop_assert!(joined(s, other).tokens[id].revoked && joined(other, s).tokens[id].revoked, "{:?}", t);
                    }
                }
            }
        }
    }

    #[test]
    fn roles_imply_and_star_grants_everywhere() {
        let mut s = AuthState::default();
        s.add_user("alice", 1).unwrap();
        assert_eq!(s.role("alice", "app"), None);
        s.grant("alice", "app", Role::Write, 1).unwrap();
        assert_eq!(s.role("alice", "app"), Some(Role::Write));
        assert_eq!(s.role("alice", "billing"), None);
        s.grant("alice", "*", Role::Read, 1).unwrap();
        assert_eq!(s.role("alice", "billing"), Some(Role::Read));
        assert_eq!(s.role("alice", "app"), Some(Role::Write), "the higher role wins");
        s.remove_user("alice", 1).unwrap();
        assert_eq!(s.role("alice", "app"), None);
        assert!(s.grant("bob", "app", Role::Read, 1).is_err(), "grants need a user");
        assert!(s.grant("alice", "bad ns!", Role::Read, 1).is_err());
    }

    #[test]
    fn removing_a_user_revokes_its_tokens() {
        let mut s = AuthState::default();
        s.add_user("ci", 1).unwrap();
        let record = TokenRecord {
            user: "ci".into(),
            secret_sha256: [0; 32],
            created_ms: 0,
            expires_ms: Some(10),
            revoked: false,
            description: String::new(),
        };
        s.add_token("t1", record).unwrap();
        assert!(s.usable_token("t1", 5).is_ok());
        assert_eq!(s.usable_token("t1", 10).unwrap_err(), "the token expired");
        s.remove_user("ci", 1).unwrap();
        assert_eq!(s.usable_token("t1", 5).unwrap_err(), "the token was revoked");
    }
}
