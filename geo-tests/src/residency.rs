//! Helpers for the data-residency tests over a [`Geo`] cluster: the `meridian residency …` CLI run
//! against one node, the SDK's residency operation, waits for the rules to reach every node and for
//! purges/backfills to finish, markers that survive RocksDB's LZ4 blocks, and a bare HTTP GET.
//!
//! Everything here is bounded: each CLI run by [`CLI_TIMEOUT`], each wait by the caller's timeout.

use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use meridian_client::{Error, ResidencyOp, ResidencyReport, RuleSpec};
use meridian_wan::plan::admin_credentials;
use tokio::process::Command;
use tokio::time::Instant;

use crate::geo::Geo;
use crate::region::{meridian_bin, scrub_env};

/// The bound on one CLI run (an audit with `--compact` included).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-attempt timeout of the SDK clients these helpers open.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Time between polls.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A finished CLI run.
#[derive(Debug)]
pub struct CliOutput {
    /// What was run (for messages).
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Stdout parsed as JSON of type `T`: the whole of it, else the text from its first `{` to its
    /// last `}` (in case the CLI prints a line around the JSON).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        if let Ok(value) = serde_json::from_str(self.stdout.trim()) {
            return Ok(value);
        }
        let (Some(start), Some(end)) = (self.stdout.find('{'), self.stdout.rfind('}')) else {
            bail!("{self}\nstdout holds no JSON object");
        };
        serde_json::from_str(&self.stdout[start..=end])
            .with_context(|| format!("{self}\nstdout is not the JSON expected"))
    }

    /// Fails (with the whole output) unless the command exited 0.
    pub fn ok(self) -> anyhow::Result<CliOutput> {
        if self.status.success() {
            Ok(self)
        } else {
            bail!("{self}\nexpected exit code 0")
        }
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout:\n{}--- stderr:\n{}",
            self.command,
            self.status,
            with_newline(&self.stdout),
            with_newline(&self.stderr)
        )
    }
}

