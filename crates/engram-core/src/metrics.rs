//! Prometheus metrics, recorded where the work happens: admission and
//! rejections (`engine`, `session`), group commit and WAL sync (`commit`),
//! indexing workers (`indexer`), recall (`engine`, `recall`). Gauges that
//! describe state (queue depth, index size, utilization) are computed when
//! scraped, so the hot paths pay only for counters and histograms, through
//! handles resolved once per space (`SpaceMetrics`).
//!
//! Names and labels are a contract with dashboards and alerts; `docs/operations/
//! streaming-monitoring.md` explains each one. `space_id` values are
//! capped: past `max_spaces` distinct spaces the label is `_overflow`.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::RejectReason;
use crate::model::SpaceId;
use crate::queue::Priority;

/// The label of spaces beyond the cardinality cap.
pub const OVERFLOW_LABEL: &str = "_overflow";
/// Distinct `space_id` label values before overflow.
pub const DEFAULT_MAX_SPACE_LABELS: usize = 100;

/// Latency buckets (seconds): fine below 10 ms where acks and recalls
/// live, and 0.2 exactly for the P99 > 200 ms alerts.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const SYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    observations: IntCounterVec,
    duplicates: IntCounterVec,
    expired: IntCounterVec,
    rejected: IntCounterVec,
    backpressure_activations: IntCounterVec,
    queue_depth: IntGaugeVec,
    worker_utilization: prometheus::GaugeVec,
    active_sessions: IntGauge,
    observation_latency: HistogramVec,
    recall_latency: HistogramVec,
    batch_size: HistogramVec,
    queue_capacity: IntGauge,
    backpressure_active: IntGauge,
    worker_restarts: IntCounterVec,
    quarantined: IntCounterVec,
    index_vectors: IntGaugeVec,
    index_memory: IntGaugeVec,
    space_memory: IntGaugeVec,
    queue_memory: IntGauge,
    index_lag: prometheus::GaugeVec,
    wal_sync: Histogram,
    labels: Mutex<Labels>,
    worker_busy: prometheus::CounterVec,
    worker_stuck: IntGaugeVec,
    kept_sessions: IntGauge,
    utilization: Mutex<Utilization>,
}

/// Samples of the workers' busy time, shared by every scrape: the gauge is
/// the busy fraction over the last [`UTILIZATION_WINDOW`], whoever scrapes
/// and however often (it was "since the previous scrape", so two
/// Prometheus servers scraping one engine corrupted each other's values).
#[derive(Default)]
struct Utilization {
    /// (when, busy nanoseconds per worker), oldest first, at least
    /// [`UTILIZATION_SAMPLE_EVERY`] apart.
    samples: std::collections::VecDeque<(Instant, Vec<u64>)>,
    /// Busy nanoseconds already added to the busy-seconds counter.
    exported: Vec<u64>,
}

/// The window the utilization gauge covers.
pub const UTILIZATION_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
const UTILIZATION_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct Labels {
    max: usize,
    given: HashMap<SpaceId, String>,
}

/// Hot-path handles of one space, resolved once.
pub struct SpaceMetrics {
    pub label: String,
    accepted: [IntCounter; 3],
    duplicates: IntCounter,
    /// Memories purged because they expired.
    pub expired: IntCounter,
    rejected: [IntCounter; RejectReason::ALL.len()],
    pub observation_latency: Histogram,
    pub recall_latency: Histogram,
}

impl SpaceMetrics {
    pub fn accepted(&self, p: Priority) {
        self.accepted[p.index()].inc();
    }

    pub fn rejected(&self, r: RejectReason) {
        self.rejected[reason_index(r)].inc();
    }

    /// Counts `n` idempotent retries (answered, nothing stored) at once.
    pub fn duplicates_many(&self, n: u64) {
        if n > 0 {
            self.duplicates.inc_by(n);
        }
    }

    /// Counts `n` accepted observations of one priority at once.
    pub fn accepted_many(&self, p: Priority, n: u64) {
        if n > 0 {
            self.accepted[p.index()].inc_by(n);
        }
    }
}

fn reason_index(r: RejectReason) -> usize {
    RejectReason::ALL
        .iter()
        .position(|x| *x == r)
        .expect("every reason is listed")
}

