//! Cluster metrics, rendered after the engine's on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Cluster;

/// A counter.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets.
const PUBLISH_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const TAKEOVER_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];

/// A histogram with fixed buckets (cumulative on render).
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut total = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            total += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {total}");
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

pub(crate) struct ClusterMetrics {
    pub ownership_changes: Counter,
    pub applied: Counter,
    pub apply_skipped: Counter,
    pub snapshots: Counter,
    pub publish_retries: Counter,
    pub lease_loop_restarts: Counter,
    pub lag_refusals: Counter,
    pub consumer_restarts: Counter,
    publish: Histogram,
    takeover: Histogram,
}

impl ClusterMetrics {
    pub fn new(_partitions: u32) -> Self {
        ClusterMetrics {
            ownership_changes: Counter::default(),
            applied: Counter::default(),
            apply_skipped: Counter::default(),
            snapshots: Counter::default(),
            publish_retries: Counter::default(),
            lease_loop_restarts: Counter::default(),
            lag_refusals: Counter::default(),
            consumer_restarts: Counter::default(),
            publish: Histogram::new(&PUBLISH_BUCKETS),
            takeover: Histogram::new(&TAKEOVER_BUCKETS),
        }
    }

    pub fn publish_latency(&self, d: Duration) {
        self.publish.observe(d);
    }

    pub fn takeover(&self, d: Duration) {
        self.takeover.observe(d);
    }

    pub fn render(&self, cluster: &Cluster) -> String {
        let mut out = String::new();
        let status = cluster.status();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP engram_cluster_partition_has_owner 1 when this node sees a lease holder for the partition."
        );
        let _ = writeln!(out, "# TYPE engram_cluster_partition_has_owner gauge");
        for p in &status.partitions {
            let _ = writeln!(
                out,
                "engram_cluster_partition_has_owner{{partition=\"{}\"}} {}",
                p.partition,
                u8::from(!p.owner.is_empty())
            );
        }
        let mut owned = String::new();
        let mut lag = String::new();
        for p in &status.partitions {
            let v = match p.state.as_str() {
                "serving" => "1",
                "loading" => "0.5",
                _ => continue,
            };
            let _ = writeln!(
                owned,
                "engram_cluster_partition_owned{{partition=\"{}\"}} {v}",
                p.partition
            );
            let _ = writeln!(
                lag,
                "engram_cluster_partition_lag{{partition=\"{}\"}} {}",
                p.partition, p.lag
            );
        }
        let _ = writeln!(
            out,
            "# HELP engram_cluster_partition_owned 1 for each partition this node owns and serves (0.5 while loading)."
        );
        let _ = writeln!(out, "# TYPE engram_cluster_partition_owned gauge");
        out.push_str(&owned);
        let _ = writeln!(
            out,
            "# HELP engram_cluster_partition_lag Records of the partition stream not yet applied by this node (its owner)."
        );
        let _ = writeln!(out, "# TYPE engram_cluster_partition_lag gauge");
        out.push_str(&lag);
        counter(
            &mut out,
            "engram_cluster_ownership_changes_total",
            "Partition leases this node acquired, lost or released.",
            self.ownership_changes.get(),
        );
        counter(
            &mut out,
            "engram_cluster_applied_total",
            "Partition stream records this node applied as an owner.",
            self.applied.get(),
        );
        counter(
            &mut out,
            "engram_cluster_apply_skipped_total",
            "Records skipped at apply (undecodable, or refused for good such as expired before applied).",
            self.apply_skipped.get(),
        );
        counter(
            &mut out,
            "engram_cluster_snapshots_total",
            "Partition snapshots this node stored in the object store.",
            self.snapshots.get(),
        );
        counter(
            &mut out,
            "engram_cluster_publish_retries_total",
            "Publishes retried (same message id) because JetStream did not ack.",
            self.publish_retries.get(),
        );
        counter(
            &mut out,
            "engram_cluster_lease_loop_restarts_total",
            "Times the lease loop panicked and was restarted.",
            self.lease_loop_restarts.get(),
        );
        counter(
            &mut out,
            "engram_cluster_lag_refusals_total",
            "Writes refused because their partition's owner was more than cluster.max_partition_lag records behind.",
            self.lag_refusals.get(),
        );
        counter(
            &mut out,
            "engram_cluster_consumer_restarts_total",
            "Partition consumers an owner replaced (failed, or stalled while the stream held more).",
            self.consumer_restarts.get(),
        );
        let streams = &cluster.inner.streams;
        let _ = writeln!(
            out,
            "# HELP engram_cluster_stream_sessions Streams with a session attached on this node."
        );
        let _ = writeln!(out, "# TYPE engram_cluster_stream_sessions gauge");
        let _ = writeln!(out, "engram_cluster_stream_sessions {}", streams.attached());
        let _ = writeln!(
            out,
            "# HELP engram_cluster_publish_pending Writes on this node waiting for their PubAck (streams' backpressure reads it against cluster.max_pending_publishes)."
        );
        let _ = writeln!(out, "# TYPE engram_cluster_publish_pending gauge");
        let _ = writeln!(
            out,
            "engram_cluster_publish_pending {}",
            cluster.pending_publishes()
        );
        let _ = writeln!(
            out,
            "# HELP engram_cluster_stream_rejected_total Streamed observations this node rejected, by reason."
        );
        let _ = writeln!(out, "# TYPE engram_cluster_stream_rejected_total counter");
        for (reason, n) in streams.rejected() {
            let _ = writeln!(
                out,
                "engram_cluster_stream_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        self.publish.render(
            &mut out,
            "engram_cluster_publish_seconds",
            "Time from publish to JetStream's PubAck for acked writes.",
        );
        self.takeover.render(
            &mut out,
            "engram_cluster_takeover_seconds",
            "Time from acquiring a partition lease to serving it (snapshot load and replay).",
        );
        out
    }
}
