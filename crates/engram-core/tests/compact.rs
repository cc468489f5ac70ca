//! Compact spaces (issue 15): the exact vectors of indexed memories live in a
//! file on disk, RAM holds 8-bit codes. Everything a space in memory does
//! must hold for them: recall (exact scores, embeddings), forget, integrity,
//! snapshots and recovery from the snapshot and from the WAL.

mod common;

use common::*;
use engram_core::model::VectorStorage;
use engram_core::{Engine, EngineConfig, Error};

fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    random_vectors(n, dim, seed)
        .iter()
        .map(|v| normalized(v))
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Creates `space` with compact vector storage.
async fn create_compact(engine: &Engine, space: &str, dim: usize) {
    let (info, _) = engine
        .create_space_with(space, Some(dim), Some(VectorStorage::Compact))
        .await
        .unwrap();
    assert_eq!(info.vector_storage, VectorStorage::Compact);
}

/// Remembers `vecs[i]` as `m{i}`.
async fn remember_all(engine: &Engine, space: &str, vecs: &[Vec<f32>]) {
    for (i, v) in vecs.iter().enumerate() {
        engine
            .remember(space, episode(&format!("m{i}"), v.clone()))
            .await
            .unwrap();
    }
}

/// Every memory of `space` is recalled first by its own vector, with that
/// vector (as the engine normalised it: within 1e-6) and an exact score.
fn assert_all_recalled(engine: &Engine, space: &str, vecs: &[Vec<f32>], skip: &[usize]) {
    for (i, v) in vecs.iter().enumerate() {
        if skip.contains(&i) {
            continue;
        }
        let r = engine.recall(space, cue(v, 3)).unwrap();
        let top = &r.memories[0];
        assert_eq!(top.episode.id, format!("m{i}"), "recall of m{i}");
        assert_eq!(top.embedding.len(), v.len());
        for (a, b) in top.embedding.iter().zip(v) {
            assert!((a - b).abs() < 1e-6, "vector of m{i}");
        }
        for m in &r.memories {
            let j: usize = m.episode.id[1..].parse().unwrap();
            let want = dot(v, &vecs[j]);
            assert!(
                (m.similarity - want).abs() < 1e-5,
                "score of m{j}: {} vs {want}",
                m.similarity
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_space_recalls_forgets_and_recovers_like_one_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let vecs = unit_vectors(400, 32, 71);
    {
        let engine = Engine::open(config(dir.path())).unwrap();
        let (info, created) = engine
            .create_space_with("c", Some(32), Some(VectorStorage::Compact))
            .await
            .unwrap();
        assert!(created);
        assert_eq!(info.vector_storage, VectorStorage::Compact);
        for (i, v) in vecs.iter().enumerate().take(300) {
            engine
                .remember("c", episode(&format!("m{i}"), v.clone()))
                .await
                .unwrap();
        }
        wait_indexed(&engine);
        let info = engine.describe_space("c").unwrap();
        assert_eq!(info.indexed_count, 300);
        assert_eq!(info.memory.vectors, 0, "no exact vector in RAM");
        assert_eq!(info.memory.vectors_on_disk, 300 * 32 * 4);
        assert!(info.memory.codes > 0);
        // The rest stays fresh (in RAM, scanned exactly) until indexed.
        engine.pause_indexing();
        for (i, v) in vecs.iter().enumerate().skip(300) {
            engine
                .remember("c", episode(&format!("m{i}"), v.clone()))
                .await
                .unwrap();
        }
        engine.forget("c", "m7").await.unwrap();
        engine.forget("c", "m350").await.unwrap();
        assert_all_recalled(&engine, "c", &vecs, &[7, 350]);
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.snapshot())
            .await
            .unwrap()
            .unwrap()
            .expect("a snapshot");
        // After the snapshot: more, only in the WAL.
        engine.resume_indexing();
        engine.forget("c", "m8").await.unwrap();
        // The check wants each memory in exactly one tier: not while a
        // worker is between inserting it and taking it off the fresh tier.
        wait_indexed(&engine);
        engine.check_integrity("c").unwrap();
        engine.shutdown();
    }
    // Nothing of the vector file is left behind (it is unnamed).
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("vectors"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let engine = Engine::open(config(dir.path())).unwrap();
    wait_indexed(&engine);
    let info = engine.describe_space("c").unwrap();
    assert_eq!(
        info.vector_storage,
        VectorStorage::Compact,
        "kept over restart"
    );
    assert_eq!(info.count, 397);
    assert_eq!(info.indexed_count, 397);
    assert_eq!(info.memory.vectors, 0);
    engine.check_integrity("c").unwrap();
    assert_all_recalled(&engine, "c", &vecs, &[7, 8, 350]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_space_created_in_the_wal_only_comes_back_compact() {
    let dir = tempfile::tempdir().unwrap();
    let vecs = unit_vectors(50, 8, 72);
    {
        let engine = Engine::open(config(dir.path())).unwrap();
        create_compact(&engine, "c", 8).await;
        remember_all(&engine, "c", &vecs).await;
        // No snapshot (dropped without `shutdown`, which would write one):
        // recovery replays the WAL alone.
        drop(engine);
    }
    let engine = Engine::open(config(dir.path())).unwrap();
    assert!(engine.recovery_report().snapshot.is_none());
    wait_indexed(&engine);
    let info = engine.describe_space("c").unwrap();
    assert_eq!(info.vector_storage, VectorStorage::Compact);
    assert_eq!(info.indexed_count, 50);
    assert_all_recalled(&engine, "c", &vecs, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_storage_applies_to_new_spaces_and_a_conflicting_create_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        vector_storage: VectorStorage::Compact,
        ..config(dir.path())
    })
    .unwrap();
    // Auto-created on its first observation: the default.
    let v = unit_vectors(1, 8, 73).remove(0);
    engine.remember("auto", episode("m0", v)).await.unwrap();
    assert_eq!(
        engine.describe_space("auto").unwrap().vector_storage,
        VectorStorage::Compact
    );
    // Named explicitly: what was asked.
    let (info, _) = engine
        .create_space_with("ram", Some(8), Some(VectorStorage::Memory))
        .await
        .unwrap();
    assert_eq!(info.vector_storage, VectorStorage::Memory);
    // Again without a storage, or with the same: no-op; with another: refused.
    assert!(!engine.create_space("ram", Some(8)).await.unwrap().1);
    assert!(
        !engine
            .create_space_with("ram", Some(8), Some(VectorStorage::Memory))
            .await
            .unwrap()
            .1
    );
    let err = engine
        .create_space_with("ram", Some(8), Some(VectorStorage::Compact))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SpaceExists { .. }), "{err:?}");
    assert!(err.to_string().contains("vector storage 'memory'"), "{err}");
    assert_eq!(
        "compact".parse::<VectorStorage>().unwrap(),
        VectorStorage::Compact
    );
    let bad = "disk".parse::<VectorStorage>().unwrap_err();
    assert!(
        bad.to_string().contains("expected 'memory' or 'compact'"),
        "{bad}"
    );
}

/// A compact space whose vector directory cannot be created: the create is
/// refused with a storage error naming the place, nothing is logged, and
/// the engine goes on serving other spaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_directory_that_cannot_be_created_refuses_the_space_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be.
    std::fs::write(dir.path().join("vectors"), b"not a directory").unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let err = engine
        .create_space_with("c", Some(8), Some(VectorStorage::Compact))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    assert!(
        err.to_string().contains("vector file of compact space 'c'"),
        "{err}"
    );
    assert!(engine.describe_space("c").is_err(), "no space was created");
    let v = unit_vectors(1, 8, 74).remove(0);
    engine
        .remember("ram", episode("m0", v.clone()))
        .await
        .unwrap();
    assert_eq!(engine.recall("ram", cue(&v, 1)).unwrap().memories.len(), 1);
    engine.shutdown();
    drop(engine);
    // Nothing of "c" was logged: a restart does not try to create it.
    let engine = Engine::open(config(dir.path())).unwrap();
    assert!(engine.describe_space("c").is_err());
    assert_eq!(engine.describe_space("ram").unwrap().count, 1);
}

/// A restart that cannot create a compact space's vector file (here: a file
/// where the directory should be; in life: a full or read-only disk) stops
/// with an error naming the space, and does not take the snapshot for
/// corrupt: once the disk is fixed, the same data directory opens with
/// everything in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_room_for_the_vector_file_fails_clearly_and_keeps_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let vecs = unit_vectors(40, 8, 75);
    {
        let engine = Engine::open(config(dir.path())).unwrap();
        create_compact(&engine, "c", 8).await;
        remember_all(&engine, "c", &vecs).await;
        wait_indexed(&engine);
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.snapshot())
            .await
            .unwrap()
            .unwrap()
            .expect("a snapshot");
        engine.shutdown();
    }
    let vector_dir = dir.path().join("vectors");
    std::fs::remove_dir_all(&vector_dir).unwrap();
    std::fs::write(&vector_dir, b"not a directory").unwrap();
    let Err(err) = Engine::open(config(dir.path())) else {
        panic!("opened without room for the vector file");
    };
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    assert!(err.to_string().contains("compact space 'c'"), "{err}");
    let corrupt: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("corrupt"))
        .collect();
    assert!(corrupt.is_empty(), "snapshot set aside: {corrupt:?}");

    std::fs::remove_file(&vector_dir).unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    assert!(engine.recovery_report().snapshot.is_some());
    wait_indexed(&engine);
    let info = engine.describe_space("c").unwrap();
    assert_eq!(info.vector_storage, VectorStorage::Compact);
    assert_eq!(info.indexed_count, 40);
    assert_all_recalled(&engine, "c", &vecs, &[]);
}
