//! The operation-history format: one JSON object per line, one line per client operation.
//!
//! A fault test records every operation its client workers issue to a history file while the
//! cluster is being disturbed, and the checkers in [`crate::check`] judge the run from that file
//! (plus the replicas' final state). Everything a checker needs is in the file, so a failing run
//! can be re-checked later with `check-history HISTORY.jsonl`, without the cluster.
//!
//! ## A line
//!
//! ```json
//! {"process":"w3","op":"add","key":"set/7","value":"w3-41","consistency":"local_quorum","node":"n1","start_us":120433,"end_us":121907,"result":"ok"}
//! {"process":"w1","op":"read","key":"set/7","value":["w1-2","w3-41"],"consistency":"local_quorum","node":"n2","start_us":122010,"end_us":123377,"result":"ok"}
//! {"process":"w2","op":"read","key":"set/7","value":null,"consistency":"quorum","node":"n3","start_us":122100,"end_us":127100,"result":"timeout"}
//! {"process":"w4","op":"incr","key":"ctr/2","value":3,"consistency":"causal","node":"us1","region":"us","start_us":122200,"end_us":122900,"result":"ok"}
//! {"process":"w4","op":"read_counter","key":"ctr/2","value":17,"consistency":"causal","node":"eu2","region":"eu","start_us":123000,"end_us":123800,"result":"ok"}
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `process` | the client worker (the session) that issued the operation, e.g. `"w3"`. A session's operations are sequential and recorded in the order issued; it may fail over between nodes and regions and keeps its causal token |
//! | `op` | [`OP_ADD`] (add one element to a set key), [`OP_READ`] (read a set key), [`OP_INCR`] (add to a counter key), [`OP_READ_COUNTER`] (read a counter key); other kinds may be added later and are carried along unchecked |
//! | `key` | the set or counter key |
//! | `value` | add: the element (a string). Read: the elements returned (an array of strings) when the read is ok, otherwise `null` (ignored). Incr: the amount, a positive integer. Read_counter: the integer read when ok, otherwise `null` (ignored) |
//! | `consistency` | the level asked for: `"eventual"`, `"causal"`, `"local_quorum"`, `"quorum"` |
//! | `node` | the node the client talked to |
//! | `region` | optional: the region of that node, e.g. `"eu"`. Histories without it (single-region runs, older harnesses) count as one region |
//! | `start_us`, `end_us` | microseconds since the history's epoch, taken just before the request was sent and just after its answer arrived |
//! | `result` | [`RESULT_OK`], or the error code (`"quorum_unavailable"`, `"timeout"`, `"unavailable"`, ...) |
//!
//! Rules the checkers rely on:
//!
//! * **One clock.** All times of a history come from one monotonic clock (one [`HistoryWriter`]'s
//!   epoch), so `a.end_us < b.start_us` means `a` really finished before `b` started. Operations
//!   whose intervals overlap (including equal endpoints) are concurrent and never ordered.
//! * **Anything but `"ok"` is indeterminate.** A failed add may or may not have been applied (a
//!   timeout can come after the write landed on some replica), so it may show up in reads and final
//!   states, but nothing requires it to.
//! * **Unique elements.** Workers add elements no one else adds (e.g. `"w3-41"`), so an element
//!   names the add that wrote it. If an element is added more than once anyway (a worker re-issuing
//!   a failed add), the checkers stay sound: an element counts as acknowledged if any of its adds is
//!   ok, and as started at the earliest start of any of its adds.
//! * **Counters only go up.** Every incr adds a positive amount, so a counter's value is the sum of
//!   the incrs applied, and a failed incr, like a failed add, may or may not have been applied.
//! * **Line = event number.** Blank lines are malformed, so the n-th event (1-based, printed as
//!   `#n` in violations) is line n of the file.
//!
//! Unknown fields are ignored when reading, so a history written by a later harness that records
//! more per event can still be checked by this one.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

/// `op` of an add: `value` is the one element added.
pub const OP_ADD: &str = "add";
/// `op` of a read: `value` is the array of elements returned (when ok).
pub const OP_READ: &str = "read";
/// `op` of a counter increment: `value` is the amount, a positive integer.
pub const OP_INCR: &str = "incr";
/// `op` of a counter read: `value` is the integer read (when ok).
pub const OP_READ_COUNTER: &str = "read_counter";
/// `result` of an operation that succeeded; every other result is an error code.
pub const RESULT_OK: &str = "ok";

