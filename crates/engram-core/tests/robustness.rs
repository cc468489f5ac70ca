//! Failure modes of the engine's own threads and tasks (issue 11): panics
//! inside an index insert, a task that always panics, and what each leaves
//! behind — in memory, in recall, in the next snapshot and after a restart.

mod common;

use std::time::Duration;

use common::*;
use engram_core::{Engine, EngineConfig};

fn faulty(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        fault_injection: true,
        ..config(dir)
    }
}

/// Every episode's own vector recalls it first.
fn assert_all_recalled(engine: &Engine, space: &str, vecs: &[Vec<f32>], prefix: &str) {
    for (i, v) in vecs.iter().enumerate() {
        let r = engine.recall(space, cue(v, 1)).unwrap();
        assert_eq!(
            r.memories[0].episode.id,
            format!("{prefix}{i}"),
            "episode {i} is not recalled by its own vector"
        );
    }
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Defect 2: a panic inside an HNSW insert (after the node was reserved and
/// its own links written) used to leave the label reserved; the retry's
/// insert returned false, the task was marked indexed, and the episode left
/// the fresh tier without being in the graph: hidden from recall, and the
/// half-linked node went into the next snapshot. Now the retry finishes the
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_an_insert_strands_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(faulty(dir.path())).unwrap();
    let vecs = random_vectors(600, 16, 21);
    for (i, v) in vecs[..300].iter().enumerate() {
        engine
            .remember("s", episode(&format!("p{i}"), v.clone()))
            .await
            .unwrap();
    }
    wait_indexed(&engine);
    let restarts_before = engine.worker_restarts();
    // Five rounds, one panic each: transient failures (fewer than
    // max_task_failures per task), each retried and finished.
    for round in 0..5 {
        engine.inject_insert_panics("s", 1).unwrap();
        let start = 300 + round * 60;
        for (i, v) in vecs.iter().enumerate().skip(start).take(60) {
            engine
                .remember("s", episode(&format!("p{i}"), v.clone()))
                .await
                .unwrap();
        }
        wait_indexed(&engine);
    }
    assert_eq!(engine.worker_restarts() - restarts_before, 5);
    let info = engine.describe_space("s").unwrap();
    assert_eq!(
        (info.count, info.indexed_count, info.quarantined_count),
        (600, 600, 0)
    );
    engine.check_integrity("s").unwrap();
    assert_all_recalled(&engine, "s", &vecs, "p");
    // The snapshot and a restart hold the same complete graph.
    engine.snapshot().unwrap();
    engine.shutdown();
    drop(engine);
    let engine = Engine::open(faulty(dir.path())).unwrap();
    wait_indexed(&engine);
    engine.check_integrity("s").unwrap();
    assert_eq!(engine.describe_space("s").unwrap().indexed_count, 600);
    assert_all_recalled(&engine, "s", &vecs, "p");
    engine.shutdown();
}

/// Defect 3: a task that always panics used to be requeued at the front of
/// its lane for ever: its space never drained, and the global queue filled
/// until every NORMAL write was rejected. Now it is quarantined after
/// `max_task_failures`: recalled from the fresh tier, counted, and the
/// queue moves on; a restart (without the fault) indexes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_task_is_quarantined_and_the_queue_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(faulty(dir.path())).unwrap();
    let vecs = random_vectors(400, 16, 22);
    engine.pause_indexing();
    for (i, v) in vecs.iter().enumerate() {
        engine
            .remember("s", episode(&format!("q{i}"), v.clone()))
            .await
            .unwrap();
    }
    engine.inject_poison("s", "q7").unwrap();
    engine.resume_indexing();
    // The queue drains although q7 can never be indexed.
    wait_indexed(&engine);
    let info = engine.describe_space("s").unwrap();
    assert_eq!(
        (
            info.count,
            info.indexed_count,
            info.queue_depth,
            info.quarantined_count
        ),
        (400, 399, 0, 1)
    );
    assert_eq!(info.index_lag_seconds, 0.0, "a quarantined task is not lag");
    let metrics = engine.render_metrics().unwrap();
    assert_eq!(
        sample(
            &metrics,
            "engram_streaming_quarantined_total{space_id=\"s\"}"
        ),
        1.0
    );
    // Tried max_task_failures (3) times, then left alone.
    assert_eq!(engine.worker_restarts(), 3);
    // Recalled, from the exact-scanned fresh tier.
    let top = &engine.recall("s", cue(&vecs[7], 1)).unwrap().memories[0];
    assert_eq!((top.episode.id.as_str(), top.indexed), ("q7", false));
    assert_all_recalled(&engine, "s", &vecs, "q");
    engine.check_integrity("s").unwrap();
    // New writes are admitted and indexed as usual.
    let more = random_vectors(50, 16, 23);
    for (i, v) in more.iter().enumerate() {
        engine
            .remember("s", episode(&format!("m{i}"), v.clone()))
            .await
            .unwrap();
    }
    wait_indexed(&engine);
    assert_eq!(engine.describe_space("s").unwrap().indexed_count, 449);
    // Snapshot (it keeps q7 in the fresh tier, its node abandoned) and
    // restart: without the fault, q7 is indexed.
    engine.snapshot().unwrap();
    engine.shutdown();
    drop(engine);
    let engine = Engine::open(faulty(dir.path())).unwrap();
    wait_for(
        "q7 indexed after the restart",
        Duration::from_secs(60),
        || engine.describe_space("s").unwrap().indexed_count == 450,
    );
    let info = engine.describe_space("s").unwrap();
    assert_eq!((info.quarantined_count, info.queue_depth), (0, 0));
    engine.check_integrity("s").unwrap();
    let top = &engine.recall("s", cue(&vecs[7], 1)).unwrap().memories[0];
    assert_eq!((top.episode.id.as_str(), top.indexed), ("q7", true));
    engine.shutdown();
}

