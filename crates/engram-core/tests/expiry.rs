//! Issue 16: expiry. A memory with an expiry (its own `expires_at` or
//! TTL, or its space's default TTL) is never recalled or listed from the
//! instant it expires on the engine's clock, in either tier and with or
//! without a filter; the purge removes it from the episodes and the index
//! candidates, logs it in the WAL, and the next snapshot leaves it (and its
//! index node) out; all of it survives a restart and a WAL replay.
//!
//! The clock is the engine's injectable one (`EngineConfig::clock`): the
//! tests move it forward instead of waiting.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use engram_core::model::{Expiry, MemoryFilter};
use engram_core::{Engine, EngineConfig, Error};

const DIM: usize = 8;

fn at(engine: &Engine, ahead: Duration) -> i64 {
    engine.clock().now_unix_nanos() + ahead.as_nanos() as i64
}

/// The memory ids a full listing returns, page by page.
fn list_all(engine: &Engine, space: &str, filter: &MemoryFilter) -> Vec<(String, Option<i64>)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = engine
            .list_memories(space, filter, after, 97, false)
            .unwrap();
        out.extend(
            page.memories
                .iter()
                .map(|(e, _)| (e.id.clone(), e.expires_at_unix_nanos)),
        );
        match page.next_after {
            Some(a) => after = a,
            None => return out,
        }
    }
}

/// Expiry (seconds from the start) of memory `i`, or None; a mix of own
/// TTLs, own instants and none.
fn expiry_secs(i: usize) -> Option<u64> {
    match i % 4 {
        0 => None,
        _ => Some(10 * (i % 9) as u64 + 5),
    }
}

