//! `doc`: a collaborative JSON-like document backed by automerge.
//!
//! The replicated state is the *set of automerge changes*, keyed by change hash, each kept in
//! automerge's own binary encoding. A grow-only set of changes is trivially a lattice (merge is union),
//! so delivery in any order, duplicated, converges; automerge itself orders the changes by their
//! dependency hashes when the document is materialised. Because the bytes are automerge's own, a JS or
//! Rust automerge app can send its changes here and receive changes it can apply directly.
//!
//! Cost: materialising replays the whole history (~20 µs and ~20 KB per small document); prefer the
//! native types for anything that is not really a document.

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, AutomergeError, Change, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, ROOT};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{CrdtError, Lattice, NodeId};

/// The state of a `doc` key: every automerge change it has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocCrdt {
    changes: BTreeMap<[u8; 32], Vec<u8>>,
}

/// A document materialised for reading.
pub struct MaterializedDoc(Automerge);

impl MaterializedDoc {
    /// The document as JSON (text and lists included).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(automerge::AutoSerde::from(&self.0)).expect("automerge documents serialise to JSON")
    }

    /// The document's heads, hex-encoded.
    pub fn heads(&self) -> Vec<String> {
        self.0.get_heads().iter().map(ToString::to_string).collect()
    }

    /// The changes a peer that has `heads` lacks, in automerge's binary encoding.
    pub fn changes_since(&self, heads: &[String]) -> Result<Vec<Vec<u8>>, CrdtError> {
        let heads = parse_heads(heads)?;
        Ok(self.0.get_changes(&heads).into_iter().map(|c| c.raw_bytes().to_vec()).collect())
    }
}

/// Parses hex change hashes.
pub fn parse_heads(heads: &[String]) -> Result<Vec<ChangeHash>, CrdtError> {
    heads
        .iter()
        .map(|h| h.parse::<ChangeHash>().map_err(|_| CrdtError::InvalidDocChange(format!("bad change hash {h:?}"))))
        .collect()
}

impl DocCrdt {
    /// Number of changes held.
    pub fn change_count(&self) -> usize {
        self.changes.len()
    }

