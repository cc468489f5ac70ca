//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use engram_core::wal::SyncPolicy;
use engram_core::{Cue, Engine, EngineConfig, EpisodeInput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn config(dir: &Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        workers: 2,
        snapshot_interval_secs: 0,
        ..EngineConfig::default()
    }
}

pub fn config_with(dir: &Path, sync: SyncPolicy) -> EngineConfig {
    let mut c = config(dir);
    c.wal.sync = sync;
    c
}

/// Waits for `cond` with a deadline, checking every few milliseconds.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

pub fn wait_indexed(engine: &Engine) {
    wait_for(
        "the indexing queue to drain",
        Duration::from_secs(120),
        || engine.queue_depth() == 0,
    );
}

pub fn random_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
        .collect()
}

pub fn episode(id: &str, embedding: Vec<f32>) -> EpisodeInput {
    EpisodeInput {
        id: Some(id.to_owned()),
        what: format!("text of {id}"),
        embedding,
        ..Default::default()
    }
}

pub fn cue(embedding: &[f32], k: usize) -> Cue {
    Cue {
        embedding: embedding.to_vec(),
        max_results: Some(k),
        similarity_threshold: Some(-1.0),
        when_from: None,
        when_to: None,
        ef_search: None,
        filter: Default::default(),
        recency_half_life_secs: None,
    }
}

pub fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}
