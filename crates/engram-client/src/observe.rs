//! The caller's side of an observe session: [`ObserveSender`] to send
//! episodes, [`AckStream`] to read their answers, [`SessionEvent`]s and
//! [`SessionState`] to watch the session.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use engram_proto::v1::{Episode, Priority, StreamCapabilities, StreamClosed, StreamStatus};
use futures::stream::BoxStream;
use futures::Stream;
use tokio::sync::{broadcast, mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::answer::Answer;
use crate::error::{ClientError, Result};

/// One new observation on its way to the session task.
pub(crate) struct ObserveCommand {
    pub seq: u64,
    pub episode: Episode,
    pub priority: i32,
    pub permit: OwnedSemaphorePermit,
}

pub(crate) struct CloseCommand {
    pub drain: bool,
    pub reply: oneshot::Sender<Result<StreamClosed>>,
}

/// One item of the [`AckStream`], with the in-flight slot it occupies
/// until the caller reads it.
pub(crate) struct Delivery {
    pub item: Result<Answer>,
    pub _permit: Option<OwnedSemaphorePermit>,
}

/// What the session task leaves behind for the handles once it ends.
#[derive(Default)]
pub(crate) struct Ended {
    /// Why sends now fail.
    pub reason: Option<String>,
    /// The server's answer to the close, if the session closed cleanly.
    pub closed: Option<StreamClosed>,
    /// Observations whose outcome the caller never learned (fatal end).
    pub unconfirmed: Vec<(u64, Episode)>,
}

pub(crate) type Shared = Arc<Mutex<Ended>>;

/// Lock a mutex whose holders never panic while holding it; a poisoned
/// one still holds consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A snapshot of an observe session, from [`ObserveSender::state`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionState {
    /// The server's session id (changes if the server lost the session and
    /// the client had to open a new one).
    pub session_id: String,
    /// Whether a stream to the server is up right now.
    pub connected: bool,
    /// The send rate the client is holding itself to after a SLOW_DOWN, in
    /// observations per second; `None` when unpaced.
    pub pacing_rate: Option<f64>,
    /// The last `StreamStatus` the server sent.
    pub last_status: Option<StreamStatus>,
    /// What the server said about itself in its last `init_ack`.
    pub capabilities: Option<StreamCapabilities>,
    /// Successful reconnects so far.
    pub reconnects: u64,
    /// Times the server had lost the session and a new one was opened.
    pub sessions_replaced: u64,
}

/// Something that happened to an observe session, from
/// [`ObserveSender::events`]. Informational: answers never travel here.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The server's flow-control status (SLOW_DOWN is `STATE_BACKPRESSURE`
    /// with a `suggested_rate`).
    Status(StreamStatus),
    /// The stream broke; the client reconnects after `retry_in`.
    Disconnected {
        error: String,
        attempt: u32,
        retry_in: Duration,
    },
    /// A stream is up again. `resumed` is false when the server had lost the
    /// session and a new one was opened; `resent` observations went out again.
    Reconnected {
        session_id: String,
        resumed: bool,
        resent: usize,
    },
    /// An observation was rejected as overloaded and will be resent.
    Retrying {
        sequence_number: u64,
        retry: u32,
        after: Duration,
    },
}

/// Sends episodes into an observe session. Cheap to clone; clones share
/// the session and its numbering.
///
/// Get one from [`StreamingClient::observe_stream`](crate::StreamingClient::observe_stream).
/// Dropping every clone closes the session after draining (every
/// observation sent still gets its answer on the [`AckStream`]).
///
/// # Backpressure
///
/// At most [`ClientOptions::max_in_flight`](crate::ClientOptions::max_in_flight)
/// observations are outstanding: sent and not yet answered, or answered
/// and not yet read from the `AckStream`. `send` waits for a free slot, so
/// a caller that never reads its acks should drop the `AckStream` (answers
/// are then discarded). While the server asks to slow down, the session
/// sends at the rate it suggests, and the slots fill up accordingly.
#[derive(Clone)]
pub struct ObserveSender {
    inner: Arc<SenderInner>,
}

