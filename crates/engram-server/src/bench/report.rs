//! What a bench run found: latency summaries, the report (JSON), and the
//! table printed on stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::data::Truth;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl Latency {
    /// Summarises samples in seconds (any order).
    pub fn from_seconds(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let at = |p| percentile(&samples, p).map(|s| s * 1e3);
        Latency {
            count: samples.len(),
            p50: at(50.0),
            p99: at(99.0),
            p999: at(99.9),
            max: samples.last().map(|s| s * 1e3),
        }
    }
}

/// numpy's default percentile (linear interpolation between the two
/// nearest ranks) of sorted values; `None` for none. Monotone in `p`, so
/// p50 <= p99 <= p99.9 always holds.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

/// The parameters of a run, as given (after defaults).
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub grpc: String,
    pub http: String,
    pub space: String,
    pub data: String,
    pub observations: usize,
    pub dim: usize,
    pub clients: usize,
    /// Observations/s in total; 0 = open loop.
    pub rate: f64,
    pub max_in_flight: usize,
    pub recall_rate: f64,
    pub queries: usize,
    pub wait_indexed: bool,
    pub seed: u64,
    pub visibility_every: usize,
}

/// Where the run ran (the client side; the server may be elsewhere).
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub os: &'static str,
    pub arch: &'static str,
    pub engram_version: &'static str,
}

impl Machine {
    pub fn this() -> Self {
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            engram_version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// Server-side numbers from `/metrics`; `None` where a scrape failed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Server {
    pub rss_before_bytes: Option<f64>,
    pub rss_after_bytes: Option<f64>,
    /// The largest RSS seen (scraped every 250 ms during the run).
    pub rss_peak_bytes: Option<f64>,
    /// `process_cpu_seconds_total` after minus before.
    pub cpu_seconds: Option<f64>,
    /// The largest `engram_streaming_index_lag_seconds` of the space seen
    /// while streaming and indexing.
    pub index_lag_max_seconds: Option<f64>,
}

/// Everything a run measured; the JSON written by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    pub params: Params,
    pub machine: Machine,
    /// Observations acked as accepted.
    pub accepted: u64,
    /// Rejected observations by reason.
    pub rejected: BTreeMap<String, u64>,
    /// First send to last ack.
    pub streaming_seconds: f64,
    /// `accepted / streaming_seconds`.
    pub accepted_per_second: f64,
    /// `accepted` / (first send to everything indexed); `None` without
    /// `--wait-indexed`.
    pub indexed_per_second: Option<f64>,
    /// Last ack to everything indexed; `None` without `--wait-indexed`.
    pub indexing_lag_seconds: Option<f64>,
    /// Send (or, at a target rate, the scheduled send time) to ack.
    pub ack_latency_ms: Latency,
    /// Ack to the end of the first recall that returned the observation.
    pub visibility_ms: Latency,
    /// Visibility probes whose first recall did not return the
    /// observation (a later one did, or none within the deadline).
    pub visibility_missed_first_recall: u64,
    /// Visibility probes never answered within the deadline.
    pub visibility_timeouts: u64,
    /// Recalls (k=10) made while the observations streamed.
    pub recall_during_stream_ms: Latency,
    /// Recalls that failed while streaming (the run goes on).
    pub recall_errors: u64,
    /// The final queries (k=10), one at a time.
    pub recall_queries_ms: Latency,
    pub recall_at_10: Option<f64>,
    pub ground_truth: Truth,
    pub server: Server,
}

impl Report {
    /// The table for stdout: one metric per row, with its unit.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String, &str)> = Vec::new();
        let mut row = |name: &str, value: String, unit: &'static str| {
            rows.push((name.to_owned(), value, unit));
        };
        let rejected: u64 = self.rejected.values().sum();
        row("accepted", self.accepted.to_string(), "obs");
        row("rejected", rejected.to_string(), "obs");
        for (reason, n) in &self.rejected {
            row(&format!("rejected ({reason})"), n.to_string(), "obs");
        }
        row(
            "streaming time",
            format!("{:.2}", self.streaming_seconds),
            "s",
        );
        row(
            "accepted throughput",
            format!("{:.0}", self.accepted_per_second),
            "obs/s",
        );
        row(
            "indexed throughput",
            opt(self.indexed_per_second, 0),
            "obs/s",
        );
        latency_rows(&mut row, "ack latency", &self.ack_latency_ms);
        row(
            "visibility samples",
            self.visibility_ms.count.to_string(),
            "probes",
        );
        row(
            "visibility missed first recall",
            self.visibility_missed_first_recall.to_string(),
            "probes",
        );
        row(
            "visibility timeouts",
            self.visibility_timeouts.to_string(),
            "probes",
        );
        latency_rows(&mut row, "visibility", &self.visibility_ms);
        row(
            "indexing lag after stream",
            opt(self.indexing_lag_seconds, 2),
            "s",
        );
        row(
            "index lag max (server)",
            opt(self.server.index_lag_max_seconds, 2),
            "s",
        );
        row(
            "recalls during stream",
            self.recall_during_stream_ms.count.to_string(),
            "recalls",
        );
        row("recall errors", self.recall_errors.to_string(), "recalls");
        latency_rows(
            &mut row,
            "recall latency (stream)",
            &self.recall_during_stream_ms,
        );
        latency_rows(
            &mut row,
            "recall latency (queries)",
            &self.recall_queries_ms,
        );
        row("recall@10", opt(self.recall_at_10, 4), "");
        row(
            "ground truth",
            match self.ground_truth {
                Truth::File => "groundtruth.ivecs",
                Truth::Computed => "exact, computed",
            }
            .to_owned(),
            "",
        );
        row(
            "server RSS before",
            opt(self.server.rss_before_bytes.map(mib), 1),
            "MiB",
        );
        row(
            "server RSS after",
            opt(self.server.rss_after_bytes.map(mib), 1),
            "MiB",
        );
        row(
            "server RSS peak",
            opt(self.server.rss_peak_bytes.map(mib), 1),
            "MiB",
        );
        row("server CPU", opt(self.server.cpu_seconds, 2), "s");

        let name_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(6);
        let value_w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(5);
        let p = &self.params;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "engram bench: {} x {}-d vectors ({}), {} clients, rate {}, recall rate {}/s, space {:?}",
            p.observations,
            p.dim,
            p.data,
            p.clients,
            if p.rate > 0.0 {
                format!("{}/s", p.rate)
            } else {
                "open loop".into()
            },
            p.recall_rate,
            p.space
        );
        let _ = writeln!(out, "{:<name_w$}  {:>value_w$}  unit", "metric", "value");
        let _ = writeln!(out, "{}  {}  ----", "-".repeat(name_w), "-".repeat(value_w));
        for (name, value, unit) in rows {
            let line = format!("{name:<name_w$}  {value:>value_w$}  {unit}");
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

fn latency_rows(row: &mut impl FnMut(&str, String, &'static str), name: &str, l: &Latency) {
    for (suffix, v) in [("p50", l.p50), ("p99", l.p99), ("p99.9", l.p999)] {
        row(&format!("{name} {suffix}"), opt(v, 3), "ms");
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "n/a".into(),
    }
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_numpy_and_is_ordered() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
        let l = Latency::from_seconds((1..=1000).rev().map(|i| i as f64 / 1e3).collect());
        assert_eq!(l.count, 1000);
        let (p50, p99, p999) = (l.p50.unwrap(), l.p99.unwrap(), l.p999.unwrap());
        assert!(p50 <= p99 && p99 <= p999 && p999 <= l.max.unwrap());
        assert!((p50 - 500.5).abs() < 1e-9, "{p50}");
    }
}
