//! The engine end to end, in process: durability across restarts, read-after-ack
//! visibility, recall correctness, admission control.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use engram_core::wal::SyncPolicy;
use engram_core::{Cue, Engine, Error, Priority};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_ack_with_indexing_paused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    engine.pause_indexing();
    let vecs = random_vectors(200, 24, 1);
    for (i, v) in vecs.iter().enumerate() {
        let done = engine
            .remember("agent", episode(&format!("e{i}"), v.clone()))
            .await
            .unwrap();
        assert_eq!(done.server_sequence, i as u64 + 1);
        // The very next recall sees it, from the fresh tier.
        let r = engine.recall("agent", cue(v, 1)).unwrap();
        assert!(r.snapshot_sequence >= done.server_sequence);
        let top = &r.memories[0];
        assert_eq!(
            top.episode.id,
            format!("e{i}"),
            "acked episode missing from the next recall"
        );
        assert!(
            !top.indexed,
            "indexing is paused, so it must come from the fresh tier"
        );
    }
    assert_eq!(engine.describe_space("agent").unwrap().indexed_count, 0);
    engine.resume_indexing();
    wait_indexed(&engine);
    let info = engine.describe_space("agent").unwrap();
    assert_eq!(
        (info.count, info.indexed_count, info.queue_depth),
        (200, 200, 0)
    );
    for (i, v) in vecs.iter().enumerate() {
        let top = &engine.recall("agent", cue(v, 1)).unwrap().memories[0];
        assert_eq!(top.episode.id, format!("e{i}"));
        assert!(top.indexed);
    }
    engine.check_integrity("agent").unwrap();
    engine.shutdown();
}