struct SenderInner {
    observe: mpsc::Sender<ObserveCommand>,
    close: mpsc::Sender<CloseCommand>,
    /// The next caller number. Held while enqueueing, so numbers reach the
    /// session task in order whichever clone sends; never held across
    /// `.await`.
    next_seq: Mutex<u64>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    assign_ids: bool,
    shared: Shared,
    state: watch::Receiver<SessionState>,
    events: broadcast::Receiver<SessionEvent>,
}

pub(crate) struct SenderParts {
    pub observe: mpsc::Sender<ObserveCommand>,
    pub close: mpsc::Sender<CloseCommand>,
    pub permits: Arc<Semaphore>,
    pub max_in_flight: usize,
    pub assign_ids: bool,
    pub shared: Shared,
    pub state: watch::Receiver<SessionState>,
    pub events: broadcast::Receiver<SessionEvent>,
}

impl ObserveSender {
    pub(crate) fn new(p: SenderParts) -> Self {
        ObserveSender {
            inner: Arc::new(SenderInner {
                observe: p.observe,
                close: p.close,
                next_seq: Mutex::new(1),
                permits: p.permits,
                max_in_flight: p.max_in_flight,
                assign_ids: p.assign_ids,
                shared: p.shared,
                state: p.state,
                events: p.events,
            }),
        }
    }

