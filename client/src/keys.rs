//! Listing a namespace's keys, one page at a time or up to a bound.
//!
//! Listing is cursor-based (`start_after` the last name seen) so that it is stable under concurrent
//! writes and cheap for the node. [`KeysQuery::all_up_to`] follows the cursors for callers that want
//! everything, but always with an explicit bound: a namespace can hold more keys than fit in memory.

use crate::handles::{unexpected, Ctx};
use crate::proto::{Consistency, KeyInfo, Operation, ReplyBody};
use crate::Error;

/// Keys per page unless [`KeysQuery::limit`] says otherwise.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;

/// One page of a listing.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
/// let page = client.keys("users").limit(50).page().await?;
/// for key in &page.keys {
///     println!("users/{} ({})", key.name, key.crdt_type);
/// }
/// if let Some(cursor) = page.next {
///     let following = client.keys("users").limit(50).start_after(cursor).page().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeysPage {
    /// The keys, in byte order of their names.
    pub keys: Vec<KeyInfo>,
    /// Pass to [`KeysQuery::start_after`] to continue; `None` when the listing is complete.
    pub next: Option<String>,
}

/// A key listing being set up: namespace, name prefix, page size, cursor, consistency.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
/// let page = client.keys("users").prefix("a").limit(10).page().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct KeysQuery {
    ctx: Ctx,
    namespace: Result<String, Error>,
    prefix: String,
    start_after: Option<String>,
    limit: u32,
}

impl KeysQuery {
    pub(crate) fn new(ctx: Ctx, namespace: String) -> KeysQuery {
        KeysQuery {
            ctx,
            namespace: crate::key::namespace(namespace),
            prefix: String::new(),
            start_after: None,
            limit: DEFAULT_PAGE_LIMIT,
        }
    }

    /// Lists only names starting with `prefix`.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let page = client.keys("users").prefix("alice/").page().await?;
    /// # Ok(()) }
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// At most `limit` keys per page (default [`DEFAULT_PAGE_LIMIT`]; 0 is refused when the query
    /// runs). The node may cap it lower.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let page = client.keys("users").limit(1000).page().await?;
    /// # Ok(()) }
    /// ```
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Starts after the name `cursor` (exclusive): a previous page's [`KeysPage::next`].
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let page = client.keys("users").start_after("alice").page().await?;
    /// # Ok(()) }
    /// ```
    pub fn start_after(mut self, cursor: impl Into<String>) -> Self {
        self.start_after = Some(cursor.into());
        self
    }

    /// Uses `consistency` for the listing request(s).
    ///
    /// ```no_run
    /// use meridian_client::Consistency;
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let page = client.keys("users").consistency(Consistency::Eventual).page().await?;
    /// # Ok(()) }
    /// ```
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.ctx.consistency = Some(consistency);
        self
    }

    /// Fetches one page.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let page = client.keys("users").page().await?;
    /// println!("{} keys, more: {}", page.keys.len(), page.next.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn page(&self) -> Result<KeysPage, Error> {
        self.fetch(self.start_after.clone(), self.limit).await
    }

    /// Follows the cursors from this query's position and returns up to `max_keys` keys (at least 1).
    /// If keys may remain beyond the bound, [`KeysPage::next`] is the cursor to continue from.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let listing = client.keys("users").all_up_to(10_000).await?;
    /// if listing.next.is_some() {
    ///     eprintln!("more than 10000 keys; showing the first 10000");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn all_up_to(&self, max_keys: usize) -> Result<KeysPage, Error> {
        if max_keys == 0 {
            return Err(Error::invalid("all_up_to needs a bound of at least 1 key"));
        }
        let mut keys: Vec<KeyInfo> = Vec::new();
        let mut cursor = self.start_after.clone();
        loop {
            let remaining = max_keys - keys.len();
            let limit = self.limit.min(u32::try_from(remaining).unwrap_or(u32::MAX));
            let page = self.fetch(cursor.clone(), limit).await?;
            if page.keys.len() > limit as usize {
                return Err(Error::protocol(format!("asked for {limit} keys, the node sent {}", page.keys.len())));
            }
            keys.extend(page.keys);
            let Some(next) = page.next else {
                return Ok(KeysPage { keys, next: None });
            };
            if cursor.as_ref().is_some_and(|c| next <= *c) {
                return Err(Error::protocol(format!("the key listing cursor did not advance ({next:?})")));
            }
            if keys.len() >= max_keys {
                return Ok(KeysPage { keys, next: Some(next) });
            }
            cursor = Some(next);
        }
    }

    async fn fetch(&self, start_after: Option<String>, limit: u32) -> Result<KeysPage, Error> {
        let namespace = self.namespace.clone()?;
        if limit == 0 {
            return Err(Error::invalid("the page limit must be at least 1"));
        }
        let op = Operation::ListKeys { namespace, prefix: self.prefix.clone(), start_after, limit };
        match self.ctx.call(op).await? {
            ReplyBody::Keys { keys, next } => Ok(KeysPage { keys, next }),
            other => Err(unexpected("list keys", &other)),
        }
    }
}
