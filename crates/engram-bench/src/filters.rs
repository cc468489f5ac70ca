//! `engram-bench filters` (issue 16): filtered recall on an fvecs data set,
//! in process. Every memory gets the tags `sel-<s>` for each selectivity
//! `s` with probability `s` (an exact share, chosen at random), and
//! `user` metadata; then, for the unfiltered recall and for each
//! selectivity, the same queries are recalled and measured: recall@10
//! against an exact filtered search (brute force over the memories that
//! carry the tag) and the latency percentiles, against the unfiltered
//! ones of the same run.
//!
//! With `--paths`, each selectivity is also measured with the exact scan
//! forced and the graph search forced (`engine.filter_exact_scan_max` set
//! to the largest value and to 0), which is what places the switch
//! between them (docs/design/filters.md).

use std::time::{Duration, Instant};

use engram_core::model::MemoryFilter;
use engram_core::wal::SyncPolicy;
use engram_core::{Cue, Engine, EngineConfig, EpisodeInput};
use engram_testdata::read_fvecs;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct FiltersArgs {
    /// Directory with base.fvecs and query.fvecs.
    #[arg(long)]
    pub data: std::path::PathBuf,
    /// Queries measured per setting (from query.fvecs).
    #[arg(long, default_value_t = 300)]
    pub queries: usize,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Tag selectivities, as fractions of the memories.
    #[arg(long, value_delimiter = ',', default_value = "0.001,0.01,0.1,0.5")]
    pub selectivities: Vec<f64>,
    /// Indexing workers while loading.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Also measure each selectivity with either path forced.
    #[arg(long)]
    pub paths: bool,
    #[arg(long, default_value_t = 16)]
    pub seed: u64,
}

pub fn run(args: &FiltersArgs) -> anyhow::Result<()> {
    crate::print_json(2, measure(args))
}

fn tag(s: f64) -> String {
    format!("sel-{s}")
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter().map(|x| x / n).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One setting's numbers: recall@k against `truth`, latency percentiles.
fn measure_setting(
    engine: &Engine,
    queries: &[Vec<f32>],
    truth: &[Vec<usize>],
    filter: &MemoryFilter,
    k: usize,
) -> anyhow::Result<Value> {
    let mut lat = Vec::with_capacity(queries.len());
    let (mut hits, mut total, mut returned) = (0usize, 0usize, 0usize);
    for (q, want) in queries.iter().zip(truth) {
        let cue = Cue {
            embedding: q.clone(),
            max_results: Some(k),
            similarity_threshold: Some(-1.0),
            filter: filter.clone(),
            ..Cue::default()
        };
        let t = Instant::now();
        let got = engine.recall("bench", cue)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        returned += got.memories.len();
        let got: Vec<usize> = got
            .memories
            .iter()
            .map(|m| m.episode.id[1..].parse().unwrap_or(usize::MAX))
            .collect();
        hits += got.iter().filter(|i| want.contains(i)).count();
        total += want.len();
    }
    lat.sort_by(f64::total_cmp);
    Ok(json!({
        "recall_at_k": hits as f64 / total.max(1) as f64,
        "returned_per_query": returned as f64 / queries.len() as f64,
        "expected_per_query": total as f64 / queries.len() as f64,
        "latency_us": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99),
                       "mean": lat.iter().sum::<f64>() / lat.len() as f64},
    }))
}

/// Exact top-k row numbers among `rows` (normalized base vectors).
fn exact_top_k(base: &[Vec<f32>], rows: &[usize], q: &[f32], k: usize) -> Vec<usize> {
    let q = normalized(q);
    let mut scored: Vec<(f32, usize)> = rows
        .iter()
        .map(|&i| (base[i].iter().zip(&q).map(|(a, b)| a * b).sum(), i))
        .collect();
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.into_iter().map(|(_, i)| i).collect()
}

