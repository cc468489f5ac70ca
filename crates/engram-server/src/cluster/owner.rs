//! A partition's owner: takeover (newest snapshot, then replay), applying
//! the stream as it grows, and snapshots to the object store.
//!
//! The owner runs a local engine in a scratch directory with WAL sync off:
//! what is durable is the partition stream (every acked write) and the
//! snapshots; the engine is rebuilt from them by whoever owns the
//! partition next. Applying is idempotent: a record whose episode id the
//! space already holds is answered as a duplicate and changes nothing,
//! so a write published twice (a retry outside JetStream's duplicate
//! window) or replayed over a snapshot that holds it is stored once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use engram_core::engine::PendingRemember;
use engram_core::wal::SyncPolicy;
use engram_core::{Engine, Error, Priority};
use engram_proto::v1 as pb;
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{mpsc, watch};

use super::{partition_key, stream_name, subject, Cluster, SnapshotPointer};

/// How long an owner's consumer may deliver nothing before the stream is
/// asked whether it holds more (and the consumer replaced if so).
const CONSUMER_STALL: Duration = Duration::from_secs(2);

/// Why an owner stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Hand the partition on: apply what was read, write a last snapshot.
    Release,
    /// Someone else may own it already: stop at once.
    Lost,
}

/// This node's ownership of one partition, from lease to teardown.
pub(crate) struct Owned {
    pub epoch: u64,
    /// The lease key's revision this node last wrote (acquired or
    /// renewed at): renewals expect it, so one that finds another means
    /// someone else wrote the lease.
    pub revision: std::sync::atomic::AtomicU64,
    pub since: Instant,
    ttl: Duration,
    last_renewed: Mutex<Instant>,
    engine: parking_lot::RwLock<Option<Engine>>,
    applied: watch::Sender<u64>,
    serving: AtomicBool,
    stop: watch::Sender<Option<StopReason>>,
    finished: watch::Sender<bool>,
    /// Forget and delete records applied lately: stream sequence →
    /// whether the memory (space) existed (what the call that published it
    /// answers).
    outcomes: Mutex<std::collections::BTreeMap<u64, bool>>,
}

/// Forget and delete outcomes an owner keeps for the calls waiting on them (the
/// oldest go first; a call reads its own within milliseconds).
const OUTCOMES_KEPT: usize = 1024;

impl Owned {
    pub fn new(epoch: u64, ttl: Duration) -> Arc<Owned> {
        Arc::new(Owned {
            epoch,
            revision: std::sync::atomic::AtomicU64::new(epoch),
            since: Instant::now(),
            ttl,
            last_renewed: Mutex::new(Instant::now()),
            engine: parking_lot::RwLock::new(None),
            applied: watch::channel(0).0,
            serving: AtomicBool::new(false),
            stop: watch::channel(None).0,
            finished: watch::channel(false).0,
            outcomes: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    fn record_outcome(&self, sequence: u64, existed: bool) {
        let mut f = self.outcomes.lock();
        f.insert(sequence, existed);
        while f.len() > OUTCOMES_KEPT {
            f.pop_first();
        }
    }

    /// Whether the memory (space) the forget (delete) record at `sequence`
    /// named existed when it was applied (None: not applied here, or long
    /// ago).
    pub fn outcome(&self, sequence: u64) -> Option<bool> {
        self.outcomes.lock().remove(&sequence)
    }

    pub fn renewed(&self) {
        *self.last_renewed.lock() = Instant::now();
    }

    pub fn since_renewed(&self) -> Duration {
        self.last_renewed.lock().elapsed()
    }

    /// False once the lease went 3/4 of a TTL without renewal: the lease
    /// may expire soon, and then another node may own the partition.
    pub fn lease_valid(&self) -> bool {
        self.since_renewed() < self.ttl * 3 / 4
    }

    /// Caught up with the stream as it was at takeover, lease valid, not
    /// stopping.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) && self.lease_valid()
    }

    /// The last stream sequence applied (visible to recall).
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    pub fn engine(&self) -> Option<Engine> {
        self.engine.read().clone()
    }

    pub fn stop(&self, why: StopReason) {
        self.serving.store(false, Ordering::Release);
        self.stop.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(why);
                true
            } else {
                false
            }
        });
    }

    pub async fn finished(&self) {
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }

    /// Waits (up to `wait`) until serving and `sequence` is applied.
    pub async fn wait_ready(&self, sequence: u64, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut applied = self.applied.subscribe();
        loop {
            if self.is_serving() && *applied.borrow_and_update() >= sequence {
                return true;
            }
            // Serving flips without a new applied value: poll it briefly.
            let step = tokio::time::Instant::now() + Duration::from_millis(20);
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            let _ = tokio::time::timeout_at(step.min(deadline), applied.changed()).await;
        }
    }
}

