//! The indexing queue: observations accepted but not yet in the
//! HNSW index, per memory space, in three priority lanes, with the global
//! bound, the per-space share, the backpressure levels, admission with a
//! retry-after from the measured drain rate, and the hand-out of work to a
//! pool of indexing workers (a home worker per space, stealing when idle).
//!
//! It is generic over the space key `K` and the task `T` so that it can be
//! tested with plain integers; the engine instantiates it with its own types.
//!
//! Life of one observation:
//!
//! 1. [`IndexQueue::reserve`] — admission: takes one place or refuses with
//!    a retry-after. The place counts in the depth at once and is owned by
//!    the returned [`Reservation`].
//! 2. [`Reservation::push`] (after the WAL has it); dropping the
//!    reservation instead hands the place back (it was rejected later, e.g.
//!    invalid at commit), on whatever path it is dropped, so no error path
//!    can leak a place.
//! 3. [`IndexQueue::pop_batch`] — a worker takes a batch of one space; the
//!    tasks stay in the depth while they are "in flight".
//! 4. [`IndexQueue::complete`] — indexed (or obsolete): the places are freed;
//!    or [`IndexQueue::requeue_front`] when the worker died holding them.
//!
//! The depth is bounded by admission: a queue that is full refuses further
//! reservations ([`Rejected`], with a retry-after) and never grows past its
//! capacity through them; only WAL replay at recovery
//! ([`IndexQueue::push_unreserved`]) may start above it, because nothing that
//! was acknowledged may be dropped.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};

/// Default bound on accepted-but-not-yet-indexed observations.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// One space may use the whole queue unless configured otherwise: with a
/// single busy space (the common case) a smaller share would only waste room.
pub const DEFAULT_PER_SPACE_SHARE: f64 = 1.0;
/// Default adaptive mark: from 50% workers take larger batches.
pub const DEFAULT_ADAPTIVE_AT: f64 = 0.5;
/// ADAPTIVE ends only below 45%: without a band, every admission and
/// completion at exactly 50% would flip the level (and wake the session
/// keeper) twice.
pub const DEFAULT_ADAPTIVE_CLEAR_AT: f64 = 0.45;
/// Default SLOW_DOWN mark: from 80% writers are told to slow down.
pub const DEFAULT_SLOW_DOWN_AT: f64 = 0.8;
/// SLOW_DOWN ends only below 70%, so that a depth hovering around 80% does
/// not toggle writers between slow and fast on every observation.
pub const DEFAULT_SLOW_DOWN_CLEAR_AT: f64 = 0.7;
/// Default overload mark: from 90% NORMAL and LOW observations are rejected; HIGH may use
/// the last 10%.
pub const DEFAULT_REJECT_AT: f64 = 0.9;
/// OVERLOADED (and the rejection of NORMAL and LOW observations) ends only
/// below 85%, so that writers retrying at the 90% mark do not flip the
/// level, and every stream's status, on each admission and completion.
pub const DEFAULT_REJECT_CLEAR_AT: f64 = 0.85;

/// Shortest and longest retry-after we suggest: below 50 ms clients would
/// spin; above 30 s they would give up on a server that is draining.
pub const MIN_RETRY_AFTER: Duration = Duration::from_millis(50);
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Retry-after while no drain rate has been measured yet (first second).
pub const UNKNOWN_RATE_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How much of the first window must have passed before its count is
/// used as a provisional drain rate.
const PROVISIONAL_AFTER: Duration = Duration::from_millis(100);
/// Length of one drain-rate measurement window.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Weight of the newest window in the smoothed drain rate: half keeps the
/// estimate responsive within a few seconds without following every blip.
const RATE_SMOOTHING: f64 = 0.5;
/// Writers following [`IndexQueue::suggested_rate`] send 90% of what the
/// workers drain, so the queue shrinks by a tenth of the drain rate per
/// second until it is below the SLOW_DOWN threshold.
const SUGGESTED_RATE_FACTOR: f64 = 0.9;
/// Level changes a subscriber may leave unread before it is dropped (its
/// receiver then reports disconnection): bounds the memory a stuck reader
/// can hold; a live reader is never that far behind, since levels change only
/// when the depth crosses a threshold.
pub const SUBSCRIBER_BACKLOG: usize = 1024;

/// Priority lane of an observation. Workers take HIGH first, then NORMAL,
/// then LOW, FIFO within a lane; HIGH may also use the last part of the
/// capacity that admission refuses to the others.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    /// All lanes in dequeue order.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Index of the lane: High = 0, Normal = 1, Low = 2.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Backpressure level, from the queue depth against capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Small batches, low latency.
    Normal,
    /// Larger batches for throughput.
    Adaptive,
    /// Writing sessions are asked to slow down to a suggested rate.
    SlowDown,
    /// New NORMAL and LOW observations are rejected with a retry-after.
    Overloaded,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Normal,
        Level::Adaptive,
        Level::SlowDown,
        Level::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Adaptive => "adaptive",
            Level::SlowDown => "slow_down",
            Level::Overloaded => "overloaded",
        }
    }
}

/// Configuration of the indexing queue. Fractions are of `capacity`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most observations accepted but not yet indexed, all spaces together.
    pub capacity: usize,
    /// Fraction of `capacity` one space may hold, in (0, 1].
    pub per_space_share: f64,
    /// Level ADAPTIVE from here.
    pub adaptive_at: f64,
    /// ADAPTIVE ends only below this (hysteresis).
    pub adaptive_clear_at: f64,
    /// Level SLOW_DOWN from here.
    pub slow_down_at: f64,
    /// SLOW_DOWN ends only below this (hysteresis).
    pub slow_down_clear_at: f64,
    /// Level OVERLOADED from here: NORMAL and LOW are rejected; HIGH may
    /// use up to the full capacity.
    pub reject_at: f64,
    /// OVERLOADED, and with it the rejection of NORMAL and LOW
    /// observations, ends only below this (hysteresis).
    pub reject_clear_at: f64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: DEFAULT_CAPACITY,
            per_space_share: DEFAULT_PER_SPACE_SHARE,
            adaptive_at: DEFAULT_ADAPTIVE_AT,
            adaptive_clear_at: DEFAULT_ADAPTIVE_CLEAR_AT,
            slow_down_at: DEFAULT_SLOW_DOWN_AT,
            slow_down_clear_at: DEFAULT_SLOW_DOWN_CLEAR_AT,
            reject_at: DEFAULT_REJECT_AT,
            reject_clear_at: DEFAULT_REJECT_CLEAR_AT,
        }
    }
}

/// A [`QueueConfig`] that cannot work; the message says which field and why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid indexing queue configuration: {0}")]
pub struct InvalidQueueConfig(String);

impl QueueConfig {
    /// # Errors
    /// [`InvalidQueueConfig`] when the capacity is 0, the share is not in
    /// (0, 1], or the thresholds are not
    /// `0 < adaptive_at <= slow_down_at <= reject_at <= 1`, each `*_clear_at`
    /// in (0, 1] and at most its level's mark.
    pub fn validate(&self) -> Result<(), InvalidQueueConfig> {
        let bad = |msg: String| Err(InvalidQueueConfig(msg));
        if self.capacity == 0 {
            return bad("capacity must be at least 1, got 0".into());
        }
        // Written so that NaN is refused too.
        let in_unit = |x: f64| x > 0.0 && x <= 1.0;
        for (name, value) in [
            ("per_space_share", self.per_space_share),
            ("adaptive_at", self.adaptive_at),
            ("adaptive_clear_at", self.adaptive_clear_at),
            ("slow_down_at", self.slow_down_at),
            ("slow_down_clear_at", self.slow_down_clear_at),
            ("reject_at", self.reject_at),
            ("reject_clear_at", self.reject_clear_at),
        ] {
            if !in_unit(value) {
                return bad(format!("{name} must be in (0, 1], got {value}"));
            }
        }
        if !(self.adaptive_at <= self.slow_down_at && self.slow_down_at <= self.reject_at) {
            return bad(format!(
                "thresholds must satisfy adaptive_at <= slow_down_at <= reject_at, \
                 got {} / {} / {}",
                self.adaptive_at, self.slow_down_at, self.reject_at
            ));
        }
        for (clear, clear_value, mark, mark_value) in [
            (
                "adaptive_clear_at",
                self.adaptive_clear_at,
                "adaptive_at",
                self.adaptive_at,
            ),
            (
                "slow_down_clear_at",
                self.slow_down_clear_at,
                "slow_down_at",
                self.slow_down_at,
            ),
            (
                "reject_clear_at",
                self.reject_clear_at,
                "reject_at",
                self.reject_at,
            ),
        ] {
            if clear_value > mark_value {
                return bad(format!(
                    "{clear} ({clear_value}) must not exceed {mark} ({mark_value})"
                ));
            }
        }
        Ok(())
    }
}

/// One place in the queue, taken by [`IndexQueue::reserve`]: turned into a
/// task by [`push`](Self::push), or handed back when dropped unpushed.
#[must_use = "a reservation dropped unpushed gives its place back"]
pub struct Reservation<K: Clone + Eq + Hash + Send, T: Send> {
    queue: Arc<IndexQueue<K, T>>,
    space: K,
    priority: Priority,
    live: bool,
}

impl<K: Clone + Eq + Hash + Send, T: Send> Reservation<K, T> {
    /// The lane the place was taken in.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Queues `task` in the reserved place and wakes a worker.
    pub fn push(mut self, task: T) {
        self.live = false;
        self.queue.push(&self.space, self.priority, task);
    }
}

impl<K: Clone + Eq + Hash + Send, T: Send> Drop for Reservation<K, T> {
    fn drop(&mut self) {
        if self.live {
            self.queue.cancel(&self.space, self.priority);
        }
    }
}

