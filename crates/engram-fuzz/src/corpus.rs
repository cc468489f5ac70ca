//! The harness's directories and the files in them.
//!
//! - `corpus/<target>/` — the committed seed corpus, made by the real
//!   writers ([`write_seeds`], `engram-fuzz --write-corpus`).
//! - `regressions/<target>/` — inputs that once crashed a target, kept so
//!   the tests run them for ever (committed).
//! - `crashes/<target>/` — what a fuzz run saves when a target crashes
//!   (ignored by git: triage it, then move it to `regressions/`).

use std::io;
use std::path::{Path, PathBuf};

use crate::targets::TARGETS;

/// This crate's directory (where `corpus/`, `regressions/` and `crashes/` are).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn corpus_dir() -> PathBuf {
    crate_dir().join("corpus")
}

pub fn regressions_dir() -> PathBuf {
    crate_dir().join("regressions")
}

pub fn crashes_dir() -> PathBuf {
    crate_dir().join("crashes")
}

/// The files directly in `dir` (not hidden ones, not `README.md`), sorted
/// by name, with their contents; none when `dir` does not exist.
///
/// # Errors
/// Listing or reading fails.
pub fn files(dir: &Path) -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_file() && !name.starts_with('.') && name != "README.md" {
            paths.push(entry.path());
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| std::fs::read(&p).map(|bytes| (p, bytes)))
        .collect()
}

/// The seed corpus of `target`: the contents of `corpus/<target>/`.
///
/// # Errors
/// Reading fails.
pub fn seeds_of(target: &str) -> io::Result<Vec<Vec<u8>>> {
    Ok(files(&corpus_dir().join(target))?
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect())
}

/// Writes every target's seeds under `root/<target>/` (made by the real
/// writers: see each target's `seeds`), removing files there that are no
/// longer seeds. Returns the number of files and bytes written.
///
/// # Errors
/// Creating, listing, writing or removing fails.
pub fn write_seeds(root: &Path) -> io::Result<(usize, usize)> {
    let (mut count, mut bytes) = (0, 0);
    for t in &TARGETS {
        let dir = root.join(t.name);
        std::fs::create_dir_all(&dir)?;
        let seeds = (t.seeds)();
        for (old, _) in files(&dir)? {
            let name = old.file_name().map(|n| n.to_string_lossy().into_owned());
            if !seeds.iter().any(|(n, _)| Some(n) == name.as_ref()) {
                std::fs::remove_file(old)?;
            }
        }
        for (name, data) in seeds {
            std::fs::write(dir.join(&name), &data)?;
            count += 1;
            bytes += data.len();
        }
    }
    Ok((count, bytes))
}