/// Brute force over normalised vectors: ids of the top k.
fn brute_force(base: &[(String, Vec<f32>)], q: &[f32], k: usize) -> Vec<String> {
    let q = normalized(q);
    let mut scored: Vec<(f32, usize)> = base
        .iter()
        .enumerate()
        .map(|(i, (_, v))| (normalized(v).iter().zip(&q).map(|(a, b)| a * b).sum(), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored
        .iter()
        .take(k)
        .map(|(_, i)| base[*i].0.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_spaces_equal_brute_force_across_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let vecs = random_vectors(400, 16, 2);
    let mut base = Vec::new();
    for (i, v) in vecs.iter().enumerate() {
        if i == 250 {
            // The rest stays in the fresh tier: recall must merge both.
            wait_indexed(&engine);
            engine.pause_indexing();
        }
        let id = format!("m{i}");
        engine
            .remember("small", episode(&id, v.clone()))
            .await
            .unwrap();
        base.push((id, v.clone()));
    }
    let info = engine.describe_space("small").unwrap();
    assert_eq!((info.indexed_count, info.queue_depth), (250, 150));
    for q in random_vectors(60, 16, 3) {
        let got: Vec<String> = engine
            .recall("small", cue(&q, 20))
            .unwrap()
            .memories
            .iter()
            .map(|m| m.episode.id.clone())
            .collect();
        assert_eq!(got, brute_force(&base, &q, 20));
    }
    engine.resume_indexing();
    engine.shutdown();
}

/// Recall@10 at default index settings on real text: the sample of MiniLM
/// embeddings shipped in `engram-testdata` (3,000 base vectors, 200
/// queries), against the exact top 10 computed here by brute force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_recall_at_10_meets_target_at_default_settings() {
    let sample = engram_testdata::minilm_sample();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with(dir.path(), SyncPolicy::None);
    cfg.queue.capacity = 2 * sample.base.len();
    let engine = Engine::open(cfg).unwrap();
    engine
        .create_space("minilm", Some(sample.dim))
        .await
        .unwrap();
    for (i, (_, v)) in sample.base.iter().enumerate() {
        engine
            .remember("minilm", episode(&i.to_string(), v.clone()))
            .await
            .unwrap();
    }
    wait_indexed(&engine);
    let mut hits = 0usize;
    for (_, q) in &sample.queries {
        let truth: HashSet<String> = engram_testdata::exact_top_k(&sample.base, q, 10)
            .iter()
            .map(|i| i.to_string())
            .collect();
        let r = engine.recall("minilm", cue(q, 10)).unwrap();
        assert_eq!(r.memories.len(), 10);
        hits += r
            .memories
            .iter()
            .filter(|m| truth.contains(&m.episode.id))
            .count();
    }
    let recall = hits as f64 / (10 * sample.queries.len()) as f64;
    println!("minilm-sample recall@10 at default settings: {recall:.4}");
    assert!(recall >= 0.95, "recall@10 {recall:.4} is below 0.95");
    engine.check_integrity("minilm").unwrap();
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_recovers_every_acked_change() {
    let dir = tempfile::tempdir().unwrap();
    let vecs = random_vectors(600, 12, 4);
    {
        let engine = Engine::open(config(dir.path())).unwrap();
        for (i, v) in vecs.iter().enumerate() {
            engine
                .remember("keep", episode(&format!("k{i}"), v.clone()))
                .await
                .unwrap();
        }
        for i in 0..20 {
            engine.forget("keep", &format!("k{i}")).await.unwrap();
        }
        engine
            .remember("gone", episode("x", vec![1.0; 12]))
            .await
            .unwrap();
        engine.delete_space("gone").await.unwrap();
        // No shutdown: the engine is dropped as a crash would leave it.
    }
    let engine = Engine::open(config(dir.path())).unwrap();
    assert_eq!(engine.recovery_report().wal_records, 600 + 20 + 2 + 1 + 1);
    let info = engine.describe_space("keep").unwrap();
    assert_eq!((info.count, info.last_sequence), (580, 600));
    assert!(matches!(
        engine.describe_space("gone"),
        Err(Error::SpaceNotFound(_))
    ));
    for (i, v) in vecs.iter().enumerate() {
        let top = engine.recall("keep", cue(v, 1)).unwrap().memories.remove(0);
        if i < 20 {
            assert_ne!(
                top.episode.id,
                format!("k{i}"),
                "a forgotten memory came back"
            );
        } else {
            assert_eq!(top.episode.id, format!("k{i}"));
            assert_eq!(top.episode.server_sequence, i as u64 + 1);
        }
    }
    // Sequences continue; ids stay unique after recovery.
    let again = engine
        .remember("keep", episode("k100", vecs[100].clone()))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.server_sequence, 101);
    let next = engine
        .remember("keep", episode("new", vec![0.5; 12]))
        .await
        .unwrap();
    assert_eq!(next.server_sequence, 601);
    wait_indexed(&engine);
    engine.check_integrity("keep").unwrap();
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_truncates_the_wal_and_recovery_replays_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let vecs = random_vectors(500, 8, 5);
    let mut cfg = config(dir.path());
    cfg.wal.segment_bytes = 16 * 1024;
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        let wal_files = || std::fs::read_dir(dir.path().join("wal")).unwrap().count();
        let snapshots = || std::fs::read_dir(dir.path().join("snapshots")).map_or(0, |d| d.count());
        let snapshot = |engine: &Engine| {
            let e2 = engine.clone();
            async move {
                tokio::task::spawn_blocking(move || e2.snapshot())
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        for (i, v) in vecs[..150].iter().enumerate() {
            engine
                .remember("s", episode(&format!("a{i}"), v.clone()))
                .await
                .unwrap();
        }
        // The first snapshot removes no WAL: if it were unreadable, the
        // whole WAL is what recovery would need.
        let before = wal_files();
        assert!(snapshot(&engine).await.is_some());
        assert_eq!(wal_files(), before + 1, "only a rotation, no truncation");
        for (i, v) in vecs[150..300].iter().enumerate() {
            engine
                .remember("s", episode(&format!("a{}", i + 150), v.clone()))
                .await
                .unwrap();
        }
        wait_indexed(&engine);
        engine.forget("s", "a7").await.unwrap();
        let before = wal_files();
        assert!(
            before > 2,
            "tiny segments should have rotated, have {before}"
        );
        // The second removes the WAL the first covers, and both are kept.
        assert!(snapshot(&engine).await.is_some());
        assert!(wal_files() < before, "snapshot did not truncate the WAL");
        assert_eq!(snapshots(), 2);
        for (i, v) in vecs[300..310].iter().enumerate() {
            engine
                .remember("s", episode(&format!("x{i}"), v.clone()))
                .await
                .unwrap();
        }
        // A third: still the two newest.
        assert!(snapshot(&engine).await.is_some());
        assert_eq!(snapshots(), 2);
        engine.pause_indexing();
        for (i, v) in vecs[310..].iter().enumerate() {
            engine
                .remember("s", episode(&format!("b{i}"), v.clone()))
                .await
                .unwrap();
        }
        engine.forget("s", "b3").await.unwrap();
    }
    let engine = Engine::open(cfg).unwrap();
    let report = engine.recovery_report().clone();
    assert!(report.snapshot.is_some());
    assert_eq!(report.snapshot_episodes, 309);
    assert_eq!(report.wal_records, 191);
    let info = engine.describe_space("s").unwrap();
    assert_eq!((info.count, info.last_sequence), (498, 500));
    wait_indexed(&engine);
    for (i, v) in vecs.iter().enumerate() {
        let id = if i < 300 {
            format!("a{i}")
        } else if i < 310 {
            format!("x{}", i - 300)
        } else {
            format!("b{}", i - 310)
        };
        let top = engine.recall("s", cue(v, 1)).unwrap().memories.remove(0);
        if id == "a7" || id == "b3" {
            assert_ne!(top.episode.id, id);
        } else {
            assert_eq!(top.episode.id, id);
        }
    }
    engine.check_integrity("s").unwrap();
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_queued_backlog_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vecs = random_vectors(1000, 16, 6);
    {
        let engine = Engine::open(config(dir.path())).unwrap();
        engine.pause_indexing();
        for (i, v) in vecs.iter().enumerate() {
            engine
                .remember("q", episode(&i.to_string(), v.clone()))
                .await
                .unwrap();
        }
        assert_eq!(engine.queue_depth(), 1000);
        let e2 = engine.clone();
        tokio::task::spawn_blocking(move || e2.shutdown())
            .await
            .unwrap();
        assert!(matches!(
            engine.remember("q", episode("late", vecs[0].clone())).await,
            Err(Error::ShuttingDown)
        ));
    }
    let engine = Engine::open(config(dir.path())).unwrap();
    assert_eq!(
        engine.recovery_report().wal_records,
        0,
        "shutdown snapshot covers everything"
    );
    wait_indexed(&engine);
    assert_eq!(engine.describe_space("q").unwrap().indexed_count, 1000);
    for (i, v) in vecs.iter().enumerate() {
        assert_eq!(
            engine.recall("q", cue(v, 1)).unwrap().memories[0]
                .episode
                .id,
            i.to_string()
        );
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_rejects_at_capacity_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.queue.capacity = 50;
    let engine = Engine::open(cfg).unwrap();
    engine.pause_indexing();
    let vecs = random_vectors(60, 8, 7);
    // Normal priority may fill 90% of the queue...
    for (i, v) in vecs[..45].iter().enumerate() {
        engine
            .remember("o", episode(&i.to_string(), v.clone()))
            .await
            .unwrap();
    }
    match engine.remember("o", episode("x", vecs[45].clone())).await {
        Err(Error::Overloaded {
            depth,
            capacity,
            retry_after,
        }) => {
            assert_eq!((depth, capacity), (45, 50));
            assert!(retry_after >= Duration::from_millis(50));
        }
        other => panic!("expected overload, got {other:?}"),
    }
    // ...high priority the last 10%, and never more.
    for (i, v) in vecs[45..50].iter().enumerate() {
        let id = format!("h{i}");
        engine
            .submit_remember("o", episode(&id, v.clone()), Priority::High)
            .unwrap()
            .await
            .unwrap();
    }
    assert!(matches!(
        engine.submit_remember("o", episode("h5", vecs[50].clone()), Priority::High),
        Err(Error::Overloaded { .. })
    ));
    assert_eq!(engine.queue_depth(), 50);
    // Recalls are still served, and the rejected ones were not stored.
    assert_eq!(engine.describe_space("o").unwrap().count, 50);
    assert_eq!(
        engine.recall("o", cue(&vecs[3], 1)).unwrap().memories[0]
            .episode
            .id,
        "3"
    );
    engine.resume_indexing();
    wait_indexed(&engine);
    engine
        .remember("o", episode("x", vecs[50].clone()))
        .await
        .unwrap();
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recalls_never_see_past_their_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config_with(dir.path(), SyncPolicy::None)).unwrap();
    let vecs = random_vectors(3000, 8, 8);
    engine
        .remember("iso", episode("seed", vecs[0].clone()))
        .await
        .unwrap();
    let writer = {
        let engine = engine.clone();
        let vecs = vecs.clone();
        tokio::spawn(async move {
            for (i, v) in vecs.into_iter().enumerate().skip(1) {
                engine
                    .remember("iso", episode(&i.to_string(), v))
                    .await
                    .unwrap();
            }
        })
    };
    let mut recalls = 0;
    while !writer.is_finished() {
        let r = engine
            .recall("iso", cue(&vecs[recalls % vecs.len()], 50))
            .unwrap();
        for m in &r.memories {
            assert!(m.episode.server_sequence <= r.snapshot_sequence);
        }
        recalls += 1;
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert!(recalls > 10);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    engine.create_space("b", Some(4)).await.unwrap();
    engine
        .remember("b", episode("ok", vec![1.0, 0.0, 0.0, 0.0]))
        .await
        .unwrap();
    // From here the queue is empty, so any place left is a rejection's.
    wait_indexed(&engine);
    let code = |r: Result<engram_core::model::Remembered, Error>| r.unwrap_err().code();
    assert_eq!(
        code(engine.remember("b", episode("d", vec![1.0; 3])).await),
        "dimension_mismatch"
    );
    assert_eq!(
        code(
            engine
                .remember("b", episode("n", vec![f32::NAN, 0.0, 0.0, 1.0]))
                .await
        ),
        "invalid_argument"
    );
    assert_eq!(
        code(engine.remember("b", episode("z", vec![0.0; 4])).await),
        "invalid_argument"
    );
    assert_eq!(
        code(engine.remember("B!", episode("z", vec![1.0; 4])).await),
        "invalid_argument"
    );
    assert!(matches!(
        engine.create_space("b", Some(5)).await,
        Err(Error::SpaceExists { .. })
    ));
    assert!(matches!(
        engine.forget("b", "nope").await,
        Err(Error::MemoryNotFound { .. })
    ));
    assert!(matches!(
        engine.recall("nope", cue(&[1.0; 4], 1)),
        Err(Error::SpaceNotFound(_))
    ));
    assert_eq!(
        engine.queue_depth(),
        0,
        "rejections must give their queue place back"
    );
    let info = engine.describe_space("b").unwrap();
    assert_eq!((info.count, info.last_sequence), (1, 1));
    engine.shutdown();
}

#[test]
fn a_data_directory_serves_one_engine_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Engine::open(config(dir.path())).unwrap();
    let second = Engine::open(config(dir.path()))
        .err()
        .expect("a second engine on the same directory must fail");
    assert_eq!(second.code(), "storage_failure");
    assert!(
        second
            .to_string()
            .contains("in use by another engram process"),
        "{second}"
    );
    first.shutdown();
    drop(first);
    Engine::open(config(dir.path())).unwrap().shutdown();
}

/// The value of one sample line of the text exposition, e.g.
/// `engram_streaming_observations_total{priority="normal",space_id="m"}`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Acceptances are recorded by the commit thread in chunks: every ack must
/// already be counted when the caller sees it (no scrape can lag an ack),
/// across chunk boundaries, for pipelined batches, duplicates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ack_is_counted_before_the_caller_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let total = |e: &Engine, p: &str| {
        sample(
            &e.render_metrics().unwrap(),
            &format!("engram_streaming_observations_total{{priority=\"{p}\",space_id=\"m\"}}"),
        )
    };
    let latency_count = |e: &Engine| {
        sample(
            &e.render_metrics().unwrap(),
            "engram_streaming_observation_latency_seconds_count{space_id=\"m\"}",
        )
    };
    let vecs = random_vectors(1000, 8, 7);
    // One at a time: the space is created by the first; each is counted.
    for (i, v) in vecs[..10].iter().enumerate() {
        engine
            .remember("m", episode(&format!("a{i}"), v.clone()))
            .await
            .unwrap();
        assert_eq!(total(&engine, "normal"), (i + 1) as f64);
        assert_eq!(latency_count(&engine), (i + 1) as f64);
    }
    // Pipelined, so commit batches hold many answer chunks; mixed lanes.
    let mut pending = Vec::new();
    for (i, v) in vecs[10..].iter().enumerate() {
        let p = if i % 3 == 0 {
            Priority::High
        } else {
            Priority::Normal
        };
        let input = episode(&format!("b{i}"), v.clone());
        pending.push((p, engine.submit_remember("m", input, p).unwrap()));
    }
    let (mut high, mut normal) = (0.0, 10.0);
    for (p, ack) in pending {
        ack.await.unwrap();
        match p {
            Priority::High => high += 1.0,
            _ => normal += 1.0,
        }
        // Counted no later than answered (chunks publish before answering).
        assert!(total(&engine, "high") >= high);
        assert!(total(&engine, "normal") >= normal);
    }
    assert_eq!(
        (total(&engine, "high"), total(&engine, "normal")),
        (330.0, 670.0)
    );
    assert_eq!(latency_count(&engine), 1000.0);
    // An idempotent retry is answered ACCEPTED (duplicate): its latency is
    // an ack's, but it is counted as a duplicate, not as stored (issue 11,
    // defect 8: it was counted as accepted).
    let again = engine
        .remember("m", episode("a0", vecs[0].clone()))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(total(&engine, "normal"), 670.0);
    assert_eq!(
        sample(
            &engine.render_metrics().unwrap(),
            "engram_streaming_observations_duplicate_total{space_id=\"m\"}"
        ),
        1.0
    );
    assert_eq!(latency_count(&engine), 1001.0);
    let sum = sample(
        &engine.render_metrics().unwrap(),
        "engram_streaming_observation_latency_seconds_sum{space_id=\"m\"}",
    );
    assert!(sum > 0.0 && sum < 1001.0 * 10.0, "latency sum {sum}");
    // A rejection (wrong dimension for the space) counts as rejected with
    // its reason, not as accepted.
    let err = engine
        .remember("m", episode("bad", vec![1.0; 9]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DimensionMismatch { .. }), "{err:?}");
    assert_eq!(total(&engine, "normal"), 670.0);
    assert_eq!(
        sample(
            &engine.render_metrics().unwrap(),
            "engram_streaming_observations_rejected_total{reason=\"invalid\",space_id=\"m\"}"
        ),
        1.0
    );
    engine.shutdown();
}

/// An incremental recall sends its first batch from a search for just that
/// batch, then the rest of the full top-k: together exactly the unary
/// recall's results, each once, the last batch marked, in both tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_stream_batches_add_up_to_the_unary_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let vecs = random_vectors(300, 16, 77);
    for (i, v) in vecs.iter().take(200).enumerate() {
        engine
            .remember("inc", episode(&format!("e{i}"), v.clone()))
            .await
            .unwrap();
    }
    wait_indexed(&engine);
    // The rest stays in the fresh tier.
    engine.pause_indexing();
    for (i, v) in vecs.iter().enumerate().skip(200) {
        engine
            .remember("inc", episode(&format!("e{i}"), v.clone()))
            .await
            .unwrap();
    }
    for (q, (k, batch)) in random_vectors(20, 16, 78)
        .iter()
        .zip([(25, 7), (10, 10), (10, 1), (40, 16)].iter().cycle())
    {
        let unary = engine.recall("inc", cue(q, *k)).unwrap();
        let batches: Vec<_> = engine
            .recall_stream("inc", cue(q, *k), *batch)
            .unwrap()
            .collect();
        assert!(batches[..batches.len() - 1].iter().all(|b| b.more));
        assert!(!batches.last().unwrap().more);
        assert!(batches.iter().all(|b| b.memories.len() <= *batch));
        assert!(batches
            .iter()
            .all(|b| b.snapshot_sequence == unary.snapshot_sequence));
        let first: Vec<u64> = batches[0]
            .memories
            .iter()
            .map(|m| m.episode.server_sequence)
            .collect();
        let top: Vec<u64> = unary.memories[..*batch.min(k)]
            .iter()
            .map(|m| m.episode.server_sequence)
            .collect();
        assert_eq!(first, top, "the first batch is the best {batch}");
        let mut streamed: Vec<u64> = batches
            .iter()
            .flat_map(|b| b.memories.iter().map(|m| m.episode.server_sequence))
            .collect();
        let n = streamed.len();
        streamed.sort_unstable();
        streamed.dedup();
        assert_eq!(streamed.len(), n, "a memory was sent twice");
        let mut expected: Vec<u64> = unary
            .memories
            .iter()
            .map(|m| m.episode.server_sequence)
            .collect();
        expected.sort_unstable();
        assert_eq!(streamed, expected);
    }
    engine.resume_indexing();
}

