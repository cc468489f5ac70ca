//! Recall latency per transport, against one running server and one space:
//! REST `POST /v1/spaces/{id}/recall`, gRPC unary `Memory/Recall`, gRPC
//! `Streaming/RecallStream` (all batches), and a `recall` on the WebSocket
//! stream `/v1/stream`. Each query runs on every transport in turn, the
//! order rotating per query, so all four see the same machine state; the
//! numbers are the client-observed time to the complete result.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use engram_proto::v1 as pb;
use futures::{SinkExt, StreamExt};
use rand::SeedableRng;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct RecallTransportsArgs {
    /// The server's HTTP address (REST and WebSocket).
    #[arg(long)]
    pub http: String,
    /// The server's gRPC address.
    #[arg(long)]
    pub grpc: String,
    /// Memory space to fill and query (created; must not exist).
    #[arg(long, default_value = "bench-recall")]
    pub space: String,
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    /// Memories stored before measuring.
    #[arg(long, default_value_t = 5000)]
    pub memories: usize,
    /// Measured queries per transport.
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    #[arg(long, default_value_t = 10)]
    pub k: u32,
}

const TRANSPORTS: [&str; 4] = ["rest", "grpc_unary", "grpc_recall_stream", "websocket"];

pub fn run(args: &RecallTransportsArgs) -> anyhow::Result<()> {
    crate::print_json(2, measure(args))
}

