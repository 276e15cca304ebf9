//! `meridian auth …`: users, their roles per namespace, and bearer tokens, printed for people or as
//! JSON. Everything but `whoami` needs the `admin` role on `*` (a client certificate named in the
//! node's `auth.admins`, or a user granted `admin` on `*`).

use clap::{Args, Subcommand};
use meridian_client::proto::{AuthOp, AuthReport, Role};
use meridian_client::Client;

/// `meridian auth` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Who this CLI acts as (its certificate or token) and its roles.
    Whoami(Output),
    /// Users with their roles, and tokens (never their secrets).
    List(Output),
    /// Add or remove users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Give USER the ROLE (read, write, admin) in NAMESPACE (`*`: every namespace, and for admin the
    /// cluster: rules, membership, users, tokens, audit).
    Grant {
        /// The user.
        user: String,
        /// The namespace, or `*`.
        namespace: String,
        /// read, write (implies read) or admin (implies write).
        role: Role,
        #[command(flatten)]
        output: Output,
    },
    /// Take USER's role in NAMESPACE away.
    Revoke {
        /// The user.
        user: String,
        /// The namespace, or `*`.
        namespace: String,
        #[command(flatten)]
        output: Output,
    },
    /// Make the cluster's users and their roles exactly those of FILE, a JSON document (as
    /// Terraform's modules/cluster renders it): prints the users and roles it adds, changes and
    /// removes, then applies that; does nothing when they already match. Tokens are not managed.
    Apply {
        /// The users document (`-`: standard input).
        file: std::path::PathBuf,
        /// Print the plan, apply nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make or revoke bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `meridian auth user …`.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user (a client certificate's name, or the owner of tokens).
    Add {
        /// 1-64 characters of [A-Za-z0-9-_.].
        name: String,
        #[command(flatten)]
        output: Output,
    },
    /// Remove a user: its roles and tokens go with it.
    Remove {
        /// The user.
        name: String,
        #[command(flatten)]
        output: Output,
    },
}

/// `meridian auth token …`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token for USER; the token is printed once (store it: the cluster keeps only a hash).
    Create {
        /// The user it acts as.
        user: String,
        /// Lifetime in seconds (default: no expiry).
        #[arg(long)]
        ttl_s: Option<u64>,
        /// What it is for (shown by `list`).
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        output: Output,
    },
    /// Revoke a token by id (`list` shows ids): refused everywhere from then on.
    Revoke {
        /// The token's id.
        id: String,
        #[command(flatten)]
        output: Output,
    },
}

/// Output format.
#[derive(Args, Debug, Default)]
pub struct Output {
    /// Print the node's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs one `meridian auth` command; returns the process exit code.
pub async fn run(client: &Client, command: AuthCommand) -> anyhow::Result<i32> {
    let (op, output) = match command {
        AuthCommand::Apply { file, dry_run } => return crate::auth_apply::run(client, &file, dry_run).await,
        AuthCommand::Whoami(output) => (AuthOp::WhoAmI, output),
        AuthCommand::List(output) => (AuthOp::List, output),
        AuthCommand::User { command: UserCommand::Add { name, output } } => (AuthOp::AddUser { name }, output),
        AuthCommand::User { command: UserCommand::Remove { name, output } } => (AuthOp::RemoveUser { name }, output),
        AuthCommand::Grant { user, namespace, role, output } => (AuthOp::Grant { user, namespace, role }, output),
        AuthCommand::Revoke { user, namespace, output } => (AuthOp::Revoke { user, namespace }, output),
        AuthCommand::Token { command: TokenCommand::Create { user, ttl_s, description, output } } => {
            (AuthOp::CreateToken { user, ttl_s, description }, output)
        }
        AuthCommand::Token { command: TokenCommand::Revoke { id, output } } => (AuthOp::RevokeToken { id }, output),
    };
    let report = client.auth(op).await?;
    if output.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

/// The report for people.
pub fn render(report: &AuthReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if let Some(token) = &report.created_token {
        let _ = writeln!(out, "{token}");
        let _ = writeln!(out, "(shown once: the cluster keeps only its hash)");
    }
    if let Some(changed) = &report.changed {
        let _ = writeln!(out, "{changed} (authentication metadata version {})", report.version);
    }
    if report.changed.is_none() && report.users.is_empty() && report.tokens.is_empty() {
        let who = report.principal.as_deref().unwrap_or("anonymous");
        let state = if report.enabled { "on" } else { "off: every request is allowed" };
        let _ = writeln!(out, "{who} (via {}); authentication {state}", report.method);
        for grant in &report.grants {
            let _ = writeln!(out, "  {} in {}", grant.role, grant.namespace);
        }
    }
    if !report.users.is_empty() {
        let _ = writeln!(out, "users (authentication metadata version {}):", report.version);
        for user in &report.users {
            let roles: Vec<String> = user.grants.iter().map(|g| format!("{} in {}", g.role, g.namespace)).collect();
            let configured = if user.configured_admin { " [auth.admins: admin of the cluster]" } else { "" };
            let _ = writeln!(
                out,
                "  {}{configured}: {}",
                user.name,
                if roles.is_empty() { "no role".into() } else { roles.join(", ") }
            );
        }
    }
    if !report.tokens.is_empty() {
        let _ = writeln!(out, "tokens:");
        for token in &report.tokens {
            let state = if token.revoked { "revoked" } else { "active" };
            let expires = token.expires_ms.map_or("never expires".to_string(), |ms| format!("expires at {ms} ms"));
            let _ = writeln!(out, "  {} for {} ({state}, {expires}) {}", token.id, token.user, token.description);
        }
    }
    out
}
