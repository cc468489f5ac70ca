//! Cluster failover, end to end: 3 NATS servers (JetStream, R3) and 3
//! engram nodes on loopback, as separate processes.
//!
//! Writers keep a ledger of every ack and its consistency token: unary
//! writers, and stream writers, each on a session of its own
//! (`ObserveStream`); after some acks, a recall carrying the token is
//! asked of *another* node. Then:
//! 1. SIGKILL the engram node owning most partitions; every partition it
//!    owned must be served again within lease TTL + 10 s; restart it;
//! 2. SIGKILL the NATS server leading most partition streams; restart it.
//!
//! Writes go on throughout (a write that fails is retried with the same
//! episode id until acked; a stream writer whose stream breaks opens a new
//! session on the next node and resends what was not acked, with the same
//! ids, as the clients do). Checks at the end:
//! - every acked observation is present exactly once (listing every space
//!   through any node);
//! - every token-checked recall saw its write;
//! - one lease holder per (partition, epoch), from every node's log.
//!
//! Needs the pinned NATS server: `scripts/install-nats.sh` (the README's
//! test command runs it) or `ENGRAM_NATS_SERVER`; fails, never skips,
//! without it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod cluster_support;

use cluster_support::{
    cluster_status, eventually, nats_cluster, nodes, served, tails, wait_all_served,
};
use engram_proto::v1 as pb;
use engram_proto::v1::memory_client::MemoryClient;
use parking_lot::Mutex;
use tonic::transport::Channel;

const PARTITIONS: u32 = 8;
const LEASE_TTL_SECS: u64 = 10;
const SPACES: usize = 6;
const WRITERS: usize = 4;
/// Writers on streams (one session each, one space each).
const STREAM_WRITERS: usize = 2;
/// Observations a stream writer has on the wire at once.
const STREAM_WINDOW: usize = 16;
const DIM: usize = 16;

/// One acked write.
#[derive(Clone)]
struct Acked {
    space: String,
    id: String,
    at: Instant,
}

impl Ledger {
    /// Waits until `more` writes beyond those acked now are acked; false
    /// after `within`.
    async fn wait_for_more(&self, more: usize, within: Duration) -> bool {
        let target = self.acked.lock().len() + more;
        eventually(within, || async move {
            (self.acked.lock().len() >= target).then_some(())
        })
        .await
        .is_some()
    }
}

#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<Acked>>,
    token_recalls: AtomicU64,
    token_recall_misses: Mutex<Vec<String>>,
    write_retries: AtomicU64,
    gave_up: Mutex<Vec<String>>,
    /// Acks that came on streams.
    streamed: AtomicU64,
    /// Streams opened again after one broke.
    stream_reconnects: AtomicU64,
}

/// A writer's or reader's pause after a failed call before it tries
/// again (on the next node): backoff while a node or NATS server is down,
/// not a wait for a condition (each retry loop has its own deadline).
async fn retry_pause() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn client(port: u16) -> MemoryClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(20))
        .connect_lazy();
    MemoryClient::new(ch)
}

fn vector(seed: u64) -> Vec<f32> {
    // A deterministic pseudo-random vector per write.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn space_name(i: usize) -> String {
    format!("failover-{i}")
}

