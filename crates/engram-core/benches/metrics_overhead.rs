//! What recording metrics costs: the same workload with `metrics = true`
//! and `metrics = false`, run as back-to-back pairs in one process (the
//! order inside a pair alternates) so drift on a shared machine hits both
//! alike. Each pair gives one overhead sample `(off - on) / off`; the
//! result is their mean with a 95% confidence interval, and the target
//! (< 1%) is met only when the interval's upper end is below it.
//!
//! Two workloads, each a stream session pipelining `N` real 384-d MiniLM
//! observations (`../shared/data/minilm-dev`), WAL sync `none` so the
//! disk's noise stays out:
//!
//! - `indexed`: admission → group commit → ack → worker pool; a round ends
//!   when the last observation is indexed. This is the server's throughput
//!   at full load, the figure the target is about.
//! - `acked`: indexing paused (queue large enough to hold the round), a
//!   round ends at the last ack. No HNSW work dilutes the recording here,
//!   so it is the stricter test of the per-observation hot path.
//!
//! `cargo bench -p engram-core --bench metrics_overhead [-- PAIRS] [indexed|acked]`

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use engram_core::config::WalConfig;
use engram_core::queue::QueueConfig;
use engram_core::wal::SyncPolicy;
use engram_core::{Engine, EngineConfig, EpisodeInput, Priority};

/// Observations per round of `indexed` (the distinct vectors read).
const N: usize = 8000;
/// Observations per round of `acked`, which is ~20x faster: the vectors
/// are cycled so a round is long enough to measure.
const N_ACKED: usize = 64_000;

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Indexed,
    Acked,
}

impl Workload {
    fn observations(self) -> usize {
        match self {
            Workload::Indexed => N,
            Workload::Acked => N_ACKED,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Indexed => "indexed",
            Workload::Acked => "acked",
        }
    }
}

fn vectors() -> Vec<Vec<f32>> {
    let data = engram_testdata::minilm_dev(N).unwrap_or_else(|| {
        panic!(
            "{}/minilm-dev not found: this benchmark needs the real vectors",
            engram_testdata::shared_data().display()
        )
    });
    data.into_iter().map(|(_, v)| v).collect()
}

/// One round; returns observations per second.
fn round(rt: &tokio::runtime::Runtime, vecs: &[Vec<f32>], work: Workload, metrics: bool) -> f64 {
    let n = work.observations();
    let dir = tempfile::tempdir().unwrap();
    let defaults = QueueConfig::default();
    let engine = Engine::open(EngineConfig {
        data_dir: dir.path().to_owned(),
        metrics,
        snapshot_interval_secs: 0,
        wal: WalConfig {
            sync: SyncPolicy::None,
            ..WalConfig::default()
        },
        queue: match work {
            Workload::Indexed => defaults,
            // Holds the whole round well below the ADAPTIVE level.
            Workload::Acked => QueueConfig {
                capacity: defaults.capacity.max(2 * N_ACKED),
                per_space_share: 1.0,
                ..defaults
            },
        },
        ..EngineConfig::default()
    })
    .unwrap();
    if work == Workload::Acked {
        engine.pause_indexing();
    }
    let started = Instant::now();
    rt.block_on(async {
        let (session, _) = engine.open_session("bench", None).await.unwrap();
        let mut pending = VecDeque::new();
        for (i, v) in vecs.iter().cycle().take(n).enumerate() {
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
    if work == Workload::Indexed {
        while engine.queue_depth() > 0 {
            std::thread::park_timeout(Duration::from_micros(200));
        }
    }
    let took = started.elapsed();
    if metrics {
        // The recording happened: make sure it is really there.
        let text = engine.render_metrics().unwrap();
        assert!(text.contains(&format!(
            "engram_streaming_observations_total{{priority=\"normal\",space_id=\"bench\"}} {n}"
        )));
    } else {
        assert!(engine.render_metrics().is_none());
    }
    if work == Workload::Acked {
        assert_eq!(engine.queue_depth(), n);
    }
    engine.shutdown();
    n as f64 / took.as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Mean and the half-width of its 95% confidence interval (Student t).
fn mean_ci95(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, t975(v.len() - 1) * (var / n).sqrt())
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

fn main() {
    let pairs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30)
        .max(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let vecs = vectors();
    let workers = EngineConfig::default().effective_workers();
    println!(
        "metrics overhead: 384-d observations, {pairs} on/off pairs per workload, WAL sync none, \
         {workers} indexing workers"
    );
    let only = std::env::args()
        .skip(1)
        .find(|a| a == "indexed" || a == "acked");
    for work in [Workload::Indexed, Workload::Acked] {
        if only.as_deref().is_some_and(|o| o != work.name()) {
            continue;
        }
        round(&rt, &vecs, work, true); // warm-up
        let (mut on, mut off, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
        for p in 0..pairs {
            // Alternate which goes first so order effects cancel.
            let order = if p % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            let mut pair = [0.0; 2];
            for m in order {
                pair[usize::from(m)] = round(&rt, &vecs, work, m);
            }
            let [t_off, t_on] = pair;
            on.push(t_on);
            off.push(t_off);
            overhead.push((t_off - t_on) / t_off * 100.0);
        }
        let (mean, half) = mean_ci95(&overhead);
        let verdict = if mean + half < 1.0 {
            "under 1%"
        } else {
            "NOT shown under 1%"
        };
        println!(
            "{} ({} observations per round):",
            work.name(),
            work.observations()
        );
        println!("  recording on : median {:.0} obs/s", median(&on));
        println!("  recording off: median {:.0} obs/s", median(&off));
        println!(
            "  overhead     : mean {mean:+.2}% (95% CI {:+.2}% .. {:+.2}%), median of pairs {:+.2}% -> {verdict}",
            mean - half,
            mean + half,
            median(&overhead)
        );
        println!(
            "{{\"bench\":\"metrics_overhead\",\"workload\":\"{}\",\"n\":{},\"pairs\":{pairs},\
             \"on_median_obs_per_s\":{:.1},\"off_median_obs_per_s\":{:.1},\
             \"overhead_mean_percent\":{mean:.3},\"overhead_ci95_low\":{:.3},\"overhead_ci95_high\":{:.3}}}",
            work.name(),
            work.observations(),
            median(&on),
            median(&off),
            mean - half,
            mean + half
        );
    }
}
