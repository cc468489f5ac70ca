//! Issue 12: API keys with per-space grants on every transport, the safe
//! default (no keys: loopback only), TLS, reloads on SIGHUP, and the
//! limits. Every test runs the real `engram` binary.
//!
//! The keys file of the matrix tests:
//! - `key-rw`: read and write on `s-*`;
//! - `key-ro`: read on `s-*`;
//! - `key-other`: read, write and admin on `o-*` (a key for another space);
//! - `key-admin`: admin on every space;
//! - `[metrics]`: `key-metrics`.
//!
//! Every path is called with no key, a wrong key and `key-other`, and must
//! answer 401 / UNAUTHENTICATED, 401 / UNAUTHENTICATED and 403 /
//! PERMISSION_DENIED (on a stream: the observation rejected as
//! unauthorized, the stream going on); with the right key it must pass.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_client::proto::{
    flow_request, flow_response, observe_request, observe_response, FlowRequest, Observation,
    ObserveRequest, RecallRequest, StreamInit,
};
use engram_client::{
    cue, episode, Answer, ClientError, ClientOptions, RejectReason, StreamingClient, TlsOptions,
};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::ServerProcess;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;

const DIM: usize = 3;
const WAIT: Duration = Duration::from_secs(20);

fn hash(key: &str) -> String {
    engram_server::auth::keys::hash_string(key)
}

fn key_entry(name: &str, key: &str, roles: &[&str], spaces: &[&str]) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[keys]]\nname = {name:?}\nhash = \"{}\"\nroles = [{}]\nspaces = [{}]\n",
        hash(key),
        list(roles),
        list(spaces)
    )
}

fn matrix_keys() -> String {
    key_entry("rw", "key-rw", &["read", "write"], &["s-*"])
        + &key_entry("ro", "key-ro", &["read"], &["s-*"])
        + &key_entry("other", "key-other", &["read", "write", "admin"], &["o-*"])
        + &key_entry("admin", "key-admin", &["admin"], &["*"])
        + &format!("[metrics]\nhash = \"{}\"\n", hash("key-metrics"))
}