async fn writer(w: usize, ports: Vec<u16>, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let clients: Vec<_> = ports.iter().map(|p| client(*p)).collect();
    let mut n: u64 = 0;
    let mut node = w % clients.len();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let space = space_name((w + n as usize) % SPACES);
        let id = format!("w{w}-{n}");
        let seed = (w as u64) << 40 | n;
        let episode = pb::Episode {
            id: id.clone(),
            what: format!("writer {w} observation {n}"),
            embedding: vector(seed),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        let ack = loop {
            let r = clients[node]
                .clone()
                .remember(pb::RememberRequest {
                    memory_space_id: space.clone(),
                    episode: Some(episode.clone()),
                    priority: 0,
                })
                .await;
            match r {
                Ok(r) => break Some(r.into_inner()),
                Err(_) if Instant::now() < deadline => {
                    ledger.write_retries.fetch_add(1, Ordering::Relaxed);
                    node = (node + 1) % clients.len();
                    retry_pause().await;
                }
                Err(e) => {
                    ledger.gave_up.lock().push(format!("{space}/{id}: {e}"));
                    break None;
                }
            }
        };
        let Some(ack) = ack else { continue };
        let token = ack.token.expect("cluster acks carry a token");
        ledger.acked.lock().push(Acked {
            space: space.clone(),
            id: id.clone(),
            at: Instant::now(),
        });
        if n.is_multiple_of(4) {
            // Read-after-ack on another node.
            let other = (node + 1 + (n as usize % 2)) % clients.len();
            ledger.token_recalls.fetch_add(1, Ordering::Relaxed);
            if !recall_sees(&clients, other, &space, &id, seed, token).await {
                ledger
                    .token_recall_misses
                    .lock()
                    .push(format!("{space}/{id} at {token:?}"));
            }
        }
    }
}

