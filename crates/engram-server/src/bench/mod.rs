//! `engram bench`: an end-to-end load generator against a running
//! `engram serve`, through the real gRPC client.
//!
//! It streams a data set (an fvecs folder or generated clustered vectors)
//! over N observe streams, open loop or at a target rate, recalls at a set
//! rate meanwhile, waits until everything is indexed, then runs the final
//! queries for recall@10 against exact ground truth, and prints one table
//! (and, with `--json`, the same numbers with the parameters).
//!
//! - `data`: the vectors and their ground truth (read or generated).
//! - `load`: the observe streams, the concurrent recalls, the visibility
//!   probes.
//! - `scrape`: the server's `/metrics` (RSS, CPU, index lag).
//! - `report`: percentiles, the report and its table.
//! - `progress`: phase lines and the progress bar on stderr.
//!
//! The benchmarked space is deleted and created again with the data's
//! dimension, so the ids and the ground truth describe exactly what is in
//! it.

mod data;
mod load;
mod progress;
mod report;
mod scrape;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use engram_client::{cue, ClientError, StreamingClient};
use tokio::sync::{oneshot, watch};

use data::{DataSet, K};
use load::{Counters, StreamOutcome, StreamPlan};
use progress::Progress;
use report::{Latency, Machine, Params, Report, Server};
use scrape::{Scraper, ServerSample};

/// How often the progress bar is redrawn and `/metrics` scraped for the
/// index lag while the run goes on.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often `DescribeSpace` is asked whether everything is indexed.
const INDEXED_POLL: Duration = Duration::from_millis(20);

/// `engram bench`: stream a data set into a running server and measure.
#[derive(clap::Args, Debug, Clone)]
#[command(group(
    clap::ArgGroup::new("source").required(true).args(["data", "generate"])
))]
pub struct BenchArgs {
    /// The server's gRPC address.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:50051")]
    pub grpc: String,
    /// The server's HTTP address, for /metrics (RSS, CPU, index lag); the
    /// run goes on without those numbers when it does not answer.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub http: String,
    /// API key for a server started with --api-keys: sent on every gRPC
    /// call and on the /metrics scrape (it needs write and admin on
    /// --space to replace it; /metrics needs the [metrics] key or an admin
    /// key on every space, else the run goes on without server numbers).
    #[arg(
        long,
        env = "ENGRAM_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// The space to stream into, created with the data's dimension. One
    /// that already holds memories is refused unless --replace is given
    /// (the run deletes and re-creates it, so that its ids and ground truth
    /// are exactly what is in the space).
    #[arg(long, default_value = "bench")]
    pub space: String,
    /// Allow deleting an existing --space that holds memories.
    #[arg(long)]
    pub replace: bool,
    /// A folder with base.fvecs, optionally query.fvecs and
    /// groundtruth.ivecs (ground truth is computed when absent).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Generate N clustered unit vectors of --dim dimensions instead of
    /// reading --data (1,000 Gaussian centres, log-normal popularity,
    /// per-cluster spread, like ../shared/tools/hnsw_baseline.py gen).
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    /// Dimension of generated vectors.
    #[arg(long, default_value_t = 768)]
    pub dim: usize,
    /// Observe streams, one connection each; the data is dealt out
    /// among them.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Observations per second in total; 0 = open loop (as fast as acks
    /// allow, with at most --max-in-flight unanswered per client).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Unanswered observations per client before it waits.
    #[arg(long, default_value_t = engram_client::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Recalls per second (k=10) while streaming, and at most as many
    /// visibility probes per second besides; 0 = neither.
    #[arg(long, default_value_t = 10.0)]
    pub recall_rate: f64,
    /// Queries for recall@10 and query latency after streaming.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Also write the report, with the parameters, as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// After streaming, wait until DescribeSpace shows everything
    /// indexed; indexed throughput is N / (first send to all indexed).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub wait_indexed: bool,
    /// Give up waiting for the index after this many seconds (the report
    /// then has no indexed throughput).
    #[arg(long, default_value_t = 600)]
    pub index_timeout_secs: u64,
    /// Fail when no observation is answered for this many seconds while
    /// streaming (a server that stopped answering), instead of waiting for
    /// ever.
    #[arg(long, default_value_t = 60)]
    pub stall_secs: u64,
    /// Offer every N-th accepted observation for a visibility probe.
    #[arg(long, default_value_t = 100)]
    pub visibility_every: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 20240611)]
    pub seed: u64,
}

