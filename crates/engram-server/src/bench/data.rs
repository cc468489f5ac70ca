//! The vectors a bench run streams and queries, and their exact ground
//! truth.
//!
//! Either an fvecs data set (`base.fvecs`, optionally `query.fvecs` and
//! `groundtruth.ivecs`) or a generated one: clustered unit vectors after
//! the recipe of `../shared/tools/hnsw_baseline.py gen` (1,000 Gaussian
//! centres on the sphere, log-normal cluster popularity, a per-cluster
//! spread, every vector normalised). Generated data matters because
//! uniform random vectors in high dimension are all nearly equidistant,
//! which makes an HNSW look better than it does on real embeddings.

use std::path::Path;

use anyhow::{bail, Context, Result};
use engram_testdata::{read_fvecs, read_ivecs_ids, Matrix};
use rand::{Rng, SeedableRng};

/// Cluster centres of generated data, as in the Python tool.
const CENTRES: usize = 1_000;
/// Rows generated per seeded chunk: the output does not depend on the
/// number of threads.
const CHUNK_ROWS: usize = 1_024;
/// Neighbours per query in the ground truth (recall@10).
pub const K: usize = 10;

/// Row-major vectors of one dimension.
pub struct Vectors {
    pub dim: usize,
    data: Vec<f32>,
}

impl Vectors {
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Where the ground truth came from (reported with recall@10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truth {
    /// `groundtruth.ivecs` of the data set.
    File,
    /// Brute force over the base vectors, in this process.
    Computed,
}

/// What one run streams and queries.
pub struct DataSet {
    /// What it is, for the report: the folder or "generated".
    pub source: String,
    pub base: Vectors,
    pub queries: Vectors,
    /// The exact top-[`K`] base rows of each query, best first.
    pub truth: Vec<Vec<usize>>,
    pub truth_source: Truth,
}

impl DataSet {
    pub fn dim(&self) -> usize {
        self.base.dim
    }
}

/// Generates `n` base vectors and `queries` queries of dimension `dim`.
pub fn generate(n: usize, dim: usize, queries: usize, seed: u64) -> Result<DataSet> {
    if n == 0 || dim == 0 {
        bail!("--generate and --dim must be at least 1 (got {n} vectors of dimension {dim})");
    }
    let clusters = Clusters::new(dim, seed);
    let base = clusters.draw(n, 1);
    let queries = clusters.draw(queries, 2);
    let truth = exact_top_k(&base, &queries);
    Ok(DataSet {
        source: format!("generated, seed {seed}"),
        base,
        queries,
        truth,
        truth_source: Truth::Computed,
    })
}

/// Reads `dir/base.fvecs`; queries from `dir/query.fvecs` when present
/// (else the first `queries` base vectors), ground truth from
/// `dir/groundtruth.ivecs` when present (else computed).
///
/// # Errors
///
/// A missing or malformed file, or files that disagree on the dimension
/// or the number of queries.
pub fn load(dir: &Path, queries: usize) -> Result<DataSet> {
    let base_path = dir.join("base.fvecs");
    let base = into_vectors(read_fvecs(&base_path).with_context(|| {
        format!(
            "--data {}: expected base.fvecs (and optionally query.fvecs, groundtruth.ivecs)",
            dir.display()
        )
    })?);
    let query_path = dir.join("query.fvecs");
    let from_file = query_path.exists();
    let all_queries = if from_file {
        into_vectors(read_fvecs(&query_path)?)
    } else {
        Vectors {
            dim: base.dim,
            data: base.data[..queries.min(base.len()) * base.dim].to_vec(),
        }
    };
    if all_queries.dim != base.dim {
        bail!(
            "{}: dimension {}, but base.fvecs has {}",
            query_path.display(),
            all_queries.dim,
            base.dim
        );
    }
    let take = queries.min(all_queries.len());
    let queries = Vectors {
        dim: base.dim,
        data: all_queries.data[..take * base.dim].to_vec(),
    };
    let truth_path = dir.join("groundtruth.ivecs");
    let (truth, truth_source) = if from_file && truth_path.exists() {
        let gt = read_ivecs_ids(&truth_path, base.len())?;
        if gt.rows() < take || gt.dim < K.min(base.len()) {
            bail!(
                "{}: {} rows of {} ids, need {take} rows of at least {}",
                truth_path.display(),
                gt.rows(),
                gt.dim,
                K.min(base.len())
            );
        }
        let rows = (0..take)
            .map(|q| gt.row(q).iter().take(K).copied().collect())
            .collect();
        (rows, Truth::File)
    } else {
        (exact_top_k(&base, &queries), Truth::Computed)
    };
    Ok(DataSet {
        source: dir.display().to_string(),
        base,
        queries,
        truth,
        truth_source,
    })
}

fn into_vectors(m: Matrix<f32>) -> Vectors {
    Vectors {
        dim: m.dim,
        data: m.data,
    }
}

/// The shape of generated data: centres, popularity and spread.
struct Clusters {
    dim: usize,
    seed: u64,
    centres: Vec<f32>,
    /// Cumulative popularity, for drawing a cluster by inverse CDF.
    cumulative: Vec<f64>,
    spread: Vec<f32>,
}

impl Clusters {
    fn new(dim: usize, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed, dim as u64, 0));
        let mut centres = vec![0.0f32; CENTRES * dim];
        for c in centres.chunks_exact_mut(dim) {
            c.iter_mut().for_each(|x| *x = normal(&mut rng) as f32);
            normalise(c);
        }
        let weights: Vec<f64> = (0..CENTRES).map(|_| normal(&mut rng).exp()).collect();
        let total: f64 = weights.iter().sum();
        let cumulative = weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / total;
                Some(*acc)
            })
            .collect();
        let spread = (0..CENTRES).map(|_| rng.gen_range(0.5f32..1.0)).collect();
        Clusters {
            dim,
            seed,
            centres,
            cumulative,
            spread,
        }
    }

    /// `n` vectors from the numbered stream (1: base, 2: queries), in
    /// seeded chunks spread over the cores.
    fn draw(&self, n: usize, stream: u64) -> Vectors {
        let dim = self.dim;
        let mut data = vec![0.0f32; n * dim];
        let chunks: Vec<(usize, &mut [f32])> =
            data.chunks_mut(CHUNK_ROWS * dim).enumerate().collect();
        parallel_for_each(chunks, |(chunk, rows)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(mix(
                self.seed,
                dim as u64,
                (stream << 32) | chunk as u64,
            ));
            let scale = 1.0 / (dim as f32).sqrt();
            for row in rows.chunks_exact_mut(dim) {
                let u: f64 = rng.gen();
                let c = self.cumulative.partition_point(|&p| p < u).min(CENTRES - 1);
                let centre = &self.centres[c * dim..(c + 1) * dim];
                let s = self.spread[c] * scale;
                for (x, m) in row.iter_mut().zip(centre) {
                    *x = m + s * normal(&mut rng) as f32;
                }
                normalise(row);
            }
        });
        Vectors { dim, data }
    }
}

