//! Ack latency with and without a concurrent recall load, in process: one
//! writer remembers observations one at a time (each waits for its ack)
//! while `recall_threads` threads recall in a loop, then the same writer
//! runs alone. Ack latency here is the engine's own path (admission, group
//! commit, apply, answer); a recall that blocks the commit thread (a lock
//! held across its index search) shows up as the difference.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_core::wal::SyncPolicy;
use engram_core::{Cue, Engine, EngineConfig, EpisodeInput};
use rand::SeedableRng;
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct AckUnderRecallArgs {
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    /// Memories stored (and indexed) before measuring.
    #[arg(long, default_value_t = 20_000)]
    pub memories: usize,
    /// Acks measured per phase.
    #[arg(long, default_value_t = 3000)]
    pub acks: usize,
    /// Threads recalling in a loop during the loaded phase.
    #[arg(long, default_value_t = 1)]
    pub recall_threads: usize,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Indexing workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

pub fn run(args: &AckUnderRecallArgs) -> anyhow::Result<()> {
    crate::print_json(1, measure(args))
}

fn episode(embedding: Vec<f32>) -> EpisodeInput {
    EpisodeInput {
        what: "bench".into(),
        embedding,
        ..Default::default()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Remembers `n` observations one after another; their latencies in ms.
async fn acks(engine: &Engine, n: usize, dim: usize, seed: u64) -> anyhow::Result<Vec<f64>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let v = crate::random_vector(&mut rng, dim);
        let t = Instant::now();
        engine.remember("bench", episode(v)).await?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
        // A writer that also does other work: ~1 ms between observations,
        // so the indexer keeps up and the queue stays near empty.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn summary(lat: &[f64]) -> Value {
    json!({
        "acks": lat.len(),
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "p999_ms": percentile(lat, 0.999),
        "max_ms": lat[lat.len() - 1],
    })
}

async fn measure(args: &AckUnderRecallArgs) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let mut cfg = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        workers: args.workers,
        snapshot_interval_secs: 0,
        metrics: false,
        ..EngineConfig::default()
    };
    // No fsync: the measured path is the engine's, not the disk's.
    cfg.wal.sync = SyncPolicy::None;
    let engine = Engine::open(cfg)?;
    engine.create_space("bench", Some(args.dim)).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut pending = Vec::new();
    for _ in 0..args.memories {
        let v = crate::random_vector(&mut rng, args.dim);
        pending.push(engine.remember("bench", episode(v)));
        if pending.len() == 256 {
            futures::future::try_join_all(pending.drain(..)).await?;
        }
    }
    futures::future::try_join_all(pending.drain(..)).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while engine.queue_depth() > 0 {
        anyhow::ensure!(Instant::now() < deadline, "indexing did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Warm-up, then alone, then under recall load.
    acks(&engine, 300, args.dim, 2).await?;
    let alone = acks(&engine, args.acks, args.dim, 3).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let recalls = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..args.recall_threads)
        .map(|t| {
            let (engine, stop, recalls) = (engine.clone(), stop.clone(), recalls.clone());
            let (dim, k) = (args.dim, args.k);
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(100 + t as u64);
                while !stop.load(Ordering::Relaxed) {
                    let cue = Cue {
                        embedding: crate::random_vector(&mut rng, dim),
                        max_results: Some(k),
                        similarity_threshold: None,
                        when_from: None,
                        when_to: None,
                        ef_search: None,
                        filter: Default::default(),
                        recency_half_life_secs: None,
                    };
                    engine.recall("bench", cue).expect("recall");
                    recalls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    let loaded = acks(&engine, args.acks, args.dim, 4).await?;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("recall thread");
    }
    engine.shutdown();
    Ok(json!({
        "benchmark": "ack latency with and without concurrent recalls (in process, wal.sync = none)",
        "dim": args.dim,
        "memories": args.memories,
        "recall_threads": args.recall_threads,
        "indexing_workers": args.workers,
        "k": args.k,
        "alone": summary(&alone),
        "under_recall_load": summary(&loaded),
        "recalls_per_second_during_load": recalls.load(Ordering::Relaxed) as f64 / secs,
    }))
}
