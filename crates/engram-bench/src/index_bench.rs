//! `engram-bench index`: build engram's HNSW on an fvecs data set and
//! measure it the way `hnsw_baseline.py run` measures hnswlib, so the two
//! JSON objects can be compared field by field.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engram_core::index::{Hnsw, HnswParams, VectorPlacement};
use serde::Serialize;

use engram_testdata::{read_fvecs, read_ivecs_ids};

#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    /// Directory with base.fvecs, query.fvecs and groundtruth.ivecs.
    #[arg(long)]
    data: PathBuf,
    /// Insert threads for the build (searches are measured on one thread).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 16)]
    m: usize,
    #[arg(long, default_value_t = 100)]
    efc: usize,
    /// Seed of the level draw (default: the index's default seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Beam widths to measure (each is max(ef, 10), as in the baseline).
    #[arg(long, num_args = 1.., default_values_t = [16, 32, 64, 128])]
    ef: Vec<usize>,
    /// Also write the JSON result to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Build a compact index: exact vectors in an unnamed file created in
    /// this directory (read to re-score each search's best candidates),
    /// 8-bit codes in RAM, as a `compact` memory space keeps them.
    #[arg(long)]
    vectors_on_disk: Option<PathBuf>,
}

#[derive(Serialize)]
struct SearchRow {
    ef: usize,
    recall_at_10: f64,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Serialize)]
struct Report {
    lib: &'static str,
    version: &'static str,
    simd: &'static str,
    n: usize,
    dim: usize,
    /// `memory` or `compact` (see `--vectors-on-disk`).
    vector_storage: &'static str,
    #[serde(rename = "M")]
    m: usize,
    ef_construction: usize,
    seed: u64,
    threads: usize,
    build_s: f64,
    build_vectors_per_s: f64,
    search: Vec<SearchRow>,
    default_ef_search: usize,
    default_search: SearchRow,
    memory_bytes: usize,
    integrity_check_s: f64,
    integrity: String,
}

const K: usize = 10;

pub fn run(args: &IndexArgs) -> Result<()> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let base = read_fvecs(&args.data.join("base.fvecs"))?;
    let queries = read_fvecs(&args.data.join("query.fvecs"))?;
    let gt = read_ivecs_ids(&args.data.join("groundtruth.ivecs"), base.rows())?;
    if queries.dim != base.dim {
        bail!(
            "query dimension {} differs from base dimension {}",
            queries.dim,
            base.dim
        );
    }
    if gt.rows() != queries.rows() || gt.dim < K {
        bail!(
            "ground truth has {} rows of {} ids; expected {} rows (one per query) of at least {K}",
            gt.rows(),
            gt.dim,
            queries.rows()
        );
    }
    let (n, dim) = (base.rows(), base.dim);
    let defaults = HnswParams::default();
    let params = HnswParams {
        m: args.m,
        ef_construction: args.efc,
        seed: args.seed.unwrap_or(defaults.seed),
        ..defaults
    };
    let placement = match &args.vectors_on_disk {
        None => VectorPlacement::Memory,
        Some(dir) => VectorPlacement::Disk(dir.clone()),
    };
    let index = Hnsw::with_placement(dim, params, &placement)
        .with_context(|| format!("creating the vector file in {:?}", args.vectors_on_disk))?;

    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                index.insert(i as u64, base.row(i));
            });
        }
    });
    let build_s = t.elapsed().as_secs_f64();
    if index.len() != n {
        bail!("built {} nodes from {n} vectors", index.len());
    }

    let measure = |ef: usize| -> SearchRow {
        let mut lat = Vec::with_capacity(queries.rows());
        let mut hits = 0;
        for qi in 0..queries.rows() {
            let t = Instant::now();
            let res = index.search(queries.row(qi), K, ef.max(K), &|_| true);
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            let truth = &gt.row(qi)[..K];
            hits += res
                .iter()
                .filter(|(l, _)| truth.contains(&(*l as usize)))
                .count();
        }
        lat.sort_by(f64::total_cmp);
        SearchRow {
            ef,
            recall_at_10: hits as f64 / (K * queries.rows()) as f64,
            p50_us: percentile(&lat, 50.0),
            p99_us: percentile(&lat, 99.0),
        }
    };
    let search: Vec<SearchRow> = args.ef.iter().map(|&ef| measure(ef)).collect();
    let default_ef_search = HnswParams::default().ef_search;
    let default_search = measure(default_ef_search);

    let t = Instant::now();
    let integrity = match index.check_integrity() {
        Ok(()) => "ok".to_string(),
        Err(e) => e,
    };
    let integrity_check_s = t.elapsed().as_secs_f64();

    let report = Report {
        lib: "engram",
        version: env!("CARGO_PKG_VERSION"),
        simd: simd_kernel(),
        n,
        dim,
        vector_storage: if args.vectors_on_disk.is_some() {
            "compact"
        } else {
            "memory"
        },
        m: args.m,
        ef_construction: args.efc,
        seed: index.params().seed,
        threads: args.threads,
        build_s,
        build_vectors_per_s: n as f64 / build_s,
        search,
        default_ef_search,
        default_search,
        memory_bytes: index.memory_bytes(),
        integrity_check_s,
        integrity,
    };
    let json = serde_json::to_string(&report)?;
    println!("{json}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if report.integrity != "ok" {
        bail!("integrity check failed: {}", report.integrity);
    }
    Ok(())
}

/// numpy's default (linear interpolation) percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn simd_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma";
        }
    }
    "portable"
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
    }
}
