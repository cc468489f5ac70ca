//! What recording metrics costs at full load: the same workload with
//! `metrics = true` and `metrics = false`, alternated in one run (A B A B …)
//! so drift on a shared machine hits both alike; the result is the ratio
//! of median throughputs.
//!
//! Workload per round: a stream session pipelines `N` observations (real
//! 384-d MiniLM vectors when `../shared/data` is there) through admission,
//! group commit (WAL sync `none`, so the disk's noise stays out) and the
//! worker pool, and the round ends when the last one is indexed.
//! Throughput = N / round time.
//!
//! `cargo bench -p engram-core --bench metrics_overhead [-- ROUNDS]`

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use engram_core::config::WalConfig;
use engram_core::wal::SyncPolicy;
use engram_core::{Engine, EngineConfig, EpisodeInput, Priority};

const N: usize = 8000;

fn vectors() -> Vec<Vec<f32>> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/minilm-dev/base.fvecs");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d = i32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    bytes
        .chunks_exact(4 * (d + 1))
        .take(N)
        .map(|c| {
            c[4..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        })
        .collect()
}

fn round(rt: &tokio::runtime::Runtime, vecs: &[Vec<f32>], metrics: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        data_dir: dir.path().to_owned(),
        metrics,
        snapshot_interval_secs: 0,
        wal: WalConfig {
            sync: SyncPolicy::None,
            ..WalConfig::default()
        },
        ..EngineConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let (session, _) = engine.open_session("bench", None).await.unwrap();
        let mut pending = VecDeque::new();
        for (i, v) in vecs.iter().enumerate() {
            let input = EpisodeInput {
                what: format!("observation {i}"),
                embedding: v.clone(),
                ..Default::default()
            };
            pending.push_back(session.observe(i as u64 + 1, input, Priority::Normal));
            if pending.len() >= 512 {
                assert!(pending.pop_front().unwrap().await.is_accepted());
            }
        }
        for p in pending {
            assert!(p.await.is_accepted());
        }
    });
    while engine.queue_depth() > 0 {
        std::thread::park_timeout(Duration::from_micros(200));
    }
    let took = started.elapsed();
    if metrics {
        // The recording happened: make sure it is really there.
        let text = engine.render_metrics().unwrap();
        assert!(text.contains(&format!(
            "engram_streaming_observations_total{{priority=\"normal\",space_id=\"bench\"}} {N}"
        )));
    }
    engine.shutdown();
    N as f64 / took.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let vecs = vectors();
    round(&rt, &vecs, true); // warm-up
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first so order effects cancel.
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for m in order {
            let t = round(&rt, &vecs, m);
            if m {
                on.push(t)
            } else {
                off.push(t)
            }
        }
    }
    let (mon, moff) = (median(on.clone()), median(off.clone()));
    let overhead = (moff - mon) / moff * 100.0;
    println!("metrics overhead: {N} observations x {rounds} rounds, 384-d, WAL sync none, workers = cores");
    println!("  recording on : median {mon:.0} obs/s  {on:.0?}");
    println!("  recording off: median {moff:.0} obs/s  {off:.0?}");
    println!("  overhead     : {overhead:+.2}% (negative: on was faster, i.e. noise)");
    println!("{}", serde_json_line(mon, moff, overhead, rounds));
}

fn serde_json_line(on: f64, off: f64, overhead: f64, rounds: usize) -> String {
    format!(
        "{{\"bench\":\"metrics_overhead\",\"n\":{N},\"rounds\":{rounds},\"on_obs_per_s\":{on:.1},\"off_obs_per_s\":{off:.1},\"overhead_percent\":{overhead:.3}}}"
    )
}
