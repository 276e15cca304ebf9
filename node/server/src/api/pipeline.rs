//! Pipelines: many keyed operations in one request frame, answered in one frame
//! (`Operation::Pipeline`), so a client pays one stream, one frame and one reply for many
//! operations, as Redis clients pipeline.
//!
//! A pipeline adds no semantics of its own: each operation runs as a request of its own through
//! `Node::execute_routed`, with the pipeline's level, token and what is left of its timeout, so
//! it is authorized, admitted (one in-flight slot each), routed, replicated and counted exactly as
//! if it had come alone, and a refused operation fails only itself. What the pipeline decides is
//! the order:
//! - operations on the same key run one after another in the order given, each carrying the token
//!   of the ones before it, so at `causal` and stronger levels a read sees the writes before it
//!   whichever replica serves it;
//! - different keys run concurrently (up to [`PIPELINE_LANES`] at once), so their writes share the
//!   committer's group commits and the region's push batches; they are not ordered, not even
//!   causally: a write that must depend on another key's write is sent after its answer.
//!
//! At `eventual`, as for requests sent alone, a read forwarded to another replica may miss the
//! writes before it in its lane (the token it carries is not waited for at that level).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use meridian_client::proto::TraceContext;
use meridian_client::proto::{CausalToken, Consistency, ErrorCode, ErrorReply, Operation, Reply, ReplyBody, RequestV1};

use super::node::{op_name, Node};
use crate::auth::Caller;
use crate::layout;

/// How many of one pipeline's keys run at once; 64 is more writes than a commit group usually
/// gathers, so the bound does not thin the groups. Across pipelines, lanes also take one of the
/// node's pipeline lanes (half of `limits.max_inflight_requests`), so pipelines cannot take every
/// in-flight slot (each running operation holds one) from requests sent alone.
pub const PIPELINE_LANES: usize = 64;

/// A pipeline's operations on one key, in the order given, with their places in the pipeline.
type Lane = Vec<(usize, Operation)>;