/// Owns partition `p` until told to stop; then tears the engine down.
pub(crate) async fn run(cluster: Cluster, p: u32, o: Arc<Owned>) {
    let dir = cluster
        .inner
        .dir
        .join(format!("p{p}-e{epoch}", epoch = o.epoch));
    if let Err(e) = own(&cluster, p, &o, &dir).await {
        tracing::error!(partition = p, epoch = o.epoch, error = %e, "partition owner failed; giving the partition up");
        // Let another node (or this one, later) take it over from the
        // stream and the snapshots.
        let part = &cluster.inner.parts[p as usize];
        let mine = part
            .owned
            .read()
            .as_ref()
            .is_some_and(|x| Arc::ptr_eq(x, &o));
        if mine {
            *part.owned.write() = None;
            cluster.inner.metrics.ownership_changes.inc();
            super::lease::delete_if_ours(&cluster, p, &o).await;
        }
    }
    o.serving.store(false, Ordering::Release);
    let engine = o.engine.write().take();
    if let Some(engine) = engine {
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    o.finished.send_replace(true);
}

/// One applied (or skipped) record, in stream order.
struct Applying {
    sequence: u64,
    pending: Option<PendingRemember>,
}

/// What became of a record handed to the engine.
enum Applied {
    /// Submitted: its answer comes in order.
    Pending(PendingRemember),
    /// Refused for good, the same on every replay (undecodable, or
    /// invalid by now, e.g. expired before it was applied): counted and
    /// passed over.
    Skipped,
    /// The owner was told to stop before the record could be submitted:
    /// it is not applied, and nothing after it is.
    Stopped,
}

async fn own(cluster: &Cluster, p: u32, o: &Arc<Owned>, dir: &PathBuf) -> anyhow::Result<()> {
    let inner = &cluster.inner;
    let part = &inner.parts[p as usize];
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("snapshots"))?;

    // 1. The newest snapshot, if any.
    let pointer = read_pointer(cluster, p).await?.map(|(ptr, _)| ptr);
    let mut from = 0;
    if let Some(ptr) = &pointer {
        let mut object = inner.objects.get(&ptr.object).await?;
        let path = dir.join("snapshots").join(&ptr.file);
        let mut file = tokio::fs::File::create(&path).await?;
        tokio::io::copy(&mut object, &mut file).await?;
        from = ptr.sequence;
        *part.snapshot.lock() = (ptr.sequence, ptr.epoch);
    }
    let mut config = inner.engine.clone();
    config.data_dir = dir.clone();
    // The stream is the durable log; this engine's own WAL is scratch.
    config.wal.sync = SyncPolicy::None;
    config.snapshot_interval_secs = 0;
    config.metrics = false;
    config.auto_create_spaces = true;
    // The space limit is kept at the registry (cluster-wide); here every
    // registered space must be taken, or an acked write would be refused.
    config.max_spaces = usize::MAX;
    let engine = tokio::task::spawn_blocking(move || Engine::open(config)).await??;
    let loaded = started.elapsed();
    *o.engine.write() = Some(engine.clone());
    o.applied.send_replace(from);

    // 2. Replay up to the stream's end as of now, then serve.
    let mut stream = inner.js.get_stream(stream_name(p)).await?;
    let target = stream.info().await?.state.last_sequence;
    part.stream_last.fetch_max(target, Ordering::Relaxed);
    let replay_started = Instant::now();
    let (tx, rx) = mpsc::channel::<Applying>(1024);
    let (failed_tx, mut failed) = watch::channel(None::<String>);
    let acker = tokio::spawn(ack_in_order(
        cluster.clone(),
        p,
        o.clone(),
        rx,
        failed_tx,
        Replay {
            target,
            takeover_started: started,
            on_served: {
                let snapshot_bytes = pointer.as_ref().map_or(0, |x| x.bytes);
                move |replayed: u64| {
                    tracing::info!(
                        partition = p,
                        snapshot_epoch = pointer.as_ref().map_or(0, |x| x.epoch),
                        snapshot_sequence = from,
                        snapshot_bytes,
                        snapshot_load_ms = loaded.as_millis() as u64,
                        replayed,
                        replay_ms = replay_started.elapsed().as_millis() as u64,
                        takeover_ms = started.elapsed().as_millis() as u64,
                        "partition served"
                    );
                }
            },
        },
    ));
    if target <= from {
        o.serving.store(true, Ordering::Release);
        inner.metrics.takeover(started.elapsed());
        tracing::info!(
            partition = p,
            snapshot_sequence = from,
            snapshot_load_ms = loaded.as_millis() as u64,
            replayed = 0,
            takeover_ms = started.elapsed().as_millis() as u64,
            "partition served"
        );
    }

    let mut submitted = from;
    let mut last_snapshot = from;
    let mut stop = o.stop.subscribe();
    let mut snapshot_tick =
        tokio::time::interval(Duration::from_secs(inner.cfg.snapshot_interval_secs));
    snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    snapshot_tick.tick().await;
    let mut messages = consume(&stream, p, submitted).await?;
    // The consumer watchdog: a consumer whose stream leader died may stall
    // without an error; when nothing arrived for CONSUMER_STALL while the
    // stream holds more, a new consumer starts after the last record read.
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_message = Instant::now();
    let mut stop_apply = o.stop.subscribe();
    let why = loop {
        if let Some(why) = *stop.borrow_and_update() {
            break why;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => continue,
            _ = failed.changed() => {
                let why = failed
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| "the applying task ended".to_owned());
                acker.abort();
                anyhow::bail!(why);
            }
            _ = watchdog.tick() => {
                if last_message.elapsed() < CONSUMER_STALL {
                    continue;
                }
                let last = match tokio::time::timeout(Duration::from_secs(2), stream.info()).await {
                    Ok(Ok(info)) => info.state.last_sequence,
                    _ => continue,
                };
                part.stream_last.fetch_max(last, Ordering::Relaxed);
                if last > submitted {
                    tracing::warn!(partition = p, applied_to = submitted, stream_last = last, "partition consumer stalled; resubscribing");
                    inner.metrics.consumer_restarts.inc();
                    if let Ok(m) = consume(&stream, p, submitted).await {
                        messages = m;
                    }
                }
                last_message = Instant::now();
            }
            _ = snapshot_tick.tick() => {
                if submitted > last_snapshot {
                    if let Err(e) = drain(o, submitted, &mut failed).await {
                        acker.abort();
                        return Err(e);
                    }
                    match snapshot(cluster, p, o, &engine).await {
                        Ok(Some(seq)) => last_snapshot = seq,
                        Ok(None) => {}
                        Err(e) => tracing::warn!(partition = p, error = %e, "snapshot to the object store failed; will retry"),
                    }
                }
            }
            next = messages.next() => {
                let message = match next {
                    Some(Ok(m)) => {
                        last_message = Instant::now();
                        m
                    }
                    other => {
                        // The consumer failed (a NATS server went away
                        // mid-fetch): start a new one where we are.
                        if let Some(Err(e)) = other {
                            tracing::warn!(partition = p, error = %e, "partition consumer failed; resubscribing");
                        }
                        inner.metrics.consumer_restarts.inc();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        messages = match consume(&stream, p, submitted).await {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::warn!(partition = p, error = %e, "resubscribing failed; retrying");
                                continue;
                            }
                        };
                        continue;
                    }
                };
                let sequence = match message.info() {
                    Ok(info) => info.stream_sequence,
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "a message without stream info; skipped");
                        continue;
                    }
                };
                if sequence <= submitted {
                    continue;
                }
                part.stream_last.fetch_max(sequence, Ordering::Relaxed);
                let record = match pb::PartitionRecord::decode(&message.payload[..]) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(partition = p, sequence, error = %e, "undecodable partition record; skipped");
                        inner.metrics.apply_skipped.inc();
                        pb::PartitionRecord::default()
                    }
                };
                if !record.forget_memory_id.is_empty() || record.delete_space {
                    // After every earlier record is committed: a write
                    // still in the engine's queue would come back after
                    // the forget (or the deletion).
                    if let Err(e) = drain(o, submitted, &mut failed).await {
                        acker.abort();
                        return Err(e);
                    }
                    let applied = if record.delete_space {
                        apply_delete(&engine, &record).await
                    } else {
                        apply_forget(cluster, &engine, &record).await
                    };
                    let existed = match applied {
                        Ok(existed) => existed,
                        Err(e) => {
                            acker.abort();
                            return Err(e);
                        }
                    };
                    o.record_outcome(sequence, existed);
                    submitted = sequence;
                    if tx.send(Applying { sequence, pending: None }).await.is_err() {
                        anyhow::bail!("the applying task ended");
                    }
                    continue;
                }
                let pending = match apply(cluster, p, &engine, record, &mut stop_apply).await {
                    Ok(Applied::Pending(pending)) => Some(pending),
                    Ok(Applied::Skipped) => None,
                    // Not applied: the loop ends at the stop, and the
                    // applied sequence (and a last snapshot) stays below
                    // this record.
                    Ok(Applied::Stopped) => continue,
                    Err(e) => {
                        acker.abort();
                        return Err(e);
                    }
                };
                submitted = sequence;
                if tx.send(Applying { sequence, pending }).await.is_err() {
                    anyhow::bail!("the applying task ended");
                }
            }
        }
    };
    drop(tx);
    if why == StopReason::Release {
        if let Err(e) = drain(o, submitted, &mut failed).await {
            acker.abort();
            return Err(e);
        }
        if submitted > last_snapshot {
            if let Err(e) = snapshot(cluster, p, o, &engine).await {
                tracing::warn!(partition = p, error = %e, "last snapshot before handing on failed");
            }
        }
    }
    acker.abort();
    Ok(())
}

