//! `engram.v1.Streaming`: ObserveStream, RecallStream and MemoryFlow.
//!
//! One driver serves both observing RPCs: it reads the client's messages,
//! submits observations to the session (which checks sequence numbers),
//! writes acks back strictly in sequence order, forwards backpressure and
//! session events as `StreamStatus`, and runs recalls (MemoryFlow) as
//! separate tasks whose batches wait while the client has paused the stream.

use std::pin::Pin;
use std::task::Poll;

use engram_core::queue::Level;
use engram_core::session::{Ack, Answer, PendingAck, RejectReason, Session, SessionEvent};
use engram_core::Engine;
use engram_proto::v1 as pb;
use engram_proto::v1::streaming_server::Streaming;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::convert;
use super::status::{not_ready, status};
use crate::http::AppState;

use pb::flow_control::Action;
use pb::observation_ack::{Reason, Status as AckStatus};
use pb::stream_status::State;

/// Responses buffered towards one client. When full, the driver waits: a
/// slow reader slows its own stream, never the server.
const OUTBOUND: usize = 256;
/// Observations of one stream in flight at once; beyond this the driver
/// stops reading, and HTTP/2 flow control pushes back on the client.
const MAX_IN_FLIGHT: usize = 4096;

pub struct StreamingService {
    pub state: AppState,
    pub max_message_bytes: usize,
    /// Becomes true when the server shuts down: streams stop taking
    /// observations, answer what they hold and end with UNAVAILABLE.
    pub shutdown: watch::Receiver<bool>,
}

impl StreamingService {
    fn engine(&self) -> Result<Engine, Status> {
        self.state.ready_engine().cloned().ok_or_else(not_ready)
    }
}

#[tonic::async_trait]
impl Streaming for StreamingService {
    type ObserveStreamStream = ReceiverStream<Result<pb::ObserveResponse, Status>>;
    type RecallStreamStream = ReceiverStream<Result<pb::RecallResponse, Status>>;
    type MemoryFlowStream = ReceiverStream<Result<pb::FlowResponse, Status>>;

