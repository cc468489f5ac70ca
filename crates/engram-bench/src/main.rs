//! engram's benchmark programs.
//!
//! - `index` ([`index_bench`]): engram's HNSW on an fvecs data set, measured
//!   like `../shared/tools/hnsw_baseline.py run` measures hnswlib
//!   (`scripts/bench_index.sh` runs both and reports the ratios); the data
//!   set readers are in `engram-testdata`.
//! - `recall-transports` ([`recall_transports`]): recall latency over REST,
//!   gRPC unary, gRPC RecallStream and WebSocket against a running server
//!   (`scripts/bench_recall_transports.sh` starts one and writes the
//!   result file).
//! - `cluster-load` ([`cluster_load`]): acked observations/s and ack and
//!   recall latency against one node or a cluster's nodes
//!   (`scripts/bench_cluster.sh` runs both and writes the ratios).

mod ack_under_recall;
mod cluster_load;
mod filters;
mod index_bench;
mod recall_transports;
mod sync_modes;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "engram-bench", about = "engram benchmark programs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build and measure engram's HNSW index; prints one JSON object.
    Index(index_bench::IndexArgs),
    /// Recall latency per transport against a running server; prints JSON.
    RecallTransports(recall_transports::RecallTransportsArgs),
    /// Ack latency alone and under a concurrent recall load, in process;
    /// prints one JSON object.
    AckUnderRecall(ack_under_recall::AckUnderRecallArgs),
    /// Acked observations/s and ack latency per wal.sync mode, in process;
    /// prints one JSON object.
    SyncModes(sync_modes::SyncModesArgs),
    /// Filtered recall (tags at several selectivities) against an exact
    /// filtered search and against unfiltered recall, in process; prints
    /// one JSON object.
    Filters(filters::FiltersArgs),
    /// Acked observations/s, ack and recall latency over gRPC against
    /// running nodes (one, or a cluster's); prints one JSON object.
    ClusterLoad(cluster_load::ClusterLoadArgs),
}

/// Runs `measure` on a runtime of `threads` workers and prints its JSON.
fn print_json(
    threads: usize,
    measure: impl std::future::Future<Output = anyhow::Result<serde_json::Value>>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let out = rt.block_on(measure)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// A vector of `dim` values uniform in [-1, 1).
fn random_vector(rng: &mut rand::rngs::StdRng, dim: usize) -> Vec<f32> {
    use rand::Rng;
    (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Index(args) => index_bench::run(&args),
        Command::RecallTransports(args) => recall_transports::run(&args),
        Command::AckUnderRecall(args) => ack_under_recall::run(&args),
        Command::SyncModes(args) => sync_modes::run(&args),
        Command::Filters(args) => filters::run(&args),
        Command::ClusterLoad(args) => cluster_load::run(&args),
    }
}
