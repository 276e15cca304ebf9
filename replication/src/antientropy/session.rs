//! The per-(partition, peer) state machine: pulls rounds from the peer and answers its requests.

use std::collections::VecDeque;

use meridian_crdt::{NodeId, VersionVector};

use super::digest::{infer_last_child, key_hash, HashRange};
use super::report::{RoundOutcome, RoundReport, SyncEvent, SyncStats};
use super::serve::{max_digest_parents, max_state_ranges, Server};
use super::{
    ConfigError, KeyState, LogRecord, PartitionId, PeerError, Resume, SyncConfig, SyncError, SyncMessage,
    SyncMessageV1, SyncStore,
};

enum Phase {
    Idle { next_round_ms: u64 },
    Running(Box<Round>),
}

struct Round {
    number: u64,
    requests: u32,
    fallbacks: u32,
    records_applied: u64,
    states_applied: u64,
    pending: SyncMessage,
    sent_ms: u64,
    attempts: u32,
    fallback: Option<Fallback>,
}

/// The digest fallback in progress.
struct Fallback {
    /// The server's vector, read before everything it serves in this fallback.
    raise_to: VersionVector,
    /// Differing ranges to split, with the server's digest when known (only the root's is not).
    compare: VecDeque<(HashRange, Option<u64>)>,
    /// Differing ranges to fetch whole.
    fetch: VecDeque<HashRange>,
    /// Where to resume the first range of `fetch`.
    fetch_after: Option<Vec<u8>>,
    /// What the outstanding request asked for.
    inflight: Inflight,
}

enum Inflight {
    Nothing,
    Digests { parents: Vec<(HashRange, Option<u64>)>, full: bool },
    States { ranges: usize },
}

enum Step {
    Send(SyncMessageV1),
    Finish(RoundOutcome),
}

/// Anti-entropy with one peer for one partition: pulls what this replica lacks in rounds, and
/// answers the peer's pulls. Sans-IO — see the [module docs](super) for the algorithm.
///
/// Drive it with [`step`](Self::step) for every message from the peer, [`tick`](Self::tick) at least
/// by [`poll_timeout`](Self::poll_timeout), and after each call drain
/// [`poll_outbound`](Self::poll_outbound) (send to the peer) and [`poll_event`](Self::poll_event).
pub struct SyncSession {
    config: SyncConfig,
    partition: PartitionId,
    local: NodeId,
    peer: NodeId,
    next_request: u64,
    rounds: u64,
    phase: Phase,
    outbound: VecDeque<SyncMessage>,
    events: VecDeque<SyncEvent>,
    peer_safe_hlc: u64,
    stats: SyncStats,
}

type Result<T, E> = std::result::Result<T, SyncError<E>>;

impl SyncSession {
    /// A session of `local` with `peer` for `partition`. Request ids start at `first_request_id`;
    /// pick it so that ids cannot repeat those of an earlier session with the same peer whose replies
    /// may still be in flight (e.g. random, or one past the last id used). The first round starts at
    /// the first tick.
    pub fn new(
        config: SyncConfig,
        partition: PartitionId,
        local: NodeId,
        peer: NodeId,
        first_request_id: u64,
    ) -> std::result::Result<Self, ConfigError> {
        config.validate()?;
        Ok(SyncSession {
            config,
            partition,
            local,
            peer,
            next_request: first_request_id,
            rounds: 0,
            phase: Phase::Idle { next_round_ms: 0 },
            outbound: VecDeque::new(),
            events: VecDeque::new(),
            peer_safe_hlc: 0,
            stats: SyncStats::default(),
        })
    }