    /// Sends one episode at normal priority. Returns its sequence number
    /// (1 for the session's first, +1 each): the
    /// [`Answer`](crate::Answer) for it on the `AckStream` carries the same.
    ///
    /// Returns once the observation is in the session's buffer, not when it
    /// is answered. An episode without an id gets a UUID first (see
    /// [`ClientOptions::assign_episode_ids`](crate::ClientOptions::assign_episode_ids)).
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] once the session is closed or has failed.
    ///
    /// ```no_run
    /// # async fn f(sender: engram_client::ObserveSender) -> Result<(), engram_client::ClientError> {
    /// let seq = sender.send(engram_client::episode("met Ada", vec![0.1; 384])).await?;
    /// assert!(seq >= 1);
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, episode: Episode) -> Result<u64> {
        self.send_with_priority(episode, Priority::Normal).await
    }

    /// Like [`send`](Self::send), with an indexing priority (HIGH may use
    /// the last 10% of the server's queue).
    pub async fn send_with_priority(
        &self,
        mut episode: Episode,
        priority: Priority,
    ) -> Result<u64> {
        if let Some(reason) = self.ended() {
            return Err(ClientError::Closed(reason));
        }
        let permit = match self.inner.permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return Err(self.closed_error()),
        };
        if self.inner.assign_ids && episode.id.is_empty() {
            episode.id = uuid::Uuid::new_v4().to_string();
        }
        let mut next = lock(&self.inner.next_seq);
        let seq = *next;
        let cmd = ObserveCommand {
            seq,
            episode,
            priority: priority as i32,
            permit,
        };
        // Never full: the channel holds max_in_flight commands and each
        // carries one of max_in_flight permits.
        match self.inner.observe.try_send(cmd) {
            Ok(()) => {
                *next += 1;
                Ok(seq)
            }
            Err(_) => {
                drop(next);
                Err(self.closed_error())
            }
        }
    }

    /// Closes the session and returns the server's `StreamClosed`.
    ///
    /// With `drain`, first waits until every observation sent (including
    /// ones the client is still retrying) has its answer on the `AckStream`;
    /// without, observations not yet sent are answered locally with
    /// [`RejectReason::Closed`](crate::RejectReason::Closed) and the server
    /// answers those already on the wire. Either way the `AckStream` then
    /// ends. Closing through one clone closes the session for all.
    ///
    /// `final_sequence`, `accepted` and `rejected` count the server's
    /// current session, in wire numbers; after a lost session they cover
    /// only the replacement. Count the `AckStream` for caller totals.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when the session failed before it could
    /// close (the `AckStream` carries the cause).
    pub async fn close(self, drain: bool) -> Result<StreamClosed> {
        let (reply, answer) = oneshot::channel();
        if self
            .inner
            .close
            .send(CloseCommand { drain, reply })
            .await
            .is_err()
        {
            return self.already_closed();
        }
        match answer.await {
            Ok(r) => r,
            Err(_) => self.already_closed(),
        }
    }

    /// The server's id of the session right now.
    pub fn session_id(&self) -> String {
        self.inner.state.borrow().session_id.clone()
    }

    /// A snapshot of the session's state.
    pub fn state(&self) -> SessionState {
        self.inner.state.borrow().clone()
    }

    /// A receiver that sees every change of [`SessionState`], for waiting
    /// on a condition (`changed().await`, `wait_for`).
    pub fn watch_state(&self) -> watch::Receiver<SessionState> {
        self.inner.state.clone()
    }

    /// Session events from now on. The buffer is bounded (64): a reader
    /// that falls behind skips the oldest events. Ends when the session
    /// ends.
    pub fn events(&self) -> BoxStream<'static, SessionEvent> {
        let rx = self.inner.events.resubscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }

    /// Observations outstanding now (see the type's docs on backpressure).
    pub fn in_flight(&self) -> usize {
        self.inner.max_in_flight - self.inner.permits.available_permits()
    }

    /// After the session failed: the observations whose answer the caller
    /// never received, with their sequence numbers, in order. Their outcome
    /// is unknown (some may be stored); resending them with the same episode
    /// ids is safe, the server dedupes by id. Empty otherwise; taking them
    /// empties the list.
    pub fn take_unconfirmed(&self) -> Vec<(u64, Episode)> {
        std::mem::take(&mut lock(&self.inner.shared).unconfirmed)
    }

    fn ended(&self) -> Option<String> {
        lock(&self.inner.shared).reason.clone()
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(
            self.ended()
                .unwrap_or_else(|| "the session has ended".into()),
        )
    }

    fn already_closed(&self) -> Result<StreamClosed> {
        let ended = lock(&self.inner.shared);
        match (&ended.closed, &ended.reason) {
            (Some(closed), _) => Ok(*closed),
            (None, Some(reason)) => Err(ClientError::Closed(reason.clone())),
            (None, None) => Err(ClientError::Closed("the session has ended".into())),
        }
    }
}

/// The answers to an observe session's observations: exactly one
/// [`Answer`] per [`ObserveSender::send`], in send order, then the end of
/// the stream when the session closes.
///
/// Rejections the client handles itself (overload, within the
/// [`RetryPolicy`](crate::RetryPolicy)) never show up here: the observation
/// is resent and its eventual answer arrives in its place. An `Err` item
/// means the session failed (reconnects exhausted, a fatal status such as
/// `NOT_FOUND` or `ABORTED`); it is the last item, and the observations
/// without an answer are in [`ObserveSender::take_unconfirmed`].
///
/// Implements [`Stream`]; [`recv`](Self::recv) is the same without
/// importing a stream extension trait.
pub struct AckStream {
    rx: mpsc::Receiver<Delivery>,
}

impl AckStream {
    pub(crate) fn new(rx: mpsc::Receiver<Delivery>) -> Self {
        AckStream { rx }
    }

    /// The next answer, or `None` once the session has ended.
    pub async fn recv(&mut self) -> Option<Result<Answer>> {
        self.rx.recv().await.map(|d| d.item)
    }
}

impl Stream for AckStream {
    type Item = Result<Answer>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // The delivery's permit is released here: the slot is free once the
        // caller has the answer.
        self.rx.poll_recv(cx).map(|d| d.map(|d| d.item))
    }
}
