//! `meridian auth apply FILE`: makes the cluster's users and their roles exactly those of a document,
//! declaratively and idempotently (the counterpart of `meridian residency apply` for authentication
//! metadata, so Terraform can manage both).
//!
//! # The document
//!
//! JSON, as Terraform's `modules/cluster` renders it (`users_json`): users by name, each with its role
//! per namespace (`*`: every namespace):
//!
//! ```json
//! {"format": 1, "users": {"shop": {"orders": "write", "*": "read"}, "auditor": {}}}
//! ```
//!
//! # The difference
//!
//! * a user in the document and not in the cluster is **added**; one in the cluster and not in the
//!   document is **removed** (its grants and tokens go with it);
//! * each role that differs is **granted**, each role the document does not give is **revoked**.
//!
//! Two things are left alone on purpose. Tokens: a token's secret is shown once, when it is made,
//! so it cannot be declared; make them with `meridian auth token create` for users declared here
//! (removing the user revokes them). And the configuration's admins (`auth.admins`): they are admins
//! through every node's config whatever the metadata says, so they are never removed; list one in the
//! document to manage its grants too. Steps run in the order adds, grants, revokes, removals, each a
//! normal edit the node validates; a refused one stops the run and is reported.

use anyhow::{bail, Context as _};
use meridian_client::proto::auth::UserInfo;
use meridian_client::proto::{AuthOp, Role};
use meridian_client::Client;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The users document (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersDocument {
    /// The document format; only 1 exists.
    #[serde(default = "format_1")]
    pub format: u32,
    /// Users by name → role name (`read`, `write`, `admin`) by namespace.
    pub users: BTreeMap<String, BTreeMap<String, String>>,
}

fn format_1() -> u32 {
    1
}

/// Users → namespace → role.
pub type Desired = BTreeMap<String, BTreeMap<String, Role>>;

impl UsersDocument {
    /// Reads a document from `path` (`-`: standard input) and parses its roles.
    pub fn read(path: &Path) -> anyhow::Result<Desired> {
        let text = crate::document::read_document(path, "users document")?;
        let document: UsersDocument =
            serde_json::from_str(&text).with_context(|| format!("parsing the users document {}", path.display()))?;
        document.desired()
    }

    /// The roles, parsed.
    pub fn desired(self) -> anyhow::Result<Desired> {
        if self.format != 1 {
            bail!("users document format {} is not supported (only 1)", self.format);
        }
        let mut desired = Desired::new();
        for (user, grants) in self.users {
            let mut roles = BTreeMap::new();
            for (namespace, role) in grants {
                let parsed =
                    role.parse::<Role>().map_err(|e| anyhow::anyhow!("user {user:?}, namespace {namespace:?}: {e}"))?;
                roles.insert(namespace, parsed);
            }
            desired.insert(user, roles);
        }
        Ok(desired)
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Add a user.
    AddUser(String),
    /// Give a user a role in a namespace (replacing the one it had there).
    Grant {
        /// The user.
        user: String,
        /// The namespace or `*`.
        namespace: String,
        /// The role it gets.
        role: Role,
        /// The role it had there, if any.
        from: Option<Role>,
    },
    /// Take a user's role in a namespace away.
    Revoke {
        /// The user.
        user: String,
        /// The namespace or `*`.
        namespace: String,
        /// The role it had.
        role: Role,
    },
    /// Remove a user (its grants and tokens go with it).
    RemoveUser(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddUser(user) => write!(f, "+ add user {user}"),
            Step::Grant { user, namespace, role, from: None } => write!(f, "+ grant {user} {role} in {namespace}"),
            Step::Grant { user, namespace, role, from: Some(old) } => {
                write!(f, "~ grant {user} {role} in {namespace} (was {old})")
            }
            Step::Revoke { user, namespace, role } => write!(f, "- revoke {user}'s {role} in {namespace}"),
            Step::RemoveUser(user) => write!(f, "- remove user {user} (and its tokens)"),
        }
    }
}

/// The steps that turn the cluster's `current` users into `desired` (see the module docs).
pub fn plan(current: &[UserInfo], desired: &Desired) -> Vec<Step> {
    let existing: BTreeMap<&str, &UserInfo> = current.iter().map(|u| (u.name.as_str(), u)).collect();
    let mut adds = Vec::new();
    let mut grants = Vec::new();
    let mut revokes = Vec::new();
    for (user, roles) in desired {
        let held: BTreeMap<&str, Role> = existing
            .get(user.as_str())
            .map(|u| u.grants.iter().map(|g| (g.namespace.as_str(), g.role)).collect())
            .unwrap_or_default();
        // A configuration admin with no grants may not exist as a user yet: adding it is harmless
        // (an "already exists" answer is taken as done).
        let configured_only = existing.get(user.as_str()).is_some_and(|u| u.configured_admin && u.grants.is_empty());
        if !existing.contains_key(user.as_str()) || configured_only {
            adds.push(Step::AddUser(user.clone()));
        }
        for (namespace, role) in roles {
            let from = held.get(namespace.as_str()).copied();
            if from != Some(*role) {
                grants.push(Step::Grant { user: user.clone(), namespace: namespace.clone(), role: *role, from });
            }
        }
        for (namespace, role) in &held {
            if !roles.contains_key(*namespace) {
                revokes.push(Step::Revoke { user: user.clone(), namespace: namespace.to_string(), role: *role });
            }
        }
    }
    let removals = current
        .iter()
        .filter(|u| !desired.contains_key(&u.name) && !u.configured_admin)
        .map(|u| Step::RemoveUser(u.name.clone()));
    adds.into_iter().chain(grants).chain(revokes).chain(removals).collect()
}

/// `meridian auth apply`: prints the plan, applies it unless `dry_run`; exit status 0.
pub async fn run(client: &Client, file: &Path, dry_run: bool) -> anyhow::Result<i32> {
    let desired = UsersDocument::read(file)?;
    let current = client.auth(AuthOp::List).await.context("listing the cluster's users")?;
    let steps = plan(&current.users, &desired);
    // Adding a configuration admin that already exists as a user is no change: leave it out of
    // the count when it is the only kind of step.
    let real = steps.iter().filter(|s| !matches!(s, Step::AddUser(u) if is_configured(&current.users, u))).count();
    if real == 0 {
        println!("no changes: the cluster's users (version {}) match {}", current.version, file.display());
        return Ok(0);
    }
    let count = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    let summary = format!(
        "{} users to add, {} grants, {} revokes, {} users to remove",
        count(|s| matches!(s, Step::AddUser(_))),
        count(|s| matches!(s, Step::Grant { .. })),
        count(|s| matches!(s, Step::Revoke { .. })),
        count(|s| matches!(s, Step::RemoveUser(_)))
    );
    if crate::document::show_plan(&steps, &summary, dry_run) {
        return Ok(0);
    }
    let mut version = current.version;
    for (done, step) in steps.iter().enumerate() {
        let op = match step.clone() {
            Step::AddUser(name) => AuthOp::AddUser { name },
            Step::Grant { user, namespace, role, .. } => AuthOp::Grant { user, namespace, role },
            Step::Revoke { user, namespace, .. } => AuthOp::Revoke { user, namespace },
            Step::RemoveUser(name) => AuthOp::RemoveUser { name },
        };
        match client.auth(op).await {
            Ok(report) => version = report.version,
            Err(e)
                if matches!(step, Step::AddUser(u) if is_configured(&current.users, u))
                    && e.to_string().contains("already exists") => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("applying `{step}` ({done} of {} steps applied before it)", steps.len()))
            }
        }
    }
    println!("applied {} steps: authentication metadata version {version}", steps.len());
    Ok(0)
}

