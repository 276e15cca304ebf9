//! Typed handles for the structured CRDTs: the observed-remove map and the automerge document.
//!
//! Kept apart from [`crate::handles`] because both carry nested content (map fields are CRDTs
//! themselves; documents are JSON and automerge changes) and have their own client-side checks: a
//! map field cannot hold a document, and `put_json` needs a JSON object.

use std::collections::BTreeMap;

use meridian_crdt::{CrdtType, Mutation, Value};

use crate::handles::{handle, predates_the_operation, unexpected};
use crate::proto::{MapPart, MapPartReply, Operation, ReplyBody};
use crate::Error;

handle!(
    /// A `map` key: an observed-remove map whose fields are CRDTs themselves (counters, registers,
    /// sets, nested maps, ...), merged field by field.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let profile = client.map("users/alice");
    /// profile.set_field("name", "Alice").await?;
    /// profile.incr_field("logins", 1).await?;
    /// let fields = profile.get().await?;
    /// # Ok(()) }
    /// ```
    MapHandle,
    "map"
);

impl MapHandle {
    /// Applies `mutation` to `field`, creating the field with the mutation's type. A field cannot
    /// hold a document: a doc mutation is refused as [`Error::InvalidArgument`] before sending.
    ///
    /// ```no_run
    /// use meridian_client::Mutation;
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let tags = Mutation::SetAdd { members: vec![b"admin".to_vec()] };
    /// client.map("users/alice").update("roles", tags).await?;
    /// # Ok(()) }
    /// ```
    pub async fn update(&self, field: impl Into<String>, mutation: Mutation) -> Result<(), Error> {
        if contains_doc(&mutation) {
            return Err(Error::invalid("a map field cannot hold a doc"));
        }
        let mutation = Mutation::MapUpdate { field: field.into(), mutation: Box::new(mutation) };
        self.ctx.write(&self.key, mutation).await.map(drop)
    }

