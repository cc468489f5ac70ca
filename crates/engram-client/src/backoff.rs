//! Reconnect delays: exponential, capped, jittered, bounded in count.

use std::time::Duration;

use crate::options::BackoffPolicy;

/// The state of one run of reconnect attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            attempts: 0,
        }
    }

    /// Attempts handed out so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the next attempt, or `None` once `max_attempts` have
    /// been used. `unit` is a random number in [0, 1) (the jitter).
    pub(crate) fn next_delay(&mut self, unit: f64) -> Option<Duration> {
        if self.attempts >= self.policy.max_attempts {
            return None;
        }
        let d = delay(&self.policy, self.attempts, unit);
        self.attempts += 1;
        Some(d)
    }
}

/// `min(max, initial * multiplier^attempt)`, scaled into [0.5, 1] of itself
/// by `unit` ("equal jitter": never less than half, so a fleet spreads out
/// without any client retrying too eagerly).
fn delay(p: &BackoffPolicy, attempt: u32, unit: f64) -> Duration {
    let cap = p.max.as_secs_f64();
    let grown = p.initial.as_secs_f64() * p.multiplier.max(1.0).powi(attempt.min(64) as i32);
    let base = grown.min(cap);
    let unit = unit.clamp(0.0, 1.0);
    Duration::from_secs_f64(base * (0.5 + 0.5 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32) -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            max_attempts,
        }
    }

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let mut b = Backoff::new(policy(10));
        let ds: Vec<_> = (0..7).map(|_| b.next_delay(1.0).unwrap()).collect();
        let ms: Vec<u128> = ds.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let p = policy(10);
        for attempt in 0..8 {
            let lo = delay(&p, attempt, 0.0);
            let hi = delay(&p, attempt, 0.999_999);
            assert!(lo * 2 >= hi - Duration::from_micros(1), "{lo:?} {hi:?}");
            assert!(hi <= p.max);
        }
    }

    #[test]
    fn stops_after_max_attempts() {
        let mut b = Backoff::new(policy(3));
        assert!(b.next_delay(0.5).is_some());
        assert!(b.next_delay(0.5).is_some());
        assert!(b.next_delay(0.5).is_some());
        assert_eq!(b.attempts(), 3);
        assert_eq!(b.next_delay(0.5), None);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let p = BackoffPolicy {
            max_attempts: u32::MAX,
            ..policy(0)
        };
        assert_eq!(delay(&p, u32::MAX - 1, 1.0), p.max);
    }
}
