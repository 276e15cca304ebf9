//! Data-residency rules: which regions may hold a key, as versioned cluster metadata.
//!
//! A [`RuleSet`] is an ordered list of [`Rule`]s; a key `namespace/name` matches a rule when the
//! namespace is the rule's and the name starts with its prefix. The **first** match decides; a key
//! that matches no rule may live in every region. The set is replicated like membership: every
//! change makes a new version, and of two sets the one with the higher `(version, author)` wins
//! ([`RuleSet::merge`]), so every node converges on the same rules whatever order gossip delivers
//! them in. Concurrent changes made through two nodes at the same version are not merged: one wins
//! whole (the operator's CLI prints the version it made, and `list` shows what won).
//!
//! Validation ([`RuleSet::check_spec`], and every edit through `with_added` / `with_changed` /
//! `with_removed`) refuses what would leave data without a home: an unknown or empty region set, a
//! home region outside the set, and an edit after which some keys would be governed by a rule that
//! shares no region with the rule that governed them before (nothing allowed to keep the keys while
//! the new regions backfill). A move between disjoint region sets is two changes: widen, wait for the backfill, narrow.
//!
//! The node does the rest (`node/src/residency/`): it asks [`RuleSet::rule_for`] on every path a
//! key's bytes can take and compares consecutive sets with [`RuleSet::purges_for`] /
//! [`RuleSet::backfills_for`] to purge or backfill. Nothing here touches storage or the network.

use meridian_proto::{Rule, RuleSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The cluster's residency rules at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSet {
    /// Raised by every change (0: no rule was ever set).
    pub version: u64,
    /// Id of the node that made this version (breaks ties between concurrent changes).
    pub author: u64,
    /// The id the next added rule gets (ids are never reused, so a removed rule's id never names
    /// another rule in a redacted log record).
    pub next_id: u32,
    /// The rules, in match order.
    pub rules: Vec<Rule>,
}

/// Why a rule or a change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The rule names no region.
    #[error("the rule names no regions: give at least one with --regions")]
    NoRegions,
    /// The rule names a region the cluster does not have.
    #[error("unknown region {region:?} (the cluster's regions: {known})")]
    UnknownRegion {
        /// The region named.
        region: String,
        /// The regions known, comma-separated.
        known: String,
    },
    /// The namespace is empty or not a valid namespace.
    #[error("invalid namespace {0:?}: a rule needs a non-empty namespace of at most 128 bytes, without '/'")]
    BadNamespace(String),
    /// The home region is not one of the allowed regions.
    #[error("the home region {0:?} is not one of the rule's regions")]
    HomeNotAllowed(String),
    /// A replica count per region was given; it is not enforced yet, so it is refused rather than
    /// silently ignored.
    #[error(
        "replicas per region is not supported yet: every replica of an allowed region holds the keys \
         (the region's rf); leave it unset"
    )]
    ReplicasNotEnforced,
    /// No rule has that id.
    #[error("no rule with id {0}")]
    NoSuchRule(u32),
    /// The change would leave existing keys in no region that may keep them: they would move from
    /// rule `id`'s regions to rule `to`'s, and the two share none.
    #[error(
        "keys of rule {id} (regions {old:?}) would fall under rule {to} (regions {new:?}), which shares no \
         region with it: their existing data would have no allowed home. Widen first (add the new \
         regions), wait until `meridian residency list` shows the backfill complete, then narrow"
    )]
    NoAllowedHome {
        /// The rule whose keys move.
        id: u32,
        /// The rule that would govern them.
        to: u32,
        /// Its regions before.
        old: Vec<String>,
        /// The regions after.
        new: Vec<String>,
    },
    /// A rule id that is 0, repeated, or not below the set's `next_id` (a malformed set).
    #[error("rule id {0} is 0, repeated or not below the set's next id")]
    BadId(u32),
    /// Another rule already matches exactly this namespace and prefix.
    #[error("rule {0} already matches this namespace and prefix; change it instead")]
    Duplicate(u32),
}

