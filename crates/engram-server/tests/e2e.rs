//! End-to-end tests of the product's workflows against the real server over the network,
//! through the real Rust client (`engram-client`): the streaming workflow,
//! several clients at once, backpressure, indexing-worker crashes, recall
//! while streaming, a server restart (graceful and SIGKILL) under a live
//! stream, and compact vector storage over gRPC and REST across restarts.
//! Each test starts its own server on port 0 with a temporary data
//! directory.

mod e2e_support;
mod support;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_support::*;
use engram_client::proto::stream_status::State;
use engram_client::proto::RecallRequest;
use engram_client::{ClientOptions, RetryPolicy, SessionEvent, StreamingClient};
use futures::StreamExt;
use serde_json::json;
use support::ServerProcess;
use tokio::time::{Instant, MissedTickBehavior};

/// `n` distinct real-text observations: the MiniLM sample shipped in
/// `engram-testdata`, its 3,000 base rows first, then normalised means of
/// pairs of them (see `MinilmSample::observations`).
fn minilm_observations(n: usize) -> Vec<(String, Vec<f32>)> {
    let sample = engram_testdata::minilm_sample();
    assert_eq!(sample.dim, DIM, "minilm-sample dimension");
    sample.observations(n)
}

/// The accepted memory with the highest server sequence so far.
fn latest(acked: &Acked) -> Option<(String, u64)> {
    let acked = acked.lock().unwrap();
    acked
        .iter()
        .max_by_key(|(_, seq)| **seq)
        .map(|(id, seq)| (id.clone(), *seq))
}

fn distinct_ids(log: &AckLog) -> HashSet<String> {
    log.accepted.iter().map(|a| a.memory_id.clone()).collect()
}

/// 10K observations over about 10 s, recalls during the stream,
/// every observation top-1 for its own embedding afterwards, integrity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_streaming_workflow_10k_observations() {
    const N: u64 = 10_000;
    const SPACE: &str = "workflow";
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), None, &[]).await;
    let client = connect(server.grpc).await;
    client.create_space(SPACE, DIM as u32).await.unwrap();
    let data = Arc::new(minilm_observations(N as usize));

    let (sender, acks) = client.observe_stream(SPACE).await.unwrap();
    let acked = Acked::default();
    let reader = read_acks(acks, acked.clone());
    let started = Instant::now();
    let writer = tokio::spawn({
        let (sender, data) = (sender.clone(), data.clone());
        async move {
            let make = |i: u64| {
                let (what, v) = &data[i as usize];
                episode(&format!("wf-{i}"), what.clone(), v.clone())
            };
            send_paced(&sender, N, 1000.0, make, || false).await
        }
    });

    // Recalls while the stream flows: each finds the newest acked memory
    // (read-after-ack) under a snapshot that never goes back.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut last_snapshot, mut recalls) = (0, 0);
    while !writer.is_finished() {
        tick.tick().await;
        let Some((id, seq)) = latest(&acked) else {
            continue;
        };
        let i: usize = id["wf-".len()..].parse().unwrap();
        let cue = engram_client::cue(data[i].1.clone(), 10);
        let got = client
            .recall_stream(SPACE, cue)
            .await
            .unwrap()
            .collect_all()
            .await
            .unwrap();
        assert!(
            !got.memories.is_empty(),
            "a recall mid-stream found nothing"
        );
        assert!(
            got.snapshot_sequence >= last_snapshot,
            "snapshot went back from {last_snapshot} to {}",
            got.snapshot_sequence
        );
        assert!(
            got.snapshot_sequence >= seq,
            "snapshot {} misses acked server sequence {seq}",
            got.snapshot_sequence
        );
        let top = &got.memories[0].episode.as_ref().unwrap().id;
        if *top != id {
            // The index search is approximate (see `not_top1`): a later,
            // wider recall must still find it first.
            let wide = client
                .recall(SPACE, cue_everything(data[i].1.clone()))
                .await
                .unwrap();
            let first = wide.memories.first().and_then(|m| m.episode.as_ref());
            assert_eq!(
                first.map(|e| &e.id),
                Some(&id),
                "the newest acked memory is not first for its own embedding (first: {top})"
            );
        }
        last_snapshot = got.snapshot_sequence;
        recalls += 1;
    }
    assert_eq!(writer.await.unwrap(), N);
    let closed = sender.close(true).await.unwrap();
    let streamed = started.elapsed();
    let log = reader.await.unwrap();
    eprintln!("streamed {N} in {streamed:?} with {recalls} recalls; closed {closed:?}");
    assert!(recalls >= 5, "only {recalls} recalls ran during the stream");
    assert_eq!(log.error, None);
    assert!(
        log.rejected.is_empty(),
        "rejected: {:?}",
        &log.rejected[..1]
    );
    assert_eq!(log.accepted.len() as u64, N);
    assert_eq!(distinct_ids(&log).len() as u64, N);
    assert_eq!((closed.final_sequence, closed.accepted), (N, N));

    let info = wait_indexed(&client, SPACE, Duration::from_secs(120)).await;
    eprintln!("indexed after {:?}", started.elapsed());
    assert_eq!(info.count, N, "{info:?}");
    assert!(info.last_sequence >= N, "{info:?}");
    let items = (0..N as usize)
        .map(|i| (format!("wf-{i}"), data[i].1.clone()))
        .collect();
    let missing = not_top1(&client, SPACE, items, 4).await;
    eprintln!("recalled all after {:?}", started.elapsed());
    assert!(
        missing.is_empty(),
        "{} of {N} not top-1 for their own embedding, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_integrity(&server, SPACE).await;
    eprintln!("integrity checked after {:?}", started.elapsed());
}

