//! Issue 16: filtered recall against the real server equals an exact
//! filtered search of the same memories, over gRPC, REST and the
//! WebSocket, for random filters and data, including memories not yet
//! indexed (indexing paused); and a recall returns min(k, matching).

mod support;

use std::collections::BTreeMap;

use engram_client::proto::{Cue, Episode, MemoryFilter, MetadataCondition};

use futures::{SinkExt, StreamExt};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::ServerProcess;
use tokio_tungstenite::tungstenite::Message;

const DIM: usize = 8;
const INDEXED: usize = 700;
const FRESH: usize = 300;
const CASES: usize = 150;
const TAGS: [&str; 5] = ["a", "b", "c", "d", "e"];
const USERS: [&str; 3] = ["ada", "bob", "cy"];

struct Memory {
    id: String,
    vector: Vec<f32>,
    tags: Vec<String>,
    user: Option<String>,
}

struct Filter {
    all: Vec<String>,
    any: Vec<String>,
    none: Vec<String>,
    users: Vec<String>,
}

impl Filter {
    fn random(rng: &mut impl Rng) -> Self {
        let mut pick = |max: usize| -> Vec<String> {
            let n = rng.gen_range(0..=max);
            TAGS.choose_multiple(rng, n)
                .map(|s| s.to_string())
                .collect()
        };
        let (all, any, none) = (pick(2), pick(3), pick(2));
        let users = if rng.gen_bool(0.4) {
            let n = rng.gen_range(1..=2);
            USERS
                .choose_multiple(rng, n)
                .map(|s| s.to_string())
                .collect()
        } else {
            Vec::new()
        };
        Filter {
            all,
            any,
            none,
            users,
        }
    }

    fn matches(&self, m: &Memory) -> bool {
        let has = |t: &String| m.tags.contains(t);
        self.all.iter().all(has)
            && (self.any.is_empty() || self.any.iter().any(has))
            && !self.none.iter().any(has)
            && (self.users.is_empty() || m.user.as_ref().is_some_and(|u| self.users.contains(u)))
    }

    fn proto(&self) -> MemoryFilter {
        MemoryFilter {
            tags_all: self.all.clone(),
            tags_any: self.any.clone(),
            tags_none: self.none.clone(),
            metadata: if self.users.is_empty() {
                Vec::new()
            } else {
                vec![MetadataCondition {
                    key: "user".into(),
                    values: self.users.clone(),
                }]
            },
        }
    }