fn is_configured(users: &[UserInfo], name: &str) -> bool {
    users.iter().any(|u| u.name == name && u.configured_admin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_client::proto::auth::GrantInfo;

    fn user(name: &str, grants: &[(&str, Role)], configured_admin: bool) -> UserInfo {
        UserInfo {
            name: name.into(),
            grants: grants.iter().map(|(ns, role)| GrantInfo { namespace: ns.to_string(), role: *role }).collect(),
            configured_admin,
        }
    }

    fn desired(json: &str) -> Desired {
        serde_json::from_str::<UsersDocument>(json).unwrap().desired().unwrap()
    }

    #[test]
    fn matching_users_give_an_empty_plan() {
        let current = [user("shop", &[("orders", Role::Write), ("*", Role::Read)], false)];
        assert!(plan(&current, &desired(r#"{"users":{"shop":{"*":"read","orders":"write"}}}"#)).is_empty());
    }

    #[test]
    fn adds_grants_revokes_then_removes() {
        let current = [
            user("admin", &[], true),
            user("shop", &[("orders", Role::Read), ("logs", Role::Read)], false),
            user("old", &[("orders", Role::Write)], false),
        ];
        let steps = plan(&current, &desired(r#"{"users":{"shop":{"orders":"write"},"auditor":{"*":"read"}}}"#));
        assert_eq!(
            steps,
            [
                Step::AddUser("auditor".into()),
                Step::Grant { user: "auditor".into(), namespace: "*".into(), role: Role::Read, from: None },
                Step::Grant {
                    user: "shop".into(),
                    namespace: "orders".into(),
                    role: Role::Write,
                    from: Some(Role::Read)
                },
                Step::Revoke { user: "shop".into(), namespace: "logs".into(), role: Role::Read },
                Step::RemoveUser("old".into()),
            ],
            "the configuration's admin is never removed"
        );
        assert_eq!(steps[2].to_string(), "~ grant shop write in orders (was read)");
    }

    #[test]
    fn bad_roles_and_unknown_fields_are_refused() {
        let err = serde_json::from_str::<UsersDocument>(r#"{"users":{"a":{"x":"owner"}}}"#).unwrap().desired();
        assert!(err.unwrap_err().to_string().contains("\"x\""));
        assert!(serde_json::from_str::<UsersDocument>(r#"{"users":{},"tokens":[]}"#).is_err());
    }
}