impl BenchArgs {
    fn validate(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.max_in_flight == 0 {
            bail!("--max-in-flight must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!(
                "--rate must be 0 (open loop) or a positive number, got {}",
                self.rate
            );
        }
        if !(self.recall_rate.is_finite() && self.recall_rate >= 0.0) {
            bail!(
                "--recall-rate must be 0 (none) or a positive number, got {}",
                self.recall_rate
            );
        }
        Ok(())
    }
}

/// Runs the benchmark and prints the table on stdout.
///
/// # Errors
///
/// Bad arguments, unreadable data, a server that does not answer at
/// `--grpc`, an observe session that fails, or an unwritable `--json`.
pub async fn run(args: BenchArgs) -> Result<()> {
    args.validate()?;
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let progress = Progress::new();
    // Connect first: an unreachable server should fail before seconds of
    // data generation.
    let client = connect(&args.grpc, args.api_key.as_deref()).await?;
    let data = Arc::new(prepare_data(&args, &progress).await?);
    let n = data.base.len();

    replace_space(&client, &args.space, data.dim(), args.replace).await?;
    let scraper = Scraper::new(&args.http, &args.space, args.api_key.as_deref())?;
    let before = match scraper.sample().await {
        Ok(s) => s,
        Err(e) => {
            progress.warn(&format!("no server metrics: {e:#}"));
            ServerSample::default()
        }
    };
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(connect(&args.grpc, args.api_key.as_deref()).await?);
    }

    progress.phase(&format!(
        "streaming {n} observations over {} clients",
        args.clients
    ));
    let counters = Arc::new(Counters::default());
    let (samples_tx, samples_rx) = watch::channel(None);
    let samples_tx = Arc::new(samples_tx);
    let (recall_stop, recall_stop_rx) = oneshot::channel();
    let recalls = (args.recall_rate > 0.0).then(|| {
        let load = tokio::spawn(load::recall_load(
            client.clone(),
            args.space.clone(),
            data.clone(),
            args.recall_rate,
            recall_stop_rx,
        ));
        let probes = tokio::spawn(load::probe_visibility(
            client.clone(),
            args.space.clone(),
            data.clone(),
            args.recall_rate,
            samples_rx,
        ));
        (load, probes)
    });
    let (watch_stop, watch_stop_rx) = oneshot::channel();
    let watcher = tokio::spawn(watch_server(scraper.clone(), watch_stop_rx));

    let start = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        let plan = StreamPlan {
            space: args.space.clone(),
            data: data.clone(),
            first: i,
            step: args.clients,
            rate: (args.rate > 0.0).then(|| args.rate / args.clients as f64),
            max_in_flight: args.max_in_flight,
            visibility_every: args.visibility_every,
        };
        streams.spawn(load::stream(
            c,
            plan,
            start,
            counters.clone(),
            samples_tx.clone(),
        ));
    }
    drop(samples_tx);
    let mut streamed = StreamOutcome::default();
    let mut redraw = tokio::time::interval(POLL_INTERVAL);
    let stall = Duration::from_secs(args.stall_secs.max(1));
    let (mut last_acked, mut progressed_at) = (0, Instant::now());
    loop {
        tokio::select! {
            done = streams.join_next() => match done {
                Some(result) => streamed.merge(result.context("a stream task panicked")??),
                None => break,
            },
            _ = redraw.tick() => {
                let acked = counters.acked.load(Ordering::Relaxed);
                if acked != last_acked {
                    (last_acked, progressed_at) = (acked, Instant::now());
                } else if progressed_at.elapsed() >= stall {
                    // Dropping the set aborts the streams.
                    bail!(
                        "no observation was answered for {stall:?} ({acked} of {n} answered): \
                         the server at {} stopped answering (raise --stall-secs for a slower one)",
                        args.grpc
                    );
                }
                let rate = acked as f64 / start.elapsed().as_secs_f64().max(1e-9);
                progress.bar("streaming", acked, n as u64, &format!("acked, {rate:.0} obs/s"));
            }
        }
    }
    let stream_end = streamed.last_ack.unwrap_or_else(Instant::now);
    let streaming_seconds = stream_end.duration_since(start).as_secs_f64();
    let _ = recall_stop.send(());
    let (recall_outcome, visibility) = match recalls {
        Some((load, probes)) => (
            load.await.context("the recall task panicked")?,
            probes.await.context("the visibility task panicked")?,
        ),
        None => Default::default(),
    };

    let indexed_at = if args.wait_indexed {
        progress.phase("waiting until everything is indexed");
        wait_indexed(
            &client,
            &args.space,
            Duration::from_secs(args.index_timeout_secs),
            &progress,
        )
        .await?
    } else {
        None
    };
    let _ = watch_stop.send(());
    let watched = watcher.await.context("the metrics task panicked")?;

    progress.phase(&format!("{} queries for recall@10", data.queries.len()));
    let (query_latencies, recall_at_10) = final_queries(&client, &args.space, &data).await?;
    let after = match scraper.sample().await {
        Ok(s) => s,
        Err(e) => {
            progress.warn(&format!("no server metrics after the run: {e:#}"));
            ServerSample::default()
        }
    };
    progress.clear();

    let report = Report {
        started_at,
        params: Params {
            grpc: args.grpc.clone(),
            http: args.http.clone(),
            space: args.space.clone(),
            data: data.source.clone(),
            observations: n,
            dim: data.dim(),
            clients: args.clients,
            rate: args.rate,
            max_in_flight: args.max_in_flight,
            recall_rate: args.recall_rate,
            queries: data.queries.len(),
            wait_indexed: args.wait_indexed,
            seed: args.seed,
            visibility_every: args.visibility_every,
        },
        machine: Machine::this(),
        accepted: streamed.accepted,
        rejected: streamed.rejected,
        streaming_seconds,
        accepted_per_second: streamed.accepted as f64 / streaming_seconds.max(1e-9),
        indexed_per_second: indexed_at
            .map(|t| streamed.accepted as f64 / t.duration_since(start).as_secs_f64().max(1e-9)),
        indexing_lag_seconds: indexed_at
            .map(|t| t.saturating_duration_since(stream_end).as_secs_f64()),
        ack_latency_ms: Latency::from_seconds(streamed.ack_latencies),
        visibility_ms: Latency::from_seconds(visibility.latencies),
        visibility_missed_first_recall: visibility.missed_first_recall,
        visibility_timeouts: visibility.timeouts,
        recall_during_stream_ms: Latency::from_seconds(recall_outcome.latencies),
        recall_errors: recall_outcome.errors,
        recall_queries_ms: Latency::from_seconds(query_latencies),
        recall_at_10,
        ground_truth: data.truth_source,
        server: Server {
            rss_before_bytes: before.rss_bytes,
            rss_after_bytes: after.rss_bytes,
            rss_peak_bytes: [watched.rss_peak_bytes, after.rss_bytes, before.rss_bytes]
                .into_iter()
                .flatten()
                .reduce(f64::max),
            cpu_seconds: before
                .cpu_seconds
                .zip(after.cpu_seconds)
                .map(|(b, a)| a - b),
            index_lag_max_seconds: watched.index_lag_max_seconds,
        },
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing the JSON report to {}", path.display()))?;
    }
    Ok(())
}