/// An ordered consumer of partition `p` from the record after `after`.
async fn consume(
    stream: &async_nats::jetstream::stream::Stream,
    p: u32,
    after: u64,
) -> anyhow::Result<pull::Ordered> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject(p),
            deliver_policy: if after == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                }
            },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// Waits until every submitted record is applied.
///
/// # Errors
/// The applying task failed (a partition engine that refused to commit)
/// or ended before applying them: waiting on would never end.
async fn drain(
    o: &Owned,
    submitted: u64,
    failed: &mut watch::Receiver<Option<String>>,
) -> anyhow::Result<()> {
    let mut applied = o.applied.subscribe();
    loop {
        if *applied.borrow_and_update() >= submitted {
            return Ok(());
        }
        if let Some(why) = failed.borrow().clone() {
            anyhow::bail!(why);
        }
        tokio::select! {
            _ = applied.changed() => {}
            ended = failed.changed() => {
                if ended.is_err() && o.applied() < submitted {
                    anyhow::bail!("the applying task ended before applying every record read");
                }
            }
        }
    }
}

/// Hands one record to the engine. Transient failures (indexing behind,
/// the space registry unreadable) are waited out, never skipped: the
/// write was acked.
///
/// # Errors
/// A refusal that is neither transient nor the record's own fault (the
/// engine's storage failed): the owner gives the partition up.
async fn apply(
    cluster: &Cluster,
    p: u32,
    engine: &Engine,
    record: pb::PartitionRecord,
    stop: &mut watch::Receiver<Option<StopReason>>,
) -> anyhow::Result<Applied> {
    let metrics = &cluster.inner.metrics;
    if record.episode.is_none() {
        // Undecodable (counted where it was read), or of a kind this
        // version does not know.
        return Ok(Applied::Skipped);
    }
    let space = record.memory_space_id;
    let episode = record.episode.unwrap_or_default();
    let mut wait = Duration::from_millis(5);
    loop {
        if stop.borrow().is_some() {
            return Ok(Applied::Stopped);
        }
        let outcome: Result<(), String> = match generation_of(
            cluster,
            &space,
            record.space_generation,
        )
        .await
        {
            Err(e) => Err(format!("reading the space registry: {}", e.message())),
            Ok(Generation::Wait) => {
                Err("the space registry has not shown this generation yet".to_owned())
            }
            Ok(Generation::Skip) => {
                tracing::debug!(
                    partition = p,
                    space,
                    generation = record.space_generation,
                    "record of a deleted space generation; skipped"
                );
                metrics.apply_skipped.inc();
                return Ok(Applied::Skipped);
            }
            Ok(Generation::Apply) => match cluster.ensure_local_space(engine, &space).await {
                Err(e) => Err(format!("creating the space locally: {}", e.message())),
                Ok(()) => match crate::grpc::convert::episode_input(episode.clone()) {
                    Err(e) => {
                        tracing::warn!(partition = p, space, error = %e.message(), "record refused at apply; skipped");
                        metrics.apply_skipped.inc();
                        return Ok(Applied::Skipped);
                    }
                    Ok(input) => match engine.submit_remember(&space, input, Priority::High) {
                        Ok(pending) => return Ok(Applied::Pending(pending)),
                        Err(e) if skippable(&e) => {
                            tracing::warn!(partition = p, space, error = %e, "record refused at apply; skipped");
                            metrics.apply_skipped.inc();
                            return Ok(Applied::Skipped);
                        }
                        Err(Error::Overloaded { retry_after, .. }) => {
                            wait = retry_after;
                            Err("indexing is behind".to_owned())
                        }
                        Err(e) => anyhow::bail!("the partition engine refused a record: {e}"),
                    },
                },
            },
        };
        if let Err(why) = outcome {
            tracing::debug!(partition = p, space, why, "applying waits");
        }
        let pause = wait.clamp(Duration::from_millis(5), Duration::from_millis(500));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
        wait = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Applies a forget record: whether the memory existed. A space the
/// registry does not have holds nothing to forget.
///
/// # Errors
/// The engine failed to commit the forget (its storage): the owner gives
/// the partition up, as for a write.
async fn apply_forget(
    cluster: &Cluster,
    engine: &Engine,
    record: &pb::PartitionRecord,
) -> anyhow::Result<bool> {
    let space = &record.memory_space_id;
    let mut wait = Duration::from_millis(20);
    // The registry unreadable for a moment is waited out (a record is
    // never skipped for a transient reason).
    loop {
        match cluster.ensure_local_space(engine, space).await {
            Ok(()) => break,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(false),
            Err(s) => {
                tracing::debug!(space, error = %s.message(), "a forget waits for the space registry");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(500));
            }
        }
    }
    match engine.forget(space, &record.forget_memory_id).await {
        Ok(()) => Ok(true),
        Err(Error::MemoryNotFound { .. } | Error::SpaceNotFound(_)) => Ok(false),
        Err(e) if skippable(&e) => {
            tracing::warn!(space, error = %e, "forget record refused at apply; skipped");
            cluster.inner.metrics.apply_skipped.inc();
            Ok(false)
        }
        Err(e) => anyhow::bail!("the partition engine refused a forget: {e}"),
    }
}

/// Applies a delete record: drops the space from the partition engine;
/// whether it was there. (Records of the space's next generation come
/// after it in the log: the registry lets a deleted space be created again
/// only once this record is applied.)
///
/// # Errors
/// The engine failed to delete it (its storage): the owner gives the
/// partition up, as for a write.
async fn apply_delete(engine: &Engine, record: &pb::PartitionRecord) -> anyhow::Result<bool> {
    match engine.delete_space(&record.memory_space_id).await {
        Ok(()) => Ok(true),
        Err(Error::SpaceNotFound(_)) => Ok(false),
        Err(e) => anyhow::bail!("the partition engine refused a space deletion: {e}"),
    }
}

/// What to do with a record of `space` written for `generation`.
#[derive(Debug, PartialEq, Eq)]
enum Generation {
    Apply,
    /// The space is deleted (a tombstone at least as new as the record):
    /// the record raced the deletion and goes with the space.
    Skip,
    /// This node's registry view is older than the record: wait for it.
    Wait,
}

/// Decides by the registry's record of the space (entry, revision). A
/// live space takes the record whatever generation it was written for:
/// the log orders it (a record before the space's delete record is
/// deleted with it; one after it was written once the space existed again,
/// as on a single node).
fn generation_decision(
    record: Option<&(super::SpaceEntry, u64)>,
    generation: u64,
) -> Option<Generation> {
    let (entry, revision) = record?;
    if !entry.deleted {
        Some(Generation::Apply)
    } else if generation > *revision {
        // Written for a generation created after this tombstone: the view
        // is stale.
        None
    } else {
        Some(Generation::Skip)
    }
}

/// How long a registry read past the cache decides skips of one space: a
/// replay through many records of a deleted space reads the registry about
/// once a second, not once a record.
const FRESH_FOR: Duration = Duration::from_secs(1);

async fn generation_of(
    cluster: &Cluster,
    space: &str,
    generation: u64,
) -> Result<Generation, tonic::Status> {
    // The cache decides to apply; a skip is decided on the registry read
    // past the cache (the cache may not have seen a re-creation yet),
    // within the last FRESH_FOR.
    let cached = generation_decision(cluster.space_record(space).await?.as_ref(), generation);
    let fresh_lately = cluster
        .inner
        .registry_read_at
        .lock()
        .get(space)
        .is_some_and(|at| at.elapsed() < FRESH_FOR);
    match cached {
        Some(Generation::Apply) => return Ok(Generation::Apply),
        Some(Generation::Skip) if fresh_lately => return Ok(Generation::Skip),
        _ => {}
    }
    let fresh = cluster.space_record_fresh(space).await?;
    cluster
        .inner
        .registry_read_at
        .lock()
        .insert(space.to_owned(), Instant::now());
    Ok(generation_decision(fresh.as_ref(), generation).unwrap_or(Generation::Wait))
}

/// A refusal that is the record's own and the same on every replay.
fn skippable(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidArgument { .. } | Error::DimensionMismatch { .. }
    )
}

