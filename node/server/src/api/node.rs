//! The node façade: admits a client request (shutdown, in-flight limit, timeout, readiness,
//! residency), then runs it on the region when the node runs in one (routing, replication, quorum
//! reads) and on the local replica when it runs alone. Whatever surface a request came in by (QUIC,
//! HTTP, a peer's forward), it goes through [`Node::execute_as`] (a client: authorized first) or
//! [`Node::execute_forwarded`] (a peer's forward, authorized where the client came in).

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_client::proto::{
    BackupOp, CausalToken, ClusterOp, Consistency, ErrorCode, ErrorReply, Key, MapPart, MapPartReply, NodeStatus,
    Operation, Reply, ReplyBody, Request, RequestV1, ResidencyOp, Response, SetPart, SetPartReply, TraceContext,
};
use meridian_crdt::{Body, CrdtError, CrdtType, Entry, NodeId, VersionVector};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use crate::api::backup_admin::Backups;
use crate::auth::{Auth, Caller};
use crate::config::Config;
use crate::layout;
use crate::region::coordinator::{Coordinator, MoveRefused};
use crate::replica::{doc_changes_of, value_of, Change, Replica};
use crate::residency::{residency_refusal, Decision, Residency};
use crate::states;
use crate::storage::{Engine, StorageError};
use crate::store::sync_store::EngineSyncStore;

/// One Meridian node: its replica, and the region it coordinates in (if it runs in one).
pub struct Node {
    replica: Arc<Replica>,
    /// The region side (placement, fan-out, quorum reads, routing); `None`: the node runs alone.
    coordinator: Option<Arc<Coordinator>>,
    inflight: Arc<Semaphore>,
    /// Pipeline lanes running at once on the node (`api/pipeline.rs`): half the in-flight slots,
    /// so pipelines, however many, leave the other half to requests sent alone.
    pub(super) pipeline_lanes: Arc<Semaphore>,
    /// Checkpoints held for online backups in progress.
    backups: Arc<Backups>,
}

impl Node {
    /// Opens a node that runs alone over `engine`.
    pub fn open(config: Config, engine: Arc<dyn Engine>) -> Result<Arc<Node>, StorageError> {
        Ok(Node::new(Replica::open(config, engine)?, None))
    }

    /// The node over `replica`, coordinating in a region when `coordinator` is given.
    pub fn new(replica: Arc<Replica>, coordinator: Option<Arc<Coordinator>>) -> Arc<Node> {
        let inflight = Arc::new(Semaphore::new(replica.config().limits.max_inflight_requests));
        let pipeline_lanes = Arc::new(Semaphore::new((replica.config().limits.max_inflight_requests / 2).max(1)));
        let backups = Arc::new(Backups::open(&replica.config().data_dir));
        Arc::new(Node { replica, coordinator, inflight, pipeline_lanes, backups })
    }

