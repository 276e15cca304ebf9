//! The one codec module: every stored value and wire message is encoded here, and nowhere else names
//! bincode.
//!
//! Format: one format byte ([`FORMAT_V1`]) then the bincode 2 `standard()` encoding (little-endian,
//! varint integers) of the serde value. bincode is not self-describing, so a type's layout may never
//! change under the same format byte: appending a field means a new message version (`V2`) and a
//! golden-vector update. The golden vectors in the tests below pin the layout.
//!
//! Encoding our own values cannot fail except through a bug, so it panics. Decoding handles untrusted
//! bytes, so it checks the length against the caller's cap *before* decoding, bounds every allocation
//! inside the decoder, and refuses unknown format bytes and trailing garbage.
//!
//! bincode 2.0.1 is pinned: it is the last working release (RUSTSEC-2025-0141 marks the crate
//! unmaintained; 3.0.0 is a deliberate compile error). See `deny.toml`.

use serde::{de::DeserializeOwned, Serialize};

/// The only format byte written today.
pub const FORMAT_V1: u8 = 1;

/// Hard ceiling on what any decode may allocate, whatever cap the caller passes (64 MiB).
pub const ABSOLUTE_MAX_BYTES: usize = 64 << 20;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Longer than the caller's cap; nothing was decoded.
    #[error("{len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    /// No bytes at all.
    #[error("empty input")]
    Empty,
    /// A format byte this build does not know.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// Bytes that do not decode as the expected type.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The value decoded but bytes were left over.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<ABSOLUTE_MAX_BYTES>()
}

/// Encodes `value` behind the format byte.
///
/// # Panics
/// If serde refuses the value — a bug in a Meridian type, never a property of user input.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(value, &mut out, config()).expect("Meridian types always encode");
    out
}

/// How many bytes [`encode`] would make of `value`, counted without building them (a pipeline's
/// reply budget needs only the size of each answer).
///
/// # Panics
/// As [`encode`].
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config()).expect("Meridian types always encode");
    1 + size.bytes_written
}