/// One client operation: one line of a history file. See the [module docs](self) for each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The client worker that issued the operation, e.g. `"w3"`.
    pub process: String,
    /// [`OP_ADD`], [`OP_READ`], [`OP_INCR`] or [`OP_READ_COUNTER`] (other kinds are carried along
    /// unchecked).
    pub op: String,
    /// The set or counter key operated on.
    pub key: String,
    /// Add: the element (a JSON string). Read: the elements returned (a JSON array of strings), or
    /// `null` when the read failed. Incr: the amount (a positive JSON integer). Read_counter: the
    /// value read (a JSON integer), or `null` when the read failed.
    pub value: serde_json::Value,
    /// The consistency level asked for, by its wire name (`"eventual"`, `"local_quorum"`, ...).
    pub consistency: String,
    /// The node the client talked to.
    pub node: String,
    /// The region of [`node`](Self::node), when the harness knows it. Optional in the file (absent
    /// means unknown; all events without one count as one region), and left out when writing `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// When the request was sent, in microseconds since the history's epoch.
    pub start_us: u64,
    /// When the answer (or the error) arrived, in microseconds since the history's epoch.
    pub end_us: u64,
    /// [`RESULT_OK`] or an error code; anything else than ok leaves an add's effect indeterminate.
    pub result: String,
}

impl Event {
    /// Whether the operation succeeded.
    pub fn is_ok(&self) -> bool {
        self.result == RESULT_OK
    }

    /// The element of an add (`None` for other kinds, or an add whose value is not a string).
    pub fn added_element(&self) -> Option<&str> {
        if self.op == OP_ADD {
            self.value.as_str()
        } else {
            None
        }
    }

    /// The elements an ok read returned (`None` for failed reads, other kinds, or a value that is
    /// not an array of strings).
    pub fn read_elements(&self) -> Option<Vec<&str>> {
        if self.op != OP_READ || !self.is_ok() {
            return None;
        }
        self.value.as_array()?.iter().map(|v| v.as_str()).collect()
    }

    /// The amount of an incr (`None` for other kinds, or an incr whose value is not a positive
    /// integer).
    pub fn incr_amount(&self) -> Option<u64> {
        if self.op == OP_INCR {
            self.value.as_u64().filter(|&amount| amount > 0)
        } else {
            None
        }
    }

    /// The value an ok counter read returned (`None` for failed reads, other kinds, or a value that
    /// is not an integer). Signed, so that an impossible negative read reaches the counter checker
    /// as a value out of range rather than being dropped.
    pub fn counter_value(&self) -> Option<i64> {
        if self.op != OP_READ_COUNTER || !self.is_ok() {
            return None;
        }
        self.value.as_i64()
    }

    /// The region of the event's node, `""` when unknown (all such events count as one region).
    pub fn region_or_default(&self) -> &str {
        self.region.as_deref().unwrap_or("")
    }

    /// Checks the shape the checkers rely on: `end_us >= start_us`, an add's value is a string, an ok
    /// read's value is an array of strings, an incr's value is a positive integer, an ok counter
    /// read's value is an integer. Events of unknown kinds only get the time check, so new kinds can
    /// be recorded before any checker knows them.
    pub fn validate(&self) -> Result<(), String> {
        if self.end_us < self.start_us {
            return Err(format!("end_us {} is before start_us {}", self.end_us, self.start_us));
        }
        if self.op == OP_ADD && self.added_element().is_none() {
            return Err(format!("an add's value must be a string, got {}", self.value));
        }
        let strings = |v: &serde_json::Value| v.as_array().is_some_and(|a| a.iter().all(serde_json::Value::is_string));
        if self.op == OP_READ && self.is_ok() && !strings(&self.value) {
            return Err(format!("an ok read's value must be an array of strings, got {}", self.value));
        }
        if self.op == OP_INCR && self.incr_amount().is_none() {
            return Err(format!("an incr's value must be a positive integer, got {}", self.value));
        }
        if self.op == OP_READ_COUNTER && self.is_ok() && self.counter_value().is_none() {
            return Err(format!("an ok read_counter's value must be an integer, got {}", self.value));
        }
        Ok(())
    }
}

