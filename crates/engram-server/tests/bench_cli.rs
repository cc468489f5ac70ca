//! `engram bench` against a real `engram serve`: it runs, prints every
//! metric, and writes a JSON report whose numbers hold together; bad input
//! and an unreachable server fail clearly.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::{call, ServerProcess};

/// Every metric the table must name.
const ROWS: &[&str] = &[
    "accepted",
    "rejected",
    "accepted throughput",
    "indexed throughput",
    "ack latency p50",
    "ack latency p99",
    "ack latency p99.9",
    "visibility samples",
    "visibility p50",
    "visibility p99",
    "visibility p99.9",
    "indexing lag after stream",
    "index lag max (server)",
    "recall latency (stream) p50",
    "recall latency (stream) p99.9",
    "recall latency (queries) p50",
    "recall latency (queries) p99.9",
    "recall@10",
    "server RSS before",
    "server RSS after",
    "server RSS peak",
    "server CPU",
];

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engram"))
        .arg("bench")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("running engram bench")
}

fn ordered(report: &Value, key: &str) {
    let l = &report[key];
    let p = |name: &str| {
        l[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}.{name} missing in {l}"))
    };
    let (p50, p99, p999) = (p("p50"), p("p99"), p("p999"));
    assert!(
        0.0 <= p50 && p50 <= p99 && p99 <= p999,
        "{key} percentiles out of order: {l}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_streams_generated_data_and_reports_every_metric() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    server.wait_ready().await;
    let json = dir.path().join("report.json");
    let grpc = format!("http://{}", server.grpc);
    let out = bench(&[
        "--grpc",
        &grpc,
        "--http",
        &server.base,
        "--generate",
        "2000",
        "--dim",
        "32",
        "--clients",
        "2",
        "--queries",
        "50",
        "--recall-rate",
        "20",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status,
        server.log_text()
    );
    for row in ROWS {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "the table has no row {row:?}:\n{stdout}"
        );
    }

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["accepted"], 2000, "{report:#}");
    assert_eq!(report["params"]["observations"], 2000);
    assert_eq!(report["params"]["dim"], 32);
    assert_eq!(report["ground_truth"], "computed");
    let recall = report["recall_at_10"].as_f64().unwrap();
    assert!(recall >= 0.9, "recall@10 {recall}");
    for key in [
        "ack_latency_ms",
        "visibility_ms",
        "recall_during_stream_ms",
        "recall_queries_ms",
    ] {
        ordered(&report, key);
    }
    assert_eq!(report["ack_latency_ms"]["count"], 2000);
    assert_eq!(report["recall_queries_ms"]["count"], 50);
    assert!(report["visibility_ms"]["count"].as_u64().unwrap() > 0);
    assert_eq!(report["visibility_timeouts"], 0, "{report:#}");
    assert!(report["indexed_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["indexing_lag_seconds"].as_f64().unwrap() >= 0.0);
    assert!(report["server"]["rss_after_bytes"].as_f64().unwrap() > 0.0);
    assert!(report["server"]["cpu_seconds"].as_f64().unwrap() >= 0.0);

    // The space holds exactly what was streamed.
    let client = engram_client::StreamingClient::connect(grpc.clone())
        .await
        .unwrap();
    let info = client.describe_space("bench").await.unwrap();
    assert_eq!((info.dimension, info.count), (32, 2000));

    // A space that holds memories is not deleted without --replace...
    let again = [
        "--grpc",
        &grpc,
        "--http",
        &server.base,
        "--generate",
        "200",
        "--dim",
        "16",
        "--queries",
        "10",
    ];
    let out = bench(&again);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--replace"), "{err}");
    assert_eq!(client.describe_space("bench").await.unwrap().count, 2000);
    // ...and is with it.
    let out = bench(&[&again[..], &["--replace"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = client.describe_space("bench").await.unwrap();
    assert_eq!((info.dimension, info.count), (16, 200));
}

#[test]
fn an_unreachable_server_fails_naming_the_address() {
    // Port 1 on loopback: nothing listens there.
    let out = bench(&["--grpc", "http://127.0.0.1:1", "--generate", "10"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("engram serve"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no table without a server");
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    let out = bench(&["--generate", "10", "--clients", "many"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--clients") && err.contains("many"), "{err}");

    let out = bench(&["--dim", "8"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--generate") && err.contains("--data"),
        "{err}"
    );

    let out = bench(&["--generate", "10", "--clients", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--clients must be at least 1"), "{err}");
}

/// A server that stops answering mid-stream (here: every commit held for
/// 3 s by fault injection) makes the bench fail after --stall-secs with a
/// message saying so, instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_fails_the_run_after_the_stall_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &["--fault-injection"]);
    server.wait_ready().await;
    let http = reqwest::Client::new();
    let (s, b) = call(
        &http,
        reqwest::Method::POST,
        &server.url("/v1/admin/faults"),
        Some(serde_json::json!({"accept_delay_ms": 3000})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let grpc = format!("http://{}", server.grpc);
    let began = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        bench(&[
            "--grpc",
            &grpc,
            "--generate",
            "50",
            "--dim",
            "8",
            "--clients",
            "1",
            "--recall-rate",
            "0",
            "--stall-secs",
            "1",
        ])
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run succeeded:\n{err}");
    assert!(err.contains("stopped answering"), "{err}");
    assert!(
        began.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        began.elapsed()
    );
}
