//! Typed handles for the scalar and collection CRDTs: counter, register, multi-value register, set.
//!
//! A handle is a key plus a request context ([`Ctx`]: the client, the session's token if any, the
//! consistency level). It is cheap to create and clone and sends nothing until an operation is
//! awaited. The same handles serve [`Client`](crate::Client) and [`Session`](crate::Session): only
//! the context differs, so session semantics (send the token, merge the reply's token) live in one
//! place, [`Ctx::call`].
//!
//! Typed reads send `Operation::Read { expected: Some(type) }`, so reading a key of another type
//! fails with [`ErrorCode::WrongType`](crate::ErrorCode::WrongType) from the node rather than
//! returning a value of a surprising shape.

use std::sync::{Arc, Mutex, PoisonError};

use meridian_crdt::{CrdtType, DotContext, Mutation, Value};

use crate::proto::{CausalToken, Consistency, ErrorCode, Key, Operation, ReplyBody, RequestV1, SetPart, SetPartReply};
use crate::{Client, Error};

/// Where a handle's requests go and how: the client, the session token to send and merge, the level.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) session: Option<Arc<Mutex<CausalToken>>>,
    pub(crate) consistency: Option<Consistency>,
}

impl Ctx {
    /// Sends one operation (with retries) and returns the reply body; a session's token is sent with
    /// the request and the reply's token merged into it.
    pub(crate) async fn call(&self, op: Operation) -> Result<ReplyBody, Error> {
        let causal_token = self.session.as_ref().map(|token| lock(token).clone());
        let timeout_ms = self.client.inner.config.timeout_ms();
        let request = RequestV1 { consistency: self.consistency, causal_token, timeout_ms, op };
        let reply = self.client.inner.execute(request, self.client.trace).await?;
        if let Some(token) = &self.session {
            lock(token).merge(&reply.causal_token);
        }
        Ok(reply.body)
    }

    /// Reads a key; with `expected`, the node refuses a key of another type and the reply is checked.
    pub(crate) async fn read(
        &self,
        key: &Result<Key, Error>,
        expected: Option<CrdtType>,
    ) -> Result<Option<Value>, Error> {
        let key = key.clone()?;
        match self.call(Operation::Read { key, expected }).await? {
            ReplyBody::Value(Some(value)) if expected.is_some_and(|t| t != value.crdt_type()) => {
                Err(Error::protocol(format!(
                    "asked for a {}, the node returned a {}",
                    expected.map_or("?", CrdtType::name),
                    value.crdt_type()
                )))
            }
            ReplyBody::Value(value) => Ok(value),
            other => Err(unexpected("read", &other)),
        }
    }

    /// Applies a mutation; returns the counter value the node reports for counter writes.
    pub(crate) async fn write(&self, key: &Result<Key, Error>, mutation: Mutation) -> Result<Option<i64>, Error> {
        let key = key.clone()?;
        match self.call(Operation::Write { key, mutation, idempotency_id: None }).await? {
            ReplyBody::Written { counter } => Ok(counter),
            other => Err(unexpected("write", &other)),
        }
    }

    /// Deletes a key; returns whether it existed.
    pub(crate) async fn delete(&self, key: &Result<Key, Error>) -> Result<bool, Error> {
        let key = key.clone()?;
        match self.call(Operation::Delete { key, idempotency_id: None }).await? {
            ReplyBody::Deleted { existed } => Ok(existed),
            other => Err(unexpected("delete", &other)),
        }
    }
}

pub(crate) fn lock(token: &Mutex<CausalToken>) -> std::sync::MutexGuard<'_, CausalToken> {
    token.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A protocol error for a reply that does not answer the request.
pub(crate) fn unexpected(request: &str, body: &ReplyBody) -> Error {
    let kind = match body {
        ReplyBody::Written { .. } => "Written",
        ReplyBody::Deleted { .. } => "Deleted",
        ReplyBody::Value(_) => "Value",
        ReplyBody::DocChanges { .. } => "DocChanges",
        ReplyBody::Keys { .. } => "Keys",
        ReplyBody::Status(_) => "Status",
        ReplyBody::Cluster(_) => "Cluster",
        ReplyBody::Residency(_) => "Residency",
        ReplyBody::Auth(_) => "Auth",
        ReplyBody::Backup(_) => "Backup",
        ReplyBody::Readiness(_) => "Readiness",
        ReplyBody::SetPart(_) => "SetPart",
        ReplyBody::MapPart(_) => "MapPart",
        ReplyBody::Storage(_) => "Storage",
        ReplyBody::Pipeline(_) => "Pipeline",
        ReplyBody::DataCensus(_) => "DataCensus",
    };
    Error::protocol(format!("the node answered a {request} request with a {kind} reply"))
}