async fn load(
    cfg: EngineConfig,
    base: &[Vec<f32>],
    tags: &[Vec<String>],
) -> anyhow::Result<(Engine, f64)> {
    let engine = Engine::open(cfg)?;
    engine.create_space("bench", Some(base[0].len())).await?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for (i, v) in base.iter().enumerate() {
        let e = EpisodeInput {
            id: Some(format!("m{i}")),
            what: String::new(),
            embedding: v.clone(),
            tags: tags[i].clone(),
            metadata: [("user".to_owned(), format!("u{}", i % 7))].into(),
            ..Default::default()
        };
        pending.push(engine.remember("bench", e));
        if pending.len() == 512 {
            futures::future::try_join_all(pending.drain(..)).await?;
        }
    }
    futures::future::try_join_all(pending.drain(..)).await?;
    drop(pending);
    let deadline = Instant::now() + Duration::from_secs(3600);
    while engine.queue_depth() > 0 {
        anyhow::ensure!(Instant::now() < deadline, "indexing did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((engine, started.elapsed().as_secs_f64()))
}

async fn measure(args: &FiltersArgs) -> anyhow::Result<Value> {
    let base_m = read_fvecs(&args.data.join("base.fvecs"))?;
    let query_m = read_fvecs(&args.data.join("query.fvecs"))?;
    let n = base_m.rows();
    let base: Vec<Vec<f32>> = (0..n).map(|i| base_m.row(i).to_vec()).collect();
    let normalized_base: Vec<Vec<f32>> = base.iter().map(|v| normalized(v)).collect();
    let queries: Vec<Vec<f32>> = (0..args.queries.min(query_m.rows()))
        .map(|i| query_m.row(i).to_vec())
        .collect();

    // Tags: an exact share `s` of the memories, chosen at random, per
    // selectivity (independently).
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut tags: Vec<Vec<String>> = vec![Vec::new(); n];
    let mut members: Vec<(f64, Vec<usize>)> = Vec::new();
    for &s in &args.selectivities {
        let mut rows: Vec<usize> = (0..n).collect();
        rows.shuffle(&mut rng);
        rows.truncate(((n as f64) * s).round().max(1.0) as usize);
        rows.sort_unstable();
        for &i in &rows {
            tags[i].push(tag(s));
        }
        members.push((s, rows));
    }

    let dir = tempfile::tempdir()?;
    let mut cfg = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        workers: args.workers,
        snapshot_interval_secs: 0,
        metrics: false,
        ..EngineConfig::default()
    };
    cfg.wal.sync = SyncPolicy::None;
    // Load everything at once: admission control would otherwise (rightly)
    // push back once 90% of the queue waits to be indexed.
    cfg.queue.capacity = 2 * n + 1024;
    let (engine, load_secs) = load(cfg.clone(), &base, &tags).await?;
    let ef = cfg.index.ef_search;
    let switch = engram_core::recall::exact_scan_below(n, ef.max(args.k), cfg.index.m);

    let all: Vec<usize> = (0..n).collect();
    let unfiltered_truth: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| exact_top_k(&normalized_base, &all, q, args.k))
        .collect();
    // Warm-up.
    measure_setting(
        &engine,
        &queries,
        &unfiltered_truth,
        &MemoryFilter::default(),
        args.k,
    )?;
    let unfiltered = measure_setting(
        &engine,
        &queries,
        &unfiltered_truth,
        &MemoryFilter::default(),
        args.k,
    )?;
    let unfiltered_p99 = unfiltered["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN);

    let mut rows = Vec::new();
    let mut all_met = true;
    for (s, member_rows) in &members {
        let truth: Vec<Vec<usize>> = queries
            .iter()
            .map(|q| exact_top_k(&normalized_base, member_rows, q, args.k))
            .collect();
        let filter = MemoryFilter {
            tags_all: vec![tag(*s)],
            ..MemoryFilter::default()
        };
        let mut auto = measure_setting(&engine, &queries, &truth, &filter, args.k)?;
        let p99 = auto["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN);
        let recall = auto["recall_at_k"].as_f64().unwrap_or(0.0);
        let ratio = p99 / unfiltered_p99;
        let met = recall >= 0.95 && ratio <= 2.0;
        all_met &= met;
        auto["p99_vs_unfiltered"] = json!(ratio);
        let mut row = json!({
            "selectivity": s,
            "admitted": member_rows.len(),
            "path": if member_rows.len() <= switch { "exact scan" } else { "filtered graph search" },
            "measured": auto,
            "targets": {"recall_at_k_ge_0_95": recall >= 0.95, "p99_le_2x_unfiltered": ratio <= 2.0},
        });
        if args.paths {
            for (name, forced) in [("exact_scan_forced", usize::MAX), ("graph_forced", 0)] {
                engine.set_filter_exact_scan_max(Some(forced));
                row[name] = measure_setting(&engine, &queries, &truth, &filter, args.k)?;
            }
            engine.set_filter_exact_scan_max(cfg.filter_exact_scan_max);
        }
        rows.push(row);
    }
    engine.shutdown();
    Ok(json!({
        "benchmark": "filtered recall (issue 16), in process",
        "data": args.data.display().to_string(),
        "memories": n,
        "dimension": base[0].len(),
        "queries": queries.len(),
        "k": args.k,
        "ef_search": ef,
        "m": cfg.index.m,
        "exact_scan_below": switch,
        "load_seconds": load_secs,
        "unfiltered": unfiltered,
        "filtered": rows,
        "all_targets_met": all_met,
    }))
}
