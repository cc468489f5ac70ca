//! Reading the server's `/metrics` page: resident memory, CPU time and
//! the indexing lag, from the Prometheus text format.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How long one scrape may take; a server too busy to answer within this
/// is reported without the numbers rather than stalling the run.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The numbers a run reads from one scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerSample {
    /// `process_resident_memory_bytes`.
    pub rss_bytes: Option<f64>,
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: Option<f64>,
    /// `engram_streaming_index_lag_seconds` of the benchmarked space.
    pub index_lag_seconds: Option<f64>,
}

/// Scrapes one server's `/metrics`.
#[derive(Clone)]
pub struct Scraper {
    http: reqwest::Client,
    url: String,
    space: String,
    api_key: Option<String>,
}

impl Scraper {
    /// `base` is the server's HTTP address, e.g. `http://127.0.0.1:8080`.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built.
    pub fn new(base: &str, space: &str, api_key: Option<&str>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(SCRAPE_TIMEOUT)
            .build()
            .context("building the HTTP client for /metrics")?;
        Ok(Scraper {
            http,
            url: format!("{}/metrics", base.trim_end_matches('/')),
            space: space.to_owned(),
            api_key: api_key.map(str::to_owned),
        })
    }

    /// One scrape.
    ///
    /// # Errors
    ///
    /// Nothing answers, or the answer is not 200 (404: the server runs
    /// with `engine.metrics = false`).
    pub async fn sample(&self) -> Result<ServerSample> {
        let mut request = self.http.get(&self.url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.with_context(|| {
            format!("GET {} (set --http to the server's HTTP address)", self.url)
        })?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "GET {} answered {status}; expected 200 (is engine.metrics off?)",
                self.url
            );
        }
        let text = response
            .text()
            .await
            .with_context(|| format!("reading {}", self.url))?;
        Ok(parse(&text, &self.space))
    }
}

/// The numbers of interest in a Prometheus text page.
fn parse(text: &str, space: &str) -> ServerSample {
    let mut sample = ServerSample::default();
    let space_label = format!("space_id=\"{space}\"");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "process_resident_memory_bytes" => sample.rss_bytes = Some(value),
            "process_cpu_seconds_total" => sample.cpu_seconds = Some(value),
            "engram_streaming_index_lag_seconds" if labels.contains(&space_label) => {
                sample.index_lag_seconds = Some(value)
            }
            _ => {}
        }
    }
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_process_and_lag_series_of_the_space() {
        let page = "\
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 123456789
process_cpu_seconds_total 4.25
engram_streaming_index_lag_seconds{space_id=\"other\"} 9
engram_streaming_index_lag_seconds{space_id=\"bench\"} 0.5
";
        let s = parse(page, "bench");
        assert_eq!(s.rss_bytes, Some(123_456_789.0));
        assert_eq!(s.cpu_seconds, Some(4.25));
        assert_eq!(s.index_lag_seconds, Some(0.5));
        assert_eq!(parse("", "bench"), ServerSample::default());
    }
}
