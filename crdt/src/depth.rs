//! A bound on nesting while decoding.
//!
//! Maps nest (a map field may hold a map), and bincode has no recursion limit: a hostile frame of a
//! few megabytes could nest a million levels and overflow the stack, killing the process instead of
//! failing one request. Every recursive field decodes through `nested`, which counts the depth on
//! the decoding thread and refuses more than [`MAX_NESTING`] levels. Writes are held to the same bound
//! (`Entry::mutation_delta`), so everything Meridian stores decodes again.

use serde::de::{Deserialize, Deserializer, Error as _};
use std::cell::Cell;

/// Deepest nesting of maps (and of map updates) accepted anywhere.
pub const MAX_NESTING: usize = 16;

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Decodes a recursive field one level deeper, refusing to go past [`MAX_NESTING`].
pub(crate) fn nested<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let depth = DEPTH.with(Cell::get);
    if depth >= MAX_NESTING {
        return Err(D::Error::custom(format!("nesting deeper than {MAX_NESTING} levels")));
    }
    /// Restores the depth however the decode ends (a panic included: a runtime worker that
    /// caught one must not decode every later value one level deeper).
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(self.0));
        }
    }
    DEPTH.with(|d| d.set(depth + 1));
    let _restore = Restore(depth);
    T::deserialize(deserializer)
}
