//! The task behind one observe session: opens the gRPC stream, writes
//! observations (paced under SLOW_DOWN, held after an overload), matches
//! acks, retries overloaded observations, heartbeats, and on a broken
//! stream reconnects with backoff and resumes the session (or opens a new
//! one when the server lost it).

use std::sync::Arc;

use crate::client::AuthChannel;
use engram_proto::v1::flow_control::Action;
use engram_proto::v1::observe_request::Request;
use engram_proto::v1::observe_response::Response;
use engram_proto::v1::stream_status::State as WireState;
use engram_proto::v1::streaming_client::StreamingClient as GrpcStreaming;
use engram_proto::v1::{
    FlowControl, ObserveRequest, ObserveResponse, StreamClose, StreamClosed, StreamInit,
    StreamInitAck, StreamStatus,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::answer::Answer;
use crate::backoff::Backoff;
use crate::error::{ClientError, Result};
use crate::observe::{
    lock, AckStream, CloseCommand, Delivery, ObserveCommand, ObserveSender, SenderParts,
    SessionEvent, SessionState, Shared,
};
use crate::options::ClientOptions;
use crate::outstanding::{AckOutcome, Outstanding};
use crate::pacer::Pacer;

/// Room in a stream's outbound buffer beyond the observations (bounded by
/// `max_in_flight`): init, close and a heartbeat.
const CONTROL_SLACK: usize = 4;
/// Buffered session events per subscriber; a slower reader skips ahead.
const EVENT_BUFFER: usize = 64;
/// New observations taken from the caller per loop turn, so acks keep
/// flowing while a burst is enqueued.
const INTAKE_BATCH: usize = 256;

/// A stream whose init the server acknowledged.
pub(crate) struct Opened {
    tx: mpsc::Sender<ObserveRequest>,
    inbound: tonic::Streaming<ObserveResponse>,
    ack: StreamInitAck,
}

/// Opens an observe stream and waits for the server's `init_ack`.
pub(crate) async fn open(
    grpc: &mut GrpcStreaming<AuthChannel>,
    space: &str,
    resume: Option<&str>,
    options: &ClientOptions,
) -> Result<Opened> {
    let (tx, rx) = mpsc::channel(options.max_in_flight.max(1) + CONTROL_SLACK);
    let init = Request::Init(StreamInit {
        memory_space_id: space.to_owned(),
        resume_session_id: resume.unwrap_or_default().to_owned(),
        enable_backpressure: options.enable_backpressure,
    });
    tx.try_send(ObserveRequest {
        request: Some(init),
    })
    .expect("a fresh channel has room for init");
    let handshake = async {
        let mut inbound = grpc
            .observe_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match inbound.message().await? {
            Some(ObserveResponse {
                response: Some(Response::InitAck(ack)),
            }) => Ok(Opened { tx, inbound, ack }),
            Some(other) => Err(ClientError::Protocol(format!(
                "expected init_ack as the first response, got {other:?}"
            ))),
            None => Err(ClientError::Status {
                code: Code::Unavailable,
                message: "the server ended the stream before init_ack".into(),
            }),
        }
    };
    match tokio::time::timeout(options.connect_timeout, handshake).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Status {
            code: Code::DeadlineExceeded,
            message: format!("no init_ack within {:?}", options.connect_timeout),
        }),
    }
}

/// Starts the task of a session whose first stream is `conn`.
pub(crate) fn spawn(
    grpc: GrpcStreaming<AuthChannel>,
    space: &str,
    options: ClientOptions,
    conn: Opened,
) -> (ObserveSender, AckStream) {
    let max_in_flight = options.max_in_flight.max(1);
    let (observe_tx, observe_rx) = mpsc::channel(max_in_flight);
    let (close_tx, close_rx) = mpsc::channel(4);
    // One extra slot for the final error.
    let (ack_tx, ack_rx) = mpsc::channel(max_in_flight + 1);
    let (events_tx, events_rx) = broadcast::channel(EVENT_BUFFER);
    let (state_tx, state_rx) = watch::channel(SessionState::default());
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let shared = Shared::default();
    let sender = ObserveSender::new(SenderParts {
        observe: observe_tx,
        close: close_tx,
        permits: permits.clone(),
        max_in_flight,
        assign_ids: options.assign_episode_ids,
        shared: shared.clone(),
        state: state_rx,
        events: events_rx,
    });
    let mut task = Session {
        grpc,
        space: space.to_owned(),
        out: Outstanding::new(options.overload_retry.clone()),
        options,
        observe_rx,
        close_rx,
        acks: ack_tx,
        events: events_tx,
        state: state_tx,
        permits,
        shared,
        pacer: Pacer::default(),
        hold_until: None,
        session_id: String::new(),
        closing: None,
        intake_open: true,
        close_open: true,
        last_write: Instant::now(),
    };
    task.on_opened(&conn.ack);
    let span = tracing::info_span!("observe_session", space = %space);
    tokio::spawn(tracing::Instrument::instrument(task.run(conn), span));
    (sender, AckStream::new(ack_rx))
}

