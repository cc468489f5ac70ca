//! Where observations are admitted: the bound on accepted-but-not-yet-indexed
//! observations (the queue depth of SPEC 4) and the retry-after that a
//! rejected writer is told, computed from the measured drain rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Shortest and longest retry-after we suggest: below 50 ms clients would
/// spin; above 30 s they would give up on a server that is draining.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(50);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The drain rate is re-estimated at most this often.
const RATE_WINDOW: Duration = Duration::from_millis(500);

/// Counts observations between admission and indexing. The count is exact
/// under concurrency (one atomic); it never exceeds the capacity through
/// [`Admission::try_admit`], though recovery may start above it (every
/// replayed observation must be indexed, and none may be dropped).
pub struct Admission {
    depth: AtomicUsize,
    capacity: usize,
    drain: Mutex<DrainRate>,
}

struct DrainRate {
    window_start: Instant,
    drained_in_window: u64,
    /// Observations indexed per second, smoothed.
    per_second: f64,
}

impl Admission {
    pub fn new(capacity: usize) -> Self {
        Admission {
            depth: AtomicUsize::new(0),
            capacity,
            drain: Mutex::new(DrainRate {
                window_start: Instant::now(),
                drained_in_window: 0,
                per_second: 0.0,
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Accepted observations not yet indexed.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// Takes one place in the queue.
    ///
    /// # Errors
    /// [`Error::Overloaded`] with a retry-after when the queue is full.
    pub fn try_admit(&self) -> Result<()> {
        let mut cur = self.depth.load(Ordering::Acquire);
        loop {
            if cur >= self.capacity {
                return Err(Error::Overloaded {
                    depth: cur,
                    capacity: self.capacity,
                    retry_after: self.retry_after(cur),
                });
            }
            match self.depth.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Counts observations that entered without admission (WAL replay).
    pub fn force_admit(&self, n: usize) {
        self.depth.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives back places: `indexed` observations reached the index (they
    /// count towards the drain rate), `abandoned` never will (rejected at
    /// commit, forgotten, or their space deleted).
    pub fn release(&self, indexed: usize, abandoned: usize) {
        let n = indexed + abandoned;
        if n == 0 {
            return;
        }
        let prev = self.depth.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "admission depth underflow: {prev} - {n}");
        if indexed > 0 {
            let mut d = self.drain.lock();
            d.drained_in_window += indexed as u64;
            let elapsed = d.window_start.elapsed();
            if elapsed >= RATE_WINDOW {
                let rate = d.drained_in_window as f64 / elapsed.as_secs_f64();
                d.per_second = if d.per_second == 0.0 {
                    rate
                } else {
                    0.5 * d.per_second + 0.5 * rate
                };
                d.window_start = Instant::now();
                d.drained_in_window = 0;
            }
        }
    }

    /// Smoothed indexing rate in observations per second (0 before any).
    pub fn drain_rate(&self) -> f64 {
        self.drain.lock().per_second
    }

    /// How long until the queue has drained enough for one more admission
    /// plus a tenth of capacity of headroom, at the measured drain rate.
    pub fn retry_after(&self, depth: usize) -> Duration {
        let rate = self.drain_rate();
        if rate <= 0.0 {
            return Duration::from_secs(1);
        }
        let target = self.capacity - self.capacity / 10;
        let excess = depth.saturating_sub(target).max(1) as f64;
        Duration::from_secs_f64(excess / rate).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_at_capacity_with_retry_after() {
        let a = Admission::new(3);
        for _ in 0..3 {
            a.try_admit().unwrap();
        }
        match a.try_admit() {
            Err(Error::Overloaded {
                depth,
                capacity,
                retry_after,
            }) => {
                assert_eq!((depth, capacity), (3, 3));
                assert!(retry_after >= MIN_RETRY_AFTER);
            }
            other => panic!("expected overload, got {other:?}"),
        }
        a.release(1, 0);
        assert_eq!(a.depth(), 2);
        a.try_admit().unwrap();
    }

    #[test]
    fn concurrent_admission_never_exceeds_capacity() {
        let a = std::sync::Arc::new(Admission::new(1000));
        let admitted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let a = a.clone();
                    s.spawn(move || (0..600).filter(|_| a.try_admit().is_ok()).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1000);
        assert_eq!(a.depth(), 1000);
    }
}
