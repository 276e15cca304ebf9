//! Fuzzes every decoder that sees bytes from the network: request and response frames and causal
//! token strings. Run on stable without a sanitizer: `cargo fuzz run decode_frame -s none`
//! (docs/fuzzing.md).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};

use libfuzzer_sys::fuzz_target;
use meridian_client::proto::{decode_frame_body, CausalToken, Request, Response, DEFAULT_MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame_body::<Request>(data, DEFAULT_MAX_FRAME_BYTES);
    let _ = decode_frame_body::<Response>(data, DEFAULT_MAX_FRAME_BYTES);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<CausalToken>();
    }
});

/// Largest single allocation allowed: the codec's ceiling on what one decode may allocate
/// (`meridian_crdt::codec::ABSOLUTE_MAX_BYTES`, 64 MiB).
/// Without a sanitizer libFuzzer cannot watch allocations (`-malloc_limit_mb` needs one), so this
/// allocator turns a larger one into a crash: a length taken from the input without a bound. (The
/// same allocator as `node/fuzz/src/lib.rs`; the client crates do not depend on the node's.)
const MAX_ALLOC_BYTES: usize = 64 << 20;

struct CappedAlloc;

fn check(size: usize) {
    if size > MAX_ALLOC_BYTES {
        // Small allocations from here on are fine (they do not come back to this branch).
        eprintln!("fuzz: an allocation of {size} bytes, above MAX_ALLOC_BYTES: an unbounded length from the input");
        eprintln!("{}", std::backtrace::Backtrace::force_capture());
        std::process::abort();
    }
}

// SAFETY: forwards to the system allocator unchanged; only refuses (by aborting) sizes above the cap.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;
