//! Shared by the end-to-end suites (`e2e.rs`, `chaos.rs`): the real server
//! (also restarted on the same gRPC port), its admin routes, deterministic
//! vectors, paced streaming through `engram-client` with a ledger of the
//! answers, and the final checks (drained queue, every acked memory top-1
//! by its own embedding, index integrity).
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engram_client::{
    Ack, Answer, BackoffPolicy, ClientOptions, Cue, Episode, ObserveSender, Rejection, SpaceInfo,
    StreamingClient,
};
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::support::{call, ServerProcess};

/// Dimension of the vectors in the suites (MiniLM's).
pub const DIM: usize = 384;

/// Starts `engram serve` on a temporary HTTP port and on `grpc` (port 0
/// when `None`), with `extra` flags, and waits until it is ready. Always
/// with `--fault-injection`: every suite ends with [`assert_integrity`],
/// an admin route that works only with it.
///
/// `support::ServerProcess::start` always passes `--grpc-addr 127.0.0.1:0`,
/// and a flag may not be given twice, so a restart on the same port needs
/// its own command line.
pub async fn start_server(dir: &Path, grpc: Option<SocketAddr>, extra: &[&str]) -> ServerProcess {
    let grpc = grpc.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
    let mut args = vec![
        "serve",
        "--data-dir",
        dir.to_str().expect("a UTF-8 temp dir"),
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        &grpc,
    ];
    if !extra.contains(&"--fault-injection") {
        args.push("--fault-injection");
    }
    args.extend_from_slice(extra);
    // Spawning waits (synchronously) for the listener lines.
    let server = tokio::task::block_in_place(|| {
        ServerProcess::spawn(Command::new(env!("CARGO_BIN_EXE_engram")).args(&args))
    });
    server.wait_ready().await;
    server
}

/// Client options for the suites: reconnects that ride out a restart of
/// the server (a minute or so) without long waits between attempts.
pub fn client_options() -> ClientOptions {
    ClientOptions {
        reconnect: BackoffPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: 120,
        },
        ..ClientOptions::default()
    }
}

pub async fn connect(addr: SocketAddr) -> StreamingClient {
    StreamingClient::connect_with(format!("http://{addr}"), client_options())
        .await
        .expect("connecting the engram client")
}

/// A deterministic random vector: the `i`th of stream `stream`.
pub fn vector(stream: u64, i: u64, dim: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
    (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

pub fn episode(id: &str, what: String, embedding: Vec<f32>) -> Episode {
    Episode {
        id: id.to_owned(),
        what,
        embedding,
        ..Episode::default()
    }
}

/// A cue that returns every memory of a small space (up to 1,000).
pub fn cue_everything(embedding: Vec<f32>) -> Cue {
    Cue {
        embedding,
        max_results: 1000,
        similarity_threshold: -1.0,
        ..Cue::default()
    }
}

/// `POST /v1/admin/faults` (the server runs with `--fault-injection`).
pub async fn faults(server: &ServerProcess, body: Value) -> Value {
    let (status, body) = call(
        &reqwest::Client::new(),
        Method::POST,
        &server.url("/v1/admin/faults"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "POST /v1/admin/faults: {body}");
    body
}

/// The index integrity check of `space` answers ok (an admin route: the
/// server runs with `--fault-injection`, as [`start_server`] starts it).
pub async fn assert_integrity(server: &ServerProcess, space: &str) {
    let (status, body) = call(
        &reqwest::Client::new(),
        Method::POST,
        &server.url(&format!("/v1/admin/spaces/{space}/integrity")),
        None,
    )
    .await;
    assert_eq!(status, 200, "integrity of {space}: {body}");
    assert_eq!(body["ok"], true, "integrity of {space}: {body}");
}

/// Polls `check` every 50 ms until it gives a value; panics with `what`
/// and the last observation after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let until = Instant::now() + timeout;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        match check().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < until,
                "timed out after {timeout:?} waiting for {what}; last: {last}"
            ),
        }
    }
}

pub async fn describe(client: &StreamingClient, space: &str) -> SpaceInfo {
    client
        .describe_space(space)
        .await
        .unwrap_or_else(|e| panic!("DescribeSpace {space}: {e}"))
}

/// Waits until the queue of `space` is empty and everything in it is
/// indexed; returns its description (the caller checks the count).
pub async fn wait_indexed(client: &StreamingClient, space: &str, timeout: Duration) -> SpaceInfo {
    wait_for(&format!("{space} to be fully indexed"), timeout, || async {
        let info = describe(client, space).await;
        if info.indexed_count == info.count && info.queue_depth == 0 {
            Ok(info)
        } else {
            Err(format!("{info:?}"))
        }
    })
    .await
}