/// Defect 4: a recall held the space's read lock for its whole index
/// search; the commit thread applies every acked observation under the
/// write lock, so acks waited behind recalls. With a recall held inside
/// its search for 5 s, an observation must be acked while that recall is
/// still searching (on the old code the ack came only after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_does_not_wait_for_a_recall_in_its_index_search() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(faulty(dir.path())).unwrap();
    let vecs = random_vectors(200, 16, 24);
    for (i, v) in vecs.iter().enumerate() {
        engine
            .remember("s", episode(&format!("r{i}"), v.clone()))
            .await
            .unwrap();
    }
    wait_indexed(&engine);
    let entered = engine
        .inject_search_delay("s", Duration::from_secs(5))
        .unwrap();
    let recaller = {
        let engine = engine.clone();
        let cue_vec = vecs[3].clone();
        std::thread::spawn(move || engine.recall("s", cue(&cue_vec, 5)).unwrap())
    };
    wait_for(
        "the recall to enter its search",
        Duration::from_secs(10),
        || entered() >= 1,
    );
    let acked = engine
        .remember("s", episode("during", vecs[4].clone()))
        .await
        .unwrap();
    assert!(
        !recaller.is_finished(),
        "the ack came only after the recall finished its search"
    );
    assert!(!acked.duplicate);
    drop(engine.inject_search_delay("s", Duration::ZERO).unwrap());
    let r = recaller.join().unwrap();
    assert_eq!(r.memories[0].episode.id, "r3");
    engine.shutdown();
}

/// The index is searched without the lock, and forgotten episodes are
/// dropped when the hits are resolved; a recall whose top hits were all
/// forgotten must still return k live ones (the search runs again with the
/// liveness check inside it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_fills_k_with_live_memories_when_its_top_hits_were_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    // Over the exhaustive-search size, so the graph search is the real one.
    let vecs = random_vectors(1500, 16, 25);
    for (i, v) in vecs.iter().enumerate() {
        engine
            .remember("s", episode(&format!("f{i}"), v.clone()))
            .await
            .unwrap();
    }
    wait_indexed(&engine);
    let q = &vecs[10];
    let before = engine.recall("s", cue(q, 10)).unwrap();
    let gone: Vec<String> = before
        .memories
        .iter()
        .map(|m| m.episode.id.clone())
        .collect();
    for id in &gone {
        engine.forget("s", id).await.unwrap();
    }
    let after = engine.recall("s", cue(q, 10)).unwrap();
    assert_eq!(after.memories.len(), 10);
    for m in &after.memories {
        assert!(
            !gone.contains(&m.episode.id),
            "forgotten {} recalled",
            m.episode.id
        );
    }
    engine.shutdown();
}

