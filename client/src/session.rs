//! Causal sessions: read-your-writes, monotonic reads and writes-follow-reads across keys, nodes and
//! regions.
//!
//! A session owns a [`CausalToken`] (a vector clock over the nodes' write logs). Every request made
//! through the session carries the token, and every reply's token is merged back into it, so each
//! request sees at least everything the session has written or read before. The token can be
//! exported as a string (`mt1.…`) and resumed elsewhere — in another process, after a failover, or
//! in a web request that continues a user's session.
//!
//! Sessions and their clones share one token; concurrent requests through the same session are
//! fine (the token only grows, by merge).

use std::sync::{Arc, Mutex};

use meridian_crdt::Value;

use crate::handles::{lock, Ctx};
use crate::proto::{CausalToken, Consistency};
use crate::{
    Client, CounterHandle, DocHandle, Error, IntoKey, KeysQuery, MapHandle, MvRegisterHandle, RegisterHandle, SetHandle,
};

/// A causal session over a [`Client`]: requests default to [`Consistency::Causal`], carry the
/// session's token and merge the reply's token into it.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
/// let session = client.session();
/// session.register("users/alice/name").set("Alice").await?;
/// // Read-your-writes, even if this read is served by another node or region:
/// let name = session.register("users/alice/name").get_string().await?;
/// let token = session.export_token(); // hand it to the next request of this user
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Session {
    client: Client,
    token: Arc<Mutex<CausalToken>>,
    consistency: Consistency,
}

impl Session {
    pub(crate) fn new(client: Client, token: CausalToken) -> Session {
        Session { client, token: Arc::new(Mutex::new(token)), consistency: Consistency::Causal }
    }

    fn ctx(&self) -> Ctx {
        Ctx { client: self.client.clone(), session: Some(self.token.clone()), consistency: Some(self.consistency) }
    }

    /// The same session (sharing its token) with another default consistency level for its requests.
    /// The token is still sent and merged, so stronger levels keep the session guarantees.
    ///
    /// ```no_run
    /// use meridian_client::Consistency;
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let session = client.session().with_consistency(Consistency::LocalQuorum);
    /// # Ok(()) }
    /// ```
    pub fn with_consistency(mut self, consistency: Consistency) -> Session {
        self.consistency = consistency;
        self
    }

