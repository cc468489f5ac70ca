//! The gRPC wire contract against the real server, with the generated
//! engram.v1 clients: health, reflection, ObserveStream semantics (acks in
//! order, sequence rules, flow control, close with drain), RecallStream
//! batches, MemoryFlow, the unary Memory service, and bad input on the wire.

mod support;

use std::time::Duration;

use engram_proto::v1 as pb;
use engram_proto::v1::memory_client::MemoryClient;
use engram_proto::v1::streaming_client::StreamingClient;
use pb::observation_ack::{Reason, Status as AckStatus};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

async fn channel(server: &ServerProcess) -> Channel {
    Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .expect("connecting over gRPC")
}

fn init(space: &str, resume: &str) -> pb::ObserveRequest {
    pb::ObserveRequest {
        request: Some(pb::observe_request::Request::Init(pb::StreamInit {
            memory_space_id: space.into(),
            resume_session_id: resume.into(),
            enable_backpressure: true,
        })),
    }
}

fn obs(seq: u64, id: &str, embedding: Vec<f32>) -> pb::ObserveRequest {
    pb::ObserveRequest {
        request: Some(pb::observe_request::Request::Observation(pb::Observation {
            sequence_number: seq,
            episode: Some(pb::Episode {
                id: id.into(),
                what: format!("episode {id}"),
                embedding,
                ..Default::default()
            }),
            priority: pb::Priority::Normal as i32,
        })),
    }
}

fn close(drain: bool) -> pb::ObserveRequest {
    pb::ObserveRequest {
        request: Some(pb::observe_request::Request::Close(pb::StreamClose {
            drain,
        })),
    }
}

fn flow(action: pb::flow_control::Action) -> pb::ObserveRequest {
    pb::ObserveRequest {
        request: Some(pb::observe_request::Request::Flow(pb::FlowControl {
            action: action as i32,
            buffer_remaining: 0,
        })),
    }
}

/// An open ObserveStream: a sender of requests and the response stream.
struct Stream {
    tx: mpsc::Sender<pb::ObserveRequest>,
    rx: tonic::Streaming<pb::ObserveResponse>,
}

impl Stream {
    async fn open(ch: &Channel) -> Stream {
        let (tx, rx) = mpsc::channel(1024);
        let rx = StreamingClient::new(ch.clone())
            .observe_stream(ReceiverStream::new(rx))
            .await
            .expect("ObserveStream")
            .into_inner();
        Stream { tx, rx }
    }

    async fn send(&self, r: pb::ObserveRequest) {
        self.tx.send(r).await.expect("stream open");
    }

