//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the `traceparent` a request carries
//! so that its spans on every node it touches join one trace.
//!
//! Over HTTP it is the `traceparent` header; in the native protocol it rides in [`RequestV2`]
//! (a client sends `V2` only when it has a context, so untraced requests still reach nodes of the
//! previous release); between nodes it travels in the peer stream header of `meridian-peer/2`.
//!
//! [`RequestV2`]: crate::RequestV2

use serde::{Deserialize, Serialize};

/// Where a request sits in a distributed trace: the trace, the caller's span, and whether the caller
/// samples it (records and exports its spans).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    /// The trace (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The caller's span, the parent of the receiver's first span (8 bytes, never all zero).
    pub parent_span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Why a `traceparent` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent: {0} (expected 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)")]
pub struct TraceparentError(pub &'static str);

impl TraceContext {
    /// Bit 0 of the flags.
    pub const SAMPLED: u8 = 0x01;

    /// Whether the caller records this trace.
    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// Whether the ids are usable (neither is all zero, as the spec forbids). Contexts decoded from
    /// the wire are checked with this before they are used.
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.parent_span_id != [0; 8]
    }

    /// Parses a `traceparent` header value. Version `00` must have exactly four fields; a later
    /// version may append fields, which are ignored (as the spec asks); version `ff` is invalid.
    pub fn parse(value: &str) -> Result<TraceContext, TraceparentError> {
        let value = value.trim();
        let mut fields = value.split('-');
        let version = fields.next().ok_or(TraceparentError("empty"))?;
        let version = hex_bytes::<1>(version).ok_or(TraceparentError("the version is not 2 lowercase hex digits"))?[0];
        if version == 0xff {
            return Err(TraceparentError("version ff is invalid"));
        }
        let trace_id = fields.next().and_then(hex_bytes::<16>).ok_or(TraceparentError("bad trace id"))?;
        let parent_span_id = fields.next().and_then(hex_bytes::<8>).ok_or(TraceparentError("bad parent span id"))?;
        let flags = fields.next().and_then(hex_bytes::<1>).ok_or(TraceparentError("bad flags"))?[0];
        if version == 0 && fields.next().is_some() {
            return Err(TraceparentError("version 00 has exactly four fields"));
        }
        let context = TraceContext { trace_id, parent_span_id, flags };
        if !context.is_valid() {
            return Err(TraceparentError("an all-zero trace id or span id"));
        }
        Ok(context)
    }

    /// The trace id as 32 lowercase hex digits (how logs and trace viewers show it).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl std::fmt::Display for TraceContext {
    /// The `traceparent` header value (version 00).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.parent_span_id), self.flags)
    }
}

impl std::str::FromStr for TraceContext {
    type Err = TraceparentError;
    fn from_str(value: &str) -> Result<TraceContext, TraceparentError> {
        TraceContext::parse(value)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from exactly `2N` lowercase hex digits (the spec forbids uppercase).
fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_spec_example_round_trips() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(context.sampled());
        assert_eq!(context.to_string(), EXAMPLE);
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let context = TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra").unwrap();
        assert!(!context.sampled());
        assert_eq!(context.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "00",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