/// Decodes a value written by [`encode`], refusing inputs over `max_len` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, CodecError> {
    let max = max_len.min(ABSOLUTE_MAX_BYTES);
    if bytes.len() > max {
        return Err(CodecError::TooLarge { len: bytes.len(), max });
    }
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != FORMAT_V1 {
        return Err(CodecError::UnsupportedVersion(format));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dot, DotContext, NodeId, VersionVector};

    #[test]
    fn golden_version_vector() {
        let vv: VersionVector = [(NodeId(1), 3), (NodeId(300), 1)].into_iter().collect();
        // format, map len 2, (1 -> 3), (300 as varint u16 marker 251 + LE, -> 1)
        assert_eq!(encode(&vv), vec![1, 2, 1, 3, 251, 44, 1, 1]);
        assert_eq!(decode::<VersionVector>(&encode(&vv), 1024).unwrap(), vv);
    }

    #[test]
    fn golden_register_bytes_are_a_length_and_the_raw_bytes() {
        let register = crate::LwwRegister {
            ts: crate::Hlc { wall_ms: 7, logical: 1 },
            node: NodeId(2),
            value: Some(b"hi".to_vec()),
        };
        // format | wall 7 | logical 1 | node 2 | Some | len 2 | 'h' 'i' — the same layout a plain
        // `Vec<u8>` sequence had, so serde_bytes changed speed, not format.
        assert_eq!(encode(&register), vec![1, 7, 1, 2, 1, 2, b'h', b'i']);
        let mutation = crate::Mutation::RegisterSet { value: b"hi".to_vec() };
        assert_eq!(encode(&mutation), vec![1, 1, 2, b'h', b'i']);
        assert_eq!(decode::<crate::Mutation>(&encode(&mutation), 64).unwrap(), mutation);
    }

    #[test]
    fn encoded_len_counts_what_encode_makes() {
        let register = crate::LwwRegister {
            ts: crate::Hlc { wall_ms: 1 << 40, logical: 9 },
            node: NodeId(70_000),
            value: Some(vec![7; 100_000]),
        };
        assert_eq!(encoded_len(&register), encode(&register).len());
        let vv: VersionVector = (1..500u64).map(|n| (NodeId(n), n << 20)).collect();
        assert_eq!(encoded_len(&vv), encode(&vv).len());
        assert_eq!(encoded_len(&()), 1, "the format byte alone");
    }

    #[test]
    fn golden_dot_context() {
        let ctx = DotContext::from_dots([Dot::new(NodeId(2), 1), Dot::new(NodeId(2), 3)]);
        assert_eq!(encode(&ctx), vec![1, 1, 2, 1, 1, 2, 3]);
    }

    #[test]
    fn refuses_oversized_unknown_and_trailing_input() {
        let bytes = encode(&42u64);
        assert_eq!(decode::<u64>(&bytes, 1), Err(CodecError::TooLarge { len: 2, max: 1 }));
        assert_eq!(decode::<u64>(&[], 10), Err(CodecError::Empty));
        assert_eq!(decode::<u64>(&[9, 42], 10), Err(CodecError::UnsupportedVersion(9)));
        assert_eq!(decode::<u64>(&[1, 42, 0], 10), Err(CodecError::TrailingBytes(1)));
        assert!(matches!(decode::<String>(&[1, 5, b'a'], 10), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn deeply_nested_map_updates_are_refused_not_a_stack_overflow() {
        // MapUpdate { field: "", mutation: MapUpdate { ... } } a million times over: variant 5, empty
        // field name, repeated; then a CounterAdd leaf. Without the nesting bound this overflows the stack.
        let mut bytes = vec![FORMAT_V1];
        for _ in 0..1_000_000 {
            bytes.extend_from_slice(&[5, 0]);
        }
        bytes.extend_from_slice(&[0, 2]);
        let err = decode::<crate::Mutation>(&bytes, ABSOLUTE_MAX_BYTES).unwrap_err();
        assert!(err.to_string().contains("nesting"), "{err}");
        // Within the bound it decodes.
        let mut ok = vec![FORMAT_V1];
        for _ in 0..crate::depth::MAX_NESTING {
            ok.extend_from_slice(&[5, 0]);
        }
        ok.extend_from_slice(&[0, 2]);
        assert!(decode::<crate::Mutation>(&ok, 1024).is_ok());
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A vector claiming 2^60 elements (varint marker 253 = u64 follows, little-endian): the decoder
        // must refuse it, not try to allocate. (255 is not a varint marker at all, and would be refused
        // before the length is even read.)
        let bytes = [1u8, 253, 0, 0, 0, 0, 0, 0, 0, 16];
        assert!(matches!(decode::<Vec<u64>>(&bytes, 1 << 20), Err(CodecError::Malformed(_))));
        assert!(matches!(decode::<String>(&bytes, 1 << 20), Err(CodecError::Malformed(_))));
        assert!(matches!(
            decode::<Vec<u8>>(&[1, 255, 0, 0, 0, 0, 0, 0, 0, 16], 1 << 20),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn golden_varint_boundaries() {
        // bincode 2 standard(): u64 up to 250 is one byte; 251 = u16 follows, 252 = u32, 253 = u64 (LE).
        assert_eq!(encode(&250u64), vec![1, 250]);
        assert_eq!(encode(&251u64), vec![1, 251, 251, 0]);
        assert_eq!(encode(&65_536u64), vec![1, 252, 0, 0, 1, 0]);
        assert_eq!(encode(&u64::MAX), vec![1, 253, 255, 255, 255, 255, 255, 255, 255, 255]);
        // i64 is zigzag-encoded first: -1 -> 1, 1 -> 2.
        assert_eq!(encode(&-1i64), vec![1, 1]);
        assert_eq!(encode(&1i64), vec![1, 2]);
    }
}
