//! Send pacing for flow control: after the server's SLOW_DOWN the session
//! sends at most the suggested rate until the server says ACTIVE again.

use std::time::Duration;

use tokio::time::Instant;

/// A rate below this is taken as this: one observation a second still lets
/// the server see the stream is alive and lets acks flow, and keeps a bogus
/// tiny rate from parking a stream for hours.
pub(crate) const MIN_RATE: f64 = 1.0;

/// Spaces sends `1 / rate` apart while a rate is set; free otherwise.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    interval: Option<Duration>,
    /// Earliest time of the next send while pacing.
    next: Option<Instant>,
}

impl Pacer {
    /// Starts (or changes) pacing at `per_second` observations a second.
    /// A rate that is not a positive finite number is ignored: the server
    /// gave no usable hint, so the current pace stands.
    pub(crate) fn set_rate(&mut self, per_second: f64) {
        if !per_second.is_finite() || per_second <= 0.0 {
            return;
        }
        let rate = per_second.max(MIN_RATE);
        self.interval = Some(Duration::from_secs_f64(1.0 / rate));
    }

    /// Stops pacing.
    pub(crate) fn clear(&mut self) {
        self.interval = None;
        self.next = None;
    }

    /// The rate being enforced, if any.
    pub(crate) fn rate(&self) -> Option<f64> {
        self.interval.map(|i| 1.0 / i.as_secs_f64())
    }

    /// When the next send may go: `None` means now.
    pub(crate) fn ready_at(&self) -> Option<Instant> {
        self.interval.and(self.next)
    }

    /// Records a send at `now`.
    pub(crate) fn on_sent(&mut self, now: Instant) {
        let Some(interval) = self.interval else {
            return;
        };
        // Late timers must not lower the rate, but idle time must not build
        // up a burst either: credit at most one interval of lateness.
        let base = match self.next {
            Some(next) if next + interval > now => next,
            _ => now,
        };
        self.next = Some(base + interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpaced_sends_are_always_ready() {
        let mut p = Pacer::default();
        let now = Instant::now();
        p.on_sent(now);
        p.on_sent(now);
        assert_eq!(p.ready_at(), None);
        assert_eq!(p.rate(), None);
    }

    #[test]
    fn paced_sends_are_spaced_by_the_interval() {
        let mut p = Pacer::default();
        p.set_rate(10.0);
        let t0 = Instant::now();
        p.on_sent(t0);
        assert_eq!(p.ready_at(), Some(t0 + Duration::from_millis(100)));
        // Sending exactly on time keeps the grid.
        p.on_sent(t0 + Duration::from_millis(100));
        assert_eq!(p.ready_at(), Some(t0 + Duration::from_millis(200)));
    }

    #[test]
    fn a_late_send_is_credited_at_most_one_interval() {
        let mut p = Pacer::default();
        p.set_rate(10.0);
        let t0 = Instant::now();
        p.on_sent(t0);
        // 30 ms late: the next slot stays on the 100 ms grid.
        p.on_sent(t0 + Duration::from_millis(130));
        assert_eq!(p.ready_at(), Some(t0 + Duration::from_millis(200)));
        // Idle for a second: no burst of ten, the pace restarts from now.
        let t1 = t0 + Duration::from_millis(1200);
        p.on_sent(t1);
        assert_eq!(p.ready_at(), Some(t1 + Duration::from_millis(100)));
    }

    #[test]
    fn sends_over_a_second_match_the_rate() {
        let mut p = Pacer::default();
        p.set_rate(50.0);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = 0;
        while now < t0 + Duration::from_secs(1) {
            if p.ready_at().unwrap_or(now) <= now {
                p.on_sent(now);
                sent += 1;
            }
            now += Duration::from_millis(1);
        }
        assert!((49..=51).contains(&sent), "{sent}");
    }

    #[test]
    fn clear_stops_pacing_and_bad_rates_are_ignored() {
        let mut p = Pacer::default();
        p.set_rate(0.0);
        p.set_rate(f64::NAN);
        assert_eq!(p.rate(), None);
        p.set_rate(0.01);
        assert_eq!(p.rate(), Some(MIN_RATE));
        p.on_sent(Instant::now());
        p.clear();
        assert_eq!(p.ready_at(), None);
        assert_eq!(p.rate(), None);
    }
}
