//! Issue 16: recency weighting. A fact updated several times is recalled
//! newest first with a half-life, oldest-but-most-similar first without;
//! a recent, slightly less similar memory is not cut by older, more
//! similar ones before the re-ranking (however many there are); the
//! ranking equals a brute-force ranking by score; the reported score and
//! weight say how each memory was ranked.

mod common;

use common::*;
use engram_core::model::now_unix_nanos;
use engram_core::wal::SyncPolicy;
use engram_core::{Cue, Engine, EpisodeInput};
use rand::{Rng, SeedableRng};

const DAY: i64 = 86_400 * 1_000_000_000;
const DIM: usize = 8;

fn at(id: &str, v: Vec<f32>, when: i64) -> EpisodeInput {
    EpisodeInput {
        when_unix_nanos: Some(when),
        ..episode(id, v)
    }
}

fn recall(
    engine: &Engine,
    q: &[f32],
    k: usize,
    half_life_days: Option<f64>,
) -> Vec<(String, f32, f32, f32)> {
    engine
        .recall(
            "r",
            Cue {
                recency_half_life_secs: half_life_days.map(|d| d * 86_400.0),
                ..cue(q, k)
            },
        )
        .unwrap()
        .memories
        .iter()
        .map(|m| {
            (
                m.episode.id.clone(),
                m.similarity,
                m.score,
                m.recency_weight,
            )
        })
        .collect()
}

/// `base` with a little of `noise` mixed in.
fn blend(base: &[f32], noise: &[f32], t: f32) -> Vec<f32> {
    base.iter().zip(noise).map(|(b, n)| b + t * n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_version_of_a_fact_wins_with_a_half_life() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config_with(dir.path(), SyncPolicy::None)).unwrap();
    let now = now_unix_nanos();
    let topics = random_vectors(5, DIM, 1);
    let noise = random_vectors(20, DIM, 2);
    // Each fact in four versions: the oldest is the topic itself (the most
    // similar to a cue for it), each newer one drifts a little.
    for (t, topic) in topics.iter().enumerate() {
        for (n, age_days) in [30, 20, 10, 1].into_iter().enumerate() {
            let v = blend(topic, &noise[t * 4 + n], 0.05 * n as f32);
            engine
                .remember("r", at(&format!("t{t}-v{n}"), v, now - age_days * DAY))
                .await
                .unwrap();
        }
    }
    // 200 old memories more similar to topic 0 than its newest version.
    let noise2 = random_vectors(200, DIM, 3);
    for (i, n) in noise2.iter().enumerate() {
        let v = blend(&topics[0], n, 0.01);
        engine
            .remember("r", at(&format!("old{i}"), v, now - 365 * DAY))
            .await
            .unwrap();
    }
    wait_indexed(&engine);
    for (t, topic) in topics.iter().enumerate().skip(1) {
        let plain = recall(&engine, topic, 4, None);
        assert_eq!(plain[0].0, format!("t{t}-v0"), "by similarity, the oldest");
        assert!(plain.iter().all(|m| m.2 == m.1 && m.3 == 1.0), "{plain:?}");
        // Newest first among the fact's versions (another fact's fresh
        // version may rank between two old ones: that is the point).
        let recent = recall(&engine, topic, 20, Some(7.0));
        let prefix = format!("t{t}-");
        let ids: Vec<&str> = recent
            .iter()
            .map(|m| m.0.as_str())
            .filter(|id| id.starts_with(&prefix))
            .collect();
        let want: Vec<String> = (0..4).rev().map(|n| format!("t{t}-v{n}")).collect();
        assert_eq!(ids, want, "newest first: {recent:?}");
        assert_eq!(recent[0].0, want[0]);
        for m in &recent {
            // score = similarity x weight for a memory that matches at
            // all; a dissimilar one keeps its similarity.
            let want = if m.1 > 0.0 { m.1 * m.3 } else { m.1 };
            assert!((m.2 - want).abs() < 1e-6, "score: {m:?}");
            assert!(m.3 > 0.0 && m.3 <= 1.0);
        }
    }
    // Topic 0: 200 older memories are more similar than its newest
    // version, and the newest still comes first (it was not cut before
    // the re-ranking).
    let recent = recall(&engine, &topics[0], 3, Some(7.0));
    assert_eq!(recent[0].0, "t0-v3", "{recent:?}");
    let plain = recall(&engine, &topics[0], 3, None);
    assert!(
        plain
            .iter()
            .all(|m| m.0.starts_with("old") || m.0 == "t0-v0"),
        "{plain:?}"
    );
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recency_ranking_equals_brute_force_by_score() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with(dir.path(), SyncPolicy::None);
    cfg.fault_injection = true;
    let engine = Engine::open(cfg).unwrap();
    let now = now_unix_nanos();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let vecs = random_vectors(900, DIM, 6);
    let mut stored = Vec::new();
    for (i, v) in vecs.iter().enumerate() {
        let when = now - rng.gen_range(0..400) * DAY / 4;
        if i == 700 {
            // The rest stay in the fresh tier.
            wait_indexed(&engine);
            engine.pause_indexing();
        }
        engine
            .remember("r", at(&format!("m{i}"), v.clone(), when))
            .await
            .unwrap();
        stored.push((format!("m{i}"), normalized(v), when));
    }
    for (qi, q) in random_vectors(30, DIM, 7).iter().enumerate() {
        let half_life = [0.5, 3.0, 30.0][qi % 3];
        let k = 1 + qi % 10;
        let got = recall(&engine, q, k, Some(half_life));
        let qn = normalized(q);
        let mut want: Vec<(f32, &str)> = stored
            .iter()
            .map(|(id, v, when)| {
                let sim: f32 = qn.iter().zip(v).map(|(a, b)| a * b).sum();
                let age = (now - when) as f64 / 1e9;
                let w = 0.5f64.powf(age / (half_life * 86_400.0)) as f32;
                (if sim > 0.0 { sim * w } else { sim }, id.as_str())
            })
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(got.len(), k);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g.2 - w.0).abs() < 1e-3,
                "query {qi}: got {got:?}, want {:?}",
                &want[..k]
            );
        }
    }
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 4e9] {
        let err = engine
            .recall(
                "r",
                Cue {
                    recency_half_life_secs: Some(bad),
                    ..cue(&vecs[0], 5)
                },
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("cue.recency_half_life_seconds"),
            "{err}"
        );
    }
    engine.shutdown();
}
