//! One stream protocol, two transports: the same scenario driven over gRPC
//! (`MemoryFlow`) and over WebSocket (`/v1/stream`), each against its own
//! fresh server, must show the client the same thing: acks with the same
//! numbers, outcomes, reasons, memory ids and server sequences; rejections
//! with the same reasons; SLOW_DOWN then OVERLOADED while the queue fills;
//! pause and resume; the same recall results; close with the same counts;
//! and resume after a dropped connection with the same replayed answers.
//!
//! Each phase's transcript is normalised (no timestamps, session ids or
//! free-text messages) and compared between the transports. Statuses are
//! compared as their own sequence, because they come from another source
//! than acks and may interleave with them differently.

mod support;

use std::time::Duration;

use engram_proto::v1 as pb;
use engram_proto::v1::streaming_client::StreamingClient;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;

const DIM: usize = 4;
const DEADLINE: Duration = Duration::from_secs(20);
/// How long a held recall must stay held in the test.
const HELD_FOR: Duration = Duration::from_millis(300);

/// What the client saw, without what legitimately differs (times, ids).
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    InitAck {
        last_acked: u64,
    },
    Ack {
        seq: u64,
        accepted: bool,
        reason: String,
        replayed: bool,
        memory_id: String,
        server_sequence: u64,
        duplicate: bool,
        has_retry_after: bool,
    },
    Status(String),
    Closed {
        final_sequence: u64,
        accepted: u64,
        rejected: u64,
    },
    Recall {
        request_id: String,
        ids: Vec<String>,
        more: bool,
    },
    Error {
        request_id: String,
        code: String,
    },
}

enum Send {
    Init {
        space: String,
        resume: String,
    },
    Obs {
        seq: u64,
        id: String,
        embedding: Vec<f32>,
    },
    Pause,
    Resume,
    Recall {
        request_id: String,
        embedding: Vec<f32>,
    },
    Close,
}

enum Conn {
    Grpc {
        tx: mpsc::Sender<pb::FlowRequest>,
        rx: tonic::Streaming<pb::FlowResponse>,
    },
    Ws(
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ),
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Grpc,
    Ws,
}

impl Conn {
    async fn open(t: Transport, server: &ServerProcess) -> Conn {
        match t {
            Transport::Grpc => {
                let mut client = StreamingClient::connect(format!("http://{}", server.grpc))
                    .await
                    .expect("gRPC connect");
                let (tx, rx) = mpsc::channel(64);
                let rx = client
                    .memory_flow(ReceiverStream::new(rx))
                    .await
                    .expect("MemoryFlow")
                    .into_inner();
                Conn::Grpc { tx, rx }
            }
            Transport::Ws => {
                let (ws, _) =
                    tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", server.addr))
                        .await
                        .expect("WebSocket connect");
                Conn::Ws(ws)
            }
        }
    }

    async fn send(&mut self, m: Send) {
        match self {
            Conn::Grpc { tx, .. } => {
                use pb::flow_request::Request as F;
                use pb::observe_request::Request as O;
                let observe = |r: O| F::Observe(pb::ObserveRequest { request: Some(r) });
                let flow = |a: pb::flow_control::Action| {
                    observe(O::Flow(pb::FlowControl {
                        action: a as i32,
                        buffer_remaining: 0,
                    }))
                };
                let (request_id, request) = match m {
                    Send::Init { space, resume } => (
                        String::new(),
                        observe(O::Init(pb::StreamInit {
                            memory_space_id: space,
                            resume_session_id: resume,
                            enable_backpressure: true,
                        })),
                    ),
                    Send::Obs { seq, id, embedding } => (
                        String::new(),
                        observe(O::Observation(pb::Observation {
                            sequence_number: seq,
                            episode: Some(pb::Episode {
                                id,
                                what: "parity".into(),
                                embedding,
                                ..Default::default()
                            }),
                            priority: 0,
                        })),
                    ),
                    Send::Pause => (String::new(), flow(pb::flow_control::Action::Pause)),
                    Send::Resume => (String::new(), flow(pb::flow_control::Action::Resume)),
                    Send::Recall {
                        request_id,
                        embedding,
                    } => (
                        request_id,
                        F::Recall(pb::RecallRequest {
                            memory_space_id: String::new(),
                            cue: Some(pb::Cue {
                                embedding,
                                max_results: 3,
                                ..Default::default()
                            }),
                            batch_size: 0,
                            include_embeddings: false,
                            after: None,
                        }),
                    ),
                    Send::Close => (
                        String::new(),
                        observe(O::Close(pb::StreamClose { drain: true })),
                    ),
                };
                tx.send(pb::FlowRequest {
                    request_id,
                    request: Some(request),
                })
                .await
                .expect("gRPC send");
            }
            Conn::Ws(ws) => {
                let v = match m {
                    Send::Init { space, resume } => json!({
                        "type": "init", "memory_space_id": space,
                        "resume_session_id": resume, "enable_backpressure": true,
                    }),
                    Send::Obs { seq, id, embedding } => json!({
                        "type": "observation", "sequence_number": seq,
                        "episode": {"id": id, "what": "parity", "embedding": embedding},
                    }),
                    Send::Pause => json!({"type": "flow_control", "action": "pause"}),
                    Send::Resume => json!({"type": "flow_control", "action": "resume"}),
                    Send::Recall {
                        request_id,
                        embedding,
                    } => json!({
                        "type": "recall", "request_id": request_id,
                        "cue": {"embedding": embedding, "max_results": 3},
                    }),
                    Send::Close => json!({"type": "close", "drain": true}),
                };
                ws.send(Message::Text(v.to_string()))
                    .await
                    .expect("WebSocket send");
            }
        }
    }

