//! Storage: what a snapshot and the WAL promise across restarts (issue 10).

mod common;

use std::sync::Arc;

use common::*;
use engram_core::commit::{Capture, SpaceCapture};
use engram_core::index::HnswParams;
use engram_core::model::{StoredEpisode, VectorStorage};
use engram_core::space::Space;
use engram_core::{snapshot, Engine, SpaceId};

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Defect 4: a snapshot's index is written after its episodes were
/// captured, so it can hold later sequences. After a power loss took their
/// WAL records, a new episode reused such a sequence: it was marked as
/// already indexed (never indexed), and recall served the lost vector under
/// the new id. Here the snapshot's index holds 150 nodes for 100 captured
/// episodes; after the restart the 101st sequence is a new episode, and
/// recall must score it by its own vector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_index_ahead_of_its_episodes_does_not_hide_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 8;
    let vecs: Vec<Vec<f32>> = random_vectors(151, dim, 90)
        .iter()
        .map(|v| unit(v))
        .collect();
    let id = SpaceId::parse("s").unwrap();
    let space = Arc::new(Space::new(id, dim, HnswParams::default()));
    for (i, v) in vecs[..150].iter().enumerate() {
        assert!(space.index().insert(i as u64 + 1, v));
    }
    let episodes = vecs[..100]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Arc::new(StoredEpisode {
                id: format!("e{}", i + 1),
                when_unix_nanos: 0,
                what: String::new(),
                embedding: v.clone().into(),
                encoding_confidence: 1.0,
                tags: Vec::new(),
                metadata: Default::default(),
                server_sequence: i as u64 + 1,
                committed_at_unix_nanos: 0,
                expires_at_unix_nanos: None,
            })
        })
        .collect();
    let capture = Capture {
        next_lsn: 1,
        spaces: vec![SpaceCapture {
            space,
            last_seq: 100,
            episodes,
        }],
    };
    snapshot::write(&engram_core::fs::OsFs, dir.path(), &capture).unwrap();
    drop(capture);

    let engine = Engine::open(config(dir.path())).unwrap();
    let fresh = vecs[150].clone();
    let r = engine
        .remember("s", episode("new", fresh.clone()))
        .await
        .unwrap();
    assert_eq!(r.server_sequence, 101);
    wait_indexed(&engine);
    assert_eq!(engine.describe_space("s").unwrap().indexed_count, 101);
    engine.check_integrity("s").unwrap();
    // Found by its own vector...
    let top = &engine.recall("s", cue(&fresh, 1)).unwrap().memories[0];
    assert_eq!(top.episode.id, "new");
    assert!(top.similarity > 0.999 && top.indexed, "{top:?}");
    // ...and every similarity is the one of the memory's own vector (the
    // lost vector of sequence 101 is not served under "new").
    for q in [&vecs[100], &vecs[120], &fresh] {
        for m in engine.recall("s", cue(q, 20)).unwrap().memories {
            let own: f32 = m.embedding.iter().zip(q.iter()).map(|(a, b)| a * b).sum();
            assert!(
                (own - m.similarity).abs() < 0.02,
                "{} scored {} but its own vector gives {own}",
                m.episode.id,
                m.similarity
            );
        }
    }
    engine.shutdown();
}

/// Defect 3: one snapshot was kept, so one unreadable file meant a server
/// that would not start. Now the two newest are kept and the WAL from the
/// older one on: with the newest corrupted on disk, recovery sets it aside
/// and rebuilds everything from the previous one plus the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_newest_snapshot_falls_back_to_the_previous_one_and_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.wal.segment_bytes = 16 * 1024;
    let vecs = random_vectors(250, 8, 91);
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        for (i, v) in vecs.iter().enumerate() {
            engine
                .remember("s", episode(&format!("e{i}"), v.clone()))
                .await
                .unwrap();
            if i == 99 || i == 199 {
                let e = engine.clone();
                tokio::task::spawn_blocking(move || e.snapshot().unwrap())
                    .await
                    .unwrap();
            }
        }
        // Shutdown writes the third; the two newest stay.
        engine.shutdown();
    }
    let snaps = dir.path().join("snapshots");
    let mut files: Vec<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    // Flip a byte in the middle of the newest.
    let newest = files[1].clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();

    let engine = Engine::open(cfg).unwrap();
    let report = engine.recovery_report().clone();
    assert_eq!(report.snapshot.as_deref(), Some(files[0].as_path()));
    assert!(report.wal_records > 0);
    assert_eq!(engine.describe_space("s").unwrap().count, 250);
    wait_indexed(&engine);
    engine.check_integrity("s").unwrap();
    for (i, v) in vecs.iter().enumerate() {
        let top = &engine.recall("s", cue(v, 1)).unwrap().memories[0];
        assert_eq!(top.episode.id, format!("e{i}"));
    }
    // The unreadable one is kept aside for inspection, not used again.
    assert!(newest.with_extension("snap.corrupt").exists());
    engine.shutdown();
}

