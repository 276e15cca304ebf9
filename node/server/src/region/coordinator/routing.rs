//! Requests this node does not serve itself: forwarded to a replica of their key in this region,
//! proxied to a region a residency rule allows, or (listings) merged from every node of the region.
use std::time::Duration;

use meridian_client::proto::{ErrorCode, Reply, RequestV1};
use meridian_crdt::NodeId;
use meridian_replication::Liveness;

use super::{unavailable, Coordinator};
use crate::error::Error;
use crate::layout;
use crate::peer::protocol::{PeerCallError, PeerMessageV1, PeerReplyV1, UNDECODABLE_REFUSAL};

impl Coordinator {
    /// Runs a client request for a key this region may not hold in the nearest region that may:
    /// the rule's home region first (if set), then the allowed regions by measured round trip. The
    /// request goes to the key's replicas there and is coordinated by one of them; this node only
    /// passes it on (it never stores the key). If no allowed region answers, the error is a
    /// retryable `quorum_unavailable` that names the rule.
    pub async fn proxy(
        &self,
        request: RequestV1,
        rule: &meridian_client::proto::Rule,
        data_key: &[u8],
        timeout: Duration,
    ) -> Result<Reply, Error> {
        let residency = &self.residency;
        let partition = layout::partition_of(data_key);
        let mut regions: Vec<(bool, Duration, String, Vec<NodeId>)> = Vec::new();
        for (region, replicas) in self.cluster.remote_replicas(partition) {
            if !meridian_replication::residency::allows(rule, &region) || replicas.is_empty() {
                continue;
            }
            let home = rule.spec.home.as_deref() == Some(region.as_str());
            let mut rtt = Duration::MAX;
            for replica in replicas.iter().filter(|r| self.cluster.reachable(**r)) {
                if let Some(addr) = self.cluster.peer_addr(*replica) {
                    if let Ok(Ok(connection)) =
                        tokio::time::timeout(Duration::from_millis(200), self.pool.get(addr, None)).await
                    {
                        rtt = rtt.min(connection.rtt());
                    }
                }
            }
            regions.push((!home, rtt, region, replicas));
        }
        regions.sort();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut failures = Vec::new();
        for (_, _, region, replicas) in &regions {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.forward(request.clone(), replicas, left).await {
                Err(e) if e.code() == ErrorCode::QuorumUnavailable && !request.op.is_write() => {
                    failures.push(format!("{region}: {e}"));
                }
                result => {
                    residency.note_proxied(rule, region);
                    return result;
                }
            }
        }
        // Not a refusal by the rule: the regions it allows are unreachable from here for now, so
        // the error is a retryable unavailability that still names the rule.
        let why = if regions.is_empty() {
            "no node of an allowed region is known".to_string()
        } else {
            format!("no allowed region answered ({})", failures.join("; "))
        };
        let id = rule.id;
        residency.audit().record("proxy", &format!("rule {id}: failed"), &format!("rule {id}: proxy failed: {why}"));
        Err(Error::QuorumUnavailable(crate::residency::residency_refusal(
            rule,
            residency.region(),
            &format!("{why}; retry later"),
        )))
    }

