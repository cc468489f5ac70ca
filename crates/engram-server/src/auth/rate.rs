//! Per-key request rate: a token bucket per key name.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Token buckets by key name. A rate of 0 means unlimited.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `rate` tokens a second, holding at most `burst` (0: one second's
    /// worth, at least 1).
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = if burst == 0 {
            rate.max(1.0)
        } else {
            f64::from(burst)
        };
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `name`'s bucket.
    ///
    /// # Errors
    /// How long until a token is there.
    pub fn take(&self, name: &str) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(name.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate).max(Duration::from_millis(1)))
        }
    }

    /// Forgets the buckets of keys that are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.buckets.lock().retain(|name, _| keep(name));
    }
}