/// Defect 5 (unbounded spaces through auto-creation): `max_spaces` bounds
/// them, with a clear error, explicit creation and auto-creation alike; a
/// deleted space frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spaces_are_bounded_by_max_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        max_spaces: 3,
        ..config(dir.path())
    })
    .unwrap();
    let v = random_vectors(1, 8, 26).remove(0);
    for s in ["a", "b", "c"] {
        engine.remember(s, episode("x", v.clone())).await.unwrap();
    }
    let e = engine
        .remember("d", episode("x", v.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "limit_reached", "{e}");
    assert!(e.to_string().contains("engine.max_spaces"), "{e}");
    let e = engine.create_space("d", Some(8)).await.unwrap_err();
    assert_eq!(e.code(), "limit_reached");
    // What exists goes on working.
    engine.remember("a", episode("y", v.clone())).await.unwrap();
    engine.delete_space("c").await.unwrap();
    engine.create_space("d", Some(8)).await.unwrap();
    assert_eq!(engine.describe_space("a").unwrap().count, 2);
    engine.shutdown();
}

/// Defect 9: supervision caught panics only; a worker that hangs was never
/// noticed. The watchdog reports one on an observation longer than
/// `worker_stuck_after_secs` (metric and `stuck_workers`, which readiness
/// shows), and clears it when the worker moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_reports_a_stuck_worker_and_its_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        workers: 1,
        worker_stuck_after_secs: 1,
        ..faulty(dir.path())
    })
    .unwrap();
    let stuck_gauge = |e: &Engine| {
        sample(
            &e.render_metrics().unwrap(),
            "engram_streaming_worker_stuck{worker_id=\"0\"}",
        )
    };
    let v = random_vectors(2, 8, 27);
    engine
        .remember("w", episode("warm", v[0].clone()))
        .await
        .unwrap();
    wait_indexed(&engine);
    assert!(engine.stuck_workers().is_empty());
    assert_eq!(stuck_gauge(&engine), 0.0);
    // The next observation takes 3 s: the worker looks hung after 1 s.
    engine
        .faults()
        .unwrap()
        .set_index_delay(Duration::from_secs(3));
    engine
        .remember("w", episode("slow", v[1].clone()))
        .await
        .unwrap();
    wait_for("the worker reported stuck", Duration::from_secs(10), || {
        !engine.stuck_workers().is_empty()
    });
    let s = &engine.stuck_workers()[0];
    assert!(
        s.worker == 0 && s.stuck_for > Duration::from_secs(1),
        "{s:?}"
    );
    assert_eq!(stuck_gauge(&engine), 1.0);
    engine.faults().unwrap().set_index_delay(Duration::ZERO);
    wait_indexed(&engine);
    assert!(engine.stuck_workers().is_empty());
    assert_eq!(stuck_gauge(&engine), 0.0);
    engine.shutdown();
}

/// The session limit is its own clear error (it read "overloaded: N
/// observations are waiting to be indexed"), and lifts as released
/// sessions expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_is_a_clear_error_and_lifts_as_sessions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.sessions.max_sessions = 2;
    cfg.sessions.resume_window_secs = 1;
    let engine = Engine::open(cfg).unwrap();
    let (a, _) = engine.open_session("lim", None).await.unwrap();
    let (_b, _) = engine.open_session("lim", None).await.unwrap();
    let e = match engine.open_session("lim", None).await {
        Err(e) => e,
        Ok(_) => panic!("a third session opened past max_sessions = 2"),
    };
    assert_eq!(e.code(), "session_limit", "{e}");
    assert!(e.to_string().contains("max_sessions"), "{e}");
    drop(a); // released: resumable for 1 s, then expired
    wait_for(
        "a place after the resume window",
        Duration::from_secs(10),
        || engine.known_sessions() < 2,
    );
    engine.open_session("lim", None).await.unwrap();
    engine.shutdown();
}