impl fmt::Display for Event {
    /// One line for violation messages, e.g.
    /// `w3 add "w3-41" via n1 at local_quorum [120433..121907]us -> ok`, with the region after the
    /// node when known (`via us1 (us)`), an incr's amount (`incr +3`) and a counter read's value
    /// (`-> ok = 17`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.process, self.op)?;
        if let Some(element) = self.added_element() {
            write!(f, " {element:?}")?;
        }
        if let Some(amount) = self.incr_amount() {
            write!(f, " +{amount}")?;
        }
        write!(f, " via {}", self.node)?;
        if let Some(region) = &self.region {
            write!(f, " ({region})")?;
        }
        write!(f, " at {} [{}..{}]us -> {}", self.consistency, self.start_us, self.end_us, self.result)?;
        if let Some(elements) = self.read_elements() {
            write!(f, " ({} elements)", elements.len())?;
        }
        if let Some(value) = self.counter_value() {
            write!(f, " = {value}")?;
        }
        Ok(())
    }
}

/// Appends events to a history file, one JSON line each, from any number of threads or tasks.
///
/// Clones share the file and the epoch, so give every worker a clone and all their timestamps come
/// from one clock. Each [`record`](Self::record) writes its whole line with one `write_all` under
/// the lock, so lines never interleave, and reaches the OS before returning, so a test that panics
/// or is killed mid-run still leaves every recorded event in the file. (No fsync: the file only has
/// to survive the test process, not the machine.)
#[derive(Clone)]
pub struct HistoryWriter {
    file: Arc<Mutex<File>>,
    epoch: Instant,
    path: Arc<PathBuf>,
}

impl HistoryWriter {
    /// Creates (or truncates) the history file at `path`; the epoch is now.
    pub fn create(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("creating history file {}", path.display()))?;
        Ok(Self { file: Arc::new(Mutex::new(file)), epoch: Instant::now(), path: Arc::new(path.to_path_buf()) })
    }

    /// Microseconds since this history's epoch, from the monotonic clock: take it just before
    /// sending a request (`start_us`) and just after its answer arrives (`end_us`).
    pub fn now_us(&self) -> u64 {
        // u64 microseconds last 584,000 years; saturate rather than wrap all the same.
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The history file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` as one line. Refuses an event that fails [`Event::validate`], so a harness
    /// bug shows up at the operation that caused it rather than as an unreadable history later.
    pub fn record(&self, event: &Event) -> anyhow::Result<()> {
        event.validate().map_err(|e| anyhow!("refusing to record an invalid event ({e}): {event}"))?;
        // Serialise outside the lock; only the write itself is serialised between workers.
        let mut line = serde_json::to_vec(event).context("serialising a history event")?;
        line.push(b'\n');
        let mut file = self.file.lock().map_err(|_| anyhow!("history writer lock poisoned"))?;
        file.write_all(&line).with_context(|| format!("appending to history file {}", self.path.display()))
    }
}

impl fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryWriter").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Reads a whole history file. Fails on the first line that is blank, not an [`Event`] in JSON, or
/// fails [`Event::validate`], naming the file and the line number.
pub fn read_history(path: impl AsRef<Path>) -> anyhow::Result<Vec<Event>> {
    let path = path.as_ref();
    let file = File::open(path).with_context(|| format!("opening history file {}", path.display()))?;
    let mut events = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{}: reading line {number}", path.display()))?;
        if line.trim().is_empty() {
            bail!("{}: line {number}: blank line (every line must be one event)", path.display());
        }
        let event: Event = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {number}: not a history event: {}", path.display(), snippet(&line)))?;
        if let Err(e) = event.validate() {
            bail!("{}: line {number}: invalid event: {e}", path.display());
        }
        events.push(event);
    }
    Ok(events)
}

/// Writes `events` as a complete history file (for tests and for trimming a history down to a
/// failing key); [`read_history`] reads it back unchanged.
pub fn write_history(path: impl AsRef<Path>, events: &[Event]) -> anyhow::Result<()> {
    let writer = HistoryWriter::create(path)?;
    events.iter().try_for_each(|event| writer.record(event))
}

/// The start of a bad line, so an error message stays one readable line even for a huge read.
fn snippet(line: &str) -> String {
    const MAX: usize = 120;
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}