    /// Replays every change into an automerge document. Changes whose dependencies have not arrived
    /// yet stay pending inside automerge and do not show.
    pub fn materialize(&self) -> Result<MaterializedDoc, CrdtError> {
        let mut doc = Automerge::new();
        let changes = self
            .changes
            .values()
            .map(|bytes| Change::try_from(bytes.as_slice()).map_err(|e| CrdtError::InvalidDocChange(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        doc.apply_changes(changes).map_err(|e| CrdtError::InvalidDocChange(e.to_string()))?;
        Ok(MaterializedDoc(doc))
    }

    /// The delta holding changes sent by an automerge peer, validated.
    pub fn apply_delta(changes: &[Vec<u8>]) -> Result<DocCrdt, CrdtError> {
        let mut delta = DocCrdt::default();
        for bytes in changes {
            let change = Change::try_from(bytes.as_slice()).map_err(|e| CrdtError::InvalidDocChange(e.to_string()))?;
            delta.changes.insert(change.hash().0, change.raw_bytes().to_vec());
        }
        Ok(delta)
    }

    /// Like [`DocCrdt::apply_delta`], for changes a *client* sends: refuses changes that would leave
    /// this document unreadable (automerge refuses two different changes with the same actor and
    /// sequence number — accepting them would make the key fail every later read).
    ///
    /// Not yet refused: a client authoring changes under a replica's actor id. Harmless on one node
    /// (the replica's next change takes the next free sequence number); across replicas it could clash
    /// with a concurrent change of that replica, so per-key replica actors come with replication.
    pub fn client_delta(&self, changes: &[Vec<u8>]) -> Result<DocCrdt, CrdtError> {
        let delta = DocCrdt::apply_delta(changes)?;
        let mut joined = self.clone();
        joined.join(&delta);
        joined.materialize()?;
        Ok(delta)
    }

    /// The delta that sets each field of the JSON object `fields` at the document root, authored by `node`.
    pub fn put_root_delta(&self, node: NodeId, fields: &serde_json::Value) -> Result<DocCrdt, CrdtError> {
        let serde_json::Value::Object(fields) = fields else {
            return Err(CrdtError::InvalidDocChange("doc_put needs a JSON object".into()));
        };
        self.local_change(node, |tx| {
            for (key, value) in fields {
                put_json(tx, &ROOT, key.as_str().into(), value)?;
            }
            Ok(())
        })
    }

    /// The delta that deletes every root field observed here (the document's part of a key delete).
    pub fn reset_delta(&self, node: NodeId) -> Result<DocCrdt, CrdtError> {
        let keys: Vec<String> = self.materialize()?.0.keys(ROOT).collect();
        self.local_change(node, |tx| {
            for key in &keys {
                tx.delete(ROOT, key.as_str())?;
            }
            Ok(())
        })
    }

    fn local_change<F>(&self, node: NodeId, f: F) -> Result<DocCrdt, CrdtError>
    where
        F: FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), AutomergeError>,
    {
        let MaterializedDoc(doc) = self.materialize()?;
        let mut doc = doc.with_actor(ActorId::from(node.0.to_be_bytes().to_vec()));
        let success = doc.transact(f).map_err(|failure| CrdtError::InvalidDocChange(failure.error.to_string()))?;
        // Only the change this transaction made: an empty transaction makes none, and then the delta is
        // empty (`get_last_local_change` would hand back an older change of the same actor instead).
        let mut delta = DocCrdt::default();
        if let Some(hash) = success.hash {
            let change = doc
                .get_change_by_hash(&hash)
                .ok_or_else(|| CrdtError::InvalidDocChange(format!("committed change {hash} not found")))?;
            delta.changes.insert(hash.0, change.raw_bytes().to_vec());
        }
        Ok(delta)
    }
}

fn put_json(
    tx: &mut automerge::transaction::Transaction<'_>,
    obj: &ObjId,
    prop: automerge::Prop,
    value: &serde_json::Value,
) -> Result<(), AutomergeError> {
    use serde_json::Value as J;
    match value {
        J::Object(map) => {
            let child = tx.put_object(obj, prop, ObjType::Map)?;
            for (key, value) in map {
                put_json(tx, &child, key.as_str().into(), value)?;
            }
        }
        J::Array(items) => {
            let child = tx.put_object(obj, prop, ObjType::List)?;
            for (index, item) in items.iter().enumerate() {
                insert_json(tx, &child, index, item)?;
            }
        }
        scalar => tx.put(obj, prop, json_scalar(scalar))?,
    }
    Ok(())
}

fn insert_json(
    tx: &mut automerge::transaction::Transaction<'_>,
    list: &ObjId,
    index: usize,
    value: &serde_json::Value,
) -> Result<(), AutomergeError> {
    use serde_json::Value as J;
    match value {
        J::Object(map) => {
            let child = tx.insert_object(list, index, ObjType::Map)?;
            for (key, value) in map {
                put_json(tx, &child, key.as_str().into(), value)?;
            }
        }
        J::Array(items) => {
            let child = tx.insert_object(list, index, ObjType::List)?;
            for (i, item) in items.iter().enumerate() {
                insert_json(tx, &child, i, item)?;
            }
        }
        scalar => tx.insert(list, index, json_scalar(scalar))?,
    }
    Ok(())
}

fn json_scalar(value: &serde_json::Value) -> ScalarValue {
    use serde_json::Value as J;
    match value {
        J::Null => ScalarValue::Null,
        J::Bool(b) => ScalarValue::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(u)) => ScalarValue::Uint(u),
            _ => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => ScalarValue::Str(s.as_str().into()),
        J::Array(_) | J::Object(_) => unreachable!("containers are handled by the caller"),
    }
}

impl Lattice for DocCrdt {
    fn join(&mut self, other: &Self) {
        for (hash, bytes) in &other.changes {
            self.changes.entry(*hash).or_insert_with(|| bytes.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_then_read_as_json_and_sync_changes() {
        let node = NodeId(42);
        let mut doc = DocCrdt::default();
        doc.join(&doc.put_root_delta(node, &json!({"title": "hi", "tags": ["a", "b"]})).unwrap());
        let heads = doc.materialize().unwrap().heads();
        doc.join(&doc.put_root_delta(node, &json!({"n": 3})).unwrap());
        let view = doc.materialize().unwrap();
        assert_eq!(view.to_json(), json!({"title": "hi", "tags": ["a", "b"], "n": 3}));
        let since = view.changes_since(&heads).unwrap();
        assert_eq!(since.len(), 1);
        // A peer holding the first change receives only the second, in automerge's own format.
        let mut peer = Automerge::new();
        let first = doc.materialize().unwrap().changes_since(&[]).unwrap();
        peer.apply_changes(first.iter().map(|b| Change::try_from(b.as_slice()).unwrap())).unwrap();
        assert_eq!(peer.get_heads().len(), 1);
    }

    #[test]
    fn client_changes_that_would_break_the_document_are_refused() {
        let node = NodeId(42);
        let mut doc = DocCrdt::default();
        doc.join(&doc.put_root_delta(node, &json!({"a": 1})).unwrap());
        // Two different changes with the same actor and seq would make the document unreadable.
        let other = NodeId(7);
        let first = DocCrdt::default().put_root_delta(other, &json!({"c": 1})).unwrap();
        let clash = DocCrdt::default().put_root_delta(other, &json!({"c": 2})).unwrap();
        doc.join(&doc.client_delta(&first.changes.values().cloned().collect::<Vec<_>>()).unwrap());
        let clash: Vec<Vec<u8>> = clash.changes.values().cloned().collect();
        assert!(doc.client_delta(&clash).is_err());
        assert!(doc.materialize().is_ok());
    }

    #[test]
    fn garbage_changes_are_refused() {
        assert!(matches!(DocCrdt::apply_delta(&[vec![1, 2, 3]]), Err(CrdtError::InvalidDocChange(_))));
    }
}