/// Issue 10, defect 1: with `wal.sync = interval`, the commit loop synced
/// only when its receive timed out, so under sustained writes it never
/// did (only a segment rotation or a snapshot bounded the loss window).
/// Continuous pipelined writes for a second must see the interval's syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_sync_runs_under_continuous_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with(dir.path(), SyncPolicy::Interval);
    cfg.wal.sync_interval_ms = 20;
    // A second of writes outruns indexing: room for all of it.
    cfg.queue.capacity = 1_000_000;
    let engine = Engine::open(cfg).unwrap();
    let syncs = |e: &Engine| {
        sample(
            &e.render_metrics().unwrap(),
            "engram_wal_sync_duration_seconds_count",
        )
    };
    let before = syncs(&engine);
    let vecs = random_vectors(64, 8, 77);
    let started = std::time::Instant::now();
    let mut n = 0u64;
    // Keep the commit channel busy: a window of writes always in flight.
    let mut pending = std::collections::VecDeque::new();
    while started.elapsed() < Duration::from_secs(1) {
        let v = vecs[(n % 64) as usize].clone();
        pending.push_back(
            engine
                .submit_remember("busy", episode(&format!("x{n}"), v), Priority::Normal)
                .unwrap(),
        );
        n += 1;
        if pending.len() >= 256 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    let synced = syncs(&engine) - before;
    println!("{n} writes in {took:.2} s, {synced} interval syncs");
    // One every 20 ms would be 50; allow a slow, shared machine a lot.
    assert!(
        synced >= 10.0,
        "only {synced} syncs in {took:.2} s of writes"
    );
    engine.shutdown();
}

