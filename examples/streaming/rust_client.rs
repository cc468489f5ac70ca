//! Streams 1,000 observations into the space "example" and recalls while
//! they flow, with the Rust client (`engram-client`).
//!
//! Start a server, then run the example:
//!
//! ```sh
//! engram serve                                    # gRPC on 127.0.0.1:50051
//! cargo run -p engram-client --example rust_client [http://HOST:PORT]
//! ```
//!
//! The address comes from the first argument, else `ENGRAM_GRPC_ADDR`, else
//! `http://127.0.0.1:50051`. Exits 0 when every observation was accepted.

use std::error::Error;
use std::time::Instant;

use engram_client::{cue, episode, Answer, StreamingClient};
use rand::Rng;

const SPACE: &str = "example";
const DIMENSION: usize = 384;
const OBSERVATIONS: usize = 1_000;
const RECALL_EVERY: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("ENGRAM_GRPC_ADDR").ok())
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let client = StreamingClient::connect(addr.clone()).await?;
    println!("connected to {addr}");

    // Idempotent: an existing space of this dimension is fine.
    let space = client.create_space(SPACE, DIMENSION as u32).await?;
    let info = space.space.unwrap_or_default();
    println!(
        "space {SPACE:?}: {} (dimension {}, {} memories)",
        if space.created { "created" } else { "exists" },
        info.dimension,
        info.count
    );

    let (sender, mut acks) = client.observe_stream(SPACE).await?;
    println!("observe session {}", sender.session_id());

    // Read answers as they come, while the main task sends.
    let reader = tokio::spawn(async move {
        let (mut accepted, mut rejected, mut last_server_sequence) = (0usize, 0usize, 0u64);
        while let Some(answer) = acks.recv().await {
            match answer? {
                Answer::Accepted(ack) => {
                    accepted += 1;
                    last_server_sequence = ack.server_sequence;
                    if accepted % 250 == 0 {
                        println!(
                            "  ack #{:>4}: memory {} at server sequence {}",
                            ack.sequence_number, ack.memory_id, ack.server_sequence
                        );
                    }
                }
                Answer::Rejected(r) => {
                    rejected += 1;
                    eprintln!(
                        "  rejected #{}: {:?}: {}",
                        r.sequence_number, r.reason, r.message
                    );
                }
            }
        }
        Ok::<_, engram_client::ClientError>((accepted, rejected, last_server_sequence))
    });

    let started = Instant::now();
    let mut rng = rand::thread_rng();
    // Recall by the first observation's embedding: once its ack is out, it
    // is the top hit (similarity 1) in every recall that follows.
    let probe = random_unit_vector(&mut rng);
    for i in 0..OBSERVATIONS {
        let embedding = if i == 0 {
            probe.clone()
        } else {
            random_unit_vector(&mut rng)
        };
        sender
            .send(episode(format!("observation {i}"), embedding))
            .await?;
        if (i + 1) % RECALL_EVERY == 0 {
            let recalled = client
                .recall_stream(SPACE, cue(probe.clone(), 5))
                .await?
                .collect_all()
                .await?;
            let top = recalled.memories.first().map_or_else(
                || "-".to_owned(),
                |m| {
                    let what = m.episode.as_ref().map_or("", |e| e.what.as_str());
                    format!(
                        "{what:?} (similarity {:.3}, indexed {})",
                        m.similarity, m.indexed
                    )
                },
            );
            println!(
                "sent {:>4} | in flight {:>4} | recall: {} memories in {} batch(es), snapshot_sequence {:>4}, top {top}",
                i + 1,
                sender.in_flight(),
                recalled.memories.len(),
                recalled.batches,
                recalled.snapshot_sequence,
            );
        }
    }

    let closed = sender.close(true).await?;
    let (accepted, rejected, last) = reader.await??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "closed: final_sequence {}, server counted {} accepted / {} rejected",
        closed.final_sequence, closed.accepted, closed.rejected
    );
    println!(
        "client saw {accepted} accepted, {rejected} rejected in {secs:.2}s ({:.0} obs/s); last server sequence {last}",
        OBSERVATIONS as f64 / secs
    );
    if accepted != OBSERVATIONS {
        return Err(
            format!("expected {OBSERVATIONS} accepted observations, got {accepted}").into(),
        );
    }
    Ok(())
}

fn random_unit_vector(rng: &mut impl Rng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIMENSION).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}