/// The takeover's replay: serve once `target` is applied.
struct Replay<F> {
    target: u64,
    takeover_started: Instant,
    /// Called once, with the number of records replayed.
    on_served: F,
}

/// Waits for each applied record's answer in stream order and publishes
/// the applied sequence; flips to serving once the replay target is
/// reached.
async fn ack_in_order(
    cluster: Cluster,
    p: u32,
    o: Arc<Owned>,
    mut rx: mpsc::Receiver<Applying>,
    failed: watch::Sender<Option<String>>,
    replay: Replay<impl FnOnce(u64)>,
) {
    let Replay {
        target,
        takeover_started,
        on_served,
    } = replay;
    let from = o.applied();
    let mut on_served = Some(on_served);
    while let Some(a) = rx.recv().await {
        if let Some(pending) = a.pending {
            match pending.await {
                Ok(_) => {}
                Err(e) if skippable(&e) => {
                    tracing::warn!(partition = p, sequence = a.sequence, error = %e, "record refused at commit; skipped");
                    cluster.inner.metrics.apply_skipped.inc();
                }
                Err(e) => {
                    // Not applied, and not the record's fault: stop here
                    // (the applied sequence stays below it) and give the
                    // partition up.
                    let _ = failed.send(Some(format!(
                        "the partition engine failed to commit sequence {}: {e}",
                        a.sequence
                    )));
                    return;
                }
            }
        }
        o.applied.send_replace(a.sequence);
        cluster.inner.metrics.applied.inc();
        if a.sequence >= target && !o.serving.load(Ordering::Acquire) {
            if let Some(f) = on_served.take() {
                o.serving.store(true, Ordering::Release);
                cluster.inner.metrics.takeover(takeover_started.elapsed());
                f(a.sequence - from);
            }
        }
    }
}

