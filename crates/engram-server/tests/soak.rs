//! Soak test against the real binary (issue 11): for `ENGRAM_SOAK_SECS`
//! (default 120) many clients at once over gRPC `MemoryFlow`:
//!
//! - session churners: hundreds of sessions that write, then close, vanish
//!   (and half of those resume and resend), or go idle until the server
//!   closes them;
//! - recallers: streams that pause, start recalls up to the per-stream
//!   limit (one more is refused), then resume and read them all, or vanish
//!   with them pending;
//! - an overload burster: indexing paused, writes until the queue crosses
//!   90% and rejects, indexing resumed, rejected ones retried after their
//!   retry-after;
//! - a fault injector: panics inside HNSW inserts.
//!
//! At the end: every acknowledged observation is stored once (resending it
//! answers `duplicate` with its original server sequence), every space
//! passes the integrity check, nothing is quarantined, idle sessions were
//! closed on time, the kept sessions go back to zero after the resume
//! window, and the server's RSS stays under `RSS_BOUND`.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_proto::v1 as pb;
use engram_proto::v1::streaming_client::StreamingClient;
use pb::flow_request::Request as F;
use pb::flow_response::Response as R;
use pb::observe_request::Request as O;
use pb::observe_response::Response as OR;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const DIM: usize = 16;
const SPACES: usize = 4;
const CHURNERS: usize = 24;
const RECALLERS: usize = 3;
const IDLE_TIMEOUT_SECS: u64 = 2;
const RESUME_WINDOW_SECS: u64 = 4;
const RECALLS_PER_STREAM: usize = 4;
const QUEUE_CAPACITY: usize = 3000;
/// The server's resident memory at the end must stay under this. It holds
/// tens of thousands of 16-d memories; the bound catches leaks (sessions,
/// answers, recalls, buffers), not the data.
const RSS_BOUND_BYTES: u64 = 512 << 20;
/// Time to read one answer before the test calls the server stuck.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