fn recall_request(args: &RecallTransportsArgs, cue: &[f32]) -> pb::RecallRequest {
    pb::RecallRequest {
        memory_space_id: args.space.clone(),
        cue: Some(pb::Cue {
            embedding: cue.to_vec(),
            max_results: args.k,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn measure(args: &RecallTransportsArgs) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let base = format!("http://{}", args.http);
    let r = http
        .put(format!("{base}/v1/spaces/{}", args.space))
        .json(&json!({"dimension": args.dim}))
        .send()
        .await?;
    if r.status() != 201 {
        bail!("creating the space: {} {}", r.status(), r.text().await?);
    }

    // Fill over one gRPC stream (pipelined), then wait for indexing.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", args.grpc))?
        .connect()
        .await
        .context("connecting over gRPC")?;
    let mut streaming = pb::streaming_client::StreamingClient::new(channel.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut acks = streaming
        .observe_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let init = pb::ObserveRequest {
        request: Some(pb::observe_request::Request::Init(pb::StreamInit {
            memory_space_id: args.space.clone(),
            ..Default::default()
        })),
    };
    tx.send(init).await?;
    let dim = args.dim;
    let n = args.memories;
    let sender = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for i in 0..n {
            let obs = pb::ObserveRequest {
                request: Some(pb::observe_request::Request::Observation(pb::Observation {
                    sequence_number: i as u64 + 1,
                    episode: Some(pb::Episode {
                        id: format!("m{i}"),
                        what: format!("memory {i}"),
                        embedding: crate::random_vector(&mut rng, dim),
                        ..Default::default()
                    }),
                    priority: 0,
                })),
            };
            if tx.send(obs).await.is_err() {
                return;
            }
        }
        // Keep the stream open until every ack is read.
        std::future::pending::<()>().await;
    });
    let mut accepted = 0;
    while accepted < n {
        let m = acks.message().await?.context("the observe stream ended")?;
        if let Some(pb::observe_response::Response::Ack(a)) = m.response {
            if a.status != pb::observation_ack::Status::AckAccepted as i32 {
                bail!("observation {} rejected: {}", a.sequence_number, a.message);
            }
            accepted += 1;
        }
    }
    sender.abort();
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let d: Value = http
            .get(format!("{base}/v1/spaces/{}", args.space))
            .send()
            .await?
            .json()
            .await?;
        if d["queue_depth"] == 0 && d["indexed_count"].as_u64() == Some(n as u64) {
            break;
        }
        if Instant::now() > until {
            bail!("indexing did not finish: {d}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut memory = pb::memory_client::MemoryClient::new(channel.clone());
    let mut stream_client = pb::streaming_client::StreamingClient::new(channel);
    // A server without `/v1/stream` (an older build) is measured on the rest.
    let mut ws = tokio_tungstenite::connect_async(format!("ws://{}/v1/stream", args.http))
        .await
        .ok()
        .map(|(ws, _)| ws);
    let mut ws_id = 0u64;

    let warmup = 50;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); TRANSPORTS.len()];
    let mut result_sizes = [0usize; 4];
    for q in 0..warmup + args.queries {
        let cue = crate::random_vector(&mut rng, args.dim);
        for j in 0..TRANSPORTS.len() {
            let t = (q + j) % TRANSPORTS.len();
            if t == 3 && ws.is_none() {
                continue;
            }
            let started = Instant::now();
            let got = match t {
                0 => {
                    let r: Value = http
                        .post(format!("{base}/v1/spaces/{}/recall", args.space))
                        .json(&json!({"embedding": cue, "max_results": args.k}))
                        .send()
                        .await?
                        .json()
                        .await?;
                    r["memories"].as_array().map_or(0, Vec::len)
                }
                1 => memory
                    .recall(recall_request(args, &cue))
                    .await?
                    .into_inner()
                    .memories
                    .len(),
                2 => {
                    let mut s = stream_client
                        .recall_stream(recall_request(args, &cue))
                        .await?
                        .into_inner();
                    let mut n = 0;
                    while let Some(b) = s.message().await? {
                        n += b.memories.len();
                    }
                    n
                }
                _ => {
                    let ws = ws.as_mut().expect("checked above");
                    ws_id += 1;
                    let req = json!({"type": "recall", "request_id": ws_id.to_string(),
                        "memory_space_id": args.space, "cue": {"embedding": cue, "max_results": args.k}});
                    ws.send(Message::Text(req.to_string())).await?;
                    let mut n = 0;
                    loop {
                        match ws.next().await.context("the WebSocket closed")?? {
                            Message::Text(t) => {
                                let v: Value = serde_json::from_str(&t)?;
                                if v["type"] != "recall_result" {
                                    bail!("unexpected WebSocket message: {v}");
                                }
                                n += v["memories"].as_array().map_or(0, Vec::len);
                                if v["more"] == false {
                                    break n;
                                }
                            }
                            _ => continue,
                        }
                    }
                }
            };
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if q >= warmup {
                samples[t].push(ms);
                result_sizes[t] += got;
            }
        }
    }

    let mut results = serde_json::Map::new();
    for (t, name) in TRANSPORTS.iter().enumerate() {
        let s = &mut samples[t];
        if s.is_empty() {
            results.insert((*name).to_owned(), json!("not served by this server"));
            continue;
        }
        s.sort_by(f64::total_cmp);
        let pct = |p: f64| s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1];
        results.insert(
            (*name).to_owned(),
            json!({
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
                "mean_ms": s.iter().sum::<f64>() / s.len() as f64,
                "max_ms": s[s.len() - 1],
                "mean_results": result_sizes[t] as f64 / s.len() as f64,
            }),
        );
    }
    let p50 = |name: &str| results[name]["p50_ms"].as_f64();
    let ratio = |name: &str| match (p50(name), p50("rest")) {
        (Some(a), Some(b)) => json!(a / b),
        _ => Value::Null,
    };
    Ok(json!({
        "benchmark": "recall latency per transport (client-observed, complete result)",
        "parameters": {
            "dim": args.dim, "memories": args.memories, "queries": args.queries,
            "warmup_queries": warmup, "k": args.k,
        },
        "results": results,
        "ratios_p50_vs_rest": {
            "grpc_unary": ratio("grpc_unary"),
            "grpc_recall_stream": ratio("grpc_recall_stream"),
            "websocket": ratio("websocket"),
        },
    }))
}