    /// Relays a client request to a replica of its key: replicas heard from recently first.
    ///
    /// A read that fails on one replica is tried on the next. A write is sent to one replica only:
    /// after a timeout it may have been applied there, and its idempotency record lives on the
    /// replica that coordinated it — so the client retries (same idempotency id), and the retry goes
    /// to the same first live replica, which recognises it.
    pub async fn forward(
        &self,
        mut request: RequestV1,
        replicas: &[NodeId],
        timeout: Duration,
    ) -> Result<Reply, Error> {
        let mut failures = Vec::new();
        let mut targets: Vec<NodeId> =
            replicas.iter().copied().filter(|r| *r != self.local && self.cluster.reachable(*r)).collect();
        targets.sort_by_key(|r| self.cluster.liveness(*r) != Liveness::Alive);
        let is_write = request.op.is_write();
        if is_write {
            targets.truncate(1);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut undecodable = 0;
        for (i, &target) in targets.iter().enumerate() {
            metrics::counter!("meridian_forwarded_requests_total").increment(1);
            // Every replica but the last gets half of what is left, so one that died a moment ago
            // (not yet suspected) cannot take the whole budget; the replica is told its share, less
            // a margin for the way back, so it answers before we give up on it.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let budget = if i + 1 == targets.len() { left } else { left / 2 };
            let remote_ms = budget.saturating_sub(budget / 10).as_millis();
            request.timeout_ms = u32::try_from(remote_ms).unwrap_or(u32::MAX).max(1);
            match self.call(target, PeerMessageV1::Forward(request.clone()), budget).await {
                Ok(PeerReplyV1::Forwarded(result)) => return result.map_err(Error::Remote),
                Ok(other) => failures.push(format!("{}: unexpected reply {other:?}", self.name(target))),
                Err(PeerCallError::Refused(why)) if why.starts_with(UNDECODABLE_REFUSAL) => {
                    undecodable += 1;
                    failures.push(format!("{}: {why}", self.name(target)));
                }
                Err(e) => failures.push(format!("{}: {e}", self.name(target))),
            }
        }
        // Every replica runs a release that does not know the operation (a rolling upgrade): say
        // so as the node itself would, so a client can fall back (the SDK's part reads do).
        if undecodable > 0 && undecodable == targets.len() {
            return Err(Error::Unsupported(format!(
                "no replica of the key understands this request yet (an older release): {}",
                failures.join("; ")
            )));
        }
        Err(unavailable(format!(
            "this node holds no replica of the key and no replica answered ({} of {} tried: {}){}",
            targets.len(),
            replicas.len(),
            if failures.is_empty() { "all are down".to_string() } else { failures.join("; ") },
            if is_write { "; the write may have been applied: retry with the same idempotency id" } else { "" }
        )))
    }

    /// A page of a key listing across this region: each serving node lists its own keys (every
    /// partition it holds) and the pages are merged. A key lives on several replicas, so a node
    /// that does not answer is tolerated as long as every partition has a replica that did.
    ///
    /// Each node's page is complete only up to its own cursor (a node may stop early, after many
    /// deleted keys), so the merged page is cut at the smallest cursor any node returned.
    pub async fn list_keys(&self, request: RequestV1, limit: usize) -> Result<Reply, Error> {
        let targets: Vec<NodeId> = self
            .cluster
            .members()
            .into_iter()
            .filter(|m| m.id != self.local && m.member.state.serves() && self.cluster.reachable(m.id))
            // Every region holds every partition: this region's nodes answer without a WAN trip.
            .filter(|m| m.member.region == self.cluster.region())
            .map(|m| m.id)
            .collect();
        let remote = targets.iter().map(|&target| {
            let request = request.clone();
            async move {
                match self.call(target, PeerMessageV1::Forward(request), self.peer_timeout).await {
                    Ok(PeerReplyV1::Forwarded(result)) => (target, result.map_err(Error::Remote)),
                    Ok(other) => (target, Err(Error::Internal(format!("unexpected reply {other:?}")))),
                    Err(e) => (target, Err(unavailable(e.to_string()))),
                }
            }
        });
        let (local, remote) = tokio::join!(self.replica.list_local(&request), futures::future::join_all(remote));
        let mut answered = std::collections::BTreeSet::new();
        let mut names: std::collections::BTreeMap<String, meridian_client::proto::KeyInfo> = Default::default();
        let mut cut: Option<String> = None;
        let mut token = None;
        for (from, result) in std::iter::once((self.local, local)).chain(remote) {
            let Ok(reply) = result else { continue };
            let meridian_client::proto::ReplyBody::Keys { keys, next } = reply.body else { continue };
            answered.insert(from);
            token.get_or_insert(reply.causal_token);
            for key in keys {
                names.entry(key.name.clone()).or_insert(key);
            }
            if let Some(next) = next {
                cut = Some(cut.map_or(next.clone(), |c: String| c.min(next)));
            }
        }
        let placements = self.cluster.all_placements();
        if let Some(p) = placements.iter().position(|replicas| !replicas.iter().any(|r| answered.contains(r))) {
            return Err(unavailable(format!(
                "no replica of partition {p} answered the listing ({} of {} nodes answered)",
                answered.len(),
                targets.len() + 1
            )));
        }
        let mut keys: Vec<_> =
            names.into_values().filter(|k| cut.as_ref().is_none_or(|c| k.name <= *c)).take(limit + 1).collect();
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next = if more || cut.is_some() {
            Some(keys.last().map_or_else(|| cut.clone().unwrap_or_default(), |k| k.name.clone()))
        } else {
            None
        };
        Ok(Reply {
            causal_token: token.unwrap_or_default(),
            body: meridian_client::proto::ReplyBody::Keys { keys, next },
        })
    }
}
