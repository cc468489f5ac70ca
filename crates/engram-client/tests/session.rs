//! The observe session's wire behaviour against a scripted in-process fake
//! of `engram.v1.Streaming`: resume after a broken stream, a new session
//! after a lost one, transparent overload retries, SLOW_DOWN pacing and a
//! fatal end. The fake keeps just enough state (sessions with their answers,
//! a store deduplicating by episode id) to check that nothing is lost or
//! stored twice. Behaviour against the real server is tested in
//! `crates/engram-server/tests`.

// The fake speaks tonic, whose `Status` is the error type of every handler.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engram_client::proto::observation_ack::{Reason, Status as AckStatus};
use engram_client::proto::observe_request::Request;
use engram_client::proto::observe_response::Response;
use engram_client::proto::stream_status::State;
use engram_client::proto::streaming_server::{Streaming, StreamingServer};
use engram_client::proto::{
    FlowRequest, FlowResponse, ObservationAck, ObserveRequest, ObserveResponse, RecallRequest,
    RecallResponse, StreamClosed, StreamInitAck, StreamStatus,
};
use engram_client::{
    episode, Answer, BackoffPolicy, ClientError, ClientOptions, RejectReason, RetryPolicy,
    SessionEvent, StreamingClient,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request as TonicRequest, Response as TonicResponse, Status};

/// What the fake does next; tests set it, the fake consumes it.
#[derive(Default)]
struct Script {
    /// On the next stream: after this many fresh answers, store the next
    /// observation but end the stream with this code instead of acking it.
    break_after: Option<(usize, Code)>,
    /// Drop every session when breaking (a restart).
    forget_sessions_on_break: bool,
    /// Reject this many fresh observations as overloaded.
    overload_next: usize,
    /// Send SLOW_DOWN at this rate right after init_ack.
    slow_down: Option<f32>,
    /// Fail every new ObserveStream call with UNAVAILABLE.
    refuse_streams: bool,
}

#[derive(Default)]
struct Sess {
    /// answers[i] answers wire number i + 1.
    answers: Vec<ObservationAck>,
}

