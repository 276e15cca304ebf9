//! Fuzzes every decoder that sees bytes from the network: request and response frames and causal
//! token strings. Run on stable without a sanitizer: `cargo fuzz run decode_frame -s none`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_client::proto::{decode_frame_body, CausalToken, Request, Response, DEFAULT_MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame_body::<Request>(data, DEFAULT_MAX_FRAME_BYTES);
    let _ = decode_frame_body::<Response>(data, DEFAULT_MAX_FRAME_BYTES);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<CausalToken>();
    }
});