    async fn observe_stream(
        &self,
        req: Request<tonic::Streaming<pb::ObserveRequest>>,
    ) -> Result<Response<Self::ObserveStreamStream>, Status> {
        let engine = self.engine()?;
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let driver = Driver::new(
            engine,
            Sink::Observe(tx),
            self.max_message_bytes,
            self.shutdown.clone(),
        );
        tokio::spawn(driver.run(Source::Observe(req.into_inner())));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn recall_stream(
        &self,
        req: Request<pb::RecallRequest>,
    ) -> Result<Response<Self::RecallStreamStream>, Status> {
        let engine = self.engine()?;
        let req = req.into_inner();
        let (tx, rx) = mpsc::channel(OUTBOUND);
        // Errors in the request itself fail the call before any batch.
        let batches = start_recall(&engine, req)?;
        let (_paused_tx, paused) = watch::channel(false);
        tokio::spawn(forward_recall(
            batches,
            Sink::Recall(tx),
            String::new(),
            paused,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn memory_flow(
        &self,
        req: Request<tonic::Streaming<pb::FlowRequest>>,
    ) -> Result<Response<Self::MemoryFlowStream>, Status> {
        let engine = self.engine()?;
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let driver = Driver::new(
            engine,
            Sink::Flow(tx),
            self.max_message_bytes,
            self.shutdown.clone(),
        );
        tokio::spawn(driver.run(Source::Flow(req.into_inner())));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What the client sent, whichever RPC carried it.
enum Inbound {
    Observe(pb::ObserveRequest),
    Recall(String, pb::RecallRequest),
}

enum Source {
    Observe(tonic::Streaming<pb::ObserveRequest>),
    Flow(tonic::Streaming<pb::FlowRequest>),
}

impl Source {
    async fn next(&mut self) -> Result<Option<Inbound>, Status> {
        match self {
            Source::Observe(s) => Ok(s.message().await?.map(Inbound::Observe)),
            Source::Flow(s) => {
                let Some(f) = s.message().await? else {
                    return Ok(None);
                };
                match f.request {
                    Some(pb::flow_request::Request::Observe(o)) => Ok(Some(Inbound::Observe(o))),
                    Some(pb::flow_request::Request::Recall(r)) => {
                        Ok(Some(Inbound::Recall(f.request_id, r)))
                    }
                    None => Err(Status::invalid_argument(
                        "FlowRequest without a request: expected 'observe' or 'recall'",
                    )),
                }
            }
        }
    }
}

/// Where responses go, wrapped for the RPC that asked.
#[derive(Clone)]
enum Sink {
    Observe(mpsc::Sender<Result<pb::ObserveResponse, Status>>),
    Flow(mpsc::Sender<Result<pb::FlowResponse, Status>>),
    Recall(mpsc::Sender<Result<pb::RecallResponse, Status>>),
}

impl Sink {
    /// False once the client is gone.
    async fn observe(&self, r: pb::observe_response::Response) -> bool {
        let msg = pb::ObserveResponse { response: Some(r) };
        match self {
            Sink::Observe(tx) => tx.send(Ok(msg)).await.is_ok(),
            Sink::Flow(tx) => tx
                .send(Ok(pb::FlowResponse {
                    request_id: String::new(),
                    response: Some(pb::flow_response::Response::Observe(msg)),
                }))
                .await
                .is_ok(),
            Sink::Recall(_) => unreachable!("recall streams carry no observe responses"),
        }
    }

    async fn recall(&self, request_id: &str, r: pb::RecallResponse) -> bool {
        match self {
            Sink::Recall(tx) => tx.send(Ok(r)).await.is_ok(),
            Sink::Flow(tx) => tx
                .send(Ok(pb::FlowResponse {
                    request_id: request_id.to_owned(),
                    response: Some(pb::flow_response::Response::Recall(r)),
                }))
                .await
                .is_ok(),
            Sink::Observe(_) => unreachable!("observe streams carry no recall responses"),
        }
    }

    /// A failed recall: on MemoryFlow an error message and the stream goes
    /// on; on RecallStream the call ends with the status.
    async fn recall_failed(&self, request_id: &str, st: Status) {
        match self {
            Sink::Flow(tx) => {
                let _ = tx
                    .send(Ok(pb::FlowResponse {
                        request_id: request_id.to_owned(),
                        response: Some(pb::flow_response::Response::Error(pb::FlowError {
                            code: code_name(st.code()),
                            message: st.message().to_owned(),
                        })),
                    }))
                    .await;
            }
            _ => self.fail(st).await,
        }
    }

    /// Ends the stream with a status.
    async fn fail(&self, st: Status) {
        let _ = match self {
            Sink::Observe(tx) => tx.send(Err(st)).await.is_ok(),
            Sink::Flow(tx) => tx.send(Err(st)).await.is_ok(),
            Sink::Recall(tx) => tx.send(Err(st)).await.is_ok(),
        };
    }
}

fn code_name(c: Code) -> String {
    format!("{c:?}")
        .chars()
        .flat_map(|ch| {
            if ch.is_uppercase() {
                vec!['_', ch]
            } else {
                vec![ch.to_ascii_uppercase()]
            }
        })
        .skip(1)
        .collect()
}

/// Validates a recall request and starts producing its batches on a
/// blocking thread (search is CPU work).
fn start_recall(
    engine: &Engine,
    req: pb::RecallRequest,
) -> Result<mpsc::Receiver<pb::RecallResponse>, Status> {
    let cue = convert::cue(req.cue)?;
    let max = cue
        .max_results
        .unwrap_or(engram_core::model::DEFAULT_MAX_RESULTS);
    let batch = if req.batch_size == 0 {
        max
    } else {
        req.batch_size as usize
    };
    let stream = engine
        .recall_stream(&req.memory_space_id, cue, batch)
        .map_err(status)?;
    let include = req.include_embeddings;
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        for b in stream {
            let msg = pb::RecallResponse {
                memories: b
                    .memories
                    .iter()
                    .map(|m| convert::recalled(m, include))
                    .collect(),
                more: b.more,
                snapshot_sequence: b.snapshot_sequence,
            };
            if tx.blocking_send(msg).is_err() {
                return; // the client went away
            }
        }
    });
    Ok(rx)
}

/// Sends recall batches, holding each while the stream is paused.
async fn forward_recall(
    mut batches: mpsc::Receiver<pb::RecallResponse>,
    sink: Sink,
    request_id: String,
    mut paused: watch::Receiver<bool>,
) {
    while let Some(b) = batches.recv().await {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if !sink.recall(&request_id, b).await {
            return;
        }
    }
}

struct Driver {
    engine: Engine,
    sink: Sink,
    max_message_bytes: usize,
    session: Option<Session>,
    events: Option<mpsc::UnboundedReceiver<SessionEvent>>,
    pending: FuturesOrdered<PendingAck>,
    backpressure: bool,
    paused: watch::Sender<bool>,
    last_state: State,
    shutdown: watch::Receiver<bool>,
}

impl Driver {
    fn new(
        engine: Engine,
        sink: Sink,
        max_message_bytes: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Driver {
            engine,
            sink,
            max_message_bytes,
            session: None,
            events: None,
            pending: FuturesOrdered::new(),
            backpressure: false,
            paused: watch::channel(false).0,
            last_state: State::Active,
            shutdown,
        }
    }

    async fn run(mut self, mut source: Source) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let reading = self.pending.len() < MAX_IN_FLIGHT;
            tokio::select! {
                biased;
                Some(ack) = self.pending.next(), if !self.pending.is_empty() => {
                    if !self.sink.observe(ack_response(ack)).await {
                        return;
                    }
                }
                _ = async { drop(shutdown.wait_for(|s| *s).await) } => {
                    // Stop intake: answer what was taken, then tell the
                    // client to come back (its session resumes after restart
                    // only if it reconnects to a server that kept it; the
                    // client then resends, and episode ids dedupe). A
                    // stream not yet past init gets only the error: its
                    // first message may be nothing but an init_ack.
                    if self.session.is_some() && self.flush_acks().await {
                        self.send_status(State::Closing, "the server is shutting down").await;
                    }
                    self.sink
                        .fail(Status::unavailable(
                            "the server is shutting down; reconnect and resume (unacknowledged observations must be resent)",
                        ))
                        .await;
                    return;
                }
                Some(ev) = next_event(&mut self.events) => {
                    if !self.on_event(ev).await {
                        return;
                    }
                }
                msg = source.next(), if reading => match msg {
                    Ok(Some(Inbound::Observe(req))) => {
                        if !self.on_observe_request(req).await {
                            return;
                        }
                    }
                    Ok(Some(Inbound::Recall(id, req))) => self.on_recall(id, req).await,
                    Ok(None) => {
                        // The client finished sending: answer what it sent.
                        self.flush_acks().await;
                        return;
                    }
                    Err(st) => {
                        self.sink.fail(self.inbound_error(st)).await;
                        return;
                    }
                },
            }
        }
    }

    fn inbound_error(&self, st: Status) -> Status {
        if st.code() == Code::OutOfRange && st.message().contains("too large") {
            return Status::new(
                Code::ResourceExhausted,
                format!(
                    "message too large: {}; the server's limit is grpc.max_message_bytes = {} bytes",
                    st.message(),
                    self.max_message_bytes
                ),
            );
        }
        st
    }

    async fn flush_acks(&mut self) -> bool {
        while let Some(ack) = self.pending.next().await {
            if !self.sink.observe(ack_response(ack)).await {
                return false;
            }
        }
        true
    }

    /// False when the stream must end.
    async fn on_observe_request(&mut self, req: pb::ObserveRequest) -> bool {
        use pb::observe_request::Request as R;
        match req.request {
            Some(R::Init(init)) => self.on_init(init).await,
            Some(R::Observation(obs)) => {
                let Some(session) = &self.session else {
                    self.sink
                        .fail(Status::invalid_argument(
                            "the first message on a stream must be init (StreamInit with memory_space_id)",
                        ))
                        .await;
                    return false;
                };
                let seq = obs.sequence_number;
                let pending = match obs.episode.map(convert::episode_input) {
                    None => session.observe_invalid(
                        seq,
                        "missing episode: expected an Episode with an embedding".into(),
                    ),
                    Some(Err(st)) => session.observe_invalid(seq, st.message().to_owned()),
                    Some(Ok(input)) => session.observe(seq, input, convert::priority(obs.priority)),
                };
                self.pending.push_back(pending);
                true
            }
            Some(R::Flow(flow)) => {
                let Some(session) = &self.session else {
                    self.sink
                        .fail(Status::invalid_argument(
                            "flow control before init: send init first",
                        ))
                        .await;
                    return false;
                };
                session.heartbeat();
                match Action::try_from(flow.action).unwrap_or(Action::Unspecified) {
                    Action::Pause => {
                        session.pause();
                        let _ = self.paused.send(true);
                        self.send_status(
                            State::Paused,
                            "paused by the client; recall batches are held",
                        )
                        .await
                    }
                    Action::Resume => {
                        session.resume();
                        let _ = self.paused.send(false);
                        let state = self.pressure_state();
                        self.send_status(state, "resumed by the client").await
                    }
                    Action::BufferStatus | Action::Unspecified => {
                        let state = if *self.paused.borrow() {
                            State::Paused
                        } else {
                            self.pressure_state()
                        };
                        self.send_status(state, "status").await
                    }
                }
            }
            Some(R::Close(close)) => {
                let Some(session) = self.session.take() else {
                    self.sink
                        .fail(Status::invalid_argument("close before init"))
                        .await;
                    return false;
                };
                if !self.flush_acks().await {
                    return false;
                }
                self.send_status(State::Closing, "closing").await;
                let closed = session.close(close.drain).await;
                let _ = self
                    .sink
                    .observe(pb::observe_response::Response::Closed(pb::StreamClosed {
                        final_sequence: closed.final_sequence,
                        accepted: closed.accepted,
                        rejected: closed.rejected,
                    }))
                    .await;
                false
            }
            None => {
                self.sink
                    .fail(Status::invalid_argument(
                        "ObserveRequest without a request: expected init, observation, flow or close",
                    ))
                    .await;
                false
            }
        }
    }

    async fn on_init(&mut self, init: pb::StreamInit) -> bool {
        if self.session.is_some() {
            self.sink
                .fail(Status::invalid_argument(
                    "init was already sent on this stream; one stream carries one session (open another stream)",
                ))
                .await;
            return false;
        }
        let resume = Some(init.resume_session_id.as_str()).filter(|s| !s.is_empty());
        let (mut session, opened) = match self
            .engine
            .open_session(&init.memory_space_id, resume)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.sink.fail(status(e)).await;
                return false;
            }
        };
        self.events = session.take_events();
        self.backpressure = init.enable_backpressure;
        let dimension = self
            .engine
            .describe_space(&init.memory_space_id)
            .map_or(0, |i| i.dimension as u32);
        self.session = Some(session);
        self.sink
            .observe(pb::observe_response::Response::InitAck(pb::StreamInitAck {
                session_id: opened.session_id,
                last_acked_sequence: opened.last_acked_sequence,
                capabilities: Some(pb::StreamCapabilities {
                    queue_capacity: self.engine.queue_capacity() as u64,
                    dimension,
                    max_message_size: self.max_message_bytes as u64,
                }),
            }))
            .await
    }