#[derive(Default)]
struct FakeState {
    script: Script,
    sessions: HashMap<String, Sess>,
    sessions_made: usize,
    /// Episode id -> server sequence.
    store: HashMap<String, u64>,
    server_sequence: u64,
    /// When each fresh observation arrived.
    arrivals: Vec<Instant>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

type Tx = mpsc::Sender<Result<ObserveResponse, Status>>;

async fn reply(tx: &Tx, r: Response) {
    let _ = tx.send(Ok(ObserveResponse { response: Some(r) })).await;
}

async fn run_stream(fake: Fake, mut inbound: tonic::Streaming<ObserveRequest>, tx: Tx) {
    let Ok(Some(ObserveRequest {
        request: Some(Request::Init(init)),
    })) = inbound.message().await
    else {
        let _ = tx.send(Err(Status::invalid_argument("init first"))).await;
        return;
    };
    let opened = fake.with(|s| {
        if init.resume_session_id.is_empty() {
            s.sessions_made += 1;
            let id = format!("session-{}", s.sessions_made);
            s.sessions.insert(id.clone(), Sess::default());
            Ok((id, 0))
        } else {
            match s.sessions.get(&init.resume_session_id) {
                Some(sess) => Ok((init.resume_session_id.clone(), sess.answers.len() as u64)),
                None => Err(Status::not_found("unknown session")),
            }
        }
    });
    let (session_id, last) = match opened {
        Ok(x) => x,
        Err(st) => {
            let _ = tx.send(Err(st)).await;
            return;
        }
    };
    reply(
        &tx,
        Response::InitAck(StreamInitAck {
            session_id: session_id.clone(),
            last_acked_sequence: last,
            capabilities: None,
        }),
    )
    .await;
    if let Some(rate) = fake.with(|s| s.script.slow_down.take()) {
        reply(&tx, status(State::Backpressure, rate)).await;
    }
    while let Ok(Some(msg)) = inbound.message().await {
        match msg.request {
            Some(Request::Observation(obs)) => {
                let out = fake.with(|s| observe(s, &session_id, obs));
                match out {
                    Ok(ack) => reply(&tx, Response::Ack(ack)).await,
                    Err(st) => {
                        let _ = tx.send(Err(st)).await;
                        return;
                    }
                }
            }
            Some(Request::Close(_)) => {
                let closed = fake.with(|s| {
                    let a = &s.sessions[&session_id].answers;
                    let accepted = a
                        .iter()
                        .filter(|x| x.status == AckStatus::AckAccepted as i32)
                        .count() as u64;
                    StreamClosed {
                        final_sequence: a.len() as u64,
                        accepted,
                        rejected: a.len() as u64 - accepted,
                    }
                });
                reply(&tx, Response::Closed(closed)).await;
                return;
            }
            Some(Request::Flow(_)) => reply(&tx, status(State::Active, 0.0)).await,
            _ => {}
        }
    }
}

fn status(state: State, rate: f32) -> Response {
    Response::Status(StreamStatus {
        state: state as i32,
        suggested_rate: rate,
        ..Default::default()
    })
}

/// One observation against the fake's state: the ack to send, or the status
/// that ends the stream (the observation is then answered but unacked).
fn observe(
    s: &mut FakeState,
    session_id: &str,
    obs: engram_client::proto::Observation,
) -> Result<ObservationAck, Status> {
    let answered = s.sessions[session_id].answers.len() as u64;
    let seq = obs.sequence_number;
    if seq >= 1 && seq <= answered {
        let mut again = s.sessions[session_id].answers[seq as usize - 1].clone();
        again.replayed = true;
        return Ok(again);
    }
    if seq != answered + 1 {
        return Ok(ObservationAck {
            sequence_number: seq,
            status: AckStatus::AckRejected as i32,
            reason: Reason::RejectOutOfOrder as i32,
            message: format!("expected {}", answered + 1),
            ..Default::default()
        });
    }
    s.arrivals.push(Instant::now());
    let id = obs.episode.unwrap_or_default().id;
    let ack = if s.script.overload_next > 0 {
        s.script.overload_next -= 1;
        ObservationAck {
            sequence_number: seq,
            status: AckStatus::AckRejected as i32,
            reason: Reason::RejectOverloaded as i32,
            retry_after_ms: 20,
            message: "overloaded".into(),
            ..Default::default()
        }
    } else {
        let (server_sequence, duplicate) = match s.store.get(&id) {
            Some(&n) => (n, true),
            None => {
                s.server_sequence += 1;
                s.store.insert(id.clone(), s.server_sequence);
                (s.server_sequence, false)
            }
        };
        ObservationAck {
            sequence_number: seq,
            status: AckStatus::AckAccepted as i32,
            memory_id: id,
            server_sequence,
            duplicate,
            ..Default::default()
        }
    };
    s.sessions
        .get_mut(session_id)
        .unwrap()
        .answers
        .push(ack.clone());
    match &mut s.script.break_after {
        Some((0, code)) => {
            let code = *code;
            s.script.break_after = None;
            if s.script.forget_sessions_on_break {
                s.sessions.clear();
            }
            Err(Status::new(code, "scripted break"))
        }
        Some((n, _)) => {
            *n -= 1;
            Ok(ack)
        }
        None => Ok(ack),
    }
}

#[tonic::async_trait]
impl Streaming for Fake {
    type ObserveStreamStream = ReceiverStream<Result<ObserveResponse, Status>>;
    type RecallStreamStream = ReceiverStream<Result<RecallResponse, Status>>;
    type MemoryFlowStream = ReceiverStream<Result<FlowResponse, Status>>;