impl<K: Clone + Eq + Hash + Send, T: Send> std::fmt::Debug for Reservation<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("priority", &self.priority)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

/// Why a reservation was refused: the queue (or the space's share of it) is
/// full. `retry_after` is when the measured drain rate should have made room.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "indexing queue full: {depth} of {capacity} places taken ({space_depth} of {space_limit} \
     for this space); retry after {retry_after:?}"
)]
pub struct Rejected {
    pub depth: usize,
    pub capacity: usize,
    pub space_depth: usize,
    pub space_limit: usize,
    pub retry_after: Duration,
}

impl Rejected {
    /// Whether the space's own share (rather than the whole queue) was full.
    pub fn by_space_share(&self) -> bool {
        self.space_depth >= self.space_limit
    }
}

/// A change of backpressure level, sent to subscribers.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelChange {
    pub level: Level,
    pub depth: usize,
    pub capacity: usize,
    pub pressure: f64,
    /// [`IndexQueue::suggested_rate`] at the time of the change.
    pub suggested_rate: f64,
}

/// Tasks of one space handed to one worker.
#[derive(Debug)]
pub struct Batch<K, T> {
    pub space: K,
    /// High lane first, then Normal, then Low; FIFO within each.
    pub tasks: Vec<(Priority, T)>,
    /// Taken by a worker other than the space's home worker.
    pub stolen: bool,
}

/// The indexing queue. Share it behind an `Arc`; all methods take `&self`.
///
/// Bounded: [`try_reserve`](Self::try_reserve) refuses once the depth
/// (reserved + queued + in flight) reaches the threshold for the priority,
/// or the space's share, and tells the writer when to retry. Nothing is
/// ever dropped: a full queue refuses new work, it does not shed old work.
pub struct IndexQueue<K, T> {
    config: QueueConfig,
    thresholds: Thresholds,
    workers: usize,
    /// One lock for all lanes of all spaces. It is held for O(1) work per
    /// reservation and push, and for one whole batch per pop, so workers take
    /// it once per batch, not once per task; a sharded design would need a
    /// second structure to find work to steal, and the global depth and level
    /// must be updated atomically with the lanes anyway.
    state: Mutex<State<K, T>>,
    /// One condition variable per worker (all used with `state`), so that a
    /// push can wake the space's home worker rather than any idle one.
    ready: Vec<Condvar>,
    /// Mirrors of values kept under `state`, so that metrics and hot-path
    /// readers (depth, level) need no lock.
    depth: AtomicUsize,
    level: AtomicU8,
    slow_down_activations: AtomicU64,
}

/// Depths at which the levels start, precomputed from the fractions: the
/// indexing queue's, and (with the same fractions over another capacity)
/// a cluster node's writes waiting for the log.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    adaptive: usize,
    adaptive_clear: usize,
    slow_down: usize,
    slow_down_clear: usize,
    reject: usize,
    reject_clear: usize,
    space_limit: usize,
}

impl Thresholds {
    pub fn new(c: &QueueConfig) -> Self {
        Thresholds {
            adaptive: ceil_of(c.adaptive_at, c.capacity),
            adaptive_clear: ceil_of(c.adaptive_clear_at, c.capacity),
            slow_down: ceil_of(c.slow_down_at, c.capacity),
            slow_down_clear: ceil_of(c.slow_down_clear_at, c.capacity),
            reject: ceil_of(c.reject_at, c.capacity),
            reject_clear: ceil_of(c.reject_clear_at, c.capacity),
            space_limit: floor_of(c.per_space_share, c.capacity).max(1),
        }
    }

    /// The level for `depth`, coming from `prev`. Each level is entered at
    /// its mark and left only below its clear mark (hysteresis), also when
    /// falling from a higher one: from OVERLOADED at 70% the level is
    /// SLOW_DOWN, not ADAPTIVE.
    pub fn level(&self, prev: Level, depth: usize) -> Level {
        let holds = |level: Level, clear: usize| prev >= level && depth >= clear;
        if depth >= self.reject || (prev == Level::Overloaded && depth >= self.reject_clear) {
            Level::Overloaded
        } else if depth >= self.slow_down || holds(Level::SlowDown, self.slow_down_clear) {
            Level::SlowDown
        } else if depth >= self.adaptive || holds(Level::Adaptive, self.adaptive_clear) {
            Level::Adaptive
        } else {
            Level::Normal
        }
    }
}

/// `frac * n` as f64, snapped to the nearest integer when it is one up to
/// rounding error (0.7 * 100 must give 70, not 70.000000000000001).
fn scaled(frac: f64, n: usize) -> f64 {
    let x = frac * n as f64;
    let r = x.round();
    if (x - r).abs() <= 1e-9 * r.max(1.0) {
        r
    } else {
        x
    }
}

/// Smallest integer depth that is `>= frac * n`.
fn ceil_of(frac: f64, n: usize) -> usize {
    (scaled(frac, n).ceil() as usize).min(n)
}

fn floor_of(frac: f64, n: usize) -> usize {
    (scaled(frac, n).floor() as usize).min(n)
}

struct State<K, T> {
    spaces: HashMap<K, SpaceLanes<T>>,
    /// Per worker, its home spaces that have queued tasks, in rotation order.
    /// Invariant: a space is listed here iff it has queued tasks.
    home_ready: Vec<VecDeque<K>>,
    /// Per worker, whether it is waiting in `pop_batch` and not yet notified.
    waiting: Vec<bool>,
    n_waiting: usize,
    closed: bool,
    /// Depth per priority, all spaces.
    by_priority: [usize; 3],
    queued: usize,
    level: Level,
    subscribers: Vec<Sender<LevelChange>>,
    /// Doorbells rung on every level change (see [`IndexQueue::level_bell`]).
    bells: Vec<Sender<()>>,
    drain: DrainMeter,
}

impl<K, T> State<K, T> {
    fn depth(&self) -> usize {
        self.by_priority.iter().sum()
    }
}

impl<K: Clone + Eq + Hash, T> State<K, T> {
    /// Up to `max` queued tasks of one space for `worker`: see
    /// [`IndexQueue::pop_batch`].
    fn take_batch(&mut self, worker: usize, max: usize) -> Option<Batch<K, T>> {
        let State {
            spaces,
            home_ready,
            queued,
            ..
        } = self;
        // Home spaces in rotation: the one served goes to the back.
        while let Some(key) = home_ready[worker].pop_front() {
            let Some(entry) = spaces.get_mut(&key) else {
                debug_assert!(false, "listed space has no entry");
                continue;
            };
            let tasks = entry.take(max);
            if tasks.is_empty() {
                debug_assert!(false, "listed space has no queued task");
                continue;
            }
            if entry.queued() > 0 {
                home_ready[worker].push_back(key.clone());
            }
            *queued -= tasks.len();
            return Some(Batch {
                space: key,
                tasks,
                stolen: false,
            });
        }
        // Nothing at home: steal from the fullest space. A scan of the active
        // spaces, done only by an idle worker, which has time for it.
        let (key, entry) = spaces
            .iter_mut()
            .filter(|(_, e)| e.queued() > 0)
            .max_by_key(|(_, e)| e.queued())?;
        let tasks = entry.take(max);
        if entry.queued() == 0 {
            let home = &mut home_ready[entry.home];
            if let Some(i) = home.iter().position(|k| k == key) {
                home.remove(i);
            }
        }
        *queued -= tasks.len();
        Some(Batch {
            space: key.clone(),
            tasks,
            stolen: entry.home != worker,
        })
    }
}

/// One space's share of the queue. Removed from the map when its depth is 0.
struct SpaceLanes<T> {
    home: usize,
    lanes: [VecDeque<T>; 3],
    reserved: [usize; 3],
    in_flight: [usize; 3],
}

impl<T> SpaceLanes<T> {
    fn new(home: usize) -> Self {
        SpaceLanes {
            home,
            lanes: Default::default(),
            reserved: [0; 3],
            in_flight: [0; 3],
        }
    }

    fn queued(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    fn depth(&self) -> usize {
        self.queued() + self.reserved.iter().sum::<usize>() + self.in_flight.iter().sum::<usize>()
    }

    /// Up to `max` queued tasks, High lane first, FIFO; they become in flight.
    fn take(&mut self, max: usize) -> Vec<(Priority, T)> {
        let mut tasks = Vec::with_capacity(max.min(self.queued()));
        for p in Priority::ALL {
            let lane = &mut self.lanes[p.index()];
            let n = lane.len().min(max - tasks.len());
            tasks.extend(lane.drain(..n).map(|t| (p, t)));
            self.in_flight[p.index()] += n;
        }
        tasks
    }
}

/// Indexed tasks per second, measured over windows of about [`RATE_WINDOW`]
/// and smoothed across windows.
#[derive(Debug)]
struct DrainMeter {
    window_start: Instant,
    in_window: u64,
    rate: Option<f64>,
}

impl DrainMeter {
    fn new(now: Instant) -> Self {
        DrainMeter {
            window_start: now,
            in_window: 0,
            rate: None,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < RATE_WINDOW {
            return;
        }
        let current = self.in_window as f64 / elapsed.as_secs_f64();
        self.rate = Some(match self.rate {
            None => current,
            Some(r) => RATE_SMOOTHING * current + (1.0 - RATE_SMOOTHING) * r,
        });
        self.window_start = now;
        self.in_window = 0;
    }

    fn record(&mut self, now: Instant, indexed: usize) {
        self.roll(now);
        self.in_window += indexed as u64;
    }

    /// The smoothed rate; while no closed window has seen work (none has
    /// closed yet, or every one closed idle, e.g. while indexing was
    /// paused), a provisional one from the open window once it spans
    /// [`PROVISIONAL_AFTER`] and has seen work, so the first SLOW_DOWN
    /// after idle time already carries a rate; otherwise the smoothed rate
    /// (0 after idle windows only) or None.
    fn rate(&mut self, now: Instant) -> Option<f64> {
        self.roll(now);
        let provisional = || {
            let elapsed = now.saturating_duration_since(self.window_start);
            (elapsed >= PROVISIONAL_AFTER && self.in_window > 0)
                .then(|| self.in_window as f64 / elapsed.as_secs_f64())
        };
        match self.rate {
            Some(r) if r > 0.0 => Some(r),
            known => provisional().or(known),
        }
    }
}

/// How much a retry-after is spread: each rejection's wait is the drain
/// time times a factor drawn uniformly from `1 ± RETRY_SPREAD`, so that the
/// writers rejected in one burst come back over a window instead of at once.
pub const RETRY_SPREAD: f64 = 0.5;

/// Time for `excess` tasks to drain at `rate`, times `spread` (a factor
/// around 1), clamped to [[`MIN_RETRY_AFTER`], [`MAX_RETRY_AFTER`]];
/// [`UNKNOWN_RATE_RETRY_AFTER`] (times `spread`) when no rate is known.
fn retry_after_for(excess: usize, rate: Option<f64>, spread: f64) -> Duration {
    let spread = if spread.is_finite() && spread > 0.0 {
        spread
    } else {
        1.0
    };
    let secs = match rate {
        None => UNKNOWN_RATE_RETRY_AFTER.as_secs_f64() * spread,
        Some(r) if r > 0.0 => excess as f64 / r * spread,
        // Measured, but nothing drains: the longest wait we suggest.
        Some(_) if excess > 0 => MAX_RETRY_AFTER.as_secs_f64(),
        Some(_) => 0.0,
    };
    Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64()))
        .clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
}