    /// The next response other than a status message.
    async fn next(&mut self) -> Result<pb::observe_response::Response, tonic::Status> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.rx.message())
                .await
                .expect("no response within 30 s")?
                .expect("stream ended");
            match msg.response.unwrap() {
                pb::observe_response::Response::Status(_) => continue,
                other => return Ok(other),
            }
        }
    }

    async fn ack(&mut self) -> pb::ObservationAck {
        match self.next().await.unwrap() {
            pb::observe_response::Response::Ack(a) => a,
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_serving_and_reflection_lists_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let ch = channel(&server).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "engram.v1.Streaming", "engram.v1.Memory"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = ServerReflectionClient::new(ch.clone())
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "engram.v1.Streaming",
        "engram.v1.Memory",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // The v1alpha reflection service answers too.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut resp = Alpha::new(ch)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.next().await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_stream_acks_in_order_and_applies_the_sequence_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let ch = channel(&server).await;
    let vecs = random_vectors(60, 8, 61);
    let mut s = Stream::open(&ch).await;
    s.send(init("wire", "")).await;
    let pb::observe_response::Response::InitAck(ack) = s.next().await.unwrap() else {
        panic!("expected init_ack")
    };
    assert!(!ack.session_id.is_empty());
    assert_eq!(ack.last_acked_sequence, 0);
    assert_eq!(ack.capabilities.unwrap().queue_capacity, 100_000);
    // Pipelined: 50 in flight, acks come back in sequence order.
    for i in 0..50 {
        s.send(obs(i + 1, &format!("w{i}"), vecs[i as usize].clone()))
            .await;
    }
    for i in 0..50 {
        let a = s.ack().await;
        assert_eq!(
            (a.sequence_number, a.status),
            (i + 1, AckStatus::AckAccepted as i32),
            "{a:?}"
        );
        assert_eq!(a.server_sequence, i + 1);
        assert_eq!(a.memory_id, format!("w{i}"));
    }
    // A gap and a duplicate are out of order; a wrong dimension and a
    // missing episode are invalid but use their numbers; the stream goes on.
    s.send(obs(52, "gap", vecs[50].clone())).await;
    s.send(obs(50, "dup", vecs[50].clone())).await;
    s.send(obs(51, "dim", vec![1.0; 3])).await;
    s.send(pb::ObserveRequest {
        request: Some(pb::observe_request::Request::Observation(pb::Observation {
            sequence_number: 52,
            episode: None,
            priority: 0,
        })),
    })
    .await;
    s.send(obs(53, "nan", vec![f32::NAN; 8])).await;
    s.send(obs(54, "fine", vecs[51].clone())).await;
    let expect = [
        (52, Reason::RejectOutOfOrder, "gap"),
        (50, Reason::RejectOutOfOrder, "duplicate"),
        (51, Reason::RejectInvalid, "expects 8"),
        (52, Reason::RejectInvalid, "missing episode"),
        (53, Reason::RejectInvalid, "finite"),
    ];
    for (seq, reason, needle) in expect {
        let a = s.ack().await;
        assert_eq!(
            (a.sequence_number, a.status, a.reason),
            (seq, AckStatus::AckRejected as i32, reason as i32),
            "{a:?}"
        );
        assert!(a.message.contains(needle), "{a:?} should mention {needle}");
    }
    let a = s.ack().await;
    assert_eq!(
        (a.sequence_number, a.status),
        (54, AckStatus::AckAccepted as i32)
    );

    // Flow control answers with status messages.
    s.send(flow(pb::flow_control::Action::Pause)).await;
    let m = s.rx.message().await.unwrap().unwrap();
    let Some(pb::observe_response::Response::Status(st)) = m.response else {
        panic!("{m:?}")
    };
    assert_eq!(st.state, pb::stream_status::State::Paused as i32);
    s.send(flow(pb::flow_control::Action::Resume)).await;
    let m = s.rx.message().await.unwrap().unwrap();
    let Some(pb::observe_response::Response::Status(st)) = m.response else {
        panic!("{m:?}")
    };
    assert_eq!(st.state, pb::stream_status::State::Active as i32);

    s.send(close(true)).await;
    let pb::observe_response::Response::Closed(c) = s.next().await.unwrap() else {
        panic!("expected closed")
    };
    assert_eq!((c.final_sequence, c.accepted, c.rejected), (54, 51, 5));
    assert!(
        s.rx.message().await.unwrap().is_none(),
        "the stream ends after closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_end_with_precise_statuses_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--fault-injection", "--queue-capacity", "200"],
    );
    server.wait_ready().await;
    let ch = channel(&server).await;

    let mut s = Stream::open(&ch).await;
    s.send(obs(1, "x", vec![1.0])).await;
    let e = s.next().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("must be init"));

    let mut s = Stream::open(&ch).await;
    s.send(init("twice", "")).await;
    s.next().await.unwrap();
    s.send(init("twice", "")).await;
    let e = s.next().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("already sent"), "{e:?}");

    let mut s = Stream::open(&ch).await;
    s.send(init("Bad Space!", "")).await;
    assert_eq!(s.next().await.unwrap_err().code(), Code::InvalidArgument);

    let mut s = Stream::open(&ch).await;
    s.send(init("resume", "no-such-session")).await;
    let e = s.next().await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Oversized message: beyond grpc.max_message_bytes (4 MiB).
    let mut s = Stream::open(&ch).await;
    s.send(init("big", "")).await;
    s.next().await.unwrap();
    s.send(pb::ObserveRequest {
        request: Some(pb::observe_request::Request::Observation(pb::Observation {
            sequence_number: 1,
            episode: Some(pb::Episode {
                what: "z".repeat(5 * 1024 * 1024),
                embedding: vec![1.0],
                ..Default::default()
            }),
            priority: 0,
        })),
    })
    .await;
    let e = s.next().await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_message_bytes"), "{e:?}");

    // Garbage bytes where a protobuf message should be.
    let mut raw = tonic::client::Grpc::new(ch.clone());
    raw.ready().await.unwrap();
    let garbage = tokio_stream::iter([bytes_msg(vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x01])]);
    let r = raw
        .streaming::<_, bytes_msg_type::Raw, bytes_msg_type::Raw, _>(
            tonic::Request::new(garbage),
            "/engram.v1.Streaming/ObserveStream".parse().unwrap(),
            bytes_msg_type::RawCodec,
        )
        .await;
    let code = match r {
        Err(e) => e.code(),
        Ok(resp) => {
            let mut inner = resp.into_inner();
            inner.message().await.unwrap_err().code()
        }
    };
    assert!(
        matches!(code, Code::Internal | Code::InvalidArgument),
        "{code:?}"
    );

    // Unary overload: RESOURCE_EXHAUSTED carrying RetryInfo.
    let http = reqwest::Client::new();
    call(
        &http,
        reqwest::Method::POST,
        &server.url("/v1/admin/indexing/pause"),
        None,
    )
    .await;
    let mut memory = MemoryClient::new(ch.clone());
    memory
        .create_space(pb::CreateSpaceRequest {
            memory_space_id: "full".into(),
            dimension: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut overloaded = None;
    for i in 0..1000u32 {
        let r = memory
            .remember(pb::RememberRequest {
                memory_space_id: "full".into(),
                episode: Some(pb::Episode {
                    embedding: vec![1.0, i as f32, 0.5, 0.25],
                    ..Default::default()
                }),
                priority: 0,
            })
            .await;
        if let Err(e) = r {
            overloaded = Some(e);
            break;
        }
    }
    let e = overloaded.expect("never overloaded");
    assert_eq!(e.code(), Code::ResourceExhausted);
    use tonic_types::StatusExt;
    let retry = e.get_details_retry_info().expect("RetryInfo detail");
    assert!(retry.retry_delay.unwrap() >= Duration::from_millis(50));

    // After all that, the server is healthy and answers.
    let r = memory
        .describe_space(pb::DescribeSpaceRequest {
            memory_space_id: "full".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.space.unwrap().count,
        180,
        "normal priority fills 90% of capacity"
    );
    let (status, _) = call(
        &http,
        reqwest::Method::GET,
        &server.url("/health/ready"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

fn bytes_msg(b: Vec<u8>) -> bytes_msg_type::Raw {
    bytes_msg_type::Raw(b)
}

/// A codec that sends raw bytes, to put garbage on the wire.
mod bytes_msg_type {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Clone, Debug, Default)]
    pub struct Raw(pub Vec<u8>);

    #[derive(Default)]
    pub struct RawCodec;

    impl Codec for RawCodec {
        type Encode = Raw;
        type Decode = Raw;
        type Encoder = RawCodec;
        type Decoder = RawCodec;
        fn encoder(&mut self) -> Self::Encoder {
            RawCodec
        }
        fn decoder(&mut self) -> Self::Decoder {
            RawCodec
        }
    }

    impl Encoder for RawCodec {
        type Item = Raw;
        type Error = Status;
        fn encode(&mut self, item: Raw, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            use bytes::BufMut;
            dst.put_slice(&item.0);
            Ok(())
        }
    }

    impl Decoder for RawCodec {
        type Item = Raw;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Raw>, Status> {
            use bytes::Buf;
            let v = src.chunk().to_vec();
            src.advance(v.len());
            Ok(Some(Raw(v)))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_stream_and_memory_flow_return_batches_with_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let ch = channel(&server).await;
    let vecs = random_vectors(100, 8, 71);
    let mut memory = MemoryClient::new(ch.clone());
    for (i, v) in vecs.iter().enumerate() {
        memory
            .remember(pb::RememberRequest {
                memory_space_id: "rs".into(),
                episode: Some(pb::Episode {
                    id: format!("r{i}"),
                    embedding: v.clone(),
                    ..Default::default()
                }),
                priority: 0,
            })
            .await
            .unwrap();
    }
    let cue = |k: u32| pb::Cue {
        embedding: vecs[7].clone(),
        max_results: k,
        similarity_threshold: -1.0,
        ..Default::default()
    };
    let mut stream = StreamingClient::new(ch.clone())
        .recall_stream(pb::RecallRequest {
            memory_space_id: "rs".into(),
            cue: Some(cue(25)),
            batch_size: 10,
            include_embeddings: false,
            after: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut batches = Vec::new();
    while let Some(b) = stream.message().await.unwrap() {
        batches.push(b);
    }
    assert_eq!(
        batches.iter().map(|b| b.memories.len()).collect::<Vec<_>>(),
        [10, 10, 5]
    );
    assert!(batches.iter().all(|b| b.snapshot_sequence == 100));
    assert_eq!(
        batches.iter().map(|b| b.more).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(batches[0].memories[0].episode.as_ref().unwrap().id, "r7");
    let unary = memory
        .recall(pb::RecallRequest {
            memory_space_id: "rs".into(),
            cue: Some(cue(25)),
            batch_size: 0,
            include_embeddings: false,
            after: None,
        })
        .await
        .unwrap()
        .into_inner();
    let streamed: Vec<u64> = batches
        .iter()
        .flat_map(|b| b.memories.iter().map(|m| m.server_sequence))
        .collect();
    let whole: Vec<u64> = unary.memories.iter().map(|m| m.server_sequence).collect();
    assert_eq!(streamed, whole, "batches concatenate to the unary top-k");

    // An unknown space fails the call.
    let e = StreamingClient::new(ch.clone())
        .recall_stream(pb::RecallRequest {
            memory_space_id: "nope".into(),
            cue: Some(cue(5)),
            batch_size: 0,
            include_embeddings: false,
            after: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // MemoryFlow: observe and recall on one stream; recall results echo
    // their request id; a bad recall is an error message and the flow goes on.
    let (tx, rx) = mpsc::channel(64);
    let mut flow = StreamingClient::new(ch.clone())
        .memory_flow(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let wrap = |id: &str, r: pb::flow_request::Request| pb::FlowRequest {
        request_id: id.into(),
        request: Some(r),
    };
    tx.send(wrap(
        "i",
        pb::flow_request::Request::Observe(init("rs", "")),
    ))
    .await
    .unwrap();
    tx.send(wrap(
        "o1",
        pb::flow_request::Request::Observe(obs(1, "flow-1", vecs[0].clone())),
    ))
    .await
    .unwrap();
    tx.send(wrap(
        "bad",
        pb::flow_request::Request::Recall(pb::RecallRequest {
            memory_space_id: "rs".into(),
            cue: Some(pb::Cue {
                embedding: vec![1.0],
                ..Default::default()
            }),
            batch_size: 0,
            include_embeddings: false,
            after: None,
        }),
    ))
    .await
    .unwrap();
    tx.send(wrap(
        "q1",
        pb::flow_request::Request::Recall(pb::RecallRequest {
            memory_space_id: "rs".into(),
            cue: Some(cue(3)),
            batch_size: 0,
            include_embeddings: false,
            after: None,
        }),
    ))
    .await
    .unwrap();
    let (mut saw_ack, mut saw_error, mut saw_recall) = (false, false, false);
    while !(saw_ack && saw_error && saw_recall) {
        let m = tokio::time::timeout(Duration::from_secs(30), flow.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match m.response.unwrap() {
            pb::flow_response::Response::Observe(o) => {
                if let Some(pb::observe_response::Response::Ack(a)) = o.response {
                    assert_eq!(a.status, AckStatus::AckAccepted as i32);
                    saw_ack = true;
                }
            }
            pb::flow_response::Response::Recall(r) => {
                assert_eq!(m.request_id, "q1");
                assert_eq!(r.memories.len(), 3);
                assert!(r.snapshot_sequence >= 100);
                saw_recall = true;
            }
            pb::flow_response::Response::Error(e) => {
                assert_eq!(m.request_id, "bad");
                assert_eq!(e.code, "INVALID_ARGUMENT", "{e:?}");
                saw_error = true;
            }
        }
    }
}

/// A stream still before its init when the server starts shutting down
/// gets UNAVAILABLE (which clients retry), never a status message: the
/// first message of a stream may only be its init_ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_before_init_gets_unavailable_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let ch = channel(&server).await;
    let mut s = Stream::open(&ch).await;
    // SAFETY: kill(2) with the server's pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGTERM) }, 0);
    let first = tokio::time::timeout(Duration::from_secs(30), s.rx.message())
        .await
        .expect("an answer within 30 s");
    match first {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(msg) => panic!("expected UNAVAILABLE before init, got {msg:?}"),
    }
    assert!(server.terminate(Duration::from_secs(30)).success());
}

/// Issue 15: an indexed memory's vector is kept once, in the index; asked
/// for, recall returns it over gRPC (unary and streamed) and REST all the
/// same, equal to the vector sent (L2-normalised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_returns_the_vectors_of_indexed_memories_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    server.wait_ready().await;
    let http = reqwest::Client::new();
    let vecs = random_vectors(40, 12, 77);
    for (i, v) in vecs.iter().enumerate() {
        let (s, b) = call(
            &http,
            reqwest::Method::POST,
            &server.url("/v1/spaces/ve/memories"),
            Some(episode(&format!("v{i}"), v)),
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    server
        .get_until(
            &http,
            "/v1/spaces/ve",
            Duration::from_secs(60),
            "every memory to be indexed",
            |s, b| s == 200 && b["indexed_count"] == 40,
        )
        .await;
    let unit = |v: &[f32]| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let same = |got: &[f32], want: &[f32]| {
        got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5)
    };
    let ch = channel(&server).await;
    let mut memory = MemoryClient::new(ch.clone());
    for i in [0usize, 17, 39] {
        let want = unit(&vecs[i]);
        let request = pb::RecallRequest {
            memory_space_id: "ve".into(),
            cue: Some(pb::Cue {
                embedding: vecs[i].clone(),
                max_results: 3,
                similarity_threshold: -1.0,
                ..Default::default()
            }),
            batch_size: 0,
            include_embeddings: true,
            after: None,
        };
        let unary = memory.recall(request.clone()).await.unwrap().into_inner();
        let top = &unary.memories[0];
        assert!(top.indexed, "memory {i} is indexed");
        let e = top.episode.as_ref().unwrap();
        assert_eq!(e.id, format!("v{i}"));
        assert!(
            same(&e.embedding, &want),
            "gRPC unary, v{i}: {:?}",
            e.embedding
        );
        assert!(unary
            .memories
            .iter()
            .all(|m| m.episode.as_ref().unwrap().embedding.len() == 12));

        let mut stream = StreamingClient::new(ch.clone())
            .recall_stream(request.clone())
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let e = first.memories[0].episode.as_ref().unwrap();
        assert!(same(&e.embedding, &want), "gRPC stream, v{i}");

        let (s, b) = call(
            &http,
            reqwest::Method::POST,
            &server.url("/v1/spaces/ve/recall?include_embeddings=true"),
            Some(serde_json::json!({"embedding": vecs[i], "max_results": 1})),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let got: Vec<f32> = b["memories"][0]["episode"]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert!(same(&got, &want), "REST, v{i}: {got:?}");

        // Not asked for: not sent.
        let plain = memory
            .recall(pb::RecallRequest {
                include_embeddings: false,
                ..request
            })
            .await
            .unwrap()
            .into_inner();
        assert!(plain.memories[0]
            .episode
            .as_ref()
            .unwrap()
            .embedding
            .is_empty());
    }
}