fn soak_secs() -> u64 {
    std::env::var("ENGRAM_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
}

/// Every acknowledged observation: id -> (space, server sequence, vector).
type Ledger = Arc<Mutex<HashMap<String, (String, u64, Vec<f32>)>>>;

#[derive(Default)]
struct Stats {
    sessions: AtomicU64,
    closed: AtomicU64,
    vanished: AtomicU64,
    resumed: AtomicU64,
    idle_closed: AtomicU64,
    /// Longest time from a session's last message to its idle close, ms.
    idle_close_max_ms: AtomicU64,
    recalls_completed: AtomicU64,
    recalls_refused: AtomicU64,
    recall_streams_vanished: AtomicU64,
    overloaded: AtomicU64,
    bursts: AtomicU64,
    panics_injected: AtomicU64,
}

fn vector(rng: &mut StdRng) -> Vec<f32> {
    (0..DIM).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn space_name(i: usize) -> String {
    format!("soak-{i}")
}

/// One MemoryFlow stream.
struct Flow {
    tx: mpsc::Sender<pb::FlowRequest>,
    rx: tonic::Streaming<pb::FlowResponse>,
}

impl Flow {
    async fn open(channel: &Channel) -> Flow {
        let mut client = StreamingClient::new(channel.clone());
        let (tx, rx) = mpsc::channel(256);
        let rx = client
            .memory_flow(ReceiverStream::new(rx))
            .await
            .expect("MemoryFlow")
            .into_inner();
        Flow { tx, rx }
    }

    async fn send(&mut self, request_id: &str, r: F) {
        // The server may have ended the stream (idle close): then the
        // send fails, which the caller sees on its next read.
        let _ = self
            .tx
            .send(pb::FlowRequest {
                request_id: request_id.into(),
                request: Some(r),
            })
            .await;
    }

    async fn observe(&mut self, r: O) {
        self.send("", F::Observe(pb::ObserveRequest { request: Some(r) }))
            .await;
    }

    async fn init(&mut self, space: &str, resume: &str) {
        self.observe(O::Init(pb::StreamInit {
            memory_space_id: space.into(),
            resume_session_id: resume.into(),
            enable_backpressure: true,
        }))
        .await;
    }

    async fn obs(&mut self, seq: u64, id: &str, embedding: &[f32]) {
        self.observe(O::Observation(pb::Observation {
            sequence_number: seq,
            episode: Some(pb::Episode {
                id: id.into(),
                what: "soak".into(),
                embedding: embedding.to_vec(),
                ..Default::default()
            }),
            priority: 0,
        }))
        .await;
    }

    async fn flow(&mut self, action: pb::flow_control::Action) {
        self.observe(O::Flow(pb::FlowControl {
            action: action as i32,
            buffer_remaining: 0,
        }))
        .await;
    }

    /// The next message; None when the stream ended (Err: with a status).
    async fn next(&mut self) -> Option<Result<pb::FlowResponse, tonic::Status>> {
        tokio::time::timeout(ANSWER_DEADLINE, self.rx.message())
            .await
            .expect("no answer from the server within the deadline")
            .transpose()
    }

    /// The next observe-side message (statuses skipped).
    async fn next_observe(&mut self) -> Option<OR> {
        loop {
            match self.next().await? {
                Ok(pb::FlowResponse {
                    response: Some(R::Observe(pb::ObserveResponse { response: Some(r) })),
                    ..
                }) => {
                    if !matches!(r, OR::Status(_)) {
                        return Some(r);
                    }
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(status) => panic!("stream failed: {status}"),
            }
        }
    }

    async fn init_ack(&mut self) -> pb::StreamInitAck {
        match self.next_observe().await {
            Some(OR::InitAck(a)) => a,
            other => panic!("expected init_ack, got {other:?}"),
        }
    }
}

/// Writes `items` (id, vector) as sequence numbers from `first_seq`,
/// retrying overloaded ones under new numbers after their retry-after;
/// records the accepted ones. Returns the next free sequence number.
async fn write_all(
    flow: &mut Flow,
    space: &str,
    mut first_seq: u64,
    items: Vec<(String, Vec<f32>)>,
    ledger: &Ledger,
    stats: &Stats,
) -> u64 {
    let mut pending = items;
    while !pending.is_empty() {
        let mut by_seq = HashMap::new();
        for (id, v) in pending.drain(..) {
            flow.obs(first_seq, &id, &v).await;
            by_seq.insert(first_seq, (id, v));
            first_seq += 1;
        }
        let mut retry_after = 0;
        while !by_seq.is_empty() {
            let ack = match flow.next_observe().await {
                Some(OR::Ack(a)) => a,
                other => panic!("expected an ack, got {other:?}"),
            };
            let (id, v) = by_seq
                .remove(&ack.sequence_number)
                .expect("ack for a number sent");
            if ack.status == pb::observation_ack::Status::AckAccepted as i32 {
                assert_eq!(ack.memory_id, id);
                ledger
                    .lock()
                    .unwrap()
                    .insert(id, (space.to_owned(), ack.server_sequence, v));
            } else {
                assert_eq!(
                    ack.reason,
                    pb::observation_ack::Reason::RejectOverloaded as i32,
                    "unexpected rejection {ack:?}"
                );
                assert!(ack.retry_after_ms > 0, "{ack:?}");
                stats.overloaded.fetch_add(1, Ordering::Relaxed);
                retry_after = retry_after.max(ack.retry_after_ms);
                pending.push((id, v));
            }
        }
        if !pending.is_empty() {
            // Wait out the retry-after, keeping the session alive as a real
            // client does (a wait past the idle timeout would close it).
            let until = Instant::now() + Duration::from_millis(retry_after);
            while Instant::now() < until {
                flow.flow(pb::flow_control::Action::BufferStatus).await;
                let left = until.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(500))).await;
            }
        }
    }
    first_seq
}

/// One session's life: open, write, then close, vanish (maybe resume) or
/// idle until the server closes it.
async fn churn_once(
    channel: &Channel,
    name: &str,
    rng: &mut StdRng,
    ledger: &Ledger,
    stats: &Stats,
) {
    let space = space_name(rng.gen_range(0..SPACES));
    let mut flow = Flow::open(channel).await;
    flow.init(&space, "").await;
    let session = flow.init_ack().await.session_id;
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    let n = rng.gen_range(5..40);
    let items: Vec<_> = (0..n)
        .map(|i| (format!("{name}-{i}"), vector(rng)))
        .collect();
    let next = write_all(&mut flow, &space, 1, items, ledger, stats).await;
    match rng.gen_range(0..10) {
        // Close with drain.
        0..=3 => {
            flow.observe(O::Close(pb::StreamClose { drain: true }))
                .await;
            match flow.next_observe().await {
                Some(OR::Closed(c)) => assert_eq!(c.final_sequence, next - 1),
                other => panic!("expected closed, got {other:?}"),
            }
            stats.closed.fetch_add(1, Ordering::Relaxed);
        }
        // Vanish with observations in flight; half of them resume.
        4..=7 => {
            let more: Vec<_> = (0..rng.gen_range(1..20))
                .map(|i| (format!("{name}-v{i}"), vector(rng)))
                .collect();
            for (k, (id, v)) in more.iter().enumerate() {
                flow.obs(next + k as u64, id, v).await;
            }
            drop(flow);
            stats.vanished.fetch_add(1, Ordering::Relaxed);
            if rng.gen_bool(0.5) {
                let mut flow = Flow::open(channel).await;
                flow.init(&space, &session).await;
                let ack = flow.init_ack().await;
                assert_eq!(ack.session_id, session);
                stats.resumed.fetch_add(1, Ordering::Relaxed);
                // Everything after the last answered number is resent under
                // its own number and id: answered once, stored once.
                let last = ack.last_acked_sequence;
                assert!(last >= next - 1 && last < next + more.len() as u64);
                let resend: Vec<_> = more[(last + 1 - next) as usize..].to_vec();
                let end = write_all(&mut flow, &space, last + 1, resend, ledger, stats).await;
                flow.observe(O::Close(pb::StreamClose { drain: true }))
                    .await;
                match flow.next_observe().await {
                    Some(OR::Closed(c)) => assert_eq!(c.final_sequence, end - 1),
                    other => panic!("expected closed, got {other:?}"),
                }
            }
        }
        // Idle: the server must close it after the idle timeout.
        _ => {
            let went_idle = Instant::now();
            loop {
                match flow.next().await {
                    None | Some(Err(_)) => break,
                    Some(Ok(_)) => {} // its closing status, or pressure
                }
            }
            let took = went_idle.elapsed();
            stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            stats
                .idle_close_max_ms
                .fetch_max(took.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// A stream that pauses, fills its recall slots (one more is refused),
/// then resumes and reads them all, or vanishes with them pending.
async fn recall_once(channel: &Channel, rng: &mut StdRng, stats: &Stats) {
    let space = space_name(rng.gen_range(0..SPACES));
    let mut flow = Flow::open(channel).await;
    flow.init(&space, "").await;
    flow.init_ack().await;
    flow.flow(pb::flow_control::Action::Pause).await;
    for r in 0..=RECALLS_PER_STREAM {
        flow.send(
            &format!("r{r}"),
            F::Recall(pb::RecallRequest {
                memory_space_id: String::new(),
                cue: Some(pb::Cue {
                    embedding: vector(rng),
                    max_results: 10,
                    ..Default::default()
                }),
                batch_size: 3,
                include_embeddings: false,
                after: None,
            }),
        )
        .await;
    }
    // The refusal of the fifth comes while the others are held.
    loop {
        match flow.next().await {
            Some(Ok(pb::FlowResponse {
                request_id,
                response: Some(R::Error(e)),
            })) => {
                assert_eq!(request_id, format!("r{RECALLS_PER_STREAM}"));
                assert_eq!(e.code, "RESOURCE_EXHAUSTED", "{e:?}");
                stats.recalls_refused.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Some(Ok(pb::FlowResponse {
                response: Some(R::Observe(_)),
                ..
            })) => {} // statuses
            other => panic!("expected the refused recall, got {other:?}"),
        }
    }
    // Held while paused: nothing but statuses may arrive meanwhile.
    let held = tokio::time::sleep(Duration::from_millis(200));
    tokio::pin!(held);
    loop {
        tokio::select! {
            _ = &mut held => break,
            m = flow.next() => match m {
                Some(Ok(pb::FlowResponse { response: Some(R::Observe(_)), .. })) => {}
                other => panic!("a paused stream got {other:?}"),
            },
        }
    }
    if rng.gen_bool(0.3) {
        drop(flow);
        stats
            .recall_streams_vanished
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    flow.flow(pb::flow_control::Action::Resume).await;
    let mut done = 0;
    while done < RECALLS_PER_STREAM {
        match flow.next().await {
            Some(Ok(pb::FlowResponse {
                response: Some(R::Recall(b)),
                ..
            })) => {
                if !b.more {
                    done += 1;
                }
            }
            Some(Ok(pb::FlowResponse {
                response: Some(R::Observe(_)),
                ..
            })) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    stats
        .recalls_completed
        .fetch_add(done as u64, Ordering::Relaxed);
}

/// Indexing paused, writes until the queue crosses 90% and rejects, then
/// indexing resumed; the rejected ones are retried until accepted.
async fn burst_once(
    channel: &Channel,
    http: &reqwest::Client,
    server: &ServerProcess,
    name: &str,
    rng: &mut StdRng,
    ledger: &Ledger,
    stats: &Arc<Stats>,
) {
    let post = |path: &str| http.post(server.url(path)).json(&json!({})).send();
    assert_eq!(
        post("/v1/admin/indexing/pause").await.unwrap().status(),
        200
    );
    let space = space_name(rng.gen_range(0..SPACES));
    let mut flow = Flow::open(channel).await;
    flow.init(&space, "").await;
    flow.init_ack().await;
    let before = stats.overloaded.load(Ordering::Relaxed);
    let resume = {
        let http = http.clone();
        let url = server.url("/v1/admin/indexing/resume");
        let stats = stats.clone();
        // Indexing resumes as soon as the burst has been rejected.
        tokio::spawn(async move {
            let until = Instant::now() + ANSWER_DEADLINE;
            let mut poll = tokio::time::interval(Duration::from_millis(10));
            while stats.overloaded.load(Ordering::Relaxed) == before {
                assert!(Instant::now() < until, "the burst was never rejected");
                poll.tick().await;
            }
            let r = http.post(url).json(&json!({})).send().await.unwrap();
            assert_eq!(r.status(), 200);
        })
    };
    let items: Vec<_> = (0..QUEUE_CAPACITY)
        .map(|i| (format!("{name}-{i}"), vector(rng)))
        .collect();
    let end = write_all(&mut flow, &space, 1, items, ledger, stats).await;
    resume.await.unwrap();
    flow.observe(O::Close(pb::StreamClose { drain: true }))
        .await;
    match flow.next_observe().await {
        Some(OR::Closed(c)) => assert_eq!(c.final_sequence, end - 1),
        other => panic!("expected closed, got {other:?}"),
    }
    assert!(
        stats.overloaded.load(Ordering::Relaxed) > before,
        "a burst of {QUEUE_CAPACITY} with indexing paused was never rejected"
    );
    stats.bursts.fetch_add(1, Ordering::Relaxed);
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics"))
}

fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let secs = soak_secs();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("engram.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nworkers = 2\nfault_injection = true\nsnapshot_interval_secs = 10\n\
             [engine.queue]\ncapacity = {QUEUE_CAPACITY}\n\
             [engine.sessions]\nidle_timeout_secs = {IDLE_TIMEOUT_SECS}\n\
             resume_window_secs = {RESUME_WINDOW_SECS}\nmax_recalls_per_stream = {RECALLS_PER_STREAM}\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    server.wait_ready().await;
    let http = reqwest::Client::new();
    for s in 0..SPACES {
        let r = http
            .put(server.url(&format!("/v1/spaces/{}", space_name(s))))
            .json(&json!({"dimension": DIM}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let channel = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ledger: Ledger = Arc::default();
    let stats = Arc::new(Stats::default());
    let until = Instant::now() + Duration::from_secs(secs);
    let server = Arc::new(server);
    let mut tasks = Vec::new();
    for c in 0..CHURNERS {
        let (channel, ledger, stats) = (channel.clone(), ledger.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut round = 0;
            while Instant::now() < until {
                churn_once(
                    &channel,
                    &format!("c{c}-{round}"),
                    &mut rng,
                    &ledger,
                    &stats,
                )
                .await;
                round += 1;
            }
        }));
    }
    for r in 0..RECALLERS {
        let (channel, stats) = (channel.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(1000 + r as u64);
            while Instant::now() < until {
                recall_once(&channel, &mut rng, &stats).await;
            }
        }));
    }
    {
        let (channel, ledger, stats, server, http) = (
            channel.clone(),
            ledger.clone(),
            stats.clone(),
            server.clone(),
            http.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(2000);
            let mut round = 0;
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(8)).await;
                burst_once(
                    &channel,
                    &http,
                    &server,
                    &format!("b{round}"),
                    &mut rng,
                    &ledger,
                    &stats,
                )
                .await;
                round += 1;
            }
        }));
    }
    {
        let (stats, server, http) = (stats.clone(), server.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(3000);
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let body = json!({"insert_panics": {"space": space_name(rng.gen_range(0..SPACES)), "count": 1}});
                let r = http.post(server.url("/v1/admin/faults")).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                stats.panics_injected.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        // Progress, every 5 s (visible with --nocapture).
        let (stats, server, http, ledger) =
            (stats.clone(), server.clone(), http.clone(), ledger.clone());
        let started = Instant::now();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let text = server.metrics(&http).await;
                println!(
                    "soak +{:>4} s: {} sessions opened, {} kept now, {} acked, RSS {} MiB",
                    started.elapsed().as_secs(),
                    stats.sessions.load(Ordering::Relaxed),
                    metric(&text, "engram_streaming_sessions_kept"),
                    ledger.lock().unwrap().len(),
                    rss_bytes(server.pid()) >> 20
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("a soak task failed");
    }
    let s = &stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak {secs} s: {} sessions ({} closed, {} vanished, {} resumed, {} idle-closed, slowest idle close {} ms), \
         {} recalls completed, {} refused at the per-stream limit, {} recall streams vanished paused, \
         {} bursts, {} overloaded rejections, {} insert panics injected, {} observations acked",
        load(&s.sessions), load(&s.closed), load(&s.vanished), load(&s.resumed), load(&s.idle_closed),
        load(&s.idle_close_max_ms), load(&s.recalls_completed), load(&s.recalls_refused),
        load(&s.recall_streams_vanished), load(&s.bursts), load(&s.overloaded),
        load(&s.panics_injected), ledger.lock().unwrap().len(),
    );
    if secs >= 60 {
        assert!(load(&s.sessions) >= 200, "fewer sessions than a soak needs");
        assert!(load(&s.bursts) >= 1 && load(&s.idle_closed) >= 10);
    }
    // Idle sessions closed on time: the timeout plus one sweep (1 s) and
    // scheduling slack on a loaded 2-core machine.
    assert!(
        load(&s.idle_close_max_ms) <= (IDLE_TIMEOUT_SECS * 1000) + 3000,
        "an idle session was closed after {} ms (timeout {IDLE_TIMEOUT_SECS} s)",
        load(&s.idle_close_max_ms)
    );

    // Everything indexed, nothing quarantined, integrity clean.
    for sp in 0..SPACES {
        let info = server
            .get_until(
                &http,
                &format!("/v1/spaces/{}", space_name(sp)),
                Duration::from_secs(120),
                "the space to drain",
                |_, info| info["queue_depth"] == 0,
            )
            .await;
        assert_eq!(info["quarantined_count"], 0, "{info}");
        let r = http
            .post(server.url(&format!("/v1/admin/spaces/{}/integrity", space_name(sp))))
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(
            status,
            200,
            "integrity of {}: {}",
            space_name(sp),
            r.text().await.unwrap()
        );
    }

    // Nothing acked lost, nothing stored twice: resending every acked
    // observation answers `duplicate` with its original server sequence.
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let mut by_space: HashMap<String, Vec<(String, u64, Vec<f32>)>> = HashMap::new();
    for (id, (space, seq, v)) in ledger {
        by_space.entry(space).or_default().push((id, seq, v));
    }
    let mut checked = 0;
    for (space, items) in by_space {
        let mut flow = Flow::open(&channel).await;
        flow.init(&space, "").await;
        flow.init_ack().await;
        for chunk in items.chunks(512) {
            for (k, (id, _, v)) in chunk.iter().enumerate() {
                flow.obs(checked as u64 + k as u64 + 1, id, v).await;
            }
            for (id, seq, _) in chunk {
                match flow.next_observe().await {
                    Some(OR::Ack(a)) => {
                        assert!(
                            a.status == pb::observation_ack::Status::AckAccepted as i32
                                && a.duplicate,
                            "acked {id} was not stored: {a:?}"
                        );
                        assert_eq!(
                            (a.memory_id.as_str(), a.server_sequence),
                            (id.as_str(), *seq)
                        );
                    }
                    other => panic!("expected an ack, got {other:?}"),
                }
            }
            checked += chunk.len();
        }
        checked = 0;
        flow.observe(O::Close(pb::StreamClose { drain: true }))
            .await;
        assert!(matches!(flow.next_observe().await, Some(OR::Closed(_))));
    }

    // Kept sessions back to zero once the resume window has passed.
    let until = Instant::now() + Duration::from_secs(RESUME_WINDOW_SECS + 30);
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        poll.tick().await;
        let text = server.metrics(&http).await;
        if metric(&text, "engram_streaming_sessions_kept") == 0.0 {
            assert_eq!(metric(&text, "engram_streaming_active_sessions_total"), 0.0);
            break;
        }
        assert!(
            Instant::now() < until,
            "sessions kept after the resume window: {}",
            metric(&text, "engram_streaming_sessions_kept")
        );
    }

    let rss = rss_bytes(server.pid());
    println!(
        "server RSS at the end: {} MiB (bound {} MiB)",
        rss >> 20,
        RSS_BOUND_BYTES >> 20
    );
    assert!(
        rss < RSS_BOUND_BYTES,
        "RSS {} MiB over the bound",
        rss >> 20
    );
}
