//! What is WebSocket's own on `/v1/stream`, against the real server:
//! unreadable messages get an `error` and the socket stays open; heartbeats
//! and pings; the size limit (close 1009); stream-level errors (close 1008);
//! shutdown (close 1013); and WebSocket streams counted in the same metrics
//! as gRPC streams. The protocol itself (acks, order, backpressure, resume)
//! is checked against gRPC in `stream_parity.rs`.

mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const DEADLINE: Duration = Duration::from_secs(20);

async fn connect(server: &ServerProcess) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", server.addr))
        .await
        .expect("WebSocket connect")
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string())).await.expect("send");
}

/// The next JSON message (pings and pongs skipped).
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("no message within the deadline")
            .expect("the socket ended")
            .expect("a readable frame");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).expect("server JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a JSON text message, got {other:?}"),
        }
    }
}

/// Reads until the close frame; returns its code and the messages before it.
async fn until_close(ws: &mut Ws) -> (Option<CloseCode>, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let m = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("no close within the deadline");
        match m {
            Some(Ok(Message::Text(t))) => before.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return (frame.map(|f| f.code), before),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return (None, before),
        }
    }
}

fn config_file(dir: &std::path::Path, toml: &str) -> String {
    let path = dir.join("engram.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn open_session(ws: &mut Ws, space: &str) -> Value {
    send(ws, json!({"type": "init", "memory_space_id": space})).await;
    let ack = recv(ws).await;
    assert_eq!(ack["type"], "init_ack", "{ack}");
    ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_messages_get_an_error_and_the_socket_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let mut ws = connect(&server).await;

    let cases: [(Message, &str, &str); 6] = [
        (
            Message::Text("{not json".into()),
            "malformed_json",
            "not JSON",
        ),
        (
            Message::Text("[1, 2, 3]".into()),
            "malformed_json",
            "not an object",
        ),
        (
            Message::Text(r#"{"type": "observe"}"#.into()),
            "invalid_argument",
            "unknown variant `observe`",
        ),
        (
            Message::Text(r#"{"sequence_number": 1}"#.into()),
            "invalid_argument",
            "\"type\"",
        ),
        (
            Message::Text(r#"{"type": "init", "memory_space_id": 7}"#.into()),
            "invalid_argument",
            "invalid 'init' message",
        ),
        (
            Message::Binary(vec![1, 2, 3]),
            "invalid_argument",
            "binary messages",
        ),
    ];
    for (m, code, says) in cases {
        ws.send(m).await.unwrap();
        let e = recv(&mut ws).await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["fatal"], false, "{e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{e}");
    }

    // The same socket still carries a session.
    open_session(&mut ws, "ws-open").await;
    send(
        &mut ws,
        json!({"type": "observation", "sequence_number": 1,
               "episode": {"id": "a", "what": "kept", "embedding": [1.0, 0.0, 0.5]}}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["status"], "accepted", "{ack}");
    // A bad field in an observation whose number can be read: a rejected
    // ack under that number, and the next number is expected.
    send(
        &mut ws,
        json!({"type": "observation", "sequence_number": 2,
               "episode": {"embedding": [1.0, 0.0, 0.5], "when": "last tuesday"}}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["status"], "rejected", "{ack}");
    assert_eq!(ack["reason"], "invalid", "{ack}");
    assert_eq!(ack["sequence_number"], 2, "{ack}");
    assert!(
        ack["message"].as_str().unwrap().contains("RFC 3339"),
        "{ack}"
    );
    send(
        &mut ws,
        json!({"type": "observation", "sequence_number": 3,
               "episode": {"id": "b", "what": "after", "embedding": [0.0, 1.0, 0.5]}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["status"], "accepted");
    // Unreadable messages mid-session: still an error, still open.
    ws.send(Message::Text("{".into())).await.unwrap();
    assert_eq!(recv(&mut ws).await["code"], "malformed_json");
    send(&mut ws, json!({"type": "recall", "request_id": "q", "cue": {"embedding": [1.0, 0.0, 0.5], "max_results": 1}})).await;
    let r = recall_result(&mut ws).await;
    assert_eq!(r["memories"][0]["episode"]["id"], "a", "{r}");
    send(&mut ws, json!({"type": "close", "drain": true})).await;
    let (code, before) = until_close(&mut ws).await;
    assert_eq!(code, Some(CloseCode::Normal));
    let closed = before.last().unwrap();
    assert_eq!(closed["type"], "closed", "{before:?}");
    assert_eq!(closed["accepted"], 2, "{closed}");
    assert_eq!(closed["rejected"], 1, "{closed}");
}

async fn recall_result(ws: &mut Ws) -> Value {
    loop {
        let m = recv(ws).await;
        if m["type"] == "recall_result" {
            return m;
        }
        assert_eq!(m["type"], "status", "unexpected {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_answered_pings_arrive_and_recall_works_before_init() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "[http]\nws_ping_interval_secs = 1\n");
    let server = ServerProcess::start(dir.path(), &["--config", &config]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let (status, _) = call(
        &client,
        reqwest::Method::PUT,
        &server.url("/v1/spaces/ws-pre"),
        Some(json!({"dimension": 2})),
    )
    .await;
    assert_eq!(status, 201);
    let mut ws = connect(&server).await;
    send(&mut ws, json!({"type": "heartbeat"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "heartbeat"}));
    send(&mut ws, json!({"type": "recall", "request_id": "early", "memory_space_id": "ws-pre", "cue": {"embedding": [1.0, 0.0]}})).await;
    let r = recv(&mut ws).await;
    assert_eq!(r["type"], "recall_result", "{r}");
    assert_eq!(r["request_id"], "early");
    assert_eq!(r["more"], false);
    assert_eq!(r["memories"], json!([]));
    // Without a space and before init, a recall cannot know where to look.
    send(
        &mut ws,
        json!({"type": "recall", "request_id": "lost", "cue": {"embedding": [1.0, 0.0]}}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["request_id"], "lost", "{e}");
    assert_eq!(e["fatal"], false, "{e}");

    let until = Instant::now() + DEADLINE;
    loop {
        let m = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
        if let Some(Ok(Message::Ping(_))) = m {
            break;
        }
        assert!(Instant::now() < until, "no ping from the server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_with_1009_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "[http]\nmax_ws_message_bytes = 65536\n");
    let server = ServerProcess::start(dir.path(), &["--config", &config]);
    server.wait_ready().await;
    // Small enough to arrive whole, and far larger than the socket buffers
    // (the client is still sending when the server answers).
    for floats in [20_000usize, 1_000_000] {
        let ws = connect(&server).await;
        let (mut tx, mut rx) = ws.split();
        tx.send(Message::Text(
            json!({"type": "init", "memory_space_id": "ws-big"}).to_string(),
        ))
        .await
        .unwrap();
        let big = json!({"type": "observation", "sequence_number": 1,
                         "episode": {"embedding": vec![0.5f32; floats]}})
        .to_string();
        let sending = tokio::spawn(async move {
            // May fail: the server stops reading once it saw the size.
            let _ = tx.send(Message::Text(big)).await;
            tx
        });
        let mut before = Vec::new();
        let close = loop {
            match tokio::time::timeout(DEADLINE, rx.next()).await.expect("no close") {
                Some(Ok(Message::Text(t))) => before.push(serde_json::from_str::<Value>(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                other => panic!("{floats} floats: the connection ended without a close frame: {other:?} after {before:?}"),
            }
        };
        assert_eq!(close, Some(CloseCode::Size), "{floats} floats: {before:?}");
        let e = before.last().expect("an error before the close");
        assert_eq!(e["code"], "message_too_large", "{e}");
        assert_eq!(e["fatal"], true, "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("http.max_ws_message_bytes"),
            "{e}"
        );
        sending.abort();
    }

    let mut ws = connect(&server).await;
    open_session(&mut ws, "ws-big").await;
    send(
        &mut ws,
        json!({"type": "observation", "sequence_number": 1, "episode": {"embedding": [0.5, 0.5]}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["status"], "accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_level_errors_end_with_1008_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;

    let cases: [(Vec<Value>, &str, &str); 4] = [
        (
            vec![
                json!({"type": "observation", "sequence_number": 1, "episode": {"embedding": [1.0]}}),
            ],
            "invalid_argument",
            "must be init",
        ),
        (
            vec![json!({"type": "init", "memory_space_id": "Not A Space"})],
            "invalid_argument",
            "memory_space_id",
        ),
        (
            vec![
                json!({"type": "init", "memory_space_id": "ws-e", "resume_session_id": "no-such-session"}),
            ],
            "not_found",
            "no-such-session",
        ),
        (
            vec![
                json!({"type": "init", "memory_space_id": "ws-e"}),
                json!({"type": "init", "memory_space_id": "ws-e"}),
            ],
            "invalid_argument",
            "already sent",
        ),
    ];
    for (messages, code, says) in cases {
        let mut ws = connect(&server).await;
        for m in messages {
            send(&mut ws, m).await;
        }
        let (close, before) = until_close(&mut ws).await;
        assert_eq!(close, Some(CloseCode::Policy), "{before:?}");
        let e = before.last().expect("an error before the close");
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["fatal"], true, "{e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{e}");
    }
    // The server goes on.
    let mut ws = connect(&server).await;
    open_session(&mut ws, "ws-e").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_what_was_taken_and_closes_with_1013() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    // One quiet stream, one still sending when the server stops.
    let mut quiet = connect(&server).await;
    open_session(&mut quiet, "ws-stop").await;
    send(
        &mut quiet,
        json!({"type": "observation", "sequence_number": 1, "episode": {"embedding": [1.0, 2.0]}}),
    )
    .await;
    assert_eq!(recv(&mut quiet).await["status"], "accepted");
    let mut busy = connect(&server).await;
    open_session(&mut busy, "ws-stop").await;
    let (mut tx, mut rx) = busy.split();
    let sending = tokio::spawn(async move {
        for seq in 1..=200_000u64 {
            let m = json!({"type": "observation", "sequence_number": seq,
                           "episode": {"embedding": [1.0, seq as f32]}});
            if tx.send(Message::Text(m.to_string())).await.is_err() {
                return seq;
            }
        }
        0
    });
    // Let the busy stream get going: some acks arrive.
    let mut acked = 0;
    while acked < 100 {
        match tokio::time::timeout(DEADLINE, rx.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.contains("\"ack\"") => acked += 1,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let status = server.terminate(DEADLINE);
    assert!(status.success(), "{status:?}");

    let (close, before) = until_close(&mut quiet).await;
    assert_eq!(close, Some(CloseCode::Again), "{before:?}");
    let kinds: Vec<_> = before.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["status", "error"], "{before:?}");
    assert_eq!(before[0]["state"], "closing");
    assert_eq!(before[1]["code"], "unavailable");
    assert_eq!(before[1]["fatal"], true);

    // The busy stream: every ack, then closing, the error, and 1013.
    let mut last = Vec::new();
    let close = loop {
        match tokio::time::timeout(DEADLINE, rx.next())
            .await
            .expect("no close")
        {
            Some(Ok(Message::Text(t))) => last.push(serde_json::from_str::<Value>(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            other => panic!("the busy stream ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close, Some(CloseCode::Again));
    let tail: Vec<_> = last
        .iter()
        .rev()
        .take(2)
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        tail,
        ["error", "status"],
        "{:?}",
        &last[last.len().saturating_sub(3)..]
    );
    sending.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_streams_are_counted_in_the_stream_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let mut ws = connect(&server).await;
    open_session(&mut ws, "ws-metrics").await;
    for seq in 1..=3 {
        send(
            &mut ws,
            json!({"type": "observation", "sequence_number": seq, "episode": {"embedding": [1.0, seq as f32]}}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["status"], "accepted");
    }
    send(
        &mut ws,
        json!({"type": "observation", "sequence_number": 4, "episode": {"embedding": [1.0]}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["reason"], "invalid");

    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains("space_id=\"ws-metrics\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(sum("engram_streaming_observations_total{"), 3.0, "{text}");
    assert_eq!(
        sum("engram_streaming_observations_rejected_total{"),
        1.0,
        "{text}"
    );
    let active: f64 = text
        .lines()
        .find(|l| l.starts_with("engram_streaming_active_sessions_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the active sessions gauge");
    assert_eq!(active, 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_under_pressure_hears_of_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--queue-capacity", "100", "--fault-injection"],
    );
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let (status, _) = call(
        &client,
        reqwest::Method::POST,
        &server.url("/v1/admin/indexing/pause"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // 85 of 100 queued: SLOW_DOWN (from 80%), before the stream opens.
    for i in 0..85 {
        let (status, body) = call(
            &client,
            reqwest::Method::POST,
            &server.url("/v1/spaces/ws-busy/memories"),
            Some(json!({"embedding": [1.0, i as f32]})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"type": "init", "memory_space_id": "ws-busy", "enable_backpressure": true}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "init_ack");
    let status = recv(&mut ws).await;
    assert_eq!(status["type"], "status", "{status}");
    assert_eq!(status["state"], "backpressure", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("80%"),
        "{status}"
    );
    // Without backpressure enabled, nothing unasked comes.
    let mut quiet = connect(&server).await;
    open_session(&mut quiet, "ws-busy").await;
    send(&mut quiet, json!({"type": "heartbeat"})).await;
    assert_eq!(recv(&mut quiet).await["type"], "heartbeat");
}