fn with_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// Runs `meridian --endpoint <node's client address> --ca-cert <cluster CA> --cert/--key <the admin's> ARGS…` (bounded by
/// [`CLI_TIMEOUT`]; the test's `MERIDIAN_*` variables removed).
pub async fn cli(geo: &Geo, node: &str, args: &[&str]) -> anyhow::Result<CliOutput> {
    let plan = node_plan(geo, node)?;
    let bin = meridian_bin();
    let mut command = Command::new(&bin);
    command
        .arg("--endpoint")
        .arg(plan.client_addr.to_string())
        .arg("--ca-cert")
        .arg(&geo.plan().ca_cert)
        .args(
            ["--cert", "--key"]
                .into_iter()
                .zip(<[PathBuf; 2]>::from(admin_credentials(&geo.plan().ca_cert)))
                .flat_map(|(flag, path)| [flag.into(), path.into_os_string()]),
        )
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    scrub_env(&mut command);
    let shown = format!("meridian --endpoint {} ({node}) {}", plan.client_addr, args.join(" "));
    let output = tokio::time::timeout(CLI_TIMEOUT, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("`{shown}` did not finish within {} s", CLI_TIMEOUT.as_secs()))?
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(CliOutput {
        command: shown,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The plan entry of node `name`.
pub fn node_plan<'a>(geo: &'a Geo, name: &str) -> anyhow::Result<&'a meridian_wan::plan::NodePlan> {
    geo.plan().nodes().map(|(_, n)| n).find(|n| n.name == name).with_context(|| format!("no node {name} in the plan"))
}

/// Node `name`'s data directory.
pub fn data_dir(geo: &Geo, name: &str) -> anyhow::Result<PathBuf> {
    Ok(node_plan(geo, name)?.data_dir.clone())
}

/// The CLI flags that describe `rule` (`--namespace … --prefix … --regions a,b [--replicas N]
/// [--home R] [--strict]`), for `residency add` and `residency change`.
pub fn rule_args(rule: &RuleSpec) -> Vec<String> {
    let mut args = vec![
        "--namespace".to_string(),
        rule.namespace.clone(),
        "--prefix".into(),
        rule.prefix.clone(),
        "--regions".into(),
        rule.regions.join(","),
    ];
    if let Some(n) = rule.replicas_per_region {
        args.extend(["--replicas".into(), n.to_string()]);
    }
    if let Some(home) = &rule.home {
        args.extend(["--home".into(), home.clone()]);
    }
    if rule.strict {
        args.push("--strict".into());
    }
    args
}

/// A rule over `regions`, no replica count, no home, not strict.
pub fn rule(namespace: &str, prefix: &str, regions: &[&str]) -> RuleSpec {
    RuleSpec {
        namespace: namespace.into(),
        prefix: prefix.into(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        replicas_per_region: None,
        home: None,
        strict: false,
    }
}

/// `meridian residency add <rule> --json` at `node`: the new rule's id and the rules version the
/// node reported.
pub async fn cli_add_json(geo: &Geo, node: &str, rule: &RuleSpec) -> anyhow::Result<(u32, u64)> {
    let mut args: Vec<String> = vec!["residency".into(), "add".into()];
    args.extend(rule_args(rule));
    args.push("--json".into());
    let out = cli(geo, node, &strs(&args)).await?.ok()?;
    let report: ResidencyReport = out.json()?;
    let id = report.rule_id.with_context(|| format!("{out}\nno rule_id in the JSON report"))?;
    Ok((id, report.version))
}

/// `meridian residency add <rule>` (text output) at `node`: the id, the version and the verb parsed
/// from `rule <id> <verb> (rules version <v>)` — the specified verb is `added`; the caller checks it,
/// so that a wording difference is reported without stopping a test.
pub async fn cli_add_text(geo: &Geo, node: &str, rule: &RuleSpec) -> anyhow::Result<(u32, u64, String)> {
    let mut args: Vec<String> = vec!["residency".into(), "add".into()];
    args.extend(rule_args(rule));
    let out = cli(geo, node, &strs(&args)).await?.ok()?;
    parse_rule_line(&out.stdout).with_context(|| format!("{out}\nexpected `rule <id> added (rules version <v>)`"))
}

/// `(id, version)` from a line `rule <id> added (rules version <v>)`.
pub fn parse_added(stdout: &str) -> Option<(u32, u64)> {
    parse_rule_line(stdout).filter(|(_, _, verb)| verb == "added").map(|(id, version, _)| (id, version))
}

/// `(id, version, verb)` from the first line `rule <id> <verb> (rules version <v>)`.
pub fn parse_rule_line(stdout: &str) -> Option<(u32, u64, String)> {
    stdout.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("rule ")?;
        let (id, rest) = rest.split_once(' ')?;
        let (verb, rest) = rest.split_once(' ')?;
        let version = rest.strip_prefix("(rules version ")?.strip_suffix(')')?;
        Some((id.parse().ok()?, version.parse().ok()?, verb.to_string()))
    })
}

/// `meridian residency change <id> <rule> --json` at `node`: the rules version it reported.
pub async fn cli_change_json(geo: &Geo, node: &str, id: u32, rule: &RuleSpec) -> anyhow::Result<u64> {
    let mut args: Vec<String> = vec!["residency".into(), "change".into(), id.to_string()];
    args.extend(rule_args(rule));
    args.push("--json".into());
    let out = cli(geo, node, &strs(&args)).await?.ok()?;
    let report: ResidencyReport = out.json()?;
    anyhow::ensure!(
        report.rules.iter().any(|r| r.id == id && &r.spec == rule),
        "{out}\nrule {id} is not {rule:?} in the report"
    );
    Ok(report.version)
}

