//! Streaming sessions in cluster mode, through the real interfaces: a NATS
//! server and engram nodes as processes on loopback.
//!
//! - An `ObserveStream` on a node that does not own the space's partition:
//!   one answer per observation in sequence order, each accepted one with
//!   its consistency token; a bad observation is rejected as invalid and
//!   the stream goes on; an episode sent without an id gets
//!   `<session>:<sequence>`.
//! - Recalls on `MemoryFlow` and `RecallStream` (forwarded to the owner, in
//!   batches) and unary recalls on the other node see the streamed writes
//!   their token names.
//! - A resume on the same node replays recorded answers and goes on; a
//!   resume on another node is `NOT_FOUND`; a new session resending the
//!   same ids stores nothing twice.
//! - The WebSocket stream acks with tokens and recalls with `after`.
//! - A stalled log (the NATS server stopped) fills the node's pending
//!   publishes: the stream is told OVERLOADED and observations beyond the
//!   capacity are rejected with a retry-after; once the log answers, the
//!   pending ones are accepted, the pressure clears, and the count is exact.

// tonic::Status is large, and what these calls return.
#![allow(clippy::result_large_err)]

mod cluster_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster_support::{nats_cluster, nodes, served, tails, wait_all_served};
use engram_proto::v1 as pb;
use engram_proto::v1::memory_client::MemoryClient;
use engram_proto::v1::streaming_client::StreamingClient;
use futures::{SinkExt, StreamExt};
use pb::observation_ack::{Reason, Status as AckStatus};
use pb::stream_status::State;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

const SPACE: &str = "streamed";

fn channel(port: u16) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect_lazy()
}

fn basis(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; 8];
    v[i % 8] = 1.0;
    v[(i / 8) % 8] += 0.5;
    v[(i / 64) % 8] += 0.25;
    v
}

fn init(space: &str, resume: &str) -> pb::ObserveRequest {
    pb::ObserveRequest {
        request: Some(pb::observe_request::Request::Init(pb::StreamInit {
            memory_space_id: space.to_owned(),
            resume_session_id: resume.to_owned(),
            enable_backpressure: true,
        })),
    }
}

fn observation(seq: u64, id: &str, embedding: Vec<f32>) -> pb::ObserveRequest {
    pb::ObserveRequest {
        request: Some(pb::observe_request::Request::Observation(pb::Observation {
            sequence_number: seq,
            episode: Some(pb::Episode {
                id: id.to_owned(),
                what: format!("observation {seq}"),
                embedding,
                ..Default::default()
            }),
            priority: 0,
        })),
    }
}

/// One ObserveStream: what to send, and what comes back.
struct Stream {
    tx: mpsc::Sender<pb::ObserveRequest>,
    rx: tonic::Streaming<pb::ObserveResponse>,
    statuses: Vec<pb::StreamStatus>,
}

impl Stream {
    async fn open(
        port: u16,
        space: &str,
        resume: &str,
    ) -> Result<(Stream, pb::StreamInitAck), tonic::Status> {
        let (tx, requests) = mpsc::channel(1024);
        tx.send(init(space, resume)).await.unwrap();
        let mut client = StreamingClient::new(channel(port));
        let mut rx = client
            .observe_stream(ReceiverStream::new(requests))
            .await?
            .into_inner();
        let first = rx.message().await?.expect("an init_ack");
        match first.response {
            Some(pb::observe_response::Response::InitAck(a)) => Ok((
                Stream {
                    tx,
                    rx,
                    statuses: Vec::new(),
                },
                a,
            )),
            other => panic!("expected init_ack, got {other:?}"),
        }
    }

    async fn send(&self, r: pb::ObserveRequest) {
        self.tx.send(r).await.unwrap();
    }

    /// The next ack (statuses on the way are kept), within a deadline.
    async fn ack(&mut self) -> pb::ObservationAck {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.rx.message())
                .await
                .expect("an ack within 30 s")
                .expect("the stream goes on")
                .expect("the stream is not over");
            match m.response {
                Some(pb::observe_response::Response::Ack(a)) => return a,
                Some(pb::observe_response::Response::Status(s)) => self.statuses.push(s),
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    }

