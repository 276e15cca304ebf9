//! Documents materialised recently, so that an operation on a document with a long history does not
//! replay all of it (issue 13: `doc_put` took 2 ms on a new document and 25 ms after 1,500 changes).
//!
//! A document's state is a set of changes, and replaying the same set always yields the same
//! document, so the cache is keyed by the set itself: the SHA-256 of its sorted change hashes. That
//! makes it invisible to callers — no key, no invalidation: any write, merge or anti-entropy
//! round that changes the set changes the fingerprint and simply misses — and safe to share
//! between keys and nodes in one process (two keys holding the same changes hold the same
//! document). A collision would need two change sets with one SHA-256.
//!
//! A caller that keeps a document's changes elsewhere (the node keeps one storage record per change)
//! names its versions itself ([`version_tag`]): those tags hash a different first byte, so they
//! never name a change set.
//!
//! Bounded by documents and by the changes they hold together; the least recently used goes first.
//! Hits hand out shared references; whoever changes one copies it first (a copy of the document's
//! operations, far cheaper than parsing and applying every change again).

use automerge::Automerge;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

/// Most documents held.
const MAX_DOCS: usize = 64;
/// Most changes held across all documents (a document with more is not cached).
const MAX_CHANGES: usize = 250_000;

/// The SHA-256 of a change set, given its hashes in ascending order.
pub(crate) type Fingerprint = [u8; 32];

/// The fingerprint of the change set whose hashes `sorted` yields in ascending order.
pub(crate) fn fingerprint<'a>(sorted: impl Iterator<Item = &'a [u8; 32]>) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    let mut count = 0u64;
    for hash in sorted {
        hasher.update(hash);
        count += 1;
    }
    hasher.update(count.to_be_bytes());
    hasher.finalize().into()
}

/// The name of version `version` of the document that `owner` names (a caller's own names: the
/// node's is a data key and the random version its storage header gets at every write).
pub(crate) fn version_tag(owner: &[u8], version: u64) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update((owner.len() as u64).to_be_bytes());
    hasher.update(owner);
    hasher.update(version.to_be_bytes());
    hasher.finalize().into()
}

/// A cached document: materialised from some changes, and changes joined since that are not
/// applied to it yet (see `DocCrdt`'s pending changes; none for a change set's entry).
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) doc: Arc<Automerge>,
    pub(crate) pending: Arc<Vec<Vec<u8>>>,
}

struct Cached {
    fingerprint: Fingerprint,
    changes: usize,
    doc: Loaded,
    used: u64,
}

struct Cache {
    docs: Vec<Cached>,
    changes: usize,
    clock: u64,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache { docs: Vec::new(), changes: 0, clock: 0 });

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    // A panic while holding the lock leaves the cache consistent (every step below is a plain
    // push, remove or field update), so a poisoned lock is still usable.
    CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The document materialised from the change set `fingerprint`, if it is cached.
pub(crate) fn get(fingerprint: &Fingerprint) -> Option<Loaded> {
    let mut cache = cache();
    cache.clock += 1;
    let now = cache.clock;
    let cached = cache.docs.iter_mut().find(|c| &c.fingerprint == fingerprint)?;
    cached.used = now;
    Some(cached.doc.clone())
}

/// Keeps `doc`, materialised from the change set `fingerprint` of `changes` changes.
/// Replaces what is kept under `fingerprint`, if anything is.
pub(crate) fn put(fingerprint: Fingerprint, changes: usize, doc: Loaded) {
    if changes > MAX_CHANGES {
        return;
    }
    let mut cache = cache();
    if let Some(at) = cache.docs.iter().position(|c| c.fingerprint == fingerprint) {
        let old = cache.docs.swap_remove(at);
        cache.changes -= old.changes;
    }
    while cache.docs.len() >= MAX_DOCS || cache.changes + changes > MAX_CHANGES {
        let Some(oldest) = cache.docs.iter().enumerate().min_by_key(|(_, c)| c.used).map(|(i, _)| i) else { break };
        let evicted = cache.docs.swap_remove(oldest);
        cache.changes -= evicted.changes;
    }
    cache.clock += 1;
    let used = cache.clock;
    cache.changes += changes;
    cache.docs.push(Cached { fingerprint, changes, doc, used });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_of_the_set_and_its_size() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(fingerprint([&a, &b].into_iter()), fingerprint([&a, &b].into_iter()));
        assert_ne!(fingerprint([&a, &b].into_iter()), fingerprint([&a].into_iter()));
        assert_ne!(fingerprint([&a].into_iter()), fingerprint([&b].into_iter()));
        assert_ne!(fingerprint(std::iter::empty()), fingerprint([&a].into_iter()));
    }

    #[test]
    fn version_tags_name_neither_change_sets_nor_each_other() {
        assert_ne!(version_tag(b"k", 1), version_tag(b"k", 2));
        assert_ne!(version_tag(b"k", 1), version_tag(b"j", 1));
        assert_ne!(version_tag(b"", 0), fingerprint(std::iter::empty()));
    }

    #[test]
    fn bounded_by_documents_least_recently_used_first() {
        let key = |i: u32| fingerprint([&[i as u8; 32]].into_iter().chain(std::iter::once(&[0xee; 32])));
        for i in 0..(MAX_DOCS as u32 + 8) {
            put(key(i), 1, Loaded { doc: Arc::new(Automerge::new()), pending: Arc::default() });
            // Keep the first one in use: it must survive the evictions.
            assert!(get(&key(0)).is_some(), "after {i}");
        }
        let held = cache().docs.iter().filter(|c| (0..MAX_DOCS as u32 + 8).any(|i| key(i) == c.fingerprint)).count();
        assert!(held <= MAX_DOCS);
        assert!(get(&key(1)).is_none(), "the least recently used went first");
        assert!(get(&key(MAX_DOCS as u32 + 7)).is_some());
        put(key(1000), MAX_CHANGES + 1, Loaded { doc: Arc::new(Automerge::new()), pending: Arc::default() });
        assert!(get(&key(1000)).is_none(), "a document larger than the whole cache is not kept");
    }
}
