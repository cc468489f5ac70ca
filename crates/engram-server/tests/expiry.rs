//! Issue 16: expiry against the real server. Memories observed with
//! `ttl_seconds`, `expires_at` or the space's `default_ttl_seconds`, over
//! gRPC streams, REST and the WebSocket, are returned (with their
//! `expires_at`) until they expire, then by no recall (gRPC unary and
//! stream, REST, WebSocket) and no listing (gRPC, REST) from that instant
//! on, before and after the background purge; the purge is counted in
//! `expired_count` and `engram_memories_expired_total`; bad expiries are
//! refused without harm; and after a restart the purged memories stay gone
//! while the rest keep their expiry and the space its default.
//!
//! The server's expiry clock is moved forward through the fault-injection
//! route (`advance_clock_seconds`) instead of waiting.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engram_client::proto::{Cue, Episode, ListMemoriesRequest, RecallRequest};
use engram_client::{Answer, RejectReason};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::ServerProcess;
use tokio_tungstenite::tungstenite::Message;

const DIM: usize = 8;
const SPACE: &str = "ex";
const WAIT: Duration = Duration::from_secs(30);

fn timestamp_in(secs: i64) -> prost_types::Timestamp {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: now.as_secs() as i64 + secs,
        nanos: 0,
    }
}