/// `&[String]` as `Vec<&str>`.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// One residency operation through the SDK at node `name` (a fresh client, no retries). The outer
/// error is a connection failure; the inner one the node's answer.
pub async fn residency(geo: &Geo, name: &str, op: ResidencyOp) -> anyhow::Result<Result<ResidencyReport, Error>> {
    let client = geo.client_with(name, RPC_TIMEOUT).await?;
    let result = client.residency(op).await;
    client.close().await;
    Ok(result)
}

/// Polls `residency list` on every node of `nodes` until each reports a version ≥ `min_version`,
/// all report the same version and the same rules; returns their reports (in `nodes` order).
pub async fn wait_rules_agree(
    geo: &Geo,
    nodes: &[String],
    min_version: u64,
    timeout: Duration,
) -> anyhow::Result<Vec<ResidencyReport>> {
    poll_nodes(
        geo,
        nodes,
        timeout,
        &format!("every node to hold the same rules, version >= {min_version}"),
        |reports| {
            let mut problems = Vec::new();
            for (name, report) in nodes.iter().zip(reports) {
                if report.version < min_version {
                    problems.push(format!("{name} holds version {} (< {min_version})", report.version));
                }
            }
            let first = &reports[0];
            for (name, report) in nodes.iter().zip(reports).skip(1) {
                if report.version != first.version || report.rules != first.rules {
                    problems.push(format!(
                        "{name} holds version {} with {} rules, {} version {} with {} rules",
                        report.version,
                        report.rules.len(),
                        nodes[0],
                        first.version,
                        first.rules.len()
                    ));
                }
            }
            problems
        },
    )
    .await
}

/// A purge or backfill a node must have listed (complete) in its `changes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedChange {
    /// The node.
    pub node: String,
    /// `purge` or `backfill`.
    pub kind: String,
    /// The rule.
    pub rule: u32,
    /// The entry's version is at least this (the change that caused it).
    pub min_version: u64,
}

/// Polls `residency list` on every node until each holds exactly `version`, every entry of its
/// `changes` is complete, and every `expected` entry is there (so that a purge that has not even
/// started yet does not pass for done); returns the reports.
pub async fn wait_changes_complete(
    geo: &Geo,
    nodes: &[String],
    version: u64,
    expected: &[ExpectedChange],
    timeout: Duration,
) -> anyhow::Result<Vec<ResidencyReport>> {
    poll_nodes(
        geo,
        nodes,
        timeout,
        &format!("every node at version {version} with every purge/backfill complete"),
        |reports| {
            let mut problems = Vec::new();
            for (name, report) in nodes.iter().zip(reports) {
                if report.version != version {
                    problems.push(format!("{name} holds version {}", report.version));
                }
                for want in expected.iter().filter(|e| &e.node == name) {
                    let listed = report.changes.iter().any(|c| {
                        c.kind == want.kind && c.rule == want.rule && c.version >= want.min_version && c.complete
                    });
                    if !listed {
                        problems.push(format!(
                            "{name} lists no complete {} of rule {} (version >= {}); its changes: {:?}",
                            want.kind, want.rule, want.min_version, report.changes
                        ));
                    }
                }
                for change in report.changes.iter().filter(|c| !c.complete) {
                    problems.push(format!(
                        "{name}: {} of rule {} (version {}) at {}/{}",
                        change.kind, change.rule, change.version, change.done, change.total
                    ));
                }
            }
            problems
        },
    )
    .await
}