/// The exact top-[`K`] base rows of each query by cosine similarity,
/// best first, computed on every core.
pub fn exact_top_k(base: &Vectors, queries: &Vectors) -> Vec<Vec<usize>> {
    let inv_norms: Vec<f32> = (0..base.len())
        .map(|i| {
            let n = dot(base.row(i), base.row(i)).sqrt();
            if n > 0.0 {
                1.0 / n
            } else {
                0.0
            }
        })
        .collect();
    let mut truth = vec![Vec::new(); queries.len()];
    let jobs: Vec<(usize, &mut Vec<usize>)> = truth.iter_mut().enumerate().collect();
    parallel_for_each(jobs, |(q, out)| {
        let query = queries.row(q);
        // Best K so far, worst last; K is small, so insertion beats a heap.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(K + 1);
        for (i, inv) in inv_norms.iter().enumerate() {
            let score = dot(query, base.row(i)) * inv;
            if best.len() == K && score <= best[K - 1].0 {
                continue;
            }
            let at = best.partition_point(|&(s, _)| s >= score);
            best.insert(at, (score, i));
            best.truncate(K);
        }
        *out = best.into_iter().map(|(_, i)| i).collect();
    });
    truth
}

/// Runs `f` on every item, the items dealt out to one thread per core.
fn parallel_for_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let queue = std::sync::Mutex::new(items.into_iter());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                // Taken and released per item: the lock is never held
                // while `f` runs.
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next();
                match next {
                    Some(item) => f(item),
                    None => break,
                }
            });
        }
    });
}

/// Inner product in eight independent lanes, which the compiler turns
/// into SIMD (a single running sum would pin the order of additions).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn normalise(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// A standard normal draw (Box-Muller; `rand` alone has no normal
/// distribution and `rand_distr` is not worth a dependency for this).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One seed from several numbers (splitmix64 finaliser over their sum).
fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.rotate_left(21))
        .wrapping_add(c.rotate_left(42));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_vectors_are_unit_length_clustered_and_reproducible() {
        let a = generate(3_000, 16, 20, 7).unwrap();
        let b = generate(3_000, 16, 20, 7).unwrap();
        assert_eq!(a.base.data, b.base.data);
        assert_eq!(a.base.len(), 3_000);
        assert_eq!(a.queries.len(), 20);
        for i in 0..a.base.len() {
            let n = dot(a.base.row(i), a.base.row(i)).sqrt();
            assert!((n - 1.0).abs() < 1e-4, "row {i} has norm {n}");
        }
        // Clustered: a query's nearest neighbour is far closer than a
        // random vector would be in 16 dimensions.
        let q = a.queries.row(0);
        let best = dot(q, a.base.row(a.truth[0][0]));
        assert!(best > 0.8, "nearest neighbour similarity {best}");
    }

    #[test]
    fn exact_top_k_ranks_by_cosine() {
        let base = Vectors {
            dim: 2,
            data: vec![1.0, 0.0, 0.0, 1.0, 2.0, 2.1, -1.0, 0.0],
        };
        let queries = Vectors {
            dim: 2,
            data: vec![1.0, 1.0],
        };
        let truth = exact_top_k(&base, &queries);
        assert_eq!(truth[0], vec![2, 0, 1, 3]);
    }
}