    /// Waits for a status in `state` (acks on the way are returned).
    async fn status(
        &mut self,
        state: State,
        within: Duration,
    ) -> (pb::StreamStatus, Vec<pb::ObservationAck>) {
        let mut acks = Vec::new();
        if let Some(i) = self.statuses.iter().position(|s| s.state == state as i32) {
            return (self.statuses.remove(i), acks);
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.rx.message())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {state:?} status within {within:?}; statuses: {:?}",
                        self.statuses
                    )
                })
                .expect("the stream goes on")
                .expect("the stream is not over");
            match m.response {
                Some(pb::observe_response::Response::Status(s)) if s.state == state as i32 => {
                    return (s, acks)
                }
                Some(pb::observe_response::Response::Status(s)) => self.statuses.push(s),
                Some(pb::observe_response::Response::Ack(a)) => acks.push(a),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn token_of(a: &pb::ObservationAck) -> pb::ConsistencyToken {
    a.token
        .unwrap_or_else(|| panic!("an accepted ack carries a token: {a:?}"))
}

async fn recall_after(
    client: &mut MemoryClient<Channel>,
    cue: Vec<f32>,
    after: pb::ConsistencyToken,
) -> pb::RecallResponse {
    client
        .recall(pb::RecallRequest {
            memory_space_id: SPACE.to_owned(),
            cue: Some(pb::Cue {
                embedding: cue,
                max_results: 5,
                ..Default::default()
            }),
            after: Some(after),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_run_on_a_cluster_as_on_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (nats, urls) = nats_cluster(root, 1);
    let nodes = nodes(root, &urls, 2, "partitions = 2\nreplicas = 1\n");
    let all: Vec<(String, u16)> = nodes.iter().map(|n| (n.id.clone(), n.http)).collect();
    let logs: Vec<std::path::PathBuf> = nodes
        .iter()
        .map(|n| n.log.clone())
        .chain([nats[0].log.clone()])
        .collect();
    let tail = || {
        let files: Vec<&std::path::Path> = logs.iter().map(|p| p.as_path()).collect();
        tails(&files, 30)
    };
    assert!(
        wait_all_served(&all, 2, Duration::from_secs(60)).await,
        "not every partition served:\n{}",
        tail()
    );
    let p = engram_server::cluster::partition_of(SPACE, 2);
    let owner = served(&all).await[&p].clone();
    // The stream runs on the node that does not own the space: its writes
    // and recalls cross nodes.
    let (wi, oi) = if owner == nodes[0].id { (1, 0) } else { (0, 1) };
    let (writer, other) = (&nodes[wi], &nodes[oi]);
    let mut m_other = MemoryClient::new(channel(other.grpc));
    m_other
        .create_space(pb::CreateSpaceRequest {
            memory_space_id: SPACE.to_owned(),
            dimension: 8,
            ..Default::default()
        })
        .await
        .unwrap();

    let (mut s, ack) = Stream::open(writer.grpc, SPACE, "").await.unwrap();
    let session = ack.session_id.clone();
    assert_eq!(ack.last_acked_sequence, 0);
    let caps = ack.capabilities.unwrap();
    assert_eq!(caps.dimension, 8, "{caps:?}");
    assert_eq!(caps.queue_capacity, 4096, "cluster.max_pending_publishes");

    // 100 observations: odd ones without an id, 50 with the wrong
    // dimension.
    const N: u64 = 100;
    for seq in 1..=N {
        let id = if seq % 2 == 0 {
            format!("s-{seq}")
        } else {
            String::new()
        };
        let embedding = if seq == 50 {
            vec![1.0; 3]
        } else {
            basis(seq as usize)
        };
        s.send(observation(seq, &id, embedding)).await;
    }
    let mut acks: HashMap<u64, pb::ObservationAck> = HashMap::new();
    for seq in 1..=N {
        let a = s.ack().await;
        assert_eq!(a.sequence_number, seq, "answers in sequence order: {a:?}");
        if seq == 50 {
            assert_eq!(a.status, AckStatus::AckRejected as i32, "{a:?}");
            assert_eq!(a.reason, Reason::RejectInvalid as i32, "{a:?}");
            assert!(a.message.contains("dimension"), "{}", a.message);
        } else {
            assert_eq!(a.status, AckStatus::AckAccepted as i32, "{a:?}");
            let expected = if seq % 2 == 0 {
                format!("s-{seq}")
            } else {
                format!("{session}:{seq}")
            };
            assert_eq!(a.memory_id, expected);
            let t = token_of(&a);
            assert_eq!(t.partition, p);
            assert!(t.sequence > 0);
        }
        acks.insert(seq, a);
    }
    let mut seqs: Vec<u64> = acks
        .values()
        .filter_map(|a| a.token.map(|t| t.sequence))
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        N as usize - 1,
        "each accepted observation stored at its own place"
    );

    // Read-after-ack on the owner with a streamed ack's token.
    let r = recall_after(&mut m_other, basis(99), token_of(&acks[&99])).await;
    assert_eq!(
        r.memories[0].episode.as_ref().unwrap().id,
        acks[&99].memory_id
    );

    // MemoryFlow on the writer: a recall with a token, forwarded to the
    // owner and sent in batches of 2.
    let (ftx, frx) = mpsc::channel(8);
    ftx.send(pb::FlowRequest {
        request_id: "r1".to_owned(),
        request: Some(pb::flow_request::Request::Recall(pb::RecallRequest {
            memory_space_id: SPACE.to_owned(),
            cue: Some(pb::Cue {
                embedding: basis(100),
                max_results: 5,
                ..Default::default()
            }),
            batch_size: 2,
            after: Some(token_of(&acks[&100])),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut flow = StreamingClient::new(channel(writer.grpc))
        .memory_flow(ReceiverStream::new(frx))
        .await
        .unwrap()
        .into_inner();
    let mut batches = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), flow.message())
            .await
            .expect("a recall batch within 30 s")
            .unwrap()
            .unwrap();
        match m.response {
            Some(pb::flow_response::Response::Recall(b)) => {
                assert_eq!(m.request_id, "r1");
                let more = b.more;
                batches.push(b);
                if !more {
                    break;
                }
            }
            other => panic!("expected recall batches, got {other:?}"),
        }
    }
    drop(ftx);
    let sizes: Vec<usize> = batches.iter().map(|b| b.memories.len()).collect();
    assert_eq!(sizes, [2, 2, 1], "5 results in batches of 2");
    assert_eq!(
        batches[0].memories[0].episode.as_ref().unwrap().id,
        acks[&100].memory_id,
        "the flow's recall sees the write its token names"
    );
    // RecallStream on the writer too.
    let mut rs = StreamingClient::new(channel(writer.grpc))
        .recall_stream(pb::RecallRequest {
            memory_space_id: SPACE.to_owned(),
            cue: Some(pb::Cue {
                embedding: basis(98),
                max_results: 3,
                ..Default::default()
            }),
            after: Some(token_of(&acks[&98])),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = rs.message().await.unwrap().unwrap();
    assert_eq!(first.memories[0].episode.as_ref().unwrap().id, "s-98");

    // Resume on the same node: the last answer is 100; 100 again is
    // replayed (nothing stored), 101 is new.
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut s, ack) = loop {
        // The old stream's end may take a moment to reach the server.
        let (s, ack) = Stream::open(writer.grpc, SPACE, &session).await.unwrap();
        if ack.last_acked_sequence == N || Instant::now() > deadline {
            break (s, ack);
        }
    };
    assert_eq!(ack.session_id, session);
    assert_eq!(ack.last_acked_sequence, N);
    s.send(observation(N, "s-100", basis(100))).await;
    let a = s.ack().await;
    assert!(a.replayed, "{a:?}");
    assert_eq!(a.memory_id, "s-100");
    s.send(observation(N + 1, "s-101", basis(101))).await;
    let a101 = s.ack().await;
    assert_eq!(a101.status, AckStatus::AckAccepted as i32, "{a101:?}");
    assert!(!a101.replayed);

    // A resume on the other node: the session is not there.
    let err = Stream::open(other.grpc, SPACE, &session)
        .await
        .err()
        .expect("NOT_FOUND");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("not on this node"),
        "{}",
        err.message()
    );
    // What a client does then: a new session there, resending with the
    // same ids; nothing is stored twice.
    let (mut s2, _) = Stream::open(other.grpc, SPACE, "").await.unwrap();
    for (i, seq) in [2u64, 4, 6].iter().enumerate() {
        s2.send(observation(
            i as u64 + 1,
            &format!("s-{seq}"),
            basis(*seq as usize),
        ))
        .await;
    }
    for seq in [2u64, 4, 6] {
        let a = s2.ack().await;
        assert_eq!(a.status, AckStatus::AckAccepted as i32, "{a:?}");
        assert!(a.duplicate, "s-{seq} resent: a duplicate {a:?}");
        assert_eq!(a.memory_id, format!("s-{seq}"));
        assert_eq!(
            token_of(&a),
            token_of(&acks[&seq]),
            "the first write's place"
        );
    }

    // The WebSocket stream on the writer: acks with tokens, a recall with
    // `after`.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/v1/stream", writer.http))
            .await
            .unwrap();
    use tokio_tungstenite::tungstenite::Message;
    let send = |v: serde_json::Value| Message::Text(v.to_string());
    ws.send(send(
        serde_json::json!({"type": "init", "memory_space_id": SPACE}),
    ))
    .await
    .unwrap();
    for (seq, i) in [(1, 120usize), (2, 121)] {
        ws.send(send(serde_json::json!({
            "type": "observation", "sequence_number": seq,
            "episode": {"id": format!("w-{seq}"), "what": "over the socket", "embedding": basis(i)}
        })))
        .await
        .unwrap();
    }
    let mut ws_acks = Vec::new();
    let mut ws_recall = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ws_recall.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, ws.next())
            .await
            .expect("WebSocket answers within 30 s")
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("ack") => {
                assert_eq!(v["status"], "accepted", "{v}");
                assert_eq!(v["token"]["partition"], p, "{v}");
                ws_acks.push(v.clone());
                if ws_acks.len() == 2 {
                    ws.send(send(serde_json::json!({
                        "type": "recall", "request_id": "q",
                        "cue": {"embedding": basis(121), "max_results": 1},
                        "after": v["token"],
                    })))
                    .await
                    .unwrap();
                }
            }
            Some("recall_result") => ws_recall = Some(v),
            Some("init_ack") | Some("status") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    let recalled = ws_recall.unwrap();
    assert_eq!(
        recalled["memories"][0]["episode"]["id"], "w-2",
        "{recalled}"
    );

    // Exactly once: 99 + 1 streamed, 2 over the socket.
    let last = token_of(&a101);
    let w2 = pb::ConsistencyToken {
        partition: p,
        sequence: ws_acks[1]["token"]["sequence"]
            .as_u64()
            .unwrap()
            .max(last.sequence),
    };
    recall_after(&mut m_other, basis(1), w2).await;
    let info = MemoryClient::new(channel(writer.grpc))
        .describe_space(pb::DescribeSpaceRequest {
            memory_space_id: SPACE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .space
        .unwrap();
    assert_eq!(info.count, 102, "every accepted observation stored once");

    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", writer.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("engram_cluster_stream_rejected_total{reason=\"invalid\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("engram_cluster_stream_sessions "),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_pushes_back_on_streams() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (nats, urls) = nats_cluster(root, 1);
    let nodes = nodes(
        root,
        &urls,
        1,
        "partitions = 1\nreplicas = 1\nmax_pending_publishes = 8\npublish_timeout_ms = 30000\n",
    );
    let all: Vec<(String, u16)> = nodes.iter().map(|n| (n.id.clone(), n.http)).collect();
    assert!(wait_all_served(&all, 1, Duration::from_secs(60)).await);
    let node = &nodes[0];
    let mut m = MemoryClient::new(channel(node.grpc));
    m.create_space(pb::CreateSpaceRequest {
        memory_space_id: SPACE.to_owned(),
        dimension: 8,
        ..Default::default()
    })
    .await
    .unwrap();
    let (mut s, _) = Stream::open(node.grpc, SPACE, "").await.unwrap();
    s.send(observation(1, "o-1", basis(1))).await;
    assert_eq!(s.ack().await.status, AckStatus::AckAccepted as i32);

    let nats_pid = nats[0].child.as_ref().unwrap().id() as i32;
    // SAFETY: a plain signal to a child process this test started.
    unsafe {
        libc::kill(nats_pid, libc::SIGSTOP);
    }
    const MORE: u64 = 30;
    for seq in 2..=MORE {
        s.send(observation(seq, &format!("o-{seq}"), basis(seq as usize)))
            .await;
    }
    // The pending publishes fill the node's capacity: OVERLOADED.
    let (status, early) = s.status(State::Overloaded, Duration::from_secs(10)).await;
    assert!(
        early.is_empty(),
        "nothing is acked while the log is stopped: {early:?}"
    );
    assert_eq!(status.queue_capacity, 8);
    assert!(status.queue_depth >= 7, "{status:?}");
    assert!(
        status.message.contains("max_pending_publishes"),
        "{}",
        status.message
    );
    // A unary write is refused too, naming the setting.
    let err = m
        .remember(pb::RememberRequest {
            memory_space_id: SPACE.to_owned(),
            episode: Some(pb::Episode {
                id: "unary".to_owned(),
                embedding: basis(0),
                ..Default::default()
            }),
            priority: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_pending_publishes"),
        "{}",
        err.message()
    );
    let pending = reqwest::get(format!("http://127.0.0.1:{}/metrics", node.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        pending.contains("engram_cluster_publish_pending 8"),
        "{pending}"
    );

    // SAFETY: as above.
    unsafe {
        libc::kill(nats_pid, libc::SIGCONT);
    }
    // The log answers: the pending ones are accepted, the rest were
    // rejected as overloaded with a retry-after; all in order.
    let mut accepted = vec![1u64];
    let mut rejected = Vec::new();
    for seq in 2..=MORE {
        let a = s.ack().await;
        assert_eq!(a.sequence_number, seq);
        if a.status == AckStatus::AckAccepted as i32 {
            accepted.push(seq);
        } else {
            assert_eq!(a.reason, Reason::RejectOverloaded as i32, "{a:?}");
            assert!(a.retry_after_ms > 0, "{a:?}");
            rejected.push(seq);
        }
    }
    assert_eq!(
        accepted.len(),
        1 + 8,
        "the capacity's worth admitted: {accepted:?}"
    );
    assert_eq!(rejected.len(), MORE as usize - accepted.len());
    // The pressure clears.
    let (cleared, _) = s.status(State::Active, Duration::from_secs(10)).await;
    assert!(cleared.message.contains("cleared"), "{}", cleared.message);
    // Resent under new numbers (the rejected ones used theirs), within
    // the capacity (as a client honouring the status does): accepted.
    let mut seq = MORE;
    let mut last = None;
    for chunk in rejected.chunks(4) {
        for r in chunk {
            seq += 1;
            s.send(observation(seq, &format!("o-{r}"), basis(*r as usize)))
                .await;
        }
        for _ in chunk {
            let a = s.ack().await;
            assert_eq!(a.status, AckStatus::AckAccepted as i32, "{a:?}");
            last = a.token;
        }
    }
    recall_after(&mut m, basis(1), last.unwrap()).await;
    let info = m
        .describe_space(pb::DescribeSpaceRequest {
            memory_space_id: SPACE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .space
        .unwrap();
    assert_eq!(info.count, MORE, "each observation stored once");
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", node.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let overloaded = format!(
        "engram_cluster_stream_rejected_total{{reason=\"overloaded\"}} {}",
        rejected.len()
    );
    assert!(metrics.contains(&overloaded), "{overloaded} in {metrics}");
}