/// Lists on every node of `nodes` until `problems` (given every report, in order) returns none.
async fn poll_nodes(
    geo: &Geo,
    nodes: &[String],
    timeout: Duration,
    what: &str,
    problems: impl Fn(&[ResidencyReport]) -> Vec<String>,
) -> anyhow::Result<Vec<ResidencyReport>> {
    anyhow::ensure!(!nodes.is_empty(), "no nodes to poll");
    let deadline = Instant::now() + timeout;
    loop {
        let mut reports = Vec::with_capacity(nodes.len());
        let mut errors = Vec::new();
        for name in nodes {
            match residency(geo, name, ResidencyOp::List).await {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(e)) => errors.push(format!("{name}: residency list: {e}")),
                Err(e) => errors.push(format!("{name}: {e:#}")),
            }
        }
        let found = if errors.is_empty() { problems(&reports) } else { errors };
        if found.is_empty() {
            return Ok(reports);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {:.0} s waiting for {what}: {}", timeout.as_secs_f64(), found.join("; "));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A marker's random part: `len` random bytes (any value).
pub fn random_token(rng: &mut impl rand::Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random::<u8>()).collect()
}

/// Random bytes on each side of a marker's token.
pub const GUARD_LEN: usize = 4;

/// A unique value to write and find again on disk: `prefix`, [`GUARD_LEN`] random bytes, a token of
/// `token_len` random bytes, [`GUARD_LEN`] random bytes. Returns `(marker, token)`; scan for the
/// token.
///
/// Why random bytes, and why guards: RocksDB's LZ4 blocks keep bytes as literals unless a run of
/// 4+ bytes was seen earlier in the block, which it replaces by a back-reference, and a match is
/// extended as far as the bytes agree. Over 256 symbols no 4-byte piece *inside* a token repeats,
/// but at its edges a match can start in the shared text before it (`…-37-` then the token's first
/// byte, equal to an earlier token's with probability 1/256 per earlier marker) or in the token's
/// last byte followed by the record's fixed layout bytes. Without guards ~2% of the markers a node
/// held were stored with their last byte inside a back-reference, invisible to a raw scan; with
/// them, a match reaching into the token needs 4 random guard bytes to repeat.
pub fn marker(rng: &mut impl rand::Rng, prefix: &str, token_len: usize) -> (Vec<u8>, Vec<u8>) {
    let token = random_token(rng, token_len);
    let marker = [prefix.as_bytes(), &random_token(rng, GUARD_LEN), &token, &random_token(rng, GUARD_LEN)].concat();
    (marker, token)
}

/// A key-name part to find again on disk: [`GUARD_LEN`] random characters, `token_len` random
/// characters (the token: scan for it), [`GUARD_LEN`] random characters, all from `[A-Za-z0-9]`
/// (key names are text). The guards play the same part as in [`marker`]. Returns `(text, token)`.
pub fn key_part(rng: &mut impl rand::Rng, token_len: usize) -> (String, String) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut pick =
        |n: usize| -> String { (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect() };
    let (left, token, right) = (pick(GUARD_LEN), pick(token_len), pick(GUARD_LEN));
    (format!("{left}{token}{right}"), token)
}

/// `bytes` in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET path` to node `addr` of `geo` over HTTPS as the cluster's admin: the status code and the
/// body (bounded by 10 s).
pub async fn http_get(geo: &Geo, addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    meridian_wan::plan::admin_http(&geo.plan().ca_cert)?.get(addr, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_add_line() {
        assert_eq!(parse_added("rule 7 added (rules version 12)\n"), Some((7, 12)));
        assert_eq!(parse_added("note\n  rule 1 added (rules version 1)  \n"), Some((1, 1)));
        assert_eq!(parse_added("rule x added (rules version 1)"), None);
        assert_eq!(parse_added("rule 1 saved (rules version 1)"), None);
        assert_eq!(parse_rule_line("rule 1 saved (rules version 2)"), Some((1, 2, "saved".into())));
        assert_eq!(parse_added(""), None);
    }

    #[test]
    fn rule_args_name_every_field() {
        let mut spec = rule("res", "eu/", &["eu-west", "us-east"]);
        assert_eq!(rule_args(&spec), ["--namespace", "res", "--prefix", "eu/", "--regions", "eu-west,us-east"]);
        spec.replicas_per_region = Some(1);
        spec.home = Some("eu-west".into());
        spec.strict = true;
        assert_eq!(rule_args(&spec)[6..], ["--replicas", "1", "--home", "eu-west", "--strict"]);
    }
}
