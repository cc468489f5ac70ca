//! The metrics on `GET /metrics` of the real server, read back in the
//! Prometheus text format: every core metric (the first table of
//! `docs/operations/streaming-monitoring.md`) with its type and exactly
//! its labels, values that follow what the test did to the server
//! (accepted per space and priority, rejections by reason, recalls,
//! indexing batches, a worker restart, queue depth while indexing is
//! paused), the backpressure marks as configured, and the cap on distinct
//! `space_id` label values.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use engram_client::{Answer, ClientOptions, Priority, RejectReason, RetryPolicy, StreamingClient};
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

const DIM: usize = 8;
/// The fixed label values of the monitoring contract (and of
/// `engram_core`'s enums).
const PRIORITIES: [&str; 3] = ["high", "normal", "low"];
const REASONS: [&str; 6] = [
    "overloaded",
    "invalid",
    "out_of_order",
    "closed",
    "unavailable",
    "unauthorized",
];
const WORKERS: usize = 2;
/// Small, so that 25 writes with indexing paused reach the 90% rejection
/// threshold (normal priority is rejected from 18 queued).
const QUEUE_CAPACITY: usize = 20;
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The Prometheus text format (version 0.0.4), as much as the server emits.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: Vec<Sample>,
}

/// Families by name. Every sample must follow the `# TYPE` line of its
/// family (histogram samples carry the `_bucket`, `_sum`, `_count` suffixes).
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            let family = families.entry(name.to_owned()).or_default();
            assert!(family.kind.is_empty(), "two # TYPE lines for {name}");
            family.kind = kind.to_owned();
            current = Some(name.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line);
        let family_name = current
            .as_deref()
            .unwrap_or_else(|| panic!("sample before any # TYPE line: {line}"));
        let family = families.get_mut(family_name).unwrap();
        let suffix = sample
            .name
            .strip_prefix(family_name)
            .unwrap_or_else(|| panic!("sample {line} is not of family {family_name}"));
        let allowed: &[&str] = if family.kind == "histogram" {
            &["_bucket", "_sum", "_count"]
        } else {
            &[""]
        };
        assert!(
            allowed.contains(&suffix),
            "sample {line} in {} family {family_name}",
            family.kind
        );
        family.samples.push(sample);
    }
    families
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect("a sample has a value");
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            let (start, c) = chars.next().expect("unterminated label set");
            if c == '}' {
                rest = &body[start + 1..];
                break;
            }
            if c == ',' || c == ' ' {
                continue;
            }
            let mut key = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "label {key} in {line}"
            );
            let mut value = String::new();
            loop {
                match chars.next().expect("unterminated label value").1 {
                    '"' => break,
                    '\\' => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            assert!(
                labels.insert(key.clone(), value).is_none(),
                "label {key} twice in {line}"
            );
        }
    }
    let value = rest.split_whitespace().next().expect("a sample value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("value {v} of {line}: {e}")),
    };
    Sample {
        name,
        labels,
        value,
    }
}

/// A scrape of `/metrics`.
struct Scrape {
    families: BTreeMap<String, Family>,
    text: String,
}