impl Node {
    /// Runs the operations of an `Operation::Pipeline` request (see the module documentation) and
    /// answers them in one [`ReplyBody::Pipeline`], in order. The pipeline itself is refused whole,
    /// before any operation runs, when it is longer than `limits.max_pipeline_ops`, holds an
    /// operation that names no key (a nested pipeline, an administrative operation) or one
    /// idempotency id twice, and when the node is shutting down or has not joined its region yet
    /// (errors the client retries elsewhere, as for a request sent alone).
    pub(super) async fn run_pipeline(
        self: &Arc<Self>,
        request: RequestV1,
        trace: Option<&TraceContext>,
        caller: &Caller,
        forwarded: bool,
    ) -> Result<Reply, ErrorReply> {
        let RequestV1 { consistency, causal_token, timeout_ms, op } = request;
        let Operation::Pipeline(ops) = op else {
            return Err(ErrorReply::new(
                ErrorCode::Internal,
                "run_pipeline was handed a request that is not a pipeline",
            ));
        };
        if forwarded {
            // Coordinators forward a pipeline's operations one by one, never the pipeline.
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                "a pipeline cannot be forwarded; forward its operations",
            ));
        }
        check_pipeline(&ops, self.config().limits.max_pipeline_ops)?;
        self.refuse_if_shutting_down()?;
        self.refuse_before_joining()?;
        let limits = &self.config().limits;
        let budget_ms = self.time_budget_ms(timeout_ms);
        // A tenth of the budget is kept for the reply: the client's clock started before the frame
        // was read, and a reply after it gave up would lose every answer.
        let deadline = Instant::now() + Duration::from_millis(budget_ms - budget_ms / 10);
        let count = ops.len();
        let mut token = causal_token.clone().unwrap_or_default();
        let runs = lanes_by_key(ops)
            .into_iter()
            .map(|lane| self.run_lane(lane, consistency, causal_token.clone(), deadline, trace, caller));
        let mut answers: Vec<Option<Result<ReplyBody, ErrorReply>>> = (0..count).map(|_| None).collect();
        // The reply is held to what a request frame may carry, whatever the node's larger cap for
        // one key's state: a client's frame cap is at least that, and the answers are kept in
        // memory until all are in.
        let mut reply_room = limits.max_frame_bytes.saturating_sub(REPLY_OVERHEAD_BYTES);
        let mut lanes = futures::stream::iter(runs).buffer_unordered(PIPELINE_LANES);
        while let Some(lane) = lanes.next().await {
            for (index, answer) in lane {
                let answer = answer.map(|reply| {
                    token.merge(&reply.causal_token);
                    reply.body
                });
                let bytes = meridian_crdt::codec::encoded_len(&answer);
                answers[index] = Some(if bytes <= reply_room {
                    reply_room -= bytes;
                    answer
                } else {
                    Err(ErrorReply::new(
                        ErrorCode::TooLarge,
                        format!(
                            "this answer ({bytes} bytes) would take the pipeline's reply over limits.max_frame_bytes \
                             ({}); the operation ran (a write was applied: run it again with the same idempotency \
                             id to get its answer), read the key alone or in a smaller pipeline",
                            limits.max_frame_bytes
                        ),
                    ))
                });
            }
        }
        let answers = answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| Err(ErrorReply::new(ErrorCode::Internal, "the operation was not run")))
            })
            .collect();
        Ok(Reply { causal_token: token, body: ReplyBody::Pipeline(answers) })
    }

    /// Runs one key's operations in order, each with the tokens of the ones before it merged in,
    /// holding one of the node's pipeline lanes, until the pipeline's deadline (operations not
    /// started by then answer `timeout`).
    async fn run_lane(
        self: &Arc<Self>,
        lane: Lane,
        consistency: Option<Consistency>,
        mut token: Option<CausalToken>,
        deadline: Instant,
        trace: Option<&TraceContext>,
        caller: &Caller,
    ) -> Vec<(usize, Result<Reply, ErrorReply>)> {
        let mut answers = Vec::with_capacity(lane.len());
        let permit = tokio::time::timeout_at(deadline.into(), self.pipeline_lanes.clone().acquire_owned()).await;
        let Ok(Ok(_permit)) = permit else {
            let busy = || {
                ErrorReply::new(
                    ErrorCode::Overloaded,
                    "the node's pipeline lanes stayed busy until the pipeline's timeout; the operation did not run",
                )
            };
            return lane.into_iter().map(|(index, _)| (index, Err(busy()))).collect();
        };
        for (index, op) in lane {
            let left_ms = deadline.saturating_duration_since(Instant::now()).as_millis();
            if left_ms == 0 {
                let late = ErrorReply::new(
                    ErrorCode::Timeout,
                    "the pipeline's timeout passed before this operation started; it did not run",
                );
                answers.push((index, Err(late)));
                continue;
            }
            let timeout_ms = u32::try_from(left_ms).unwrap_or(u32::MAX);
            let request = RequestV1 { consistency, causal_token: token.clone(), timeout_ms, op };
            // Boxed: `execute_routed` is what called this pipeline (a pipeline inside a pipeline is
            // refused above, but the future's type still recurses).
            let answer = Box::pin(self.execute_routed(request, trace, caller, false)).await;
            if let Ok(reply) = &answer {
                token.get_or_insert_with(CausalToken::default).merge(&reply.causal_token);
            }
            answers.push((index, answer));
        }
        answers
    }
}

/// Room kept in a pipeline's reply frame for what surrounds the answers (the token, the tags).
const REPLY_OVERHEAD_BYTES: usize = 64 << 10;