/// What a scrape reads from the engine to set the state gauges.
pub struct ScrapeState {
    pub queue_capacity: usize,
    pub backpressure_active: bool,
    pub active_sessions: usize,
    /// Sessions kept: attached, and released but resumable.
    pub kept_sessions: usize,
    /// (space, per-priority depth)
    pub queue_depths: Vec<(SpaceId, [usize; 3])>,
    /// (space, vectors in the index, oldest fresh age s, memory by kind;
    /// the index's bytes and the queue's are derived from the latter)
    pub spaces: Vec<(SpaceId, usize, f64, crate::model::SpaceMemory)>,
    /// Busy nanoseconds so far, per worker.
    pub worker_busy_nanos: Vec<u64>,
    /// Workers stuck on one observation past the watchdog's threshold.
    pub stuck_workers: Vec<usize>,
}

impl Metrics {
    pub fn new(max_space_labels: usize) -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique")
        };
        macro_rules! make {
            ($kind:ty, $opts:expr, $labels:expr) => {{
                let m = <$kind>::new($opts, $labels).expect("valid metric");
                reg(Box::new(m.clone()));
                m
            }};
            ($kind:ty, $opts:expr) => {{
                let m = <$kind>::with_opts($opts).expect("valid metric");
                reg(Box::new(m.clone()));
                m
            }};
        }
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help).buckets(buckets.to_vec())
        };
        let m = Metrics {
            observations: make!(
                IntCounterVec,
                Opts::new(
                    "engram_streaming_observations_total",
                    "Observations accepted and stored (durable and visible); idempotent retries are counted apart."
                ),
                &["space_id", "priority"]
            ),
            duplicates: make!(
                IntCounterVec,
                Opts::new(
                    "engram_streaming_observations_duplicate_total",
                    "Observations answered with the original's ack because their episode id was already stored (idempotent retries): nothing new stored."
                ),
                &["space_id"]
            ),
            expired: make!(
                IntCounterVec,
                Opts::new(
                    "engram_memories_expired_total",
                    "Memories purged because they expired (their own expires_at or ttl_seconds, or the space's default TTL): removed from the episodes and the recall candidates, logged in the WAL, left out of the next snapshot."
                ),
                &["space_id"]
            ),
            rejected: make!(
                IntCounterVec,
                Opts::new(
                    "engram_streaming_observations_rejected_total",
                    "Observations rejected, by reason."
                ),
                &["space_id", "reason"]
            ),
            backpressure_activations: make!(
                IntCounterVec,
                Opts::new(
                    "engram_streaming_backpressure_activations_total",
                    "Times SLOW_DOWN began while the space had queued observations."
                ),
                &["space_id"]
            ),
            queue_depth: make!(
                IntGaugeVec,
                Opts::new(
                    "engram_streaming_queue_depth",
                    "Observations accepted but not yet indexed."
                ),
                &["space_id", "priority"]
            ),
            worker_utilization: make!(
                prometheus::GaugeVec,
                Opts::new(
                    "engram_streaming_worker_utilization",
                    "Fraction of time the indexing worker was busy over the last 10 s (0-1), the same for every scraper."
                ),
                &["worker_id"]
            ),
            kept_sessions: make!(
                IntGauge,
                Opts::new(
                    "engram_streaming_sessions_kept",
                    "Sessions the server keeps: attached to a stream, or released and resumable until their resume window ends."
                )
            ),
            worker_stuck: make!(
                IntGaugeVec,
                Opts::new(
                    "engram_streaming_worker_stuck",
                    "1 while the indexing worker has been on one observation longer than engine.worker_stuck_after_secs (hung?), else 0."
                ),
                &["worker_id"]
            ),
            worker_busy: make!(
                prometheus::CounterVec,
                Opts::new(
                    "engram_streaming_worker_busy_seconds_total",
                    "Seconds the indexing worker spent on batches (rate() of it is the utilization over any window)."
                ),
                &["worker_id"]
            ),
            active_sessions: make!(
                IntGauge,
                Opts::new(
                    "engram_streaming_active_sessions_total",
                    "Streams with a session attached."
                )
            ),
            observation_latency: make!(
                HistogramVec,
                hist(
                    "engram_streaming_observation_latency_seconds",
                    "From submission to the ack (durable and visible).",
                    LATENCY_BUCKETS
                ),
                &["space_id"]
            ),
            recall_latency: make!(
                HistogramVec,
                hist(
                    "engram_streaming_recall_latency_seconds",
                    "Time to compute a recall.",
                    LATENCY_BUCKETS
                ),
                &["space_id"]
            ),
            batch_size: make!(
                HistogramVec,
                hist(
                    "engram_streaming_batch_size",
                    "Observations per indexing batch.",
                    BATCH_BUCKETS
                ),
                &["worker_id"]
            ),
            queue_capacity: make!(
                IntGauge,
                Opts::new(
                    "engram_streaming_queue_capacity",
                    "The indexing queue's capacity."
                )
            ),
            backpressure_active: make!(
                IntGauge,
                Opts::new(
                    "engram_streaming_backpressure_active",
                    "1 while SLOW_DOWN or overload is in force."
                )
            ),
            worker_restarts: make!(
                IntCounterVec,
                Opts::new(
                    "engram_streaming_worker_restarts_total",
                    "Indexing worker restarts after a panic."
                ),
                &["worker_id"]
            ),
            quarantined: make!(
                IntCounterVec,
                Opts::new(
                    "engram_streaming_quarantined_total",
                    "Observations quarantined because indexing them kept panicking (kept in the exact-scanned fresh tier)."
                ),
                &["space_id"]
            ),
            index_vectors: make!(
                IntGaugeVec,
                Opts::new("engram_index_vectors", "Vectors in the space's HNSW index."),
                &["space_id"]
            ),
            index_memory: make!(
                IntGaugeVec,
                Opts::new(
                    "engram_index_memory_bytes",
                    "Memory of the space's HNSW index."
                ),
                &["space_id"]
            ),
            space_memory: make!(
                IntGaugeVec,
                Opts::new(
                    "engram_space_memory_bytes",
                    "Memory held for the space by kind: vectors (exact f32 of indexed memories), \
                     codes (the index's quantized rows), graph (links, labels, locks), episodes \
                     (ids, texts, tags, metadata), fresh (vectors not indexed yet)."
                ),
                &["space_id", "kind"]
            ),
            queue_memory: make!(
                IntGauge,
                Opts::new(
                    "engram_queue_memory_bytes",
                    "Bytes of embeddings waiting to be indexed."
                )
            ),
            index_lag: make!(
                prometheus::GaugeVec,
                Opts::new(
                    "engram_streaming_index_lag_seconds",
                    "Age of the oldest observation not yet indexed (0 when none)."
                ),
                &["space_id"]
            ),
            wal_sync: make!(
                Histogram,
                hist(
                    "engram_wal_sync_duration_seconds",
                    "Duration of one WAL fsync (group commit).",
                    SYNC_BUCKETS
                )
            ),
            labels: Mutex::new(Labels {
                max: max_space_labels,
                given: HashMap::new(),
            }),
            utilization: Mutex::new(Utilization::default()),
            registry,
        };
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        m
    }

    /// The `space_id` label for a space: its id, or `_overflow` past the cap.
    pub fn label(&self, space: &SpaceId) -> String {
        let mut l = self.labels.lock();
        if let Some(label) = l.given.get(space) {
            return label.clone();
        }
        let label = if l.given.len() < l.max {
            space.to_string()
        } else {
            OVERFLOW_LABEL.to_owned()
        };
        l.given.insert(space.clone(), label.clone());
        label
    }

    pub fn space(&self, space: &SpaceId) -> SpaceMetrics {
        let label = self.label(space);
        SpaceMetrics {
            accepted: Priority::ALL
                .map(|p| self.observations.with_label_values(&[&label, p.as_str()])),
            duplicates: self.duplicates.with_label_values(&[&label]),
            expired: self.expired.with_label_values(&[&label]),
            rejected: RejectReason::ALL
                .map(|r| self.rejected.with_label_values(&[&label, r.as_str()])),
            observation_latency: self.observation_latency.with_label_values(&[&label]),
            recall_latency: self.recall_latency.with_label_values(&[&label]),
            label,
        }
    }

    /// A rejection of an observation for a space that may not exist yet.
    pub fn rejected(&self, space: &SpaceId, reason: RejectReason) {
        let label = self.label(space);
        self.rejected
            .with_label_values(&[&label, reason.as_str()])
            .inc();
    }

    /// Creates a worker's series at zero, so dashboards and the
    /// worker-crashed alert see every worker from the start.
    pub fn init_worker(&self, worker: usize) {
        let w = worker.to_string();
        self.worker_restarts.with_label_values(&[&w]);
        self.batch_size.with_label_values(&[&w]);
        self.worker_utilization.with_label_values(&[&w]).set(0.0);
        self.worker_busy.with_label_values(&[&w]);
        self.worker_stuck.with_label_values(&[&w]).set(0);
    }

    pub fn batch_size(&self, worker: usize) -> Histogram {
        self.batch_size.with_label_values(&[&worker.to_string()])
    }

    pub fn worker_restart(&self, worker: usize) {
        self.worker_restarts
            .with_label_values(&[&worker.to_string()])
            .inc();
    }

    pub fn task_quarantined(&self, space: &SpaceId) {
        let label = self.label(space);
        self.quarantined.with_label_values(&[&label]).inc();
    }

    pub fn backpressure_activation(&self, space: &SpaceId) {
        let label = self.label(space);
        self.backpressure_activations
            .with_label_values(&[&label])
            .inc();
    }

    pub fn wal_sync(&self) -> &Histogram {
        &self.wal_sync
    }

    /// Sets the state gauges and renders everything in the Prometheus text format.
    pub fn render(&self, s: ScrapeState) -> String {
        self.queue_capacity.set(s.queue_capacity as i64);
        self.backpressure_active
            .set(i64::from(s.backpressure_active));
        self.active_sessions.set(s.active_sessions as i64);
        self.kept_sessions.set(s.kept_sessions as i64);
        // Every known space reads 0 when drained (not its last value, and
        // not missing: alerts and panels need the series).
        self.queue_depth.reset();
        for (space, ..) in &s.spaces {
            let label = self.label(space);
            for p in Priority::ALL {
                self.queue_depth.with_label_values(&[&label, p.as_str()]);
            }
        }
        let mut memory_labels = HashMap::new();
        for (space, depths) in &s.queue_depths {
            let label = self.label(space);
            for p in Priority::ALL {
                self.queue_depth
                    .with_label_values(&[&label, p.as_str()])
                    .add(depths[p.index()] as i64);
            }
        }
        self.index_vectors.reset();
        self.index_memory.reset();
        self.index_lag.reset();
        self.space_memory.reset();
        let mut fresh_bytes = 0;
        for (space, vectors, lag, memory) in &s.spaces {
            let label = self.label(space);
            for (kind, b) in memory.by_kind() {
                self.space_memory
                    .with_label_values(&[&label, kind])
                    .add(b as i64);
            }
            self.index_vectors
                .with_label_values(&[&label])
                .add(*vectors as i64);
            self.index_memory
                .with_label_values(&[&label])
                .add((memory.vectors + memory.codes + memory.graph) as i64);
            let lag_gauge = self.index_lag.with_label_values(&[&label]);
            let worst = memory_labels.entry(label).or_insert(0.0f64);
            *worst = worst.max(*lag);
            lag_gauge.set(*worst);
            fresh_bytes += memory.fresh;
        }
        self.queue_memory.set(fresh_bytes as i64);
        self.update_utilization(Instant::now(), &s.worker_busy_nanos);
        for w in 0..s.worker_busy_nanos.len() {
            self.worker_stuck
                .with_label_values(&[&w.to_string()])
                .set(i64::from(s.stuck_workers.contains(&w)));
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Metrics {
    /// Sets the busy-seconds counters and the utilization gauges from the
    /// workers' busy nanoseconds at `now`.
    fn update_utilization(&self, now: Instant, busy: &[u64]) {
        let mut u = self.utilization.lock();
        u.exported.resize(busy.len(), 0);
        for (w, &b) in busy.iter().enumerate() {
            let delta = b.saturating_sub(u.exported[w]);
            if delta > 0 {
                self.worker_busy
                    .with_label_values(&[&w.to_string()])
                    .inc_by(delta as f64 / 1e9);
                u.exported[w] = b;
            }
        }
        if u.samples
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= UTILIZATION_SAMPLE_EVERY)
        {
            u.samples.push_back((now, busy.to_vec()));
        }
        // Keep the newest sample at least a window old, and what follows.
        while u.samples.len() > 2 && now.duration_since(u.samples[1].0) >= UTILIZATION_WINDOW {
            u.samples.pop_front();
        }
        let (at, then) = &u.samples[0];
        let wall = now.duration_since(*at).as_nanos() as f64;
        for (w, &b) in busy.iter().enumerate() {
            let was = then.get(w).copied().unwrap_or(0);
            let frac = if wall > 0.0 {
                b.saturating_sub(was) as f64 / wall
            } else {
                0.0
            };
            self.worker_utilization
                .with_label_values(&[&w.to_string()])
                .set(frac.clamp(0.0, 1.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, defect 8: the gauge was "since the previous scrape", so a
    /// second scraper reset it for the first. Now two scrapes a moment
    /// apart read the same window, and the counter is monotonic.
    #[test]
    fn utilization_is_the_same_for_every_scraper() {
        let m = Metrics::new(10);
        m.init_worker(0);
        let t0 = Instant::now();
        let sec = std::time::Duration::from_secs(1);
        let gauge = |m: &Metrics| m.worker_utilization.with_label_values(&["0"]).get();
        // Busy half of each second for 20 s, scraped every second.
        for i in 0..=20u64 {
            m.update_utilization(t0 + sec * i as u32, &[i * 500_000_000]);
        }
        assert!((gauge(&m) - 0.5).abs() < 1e-9, "{}", gauge(&m));
        // A second scraper right after sees the same value, not ~0.
        m.update_utilization(
            t0 + sec * 20 + std::time::Duration::from_millis(10),
            &[10_000_000_000],
        );
        assert!((gauge(&m) - 0.5).abs() < 0.01, "{}", gauge(&m));
        let busy = m.worker_busy.with_label_values(&["0"]).get();
        assert!((busy - 10.0).abs() < 1e-9, "{busy}");
    }

    #[test]
    fn space_labels_are_capped() {
        let m = Metrics::new(2);
        let id = |s: &str| SpaceId::parse(s).unwrap();
        assert_eq!(m.label(&id("a")), "a");
        assert_eq!(m.label(&id("b")), "b");
        assert_eq!(m.label(&id("c")), OVERFLOW_LABEL);
        assert_eq!(m.label(&id("a")), "a");
    }

    #[test]
    fn render_has_every_spec_metric() {
        let m = Metrics::new(10);
        let s = m.space(&SpaceId::parse("x").unwrap());
        s.accepted(Priority::Normal);
        s.rejected(RejectReason::Overloaded);
        s.observation_latency.observe(0.001);
        s.recall_latency.observe(0.002);
        m.batch_size(0).observe(4.0);
        m.backpressure_activation(&SpaceId::parse("x").unwrap());
        let text = m.render(ScrapeState {
            queue_capacity: 100,
            backpressure_active: false,
            active_sessions: 1,
            kept_sessions: 1,
            queue_depths: vec![(SpaceId::parse("x").unwrap(), [0, 3, 0])],
            spaces: vec![(
                SpaceId::parse("x").unwrap(),
                10,
                0.5,
                crate::model::SpaceMemory {
                    vectors: 1000,
                    codes: 300,
                    graph: 200,
                    episodes: 150,
                    fresh: 300,
                    vectors_on_disk: 0,
                },
            )],
            worker_busy_nanos: vec![0, 0],
            stuck_workers: vec![],
        });
        for (kind, name) in [
            ("counter", "engram_streaming_observations_total"),
            ("counter", "engram_streaming_observations_rejected_total"),
            ("counter", "engram_streaming_backpressure_activations_total"),
            ("gauge", "engram_streaming_queue_depth"),
            ("gauge", "engram_streaming_worker_utilization"),
            ("gauge", "engram_streaming_active_sessions_total"),
            ("histogram", "engram_streaming_observation_latency_seconds"),
            ("histogram", "engram_streaming_recall_latency_seconds"),
            ("histogram", "engram_streaming_batch_size"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}")),
                "{name} {kind} missing:\n{text}"
            );
        }
        assert!(
            text.contains(r#"engram_streaming_queue_depth{priority="normal",space_id="x"} 3"#),
            "{text}"
        );
        for (kind, bytes) in [
            ("vectors", 1000),
            ("codes", 300),
            ("graph", 200),
            ("episodes", 150),
            ("fresh", 300),
        ] {
            assert!(
                text.contains(&format!(
                    r#"engram_space_memory_bytes{{kind="{kind}",space_id="x"}} {bytes}"#
                )),
                "{kind}:\n{text}"
            );
        }
    }
}
