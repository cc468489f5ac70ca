//! Crash durability: the real server in a subprocess takes remembers from
//! concurrent HTTP clients and is killed with SIGKILL at random moments;
//! after every restart each acked memory is recalled by its own embedding as
//! top-1, and nothing that was never sent appears.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::json;
use support::*;

const DIM: usize = 32;
const CLIENTS: usize = 8;

fn vector_for(id: u64) -> Vec<f32> {
    random_vectors(1, DIM, 1_000_000 + id).remove(0)
}

#[derive(Clone, Default)]
struct Ledger {
    acked: BTreeSet<u64>,
    /// Sent, but the connection died before an answer: may or may not be stored.
    in_doubt: BTreeSet<u64>,
}

/// Streams remembers from `CLIENTS` tasks until `stop` is set or the server dies.
async fn load(
    base: String,
    next_id: Arc<AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (base, next_id, ledger, stop) =
            (base.clone(), next_id.clone(), ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
            while !stop.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let body = json!({"id": format!("m{id}"), "what": format!("memory {id}"), "embedding": vector_for(id)});
                match client.post(format!("{base}/v1/spaces/crash/memories")).json(&body).send().await {
                    Ok(r) if r.status() == 201 => {
                        ledger.lock().unwrap().acked.insert(id);
                    }
                    // Shutting down: refused, so certainly not stored.
                    Ok(r) if r.status() == 503 => return,
                    Ok(r) => panic!("unexpected status {} for m{id}", r.status()),
                    Err(_) => {
                        ledger.lock().unwrap().in_doubt.insert(id);
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every acked memory is top-1 for its own embedding; the space holds exactly
/// the acked ones plus in-doubt ones that made it.
async fn verify(server: &ServerProcess, ledger: &Ledger) {
    let client = reqwest::Client::new();
    let acked: Vec<u64> = ledger.acked.iter().copied().collect();
    let missing = Arc::new(Mutex::new(Vec::new()));
    let chunks: Vec<Vec<u64>> = acked
        .chunks(acked.len().div_ceil(CLIENTS).max(1))
        .map(|c| c.to_vec())
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let (client, url, missing) = (
            client.clone(),
            server.url("/v1/spaces/crash/recall"),
            missing.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                let (s, b) = call(
                    &client,
                    Method::POST,
                    &url,
                    Some(json!({"embedding": vector_for(id), "max_results": 1})),
                )
                .await;
                assert_eq!(s, 200, "{b}");
                if b["memories"][0]["episode"]["id"] != format!("m{id}") {
                    let (_, b2) = call(
                        &client,
                        Method::POST,
                        &url,
                        Some(json!({"embedding": vector_for(id), "max_results": 3})),
                    )
                    .await;
                    eprintln!("DEBUG missing m{id}: {b2}");
                    missing.lock().unwrap().push(id);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let missing = missing.lock().unwrap().clone();
    assert!(
        missing.is_empty(),
        "{} acked memories lost after SIGKILL, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );

    let mut in_doubt_present = 0;
    for id in &ledger.in_doubt {
        let (_, b) = call(
            &client,
            Method::POST,
            &server.url("/v1/spaces/crash/recall"),
            Some(json!({"embedding": vector_for(*id), "max_results": 1})),
        )
        .await;
        if b["memories"][0]["episode"]["id"] == format!("m{id}") {
            in_doubt_present += 1;
        }
    }
    let (_, info) = call(&client, Method::GET, &server.url("/v1/spaces/crash"), None).await;
    let count = info["count"].as_u64().unwrap_or(0);
    assert_eq!(
        count,
        (ledger.acked.len() + in_doubt_present) as u64,
        "the space holds something that was never acked or in flight: {info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acked_memory() {
    let seed: u64 = std::env::var("ENGRAM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed {seed} (set ENGRAM_TEST_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let next_id = Arc::new(AtomicU64::new(0));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut kills = 0;
    while kills < 4 || ledger.lock().unwrap().acked.len() < 5000 {
        assert!(
            kills < 40,
            "too few acks: {} after {kills} kills",
            ledger.lock().unwrap().acked.len()
        );
        let mut server = ServerProcess::start(dir.path(), &["--snapshot-interval-secs", "1"]);
        server.wait_ready().await;
        let seen = ledger.lock().unwrap().clone();
        verify(&server, &seen).await;
        let stop = Arc::new(AtomicBool::new(false));
        let loader = tokio::spawn(load(
            server.base.clone(),
            next_id.clone(),
            ledger.clone(),
            stop.clone(),
        ));
        let before = ledger.lock().unwrap().acked.len();
        let until = std::time::Instant::now() + Duration::from_millis(rng.gen_range(300..2500));
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        // Kill at a random moment, but only once this round has acked something.
        while std::time::Instant::now() < until || ledger.lock().unwrap().acked.len() == before {
            poll.tick().await;
        }
        server.kill9();
        kills += 1;
        stop.store(true, Ordering::Relaxed);
        loader.await.unwrap();
        let l = ledger.lock().unwrap().clone();
        println!(
            "kill {kills}: {} acked, {} in doubt",
            l.acked.len(),
            l.in_doubt.len()
        );
    }
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let l = ledger.lock().unwrap().clone();
    assert!(l.acked.len() >= 5000);
    verify(&server, &l).await;
    let all: HashSet<u64> = l.acked.union(&l.in_doubt).copied().collect();
    assert_eq!(
        all.len(),
        l.acked.len() + l.in_doubt.len(),
        "an id was both acked and in doubt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_shuts_down_in_order_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let next_id = Arc::new(AtomicU64::new(0));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(
        server.base.clone(),
        next_id.clone(),
        ledger.clone(),
        stop.clone(),
    ));
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    while ledger.lock().unwrap().acked.len() < 1000 {
        poll.tick().await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = server.terminate(Duration::from_secs(30));
        (s, server)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    let log = status.1.log_text();
    assert!(
        log.contains("snapshot written") && log.contains("shutdown complete"),
        "log:\n{log}"
    );
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();

    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    assert!(
        server.log_text().contains("wal_records=0"),
        "the shutdown snapshot covers the whole WAL:\n{}",
        server.log_text()
    );
    let seen = ledger.lock().unwrap().clone();
    verify(&server, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_10k_queued_restarts_with_all_10k_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &["--fault-injection"]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let (s, _) = call(
        &client,
        Method::POST,
        &server.url("/v1/admin/indexing/pause"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let next_id = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url, next_id) = (
            client.clone(),
            server.url("/v1/spaces/crash/memories"),
            next_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                if id >= 10_000 {
                    return;
                }
                let (s, b) = call(
                    &client,
                    Method::POST,
                    &url,
                    Some(episode(&format!("m{id}"), &vector_for(id))),
                )
                .await;
                assert_eq!(s, 201, "{b}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, info) = call(&client, Method::GET, &server.url("/v1/spaces/crash"), None).await;
    assert_eq!(
        (info["count"].as_u64(), info["queue_depth"].as_u64()),
        (Some(10_000), Some(10_000)),
        "{info}"
    );

    let grace = Duration::from_secs(30);
    let started = std::time::Instant::now();
    let (status, server) = tokio::task::spawn_blocking(move || (server.terminate(grace), server))
        .await
        .unwrap();
    let took = started.elapsed();
    println!("shutdown with 10K queued took {took:?}");
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        server.log_text()
    );
    assert!(
        took < grace,
        "shutdown took {took:?}, over the {grace:?} grace period"
    );
    drop(server);

    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let ledger = Ledger {
        acked: (0..10_000).collect(),
        in_doubt: BTreeSet::new(),
    };
    verify(&server, &ledger).await;
}
