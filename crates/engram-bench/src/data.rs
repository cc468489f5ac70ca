//! Readers for the `fvecs` / `ivecs` files of ANN benchmarks (format in
//! `../shared/data/README.md`): little-endian, each record an `i32`
//! dimension followed by that many values. Every value is decoded from its
//! bytes, so the host's byte order and alignment do not matter.

use std::path::Path;

use anyhow::{bail, Context, Result};

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
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 4 {
        bail!(
            "{}: {} bytes, too short for a vecs file",
            path.display(),
            bytes.len()
        );
    }
    let dim = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if dim <= 0 {
        bail!(
            "{}: first record has dimension {dim}, expected a positive number",
            path.display()
        );
    }
    let dim = dim as usize;
    let record = 4 * (dim + 1);
    if bytes.len() % record != 0 {
        bail!(
            "{}: {} bytes is not a multiple of the record size {record} (dimension {dim})",
            path.display(),
            bytes.len()
        );
    }
    let mut data = Vec::with_capacity(bytes.len() / record * dim);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let d = i32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        if d as i64 != dim as i64 {
            bail!(
                "{}: record {i} has dimension {d}, the file starts with {dim}",
                path.display()
            );
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
        bail!(
            "{}: value {bad} at position {pos} is not an id in 0..{limit}",
            path.display()
        );
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
        let dir = std::env::temp_dir().join(format!("engram-bench-data-{}", std::process::id()));
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
