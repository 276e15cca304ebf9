//! The one-line health verdict `meridian status` and `meridian cluster status` print first, and
//! put in their `--json` output: what an operator must look at, before the detail.

use meridian_client::proto::{ClusterReport, NodeStatus};
use serde::Serialize;

/// A region without a record or an anti-entropy round from another region for this long is
/// reported (safe-time reports and anti-entropy run every few hundred ms when the link is up).
pub const STALE_REGION_MS: u64 = 30_000;

/// The verdict: `ok` or `degraded`, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// `"ok"` or `"degraded"`.
    pub state: &'static str,
    /// One short sentence per problem, worst first.
    pub problems: Vec<String>,
    /// What was looked at, for the summary line.
    pub summary: String,
}

/// Judges a node's status, its readiness (`unready`: why it is not ready, as `/readyz` says) and
/// (when it runs in a region) its view of the cluster at `now_ms`.
pub fn judge(status: &NodeStatus, unready: Option<&str>, cluster: Option<&ClusterReport>, now_ms: u64) -> Health {
    let mut problems = Vec::new();
    // First: a node that takes no writes (its storage failed) is the most urgent thing to say.
    if let Some(reason) = unready {
        problems.push(format!("{} is not ready: {reason}", status.name));
    }
    let summary = match cluster {
        None => format!("{} runs alone (no region)", status.name),
        Some(report) => {
            let members: Vec<_> = report.members.iter().filter(|m| m.state != "removed").collect();
            let down: Vec<String> = members
                .iter()
                .filter(|m| m.liveness != "alive" && m.liveness != "self")
                .map(|m| format!("{} ({}, {})", m.name, m.region, m.liveness))
                .collect();
            if !down.is_empty() {
                problems.push(format!("{} of {} members not alive: {}", down.len(), members.len(), down.join(", ")));
            }
            let hints: u64 = members.iter().map(|m| m.hints_queued).sum();
            if hints > 0 {
                problems.push(format!("{hints} hints queued for replicas that missed writes"));
            }
            let joining: Vec<&str> = members.iter().filter(|m| m.state == "joining").map(|m| m.name.as_str()).collect();
            if !joining.is_empty() {
                problems.push(format!("joining, not yet activated: {}", joining.join(", ")));
            }
            if let Some(handoff) = &report.handoff {
                if handoff.partitions_synced < handoff.partitions_total {
                    problems.push(format!(
                        "handoff in progress: {}/{} partitions at their new owners",
                        handoff.partitions_synced, handoff.partitions_total
                    ));
                }
            }
            for region in &report.regions {
                let last = region.last_sync_ms.max(region.last_applied_ms);
                if last == 0 {
                    problems.push(format!("nothing received from region {} yet", region.from_region));
                } else if now_ms.saturating_sub(last) > STALE_REGION_MS {
                    problems.push(format!(
                        "nothing from region {} for {} s",
                        region.from_region,
                        now_ms.saturating_sub(last) / 1000
                    ));
                }
            }
            let lag = report.regions.iter().map(|r| r.lag_p99_ms).max();
            format!(
                "{}/{} members alive, {} regions{}",
                members.len() - down.len(),
                members.len(),
                1 + report.regions.len(),
                lag.map_or_else(String::new, |ms| format!(", worst p99 lag {ms} ms"))
            )
        }
    };
    Health { state: if problems.is_empty() { "ok" } else { "degraded" }, problems, summary }
}

impl Health {
    /// `OK: …` or `DEGRADED: …; …`, one line.
    pub fn line(&self) -> String {
        if self.problems.is_empty() {
            format!("OK: {}", self.summary)
        } else {
            format!("DEGRADED: {} ({})", self.problems.join("; "), self.summary)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_client::proto::{MemberReport, RegionLagReport};
    use meridian_crdt::NodeId;

    fn status() -> NodeStatus {
        NodeStatus {
            node_id: NodeId(1),
            name: "n1".into(),
            region: "eu".into(),
            zone: "a".into(),
            version: "0".into(),
            uptime_s: 1,
            keys_estimate: 0,
            log_entries: 0,
            version_vector: Default::default(),
            durability: "fsync".into(),
            client_connections: 0,
        }
    }

    fn member(name: &str, liveness: &str, state: &str) -> MemberReport {
        MemberReport {
            id: NodeId(name.len() as u64),
            name: name.into(),
            region: "eu".into(),
            zone: "a".into(),
            state: state.into(),
            liveness: liveness.into(),
            peer_addr: String::new(),
            client_addr: String::new(),
            http_addr: String::new(),
            partitions: 1,
            hints_queued: 0,
            last_sync_ms_ago: None,
        }
    }

    fn report(members: Vec<MemberReport>, regions: Vec<RegionLagReport>) -> ClusterReport {
        ClusterReport { local: "n1".into(), rf: 3, members, placement: None, handoff: None, regions }
    }

    #[test]
    fn a_healthy_region_is_ok_and_says_what_it_counted() {
        let region = RegionLagReport {
            from_region: "us".into(),
            lag_p99_ms: 120,
            last_sync_ms: 99_000,
            last_applied_ms: 99_500,
            ..Default::default()
        };
        let r = report(vec![member("n1", "self", "active"), member("n22", "alive", "active")], vec![region]);
        let health = judge(&status(), None, Some(&r), 100_000);
        assert_eq!(health.state, "ok");
        assert_eq!(health.line(), "OK: 2/2 members alive, 2 regions, worst p99 lag 120 ms");
        assert_eq!(judge(&status(), None, None, 0).line(), "OK: n1 runs alone (no region)");
        let failed = judge(&status(), Some("storage failed, no writes until restarted: disk full"), None, 0);
        assert_eq!(
            failed.line(),
            "DEGRADED: n1 is not ready: storage failed, no writes until restarted: disk full (n1 runs alone (no region))"
        );
    }

    #[test]
    fn every_problem_is_named() {
        let mut dead = member("n333", "dead", "active");
        dead.hints_queued = 7;
        let removed = member("n4444", "dead", "removed");
        let stale = RegionLagReport { from_region: "us".into(), last_sync_ms: 10_000, ..Default::default() };
        let never = RegionLagReport { from_region: "ap".into(), ..Default::default() };
        let mut r = report(
            vec![member("n1", "self", "active"), dead, removed, member("n55555", "alive", "joining")],
            vec![stale, never],
        );
        r.handoff = Some(meridian_client::proto::HandoffReport { partitions_synced: 3, partitions_total: 10 });
        let health = judge(&status(), None, Some(&r), 100_000);
        assert_eq!(health.state, "degraded");
        let line = health.line();
        for expected in [
            "1 of 3 members not alive: n333 (eu, dead)",
            "7 hints queued",
            "joining, not yet activated: n55555",
            "handoff in progress: 3/10",
            "nothing from region us for 90 s",
            "nothing received from region ap yet",
        ] {
            assert!(line.contains(expected), "{expected:?} missing from {line}");
        }
        assert!(!line.contains("n4444"), "removed members are not problems: {line}");
    }
}