impl Scrape {
    async fn take(http: &reqwest::Client, server: &ServerProcess) -> Scrape {
        let resp = http
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), 200, "GET /metrics");
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            content_type.starts_with("text/plain"),
            "content type {content_type}"
        );
        let text = resp.text().await.unwrap();
        Scrape {
            families: parse_exposition(&text),
            text,
        }
    }

    /// The family, checked: present, of type `kind`, every sample with
    /// exactly `labels` (plus `le` on histogram buckets).
    fn family(&self, name: &str, kind: &str, labels: &[&str]) -> &Family {
        let family = self
            .families
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not exported:\n{}", self.text));
        assert_eq!(family.kind, kind, "# TYPE of {name}");
        assert!(!family.samples.is_empty(), "{name} has no samples");
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        for s in &family.samples {
            let mut want = want.clone();
            if s.name.ends_with("_bucket") {
                want.insert("le");
            }
            let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(got, want, "label names of {s:?}");
        }
        family
    }

    /// Sum of the samples named `name` whose labels include `matching`.
    fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.samples(name, matching).map(|s| s.value).sum()
    }

    fn samples<'a>(
        &'a self,
        name: &'a str,
        matching: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .filter(move |s| {
                s.name == name
                    && matching
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
    }

    /// Distinct values of `label` over the samples named `name`.
    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples(name, &[])
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Driving the server and keeping the expected counts.
// ---------------------------------------------------------------------------

/// What the server must have counted, from the answers the test got.
#[derive(Debug, Default)]
struct Expected {
    /// (space, priority) -> accepted
    accepted: BTreeMap<(String, &'static str), u64>,
    /// (space, reason) -> rejected
    rejected: BTreeMap<(String, &'static str), u64>,
    /// space -> recalls made
    recalls: BTreeMap<String, u64>,
}

impl Expected {
    fn accepted_in(&self, space: &str) -> u64 {
        self.accepted
            .iter()
            .filter(|((s, _), _)| s == space)
            .map(|(_, n)| n)
            .sum()
    }

    fn count_answer(&mut self, space: &str, priority: &'static str, answer: &Answer) {
        match answer {
            Answer::Accepted(ack) => {
                assert!(!ack.duplicate, "nothing is sent twice: {ack:?}");
                *self.accepted.entry((space.into(), priority)).or_default() += 1;
            }
            Answer::Rejected(r) => {
                let reason = match r.reason {
                    RejectReason::Overloaded => "overloaded",
                    RejectReason::Invalid => "invalid",
                    RejectReason::OutOfOrder => "out_of_order",
                    RejectReason::Closed => "closed",
                    RejectReason::Unavailable => "unavailable",
                    other => panic!("unexpected rejection {other:?}: {r:?}"),
                };
                *self.rejected.entry((space.into(), reason)).or_default() += 1;
            }
        }
    }

    /// One REST write: 201 accepted, 429 overloaded, nothing else.
    fn count_rest(&mut self, space: &str, status: u16, body: &Value) {
        match status {
            201 => *self.accepted.entry((space.into(), "normal")).or_default() += 1,
            429 => {
                *self
                    .rejected
                    .entry((space.into(), "overloaded"))
                    .or_default() += 1
            }
            _ => panic!("POST memories to {space}: {status} {body}"),
        }
    }
}

fn label_of(p: Priority) -> &'static str {
    match p {
        Priority::High => "high",
        Priority::Low => "low",
        _ => "normal",
    }
}

/// Polls `probe` until it returns `Ok`, failing with its last `Err` after `deadline`.
async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let until = Instant::now() + deadline;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        match probe().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= until => {
                panic!("timed out after {deadline:?} waiting for {what}: {last}")
            }
            Err(_) => {}
        }
    }
}

async fn start(dir: &std::path::Path, flags: &[&str]) -> ServerProcess {
    let server = tokio::task::block_in_place(|| ServerProcess::start(dir, flags));
    server.wait_ready().await;
    server
}

async fn admin(http: &reqwest::Client, server: &ServerProcess, path: &str, body: Value) -> Value {
    let (status, body) = call(http, Method::POST, &server.url(path), Some(body)).await;
    assert_eq!(status, 200, "POST {path}: {body}");
    body
}

async fn wait_drained(http: &reqwest::Client, server: &ServerProcess, spaces: &[&str]) {
    wait_for("the indexing queue to drain", DEADLINE, || async {
        for space in spaces {
            let (status, info) = call(
                http,
                Method::GET,
                &server.url(&format!("/v1/spaces/{space}")),
                None,
            )
            .await;
            if status != 200 || info["queue_depth"] != 0 {
                return Err(format!("{space}: {status} {info}"));
            }
        }
        Ok(())
    })
    .await;
}

