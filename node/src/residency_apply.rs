//! `meridian residency apply FILE`: makes the cluster's residency rules exactly those of a rules
//! document, declaratively and idempotently, so that rules can live in Terraform (or any file under
//! version control) rather than in a history of `add`/`change`/`remove` commands.
//!
//! # The document
//!
//! JSON, as Terraform's `modules/cluster` renders it (`residency_rules_json`):
//!
//! ```json
//! {"format": 1, "rules": [
//!   {"namespace": "users", "prefix": "eu/", "regions": ["eu-west", "eu-central"], "home": "eu-west", "strict": false}
//! ]}
//! ```
//!
//! The rules are in match order (first match wins), exactly like `meridian residency list`.
//!
//! # How the difference is computed
//!
//! A rule's identity is its `(namespace, prefix)`: the server refuses two rules with the same pair,
//! so the pair names a rule across edits while its numeric id is the cluster's business. Then:
//! * a current rule whose pair is not in the document is **removed**;
//! * a rule in both whose regions, home or mode differ is **changed** in place (narrowing purges the
//!   regions it leaves, widening backfills — the server does that, as for `residency change`);
//! * a rule only in the document is **added** at its place in the document's order.
//!
//! Reordering rules that both stay is refused rather than done as remove + add: between the two
//! steps the moved rule's keys would be unrestricted, and backfill would copy them everywhere.
//! Equal documents give an empty plan, so a second run does nothing.
//!
//! Steps run in the order removes, changes, adds; each is one request the server validates (unknown
//! region, home outside the regions, a change that would leave keys no allowed home). A refused step
//! stops the run and is reported with what was already applied.

use anyhow::{bail, Context as _};
use meridian_client::proto::{ResidencyOp, Rule, RuleSpec};
use meridian_client::Client;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// The rules document (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesDocument {
    /// The document format; only 1 exists.
    #[serde(default = "format_1")]
    pub format: u32,
    /// The rules in match order.
    pub rules: Vec<DocumentRule>,
}

fn format_1() -> u32 {
    1
}

/// One rule of a [`RulesDocument`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentRule {
    /// The namespace it applies to.
    pub namespace: String,
    /// Key-name prefix (empty: the whole namespace).
    #[serde(default)]
    pub prefix: String,
    /// Regions allowed to hold matching keys.
    pub regions: Vec<String>,
    /// Where requests from disallowed regions are proxied first.
    #[serde(default)]
    pub home: Option<String>,
    /// Refuse such requests instead of proxying them.
    #[serde(default)]
    pub strict: bool,
}

impl From<DocumentRule> for RuleSpec {
    fn from(r: DocumentRule) -> RuleSpec {
        RuleSpec {
            namespace: r.namespace,
            prefix: r.prefix,
            regions: r.regions,
            replicas_per_region: None,
            home: r.home,
            strict: r.strict,
        }
    }
}

impl RulesDocument {
    /// Reads a document from `path` (`-`: standard input).
    pub fn read(path: &Path) -> anyhow::Result<RulesDocument> {
        let text = crate::document::read_document(path, "rules document")?;
        let document: RulesDocument =
            serde_json::from_str(&text).with_context(|| format!("parsing the rules document {}", path.display()))?;
        if document.format != 1 {
            bail!("rules document format {} is not supported (only 1)", document.format);
        }
        Ok(document)
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Remove the rule with this id.
    Remove(Rule),
    /// Replace rule `id`'s spec.
    Change {
        /// The rule as it is.
        from: Rule,
        /// What it becomes.
        to: RuleSpec,
    },
    /// Add a rule at `position`.
    Add {
        /// The rule.
        spec: RuleSpec,
        /// Its index in match order once the earlier steps are done.
        position: u32,
    },
}

fn describe(spec: &RuleSpec) -> String {
    format!(
        "{}/{} → {} (home {}, {})",
        spec.namespace,
        spec.prefix,
        spec.regions.join(","),
        spec.home.as_deref().unwrap_or("-"),
        if spec.strict { "strict" } else { "proxy" }
    )
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Remove(rule) => write!(f, "- remove rule {}: {}", rule.id, describe(&rule.spec)),
            Step::Change { from, to } => {
                write!(f, "~ change rule {}: {}\n      to {}", from.id, describe(&from.spec), describe(to))
            }
            Step::Add { spec, position } => write!(f, "+ add {} at position {position}", describe(spec)),
        }
    }
}

