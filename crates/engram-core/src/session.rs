//! Streaming sessions: init → active ⇄
//! paused → closed, per-session sequence numbers, idle timeout, close with
//! drain, and resume within a window.
//!
//! A session numbers its observations 1, 2, 3, … . The observation that
//! carries the expected number is answered and uses it, accepted or
//! rejected; one with any other number is rejected as out of order and uses
//! nothing. Every answer is recorded by the commit thread itself (not by
//! the stream that asked), so when a client reconnects the session knows the
//! outcome of everything it was sent, reports the last answered number, and
//! replays recorded answers for numbers the client sends again: nothing is
//! stored twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::access::Denial;
use crate::commit::Reply;
use crate::error::{Error, Result};
use crate::model::{EpisodeInput, Remembered, SpaceId};
use crate::queue::{LevelChange, Priority};

/// A session with no message for this long is closed (heartbeats count).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A closed or dropped session can be resumed for this long.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(300);
/// Answers kept per session for replay after a resume: more than a client
/// keeps in flight (clients slow down long before).
pub const REPLAY_WINDOW: usize = 4096;
/// Sessions, open and resumable, that one server keeps.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Answers kept for replay by sessions without a stream (closed or
/// dropped, waiting to be resumed), all together: about 150 bytes each, so
/// ~150 MB. Past it the sessions released longest ago are forgotten early
/// (a resume then fails with `session_not_found`; the client opens a new
/// session and resends, and episode ids keep that from storing anything
/// twice). Without it, `max_sessions` × `REPLAY_WINDOW` answers could pile
/// up (tens of GB).
pub const DEFAULT_MAX_RETAINED_ANSWERS: usize = 1_000_000;
/// Events queued for one session's stream. Bounded: pressure changes that
/// find it nearly full are dropped (the stream reads the current level
/// when it handles one, so the last queued one brings it up to date), and
/// the last place is kept for the one event that ends a session.
pub const SESSION_EVENT_BUFFER: usize = 32;
/// Recalls one stream may have running at once (MemoryFlow / WebSocket).
pub const DEFAULT_MAX_RECALLS_PER_STREAM: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub idle_timeout_secs: u64,
    pub resume_window_secs: u64,
    pub max_sessions: usize,
    /// Recalls one stream may have running at once; one more is answered
    /// `resource_exhausted` (its batches wait for the client, so without a
    /// bound one stream could hold any number of them).
    pub max_recalls_per_stream: usize,
    /// Answers kept for replay by released sessions, all together (see
    /// [`DEFAULT_MAX_RETAINED_ANSWERS`]).
    pub max_retained_answers: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT.as_secs(),
            resume_window_secs: DEFAULT_RESUME_WINDOW.as_secs(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_recalls_per_stream: DEFAULT_MAX_RECALLS_PER_STREAM,
            max_retained_answers: DEFAULT_MAX_RETAINED_ANSWERS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionPhase {
    Active,
    Paused,
    Closing,
    Closed,
}

pub use crate::error::RejectReason;

/// The answer to one observation.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Accepted(Remembered),
    Rejected {
        reason: RejectReason,
        message: String,
        retry_after: Option<Duration>,
    },
}

/// An answer with the client's sequence number.
#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    pub sequence_number: u64,
    pub answer: Answer,
    /// True when this answers a number sent again after a resume: the
    /// original answer, nothing done twice.
    pub replayed: bool,
}

impl Ack {
    pub fn is_accepted(&self) -> bool {
        matches!(self.answer, Answer::Accepted(_))
    }
}

/// What opening (or resuming) a session reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    pub session_id: String,
    /// The last sequence number answered (0 for a new session): resend from here + 1.
    pub last_acked_sequence: u64,
    pub resumed: bool,
}

/// What closing reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Closed {
    /// The last sequence number answered (accepted, or rejected with its number used).
    pub final_sequence: u64,
    pub accepted: u64,
    pub rejected: u64,
}

/// Something a stream should tell its client.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// The backpressure level changed (SLOW_DOWN carries a suggested rate).
    Pressure(LevelChange),
    /// The session was idle longer than the idle timeout and is closed.
    IdleTimeout,
    /// Another stream resumed this session; this one should end.
    TakenOver,
}

struct Shared {
    id: String,
    space: SpaceId,
    state: Mutex<State>,
    drained: Notify,
}

