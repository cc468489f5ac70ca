//! Fault injection for tests and drills: kill indexing workers or the
//! session keeper, slow
//! indexing down, delay acceptance. Off unless `fault_injection` is set in
//! the engine configuration (the server's `admin.fault_injection`); the
//! engine then exposes [`Faults`] through `Engine::faults`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Faults to inject. Every method is cheap when nothing is armed.
#[derive(Default)]
pub struct Faults {
    /// Workers that panic at their next batch, as a bit set (workers < 64
    /// are addressable individually; `kill_any` arms the next batch of any).
    kill_mask: AtomicU64,
    kill_any: AtomicU64,
    index_delay_us: AtomicU64,
    accept_delay_us: AtomicU64,
    /// Panics the session keeper at its next sweep this many times.
    kill_keeper: AtomicU64,
    /// Panics the commit thread before its next commit.
    kill_commit: std::sync::atomic::AtomicBool,
    /// The next WAL sync fails (after the batch's records were written).
    fail_sync: std::sync::atomic::AtomicBool,
    /// Serialises arming so a test can count what it armed.
    armed: Mutex<u64>,
}

/// The message of an injected panic, so logs say it was on purpose.
pub const INJECTED_PANIC: &str = "injected fault: worker killed";

impl Faults {
    /// The worker panics at the start of its next batch (after taking it,
    /// so the batch must be indexed again by the restarted worker).
    pub fn kill_worker(&self, worker: usize) {
        *self.armed.lock() += 1;
        self.kill_mask
            .fetch_or(1u64 << (worker % 64), Ordering::AcqRel);
    }

    /// Whichever worker takes the next batch panics.
    pub fn kill_any_worker(&self) {
        *self.armed.lock() += 1;
        self.kill_any.fetch_add(1, Ordering::AcqRel);
    }

    /// Sleeps this long before indexing each observation (0 = off).
    pub fn set_index_delay(&self, delay: Duration) {
        self.index_delay_us
            .store(delay.as_micros() as u64, Ordering::Release);
    }

    /// Sleeps this long before each group commit (0 = off): acks slow down.
    pub fn set_accept_delay(&self, delay: Duration) {
        self.accept_delay_us
            .store(delay.as_micros() as u64, Ordering::Release);
    }

    /// The session keeper panics at its next sweep (it must restart).
    pub fn kill_session_keeper(&self) {
        self.kill_keeper.fetch_add(1, Ordering::AcqRel);
    }

    /// Kills armed so far.
    pub fn kills_armed(&self) -> u64 {
        *self.armed.lock()
    }

    /// Called by a worker after taking a batch; panics if it is armed.
    pub(crate) fn before_batch(&self, worker: usize) {
        let bit = 1u64 << (worker % 64);
        if self.kill_mask.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            panic!("{INJECTED_PANIC} ({worker})");
        }
        let took = self
            .kill_any
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if took.is_ok() {
            panic!("{INJECTED_PANIC} ({worker})");
        }
    }

    /// Called by the session keeper before each sweep.
    pub(crate) fn before_sweep(&self) {
        let took = self
            .kill_keeper
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if took.is_ok() {
            panic!("injected fault: session keeper killed");
        }
    }

    pub(crate) fn before_index(&self) {
        let us = self.index_delay_us.load(Ordering::Acquire);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
    }

    /// The commit thread panics before its next commit (a fatal failure:
    /// the engine fails stop).
    pub fn kill_commit_thread(&self) {
        self.kill_commit.store(true, Ordering::Release);
    }

    /// The next WAL fsync fails, after its batch's records were written.
    pub fn fail_next_sync(&self) {
        self.fail_sync.store(true, Ordering::Release);
    }

    pub(crate) fn take_sync_failure(&self) -> bool {
        self.fail_sync.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn before_commit(&self) {
        if self.kill_commit.swap(false, Ordering::AcqRel) {
            panic!("injected fault: commit thread killed");
        }
        let us = self.accept_delay_us.load(Ordering::Acquire);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
    }
}