    /// The partition.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// This replica.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The peer.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Counters.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Whether no round is running.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle { .. })
    }

    /// When [`tick`](Self::tick) next has something to do: start a round or retransmit.
    pub fn poll_timeout(&self) -> u64 {
        match &self.phase {
            Phase::Idle { next_round_ms } => *next_round_ms,
            Phase::Running(round) => round.sent_ms.saturating_add(self.config.retransmit_ms),
        }
    }

    /// The next message to send to the peer.
    pub fn poll_outbound(&mut self) -> Option<SyncMessage> {
        self.outbound.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SyncEvent> {
        self.events.pop_front()
    }

    /// Starts a round now unless one is running; returns whether it started.
    pub fn start_round<S: SyncStore>(
        &mut self,
        store: &mut S,
        now_ms: u64,
    ) -> std::result::Result<bool, SyncError<S::Error>> {
        if !self.is_idle() {
            return Ok(false);
        }
        let offer = match self.offer(store) {
            Ok(offer) => offer,
            Err(e) => {
                self.phase = Phase::Idle { next_round_ms: now_ms.saturating_add(self.config.round_interval_ms) };
                return Err(e);
            }
        };
        self.rounds += 1;
        self.stats.rounds_started += 1;
        self.stats.requests_sent += 1;
        let pending = SyncMessage::V1(offer);
        self.push_outbound(pending.clone());
        self.phase = Phase::Running(Box::new(Round {
            number: self.rounds,
            requests: 1,
            fallbacks: 0,
            records_applied: 0,
            states_applied: 0,
            pending,
            sent_ms: now_ms,
            attempts: 1,
            fallback: None,
        }));
        Ok(true)
    }

    /// Advances time: starts the next round when due, retransmits an unanswered request, or abandons
    /// the round after `max_attempts`.
    pub fn tick<S: SyncStore>(&mut self, store: &mut S, now_ms: u64) -> std::result::Result<(), SyncError<S::Error>> {
        match &mut self.phase {
            Phase::Idle { next_round_ms } => {
                if now_ms >= *next_round_ms {
                    self.start_round(store, now_ms)?;
                }
            }
            Phase::Running(round) => {
                if now_ms >= round.sent_ms.saturating_add(self.config.retransmit_ms) {
                    if round.attempts >= self.config.max_attempts {
                        self.finish(RoundOutcome::TimedOut, now_ms);
                    } else {
                        round.attempts += 1;
                        round.sent_ms = now_ms;
                        let again = round.pending.clone();
                        self.stats.retransmits += 1;
                        self.push_outbound(again);
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles one message from the peer: answers a request, or advances the round with a reply.
    ///
    /// An error means the message was refused (and, for a reply, the round abandoned); the session
    /// stays usable.
    pub fn step<S: SyncStore>(
        &mut self,
        store: &mut S,
        now_ms: u64,
        message: SyncMessage,
    ) -> std::result::Result<(), SyncError<S::Error>> {
        if message.partition() != self.partition {
            let error = PeerError::WrongPartition { expected: self.partition, got: message.partition() };
            return Err(SyncError::Peer { peer: self.peer, error });
        }
        let SyncMessage::V1(message) = message;
        let server = Server { store: &*store, config: &self.config, peer: self.peer, partition: self.partition };
        let answer = match message {
            SyncMessageV1::Offer { request, vv, safe_hlc, .. } => {
                let (answer, mine) = server.offer(request, &vv)?;
                self.note_peer_safe_time(safe_hlc, vv.get(self.peer));
                if let Phase::Idle { next_round_ms } = &mut self.phase {
                    if !mine.dominates(&vv) {
                        // The peer holds something this replica lacks: pull it now.
                        *next_round_ms = (*next_round_ms).min(now_ms);
                    }
                }
                answer
            }
            SyncMessageV1::DigestRequest { request, split_bits, full, parents, .. } => {
                server.digests(request, split_bits, full, &parents)?
            }
            SyncMessageV1::StatesRequest { request, ranges, after_key, .. } => {
                server.states(request, &ranges, after_key.as_deref())?
            }
            reply => return self.on_reply(store, now_ms, reply),
        };
        self.stats.answers_sent += 1;
        self.push_outbound(SyncMessage::V1(answer));
        Ok(())
    }

    fn on_reply<S: SyncStore>(&mut self, store: &mut S, now_ms: u64, reply: SyncMessageV1) -> Result<(), S::Error> {
        let request = reply.request();
        let is_pending = matches!(&self.phase, Phase::Running(round) if round.pending.request() == request);
        if !is_pending {
            self.stats.stale_replies += 1;
            return Ok(());
        }
        let Phase::Running(mut round) = std::mem::replace(&mut self.phase, Phase::Idle { next_round_ms: 0 }) else {
            unreachable!("checked above");
        };
        match self.advance(store, &mut round, reply) {
            Ok(Step::Send(_)) if round.requests >= self.config.max_requests_per_round => {
                self.phase = Phase::Running(round);
                self.finish(RoundOutcome::RequestLimit, now_ms);
            }
            Ok(Step::Send(next)) => {
                let next = SyncMessage::V1(next);
                round.requests += 1;
                round.pending = next.clone();
                round.sent_ms = now_ms;
                round.attempts = 1;
                self.stats.requests_sent += 1;
                self.push_outbound(next);
                self.phase = Phase::Running(round);
            }
            Ok(Step::Finish(outcome)) => {
                self.phase = Phase::Running(round);
                self.finish(outcome, now_ms);
            }
            Err(e) => {
                self.phase = Phase::Running(round);
                self.finish(RoundOutcome::Failed, now_ms);
                return Err(e);
            }
        }
        Ok(())
    }

    /// What the round does with the reply to its outstanding request.
    fn advance<S: SyncStore>(
        &mut self,
        store: &mut S,
        round: &mut Round,
        reply: SyncMessageV1,
    ) -> Result<Step, S::Error> {
        let SyncMessage::V1(pending) = &round.pending;
        let expected = kind(pending);
        match (reply, &mut round.fallback) {
            (SyncMessageV1::Records { records, more, .. }, None) => {
                if more && records.is_empty() {
                    return Err(self.peer_error(PeerError::NoProgress));
                }
                let applied = self.apply_records(store, records)?;
                round.records_applied += applied;
                if more {
                    Ok(Step::Send(self.offer(store)?))
                } else {
                    Ok(Step::Finish(RoundOutcome::Completed))
                }
            }
            (SyncMessageV1::Truncated { vv, .. }, None) => {
                if round.fallbacks >= self.config.max_fallbacks_per_round {
                    return Ok(Step::Finish(RoundOutcome::FallbackLimit));
                }
                round.fallbacks += 1;
                self.stats.fallbacks_started += 1;
                let root = self.digests(store, &[HashRange::ROOT])?[0];
                let mut fallback = Fallback {
                    raise_to: vv,
                    compare: VecDeque::new(),
                    fetch: VecDeque::new(),
                    fetch_after: None,
                    inflight: Inflight::Nothing,
                };
                if root.count <= self.config.leaf_keys {
                    fallback.fetch.push_back(HashRange::ROOT);
                } else {
                    fallback.compare.push_back((HashRange::ROOT, None));
                }
                round.fallback = Some(fallback);
                self.fallback_next(store, round)
            }
            (SyncMessageV1::DigestReply { digests, .. }, Some(fallback)) => {
                let Inflight::Digests { parents, full } = std::mem::replace(&mut fallback.inflight, Inflight::Nothing)
                else {
                    return Err(self.unexpected(expected, "DigestReply"));
                };
                self.compare_digests(store, fallback, &parents, full, &digests)?;
                self.fallback_next(store, round)
            }
            (SyncMessageV1::States { states, resume, .. }, Some(fallback)) => {
                let Inflight::States { ranges } = std::mem::replace(&mut fallback.inflight, Inflight::Nothing) else {
                    return Err(self.unexpected(expected, "States"));
                };
                round.states_applied += self.take_states(store, fallback, ranges, states, resume)?;
                self.fallback_next(store, round)
            }
            (other, _) => Err(self.unexpected(expected, kind(&other))),
        }
    }

    /// Applies the records that extend this replica's vector; duplicates are skipped, a gap refused.
    fn apply_records<S: SyncStore>(&mut self, store: &mut S, records: Vec<LogRecord>) -> Result<u64, S::Error> {
        let mut have = store.partition_vv(self.partition).map_err(SyncError::Store)?;
        let mut fresh = Vec::with_capacity(records.len());
        for record in records {
            let held = have.get(record.origin);
            if record.seq <= held {
                continue;
            }
            if record.seq != held + 1 {
                return Err(self.peer_error(PeerError::Gap { origin: record.origin, have: held, got: record.seq }));
            }
            have.observe(record.origin, record.seq);
            fresh.push(record);
        }
        if !fresh.is_empty() {
            store.apply_remote(self.partition, &fresh).map_err(SyncError::Store)?;
        }
        let applied = fresh.len() as u64;
        self.stats.records_applied += applied;
        Ok(applied)
    }

    /// Classifies the children of the parents just compared: equal, to split, or to fetch.
    fn compare_digests<S: SyncStore>(
        &mut self,
        store: &mut S,
        fallback: &mut Fallback,
        parents: &[(HashRange, Option<u64>)],
        full: bool,
        digests: &[u8],
    ) -> Result<(), S::Error> {
        let split = self.config.split_bits;
        let per_parent = (1usize << split) - usize::from(!full);
        if digests.len() != parents.len() * per_parent * 8 {
            let why = format!("{} digest bytes for {} parents", digests.len(), parents.len());
            return Err(self.peer_error(PeerError::Malformed(why)));
        }
        let mut children = Vec::with_capacity(parents.len() << split);
        let mut theirs = Vec::with_capacity(parents.len() << split);
        for ((parent, parent_digest), words) in parents.iter().zip(digests.chunks(per_parent * 8)) {
            let given = words.chunks(8).map(|w| u64::from_le_bytes(w.try_into().expect("chunks of 8")));
            let first = theirs.len();
            theirs.extend(given);
            if !full {
                let parent_digest = parent_digest.expect("only full requests have parents of unknown digest");
                theirs.push(infer_last_child(parent_digest, theirs[first..].iter().copied()));
            }
            children.extend(parent.children(split));
        }
        let mine = self.digests(store, &children)?;
        for ((child, their), my) in children.into_iter().zip(theirs).zip(mine) {
            if my.digest == their || their == 0 {
                // Equal, or the peer holds no key here: nothing to pull.
                continue;
            }
            if my.count <= self.config.leaf_keys || child.bits() + split > self.config.max_depth_bits {
                fallback.fetch.push_back(child);
            } else {
                fallback.compare.push_back((child, Some(their)));
            }
        }
        Ok(())
    }

    /// Joins fetched states in and moves the fetch queue past what the reply completed.
    fn take_states<S: SyncStore>(
        &mut self,
        store: &mut S,
        fallback: &mut Fallback,
        ranges: usize,
        states: Vec<KeyState>,
        resume: Option<Resume>,
    ) -> Result<u64, S::Error> {
        // States come range by range in request order, and within a range in ascending (key hash,
        // key) order after the resume point: anything else is out of range, or a rewind that could
        // loop.
        let mut cursor = 0;
        let mut last: Option<(u64, &[u8])> = fallback.fetch_after.as_deref().map(|k| (key_hash(k), k));
        for state in &states {
            let hash = key_hash(&state.key);
            while cursor < ranges && !fallback.fetch[cursor].contains_hash(hash) {
                cursor += 1;
                last = None;
            }
            if cursor == ranges {
                return Err(self.peer_error(PeerError::OutOfRange));
            }
            if last.is_some_and(|previous| (hash, state.key.as_slice()) <= previous) {
                return Err(self.peer_error(PeerError::Malformed("states out of order or repeated".into())));
            }
            last = Some((hash, &state.key));
        }
        let done = match &resume {
            None => ranges,
            Some(r) => {
                let done = r.done_ranges as usize;
                if done > ranges || (done == ranges && r.after_key.is_some()) {
                    return Err(
                        self.peer_error(PeerError::Malformed(format!("resume after {done} of {ranges} ranges")))
                    );
                }
                if done == 0 && states.is_empty() && r.after_key == fallback.fetch_after {
                    return Err(self.peer_error(PeerError::NoProgress));
                }
                done
            }
        };
        if !states.is_empty() {
            store.apply_states(self.partition, &states, None).map_err(SyncError::Store)?;
        }
        fallback.fetch.drain(..done);
        fallback.fetch_after = resume.and_then(|r| r.after_key);
        let applied = states.len() as u64;
        self.stats.states_applied += applied;
        Ok(applied)
    }

    /// The fallback's next request, or — when nothing is left to compare or fetch — the vector raise
    /// and a return to the log path.
    fn fallback_next<S: SyncStore>(&mut self, store: &mut S, round: &mut Round) -> Result<Step, S::Error> {
        let fallback = round.fallback.as_mut().expect("in a fallback");
        if let Some(&(_, first)) = fallback.compare.front() {
            // The root's digest is unknown, so its request asks for every child; all others leave
            // the last child out.
            let full = first.is_none();
            let limit = if full { 1 } else { max_digest_parents(&self.config, self.config.split_bits) };
            let mut parents = Vec::new();
            while parents.len() < limit && fallback.compare.front().is_some_and(|(_, d)| d.is_none() == full) {
                parents.extend(fallback.compare.pop_front());
            }
            let ranges = parents.iter().map(|(range, _)| *range).collect();
            fallback.inflight = Inflight::Digests { parents, full };
            return Ok(Step::Send(SyncMessageV1::DigestRequest {
                partition: self.partition,
                request: self.take_request_id(),
                split_bits: self.config.split_bits,
                full,
                parents: ranges,
            }));
        }
        if !fallback.fetch.is_empty() {
            let after_len = fallback.fetch_after.as_ref().map_or(0, Vec::len);
            let count = fallback.fetch.len().min(max_state_ranges(&self.config, after_len));
            fallback.inflight = Inflight::States { ranges: count };
            return Ok(Step::Send(SyncMessageV1::StatesRequest {
                partition: self.partition,
                request: self.take_request_id(),
                ranges: fallback.fetch.iter().take(count).copied().collect(),
                after_key: fallback.fetch_after.clone(),
            }));
        }
        // Every range compared, every differing one fetched: this replica now holds, for every key,
        // at least the server's state as read after `raise_to`.
        store.apply_states(self.partition, &[], Some(&fallback.raise_to)).map_err(SyncError::Store)?;
        self.stats.fallbacks_completed += 1;
        round.fallback = None;
        Ok(Step::Send(self.offer(store)?))
    }

    fn offer<S: SyncStore>(&mut self, store: &S) -> Result<SyncMessageV1, S::Error> {
        // Safe time first, then the vector (the store's contract relates the two in that order).
        let safe_hlc = store.safe_hlc(self.partition).map_err(SyncError::Store)?;
        let vv = store.partition_vv(self.partition).map_err(SyncError::Store)?;
        Ok(SyncMessageV1::Offer { partition: self.partition, request: self.take_request_id(), vv, safe_hlc })
    }

    fn digests<S: SyncStore>(&self, store: &S, ranges: &[HashRange]) -> Result<Vec<super::RangeDigest>, S::Error> {
        let digests = store.range_digests(self.partition, ranges).map_err(SyncError::Store)?;
        assert_eq!(digests.len(), ranges.len(), "SyncStore::range_digests must answer every range");
        Ok(digests)
    }

    fn take_request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        id
    }

    fn finish(&mut self, outcome: RoundOutcome, now_ms: u64) {
        let previous = std::mem::replace(
            &mut self.phase,
            Phase::Idle { next_round_ms: now_ms.saturating_add(self.config.round_interval_ms) },
        );
        let Phase::Running(round) = previous else { return };
        if outcome == RoundOutcome::Completed {
            self.stats.rounds_completed += 1;
        } else {
            self.stats.rounds_abandoned += 1;
        }
        self.push_event(SyncEvent::RoundDone(RoundReport {
            round: round.number,
            outcome,
            fallbacks: round.fallbacks,
            requests: round.requests,
            records_applied: round.records_applied,
            states_applied: round.states_applied,
        }));
    }

    fn note_peer_safe_time(&mut self, hlc: u64, covers_seq: u64) {
        if hlc > self.peer_safe_hlc {
            self.peer_safe_hlc = hlc;
            let event = SyncEvent::PeerSafeTime { partition: self.partition, origin: self.peer, hlc, covers_seq };
            self.push_event(event);
        }
    }

    fn push_outbound(&mut self, message: SyncMessage) {
        if self.outbound.len() < self.config.max_queued {
            self.outbound.push_back(message);
        } else {
            self.stats.dropped += 1;
        }
    }

    fn push_event(&mut self, event: SyncEvent) {
        if self.events.len() < self.config.max_queued {
            self.events.push_back(event);
        } else {
            self.stats.dropped += 1;
        }
    }

    fn peer_error<E: std::error::Error + 'static>(&self, error: PeerError) -> SyncError<E> {
        SyncError::Peer { peer: self.peer, error }
    }

    fn unexpected<E: std::error::Error + 'static>(&self, expected: &'static str, got: &'static str) -> SyncError<E> {
        self.peer_error(PeerError::UnexpectedReply { expected, got })
    }
}

/// The message's kind, for error messages; for a request, the reply kind it calls for.
fn kind(message: &SyncMessageV1) -> &'static str {
    match message {
        SyncMessageV1::Offer { .. } => "Records or Truncated",
        SyncMessageV1::Records { .. } => "Records",
        SyncMessageV1::Truncated { .. } => "Truncated",
        SyncMessageV1::DigestRequest { .. } => "DigestReply",
        SyncMessageV1::DigestReply { .. } => "DigestReply",
        SyncMessageV1::StatesRequest { .. } => "States",
        SyncMessageV1::States { .. } => "States",
    }
}