/// Defines a handle type: the struct, its constructor, `consistency` and `key`.
macro_rules! handle {
    ($(#[$meta:meta])* $name:ident, $constructor:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        pub struct $name {
            ctx: $crate::handles::Ctx,
            key: Result<$crate::Key, $crate::Error>,
        }

        impl $name {
            pub(crate) fn new(ctx: $crate::handles::Ctx, key: Result<$crate::Key, $crate::Error>) -> Self {
                $name { ctx, key }
            }

            #[doc = concat!(
                "Uses `consistency` for this handle's requests, overriding the client's default (or the ",
                "session's level).\n\n```no_run\n",
                "# async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {\n",
                "use meridian_client::Consistency;\n",
                "let handle = client.", $constructor, "(\"app/k\").consistency(Consistency::Quorum);\n",
                "# Ok(()) }\n```"
            )]
            pub fn consistency(mut self, consistency: $crate::Consistency) -> Self {
                self.ctx.consistency = Some(consistency);
                self
            }

            #[doc = concat!(
                "The key, or the [`Error::InvalidArgument`](crate::Error::InvalidArgument) that every ",
                "operation on this handle would return.\n\n```no_run\n",
                "# fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {\n",
                "let handle = client.", $constructor, "(\"app/k\");\n",
                "assert_eq!(handle.key()?.to_string(), \"app/k\");\n",
                "# Ok(()) }\n```"
            )]
            pub fn key(&self) -> Result<&$crate::Key, $crate::Error> {
                self.key.as_ref().map_err(Clone::clone)
            }
        }
    };
}
pub(crate) use handle;

handle!(
    /// A `counter` key: a PN-counter whose increments from every replica add up.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let visits = client.counter("app/visits");
    /// visits.incr(1).await?;
    /// println!("{} visits", visits.get().await?);
    /// # Ok(()) }
    /// ```
    CounterHandle,
    "counter"
);

impl CounterHandle {
    /// Adds `by` (may be negative) and returns the counter's value after the write, as seen by the
    /// coordinating node.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let now = client.counter("app/visits").incr(5).await?;
    /// # Ok(()) }
    /// ```
    pub async fn incr(&self, by: i64) -> Result<i64, Error> {
        self.ctx
            .write(&self.key, Mutation::CounterAdd { amount: by })
            .await?
            .ok_or_else(|| Error::protocol("the node did not return the counter's value after the write"))
    }

    /// Subtracts `by` and returns the counter's value after the write. `i64::MIN` cannot be negated
    /// and is refused as [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let left = client.counter("shop/stock").decr(1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn decr(&self, by: i64) -> Result<i64, Error> {
        let amount = by.checked_neg().ok_or_else(|| Error::invalid(format!("cannot decrement by {by}")))?;
        self.incr(amount).await
    }

    /// The counter's value; 0 when the key does not exist.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let visits: i64 = client.counter("app/visits").get().await?;
    /// # Ok(()) }
    /// ```
    pub async fn get(&self) -> Result<i64, Error> {
        match self.ctx.read(&self.key, Some(CrdtType::Counter)).await? {
            None => Ok(0),
            Some(Value::Counter(n)) => Ok(n),
            Some(_) => unreachable!("Ctx::read checks the type"),
        }
    }
}

handle!(
    /// A `register` key: a last-writer-wins register holding bytes.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let name = client.register("users/alice/name");
    /// name.set("Alice").await?;
    /// assert_eq!(name.get_string().await?.as_deref(), Some("Alice"));
    /// # Ok(()) }
    /// ```
    RegisterHandle,
    "register"
);

impl RegisterHandle {
    /// Sets the value (the latest write by hybrid logical clock wins).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.register("cfg/motd").set("hello").await?;
    /// client.register("cfg/blob").set(vec![0u8, 1, 2]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set(&self, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.ctx.write(&self.key, Mutation::RegisterSet { value: value.into() }).await.map(drop)
    }

    /// The value; `None` when the key does not exist (or holds no value).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let bytes: Option<Vec<u8>> = client.register("cfg/blob").get().await?;
    /// # Ok(()) }
    /// ```
    pub async fn get(&self) -> Result<Option<Vec<u8>>, Error> {
        match self.ctx.read(&self.key, Some(CrdtType::Register)).await? {
            None => Ok(None),
            Some(Value::Register(value)) => Ok(value),
            Some(_) => unreachable!("Ctx::read checks the type"),
        }
    }

    /// The value as UTF-8 text; a value that is not valid UTF-8 is reported as
    /// [`Error::InvalidArgument`] (the caller asked for text), never lossily converted. Use
    /// [`RegisterHandle::get`] for binary values.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let motd: Option<String> = client.register("cfg/motd").get_string().await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_string(&self) -> Result<Option<String>, Error> {
        self.get()
            .await?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|e| {
                    Error::invalid(format!("the register's value is not valid UTF-8 ({e}); read it with get()"))
                })
            })
            .transpose()
    }
}

