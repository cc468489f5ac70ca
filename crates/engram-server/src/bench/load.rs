//! The load: observe streams (one per client, open loop or paced), the
//! recalls made while they flow, and the visibility probes.
//!
//! Ack latency is measured per observation. The AckStream answers in send
//! order, so each client's sender hands (row, start time) to its reader
//! through a channel in the same order, and the reader pairs the n-th
//! answer with the n-th record. Open loop, the clock starts when `send`
//! returns (the observation is in the session's buffer; waiting for a
//! free in-flight slot is the client holding back, not the server being
//! slow). At a target rate it starts at the scheduled send time, so a
//! server that falls behind shows as latency instead of silently lowering
//! the rate (coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use engram_client::{cue, Answer, Episode, StreamingClient};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::data::{DataSet, K};

/// Recalls of the concurrent load allowed in flight at once; past this
/// the server is not keeping up and further ticks are skipped (counted in
/// the recall count, not hidden as latency of a client-side queue).
const MAX_RECALLS_IN_FLIGHT: usize = 64;
/// How long a visibility probe retries before it counts as timed out.
const VISIBILITY_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between the recalls of one visibility probe.
const PROBE_RETRY: Duration = Duration::from_millis(1);

/// Live counts for the progress line.
#[derive(Default)]
pub struct Counters {
    pub acked: AtomicU64,
}

/// An acked observation chosen for a visibility probe.
#[derive(Clone, Debug)]
pub struct Sample {
    memory_id: String,
    row: usize,
    acked_at: Instant,
}

/// How one client streams.
#[derive(Clone)]
pub struct StreamPlan {
    pub space: String,
    pub data: Arc<DataSet>,
    /// This client's rows: `first`, `first + step`, ...
    pub first: usize,
    pub step: usize,
    /// Observations/s for this client; `None` = open loop.
    pub rate: Option<f64>,
    pub max_in_flight: usize,
    /// Offer every n-th accepted observation for a visibility probe.
    pub visibility_every: usize,
}

/// What one client's stream saw.
#[derive(Default)]
pub struct StreamOutcome {
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Seconds, one per observation answered.
    pub ack_latencies: Vec<f64>,
    pub last_ack: Option<Instant>,
}

impl StreamOutcome {
    pub fn merge(&mut self, other: StreamOutcome) {
        self.accepted += other.accepted;
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
        self.ack_latencies.extend(other.ack_latencies);
        self.last_ack = self.last_ack.max(other.last_ack);
    }
}

/// Streams this client's rows on one observe session, starting at
/// `start`, and reads every answer.
///
/// # Errors
///
/// The session could not open or failed (the client already retried
/// overloads and reconnects by itself).
pub async fn stream(
    client: StreamingClient,
    plan: StreamPlan,
    start: Instant,
    counters: Arc<Counters>,
    samples: Arc<watch::Sender<Option<Sample>>>,
) -> Result<StreamOutcome> {
    let (sender, mut acks) = client
        .observe_stream(&plan.space)
        .await
        .with_context(|| format!("opening an observe stream on space {:?}", plan.space))?;
    // One record per send, read in the same order as the answers; the
    // sender can be at most max_in_flight ahead of the reader.
    let (records, mut pending) = mpsc::channel::<(usize, Instant)>(plan.max_in_flight.max(1));
    let data = plan.data.clone();
    let rows: Vec<usize> = (plan.first..data.base.len()).step_by(plan.step).collect();
    let expected = rows.len();
    let rate = plan.rate;
    let send_task = tokio::spawn(async move {
        for (i, row) in rows.into_iter().enumerate() {
            let scheduled = rate.map(|r| start + Duration::from_secs_f64(i as f64 / r));
            if let Some(at) = scheduled {
                tokio::time::sleep_until(at.into()).await;
            }
            let episode = Episode {
                id: format!("b{row}"),
                what: format!("bench observation {row}"),
                embedding: data.base.row(row).to_vec(),
                ..Episode::default()
            };
            sender.send(episode).await?;
            if records
                .send((row, scheduled.unwrap_or_else(Instant::now)))
                .await
                .is_err()
            {
                break;
            }
        }
        // The reader ends once the last record is read; the close then
        // only waits for answers already on their way.
        drop(records);
        sender.close(true).await.map(|_| ())
    });

    let mut outcome = StreamOutcome {
        ack_latencies: Vec::with_capacity(expected),
        ..StreamOutcome::default()
    };
    while let Some((row, started)) = pending.recv().await {
        let answer = match acks.recv().await {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => return Err(anyhow!(e).context("the observe session failed")),
            None => {
                return Err(anyhow!(
                    "the observe session ended before answering every send"
                ))
            }
        };
        let now = Instant::now();
        outcome
            .ack_latencies
            .push(now.duration_since(started).as_secs_f64());
        outcome.last_ack = Some(now);
        counters.acked.fetch_add(1, Ordering::Relaxed);
        match answer {
            Answer::Accepted(ack) => {
                outcome.accepted += 1;
                if plan.visibility_every > 0
                    && outcome
                        .accepted
                        .is_multiple_of(plan.visibility_every as u64)
                {
                    samples.send_replace(Some(Sample {
                        memory_id: ack.memory_id,
                        row,
                        acked_at: now,
                    }));
                }
            }
            Answer::Rejected(r) => {
                *outcome
                    .rejected
                    .entry(format!("{:?}", r.reason).to_lowercase())
                    .or_default() += 1;
            }
        }
    }
    send_task
        .await
        .context("the sending task panicked")?
        .context("sending observations")?;
    Ok(outcome)
}