    /// The local replica.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// The region side, if the node runs in a region.
    pub fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        self.coordinator.as_ref()
    }

    /// The node's data-residency rules and decisions.
    pub fn residency(&self) -> &Arc<Residency> {
        self.replica.residency()
    }

    /// This node's replica id.
    pub fn id(&self) -> NodeId {
        self.replica.id()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        self.replica.config()
    }

    /// The storage engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        self.replica.engine()
    }

    /// The anti-entropy store over this node's storage (see [`Replica::sync_store`]).
    pub fn sync_store(&self) -> EngineSyncStore {
        self.replica.sync_store()
    }

    /// A key's state, decoded.
    pub fn load_entry(&self, data_key: &[u8]) -> Result<Option<Entry>, ErrorReply> {
        Ok(self.replica.load_entry(data_key)?)
    }

    /// The version vector of every write visible here.
    pub fn version_vector(&self) -> VersionVector {
        self.replica.version_vector()
    }

    /// Counts a client connection opened (`+1`) or closed (`-1`).
    pub fn track_connection(&self, opened: bool) {
        self.replica.track_connection(opened);
    }

    /// From now on, new requests are refused with `shutting_down`.
    pub fn begin_shutdown(&self) {
        self.replica.begin_shutdown();
        if let Some(coordinator) = &self.coordinator {
            coordinator.stop_shipping();
        }
    }

    /// Waits until every write already started is durable (or failed).
    pub async fn wait_for_writes(&self) {
        self.replica.wait_for_writes().await;
    }

    /// The node's status.
    pub fn status(&self) -> Result<NodeStatus, ErrorReply> {
        Ok(self.replica.status()?)
    }

    /// Whether the node accepts requests: not shutting down, its storage writable, and joined to
    /// its region if it runs in one.
    pub fn is_ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// Why the node is not ready (`/readyz` answers it with 503), or `None` when it is.
    pub fn unready_reason(&self) -> Option<String> {
        if self.replica.is_shutting_down() {
            return Some("shutting down".into());
        }
        if let Some(failure) = self.replica.storage_failure() {
            return Some(format!("storage failed, no writes until restarted: {failure}"));
        }
        if self.coordinator.as_ref().is_some_and(|c| !c.cluster().has_joined()) {
            return Some("has not heard from its region yet".into());
        }
        None
    }

    /// Client authentication on this node.
    pub fn auth(&self) -> &Arc<Auth> {
        self.replica.auth()
    }

    /// Executes a client's request frame of any supported version, as `caller`.
    pub async fn execute(self: &Arc<Self>, request: Request, caller: &Caller) -> Response {
        let (request, trace) = request.into_parts();
        Response::V1(self.execute_traced(request, trace.as_ref(), caller).await)
    }

    /// Executes a version-1 request of a client: authorization, admission, timeout, metrics, then
    /// the operation.
    pub async fn execute_as(self: &Arc<Self>, request: RequestV1, caller: &Caller) -> Result<Reply, ErrorReply> {
        self.execute_routed(request, None, caller, false).await
    }

    /// [`execute_as`](Self::execute_as) for a request that is part of the caller's trace `trace`
    /// (HTTP `traceparent`, native `Request::V2`).
    pub async fn execute_traced(
        self: &Arc<Self>,
        request: RequestV1,
        trace: Option<&TraceContext>,
        caller: &Caller,
    ) -> Result<Reply, ErrorReply> {
        self.execute_routed(request, trace, caller, false).await
    }

    /// Executes a request in-process with every permission (tests, tools linked into the node).
    pub async fn execute_v1(self: &Arc<Self>, request: RequestV1) -> Result<Reply, ErrorReply> {
        self.execute_routed(request, None, &Caller::Open, false).await
    }

    /// Executes a request another node forwarded here: coordinated here even if this node's view of
    /// placement disagrees (a forward is never forwarded again, so views in flux cannot loop).
    pub async fn execute_forwarded(self: Arc<Self>, request: RequestV1) -> Result<Reply, ErrorReply> {
        self.execute_routed(request, None, &Caller::Forwarded, true).await
    }

    /// Every request's way in: authorization, then a pipeline's operations (each coming back
    /// here, `api/pipeline.rs`) or admission and the operation; tracing and metrics around it.
    pub(super) async fn execute_routed(
        self: &Arc<Self>,
        request: RequestV1,
        trace: Option<&TraceContext>,
        caller: &Caller,
        forwarded: bool,
    ) -> Result<Reply, ErrorReply> {
        let op_name = op_name(&request.op);
        let level = self.level_name(&request);
        let hop = if forwarded { "forwarded" } else { "client" };
        let started = Instant::now();
        let span = crate::telemetry::request_span(op_name, level, hop, trace);
        let result = match self.authorize(caller, &request.op) {
            Ok(()) if matches!(request.op, Operation::Pipeline(_)) => {
                self.run_pipeline(request, trace, caller, forwarded).instrument(span.clone()).await
            }
            Ok(()) => self.admit_and_run(request, caller, forwarded).instrument(span.clone()).await,
            Err(refused) => Err(refused),
        };
        if let Err(e) = &result {
            crate::telemetry::record_failure(&span, e.code.name());
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.name(),
        };
        // Labelled by the level the request ran at (its namespace's default when it named none)
        // and by whether it came from a client or was forwarded by another node (which counted
        // it too): SLOs count `hop="client"`.
        metrics::counter!("meridian_requests_total", "op" => op_name, "result" => outcome, "consistency" => level, "hop" => hop)
            .increment(1);
        metrics::histogram!("meridian_request_duration_seconds", "op" => op_name, "consistency" => level, "hop" => hop)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// The consistency level a keyed request runs at, for metrics; `none` for the others.
    fn level_name(&self, request: &RequestV1) -> &'static str {
        match &request.op {
            Operation::Write { key, .. }
            | Operation::Delete { key, .. }
            | Operation::Read { key, .. }
            | Operation::DocChanges { key, .. }
            | Operation::ReadSet { key, .. }
            | Operation::ReadMap { key, .. } => {
                self.replica.level(key, request.consistency).map_or("invalid", Consistency::name)
            }
            _ => "none",
        }
    }

    /// Whether `caller` may run `op` (a residency rule's namespace decides who administers it).
    fn authorize(&self, caller: &Caller, op: &Operation) -> Result<(), ErrorReply> {
        // The rules are read only for a residency edit by an authenticated caller, not per request.
        let rule_namespace = |id| self.residency().rules().rule(id).map(|r| r.spec.namespace.clone());
        self.auth().authorize(caller, op, rule_namespace)
    }

    async fn admit_and_run(
        self: &Arc<Self>,
        request: RequestV1,
        caller: &Caller,
        forwarded: bool,
    ) -> Result<Reply, ErrorReply> {
        self.refuse_if_shutting_down()?;
        let limits = &self.config().limits;
        let permit = self.inflight.clone().try_acquire_owned().map_err(|_| {
            ErrorReply::new(
                ErrorCode::Overloaded,
                format!(
                    "{} requests in flight (limits.max_inflight_requests); retry later",
                    limits.max_inflight_requests
                ),
            )
        })?;
        let timeout_ms = self.time_budget_ms(request.timeout_ms);
        let run = self.route_and_run(request, caller, forwarded, permit, Duration::from_millis(timeout_ms));
        match tokio::time::timeout(Duration::from_millis(timeout_ms), run).await {
            Ok(result) => result,
            Err(_) => Err(ErrorReply::new(
                ErrorCode::Timeout,
                format!("no answer within {timeout_ms} ms; a write may or may not have been applied (retry with the same idempotency id)"),
            )),
        }
    }

    /// How long a request asking for `timeout_ms` may take here (0: the node's default; never more
    /// than `limits.request_timeout_ms`).
    pub(super) fn time_budget_ms(&self, timeout_ms: u32) -> u64 {
        let limit = self.config().limits.request_timeout_ms;
        match timeout_ms {
            0 => limit,
            ms => u64::from(ms).min(limit),
        }
    }

    /// Refuses every request once the node is shutting down (the client retries on another node).
    pub(super) fn refuse_if_shutting_down(&self) -> Result<(), ErrorReply> {
        if self.replica.is_shutting_down() {
            return Err(ErrorReply::new(ErrorCode::ShuttingDown, "the node is shutting down; retry on another node"));
        }
        Ok(())
    }

    /// Refuses a data request on a node of a region that has not heard from its region yet.
    pub(super) fn refuse_before_joining(&self) -> Result<(), ErrorReply> {
        match &self.coordinator {
            Some(coordinator) if !coordinator.cluster().has_joined() => Err(ErrorReply::new(
                ErrorCode::QuorumUnavailable,
                "this node has not heard from its region yet (no seed answered); retry shortly or on another node",
            )),
            _ => Ok(()),
        }
    }

    /// Where an admitted request runs: refused or proxied by residency, listed or forwarded by the
    /// region, or run here.
    async fn route_and_run(
        self: &Arc<Self>,
        request: RequestV1,
        caller: &Caller,
        forwarded: bool,
        permit: OwnedSemaphorePermit,
        timeout: Duration,
    ) -> Result<Reply, ErrorReply> {
        if !matches!(
            request.op,
            Operation::Status
                | Operation::Readiness
                | Operation::Storage
                | Operation::DataCensus
                | Operation::Cluster(_)
                | Operation::Residency(_)
                | Operation::Auth(_)
                | Operation::Backup(_)
        ) {
            self.refuse_before_joining()?;
        }
        if let Some(data_key) = layout::keyed_data_key(&request.op) {
            let residency = self.residency();
            let refuse = |rule: &meridian_client::proto::Rule, why: &str| {
                residency.note_refused(rule, why);
                Err(ErrorReply::new(ErrorCode::ResidencyRefused, residency_refusal(rule, residency.region(), why)))
            };
            match residency.decide(&data_key) {
                Decision::Serve => {}
                Decision::Refuse(rule) => return refuse(&rule, "the rule is strict"),
                // A forward is never proxied again: views of the rules in flux cannot loop.
                Decision::Proxy(rule) if forwarded => {
                    return refuse(&rule, "a forwarded request is not proxied again");
                }
                Decision::Proxy(rule) => {
                    let Some(coordinator) = &self.coordinator else {
                        return refuse(&rule, "this node runs in no cluster to proxy to");
                    };
                    return Ok(coordinator.proxy(request, &rule, &data_key, timeout).await?);
                }
            }
        }
        if let (false, Some(coordinator)) = (forwarded, &self.coordinator) {
            if let Operation::ListKeys { limit, .. } = &request.op {
                let limit = (*limit).clamp(1, self.config().limits.max_list_keys) as usize;
                return Ok(coordinator.list_keys(request.clone(), limit).await?);
            }
            if let Some(replicas) = coordinator.route(&request) {
                return Ok(coordinator.forward(request, &replicas, timeout).await?);
            }
        }
        self.run(request, caller, permit).await
    }

    /// Runs one admitted request here. `permit` is its in-flight slot: a write hands it to its own
    /// task, so a write that outlives its request's timeout still counts against the limit.
    async fn run(
        self: &Arc<Self>,
        request: RequestV1,
        caller: &Caller,
        permit: OwnedSemaphorePermit,
    ) -> Result<Reply, ErrorReply> {
        let token = request.causal_token.unwrap_or_default();
        match request.op {
            Operation::Write { key, mutation, idempotency_id } => {
                let level = self.replica.level(&key, request.consistency)?;
                let max_value_bytes = self.config().limits.max_value_bytes;
                if mutation.payload_len() > max_value_bytes {
                    return Err(ErrorReply::new(
                        ErrorCode::TooLarge,
                        format!(
                            "the write carries {} bytes, limits.max_value_bytes is {max_value_bytes}",
                            mutation.payload_len()
                        ),
                    ));
                }
                // Automerge changes may be deflate-compressed: the cap holds for what they inflate
                // to, checked before automerge parses them (a few KB can inflate to gigabytes).
                if let meridian_crdt::Mutation::DocApply { changes } = &mutation {
                    let mut left = max_value_bytes;
                    for change in changes {
                        let len = meridian_crdt::doc::inflated_len(change, left).map_err(|e| match e {
                            meridian_crdt::CrdtError::TooLarge(_) => ErrorReply::new(
                                ErrorCode::TooLarge,
                                format!(
                                    "the write's automerge changes inflate to more than limits.max_value_bytes ({max_value_bytes} bytes)"
                                ),
                            ),
                            other => ErrorReply::from(crate::error::Error::Crdt(other)),
                        })?;
                        left -= len;
                    }
                }
                self.write(key, Change::Mutate(mutation), idempotency_id, token, level, permit).await
            }
            Operation::Delete { key, idempotency_id } => {
                let level = self.replica.level(&key, request.consistency)?;
                self.write(key, Change::Delete, idempotency_id, token, level, permit).await
            }
            Operation::Read { key, expected } => {
                let level = self.replica.level(&key, request.consistency)?;
                let (entry, token) = self.read_entry(&key, token, level).await?;
                let value = value_of(entry, expected).await?;
                Ok(Reply { causal_token: token, body: ReplyBody::Value(value) })
            }
            Operation::DocChanges { key, since_heads } => {
                let level = self.replica.level(&key, request.consistency)?;
                let (entry, token) = self.read_entry(&key, token, level).await?;
                Ok(Reply { causal_token: token, body: doc_changes_of(entry, since_heads).await? })
            }
            Operation::ReadSet { key, part } => {
                let level = self.replica.level(&key, request.consistency)?;
                let (reply, token) = self.read_set_part(&key, &part, token, level).await?;
                Ok(Reply { causal_token: token, body: ReplyBody::SetPart(reply) })
            }
            Operation::ReadMap { key, part } => {
                let level = self.replica.level(&key, request.consistency)?;
                let (reply, token) = self.read_map_part(&key, &part, token, level).await?;
                Ok(Reply { causal_token: token, body: ReplyBody::MapPart(reply) })
            }
            op @ Operation::ListKeys { .. } => {
                let request = RequestV1 { consistency: None, causal_token: Some(token), timeout_ms: 0, op };
                Ok(self.replica.list_local(&request).await?)
            }
            Operation::Status => Ok(Reply { causal_token: token, body: ReplyBody::Status(self.status()?) }),
            Operation::Readiness => {
                Ok(Reply { causal_token: token, body: ReplyBody::Readiness(self.unready_reason()) })
            }
            // `execute_routed` sends pipelines to `run_pipeline`, which runs their operations.
            Operation::Pipeline(_) => {
                Err(ErrorReply::new(ErrorCode::Internal, "a pipeline reached the single-operation path"))
            }
            Operation::DataCensus => {
                let report = self.replica.last_census();
                Ok(Reply { causal_token: token, body: ReplyBody::DataCensus(report) })
            }
            Operation::Storage => {
                let replica = self.replica.clone();
                let report = tokio::task::spawn_blocking(move || replica.storage_report())
                    .await
                    .map_err(crate::error::Error::internal)??;
                Ok(Reply { causal_token: token, body: ReplyBody::Storage(report) })
            }
            Operation::Cluster(op) => {
                let coordinator = self.coordinator.as_ref().ok_or_else(|| {
                    ErrorReply::new(
                        ErrorCode::Unsupported,
                        "this node runs alone (no [peer] section): it has no region",
                    )
                })?;
                if !matches!(op, ClusterOp::Status | ClusterOp::Placement { .. }) {
                    self.auth().audit_action(caller, &format!("cluster {op:?}"));
                }
                let change = match &op {
                    ClusterOp::Activate { node } => Some((node, meridian_replication::MemberState::Active)),
                    ClusterOp::Drain { node } => Some((node, meridian_replication::MemberState::Draining)),
                    ClusterOp::Remove { node } => Some((node, meridian_replication::MemberState::Removed)),
                    _ => None,
                };
                if let Some((node, to)) = change {
                    if let Some(id) = coordinator.cluster().find(node) {
                        coordinator.check_membership_change(id, to).await.map_err(|e| match e {
                            MoveRefused::Conflict(e) => ErrorReply::new(ErrorCode::BadRequest, e),
                            MoveRefused::NotYet(e) => ErrorReply::new(ErrorCode::QuorumUnavailable, e),
                        })?;
                    }
                }
                let report = crate::api::cluster_admin::cluster_op(coordinator, self.config(), op)?;
                Ok(Reply { causal_token: token, body: ReplyBody::Cluster(report) })
            }
            Operation::Residency(op) => {
                if matches!(op, ResidencyOp::Add { .. } | ResidencyOp::Change { .. } | ResidencyOp::Remove { .. }) {
                    self.auth().audit_action(caller, &format!("residency {op:?}"));
                }
                let report =
                    crate::api::residency_admin::residency_op(&self.replica, self.coordinator.as_ref(), op).await?;
                Ok(Reply { causal_token: token, body: ReplyBody::Residency(Box::new(report)) })
            }
            Operation::Auth(op) => {
                let change = op.is_change();
                let report = self.auth().run(caller, op)?;
                if let (true, Some(coordinator)) = (change, &self.coordinator) {
                    // Spread the change now rather than at the next gossip round (as rule changes).
                    coordinator.spread_auth();
                }
                Ok(Reply { causal_token: token, body: ReplyBody::Auth(Box::new(report)) })
            }
            Operation::Backup(op) => {
                if op == BackupOp::Begin {
                    self.auth().audit_action(caller, "backup begin");
                }
                let report = self.backups.run(&self.replica, op).await?;
                Ok(Reply { causal_token: token, body: ReplyBody::Backup(Box::new(report)) })
            }
        }
    }

    /// A write: replicated in the region, or on this node alone.
    async fn write(
        &self,
        key: Key,
        change: Change,
        idempotency_id: Option<meridian_client::proto::IdempotencyId>,
        token: CausalToken,
        level: Consistency,
        permit: OwnedSemaphorePermit,
    ) -> Result<Reply, ErrorReply> {
        Ok(match &self.coordinator {
            Some(coordinator) => coordinator.write(key, change, idempotency_id, token, level, permit).await?,
            None => self.replica.write(key, change, idempotency_id, token, level, permit).await?,
        })
    }

    /// A part read of a set (see [`Node::read_part`]).
    async fn read_set_part(
        &self,
        key: &Key,
        part: &SetPart,
        token: CausalToken,
        level: Consistency,
    ) -> Result<(SetPartReply, CausalToken), ErrorReply> {
        let budget = self.replica.page_budget();
        let here = |token| self.replica.read_set_part(key, part, token, level);
        let from_whole = |entry: Option<&Entry>| match entry.map(|e| (e.body(), e.exists())) {
            None => Ok(states::part_of_set(&Default::default(), false, part, budget)),
            Some((Body::Set(set), exists)) => Ok(states::part_of_set(set, exists, part, budget)),
            Some((other, _)) => Err(CrdtError::WrongType { actual: other.crdt_type(), requested: CrdtType::Set }),
        };
        self.read_part(key, token, level, here, from_whole).await
    }

    /// A part read of a map (see [`Node::read_part`]).
    async fn read_map_part(
        &self,
        key: &Key,
        part: &MapPart,
        token: CausalToken,
        level: Consistency,
    ) -> Result<(MapPartReply, CausalToken), ErrorReply> {
        let budget = self.replica.page_budget();
        let here = |token| self.replica.read_map_part(key, part, token, level);
        let from_whole = |entry: Option<&Entry>| match entry.map(|e| (e.body(), e.exists())) {
            None => states::part_of_map(&Default::default(), false, part, budget),
            Some((Body::Map(map), exists)) => states::part_of_map(map, exists, part, budget),
            Some((other, _)) => Err(CrdtError::WrongType { actual: other.crdt_type(), requested: CrdtType::Map }),
        };
        self.read_part(key, token, level, here, from_whole).await
    }

    /// A part read: from this replica (`here`) at `eventual` and `causal`; at the quorum levels, a
    /// quorum read of the whole state (with its write-back), answered from the joined state by
    /// `from_whole`.
    async fn read_part<R, Here>(
        &self,
        key: &Key,
        token: CausalToken,
        level: Consistency,
        here: impl FnOnce(CausalToken) -> Here,
        from_whole: impl FnOnce(Option<&Entry>) -> Result<R, CrdtError>,
    ) -> Result<(R, CausalToken), ErrorReply>
    where
        Here: std::future::Future<Output = Result<(R, CausalToken), crate::error::Error>>,
    {
        let quorum = matches!(level, Consistency::LocalQuorum | Consistency::Quorum);
        let Some(coordinator) = self.coordinator.as_ref().filter(|_| quorum) else {
            return Ok(here(token).await?);
        };
        let (entry, token) = coordinator.read_entry(key, token, level).await?;
        let reply = from_whole(entry.as_ref()).map_err(crate::error::Error::Crdt)?;
        Ok((reply, token))
    }

    /// A read: from a quorum of the region's replicas at the quorum levels, else from this replica.
    async fn read_entry(
        &self,
        key: &Key,
        token: CausalToken,
        level: Consistency,
    ) -> Result<(Option<Entry>, CausalToken), ErrorReply> {
        Ok(match &self.coordinator {
            Some(coordinator) => coordinator.read_entry(key, token, level).await?,
            None => self.replica.read_entry(key, token, level).await?,
        })
    }
}

