//! The data sets tests and benchmarks read, in one place.
//!
//! - [`minilm_sample`]: the real-text sample shipped in this crate
//!   (`data/minilm-sample`, 3,000 base and 200 query MiniLM vectors with
//!   their texts; provenance in its README). Always present, so tests read
//!   it and pass on a fresh clone.
//! - [`shared_data`] / [`minilm_dev`]: the larger sets beside the checkout
//!   (`../shared/data`), for benchmarks only; they are optional.
//!
//! Readers for the `fvecs` / `ivecs` files of ANN benchmarks (format in
//! `data/minilm-sample/README.md`): little-endian, each record an `i32`
//! dimension followed by that many values. Every value is decoded from its
//! bytes, so the host's byte order and alignment do not matter. Malformed
//! files are errors (`InvalidData`) that name the file and the record.

use std::io::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};

/// The shared data folder (`../shared/data` beside the checkout), which
/// benchmarks may use when it is there. Tests must not need it: they read
/// [`minilm_sample`].
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

/// The first `n` base vectors of `shared/data/minilm-dev` (real 384-d
/// sentence embeddings) with their texts, or `None` when the folder is
/// absent. For benchmarks; tests use [`minilm_sample`].
///
/// # Panics
/// When the folder is there but its files are malformed or hold fewer than
/// `n` vectors: a broken data set must not pass for a missing one.
pub fn minilm_dev(n: usize) -> Option<Vec<(String, Vec<f32>)>> {
    let dir = shared_data().join("minilm-dev");
    if !dir.join("base.fvecs").exists() {
        return None;
    }
    let base = read_texts_and_vectors(&dir, "base");
    assert!(
        base.len() >= n,
        "{} holds {} vectors, fewer than {n}",
        dir.join("base.fvecs").display(),
        base.len()
    );
    Some(base.into_iter().take(n).collect())
}

/// The folder of the shipped sample, `data/minilm-sample` in this crate.
pub fn minilm_sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/minilm-sample")
}

/// The real-text sample shipped in the repository: a prefix of
/// `minilm-dev` (sentence-transformers/all-MiniLM-L6-v2, 384-d,
/// L2-normalised, so inner product is cosine). It has no ground truth:
/// compute it with [`exact_top_k`].
pub struct MinilmSample {
    pub dim: usize,
    /// 3,000 (text, vector) pairs; row `i` is base vector `i` of minilm-dev.
    pub base: Vec<(String, Vec<f32>)>,
    /// 200 (text, vector) pairs; row `i` is query `i` of minilm-dev.
    pub queries: Vec<(String, Vec<f32>)>,
}

/// Base rows in the shipped sample (see its README for how it was cut).
pub const SAMPLE_BASE_ROWS: usize = 3_000;
/// Query rows in the shipped sample.
pub const SAMPLE_QUERY_ROWS: usize = 200;

/// Reads the shipped sample (`data/minilm-sample`).
///
/// # Panics
/// When a file is missing, malformed or of the wrong size: the sample is
/// committed with the crate, so that is a broken checkout, never a reason
/// to skip a test.
pub fn minilm_sample() -> MinilmSample {
    let dir = minilm_sample_dir();
    let base = read_texts_and_vectors(&dir, "base");
    let queries = read_texts_and_vectors(&dir, "query");
    assert_eq!(
        (base.len(), queries.len()),
        (SAMPLE_BASE_ROWS, SAMPLE_QUERY_ROWS),
        "{}: unexpected (base, query) row counts; regenerate it with scripts/make-test-sample.py",
        dir.display()
    );
    MinilmSample {
        dim: base[0].1.len(),
        base,
        queries,
    }
}

impl MinilmSample {
    /// `n` distinct observations built from the real sample, for tests that
    /// stream more than its 3,000 base rows. The first 3,000 are the base
    /// rows as they are; observation `i` past them, in round `r = i / 3000`
    /// at `j = i % 3000`, is the normalised mean of base rows `j` and
    /// `(j + 1009 r) % 3000`, with the two texts joined. 1009 is prime to
    /// 3,000, so while rounds stay below 1,500 no two observations share a
    /// pair of rows and no row is paired with itself: every observation is
    /// a distinct unit vector, the top-1 for its own embedding.
    ///
    /// # Panics
    /// When `n` needs 1,500 rounds or more.
    pub fn observations(&self, n: usize) -> Vec<(String, Vec<f32>)> {
        const STEP: usize = 1009;
        let rows = self.base.len();
        assert!(
            n.saturating_sub(1) / rows < rows / 2,
            "{n} observations are more than the sample's pairs keep distinct"
        );
        (0..n)
            .map(|i| {
                let (round, j) = (i / rows, i % rows);
                if round == 0 {
                    return self.base[j].clone();
                }
                let (a, b) = (&self.base[j], &self.base[(j + STEP * round) % rows]);
                let mean: Vec<f32> = a.1.iter().zip(&b.1).map(|(x, y)| x + y).collect();
                let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
                (
                    format!("{} {}", a.0, b.0),
                    mean.iter().map(|x| x / norm).collect(),
                )
            })
            .collect()
    }
}

/// The exact top `k` of `base` for `query` by inner product (cosine for the
/// L2-normalised MiniLM vectors), computed in `f64`, ties broken by the
/// smaller index: the same rule as `minilm-dev`'s `groundtruth.ivecs`.
pub fn exact_top_k(base: &[(String, Vec<f32>)], query: &[f32], k: usize) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = base
        .iter()
        .enumerate()
        .map(|(i, (_, v))| {
            let dot = v.iter().zip(query).map(|(a, b)| *a as f64 * *b as f64);
            (dot.sum(), i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, i)| i).collect()
}