    /// The first message within `quiet`, if any (None: all quiet).
    async fn quiet_for(&mut self, quiet: Duration) -> Option<Seen> {
        tokio::time::timeout(quiet, self.recv_inner())
            .await
            .ok()
            .flatten()
    }

    /// The next message, normalised; None when the stream ended.
    async fn recv(&mut self) -> Option<Seen> {
        tokio::time::timeout(DEADLINE, self.recv_inner())
            .await
            .expect("no message from the server within the deadline")
    }

    async fn recv_inner(&mut self) -> Option<Seen> {
        match self {
            Conn::Grpc { rx, .. } => {
                let m = rx.message().await.ok()??;
                Some(seen_grpc(m))
            }
            Conn::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(&t).expect("server JSON");
                        return Some(seen_ws(&v));
                    }
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            },
        }
    }
}

fn seen_grpc(m: pb::FlowResponse) -> Seen {
    use pb::flow_response::Response as R;
    use pb::observe_response::Response as O;
    match m.response.expect("a response") {
        R::Recall(r) => Seen::Recall {
            request_id: m.request_id,
            ids: r
                .memories
                .iter()
                .map(|x| x.episode.as_ref().unwrap().id.clone())
                .collect(),
            more: r.more,
        },
        R::Error(e) => Seen::Error {
            request_id: m.request_id,
            code: e.code.to_lowercase(),
        },
        R::Observe(o) => match o.response.expect("an observe response") {
            O::InitAck(a) => Seen::InitAck {
                last_acked: a.last_acked_sequence,
            },
            O::Ack(a) => Seen::Ack {
                seq: a.sequence_number,
                accepted: a.status == pb::observation_ack::Status::AckAccepted as i32,
                reason: match pb::observation_ack::Reason::try_from(a.reason).unwrap() {
                    pb::observation_ack::Reason::RejectUnspecified => "",
                    pb::observation_ack::Reason::RejectOverloaded => "overloaded",
                    pb::observation_ack::Reason::RejectInvalid => "invalid",
                    pb::observation_ack::Reason::RejectOutOfOrder => "out_of_order",
                    pb::observation_ack::Reason::RejectUnauthorized => "unauthorized",
                    pb::observation_ack::Reason::RejectClosed => "closed",
                    pb::observation_ack::Reason::RejectUnavailable => "unavailable",
                }
                .into(),
                replayed: a.replayed,
                memory_id: a.memory_id,
                server_sequence: a.server_sequence,
                duplicate: a.duplicate,
                has_retry_after: a.retry_after_ms > 0,
            },
            O::Status(s) => Seen::Status(
                match pb::stream_status::State::try_from(s.state).unwrap() {
                    pb::stream_status::State::Unspecified => "unspecified",
                    pb::stream_status::State::Active => "active",
                    pb::stream_status::State::Paused => "paused",
                    pb::stream_status::State::Backpressure => "backpressure",
                    pb::stream_status::State::Overloaded => "overloaded",
                    pb::stream_status::State::Closing => "closing",
                }
                .into(),
            ),
            O::Closed(c) => Seen::Closed {
                final_sequence: c.final_sequence,
                accepted: c.accepted,
                rejected: c.rejected,
            },
        },
    }
}