    async fn on_recall(&mut self, request_id: String, req: pb::RecallRequest) {
        if let Some(s) = &self.session {
            s.heartbeat();
        }
        match start_recall(&self.engine, req) {
            Ok(batches) => {
                tokio::spawn(forward_recall(
                    batches,
                    self.sink.clone(),
                    request_id,
                    self.paused.subscribe(),
                ));
            }
            Err(st) => self.sink.recall_failed(&request_id, st).await,
        }
    }

    fn pressure_state(&self) -> State {
        match self.engine.queue().level() {
            Level::Overloaded => State::Overloaded,
            Level::SlowDown => State::Backpressure,
            _ => State::Active,
        }
    }

    async fn send_status(&mut self, state: State, message: &str) -> bool {
        self.last_state = state;
        let q = self.engine.queue();
        let writers = self.engine.active_sessions().max(1) as f64;
        let suggested = if state == State::Backpressure || state == State::Overloaded {
            (q.suggested_rate() / writers) as f32
        } else {
            0.0
        };
        self.sink
            .observe(pb::observe_response::Response::Status(pb::StreamStatus {
                state: state as i32,
                queue_depth: q.depth() as u64,
                queue_capacity: q.capacity() as u64,
                pressure: q.pressure() as f32,
                suggested_rate: suggested,
                message: message.to_owned(),
            }))
            .await
    }