/// The newest snapshot pointer of `p` and its KV revision.
pub(crate) async fn read_pointer(
    cluster: &Cluster,
    p: u32,
) -> anyhow::Result<Option<(SnapshotPointer, u64)>> {
    let entry = cluster.inner.pointers.entry(partition_key(p)).await?;
    Ok(entry
        .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
        .and_then(|e| {
            serde_json::from_slice::<SnapshotPointer>(&e.value)
                .ok()
                .map(|ptr| (ptr, e.revision))
        }))
}

/// Writes the engine's snapshot (everything applied) to the object store
/// and moves the pointer to it, only forward in (epoch, sequence).
/// Answers the sequence it holds, `None` when nothing changed.
async fn snapshot(
    cluster: &Cluster,
    p: u32,
    o: &Owned,
    engine: &Engine,
) -> anyhow::Result<Option<u64>> {
    let inner = &cluster.inner;
    let sequence = o.applied();
    let started = Instant::now();
    let e = engine.clone();
    let Some(path) = tokio::task::spawn_blocking(move || e.snapshot()).await?? else {
        return Ok(None);
    };
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| anyhow::anyhow!("snapshot path without a file name"))?
        .to_owned();
    let object = format!("p{p}/e{:012}-s{sequence:012}", o.epoch);
    let mut reader = tokio::fs::File::open(&path).await?;
    let info = inner.objects.put(object.as_str(), &mut reader).await?;
    let ours = SnapshotPointer {
        epoch: o.epoch,
        sequence,
        object: object.clone(),
        file,
        bytes: info.size as u64,
    };
    let value: bytes::Bytes = serde_json::to_vec(&ours)?.into();
    for _ in 0..5 {
        let current = read_pointer(cluster, p).await?;
        if let Some((c, _)) = &current {
            if (c.epoch, c.sequence) >= (ours.epoch, ours.sequence) {
                // A newer owner (or this one) got further: keep its.
                let _ = inner.objects.delete(&object).await;
                return Ok(None);
            }
        }
        let moved = match &current {
            Some((_, revision)) => inner
                .pointers
                .update(partition_key(p), value.clone(), *revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => inner
                .pointers
                .create(partition_key(p), value.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match moved {
            Ok(()) => {
                if let Some((c, _)) = current {
                    if c.object != object {
                        let _ = inner.objects.delete(&c.object).await;
                    }
                }
                *inner.parts[p as usize].snapshot.lock() = (sequence, o.epoch);
                inner.metrics.snapshots.inc();
                tracing::info!(
                    partition = p,
                    epoch = o.epoch,
                    sequence,
                    bytes = ours.bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "partition snapshot stored"
                );
                return Ok(Some(sequence));
            }
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "snapshot pointer moved meanwhile; rereading");
            }
        }
    }
    let _ = inner.objects.delete(&object).await;
    anyhow::bail!("the snapshot pointer kept changing under five attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_a_deleted_space_are_skipped_and_a_stale_view_waits() {
        use super::super::SpaceEntry;
        let live = SpaceEntry {
            dimension: 8,
            ..SpaceEntry::default()
        };
        let tombstone = SpaceEntry {
            deleted: true,
            deleted_generation: 5,
            ..live.clone()
        };
        let at = |e: &SpaceEntry, r: u64, g: u64| generation_decision(Some(&(e.clone(), r)), g);
        // A live space takes records of any generation (the log orders
        // them around the delete record).
        assert_eq!(at(&live, 5, 5), Some(Generation::Apply));
        assert_eq!(at(&live, 12, 5), Some(Generation::Apply));
        assert_eq!(at(&live, 5, 0), Some(Generation::Apply));
        // Deleted (tombstone at revision 9): records written before it go.
        assert_eq!(at(&tombstone, 9, 5), Some(Generation::Skip));
        assert_eq!(at(&tombstone, 9, 0), Some(Generation::Skip));
        // A record of a generation newer than the tombstone: the view is
        // stale, not decided here.
        assert_eq!(at(&tombstone, 9, 12), None);
        assert_eq!(generation_decision(None, 5), None);
    }

    /// Waiting for the applying task ends in each way it can: everything
    /// applied, the task failed, or the task ended first (the owner must
    /// never wait for ever on a dead task).
    #[tokio::test]
    async fn drain_ends_when_applied_or_when_the_applying_task_is_gone() {
        let o = Owned::new(7, Duration::from_secs(10));
        let (failed_tx, mut failed) = watch::channel(None::<String>);
        let applier = {
            let o = o.clone();
            tokio::spawn(async move {
                for s in 1..=5 {
                    tokio::task::yield_now().await;
                    o.applied.send_replace(s);
                }
            })
        };
        drain(&o, 5, &mut failed).await.unwrap();
        applier.await.unwrap();

        failed_tx.send_replace(Some("the partition engine failed".to_owned()));
        let e = drain(&o, 6, &mut failed).await.unwrap_err();
        assert!(e.to_string().contains("engine failed"), "{e}");

        let (failed_tx, mut failed) = watch::channel(None::<String>);
        drop(failed_tx);
        let e = drain(&o, 6, &mut failed).await.unwrap_err();
        assert!(e.to_string().contains("ended"), "{e}");
        // Already applied: nothing to wait for, whatever the task did.
        drain(&o, 5, &mut failed).await.unwrap();
    }

    #[test]
    fn only_the_records_own_faults_are_skipped() {
        assert!(skippable(&Error::InvalidArgument {
            field: "episode.expires_at",
            message: "is past".into(),
        }));
        assert!(!skippable(&Error::Storage("disk full".into())));
        assert!(!skippable(&Error::ShuttingDown));
    }
}