struct Closing {
    drain: bool,
    sent: bool,
    replies: Vec<oneshot::Sender<Result<StreamClosed>>>,
}

/// How one stream ended.
enum End {
    /// The server closed the session (after our close).
    Closed(StreamClosed),
    /// Reconnect and resume.
    Broken(ClientError),
    /// The session is over.
    Fatal(ClientError),
}

enum Event {
    Inbound(std::result::Result<Option<ObserveResponse>, tonic::Status>),
    Observe(Option<ObserveCommand>),
    Close(Option<CloseCommand>),
    SendTime,
    Heartbeat,
}

struct Session {
    grpc: GrpcStreaming<AuthChannel>,
    space: String,
    options: ClientOptions,
    observe_rx: mpsc::Receiver<ObserveCommand>,
    close_rx: mpsc::Receiver<CloseCommand>,
    acks: mpsc::Sender<Delivery>,
    events: broadcast::Sender<SessionEvent>,
    state: watch::Sender<SessionState>,
    permits: Arc<Semaphore>,
    shared: Shared,
    out: Outstanding<OwnedSemaphorePermit>,
    pacer: Pacer,
    /// After an overload rejection nothing is sent before this: the server
    /// would reject it too.
    hold_until: Option<Instant>,
    session_id: String,
    closing: Option<Closing>,
    /// False once every `ObserveSender` is gone and their observations taken.
    intake_open: bool,
    /// False once every `ObserveSender` is gone.
    close_open: bool,
    last_write: Instant,
}

impl Session {
    async fn run(mut self, mut conn: Opened) {
        loop {
            match self.drive(&mut conn).await {
                End::Closed(closed) => return self.finish(closed),
                End::Fatal(e) => return self.fail(e),
                End::Broken(e) => match self.reconnect(e).await {
                    Ok(c) => conn = c,
                    Err(e) => return self.fail(e),
                },
            }
        }
    }