/// What the recalls made during the stream saw.
#[derive(Default)]
pub struct RecallOutcome {
    /// Seconds per successful recall.
    pub latencies: Vec<f64>,
    pub errors: u64,
}

/// Recalls (k=10) at `rate` per second until `stop` fires, each on its
/// own task so a slow one does not lower the rate.
pub async fn recall_load(
    client: StreamingClient,
    space: String,
    data: Arc<DataSet>,
    rate: f64,
    mut stop: oneshot::Receiver<()>,
) -> RecallOutcome {
    let mut outcome = RecallOutcome::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut running = JoinSet::new();
    let mut made = 0usize;
    let mut launch = |running: &mut JoinSet<_>| {
        let vector = cue_vector(&data, made);
        made += 1;
        let (client, space) = (client.clone(), space.clone());
        running.spawn(async move {
            let began = Instant::now();
            client
                .recall(&space, cue(vector, K as u32))
                .await
                .map(|_| began.elapsed().as_secs_f64())
        });
    };
    // The interval's first tick is now: one recall however short the
    // stream, so the report always has a recall latency under load.
    tick.tick().await;
    launch(&mut running);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                if running.len() < MAX_RECALLS_IN_FLIGHT {
                    launch(&mut running);
                }
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                outcome.record(done);
            }
        }
    }
    while let Some(done) = running.join_next().await {
        outcome.record(done);
    }
    outcome
}

impl RecallOutcome {
    fn record(&mut self, done: Result<engram_client::Result<f64>, tokio::task::JoinError>) {
        match done {
            Ok(Ok(seconds)) => self.latencies.push(seconds),
            _ => self.errors += 1,
        }
    }
}

/// A cue vector for the n-th concurrent recall: the queries in turn, or
/// base rows spread over the set when there are no queries.
fn cue_vector(data: &DataSet, n: usize) -> Vec<f32> {
    if data.queries.is_empty() {
        // A large odd stride visits rows all over the set.
        data.base
            .row(n.wrapping_mul(7_919) % data.base.len())
            .to_vec()
    } else {
        data.queries.row(n % data.queries.len()).to_vec()
    }
}

/// What the visibility probes saw.
#[derive(Default)]
pub struct VisibilityOutcome {
    /// Seconds from ack to the end of the first recall that returned it.
    pub latencies: Vec<f64>,
    pub missed_first_recall: u64,
    pub timeouts: u64,
}

/// Probes fresh samples at most `rate` times per second until every
/// stream has ended (the sample sender is dropped): recalls the sample's
/// own vector (k=1) until its id comes back.
///
/// Only a sample acked after the previous probe finished is taken, so the
/// time measured is the server's, not this task's backlog.
pub async fn probe_visibility(
    client: StreamingClient,
    space: String,
    data: Arc<DataSet>,
    rate: f64,
    mut samples: watch::Receiver<Option<Sample>>,
) -> VisibilityOutcome {
    let mut outcome = VisibilityOutcome::default();
    let gap = Duration::from_secs_f64(1.0 / rate);
    while samples.changed().await.is_ok() {
        let Some(sample) = samples.borrow_and_update().clone() else {
            continue;
        };
        let began = Instant::now();
        let vector = data.base.row(sample.row).to_vec();
        let mut first = true;
        loop {
            let found = client
                .recall(&space, cue(vector.clone(), 1))
                .await
                .map(|r| {
                    r.memories
                        .iter()
                        .any(|m| m.episode.as_ref().is_some_and(|e| e.id == sample.memory_id))
                })
                .unwrap_or(false);
            if found {
                outcome
                    .latencies
                    .push(sample.acked_at.elapsed().as_secs_f64());
                break;
            }
            if first {
                outcome.missed_first_recall += 1;
                first = false;
            }
            if sample.acked_at.elapsed() > VISIBILITY_DEADLINE {
                outcome.timeouts += 1;
                break;
            }
            tokio::time::sleep(PROBE_RETRY).await;
        }
        tokio::time::sleep_until((began + gap).into()).await;
        // Samples offered during the pause are stale by now.
        samples.borrow_and_update();
    }
    outcome
}