fn tagged(i: usize) -> bool {
    i.is_multiple_of(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_expired_is_ever_recalled_or_listed_in_either_tier() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let vecs = random_vectors(1500, DIM, 16);
    let mut expires: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let remember = |i: usize| {
        let id = format!("m{i}");
        let expiry = expiry_secs(i).map(|s| {
            if i.is_multiple_of(2) {
                Expiry::After(Duration::from_secs(s))
            } else {
                Expiry::At(at(&engine, Duration::from_secs(s)))
            }
        });
        let mut input = episode(&id, vecs[i].clone());
        input.expiry = expiry;
        if tagged(i) {
            input.tags = vec!["t".into()];
        }
        (id, input)
    };
    // 1,200 indexed (a graph search, not an exhaustive one), 300 waiting
    // in the fresh tier.
    for i in 0..1500 {
        if i == 1200 {
            wait_indexed(&engine);
            engine.pause_indexing();
        }
        let (id, input) = remember(i);
        engine.remember("x", input).await.unwrap();
        let stored = engine
            .list_memories("x", &MemoryFilter::default(), i as u64, 1, false)
            .unwrap();
        expires.insert(id, stored.memories[0].0.expires_at_unix_nanos);
    }
    assert_eq!(engine.describe_space("x").unwrap().queue_depth, 300);
    let by_id: BTreeMap<String, usize> = (0..1500).map(|i| (format!("m{i}"), i)).collect();
    let tag = MemoryFilter {
        tags_any: vec!["t".into()],
        ..MemoryFilter::default()
    };
    let cues = random_vectors(25, DIM, 61);
    let before = engine.describe_space("x").unwrap().memory.episodes;
    for step in [0u64, 12, 27, 48, 61, 90] {
        if step > 0 {
            engine
                .clock()
                .advance(Duration::from_secs(step) - Duration::from_secs(0));
        }
        let now = engine.clock().now_unix_nanos();
        let live = |id: &str| expires[id].is_none_or(|t| t > now);
        let live_count = expires.keys().filter(|id| live(id)).count();
        for (c, filter) in cues
            .iter()
            .flat_map(|c| [(c, MemoryFilter::default()), (c, tag.clone())])
        {
            let mut q = cue(c, 10);
            q.filter = filter.clone();
            let found = engine.recall("x", q).unwrap().memories;
            let matching = expires
                .keys()
                .filter(|id| live(id) && (filter.is_empty() || tagged(by_id[*id])))
                .count();
            assert_eq!(found.len(), matching.min(10), "at +{step}s");
            for m in &found {
                assert!(
                    live(&m.episode.id),
                    "at +{step}s a recall returned {} which expired at {:?} (now {now})",
                    m.episode.id,
                    expires[&m.episode.id]
                );
                assert_eq!(m.episode.expires_at_unix_nanos, expires[&m.episode.id]);
            }
        }
        let listed: Vec<String> = list_all(&engine, "x", &MemoryFilter::default())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let want: Vec<String> = (0..1500)
            .map(|i| format!("m{i}"))
            .filter(|id| live(id))
            .collect();
        assert_eq!(listed, want, "listing at +{step}s");
        assert_eq!(listed.len(), live_count);
    }
    // The purge removes them all (the background one may have started).
    engine.purge_expired().await.unwrap();
    let now = engine.clock().now_unix_nanos();
    let expired = expires
        .values()
        .filter(|t| t.is_some_and(|t| t <= now))
        .count();
    let info = engine.describe_space("x").unwrap();
    assert_eq!(info.count as usize, 1500 - expired);
    assert_eq!(info.expired_count as usize, expired);
    assert!(
        info.memory.episodes < before,
        "episode memory {} not below {before} after purging {expired}",
        info.memory.episodes
    );
    let metrics = engine.render_metrics().unwrap();
    assert!(
        metrics.contains(&format!(
            "engram_memories_expired_total{{space_id=\"x\"}} {expired}"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("expired"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What is left indexes and checks out.
    engine.resume_indexing();
    wait_indexed(&engine);
    engine.check_integrity("x").unwrap();
    engine.shutdown();
}

/// The background reclaim deletes the index nodes of purged memories once
/// they are many enough (here 300 of 400): the index's vector count, as
/// `/metrics` reports it, falls to the live count without anyone asking,
/// even though its first attempt panics (the thread catches it and tries
/// again a second later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_reclaim_deletes_purged_memories_index_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        fault_injection: true,
        ..config(dir.path())
    })
    .unwrap();
    let vecs = random_vectors(400, DIM, 8);
    for (i, v) in vecs.iter().enumerate() {
        let mut input = episode(&format!("g{i}"), v.clone());
        input.expiry = (i % 4 != 0).then_some(Expiry::After(Duration::from_secs(30)));
        engine.remember("gc", input).await.unwrap();
    }
    wait_indexed(&engine);
    let vectors = |engine: &Engine| {
        engine
            .render_metrics()
            .unwrap()
            .lines()
            .find(|l| l.starts_with("engram_index_vectors{space_id=\"gc\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(vectors(&engine), Some(400));
    engine.inject_reclaim_panics("gc", 1).unwrap();
    engine.clock().advance(Duration::from_secs(31));
    wait_for("the background reclaim", Duration::from_secs(30), || {
        vectors(&engine) == Some(100)
    });
    engine.check_integrity("gc").unwrap();
    for (i, v) in vecs.iter().enumerate().step_by(4) {
        let top = &engine.recall("gc", cue(v, 1)).unwrap().memories[0];
        assert_eq!(top.episode.id, format!("g{i}"));
    }
    engine.shutdown();
}

/// A mass expiry larger than one purge pass (4,096 a space) falls behind
/// and catches up: the background purge takes it over several passes,
/// recall leaves all of it out from the first instant, and nothing else
/// waits (a write in the meantime is acked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_expiry_is_purged_over_several_passes_and_hidden_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config_with(dir.path(), engram_core::wal::SyncPolicy::None)).unwrap();
    let vecs = random_vectors(10_000, DIM, 12);
    for (i, v) in vecs.iter().enumerate() {
        let mut input = episode(&format!("x{i}"), v.clone());
        input.expiry = (i >= 100).then_some(Expiry::After(Duration::from_secs(30)));
        engine.remember("mass", input).await.unwrap();
    }
    engine.clock().advance(Duration::from_secs(31));
    for v in vecs.iter().step_by(97) {
        let found = engine.recall("mass", cue(v, 10)).unwrap().memories;
        assert_eq!(found.len(), 10);
        for m in &found {
            let i: usize = m.episode.id[1..].parse().unwrap();
            assert!(i < 100, "x{i} expired but was recalled");
        }
    }
    engine
        .remember("mass", episode("during", vecs[0].clone()))
        .await
        .unwrap();
    wait_for("the mass purge", Duration::from_secs(60), || {
        engine.describe_space("mass").unwrap().expired_count == 9_900
    });
    assert_eq!(engine.describe_space("mass").unwrap().count, 101);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_purge_removes_expired_memories_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let vecs = random_vectors(40, DIM, 3);
    for (i, v) in vecs.iter().enumerate() {
        let mut input = episode(&format!("b{i}"), v.clone());
        input.expiry = (i % 2 == 0).then_some(Expiry::After(Duration::from_secs(30)));
        engine.remember("bg", input).await.unwrap();
    }
    engine.clock().advance(Duration::from_secs(31));
    wait_for("the background purge", Duration::from_secs(20), || {
        engine.describe_space("bg").unwrap().expired_count == 20
    });
    assert_eq!(engine.describe_space("bg").unwrap().count, 20);
    // The id of a purged memory can be used again: a new memory.
    let again = engine
        .remember("bg", episode("b0", vecs[0].clone()))
        .await
        .unwrap();
    assert!(!again.duplicate);
    assert_eq!(engine.describe_space("bg").unwrap().count, 21);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_default_ttl_survive_a_restart_and_the_purge_reclaims_space() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: EngineConfig = config(dir.path());
    let vecs = random_vectors(900, DIM, 77);
    let snapshot_size = |path: &std::path::Path| std::fs::metadata(path).unwrap().len();
    let (vectors_before, size_before, long_expiry);
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        let (info, created) = engine
            .create_space_with_ttl("r", Some(DIM), None, Some(Some(Duration::from_secs(100))))
            .await
            .unwrap();
        assert!(created);
        assert_eq!(info.default_ttl, Some(Duration::from_secs(100)));
        for (i, v) in vecs.iter().enumerate() {
            let mut input = episode(&format!("r{i}"), v.clone());
            // 600 take the space's default (100 s), 200 live 1,000 s, 100
            // never expire... except that "never" is not a choice against a
            // default: they get an instant a year ahead.
            input.expiry = match i % 9 {
                0..=5 => None,
                6 | 7 => Some(Expiry::After(Duration::from_secs(1000))),
                _ => Some(Expiry::At(at(&engine, Duration::from_secs(365 * 86_400)))),
            };
            engine.remember("r", input).await.unwrap();
        }
        wait_indexed(&engine);
        let first = engine.snapshot().unwrap().expect("a snapshot");
        size_before = snapshot_size(&first);
        vectors_before = engine.describe_space("r").unwrap().memory.vectors;
        long_expiry = list_all(&engine, "r", &MemoryFilter::default())
            .into_iter()
            .find(|(id, _)| id == "r6")
            .unwrap()
            .1
            .expect("r6 expires");

        engine.clock().advance(Duration::from_secs(150));
        assert_eq!(engine.purge_expired().await.unwrap(), 600);
        assert_eq!(engine.describe_space("r").unwrap().count, 300);
        // Their index nodes are deleted in place (the background reclaim
        // may have been first), and new memories reuse the slots: the
        // index's memory does not grow.
        let reclaimed = engine.reclaim_index("r").unwrap();
        assert!(reclaimed <= 600);
        engine.check_integrity("r").unwrap();
        let more = random_vectors(600, DIM, 78);
        for (i, v) in more.iter().enumerate() {
            let mut input = episode(&format!("n{i}"), v.clone());
            input.expiry = Some(Expiry::After(Duration::from_secs(10)));
            engine.remember("r", input).await.unwrap();
        }
        wait_indexed(&engine);
        let info = engine.describe_space("r").unwrap();
        assert_eq!(info.indexed_count, 900);
        assert_eq!(
            info.memory.vectors, vectors_before,
            "600 new memories took the 600 reclaimed slots"
        );
        engine.check_integrity("r").unwrap();
        // Those go too (before the restart's checks).
        engine.clock().advance(Duration::from_secs(11));
        assert_eq!(engine.purge_expired().await.unwrap(), 600);
        let second = engine
            .snapshot()
            .unwrap()
            .expect("a snapshot after the purge");
        let size_after = snapshot_size(&second);
        assert!(
            (size_after as f64) < 0.5 * size_before as f64,
            "snapshot of 300 memories is {size_after} bytes, of 900 it was {size_before}"
        );
        engine.shutdown();
    }
    // The clock is shared by the config's clones: the reopened engine sees
    // the same time.
    let engine = Engine::open(cfg.clone()).unwrap();
    let info = engine.describe_space("r").unwrap();
    assert_eq!(info.count, 300);
    assert_eq!(info.default_ttl, Some(Duration::from_secs(100)));
    // The index was loaded without the purged memories' nodes.
    assert_eq!(info.indexed_count, 300);
    assert!(
        info.memory.vectors * 2 < vectors_before,
        "vector memory {} after the restart, {vectors_before} before the purge",
        info.memory.vectors
    );
    engine.check_integrity("r").unwrap();
    let listed = list_all(&engine, "r", &MemoryFilter::default());
    assert_eq!(listed.len(), 300);
    assert!(listed.iter().all(|(_, t)| t.is_some()));
    assert_eq!(
        listed.iter().find(|(id, _)| id == "r6").unwrap().1,
        Some(long_expiry),
        "an expiry is kept exactly across the restart"
    );
    for (i, v) in vecs.iter().enumerate().filter(|(i, _)| i % 9 <= 5).take(20) {
        let found = engine.recall("r", cue(v, 5)).unwrap().memories;
        assert!(found.iter().all(|m| m.episode.id != format!("r{i}")));
    }
    // A new memory takes the space's default from its acceptance.
    let now = engine.clock().now_unix_nanos();
    engine
        .remember("r", episode("late", vecs[0].clone()))
        .await
        .unwrap();
    let late = list_all(&engine, "r", &MemoryFilter::default())
        .into_iter()
        .find(|(id, _)| id == "late")
        .unwrap()
        .1
        .unwrap();
    let ttl = late - now;
    assert!(
        (100_000_000_000..101_000_000_000).contains(&ttl),
        "default TTL applied as {ttl} ns"
    );
    // The 1,000 s ones go next.
    engine.clock().advance(Duration::from_secs(900));
    let ids: HashSet<String> = list_all(&engine, "r", &MemoryFilter::default())
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 100, "only the year-long ones are left");
    assert!(ids
        .iter()
        .all(|id| id[1..].parse::<usize>().unwrap() % 9 == 8));
    engine.shutdown();
}

/// The purge's WAL records replay: an engine that dies without a snapshot
/// comes back without the purged memories, and one expired but not yet
/// purged is not recalled after the restart either (then purged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_replay_from_the_wal_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        fault_injection: true,
        ..config(dir.path())
    };
    let vecs = random_vectors(90, DIM, 5);
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        for (i, v) in vecs.iter().enumerate() {
            let mut input = episode(&format!("w{i}"), v.clone());
            input.expiry = match i % 3 {
                0 => Some(Expiry::After(Duration::from_secs(10))),
                1 => Some(Expiry::After(Duration::from_secs(50))),
                _ => None,
            };
            engine.remember("w", input).await.unwrap();
        }
        engine.clock().advance(Duration::from_secs(20));
        // Purged (logged) now; the 50 s ones expire later, unpurged.
        assert_eq!(engine.purge_expired().await.unwrap(), 30);
        engine.faults().unwrap().kill_commit_thread();
        let _ = engine
            .remember("w", episode("doomed", vecs[0].clone()))
            .await;
        let mut fatal = engine.fatal_watch();
        tokio::time::timeout(Duration::from_secs(10), fatal.wait_for(Option::is_some))
            .await
            .expect("the engine never turned fatal")
            .unwrap();
        engine.shutdown();
    }
    engine_clock_moves(&cfg, Duration::from_secs(40));
    let engine = Engine::open(cfg.clone()).unwrap();
    assert!(engine.recovery_report().wal_records > 0);
    assert!(engine.recovery_report().snapshot.is_none());
    // Right after recovery, before any purge: none of either expired set
    // is a candidate.
    for (i, v) in vecs.iter().enumerate() {
        let found = engine.recall("w", cue(v, 3)).unwrap().memories;
        for m in found.iter().filter(|m| m.episode.id != "doomed") {
            let j: usize = m.episode.id[1..].parse().unwrap();
            assert_eq!(j % 3, 2, "w{j} expired but was recalled (cue w{i})");
        }
    }
    wait_for("the purge after recovery", Duration::from_secs(20), || {
        let left = list_all(&engine, "w", &MemoryFilter::default());
        left.iter().filter(|(id, _)| id != "doomed").count() == 30
    });
    engine.shutdown();
}

