//! What each `wal.sync` mode costs: acknowledged observations per second
//! and ack latency (submit to durable answer) for `always`, `interval` and
//! `none`, in process, one after another on the same machine and disk, with
//! the same pipelined writer (a window of observations in flight).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use engram_core::wal::SyncPolicy;
use engram_core::{Engine, EngineConfig, EpisodeInput, Priority};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct SyncModesArgs {
    #[arg(long, default_value_t = 768)]
    pub dim: usize,
    /// Seconds of writing per mode.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Observations in flight (the writer's window).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Directory for the data (a temporary one inside it per mode); its
    /// disk is what `always` pays for.
    #[arg(long, default_value = ".")]
    pub dir: std::path::PathBuf,
}

pub fn run(args: &SyncModesArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut modes = Vec::new();
    for mode in [SyncPolicy::Always, SyncPolicy::Interval, SyncPolicy::None] {
        modes.push(rt.block_on(measure(args, mode))?);
    }
    let out = json!({
        "benchmark": "acked observations/s and ack latency per wal.sync mode (in process)",
        "dim": args.dim,
        "secs_per_mode": args.secs,
        "window": args.window,
        "modes": modes,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure(args: &SyncModesArgs, mode: SyncPolicy) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir_in(&args.dir)?;
    let mut cfg = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        workers: 1,
        snapshot_interval_secs: 0,
        metrics: false,
        ..EngineConfig::default()
    };
    cfg.wal.sync = mode;
    // Room for every observation of the run: admission control is not
    // what is measured.
    cfg.queue.capacity = 10_000_000;
    let engine = Engine::open(cfg)?;
    engine.create_space("bench", Some(args.dim)).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let vectors: Vec<Vec<f32>> = (0..256)
        .map(|_| (0..args.dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
        .collect();
    // Indexing 768-d vectors is slower than acking them; it is paused so
    // the numbers are the write path's, not the indexer's share of the CPU.
    engine.pause_indexing();
    let mut in_flight = VecDeque::new();
    let mut latencies = Vec::new();
    let started = Instant::now();
    let run_for = Duration::from_secs(args.secs);
    let mut n = 0usize;
    while started.elapsed() < run_for {
        while in_flight.len() < args.window {
            let input = EpisodeInput {
                what: "bench".into(),
                embedding: vectors[n % vectors.len()].clone(),
                ..Default::default()
            };
            in_flight.push_back((
                Instant::now(),
                engine.submit_remember("bench", input, Priority::Normal)?,
            ));
            n += 1;
        }
        let (at, ack) = in_flight.pop_front().expect("window is not empty");
        ack.await?;
        latencies.push(at.elapsed().as_secs_f64() * 1e3);
    }
    for (at, ack) in in_flight {
        ack.await?;
        latencies.push(at.elapsed().as_secs_f64() * 1e3);
    }
    let secs = started.elapsed().as_secs_f64();
    engine.resume_indexing();
    engine.shutdown();
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "mode": format!("{mode:?}").to_lowercase(),
        "acked": latencies.len(),
        "acked_per_second": latencies.len() as f64 / secs,
        "ack_p50_ms": percentile(&latencies, 0.5),
        "ack_p99_ms": percentile(&latencies, 0.99),
    }))
}