/// One stream writer: an `ObserveStream` session on one node, writing one
/// space in windows of [`STREAM_WINDOW`]; what is not acked (the stream
/// broke, or a retryable rejection) is sent again, with the same ids, on
/// the same or (after a break) a new session on the next node.
async fn stream_writer(w: usize, ports: Vec<u16>, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    use engram_proto::v1::streaming_client::StreamingClient;
    use pb::observe_request::Request;
    use pb::observe_response::Response;
    let clients: Vec<_> = ports.iter().map(|p| client(*p)).collect();
    let space = space_name(w % SPACES);
    let mut node = w % ports.len();
    let mut n: u64 = 0;
    // (id, seed, first tried): sent but not acked, oldest first.
    let mut todo: std::collections::VecDeque<(String, u64, Instant)> = Default::default();
    'session: while !stop.load(Ordering::Relaxed) || !todo.is_empty() {
        let ch =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", ports[node]))
                .unwrap()
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_WINDOW + 1);
        tx.send(pb::ObserveRequest {
            request: Some(Request::Init(pb::StreamInit {
                memory_space_id: space.clone(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let opened = tokio::time::timeout(
            Duration::from_secs(10),
            StreamingClient::new(ch)
                .observe_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let mut answers = match opened {
            Ok(Ok(r)) => r.into_inner(),
            _ => {
                ledger.stream_reconnects.fetch_add(1, Ordering::Relaxed);
                node = (node + 1) % ports.len();
                retry_pause().await;
                continue 'session;
            }
        };
        let mut seq: u64 = 0;
        loop {
            if let Some((id, _, since)) = todo.front() {
                if since.elapsed() > Duration::from_secs(90) {
                    ledger
                        .gave_up
                        .lock()
                        .push(format!("{space}/{id}: not acked on any stream within 90 s"));
                    todo.pop_front();
                    continue;
                }
            }
            // Fill the window: what waits first, then new observations.
            while todo.len() < STREAM_WINDOW && !stop.load(Ordering::Relaxed) {
                n += 1;
                todo.push_back((
                    format!("s{w}-{n}"),
                    (1 << 50) | (w as u64) << 40 | n,
                    Instant::now(),
                ));
            }
            if todo.is_empty() {
                return;
            }
            let window: Vec<(String, u64, Instant)> =
                todo.iter().take(STREAM_WINDOW).cloned().collect();
            let first = seq + 1;
            for (id, seed, _) in &window {
                seq += 1;
                let sent = tx
                    .send(pb::ObserveRequest {
                        request: Some(Request::Observation(pb::Observation {
                            sequence_number: seq,
                            episode: Some(pb::Episode {
                                id: id.clone(),
                                what: format!("stream writer {w}"),
                                embedding: vector(*seed),
                                ..Default::default()
                            }),
                            priority: 0,
                        })),
                    })
                    .await;
                if sent.is_err() {
                    break;
                }
            }
            let mut answered = 0;
            while answered < window.len() {
                let m = tokio::time::timeout(Duration::from_secs(30), answers.message()).await;
                let ack = match m {
                    Ok(Ok(Some(pb::ObserveResponse {
                        response: Some(Response::Ack(a)),
                    }))) => a,
                    Ok(Ok(Some(_))) => continue,
                    // The stream broke (its node died, or the call timed
                    // out): a new session on the next node.
                    _ => {
                        ledger.stream_reconnects.fetch_add(1, Ordering::Relaxed);
                        node = (node + 1) % ports.len();
                        retry_pause().await;
                        continue 'session;
                    }
                };
                assert_eq!(
                    ack.sequence_number,
                    first + answered as u64,
                    "acks in order"
                );
                let (id, seed, _) = window[answered].clone();
                answered += 1;
                if ack.status == pb::observation_ack::Status::AckAccepted as i32 {
                    let pos = todo.iter().position(|t| t.0 == id).unwrap();
                    todo.remove(pos);
                    let token = ack.token.expect("cluster acks carry a token");
                    ledger.acked.lock().push(Acked {
                        space: space.clone(),
                        id: id.clone(),
                        at: Instant::now(),
                    });
                    ledger.streamed.fetch_add(1, Ordering::Relaxed);
                    if answered == 1 {
                        let other = (node + 1) % clients.len();
                        ledger.token_recalls.fetch_add(1, Ordering::Relaxed);
                        if !recall_sees(&clients, other, &space, &id, seed, token).await {
                            ledger
                                .token_recall_misses
                                .lock()
                                .push(format!("{space}/{id} at {token:?} (streamed)"));
                        }
                    }
                } else {
                    // Rejected (overloaded, unavailable): sent again.
                    ledger.write_retries.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A recall with `token` (retried on UNAVAILABLE, on the next node after
/// a transport failure) finds `id` as its best match.
async fn recall_sees(
    clients: &[MemoryClient<Channel>],
    mut node: usize,
    space: &str,
    id: &str,
    seed: u64,
    token: pb::ConsistencyToken,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = clients[node]
            .clone()
            .recall(pb::RecallRequest {
                memory_space_id: space.to_owned(),
                cue: Some(pb::Cue {
                    embedding: vector(seed),
                    max_results: 3,
                    ..Default::default()
                }),
                after: Some(token),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                return r
                    .memories
                    .first()
                    .and_then(|m| m.episode.as_ref())
                    .is_some_and(|e| e.id == id);
            }
            Err(_) if Instant::now() < deadline => {
                node = (node + 1) % clients.len();
                retry_pause().await;
            }
            Err(e) => {
                eprintln!("recall of {space}/{id} failed for good: {e}");
                return false;
            }
        }
    }
}

/// Every memory id of `space`, listed through `client` (retried).
async fn list_all(client: &MemoryClient<Channel>, space: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    'again: loop {
        let mut ids = Vec::new();
        let mut token = String::new();
        loop {
            let r = client
                .clone()
                .list_memories(pb::ListMemoriesRequest {
                    memory_space_id: space.to_owned(),
                    page_size: 1000,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(r) => {
                    let r = r.into_inner();
                    ids.extend(
                        r.memories
                            .into_iter()
                            .filter_map(|m| m.episode.map(|e| e.id)),
                    );
                    if r.next_page_token.is_empty() {
                        return ids;
                    }
                    token = r.next_page_token;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "listing {space} kept failing: {e}"
                    );
                    retry_pause().await;
                    continue 'again;
                }
            }
        }
    }
}

/// (partition, epoch) → node from every "acquired partition lease" line.
fn lease_holders(logs: &[PathBuf]) -> Vec<(u32, u64, String)> {
    let mut out = Vec::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("acquired partition lease"))
        {
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .map(|v| v.trim_matches('"').to_owned())
            };
            if let (Some(p), Some(e), Some(n)) = (field("partition"), field("epoch"), field("node"))
            {
                out.push((p.parse().unwrap(), e.parse().unwrap(), n));
            }
        }
    }
    out
}

/// The NATS server leading the most partition streams, by its name.
async fn busiest_stream_leader(nats_urls: &[String]) -> (String, usize) {
    let mut leaders: HashMap<String, usize> = HashMap::new();
    for leader in stream_leaders(nats_urls).await.into_values().flatten() {
        *leaders.entry(leader).or_default() += 1;
    }
    leaders
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .expect("streams have leaders")
}

/// Each partition stream's leader, as JetStream reports it now (None
/// while it has none, or cannot say).
async fn stream_leaders(nats_urls: &[String]) -> HashMap<u32, Option<String>> {
    let client = async_nats::connect(nats_urls.to_vec())
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let mut leaders = HashMap::new();
    for p in 0..PARTITIONS {
        let leader = match js.get_stream(format!("ENGRAM_P{p}")).await {
            Ok(mut stream) => stream
                .info()
                .await
                .ok()
                .and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone())),
            Err(_) => None,
        };
        leaders.insert(p, leader);
    }
    leaders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_loses_no_acked_observation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // NATS: three servers, one cluster, JetStream syncing every write.
    let (mut nats, nats_urls) = nats_cluster(root, 3);
    let mut nodes = nodes(
        root,
        &nats_urls,
        3,
        &format!(
            "partitions = {PARTITIONS}\nreplicas = 3\nlease_ttl_secs = {LEASE_TTL_SECS}\nsnapshot_interval_secs = 5\n"
        ),
    );
    let all: Vec<(String, u16)> = nodes.iter().map(|n| (n.id.clone(), n.http)).collect();
    let logs: Vec<PathBuf> = nodes.iter().map(|n| n.log.clone()).collect();
    let all_logs: Vec<PathBuf> = logs
        .iter()
        .cloned()
        .chain(nats.iter().map(|n| n.log.clone()))
        .collect();
    let dump_logs = |why: &str| {
        let files: Vec<&std::path::Path> = all_logs.iter().map(PathBuf::as_path).collect();
        eprintln!("{}", tails(&files, 40));
        panic!("{why}");
    };

    // Every partition served.
    if !wait_all_served(&all, PARTITIONS as usize, Duration::from_secs(60)).await {
        dump_logs("the cluster never served every partition");
    }
    println!("cluster up: every partition served");

    // Writers.
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ports: Vec<u16> = nodes.iter().map(|n| n.grpc).collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(w, ports.clone(), ledger.clone(), stop.clone())))
        .chain((0..STREAM_WRITERS).map(|w| {
            tokio::spawn(stream_writer(
                w,
                ports.clone(),
                ledger.clone(),
                stop.clone(),
            ))
        }))
        .collect();
    assert!(
        ledger.wait_for_more(2_000, Duration::from_secs(60)).await,
        "the writers never got going"
    );
    // Takeovers below should load snapshots: wait until every partition
    // that holds writes has one (its owner reports it).
    let all_ref = &all;
    let snapshotted = eventually(Duration::from_secs(60), || async move {
        for (id, http) in all_ref {
            let s = cluster_status(*http).await?;
            for p in s["partitions"].as_array().into_iter().flatten() {
                let mine = p["owner"] == id.as_str() && p["state"] == "serving";
                if mine && p["stream_sequence"].as_u64() > Some(0) {
                    p["snapshot_sequence"].as_u64().filter(|s| *s > 0)?;
                }
            }
        }
        Some(())
    })
    .await;
    assert!(snapshotted.is_some(), "partitions never snapshotted");

    // 1. SIGKILL the engram node owning the most partitions.
    let owners = served(&all).await;
    let mut per_node: HashMap<String, Vec<u32>> = HashMap::new();
    for (p, n) in &owners {
        per_node.entry(n.clone()).or_default().push(*p);
    }
    let (victim, orphans) = per_node.into_iter().max_by_key(|(_, ps)| ps.len()).unwrap();
    let vi = nodes.iter().position(|n| n.id == victim).unwrap();
    let before = ledger.acked.lock().len();
    println!("killing {victim} (owns partitions {orphans:?}); {before} writes acked so far");
    let killed_at = Instant::now();
    nodes[vi].kill();
    let survivors: Vec<(String, u16)> = all
        .iter()
        .filter(|(id, _)| *id != victim)
        .cloned()
        .collect();
    let limit = Duration::from_secs(LEASE_TTL_SECS + 10);
    // When each orphan was first seen served again (looked at until all
    // are, or well past the limit, so that a slow one is measured too).
    let back = parking_lot::Mutex::new(BTreeMap::<u32, Duration>::new());
    let (back_ref, survivors_ref, orphans_ref) = (&back, &survivors, &orphans);
    eventually(limit + Duration::from_secs(20), || async move {
        for (p, _) in served(survivors_ref).await {
            if orphans_ref.contains(&p) {
                back_ref
                    .lock()
                    .entry(p)
                    .or_insert_with(|| killed_at.elapsed());
            }
        }
        (back_ref.lock().len() == orphans_ref.len()).then_some(())
    })
    .await;
    let back = back.into_inner();
    println!("orphaned partitions served again after (s): {back:?}");
    let slow: Vec<_> = orphans
        .iter()
        .filter(|p| back.get(p).is_none_or(|t| *t > limit))
        .collect();
    if !slow.is_empty() {
        dump_logs(&format!(
            "partitions {slow:?} not served again within lease TTL + 10 s ({limit:?}): {back:?}"
        ));
    }
    for line in survivors
        .iter()
        .filter_map(|(id, _)| nodes.iter().find(|n| &n.id == id))
        .flat_map(|n| {
            std::fs::read_to_string(&n.log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("partition served"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| {
            orphans
                .iter()
                .any(|p| l.contains(&format!(" partition={p} ")))
        })
        .collect::<Vec<_>>()
        .iter()
        .rev()
        .take(orphans.len())
    {
        println!("takeover: {}", &line[line.find("partition").unwrap_or(0)..]);
    }
    nodes[vi].start();
    let restarted_http = nodes[vi].http;
    let answered = eventually(Duration::from_secs(60), || async move {
        cluster_status(restarted_http).await
    })
    .await;
    assert!(answered.is_some(), "the restarted node never answered");
    assert!(
        ledger.wait_for_more(1_000, Duration::from_secs(60)).await,
        "writes stopped after the node restarted"
    );

    // 2. SIGKILL the NATS server leading the most partition streams.
    let (leader, led) = busiest_stream_leader(&nats_urls).await;
    let ni = nats.iter().position(|n| n.name == leader).unwrap();
    println!(
        "killing NATS server {leader} (leads {led} of {PARTITIONS} partition streams); {} writes acked so far",
        ledger.acked.lock().len()
    );
    let nats_killed = Instant::now();
    nats[ni].kill();
    // The streams it led elect new leaders among the other two.
    let survivors_urls: Vec<String> = nats_urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != ni)
        .map(|(_, u)| u.clone())
        .collect();
    let (urls_ref, leader_ref) = (&survivors_urls, &leader);
    let elected = eventually(Duration::from_secs(60), || async move {
        let leaders = stream_leaders(urls_ref).await;
        leaders
            .values()
            .all(|l| l.as_ref().is_some_and(|l| l != leader_ref))
            .then_some(())
    })
    .await;
    assert!(
        elected.is_some(),
        "streams without a new leader 60 s after {leader} was killed: {:?}",
        stream_leaders(&survivors_urls).await
    );
    println!(
        "every partition stream has a leader other than {leader} after {:?}",
        nats_killed.elapsed()
    );
    // Writes go on with two of the three NATS servers.
    assert!(
        ledger.wait_for_more(1_000, Duration::from_secs(60)).await,
        "writes never resumed after the NATS server was killed"
    );
    println!(
        "restarting {leader}; {} writes acked so far",
        ledger.acked.lock().len()
    );
    nats[ni].start();
    assert!(
        ledger.wait_for_more(1_000, Duration::from_secs(60)).await,
        "writes stopped after the NATS server was restarted"
    );

    stop.store(true, Ordering::Relaxed);
    {
        // Acks in each second after the NATS kill (the leader elections'
        // pause, for the record).
        let acked = ledger.acked.lock();
        let mut per_second = vec![0usize; 19];
        for a in acked.iter().filter(|a| a.at >= nats_killed) {
            let s = (a.at - nats_killed).as_secs() as usize;
            if let Some(n) = per_second.get_mut(s) {
                *n += 1;
            }
        }
        println!("acks in each second after the NATS kill: {per_second:?}");
    }
    for w in writers {
        w.await.unwrap();
    }
    let acked = ledger.acked.lock().clone();
    let streamed = ledger.streamed.load(Ordering::Relaxed);
    println!(
        "writes acked: {} ({streamed} on streams, which were opened again {} times after breaking), retried attempts: {}, token-checked recalls: {}",
        acked.len(),
        ledger.stream_reconnects.load(Ordering::Relaxed),
        ledger.write_retries.load(Ordering::Relaxed),
        ledger.token_recalls.load(Ordering::Relaxed)
    );
    assert!(streamed >= 100, "the stream writers got {streamed} acks");
    assert!(
        ledger.gave_up.lock().is_empty(),
        "writes never acked: {:?}",
        ledger.gave_up.lock()
    );
    assert!(
        acked.len() > 200,
        "too few writes to mean anything: {}",
        acked.len()
    );

    // Every acked write present exactly once, read through every node.
    let mut want: HashMap<String, HashSet<String>> = HashMap::new();
    for a in &acked {
        assert!(
            want.entry(a.space.clone())
                .or_default()
                .insert(a.id.clone()),
            "the writers acked {} twice",
            a.id
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        let c = client(node.grpc);
        for s in 0..SPACES {
            let space = space_name(s);
            if i > 0 && s % 3 != i % 3 {
                continue; // every space through node 1, a third through each other
            }
            let ids = list_all(&c, &space).await;
            let mut seen = HashSet::new();
            let dupes: Vec<_> = ids.iter().filter(|id| !seen.insert(id.as_str())).collect();
            assert!(
                dupes.is_empty(),
                "{space}: stored more than once: {dupes:?}"
            );
            let expected = want.get(&space).cloned().unwrap_or_default();
            let missing: Vec<_> = expected
                .iter()
                .filter(|id| !seen.contains(id.as_str()))
                .collect();
            assert!(
                missing.is_empty(),
                "{space} via {}: {} acked writes missing, e.g. {:?}",
                node.id,
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            );
            let extra: Vec<_> = seen.iter().filter(|id| !expected.contains(**id)).collect();
            assert!(extra.is_empty(), "{space}: writes nobody acked: {extra:?}");
        }
    }
    let misses = ledger.token_recall_misses.lock().clone();
    assert!(
        misses.is_empty(),
        "{} of {} token-checked recalls missed their write: {:?}",
        misses.len(),
        ledger.token_recalls.load(Ordering::Relaxed),
        &misses[..misses.len().min(5)]
    );

    // One lease holder per (partition, epoch).
    let holders = lease_holders(&logs);
    let mut by_epoch: HashMap<(u32, u64), HashSet<String>> = HashMap::new();
    for (p, e, n) in &holders {
        by_epoch.entry((*p, *e)).or_default().insert(n.clone());
    }
    let doubled: Vec<_> = by_epoch.iter().filter(|(_, n)| n.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "two lease holders for one (partition, epoch): {doubled:?}"
    );
    assert!(holders.len() >= PARTITIONS as usize + orphans.len());
    println!(
        "checked: {} acked writes present exactly once, {} token recalls saw their write, {} lease acquisitions with unique (partition, epoch)",
        acked.len(),
        ledger.token_recalls.load(Ordering::Relaxed),
        holders.len()
    );
}
