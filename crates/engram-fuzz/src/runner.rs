//! The fuzz loop: make input `i` from the corpus, run the target on it
//! under the guards, record what went wrong, and go on until the time or
//! the iteration budget is spent.
//!
//! Input `i` of a run is a function of (seed, target, `i`) and the corpus
//! only ([`input`]), so a finding is reported with the iteration that
//! makes it again as well as the saved file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::guard::{self, say, Origin, Outcome, SLOW_INPUT};
use crate::mutate;
use crate::rng::Rng;
use crate::targets::Target;

/// An input still running after this long is stuck: the watchdog saves it
/// and ends the process (the target cannot be stopped from outside).
pub const STUCK_INPUT: Duration = Duration::from_secs(10);

/// Distinct findings kept (and saved) per target; more are only counted.
const MAX_FINDINGS: usize = 16;

/// How long, and how, to fuzz one target.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    /// Stop after this long...
    pub duration: Option<Duration>,
    /// ...or after this many inputs, whichever comes first.
    pub iterations: Option<u64>,
    /// Where crashing inputs are saved (`<crash_dir>/<target>/<hash>`).
    pub crash_dir: PathBuf,
    /// Run a watchdog thread that ends the process on a stuck input.
    pub watchdog: bool,
}

/// What went wrong with one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The target panicked: message and location.
    Panic(String),
    /// The target took longer than [`SLOW_INPUT`], twice.
    Slow(Duration),
}

impl Problem {
    /// What tells two findings apart: where a panic happened (its message
    /// may hold input data), or that the input was slow.
    pub fn signature(&self) -> String {
        match self {
            Problem::Panic(m) => m.rsplit(" (at ").next().unwrap_or(m).to_owned(),
            Problem::Slow(_) => "slow".to_owned(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Panic(m) => write!(f, "panicked: {m}"),
            Problem::Slow(d) => write!(
                f,
                "hang: took {:.2} s (the limit is {} s)",
                d.as_secs_f64(),
                SLOW_INPUT.as_secs()
            ),
        }
    }
}

/// A distinct finding of a run.
#[derive(Clone, Debug)]
pub struct Finding {
    pub iteration: u64,
    pub problem: Problem,
    /// Where the input was saved, or why it was not.
    pub saved: Result<PathBuf, String>,
    /// How many inputs of the run had this signature.
    pub count: u64,
}

/// The outcome of fuzzing one target.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: &'static str,
    pub seed: u64,
    pub inputs: u64,
    pub elapsed: Duration,
    /// Inputs that crashed (panicked or hung), distinct or not.
    pub crashes: u64,
    /// The first input of each distinct crash (at most [`MAX_FINDINGS`]).
    pub findings: Vec<Finding>,
}

impl Report {
    /// `fuzz <target>: <inputs> inputs in <secs> s, <crashes> crashes`.
    pub fn line(&self) -> String {
        format!(
            "fuzz {}: {} inputs in {:.1} s, {} crashes",
            self.target,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.crashes
        )
    }
}

/// The input of iteration `iteration` of a run with `seed` on `target`.
pub fn input(target: &Target, corpus: &[Vec<u8>], seed: u64, iteration: u64) -> Vec<u8> {
    mutate::generate(
        corpus,
        target.shape,
        &mut Rng::for_input(seed, target.name, iteration),
    )
}

/// Runs `target` on one input under the guards, and names the problem if
/// there is one. A slow input is run a second time, so that a stall of the
/// machine is not reported as a hang.
pub fn check(
    target: &Target,
    data: &[u8],
    origin: Origin<'_>,
    crash_dir: &Path,
) -> Option<Problem> {
    match guard::run_guarded(target.name, target.run, data, origin, crash_dir) {
        Outcome::Panicked(m) => Some(Problem::Panic(m)),
        Outcome::Returned(t) if t > SLOW_INPUT => {
            match guard::run_guarded(target.name, target.run, data, origin, crash_dir) {
                Outcome::Panicked(m) => Some(Problem::Panic(m)),
                Outcome::Returned(again) if again > SLOW_INPUT => Some(Problem::Slow(t.min(again))),
                Outcome::Returned(_) => None,
            }
        }
        Outcome::Returned(_) => None,
    }
}