/// Reads or generates the data and its ground truth, off the async
/// runtime (seconds of CPU for 100K vectors).
async fn prepare_data(args: &BenchArgs, progress: &Progress) -> Result<DataSet> {
    let (queries, seed) = (args.queries, args.seed);
    let task = match (&args.data, args.generate) {
        (Some(dir), _) => {
            progress.phase(&format!("reading {}", dir.display()));
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || data::load(&dir, queries))
        }
        (None, Some(n)) => {
            progress.phase(&format!(
                "generating {n} clustered {}-d vectors and the exact top-{K} of {queries} queries",
                args.dim
            ));
            let dim = args.dim;
            tokio::task::spawn_blocking(move || data::generate(n, dim, queries, seed))
        }
        (None, None) => bail!("give --data DIR or --generate N"),
    };
    let data = task.await.context("the data task panicked")??;
    if data.base.is_empty() {
        bail!("the data set has no vectors");
    }
    Ok(data)
}

async fn connect(url: &str, api_key: Option<&str>) -> Result<StreamingClient> {
    let options = engram_client::ClientOptions {
        api_key: api_key.map(Into::into),
        ..engram_client::ClientOptions::default()
    };
    StreamingClient::connect_with(url, options).await.with_context(|| {
        format!("connecting to the engram gRPC server at {url}: is `engram serve` running there? (set --grpc)")
    })
}

