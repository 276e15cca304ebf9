//! The answering side: what a replica sends back for each request. Stateless — every answer is
//! computed from the request and the store alone, so retransmitted and duplicated requests are
//! answered again without any bookkeeping.

use meridian_crdt::{NodeId, VersionVector};

use super::message::{header_len, resume_len, seq_len};
use super::{HashRange, KeyState, PartitionId, PeerError, Resume, SyncConfig, SyncError, SyncMessageV1, SyncStore};

/// Records of one origin that a peer lacks: seq in `(after, upto]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The origin.
    pub origin: NodeId,
    /// The peer holds every record of `origin` up to this seq.
    pub after: u64,
    /// This replica holds every record of `origin` up to this seq.
    pub upto: u64,
}

/// What a replica with vector `mine` can ship a peer with vector `theirs`: per origin in node order,
/// the seq interval `(theirs[o], mine[o]]`, for every origin where it is not empty.
pub fn missing(mine: &VersionVector, theirs: &VersionVector) -> Vec<Missing> {
    mine.iter()
        .filter(|(origin, upto)| *upto > theirs.get(*origin))
        .map(|(origin, upto)| Missing { origin, after: theirs.get(origin), upto })
        .collect()
}

type Answer<E> = Result<SyncMessageV1, SyncError<E>>;

/// Answers one peer's requests for one partition.
pub(crate) struct Server<'a, S> {
    pub store: &'a S,
    pub config: &'a SyncConfig,
    pub peer: NodeId,
    pub partition: PartitionId,
}