    /// A copy of the session's current token.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let session = client.session();
    /// session.counter("app/visits").incr(1).await?;
    /// assert!(!session.token().0.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn token(&self) -> CausalToken {
        lock(&self.token).clone()
    }

    /// The token as a compact string (`mt1.` + base64) for [`Client::resume_session`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let exported: String = client.session().export_token();
    /// assert!(exported.starts_with("mt1."));
    /// # Ok(()) }
    /// ```
    pub fn export_token(&self) -> String {
        self.token().to_string()
    }

    /// Merges another token into the session's (for example one returned by another session whose
    /// effects this one must observe).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let writer = client.session();
    /// writer.counter("app/visits").incr(1).await?;
    /// let reader = client.session();
    /// reader.merge_token(&writer.token());
    /// # Ok(()) }
    /// ```
    pub fn merge_token(&self, other: &CausalToken) {
        lock(&self.token).merge(other);
    }

    /// The client this session runs on.
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// let status = session.client().status().await?;
    /// # Ok(()) }
    /// ```
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A handle on a `counter` key, in this session. See [`CounterHandle`].
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// let n = session.counter("app/visits").incr(1).await?;
    /// # Ok(()) }
    /// ```
    pub fn counter(&self, key: impl IntoKey) -> CounterHandle {
        CounterHandle::new(self.ctx(), key.into_key())
    }

    /// A [`Pipeline`](crate::Pipeline) in this session: it sends the session's token, and the
    /// token it gets back (covering every operation) is merged into the session's.
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// let mut pipeline = session.pipeline();
    /// pipeline.set("users/alice/name", "Alice").get("users/alice/name");
    /// let answers = pipeline.run().await?;
    /// # Ok(()) }
    /// ```
    pub fn pipeline(&self) -> crate::Pipeline {
        crate::Pipeline::new(self.ctx())
    }

    /// A handle on a `register` key, in this session. See [`RegisterHandle`].
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// session.register("users/alice/name").set("Alice").await?;
    /// # Ok(()) }
    /// ```
    pub fn register(&self, key: impl IntoKey) -> RegisterHandle {
        RegisterHandle::new(self.ctx(), key.into_key())
    }

    /// A handle on an `mvregister` key, in this session. See [`MvRegisterHandle`].
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// let siblings = session.mvregister("carts/alice").get().await?;
    /// # Ok(()) }
    /// ```
    pub fn mvregister(&self, key: impl IntoKey) -> MvRegisterHandle {
        MvRegisterHandle::new(self.ctx(), key.into_key())
    }

    /// A handle on a `set` key, in this session. See [`SetHandle`].
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// session.set("posts/42/tags").add(["rust"]).await?;
    /// # Ok(()) }
    /// ```
    pub fn set(&self, key: impl IntoKey) -> SetHandle {
        SetHandle::new(self.ctx(), key.into_key())
    }

    /// A handle on a `map` key, in this session. See [`MapHandle`].
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// session.map("users/alice").set_field("name", "Alice").await?;
    /// # Ok(()) }
    /// ```
    pub fn map(&self, key: impl IntoKey) -> MapHandle {
        MapHandle::new(self.ctx(), key.into_key())
    }

    /// A handle on a `doc` key, in this session. See [`DocHandle`].
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// let json = session.doc("notes/today").get_json().await?;
    /// # Ok(()) }
    /// ```
    pub fn doc(&self, key: impl IntoKey) -> DocHandle {
        DocHandle::new(self.ctx(), key.into_key())
    }

    /// Reads a key of any type, in this session; `None` if it does not exist.
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// if let Some(value) = session.get("app/anything").await? {
    ///     println!("a {}", value.crdt_type());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl IntoKey) -> Result<Option<Value>, Error> {
        self.ctx().read(&key.into_key(), None).await
    }

    /// Deletes a key of any type, in this session; returns whether the coordinating node held it.
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// let existed = session.delete("app/old").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: impl IntoKey) -> Result<bool, Error> {
        self.ctx().delete(&key.into_key()).await
    }

    /// Lists a namespace's keys, in this session. See [`KeysQuery`].
    ///
    /// ```no_run
    /// # async fn example(session: meridian_client::Session) -> Result<(), meridian_client::Error> {
    /// let page = session.keys("users").prefix("a").page().await?;
    /// # Ok(()) }
    /// ```
    pub fn keys(&self, namespace: impl Into<String>) -> KeysQuery {
        KeysQuery::new(self.ctx(), namespace.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_crdt::NodeId;

    fn token(entries: &[(u64, u64)]) -> CausalToken {
        CausalToken(entries.iter().map(|&(n, s)| (NodeId(n), s)).collect())
    }

    async fn offline_client() -> Client {
        // A client whose connection is never made: session bookkeeping needs no network.
        Client::offline_for_tests()
    }

    #[tokio::test]
    async fn tokens_merge_export_and_resume() {
        let client = offline_client().await;
        let session = client.session();
        assert_eq!(session.token(), CausalToken::empty());
        session.merge_token(&token(&[(1, 5), (2, 3)]));
        session.merge_token(&token(&[(1, 4), (3, 1)]));
        assert_eq!(session.token(), token(&[(1, 5), (2, 3), (3, 1)]));
        // Clones share the token.
        let clone = session.clone().with_consistency(Consistency::Quorum);
        clone.merge_token(&token(&[(2, 9)]));
        assert_eq!(session.token(), token(&[(1, 5), (2, 9), (3, 1)]));

        let exported = session.export_token();
        assert!(exported.starts_with("mt1."));
        let resumed = client.resume_session(&exported).unwrap();
        assert_eq!(resumed.token(), session.token());
        assert_eq!(resumed.consistency, Consistency::Causal);
        // Resumed sessions are independent of the original.
        resumed.merge_token(&token(&[(4, 1)]));
        assert_eq!(session.token().0.get(NodeId(4)), 0);
    }

    #[tokio::test]
    async fn bad_tokens_are_invalid_arguments() {
        let client = offline_client().await;
        for bad in ["", "xyz", "mt1.!!!", "mt1.AQ", "mt2.AAAA", &format!("mt1.{}", "A".repeat(20_000))] {
            match client.resume_session(bad) {
                Err(Error::InvalidArgument(message)) => assert!(message.contains("causal token"), "{message}"),
                other => panic!("{bad:?}: expected InvalidArgument, got {other:?}"),
            }
        }
        // The empty token round-trips too.
        let empty = client.session().export_token();
        assert_eq!(client.resume_session(&empty).unwrap().token(), CausalToken::empty());
    }
}