    /// Runs one stream until it ends.
    async fn drive(&mut self, conn: &mut Opened) -> End {
        let period =
            (self.options.heartbeat_interval / 2).max(std::time::Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval(period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let now = Instant::now();
            if let Err(e) = self.flush(conn, now) {
                return End::Broken(e);
            }
            if let Err(e) = self.maybe_send_close(conn) {
                return End::Broken(e);
            }
            let send_at = self.send_gate();
            let event = tokio::select! {
                biased;
                m = conn.inbound.message() => Event::Inbound(m),
                // Intake before close: a drain must cover every send that returned before it.
                o = self.observe_rx.recv(), if self.intake_open => Event::Observe(o),
                c = self.close_rx.recv(), if self.close_open => Event::Close(c),
                _ = sleep_until(send_at.unwrap_or(now)), if send_at.is_some() => Event::SendTime,
                _ = heartbeat.tick() => Event::Heartbeat,
            };
            let now = Instant::now();
            match event {
                Event::Inbound(Ok(Some(msg))) => {
                    if let Some(end) = self.on_response(msg, now) {
                        return end;
                    }
                }
                Event::Inbound(Ok(None)) => {
                    return End::Broken(ClientError::Status {
                        code: Code::Unavailable,
                        message: "the server ended the stream without closing the session".into(),
                    })
                }
                Event::Inbound(Err(status)) => {
                    let e = ClientError::from(status);
                    return if e.is_transient() {
                        End::Broken(e)
                    } else {
                        End::Fatal(e)
                    };
                }
                Event::Observe(Some(cmd)) => {
                    self.take_observation(cmd, now);
                    for _ in 1..INTAKE_BATCH {
                        match self.observe_rx.try_recv() {
                            Ok(cmd) => self.take_observation(cmd, now),
                            Err(_) => break,
                        }
                    }
                }
                // Every sender is gone; observations they sent may still be
                // queued, so only the end of that queue means "drain and close".
                Event::Close(None) => self.close_open = false,
                Event::Observe(None) => {
                    self.intake_open = false;
                    if self.closing.is_none() {
                        self.closing = Some(Closing {
                            drain: true,
                            sent: false,
                            replies: Vec::new(),
                        });
                    }
                }
                Event::Close(Some(cmd)) => self.on_close_request(cmd),
                Event::SendTime => {}
                Event::Heartbeat => {
                    if now.duration_since(self.last_write) >= self.options.heartbeat_interval {
                        let flow = Request::Flow(FlowControl {
                            action: Action::BufferStatus as i32,
                            buffer_remaining: self
                                .permits
                                .available_permits()
                                .min(u32::MAX as usize)
                                as u32,
                        });
                        // A full buffer means traffic is flowing: no heartbeat needed.
                        let _ = self.write(conn, flow);
                    }
                }
            }
        }
    }

    fn take_observation(&mut self, cmd: ObserveCommand, now: Instant) {
        self.out
            .push(cmd.seq, cmd.episode, cmd.priority, cmd.permit, now);
        if self.closing.as_ref().is_some_and(|c| c.sent || !c.drain) {
            // Raced with a close: it cannot be sent any more.
            self.out
                .reject_waiting("the session was closed before this observation was sent");
            self.deliver();
        }
    }

    fn on_close_request(&mut self, cmd: CloseCommand) {
        lock(&self.shared).reason = Some("closed by the caller".into());
        let closing = self.closing.get_or_insert(Closing {
            drain: cmd.drain,
            sent: false,
            replies: Vec::new(),
        });
        closing.replies.push(cmd.reply);
        if !cmd.drain && closing.drain && !closing.sent {
            closing.drain = false;
        }
        if !closing.drain {
            self.out.reject_waiting(
                "the session was closed (without drain) before this observation was sent",
            );
            self.deliver();
        }
    }

    /// Handles one server message; `Some` when the stream is over.
    fn on_response(&mut self, msg: ObserveResponse, now: Instant) -> Option<End> {
        match msg.response {
            Some(Response::Ack(ack)) => match self.out.on_ack(&ack, now) {
                Ok(AckOutcome::Answered) => self.deliver(),
                Ok(AckOutcome::Retrying {
                    sequence_number,
                    retry,
                    delay,
                }) => {
                    let until = now + delay;
                    self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
                    tracing::debug!(sequence_number, retry, ?delay, "overloaded; will resend");
                    self.emit(SessionEvent::Retrying {
                        sequence_number,
                        retry,
                        after: delay,
                    });
                }
                Err(msg) => return Some(End::Fatal(ClientError::Protocol(msg))),
            },
            Some(Response::Status(status)) => self.on_status(status),
            Some(Response::Closed(closed)) => return Some(End::Closed(closed)),
            Some(Response::InitAck(_)) => {
                return Some(End::Fatal(ClientError::Protocol(
                    "a second init_ack on one stream".into(),
                )))
            }
            // A response kind newer than this client: nothing to do with it.
            None => tracing::debug!("ignoring an empty or unknown ObserveResponse"),
        }
        None
    }

    fn on_status(&mut self, status: StreamStatus) {
        match WireState::try_from(status.state) {
            Ok(WireState::Backpressure) | Ok(WireState::Overloaded) => {
                self.pacer.set_rate(f64::from(status.suggested_rate));
            }
            Ok(WireState::Active) => self.pacer.clear(),
            _ => {}
        }
        let rate = self.pacer.rate();
        self.state.send_modify(|s| {
            s.pacing_rate = rate;
            s.last_status = Some(status.clone());
        });
        self.emit(SessionEvent::Status(status));
    }

    /// Writes every observation that may go now.
    fn flush(&mut self, conn: &Opened, now: Instant) -> Result<()> {
        if self.closing.as_ref().is_some_and(|c| c.sent) {
            return Ok(());
        }
        while self.gate().is_some_and(|at| at <= now) {
            let obs = self
                .out
                .take_next()
                .expect("gate implies a waiting observation");
            self.pacer.on_sent(now);
            self.write(conn, Request::Observation(obs))?;
        }
        Ok(())
    }

    /// When the next waiting observation may be sent: the latest of its own
    /// time, the overload hold and the pacer.
    fn gate(&self) -> Option<Instant> {
        let at = self.out.next_send_at()?;
        [Some(at), self.hold_until, self.pacer.ready_at()]
            .into_iter()
            .flatten()
            .max()
    }

    /// The time to wake up for the next send, if there is one to wait for.
    fn send_gate(&self) -> Option<Instant> {
        if self.closing.as_ref().is_some_and(|c| c.sent) {
            return None;
        }
        self.gate()
    }

    fn maybe_send_close(&mut self, conn: &Opened) -> Result<()> {
        let Some(closing) = &self.closing else {
            return Ok(());
        };
        if closing.sent || (closing.drain && !self.out.is_empty()) {
            return Ok(());
        }
        let drain = closing.drain;
        self.write(conn, Request::Close(StreamClose { drain }))?;
        if let Some(c) = &mut self.closing {
            c.sent = true;
        }
        Ok(())
    }

    /// Queues one message on the stream. A stream the transport already
    /// dropped is not an error here: reading it reports why.
    fn write(&mut self, conn: &Opened, request: Request) -> Result<()> {
        match conn.tx.try_send(ObserveRequest {
            request: Some(request),
        }) {
            Ok(()) => {
                self.last_write = Instant::now();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            // Unreachable by construction (the buffer holds max_in_flight
            // observations plus control messages); if it happens, numbering
            // is no longer certain, so start the stream over.
            Err(mpsc::error::TrySendError::Full(_)) => Err(ClientError::Protocol(
                "the stream's outbound buffer is full; reconnecting".into(),
            )),
        }
    }

    /// Hands every answer that is next in order to the caller.
    fn deliver(&mut self) {
        while let Some((answer, permit)) = self.out.pop_answered() {
            self.push_delivery(Ok(answer), Some(permit));
        }
    }

    fn push_delivery(&self, item: Result<Answer>, permit: Option<OwnedSemaphorePermit>) {
        // Never full (one slot per permit, plus one for the final error);
        // closed only when the caller dropped the AckStream, and then the
        // answer is not wanted.
        let _ = self.acks.try_send(Delivery {
            item,
            _permit: permit,
        });
    }

    fn emit(&self, event: SessionEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    fn on_opened(&mut self, ack: &StreamInitAck) {
        self.session_id.clone_from(&ack.session_id);
        self.last_write = Instant::now();
        self.state.send_modify(|s| {
            s.session_id.clone_from(&ack.session_id);
            s.connected = true;
            s.capabilities = ack.capabilities;
            s.pacing_rate = None;
        });
    }

    /// Reconnects with backoff until a stream is up again: resuming the
    /// session and resending what is unanswered, or, if the server lost the
    /// session, opening a new one and sending it all again under new numbers.
    async fn reconnect(&mut self, mut error: ClientError) -> Result<Opened> {
        // A new stream starts unpaced: the server re-sends its status.
        self.pacer.clear();
        self.hold_until = None;
        self.state.send_modify(|s| {
            s.connected = false;
            s.pacing_rate = None;
        });
        let mut backoff = Backoff::new(self.options.reconnect.clone());
        let mut wait = true;
        loop {
            if wait {
                let Some(delay) = backoff.next_delay(rand::random::<f64>()) else {
                    return Err(ClientError::ReconnectFailed {
                        attempts: backoff.attempts(),
                        last: Box::new(error),
                    });
                };
                tracing::warn!(error = %error, attempt = backoff.attempts(), ?delay, "observe stream broke; reconnecting");
                self.emit(SessionEvent::Disconnected {
                    error: error.to_string(),
                    attempt: backoff.attempts(),
                    retry_in: delay,
                });
                tokio::time::sleep(delay).await;
            }
            wait = true;
            let resume = (!self.session_id.is_empty()).then(|| self.session_id.clone());
            let conn = match open(
                &mut self.grpc,
                &self.space,
                resume.as_deref(),
                &self.options,
            )
            .await
            {
                Ok(conn) => conn,
                Err(ClientError::NotFound(message)) if resume.is_some() => {
                    tracing::warn!(%message, "the server lost the session; opening a new one");
                    self.replace_session();
                    wait = false;
                    continue;
                }
                Err(e) if e.is_transient() => {
                    error = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if resume.is_none() {
                self.on_opened(&conn.ack);
                self.state.send_modify(|s| s.reconnects += 1);
                self.emit(SessionEvent::Reconnected {
                    session_id: conn.ack.session_id.clone(),
                    resumed: false,
                    resent: 0,
                });
                return Ok(conn);
            }
            match self.out.resume(conn.ack.last_acked_sequence) {
                Ok(resend) => {
                    self.on_opened(&conn.ack);
                    let resent = resend.len();
                    for obs in resend {
                        self.write(&conn, Request::Observation(obs))?;
                    }
                    if let Some(c) = &mut self.closing {
                        c.sent = false;
                    }
                    self.state.send_modify(|s| s.reconnects += 1);
                    self.emit(SessionEvent::Reconnected {
                        session_id: conn.ack.session_id.clone(),
                        resumed: true,
                        resent,
                    });
                    return Ok(conn);
                }
                Err(message) => {
                    tracing::warn!(%message, "cannot resume the session; opening a new one");
                    self.replace_session();
                    wait = false;
                }
            }
        }
    }

    /// Forgets the server session: everything unanswered is sent again in a
    /// new one. Episode ids (client-made UUIDs unless the caller chose
    /// them) let the server recognise what it already stored.
    fn replace_session(&mut self) {
        self.out.restart_session(Instant::now());
        self.session_id.clear();
        if let Some(c) = &mut self.closing {
            c.sent = false;
        }
        self.state.send_modify(|s| s.sessions_replaced += 1);
    }

    /// The session closed: answer what is left, end the AckStream.
    fn finish(mut self, closed: StreamClosed) {
        // Sends that raced with the close are answered too, never dropped.
        self.observe_rx.close();
        let now = Instant::now();
        while let Ok(cmd) = self.observe_rx.try_recv() {
            self.out
                .push(cmd.seq, cmd.episode, cmd.priority, cmd.permit, now);
        }
        self.out
            .reject_all("the session was closed before this observation was answered");
        self.deliver();
        {
            let mut ended = lock(&self.shared);
            ended.closed = Some(closed);
            ended
                .reason
                .get_or_insert_with(|| "the session is closed".into());
        }
        self.stop();
        let replies = self.closing.take().map(|c| c.replies).unwrap_or_default();
        for reply in replies {
            let _ = reply.send(Ok(closed));
        }
        self.reply_to_late_closes(|| Ok(closed));
    }

    /// The session failed: hand over what is known, then the error.
    fn fail(mut self, error: ClientError) {
        tracing::warn!(error = %error, "observe session failed");
        self.deliver();
        let reason = format!("the session failed: {error}");
        let mut unconfirmed = self.out.take_unconfirmed();
        self.observe_rx.close();
        while let Ok(cmd) = self.observe_rx.try_recv() {
            unconfirmed.push((cmd.seq, cmd.episode));
        }
        {
            let mut ended = lock(&self.shared);
            ended.reason = Some(reason.clone());
            ended.unconfirmed = unconfirmed;
        }
        self.stop();
        let replies = self.closing.take().map(|c| c.replies).unwrap_or_default();
        for reply in replies {
            let _ = reply.send(Err(ClientError::Closed(reason.clone())));
        }
        self.reply_to_late_closes(|| Err(ClientError::Closed(reason.clone())));
        self.push_delivery(Err(error), None);
    }

    fn stop(&mut self) {
        self.permits.close();
        self.observe_rx.close();
        self.state.send_modify(|s| s.connected = false);
    }

    fn reply_to_late_closes(&mut self, answer: impl Fn() -> Result<StreamClosed>) {
        self.close_rx.close();
        while let Ok(cmd) = self.close_rx.try_recv() {
            let _ = cmd.reply.send(answer());
        }
    }
}