/// Three clients on their own connections stream 5K each into
/// their own space at once; no recall ever shows another client's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_multi_client_concurrent() {
    const CLIENTS: [&str; 3] = ["alice", "bob", "carol"];
    const PER_CLIENT: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), None, &[]).await;

    let mut tasks = Vec::new();
    for (k, name) in CLIENTS.into_iter().enumerate() {
        let grpc = server.grpc;
        tasks.push(tokio::spawn(async move {
            let client = connect(grpc).await;
            let space = format!("tenant-{name}");
            client.create_space(&space, DIM as u32).await.unwrap();
            let (sender, acks) = client.observe_stream(&space).await.unwrap();
            let reader = read_acks(acks, Acked::default());
            let stream = 10 + k as u64;
            let writer = tokio::spawn({
                let sender = sender.clone();
                async move {
                    let make = |i: u64| {
                        episode(
                            &format!("{name}-{i}"),
                            format!("{name} observation {i}"),
                            vector(stream, i, DIM),
                        )
                    };
                    send_paced(&sender, PER_CLIENT, 1000.0, make, || false).await
                }
            });
            // Probe with the other clients' vectors: a leak would come first.
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut recalls = 0u64;
            let mut done = false;
            while !done {
                done = writer.is_finished();
                tick.tick().await;
                let other = 10 + ((k as u64 + 1 + recalls % 2) % 3);
                let probe = vector(other, recalls * 37 % PER_CLIENT, DIM);
                let got = client
                    .recall_stream(&space, cue_everything(probe))
                    .await
                    .unwrap()
                    .collect_all()
                    .await
                    .unwrap();
                assert_own(name, &got.memories);
                recalls += 1;
            }
            assert_eq!(writer.await.unwrap(), PER_CLIENT);
            let closed = sender.close(true).await.unwrap();
            let log = reader.await.unwrap();
            assert_eq!(log.error, None, "{name}");
            assert!(
                log.rejected.is_empty(),
                "{name}: {:?}",
                log.rejected.first()
            );
            assert_eq!(log.accepted.len() as u64, PER_CLIENT, "{name}");
            assert_eq!(closed.accepted, PER_CLIENT, "{name}");
            (client, space, recalls)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    for (k, (client, space, recalls)) in clients.iter().enumerate() {
        let name = CLIENTS[k];
        assert!(*recalls >= 5, "{name} recalled only {recalls} times");
        let info = wait_indexed(client, space, Duration::from_secs(120)).await;
        assert_eq!(info.count, PER_CLIENT, "{name}: {info:?}");
        // After: everything of its own, nothing of the others'.
        let own = (0..PER_CLIENT)
            .map(|i| (format!("{name}-{i}"), vector(10 + k as u64, i, DIM)))
            .collect();
        let missing = not_top1(client, space, own, 2).await;
        assert!(
            missing.is_empty(),
            "{name}: {} not top-1, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        for other in (0..3).filter(|o| *o != k) {
            for i in (0..PER_CLIENT).step_by(250) {
                let got = client
                    .recall(space, cue_everything(vector(10 + other as u64, i, DIM)))
                    .await
                    .unwrap();
                assert_own(name, &got.memories);
            }
        }
        assert_integrity(&server, space).await;
    }
    let spaces = clients[0].0.list_spaces().await.unwrap();
    for name in CLIENTS {
        let s = spaces
            .iter()
            .find(|s| s.memory_space_id == format!("tenant-{name}"))
            .unwrap_or_else(|| panic!("tenant-{name} not listed: {spaces:?}"));
        assert_eq!(s.count, PER_CLIENT, "{s:?}");
    }
}

fn assert_own(name: &str, memories: &[engram_client::RecalledMemory]) {
    for m in memories {
        let e = m
            .episode
            .as_ref()
            .expect("a recalled memory has its episode");
        assert!(
            e.id.starts_with(&format!("{name}-")) && e.what.starts_with(&format!("{name} ")),
            "{name}'s recall returned another client's memory: id {:?}, what {:?}",
            e.id,
            e.what
        );
    }
}

/// What the session events of the backpressure test showed.
#[derive(Debug, Default)]
struct Seen {
    slow_down: u64,
    max_suggested_rate: f32,
    overloaded: u64,
    retrying: u64,
    /// Retries that waited the client's own default: the rejection carried
    /// no retry-after.
    retry_without_hint: u64,
    active_after_pressure: bool,
}

/// The client's wait before resending an overload rejection without a
/// retry-after; below the server's shortest hint (50 ms), so a wait of
/// exactly this long means the server gave none.
const NO_HINT_DELAY: Duration = Duration::from_millis(1);

/// Writing faster than indexing brings SLOW_DOWN and overload
/// rejections with a retry-after, which the client absorbs; when load drops
/// the stream is ACTIVE again, the queue drains and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_backpressure_workflow() {
    const N: u64 = 4_000;
    const CAPACITY: u64 = 2_000;
    const SPACE: &str = "pressure";
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        dir.path(),
        None,
        &[
            "--fault-injection",
            "--queue-capacity",
            "2000",
            "--workers",
            "2",
        ],
    )
    .await;
    // Indexing at about 2 x 200/s.
    faults(&server, json!({"index_delay_ms": 5})).await;
    // A window wider than the queue: the whole burst is on the wire before
    // the first SLOW_DOWN can arrive, so admission control must act.
    let client = connect(server.grpc)
        .await
        .with_options(ClientOptions {
            max_in_flight: 4096,
            overload_retry: RetryPolicy {
                default_delay: NO_HINT_DELAY,
                ..RetryPolicy::default()
            },
            ..client_options()
        })
        .unwrap();
    client.create_space(SPACE, DIM as u32).await.unwrap();
    let (sender, acks) = client.observe_stream(SPACE).await.unwrap();
    let acked = Acked::default();
    let reader = read_acks(acks, acked.clone());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watcher = tokio::spawn({
        let (mut events, seen) = (sender.events(), seen.clone());
        async move {
            while let Some(ev) = events.next().await {
                let mut s = seen.lock().unwrap();
                match ev {
                    SessionEvent::Status(st) => match State::try_from(st.state) {
                        Ok(State::Backpressure) => {
                            s.slow_down += 1;
                            s.max_suggested_rate = s.max_suggested_rate.max(st.suggested_rate);
                        }
                        Ok(State::Overloaded) => s.overloaded += 1,
                        Ok(State::Active) if s.slow_down + s.overloaded > 0 => {
                            s.active_after_pressure = true
                        }
                        _ => {}
                    },
                    SessionEvent::Retrying { after, .. } => {
                        s.retrying += 1;
                        if after == NO_HINT_DELAY {
                            s.retry_without_hint += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    let max_depth = Arc::new(AtomicU64::new(0));
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn({
        let (client, max_depth, stop) = (client.clone(), max_depth.clone(), stop_monitor.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let info = describe(&client, SPACE).await;
                max_depth.fetch_max(info.queue_depth, Ordering::Relaxed);
            }
        }
    });

    let started = Instant::now();
    for i in 0..N {
        let e = episode(
            &format!("bp-{i}"),
            format!("pressure {i}"),
            vector(30, i, DIM),
        );
        sender.send(e).await.unwrap();
    }
    wait_for(
        "every observation to be accepted",
        Duration::from_secs(120),
        || async {
            let n = acked.lock().unwrap().len() as u64;
            if n == N {
                Ok(())
            } else {
                Err(format!("{n} of {N} accepted; session {:?}", sender.state()))
            }
        },
    )
    .await;
    let loaded = started.elapsed();

    // Load is gone; indexing back to full speed: ACTIVE again, queue empty.
    faults(&server, json!({"index_delay_ms": 0})).await;
    wait_for(
        "the stream to be ACTIVE again",
        Duration::from_secs(30),
        || async {
            let state = sender.state();
            match state.last_status.as_ref().map(|s| State::try_from(s.state)) {
                Some(Ok(State::Active)) if state.pacing_rate.is_none() => Ok(()),
                _ => Err(format!("{state:?}")),
            }
        },
    )
    .await;
    let info = wait_indexed(&client, SPACE, Duration::from_secs(60)).await;
    stop_monitor.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    let closed = sender.close(true).await.unwrap();
    let log = reader.await.unwrap();
    watcher.await.unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let retried = log.accepted.iter().filter(|a| a.retries > 0).count();
    eprintln!(
        "{N} accepted in {loaded:?}; {retried} after retries; max depth {}; {seen:?}; {closed:?}",
        max_depth.load(Ordering::Relaxed)
    );

    assert!(
        seen.slow_down > 0,
        "no SLOW_DOWN reached the client: {seen:?}"
    );
    assert!(
        seen.max_suggested_rate > 0.0,
        "SLOW_DOWN without a rate: {seen:?}"
    );
    assert!(
        retried > 0 && seen.retrying > 0,
        "no overload rejection was retried: {seen:?}"
    );
    assert_eq!(
        seen.retry_without_hint, 0,
        "overload rejections without a retry-after: {seen:?}"
    );
    assert!(seen.active_after_pressure, "never ACTIVE again: {seen:?}");
    assert!(
        max_depth.load(Ordering::Relaxed) <= CAPACITY,
        "queue depth {} over capacity {CAPACITY}",
        max_depth.load(Ordering::Relaxed)
    );
    assert_eq!(log.error, None);
    assert!(log.rejected.is_empty(), "{:?}", log.rejected.first());
    assert_eq!(info.count, N, "{info:?}");
    assert_eq!(distinct_ids(&log).len() as u64, N);
    let items = (0..N)
        .map(|i| (format!("bp-{i}"), vector(30, i, DIM)))
        .collect();
    let missing = not_top1(&client, SPACE, items, 4).await;
    assert!(
        missing.is_empty(),
        "lost: {:?}",
        &missing[..missing.len().min(5)]
    );
    assert_integrity(&server, SPACE).await;
}

/// Indexing workers killed during a 10K stream are restarted,
/// their batches indexed again, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_worker_crash_recovery() {
    const N: u64 = 10_000;
    const SPACE: &str = "crashy";
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), None, &["--fault-injection", "--workers", "2"]).await;
    let client = connect(server.grpc).await;
    client.create_space(SPACE, DIM as u32).await.unwrap();
    let (sender, acks) = client.observe_stream(SPACE).await.unwrap();
    let acked = Acked::default();
    let reader = read_acks(acks, acked.clone());
    let writer = tokio::spawn({
        let sender = sender.clone();
        async move {
            let make =
                |i: u64| episode(&format!("wc-{i}"), format!("crash {i}"), vector(40, i, DIM));
            send_paced(&sender, N, 1000.0, make, || false).await
        }
    });

    // (after this many acks, the kill, restarts expected once it fired)
    let kills = [
        (1_000, json!({"kill_worker": 0}), 1),
        (3_000, json!({"kill_worker": 1}), 2),
        (5_000, json!({"kill_any": 2}), 4),
    ];
    for (after, kill, restarts) in kills {
        wait_for(
            &format!("{after} acks"),
            Duration::from_secs(60),
            || async {
                let n = acked.lock().unwrap().len();
                (n >= after).then_some(()).ok_or(format!("{n} acked"))
            },
        )
        .await;
        faults(&server, kill.clone()).await;
        wait_for(
            &format!("{kill} to fire"),
            Duration::from_secs(30),
            || async {
                let f = faults(&server, json!({})).await;
                let r = f["worker_restarts"].as_u64().unwrap();
                (r >= restarts).then_some(()).ok_or(f.to_string())
            },
        )
        .await;
    }
    assert!(
        !writer.is_finished(),
        "the kills should land while the stream is still running"
    );
    assert_eq!(writer.await.unwrap(), N);
    let closed = sender.close(true).await.unwrap();
    let log = reader.await.unwrap();
    assert_eq!(log.error, None);
    assert!(log.rejected.is_empty(), "{:?}", log.rejected.first());
    assert_eq!((log.accepted.len() as u64, closed.accepted), (N, N));

    let info = wait_indexed(&client, SPACE, Duration::from_secs(120)).await;
    assert_eq!((info.count, info.indexed_count), (N, N), "{info:?}");
    let f = faults(&server, json!({})).await;
    assert_eq!(f["kills_armed"], 4, "{f}");
    assert_eq!(
        f["worker_restarts"], 4,
        "every armed kill fired once and nothing else panicked: {f}"
    );
    let log_text = server.log_text();
    for worker in 0..2 {
        assert!(
            log_text
                .lines()
                .any(|l| l.contains("indexing worker panicked")
                    && l.contains(&format!("worker={worker}"))),
            "worker {worker} was never restarted; log:\n{log_text}"
        );
    }
    assert_integrity(&server, SPACE).await;
    let items = (0..N)
        .map(|i| (format!("wc-{i}"), vector(40, i, DIM)))
        .collect();
    let missing = not_top1(&client, SPACE, items, 4).await;
    assert!(
        missing.is_empty(),
        "lost: {:?}",
        &missing[..missing.len().min(5)]
    );
}

/// 100 observations/s and a recall every second: each recall
/// sees more than the one before, and everything acked before it started
/// (staleness 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_recall_during_streaming() {
    const N: u64 = 800;
    const SPACE: &str = "live";
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), None, &[]).await;
    let client = connect(server.grpc).await;
    client.create_space(SPACE, DIM as u32).await.unwrap();
    let (sender, acks) = client.observe_stream(SPACE).await.unwrap();
    let acked = Acked::default();
    let reader = read_acks(acks, acked.clone());
    let writer = tokio::spawn({
        let sender = sender.clone();
        async move {
            let make =
                |i: u64| episode(&format!("rd-{i}"), format!("live {i}"), vector(50, i, DIM));
            send_paced(&sender, N, 100.0, make, || false).await
        }
    });

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let mut previous: (BTreeSet<String>, u64) = Default::default();
    let mut recalls = 0;
    let mut streaming = true;
    while streaming {
        streaming = !writer.is_finished();
        if streaming {
            tick.tick().await;
        } else {
            // The last one, after the stream: sees everything.
            sender.clone().close(true).await.unwrap();
        }
        let before: Vec<String> = acked.lock().unwrap().keys().cloned().collect();
        let got = recall_everything(&client, SPACE).await;
        let ids: BTreeSet<String> = got
            .memories
            .iter()
            .map(|m| m.episode.as_ref().unwrap().id.clone())
            .collect();
        assert_eq!(
            ids.len(),
            got.memories.len(),
            "a memory came twice in one recall"
        );
        for m in &got.memories {
            assert!(
                m.server_sequence <= got.snapshot_sequence,
                "{m:?} after the snapshot"
            );
            assert!(m.episode.as_ref().unwrap().id.starts_with("rd-"));
        }
        let unseen: Vec<&String> = before.iter().filter(|id| !ids.contains(*id)).collect();
        assert!(
            unseen.is_empty(),
            "recall {recalls} (snapshot {}) missed {} observations acked before it started, e.g. {:?}",
            got.snapshot_sequence,
            unseen.len(),
            &unseen[..unseen.len().min(5)]
        );
        assert!(
            got.snapshot_sequence >= previous.1,
            "the snapshot went back"
        );
        let lost: Vec<&String> = previous.0.difference(&ids).collect();
        assert!(
            lost.is_empty(),
            "recall {recalls} lost {lost:?} seen before"
        );
        if streaming {
            assert!(
                ids.len() > previous.0.len(),
                "recall {recalls} saw {} memories, no more than the one before",
                ids.len()
            );
        } else {
            assert_eq!(
                ids.len() as u64,
                N,
                "the final recall sees every observation"
            );
            assert!(
                got.batches > 1,
                "{} memories in {} batches",
                ids.len(),
                got.batches
            );
        }
        previous = (ids, got.snapshot_sequence);
        recalls += 1;
    }
    assert!(recalls >= 7, "only {recalls} recalls");
    assert_eq!(writer.await.unwrap(), N);
    let log = reader.await.unwrap();
    assert_eq!(log.error, None);
    assert_eq!(log.accepted.len() as u64, N);
    drop(server);
}

async fn recall_everything(client: &StreamingClient, space: &str) -> engram_client::Recalled {
    let request = RecallRequest {
        memory_space_id: space.to_owned(),
        cue: Some(cue_everything(vector(50, u64::MAX, DIM))),
        batch_size: 128,
        include_embeddings: false,
        after: None,
    };
    client
        .recall_stream_with(request)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap()
}

/// Restarts the server under a live stream (SIGTERM with its grace period,
/// or SIGKILL) on the same gRPC port: the client reconnects and carries on,
/// and every acked observation is there exactly once.
async fn restart_mid_stream(sigkill: bool) {
    const N: u64 = 3_000;
    const SPACE: &str = "restart";
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), None, &[]).await;
    let grpc = server.grpc;
    let client = connect(grpc).await;
    client.create_space(SPACE, DIM as u32).await.unwrap();
    let (sender, acks) = client.observe_stream(SPACE).await.unwrap();
    let acked = Acked::default();
    let reader = read_acks(acks, acked.clone());
    let stream = if sigkill { 61 } else { 60 };
    let writer = tokio::spawn({
        let sender = sender.clone();
        async move {
            let make = |i: u64| {
                episode(
                    &format!("rs-{i}"),
                    format!("restart {i}"),
                    vector(stream, i, DIM),
                )
            };
            send_paced(&sender, N, 500.0, make, || false).await
        }
    });
    wait_for("1,000 acks", Duration::from_secs(60), || async {
        let n = acked.lock().unwrap().len();
        (n >= 1000).then_some(()).ok_or(format!("{n} acked"))
    })
    .await;

    let down = Instant::now();
    tokio::task::block_in_place(|| {
        if sigkill {
            server.kill9();
        } else {
            let status = server.terminate(Duration::from_secs(30));
            assert!(status.success(), "graceful shutdown exited with {status}");
        }
    });
    let stopped = down.elapsed();
    let acked_at_stop = acked.lock().unwrap().len();
    let old: ServerProcess =
        std::mem::replace(&mut server, start_server(dir.path(), Some(grpc), &[]).await);
    drop(old);
    eprintln!(
        "server stopped in {stopped:?} with {acked_at_stop} acked; back after {:?}",
        down.elapsed()
    );
    assert!(
        !writer.is_finished(),
        "the restart should happen while the stream is still sending"
    );
    assert_eq!(writer.await.unwrap(), N);
    let state = sender.state();
    let closed = tokio::time::timeout(Duration::from_secs(120), sender.close(true))
        .await
        .expect("closing with drain after the restart")
        .unwrap();
    let log = reader.await.unwrap();
    eprintln!("session {state:?}; closed {closed:?}");
    assert!(
        state.reconnects >= 1,
        "the client never reconnected: {state:?}"
    );
    assert_eq!(log.error, None);
    assert!(log.rejected.is_empty(), "{:?}", log.rejected.first());
    assert_eq!(log.accepted.len() as u64, N, "one answer per observation");
    let ids = distinct_ids(&log);
    assert_eq!(
        ids.len() as u64,
        N,
        "an observation was acked under two ids"
    );

    let info = wait_indexed(&client, SPACE, Duration::from_secs(120)).await;
    assert_eq!(
        info.count,
        ids.len() as u64,
        "stored {} memories for {} distinct acked ids: {info:?}",
        info.count,
        ids.len()
    );
    let items = (0..N)
        .map(|i| (format!("rs-{i}"), vector(stream, i, DIM)))
        .collect();
    let missing = not_top1(&client, SPACE, items, 4).await;
    assert!(
        missing.is_empty(),
        "{} acked observations lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_integrity(&server, SPACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_server_restart_mid_stream_graceful() {
    restart_mid_stream(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_server_restart_mid_stream_sigkill() {
    restart_mid_stream(true).await;
}

/// The vector of `v` as the server stores and returns it (L2-normalised).
fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// `PUT /v1/spaces/{space}` with `body`: the status and the answer.
async fn rest_create(
    server: &ServerProcess,
    space: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    support::call(
        &reqwest::Client::new(),
        reqwest::Method::PUT,
        &server.url(&format!("/v1/spaces/{space}")),
        Some(body),
    )
    .await
}

/// `POST /v1/spaces/{space}/memories`: answered 201.
async fn rest_remember(server: &ServerProcess, space: &str, id: &str, v: &[f32]) {
    let (status, body) = support::call(
        &reqwest::Client::new(),
        reqwest::Method::POST,
        &server.url(&format!("/v1/spaces/{space}/memories")),
        Some(support::episode(id, v)),
    )
    .await;
    assert_eq!(status, 201, "{id}: {body}");
}

async fn rest_describe(server: &ServerProcess, space: &str) -> serde_json::Value {
    let (status, body) = support::call(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        &server.url(&format!("/v1/spaces/{space}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "GET /v1/spaces/{space}: {body}");
    body
}

/// Both transports say `space` is compact with `n` memories, all indexed,
/// whose exact vectors are on disk (not in RAM).
async fn assert_compact(server: &ServerProcess, client: &StreamingClient, space: &str, n: u64) {
    let info = wait_indexed(client, space, Duration::from_secs(120)).await;
    assert_eq!(info.count, n, "{space}: {info:?}");
    assert_eq!(
        info.vector_storage(),
        engram_client::VectorStorage::Compact,
        "{space}: {info:?}"
    );
    let memory = info.memory.expect("SpaceInfo.memory");
    assert_eq!(memory.vectors, 0, "{space}: no exact vectors in RAM");
    assert!(memory.vectors_on_disk > 0, "{space}: {memory:?}");
    let rest = rest_describe(server, space).await;
    assert_eq!(rest["vector_storage"], "compact", "{rest}");
    assert_eq!(rest["count"], n, "{rest}");
    assert_eq!(rest["memory_bytes"]["vectors"], 0, "{rest}");
    assert_eq!(
        rest["memory_bytes"]["vectors_on_disk"], memory.vectors_on_disk,
        "{rest}"
    );
}

/// Every memory `(id, vector)` comes first for its own vector, and the
/// recall returns the vector it stored (the exact one, read back from the
/// compact space's vector file).
async fn assert_recalled_exactly(
    client: &StreamingClient,
    space: &str,
    items: &[(String, Vec<f32>)],
) {
    let mut memory = client.raw_memory();
    for (id, v) in items {
        let got = memory
            .recall(RecallRequest {
                memory_space_id: space.to_owned(),
                cue: Some(engram_client::cue(v.clone(), 10)),
                batch_size: 0,
                include_embeddings: true,
                after: None,
            })
            .await
            .unwrap_or_else(|e| panic!("recall {id} in {space}: {e}"))
            .into_inner();
        let top = got
            .memories
            .first()
            .expect("a recall of a stored vector finds something");
        let episode = top.episode.as_ref().unwrap();
        assert_eq!(
            &episode.id, id,
            "{space}: {id} is not first for its own vector"
        );
        assert!(top.indexed, "{space}: {id} is indexed");
        let want = unit(v);
        assert_eq!(episode.embedding.len(), want.len(), "{space}: {id}");
        let worst = episode
            .embedding
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{space}: {id}'s vector differs by {worst}");
    }
}

/// Compact vector storage end to end: a compact space created over gRPC
/// (streamed into) and one over REST (remembered into), recalled by their
/// own vectors with the exact vectors returned, described as compact with
/// no exact vectors in RAM; after a graceful restart and after a SIGKILL
/// they are still compact with every memory there. Bad storage values and
/// creating a space again with another storage are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_compact_vector_storage_over_grpc_and_rest() {
    use engram_client::proto::CreateSpaceRequest;
    use engram_client::VectorStorage;
    const N: u64 = 300;
    const MORE: u64 = 50;
    const GRPC_SPACE: &str = "compact-grpc";
    const REST_SPACE: &str = "compact-rest";
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), None, &[]).await;
    let client = connect(server.grpc).await;

    // Created over gRPC; again (the same storage, or none named): no-op.
    let made = client
        .create_space_with(GRPC_SPACE, DIM as u32, VectorStorage::Compact)
        .await
        .unwrap();
    assert!(made.created);
    let space = made.space.unwrap();
    assert_eq!(space.vector_storage(), VectorStorage::Compact);
    assert_eq!(space.memory.unwrap().vectors_on_disk, 0, "empty");
    for storage in [VectorStorage::Compact, VectorStorage::Unspecified] {
        let again = client
            .create_space_with(GRPC_SPACE, DIM as u32, storage)
            .await
            .unwrap();
        assert!(!again.created, "{storage:?}");
        assert_eq!(
            again.space.unwrap().vector_storage(),
            VectorStorage::Compact
        );
    }
    // Created over REST; again: 200.
    let body = json!({"dimension": DIM, "vector_storage": "compact"});
    let (status, made) = rest_create(&server, REST_SPACE, body.clone()).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["vector_storage"], "compact", "{made}");
    assert_eq!(made["memory_bytes"]["vectors_on_disk"], 0, "{made}");
    let (status, again) = rest_create(&server, REST_SPACE, body).await;
    assert_eq!(status, 200, "{again}");
    // Without a storage: the default, memory.
    let (status, plain) = rest_create(&server, "plain", json!({"dimension": DIM})).await;
    assert_eq!(status, 201, "{plain}");
    assert_eq!(plain["vector_storage"], "memory", "{plain}");
    assert_eq!(plain["memory_bytes"]["vectors_on_disk"], 0, "{plain}");

    // Another storage than the space has: 409 / ALREADY_EXISTS, naming it.
    let (status, conflict) = rest_create(
        &server,
        "plain",
        json!({"dimension": DIM, "vector_storage": "compact"}),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["code"], "space_exists", "{conflict}");
    assert!(
        conflict["message"].as_str().unwrap().contains("'memory'"),
        "{conflict}"
    );
    let (status, conflict) = rest_create(
        &server,
        REST_SPACE,
        json!({"dimension": DIM, "vector_storage": "memory"}),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    for (space, storage) in [
        ("plain", VectorStorage::Compact),
        (GRPC_SPACE, VectorStorage::Memory),
    ] {
        let e = client
            .create_space_with(space, DIM as u32, storage)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::AlreadyExists), "{space}: {e}");
        assert!(e.to_string().contains("vector storage"), "{e}");
    }

    // Bad storage values: 400 / INVALID_ARGUMENT naming the field; nothing
    // is created.
    let (status, bad) = rest_create(
        &server,
        "bad-rest",
        json!({"dimension": DIM, "vector_storage": "disk"}),
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["code"], "invalid_argument", "{bad}");
    let message = bad["message"].as_str().unwrap();
    assert!(
        message.contains("vector_storage") && message.contains("'disk'"),
        "{bad}"
    );
    let (status, bad) = rest_create(&server, "bad-rest", json!({"vector_storage": 2})).await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["code"], "invalid_argument", "{bad}");
    let e = client
        .raw_memory()
        .create_space(CreateSpaceRequest {
            memory_space_id: "bad-grpc".into(),
            dimension: DIM as u32,
            vector_storage: 7,
            default_ttl_seconds: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("vector_storage"), "{e:?}");
    for space in ["bad-rest", "bad-grpc"] {
        let e = client.describe_space(space).await.unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::NotFound), "{space}: {e}");
    }

    // Stream into the gRPC space, remember into the REST one.
    let grpc_item = |i: u64| (format!("cg-{i}"), vector(70, i, DIM));
    let rest_item = |i: u64| (format!("cr-{i}"), vector(71, i, DIM));
    let (sender, acks) = client.observe_stream(GRPC_SPACE).await.unwrap();
    let reader = read_acks(acks, Acked::default());
    let make = |i: u64| {
        let (id, v) = grpc_item(i);
        episode(&id, format!("compact {i}"), v)
    };
    assert_eq!(send_paced(&sender, N, 2000.0, make, || false).await, N);
    let closed = sender.close(true).await.unwrap();
    let log = reader.await.unwrap();
    assert_eq!(log.error, None);
    assert!(log.rejected.is_empty(), "{:?}", log.rejected.first());
    assert_eq!((closed.final_sequence, closed.accepted), (N, N));
    for i in 0..N {
        let (id, v) = rest_item(i);
        rest_remember(&server, REST_SPACE, &id, &v).await;
    }

    let grpc_items: Vec<_> = (0..N).map(grpc_item).collect();
    let rest_items: Vec<_> = (0..N).map(rest_item).collect();
    assert_compact(&server, &client, GRPC_SPACE, N).await;
    assert_compact(&server, &client, REST_SPACE, N).await;
    assert_recalled_exactly(&client, GRPC_SPACE, &grpc_items).await;
    assert_recalled_exactly(&client, REST_SPACE, &rest_items).await;
    let listed = client.list_spaces().await.unwrap();
    let storage_of = |name: &str| {
        listed
            .iter()
            .find(|s| s.memory_space_id == name)
            .map(|s| s.vector_storage())
    };
    assert_eq!(storage_of(GRPC_SPACE), Some(VectorStorage::Compact));
    assert_eq!(storage_of(REST_SPACE), Some(VectorStorage::Compact));
    assert_eq!(storage_of("plain"), Some(VectorStorage::Memory));
    assert_integrity(&server, GRPC_SPACE).await;

    // A graceful restart (the shutdown snapshot): still compact, all there.
    tokio::task::block_in_place(|| {
        let status = server.terminate(Duration::from_secs(30));
        assert!(status.success(), "graceful shutdown exited with {status}");
    });
    server = start_server(dir.path(), None, &[]).await;
    let client = connect(server.grpc).await;
    assert_compact(&server, &client, GRPC_SPACE, N).await;
    assert_compact(&server, &client, REST_SPACE, N).await;
    assert_recalled_exactly(&client, GRPC_SPACE, &grpc_items).await;
    assert_recalled_exactly(&client, REST_SPACE, &rest_items).await;
    assert_eq!(
        rest_describe(&server, "plain").await["vector_storage"],
        "memory"
    );

    // More memories, then SIGKILL (recovery replays the WAL into the
    // compact space): still compact, all there.
    for i in N..N + MORE {
        let (id, v) = rest_item(i);
        rest_remember(&server, REST_SPACE, &id, &v).await;
    }
    tokio::task::block_in_place(|| server.kill9());
    server = start_server(dir.path(), None, &[]).await;
    let client = connect(server.grpc).await;
    let rest_items: Vec<_> = (0..N + MORE).map(rest_item).collect();
    assert_compact(&server, &client, GRPC_SPACE, N).await;
    assert_compact(&server, &client, REST_SPACE, N + MORE).await;
    assert_recalled_exactly(&client, GRPC_SPACE, &grpc_items).await;
    assert_recalled_exactly(&client, REST_SPACE, &rest_items).await;
    assert_integrity(&server, REST_SPACE).await;
}

/// `--vector-storage compact` makes compact the default: a space created
/// by its first observation, or by a create that names no storage, is
/// compact; one that names memory is memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_default_vector_storage_flag() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), None, &["--vector-storage", "compact"]).await;
    let client = connect(server.grpc).await;
    let items: Vec<_> = (0..40)
        .map(|i| (format!("auto-{i}"), vector(72, i, DIM)))
        .collect();
    for (id, v) in &items {
        client
            .remember("auto", episode(id, String::new(), v.clone()))
            .await
            .unwrap();
    }
    assert_compact(&server, &client, "auto", items.len() as u64).await;
    assert_recalled_exactly(&client, "auto", &items).await;
    let (status, body) = rest_create(&server, "unnamed", json!({})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["vector_storage"], "compact", "{body}");
    let (status, body) = rest_create(&server, "in-ram", json!({"vector_storage": "memory"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["vector_storage"], "memory", "{body}");
}