    /// False when the stream must end.
    async fn on_event(&mut self, ev: SessionEvent) -> bool {
        match ev {
            SessionEvent::Pressure(change) => {
                let state = match change.level {
                    Level::Overloaded => State::Overloaded,
                    Level::SlowDown => State::Backpressure,
                    _ => State::Active,
                };
                if !self.backpressure || *self.paused.borrow() || state == self.last_state {
                    return true;
                }
                let message = match state {
                    State::Backpressure => "slow down: the indexing queue is over 80% full",
                    State::Overloaded => {
                        "overloaded: new observations are rejected with a retry-after"
                    }
                    _ => "pressure cleared",
                };
                self.send_status(state, message).await
            }
            SessionEvent::IdleTimeout => {
                self.send_status(
                    State::Closing,
                    "closed after the idle timeout; resume the session to continue",
                )
                .await;
                self.sink
                    .fail(Status::aborted(
                        "session closed after the idle timeout (send heartbeats or FlowControl to keep it open); it can be resumed",
                    ))
                    .await;
                false
            }
            SessionEvent::TakenOver => {
                self.sink
                    .fail(Status::aborted(
                        "this session was resumed by another stream",
                    ))
                    .await;
                false
            }
        }
    }
}

/// The next session event, or never when there is no session yet.
fn next_event(
    events: &mut Option<mpsc::UnboundedReceiver<SessionEvent>>,
) -> impl std::future::Future<Output = Option<SessionEvent>> + '_ {
    std::future::poll_fn(move |cx| match events {
        Some(rx) => match Pin::new(rx).poll_recv(cx) {
            Poll::Ready(Some(ev)) => Poll::Ready(Some(ev)),
            // Closed: nothing more will come; stay pending.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        },
        None => Poll::Pending,
    })
}

fn ack_response(ack: Ack) -> pb::observe_response::Response {
    let mut out = pb::ObservationAck {
        sequence_number: ack.sequence_number,
        replayed: ack.replayed,
        ..Default::default()
    };
    match ack.answer {
        Answer::Accepted(r) => {
            out.status = AckStatus::AckAccepted as i32;
            out.memory_id = r.memory_id;
            out.server_sequence = r.server_sequence;
            out.committed_at = Some(convert::timestamp(r.committed_at_unix_nanos));
            out.duplicate = r.duplicate;
        }
        Answer::Rejected {
            reason,
            message,
            retry_after,
        } => {
            out.status = AckStatus::AckRejected as i32;
            out.reason = match reason {
                RejectReason::Overloaded => Reason::RejectOverloaded,
                RejectReason::Invalid => Reason::RejectInvalid,
                RejectReason::OutOfOrder => Reason::RejectOutOfOrder,
                RejectReason::Closed => Reason::RejectClosed,
                RejectReason::Unavailable => Reason::RejectUnavailable,
            } as i32;
            out.retry_after_ms = retry_after.map_or(0, |d| d.as_millis().max(1) as u64);
            out.message = message;
        }
    }
    pb::observe_response::Response::Ack(out)
}
