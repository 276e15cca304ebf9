//! Reading protocol frames off QUIC streams: the one piece of the wire protocol that needs quinn, so
//! it lives here rather than in `meridian-proto`. Re-exported as [`crate::proto::read_frame`].

use meridian_crdt::codec;

use crate::proto::FrameError;

/// Buffer reserved up front for a frame body; it grows as the body arrives.
const INITIAL_FRAME_BUFFER: usize = 64 << 10;
/// Largest chunk read at once.
const READ_CHUNK: usize = 256 << 10;

/// Reads one length-prefixed frame from a QUIC stream, refusing a length over `max_frame_bytes`
/// before reading the body.
pub async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max_frame_bytes: usize,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge { len, max: max_frame_bytes });
    }
    // Grow the buffer as bytes arrive rather than trusting the announced length: a peer that
    // announces 4 MiB and sends nothing holds no more than what it actually sent.
    let mut body = Vec::with_capacity(len.min(INITIAL_FRAME_BUFFER));
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK);
        match recv.read_chunk(want, true).await.map_err(|e| FrameError::Stream(e.to_string()))? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(FrameError::Stream(format!("stream ended after {} of {len} bytes", body.len()))),
        }
    }
    Ok(codec::decode(&body, max_frame_bytes)?)
}