impl RuleSet {
    /// The first rule matching `namespace/name`, if any.
    pub fn rule_for(&self, namespace: &str, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.spec.namespace == namespace && name.starts_with(r.spec.prefix.as_str()))
    }

    /// The rule with this id.
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Whether `region` may hold `namespace/name`.
    pub fn allows(&self, region: &str, namespace: &str, name: &str) -> bool {
        self.rule_for(namespace, name).is_none_or(|r| allows(r, region))
    }

    /// Checks a set received from a peer before it is adopted: every rule well-formed (a namespace,
    /// at least one region, a home among its regions), ids unique and below `next_id`. Regions are
    /// not checked against membership: a peer may know a region before this node does.
    pub fn check_shape(&self) -> Result<(), RuleError> {
        let mut ids = BTreeSet::new();
        for rule in &self.rules {
            let regions: BTreeSet<String> = rule.spec.regions.iter().cloned().collect();
            Self::check_spec(&rule.spec, &regions)?;
            if !ids.insert(rule.id) || rule.id == 0 || rule.id >= self.next_id {
                return Err(RuleError::BadId(rule.id));
            }
        }
        Ok(())
    }

    /// Adopts `theirs` if it is newer by `(version, author)`; returns whether it did.
    pub fn merge(&mut self, theirs: &RuleSet) -> bool {
        if (theirs.version, theirs.author) > (self.version, self.author) {
            *self = theirs.clone();
            true
        } else {
            false
        }
    }

    /// Checks a rule as written against the cluster's regions.
    pub fn check_spec(spec: &RuleSpec, known_regions: &BTreeSet<String>) -> Result<(), RuleError> {
        if spec.namespace.is_empty()
            || spec.namespace.len() > meridian_proto::MAX_NAMESPACE_BYTES
            || spec.namespace.contains('/')
        {
            return Err(RuleError::BadNamespace(spec.namespace.clone()));
        }
        if spec.regions.is_empty() {
            return Err(RuleError::NoRegions);
        }
        for region in &spec.regions {
            if !known_regions.contains(region) {
                let known = known_regions.iter().cloned().collect::<Vec<_>>().join(", ");
                return Err(RuleError::UnknownRegion { region: region.clone(), known });
            }
        }
        if let Some(home) = &spec.home {
            if !spec.regions.contains(home) {
                return Err(RuleError::HomeNotAllowed(home.clone()));
            }
        }
        if spec.replicas_per_region.is_some() {
            return Err(RuleError::ReplicasNotEnforced);
        }
        Ok(())
    }

    /// The set after adding `spec` (at `position`, or last), made by `author`.
    pub fn with_added(
        &self,
        spec: RuleSpec,
        position: Option<usize>,
        author: u64,
        known_regions: &BTreeSet<String>,
    ) -> Result<(RuleSet, u32), RuleError> {
        Self::check_spec(&spec, known_regions)?;
        if let Some(same) =
            self.rules.iter().find(|r| r.spec.namespace == spec.namespace && r.spec.prefix == spec.prefix)
        {
            return Err(RuleError::Duplicate(same.id));
        }
        // A new rule takes keys from whatever matched them before (another rule, or none = every
        // region): it must leave those keys a region that may keep them while the rest purge.
        let mut next = self.bumped(author);
        let id = next.next_id.max(1);
        next.next_id = id + 1;
        let at = position.unwrap_or(next.rules.len()).min(next.rules.len());
        next.rules.insert(at, Rule { id, spec });
        self.check_homes(&next)?;
        Ok((next, id))
    }

    /// The set after replacing rule `id`'s spec.
    pub fn with_changed(
        &self,
        id: u32,
        spec: RuleSpec,
        author: u64,
        known_regions: &BTreeSet<String>,
    ) -> Result<RuleSet, RuleError> {
        Self::check_spec(&spec, known_regions)?;
        if let Some(same) =
            self.rules.iter().find(|r| r.id != id && r.spec.namespace == spec.namespace && r.spec.prefix == spec.prefix)
        {
            return Err(RuleError::Duplicate(same.id));
        }
        let mut next = self.bumped(author);
        let rule = next.rules.iter_mut().find(|r| r.id == id).ok_or(RuleError::NoSuchRule(id))?;
        rule.spec = spec;
        self.check_homes(&next)?;
        Ok(next)
    }

    /// The set after removing rule `id` (its keys match a later rule, or go everywhere).
    pub fn with_removed(&self, id: u32, author: u64) -> Result<RuleSet, RuleError> {
        let mut next = self.bumped(author);
        let before = next.rules.len();
        next.rules.retain(|r| r.id != id);
        if next.rules.len() == before {
            return Err(RuleError::NoSuchRule(id));
        }
        self.check_homes(&next)?;
        Ok(next)
    }

    /// The rules of `next` whose keys `region` must purge when moving from `self` to `next`: every
    /// rule excluding `region` that is new, changed or moved in the match order (a rule unchanged
    /// since `self` was purged already). Purging is idempotent and removes only what `next`
    /// forbids here, so erring towards purging is safe.
    pub fn purges_for(&self, next: &RuleSet, region: &str) -> Vec<Rule> {
        next.rules
            .iter()
            .filter(|rule| !allows(rule, region))
            .filter(|rule| {
                // Unchanged and already excluding: nothing new to purge. Otherwise (new rule,
                // narrowed rule, reordered rules) purge: purging is idempotent and only ever
                // removes what `next` forbids here.
                self.rule(rule.id).is_none_or(|old| old.spec != rule.spec || allows(old, region))
                    || self.rules.iter().position(|r| r.id == rule.id)
                        != next.rules.iter().position(|r| r.id == rule.id)
            })
            .cloned()
            .collect()
    }

    /// The rules of [`purges_for`](Self::purges_for) that take from `region` keys it may hold under
    /// `self`: a new rule, or one whose namespace or prefix changed (the keys were governed by
    /// something else, perhaps nothing: every region), or one taking keys of a rule of `self`
    /// that allows `region`. The other purges only repeat one already made, so an edit making
    /// none of these deletes no copy anywhere.
    pub fn purges_held(&self, next: &RuleSet, region: &str) -> Vec<Rule> {
        self.purges_for(next, region)
            .into_iter()
            .filter(|rule| {
                let same_keys = self.rule(rule.id).is_some_and(|old| {
                    old.spec.namespace == rule.spec.namespace && old.spec.prefix == rule.spec.prefix
                });
                !same_keys || self.rules.iter().any(|old| allows(old, region) && takes_keys_of(next, rule, old))
            })
            .collect()
    }

    /// The rules of `next` whose keys `region` must backfill when moving from `self` to `next`, each
    /// with the regions that held those keys: every rule allowing `region` that takes keys from a
    /// rule of `self` excluding it (the same rule widened, a rule placed before it, or one replacing
    /// a removed rule), and every removed rule that excluded `region` (its keys now match a later
    /// rule or none; the node backfills by the old rule's namespace and prefix, and the sources
    /// answer only keys `region` may hold now).
    pub fn backfills_for(&self, next: &RuleSet, region: &str) -> Vec<(Rule, Vec<String>)> {
        let mut out = Vec::new();
        for rule in next.rules.iter().filter(|rule| allows(rule, region)) {
            let mut sources: Vec<String> = Vec::new();
            for old in self.rules.iter().filter(|old| !allows(old, region) && takes_keys_of(next, rule, old)) {
                for r in &old.spec.regions {
                    if !sources.contains(r) {
                        sources.push(r.clone());
                    }
                }
            }
            if !sources.is_empty() {
                out.push((rule.clone(), sources));
            }
        }
        for old in self.rules.iter().filter(|old| !allows(old, region) && next.rule(old.id).is_none()) {
            out.push((old.clone(), old.spec.regions.clone()));
        }
        out
    }

    fn bumped(&self, author: u64) -> RuleSet {
        RuleSet { version: self.version + 1, author, next_id: self.next_id.max(1), rules: self.rules.clone() }
    }

    /// Keys that change hands between `self` and `next` must keep a region in common, so they always
    /// have a region allowed to keep them while others purge and backfill.
    fn check_homes(&self, next: &RuleSet) -> Result<(), RuleError> {
        for old in &self.rules {
            for new in next.rules.iter().filter(|new| takes_keys_of(next, new, old)) {
                if !old.spec.regions.iter().any(|r| new.spec.regions.contains(r)) {
                    return Err(RuleError::NoAllowedHome {
                        id: old.id,
                        to: new.id,
                        old: old.spec.regions.clone(),
                        new: new.spec.regions.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether rule `new` of the set `next` can govern keys that rule `old` governed before: the same
/// rule, or one of the same namespace whose prefix overlaps `old`'s (one extends the other) and that
/// comes first in `next` (or `old` is gone). Conservative: a key set shadowed by a third rule
/// still counts.
fn takes_keys_of(next: &RuleSet, new: &Rule, old: &Rule) -> bool {
    if new.id == old.id {
        return true;
    }
    let overlaps = new.spec.namespace == old.spec.namespace
        && (new.spec.prefix.starts_with(&old.spec.prefix) || old.spec.prefix.starts_with(&new.spec.prefix));
    let position = |id: u32| next.rules.iter().position(|r| r.id == id);
    overlaps && position(old.id).is_none_or(|at| position(new.id).is_some_and(|new_at| new_at < at))
}

/// Whether `rule` lets `region` hold its keys.
pub fn allows(rule: &Rule, region: &str) -> bool {
    rule.spec.regions.iter().any(|r| r == region)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> BTreeSet<String> {
        ["us-east", "eu-west", "eu-central"].map(String::from).into()
    }

    fn spec(ns: &str, prefix: &str, regions: &[&str]) -> RuleSpec {
        RuleSpec {
            namespace: ns.into(),
            prefix: prefix.into(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            replicas_per_region: None,
            home: None,
            strict: false,
        }
    }

    #[test]
    fn first_match_wins_and_no_match_means_everywhere() {
        let set = RuleSet::default();
        let (set, narrow) = set.with_added(spec("app", "users/eu/vip/", &["eu-west"]), None, 1, &regions()).unwrap();
        let (set, wide) =
            set.with_added(spec("app", "users/eu/", &["eu-west", "eu-central"]), None, 1, &regions()).unwrap();
        assert_eq!(set.rule_for("app", "users/eu/vip/1").unwrap().id, narrow);
        assert_eq!(set.rule_for("app", "users/eu/2").unwrap().id, wide);
        assert!(set.rule_for("app", "users/us/2").is_none());
        assert!(set.rule_for("other", "users/eu/2").is_none());
        assert!(set.allows("us-east", "app", "users/us/1"));
        assert!(!set.allows("us-east", "app", "users/eu/1"));
        assert!(set.allows("eu-central", "app", "users/eu/1"));
        assert!(!set.allows("eu-central", "app", "users/eu/vip/1"));
        assert_eq!(set.version, 2);
    }

    #[test]
    fn invalid_rules_are_refused_naming_the_problem() {
        let set = RuleSet::default();
        let err = |s: RuleSpec| set.with_added(s, None, 1, &regions()).unwrap_err().to_string();
        assert!(err(spec("app", "x/", &[])).contains("no regions"));
        assert!(err(spec("app", "x/", &["mars"])).contains("unknown region \"mars\""));
        assert!(err(spec("", "x/", &["us-east"])).contains("namespace"));
        let mut homeless = spec("app", "x/", &["us-east"]);
        homeless.home = Some("eu-west".into());
        assert!(err(homeless).contains("home"));
        let (set, id) = set.with_added(spec("app", "x/", &["us-east"]), None, 1, &regions()).unwrap();
        let moved = set.with_changed(id, spec("app", "x/", &["eu-west"]), 1, &regions()).unwrap_err();
        assert!(moved.to_string().contains("no allowed home"), "{moved}");
        assert!(matches!(set.with_removed(99, 1), Err(RuleError::NoSuchRule(99))));
        assert_eq!(set.check_shape(), Ok(()));
        let mut forged = set.clone();
        forged.rules.push(forged.rules[0].clone());
        assert_eq!(forged.check_shape(), Err(RuleError::BadId(id)), "a repeated id");
        forged.rules.pop();
        forged.rules[0].spec.regions.clear();
        assert_eq!(forged.check_shape(), Err(RuleError::NoRegions));
        assert!(matches!(
            set.with_added(spec("app", "x/", &["eu-west"]), None, 1, &regions()),
            Err(RuleError::Duplicate(_))
        ));
    }

    #[test]
    fn newer_version_wins_whatever_the_order() {
        let base = RuleSet::default();
        let (a, _) = base.with_added(spec("app", "a/", &["us-east"]), None, 1, &regions()).unwrap();
        let (b, _) = base.with_added(spec("app", "b/", &["us-east"]), None, 2, &regions()).unwrap();
        let (mut x, mut y) = (a.clone(), b.clone());
        assert!(x.merge(&b));
        assert!(!y.merge(&a));
        assert_eq!(x, y, "ties at one version break by author, the same on every node");
    }

    #[test]
    fn narrowing_purges_and_widening_backfills() {
        let (v1, id) =
            RuleSet::default().with_added(spec("app", "x/", &["us-east", "eu-west"]), None, 1, &regions()).unwrap();
        let v2 = v1.with_changed(id, spec("app", "x/", &["us-east"]), 1, &regions()).unwrap();
        assert_eq!(v1.purges_for(&v2, "eu-west").len(), 1);
        assert!(v1.purges_for(&v2, "us-east").is_empty());
        assert!(v1.backfills_for(&v2, "eu-west").is_empty());
        assert_eq!(v2.backfills_for(&v1, "eu-west").len(), 1, "widening back");
        assert_eq!(v2.backfills_for(&v1, "eu-west")[0].1, vec!["us-east".to_string()], "from where the keys were");
        let v3 = v2.with_removed(id, 1).unwrap();
        assert_eq!(v2.backfills_for(&v3, "eu-central").len(), 1, "a removed rule's keys go everywhere");
        // A new rule purges the regions it excludes (the keys were everywhere before).
        assert_eq!(RuleSet::default().purges_for(&v1, "eu-central").len(), 1);
        // An unchanged rule purges nothing again.
        assert!(v1.purges_for(&v1, "eu-central").is_empty());
    }

    #[test]
    fn only_purges_of_keys_a_region_may_hold_delete_copies() {
        let (v1, id) = RuleSet::default().with_added(spec("app", "x/", &["us-east"]), None, 1, &regions()).unwrap();
        // A new rule takes keys that were everywhere.
        assert_eq!(RuleSet::default().purges_held(&v1, "eu-west").len(), 1);
        // Widening repeats the purge where the rule still excludes, deleting nothing held.
        let v2 = v1.with_changed(id, spec("app", "x/", &["us-east", "eu-west"]), 1, &regions()).unwrap();
        assert_eq!(v1.purges_for(&v2, "eu-central").len(), 1);
        assert!(v1.purges_held(&v2, "eu-central").is_empty());
        // Narrowing takes keys the region held.
        let v3 = v2.with_changed(id, spec("app", "x/", &["eu-west"]), 1, &regions()).unwrap();
        assert_eq!(v2.purges_held(&v3, "us-east").len(), 1);
        assert!(v2.purges_held(&v3, "eu-central").is_empty());
        // A changed prefix governs keys that were governed by something else.
        let v4 = v3.with_changed(id, spec("app", "y/", &["eu-west"]), 1, &regions()).unwrap();
        assert_eq!(v3.purges_held(&v4, "eu-central").len(), 1);
    }

    #[test]
    fn a_rule_placed_first_takes_overlapping_keys_and_must_share_a_region_with_their_rule() {
        let (v1, wide) = RuleSet::default().with_added(spec("app", "eu/", &["eu-west"]), None, 1, &regions()).unwrap();
        // Before it, disjoint: the eu/vip/ keys would have no allowed home.
        let err = v1.with_added(spec("app", "eu/vip/", &["us-east"]), Some(0), 1, &regions()).unwrap_err();
        assert!(matches!(err, RuleError::NoAllowedHome { id, .. } if id == wide), "{err}");
        // After it, it takes nothing (eu/ matches first): accepted.
        assert!(v1.with_added(spec("app", "eu/vip/", &["us-east"]), None, 1, &regions()).is_ok());
        // Before it and sharing a region: accepted, and the newly allowed region backfills.
        let (v2, vip) = v1.with_added(spec("app", "eu/vip/", &["eu-west", "us-east"]), Some(0), 1, &regions()).unwrap();
        let backfills = v1.backfills_for(&v2, "us-east");
        assert_eq!(backfills.len(), 1);
        assert_eq!((backfills[0].0.id, backfills[0].1.clone()), (vip, vec!["eu-west".to_string()]));
        // Other namespaces and disjoint prefixes are independent.
        assert!(v1.with_added(spec("other", "eu/", &["us-east"]), Some(0), 1, &regions()).is_ok());
        assert!(v1.with_added(spec("app", "us/", &["us-east"]), Some(0), 1, &regions()).is_ok());
        let mut counted = spec("app", "x/", &["us-east"]);
        counted.replicas_per_region = Some(2);
        assert!(matches!(v1.with_added(counted, None, 1, &regions()), Err(RuleError::ReplicasNotEnforced)));
    }
}
