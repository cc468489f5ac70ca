//! Issue 16: listing a space (gRPC `ListMemories`, REST `GET
//! /v1/spaces/{id}/memories`) while writers run returns every memory acked
//! before the listing started exactly once, in server-sequence order, with
//! the same filters as recall; bad paging input is a clear error.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_client::proto::{Episode, ListMemoriesRequest, MemoryFilter};
use engram_client::Answer;
use serde_json::Value;
use support::ServerProcess;

const DIM: usize = 8;
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_while_writers_run_returns_each_earlier_memory_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--wal-sync", "none"]);
    server.wait_ready().await;
    let client = support::grpc_client(&server).await;
    client.create_space("ls", DIM as u32).await.unwrap();

    // Two writers stream until told to stop, recording what was acked.
    let acked: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    // How many are acked so far, for waiting on it.
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (client, acked, stop, count_tx) = (
            client.clone(),
            acked.clone(),
            stop.clone(),
            count_tx.clone(),
        );
        writers.push(tokio::spawn(async move {
            let (sender, mut acks) = client.observe_stream("ls").await.unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let even = i.is_multiple_of(2);
                let id = format!("w{w}-{i}");
                sender
                    .send(Episode {
                        id: id.clone(),
                        what: id.clone(),
                        embedding: (0..DIM)
                            .map(|d| ((i as usize + d) % 7) as f32 + 0.5)
                            .collect(),
                        tags: vec![if even { "even" } else { "odd" }.into()],
                        ..Episode::default()
                    })
                    .await
                    .unwrap();
                if let Answer::Accepted(_) = acks.recv().await.unwrap().unwrap() {
                    acked.lock().unwrap().push((id, even));
                    count_tx.send_modify(|n| *n += 1);
                }
                i += 1;
            }
            sender.close(true).await.unwrap();
        }));
    }
    let until = Instant::now() + WAIT;
    tokio::time::timeout(WAIT, count_rx.wait_for(|&n| n >= 600))
        .await
        .expect("the writers did not get going")
        .unwrap();

    // gRPC, no filter, small pages, while the writers go on.
    let before: Vec<(String, bool)> = acked.lock().unwrap().clone();
    let mut seen = HashSet::new();
    let mut last_seq = 0;
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_memories(ListMemoriesRequest {
                memory_space_id: "ls".into(),
                page_size: 37,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        pages += 1;
        for m in &page.memories {
            assert!(m.server_sequence > last_seq, "server-sequence order");
            last_seq = m.server_sequence;
            let id = m.episode.as_ref().unwrap().id.clone();
            assert!(seen.insert(id.clone()), "{id} listed twice");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "the listing never caught up");
        token = page.next_page_token;
    }
    assert!(pages > 10, "{pages} pages");
    for (id, _) in &before {
        assert!(
            seen.contains(id),
            "{id} was acked before the listing and is missing"
        );
    }

    // REST with a filter, while the writers go on.
    let before: Vec<(String, bool)> = acked.lock().unwrap().clone();
    let http = reqwest::Client::new();
    let mut seen = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut url = server.url("/v1/spaces/ls/memories?tags_all=even&page_size=23");
        if let Some(t) = &token {
            url.push_str(&format!("&page_token={t}"));
        }
        let (status, v) = support::call(&http, reqwest::Method::GET, &url, None).await;
        assert_eq!(status, 200, "{v}");
        for m in v["memories"].as_array().unwrap() {
            let id = m["episode"]["id"].as_str().unwrap().to_owned();
            assert_eq!(m["episode"]["tags"], serde_json::json!(["even"]), "{m}");
            assert!(seen.insert(id.clone()), "{id} listed twice");
        }
        match v.get("next_page_token").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
        assert!(Instant::now() < until, "the listing never caught up");
    }
    for (id, even) in &before {
        assert_eq!(seen.contains(id), *even, "{id}");
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // The filter of the gRPC listing, and the embeddings when asked for.
    let page = client
        .list_memories(ListMemoriesRequest {
            memory_space_id: "ls".into(),
            filter: Some(MemoryFilter {
                tags_none: vec!["even".into()],
                ..MemoryFilter::default()
            }),
            page_size: 5,
            include_embeddings: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.memories.len(), 5);
    for m in &page.memories {
        let e = m.episode.as_ref().unwrap();
        assert_eq!(e.tags, ["odd"]);
        assert_eq!(e.embedding.len(), DIM);
    }

    // Bad input: a clear error, and nothing breaks.
    let e = client
        .list_memories(ListMemoriesRequest {
            memory_space_id: "ls".into(),
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("page_token"), "{e}");
    let e = client
        .list_memories(ListMemoriesRequest {
            memory_space_id: "ls".into(),
            page_size: 1001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("page_size"), "{e}");
    for (query, want) in [
        ("page_size=0", "page_size"),
        ("page_size=x", "page_size"),
        ("page_token=zz", "page_token"),
        ("colour=red", "unknown query parameter"),
        ("tags_all=", "cue.filter.tags_all"),
    ] {
        let (status, v) = support::call(
            &http,
            reqwest::Method::GET,
            &server.url(&format!("/v1/spaces/ls/memories?{query}")),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(want),
            "{query}: {v}"
        );
    }
    let (status, _) = support::call(
        &http,
        reqwest::Method::GET,
        &server.url("/v1/spaces/nope/memories"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    client.describe_space("ls").await.unwrap();
}
