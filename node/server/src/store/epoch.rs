//! Log epochs: a node never hands out a log position (or a CRDT dot, or a counter total) twice.
//!
//! Under `relaxed` durability a write is acknowledged, and pushed to the other replicas, once it is
//! in the OS page cache. A power loss or kernel crash can take back the last of those writes. A node
//! that came back under the same id would resume its log after the surviving records and hand out
//! the lost positions again: peers, which already hold the first record at each position, would drop
//! the new one as a duplicate — a permanent divergence. Its per-key CRDT identity would be reused as
//! well (OR-set dots read as removed elsewhere, a counter total swallowed by `max`).
//!
//! So a node whose previous run may have lost acknowledged writes starts a **new log epoch**: it
//! runs under a fresh node id. Everything minted afterwards is new; the old id's log is frozen and
//! every holder has a prefix of one history, so anti-entropy converges it like any other node's
//! log (this node now takes the old id's lost tail from its peers: it is no longer its own origin).
//! Only writes that never left the node are lost, which is what `relaxed` promises. The region
//! layer then marks the old id removed and gives its name to the new one (`region/cluster.rs`).
//!
//! When may the previous run have lost writes? The [`RunMarker`] written when a run starts says
//! whether it was `relaxed` and in which kernel boot it ran; a clean stop rewrites it as `clean`
//! after the last WAL sync. A new epoch starts when the last run was relaxed, did not stop cleanly
//! and ran in another boot (or an unknown one): a process crash (`kill -9`) in the same boot loses
//! nothing, since the page cache survives it. A run whose storage failed under `relaxed` (a WAL
//! sync error: the kernel may have dropped the dirty pages) leaves a file, [`EPOCH_REQUIRED_FILE`],
//! in the data directory that forces a new epoch whatever the boot.
//!
//! The marker keeps the previous run's durability, so a node restarted under `fsync` after a power
//! loss under `relaxed` still switches. A data directory without a marker (written by a release
//! before this one) counts as a clean stop.

use meridian_crdt::NodeId;

use crate::layout::{self, Predecessors, RunMarker};
use crate::storage::{decode_u64_be, Batch, Engine, Space, StorageError};

/// The file (in the data directory) that forces a new epoch at the next start.
pub const EPOCH_REQUIRED_FILE: &str = "epoch-required";

/// Predecessors kept (older ones have long been marked removed everywhere).
const MAX_PREDECESSORS: usize = 8;

/// How this run started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The id this run writes under.
    pub id: NodeId,
    /// The id the previous run wrote under, when this run started a new epoch.
    pub replaced: Option<NodeId>,
    /// Why, when it did (for the log).
    pub reason: Option<String>,
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStart<'a> {
    /// The node runs in a region (peers may hold its log); a node alone never starts a new epoch.
    pub replicated: bool,
    /// This run's durability is `relaxed`.
    pub relaxed: bool,
    /// The kernel boot this run is in (`None`: unknown).
    pub boot_id: Option<&'a str>,
    /// The previous run left [`EPOCH_REQUIRED_FILE`].
    pub epoch_required: bool,
}