/// Moves the shared clock of `cfg` (and every engine opened with it).
fn engine_clock_moves(cfg: &EngineConfig, by: Duration) {
    cfg.clock.advance(by);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expiries_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let v = random_vectors(1, DIM, 1).remove(0);
    engine
        .remember("v", episode("ok", v.clone()))
        .await
        .unwrap();

    let mut past = episode("past", v.clone());
    past.expiry = Some(Expiry::At(engine.clock().now_unix_nanos() - 1));
    let e = engine.remember("v", past).await.unwrap_err();
    assert!(
        matches!(
            &e,
            Error::InvalidArgument {
                field: "episode.expires_at",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("must be in the future"), "{e}");

    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 4e9] {
        let e = Expiry::from_wire(None, Some(bad)).unwrap_err();
        assert!(e.to_string().contains("episode.ttl_seconds"), "{e}");
    }
    let e = Expiry::from_wire(Some(1), Some(1.0)).unwrap_err();
    assert!(e.to_string().contains("at most one"), "{e}");

    // A space's default TTL: checked, and part of its identity.
    let e = engine
        .create_space_with_ttl("d", Some(DIM), None, Some(Some(Duration::ZERO)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("default_ttl_seconds"), "{e}");
    engine
        .create_space_with_ttl("d", Some(DIM), None, Some(Some(Duration::from_secs(60))))
        .await
        .unwrap();
    let (_, created) = engine
        .create_space_with_ttl("d", Some(DIM), None, None)
        .await
        .unwrap();
    assert!(!created, "an unspecified TTL matches the existing space");
    let e = engine
        .create_space_with_ttl("d", Some(DIM), None, Some(None))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::SpaceExists { .. }), "{e:?}");
    assert!(e.to_string().contains("default TTL 60 s"), "{e}");
    let (_, created) = engine
        .create_space_with_ttl("v", Some(DIM), None, Some(None))
        .await
        .unwrap();
    assert!(!created, "no TTL matches a space without one");

    assert_eq!(engine.describe_space("v").unwrap().count, 1);
    assert!(engine.describe_space("v").unwrap().default_ttl.is_none());
    engine.shutdown();
}