/// A multi-value register's concurrent values and the causal context that resolves them.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
/// let reg = client.mvregister("carts/alice");
/// let siblings = reg.get().await?;
/// if siblings.is_conflict() {
///     let merged = siblings.values.concat(); // application-specific merge
///     reg.set_resolving(merged, &siblings.context).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Siblings {
    /// The concurrent values (none when the key does not exist, one when there is no conflict).
    pub values: Vec<Vec<u8>>,
    /// The context to pass to [`MvRegisterHandle::set_resolving`] to replace exactly these values.
    pub context: DotContext,
}

impl Siblings {
    /// Whether concurrent writes left more than one value.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let conflicted = client.mvregister("carts/alice").get().await?.is_conflict();
    /// # Ok(()) }
    /// ```
    pub fn is_conflict(&self) -> bool {
        self.values.len() > 1
    }
}

handle!(
    /// An `mvregister` key: a multi-value register that keeps concurrent writes as siblings.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let reg = client.mvregister("carts/alice");
    /// reg.set("apples").await?;
    /// let siblings = reg.get().await?;
    /// # Ok(()) }
    /// ```
    MvRegisterHandle,
    "mvregister"
);

impl MvRegisterHandle {
    /// Writes `value`, replacing every sibling the coordinating node holds.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.mvregister("carts/alice").set("apples").await?;
    /// # Ok(()) }
    /// ```
    pub async fn set(&self, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        let mutation = Mutation::MvRegisterSet { value: value.into(), context: None };
        self.ctx.write(&self.key, mutation).await.map(drop)
    }

    /// Writes `value`, replacing exactly the siblings covered by `context` (from an earlier
    /// [`MvRegisterHandle::get`]); siblings written concurrently with that read survive.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let reg = client.mvregister("carts/alice");
    /// let siblings = reg.get().await?;
    /// reg.set_resolving("apples,pears", &siblings.context).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_resolving(&self, value: impl Into<Vec<u8>>, context: &DotContext) -> Result<(), Error> {
        let mutation = Mutation::MvRegisterSet { value: value.into(), context: Some(context.clone()) };
        self.ctx.write(&self.key, mutation).await.map(drop)
    }

    /// The siblings and their context; no values and an empty context when the key does not exist.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// for value in client.mvregister("carts/alice").get().await?.values {
    ///     println!("{}", String::from_utf8_lossy(&value));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self) -> Result<Siblings, Error> {
        match self.ctx.read(&self.key, Some(CrdtType::MvRegister)).await? {
            None => Ok(Siblings::default()),
            Some(Value::MvRegister { values, context }) => Ok(Siblings { values, context }),
            Some(_) => unreachable!("Ctx::read checks the type"),
        }
    }
}

handle!(
    /// A `set` key: an add-wins set of byte strings (an add concurrent with a remove survives it).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let tags = client.set("posts/42/tags");
    /// tags.add(["rust", "crdt"]).await?;
    /// tags.remove(["crdt"]).await?;
    /// assert!(tags.contains("rust").await?);
    /// # Ok(()) }
    /// ```
    SetHandle,
    "set"
);