impl<S: SyncStore> Server<'_, S> {
    fn malformed(&self, why: String) -> SyncError<S::Error> {
        SyncError::Peer { peer: self.peer, error: PeerError::Malformed(why) }
    }

    /// Answers an `Offer`: the records the peer lacks, or `Truncated` when the log no longer has them.
    /// Also returns this replica's vector, as read for the answer.
    pub(crate) fn offer(
        &self,
        request: u64,
        peer_vv: &VersionVector,
    ) -> Result<(SyncMessageV1, VersionVector), SyncError<S::Error>> {
        let (store, config, partition) = (self.store, self.config, self.partition);
        let mine = store.partition_vv(partition).map_err(SyncError::Store)?;
        let need = missing(&mine, peer_vv);
        for m in &need {
            let floor = store.log_floor(partition, m.origin).map_err(SyncError::Store)?;
            if floor > m.after + 1 {
                return Ok((
                    SyncMessageV1::Truncated { partition, request, origin: m.origin, floor, vv: mine.clone() },
                    mine,
                ));
            }
        }
        // Header, the records' length prefix at its largest, the `more` flag.
        let mut bytes = header_len(partition, request) + seq_len(config.max_records) + 1;
        let mut records = Vec::new();
        let mut more = false;
        'origins: for m in need {
            let room = config.max_records - records.len();
            if room == 0 {
                more = true;
                break;
            }
            let want = room.min(usize::try_from(m.upto - m.after).unwrap_or(usize::MAX));
            let batch = store
                .read_log(partition, m.origin, m.after, want, config.max_bytes.saturating_sub(bytes))
                .map_err(SyncError::Store)?;
            let mut next = m.after + 1;
            for record in batch {
                if record.origin != m.origin || record.seq != next || next > m.upto {
                    break;
                }
                let len = record.wire_len();
                if bytes + len > config.max_bytes && !records.is_empty() {
                    more = true;
                    break 'origins;
                }
                bytes += len;
                records.push(record);
                next += 1;
            }
            if next == m.after + 1 {
                // Nothing of this origin came back although the floor allowed it: the log was truncated
                // since (a concurrent truncation). Report it like any truncation.
                let floor = store.log_floor(partition, m.origin).map_err(SyncError::Store)?;
                return Ok((
                    SyncMessageV1::Truncated { partition, request, origin: m.origin, floor, vv: mine.clone() },
                    mine,
                ));
            }
            if next <= m.upto {
                more = true;
                if records.len() == config.max_records || bytes >= config.max_bytes {
                    break;
                }
            }
        }
        Ok((SyncMessageV1::Records { partition, request, records, more }, mine))
    }

    /// Answers a `DigestRequest`.
    pub(crate) fn digests(&self, request: u64, split_bits: u8, full: bool, parents: &[HashRange]) -> Answer<S::Error> {
        let (store, config, partition) = (self.store, self.config, self.partition);
        if !(1..=8).contains(&split_bits) {
            return Err(self.malformed(format!("split_bits {split_bits}")));
        }
        if parents.len() > max_digest_parents(config, split_bits) {
            return Err(self.malformed(format!("{} parents exceed this node's limits", parents.len())));
        }
        if let Some(bad) = parents.iter().find(|p| !p.is_valid() || u32::from(p.bits()) + u32::from(split_bits) > 64) {
            return Err(self.malformed(format!("range {bad:?} cannot be split by {split_bits} bits")));
        }
        let children: Vec<HashRange> = parents.iter().flat_map(|p| p.children(split_bits)).collect();
        let digests = store.range_digests(partition, &children).map_err(SyncError::Store)?;
        assert_eq!(digests.len(), children.len(), "SyncStore::range_digests must answer every range");
        let per_parent = 1usize << split_bits;
        let keep = if full { per_parent } else { per_parent - 1 };
        let mut out = Vec::with_capacity(parents.len() * keep * 8);
        for group in digests.chunks(per_parent) {
            for d in &group[..keep] {
                out.extend_from_slice(&d.digest.to_le_bytes());
            }
        }
        Ok(SyncMessageV1::DigestReply { partition, request, digests: out })
    }

    /// Answers a `StatesRequest`: the states of the ranges' keys, in order, up to the message limits.
    pub(crate) fn states(&self, request: u64, ranges: &[HashRange], after_key: Option<&[u8]>) -> Answer<S::Error> {
        let (store, config, partition) = (self.store, self.config, self.partition);
        if ranges.is_empty() || ranges.len() > max_state_ranges(config, after_key.map_or(0, <[u8]>::len)) {
            return Err(self.malformed(format!("{} ranges in a states request", ranges.len())));
        }
        if let Some(bad) = ranges.iter().find(|r| !r.is_valid()) {
            return Err(self.malformed(format!("range {bad:?}")));
        }
        let mut bytes = header_len(partition, request) + seq_len(config.max_records);
        let mut states: Vec<KeyState> = Vec::new();
        let mut resume = None;
        for (i, range) in ranges.iter().enumerate() {
            let done = u32::try_from(i).expect("bounded by max_state_ranges");
            // If the reply stops after a key, its resume point names that key: budget for it.
            let resume_for = |key_len: usize| resume_len(done + 1, Some(key_len));
            let mut after: Option<Vec<u8>> = if i == 0 { after_key.map(<[u8]>::to_vec) } else { None };
            let page = store
                .keys_in_range(
                    partition,
                    *range,
                    after.as_deref(),
                    config.max_records - states.len(),
                    config.max_bytes.saturating_sub(bytes + resume_for(0)),
                )
                .map_err(SyncError::Store)?;
            assert!(!page.more || !page.states.is_empty(), "SyncStore::keys_in_range returned no key but more remain");
            let returned = page.states.len();
            let mut taken = 0;
            for state in page.states {
                let len = state.wire_len();
                if bytes + len + resume_for(state.key.len()) > config.max_bytes && !states.is_empty() {
                    break;
                }
                bytes += len;
                after = Some(state.key.clone());
                states.push(state);
                taken += 1;
            }
            if page.more || taken < returned {
                resume = Some(Resume { done_ranges: done, after_key: after });
                break;
            }
            if states.len() == config.max_records && i + 1 < ranges.len() {
                resume = Some(Resume { done_ranges: done + 1, after_key: None });
                break;
            }
        }
        Ok(SyncMessageV1::States { partition, request, states, resume })
    }
}

/// Most parents one `DigestRequest` may name so that both it and its reply fit in `max_bytes`.
pub(crate) fn max_digest_parents(config: &SyncConfig, split_bits: u8) -> usize {
    let children = 1usize << split_bits;
    let overhead = header_len(PartitionId(u16::MAX), u64::MAX) + 2 + 9;
    let by_reply = (config.max_bytes - overhead) / (children * 8);
    let by_request = (config.max_bytes - overhead) / 10;
    by_reply.min(by_request).max(1)
}

/// Most ranges one `StatesRequest` may name (its size bound; ranges encode in at most 10 bytes).
pub(crate) fn max_state_ranges(config: &SyncConfig, after_key_len: usize) -> usize {
    let overhead = header_len(PartitionId(u16::MAX), u64::MAX) + 9 + 1 + 9 + after_key_len;
    (config.max_bytes.saturating_sub(overhead) / 10).max(1)
}
