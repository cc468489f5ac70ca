//! The data sets tests and benchmarks read, in one place.
//!
//! Readers for the `fvecs` / `ivecs` files of ANN benchmarks (format in
//! `../shared/data/README.md`): little-endian, each record an `i32`
//! dimension followed by that many values. Every value is decoded from its
//! bytes, so the host's byte order and alignment do not matter. Malformed
//! files are errors (`InvalidData`) that name the file and the record.

use std::io::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};

/// The shared data folder (`../shared/data` beside the checkout).
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

/// The first `n` base vectors of `shared/data/minilm-dev` (real 384-d
/// sentence embeddings) with their texts, or `None` when the folder is
/// absent.
///
/// # Panics
/// When the folder is there but its files are malformed or hold fewer than
/// `n` vectors: a broken data set must not pass for a missing one.
pub fn minilm_dev(n: usize) -> Option<Vec<(String, Vec<f32>)>> {
    let dir = shared_data().join("minilm-dev");
    let path = dir.join("base.fvecs");
    if !path.exists() {
        return None;
    }
    let base = read_fvecs(&path).unwrap_or_else(|e| panic!("{e}"));
    let texts = std::fs::read_to_string(dir.join("base.txt"))
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.join("base.txt").display()));
    assert!(
        base.rows() >= n,
        "{} holds {} vectors, fewer than {n}",
        path.display(),
        base.rows()
    );
    assert!(
        texts.lines().count() >= n,
        "{} has fewer than {n} lines",
        dir.join("base.txt").display()
    );
    Some(
        texts
            .lines()
            .take(n)
            .enumerate()
            .map(|(i, t)| (t.to_owned(), base.row(i).to_vec()))
            .collect(),
    )
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

    /// One `Vec` per row.
    pub fn to_rows(&self) -> Vec<Vec<T>>
    where
        T: Clone,
    {
        self.data
            .chunks_exact(self.dim)
            .map(<[T]>::to_vec)
            .collect()
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
}
