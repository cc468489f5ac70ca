//! Monitoring against a real Prometheus: the repository's alert rules
//! (`deployments/prometheus/alerts/streaming.yml`) fire while the real
//! server is driven into overload, and every query of the Grafana dashboard
//! (`deployments/grafana/dashboards/streaming_dashboard.json`) returns data.
//!
//! Needs the `prometheus` binary on PATH (`apt-get install prometheus`;
//! `scripts/promtool-test.sh` installs the same package). Everything
//! listens on and talks to 127.0.0.1 only.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_client::{Answer, ClientOptions, Priority, StreamingClient};
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

const DIM: usize = 32;
const QUEUE_CAPACITY: u64 = 2_000;
const WORKERS: usize = 2;
/// Per observation, per worker: two workers drain about 100/s, far below
/// what one stream writes, so the queue fills and stays full.
const INDEX_DELAY_MS: u64 = 20;
/// Stands in for Grafana's `$__rate_interval` (and `$__interval`): 30
/// scrapes at the 1 s interval of this test.
const RATE_INTERVAL: &str = "30s";
const PROMETHEUS_READY: Duration = Duration::from_secs(30);
const ALERT_DEADLINE: Duration = Duration::from_secs(60);
const PANEL_DEADLINE: Duration = Duration::from_secs(60);
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// The `prometheus` binary on PATH; fails (never skips) without it.
fn prometheus_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`prometheus` is not on PATH: this test runs a real Prometheus against the \
                 server. Install it with `apt-get install prometheus` (Debian; \
                 scripts/promtool-test.sh installs the same package when promtool is missing)"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// A Prometheus subprocess scraping one engram server every second and
/// evaluating the repository's rule file every second. Killed on drop,
/// also when the test panics.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo_root().join("deployments/prometheus/alerts/streaming.yml");
        assert!(rules.is_file(), "{} is missing", rules.display());
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = |s: &str| serde_json::to_string(s).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: engram\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [{target}]\n",
            rules = quoted(rules.to_str().unwrap()),
            target = quoted(&target.to_string()),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("prometheus.log");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let until = Instant::now() + PROMETHEUS_READY;
        // Poll with a deadline (asserted below), one probe per tick.
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        loop {
            poll.tick().await;
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}); log:\n{}", self.log_tail());
            }
            if let Ok(r) = http.get(format!("{}/-/ready", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "prometheus not ready within {PROMETHEUS_READY:?}; log:\n{}",
                self.log_tail()
            );
        }
    }

    /// GET an API path; returns `data` of a `success` answer.
    async fn api(&self, http: &reqwest::Client, path: &str, query: &[(&str, &str)]) -> Value {
        let resp = http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log_tail()));
        let body: Value = resp.json().await.expect("a JSON answer");
        assert_eq!(body["status"], "success", "GET {path} {query:?}: {body}");
        body["data"].clone()
    }

    /// The instant query's result, or why it has no data: empty, or only
    /// NaN values (a ratio or quantile without traffic in the window).
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Result<Value, String> {
        let data = self.api(http, "/api/v1/query", &[("query", expr)]).await;
        let values: Vec<&Value> = match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| &s["value"][1])
                .collect(),
            Some("scalar") => vec![&data["result"][1]],
            other => return Err(format!("unexpected result type {other:?}: {data}")),
        };
        let has_number = values.iter().any(|v| {
            v.as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|x| !x.is_nan())
        });
        if has_number {
            Ok(data["result"].clone())
        } else if values.is_empty() {
            Err("empty result".into())
        } else {
            Err(format!("only NaN: {}", data["result"]))
        }
    }

    /// Alert name -> state ("pending" / "firing"), of the active alerts.
    async fn alerts(&self, http: &reqwest::Client) -> Vec<(String, String)> {
        let data = self.api(http, "/api/v1/alerts", &[]).await;
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_owned(),
                    a["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One query of one dashboard panel, with Grafana's variables replaced.
struct PanelQuery {
    panel: String,
    expr: String,
}

/// Every target of every panel (rows included) of the dashboard.
fn dashboard_queries() -> Vec<PanelQuery> {
    let path = repo_root().join("deployments/grafana/dashboards/streaming_dashboard.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    let mut out = Vec::new();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_owned();
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let raw = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr: {target}"));
            let mut expr = raw.to_owned();
            for (var, value) in [
                ("${space_id}", ".*"),
                ("$space_id", ".*"),
                ("${__rate_interval}", RATE_INTERVAL),
                ("$__rate_interval", RATE_INTERVAL),
                ("${__interval}", RATE_INTERVAL),
                ("$__interval", RATE_INTERVAL),
            ] {
                expr = expr.replace(var, value);
            }
            assert!(
                !expr.contains('$'),
                "panel {title:?} uses a variable this test does not know: {raw}"
            );
            out.push(PanelQuery {
                panel: title.clone(),
                expr,
            });
        }
    }
    out
}

/// Polls `probe` until it returns `Ok`, failing with its last `Err` after `deadline`.
async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let until = Instant::now() + deadline;
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    loop {
        poll.tick().await;
        match probe().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= until => {
                panic!("timed out after {deadline:?} waiting for {what}: {last}")
            }
            Err(_) => {}
        }
    }
}