struct State {
    phase: SessionPhase,
    /// The next sequence number this session takes.
    expected: u64,
    accepted: u64,
    rejected: u64,
    in_flight: usize,
    /// Recent answers by sequence number, for replay after a resume.
    answers: BTreeMap<u64, Ack>,
    /// Numbers up to this one may be replayed (set at resume).
    replay_upto: u64,
    /// Which stream holds the session (0: none).
    holder: u64,
    events: Option<mpsc::Sender<SessionEvent>>,
    last_activity: Instant,
    /// When it closed or lost its stream: the resume window runs from here.
    released_at: Option<Instant>,
}

impl Shared {
    fn record(&self, ack: Ack) {
        let mut st = self.state.lock();
        if ack.is_accepted() {
            st.accepted += 1;
        } else {
            st.rejected += 1;
        }
        st.answers.insert(ack.sequence_number, ack);
        while st.answers.len() > REPLAY_WINDOW {
            st.answers.pop_first();
        }
        st.in_flight -= 1;
        if st.in_flight == 0 {
            self.drained.notify_waiters();
        }
    }

    async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.state.lock().in_flight == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// All sessions of one server: the engine's, or in cluster mode the
/// node's (sessions live on the node their stream is attached to).
pub struct Registry {
    config: SessionConfig,
    sessions: Mutex<HashMap<String, Arc<Shared>>>,
    next_holder: AtomicU64,
}

impl Registry {
    pub fn new(config: SessionConfig) -> Self {
        Registry {
            config,
            sessions: Mutex::new(HashMap::new()),
            next_holder: AtomicU64::new(1),
        }
    }

    /// Streams attached right now.
    pub fn active(&self) -> usize {
        self.sessions
            .lock()
            .values()
            .filter(|s| s.state.lock().holder != 0)
            .count()
    }

    /// Sessions kept: attached, and released but resumable.
    pub fn known(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Tells every attached stream about a backpressure change.
    pub fn broadcast(&self, change: &LevelChange) {
        for s in self.sessions.lock().values() {
            if let Some(tx) = &s.state.lock().events {
                // Never the last place: that one is for IdleTimeout /
                // TakenOver, sent at most once (the sender is taken).
                if tx.capacity() > 1 {
                    let _ = tx.try_send(SessionEvent::Pressure(change.clone()));
                }
            }
        }
    }

    /// Closes idle sessions and forgets ones past their resume window.
    pub fn sweep(&self) {
        let idle = Duration::from_secs(self.config.idle_timeout_secs);
        let window = Duration::from_secs(self.config.resume_window_secs);
        self.sessions.lock().retain(|_, s| {
            let mut st = s.state.lock();
            if st.holder != 0
                && st.phase != SessionPhase::Closed
                && st.last_activity.elapsed() > idle
            {
                st.phase = SessionPhase::Closed;
                st.released_at = Some(Instant::now());
                if let Some(tx) = st.events.take() {
                    let _ = tx.try_send(SessionEvent::IdleTimeout);
                }
                st.holder = 0;
            }
            let expired = st.holder == 0 && st.released_at.is_some_and(|t| t.elapsed() > window);
            !(expired && st.in_flight == 0)
        });
        self.bound_retained_answers();
    }

    /// Forgets released sessions, longest released first, while the answers
    /// they keep for replay exceed `max_retained_answers`.
    fn bound_retained_answers(&self) {
        let mut sessions = self.sessions.lock();
        let mut released: Vec<(Instant, usize, String)> = Vec::new();
        let mut total = 0;
        for (id, s) in sessions.iter() {
            let st = s.state.lock();
            if st.holder == 0 && st.in_flight == 0 {
                if let Some(at) = st.released_at {
                    total += st.answers.len();
                    released.push((at, st.answers.len(), id.clone()));
                }
            }
        }
        if total <= self.config.max_retained_answers {
            return;
        }
        released.sort_unstable();
        let mut forgotten = 0;
        for (_, answers, id) in released {
            if total <= self.config.max_retained_answers {
                break;
            }
            sessions.remove(&id);
            total -= answers;
            forgotten += 1;
        }
        tracing::warn!(
            forgotten,
            limit = self.config.max_retained_answers,
            "released sessions forgotten before their resume window ended: the answers they kept for replay exceeded sessions.max_retained_answers"
        );
    }
}

/// One stream's hold on a session. Dropping it releases the session, which
/// stays resumable for the resume window.
pub struct Session {
    host: Arc<dyn SessionHost>,
    shared: Arc<Shared>,
    holder: u64,
    events: Option<mpsc::Receiver<SessionEvent>>,
}

/// The answer to one observation, once known. Answers resolve in the
/// order their observations were submitted.
pub enum PendingAck {
    Ready(Option<Ack>),
    Waiting(oneshot::Receiver<Ack>),
}

impl std::future::Future for PendingAck {
    type Output = Ack;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Ack> {
        match self.get_mut() {
            PendingAck::Ready(ack) => {
                std::task::Poll::Ready(ack.take().expect("PendingAck polled after completion"))
            }
            PendingAck::Waiting(rx) => std::pin::Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| Ack {
                    sequence_number: 0,
                    answer: Answer::Rejected {
                        reason: RejectReason::Unavailable,
                        message: "the server stopped before answering".into(),
                        retry_after: None,
                    },
                    replayed: false,
                })
            }),
        }
    }
}