impl SetHandle {
    /// Adds members.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.set("posts/42/tags").add(["rust", "crdt"]).await?;
    /// client.set("posts/42/blobs").add(vec![vec![0u8, 1]]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add<M: Into<Vec<u8>>>(&self, members: impl IntoIterator<Item = M>) -> Result<(), Error> {
        let members = members.into_iter().map(Into::into).collect();
        self.ctx.write(&self.key, Mutation::SetAdd { members }).await.map(drop)
    }

    /// Removes members, as observed by the coordinating node (no prior read needed).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.set("posts/42/tags").remove(["crdt"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove<M: Into<Vec<u8>>>(&self, members: impl IntoIterator<Item = M>) -> Result<(), Error> {
        let members = members.into_iter().map(Into::into).collect();
        self.ctx.write(&self.key, Mutation::SetRemove { members }).await.map(drop)
    }

    /// The members, in byte order; empty when the key does not exist.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let members: Vec<Vec<u8>> = client.set("posts/42/tags").members().await?;
    /// # Ok(()) }
    /// ```
    pub async fn members(&self) -> Result<Vec<Vec<u8>>, Error> {
        match self.ctx.read(&self.key, Some(CrdtType::Set)).await? {
            None => Ok(Vec::new()),
            Some(Value::Set(members)) => Ok(members),
            Some(_) => unreachable!("Ctx::read checks the type"),
        }
    }

    /// Whether `member` is in the set, read without the rest of the set.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// if client.set("posts/42/tags").contains("rust").await? {
    ///     println!("tagged rust");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn contains(&self, member: impl AsRef<[u8]>) -> Result<bool, Error> {
        Ok(self.contains_each([member]).await?.first().copied().unwrap_or(false))
    }

    /// Whether each of `members` is in the set, in the order given (one request).
    pub async fn contains_each<M: AsRef<[u8]>>(
        &self,
        members: impl IntoIterator<Item = M>,
    ) -> Result<Vec<bool>, Error> {
        let members: Vec<Vec<u8>> = members.into_iter().map(|m| m.as_ref().to_vec()).collect();
        match self.read_part(SetPart::Contains(members.clone())).await? {
            Some(SetPartReply::Contains(found)) if found.len() == members.len() => Ok(found),
            Some(other) => Err(Error::protocol(format!("a membership query answered with {other:?}"))),
            None => {
                let all = self.members().await?;
                Ok(members.iter().map(|m| all.contains(m)).collect())
            }
        }
    }

    /// The number of members, read without the members.
    pub async fn len(&self) -> Result<u64, Error> {
        match self.read_part(SetPart::Count).await? {
            Some(SetPartReply::Count(n)) => Ok(n),
            Some(other) => Err(Error::protocol(format!("a count answered with {other:?}"))),
            None => Ok(self.members().await?.len() as u64),
        }
    }

    /// Whether the set has no member (a missing or deleted set has none).
    pub async fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len().await? == 0)
    }

    /// A page of members in byte order, after `after` (exclusive; `None`: from the first), at most
    /// `limit` (the node may return fewer), and the cursor of the next page (`None`: no more).
    /// Each page is read on its own: members added or removed between pages may be missed or seen,
    /// as with key listing.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let followers = client.set("users/7/followers");
    /// let mut after = None;
    /// loop {
    ///     let (members, next) = followers.page(after, 1000).await?;
    ///     println!("{} members", members.len());
    ///     match next {
    ///         Some(cursor) => after = Some(cursor),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn page(&self, after: Option<Vec<u8>>, limit: u32) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>), Error> {
        match self.read_part(SetPart::Page { after: after.clone(), limit }).await? {
            Some(SetPartReply::Page { members, next }) => Ok((members, next)),
            Some(other) => Err(Error::protocol(format!("a page read answered with {other:?}"))),
            None => {
                // A node that predates part reads: page the whole set here.
                let all = self.members().await?;
                let from: Vec<Vec<u8>> =
                    all.into_iter().filter(|m| after.as_ref().is_none_or(|after| m > after)).collect();
                let limit = (limit as usize).max(1);
                let next = (from.len() > limit).then(|| from[limit - 1].clone());
                Ok((from.into_iter().take(limit).collect(), next))
            }
        }
    }

    /// A part read; `None` when the node predates them. Such a node cannot decode the request: it
    /// answers `bad_request` naming a malformed frame (or `unsupported`), which a well-formed
    /// request never gets from a node that knows the operation.
    async fn read_part(&self, part: SetPart) -> Result<Option<SetPartReply>, Error> {
        let key = self.key.clone()?;
        match self.ctx.call(Operation::ReadSet { key, part }).await {
            Ok(ReplyBody::SetPart(reply)) => Ok(Some(reply)),
            Ok(other) => Err(unexpected("ReadSet", &other)),
            Err(e) if predates_the_operation(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Whether a node's refusal says it does not know the operation sent (see `SetHandle::read_part`).
pub(crate) fn predates_the_operation(e: &Error) -> bool {
    match e {
        Error::Server { code: ErrorCode::Unsupported, .. } => true,
        Error::Server { code: ErrorCode::BadRequest, message, .. } => message.starts_with("malformed frame"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_cannot_decode_a_part_read_is_recognised() {
        let server = |code, message: &str| Error::Server { code, message: message.into() };
        assert!(predates_the_operation(&server(ErrorCode::Unsupported, "unsupported format version 2")));
        assert!(predates_the_operation(&server(
            ErrorCode::BadRequest,
            "malformed frame: malformed: unexpected variant"
        )));
        assert!(!predates_the_operation(&server(ErrorCode::BadRequest, "invalid key: empty namespace")));
        assert!(!predates_the_operation(&server(ErrorCode::WrongType, "malformed frame")));
    }
}
