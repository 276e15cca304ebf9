//! Fault tests with real `meridian` processes: histories, checkers and harnesses.
//!
//! A fault test's client workers record every operation they issue to a JSON-lines
//! [history] file while the cluster is disturbed; afterwards the [checkers](check) judge
//! the run from that file and the replicas' final state. The file alone is enough to re-check the
//! history-only claims later: `check-history HISTORY.jsonl [--level LEVEL]`.
//!
//! | module | what |
//! |---|---|
//! | [`history`] | the event format, [`HistoryWriter`], [`read_history`] |
//! | [`check`] | the checkers, their exact claims, [`Summary`] and [`Violation`] |
//! | [`region`] | a local region of real `meridian` processes: start, `kill -9`, restart, per-replica final state |
//! | [`relay`] | a user-space UDP relay emulating a WAN link (delay, jitter, loss, one- and two-way partitions), for the multi-region tests (`meridian_wan::relay`, re-exported) |

pub mod check;
pub mod geo;
pub mod history;
pub mod region;
pub mod residency;
pub mod scan;

/// The WAN relay of `meridian demo`, from the `meridian-wan` crate (no RocksDB, no server).
pub use meridian_wan::relay;

pub use check::{Summary, Violation, ViolationKind};
pub use history::{read_history, Event, HistoryWriter};