/// Where an observation came from: its session and sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    pub session_id: &'a str,
    pub sequence: u64,
}

/// What a session needs from what stores its observations: submitting an
/// observation and counting a rejection decided by the sequence rules.
/// [`Engine`] implements it (in `engine.rs`), and in cluster mode the
/// node's publisher to the partition streams; the trait keeps this module
/// from depending on the engine, which depends on it.
///
/// [`Engine`]: crate::Engine
pub trait SessionHost: Send + Sync + 'static {
    /// Submits one observation; `reply` is called with its answer (not
    /// called when this returns `Err`). `origin` names the session and
    /// number it came with (a cluster node derives the id of an episode
    /// sent without one from it, so that a record published twice is
    /// applied once).
    fn submit(
        &self,
        space: &str,
        input: EpisodeInput,
        priority: Priority,
        received: Instant,
        origin: Origin<'_>,
        reply: Reply<Remembered>,
    ) -> Result<()>;

    fn record_rejection(&self, space: &SpaceId, reason: RejectReason);
}

impl Registry {
    /// Opens a new session on `space`, or resumes `resume_session_id`
    /// (waiting until everything it was sent is answered, so the reported
    /// last sequence is exact). A resumed session taken from another stream
    /// ends that stream ([`SessionEvent::TakenOver`]). The engine's own
    /// checks (shutting down, the space) come first, in `Engine::open_session`.
    ///
    /// # Errors
    /// [`Error::SessionNotFound`] for an unknown or expired session id;
    /// [`Error::InvalidArgument`] when resuming with another space;
    /// [`Error::SessionLimit`] at the session limit.
    pub async fn open(
        &self,
        host: Arc<dyn SessionHost>,
        space: SpaceId,
        resume_session_id: Option<&str>,
    ) -> Result<(Session, Opened)> {
        let registry = self;
        let holder = registry.next_holder.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SESSION_EVENT_BUFFER);
        let (shared, resumed) = match resume_session_id.filter(|s| !s.is_empty()) {
            Some(id) => {
                let shared = registry
                    .sessions
                    .lock()
                    .get(id)
                    .cloned()
                    .ok_or_else(|| Error::SessionNotFound(id.to_owned()))?;
                if shared.space != space {
                    return Err(Error::invalid(
                        "resume_session_id",
                        format!(
                            "session '{id}' belongs to memory space '{}', not '{space}'",
                            shared.space
                        ),
                    ));
                }
                // Take the session first, then wait for its answers: once
                // the holder has changed, the stream that held it can number
                // nothing more, so the drain ends and the last number
                // reported below has its answer recorded. (Draining first
                // raced with that stream's next observation, and never
                // ended while it kept sending.)
                {
                    let mut st = shared.state.lock();
                    if let Some(old) = st.events.take() {
                        let _ = old.try_send(SessionEvent::TakenOver);
                    }
                    st.holder = holder;
                }
                shared.wait_drained().await;
                (shared, true)
            }
            None => {
                let mut sessions = registry.sessions.lock();
                if sessions.len() >= registry.config.max_sessions {
                    return Err(Error::SessionLimit {
                        limit: registry.config.max_sessions,
                        retry_after: Duration::from_secs(1),
                    });
                }
                let id = uuid::Uuid::new_v4().to_string();
                let shared = Arc::new(Shared {
                    id: id.clone(),
                    space,
                    state: Mutex::new(State {
                        phase: SessionPhase::Active,
                        expected: 1,
                        accepted: 0,
                        rejected: 0,
                        in_flight: 0,
                        answers: BTreeMap::new(),
                        replay_upto: 0,
                        holder: 0,
                        events: None,
                        last_activity: Instant::now(),
                        released_at: None,
                    }),
                    drained: Notify::new(),
                });
                sessions.insert(id, shared.clone());
                (shared, false)
            }
        };
        let last = {
            let mut st = shared.state.lock();
            if st.holder != holder && resumed {
                // A later resume took the session while this one drained:
                // the later one wins, as a take-over always does.
                return Err(Error::invalid(
                    "resume_session_id",
                    format!(
                        "session '{}' was resumed by another stream while this resume waited for its answers",
                        shared.id
                    ),
                ));
            }
            if let Some(old) = st.events.replace(tx) {
                let _ = old.try_send(SessionEvent::TakenOver);
            }
            st.holder = holder;
            st.phase = SessionPhase::Active;
            st.released_at = None;
            st.last_activity = Instant::now();
            st.replay_upto = st.expected - 1;
            st.expected - 1
        };
        let opened = Opened {
            session_id: shared.id.clone(),
            last_acked_sequence: last,
            resumed,
        };
        Ok((
            Session {
                host,
                shared,
                holder,
                events: Some(rx),
            },
            opened,
        ))
    }
}