fn seen_ws(v: &Value) -> Seen {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let b = |k: &str| v[k].as_bool().unwrap_or(false);
    match v["type"].as_str().expect("a type") {
        "init_ack" => Seen::InitAck {
            last_acked: n("last_acked_sequence"),
        },
        "ack" => Seen::Ack {
            seq: n("sequence_number"),
            accepted: s("status") == "accepted",
            reason: s("reason"),
            replayed: b("replayed"),
            memory_id: s("memory_id"),
            server_sequence: n("server_sequence"),
            duplicate: b("duplicate"),
            has_retry_after: n("retry_after_ms") > 0,
        },
        "status" => Seen::Status(s("state")),
        "closed" => Seen::Closed {
            final_sequence: n("final_sequence"),
            accepted: n("accepted"),
            rejected: n("rejected"),
        },
        "recall_result" => Seen::Recall {
            request_id: s("request_id"),
            ids: v["memories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["episode"]["id"].as_str().unwrap().to_owned())
                .collect(),
            more: b("more"),
        },
        "error" => Seen::Error {
            request_id: s("request_id"),
            code: s("code"),
        },
        other => panic!("unexpected message type {other}: {v}"),
    }
}

fn unit(i: usize) -> Vec<f32> {
    let mut v = vec![0.1f32; DIM];
    v[i % DIM] = 1.0;
    v[(i / DIM) % DIM] += 0.5;
    v
}

/// Reads until `n` acks came, collecting statuses on the side.
async fn acks(conn: &mut Conn, n: usize, statuses: &mut Vec<Seen>) -> Vec<Seen> {
    let mut out = Vec::new();
    while out.len() < n {
        match conn.recv().await.expect("the stream ended early") {
            s @ Seen::Status(_) => statuses.push(s),
            a @ Seen::Ack { .. } => out.push(a),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    out
}

/// Reads until a status with `state`, collecting the statuses seen.
async fn until_status(conn: &mut Conn, state: &str, statuses: &mut Vec<Seen>) {
    loop {
        match conn.recv().await.expect("the stream ended early") {
            Seen::Status(s) => {
                let done = s == state;
                statuses.push(Seen::Status(s));
                if done {
                    return;
                }
            }
            other => panic!("expected a status, got {other:?}"),
        }
    }
}

async fn admin(server: &ServerProcess, action: &str) {
    let (status, body) = call(
        &reqwest::Client::new(),
        reqwest::Method::POST,
        &server.url(&format!("/v1/admin/indexing/{action}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{action} indexing: {body}");
}

/// Waits until everything accepted in `space` is indexed.
async fn wait_drained(server: &ServerProcess, space: &str) {
    let client = reqwest::Client::new();
    let until = std::time::Instant::now() + DEADLINE;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        poll.tick().await;
        let (status, body) = call(
            &client,
            reqwest::Method::GET,
            &server.url(&format!("/v1/spaces/{space}")),
            None,
        )
        .await;
        if status == 200 && body["queue_depth"] == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "the queue never drained: {body}"
        );
    }
}

/// The whole scenario on one transport; returns each phase's transcript.
async fn scenario(t: Transport) -> Vec<(&'static str, Vec<Seen>)> {
    let dir = tempfile::tempdir().unwrap();
    // A queue of 20: SLOW_DOWN from 16, OVERLOADED from 18.
    let server = ServerProcess::start(
        dir.path(),
        &[
            "--queue-capacity",
            "20",
            "--fault-injection",
            "--workers",
            "1",
        ],
    );
    server.wait_ready().await;
    let mut phases = Vec::new();
    let mut conn = Conn::open(t, &server).await;
    let space = "parity".to_owned();

    // Acks, sequence rules and bad input.
    conn.send(Send::Init {
        space: space.clone(),
        resume: String::new(),
    })
    .await;
    let mut seen = vec![conn.recv().await.expect("init_ack")];
    for seq in 1..=3u64 {
        conn.send(Send::Obs {
            seq,
            id: format!("e{seq}"),
            embedding: unit(seq as usize),
        })
        .await;
    }
    conn.send(Send::Obs {
        seq: 4,
        id: "e4".into(),
        embedding: vec![1.0; DIM + 1],
    })
    .await;
    conn.send(Send::Obs {
        seq: 7,
        id: "gap".into(),
        embedding: unit(7),
    })
    .await;
    conn.send(Send::Obs {
        seq: 5,
        id: "e1".into(),
        embedding: unit(1),
    })
    .await;
    let mut statuses = Vec::new();
    seen.extend(acks(&mut conn, 6, &mut statuses).await);
    phases.push(("acks and rejections", seen));

    // Recall, a failed recall, and pause / resume.
    // One at a time: concurrent recalls may answer in either order.
    conn.send(Send::Recall {
        request_id: "r1".into(),
        embedding: unit(2),
    })
    .await;
    let mut seen = vec![conn.recv().await.unwrap()];
    conn.send(Send::Recall {
        request_id: "r2".into(),
        embedding: vec![1.0; DIM + 2],
    })
    .await;
    seen.push(conn.recv().await.unwrap());
    conn.send(Send::Pause).await;
    seen.push(conn.recv().await.unwrap());
    // A recall while paused is held: nothing arrives until resume.
    conn.send(Send::Recall {
        request_id: "held".into(),
        embedding: unit(3),
    })
    .await;
    let early = conn.quiet_for(HELD_FOR).await;
    assert_eq!(early, None, "{t:?}: a recall batch was sent while paused");
    conn.send(Send::Resume).await;
    // The resume status and the held batch, in either order.
    let mut after = vec![conn.recv().await.unwrap(), conn.recv().await.unwrap()];
    after.sort_by_key(|m| matches!(m, Seen::Recall { .. }));
    seen.extend(after);
    phases.push(("recall and flow control", seen));

    // Fill the queue with indexing paused: SLOW_DOWN, then OVERLOADED
    // rejections with a retry-after; the stream goes on.
    wait_drained(&server, &space).await;
    admin(&server, "pause").await;
    let mut seq = 6u64;
    let mut fill = Vec::new();
    let mut statuses = Vec::new();
    loop {
        conn.send(Send::Obs {
            seq,
            id: format!("f{seq}"),
            embedding: unit(seq as usize),
        })
        .await;
        let ack = acks(&mut conn, 1, &mut statuses).await.remove(0);
        let overloaded = matches!(&ack, Seen::Ack { reason, .. } if reason == "overloaded");
        fill.push(ack);
        seq += 1;
        if overloaded {
            break;
        }
        assert!(seq < 40, "the queue never overloaded");
    }
    phases.push(("filling the queue", fill));
    // Both pressure statuses arrive (they may trail the acks).
    if !statuses.contains(&Seen::Status("overloaded".into())) {
        until_status(&mut conn, "overloaded", &mut statuses).await;
    }
    phases.push(("statuses while filling", statuses));

    // Drain: the pressure clears, and the retried observation is accepted.
    admin(&server, "resume").await;
    let mut statuses = Vec::new();
    until_status(&mut conn, "active", &mut statuses).await;
    phases.push((
        "pressure cleared",
        vec![statuses.last().cloned().expect("a status")],
    ));
    conn.send(Send::Obs {
        seq,
        id: format!("f{}", seq - 1),
        embedding: unit(seq as usize - 1),
    })
    .await;
    let mut ignored = Vec::new();
    phases.push((
        "retry after overload",
        acks(&mut conn, 1, &mut ignored).await,
    ));

    // Close with drain.
    conn.send(Send::Close).await;
    let mut seen = Vec::new();
    while let Some(m) = conn.recv().await {
        seen.push(m);
    }
    phases.push(("close", seen));

    // Resume after a dropped connection: the last answered number, and the
    // original answer for a number sent again.
    let mut conn = Conn::open(t, &server).await;
    conn.send(Send::Init {
        space: space.clone(),
        resume: String::new(),
    })
    .await;
    let session_id = session_id_of(&mut conn).await;
    for seq in 1..=2u64 {
        conn.send(Send::Obs {
            seq,
            id: format!("s{seq}"),
            embedding: unit(seq as usize + 5),
        })
        .await;
    }
    let mut seen = acks(&mut conn, 2, &mut Vec::new()).await;
    drop(conn);
    let mut conn = Conn::open(t, &server).await;
    conn.send(Send::Init {
        space,
        resume: session_id,
    })
    .await;
    seen.push(conn.recv().await.unwrap());
    conn.send(Send::Obs {
        seq: 2,
        id: "s2".into(),
        embedding: unit(7),
    })
    .await;
    conn.send(Send::Obs {
        seq: 3,
        id: "s3".into(),
        embedding: unit(8),
    })
    .await;
    seen.extend(acks(&mut conn, 2, &mut Vec::new()).await);
    phases.push(("resume after disconnect", seen));
    phases
}

/// Reads the init_ack and returns the session id (not normalised away).
async fn session_id_of(conn: &mut Conn) -> String {
    match conn {
        Conn::Grpc { rx, .. } => {
            let m = tokio::time::timeout(DEADLINE, rx.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            match m.response {
                Some(pb::flow_response::Response::Observe(pb::ObserveResponse {
                    response: Some(pb::observe_response::Response::InitAck(a)),
                })) => a.session_id,
                other => panic!("expected init_ack, got {other:?}"),
            }
        }
        Conn::Ws(ws) => loop {
            match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["type"], "init_ack", "{v}");
                    return v["session_id"].as_str().unwrap().to_owned();
                }
                Some(Ok(_)) => continue,
                other => panic!("expected init_ack, got {other:?}"),
            }
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_websocket_streams_show_the_client_the_same_thing() {
    let grpc = scenario(Transport::Grpc).await;
    let ws = scenario(Transport::Ws).await;
    assert_eq!(grpc.len(), ws.len());
    for ((name, g), (_, w)) in grpc.iter().zip(&ws) {
        assert_eq!(g, w, "phase '{name}' differs:\n gRPC: {g:?}\n WS:   {w:?}");
    }

    // And the transcript is the right one, not just the same one.
    let phase = |name: &str| &grpc.iter().find(|(n, _)| *n == name).unwrap().1;
    let first = phase("acks and rejections");
    assert_eq!(first[0], Seen::InitAck { last_acked: 0 });
    let outcome = |s: &Seen| match s {
        Seen::Ack {
            seq,
            accepted,
            reason,
            duplicate,
            ..
        } => (*seq, *accepted, reason.clone(), *duplicate),
        other => panic!("{other:?}"),
    };
    let outcomes: Vec<_> = first[1..].iter().map(outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            (1, true, String::new(), false),
            (2, true, String::new(), false),
            (3, true, String::new(), false),
            (4, false, "invalid".into(), false),
            (7, false, "out_of_order".into(), false),
            // Number 5 carries an id already stored: accepted, nothing stored twice.
            (5, true, String::new(), true),
        ]
    );
    let flow = phase("recall and flow control");
    match &flow[0] {
        Seen::Recall {
            request_id,
            ids,
            more: false,
        } if request_id == "r1" => {
            assert_eq!(ids[0], "e2", "the exact match first: {ids:?}");
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(sorted, ["e1", "e2", "e3"]);
        }
        other => panic!("expected recall r1's results, got {other:?}"),
    }
    assert_eq!(
        flow[1],
        Seen::Error {
            request_id: "r2".into(),
            code: "invalid_argument".into()
        }
    );
    assert_eq!(flow[2], Seen::Status("paused".into()));
    assert_eq!(flow[3], Seen::Status("active".into()));
    assert!(
        matches!(&flow[4], Seen::Recall { request_id, ids, more: false } if request_id == "held" && ids[0] == "e3"),
        "{:?}",
        flow[4]
    );
    let fill = phase("filling the queue");
    let last = fill.last().unwrap();
    assert!(
        matches!(last, Seen::Ack { accepted: false, reason, has_retry_after: true, .. } if reason == "overloaded"),
        "{last:?}"
    );
    let statuses = phase("statuses while filling");
    let bp = statuses
        .iter()
        .position(|s| *s == Seen::Status("backpressure".into()));
    let ov = statuses
        .iter()
        .position(|s| *s == Seen::Status("overloaded".into()));
    assert!(
        matches!((bp, ov), (Some(b), Some(o)) if b < o),
        "SLOW_DOWN must come before OVERLOADED: {statuses:?}"
    );
    assert!(matches!(
        phase("retry after overload")[0],
        Seen::Ack { accepted: true, .. }
    ));
    let close = phase("close");
    assert_eq!(close[0], Seen::Status("closing".into()));
    let accepted = 4 + fill.len() as u64; // 1, 2, 3, 5, the fill (its last rejected), the retry
    assert_eq!(
        close[1],
        Seen::Closed {
            final_sequence: 6 + fill.len() as u64,
            accepted,
            rejected: 3, // invalid, overloaded, and the out-of-order number
        }
    );
    let resume = phase("resume after disconnect");
    assert_eq!(resume[2], Seen::InitAck { last_acked: 2 });
    assert!(
        matches!(&resume[3], Seen::Ack { seq: 2, accepted: true, replayed: true, memory_id, .. } if memory_id == "s2"),
        "{:?}",
        resume[3]
    );
    assert!(matches!(
        &resume[4],
        Seen::Ack {
            seq: 3,
            accepted: true,
            replayed: false,
            ..
        }
    ));
}