    async fn observe_stream(
        &self,
        req: TonicRequest<tonic::Streaming<ObserveRequest>>,
    ) -> Result<TonicResponse<Self::ObserveStreamStream>, Status> {
        if self.with(|s| s.script.refuse_streams) {
            return Err(Status::unavailable("refusing streams"));
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(run_stream(self.clone(), req.into_inner(), tx));
        Ok(TonicResponse::new(ReceiverStream::new(rx)))
    }

    async fn recall_stream(
        &self,
        _: TonicRequest<RecallRequest>,
    ) -> Result<TonicResponse<Self::RecallStreamStream>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn memory_flow(
        &self,
        _: TonicRequest<tonic::Streaming<FlowRequest>>,
    ) -> Result<TonicResponse<Self::MemoryFlowStream>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StreamingServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

fn fast_options() -> ClientOptions {
    ClientOptions {
        reconnect: BackoffPolicy {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
            multiplier: 2.0,
            max_attempts: 5,
        },
        ..ClientOptions::default()
    }
}

async fn client(fake: &Fake, options: ClientOptions) -> StreamingClient {
    StreamingClient::connect_with(serve(fake.clone()).await, options)
        .await
        .unwrap()
}

/// Sends `n` episodes, reads `n` answers, checks they come one per send in
/// order, and returns them.
async fn round_trip(c: &StreamingClient, n: u64) -> (Vec<Answer>, engram_client::ObserveSender) {
    let (sender, mut acks) = c.observe_stream("s").await.unwrap();
    let s2 = sender.clone();
    let sending = tokio::spawn(async move {
        for i in 1..=n {
            assert_eq!(
                s2.send(episode(format!("o{i}"), vec![1.0, i as f32]))
                    .await
                    .unwrap(),
                i
            );
        }
    });
    let mut answers = Vec::new();
    for i in 1..=n {
        let a = tokio::time::timeout(Duration::from_secs(10), acks.recv())
            .await
            .expect("an answer in time")
            .expect("the stream goes on")
            .expect("no session error");
        assert_eq!(a.sequence_number(), i);
        answers.push(a);
    }
    sending.await.unwrap();
    (answers, sender)
}

#[tokio::test]
async fn a_broken_stream_is_resumed_and_each_answer_arrives_once() {
    let fake = Fake::default();
    fake.with(|s| s.script.break_after = Some((30, Code::Unavailable)));
    let c = client(&fake, fast_options()).await;
    let (answers, sender) = round_trip(&c, 100).await;
    assert!(answers.iter().all(Answer::is_accepted));
    let acks: Vec<_> = answers.iter().filter_map(Answer::accepted).collect();
    assert!(acks.iter().all(|a| !a.duplicate));
    // The 31st was stored but its ack lost: the resend got the replay.
    assert!(acks[30].replayed, "{:?}", acks[30]);
    let state = sender.state();
    assert_eq!((state.reconnects, state.sessions_replaced), (1, 0));
    assert_eq!(state.session_id, "session-1");
    let closed = sender.close(true).await.unwrap();
    assert_eq!((closed.final_sequence, closed.accepted), (100, 100));
    fake.with(|s| assert_eq!(s.store.len(), 100));
}

#[tokio::test]
async fn a_lost_session_is_replaced_and_episode_ids_prevent_double_storage() {
    let fake = Fake::default();
    fake.with(|s| {
        s.script.break_after = Some((40, Code::Unavailable));
        s.script.forget_sessions_on_break = true;
    });
    let c = client(&fake, fast_options()).await;
    let (answers, sender) = round_trip(&c, 100).await;
    assert!(answers.iter().all(Answer::is_accepted));
    let acks: Vec<_> = answers.iter().filter_map(Answer::accepted).collect();
    // The 41st was stored before the "restart"; in the new session the
    // server recognised it by its client-made id.
    assert!(acks[40].duplicate, "{:?}", acks[40]);
    assert_eq!(acks.iter().filter(|a| a.duplicate).count(), 1);
    assert_ne!(acks[40].wire_sequence, 41);
    assert_eq!(sender.state().sessions_replaced, 1);
    assert_eq!(sender.session_id(), "session-2");
    sender.close(true).await.unwrap();
    fake.with(|s| assert_eq!(s.store.len(), 100));
}

#[tokio::test]
async fn overloaded_observations_are_retried_transparently_in_order() {
    let fake = Fake::default();
    fake.with(|s| s.script.overload_next = 5);
    let c = client(&fake, fast_options()).await;
    let (answers, sender) = round_trip(&c, 20).await;
    assert!(answers.iter().all(Answer::is_accepted));
    let retried: u32 = answers
        .iter()
        .filter_map(Answer::accepted)
        .map(|a| a.retries)
        .sum();
    assert_eq!(retried, 5);
    let closed = sender.close(true).await.unwrap();
    assert_eq!((closed.accepted, closed.rejected), (20, 5));
}

#[tokio::test]
async fn with_retries_off_the_overload_rejection_reaches_the_caller() {
    let fake = Fake::default();
    fake.with(|s| s.script.overload_next = 1);
    let options = ClientOptions {
        overload_retry: RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        },
        ..fast_options()
    };
    let c = client(&fake, options).await;
    let (answers, _sender) = round_trip(&c, 3).await;
    let r = answers[0].rejected().expect("rejected");
    assert_eq!(r.reason, RejectReason::Overloaded);
    assert_eq!(r.retry_after, Some(Duration::from_millis(20)));
    assert_eq!(r.episode.what, "o1");
    assert!(answers[1].is_accepted() && answers[2].is_accepted());
}

#[tokio::test]
async fn slow_down_paces_sends() {
    let fake = Fake::default();
    fake.with(|s| s.script.slow_down = Some(50.0));
    let c = client(&fake, fast_options()).await;
    let (answers, sender) = round_trip(&c, 11).await;
    assert!(answers.iter().all(Answer::is_accepted));
    let spread = fake.with(|s| *s.arrivals.last().unwrap() - s.arrivals[0]);
    // Ten gaps of 20 ms at 50/s.
    assert!(spread >= Duration::from_millis(180), "{spread:?}");
    assert_eq!(sender.state().pacing_rate, Some(50.0));
}

#[tokio::test]
async fn a_fatal_status_ends_the_acks_with_the_error_and_hands_back_the_unconfirmed() {
    let fake = Fake::default();
    fake.with(|s| s.script.break_after = Some((2, Code::Aborted)));
    let c = client(&fake, fast_options()).await;
    let (sender, mut acks) = c.observe_stream("s").await.unwrap();
    for i in 1..=5 {
        sender
            .send(episode(format!("o{i}"), vec![1.0, 0.0]))
            .await
            .unwrap();
    }
    assert!(acks.recv().await.unwrap().unwrap().is_accepted());
    assert!(acks.recv().await.unwrap().unwrap().is_accepted());
    let err = acks.recv().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(Code::Aborted), "{err:?}");
    assert!(acks.recv().await.is_none());
    let left: Vec<u64> = sender
        .take_unconfirmed()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(left, vec![3, 4, 5]);
    let send_err = sender
        .send(episode("late", vec![1.0, 0.0]))
        .await
        .unwrap_err();
    assert!(matches!(send_err, ClientError::Closed(_)), "{send_err:?}");
}

#[tokio::test]
async fn reconnects_are_bounded() {
    let fake = Fake::default();
    let c = client(&fake, fast_options()).await;
    let (sender, mut acks) = c.observe_stream("s").await.unwrap();
    let mut events = sender.events();
    fake.with(|s| {
        s.script.break_after = Some((0, Code::Unavailable));
        s.script.refuse_streams = true;
    });
    sender.send(episode("o1", vec![1.0, 0.0])).await.unwrap();
    let err = acks.recv().await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::ReconnectFailed { attempts: 5, .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), Some(Code::Unavailable));
    assert_eq!(sender.take_unconfirmed().len(), 1);
    let mut attempts = Vec::new();
    while let Some(ev) = events.next().await {
        if let SessionEvent::Disconnected { attempt, .. } = ev {
            attempts.push(attempt);
        }
    }
    assert_eq!(attempts, vec![1, 2, 3, 4, 5]);
}
