//! The REST API and health endpoints against the real `engram` binary.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn default_run_keeps_data_in_engram_data_and_becomes_ready() {
    let cwd = tempfile::tempdir().unwrap();
    // Exactly the README's `engram serve`, only on a free port.
    let mut server = ServerProcess::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
            .arg("serve")
            .current_dir(cwd.path())
            .env("ENGRAM_HTTP_ADDR", "127.0.0.1:0")
            .env("ENGRAM_GRPC_ADDR", "127.0.0.1:0"),
    );
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let (status, body) = call(&client, Method::GET, &server.url("/health/live"), None).await;
    assert_eq!((status, body), (200, json!({"status": "live"})));
    let (status, _) = call(
        &client,
        Method::POST,
        &server.url("/v1/spaces/first/memories"),
        Some(episode("a", &[1.0, 2.0])),
    )
    .await;
    assert_eq!(status, 201);
    assert!(
        cwd.path().join("engram-data/wal").is_dir(),
        "data must live in ./engram-data"
    );
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        cwd.path().join("engram-data/snapshots").is_dir(),
        "shutdown writes a snapshot"
    );
}

#[tokio::test]
async fn spaces_memories_and_recall_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let c = reqwest::Client::new();
    let u = |p: &str| server.url(p);

    let (s, b) = call(
        &c,
        Method::PUT,
        &u("/v1/spaces/notes"),
        Some(json!({"dimension": 3})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["dimension"], 3);
    let (s, _) = call(
        &c,
        Method::PUT,
        &u("/v1/spaces/notes"),
        Some(json!({"dimension": 3})),
    )
    .await;
    assert_eq!(s, 200, "re-creating with the same dimension is idempotent");
    let (s, b) = call(
        &c,
        Method::PUT,
        &u("/v1/spaces/notes"),
        Some(json!({"dimension": 4})),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (409, Some("space_exists")));
    let (s, b) = call(&c, Method::PUT, &u("/v1/spaces/plain"), None).await;
    assert_eq!(
        (s, b["dimension"].as_u64()),
        (201, Some(768)),
        "default dimension"
    );

    let (s, b) = call(
        &c,
        Method::POST,
        &u("/v1/spaces/notes/memories"),
        Some(
            json!({"id": "m1", "what": "hello", "embedding": [1.0, 0.0, 0.0],
                    "when": "2026-01-02T03:04:05Z", "encoding_confidence": 0.5,
                    "tags": ["greeting"], "metadata": {"lang": "en"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        (b["memory_id"].as_str(), b["server_sequence"].as_u64()),
        (Some("m1"), Some(1))
    );
    let (s, b) = call(
        &c,
        Method::POST,
        &u("/v1/spaces/notes/memories"),
        Some(json!({"what": "gen", "embedding": [0.0, 1.0, 0.0]})),
    )
    .await;
    assert_eq!((s, b["server_sequence"].as_u64()), (201, Some(2)));
    let generated = b["memory_id"].as_str().unwrap().to_owned();
    assert!(!generated.is_empty());
    let (s, b) = call(
        &c,
        Method::POST,
        &u("/v1/spaces/notes/memories"),
        Some(json!({"id": "m1", "embedding": [1.0, 0.0, 0.0]})),
    )
    .await;
    assert_eq!(
        (s, b["duplicate"].as_bool(), b["server_sequence"].as_u64()),
        (200, Some(true), Some(1))
    );

    let (s, b) = call(
        &c,
        Method::POST,
        &u("/v1/spaces/notes/recall?include_embeddings=true"),
        Some(json!({"embedding": [0.9, 0.1, 0.0], "max_results": 5})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["snapshot_sequence"], 2);
    let top = &b["memories"][0];
    assert_eq!(top["episode"]["id"], "m1");
    assert_eq!(top["episode"]["what"], "hello");
    assert_eq!(top["episode"]["when"], "2026-01-02T03:04:05.000000000Z");
    assert_eq!(top["episode"]["tags"], json!(["greeting"]));
    assert_eq!(top["episode"]["metadata"], json!({"lang": "en"}));
    assert_eq!(top["confidence"], 0.5);
    assert_eq!(top["server_sequence"], 1);
    assert_eq!(top["episode"]["embedding"].as_array().unwrap().len(), 3);
    assert!(top["similarity"].as_f64().unwrap() > 0.99);

    let (s, b) = call(
        &c,
        Method::POST,
        &u("/v1/spaces/notes/recall"),
        Some(json!({"embedding": [1.0, 0.0, 0.0], "when_from": "2026-06-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        b["memories"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["episode"]["id"] != "m1"),
        "time window excludes m1"
    );

    let (s, b) = call(&c, Method::GET, &u("/v1/spaces/notes"), None).await;
    assert_eq!((s, b["count"].as_u64()), (200, Some(2)));
    let (s, b) = call(&c, Method::GET, &u("/v1/spaces"), None).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = b["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["memory_space_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["notes", "plain"]);

    let (s, _) = call(
        &c,
        Method::DELETE,
        &u(&format!("/v1/spaces/notes/memories/{generated}")),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = call(
        &c,
        Method::DELETE,
        &u(&format!("/v1/spaces/notes/memories/{generated}")),
        None,
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (404, Some("memory_not_found")));
    let (_, b) = call(
        &c,
        Method::POST,
        &u("/v1/spaces/notes/recall"),
        Some(json!({"embedding": [0.0, 1.0, 0.0], "similarity_threshold": 0.5})),
    )
    .await;
    assert_eq!(
        b["memories"],
        json!([]),
        "forgotten memory must not be recalled"
    );

    let (s, _) = call(&c, Method::DELETE, &u("/v1/spaces/plain"), None).await;
    assert_eq!(s, 200);
    let (s, b) = call(&c, Method::GET, &u("/v1/spaces/plain"), None).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("space_not_found")));
}

/// Sends a raw body with a content type; returns status and JSON.
async fn raw(
    c: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let r = c
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_input_gets_precise_errors_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let c = reqwest::Client::new();
    let mem = server.url("/v1/spaces/s/memories");
    call(
        &c,
        Method::PUT,
        &server.url("/v1/spaces/s"),
        Some(json!({"dimension": 4})),
    )
    .await;
    let (s, _) = call(
        &c,
        Method::POST,
        &mem,
        Some(episode("keep", &[0.0, 0.0, 1.0, 0.0])),
    )
    .await;
    assert_eq!(s, 201);

    let big_text = "x".repeat(64 * 1024 + 1);
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "wrong dimension",
            json!({"embedding": [1.0, 2.0, 3.0]}),
            400,
            "dimension_mismatch",
            "expects 4",
        ),
        (
            "empty embedding",
            json!({"embedding": []}),
            400,
            "invalid_argument",
            "is empty",
        ),
        (
            "zero embedding",
            json!({"embedding": [0.0, 0.0, 0.0, 0.0]}),
            400,
            "invalid_argument",
            "zero norm",
        ),
        (
            "f32 overflow is infinity",
            json!({"embedding": [1e39, 0.0, 0.0, 0.0]}),
            400,
            "invalid_argument",
            "finite",
        ),
        (
            "oversized text",
            json!({"what": big_text, "embedding": [1.0, 0.0, 0.0, 0.0]}),
            400,
            "invalid_argument",
            "65536 bytes",
        ),
        (
            "confidence out of range",
            json!({"embedding": [1.0, 0.0, 0.0, 0.0], "encoding_confidence": 2.0}),
            400,
            "invalid_argument",
            "[0, 1]",
        ),
        (
            "missing embedding",
            json!({"what": "no vector"}),
            400,
            "invalid_argument",
            "embedding",
        ),
        (
            "unknown field",
            json!({"embeding": [1.0]}),
            400,
            "invalid_argument",
            "unknown field",
        ),
        (
            "wrong type",
            json!({"embedding": "1,2,3,4"}),
            400,
            "invalid_argument",
            "expected a sequence",
        ),
        (
            "bad timestamp",
            json!({"embedding": [1.0, 0.0, 0.0, 0.0], "when": "yesterday"}),
            400,
            "invalid_argument",
            "RFC 3339",
        ),
        (
            "long id",
            json!({"id": "i".repeat(129), "embedding": [1.0, 0.0, 0.0, 0.0]}),
            400,
            "invalid_argument",
            "128 bytes",
        ),
    ];
    for (name, body, status, code, needle) in cases {
        let (s, b) = call(&c, Method::POST, &mem, Some(body)).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{name}: {b}");
        let msg = b["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{name}: message {msg:?} should mention {needle:?}"
        );
    }

    let (s, b) = raw(
        &c,
        &mem,
        "application/json",
        r#"{"embedding": [NaN, 1, 0, 0]}"#,
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("malformed_json")),
        "NaN: {b}"
    );
    let (s, b) = raw(
        &c,
        &mem,
        "application/json",
        r#"{"embedding": [1e999, 1, 0, 0]}"#,
    )
    .await;
    assert_eq!(s, 400, "infinity literal: {b}");
    let (s, b) = raw(&c, &mem, "application/json", r#"{"embedding": [1, 0"#).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("malformed_json")),
        "{b}"
    );
    let (s, b) = raw(&c, &mem, "text/plain", r#"{"embedding": [1, 0, 0, 0]}"#).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{b}"
    );
    let huge = format!(
        r#"{{"embedding": [1, 0, 0, 0], "what": "{}"}}"#,
        "y".repeat(5 * 1024 * 1024)
    );
    // Its own client: the server answers 413 without reading the body and
    // closes that connection.
    let (s, b) = raw(&reqwest::Client::new(), &mem, "application/json", huge).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );

    let (s, b) = call(
        &c,
        Method::POST,
        &server.url("/v1/spaces/Bad!/memories"),
        Some(episode("x", &[1.0])),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("invalid_argument")),
        "{b}"
    );
    assert!(b["message"].as_str().unwrap().contains("^[a-z0-9]"));
    let (s, b) = call(
        &c,
        Method::POST,
        &server.url("/v1/spaces/nowhere/recall"),
        Some(json!({"embedding": [1.0]})),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (404, Some("space_not_found")),
        "{b}"
    );
    let (s, b) = call(&c, Method::GET, &server.url("/v1/spaces/nowhere"), None).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("space_not_found")));
    for (cue, needle) in [
        (
            json!({"embedding": [1.0, 0.0, 0.0, 0.0], "max_results": 0}),
            "max_results",
        ),
        (
            json!({"embedding": [1.0, 0.0, 0.0, 0.0], "max_results": 1001}),
            "max_results",
        ),
        (json!({"embedding": [1.0, 0.0]}), "expects 4"),
    ] {
        let (s, b) = call(
            &c,
            Method::POST,
            &server.url("/v1/spaces/s/recall"),
            Some(cue),
        )
        .await;
        assert_eq!(s, 400, "{b}");
        assert!(b["message"].as_str().unwrap().contains(needle), "{b}");
    }
    let (s, b) = call(&c, Method::GET, &server.url("/v1/nothing"), None).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));
    let (s, b) = call(&c, Method::PATCH, &server.url("/v1/spaces/s"), None).await;
    assert_eq!((s, b["code"].as_str()), (405, Some("method_not_allowed")));
    // Admin routes are off by default, the CPU-heavy integrity check
    // included; the answer names the setting that turns them on.
    for (route, body) in [
        ("/v1/admin/indexing/pause", None),
        ("/v1/admin/faults", Some(json!({}))),
        ("/v1/admin/spaces/s/integrity", None),
    ] {
        let (s, b) = call(&c, Method::POST, &server.url(route), body).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (403, Some("forbidden")),
            "{route}: {b}"
        );
        let message = b["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("--fault-injection") && message.contains("engine.fault_injection"),
            "{route}: {b}"
        );
    }

    // The server is healthy and the stored data untouched.
    let (s, _) = call(&c, Method::GET, &server.url("/health/ready"), None).await;
    assert_eq!(s, 200);
    let (_, b) = call(&c, Method::GET, &server.url("/v1/spaces/s"), None).await;
    assert_eq!(
        (b["count"].as_u64(), b["last_sequence"].as_u64()),
        (Some(1), Some(1)),
        "{b}"
    );
    let (_, b) = call(
        &c,
        Method::POST,
        &server.url("/v1/spaces/s/recall"),
        Some(json!({"embedding": [0.0, 0.0, 1.0, 0.0]})),
    )
    .await;
    assert_eq!(b["memories"][0]["episode"]["id"], "keep");
    let (s, _) = call(
        &c,
        Method::POST,
        &mem,
        Some(episode("after", &[0.0, 1.0, 0.0, 0.0])),
    )
    .await;
    assert_eq!(s, 201, "writes still work after the bad input");
}