pub(super) fn op_name(op: &Operation) -> &'static str {
    match op {
        Operation::Write { .. } => "write",
        Operation::Delete { .. } => "delete",
        Operation::Read { .. } => "read",
        Operation::DocChanges { .. } => "doc_changes",
        Operation::ReadSet { .. } => "read_set",
        Operation::ReadMap { .. } => "read_map",
        Operation::ListKeys { .. } => "list_keys",
        Operation::Status => "status",
        Operation::Readiness => "readiness",
        Operation::Storage => "storage",
        Operation::DataCensus => "data_census",
        Operation::Cluster(_) => "cluster",
        Operation::Residency(_) => "residency",
        Operation::Auth(_) => "auth",
        Operation::Backup(_) => "backup",
        Operation::Pipeline(_) => "pipeline",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;

    /// An automerge compressed-change chunk whose body deflates `inflated` zero bytes.
    fn deflate_bomb(inflated: usize) -> Vec<u8> {
        use std::io::Write as _;
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; inflated]).unwrap();
        let data = encoder.finish().unwrap();
        let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
        let mut len = data.len();
        while len >= 0x80 {
            chunk.push((len as u8) | 0x80);
            len >>= 7;
        }
        chunk.push(len as u8);
        chunk.extend(data);
        chunk
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn automerge_changes_are_capped_at_their_inflated_size() {
        let node = Node::open(Config::default(), Arc::new(MemoryEngine::new())).unwrap();
        let max = node.config().limits.max_value_bytes;
        let bomb = deflate_bomb(4 * max);
        assert!(bomb.len() < max / 16, "{} bytes on the wire", bomb.len());
        let write = |changes| RequestV1 {
            consistency: None,
            causal_token: None,
            timeout_ms: 0,
            op: Operation::Write {
                key: "docs/d".parse().unwrap(),
                mutation: meridian_crdt::Mutation::DocApply { changes },
                idempotency_id: None,
            },
        };
        let err = node.execute_v1(write(vec![bomb])).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge, "{err:?}");
        assert!(err.message.contains("inflate"), "{err:?}");
        // Several changes under the cap each, over it together.
        let err = node.execute_v1(write(vec![deflate_bomb(max / 2 + 1), deflate_bomb(max / 2 + 1)])).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge, "{err:?}");
        // Under the cap, a chunk that is not a valid change is a bad request as before.
        let err = node.execute_v1(write(vec![deflate_bomb(1024)])).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{err:?}");
        assert!(node.load_entry(&layout::data_key(&"docs/d".parse().unwrap())).unwrap().is_none());
    }
}