/// `NAME.fvecs` with the lines of `NAME.txt` in `dir`, one pair per row.
///
/// # Panics
/// When a file is missing or malformed, or the counts differ.
fn read_texts_and_vectors(dir: &Path, name: &str) -> Vec<(String, Vec<f32>)> {
    let (vecs, txt) = (
        dir.join(format!("{name}.fvecs")),
        dir.join(format!("{name}.txt")),
    );
    let m = read_fvecs(&vecs).unwrap_or_else(|e| panic!("{e}"));
    let texts =
        std::fs::read_to_string(&txt).unwrap_or_else(|e| panic!("reading {}: {e}", txt.display()));
    let lines = texts.lines().count();
    assert_eq!(
        lines,
        m.rows(),
        "{} has {lines} lines for the {} vectors of {}",
        txt.display(),
        m.rows(),
        vecs.display()
    );
    texts
        .lines()
        .enumerate()
        .map(|(i, t)| (t.to_owned(), m.row(i).to_vec()))
        .collect()
}

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::InvalidData, msg)
}

/// A row-major matrix: row `i` is `data[i * dim..(i + 1) * dim]`.
pub struct Matrix<T> {
    pub dim: usize,
    pub data: Vec<T>,
}

impl<T> Matrix<T> {
    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

fn read_records<T>(path: &Path, decode: impl Fn([u8; 4]) -> T) -> Result<Matrix<T>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
    if bytes.len() < 4 {
        return Err(invalid(format!(
            "{}: {} bytes, too short for a vecs file",
            path.display(),
            bytes.len()
        )));
    }
    let dim = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if dim <= 0 {
        return Err(invalid(format!(
            "{}: first record has dimension {dim}, expected a positive number",
            path.display()
        )));
    }
    let dim = dim as usize;
    let record = 4 * (dim + 1);
    if bytes.len() % record != 0 {
        return Err(invalid(format!(
            "{}: {} bytes is not a multiple of the record size {record} (dimension {dim})",
            path.display(),
            bytes.len()
        )));
    }
    let mut data = Vec::with_capacity(bytes.len() / record * dim);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let d = i32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        if d as i64 != dim as i64 {
            return Err(invalid(format!(
                "{}: record {i} has dimension {d}, the file starts with {dim}",
                path.display()
            )));
        }
        data.extend(
            rec[4..]
                .chunks_exact(4)
                .map(|c| decode([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok(Matrix { dim, data })
}

pub fn read_fvecs(path: &Path) -> Result<Matrix<f32>> {
    read_records(path, f32::from_le_bytes)
}

/// Reads an ivecs file of ids, checking each id is in `0..limit`.
pub fn read_ivecs_ids(path: &Path, limit: usize) -> Result<Matrix<usize>> {
    let raw = read_records(path, i32::from_le_bytes)?;
    if let Some((pos, bad)) = raw
        .data
        .iter()
        .enumerate()
        .find(|(_, &v)| v < 0 || v as usize >= limit)
    {
        return Err(invalid(format!(
            "{}: value {bad} at position {pos} is not an id in 0..{limit}",
            path.display()
        )));
    }
    Ok(Matrix {
        dim: raw.dim,
        data: raw.data.into_iter().map(|v| v as usize).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, rows: &[Vec<i32>]) {
        let mut b = Vec::new();
        for r in rows {
            b.extend_from_slice(&(r.len() as i32).to_le_bytes());
            for v in r {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn reads_and_validates_vecs_files() {
        let dir = std::env::temp_dir().join(format!("engram-testdata-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.fvecs");
        let one = 1.5f32.to_bits() as i32;
        write(&f, &[vec![one, 0], vec![0, one]]);
        let m = read_fvecs(&f).unwrap();
        assert_eq!((m.dim, m.rows()), (2, 2));
        assert_eq!(m.row(1), &[0.0, 1.5]);

        let g = dir.join("g.ivecs");
        write(&g, &[vec![1, 0]]);
        assert_eq!(read_ivecs_ids(&g, 2).unwrap().row(0), &[1, 0]);
        assert!(read_ivecs_ids(&g, 1).is_err());

        write(&f, &[vec![1, 2], vec![3]]);
        assert!(read_fvecs(&f).is_err());
        std::fs::write(&f, [2u8, 0, 0, 0, 1]).unwrap();
        assert!(read_fvecs(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_sample_is_there_and_normalised() {
        let s = minilm_sample();
        assert_eq!(s.dim, 384);
        for (text, v) in s.base.iter().chain(&s.queries) {
            assert!(!text.trim().is_empty());
            assert_eq!(v.len(), s.dim);
            let norm = v.iter().map(|x| *x as f64 * *x as f64).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        }
        let top = exact_top_k(&s.base, &s.base[7].1, 3);
        assert_eq!(top[0], 7);
    }

    #[test]
    fn observations_are_distinct_and_start_with_the_base_rows() {
        let s = minilm_sample();
        let obs = s.observations(10_000);
        assert_eq!(obs.len(), 10_000);
        assert_eq!(obs[..s.base.len()], s.base[..]);
        let distinct: std::collections::HashSet<Vec<u32>> = obs
            .iter()
            .map(|(_, v)| v.iter().map(|x| x.to_bits()).collect())
            .collect();
        assert_eq!(distinct.len(), obs.len());
    }
}