impl Session {
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    pub fn space(&self) -> &SpaceId {
        &self.shared.space
    }

    pub fn phase(&self) -> SessionPhase {
        self.shared.state.lock().phase
    }

    /// The next sequence number this session expects.
    pub fn expected_sequence(&self) -> u64 {
        self.shared.state.lock().expected
    }

    /// Events for this stream (backpressure, idle timeout, take-over). Once.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<SessionEvent>> {
        self.events.take()
    }

    /// Any client message keeps the session from idling out.
    pub fn heartbeat(&self) {
        self.shared.state.lock().last_activity = Instant::now();
    }

    /// Client flow control. Observations are still taken while paused; the
    /// transport stops sending recall batches to a paused stream.
    pub fn pause(&self) -> SessionPhase {
        self.set_phase_if_open(SessionPhase::Paused)
    }

    pub fn resume(&self) -> SessionPhase {
        self.set_phase_if_open(SessionPhase::Active)
    }

    fn set_phase_if_open(&self, to: SessionPhase) -> SessionPhase {
        let mut st = self.shared.state.lock();
        st.last_activity = Instant::now();
        if matches!(st.phase, SessionPhase::Active | SessionPhase::Paused) {
            st.phase = to;
        }
        st.phase
    }

    fn reject(
        &self,
        seq: u64,
        reason: RejectReason,
        message: String,
        retry_after: Option<Duration>,
    ) -> Ack {
        Ack {
            sequence_number: seq,
            answer: Answer::Rejected {
                reason,
                message,
                retry_after,
            },
            replayed: false,
        }
    }

    /// Answers observation number `seq` as invalid without submitting it
    /// (the transport could not even decode it into an episode). The
    /// sequence rules apply as for [`Session::observe`]: the expected
    /// number is used, any other is out of order.
    pub fn observe_invalid(&self, seq: u64, message: String) -> PendingAck {
        match self.check_sequence(seq) {
            Err(ack) => PendingAck::Ready(Some(ack)),
            Ok(_) => {
                self.host
                    .record_rejection(&self.shared.space, RejectReason::Invalid);
                let ack = self.reject(seq, RejectReason::Invalid, message, None);
                self.shared.record(ack.clone());
                PendingAck::Ready(Some(ack))
            }
        }
    }

    /// Answers observation number `seq` as denied by the stream's
    /// credentials ([`crate::access`]) without submitting it: unauthorized
    /// (a rate limit: overloaded, with its retry-after). The sequence
    /// rules apply as for [`Session::observe`].
    pub fn observe_denied(&self, seq: u64, denial: Denial) -> PendingAck {
        match self.check_sequence(seq) {
            Err(ack) => PendingAck::Ready(Some(ack)),
            Ok(_) => {
                let (reason, retry_after) = match &denial {
                    Denial::RateLimited { retry_after, .. } => {
                        (RejectReason::Overloaded, Some(*retry_after))
                    }
                    Denial::Unauthenticated(_) | Denial::PermissionDenied(_) => {
                        (RejectReason::Unauthorized, None)
                    }
                };
                self.host.record_rejection(&self.shared.space, reason);
                let message = match denial {
                    Denial::Unauthenticated(m) | Denial::PermissionDenied(m) => m,
                    Denial::RateLimited { message, .. } => message,
                };
                let ack = self.reject(seq, reason, message, retry_after);
                self.shared.record(ack.clone());
                PendingAck::Ready(Some(ack))
            }
        }
    }

    /// Applies the sequence rules: Ok when `seq` is the expected number
    /// (which it then uses, with one answer in flight), else the answer.
    /// Ok carries when the observation arrived (its latency starts there).
    fn check_sequence(&self, seq: u64) -> std::result::Result<Instant, Ack> {
        let now = Instant::now();
        let mut st = self.shared.state.lock();
        st.last_activity = now;
        if matches!(st.phase, SessionPhase::Closing | SessionPhase::Closed) {
            drop(st);
            let msg = "the session is closed; resume it or open a new one".to_owned();
            self.host
                .record_rejection(&self.shared.space, RejectReason::Closed);
            return Err(self.reject(seq, RejectReason::Closed, msg, None));
        }
        if st.holder != self.holder {
            drop(st);
            let msg = "this session was resumed by another stream".to_owned();
            self.host
                .record_rejection(&self.shared.space, RejectReason::Closed);
            return Err(self.reject(seq, RejectReason::Closed, msg, None));
        }
        if seq < st.expected && seq <= st.replay_upto {
            if let Some(ack) = st.answers.get(&seq) {
                let mut ack = ack.clone();
                ack.replayed = true;
                return Err(ack);
            }
        }
        if seq != st.expected {
            let expected = st.expected;
            st.rejected += 1;
            drop(st);
            let what = if seq < expected {
                "a duplicate"
            } else {
                "a gap"
            };
            let msg =
                format!("sequence number {seq} is {what}: expected {expected}; nothing was stored");
            self.host
                .record_rejection(&self.shared.space, RejectReason::OutOfOrder);
            return Err(self.reject(seq, RejectReason::OutOfOrder, msg, None));
        }
        st.expected += 1;
        st.in_flight += 1;
        Ok(now)
    }

    /// Submits observation number `seq`. The sequence check happens now;
    /// the answer resolves once the observation is committed (or at once
    /// for a rejection). Await answers in submission order.
    pub fn observe(&self, seq: u64, input: EpisodeInput, priority: Priority) -> PendingAck {
        let received = match self.check_sequence(seq) {
            Ok(at) => at,
            Err(ack) => return PendingAck::Ready(Some(ack)),
        };
        let (tx, rx) = oneshot::channel();
        let shared = self.shared.clone();
        let hook: Reply<Remembered> = Box::new(move |r: Result<Remembered>| {
            let ack = Ack {
                sequence_number: seq,
                answer: match r {
                    Ok(done) => Answer::Accepted(done),
                    Err(e) => {
                        let (reason, retry_after) = RejectReason::of(&e);
                        Answer::Rejected {
                            reason,
                            message: e.to_string(),
                            retry_after,
                        }
                    }
                },
                replayed: false,
            };
            shared.record(ack.clone());
            let _ = tx.send(ack);
        });
        let space = self.shared.space.as_str();
        let origin = Origin {
            session_id: &self.shared.id,
            sequence: seq,
        };
        match self
            .host
            .submit(space, input, priority, received, origin, hook)
        {
            Ok(()) => PendingAck::Waiting(rx),
            Err(e) => {
                let (reason, retry_after) = RejectReason::of(&e);
                let ack = self.reject(seq, reason, e.to_string(), retry_after);
                self.shared.record(ack.clone());
                PendingAck::Ready(Some(ack))
            }
        }
    }

    /// Closes the session. With `drain`, waits until everything it was
    /// sent is answered; the result counts every answer.
    pub async fn close(&self, drain: bool) -> Closed {
        self.shared.state.lock().phase = SessionPhase::Closing;
        if drain {
            self.shared.wait_drained().await;
        }
        let mut st = self.shared.state.lock();
        st.phase = SessionPhase::Closed;
        st.released_at = Some(Instant::now());
        Closed {
            final_sequence: st.expected - 1,
            accepted: st.accepted,
            rejected: st.rejected,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        if st.holder == self.holder {
            st.holder = 0;
            st.events = None;
            st.released_at.get_or_insert_with(Instant::now);
        }
    }
}