/// Whether two specs say the same thing (the order regions are listed in does not matter).
fn same(a: &RuleSpec, b: &RuleSpec) -> bool {
    let regions = |s: &RuleSpec| s.regions.iter().cloned().collect::<BTreeSet<_>>();
    regions(a) == regions(b) && a.home == b.home && a.strict == b.strict
}

/// The steps that turn `current` (in match order) into `desired` (see the module docs).
pub fn plan(current: &[Rule], desired: &[RuleSpec]) -> anyhow::Result<Vec<Step>> {
    let key = |s: &RuleSpec| (s.namespace.clone(), s.prefix.clone());
    let mut wanted = BTreeMap::new();
    for spec in desired {
        if wanted.insert(key(spec), spec).is_some() {
            bail!("the rules document lists namespace {:?} prefix {:?} twice", spec.namespace, spec.prefix);
        }
    }
    let existing: BTreeMap<_, _> = current.iter().map(|r| (key(&r.spec), r)).collect();

    // Rules present on both sides must already be in the document's relative order.
    let kept_now: Vec<_> = current.iter().map(|r| key(&r.spec)).filter(|k| wanted.contains_key(k)).collect();
    let kept_wanted: Vec<_> = desired.iter().map(key).filter(|k| existing.contains_key(k)).collect();
    if kept_now != kept_wanted {
        bail!(
            "the document orders existing rules differently from the cluster ({:?} vs {:?}); reordering is \
             not applied declaratively (a rule would be unrestricted between its removal and re-addition): \
             reorder by hand with `meridian residency remove`/`add --position`, or keep the cluster's order",
            kept_now,
            kept_wanted
        );
    }

    let mut steps: Vec<Step> =
        current.iter().filter(|r| !wanted.contains_key(&key(&r.spec))).map(|r| Step::Remove(r.clone())).collect();
    for spec in desired {
        if let Some(rule) = existing.get(&key(spec)) {
            if !same(&rule.spec, spec) {
                steps.push(Step::Change { from: (*rule).clone(), to: spec.clone() });
            }
        }
    }
    // After the removals the list holds exactly the kept rules, in the document's order; adding the
    // new ones in document order at their document index rebuilds the document's order.
    for (index, spec) in desired.iter().enumerate() {
        if !existing.contains_key(&key(spec)) {
            let position = u32::try_from(index).context("too many rules")?;
            steps.push(Step::Add { spec: spec.clone(), position });
        }
    }
    Ok(steps)
}

