//! `meridian residency audit`: a scan of one node's storage for anything its region may not hold.
//!
//! It reads every space that can carry a key's bytes — states, the part records of sets and maps,
//! the partition index, delta-log records, hints and idempotency records — and checks each key against the node's
//! current rules. Redacted log records and hints are counted but carry no key, so they are never
//! violations. With `compact`,
//! storage is flushed and compacted first, so that what the scan vouches for is also all that a
//! raw byte scan of the data directory can find.

use meridian_client::proto::{ResidencyAudit, ResidencyViolation};
use meridian_crdt::codec;
use meridian_replication::antientropy::LogRecord as SyncRecord;

use crate::layout::{self, IdempotencyRecord, LogContent, LogRecord};
use crate::residency::Residency;
use crate::storage::{Engine, Space, StorageError};
use std::sync::Arc;

/// Violations listed in a report (all are counted): the report must fit in one reply frame.
const MAX_LISTED: usize = 1000;

/// Scans a node's storage against its rules (see the module docs).
pub fn audit(engine: &Arc<dyn Engine>, residency: &Residency, compact: bool) -> Result<ResidencyAudit, StorageError> {
    if compact {
        engine.compact_all()?;
    }
    let mut report = ResidencyAudit { compacted: compact, ..Default::default() };
    let mut total = 0u64;
    let mut check = |space: &str, data_key: &[u8], violations: &mut Vec<ResidencyViolation>| {
        if let Some(rule) = residency.rule_for(data_key) {
            if !meridian_replication::residency::allows(&rule, residency.region()) {
                total += 1;
                if violations.len() >= MAX_LISTED {
                    return;
                }
                let key = layout::parse_data_key(data_key)
                    .map_or_else(|_| String::from_utf8_lossy(data_key).into_owned(), |k| k.to_string());
                violations.push(ResidencyViolation { space: space.into(), rule: rule.id, key });
            }
        }
    };
    let mut violations = Vec::new();
    for_each(engine.as_ref(), Space::Data, |key, _| {
        report.data_keys += 1;
        check("data", key, &mut violations);
    })?;
    for_each(engine.as_ref(), Space::Log, |_, value| {
        report.log_records += 1;
        match layout::decode::<LogRecord>(value).map(LogRecord::into_parts) {
            Ok((LogContent::Write(key, ..), _)) => check("log", &layout::data_key(&key), &mut violations),
            Ok((LogContent::Redacted(_), _)) => report.redacted_records += 1,
            Err(_) => {}
        }
    })?;
    for_each(engine.as_ref(), Space::Hints, |_, value| {
        report.hints += 1;
        if let Ok(record) = codec::decode::<SyncRecord>(value, layout::MAX_HINT_BYTES) {
            if !record.key.is_empty() {
                check("hints", &record.key, &mut violations);
            }
        }
    })?;
    for_each(engine.as_ref(), Space::Idempotency, |_, value| {
        report.idempotency_records += 1;
        if let Ok(IdempotencyRecord::V1 { key, .. }) = layout::decode::<IdempotencyRecord>(value) {
            check("idempotency", &layout::data_key(&key), &mut violations);
        }
    })?;
    // The part records of sets and maps (and a set's dot index) name their key too. They are not
    // counted apart: the report's format predates them, and their key is counted among the states.
    for_each(engine.as_ref(), Space::Elements, |key, _| {
        if let Some(data_key) = layout::collection_of(key) {
            check("elements", data_key, &mut violations);
        }
    })?;
    // The partition index names every key of `Data` again (not counted apart either).
    for_each(engine.as_ref(), Space::PartitionIndex, |key, _| {
        if let Some((_, data_key)) = crate::storage::partition_index::parse_entry_key(key) {
            check("partition_index", data_key, &mut violations);
        }
    })?;
    report.violations = violations;
    report.violations_total = total;
    residency.audit().record_always(
        "audit",
        &format!(
            "storage scan: {} keys, {} log records ({} redacted), {} hints, {} idempotency records: {} violations",
            report.data_keys,
            report.log_records,
            report.redacted_records,
            report.hints,
            report.idempotency_records,
            report.violations_total
        ),
    );
    Ok(report)
}

fn for_each(
    engine: &dyn crate::storage::Engine,
    space: Space,
    mut visit: impl FnMut(&[u8], &[u8]),
) -> Result<(), StorageError> {
    super::for_each_page(engine, space, &[], None, |page| {
        for (key, value) in &page {
            visit(key, value);
        }
        Ok(())
    })
}
