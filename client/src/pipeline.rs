//! Pipelines: many keyed operations sent in one request frame and answered in one frame, as Redis
//! clients pipeline. A pipeline saves the per-request costs (a stream, a frame, a reply, a task on
//! the node) that dominate small operations; it adds no transaction: each operation succeeds or
//! fails on its own.
//!
//! The node runs operations on the same key in the order they were added and different keys
//! concurrently, so writes to many keys share the node's group commits. Operations on different
//! keys are not ordered, not even causally within a session: when a write must depend on another
//! key's write, send it after that one's answer. A read sees the writes to its key before it in the
//! pipeline at `causal` and stronger levels (at `eventual`, as with separate requests, a read served
//! by another replica may not).
//!
//! Every write gets its idempotency id when it is added, so running the same pipeline again (the
//! SDK's own retries, a caller's retry after an error, the one-by-one fallback for an older node)
//! applies none of its writes twice: those already applied answer as they did the first time.

use meridian_crdt::Mutation;

use crate::handles::{predates_the_operation, unexpected, Ctx};
use crate::proto::{Consistency, IdempotencyId, Operation, ReplyBody};
use crate::{Error, IntoKey};

/// A batch of keyed operations built up, then sent with [`Pipeline::run`] as one request.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
/// use meridian_client::ReplyBody;
/// let mut pipeline = client.pipeline();
/// for n in 0..100 {
///     pipeline.set(format!("users/u{n}/name"), format!("user {n}"));
/// }
/// pipeline.incr("app/signups", 100).get("users/u7/name");
/// let answers = pipeline.run().await?; // one answer per operation, in order
/// assert!(matches!(answers[100], Ok(ReplyBody::Written { counter: Some(_) })));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Pipeline {
    ctx: Ctx,
    ops: Vec<Operation>,
    /// The first operation that could not be built (an invalid key): [`Pipeline::run`] returns it
    /// and sends nothing.
    invalid: Option<Error>,
}

impl Pipeline {
    pub(crate) fn new(ctx: Ctx) -> Pipeline {
        Pipeline { ctx, ops: Vec::new(), invalid: None }
    }

    /// Runs every operation at `consistency`, overriding the client's default (or the session's).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// use meridian_client::Consistency;
    /// let mut pipeline = client.pipeline().consistency(Consistency::LocalQuorum);
    /// pipeline.incr("app/visits", 1);
    /// pipeline.run().await?;
    /// # Ok(()) }
    /// ```
    pub fn consistency(mut self, consistency: Consistency) -> Pipeline {
        self.ctx.consistency = Some(consistency);
        self
    }

    /// How many operations the pipeline holds.
    pub fn len(&self) -> usize {
        self.ops.len() + usize::from(self.invalid.is_some())
    }

    /// Whether the pipeline holds no operation.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a typed mutation of `key` (any type: see [`Mutation`]); its answer is
    /// [`ReplyBody::Written`].
    pub fn write(&mut self, key: impl IntoKey, mutation: Mutation) -> &mut Pipeline {
        self.push(key, |key| Operation::Write { key, mutation, idempotency_id: Some(IdempotencyId::random()) })
    }

    /// Adds `by` to the counter at `key`; the answer's `counter` is its value after the write.
    pub fn incr(&mut self, key: impl IntoKey, by: i64) -> &mut Pipeline {
        self.write(key, Mutation::CounterAdd { amount: by })
    }

    /// Sets the register at `key`.
    pub fn set(&mut self, key: impl IntoKey, value: impl Into<Vec<u8>>) -> &mut Pipeline {
        self.write(key, Mutation::RegisterSet { value: value.into() })
    }

    /// Adds members to the set at `key`.
    pub fn sadd<M: Into<Vec<u8>>>(&mut self, key: impl IntoKey, members: impl IntoIterator<Item = M>) -> &mut Pipeline {
        self.write(key, Mutation::SetAdd { members: members.into_iter().map(Into::into).collect() })
    }

    /// Reads `key`, whatever its type; the answer is [`ReplyBody::Value`] (`None`: no such key).
    pub fn get(&mut self, key: impl IntoKey) -> &mut Pipeline {
        self.push(key, |key| Operation::Read { key, expected: None })
    }

    /// Deletes `key`; the answer is [`ReplyBody::Deleted`].
    pub fn delete(&mut self, key: impl IntoKey) -> &mut Pipeline {
        self.push(key, |key| Operation::Delete { key, idempotency_id: Some(IdempotencyId::random()) })
    }

    fn push(&mut self, key: impl IntoKey, op: impl FnOnce(crate::Key) -> Operation) -> &mut Pipeline {
        match key.into_key() {
            Ok(key) => self.ops.push(op(key)),
            Err(e) if self.invalid.is_none() => {
                self.invalid = Some(Error::invalid(format!("operation {} of the pipeline: {e}", self.ops.len())));
            }
            Err(_) => {}
        }
        self
    }

    /// Sends the operations in one request and returns one answer per operation, in the order
    /// they were added: [`ReplyBody::Written`], [`ReplyBody::Deleted`] or [`ReplyBody::Value`], or
    /// the error of that operation alone. To retry those that failed with a retryable error, run
    /// the pipeline again: its writes keep their idempotency ids, so those that were applied are
    /// not applied twice.
    ///
    /// The outer error is the request's: an invalid key (nothing was sent), a pipeline longer than
    /// the node's `limits.max_pipeline_ops` (`too_large`), a node shutting down or not ready, the
    /// connection failing after the client's retries. A node older than pipelines is sent the
    /// operations one by one instead.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let mut pipeline = client.pipeline();
    /// pipeline.sadd("tags/rust", ["fast", "safe"]).get("tags/rust");
    /// for answer in pipeline.run().await? {
    ///     println!("{:?}", answer?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn run(&self) -> Result<Vec<Result<ReplyBody, Error>>, Error> {
        if let Some(invalid) = &self.invalid {
            return Err(invalid.clone());
        }
        if self.ops.is_empty() {
            return Ok(Vec::new());
        }
        match self.ctx.call(Operation::Pipeline(self.ops.clone())).await {
            Ok(ReplyBody::Pipeline(answers)) if answers.len() == self.ops.len() => {
                Ok(answers.into_iter().map(|answer| answer.map_err(Error::from)).collect())
            }
            Ok(ReplyBody::Pipeline(answers)) => Err(Error::protocol(format!(
                "the node answered {} of the pipeline's {} operations",
                answers.len(),
                self.ops.len()
            ))),
            Ok(other) => Err(unexpected("pipeline", &other)),
            Err(e) if predates_the_operation(&e) => Ok(self.run_one_by_one().await),
            Err(e) => Err(e),
        }
    }

    /// The pipeline on a node that predates pipelines: each operation in its own request, in order
    /// (which keeps each key's order), at the cost of a round trip each.
    async fn run_one_by_one(&self) -> Vec<Result<ReplyBody, Error>> {
        let mut answers = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            answers.push(self.ctx.call(op.clone()).await);
        }
        answers
    }
}