/// The kernel's id of the current boot (`None` where the system does not say).
pub fn current_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Loads (or mints) the node's id, starting a new epoch if the previous run may have lost writes
/// it had already pushed, and records this run's marker — durably, before any write of this run.
/// Call before the node's own log is resumed.
pub fn begin_run(engine: &dyn Engine, start: &RunStart<'_>) -> Result<Run, StorageError> {
    let stored = engine.get(Space::Meta, layout::META_NODE_ID)?.map(|b| decode_u64_be(&b)).transpose()?;
    let marker = match engine.get(Space::Meta, layout::META_RUN)? {
        Some(bytes) => {
            Some(layout::decode::<RunMarker>(&bytes).map_err(|e| StorageError::Corrupt(format!("run marker: {e}")))?)
        }
        None => None,
    };
    let reason = match stored {
        // A fresh store has no log to reuse.
        Some(_) if start.replicated => why_new_epoch(marker.as_ref(), start),
        _ => None,
    };
    let mut batch = Batch::default();
    let (id, replaced) = match (stored, &reason) {
        (None, _) => {
            let id = fresh_id(None);
            batch.put(Space::Meta, layout::META_NODE_ID, id.0.to_be_bytes().to_vec());
            (id, None)
        }
        (Some(old), Some(_)) => {
            let old = NodeId(old);
            let id = fresh_id(Some(old));
            batch.put(Space::Meta, layout::META_NODE_ID, id.0.to_be_bytes().to_vec());
            let mut ids = predecessors(engine)?;
            ids.push(old);
            let keep_from = ids.len().saturating_sub(MAX_PREDECESSORS);
            batch.put(
                Space::Meta,
                layout::META_PREDECESSORS,
                layout::encode(&Predecessors::V1(ids.split_off(keep_from))),
            );
            (id, Some(old))
        }
        (Some(old), None) => (NodeId(old), None),
    };
    let this_run = RunMarker::V1 { clean: false, relaxed: start.relaxed, boot_id: start.boot_id.map(str::to_string) };
    batch.put(Space::Meta, layout::META_RUN, layout::encode(&this_run));
    // One batch: the new id and the marker of the run that uses it land together. Synced: a power
    // loss right after must not bring back the old id with a marker that no longer asks for a switch.
    engine.write(batch)?;
    engine.sync_wal()?;
    Ok(Run { id, replaced, reason })
}

/// Records that this run stopped with every write durable. Call after the last WAL sync, once no
/// write of this node's own can start.
pub fn mark_clean_stop(engine: &dyn Engine) -> Result<(), StorageError> {
    let Some(bytes) = engine.get(Space::Meta, layout::META_RUN)? else { return Ok(()) };
    let RunMarker::V1 { relaxed, boot_id, .. } =
        layout::decode::<RunMarker>(&bytes).map_err(|e| StorageError::Corrupt(format!("run marker: {e}")))?;
    let mut batch = Batch::default();
    batch.put(Space::Meta, layout::META_RUN, layout::encode(&RunMarker::V1 { clean: true, relaxed, boot_id }));
    engine.write(batch)?;
    engine.sync_wal()
}

/// The ids this node ran under before, oldest first.
pub fn predecessors(engine: &dyn Engine) -> Result<Vec<NodeId>, StorageError> {
    match engine.get(Space::Meta, layout::META_PREDECESSORS)? {
        Some(bytes) => Ok(layout::decode::<Predecessors>(&bytes)
            .map_err(|e| StorageError::Corrupt(format!("predecessors: {e}")))?
            .ids()
            .to_vec()),
        None => Ok(Vec::new()),
    }
}

/// Why the previous run may have lost writes it had pushed (`None`: it cannot have).
fn why_new_epoch(marker: Option<&RunMarker>, start: &RunStart<'_>) -> Option<String> {
    if start.epoch_required {
        return Some("the previous run's storage failed under relaxed durability".into());
    }
    let RunMarker::V1 { clean: false, relaxed: true, boot_id } = marker? else { return None };
    match (boot_id.as_deref(), start.boot_id) {
        (Some(then), Some(now)) if then == now => None, // a process crash: the page cache kept everything
        (Some(_), Some(_)) => {
            Some("the previous relaxed run did not stop cleanly and the machine rebooted since".into())
        }
        _ => Some("the previous relaxed run did not stop cleanly and whether the machine rebooted is unknown".into()),
    }
}