/// `meridian residency apply`: prints the plan, applies it unless `dry_run`; exit status 0.
pub async fn run(client: &Client, file: &Path, dry_run: bool) -> anyhow::Result<i32> {
    let document = RulesDocument::read(file)?;
    let desired: Vec<RuleSpec> = document.rules.into_iter().map(RuleSpec::from).collect();
    let current = client.residency(ResidencyOp::List).await.context("listing the cluster's rules")?;
    let steps = plan(&current.rules, &desired)?;
    if steps.is_empty() {
        println!(
            "no changes: the cluster's {} residency rules (version {}) match {}",
            current.rules.len(),
            current.version,
            file.display()
        );
        return Ok(0);
    }
    let count = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    let summary = format!(
        "{} to add, {} to change, {} to remove",
        count(|s| matches!(s, Step::Add { .. })),
        count(|s| matches!(s, Step::Change { .. })),
        count(|s| matches!(s, Step::Remove(_)))
    );
    if crate::document::show_plan(&steps, &summary, dry_run) {
        return Ok(0);
    }
    let mut version = current.version;
    for (done, step) in steps.iter().enumerate() {
        let op = match step.clone() {
            Step::Remove(rule) => ResidencyOp::Remove { id: rule.id },
            Step::Change { from, to } => ResidencyOp::Change { id: from.id, rule: to },
            Step::Add { spec, position } => ResidencyOp::Add { rule: spec, position: Some(position) },
        };
        let report = client.residency(op).await.with_context(|| {
            format!(
                "applying `{}` ({done} of {} steps applied before it)",
                step.to_string().lines().next().unwrap_or(""),
                steps.len()
            )
        })?;
        version = report.version;
    }
    println!("applied {} steps: rules version {version}", steps.len());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespace: &str, prefix: &str, regions: &[&str]) -> RuleSpec {
        RuleSpec {
            namespace: namespace.into(),
            prefix: prefix.into(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            replicas_per_region: None,
            home: None,
            strict: false,
        }
    }

    fn rule(id: u32, spec: RuleSpec) -> Rule {
        Rule { id, spec }
    }

    #[test]
    fn equal_rules_give_an_empty_plan_whatever_the_region_order() {
        let current = [rule(1, spec("users", "eu/", &["eu-west", "eu-central"]))];
        assert!(plan(&current, &[spec("users", "eu/", &["eu-central", "eu-west"])]).unwrap().is_empty());
        assert!(plan(&[], &[]).unwrap().is_empty());
    }

    #[test]
    fn removes_changes_then_adds_at_the_document_position() {
        let current = [
            rule(1, spec("users", "eu/", &["eu-west"])),
            rule(2, spec("users", "us/", &["us-east"])),
            rule(3, spec("logs", "", &["us-east"])),
        ];
        let mut strict = spec("logs", "", &["us-east"]);
        strict.strict = true;
        let desired = [spec("users", "ap/", &["ap-south"]), spec("users", "eu/", &["eu-west", "eu-central"]), strict];
        let steps = plan(&current, &desired).unwrap();
        assert_eq!(
            steps,
            [
                Step::Remove(current[1].clone()),
                Step::Change { from: current[0].clone(), to: desired[1].clone() },
                Step::Change { from: current[2].clone(), to: desired[2].clone() },
                Step::Add { spec: desired[0].clone(), position: 0 },
            ]
        );
        assert!(steps[0].to_string().starts_with("- remove rule 2: users/us/"), "{}", steps[0]);
        assert!(steps[3].to_string().starts_with("+ add users/ap/ → ap-south"), "{}", steps[3]);
    }

    #[test]
    fn an_emptied_document_removes_every_rule() {
        let current = [rule(4, spec("users", "eu/", &["eu-west"]))];
        assert_eq!(plan(&current, &[]).unwrap(), [Step::Remove(current[0].clone())]);
    }

    #[test]
    fn reordering_and_duplicates_are_refused() {
        let current = [rule(1, spec("a", "", &["x"])), rule(2, spec("b", "", &["x"]))];
        let err = plan(&current, &[spec("b", "", &["x"]), spec("a", "", &["x"])]).unwrap_err().to_string();
        assert!(err.contains("reorder"), "{err}");
        let err = plan(&[], &[spec("a", "p", &["x"]), spec("a", "p", &["y"])]).unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn the_document_parses_with_defaults_and_refuses_unknown_fields() {
        let doc: RulesDocument = serde_json::from_str(r#"{"rules":[{"namespace":"u","regions":["x"]}]}"#).unwrap();
        assert_eq!(doc.format, 1);
        assert_eq!(RuleSpec::from(doc.rules[0].clone()), spec("u", "", &["x"]));
        assert!(serde_json::from_str::<RulesDocument>(r#"{"rules":[],"rulez":1}"#).is_err());
    }
}