/// Streams `items` into `space` over one observe session and counts the
/// answers; returns the open session (closed by the caller).
async fn stream(
    client: &StreamingClient,
    space: &str,
    items: &[(Vec<f32>, Priority)],
    expected: &mut Expected,
) -> engram_client::ObserveSender {
    let (sender, mut acks) = client.observe_stream(space).await.expect("observe_stream");
    for (i, (embedding, priority)) in items.iter().enumerate() {
        let e = engram_client::episode(format!("{space} {i}"), embedding.clone());
        sender.send_with_priority(e, *priority).await.expect("send");
    }
    for (_, priority) in items {
        let answer = acks
            .recv()
            .await
            .expect("an answer per send")
            .expect("the session stays up");
        expected.count_answer(space, label_of(*priority), &answer);
    }
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_core_metric_is_exported_with_its_type_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = QUEUE_CAPACITY.to_string();
    let workers = WORKERS.to_string();
    let server = start(
        dir.path(),
        &[
            "--fault-injection",
            "--queue-capacity",
            &capacity,
            "--workers",
            &workers,
        ],
    )
    .await;
    let http = reqwest::Client::new();
    // Every overload rejection reaches the caller, so the test's count of
    // them is the server's.
    let client = StreamingClient::connect_with(
        format!("http://{}", server.grpc),
        ClientOptions {
            overload_retry: RetryPolicy {
                max_retries: 0,
                ..RetryPolicy::default()
            },
            ..ClientOptions::default()
        },
    )
    .await
    .expect("connecting the engram client");
    for space in ["alpha", "beta"] {
        client
            .create_space(space, DIM as u32)
            .await
            .expect("create_space");
    }
    let mut expected = Expected::default();

    // 1. Streams over gRPC into two spaces, all three priorities, and one
    //    observation of the wrong dimension (rejected as invalid).
    let vectors = random_vectors(40, DIM, 7);
    let mut alpha: Vec<_> = vectors[..18]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                v.clone(),
                [Priority::Normal, Priority::High, Priority::Low][i % 3],
            )
        })
        .collect();
    alpha.insert(5, (vec![0.5; DIM + 1], Priority::Normal));
    let beta: Vec<_> = vectors[18..]
        .iter()
        .map(|v| (v.clone(), Priority::Normal))
        .collect();
    let alpha_session = stream(&client, "alpha", &alpha, &mut expected).await;
    let beta_session = stream(&client, "beta", &beta, &mut expected).await;
    assert_eq!(
        expected.rejected.get(&("alpha".into(), "invalid")),
        Some(&1),
        "the wrong-dimension observation: {expected:?}"
    );
    let open = Scrape::take(&http, &server).await;
    let sessions = open.sum("engram_streaming_active_sessions_total", &[]);
    assert!(sessions >= 2.0, "two observe sessions are open: {sessions}");
    alpha_session.close(true).await.expect("close alpha");
    beta_session.close(true).await.expect("close beta");
    wait_drained(&http, &server, &["alpha", "beta"]).await;

    // 2. Overload: indexing paused, REST writes until normal priority is
    //    rejected (429); the queue depth gauge shows what waits.
    admin(&http, &server, "/v1/admin/indexing/pause", json!({})).await;
    let mut queued = 0;
    for (i, v) in random_vectors(QUEUE_CAPACITY + 5, DIM, 8)
        .iter()
        .enumerate()
    {
        let (status, body) = call(
            &http,
            Method::POST,
            &server.url("/v1/spaces/beta/memories"),
            Some(episode(&format!("beta-rest-{i}"), v)),
        )
        .await;
        expected.count_rest("beta", status, &body);
        queued += u64::from(status == 201);
    }
    assert!(
        expected
            .rejected
            .get(&("beta".into(), "overloaded"))
            .copied()
            .unwrap_or(0)
            >= 1,
        "normal priority is rejected from 90% of the queue: {expected:?}"
    );
    let paused = wait_for("a backpressure activation for beta", DEADLINE, || async {
        let s = Scrape::take(&http, &server).await;
        let n = s.sum(
            "engram_streaming_backpressure_activations_total",
            &[("space_id", "beta")],
        );
        if n >= 1.0 {
            Ok(s)
        } else {
            Err(format!("activations {n}"))
        }
    })
    .await;
    paused.family(
        "engram_streaming_queue_depth",
        "gauge",
        &["space_id", "priority"],
    );
    let priorities = paused.label_values("engram_streaming_queue_depth", "priority");
    assert!(
        priorities.iter().all(|p| PRIORITIES.contains(&p.as_str())),
        "queue_depth priorities {priorities:?}"
    );
    assert_eq!(
        paused.sum(
            "engram_streaming_queue_depth",
            &[("space_id", "beta"), ("priority", "normal")]
        ),
        queued as f64,
        "queue depth while indexing is paused"
    );
    assert_eq!(
        paused.sum("engram_streaming_queue_depth", &[]),
        queued as f64
    );
    assert_eq!(
        paused.sum("engram_streaming_backpressure_active", &[]),
        1.0,
        "backpressure is active at 90%"
    );
    admin(&http, &server, "/v1/admin/indexing/resume", json!({})).await;
    wait_drained(&http, &server, &["beta"]).await;

    // 3. Recalls over REST (alpha) and gRPC (beta).
    for v in &vectors[..5] {
        let (status, body) = call(
            &http,
            Method::POST,
            &server.url("/v1/spaces/alpha/recall"),
            Some(json!({"embedding": v, "max_results": 10})),
        )
        .await;
        assert_eq!(status, 200, "recall: {body}");
        *expected.recalls.entry("alpha".into()).or_default() += 1;
    }
    for v in &vectors[..3] {
        client
            .recall("beta", engram_client::cue(v.clone(), 10))
            .await
            .expect("recall over gRPC");
        *expected.recalls.entry("beta".into()).or_default() += 1;
    }

    // 4. A worker killed at its next batch, restarted by its supervisor.
    admin(&http, &server, "/v1/admin/faults", json!({"kill_any": 1})).await;
    for (i, v) in random_vectors(5, DIM, 9).iter().enumerate() {
        let (status, body) = call(
            &http,
            Method::POST,
            &server.url("/v1/spaces/alpha/memories"),
            Some(episode(&format!("alpha-rest-{i}"), v)),
        )
        .await;
        expected.count_rest("alpha", status, &body);
    }
    let restarts = wait_for("the killed worker to restart", DEADLINE, || async {
        let f = admin(&http, &server, "/v1/admin/faults", json!({})).await;
        match f["worker_restarts"].as_u64() {
            Some(n) if n >= 1 => Ok(n),
            _ => Err(f.to_string()),
        }
    })
    .await;
    wait_drained(&http, &server, &["alpha", "beta"]).await;
    wait_for("the sessions to be released", DEADLINE, || async {
        let s = Scrape::take(&http, &server).await;
        let n = s.sum("engram_streaming_active_sessions_total", &[]);
        if n == 0.0 {
            Ok(())
        } else {
            Err(format!("{n} active"))
        }
    })
    .await;

    // 5. The final scrape: types, label names, label values, values.
    let m = Scrape::take(&http, &server).await;
    eprintln!("expected: {expected:?}; worker restarts {restarts}");
    let spaces: BTreeSet<String> = ["alpha", "beta"].map(String::from).into();
    let workers: BTreeSet<String> = (0..WORKERS).map(|w| w.to_string()).collect();
    let in_set = |name: &str, label: &str, allowed: &[&str]| {
        let got = m.label_values(name, label);
        assert!(
            got.iter().all(|v| allowed.contains(&v.as_str())),
            "{name}: {label} values {got:?}, allowed {allowed:?}"
        );
        got
    };

    m.family(
        "engram_streaming_observations_total",
        "counter",
        &["space_id", "priority"],
    );
    assert_eq!(
        m.label_values("engram_streaming_observations_total", "space_id"),
        spaces
    );
    in_set(
        "engram_streaming_observations_total",
        "priority",
        &PRIORITIES,
    );
    for space in ["alpha", "beta"] {
        for priority in PRIORITIES {
            let want = expected
                .accepted
                .get(&(space.into(), priority))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                m.sum(
                    "engram_streaming_observations_total",
                    &[("space_id", space), ("priority", priority)]
                ),
                want as f64,
                "observations_total{{space_id={space},priority={priority}}}"
            );
        }
    }
    assert!(
        PRIORITIES
            .iter()
            .all(|p| expected.accepted.contains_key(&("alpha".into(), *p))),
        "alpha got accepted observations of every priority: {expected:?}"
    );

    m.family(
        "engram_streaming_observations_rejected_total",
        "counter",
        &["space_id", "reason"],
    );
    in_set(
        "engram_streaming_observations_rejected_total",
        "reason",
        &REASONS,
    );
    assert_eq!(
        m.label_values("engram_streaming_observations_rejected_total", "space_id"),
        spaces
    );
    for space in ["alpha", "beta"] {
        for reason in REASONS {
            let want = expected
                .rejected
                .get(&(space.into(), reason))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                m.sum(
                    "engram_streaming_observations_rejected_total",
                    &[("space_id", space), ("reason", reason)]
                ),
                want as f64,
                "observations_rejected_total{{space_id={space},reason={reason}}}"
            );
        }
    }

    m.family(
        "engram_streaming_backpressure_activations_total",
        "counter",
        &["space_id"],
    );
    in_set(
        "engram_streaming_backpressure_activations_total",
        "space_id",
        &["alpha", "beta"],
    );
    assert!(
        m.sum(
            "engram_streaming_backpressure_activations_total",
            &[("space_id", "beta")]
        ) >= 1.0
    );

    let utilization = m.family(
        "engram_streaming_worker_utilization",
        "gauge",
        &["worker_id"],
    );
    assert_eq!(
        m.label_values("engram_streaming_worker_utilization", "worker_id"),
        workers
    );
    for s in &utilization.samples {
        assert!((0.0..=1.0).contains(&s.value), "utilization {s:?}");
    }

    let sessions = m.family("engram_streaming_active_sessions_total", "gauge", &[]);
    assert_eq!(sessions.samples.len(), 1);

    m.family(
        "engram_streaming_observation_latency_seconds",
        "histogram",
        &["space_id"],
    );
    m.family(
        "engram_streaming_recall_latency_seconds",
        "histogram",
        &["space_id"],
    );
    for space in ["alpha", "beta"] {
        let accepted = expected.accepted_in(space);
        assert_eq!(
            m.sum(
                "engram_streaming_observation_latency_seconds_count",
                &[("space_id", space)]
            ),
            accepted as f64,
            "one observation latency per accepted observation in {space}"
        );
        let recalls = m.sum(
            "engram_streaming_recall_latency_seconds_count",
            &[("space_id", space)],
        );
        assert!(
            recalls >= expected.recalls[space] as f64,
            "recall latency count {recalls} in {space}, {} recalls made",
            expected.recalls[space]
        );
        for histogram in [
            "engram_streaming_observation_latency_seconds",
            "engram_streaming_recall_latency_seconds",
        ] {
            let inf = m.sum(
                &format!("{histogram}_bucket"),
                &[("space_id", space), ("le", "+Inf")],
            );
            let count = m.sum(&format!("{histogram}_count"), &[("space_id", space)]);
            assert_eq!(inf, count, "{histogram}: +Inf bucket equals the count");
        }
    }

    m.family("engram_streaming_batch_size", "histogram", &["worker_id"]);
    assert_eq!(
        m.label_values("engram_streaming_batch_size_count", "worker_id"),
        workers
    );
    let batches = m.sum("engram_streaming_batch_size_count", &[]);
    let batched = m.sum("engram_streaming_batch_size_sum", &[]);
    let accepted_total: u64 = expected.accepted.values().sum();
    assert!(batches > 0.0, "no indexing batch was counted");
    assert!(
        batched >= accepted_total as f64,
        "batches hold {batched} observations; {accepted_total} were accepted and indexed"
    );

    m.family(
        "engram_streaming_worker_restarts_total",
        "counter",
        &["worker_id"],
    );
    in_set(
        "engram_streaming_worker_restarts_total",
        "worker_id",
        &["0", "1"],
    );
    assert_eq!(
        m.sum("engram_streaming_worker_restarts_total", &[]),
        restarts as f64,
        "worker restarts as the admin route counts them"
    );
    assert!(restarts >= 1);
    assert_eq!(
        m.sum("engram_streaming_queue_capacity", &[]),
        QUEUE_CAPACITY as f64
    );
    for (name, default) in [
        ("engram_streaming_queue_slow_down_ratio", 0.8),
        ("engram_streaming_queue_overloaded_ratio", 0.9),
    ] {
        m.family(name, "gauge", &[]);
        assert_eq!(m.sum(name, &[]), default, "{name} at its default");
    }

    // Last, so a failure here does not hide the checks above: the gauge
    // must read 0 for a drained queue, not vanish (an idle server would
    // otherwise export no `engram_streaming_queue_depth` at all, and the
    // dashboard's queue depth panel would have no data).
    m.family(
        "engram_streaming_queue_depth",
        "gauge",
        &["space_id", "priority"],
    );
    in_set("engram_streaming_queue_depth", "priority", &PRIORITIES);
    assert_eq!(
        m.label_values("engram_streaming_queue_depth", "space_id"),
        spaces
    );
    assert_eq!(
        m.sum("engram_streaming_queue_depth", &[]),
        0.0,
        "the queue drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_id_cardinality_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("engram.toml");
    std::fs::write(&config, "[engine]\nmetrics_max_spaces = 2\n").unwrap();
    let data = dir.path().join("data");
    let server = start(&data, &["--config", config.to_str().unwrap()]).await;
    let http = reqwest::Client::new();
    // One after the other, so the first two spaces get the two labels.
    let vectors = random_vectors(4, DIM, 11);
    for (i, space) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
        let (status, body) = call(
            &http,
            Method::POST,
            &server.url(&format!("/v1/spaces/{space}/memories")),
            Some(episode(&format!("m{i}"), &vectors[i])),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let m = wait_for("the four vectors to be indexed", DEADLINE, || async {
        let m = Scrape::take(&http, &server).await;
        let n = m.sum("engram_index_vectors", &[]);
        if n == 4.0 {
            Ok(m)
        } else {
            Err(format!("{n} indexed"))
        }
    })
    .await;
    let labels: BTreeSet<String> = ["s1", "s2", "_overflow"].map(String::from).into();
    for name in [
        "engram_streaming_observations_total",
        "engram_streaming_observations_rejected_total",
        "engram_streaming_observation_latency_seconds_count",
        "engram_index_vectors",
    ] {
        assert_eq!(m.label_values(name, "space_id"), labels, "{name}");
    }
    assert_eq!(
        m.sum(
            "engram_streaming_observations_total",
            &[("space_id", "_overflow"), ("priority", "normal")]
        ),
        2.0,
        "s3 and s4 share the overflow series"
    );
    assert_eq!(
        m.sum("engram_index_vectors", &[("space_id", "_overflow")]),
        2.0
    );
    for space in ["s1", "s2"] {
        assert_eq!(
            m.sum(
                "engram_streaming_observations_total",
                &[("space_id", space)]
            ),
            1.0
        );
    }
}

/// The alert rules and the dashboard compare queue pressure with the marks
/// the server exports, so the exported marks must be the configured ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_marks_follow_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("engram.toml");
    std::fs::write(
        &config,
        "[engine.queue]\nslow_down_at = 0.6\nslow_down_clear_at = 0.5\n\
         reject_at = 0.75\nreject_clear_at = 0.7\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = start(&data, &["--config", config.to_str().unwrap()]).await;
    let m = Scrape::take(&reqwest::Client::new(), &server).await;
    for (name, configured) in [
        ("engram_streaming_queue_slow_down_ratio", 0.6),
        ("engram_streaming_queue_overloaded_ratio", 0.75),
    ] {
        let family = m.family(name, "gauge", &[]);
        assert_eq!(family.samples.len(), 1, "{name}");
        assert_eq!(m.sum(name, &[]), configured, "{name}");
    }
}
