//! `engram-bench cluster-load`: acked observations/s, ack latency and
//! recall latency over gRPC against one or more running nodes: a single
//! node, or the nodes of a cluster (`scripts/bench_cluster.sh` runs both
//! in one run and writes the ratios).
//!
//! Writers send unary Remember calls round-robin over the nodes for a
//! fixed time; then recalls of stored vectors are asked of a node other
//! than the one that took the write, with the write's consistency token
//! (in cluster mode the recall waits until the owner applied it; on a
//! single node there is no token and nothing to wait for).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use engram_proto::v1 as pb;
use engram_proto::v1::memory_client::MemoryClient;
use rand::SeedableRng;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Args, Debug)]
pub struct ClusterLoadArgs {
    /// gRPC addresses (`host:port`), comma-separated: the nodes to load.
    #[arg(long, value_delimiter = ',')]
    pub grpc: Vec<String>,
    /// Concurrent writers (each one unary call at a time).
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Writes in all (the same data volume on every run, so that recall
    /// latencies compare).
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    /// Most seconds of writing (stops earlier at `count`).
    #[arg(long, default_value_t = 120)]
    pub secs: u64,
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    /// Spaces written (round-robin per writer).
    #[arg(long, default_value_t = 8)]
    pub spaces: usize,
    /// Recalls measured after the writes.
    #[arg(long, default_value_t = 500)]
    pub recalls: usize,
    /// A label for the run in the JSON (e.g. "single" or "cluster").
    #[arg(long, default_value = "run")]
    pub label: String,
}

pub fn run(args: &ClusterLoadArgs) -> anyhow::Result<()> {
    crate::print_json(4, measure(args))
}

fn client(addr: &str) -> anyhow::Result<MemoryClient<Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    Ok(MemoryClient::new(ch).max_decoding_message_size(64 << 20))
}

/// One stored write: space, vector seed, the node that took it, token.
struct Stored {
    space: String,
    seed: u64,
    node: usize,
    token: Option<pb::ConsistencyToken>,
}

fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    crate::random_vector(&mut rng, dim)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    json!({
        "count": ms.len(),
        "p50_ms": percentile(&ms, 0.50),
        "p90_ms": percentile(&ms, 0.90),
        "p99_ms": percentile(&ms, 0.99),
        "max_ms": ms.last().copied().unwrap_or(0.0),
    })
}

async fn measure(args: &ClusterLoadArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(!args.grpc.is_empty(), "--grpc names no node");
    let clients: Vec<_> = args
        .grpc
        .iter()
        .map(|a| client(a))
        .collect::<anyhow::Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let clients = clients.clone();
        let stop = stop.clone();
        let issued = issued.clone();
        let count = args.count;
        let (dim, spaces) = (args.dim, args.spaces);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut acked_at = Vec::new();
            let mut stored = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && issued.fetch_add(1, Ordering::Relaxed) < count {
                n += 1;
                let node = (w + n as usize) % clients.len();
                let space = format!("bench-{}", (w + n as usize) % spaces);
                let seed = (w as u64) << 40 | n;
                let t = Instant::now();
                let r = clients[node]
                    .clone()
                    .remember(pb::RememberRequest {
                        memory_space_id: space.clone(),
                        episode: Some(pb::Episode {
                            id: format!("w{w}-{n}"),
                            what: "benchmark observation".to_owned(),
                            embedding: vector(seed, dim),
                            ..Default::default()
                        }),
                        priority: 0,
                    })
                    .await;
                match r {
                    Ok(r) => {
                        acked_at.push(started.elapsed().as_secs() as usize);
                        latencies.push(t.elapsed().as_secs_f64() * 1e3);
                        stored.push(Stored {
                            space,
                            seed,
                            node,
                            token: r.into_inner().token,
                        });
                    }
                    Err(e) => errors.push(format!("{:?}: {}", e.code(), e.message())),
                }
            }
            (latencies, stored, errors, acked_at)
        }));
    }
    let limit = tokio::time::sleep(Duration::from_secs(args.secs));
    tokio::pin!(limit);
    let mut tasks = tasks;
    let mut results = Vec::new();
    for t in tasks.iter_mut() {
        tokio::select! {
            r = &mut *t => results.push(r?),
            _ = &mut limit => {
                stop.store(true, Ordering::Relaxed);
                results.push(t.await?);
            }
        }
    }
    let mut latencies = Vec::new();
    let mut stored = Vec::new();
    let mut errors = Vec::new();
    let mut per_second = vec![0u64; args.secs as usize + 60];
    for (l, s, e, at) in results {
        latencies.extend(l);
        stored.extend(s);
        errors.extend(e);
        for sec in at {
            if let Some(n) = per_second.get_mut(sec) {
                *n += 1;
            }
        }
    }
    per_second.truncate(started.elapsed().as_secs() as usize + 1);
    let elapsed = started.elapsed().as_secs_f64();
    let acked = latencies.len();

    // Recalls of stored writes, on another node, with the write's token.
    let mut recall_ms = Vec::new();
    let mut found = 0usize;
    let step = (stored.len() / args.recalls.max(1)).max(1);
    for s in stored.iter().step_by(step).take(args.recalls) {
        let node = (s.node + 1) % clients.len();
        let t = Instant::now();
        let r = clients[node]
            .clone()
            .recall(pb::RecallRequest {
                memory_space_id: s.space.clone(),
                cue: Some(pb::Cue {
                    embedding: vector(s.seed, args.dim),
                    max_results: 10,
                    ..Default::default()
                }),
                after: s.token,
                ..Default::default()
            })
            .await?
            .into_inner();
        recall_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let id = format!("w{}-{}", s.seed >> 40, s.seed & ((1 << 40) - 1));
        if r.memories
            .first()
            .and_then(|m| m.episode.as_ref())
            .is_some_and(|e| e.id == id)
        {
            found += 1;
        }
    }
    Ok(json!({
        "label": args.label,
        "nodes": args.grpc.len(),
        "writers": args.writers,
        "dim": args.dim,
        "spaces": args.spaces,
        "seconds": elapsed,
        "acked": acked,
        "errors": errors.len(),
        "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
        "acked_per_sec": acked as f64 / elapsed,
        "ack_latency": summary(latencies),
        "acked_each_second": per_second,
        "recall_latency": summary(recall_ms),
        "recalls_finding_their_write": found,
    }))
}