async fn advance_clock(http: &reqwest::Client, server: &ServerProcess, secs: f64) {
    let (status, v) = support::call(
        http,
        reqwest::Method::POST,
        &server.url("/v1/admin/faults"),
        Some(json!({ "advance_clock_seconds": secs })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

/// Ids every transport's recall returns for `q` (k = 500: all), each
/// transport's list checked equal to the gRPC one.
async fn recalled_everywhere(
    client: &engram_client::StreamingClient,
    http: &reqwest::Client,
    server: &ServerProcess,
    ws: &mut (impl SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error>
              + StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
              + Unpin),
    q: &[f32],
) -> BTreeMap<String, Option<i64>> {
    let cue = Cue {
        embedding: q.to_vec(),
        max_results: 500,
        similarity_threshold: -1.0,
        ..Cue::default()
    };
    let unary: BTreeMap<String, Option<i64>> = client
        .recall(SPACE, cue.clone())
        .await
        .unwrap()
        .memories
        .iter()
        .map(|m| {
            let e = m.episode.as_ref().unwrap();
            (e.id.clone(), e.expires_at.as_ref().map(|t| t.seconds))
        })
        .collect();

    let mut stream = client
        .recall_stream_with(RecallRequest {
            memory_space_id: SPACE.into(),
            cue: Some(cue),
            batch_size: 7,
            include_embeddings: false,
            after: None,
        })
        .await
        .unwrap();
    let mut streamed = BTreeSet::new();
    while let Some(batch) = stream.next().await {
        for m in batch.unwrap().memories {
            streamed.insert(m.episode.unwrap().id);
        }
    }
    assert_eq!(
        streamed,
        unary.keys().cloned().collect::<BTreeSet<_>>(),
        "gRPC stream"
    );

    let body = json!({"embedding": q, "max_results": 500, "similarity_threshold": -1.0});
    let (status, v) = support::call(
        http,
        reqwest::Method::POST,
        &server.url(&format!("/v1/spaces/{SPACE}/recall")),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let rest: BTreeMap<String, Option<i64>> = v["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let e = &m["episode"];
            let at = e["expires_at"].as_str().map(|t| {
                humantime::parse_rfc3339(t)
                    .unwrap()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64
            });
            (e["id"].as_str().unwrap().to_owned(), at)
        })
        .collect();
    assert_eq!(rest, unary, "REST recall (ids and expires_at)");

    ws.send(Message::Text(
        json!({"type": "recall", "request_id": "q", "cue": body}).to_string(),
    ))
    .await
    .unwrap();
    let mut over_ws = BTreeSet::new();
    loop {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] != "recall_result" {
            continue;
        }
        for m in v["memories"].as_array().unwrap() {
            over_ws.insert(m["episode"]["id"].as_str().unwrap().to_owned());
        }
        if v["more"] != true {
            break;
        }
    }
    assert_eq!(
        over_ws,
        unary.keys().cloned().collect::<BTreeSet<_>>(),
        "WebSocket recall"
    );
    unary
}

/// Every id a full listing returns, over gRPC and REST (checked equal).
async fn listed(
    client: &engram_client::StreamingClient,
    http: &reqwest::Client,
    server: &ServerProcess,
) -> BTreeMap<String, Option<i64>> {
    let mut grpc = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_memories(ListMemoriesRequest {
                memory_space_id: SPACE.into(),
                page_size: 50,
                page_token: token.clone(),
                ..ListMemoriesRequest::default()
            })
            .await
            .unwrap();
        for m in &page.memories {
            let e = m.episode.as_ref().unwrap();
            grpc.insert(e.id.clone(), e.expires_at.as_ref().map(|t| t.seconds));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let (status, v) = support::call(
        http,
        reqwest::Method::GET,
        &server.url(&format!("/v1/spaces/{SPACE}/memories?page_size=1000")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let rest: BTreeSet<String> = v["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["episode"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        rest,
        grpc.keys().cloned().collect::<BTreeSet<_>>(),
        "REST listing"
    );
    grpc
}

async fn describe(http: &reqwest::Client, server: &ServerProcess) -> Value {
    let (status, v) = support::call(
        http,
        reqwest::Method::GET,
        &server.url(&format!("/v1/spaces/{SPACE}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_memories_vanish_on_every_transport_and_stay_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &["--fault-injection"]);
    server.wait_ready().await;
    let client = support::grpc_client(&server).await;
    let http = reqwest::Client::new();

    // A space whose memories live an hour unless they say otherwise.
    let created = client
        .create_space_with_ttl(
            SPACE,
            DIM as u32,
            engram_client::proto::VectorStorage::Unspecified,
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert_eq!(created.space.unwrap().default_ttl_seconds, 3600.0);
    let err = client
        .create_space_with_ttl(
            SPACE,
            DIM as u32,
            engram_client::proto::VectorStorage::Unspecified,
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::AlreadyExists), "{err}");

    // 160 over a gRPC stream: a quarter live 60 s, a quarter until an
    // instant 120 s ahead, a quarter take the space's hour, a quarter two
    // hours. Two bad ones in between are refused alone.
    let vecs = support::random_vectors(170, DIM, 9);
    let ttl_of = |i: usize| -> &'static str {
        match i % 4 {
            0 => "60s",
            1 => "120s",
            2 => "default",
            _ => "7200s",
        }
    };
    let (sender, mut acks) = client.observe_stream(SPACE).await.unwrap();
    for (i, v) in vecs.iter().enumerate().take(160) {
        let mut e = Episode {
            id: format!("g{i}"),
            what: format!("memory {i}"),
            embedding: v.clone(),
            ..Episode::default()
        };
        match ttl_of(i) {
            "60s" => e.ttl_seconds = 60.0,
            "120s" => e.expires_at = Some(timestamp_in(120)),
            "7200s" => e.ttl_seconds = 7200.0,
            _ => {}
        }
        sender.send(e).await.unwrap();
        let Answer::Accepted(_) = acks.recv().await.unwrap().unwrap() else {
            panic!("g{i} was not accepted");
        };
        if i == 80 {
            for (bad, field) in [
                (
                    Episode {
                        id: "both".into(),
                        embedding: v.clone(),
                        ttl_seconds: 5.0,
                        expires_at: Some(timestamp_in(5)),
                        ..Episode::default()
                    },
                    "episode.ttl_seconds",
                ),
                (
                    Episode {
                        id: "past".into(),
                        embedding: v.clone(),
                        expires_at: Some(timestamp_in(-5)),
                        ..Episode::default()
                    },
                    "episode.expires_at",
                ),
            ] {
                sender.send(bad).await.unwrap();
                match acks.recv().await.unwrap().unwrap() {
                    Answer::Rejected(r) => {
                        assert_eq!(r.reason, RejectReason::Invalid);
                        assert!(r.message.contains(field), "{}", r.message);
                    }
                    Answer::Accepted(a) => panic!("a bad expiry was accepted: {a:?}"),
                }
            }
        }
    }
    sender.close(true).await.unwrap();

    // 5 over REST and 5 over the WebSocket, all living 60 s.
    for (i, v) in vecs.iter().enumerate().skip(160).take(5) {
        let mut e = support::episode(&format!("r{i}"), v);
        e["ttl_seconds"] = json!(60);
        let (status, body) = support::call(
            &http,
            reqwest::Method::POST,
            &server.url(&format!("/v1/spaces/{SPACE}/memories")),
            Some(e),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", server.addr))
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"type": "init", "memory_space_id": SPACE}).to_string(),
    ))
    .await
    .unwrap();
    let _init_ack = ws.next().await.unwrap().unwrap();
    for (n, (i, v)) in vecs.iter().enumerate().skip(165).enumerate() {
        let mut e = support::episode(&format!("w{i}"), v);
        e["ttl_seconds"] = json!(60);
        ws.send(Message::Text(
            json!({"type": "observation", "sequence_number": n + 1, "episode": e}).to_string(),
        ))
        .await
        .unwrap();
        loop {
            let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
                continue;
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "ack" {
                assert_eq!(v["status"], "accepted", "{v}");
                break;
            }
        }
    }

    let expected = |elapsed: u64| -> BTreeSet<String> {
        (0..170)
            .filter_map(|i| {
                let id = match i {
                    0..=159 => format!("g{i}"),
                    160..=164 => format!("r{i}"),
                    _ => format!("w{i}"),
                };
                let life = match (i, ttl_of(i)) {
                    (160.., _) | (_, "60s") => 60,
                    (_, "120s") => 120,
                    (_, "default") => 3600,
                    _ => 7200,
                };
                (elapsed < life).then_some(id)
            })
            .collect()
    };
    let q = vecs[0].clone();
    let all = recalled_everywhere(&client, &http, &server, &mut ws, &q).await;
    assert_eq!(all.keys().cloned().collect::<BTreeSet<_>>(), expected(0));
    assert!(
        all.values().all(Option::is_some),
        "every memory reports when it expires (its own or the default)"
    );
    assert_eq!(listed(&client, &http, &server).await.len(), 170);

    // The test clock refuses to go back, and a refused body moves nothing.
    for bad in [json!(-1.0), json!(1e12), json!("soon")] {
        let (status, v) = support::call(
            &http,
            reqwest::Method::POST,
            &server.url("/v1/admin/faults"),
            Some(json!({ "advance_clock_seconds": bad })),
        )
        .await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["code"], "invalid_argument", "{v}");
    }
    assert_eq!(
        recalled_everywhere(&client, &http, &server, &mut ws, &q)
            .await
            .len(),
        170
    );

    // +61 s: the 60 s ones are gone from every recall and listing at once,
    // before the purge has necessarily run...
    advance_clock(&http, &server, 61.0).await;
    let now = recalled_everywhere(&client, &http, &server, &mut ws, &q).await;
    assert_eq!(now.keys().cloned().collect::<BTreeSet<_>>(), expected(61));
    let list = listed(&client, &http, &server).await;
    assert_eq!(list.keys().cloned().collect::<BTreeSet<_>>(), expected(61));
    // ...and purged within seconds, counted.
    let gone_60 = (170 - expected(61).len()) as u64;
    let space_path = format!("/v1/spaces/{SPACE}");
    server
        .get_until(&http, &space_path, WAIT, "the purge to count", |_, v| {
            v["expired_count"] == gone_60
        })
        .await;
    let info = describe(&http, &server).await;
    assert_eq!(info["count"], expected(61).len());
    assert_eq!(info["default_ttl_seconds"], 3600.0);
    let metrics = server.metrics(&http).await;
    assert!(
        metrics.contains(&format!(
            "engram_memories_expired_total{{space_id=\"{SPACE}\"}} {gone_60}"
        )),
        "{metrics}"
    );

    // +121 s: the 120 s instants too.
    advance_clock(&http, &server, 60.0).await;
    let now = recalled_everywhere(&client, &http, &server, &mut ws, &q).await;
    assert_eq!(now.keys().cloned().collect::<BTreeSet<_>>(), expected(121));
    let left = expected(121).len();
    server
        .get_until(&http, &space_path, WAIT, "the second purge", |_, v| {
            v["count"] == left
        })
        .await;
    let before_restart = listed(&client, &http, &server).await;
    drop(ws);

    // A restart (the clock starts again at the real time, 121 s behind):
    // the purged memories stay gone, the rest keep their expiry exactly.
    assert!(server.terminate(WAIT).success());
    let server = ServerProcess::start(dir.path(), &["--fault-injection"]);
    server.wait_ready().await;
    let client = support::grpc_client(&server).await;
    let after = listed(&client, &http, &server).await;
    assert_eq!(after, before_restart);
    let info = describe(&http, &server).await;
    assert_eq!(info["default_ttl_seconds"], 3600.0);
    assert_eq!(info["count"], expected(121).len());
    // The id of a purged memory is free again.
    let again = client
        .remember(
            SPACE,
            Episode {
                id: "g0".into(),
                embedding: vecs[0].clone(),
                ..Episode::default()
            },
        )
        .await
        .unwrap();
    assert!(!again.duplicate);
}
