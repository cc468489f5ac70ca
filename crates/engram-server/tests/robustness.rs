//! Engine robustness seen from outside, through the real binary: a hung
//! indexing worker in readiness and the log, a poison observation
//! quarantined and still recalled, the space limit's error.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn config_file(dir: &std::path::Path, toml: &str) -> String {
    let path = dir.join("engram.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        if check().await {
            return;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_shows_in_readiness_and_the_log_and_clears() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "[engine]\nworkers = 1\nworker_stuck_after_secs = 1\nfault_injection = true\n",
    );
    let server = ServerProcess::start(dir.path(), &["--config", &config]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let (status, _) = call(
        &client,
        reqwest::Method::POST,
        &server.url("/v1/admin/faults"),
        Some(json!({"index_delay_ms": 3000})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &client,
        reqwest::Method::POST,
        &server.url("/v1/spaces/hung/memories"),
        Some(episode("slow", &[1.0, 0.0])),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // The only worker is stuck: nothing is being indexed, so not ready.
    let seen = server
        .get_until(
            &client,
            "/health/ready",
            Duration::from_secs(10),
            "readiness to report the stuck worker",
            |status, body| status == 503 && body["status"] == "stalled",
        )
        .await;

    assert_eq!(seen["stuck_workers"][0]["worker"], 0, "{seen}");
    wait_until(
        "the stuck worker in the log",
        Duration::from_secs(10),
        || {
            let text = server.log_text();
            async move { text.contains("indexing worker stuck") }
        },
    )
    .await;
    let metrics = server.metrics(&client).await;
    assert!(
        metrics.contains("engram_streaming_worker_stuck{worker_id=\"0\"} 1"),
        "{metrics}"
    );
    // The slow observation finishes: ready again, and the log says so.
    server.wait_ready().await;
    wait_until("the recovery in the log", Duration::from_secs(10), || {
        let text = server.log_text();
        async move { text.contains("indexing worker moving again") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_observation_is_quarantined_recalled_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--fault-injection", "--workers", "1"]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let (client, url) = (client.clone(), server.url(path));
        async move { call(&client, reqwest::Method::POST, &url, Some(body)).await }
    };
    let (status, _) = post("/v1/admin/indexing/pause", json!({})).await;
    assert_eq!(status, 200);
    let vecs = random_vectors(50, 8, 50);
    for (i, v) in vecs.iter().enumerate() {
        let (status, body) = post("/v1/spaces/poison/memories", episode(&format!("p{i}"), v)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = post(
        "/v1/admin/faults",
        json!({"poison": {"space": "poison", "memory_id": "p5"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Bad fault input is a clear error and harms nothing.
    let (status, body) = post(
        "/v1/admin/faults",
        json!({"poison": {"space": "poison", "memory_id": "nope"}}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("memory_not_found"))
    );
    let (status, _) = post("/v1/admin/indexing/resume", json!({})).await;
    assert_eq!(status, 200);
    let info = server
        .get_until(
            &client,
            "/v1/spaces/poison",
            Duration::from_secs(30),
            "the queue to move past the poison",
            |_, body| body["queue_depth"] == 0 && body["quarantined_count"] == 1,
        )
        .await;

    assert_eq!(
        (info["count"].as_u64(), info["indexed_count"].as_u64()),
        (Some(50), Some(49)),
        "{info}"
    );
    let (status, r) = post(
        "/v1/spaces/poison/recall",
        json!({"embedding": vecs[5], "max_results": 1}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["memories"][0]["episode"]["id"], "p5", "{r}");
    assert!(
        server.log_text().contains("quarantined"),
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_space_limit_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "[engine]\nmax_spaces = 2\n");
    let server = ServerProcess::start(dir.path(), &["--config", &config]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    for s in ["a", "b"] {
        let (status, _) = call(
            &client,
            reqwest::Method::POST,
            &server.url(&format!("/v1/spaces/{s}/memories")),
            Some(episode("x", &[1.0, 0.0])),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, body) = call(
        &client,
        reqwest::Method::PUT,
        &server.url("/v1/spaces/c"),
        Some(json!({"dimension": 2})),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "limit_reached", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("engine.max_spaces"),
        "{body}"
    );
    // The existing spaces go on.
    let (status, _) = call(
        &client,
        reqwest::Method::POST,
        &server.url("/v1/spaces/a/memories"),
        Some(episode("y", &[0.0, 1.0])),
    )
    .await;
    assert_eq!(status, 201);
}

/// Issue 10, defect 6: a dead commit thread left a server that answered
/// every write "shutting down" while `/health/ready` stayed 200. It now
/// fails stop: writes fail naming the cause, and the process exits non-zero
/// with the cause in its log, for a supervisor to restart; the restart
/// recovers everything acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_commit_thread_stops_the_server_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &["--fault-injection"]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    for i in 0..10 {
        let (status, _) = call(
            &client,
            reqwest::Method::POST,
            &server.url("/v1/spaces/fatal/memories"),
            Some(episode(&format!("e{i}"), &[1.0, i as f32])),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, _) = call(
        &client,
        reqwest::Method::POST,
        &server.url("/v1/admin/faults"),
        Some(json!({"kill_commit": true})),
    )
    .await;
    assert_eq!(status, 200);
    // This write meets the panic: no ack.
    let r = client
        .post(server.url("/v1/spaces/fatal/memories"))
        .json(&episode("doomed", &[0.5, 0.5]))
        .send()
        .await;
    assert!(r.map_or(true, |r| r.status() != 201));
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "exited with {status}");
    let log = server.log_text();
    assert!(log.contains("commit thread panicked"), "{log}");
    assert!(log.contains("fatal"), "{log}");
    drop(server);
    // A restart on the same data recovers what was acked.
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let (_, info) = call(
        &client,
        reqwest::Method::GET,
        &server.url("/v1/spaces/fatal"),
        None,
    )
    .await;
    assert!(info["count"].as_u64().unwrap() >= 10, "{info}");
}
