//! What the fuzz targets of this crate share: an allocator that turns any single allocation above
//! [`MAX_ALLOC_BYTES`] into a crash, so "never allocates unboundedly" is checked even without a
//! sanitizer (`-s none`: libFuzzer's own `-malloc_limit_mb` needs one). Each target installs it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: meridian_node_fuzz::CappedAlloc = meridian_node_fuzz::CappedAlloc;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation allowed: the codec's hard ceiling on what one decode may allocate
/// (`meridian_crdt::codec::ABSOLUTE_MAX_BYTES`, 64 MiB). Every fuzz input is far smaller than that,
/// so an allocation this large means a length or count taken from the input without a bound.
pub const MAX_ALLOC_BYTES: usize = meridian_crdt::codec::ABSOLUTE_MAX_BYTES;

/// What automerge 0.12 allows itself for one buffer whose length it reads from a change (its
/// `MAX_ALLOCATION`, 10^9 bytes, zero-filled before it checks that the change holds that many
/// bytes). A known upstream limit (docs/fuzzing.md), not fixable from Meridian's side short of
/// parsing automerge's format: code running under [`automerge_allowance`] gets this cap instead.
pub const AUTOMERGE_MAX_ALLOC_BYTES: usize = 1_000_000_000;

thread_local! {
    static IN_AUTOMERGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (code that hands bytes to automerge: materialising, reading or validating a document)
/// under automerge's own allocation cap, [`AUTOMERGE_MAX_ALLOC_BYTES`].
pub fn automerge_allowance<T>(f: impl FnOnce() -> T) -> T {
    IN_AUTOMERGE.with(|flag| flag.set(true));
    let result = f();
    IN_AUTOMERGE.with(|flag| flag.set(false));
    result
}

/// The system allocator, aborting (a crash libFuzzer reports with its input) on an allocation above
/// [`MAX_ALLOC_BYTES`].
pub struct CappedAlloc;

impl CappedAlloc {
    fn check(size: usize) {
        let cap = match IN_AUTOMERGE.try_with(std::cell::Cell::get) {
            Ok(true) => AUTOMERGE_MAX_ALLOC_BYTES,
            _ => MAX_ALLOC_BYTES,
        };
        if size > cap {
            // Small allocations from here on are fine (they do not come back to this branch).
            eprintln!(
                "fuzz: an allocation of {size} bytes, above the cap of {cap}: an unbounded length from the input"
            );
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
            std::process::abort();
        }
    }
}

// SAFETY: forwards to the system allocator unchanged; only refuses (by aborting) sizes above the cap.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// Puts back Rust's default panic hook in place of libfuzzer-sys's, which aborts on every panic,
/// even one the code under test catches. `meridian-crdt` catches automerge's panics on malformed
/// changes and answers an error (`doc.rs`, `guarded`), which is the behaviour to fuzz; a panic that
/// nothing catches still reaches libfuzzer-sys's own `catch_unwind` around the target, which aborts,
/// so it is still reported as a crash (with its message, printed by the default hook).
pub fn allow_caught_panics() {
    drop(std::panic::take_hook());
}
