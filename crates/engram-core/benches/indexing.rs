//! Indexing throughput of the real engine: worker count x batch size.
//!
//! Each measurement opens an engine with a fixed batch size (min = max),
//! holds indexing, remembers `N` real 384-d MiniLM vectors (from
//! `../shared/data/minilm-dev`, or random ones if it is absent), then
//! times from resuming indexing until the queue is empty. Throughput is
//! `N / time`, reported by criterion as elements per second.
//!
//! `cargo bench -p engram-core --bench indexing`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engram_core::wal::SyncPolicy;
use engram_core::{Engine, EngineConfig, EpisodeInput};

const N: usize = 4000;

fn vectors() -> Vec<Vec<f32>> {
    if let Some(data) = engram_testdata::minilm_dev(N) {
        return data.into_iter().map(|(_, v)| v).collect();
    }
    eprintln!(
        "{}/minilm-dev not found: using random vectors",
        engram_testdata::shared_data().display()
    );
    let mut x = 0x9e37_79b9_u32;
    (0..N)
        .map(|_| {
            (0..384)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as f32 / u32::MAX as f32 - 0.5
                })
                .collect()
        })
        .collect()
}

fn run_once(
    rt: &tokio::runtime::Runtime,
    vecs: &[Vec<f32>],
    workers: usize,
    batch: usize,
) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().to_owned(),
        workers,
        min_batch: batch,
        max_batch: batch,
        snapshot_interval_secs: 0,
        wal: engram_core::config::WalConfig {
            sync: SyncPolicy::None,
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    let engine = Engine::open(config).unwrap();
    engine.pause_indexing();
    rt.block_on(async {
        for (i, v) in vecs.iter().enumerate() {
            let input = EpisodeInput {
                id: Some(i.to_string()),
                embedding: v.clone(),
                ..Default::default()
            };
            engine.remember("bench", input).await.unwrap();
        }
    });
    let started = Instant::now();
    engine.resume_indexing();
    while engine.queue_depth() > 0 {
        std::thread::park_timeout(Duration::from_micros(200));
    }
    let took = started.elapsed();
    engine.shutdown();
    took
}

fn indexing(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let vecs = vectors();
    let mut group = c.benchmark_group("indexing");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(N as u64));
    for workers in [1, 2] {
        for batch in [1, 10, 100, 1000] {
            group.bench_with_input(
                BenchmarkId::new(format!("workers={workers}"), format!("batch={batch}")),
                &(workers, batch),
                |b, &(workers, batch)| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| run_once(&rt, &vecs, workers, batch))
                            .sum()
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, indexing);
criterion_main!(benches);