/// Fuzzes `target` from `corpus` as `settings` say.
pub fn fuzz(target: &'static Target, corpus: &[Vec<u8>], settings: &Settings) -> Report {
    let started = Instant::now();
    let watchdog = settings
        .watchdog
        .then(|| Watchdog::start(target.name, settings.seed, settings.crash_dir.clone()));
    let mut report = Report {
        target: target.name,
        seed: settings.seed,
        inputs: 0,
        elapsed: Duration::ZERO,
        crashes: 0,
        findings: Vec::new(),
    };
    let mut iteration = 0u64;
    loop {
        if settings.iterations.is_some_and(|n| iteration >= n)
            || settings.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        let data = input(target, corpus, settings.seed, iteration);
        if let Some(w) = &watchdog {
            w.begin(iteration, &data);
        }
        let origin = Origin::Iteration {
            seed: settings.seed,
            iteration,
        };
        let problem = check(target, &data, origin, &settings.crash_dir);
        if let Some(w) = &watchdog {
            w.end();
        }
        if let Some(problem) = problem {
            record(
                &mut report,
                target,
                iteration,
                problem,
                &data,
                &settings.crash_dir,
            );
        }
        iteration += 1;
    }
    report.inputs = iteration;
    report.elapsed = started.elapsed();
    report
}

fn record(
    report: &mut Report,
    target: &Target,
    iteration: u64,
    problem: Problem,
    data: &[u8],
    crash_dir: &Path,
) {
    report.crashes += 1;
    let signature = problem.signature();
    if let Some(f) = report
        .findings
        .iter_mut()
        .find(|f| f.problem.signature() == signature)
    {
        f.count += 1;
        return;
    }
    if report.findings.len() >= MAX_FINDINGS {
        return;
    }
    report.findings.push(Finding {
        iteration,
        problem,
        saved: guard::save_input(crash_dir, target.name, data).map_err(|e| e.to_string()),
        count: 1,
    });
}

/// The input running now, for the watchdog.
struct Current {
    iteration: u64,
    /// `None` between inputs.
    started: Option<Instant>,
    input: Vec<u8>,
}

/// A thread that watches the loop: an input running longer than
/// [`STUCK_INPUT`] is saved and reported, and the process exits (code 3).
struct Watchdog {
    current: Arc<Mutex<Option<Current>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(target: &'static str, seed: u64, crash_dir: PathBuf) -> Watchdog {
        let current: Arc<Mutex<Option<Current>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s) = (current.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("engram-fuzz-watchdog".into())
            .spawn(move || {
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let guard = c.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(cur) = guard.as_ref() else { continue };
                    if cur.started.is_none_or(|t| t.elapsed() < STUCK_INPUT) {
                        continue;
                    }
                    say!(
                        "\nengram-fuzz: target {target} on iteration {} (seed {seed}) has run for \
                         over {} s: a hang. Exiting.",
                        cur.iteration,
                        STUCK_INPUT.as_secs()
                    );
                    match guard::save_input(&crash_dir, target, &cur.input) {
                        Ok(path) => say!(
                            "engram-fuzz: input saved to {}\nengram-fuzz: reproduce with: {}",
                            path.display(),
                            guard::reproduce_command(target, &path)
                        ),
                        Err(e) => say!("engram-fuzz: could not save the input: {e}"),
                    }
                    std::process::exit(3);
                }
            })
            .expect("the watchdog thread starts");
        Watchdog {
            current,
            stop,
            thread: Some(thread),
        }
    }

    fn begin(&self, iteration: u64, input: &[u8]) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match cur.as_mut() {
            Some(c) => {
                c.iteration = iteration;
                c.started = Some(Instant::now());
                c.input.clear();
                c.input.extend_from_slice(input);
            }
            None => {
                *cur = Some(Current {
                    iteration,
                    started: Some(Instant::now()),
                    input: input.to_vec(),
                })
            }
        }
    }

    fn end(&self) {
        // The entry (and its buffer) stays for the next input.
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            c.started = None;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