/// Refuses a pipeline that may not run at all: too long, an operation that names no key, or one
/// idempotency id on two operations (two keys' lanes would both apply it; a retry could then not
/// tell which one the id stands for).
fn check_pipeline(ops: &[Operation], max_ops: u32) -> Result<(), ErrorReply> {
    if ops.len() > max_ops as usize {
        return Err(ErrorReply::new(
            ErrorCode::TooLarge,
            format!(
                "the pipeline holds {} operations, more than limits.max_pipeline_ops ({max_ops}); split it",
                ops.len()
            ),
        ));
    }
    let nothing_ran = "; nothing in the pipeline ran";
    if let Some((index, op)) = ops.iter().enumerate().find(|(_, op)| !op.is_keyed()) {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!(
                "operation {index} of the pipeline is a {}: only keyed operations (write, delete, read, doc_changes, \
                 read_set, read_map) may be pipelined{nothing_ran}",
                op_name(op)
            ),
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for (index, op) in ops.iter().enumerate() {
        if let Operation::Write { idempotency_id: Some(id), .. } | Operation::Delete { idempotency_id: Some(id), .. } =
            op
        {
            if !ids.insert(id.0) {
                return Err(ErrorReply::new(
                    ErrorCode::BadRequest,
                    format!(
                        "operation {index} of the pipeline reuses the idempotency id of an earlier one{nothing_ran}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Splits a pipeline's operations into lanes, one per key, each in the order given; the lanes are
/// in the order of their keys' first operations. An operation whose key is invalid runs alone (it
/// fails with its own error).
fn lanes_by_key(ops: Vec<Operation>) -> Vec<Lane> {
    let mut lanes: Vec<Lane> = Vec::new();
    let mut lane_of: HashMap<Vec<u8>, usize> = HashMap::new();
    for (index, op) in ops.into_iter().enumerate() {
        let lane = match layout::keyed_data_key(&op) {
            Some(key) => *lane_of.entry(key).or_insert_with(|| {
                lanes.push(Vec::new());
                lanes.len() - 1
            }),
            None => {
                lanes.push(Vec::new());
                lanes.len() - 1
            }
        };
        lanes[lane].push((index, op));
    }
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::storage::MemoryEngine;
    use meridian_client::proto::Key;
    use meridian_crdt::{Mutation, Value};

    fn key(name: &str) -> Key {
        name.parse().unwrap()
    }

    fn write(name: &str, mutation: Mutation) -> Operation {
        Operation::Write { key: key(name), mutation, idempotency_id: None }
    }

    fn read(name: &str) -> Operation {
        Operation::Read { key: key(name), expected: None }
    }

    fn pipeline(ops: Vec<Operation>) -> RequestV1 {
        RequestV1 { consistency: None, causal_token: None, timeout_ms: 0, op: Operation::Pipeline(ops) }
    }

    async fn answers(node: &Arc<Node>, ops: Vec<Operation>) -> Vec<Result<ReplyBody, ErrorReply>> {
        match node.execute_v1(pipeline(ops)).await.unwrap().body {
            ReplyBody::Pipeline(answers) => answers,
            other => panic!("not a pipeline's answer: {other:?}"),
        }
    }

    #[test]
    fn lanes_keep_each_keys_order_and_the_keys_first_appearance() {
        let ops = vec![read("a/1"), read("a/2"), read("a/1"), read("a/3"), read("a/2"), read("a/1")];
        let lanes: Vec<Vec<usize>> =
            lanes_by_key(ops).into_iter().map(|lane| lane.into_iter().map(|(i, _)| i).collect()).collect();
        assert_eq!(lanes, vec![vec![0, 2, 5], vec![1, 4], vec![3]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipeline_answers_in_order_and_each_key_sees_the_operations_before_it() {
        let node = Node::open(Config::default(), Arc::new(MemoryEngine::new())).unwrap();
        let mut ops = Vec::new();
        for n in 0..20 {
            ops.push(write("app/visits", Mutation::CounterAdd { amount: 1 }));
            ops.push(write(&format!("app/r{n}"), Mutation::RegisterSet { value: vec![n as u8] }));
            ops.push(read(&format!("app/r{n}")));
        }
        ops.push(Operation::Delete { key: key("app/r0"), idempotency_id: None });
        ops.push(read("app/r0"));
        ops.push(read("app/visits"));
        let answers = answers(&node, ops).await;
        assert_eq!(answers.len(), 63);
        for n in 0..20usize {
            // The counter's writes ran in order: the n-th saw n earlier increments.
            assert_eq!(answers[3 * n], Ok(ReplyBody::Written { counter: Some(n as i64 + 1) }), "write {n}");
            assert_eq!(answers[3 * n + 2], Ok(ReplyBody::Value(Some(Value::Register(Some(vec![n as u8]))))));
        }
        assert_eq!(answers[60], Ok(ReplyBody::Deleted { existed: true }));
        assert_eq!(answers[61], Ok(ReplyBody::Value(None)), "the read after the delete");
        assert_eq!(answers[62], Ok(ReplyBody::Value(Some(Value::Counter(20)))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_operation_fails_alone_and_a_malformed_pipeline_runs_nothing() {
        let node = Node::open(Config::default(), Arc::new(MemoryEngine::new())).unwrap();
        let answers = answers(
            &node,
            vec![
                write("app/c", Mutation::CounterAdd { amount: 2 }),
                write("app/c", Mutation::RegisterSet { value: b"x".to_vec() }),
                write("app/d", Mutation::CounterAdd { amount: 3 }),
            ],
        )
        .await;
        assert_eq!(answers[0], Ok(ReplyBody::Written { counter: Some(2) }));
        assert_eq!(answers[1].as_ref().unwrap_err().code, ErrorCode::WrongType, "{answers:?}");
        assert_eq!(answers[2], Ok(ReplyBody::Written { counter: Some(3) }));

        // Refused whole: nothing in it runs.
        let refused = |ops| async { node.execute_v1(pipeline(ops)).await.unwrap_err() };
        let nested =
            refused(vec![write("app/e", Mutation::CounterAdd { amount: 1 }), Operation::Pipeline(vec![])]).await;
        assert_eq!(nested.code, ErrorCode::BadRequest, "{nested:?}");
        assert!(nested.message.contains("operation 1"), "{nested:?}");
        let admin = refused(vec![write("app/e", Mutation::CounterAdd { amount: 1 }), Operation::Status]).await;
        assert_eq!(admin.code, ErrorCode::BadRequest, "{admin:?}");
        let max = node.config().limits.max_pipeline_ops as usize;
        let long = refused((0..=max).map(|_| write("app/e", Mutation::CounterAdd { amount: 1 })).collect()).await;
        assert_eq!(long.code, ErrorCode::TooLarge, "{long:?}");
        let id = Some(meridian_client::proto::IdempotencyId(7));
        let twice = refused(vec![
            Operation::Write { key: key("app/e"), mutation: Mutation::CounterAdd { amount: 1 }, idempotency_id: id },
            Operation::Delete { key: key("app/f"), idempotency_id: id },
        ])
        .await;
        assert_eq!(twice.code, ErrorCode::BadRequest, "{twice:?}");
        assert!(twice.message.contains("idempotency id"), "{twice:?}");
        let value = node.execute_v1(RequestV1 { op: read("app/e"), ..pipeline(vec![]) }).await.unwrap().body;
        assert_eq!(value, ReplyBody::Value(None), "a refused pipeline ran none of its writes");

        // A node shutting down refuses the pipeline itself, so the client retries it elsewhere.
        node.begin_shutdown();
        let closing = refused(vec![read("app/e")]).await;
        assert_eq!(closing.code, ErrorCode::ShuttingDown, "{closing:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_not_started_by_the_deadline_do_not_run_and_say_so() {
        let mut config = Config::default();
        config.limits.max_pipeline_ops = 5_000;
        let node = Node::open(config, Arc::new(MemoryEngine::new())).unwrap();
        let mut ops: Vec<Operation> =
            (0..3000).map(|_| write("app/slow", Mutation::CounterAdd { amount: 1 })).collect();
        ops.push(read("app/other"));
        let request = RequestV1 { timeout_ms: 20, ..pipeline(ops) };
        let answers = match node.execute_v1(request).await.unwrap().body {
            ReplyBody::Pipeline(answers) => answers,
            other => panic!("{other:?}"),
        };
        let ran = answers[..3000].iter().filter(|a| a.is_ok()).count();
        let late = answers[..3000].iter().filter(|a| a.as_ref().is_err_and(|e| e.code == ErrorCode::Timeout)).count();
        assert_eq!(ran + late, 3000, "every write either ran or timed out: {:?}", &answers[..3]);
        assert!(late > 0 && ran > 0, "{ran} ran, {late} timed out");
        // What ran is exactly what was applied: nothing lost, nothing extra.
        let counter = node.execute_v1(RequestV1 { op: read("app/slow"), ..pipeline(vec![]) }).await.unwrap().body;
        assert_eq!(counter, ReplyBody::Value(Some(Value::Counter(ran as i64))));
        assert_eq!(answers[3000], Ok(ReplyBody::Value(None)), "another key's lane ran");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_past_the_frame_cap_are_refused_one_by_one() {
        let mut config = Config::default();
        config.limits.max_frame_bytes = REPLY_OVERHEAD_BYTES + 6_000;
        let node = Node::open(config, Arc::new(MemoryEngine::new())).unwrap();
        let writes = (0..10).map(|n| write(&format!("app/big{n}"), Mutation::RegisterSet { value: vec![b'x'; 2_000] }));
        assert!(answers(&node, writes.collect()).await.iter().all(Result::is_ok));
        let answers = answers(&node, (0..10).map(|n| read(&format!("app/big{n}"))).collect()).await;
        let fitted = answers.iter().filter(|a| a.is_ok()).count();
        assert!((1..=3).contains(&fitted), "{fitted} answers of ~2 kB fit in 6 kB");
        for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
            assert_eq!(refused.code, ErrorCode::TooLarge, "{refused:?}");
        }
    }
}