/// Recalls every `(id, embedding)` by its embedding in `tasks` concurrent
/// tasks and returns the ids that are not the first result, with what came
/// first instead.
///
/// The first recall asks for one result, so the index searches at its
/// default breadth; HNSW search is approximate, and on random 384-d vectors
/// (the hardest case) it misses a memory's own vector about 3 times in
/// 10,000. A miss is therefore asked again with `max_results` 1000, which
/// widens the search to 1000 candidates: a memory that comes first then is
/// stored and visible (counted and printed, not an error); one that does not
/// is reported.
pub async fn not_top1(
    client: &StreamingClient,
    space: &str,
    items: Vec<(String, Vec<f32>)>,
    tasks: usize,
) -> Vec<String> {
    let total = items.len();
    let chunk = total.div_ceil(tasks.max(1)).max(1);
    let mut items = items;
    let mut handles = Vec::new();
    while !items.is_empty() {
        let part: Vec<_> = items.drain(..chunk.min(items.len())).collect();
        let (client, space) = (client.clone(), space.to_owned());
        handles.push(tokio::spawn(async move {
            let (mut missing, mut shallow) = (Vec::new(), 0);
            for (id, embedding) in part {
                let narrow = Cue {
                    embedding,
                    max_results: 1,
                    ..Cue::default()
                };
                if first_id(&client, &space, narrow.clone()).await.0.as_deref() == Some(&id) {
                    continue;
                }
                let wide = Cue {
                    max_results: 1000,
                    similarity_threshold: -1.0,
                    ..narrow
                };
                match first_id(&client, &space, wide).await {
                    (Some(first), _) if first == id => shallow += 1,
                    (first, similarity) => missing.push(format!(
                        "{id} (first: {first:?}, similarity {similarity:?})"
                    )),
                }
            }
            (missing, shallow)
        }));
    }
    let (mut missing, mut shallow) = (Vec::new(), 0);
    for h in handles {
        let (m, s) = h.await.expect("a recall task");
        missing.extend(m);
        shallow += s;
    }
    if shallow > 0 {
        eprintln!(
            "{space}: {shallow} of {total} memories came first only in a wider search (max_results 1000)"
        );
    }
    missing
}

/// The id and similarity of the first memory a recall returns.
async fn first_id(
    client: &StreamingClient,
    space: &str,
    cue: Cue,
) -> (Option<String>, Option<f32>) {
    let got = client
        .recall(space, cue)
        .await
        .unwrap_or_else(|e| panic!("recall in {space}: {e}"));
    let first = got.memories.into_iter().next();
    (
        first
            .as_ref()
            .and_then(|m| m.episode.as_ref())
            .map(|e| e.id.clone()),
        first.map(|m| m.similarity),
    )
}

/// What one observe session answered, as the caller saw it.
#[derive(Debug, Default)]
pub struct AckLog {
    pub accepted: Vec<Ack>,
    pub rejected: Vec<Rejection>,
    /// The session's error, if it failed.
    pub error: Option<String>,
}

/// The accepted memory ids so far (by id: server sequence), shared between
/// the ack reader and the test while the stream runs.
pub type Acked = Arc<Mutex<HashMap<String, u64>>>;

/// Reads every answer of a session until it ends; checks they come one
/// per send, in send order.
pub fn read_acks(mut acks: engram_client::AckStream, acked: Acked) -> JoinHandle<AckLog> {
    tokio::spawn(async move {
        let mut log = AckLog::default();
        let mut expected = 1;
        while let Some(item) = acks.recv().await {
            match item {
                Ok(answer) => {
                    assert_eq!(
                        answer.sequence_number(),
                        expected,
                        "answers must come one per send, in send order"
                    );
                    expected += 1;
                    match answer {
                        Answer::Accepted(a) => {
                            acked
                                .lock()
                                .unwrap()
                                .insert(a.memory_id.clone(), a.server_sequence);
                            log.accepted.push(a);
                        }
                        Answer::Rejected(r) => log.rejected.push(r),
                    }
                }
                Err(e) => log.error = Some(e.to_string()),
            }
        }
        log
    })
}

/// Longest a send may wait for an in-flight slot before the stream counts
/// as stuck (a restart or an overload burst takes seconds, not minutes).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(90);

/// Sends `n` episodes made by `make(i)` at `rate` per second (in 10 ms
/// ticks); `stop` ends it early (checked every tick). Returns how many
/// were sent.
pub async fn send_paced(
    sender: &ObserveSender,
    n: u64,
    rate: f64,
    make: impl Fn(u64) -> Episode,
    stop: impl Fn() -> bool,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut sent = 0;
    while sent < n && !stop() {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate).ceil() as u64).min(n);
        while sent < due {
            match tokio::time::timeout(SEND_TIMEOUT, sender.send(make(sent))).await {
                Ok(Ok(_)) => sent += 1,
                Ok(Err(e)) => panic!("send {sent}: {e}"),
                Err(_) => panic!(
                    "send {sent} waited {SEND_TIMEOUT:?} for an in-flight slot; session {:?}",
                    sender.state()
                ),
            }
        }
    }
    sent
}