/// Defect 6: a panic on the commit thread was not caught: every write then
/// answered "shutting down" while readiness stayed 200. Now the engine
/// turns fatal with the cause, writes fail with it, and what was acked
/// before is recovered by the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_commit_thread_makes_the_engine_fail_stop_and_recovery_keeps_what_was_acked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = engram_core::EngineConfig {
        fault_injection: true,
        ..config(dir.path())
    };
    let vecs = random_vectors(21, 8, 92);
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        for (i, v) in vecs[..20].iter().enumerate() {
            engine
                .remember("f", episode(&format!("e{i}"), v.clone()))
                .await
                .unwrap();
        }
        assert!(engine.fatal().is_none());
        engine.faults().unwrap().kill_commit_thread();
        // The write that meets the panic has no known outcome...
        assert!(engine
            .remember("f", episode("doomed", vecs[20].clone()))
            .await
            .is_err());
        let mut fatal = engine.fatal_watch();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            fatal.wait_for(Option::is_some),
        )
        .await
        .expect("the engine never turned fatal")
        .unwrap();
        let cause = engine.fatal().unwrap();
        assert!(cause.contains("commit thread panicked"), "{cause}");
        // ...and every later one fails with the cause, not "shutting down".
        let e = engine
            .remember("f", episode("later", vecs[20].clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "storage_failure", "{e}");
        assert!(e.to_string().contains("commit thread panicked"), "{e}");
        engine.shutdown();
    }
    let engine = Engine::open(cfg).unwrap();
    assert!(engine.fatal().is_none());
    let info = engine.describe_space("f").unwrap();
    assert!(info.count == 20 || info.count == 21, "{info:?}");
    for (i, v) in vecs[..20].iter().enumerate() {
        let top = &engine.recall("f", cue(v, 1)).unwrap().memories[0];
        assert_eq!(top.episode.id, format!("e{i}"));
    }
    engine.shutdown();
}