fn write_keys(dir: &Path, text: &str) -> String {
    let p = dir.join("keys.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

async fn client(server: &ServerProcess, key: Option<&str>) -> StreamingClient {
    StreamingClient::connect_with(
        format!("http://{}", server.grpc),
        ClientOptions {
            api_key: key.map(Into::into),
            ..ClientOptions::default()
        },
    )
    .await
    .expect("connecting")
}

/// A server with the matrix keys, `s-1` and `o-1` created (3-d) and one
/// memory `m1` in `s-1`.
async fn matrix_server(dir: &Path) -> ServerProcess {
    let keys = write_keys(dir, &matrix_keys());
    let config = dir.join("engram.toml");
    std::fs::write(&config, "[http]\nws_auth_timeout_secs = 1\n").unwrap();
    let server = ServerProcess::start(
        &dir.join("data"),
        &[
            "--api-keys",
            &keys,
            "--fault-injection",
            "--wal-sync",
            "none",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    server.wait_ready().await;
    let admin = client(&server, Some("key-admin")).await;
    for space in ["s-1", "o-1"] {
        admin.create_space(space, DIM as u32).await.unwrap();
    }
    let mut m1 = episode("first", vec![1.0, 0.0, 0.0]);
    m1.id = "m1".into();
    admin.remember("s-1", m1).await.unwrap();
    server
}

fn code_of(e: &ClientError) -> Option<Code> {
    e.code()
}

/// What a refused call must look like for each of the three wrong keys.
fn expect_refused(what: &str, key: Option<&str>, got: Result<(), ClientError>) {
    let want = match key {
        None | Some("nope") => Code::Unauthenticated,
        _ => Code::PermissionDenied,
    };
    match got {
        Err(e) => assert_eq!(
            code_of(&e),
            Some(want),
            "{what} with key {key:?}: expected {want:?}, got {e}"
        ),
        Ok(()) => panic!("{what} with key {key:?}: expected {want:?}, but it passed"),
    }
}

fn expect_allowed(what: &str, key: &str, got: Result<(), ClientError>) {
    if let Err(e) = got {
        assert!(
            !matches!(
                code_of(&e),
                Some(Code::Unauthenticated | Code::PermissionDenied)
            ),
            "{what} with the right key {key}: refused: {e}"
        );
    }
}

/// One gRPC call on `space` by `c`.
async fn grpc_call(c: &StreamingClient, what: &str, space: &str) -> Result<(), ClientError> {
    match what {
        "Remember" => c
            .remember(space, episode("x", vec![0.0, 1.0, 0.0]))
            .await
            .map(drop),
        "Recall" => c.recall(space, cue(vec![1.0, 0.0, 0.0], 3)).await.map(drop),
        "RecallStream" => c
            .recall_stream(space, cue(vec![1.0, 0.0, 0.0], 3))
            .await?
            .collect_all()
            .await
            .map(drop),
        "Forget" => match c.forget(space, "no-such-memory").await {
            Err(ClientError::NotFound(_)) => Ok(()),
            other => other,
        },
        "CreateSpace" => c.create_space(space, DIM as u32).await.map(drop),
        "DescribeSpace" => c.describe_space(space).await.map(drop),
        "ListMemories" => c
            .list_memories(engram_client::proto::ListMemoriesRequest {
                memory_space_id: space.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "DeleteSpace" => match c.delete_space(space).await {
            Err(ClientError::NotFound(_)) => Ok(()),
            other => other,
        },
        other => panic!("unknown call {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_call_checks_the_key_for_its_space() {
    let dir = tempfile::tempdir().unwrap();
    let server = matrix_server(dir.path()).await;
    let wrong: Vec<(Option<&str>, StreamingClient)> = vec![
        (None, client(&server, None).await),
        (Some("nope"), client(&server, Some("nope")).await),
        (Some("key-other"), client(&server, Some("key-other")).await),
    ];
    let rw = client(&server, Some("key-rw")).await;
    let ro = client(&server, Some("key-ro")).await;
    let admin = client(&server, Some("key-admin")).await;
    // (call, space, a key that may, a key of the space that may not).
    let calls: [(&str, &str, &StreamingClient, Option<&StreamingClient>); 8] = [
        ("Remember", "s-1", &rw, Some(&ro)),
        ("Recall", "s-1", &ro, None),
        ("RecallStream", "s-1", &ro, None),
        ("Forget", "s-1", &rw, Some(&ro)),
        ("CreateSpace", "s-2", &rw, Some(&ro)),
        ("DescribeSpace", "s-1", &ro, None),
        ("ListMemories", "s-1", &ro, None),
        ("DeleteSpace", "s-gone", &admin, Some(&rw)),
    ];
    for (what, space, allowed, lacking) in calls {
        for (key, c) in &wrong {
            expect_refused(what, *key, grpc_call(c, what, space).await);
        }
        if let Some(c) = lacking {
            expect_refused(
                &format!("{what} without the role"),
                Some("role"),
                grpc_call(c, what, space).await,
            );
        }
        expect_allowed(what, "allowed", grpc_call(allowed, what, space).await);
    }

    // ListSpaces: no key or a wrong one is refused; a key sees its spaces.
    for (key, c) in &wrong[..2] {
        expect_refused("ListSpaces", *key, c.list_spaces().await.map(drop));
    }
    let names = |v: Vec<engram_client::proto::SpaceInfo>| {
        let mut n: Vec<String> = v.into_iter().map(|s| s.memory_space_id).collect();
        n.sort();
        n
    };
    assert_eq!(names(rw.list_spaces().await.unwrap()), ["s-1", "s-2"]);
    assert_eq!(names(wrong[2].1.list_spaces().await.unwrap()), ["o-1"]);
    assert_eq!(
        names(admin.list_spaces().await.unwrap()),
        ["o-1", "s-1", "s-2"]
    );

    // ObserveStream: no key or a wrong one cannot open it; a key for
    // another space, or without write, has each observation rejected as
    // unauthorized while the stream goes on.
    for (key, c) in &wrong[..2] {
        let got = async {
            let (sender, mut acks) = c.observe_stream("s-1").await?;
            sender.send(episode("x", vec![1.0, 0.0, 0.0])).await?;
            acks.recv().await.expect("an answer")?;
            Ok(())
        }
        .await;
        expect_refused("ObserveStream", *key, got);
    }
    for c in [&wrong[2].1, &ro] {
        let (sender, mut acks) = c.observe_stream("s-1").await.unwrap();
        for i in 0..3 {
            sender
                .send(episode(format!("denied {i}"), vec![1.0, 0.0, 0.0]))
                .await
                .unwrap();
            match acks.recv().await.expect("an answer").unwrap() {
                Answer::Rejected(r) => {
                    assert_eq!(r.reason, RejectReason::Unauthorized, "{}", r.message)
                }
                other => panic!("expected unauthorized, got {other:?}"),
            }
        }
        let closed = sender.close(true).await.unwrap();
        assert_eq!(closed.rejected, 3);
    }
    observe_one_accepted(&rw, "s-1", "allowed").await;

    // MemoryFlow: the same for observations, and a recall of a space the
    // key may not read fails alone.
    for (key, c) in &wrong[..2] {
        let (tx, rx) = tokio::sync::mpsc::channel::<FlowRequest>(4);
        tx.send(flow_init("s-1")).await.unwrap();
        let got = c
            .raw_streaming()
            .memory_flow(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(drop)
            .map_err(ClientError::from);
        expect_refused("MemoryFlow", *key, got);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<FlowRequest>(8);
    let mut flow = wrong[2]
        .1
        .raw_streaming()
        .memory_flow(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(flow_init("s-1")).await.unwrap();
    tx.send(flow_observation(1)).await.unwrap();
    tx.send(flow_recall("s-1")).await.unwrap();
    tx.send(flow_recall("o-1")).await.unwrap();
    let (mut rejected, mut denied, mut answered_own) = (false, false, false);
    let until = Instant::now() + WAIT;
    while !(rejected && denied && answered_own) {
        assert!(
            Instant::now() < until,
            "MemoryFlow did not answer everything"
        );
        let r = tokio::time::timeout(WAIT, flow.next())
            .await
            .expect("a flow response")
            .expect("the flow goes on")
            .unwrap();
        match r.response {
            Some(flow_response::Response::Observe(o)) => {
                if let Some(observe_response::Response::Ack(a)) = o.response {
                    assert_eq!(
                        a.reason,
                        engram_client::proto::observation_ack::Reason::RejectUnauthorized as i32,
                        "{}",
                        a.message
                    );
                    rejected = true;
                }
            }
            Some(flow_response::Response::Error(e)) => {
                assert_eq!(r.request_id, "recall-s-1");
                assert_eq!(e.code, "PERMISSION_DENIED", "{}", e.message);
                denied = true;
            }
            Some(flow_response::Response::Recall(_)) => {
                assert_eq!(r.request_id, "recall-o-1");
                answered_own = true;
            }
            None => {}
        }
    }
    drop(tx);
    let info = admin.describe_space("s-1").await.unwrap();
    assert_eq!(
        info.count, 3,
        "m1, the Remember and the allowed stream observation; nothing denied was stored"
    );
}

/// Streams one episode on a new observe session of `space` and expects it
/// accepted; closes the session.
async fn observe_one_accepted(c: &StreamingClient, space: &str, what: &str) {
    let (sender, mut acks) = c.observe_stream(space).await.unwrap();
    sender
        .send(episode(what, vec![1.0, 0.0, 0.0]))
        .await
        .unwrap();
    assert!(matches!(
        acks.recv().await.unwrap().unwrap(),
        Answer::Accepted(_)
    ));
    sender.close(true).await.unwrap();
}

fn flow_init(space: &str) -> FlowRequest {
    FlowRequest {
        request_id: String::new(),
        request: Some(flow_request::Request::Observe(ObserveRequest {
            request: Some(observe_request::Request::Init(StreamInit {
                memory_space_id: space.into(),
                ..StreamInit::default()
            })),
        })),
    }
}

fn flow_observation(seq: u64) -> FlowRequest {
    FlowRequest {
        request_id: String::new(),
        request: Some(flow_request::Request::Observe(ObserveRequest {
            request: Some(observe_request::Request::Observation(Observation {
                sequence_number: seq,
                episode: Some(episode(format!("flow {seq}"), vec![1.0, 0.0, 0.0])),
                ..Observation::default()
            })),
        })),
    }
}

fn flow_recall(space: &str) -> FlowRequest {
    FlowRequest {
        request_id: format!("recall-{space}"),
        request: Some(flow_request::Request::Recall(RecallRequest {
            memory_space_id: space.into(),
            cue: Some(cue(vec![1.0, 0.0, 0.0], 3)),
            ..RecallRequest::default()
        })),
    }
}

/// A REST call with `key` as a bearer token.
async fn rest(
    http: &reqwest::Client,
    server: &ServerProcess,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let mut req = http.request(method, server.url(path));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, www)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_route_checks_the_key_for_its_space() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let server = matrix_server(dir.path()).await;
    let http = reqwest::Client::new();
    let ep = json!({"what": "rest", "embedding": [0.0, 1.0, 0.0]});
    let cue_json = json!({"embedding": [1.0, 0.0, 0.0], "max_results": 3});
    // (method, path, body, the right key, a key of the space without the role)
    type Route<'a> = (Method, &'a str, Option<Value>, &'a str, Option<&'a str>);
    let routes: Vec<Route> = vec![
        (
            Method::PUT,
            "/v1/spaces/s-3",
            Some(json!({"dimension": 3})),
            "key-rw",
            Some("key-ro"),
        ),
        (Method::GET, "/v1/spaces/s-1", None, "key-ro", None),
        (
            Method::GET,
            "/v1/spaces/s-1/memories?tags_any=x",
            None,
            "key-ro",
            None,
        ),
        (
            Method::POST,
            "/v1/spaces/s-1/memories",
            Some(ep.clone()),
            "key-rw",
            Some("key-ro"),
        ),
        (
            Method::POST,
            "/v1/spaces/s-1/recall",
            Some(cue_json.clone()),
            "key-ro",
            None,
        ),
        (
            Method::DELETE,
            "/v1/spaces/s-1/memories/none",
            None,
            "key-rw",
            Some("key-ro"),
        ),
        (
            Method::POST,
            "/v1/admin/spaces/s-1/integrity",
            None,
            "key-admin",
            Some("key-rw"),
        ),
        (
            Method::POST,
            "/v1/admin/indexing/resume",
            None,
            "key-admin",
            Some("key-rw"),
        ),
        (
            Method::POST,
            "/v1/admin/faults",
            Some(json!({})),
            "key-admin",
            Some("key-rw"),
        ),
        (
            Method::DELETE,
            "/v1/spaces/s-3",
            None,
            "key-admin",
            Some("key-rw"),
        ),
    ];
    for (method, path, body, right, lacking) in routes {
        for key in [None, Some("nope")] {
            let (status, v, www) =
                rest(&http, &server, method.clone(), path, key, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {v}");
            assert_eq!(v["code"], "unauthenticated", "{v}");
            assert_eq!(www.as_deref(), Some("Bearer realm=\"engram\""));
        }
        let mut refused = vec!["key-other"];
        refused.extend(lacking);
        for key in refused {
            let (status, v, _) = rest(
                &http,
                &server,
                method.clone(),
                path,
                Some(key),
                body.clone(),
            )
            .await;
            assert_eq!(status, 403, "{method} {path} with {key}: {v}");
            assert_eq!(v["code"], "permission_denied", "{v}");
        }
        let (status, v, _) = rest(&http, &server, method.clone(), path, Some(right), body).await;
        assert!(
            (200..300).contains(&status) || status == 404,
            "{method} {path} with {right}: {status} {v}"
        );
    }
    // The listing shows only covered spaces.
    for key in [None, Some("nope")] {
        let (status, _, _) = rest(&http, &server, Method::GET, "/v1/spaces", key, None).await;
        assert_eq!(status, 401);
    }
    let ids = |v: &Value| {
        let mut ids: Vec<String> = v["spaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["memory_space_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let (_, v, _) = rest(
        &http,
        &server,
        Method::GET,
        "/v1/spaces",
        Some("key-ro"),
        None,
    )
    .await;
    assert_eq!(ids(&v), ["s-1"]);
    let (_, v, _) = rest(
        &http,
        &server,
        Method::GET,
        "/v1/spaces",
        Some("key-other"),
        None,
    )
    .await;
    assert_eq!(ids(&v), ["o-1"]);
    // /metrics has its own key (or an admin key on every space); health
    // never needs one.
    for (key, want) in [
        (None, 401),
        (Some("nope"), 401),
        (Some("key-rw"), 403),
        (Some("key-metrics"), 200),
        (Some("key-admin"), 200),
    ] {
        let (status, _, _) = rest(&http, &server, Method::GET, "/metrics", key, None).await;
        assert_eq!(status, want, "/metrics with {key:?}");
    }
    for path in ["/health/live", "/health/ready"] {
        let (status, _, _) = rest(&http, &server, Method::GET, path, None, None).await;
        assert_eq!(status, 200, "{path}");
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/stream`, with `header` as the authorization header and
/// `protocols` as the offered subprotocols.
async fn ws_open(
    server: &ServerProcess,
    header: Option<&str>,
    protocols: Option<&str>,
) -> Result<(Ws, Option<String>), u16> {
    let mut req = format!("ws://{}/v1/stream", server.addr)
        .into_client_request()
        .unwrap();
    if let Some(h) = header {
        req.headers_mut()
            .insert("authorization", format!("Bearer {h}").parse().unwrap());
    }
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => Ok((
            ws,
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned()),
        )),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string())).await.unwrap();
}

/// The next JSON message, or the close code.
async fn ws_next(ws: &mut Ws) -> Result<Value, Option<CloseCode>> {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a websocket message in time");
        match m {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| f.code)),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return Err(None),
        }
    }
}

fn init(space: &str, key: Option<&str>) -> Value {
    let mut v = json!({"type": "init", "memory_space_id": space});
    if let Some(k) = key {
        v["api_key"] = json!(k);
    }
    v
}

fn observation(seq: u64) -> Value {
    json!({"type": "observation", "sequence_number": seq,
           "episode": {"what": format!("ws {seq}"), "embedding": [1.0, 0.0, 0.0]}})
}

/// An unauthenticated socket: an error `unauthenticated`, then close 1008.
async fn expect_ws_unauthenticated(ws: &mut Ws) {
    let e = ws_next(ws).await.expect("an error message first");
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "unauthenticated", "{e}");
    assert_eq!(ws_next(ws).await.unwrap_err(), Some(CloseCode::Policy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_stream_takes_the_key_three_ways_and_checks_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = matrix_server(dir.path()).await;
    // No key anywhere: refused after init.
    let (mut ws, _) = ws_open(&server, None, None).await.unwrap();
    ws_send(&mut ws, init("s-1", None)).await;
    expect_ws_unauthenticated(&mut ws).await;
    // A wrong key on the upgrade (header or subprotocol): 401, no socket.
    assert_eq!(ws_open(&server, Some("nope"), None).await.unwrap_err(), 401);
    assert_eq!(
        ws_open(&server, None, Some("engram.v1, bearer.nope"))
            .await
            .unwrap_err(),
        401
    );
    // A socket that never sends its init is closed as unauthenticated
    // after http.ws_auth_timeout_secs (1 s here).
    let (mut silent, _) = ws_open(&server, None, None).await.unwrap();
    let started = Instant::now();
    expect_ws_unauthenticated(&mut silent).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A wrong key in init.
    let (mut ws, _) = ws_open(&server, None, None).await.unwrap();
    ws_send(&mut ws, init("s-1", Some("nope"))).await;
    expect_ws_unauthenticated(&mut ws).await;

    // The right key, each of the three ways: the observation is stored.
    for (n, (header, protocols, in_init)) in [
        (Some("key-rw"), None, None),
        (None, Some("engram.v1, bearer.key-rw"), None),
        (None, None, Some("key-rw")),
    ]
    .into_iter()
    .enumerate()
    {
        let (mut ws, selected) = ws_open(&server, header, protocols).await.unwrap();
        if protocols.is_some() {
            assert_eq!(selected.as_deref(), Some("engram.v1"));
        }
        ws_send(&mut ws, init("s-1", in_init)).await;
        let ack = ws_next(&mut ws).await.unwrap();
        assert_eq!(ack["type"], "init_ack", "way {n}: {ack}");
        assert_eq!(ack["capabilities"]["dimension"], DIM, "{ack}");
        ws_send(&mut ws, observation(1)).await;
        let ack = ws_next(&mut ws).await.unwrap();
        assert_eq!(ack["status"], "accepted", "way {n}: {ack}");
    }

    // A key for another space: each observation rejected, each recall of
    // the space refused, and the stream goes on (its own space answers).
    let (mut ws, _) = ws_open(&server, None, Some("engram.v1, bearer.key-other"))
        .await
        .unwrap();
    ws_send(&mut ws, init("s-1", None)).await;
    let ack = ws_next(&mut ws).await.unwrap();
    assert_eq!(ack["type"], "init_ack", "{ack}");
    // The stream learns nothing of a space its key does not cover.
    assert_eq!(ack["capabilities"]["dimension"], 0, "{ack}");
    for seq in 1..=2 {
        ws_send(&mut ws, observation(seq)).await;
        let ack = ws_next(&mut ws).await.unwrap();
        assert_eq!(ack["status"], "rejected", "{ack}");
        assert_eq!(ack["reason"], "unauthorized", "{ack}");
    }
    ws_send(
        &mut ws,
        json!({"type": "recall", "request_id": "r1", "cue": {"embedding": [1.0, 0.0, 0.0]}}),
    )
    .await;
    let e = ws_next(&mut ws).await.unwrap();
    assert_eq!(e["code"], "permission_denied", "{e}");
    assert_eq!(e["request_id"], "r1", "{e}");
    ws_send(
        &mut ws,
        json!({"type": "recall", "request_id": "r2", "memory_space_id": "o-1",
               "cue": {"embedding": [1.0, 0.0, 0.0]}}),
    )
    .await;
    let r = ws_next(&mut ws).await.unwrap();
    assert_eq!(r["request_id"], "r2", "{r}");
    assert_ne!(r["type"], "error", "{r}");
    ws_send(&mut ws, json!({"type": "heartbeat"})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap()["type"], "heartbeat");
}

#[cfg(unix)]
fn sighup(server: &ServerProcess) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    assert_eq!(rc, 0);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_reload_on_sighup_without_dropping_streams() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(
        dir.path(),
        &key_entry("rw", "key-rw", &["read", "write"], &["s-*"]),
    );
    let server = ServerProcess::start(&dir.path().join("data"), &["--api-keys", &keys]);
    server.wait_ready().await;
    let rw = client(&server, Some("key-rw")).await;
    rw.create_space("s-1", DIM as u32).await.unwrap();
    let (sender, mut acks) = rw.observe_stream("s-1").await.unwrap();
    sender
        .send(episode("before", vec![1.0, 0.0, 0.0]))
        .await
        .unwrap();
    assert!(matches!(
        acks.recv().await.unwrap().unwrap(),
        Answer::Accepted(_)
    ));

    // A broken file is refused and the keys in use stay.
    std::fs::write(&keys, "this is not toml [").unwrap();
    sighup(&server);
    let until = Instant::now() + WAIT;
    while !server.log_text().contains("API keys NOT reloaded") {
        assert!(
            Instant::now() < until,
            "no reload error logged:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rw.describe_space("s-1").await.unwrap();

    // The key is replaced: the open stream stays, but its next observation
    // is unauthorized; new calls with the old key are unauthenticated, and
    // the new key works at once.
    std::fs::write(
        &keys,
        key_entry("new", "key-new", &["read", "write"], &["s-*"]),
    )
    .unwrap();
    sighup(&server);
    let until = Instant::now() + WAIT;
    loop {
        sender
            .send(episode("after", vec![1.0, 0.0, 0.0]))
            .await
            .unwrap();
        match acks
            .recv()
            .await
            .expect("the stream is still open")
            .unwrap()
        {
            Answer::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::Unauthorized, "{}", r.message);
                assert!(r.message.contains("removed"), "{}", r.message);
                break;
            }
            Answer::Accepted(_) => {
                assert!(Instant::now() < until, "the reload never took effect");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let e = rw.describe_space("s-1").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    let new = client(&server, Some("key-new")).await;
    new.describe_space("s-1").await.unwrap();
    drop(sender);
}

/// GET `path` over HTTPS with a raw HTTP/1.1 request, trusting `ca`.
async fn https_get(
    addr: std::net::SocketAddr,
    ca: &Path,
    path: &str,
    key: Option<&str>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let auth = key.map_or_else(String::new, |k| format!("authorization: Bearer {k}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_grpc_and_https_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    engram_server::tls::generate(&certs, &hosts).unwrap();
    let keys = write_keys(
        dir.path(),
        &key_entry("rw", "key-rw", &["read", "write"], &["*"]),
    );
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--api-keys",
            &keys,
            "--tls-cert",
            certs.join("server.pem").to_str().unwrap(),
            "--tls-key",
            certs.join("server.key").to_str().unwrap(),
        ],
    );
    let ca = certs.join("ca.pem");
    let until = Instant::now() + WAIT;
    loop {
        match https_get(server.addr, &ca, "/health/ready", None).await {
            Ok(r) if r.starts_with("HTTP/1.1 200") => break,
            other => {
                assert!(
                    Instant::now() < until,
                    "never ready over https: {other:?}\n{}",
                    server.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let tls_client = |ca: &Path| {
        let ca_pem = std::fs::read(ca).unwrap();
        let addr = server.grpc;
        async move {
            StreamingClient::connect_with(
                format!("https://localhost:{}", addr.port()),
                ClientOptions {
                    api_key: Some("key-rw".into()),
                    tls: Some(TlsOptions {
                        ca_pem: Some(ca_pem),
                        domain: None,
                    }),
                    reconnect: engram_client::BackoffPolicy {
                        max_attempts: 1,
                        ..Default::default()
                    },
                    ..ClientOptions::default()
                },
            )
            .await
        }
    };
    // Clients that connect and never say anything (no handshake) hold
    // nobody up: handshakes run off the accept loop.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(server.grpc).await.unwrap());
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // gRPC over TLS with the CA and a key: create, stream, recall.
    let c = tls_client(&ca).await.unwrap();
    c.create_space("t", DIM as u32).await.unwrap();
    observe_one_accepted(&c, "t", "secret").await;
    let found = c.recall("t", cue(vec![1.0, 0.0, 0.0], 1)).await.unwrap();
    assert_eq!(found.memories.len(), 1);
    // HTTPS REST with the key; plaintext to either port fails.
    // A connection that never handshakes is closed by the server after
    // tls::HANDSHAKE_TIMEOUT, freeing its place.
    {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(
            engram_server::tls::HANDSHAKE_TIMEOUT + WAIT,
            idle[0].read(&mut buf),
        )
        .await
        .expect("the server closes a connection that never handshakes");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let r = https_get(server.addr, &ca, "/v1/spaces/t", Some("key-rw"))
        .await
        .unwrap();
    drop(idle);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health/live", server.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let plain_grpc = StreamingClient::connect(format!("http://{}", server.grpc)).await;
    if let Ok(p) = plain_grpc {
        assert!(
            p.list_spaces().await.is_err(),
            "plaintext gRPC to a TLS port"
        );
    }

    // A new certificate from another CA, then SIGHUP: new connections get
    // it (the old CA no longer verifies), and nothing restarted.
    let certs2 = dir.path().join("certs2");
    engram_server::tls::generate(&certs2, &hosts).unwrap();
    std::fs::copy(certs2.join("server.pem"), certs.join("server.pem")).unwrap();
    std::fs::copy(certs2.join("server.key"), certs.join("server.key")).unwrap();
    sighup(&server);
    let ca2 = certs2.join("ca.pem");
    let until = Instant::now() + WAIT;
    loop {
        if https_get(server.addr, &ca2, "/health/live", None)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the new certificate was never served\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(https_get(server.addr, &ca, "/health/live", None)
        .await
        .is_err());
    let c2 = tls_client(&ca2).await.unwrap();
    assert_eq!(c2.describe_space("t").await.unwrap().count, 1);
    // A client with the wrong CA cannot make the connection.
    match tls_client(&ca).await {
        Err(_) => {}
        Ok(c) => assert!(c.list_spaces().await.is_err(), "the old CA still verifies"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_per_key_and_per_server_answer_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(
        dir.path(),
        &(key_entry("a", "key-a", &["read", "write"], &["*"])
            + &key_entry("b", "key-b", &["read", "write"], &["*"])),
    );
    let config = dir.path().join("engram.toml");
    std::fs::write(
        &config,
        format!(
            "[security]\napi_keys = {keys:?}\n\n[limits]\nmax_sessions_per_key = 2\nrequests_per_second_per_key = 5.0\nburst_per_key = 40\n\n[engine]\nmax_spaces = 2\nmax_dimension = 16\n"
        ),
    )
    .unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    server.wait_ready().await;
    let a = client(&server, Some("key-a")).await;
    let b = client(&server, Some("key-b")).await;

    // engine.max_dimension and engine.max_spaces.
    let e = a.create_space("wide", 17).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("engine.max_dimension"), "{e}");
    a.create_space("one", DIM as u32).await.unwrap();
    a.create_space("two", DIM as u32).await.unwrap();
    let e = a.create_space("three", DIM as u32).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");

    // limits.max_sessions_per_key: a third stream of key a is refused, key
    // b is not affected, and a closed stream gives its place back.
    let (s1, _a1) = a.observe_stream("one").await.unwrap();
    let (s2, _a2) = a.observe_stream("one").await.unwrap();
    let Err(e) = a.observe_stream("one").await else {
        panic!("a third stream of the key opened")
    };
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("limits.max_sessions_per_key"), "{e}");
    let (sb, _ab) = b.observe_stream("one").await.unwrap();
    s1.close(true).await.unwrap();
    let until = Instant::now() + WAIT;
    let s3 = loop {
        match a.observe_stream("one").await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < until,
                    "the place was never given back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    drop((s2, s3, sb));

    // limits.requests_per_second_per_key: past the burst, key a is told
    // when to retry (gRPC RetryInfo, REST 429 + Retry-After); key b is not.
    let mut limited = None;
    for _ in 0..200 {
        match a.describe_space("one").await {
            Ok(_) => {}
            Err(e) => {
                limited = Some(e);
                break;
            }
        }
    }
    let e = limited.expect("the rate limit never applied");
    assert!(
        matches!(
            e,
            ClientError::Overloaded {
                retry_after: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("limits.requests_per_second_per_key"),
        "{e}"
    );
    b.describe_space("one").await.unwrap();
    let http = reqwest::Client::new();
    let (status, v, _) = rest(
        &http,
        &server,
        reqwest::Method::GET,
        "/v1/spaces/one",
        Some("key-a"),
        None,
    )
    .await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["code"], "rate_limited", "{v}");
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_without_keys_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http-addr", "0.0.0.0:0", "--grpc-addr", "127.0.0.1:0"])
        .env_remove("ENGRAM_API_KEYS")
        .env_remove("ENGRAM_ALLOW_UNAUTHENTICATED")
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("0.0.0.0"), "{err}");
    assert!(err.contains("--api-keys"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "it refused before touching the data directory"
    );
    // The explicit flag lets it start (and it says so).
    let server = ServerProcess::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--http-addr", "0.0.0.0:0", "--grpc-addr", "127.0.0.1:0"])
            .arg("--allow-unauthenticated"),
    );
    let until = Instant::now() + WAIT;
    while !server.log_text().contains("WITHOUT authentication") {
        assert!(Instant::now() < until, "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A keys file that does not load also refuses to start.
    let bad = write_keys(dir.path(), "[[keys]]\nname = \"x\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data2"))
        .args([
            "--api-keys",
            &bad,
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("API keys file"), "{err}");
}