async fn faults(http: &reqwest::Client, server: &ServerProcess, body: Value) -> Value {
    let (status, answer) = call(
        http,
        Method::POST,
        &server.url("/v1/admin/faults"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "POST /v1/admin/faults: {answer}");
    answer
}

#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    grpc_accepted: AtomicU64,
    grpc_rejected: AtomicU64,
    rest_accepted: AtomicU64,
    rest_rejected: AtomicU64,
    recalls: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_prometheus_alerts_fire_and_every_panel_has_data() {
    let test_started = Instant::now();
    let binary = prometheus_binary();
    let queries = dashboard_queries();
    let dir = tempfile::tempdir().unwrap();
    let (capacity, workers) = (QUEUE_CAPACITY.to_string(), WORKERS.to_string());
    let server = tokio::task::block_in_place(|| {
        ServerProcess::start(
            dir.path(),
            &[
                "--fault-injection",
                "--queue-capacity",
                &capacity,
                "--workers",
                &workers,
            ],
        )
    });
    server.wait_ready().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut prometheus = Prometheus::start(&binary, server.addr);
    prometheus.wait_ready(&http).await;
    wait_for("prometheus to scrape engram", PROMETHEUS_READY, || async {
        let up = prometheus.query(&http, "up{job=\"engram\"} == 1").await;
        up.map(drop)
            .map_err(|e| format!("up: {e}; log:\n{}", prometheus.log_tail()))
    })
    .await;

    // Overload: indexing slowed to ~100/s; one gRPC stream writes HIGH
    // priority (admitted up to 100% of the queue) without flow control, so
    // the depth stays above 90%; REST writes NORMAL priority (rejected from
    // 90%, 429) into a second space; recalls run throughout.
    for space in ["live", "rest"] {
        let (status, body) = call(
            &http,
            Method::PUT,
            &server.url(&format!("/v1/spaces/{space}")),
            Some(json!({"dimension": DIM})),
        )
        .await;
        assert!(
            status == 200 || status == 201,
            "PUT space {space}: {status} {body}"
        );
    }
    faults(&http, &server, json!({"index_delay_ms": INDEX_DELAY_MS})).await;
    let pool = Arc::new(random_vectors(512, DIM, 3));
    let traffic = Arc::new(Traffic::default());
    let client = StreamingClient::connect_with(
        format!("http://{}", server.grpc),
        ClientOptions {
            enable_backpressure: false,
            ..ClientOptions::default()
        },
    )
    .await
    .expect("connecting the engram client");
    let (sender, mut acks) = client.observe_stream("live").await.expect("observe_stream");
    let reader = tokio::spawn({
        let traffic = traffic.clone();
        async move {
            while let Some(answer) = acks.recv().await {
                match answer.expect("the session stays up") {
                    Answer::Accepted(_) => traffic.grpc_accepted.fetch_add(1, Ordering::Relaxed),
                    Answer::Rejected(_) => traffic.grpc_rejected.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });
    let writer = tokio::spawn({
        let (traffic, pool) = (traffic.clone(), pool.clone());
        async move {
            let mut i = 0;
            while !traffic.stop.load(Ordering::Relaxed) {
                let e = engram_client::episode(format!("live {i}"), pool[i % pool.len()].clone());
                sender
                    .send_with_priority(e, Priority::High)
                    .await
                    .expect("send");
                i += 1;
            }
            sender
        }
    });
    let rest_writer = tokio::spawn({
        let (traffic, pool, http) = (traffic.clone(), pool.clone(), http.clone());
        let url = server.url("/v1/spaces/rest/memories");
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut i = 0;
            while !traffic.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let e = episode(&format!("rest-{i}"), &pool[i % pool.len()]);
                let (status, body) = call(&http, Method::POST, &url, Some(e)).await;
                match status {
                    201 => traffic.rest_accepted.fetch_add(1, Ordering::Relaxed),
                    429 => traffic.rest_rejected.fetch_add(1, Ordering::Relaxed),
                    _ => panic!("POST {url}: {status} {body}"),
                };
                i += 1;
            }
        }
    });
    let recaller = tokio::spawn({
        let (traffic, pool, http) = (traffic.clone(), pool.clone(), http.clone());
        let urls = ["live", "rest"].map(|s| server.url(&format!("/v1/spaces/{s}/recall")));
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut i = 0;
            while !traffic.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let url = &urls[i % urls.len()];
                let cue = json!({"embedding": pool[i % pool.len()], "max_results": 10});
                let (status, body) = call(&http, Method::POST, url, Some(cue)).await;
                assert_eq!(status, 200, "POST {url}: {body}");
                traffic.recalls.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }
    });

    let full = QUEUE_CAPACITY * 95 / 100;
    wait_for(
        "the queue to fill past 95%",
        Duration::from_secs(30),
        || async {
            let f = faults(&http, &server, json!({})).await;
            match f["queue_depth"].as_u64() {
                Some(d) if d >= full => Ok(()),
                _ => Err(f.to_string()),
            }
        },
    )
    .await;
    let overloaded_at = Instant::now();
    faults(&http, &server, json!({"kill_any": 1})).await;
    wait_for(
        "the killed worker to restart",
        Duration::from_secs(30),
        || async {
            let f = faults(&http, &server, json!({})).await;
            match f["worker_restarts"].as_u64() {
                Some(n) if n >= 1 => Ok(()),
                _ => Err(f.to_string()),
            }
        },
    )
    .await;

    // The alerts, through Prometheus' API. Their `for:` (2 and 5 minutes)
    // is longer than this test, so pending counts; the worker crash has
    // no `for:` and fires at once.
    let want = [
        ("EngramStreamingQueueDepthHigh", &["pending", "firing"][..]),
        (
            "EngramStreamingQueueDepthCritical",
            &["pending", "firing"][..],
        ),
        (
            "EngramStreamingBackpressurePersistent",
            &["pending", "firing"][..],
        ),
        ("EngramStreamingWorkerCrashed", &["firing"][..]),
    ];
    let alerts = wait_for("the alerts", ALERT_DEADLINE, || async {
        let active = prometheus.alerts(&http).await;
        let missing: Vec<_> = want
            .iter()
            .filter(|(name, states)| {
                !active
                    .iter()
                    .any(|(n, s)| n == name && states.contains(&s.as_str()))
            })
            .map(|(name, _)| *name)
            .collect();
        if missing.is_empty() {
            Ok(active)
        } else {
            Err(format!("missing {missing:?}; active {active:?}"))
        }
    })
    .await;
    let alerts_after = overloaded_at.elapsed();

    // Every panel query has data (rate() needs two scrapes in its window,
    // hence the polling).
    let until = Instant::now() + PANEL_DEADLINE;
    let mut pending: Vec<&PanelQuery> = queries.iter().collect();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        poll.tick().await;
        let mut why = Vec::new();
        let mut still = Vec::new();
        for q in pending {
            if let Err(e) = prometheus.query(&http, &q.expr).await {
                why.push(format!("panel {:?}: {} -> {e}", q.panel, q.expr));
                still.push(q);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "after {PANEL_DEADLINE:?}, dashboard queries without data:\n{}",
            why.join("\n")
        );
    }
    let panels_after = overloaded_at.elapsed();
    let depth_in_prometheus = prometheus
        .query(
            &http,
            "max_over_time((sum(engram_streaming_queue_depth) / sum(engram_streaming_queue_capacity))[1m:1s])",
        )
        .await
        .expect("the depth ratio");

    // Load off, indexing at full speed: the queue drains and the critical
    // alert resolves.
    traffic.stop.store(true, Ordering::Relaxed);
    faults(&http, &server, json!({"index_delay_ms": 0})).await;
    let sender = writer.await.expect("the gRPC writer");
    let closed = tokio::time::timeout(DRAIN_DEADLINE, sender.close(true))
        .await
        .expect("the stream closes once the queue drains")
        .expect("close");
    reader.await.expect("the ack reader");
    rest_writer.await.expect("the REST writer");
    recaller.await.expect("the recall loop");
    wait_for("the queue to drain", DRAIN_DEADLINE, || async {
        let f = faults(&http, &server, json!({})).await;
        if f["queue_depth"] == 0 {
            Ok(())
        } else {
            Err(f.to_string())
        }
    })
    .await;
    wait_for("the critical alert to resolve", ALERT_DEADLINE, || async {
        let active = prometheus.alerts(&http).await;
        if active
            .iter()
            .any(|(n, _)| n == "EngramStreamingQueueDepthCritical")
        {
            Err(format!("active {active:?}"))
        } else {
            Ok(())
        }
    })
    .await;

    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "alerts {alerts:?} after {alerts_after:?}; {} panel queries with data after \
         {panels_after:?}; depth ratio peak {depth_in_prometheus}; gRPC accepted {} rejected {}; \
         REST accepted {} rejected {}; recalls {}; stream closed {closed:?}; test took {:?}",
        queries.len(),
        n(&traffic.grpc_accepted),
        n(&traffic.grpc_rejected),
        n(&traffic.rest_accepted),
        n(&traffic.rest_rejected),
        n(&traffic.recalls),
        test_started.elapsed(),
    );
    assert!(
        n(&traffic.rest_rejected) > 0,
        "NORMAL priority was never rejected at >90% depth"
    );
    drop(prometheus);
}