#[tokio::test]
async fn read_after_ack_and_429_with_retry_after_while_indexing_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--fault-injection", "--queue-capacity", "30"]);
    server.wait_ready().await;
    let c = reqwest::Client::new();
    let (s, _) = call(
        &c,
        Method::POST,
        &server.url("/v1/admin/indexing/pause"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    // Admission rejects normal-priority writes from 90% of capacity: 27 of 30.
    let vecs = random_vectors(28, 16, 11);
    for (i, v) in vecs[..27].iter().enumerate() {
        let (s, b) = call(
            &c,
            Method::POST,
            &server.url("/v1/spaces/r/memories"),
            Some(episode(&format!("e{i}"), v)),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        let (_, r) = call(
            &c,
            Method::POST,
            &server.url("/v1/spaces/r/recall"),
            Some(json!({"embedding": v, "max_results": 1})),
        )
        .await;
        assert_eq!(
            r["memories"][0]["episode"]["id"],
            format!("e{i}"),
            "acked memory missing from the next recall"
        );
        assert_eq!(r["memories"][0]["indexed"], false);
    }
    let resp = c
        .post(server.url("/v1/spaces/r/memories"))
        .json(&episode("over", &vecs[27]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["code"], "overloaded");
    assert!(b["retry_after_ms"].as_u64().unwrap() >= 50);
    // Recalls are still served while overloaded.
    let (s, _) = call(
        &c,
        Method::POST,
        &server.url("/v1/spaces/r/recall"),
        Some(json!({"embedding": vecs[0]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &c,
        Method::POST,
        &server.url("/v1/admin/indexing/resume"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        let (_, b) = call(&c, Method::GET, &server.url("/v1/spaces/r"), None).await;
        if b["indexed_count"] == 27 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "indexing did not catch up: {b}"
        );
    }
    let (s, _) = call(
        &c,
        Method::POST,
        &server.url("/v1/spaces/r/memories"),
        Some(episode("over", &vecs[27])),
    )
    .await;
    assert_eq!(s, 201, "admission reopens once the queue drains");
}

/// The integrity check searches for every stored vector of a space: an
/// admin route, on only with `--fault-injection` (off, it answers 403, see
/// `bad_input_gets_precise_errors_and_harms_nothing`).
#[tokio::test]
async fn integrity_check_runs_with_fault_injection() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--fault-injection"]);
    server.wait_ready().await;
    let c = reqwest::Client::new();
    for (i, v) in random_vectors(20, 8, 5).iter().enumerate() {
        let (s, b) = call(
            &c,
            Method::POST,
            &server.url("/v1/spaces/checked/memories"),
            Some(episode(&format!("m{i}"), v)),
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        let (_, b) = call(&c, Method::GET, &server.url("/v1/spaces/checked"), None).await;
        if b["indexed_count"] == 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "indexing did not catch up: {b}"
        );
    }
    let integrity = |space: &str| server.url(&format!("/v1/admin/spaces/{space}/integrity"));
    let (s, b) = call(&c, Method::POST, &integrity("checked"), None).await;
    assert_eq!((s, &b["ok"]), (200, &json!(true)), "{b}");
    assert!(b["took_ms"].is_u64(), "{b}");
    let (s, b) = call(&c, Method::POST, &integrity("nowhere"), None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (404, Some("space_not_found")),
        "{b}"
    );
}