/// A snapshot (and so a shutdown) requested from inside a tokio task whose
/// cooperative budget is spent used to spin for ever: the blocking wait for
/// the commit thread polled its receiver, which answered Pending and woke
/// itself at once, and the loop never yielded to refill the budget. Found
/// when a test shut down right after awaiting thousands of acks.
#[test]
fn a_snapshot_from_a_task_whose_budget_is_spent_returns() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let e = engine.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            e.remember("b", episode("x", vec![1.0, 0.0])).await.unwrap();
            // Spend the task's budget without yielding: ready receivers
            // polled once each.
            for _ in 0..1000 {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                tx.send(()).unwrap();
                let _ = futures::FutureExt::now_or_never(rx);
            }
            let r = e.snapshot();
            done_tx.send(r.map(|p| p.is_some())).unwrap();
        });
    });
    let r = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("snapshot() never returned inside a task with a spent budget");
    assert!(r.unwrap(), "a snapshot was written");
    engine.shutdown();
}

/// A cue's `ef_search` sets the search breadth of that recall: as wide as
/// the space, the index search is exhaustive and the top-k is exactly the
/// brute-force one; out of range is a clear error naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cue_sets_its_own_search_breadth() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let vecs: Vec<Vec<f32>> = random_vectors(2000, 16, 515)
        .iter()
        .map(|v| normalized(v))
        .collect();
    for (i, v) in vecs.iter().enumerate() {
        engine
            .remember("s", episode(&format!("m{i}"), v.clone()))
            .await
            .unwrap();
    }
    wait_indexed(&engine);
    for q in random_vectors(30, 16, 516).iter().map(|v| normalized(v)) {
        let mut want: Vec<(f32, usize)> = vecs
            .iter()
            .enumerate()
            .map(|(i, v)| (v.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>(), i))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want: Vec<String> = want[..10].iter().map(|(_, i)| format!("m{i}")).collect();
        let got = engine
            .recall(
                "s",
                Cue {
                    ef_search: Some(2000),
                    ..cue(&q, 10)
                },
            )
            .unwrap();
        let got: Vec<String> = got.memories.iter().map(|m| m.episode.id.clone()).collect();
        assert_eq!(got, want);
    }
    for bad in [0, 4097] {
        let err = engine
            .recall(
                "s",
                Cue {
                    ef_search: Some(bad),
                    ..cue(&vecs[0], 10)
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("cue.ef_search"), "{err}");
    }
}