    /// Removes `field` as observed by the coordinating node (a concurrent update of it survives).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.map("users/alice").remove("nickname").await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove(&self, field: impl Into<String>) -> Result<(), Error> {
        self.ctx.write(&self.key, Mutation::MapRemove { field: field.into() }).await.map(drop)
    }

    /// Sets `field` as a last-writer-wins register.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.map("users/alice").set_field("email", "alice@example.com").await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_field(&self, field: impl Into<String>, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.update(field, Mutation::RegisterSet { value: value.into() }).await
    }

    /// Adds `by` to `field` as a counter.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.map("users/alice").incr_field("logins", 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn incr_field(&self, field: impl Into<String>, by: i64) -> Result<(), Error> {
        self.update(field, Mutation::CounterAdd { amount: by }).await
    }

    /// The present fields and their values; empty when the key does not exist.
    ///
    /// ```no_run
    /// use meridian_client::Value;
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let fields = client.map("users/alice").get().await?;
    /// if let Some(Value::Counter(n)) = fields.get("logins") {
    ///     println!("{n} logins");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self) -> Result<BTreeMap<String, Value>, Error> {
        match self.ctx.read(&self.key, Some(CrdtType::Map)).await? {
            None => Ok(BTreeMap::new()),
            Some(Value::Map(fields)) => Ok(fields),
            Some(_) => unreachable!("Ctx::read checks the type"),
        }
    }

    /// The value of `field`, read without the rest of the map; `None` if the map has no such field
    /// (or does not exist).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let email = client.map("users/alice").get_field("email").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_field(&self, field: impl Into<String>) -> Result<Option<Value>, Error> {
        Ok(self.get_fields([field]).await?.pop().flatten())
    }

    /// The values of `fields`, in the order given (one request; `None` for a field the map does
    /// not have).
    pub async fn get_fields<F: Into<String>>(
        &self,
        fields: impl IntoIterator<Item = F>,
    ) -> Result<Vec<Option<Value>>, Error> {
        let fields: Vec<String> = fields.into_iter().map(Into::into).collect();
        match self.read_part(MapPart::Fields(fields.clone())).await? {
            Some(MapPartReply::Fields(values)) if values.len() == fields.len() => Ok(values),
            Some(other) => Err(Error::protocol(format!("a field read answered with {other:?}"))),
            None => {
                let all = self.get().await?;
                Ok(fields.iter().map(|f| all.get(f).cloned()).collect())
            }
        }
    }

    /// The number of fields, read without the fields.
    pub async fn len(&self) -> Result<u64, Error> {
        match self.read_part(MapPart::Count).await? {
            Some(MapPartReply::Count(n)) => Ok(n),
            Some(other) => Err(Error::protocol(format!("a count answered with {other:?}"))),
            None => Ok(self.get().await?.len() as u64),
        }
    }

    /// Whether the map has no field (a missing or deleted map has none).
    pub async fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len().await? == 0)
    }

    /// A page of fields in name order, after `after` (exclusive; `None`: from the first), at most
    /// `limit`, and the cursor of the next page (`None`: no more). A page may hold fewer fields than
    /// asked, even none, while the cursor is `Some`: keep going until it is `None`. Each page is
    /// read on its own: fields changed between pages may be missed or seen, as with key listing.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let settings = client.map("users/alice/settings");
    /// let mut after = None;
    /// loop {
    ///     let (fields, next) = settings.page(after, 500).await?;
    ///     for (name, value) in fields {
    ///         println!("{name}: {value:?}");
    ///     }
    ///     match next {
    ///         Some(cursor) => after = Some(cursor),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn page(&self, after: Option<String>, limit: u32) -> Result<MapPage, Error> {
        match self.read_part(MapPart::Page { after: after.clone(), limit }).await? {
            Some(MapPartReply::Page { fields, next }) => Ok((fields, next)),
            Some(other) => Err(Error::protocol(format!("a page read answered with {other:?}"))),
            None => {
                // A node that predates part reads: page the whole map here.
                let from: Vec<(String, Value)> = self
                    .get()
                    .await?
                    .into_iter()
                    .filter(|(name, _)| after.as_ref().is_none_or(|after| name > after))
                    .collect();
                let limit = (limit as usize).max(1);
                let next = (from.len() > limit).then(|| from[limit - 1].0.clone());
                Ok((from.into_iter().take(limit).collect(), next))
            }
        }
    }

    /// A part read; `None` when the node predates them (see `SetHandle::read_part`).
    async fn read_part(&self, part: MapPart) -> Result<Option<MapPartReply>, Error> {
        let key = self.key.clone()?;
        match self.ctx.call(Operation::ReadMap { key, part }).await {
            Ok(ReplyBody::MapPart(reply)) => Ok(Some(reply)),
            Ok(other) => Err(unexpected("ReadMap", &other)),
            Err(e) if predates_the_operation(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A page of a map's fields with their values, and the cursor of the next page.
pub type MapPage = (Vec<(String, Value)>, Option<String>);

fn contains_doc(mutation: &Mutation) -> bool {
    match mutation {
        Mutation::MapUpdate { mutation, .. } => contains_doc(mutation),
        other => other.crdt_type() == CrdtType::Doc,
    }
}

handle!(
    /// A `doc` key: an automerge document. Write it with automerge changes or by putting the root
    /// fields of a JSON object; read it as JSON, or as the changes a peer is missing.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let doc = client.doc("notes/today");
    /// doc.put_json(&serde_json::json!({"title": "Standup", "done": false})).await?;
    /// let json = doc.get_json().await?;
    /// # Ok(()) }
    /// ```
    DocHandle,
    "doc"
);

impl DocHandle {
    /// Applies automerge changes (automerge's binary change encoding, one change per element).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client, changes: Vec<Vec<u8>>) -> Result<(), meridian_client::Error> {
    /// client.doc("notes/today").apply_changes(changes).await?;
    /// # Ok(()) }
    /// ```
    pub async fn apply_changes(&self, changes: Vec<Vec<u8>>) -> Result<(), Error> {
        self.ctx.write(&self.key, Mutation::DocApply { changes }).await.map(drop)
    }

    /// Sets the document's root fields to those of `json`, which must be a JSON object (anything else
    /// is [`Error::InvalidArgument`]). Fields not named in `json` are left alone.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// client.doc("notes/today").put_json(&serde_json::json!({"done": true})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_json(&self, json: &serde_json::Value) -> Result<(), Error> {
        if !json.is_object() {
            return Err(Error::invalid("put_json needs a JSON object (its fields become the document's root fields)"));
        }
        self.ctx.write(&self.key, Mutation::DocPut { json: json.to_string() }).await.map(drop)
    }

    /// The document as JSON; `null` when the key does not exist.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let title = client.doc("notes/today").get_json().await?["title"].clone();
    /// # Ok(()) }
    /// ```
    pub async fn get_json(&self) -> Result<serde_json::Value, Error> {
        match self.read().await? {
            None => Ok(serde_json::Value::Null),
            Some((json, _)) => serde_json::from_str(&json)
                .map_err(|e| Error::protocol(format!("the node returned a document that is not JSON: {e}"))),
        }
    }

    /// The document's heads (hex change hashes); empty when the key does not exist.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let heads: Vec<String> = client.doc("notes/today").heads().await?;
    /// # Ok(()) }
    /// ```
    pub async fn heads(&self) -> Result<Vec<String>, Error> {
        Ok(self.read().await?.map(|(_, heads)| heads).unwrap_or_default())
    }

    /// The changes a peer holding `since_heads` lacks (all changes for `&[]`), and the document's
    /// current heads, for syncing a local automerge replica.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> Result<(), meridian_client::Error> {
    /// let doc = client.doc("notes/today");
    /// let (changes, heads) = doc.changes_since(&[]).await?;
    /// // ... later, fetch only what is new:
    /// let (new_changes, heads) = doc.changes_since(&heads).await?;
    /// # Ok(()) }
    /// ```
    pub async fn changes_since(&self, since_heads: &[String]) -> Result<(Vec<Vec<u8>>, Vec<String>), Error> {
        let key = self.key.clone()?;
        match self.ctx.call(Operation::DocChanges { key, since_heads: since_heads.to_vec() }).await? {
            ReplyBody::DocChanges { changes, heads } => Ok((changes, heads)),
            other => Err(unexpected("doc changes", &other)),
        }
    }

    async fn read(&self) -> Result<Option<(String, Vec<String>)>, Error> {
        match self.ctx.read(&self.key, Some(CrdtType::Doc)).await? {
            None => Ok(None),
            Some(Value::Doc { json, heads }) => Ok(Some((json, heads))),
            Some(_) => unreachable!("Ctx::read checks the type"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_fields_cannot_hold_docs_at_any_depth() {
        assert!(contains_doc(&Mutation::DocPut { json: "{}".into() }));
        let nested =
            Mutation::MapUpdate { field: "f".into(), mutation: Box::new(Mutation::DocApply { changes: vec![] }) };
        assert!(contains_doc(&nested));
        assert!(!contains_doc(&Mutation::CounterAdd { amount: 1 }));
        assert!(!contains_doc(&Mutation::MapUpdate {
            field: "f".into(),
            mutation: Box::new(Mutation::RegisterSet { value: vec![] })
        }));
    }
}