/// Deletes `space` if it exists (refusing one that holds memories unless
/// `replace`), then creates it with `dim`.
async fn replace_space(
    client: &StreamingClient,
    space: &str,
    dim: usize,
    replace: bool,
) -> Result<()> {
    match client.describe_space(space).await {
        Ok(info) if info.count > 0 && !replace => bail!(
            "space {space:?} holds {} memories, and engram bench deletes and re-creates the space it streams into: \
             pass --replace to allow that, or choose another --space",
            info.count
        ),
        Ok(_) | Err(ClientError::NotFound(_)) => {}
        Err(e) => return Err(e).with_context(|| format!("describing space {space:?}")),
    }
    match client.delete_space(space).await {
        Ok(()) | Err(ClientError::NotFound(_)) => {}
        Err(e) => return Err(e).with_context(|| format!("deleting space {space:?}")),
    }
    let dim = u32::try_from(dim).context("the dimension does not fit the protocol's u32")?;
    client
        .create_space(space, dim)
        .await
        .with_context(|| format!("creating space {space:?} with dimension {dim}"))?;
    Ok(())
}

/// What the metrics watcher saw during the run.
#[derive(Default)]
struct Watched {
    index_lag_max_seconds: Option<f64>,
    rss_peak_bytes: Option<f64>,
}

/// Scrapes `/metrics` every [`POLL_INTERVAL`] until `stop` fires, keeping
/// the largest index lag and RSS. Failed scrapes are skipped: the numbers
/// are then missing, which the report shows as n/a.
async fn watch_server(scraper: Scraper, mut stop: oneshot::Receiver<()>) -> Watched {
    let mut watched = Watched::default();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                if let Ok(s) = scraper.sample().await {
                    let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    watched.index_lag_max_seconds =
                        max(watched.index_lag_max_seconds, s.index_lag_seconds);
                    watched.rss_peak_bytes = max(watched.rss_peak_bytes, s.rss_bytes);
                }
            }
        }
    }
    watched
}

/// Polls `DescribeSpace` until every memory of the space is indexed (or
/// quarantined: those are never waited for); returns when, or `None`
/// after `timeout`.
async fn wait_indexed(
    client: &StreamingClient,
    space: &str,
    timeout: Duration,
    progress: &Progress,
) -> Result<Option<Instant>> {
    let until = Instant::now() + timeout;
    let mut last_draw = Instant::now();
    loop {
        let info = client
            .describe_space(space)
            .await
            .with_context(|| format!("describing space {space:?}"))?;
        let done = info.indexed_count + info.quarantined_count;
        if done >= info.count {
            return Ok(Some(Instant::now()));
        }
        if last_draw.elapsed() >= POLL_INTERVAL {
            progress.bar("indexing", done, info.count, "indexed");
            last_draw = Instant::now();
        }
        if Instant::now() >= until {
            progress.warn(&format!(
                "{done} of {} indexed after {timeout:?}; reporting without indexed throughput",
                info.count
            ));
            return Ok(None);
        }
        tokio::time::sleep(INDEXED_POLL).await;
    }
}

/// Recalls each query (k=10) one at a time: latencies in seconds and the
/// mean recall@10 against the ground truth (`None` without queries).
async fn final_queries(
    client: &StreamingClient,
    space: &str,
    data: &DataSet,
) -> Result<(Vec<f64>, Option<f64>)> {
    let mut latencies = Vec::with_capacity(data.queries.len());
    let mut recall_sum = 0.0;
    for (q, truth) in data.truth.iter().enumerate() {
        let began = Instant::now();
        let found = client
            .recall(space, cue(data.queries.row(q).to_vec(), K as u32))
            .await
            .with_context(|| format!("recalling query {q}"))?;
        latencies.push(began.elapsed().as_secs_f64());
        let rows: Vec<usize> = found
            .memories
            .iter()
            .filter_map(|m| m.episode.as_ref())
            .filter_map(|e| e.id.strip_prefix('b')?.parse().ok())
            .collect();
        let hits = truth.iter().filter(|t| rows.contains(t)).count();
        recall_sum += hits as f64 / truth.len().max(1) as f64;
    }
    let recall = (!data.truth.is_empty()).then(|| recall_sum / data.truth.len() as f64);
    Ok((latencies, recall))
}
