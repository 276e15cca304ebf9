//! The anti-entropy wire messages and their exact encoded sizes.
//!
//! Every message is [`SyncMessage::V1`] and names its partition and a request id. Requests (`Offer`,
//! `DigestRequest`, `StatesRequest`) are answered by exactly one reply carrying the same id; a reply
//! whose id is not the one its session is waiting for is ignored, which is what makes duplicated,
//! delayed and reordered messages harmless.
//!
//! The encoding is the one codec module's ([`meridian_crdt::codec`]: a format byte, then bincode 2
//! `standard()`, varint integers). bincode is not self-describing, so adding a field means `V2`, and
//! the golden vectors in the tests pin the layout. [`SyncMessage::wire_len`] computes the encoded
//! size without encoding, so senders can fill a message up to `max_bytes` exactly.

use meridian_crdt::{NodeId, VersionVector};
use serde::{Deserialize, Serialize};

use super::digest::HashRange;
use super::{KeyState, LogRecord, PartitionId};

/// An anti-entropy message, versioned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Version 1.
    V1(SyncMessageV1),
}

/// Version 1 of the anti-entropy protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessageV1 {
    /// Request: "this is what I have of `partition`; send me what I lack". Also carries the sender's
    /// safe time, and acknowledges every earlier reply (its `vv` includes what they brought).
    Offer {
        /// The partition.
        partition: PartitionId,
        /// Request id, echoed by the reply.
        request: u64,
        /// The sender's version vector for the partition.
        vv: VersionVector,
        /// The sender's own log for the partition is complete up to this HLC: every write it
        /// originated there with an HLC at or below this value has a seq at or below `vv[sender]`.
        safe_hlc: u64,
    },
    /// Reply to an `Offer`: log records the requester lacks, in seq order per origin.
    Records {
        /// The partition.
        partition: PartitionId,
        /// The `Offer` answered.
        request: u64,
        /// Records with seq in `(offer.vv[origin], sender_vv[origin]]`, a gap-free prefix per origin.
        records: Vec<LogRecord>,
        /// Whether the sender has more the requester lacks (the requester sends a new `Offer`).
        more: bool,
    },
    /// Reply to an `Offer`: the sender's log no longer reaches back to what the requester needs, so
    /// the pair falls back to comparing range digests.
    Truncated {
        /// The partition.
        partition: PartitionId,
        /// The `Offer` answered.
        request: u64,
        /// One origin whose records are gone.
        origin: NodeId,
        /// The lowest seq of `origin` still in the sender's log.
        floor: u64,
        /// The sender's version vector, read before anything it serves in the fallback: once the
        /// requester holds every differing key's state, it raises its vector to this.
        vv: VersionVector,
    },
    /// Request: the digests of each parent's children.
    DigestRequest {
        /// The partition.
        partition: PartitionId,
        /// Request id.
        request: u64,
        /// Each parent splits into `2^split_bits` children.
        split_bits: u8,
        /// Whether to include every child; otherwise the last child of each parent is left out
        /// (the requester infers it from the parent's digest).
        full: bool,
        /// The ranges to split.
        parents: Vec<HashRange>,
    },
    /// Reply to a `DigestRequest`: child digests as 8-byte little-endian words, parent by parent,
    /// children in hash order.
    DigestReply {
        /// The partition.
        partition: PartitionId,
        /// The request answered.
        request: u64,
        /// `parents × children_per_parent × 8` bytes.
        #[serde(with = "wire_bytes")]
        digests: Vec<u8>,
    },
    /// Request: the full states of every key in `ranges`.
    StatesRequest {
        /// The partition.
        partition: PartitionId,
        /// Request id.
        request: u64,
        /// Ranges, fetched in order.
        ranges: Vec<HashRange>,
        /// Resume the first range after this key (in the range's (key hash, key) order).
        after_key: Option<Vec<u8>>,
    },
    /// Reply to a `StatesRequest`.
    States {
        /// The partition.
        partition: PartitionId,
        /// The request answered.
        request: u64,
        /// Key states, range by range, in (key hash, key) order within a range.
        states: Vec<KeyState>,
        /// `None`: every requested range is complete. Otherwise where to resume.
        resume: Option<Resume>,
    },
}

/// Where a cut-short `States` reply stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// How many of the requested ranges were shipped completely.
    pub done_ranges: u32,
    /// Within the next range, the last key shipped (`None`: none of it was).
    pub after_key: Option<Vec<u8>>,
}

impl SyncMessageV1 {
    /// The partition the message is about.
    pub fn partition(&self) -> PartitionId {
        match self {
            SyncMessageV1::Offer { partition, .. }
            | SyncMessageV1::Records { partition, .. }
            | SyncMessageV1::Truncated { partition, .. }
            | SyncMessageV1::DigestRequest { partition, .. }
            | SyncMessageV1::DigestReply { partition, .. }
            | SyncMessageV1::StatesRequest { partition, .. }
            | SyncMessageV1::States { partition, .. } => *partition,
        }
    }