/// A spread factor for one rejection, uniform in `1 ± RETRY_SPREAD`.
fn retry_spread() -> f64 {
    use rand::Rng;
    rand::thread_rng().gen_range((1.0 - RETRY_SPREAD)..=(1.0 + RETRY_SPREAD))
}

/// A caller broke the reserve → push or cancel → pop → complete or requeue
/// protocol: a bug. It fails tests (debug assertions); in production it is
/// logged and the counts are kept consistent, rather than panicking an
/// indexing worker over bookkeeping.
#[track_caller]
fn misuse(what: &str) {
    debug_assert!(false, "indexing queue misuse: {what}");
    tracing::error!("indexing queue misuse: {what}");
}

fn level_from_u8(v: u8) -> Level {
    Level::ALL[usize::from(v)]
}

impl<K, T> IndexQueue<K, T>
where
    K: Clone + Eq + Hash + Send,
    T: Send,
{
    /// A queue served by `workers` indexing workers (at least one), numbered
    /// `0..workers` in [`pop_batch`](Self::pop_batch).
    ///
    /// # Panics
    /// When `config` is invalid (see [`QueueConfig::validate`]); validate it
    /// where it is loaded to report the error properly.
    pub fn new(config: QueueConfig, workers: usize) -> Self {
        if let Err(e) = config.validate() {
            panic!("{e}");
        }
        let workers = workers.max(1);
        let thresholds = Thresholds::new(&config);
        IndexQueue {
            config,
            thresholds,
            workers,
            state: Mutex::new(State {
                spaces: HashMap::new(),
                home_ready: (0..workers).map(|_| VecDeque::new()).collect(),
                waiting: vec![false; workers],
                n_waiting: 0,
                closed: false,
                by_priority: [0; 3],
                queued: 0,
                level: Level::Normal,
                subscribers: Vec::new(),
                bells: Vec::new(),
                drain: DrainMeter::new(Instant::now()),
            }),
            ready: (0..workers).map(|_| Condvar::new()).collect(),
            depth: AtomicUsize::new(0),
            level: AtomicU8::new(Level::Normal as u8),
            slow_down_activations: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Number of workers the queue distributes to.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The worker that prefers `space`: a hash of the key modulo the number
    /// of workers (stable for the life of the process).
    pub fn home_worker(&self, space: &K) -> usize {
        let mut h = DefaultHasher::new();
        space.hash(&mut h);
        (h.finish() % self.workers as u64) as usize
    }

    /// Most places one space may hold: `max(1, floor(per_space_share * capacity))`.
    pub fn space_limit(&self) -> usize {
        self.thresholds.space_limit
    }

    /// Admission: reserves one place for an observation of `space` at
    /// `priority`. The place counts in the depth at once, so concurrent
    /// admissions never overshoot; give it back with [`cancel`](Self::cancel)
    /// or turn it into a task with [`push`](Self::push).
    ///
    /// # Errors
    /// [`Rejected`] when the priority is HIGH and the depth has reached the
    /// capacity, NORMAL or LOW and the level is OVERLOADED (from
    /// `reject_at * capacity` until the depth is below
    /// `reject_clear_at * capacity`), or
    /// the space holds its whole share; with the time the measured drain rate
    /// needs to make room.
    pub(crate) fn try_reserve(&self, space: &K, priority: Priority) -> Result<(), Rejected> {
        let mut st = self.state.lock();
        let depth = st.depth();
        let full = match priority {
            Priority::High => depth >= self.config.capacity,
            // OVERLOADED holds down to its clear mark: writers retrying at
            // the 90% mark are refused until the queue has real room.
            Priority::Normal | Priority::Low => {
                depth >= self.thresholds.reject || st.level == Level::Overloaded
            }
        };
        let space_limit = self.thresholds.space_limit;
        let space_depth = st.spaces.get(space).map_or(0, SpaceLanes::depth);
        if full || space_depth >= space_limit {
            let rate = st.drain.rate(Instant::now());
            return Err(Rejected {
                depth,
                capacity: self.config.capacity,
                space_depth,
                space_limit,
                retry_after: retry_after_for(
                    self.backlog_to_clear(depth, space_depth),
                    rate,
                    retry_spread(),
                ),
            });
        }
        let entry = match st.spaces.get_mut(space) {
            Some(e) => e,
            None => {
                let home = self.home_worker(space);
                st.spaces
                    .entry(space.clone())
                    .or_insert(SpaceLanes::new(home))
            }
        };
        entry.reserved[priority.index()] += 1;
        st.by_priority[priority.index()] += 1;
        self.depth_changed(&mut st);
        Ok(())
    }

    /// Admission as an owned place: see [`try_reserve`](Self::try_reserve).
    /// The [`Reservation`] is pushed as a task, or gives the place back when
    /// dropped.
    ///
    /// # Errors
    /// [`Rejected`], as for `try_reserve`.
    pub fn reserve(
        self: &Arc<Self>,
        space: &K,
        priority: Priority,
    ) -> Result<Reservation<K, T>, Rejected> {
        self.try_reserve(space, priority)?;
        Ok(Reservation {
            queue: self.clone(),
            space: space.clone(),
            priority,
            live: true,
        })
    }

    /// Gives back a reservation that will not be pushed (the observation was
    /// rejected after admission).
    pub(crate) fn cancel(&self, space: &K, priority: Priority) {
        let mut st = self.state.lock();
        let p = priority.index();
        match st.spaces.get_mut(space) {
            Some(entry) if entry.reserved[p] > 0 => {
                entry.reserved[p] -= 1;
                if entry.depth() == 0 {
                    st.spaces.remove(space);
                }
            }
            _ => return misuse("cancel without a reservation"),
        }
        st.by_priority[p] -= 1;
        self.depth_changed(&mut st);
    }

    /// Turns a reservation into a queued task at the end of its lane and
    /// wakes a worker (the space's home worker if it is waiting).
    pub(crate) fn push(&self, space: &K, priority: Priority, task: T) {
        self.enqueue(space, priority, task, true);
    }

    /// Queues a task that was never reserved: WAL replay at recovery, where
    /// nothing may be dropped, so this may take the depth past the capacity
    /// (admission then refuses everything until it has drained).
    pub fn push_unreserved(&self, space: &K, priority: Priority, task: T) {
        self.enqueue(space, priority, task, false);
    }

    fn enqueue(&self, space: &K, priority: Priority, task: T, reserved: bool) {
        let mut st = self.state.lock();
        let p = priority.index();
        let State {
            spaces, home_ready, ..
        } = &mut *st;
        let entry = match spaces.get_mut(space) {
            Some(e) => e,
            None => spaces
                .entry(space.clone())
                .or_insert(SpaceLanes::new(self.home_worker(space))),
        };
        let mut added = !reserved;
        if reserved {
            if entry.reserved[p] > 0 {
                entry.reserved[p] -= 1;
            } else {
                misuse("push without a reservation");
                added = true;
            }
        }
        let was_idle = entry.queued() == 0;
        entry.lanes[p].push_back(task);
        let home = entry.home;
        if was_idle {
            home_ready[home].push_back(space.clone());
        }
        st.queued += 1;
        if added {
            st.by_priority[p] += 1;
            self.depth_changed(&mut st);
        }
        self.wake(&mut st, home);
    }

    /// For worker `worker` (in `0..workers`): waits up to `timeout` for work
    /// and takes up to `max` (at least 1) queued tasks of ONE space: from its
    /// home spaces first, in rotation, else it steals from the space with the
    /// most queued tasks. Within the space: High lane, then Normal, then Low,
    /// FIFO each. The tasks stay in the depth until
    /// [`complete`](Self::complete) or [`requeue_front`](Self::requeue_front).
    ///
    /// Returns `None` on timeout, and always once the queue is closed. One
    /// thread per worker index at a time.
    ///
    /// # Panics
    /// When `worker >= workers`.
    pub fn pop_batch(&self, worker: usize, max: usize, timeout: Duration) -> Option<Batch<K, T>> {
        assert!(
            worker < self.workers,
            "worker {worker} out of range: the queue has {} workers",
            self.workers
        );
        let max = max.max(1);
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.state.lock();
        loop {
            if st.closed {
                return None;
            }
            if let Some(batch) = st.take_batch(worker, max) {
                return Some(batch);
            }
            if timeout.is_zero() {
                return None;
            }
            if !st.waiting[worker] {
                st.waiting[worker] = true;
                st.n_waiting += 1;
            }
            let timed_out = match deadline {
                Some(d) => self.ready[worker].wait_until(&mut st, d).timed_out(),
                None => {
                    self.ready[worker].wait(&mut st);
                    false
                }
            };
            if st.waiting[worker] {
                st.waiting[worker] = false;
                st.n_waiting -= 1;
            }
            if timed_out {
                return if st.closed {
                    None
                } else {
                    st.take_batch(worker, max)
                };
            }
        }
    }

    /// A worker finished a batch of `batch_space` whose tasks had these
    /// `priorities` (indexed, or found obsolete): their places are freed.
    /// Only `indexed` of them count towards the drain rate.
    pub fn complete(&self, batch_space: &K, priorities: &[Priority], indexed: usize) {
        debug_assert!(indexed <= priorities.len(), "more indexed than completed");
        let mut st = self.state.lock();
        let mut freed = [0usize; 3];
        if let Some(entry) = st.spaces.get_mut(batch_space) {
            for p in priorities {
                let i = p.index();
                if entry.in_flight[i] > 0 {
                    entry.in_flight[i] -= 1;
                    freed[i] += 1;
                }
            }
            if entry.depth() == 0 {
                st.spaces.remove(batch_space);
            }
        }
        let n_freed: usize = freed.iter().sum();
        if n_freed != priorities.len() {
            misuse("complete of tasks that are not in flight");
        }
        for (d, f) in st.by_priority.iter_mut().zip(freed) {
            *d -= f;
        }
        st.drain.record(Instant::now(), indexed);
        self.depth_changed(&mut st);
    }

    /// A worker died holding these tasks of `space` (as popped): they go
    /// back to the FRONT of their lanes in their original order, still
    /// counted in the depth, and a worker is woken.
    pub fn requeue_front(&self, space: &K, tasks: Vec<(Priority, T)>) {
        if tasks.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        let n = tasks.len();
        let State {
            spaces, home_ready, ..
        } = &mut *st;
        let entry = match spaces.get_mut(space) {
            Some(e) => e,
            None => spaces
                .entry(space.clone())
                .or_insert(SpaceLanes::new(self.home_worker(space))),
        };
        let was_idle = entry.queued() == 0;
        let mut added = [0usize; 3];
        // Pushing to the front in reverse keeps each lane's original order.
        for (p, task) in tasks.into_iter().rev() {
            let i = p.index();
            if entry.in_flight[i] > 0 {
                entry.in_flight[i] -= 1;
            } else {
                added[i] += 1;
            }
            entry.lanes[i].push_front(task);
        }
        let home = entry.home;
        if was_idle {
            // A requeued batch has waited longest: serve it next.
            home_ready[home].push_front(space.clone());
        }
        st.queued += n;
        if added != [0; 3] {
            misuse("requeue of tasks that are not in flight");
            for (d, a) in st.by_priority.iter_mut().zip(added) {
                *d += a;
            }
            self.depth_changed(&mut st);
        }
        self.wake(&mut st, home);
    }

    /// Stops the hand-out of work: wakes every waiting worker, and
    /// [`pop_batch`](Self::pop_batch) returns `None` from now on. Pushes are
    /// still accepted and counted (what is queued is persisted by the WAL).
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.waiting.iter_mut().for_each(|w| *w = false);
        st.n_waiting = 0;
        for cv in &self.ready {
            cv.notify_all();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Reserved + queued + in flight, all spaces.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// Reserved + queued + in flight of one space.
    pub fn space_depth(&self, space: &K) -> usize {
        self.state
            .lock()
            .spaces
            .get(space)
            .map_or(0, SpaceLanes::depth)
    }

    /// Depth of every space with work, per priority (reserved + queued +
    /// in flight), for metrics. One lock, one pass.
    pub fn depths(&self) -> Vec<(K, [usize; 3])> {
        let st = self.state.lock();
        st.spaces
            .iter()
            .map(|(k, e)| {
                let mut d = [0; 3];
                for (i, slot) in d.iter_mut().enumerate() {
                    *slot = e.lanes[i].len() + e.reserved[i] + e.in_flight[i];
                }
                (k.clone(), d)
            })
            .collect()
    }

    /// Depth per priority, indexed by [`Priority::index`].
    pub fn depth_by_priority(&self) -> [usize; 3] {
        self.state.lock().by_priority
    }

    /// Tasks waiting for a worker (not reserved, not in flight).
    pub fn queued(&self) -> usize {
        self.state.lock().queued
    }

    /// Spaces with a non-zero depth.
    pub fn active_spaces(&self) -> usize {
        self.state.lock().spaces.len()
    }

    /// Workers waiting in [`pop_batch`](Self::pop_batch) for work.
    pub fn idle_workers(&self) -> usize {
        self.state.lock().n_waiting
    }

    pub fn capacity(&self) -> usize {
        self.config.capacity
    }

    /// Depth / capacity (may exceed 1 after recovery).
    pub fn pressure(&self) -> f64 {
        self.depth() as f64 / self.config.capacity as f64
    }

    pub fn level(&self) -> Level {
        level_from_u8(self.level.load(Ordering::Acquire))
    }

    /// Indexed tasks per second, smoothed over ~1 s windows; 0 until the
    /// first window has closed.
    pub fn drain_rate(&self) -> f64 {
        self.state.lock().drain.rate(Instant::now()).unwrap_or(0.0)
    }

    /// Total rate (tasks per second, all writers) that keeps the queue
    /// shrinking towards the SLOW_DOWN threshold:
    /// `0.9 * drain_rate()`. 0 while no rate is known yet, which writers
    /// should read as "no advice".
    pub fn suggested_rate(&self) -> f64 {
        SUGGESTED_RATE_FACTOR * self.drain_rate()
    }

    /// What a writer rejected now is told to wait: the time to drain the
    /// backlog above the SLOW_DOWN clear mark at the measured rate (see
    /// [`Self::try_reserve`]), spread by a random factor in
    /// `1 ± RETRY_SPREAD`, clamped to [50 ms, 30 s] (50 ms when already
    /// below); 1 s (spread) while no rate is known.
    pub fn retry_after(&self) -> Duration {
        let mut st = self.state.lock();
        let excess = self.backlog_to_clear(st.depth(), 0);
        let rate = st.drain.rate(Instant::now());
        retry_after_for(excess, rate, retry_spread())
    }

    /// The tasks that must drain before a rejected writer should come back:
    /// everything above the SLOW_DOWN clear mark (where streams are told
    /// they may speed up again), or above the same fraction of the space's
    /// share when that is what is full. Waiting only for the next free
    /// place (one task) would send every rejected writer back at once, to
    /// be rejected again.
    fn backlog_to_clear(&self, depth: usize, space_depth: usize) -> usize {
        let t = &self.thresholds;
        let global = (depth + 1).saturating_sub(t.slow_down_clear);
        let space_mark = (t.space_limit as f64 * self.config.slow_down_clear_at
            / self.config.reject_at)
            .floor() as usize;
        let space = if space_depth >= t.space_limit {
            (space_depth + 1).saturating_sub(space_mark)
        } else {
            0
        };
        global.max(space)
    }

    /// Batch size for workers: `min_batch` below `adaptive_at` (latency
    /// first); from `adaptive_at` to full capacity growing linearly to
    /// `max_batch` (throughput first):
    /// `min + round((max - min) * (pressure - adaptive_at) / (1 - adaptive_at))`,
    /// capped at `max_batch`.
    pub fn batch_size(&self, min_batch: usize, max_batch: usize) -> usize {
        // Never more than a worker's fair share of a small queue, so one
        // batch cannot swallow the whole backlog while the others idle.
        let fair = (self.config.capacity / (2 * self.workers().max(1))).max(1);
        let max_batch = max_batch.min(fair).max(min_batch);
        let pressure = self.pressure();
        let a = self.config.adaptive_at;
        if pressure < a {
            return min_batch;
        }
        let t = if a >= 1.0 {
            1.0
        } else {
            ((pressure - a) / (1.0 - a)).clamp(0.0, 1.0)
        };
        min_batch + ((max_batch - min_batch) as f64 * t).round() as usize
    }

    /// A receiver of every level change from now on, each sent once.
    /// A receiver that is dropped, or falls [`SUBSCRIBER_BACKLOG`] changes
    /// behind, is unsubscribed (its channel then reports disconnection).
    pub fn subscribe(&self) -> Receiver<LevelChange> {
        let (tx, rx) = crossbeam_channel::bounded(SUBSCRIBER_BACKLOG);
        self.state.lock().subscribers.push(tx);
        rx
    }

    /// A doorbell rung whenever the level changes. Unlike
    /// [`subscribe`](Self::subscribe) it never falls behind and is never
    /// dropped: rings that come while one is pending merge into it, and the
    /// reader then acts on the *latest* level ([`current_level`]
    /// (Self::current_level)). For readers that must not stop, however
    /// long they are held up.
    pub fn level_bell(&self) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.state.lock().bells.push(tx);
        rx
    }

    /// The level now, as a change report (depth, pressure, suggested rate).
    pub fn current_level(&self) -> LevelChange {
        let mut st = self.state.lock();
        let depth = st.depth();
        let rate = st.drain.rate(Instant::now()).unwrap_or(0.0);
        LevelChange {
            level: st.level,
            depth,
            capacity: self.config.capacity,
            pressure: depth as f64 / self.config.capacity as f64,
            suggested_rate: SUGGESTED_RATE_FACTOR * rate,
        }
    }

    /// How often the level went from below SLOW_DOWN to SLOW_DOWN or above
    /// (the `backpressure_activations` metric). The level is global, so
    /// there is no per-space count.
    pub fn slow_down_activations(&self) -> u64 {
        self.slow_down_activations.load(Ordering::Relaxed)
    }

    /// After any change of depth: mirrors it, re-evaluates the level and
    /// tells subscribers when it changed. Under the lock, so that changes
    /// are published in the order they happened.
    fn depth_changed(&self, st: &mut State<K, T>) {
        let depth = st.depth();
        self.depth.store(depth, Ordering::Release);
        let level = self.thresholds.level(st.level, depth);
        if level == st.level {
            return;
        }
        if st.level < Level::SlowDown && level >= Level::SlowDown {
            self.slow_down_activations.fetch_add(1, Ordering::Relaxed);
        }
        st.level = level;
        self.level.store(level as u8, Ordering::Release);
        // A ring already pending is enough: the reader looks at the level
        // itself. Only a reader that is gone is removed.
        st.bells
            .retain(|b| !matches!(b.try_send(()), Err(TrySendError::Disconnected(_))));
        if st.subscribers.is_empty() {
            return;
        }
        let rate = st.drain.rate(Instant::now()).unwrap_or(0.0);
        let change = LevelChange {
            level,
            depth,
            capacity: self.config.capacity,
            pressure: depth as f64 / self.config.capacity as f64,
            suggested_rate: SUGGESTED_RATE_FACTOR * rate,
        };
        st.subscribers
            .retain(|tx| match tx.try_send(change.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        "indexing queue: dropping a level subscriber that stopped reading"
                    );
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
    }

    /// Wakes the space's home worker if it waits, else any waiting worker
    /// (which will steal): work never waits while a worker idles.
    fn wake(&self, st: &mut State<K, T>, home: usize) {
        if st.n_waiting == 0 {
            return;
        }
        let w = if st.waiting[home] {
            home
        } else {
            match st.waiting.iter().position(|&w| w) {
                Some(w) => w,
                None => return,
            }
        };
        st.waiting[w] = false;
        st.n_waiting -= 1;
        self.ready[w].notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    type Q = IndexQueue<u32, u64>;

    fn config(capacity: usize) -> QueueConfig {
        QueueConfig {
            capacity,
            ..QueueConfig::default()
        }
    }

    /// Reserves and pushes one task, panicking when refused.
    fn put(q: &Q, space: u32, p: Priority, task: u64) {
        q.try_reserve(&space, p).expect("reservation refused");
        q.push(&space, p, task);
    }

    /// Completes a whole batch as indexed.
    fn finish(q: &Q, b: &Batch<u32, u64>) {
        let prios: Vec<Priority> = b.tasks.iter().map(|t| t.0).collect();
        q.complete(&b.space, &prios, prios.len());
    }

    /// Waits (bounded) until `cond` holds.
    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A key whose home is `worker`, different from `not`.
    fn key_homed_on(q: &Q, worker: usize, not: &[u32]) -> u32 {
        (0..)
            .find(|k| q.home_worker(k) == worker && !not.contains(k))
            .unwrap()
    }

    #[test]
    fn queue_is_send_and_sync() {
        fn check<X: Send + Sync>() {}
        check::<Q>();
        check::<IndexQueue<String, Box<[f32]>>>();
    }

    #[test]
    fn lanes_are_fifo_and_high_first() {
        let q = Q::new(config(100), 1);
        put(&q, 7, Priority::Low, 1);
        put(&q, 7, Priority::Normal, 2);
        put(&q, 7, Priority::Low, 3);
        put(&q, 7, Priority::High, 4);
        put(&q, 7, Priority::Normal, 5);
        put(&q, 7, Priority::High, 6);
        let b = q.pop_batch(0, 3, Duration::ZERO).unwrap();
        assert_eq!(
            b.tasks,
            vec![
                (Priority::High, 4),
                (Priority::High, 6),
                (Priority::Normal, 2)
            ]
        );
        assert_eq!((q.depth(), q.queued()), (6, 3));
        let rest = q.pop_batch(0, 10, Duration::ZERO).unwrap();
        assert_eq!(
            rest.tasks,
            vec![
                (Priority::Normal, 5),
                (Priority::Low, 1),
                (Priority::Low, 3)
            ]
        );
        assert!(q.pop_batch(0, 10, Duration::ZERO).is_none());
        finish(&q, &b);
        finish(&q, &rest);
        assert_eq!((q.depth(), q.queued(), q.active_spaces()), (0, 0, 0));
    }

    #[test]
    fn normal_rejected_from_reject_at_until_the_clear_mark_and_high_until_capacity() {
        let q = Q::new(config(20), 1);
        for i in 0..18 {
            q.try_reserve(&(i % 3), Priority::Normal).unwrap();
        }
        assert_eq!(q.level(), Level::Overloaded);
        for p in [Priority::Normal, Priority::Low] {
            let r = q.try_reserve(&1, p).unwrap_err();
            assert_eq!((r.depth, r.capacity), (18, 20));
            assert!(!r.by_space_share());
        }
        q.try_reserve(&1, Priority::High).unwrap();
        q.try_reserve(&2, Priority::High).unwrap();
        assert_eq!(q.depth(), 20);
        let r = q.try_reserve(&1, Priority::High).unwrap_err();
        assert_eq!(r.depth, 20);
        assert_eq!(q.depth(), 20);
        assert_eq!(q.depth_by_priority(), [2, 18, 0]);
        // Below 90% NORMAL is still refused until the depth is under the
        // clear mark (85% = 17), then admitted again.
        q.cancel(&1, Priority::High);
        q.cancel(&2, Priority::High);
        q.cancel(&0, Priority::Normal);
        assert_eq!(q.depth(), 17);
        assert!(q.try_reserve(&0, Priority::Low).is_err());
        q.cancel(&1, Priority::Normal);
        q.try_reserve(&0, Priority::Low).unwrap();
    }

    #[test]
    fn concurrent_reservations_never_exceed_capacity() {
        let q = Q::new(config(1000), 2);
        let granted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..600u32)
                            .filter(|i| q.try_reserve(&(i % 5), Priority::High).is_ok())
                            .inspect(|_| assert!(q.depth() <= 1000))
                            .count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 1000);
        assert_eq!(q.depth(), 1000);
    }

    #[test]
    fn per_space_share_limits_one_space() {
        let q = Q::new(
            QueueConfig {
                capacity: 10,
                per_space_share: 0.35,
                ..QueueConfig::default()
            },
            1,
        );
        assert_eq!(q.space_limit(), 3);
        for _ in 0..3 {
            q.try_reserve(&1, Priority::High).unwrap();
        }
        let r = q.try_reserve(&1, Priority::High).unwrap_err();
        assert!(r.by_space_share());
        assert_eq!((r.space_depth, r.space_limit, r.depth), (3, 3, 3));
        q.try_reserve(&2, Priority::Normal).unwrap();
        assert_eq!((q.space_depth(&1), q.space_depth(&2)), (3, 1));
        // The limit is at least one place, however small the share.
        let tiny = Q::new(
            QueueConfig {
                capacity: 10,
                per_space_share: 0.01,
                ..QueueConfig::default()
            },
            1,
        );
        tiny.try_reserve(&1, Priority::Normal).unwrap();
        assert!(tiny.try_reserve(&1, Priority::Normal).is_err());
    }

    #[test]
    fn levels_have_hysteresis() {
        let q = Q::new(config(100), 1);
        let expect = |q: &Q, depth: usize, level: Level| {
            while q.depth() < depth {
                q.try_reserve(&1, Priority::High).unwrap();
            }
            while q.depth() > depth {
                q.cancel(&1, Priority::High);
            }
            assert_eq!(q.level(), level, "at depth {depth}");
        };
        expect(&q, 49, Level::Normal);
        expect(&q, 50, Level::Adaptive);
        expect(&q, 45, Level::Adaptive);
        expect(&q, 44, Level::Normal);
        expect(&q, 49, Level::Normal);
        expect(&q, 79, Level::Adaptive);
        expect(&q, 80, Level::SlowDown);
        expect(&q, 75, Level::SlowDown);
        expect(&q, 70, Level::SlowDown);
        expect(&q, 69, Level::Adaptive);
        expect(&q, 79, Level::Adaptive);
        expect(&q, 90, Level::Overloaded);
        // OVERLOADED holds, and NORMAL is refused, down to 85.
        expect(&q, 85, Level::Overloaded);
        assert!(q.try_reserve(&1, Priority::Normal).is_err());
        assert!(q.try_reserve(&1, Priority::Low).is_err());
        expect(&q, 84, Level::SlowDown);
        q.try_reserve(&1, Priority::Normal).unwrap();
        expect(&q, 72, Level::SlowDown);
        expect(&q, 40, Level::Normal);
        // Normal -> SlowDown twice: two activations; Overloaded -> SlowDown
        // is not a new one.
        assert_eq!(q.slow_down_activations(), 2);
    }

    #[test]
    fn admissions_and_completions_at_a_mark_do_not_flip_the_level() {
        // Issue 11, defect 1: without a band, each admission/completion pair
        // at exactly 50% or 90% changed the level twice.
        for mark in [50, 90] {
            let q = Q::new(config(100), 1);
            while q.depth() < mark {
                q.try_reserve(&1, Priority::High).unwrap();
            }
            let changes = q.subscribe();
            for _ in 0..100 {
                q.cancel(&1, Priority::High);
                q.try_reserve(&1, Priority::High).unwrap();
            }
            assert_eq!(changes.try_iter().count(), 0, "level changes at {mark}%");
        }
    }

    #[test]
    fn level_changes_are_published_once_per_change() {
        let q = Q::new(config(10), 1);
        let rx = q.subscribe();
        let gone = q.subscribe();
        drop(gone);
        for _ in 0..10 {
            q.try_reserve(&1, Priority::High).unwrap();
        }
        q.push(&1, Priority::High, 0);
        let b = q.pop_batch(0, 1, Duration::ZERO).unwrap();
        q.requeue_front(&1, b.tasks);
        for _ in 0..10 {
            q.cancel(&1, Priority::High);
            if q.depth() == 1 {
                break;
            }
        }
        let b = q.pop_batch(0, 1, Duration::ZERO).unwrap();
        finish(&q, &b);
        let levels: Vec<(Level, usize)> = rx.try_iter().map(|c| (c.level, c.depth)).collect();
        assert_eq!(
            levels,
            vec![
                (Level::Adaptive, 5),
                (Level::SlowDown, 8),
                (Level::Overloaded, 9),
                (Level::SlowDown, 8),
                (Level::Adaptive, 6),
                (Level::Normal, 4),
            ]
        );
        assert_eq!(q.level(), Level::Normal);
        // The dropped subscriber is gone; the live one stays.
        assert_eq!(q.state.lock().subscribers.len(), 1);
    }

    #[test]
    fn a_level_bell_never_falls_behind_and_is_never_dropped() {
        let q = Q::new(config(2), 1);
        let bell = q.level_bell();
        for _ in 0..10 * SUBSCRIBER_BACKLOG {
            q.try_reserve(&1, Priority::High).unwrap();
            q.cancel(&1, Priority::High);
        }
        // One ring pending (the rest merged into it), the bell still there.
        assert_eq!(bell.try_iter().count(), 1);
        assert_eq!(q.state.lock().bells.len(), 1);
        q.try_reserve(&1, Priority::High).unwrap();
        assert!(bell.try_recv().is_ok());
        assert_eq!(q.current_level().depth, 1);
        // A bell whose reader is gone is removed at the next change.
        drop(bell);
        q.cancel(&1, Priority::High);
        assert!(q.state.lock().bells.is_empty());
    }

    #[test]
    fn a_subscriber_that_stops_reading_is_dropped() {
        let q = Q::new(config(2), 1);
        let rx = q.subscribe();
        for _ in 0..SUBSCRIBER_BACKLOG + 1 {
            q.try_reserve(&1, Priority::High).unwrap();
            q.cancel(&1, Priority::High);
        }
        assert_eq!(rx.try_iter().count(), SUBSCRIBER_BACKLOG);
        assert!(rx.recv_timeout(Duration::ZERO).is_err());
        assert!(q.state.lock().subscribers.is_empty());
    }

    /// A burst of rejected writers is told to wait for the backlog above
    /// the SLOW_DOWN clear mark to drain, each a different time: not for
    /// the next free place (one task: always the 50 ms floor), which sent
    /// the whole herd back at once to be rejected again.
    #[test]
    fn rejected_writers_wait_for_the_backlog_and_are_spread() {
        let q = Q::new(config(1000), 1);
        for _ in 0..900 {
            q.try_reserve(&1, Priority::Normal).unwrap();
        }
        assert!(q.try_reserve(&1, Priority::Normal).is_err());
        // 901 - 700 (the clear mark at 70%) tasks must drain.
        assert_eq!(q.backlog_to_clear(900, 900), 201);
        // At 100 tasks/s that is ~2 s, not 50 ms.
        assert_eq!(
            retry_after_for(q.backlog_to_clear(900, 900), Some(100.0), 1.0),
            Duration::from_millis(2010)
        );
        // Spread: a burst of rejections comes back over a window.
        let waits: Vec<Duration> = (0..1000)
            .map(|_| retry_after_for(201, Some(100.0), retry_spread()))
            .collect();
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(
            *min >= Duration::from_millis(1005) && *min < Duration::from_millis(1300),
            "{min:?}"
        );
        assert!(
            *max <= Duration::from_millis(3015) && *max > Duration::from_millis(2700),
            "{max:?}"
        );
        // A full space share counts the space's own backlog.
        let mut c = config(1000);
        c.per_space_share = 0.5;
        let q = Q::new(c, 1);
        for _ in 0..500 {
            q.try_reserve(&7, Priority::Normal).unwrap();
        }
        assert!(q.try_reserve(&7, Priority::Normal).is_err());
        // The share's clear mark: 500 x 0.7 / 0.9 = 388.
        assert_eq!(q.backlog_to_clear(500, 500), 501 - 388);
    }

    #[test]
    fn retry_after_stays_in_range() {
        // No rate measured yet.
        let q = Q::new(config(10), 1);
        let unknown = UNKNOWN_RATE_RETRY_AFTER.mul_f64(1.0 - RETRY_SPREAD)
            ..=UNKNOWN_RATE_RETRY_AFTER.mul_f64(1.0 + RETRY_SPREAD);
        assert!(unknown.contains(&q.retry_after()));
        for _ in 0..9 {
            q.try_reserve(&1, Priority::Normal).unwrap();
        }
        let r = q.try_reserve(&1, Priority::Normal).unwrap_err();
        assert!(unknown.contains(&r.retry_after), "{:?}", r.retry_after);
        assert_eq!(q.drain_rate(), 0.0);
        assert_eq!(q.suggested_rate(), 0.0);

        // The meter, with synthetic time.
        let t0 = Instant::now();
        let mut m = DrainMeter::new(t0);
        assert_eq!(
            m.rate(t0 + Duration::from_millis(500)),
            None,
            "no work seen yet"
        );
        m.record(t0, 50);
        assert_eq!(
            m.rate(t0 + Duration::from_millis(50)),
            None,
            "too early for a provisional rate"
        );
        assert_eq!(
            m.rate(t0 + Duration::from_millis(500)),
            Some(100.0),
            "provisional rate"
        );
        m.record(t0 + Duration::from_millis(900), 50);
        assert_eq!(m.rate(t0 + Duration::from_secs(1)), Some(100.0));
        m.record(t0 + Duration::from_millis(1500), 300);
        assert_eq!(m.rate(t0 + Duration::from_secs(2)), Some(200.0));
        assert_eq!(m.rate(t0 + Duration::from_secs(4)), Some(100.0));

        // Idle windows only (indexing paused), then work in the open
        // window: its provisional rate, not the idle 0 (a SLOW_DOWN sent
        // then used to advise a rate of 0).
        let mut m = DrainMeter::new(t0);
        assert_eq!(m.rate(t0 + Duration::from_secs(3)), Some(0.0));
        m.record(t0 + Duration::from_millis(3100), 40);
        assert_eq!(m.rate(t0 + Duration::from_millis(3050)), Some(0.0));
        assert_eq!(
            m.rate(t0 + Duration::from_millis(3200)),
            Some(200.0),
            "provisional after idle windows"
        );

        for excess in [0, 1, 5, 1_000, 1_000_000, usize::MAX] {
            for rate in [
                None,
                Some(0.0),
                Some(1e-9),
                Some(0.5),
                Some(100.0),
                Some(1e12),
            ] {
                for spread in [0.5, 1.0, 1.5, 0.0, f64::NAN] {
                    let d = retry_after_for(excess, rate, spread);
                    assert!(
                        (MIN_RETRY_AFTER..=MAX_RETRY_AFTER).contains(&d),
                        "{excess} {rate:?} {spread}"
                    );
                }
            }
        }
        assert_eq!(
            retry_after_for(200, Some(100.0), 1.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_after_for(200, Some(100.0), 1.5),
            Duration::from_secs(3)
        );
        assert_eq!(retry_after_for(1, Some(1000.0), 1.0), MIN_RETRY_AFTER);
        assert_eq!(retry_after_for(1, Some(0.0), 1.0), MAX_RETRY_AFTER);
        assert_eq!(retry_after_for(0, Some(0.0), 1.0), MIN_RETRY_AFTER);
    }

    #[test]
    fn batch_size_grows_with_pressure() {
        let q = Q::new(config(100), 1);
        let mut last = 0;
        for depth in 0..=100 {
            while q.depth() < depth {
                q.try_reserve(&1, Priority::High).unwrap();
            }
            let b = q.batch_size(4, 64);
            assert!(b >= last, "batch size shrank at depth {depth}");
            assert!((4..=64).contains(&b));
            if depth < 50 {
                assert_eq!(b, 4);
            }
            last = b;
        }
        assert_eq!(
            q.batch_size(4, 64),
            50,
            "capped at half the capacity per worker"
        );
        assert_eq!(q.batch_size(4, 40), 40);
        assert_eq!(q.batch_size(10, 1), 10);
        for _ in 0..25 {
            q.cancel(&1, Priority::High);
        }
        assert_eq!(q.batch_size(4, 40), 22);
    }

    #[test]
    fn close_wakes_a_waiting_pop() {
        let q = Q::new(config(10), 2);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let t = Instant::now();
                (
                    q.pop_batch(1, 10, Duration::from_secs(60)).is_none(),
                    t.elapsed(),
                )
            });
            wait_for("the worker to wait", || q.idle_workers() == 1);
            q.close();
            let (none, waited) = waiter.join().unwrap();
            assert!(none);
            assert!(waited < Duration::from_secs(30));
        });
        assert!(q.is_closed());
        // Pushes are still accepted and counted, but not handed out.
        put(&q, 1, Priority::Normal, 1);
        assert_eq!(q.depth(), 1);
        assert!(q.pop_batch(0, 10, Duration::from_millis(1)).is_none());
    }

    #[test]
    fn push_wakes_a_waiting_worker() {
        let q = Q::new(config(10), 2);
        let home = key_homed_on(&q, 1, &[]);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| q.pop_batch(1, 10, Duration::from_secs(60)));
            wait_for("the worker to wait", || q.idle_workers() == 1);
            put(&q, home, Priority::Low, 42);
            let b = waiter.join().unwrap().expect("woken with work");
            assert_eq!(
                (b.space, b.tasks, b.stolen),
                (home, vec![(Priority::Low, 42)], false)
            );
        });
        assert_eq!(q.idle_workers(), 0);
        assert!(q.pop_batch(0, 10, Duration::from_millis(1)).is_none());
    }

    #[test]
    fn home_worker_is_preferred_and_rotates() {
        let q = Q::new(config(100), 2);
        let a = key_homed_on(&q, 0, &[]);
        let b = key_homed_on(&q, 0, &[a]);
        let other = key_homed_on(&q, 1, &[]);
        for i in 0..3 {
            put(&q, a, Priority::Normal, i);
            put(&q, b, Priority::Normal, 10 + i);
        }
        for i in 0..20 {
            put(&q, other, Priority::High, 100 + i);
        }
        // Worker 0 serves its own spaces in turn, though `other` is fuller.
        let mut served = Vec::new();
        for _ in 0..6 {
            let batch = q.pop_batch(0, 1, Duration::ZERO).unwrap();
            assert!(!batch.stolen);
            served.push(batch.space);
            finish(&q, &batch);
        }
        assert_eq!(served, vec![a, b, a, b, a, b]);
        // Then it steals.
        let batch = q.pop_batch(0, 5, Duration::ZERO).unwrap();
        assert_eq!(
            (batch.space, batch.stolen, batch.tasks.len()),
            (other, true, 5)
        );
        let batch1 = q.pop_batch(1, 100, Duration::ZERO).unwrap();
        assert_eq!(
            (batch1.space, batch1.stolen, batch1.tasks.len()),
            (other, false, 15)
        );
        finish(&q, &batch);
        finish(&q, &batch1);
        assert_eq!((q.depth(), q.active_spaces()), (0, 0));
        assert!(q.state.lock().home_ready.iter().all(VecDeque::is_empty));
    }

    #[test]
    fn idle_worker_steals_the_fullest_space() {
        let q = Q::new(config(100), 2);
        let small = key_homed_on(&q, 0, &[]);
        let big = key_homed_on(&q, 0, &[small]);
        for i in 0..3 {
            put(&q, small, Priority::Normal, i);
        }
        for i in 0..5 {
            put(&q, big, Priority::Low, i);
        }
        let stolen = q.pop_batch(1, 10, Duration::ZERO).unwrap();
        assert_eq!(
            (stolen.space, stolen.stolen, stolen.tasks.len()),
            (big, true, 5)
        );
        // The emptied space left its home worker's rotation.
        assert_eq!(q.state.lock().home_ready[0].len(), 1);
        let own = q.pop_batch(0, 10, Duration::ZERO).unwrap();
        assert_eq!((own.space, own.stolen), (small, false));
        assert!(q.pop_batch(0, 10, Duration::ZERO).is_none());
        assert_eq!((q.depth(), q.queued()), (8, 0));
    }

    #[test]
    fn requeue_front_keeps_order_and_depth() {
        let q = Q::new(config(100), 1);
        for i in 0..4 {
            put(&q, 1, Priority::Normal, i);
            put(&q, 1, Priority::High, 10 + i);
        }
        let b = q.pop_batch(0, 6, Duration::ZERO).unwrap();
        let depth = q.depth_by_priority();
        q.requeue_front(&1, b.tasks);
        assert_eq!(
            (q.depth(), q.queued(), q.depth_by_priority()),
            (8, 8, depth)
        );
        let all = q.pop_batch(0, 100, Duration::ZERO).unwrap();
        let ids: Vec<u64> = all.tasks.iter().map(|t| t.1).collect();
        assert_eq!(ids, vec![10, 11, 12, 13, 0, 1, 2, 3]);
        finish(&q, &all);
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn push_unreserved_may_exceed_capacity() {
        let q = Q::new(config(4), 1);
        for i in 0..6 {
            q.push_unreserved(&(i as u32 % 2), Priority::Normal, i);
        }
        assert_eq!(
            (q.depth(), q.queued(), q.level()),
            (6, 6, Level::Overloaded)
        );
        assert!(q.pressure() > 1.0);
        assert!(q.try_reserve(&3, Priority::High).is_err());
        while let Some(b) = q.pop_batch(0, 4, Duration::ZERO) {
            finish(&q, &b);
        }
        assert_eq!(
            (q.depth(), q.level(), q.active_spaces()),
            (0, Level::Normal, 0)
        );
    }

    #[test]
    fn complete_counts_only_indexed_towards_the_rate() {
        let q = Q::new(config(10), 1);
        put(&q, 1, Priority::Normal, 1);
        put(&q, 1, Priority::Normal, 2);
        let b = q.pop_batch(0, 10, Duration::ZERO).unwrap();
        q.complete(&1, &[Priority::Normal, Priority::Normal], 1);
        assert_eq!(q.state.lock().drain.in_window, 1);
        assert_eq!((q.depth(), q.active_spaces()), (0, 0));
        drop(b);
    }

    #[test]
    fn config_is_validated() {
        assert!(QueueConfig::default().validate().is_ok());
        let bad = [
            QueueConfig {
                capacity: 0,
                ..QueueConfig::default()
            },
            QueueConfig {
                per_space_share: 0.0,
                ..QueueConfig::default()
            },
            QueueConfig {
                reject_at: f64::NAN,
                ..QueueConfig::default()
            },
            QueueConfig {
                slow_down_at: 0.95,
                ..QueueConfig::default()
            },
            QueueConfig {
                slow_down_clear_at: 0.85,
                ..QueueConfig::default()
            },
            QueueConfig {
                adaptive_clear_at: 0.55,
                ..QueueConfig::default()
            },
            QueueConfig {
                reject_clear_at: 0.95,
                ..QueueConfig::default()
            },
            QueueConfig {
                reject_clear_at: 0.0,
                ..QueueConfig::default()
            },
        ];
        for c in bad {
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains("must"), "{e}");
        }
        let t = Thresholds::new(&config(100));
        assert_eq!(
            (
                t.adaptive,
                t.slow_down,
                t.slow_down_clear,
                t.reject,
                t.space_limit
            ),
            (50, 80, 70, 90, 100)
        );
        let t = Thresholds::new(&config(7));
        assert_eq!(
            (t.adaptive, t.slow_down, t.slow_down_clear, t.reject),
            (4, 6, 5, 7)
        );
        assert_eq!(
            Priority::ALL.map(Priority::as_str),
            ["high", "normal", "low"]
        );
        assert_eq!(
            Level::ALL.map(Level::as_str),
            ["normal", "adaptive", "slow_down", "overloaded"]
        );
    }

    #[test]
    fn blocking_workers_take_every_task_exactly_once() {
        const PER_PRODUCER: u64 = 3_000;
        let q = Q::new(config(64), 3);
        let done = AtomicU64::new(0);
        let mut taken: Vec<u64> = std::thread::scope(|s| {
            for producer in 0..2u64 {
                let q = &q;
                s.spawn(move || {
                    for i in 0..PER_PRODUCER {
                        let space = (producer * 4 + i % 4) as u32;
                        let p = Priority::ALL[(i % 3) as usize];
                        // Full: wait as a writer would, bounded.
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while q.try_reserve(&space, p).is_err() {
                            assert!(Instant::now() < deadline, "queue never drained");
                            std::thread::yield_now();
                        }
                        q.push(&space, p, producer * PER_PRODUCER + i);
                    }
                });
            }
            let workers: Vec<_> = (0..3)
                .map(|w| {
                    let (q, done) = (&q, &done);
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        while let Some(b) = q.pop_batch(w, 1 + w * 7, Duration::from_secs(10)) {
                            mine.extend(b.tasks.iter().map(|t| t.1));
                            finish(q, &b);
                            done.fetch_add(b.tasks.len() as u64, Ordering::AcqRel);
                        }
                        mine
                    })
                })
                .collect();
            wait_for("all tasks to complete", || {
                done.load(Ordering::Acquire) == 2 * PER_PRODUCER
            });
            q.close();
            workers
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        taken.sort_unstable();
        assert!(taken.iter().copied().eq(0..2 * PER_PRODUCER));
        assert_eq!((q.depth(), q.queued(), q.active_spaces()), (0, 0, 0));
        assert_eq!(q.level(), Level::Normal);
    }

    // ---- concurrent property test ----------------------------------------

    const THREADS: usize = 3;
    /// Each thread pushes to its own two spaces (so that ids per (space,
    /// lane) increase in push order) and pops from all of them.
    const SPACES: usize = 2 * THREADS;

    #[derive(Clone, Debug)]
    enum Op {
        Reserve {
            space: usize,
            lane: usize,
        },
        Push,
        Cancel,
        Pop {
            max: usize,
        },
        Complete(usize),
        /// The worker dies holding a batch: requeue it at the front.
        Crash(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..2usize, 0..3usize).prop_map(|(space, lane)| Op::Reserve { space, lane }),
            4 => Just(Op::Push),
            1 => Just(Op::Cancel),
            4 => (1..5usize).prop_map(|max| Op::Pop { max }),
            3 => any::<usize>().prop_map(Op::Complete),
            1 => any::<usize>().prop_map(Op::Crash),
        ]
    }

    /// What the queue's lanes must look like: per (space, lane), the tasks
    /// put back by crashes, in front of those never popped (from `next`).
    #[derive(Default)]
    struct LaneModel {
        front: VecDeque<u64>,
        next: u64,
    }

    struct Shared {
        q: Q,
        /// Pop and requeue go through this lock so that their order is
        /// known; reserve, push, cancel and complete stay concurrent.
        model: parking_lot::Mutex<Vec<[LaneModel; 3]>>,
        /// Ids pushed so far per (space, lane), stored after each push.
        pushed: Vec<[AtomicU64; 3]>,
    }

    #[derive(Default)]
    struct Worker {
        reservations: VecDeque<(u32, Priority)>,
        held: Vec<Batch<u32, u64>>,
        next_id: [[u64; 3]; 2],
        completed: Vec<(u32, Priority, u64)>,
    }

    fn pop_checked(
        sh: &Shared,
        worker: usize,
        max: usize,
    ) -> Result<Option<Batch<u32, u64>>, String> {
        let mut model = sh.model.lock();
        let before: Vec<[u64; 3]> = sh
            .pushed
            .iter()
            .map(|l| [0, 1, 2].map(|i| l[i].load(Ordering::Acquire)))
            .collect();
        let Some(b) = sh.q.pop_batch(worker, max, Duration::ZERO) else {
            return Ok(None);
        };
        let s = b.space as usize;
        if b.tasks.is_empty() || b.tasks.len() > max {
            return Err(format!("batch of {} for max {max}", b.tasks.len()));
        }
        if !b.tasks.windows(2).all(|w| w[0].0 <= w[1].0) {
            return Err(format!("lanes out of order in {:?}", b.tasks));
        }
        for &(p, id) in &b.tasks {
            let m = &mut model[s][p.index()];
            let want = match m.front.pop_front() {
                Some(f) => f,
                None => {
                    m.next += 1;
                    m.next - 1
                }
            };
            if id != want {
                return Err(format!(
                    "space {s} lane {p:?}: popped {id}, expected {want}"
                ));
            }
        }
        // Every lane above the lowest one taken, and all lanes if the batch
        // was not full, must have been emptied of what was surely there.
        let lowest = b.tasks.last().unwrap().0.index();
        let emptied = if b.tasks.len() < max { 3 } else { lowest };
        for lane in 0..emptied {
            let m = &model[s][lane];
            if !m.front.is_empty() || m.next < before[s][lane] {
                return Err(format!(
                    "space {s}: lane {lane} left behind in {:?}",
                    b.tasks
                ));
            }
        }
        Ok(Some(b))
    }

    fn run_ops(
        sh: &Shared,
        t: usize,
        workers: usize,
        w: &mut Worker,
        ops: &[Op],
    ) -> Result<(), String> {
        let cap = sh.q.capacity();
        for op in ops {
            match *op {
                Op::Reserve { space, lane } => {
                    let space = (2 * t + space) as u32;
                    let p = Priority::ALL[lane];
                    if sh.q.try_reserve(&space, p).is_ok() {
                        w.reservations.push_back((space, p));
                        if sh.q.depth() > cap {
                            return Err(format!("depth {} over capacity {cap}", sh.q.depth()));
                        }
                    }
                }
                Op::Push => {
                    if let Some((space, p)) = w.reservations.pop_front() {
                        let counter = &mut w.next_id[space as usize - 2 * t][p.index()];
                        let id = *counter;
                        *counter += 1;
                        sh.q.push(&space, p, id);
                        sh.pushed[space as usize][p.index()].store(id + 1, Ordering::Release);
                    }
                }
                Op::Cancel => {
                    if let Some((space, p)) = w.reservations.pop_back() {
                        sh.q.cancel(&space, p);
                    }
                }
                Op::Pop { max } => {
                    if let Some(b) = pop_checked(sh, t % workers, max)? {
                        w.held.push(b);
                    }
                }
                Op::Complete(i) if !w.held.is_empty() => {
                    let b = w.held.swap_remove(i % w.held.len());
                    let prios: Vec<Priority> = b.tasks.iter().map(|x| x.0).collect();
                    sh.q.complete(&b.space, &prios, prios.len());
                    w.completed
                        .extend(b.tasks.iter().map(|&(p, id)| (b.space, p, id)));
                }
                Op::Crash(i) if !w.held.is_empty() => {
                    let b = w.held.swap_remove(i % w.held.len());
                    let mut model = sh.model.lock();
                    let s = b.space as usize;
                    for &(p, id) in b.tasks.iter().rev() {
                        model[s][p.index()].front.push_front(id);
                    }
                    sh.q.requeue_front(&b.space, b.tasks);
                }
                Op::Complete(_) | Op::Crash(_) => {}
            }
        }
        Ok(())
    }

    /// At a quiescent point: depth = reserved + pushed - completed, exactly,
    /// per space and per lane; queued = that minus reserved and in flight.
    fn check_counts(sh: &Shared, ws: &[Worker]) -> Result<(), String> {
        let mut depth = [[0i64; 3]; SPACES];
        let mut queued = 0i64;
        for (s, lanes) in sh.pushed.iter().enumerate() {
            for (l, n) in lanes.iter().enumerate() {
                let n = n.load(Ordering::Acquire) as i64;
                depth[s][l] += n;
                queued += n;
            }
        }
        for w in ws {
            for &(s, p) in &w.reservations {
                depth[s as usize][p.index()] += 1;
            }
            for &(s, p, _) in &w.completed {
                depth[s as usize][p.index()] -= 1;
                queued -= 1;
            }
            queued -= w.held.iter().map(|b| b.tasks.len() as i64).sum::<i64>();
        }
        let total: i64 = depth.iter().flatten().sum();
        let by_p = [0, 1, 2].map(|l| depth.iter().map(|d| d[l]).sum::<i64>() as usize);
        if sh.q.depth() as i64 != total || sh.q.depth_by_priority() != by_p {
            return Err(format!(
                "depth {} {:?}, expected {total} {by_p:?}",
                sh.q.depth(),
                sh.q.depth_by_priority()
            ));
        }
        if sh.q.queued() as i64 != queued {
            return Err(format!("queued {}, expected {queued}", sh.q.queued()));
        }
        for (s, d) in depth.iter().enumerate() {
            let want = d.iter().sum::<i64>();
            if sh.q.space_depth(&(s as u32)) as i64 != want {
                return Err(format!(
                    "space {s} depth {}, expected {want}",
                    sh.q.space_depth(&(s as u32))
                ));
            }
        }
        let active = depth.iter().filter(|d| d.iter().sum::<i64>() > 0).count();
        if sh.q.active_spaces() != active {
            return Err(format!(
                "{} space entries for {active} active spaces",
                sh.q.active_spaces()
            ));
        }
        if total > sh.q.capacity() as i64 {
            return Err(format!("depth {total} over capacity"));
        }
        Ok(())
    }

    fn concurrent_case(
        capacity: usize,
        share: f64,
        workers: usize,
        phases: &[Vec<Vec<Op>>],
    ) -> Result<(), String> {
        let sh = Shared {
            q: Q::new(
                QueueConfig {
                    capacity,
                    per_space_share: share,
                    ..QueueConfig::default()
                },
                workers,
            ),
            model: parking_lot::Mutex::new((0..SPACES).map(|_| Default::default()).collect()),
            pushed: (0..SPACES).map(|_| Default::default()).collect(),
        };
        let events = sh.q.subscribe();
        let mut ws: Vec<Worker> = (0..THREADS).map(|_| Worker::default()).collect();
        for phase in phases {
            // Threads start together so that their operations interleave.
            let start = std::sync::Barrier::new(THREADS);
            std::thread::scope(|s| {
                let handles: Vec<_> = ws
                    .iter_mut()
                    .zip(phase)
                    .enumerate()
                    .map(|(t, (w, ops))| {
                        let (sh, start) = (&sh, &start);
                        s.spawn(move || {
                            start.wait();
                            run_ops(sh, t, workers, w, ops)
                        })
                    })
                    .collect();
                handles.into_iter().try_for_each(|h| h.join().unwrap())
            })?;
            check_counts(&sh, &ws)?;
        }
        // Finish: give back reservations, complete what is held, drain.
        for w in &mut ws {
            for (space, p) in w.reservations.drain(..) {
                sh.q.cancel(&space, p);
            }
            for b in w.held.drain(..) {
                finish(&sh.q, &b);
                w.completed
                    .extend(b.tasks.iter().map(|&(p, id)| (b.space, p, id)));
            }
        }
        check_counts(&sh, &ws)?;
        while let Some(b) = pop_checked(&sh, 0, 7)? {
            finish(&sh.q, &b);
            ws[0]
                .completed
                .extend(b.tasks.iter().map(|&(p, id)| (b.space, p, id)));
        }
        check_counts(&sh, &ws)?;
        if (sh.q.depth(), sh.q.queued(), sh.q.active_spaces()) != (0, 0, 0) {
            return Err("queue not empty at the end".into());
        }
        // Each pushed task completed exactly once.
        let mut done: Vec<(u32, Priority, u64)> = ws
            .iter()
            .flat_map(|w| w.completed.iter().copied())
            .collect();
        done.sort_unstable();
        let mut want = Vec::new();
        for (s, lanes) in sh.pushed.iter().enumerate() {
            for p in Priority::ALL {
                let n = lanes[p.index()].load(Ordering::Acquire);
                want.extend((0..n).map(|id| (s as u32, p, id)));
            }
        }
        want.sort_unstable();
        if done != want {
            return Err(format!(
                "completed {} tasks, pushed {}",
                done.len(),
                want.len()
            ));
        }
        // Level changes: each a real change, ending where the queue is.
        let levels: Vec<Level> = events.try_iter().map(|c| c.level).collect();
        let mut prev = Level::Normal;
        for &l in &levels {
            if l == prev {
                return Err(format!("level {l:?} published twice in a row"));
            }
            prev = l;
        }
        if prev != sh.q.level() || prev != Level::Normal {
            return Err(format!(
                "last published level {prev:?}, queue at {:?}",
                sh.q.level()
            ));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn concurrent_operations_keep_order_count_and_bounds(
            capacity in 3usize..24,
            share in prop::sample::select(vec![0.3, 0.5, 1.0]),
            workers in 1usize..=3,
            phases in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(op(), 0..60), THREADS),
                1..4,
            ),
        ) {
            concurrent_case(capacity, share, workers, &phases).map_err(TestCaseError::fail)?;
        }
    }
}