fn fresh_id(not: Option<NodeId>) -> NodeId {
    loop {
        let id = NodeId(rand::random::<u64>().max(1));
        if Some(id) != not {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;

    fn start(relaxed: bool, boot: Option<&str>) -> RunStart<'_> {
        RunStart { replicated: true, relaxed, boot_id: boot, epoch_required: false }
    }

    #[test]
    fn a_fresh_store_gets_an_id_without_predecessors() {
        let engine = MemoryEngine::new();
        let run = begin_run(&engine, &start(true, Some("b1"))).unwrap();
        assert_eq!(run.replaced, None);
        assert!(predecessors(&engine).unwrap().is_empty());
        // And keeps it across a clean stop, whatever the boot.
        mark_clean_stop(&engine).unwrap();
        assert_eq!(
            begin_run(&engine, &start(true, Some("b2"))).unwrap(),
            Run { id: run.id, replaced: None, reason: None }
        );
    }

    #[test]
    fn only_an_unclean_relaxed_run_in_another_or_an_unknown_boot_starts_a_new_epoch() {
        // (previous run relaxed, its boot, this boot, this run relaxed) → new epoch?
        let cases = [
            (true, Some("b1"), Some("b1"), true, false), // kill -9: the page cache survived
            (true, Some("b1"), Some("b2"), true, true),  // power loss
            (true, Some("b1"), Some("b2"), false, true), // power loss, restarted under fsync
            (true, None, Some("b1"), true, true),        // unknown boot then
            (true, Some("b1"), None, true, true),        // unknown boot now
            (false, Some("b1"), Some("b2"), true, false), // fsync run: nothing acknowledged was unsynced
        ];
        for (then_relaxed, then_boot, now_boot, now_relaxed, switches) in cases {
            let engine = MemoryEngine::new();
            let first = begin_run(&engine, &start(then_relaxed, then_boot)).unwrap();
            let second = begin_run(&engine, &start(now_relaxed, now_boot)).unwrap();
            let case = format!("{then_relaxed} {then_boot:?} -> {now_relaxed} {now_boot:?}");
            assert_eq!(second.id != first.id, switches, "{case}");
            assert_eq!(second.replaced, switches.then_some(first.id), "{case}");
            assert_eq!(predecessors(&engine).unwrap(), if switches { vec![first.id] } else { vec![] }, "{case}");
        }
    }

    #[test]
    fn a_store_of_an_earlier_release_counts_as_cleanly_stopped_and_a_failed_run_always_switches() {
        let engine = MemoryEngine::new();
        let mut batch = Batch::default();
        batch.put(Space::Meta, layout::META_NODE_ID, 7u64.to_be_bytes().to_vec());
        engine.write(batch).unwrap();
        assert_eq!(begin_run(&engine, &start(true, Some("b2"))).unwrap().id, NodeId(7));
        let failed = RunStart { replicated: true, relaxed: true, boot_id: Some("b2"), epoch_required: true };
        let run = begin_run(&engine, &failed).unwrap();
        assert_eq!(run.replaced, Some(NodeId(7)));
        assert!(run.reason.unwrap().contains("storage failed"));
    }

    #[test]
    fn a_node_alone_keeps_its_id() {
        let engine = MemoryEngine::new();
        let alone = |boot| RunStart { replicated: false, relaxed: true, boot_id: Some(boot), epoch_required: false };
        let first = begin_run(&engine, &alone("b1")).unwrap();
        assert_eq!(begin_run(&engine, &alone("b2")).unwrap().id, first.id, "no peer holds its log");
        let failed = RunStart { epoch_required: true, ..alone("b3") };
        assert_eq!(begin_run(&engine, &failed).unwrap().id, first.id);
    }

    #[test]
    fn predecessors_accumulate_up_to_a_bound() {
        let engine = MemoryEngine::new();
        let mut ids = vec![begin_run(&engine, &start(true, None)).unwrap().id];
        for _ in 0..MAX_PREDECESSORS + 2 {
            ids.push(begin_run(&engine, &start(true, None)).unwrap().id);
        }
        let current = ids.pop().unwrap();
        let kept = predecessors(&engine).unwrap();
        assert_eq!(kept, ids[ids.len() - MAX_PREDECESSORS..]);
        assert!(!kept.contains(&current));
    }
}