    /// The request id it carries or answers.
    pub fn request(&self) -> u64 {
        match self {
            SyncMessageV1::Offer { request, .. }
            | SyncMessageV1::Records { request, .. }
            | SyncMessageV1::Truncated { request, .. }
            | SyncMessageV1::DigestRequest { request, .. }
            | SyncMessageV1::DigestReply { request, .. }
            | SyncMessageV1::StatesRequest { request, .. }
            | SyncMessageV1::States { request, .. } => *request,
        }
    }
}

impl SyncMessage {
    /// The partition the message is about.
    pub fn partition(&self) -> PartitionId {
        let SyncMessage::V1(m) = self;
        m.partition()
    }

    /// The log records the message carries, if it is one that carries some (for a node that
    /// re-encodes their deltas for a peer of an earlier version).
    pub fn records_mut(&mut self) -> Option<&mut Vec<LogRecord>> {
        match self {
            SyncMessage::V1(SyncMessageV1::Records { records, .. }) => Some(records),
            _ => None,
        }
    }

    /// The request id it carries or answers.
    pub fn request(&self) -> u64 {
        let SyncMessage::V1(m) = self;
        m.request()
    }

    /// Whether it is a request (answered by the peer's session) rather than a reply.
    pub fn is_request(&self) -> bool {
        let SyncMessage::V1(m) = self;
        matches!(
            m,
            SyncMessageV1::Offer { .. } | SyncMessageV1::DigestRequest { .. } | SyncMessageV1::StatesRequest { .. }
        )
    }

    /// Exactly `meridian_crdt::codec::encode(self).len()`, computed without encoding.
    pub fn wire_len(&self) -> usize {
        let SyncMessage::V1(m) = self;
        let body = match m {
            SyncMessageV1::Offer { vv, safe_hlc, .. } => vv_len(vv) + varint_len(*safe_hlc),
            SyncMessageV1::Records { records, .. } => {
                seq_len(records.len()) + records.iter().map(LogRecord::wire_len).sum::<usize>() + 1
            }
            SyncMessageV1::Truncated { origin, floor, vv, .. } => {
                varint_len(origin.0) + varint_len(*floor) + vv_len(vv)
            }
            SyncMessageV1::DigestRequest { parents, .. } => {
                2 + seq_len(parents.len()) + parents.iter().map(range_len).sum::<usize>()
            }
            SyncMessageV1::DigestReply { digests, .. } => bytes_len(digests.len()),
            SyncMessageV1::StatesRequest { ranges, after_key, .. } => {
                seq_len(ranges.len()) + ranges.iter().map(range_len).sum::<usize>() + opt_bytes_len(after_key)
            }
            SyncMessageV1::States { states, resume, .. } => {
                seq_len(states.len())
                    + states.iter().map(KeyState::wire_len).sum::<usize>()
                    + resume.as_ref().map_or(1, |r| resume_len(r.done_ranges, r.after_key.as_deref().map(<[u8]>::len)))
            }
        };
        header_len(self.partition(), self.request()) + body
    }
}

/// Encoded size of a bincode `standard()` varint.
pub(crate) fn varint_len(value: u64) -> usize {
    match value {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Size of a sequence-length prefix.
pub(crate) fn seq_len(len: usize) -> usize {
    varint_len(len as u64)
}

/// Size of a byte string: its length prefix and the bytes.
pub(crate) fn bytes_len(len: usize) -> usize {
    seq_len(len) + len
}

fn opt_bytes_len(bytes: &Option<Vec<u8>>) -> usize {
    1 + bytes.as_ref().map_or(0, |b| bytes_len(b.len()))
}

/// Size of an encoded [`HashRange`] (a `u8` and a varint).
pub(crate) fn range_len(range: &HashRange) -> usize {
    1 + varint_len(range.index())
}

/// Size of an encoded version vector.
pub(crate) fn vv_len(vv: &VersionVector) -> usize {
    seq_len(vv.len()) + vv.iter().map(|(node, seq)| varint_len(node.0) + varint_len(seq)).sum::<usize>()
}

/// Size of `Some(Resume { done_ranges, after_key })`, `after_key` given by its length.
pub(crate) fn resume_len(done_ranges: u32, after_key_len: Option<usize>) -> usize {
    1 + varint_len(u64::from(done_ranges)) + 1 + after_key_len.map_or(0, bytes_len)
}

/// Format byte, the `V1` tag, the variant tag, the partition and the request id.
pub(crate) fn header_len(partition: PartitionId, request: u64) -> usize {
    3 + varint_len(u64::from(partition.0)) + varint_len(request)
}

/// Serde for a byte string as one blob (the same bincode layout as a `Vec<u8>` sequence, far fewer
/// calls). Used by every byte-string field of the protocol.
pub(crate) mod wire_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Bounded by the input: every element is at least one byte of it.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}
