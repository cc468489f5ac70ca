//! What turns a target's misbehaviour into a finding instead of a dead or
//! silent process: panics are caught quietly, allocations above a limit
//! are stopped with the input saved, and the time each input takes is
//! measured.
//!
//! - [`run_guarded`] runs a target on one input: a panic comes back as
//!   [`Outcome::Panicked`] with its message and location, without the
//!   default hook's noise on stderr (a run may see thousands).
//! - [`GuardedAlloc`] is a global allocator over the system one that the
//!   harness's binary and tests install. While a target runs on this
//!   thread, one allocation above [`MAX_ALLOCATION`] is a bug: a length
//!   field read from hostile bytes and trusted. It cannot be turned into a
//!   panic (an allocator must not unwind), and the allocation itself could
//!   take the machine down (or fail, which aborts anyway), so the guard
//!   saves the input, prints the target, the input's origin and a
//!   backtrace, and aborts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// `eprintln!` that bypasses the test harness's output capture: what is
/// printed before an abort or an exit must be seen, and captured output
/// is only shown for a test that returns.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

/// Largest single allocation a target may make: 256 MiB. The decoders'
/// own limits are far below it (a WAL record is at most 64 MiB, a
/// snapshot's HNSW block of vectors at most 256 MiB at the largest
/// dimension), so only a size taken from the input without a bound gets
/// here.
pub const MAX_ALLOCATION: usize = 256 << 20;

/// An input slower than this is reported as a hang.
pub const SLOW_INPUT: Duration = Duration::from_secs(1);

/// Where the input being run came from, for the messages that name it.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// Made by the fuzz loop.
    Iteration { seed: u64, iteration: u64 },
    /// Read from a file (corpus, regression, reproduction).
    File(&'a Path),
}

/// The target running on this thread: what the allocator names when it
/// stops one. Raw pointers because the allocator cannot take a lock or
/// allocate to find out; they point at the caller's input and names, which
/// outlive the call that set them.
#[derive(Clone, Copy)]
struct Running {
    target: &'static str,
    input: *const [u8],
    origin: RawOrigin,
    crash_dir: *const Path,
}

#[derive(Clone, Copy)]
enum RawOrigin {
    Iteration { seed: u64, iteration: u64 },
    File(*const Path),
}

thread_local! {
    /// Set while a target runs on this thread: allocations are checked.
    static RUNNING: Cell<Option<Running>> = const { Cell::new(None) };
    /// The last panic on this thread while a target ran.
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The global allocator of the harness's binary and tests: the system
/// allocator, with one check while a target runs (see the module docs).
pub struct GuardedAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments;
// the check before it only reads a thread-local `Cell` and, past the
// limit, never returns.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[inline]
fn check(size: usize) {
    if size <= MAX_ALLOCATION {
        return;
    }
    // `take` disarms the guard, so the reporting below (which allocates
    // a little) does not come back here.
    if let Some(running) = RUNNING.try_with(Cell::take).ok().flatten() {
        too_large(running, size);
    }
}

#[cold]
fn too_large(running: Running, size: usize) -> ! {
    // SAFETY: `run_guarded` set these from references that live until it
    // returns, and it has not returned: the target allocating is inside it.
    let (input, crash_dir) = unsafe { (&*running.input, &*running.crash_dir) };
    let origin = match running.origin {
        RawOrigin::Iteration { seed, iteration } => format!("iteration {iteration} (seed {seed})"),
        // SAFETY: as above.
        RawOrigin::File(p) => format!("input {}", unsafe { &*p }.display()),
    };
    say!(
        "\nengram-fuzz: target {} on {origin}: one allocation of {size} bytes, over the \
         {} MiB limit: a length taken from the input without a bound. Aborting.",
        running.target,
        MAX_ALLOCATION >> 20
    );
    say!("{}", std::backtrace::Backtrace::force_capture());
    match save_input(crash_dir, running.target, input) {
        Ok(path) => say!(
            "engram-fuzz: input saved to {}\nengram-fuzz: reproduce with: {}",
            path.display(),
            reproduce_command(running.target, &path)
        ),
        Err(e) => say!("engram-fuzz: could not save the input: {e}"),
    }
    std::process::abort()
}

/// The command line that runs one saved input again, panics and all.
pub fn reproduce_command(target: &str, path: &Path) -> String {
    format!(
        "cargo run --profile ci -p engram-fuzz -- --target {target} --reproduce {}",
        path.display()
    )
}

/// Saves a crashing input as `<crash_dir>/<target>/<hash>` (FNV-1a of the
/// bytes, so the same input is saved once).
///
/// # Errors
/// Creating the directory or writing the file.
pub fn save_input(crash_dir: &Path, target: &str, input: &[u8]) -> std::io::Result<PathBuf> {
    let dir = crash_dir.join(target);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{:016x}", crate::rng::fnv1a(input)));
    std::fs::write(&path, input)?;
    Ok(path)
}

/// How one input went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Returned, in this long.
    Returned(Duration),
    /// Panicked: the message and where (`file:line:col`).
    Panicked(String),
}

/// Whether a target's panics are also printed by the previous hook
/// (message and, with `RUST_BACKTRACE=1`, backtrace): on to reproduce one.
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Prints a target's panics as well as returning them (see [`VERBOSE`]).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// Installs, once per process, the panic hook that keeps a target's
/// panics quiet: their message goes to [`run_guarded`]'s caller instead of
/// stderr. Panics outside a target (in the harness, in a test) still go to
/// the hook that was installed before.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let in_target = RUNNING.try_with(|r| r.get().is_some()).unwrap_or(false);
            if !in_target || VERBOSE.load(Ordering::Relaxed) {
                previous(info);
            }
            if !in_target {
                return;
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(a panic without a message)".to_owned());
            let at = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "an unknown location".to_owned());
            PANIC.with(|p| *p.borrow_mut() = Some(format!("{message} (at {at})")));
        }));
    });
}

/// Runs `target` on `input` with the guards on: a panic is caught and
/// returned, an allocation over [`MAX_ALLOCATION`] saves the input under
/// `crash_dir` and aborts (see the module docs).
pub fn run_guarded(
    target: &'static str,
    run: fn(&[u8]),
    input: &[u8],
    origin: Origin<'_>,
    crash_dir: &Path,
) -> Outcome {
    install_panic_hook();
    let raw_origin = match origin {
        Origin::Iteration { seed, iteration } => RawOrigin::Iteration { seed, iteration },
        Origin::File(p) => RawOrigin::File(p as *const Path),
    };
    PANIC.with(|p| p.borrow_mut().take());
    RUNNING.with(|r| {
        r.set(Some(Running {
            target,
            input: input as *const [u8],
            origin: raw_origin,
            crash_dir: crash_dir as *const Path,
        }))
    });
    let started = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(|| run(input)));
    let took = started.elapsed();
    RUNNING.with(|r| r.set(None));
    match result {
        Ok(()) => Outcome::Returned(took),
        Err(_) => Outcome::Panicked(
            PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "(a panic the hook did not see)".to_owned()),
        ),
    }
}