    fn json(&self) -> Value {
        let mut f = json!({"tags_all": self.all, "tags_any": self.any, "tags_none": self.none});
        match self.users.as_slice() {
            [] => {}
            [one] => f["metadata"] = json!({"user": one}),
            many => f["metadata"] = json!({"user": many}),
        }
        f
    }
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// The exact filtered top-k: (id, similarity), best first.
fn exact(memories: &[Memory], q: &[f32], f: &Filter, k: usize) -> Vec<(String, f32)> {
    let q = normalized(q);
    let mut scored: Vec<(String, f32)> = memories
        .iter()
        .filter(|m| f.matches(m))
        .map(|m| {
            let v = normalized(&m.vector);
            (m.id.clone(), q.iter().zip(&v).map(|(a, b)| a * b).sum())
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(k);
    scored
}

/// Equal to the exact answer: the same count, the same similarities in
/// order, and the same memories (one with a similarity equal, to float
/// rounding, to the last one's may stand in for another).
fn assert_equal(what: &str, got: &[(String, f32)], want: &[(String, f32)]) {
    assert_eq!(got.len(), want.len(), "{what}: min(k, matching)");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g.1 - w.1).abs() < 1e-4,
            "{what}: got {got:?}, want {want:?}"
        );
    }
    let last = want.last().map_or(0.0, |w| w.1);
    for g in got {
        assert!(
            want.iter().any(|w| w.0 == g.0) || (g.1 - last).abs() < 1e-4,
            "{what}: {} is not in the exact answer {want:?}",
            g.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_recall_equals_exact_filtered_search_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--fault-injection", "--wal-sync", "none"]);
    server.wait_ready().await;
    let client = support::grpc_client(&server).await;
    client.create_space("fs", DIM as u32).await.unwrap();
    let http = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut memories = Vec::new();
    let mut add = |i: usize, rng: &mut rand::rngs::StdRng| {
        let n = rng.gen_range(0..=3);
        let tags: Vec<String> = TAGS
            .choose_multiple(rng, n)
            .map(|s| s.to_string())
            .collect();
        let user = rng
            .gen_bool(0.8)
            .then(|| USERS.choose(rng).unwrap().to_string());
        let vector: Vec<f32> = (0..DIM).map(|_| rng.gen_range(-1.0..1.0)).collect();
        memories.push(Memory {
            id: format!("m{i}"),
            vector,
            tags,
            user,
        });
    };
    for i in 0..INDEXED + FRESH {
        add(i, &mut rng);
    }
    let episode = |m: &Memory| Episode {
        id: m.id.clone(),
        what: m.id.clone(),
        embedding: m.vector.clone(),
        tags: m.tags.clone(),
        metadata: m
            .user
            .iter()
            .map(|u| ("user".to_owned(), u.clone()))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
        ..Episode::default()
    };
    // The first part through an observe stream, indexed.
    let (sender, mut acks) = client.observe_stream("fs").await.unwrap();
    for m in &memories[..INDEXED] {
        sender.send(episode(m)).await.unwrap();
    }
    for _ in 0..INDEXED {
        acks.recv().await.unwrap().unwrap();
    }
    sender.close(true).await.unwrap();
    server
        .get_until(
            &http,
            "/v1/spaces/fs",
            std::time::Duration::from_secs(60),
            "the first part indexed",
            |_, v| v["indexed_count"].as_u64() == Some(INDEXED as u64),
        )
        .await;
    // The rest over REST with indexing paused: they stay in the fresh tier.
    let (status, _) = support::call(
        &http,
        reqwest::Method::POST,
        &server.url("/v1/admin/indexing/pause"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    for m in &memories[INDEXED..] {
        let body = json!({"id": m.id, "what": m.id, "embedding": m.vector, "tags": m.tags,
            "metadata": m.user.as_ref().map(|u| json!({"user": u})).unwrap_or(json!({}))});
        let (status, v) = support::call(
            &http,
            reqwest::Method::POST,
            &server.url("/v1/spaces/fs/memories"),
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{v}");
    }
    let info = client.describe_space("fs").await.unwrap();
    assert_eq!(
        info.queue_depth, FRESH as u64,
        "the last ones wait to be indexed"
    );

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", server.addr))
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"type": "init", "memory_space_id": "fs"}).to_string(),
    ))
    .await
    .unwrap();
    let _init_ack = ws.next().await.unwrap().unwrap();

    let mut nonempty = 0;
    for case in 0..CASES {
        let f = Filter::random(&mut rng);
        let k = rng.gen_range(1..=20);
        let q: Vec<f32> = (0..DIM).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let want = exact(&memories, &q, &f, k);
        nonempty += usize::from(!want.is_empty());
        let what = format!("case {case} k {k}");

        let got = client
            .recall(
                "fs",
                Cue {
                    embedding: q.clone(),
                    max_results: k as u32,
                    similarity_threshold: -1.0,
                    filter: Some(f.proto()),
                    ..Cue::default()
                },
            )
            .await
            .unwrap();
        let got: Vec<(String, f32)> = got
            .memories
            .iter()
            .map(|m| (m.episode.as_ref().unwrap().id.clone(), m.similarity))
            .collect();
        assert_equal(&format!("gRPC {what}"), &got, &want);

        let cue = json!({"embedding": q, "max_results": k, "similarity_threshold": -1.0,
            "filter": f.json()});
        let (status, v) = support::call(
            &http,
            reqwest::Method::POST,
            &server.url("/v1/spaces/fs/recall"),
            Some(cue.clone()),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let got: Vec<(String, f32)> = v["memories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["episode"]["id"].as_str().unwrap().to_owned(),
                    m["similarity"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        assert_equal(&format!("REST {what}"), &got, &want);

        if case % 10 == 0 {
            let id = format!("r{case}");
            ws.send(Message::Text(
                json!({"type": "recall", "request_id": id, "cue": cue}).to_string(),
            ))
            .await
            .unwrap();
            let mut got = Vec::new();
            loop {
                let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
                    continue;
                };
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["request_id"], id.as_str(), "{v}");
                for m in v["memories"].as_array().unwrap() {
                    got.push((
                        m["episode"]["id"].as_str().unwrap().to_owned(),
                        m["similarity"].as_f64().unwrap() as f32,
                    ));
                }
                if v["more"] != true {
                    break;
                }
            }
            assert_equal(&format!("WebSocket {what}"), &got, &want);
        }
    }
    assert!(
        nonempty > CASES / 3,
        "the filters matched something: {nonempty}"
    );

    // A bad filter is a clear error on each transport, and nothing breaks.
    let err = client
        .recall(
            "fs",
            Cue {
                embedding: vec![1.0; DIM],
                filter: Some(MemoryFilter {
                    tags_all: vec![String::new()],
                    ..MemoryFilter::default()
                }),
                ..Cue::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cue.filter.tags_all"), "{err}");
    let (status, v) = support::call(
        &http,
        reqwest::Method::POST,
        &server.url("/v1/spaces/fs/recall"),
        Some(json!({"embedding": vec![1.0; DIM], "filter": {"metadata": {"user": 3}}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    client.describe_space("fs").await.unwrap();
}

/// Issue 16: recency weighting against the real server: a fact updated
/// three times comes back newest first with a half-life (oldest first by
/// similarity alone), over gRPC and REST, with the score and the weight
/// each memory was ranked by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recency_puts_the_newest_version_of_a_fact_first_on_grpc_and_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--wal-sync", "none"]);
    server.wait_ready().await;
    let client = support::grpc_client(&server).await;
    let http = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // v0 (90 days old) is the cue itself; v1 (30 days) and v2 (a day)
    // drift a little from it.
    for (n, (days, drift)) in [(90, 0.0f32), (30, 0.1), (1, 0.2)].into_iter().enumerate() {
        let mut v = vec![1.0f32, 0.0, 0.0, 0.0];
        v[1] = drift;
        let when = now - days * 86_400;
        let (status, body) = support::call(
            &http,
            reqwest::Method::POST,
            &server.url("/v1/spaces/facts/memories"),
            Some(json!({"id": format!("city-v{n}"), "what": format!("lives in city {n}"),
                "embedding": v, "when": humantime::format_rfc3339(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(when as u64)).to_string()})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let cue = Cue {
        embedding: vec![1.0, 0.0, 0.0, 0.0],
        max_results: 3,
        ..Cue::default()
    };
    let ids = |r: &engram_client::proto::RecallResponse| -> Vec<String> {
        r.memories
            .iter()
            .map(|m| m.episode.as_ref().unwrap().id.clone())
            .collect()
    };
    let plain = client.recall("facts", cue.clone()).await.unwrap();
    assert_eq!(ids(&plain), ["city-v0", "city-v1", "city-v2"]);
    assert!(plain
        .memories
        .iter()
        .all(|m| m.recency_weight == 1.0 && m.score == m.similarity));
    let recent = client
        .recall(
            "facts",
            Cue {
                recency_half_life_seconds: 7.0 * 86_400.0,
                ..cue
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&recent), ["city-v2", "city-v1", "city-v0"]);
    for m in &recent.memories {
        assert!(m.recency_weight < 1.0 && m.recency_weight > 0.0, "{m:?}");
        assert!(
            (m.score - m.similarity * m.recency_weight).abs() < 1e-6,
            "{m:?}"
        );
    }
    let (status, v) = support::call(
        &http,
        reqwest::Method::POST,
        &server.url("/v1/spaces/facts/recall"),
        Some(json!({"embedding": [1.0, 0.0, 0.0, 0.0], "max_results": 3,
                    "recency_half_life_seconds": 604800.0})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let rest_ids: Vec<&str> = v["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["episode"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest_ids, ["city-v2", "city-v1", "city-v0"]);
    assert!(
        v["memories"][0]["recency_weight"].as_f64().unwrap() < 1.0,
        "{v}"
    );
    assert!(v["memories"][0]["score"].as_f64().is_some(), "{v}");
    let (status, v) = support::call(
        &http,
        reqwest::Method::POST,
        &server.url("/v1/spaces/facts/recall"),
        Some(json!({"embedding": [1.0, 0.0, 0.0, 0.0], "recency_half_life_seconds": -5})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("recency_half_life_seconds"),
        "{v}"
    );
}