/// Defect 5: a batch whose fsync failed was answered "storage error" as if
/// rejected, though its records were written and come back at the next
/// start. The answer now says the outcome is unknown and to resend with the
/// same id after a restart; doing so stores it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_answers_unknown_and_a_resend_with_the_same_id_stores_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = engram_core::EngineConfig {
        fault_injection: true,
        ..config(dir.path())
    };
    cfg.wal.sync = engram_core::wal::SyncPolicy::Always;
    let v = random_vectors(3, 8, 93);
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        engine
            .remember("u", episode("before", v[0].clone()))
            .await
            .unwrap();
        engine.faults().unwrap().fail_next_sync();
        let e = engine
            .remember("u", episode("unknown", v[1].clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "storage_failure");
        let msg = e.to_string();
        assert!(
            msg.contains("outcome is unknown") && msg.contains("same id"),
            "{msg}"
        );
        // Later writes are refused (not written at all), and say so.
        let e = engine
            .remember("u", episode("after", v[2].clone()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no writes are accepted"), "{e}");
        engine.shutdown();
    }
    // After the restart, the client resends what it was not sure of.
    let engine = Engine::open(cfg).unwrap();
    let again = engine
        .remember("u", episode("unknown", v[1].clone()))
        .await
        .unwrap();
    // The record had reached the file: it was stored, so this is a duplicate.
    assert!(again.duplicate, "{again:?}");
    let after = engine
        .remember("u", episode("after", v[2].clone()))
        .await
        .unwrap();
    assert!(
        !after.duplicate,
        "a refused write must not have been stored"
    );
    assert_eq!(engine.describe_space("u").unwrap().count, 3);
    engine.shutdown();
}

/// Issue 15: data directories written by older snapshot formats load:
/// version 1 (every episode stored its vector beside the index's copy),
/// version 2 (no vector storage per space: all in memory) and version 3
/// (no expiry). Each fixture's
/// `README.md` says how it was made. Every memory comes back with its own
/// vector, the indexed ones keep it only in the index, the fresh ones are
/// indexed, every space has its vectors in memory; the next snapshot is
/// written in the current format and loads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_snapshot_loads_and_is_rewritten_in_the_current_format() {
    an_old_snapshot_loads_and_is_rewritten_in_the_current_format(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_snapshot_loads_and_is_rewritten_in_the_current_format() {
    an_old_snapshot_loads_and_is_rewritten_in_the_current_format(2).await;
}

/// Version 3 (before expiry): no default TTL per space, no expiry per
/// episode, and its index still holds the forgotten `e1`'s node, which the
/// rewrite (version 4) leaves out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_snapshot_loads_and_is_rewritten_in_the_current_format() {
    an_old_snapshot_loads_and_is_rewritten_in_the_current_format(3).await;
}

async fn an_old_snapshot_loads_and_is_rewritten_in_the_current_format(version: u32) {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/data/snapshot-v{version}"));
    let dir = tempfile::tempdir().unwrap();
    for sub in ["snapshots", "wal"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for f in std::fs::read_dir(fixture.join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    let snapshot_version = |path: &std::path::Path| {
        let bytes = std::fs::read(path).unwrap();
        u32::from_le_bytes(bytes[8..12].try_into().unwrap())
    };
    let v1 = dir
        .path()
        .join("snapshots/snapshot-00000000000000000065.snap");
    assert_eq!(
        snapshot_version(&v1),
        version,
        "the fixture is a version {version} file"
    );

    let vecs: Vec<Vec<f32>> = random_vectors(60, 8, 4242)
        .iter()
        .map(|v| unit(v))
        .collect();
    let expect = |engine: &Engine| {
        for (space, want) in [("a", 38), ("b", 20)] {
            let episodes = engine.live_episodes(space).unwrap();
            assert_eq!(episodes.len(), want, "live episodes of {space}");
            for e in &episodes {
                let i: usize = e.id[1..].parse().unwrap();
                assert!(e.id != "e1" && e.id != "e55", "{} was forgotten", e.id);
                assert_eq!(space == "b", i.is_multiple_of(3), "{} in {space}", e.id);
                for (a, b) in e.embedding.iter().zip(&vecs[i]) {
                    assert!((a - b).abs() < 1e-6, "{} has another vector", e.id);
                }
                assert_eq!(e.embedding.len(), 8);
            }
        }
    };

    let engine = Engine::open(config(dir.path())).unwrap();
    assert_eq!(
        engine.recovery_report().snapshot.as_deref(),
        Some(v1.as_path())
    );
    assert_eq!(engine.recovery_report().wal_records, 0);
    expect(&engine);
    wait_indexed(&engine);
    for space in ["a", "b"] {
        // Includes: an indexed episode does not hold its vector.
        engine.check_integrity(space).unwrap();
        let info = engine.describe_space(space).unwrap();
        assert_eq!(info.indexed_count, info.count);
        assert_eq!(info.vector_storage, VectorStorage::Memory);
    }
    let top = &engine.recall("a", cue(&vecs[2], 1)).unwrap().memories[0];
    assert_eq!(top.episode.id, "e2");
    assert!(top.indexed && !top.episode.holds_embedding());
    let stored = engine.live_episodes("a").unwrap();
    let e2 = stored.iter().find(|e| e.id == "e2").unwrap();
    assert_eq!(&top.embedding[..], &e2.embedding[..]);
    // The next snapshot (after a change: an unchanged engine writes none)
    // is in the current format.
    engine
        .remember("c", episode("new", vecs[0].clone()))
        .await
        .unwrap();
    let e = engine.clone();
    let v2 = tokio::task::spawn_blocking(move || e.snapshot())
        .await
        .unwrap()
        .unwrap()
        .expect("a new snapshot");
    assert_eq!(snapshot_version(&v2), 4);
    engine.shutdown();
    drop(engine);

    let engine = Engine::open(config(dir.path())).unwrap();
    assert_ne!(
        engine.recovery_report().snapshot.as_deref(),
        Some(v1.as_path())
    );
    expect(&engine);
    wait_indexed(&engine);
    for space in ["a", "b"] {
        engine.check_integrity(space).unwrap();
        // The rewritten index holds the live memories' nodes only (the
        // forgotten e1's is gone): one exact vector of 8 f32 each.
        let info = engine.describe_space(space).unwrap();
        assert_eq!(info.memory.vectors, info.count * 8 * 4, "{space}: {info:?}");
    }
    engine.shutdown();
}

/// Issue 15: once indexed, a memory's vector is kept once, in the index.
/// Recall still returns it (from the index), with the stored episode not
/// holding it; a fresh memory holds its own until it is indexed; both
/// survive a restart from a snapshot and from the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_memory_keeps_its_vector_only_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let vecs: Vec<Vec<f32>> = random_vectors(300, 16, 93)
        .iter()
        .map(|v| unit(v))
        .collect();
    {
        let engine = Engine::open(config(dir.path())).unwrap();
        for (i, v) in vecs[..200].iter().enumerate() {
            engine
                .remember("s", episode(&format!("e{i}"), v.clone()))
                .await
                .unwrap();
        }
        wait_indexed(&engine);
        engine.check_integrity("s").unwrap();
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.snapshot().unwrap())
            .await
            .unwrap();
        engine.pause_indexing();
        for (i, v) in vecs[200..].iter().enumerate() {
            engine
                .remember("s", episode(&format!("e{}", 200 + i), v.clone()))
                .await
                .unwrap();
        }
        for (i, v) in [(5usize, &vecs[5]), (250, &vecs[250])] {
            let m = &engine.recall("s", cue(v, 1)).unwrap().memories[0];
            assert_eq!(m.episode.id, format!("e{i}"));
            assert_eq!(m.indexed, i < 200);
            assert_eq!(m.episode.holds_embedding(), i >= 200, "{m:?}");
            assert!(close(&m.embedding, v), "{m:?}");
        }
        engine.check_integrity("s").unwrap();
        // No shutdown: the restart replays the last 100 from the WAL.
    }
    let engine = Engine::open(config(dir.path())).unwrap();
    assert_eq!(engine.recovery_report().wal_records, 100);
    wait_indexed(&engine);
    engine.check_integrity("s").unwrap();
    let stored = engine.live_episodes("s").unwrap();
    assert_eq!(stored.len(), 300);
    for e in &stored {
        let i: usize = e.id[1..].parse().unwrap();
        assert!(close(&e.embedding, &vecs[i]), "{}", e.id);
        let m = &engine.recall("s", cue(&vecs[i], 1)).unwrap().memories[0];
        assert!(m.episode.id == e.id && m.indexed && !m.episode.holds_embedding());
    }
    engine.shutdown();
}

/// Issue 15: memory is reported by kind, and follows the one-copy rule: a
/// fresh memory's vector is counted as `fresh`, an indexed one's as
/// `vectors` (once), and the metric carries the same numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_reported_by_kind_and_each_vector_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engram_core::EngineConfig {
        metrics: true,
        ..config(dir.path())
    })
    .unwrap();
    let dim = 32;
    let vecs = random_vectors(150, dim, 94);
    for (i, v) in vecs[..100].iter().enumerate() {
        engine
            .remember("m", episode(&format!("m{i}"), v.clone()))
            .await
            .unwrap();
    }
    wait_indexed(&engine);
    let row = (dim * 4) as u64;
    let indexed = engine.describe_space("m").unwrap().memory;
    assert_eq!(
        (indexed.vectors, indexed.fresh),
        (100 * row, 0),
        "{indexed:?}"
    );
    assert!(indexed.codes > 0 && indexed.graph > 0 && indexed.episodes > 0);

    engine.pause_indexing();
    for (i, v) in vecs[100..].iter().enumerate() {
        engine
            .remember("m", episode(&format!("m{}", 100 + i), v.clone()))
            .await
            .unwrap();
    }
    let waiting = engine.describe_space("m").unwrap().memory;
    assert_eq!(
        (waiting.vectors, waiting.fresh),
        (100 * row, 50 * row),
        "{waiting:?}"
    );
    assert!(waiting.episodes > indexed.episodes);
    engine.resume_indexing();
    wait_indexed(&engine);
    let all = engine.describe_space("m").unwrap().memory;
    assert_eq!((all.vectors, all.fresh), (150 * row, 0), "{all:?}");

    engine.forget("m", "m3").await.unwrap();
    let after_forget = engine.describe_space("m").unwrap().memory;
    assert!(
        after_forget.episodes < all.episodes,
        "{after_forget:?} vs {all:?}"
    );

    let text = engine.render_metrics().unwrap();
    for (kind, bytes) in after_forget.by_kind() {
        let line = format!(r#"engram_space_memory_bytes{{kind="{kind}",space_id="m"}} {bytes}"#);
        assert!(text.contains(&line), "{line} missing");
    }
    engine.shutdown();
}
