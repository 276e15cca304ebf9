//! Fuzzes automerge input: the changes a client sends in a `doc_apply` write, through the function
//! the node calls with them (`Entry::mutation_delta` with `Mutation::DocApply`, which validates them
//! against the key's state by materialising it), then a read and the changes-since query of the
//! result. The input is a control byte, then automerge changes back to back; each change starts at
//! automerge's magic bytes. The control byte says how many of them are already in the key's state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_crdt::{Body, Entry, Hlc, Mutation, NodeId, WriteContext};

/// Every automerge chunk (change or document) starts with these bytes.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// The node's default `limits.max_value_bytes`: larger writes are refused before this point.
const MAX_VALUE_BYTES: usize = 1 << 20;

#[global_allocator]
static ALLOC: meridian_node_fuzz::CappedAlloc = meridian_node_fuzz::CappedAlloc;

fuzz_target!(init: meridian_node_fuzz::allow_caught_panics(), |data: &[u8]| {
    meridian_node_fuzz::automerge_allowance(|| run(data));
});

fn run(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else { return };
    let mut changes = split_changes(rest);
    let in_state = usize::from(control).min(changes.len());
    let client = changes.split_off(in_state);
    let w = WriteContext { node: NodeId(3), ts: Hlc { wall_ms: 1_000, logical: 0 } };

    let state = match changes.is_empty() {
        true => None,
        false => Entry::mutation_delta(None, &Mutation::DocApply { changes }, &w).ok(),
    };
    let mutation = Mutation::DocApply { changes: client };
    if mutation.payload_len() > MAX_VALUE_BYTES {
        return;
    }
    let Ok(delta) = Entry::mutation_delta(state.as_ref(), &mutation, &w) else { return };
    let mut joined = state.unwrap_or_else(|| Entry::empty(delta.crdt_type()));
    joined.try_join(&delta).expect("a delta of the same type joins");
    // Validated changes must read: that is what the validation is for.
    joined.read().expect("a document the node accepted reads");
    if let Body::Doc(doc) = joined.body() {
        let doc = doc.materialize().expect("a document the node accepted materialises");
        let _ = doc.changes_since(&doc.heads());
        let _ = doc.changes_since(&[]);
    }
    // The coordinator's own change on top (a `doc_put`).
    let _ =
        Entry::mutation_delta(Some(&joined), &Mutation::DocPut { json: r#"{"k":[1,"two",{"x":null}]}"#.into() }, &w);
}

/// The changes in `bytes`: cut before every occurrence of the magic bytes (bytes before the first
/// one form a change of their own).
fn split_changes(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut starts: Vec<usize> =
        bytes.windows(MAGIC.len()).enumerate().filter(|(_, w)| *w == MAGIC).map(|(i, _)| i).collect();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    starts.push(bytes.len());
    starts.windows(2).filter(|w| w[0] < w[1]).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}
