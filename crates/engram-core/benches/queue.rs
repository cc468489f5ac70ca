//! Throughput of the indexing queue: reserve + push + pop_batch + complete,
//! single-threaded and with 2 producer and 2 worker threads, for worker batch
//! sizes 1, 10 and 100. Tasks are plain integers, so this measures the
//! queue's own cost (locking, lanes, wake-ups), not indexing.
//!
//! `cargo bench -p engram-core --bench queue` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engram_core::queue::{IndexQueue, Priority, QueueConfig};

/// Tasks per measured iteration.
const TASKS: u64 = 1_000;
const BATCHES: [usize; 3] = [1, 10, 100];
/// Spaces per producer: a few, so that batches come from several spaces.
const SPACES_PER_PRODUCER: u64 = 4;
/// How long an idle worker waits before checking whether it is done.
const POLL: Duration = Duration::from_millis(1);

type Q = IndexQueue<u64, u64>;

/// Reserves and pushes, retrying (after a yield) while the queue is full.
fn put(q: &Arc<Q>, space: u64, task: u64) {
    loop {
        match q.reserve(&space, Priority::Normal) {
            Ok(r) => return r.push(task),
            Err(_) => std::thread::yield_now(),
        }
    }
}

fn complete(q: &Q, space: &u64, tasks: &[(Priority, u64)]) {
    let prios: Vec<Priority> = tasks.iter().map(|t| t.0).collect();
    q.complete(space, &prios, prios.len());
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue/single_thread");
    g.throughput(Throughput::Elements(TASKS));
    for batch in BATCHES {
        let q = Arc::new(Q::new(QueueConfig::default(), 1));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                for i in 0..TASKS {
                    put(&q, i % SPACES_PER_PRODUCER, i);
                }
                while let Some(got) = q.pop_batch(0, batch, Duration::ZERO) {
                    black_box(&got.tasks);
                    complete(&q, &got.space, &got.tasks);
                }
            })
        });
    }
    g.finish();
}

/// 2 producers (own spaces each) and 2 workers, until all `total` tasks are
/// completed; the clock starts when all four threads are ready.
fn run_concurrent(q: &Arc<Q>, batch: usize, total: u64) -> Duration {
    let done = AtomicU64::new(0);
    let ready = Barrier::new(5);
    std::thread::scope(|s| {
        for p in 0..2u64 {
            let (ready, q) = (&ready, q);
            s.spawn(move || {
                ready.wait();
                for i in 0..total / 2 {
                    put(q, p * SPACES_PER_PRODUCER + i % SPACES_PER_PRODUCER, i);
                }
            });
        }
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (ready, q, done) = (&ready, q, &done);
                s.spawn(move || {
                    ready.wait();
                    while done.load(Ordering::Acquire) < total {
                        if let Some(got) = q.pop_batch(w, batch, POLL) {
                            complete(q, &got.space, &got.tasks);
                            done.fetch_add(got.tasks.len() as u64, Ordering::AcqRel);
                        }
                    }
                })
            })
            .collect();
        ready.wait();
        let start = Instant::now();
        // Workers return once everything is completed (producers are done by then).
        for w in workers {
            w.join().expect("worker panicked");
        }
        start.elapsed()
    })
}

fn two_producers_two_workers(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue/2_producers_2_workers");
    g.throughput(Throughput::Elements(TASKS));
    for batch in BATCHES {
        let q = Arc::new(Q::new(QueueConfig::default(), 2));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter_custom(|iters| run_concurrent(&q, batch, iters * TASKS))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // Each iteration is ~0.1-0.5 ms, so short windows give stable numbers
    // and keep the whole run to seconds. Plots are off: drawing them takes
    // ~10 s per benchmark on a small machine; the estimates are still written
    // under target/criterion/ and compared with the previous run.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .without_plots();
    targets = single_thread, two_producers_two_workers
}
criterion_main!(benches);
