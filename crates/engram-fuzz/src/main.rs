//! `engram-fuzz`: fuzzes engram's decoders for a time, from the seed
//! corpus, without coverage feedback (see the README).
//!
//! ```text
//! engram-fuzz [--secs N] [--seed S] [--target NAME]...   fuzz (default: all targets, 20 s each)
//! engram-fuzz --target NAME --reproduce FILE             run one saved input, panic printed
//! engram-fuzz --target NAME --seed S --iteration I       run input I of seed S again, saved if it crashes
//!             [--write-input FILE]                       (and written to FILE, to make a regression of it)
//! engram-fuzz --write-corpus [DIR]                       write the seed corpus (default: corpus/)
//! engram-fuzz --list                                     the targets and what they cover
//! ```
//!
//! Exit status: 0 when nothing crashed, 1 when something did, 2 for a bad
//! command line, 3 when the watchdog ended a stuck input; an allocation
//! over the limit aborts (see `guard`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use engram_fuzz::guard::{self, GuardedAlloc, Origin};
use engram_fuzz::runner::{self, Settings};
use engram_fuzz::{corpus, find, Target, TARGETS};

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

const USAGE: &str = "\
usage: engram-fuzz [--secs N] [--seed S] [--target NAME]...
       engram-fuzz --target NAME --reproduce FILE
       engram-fuzz --target NAME --seed S --iteration I [--write-input FILE]
       engram-fuzz --write-corpus [DIR]
       engram-fuzz --list

Fuzzes each target (default: all) for N seconds (default 20) from its seed
corpus; a crashing input is saved under crates/engram-fuzz/crashes/<target>/.
Exits 0 only if nothing crashed.";

enum Mode {
    Fuzz,
    Reproduce(PathBuf),
    Iteration(u64),
    WriteCorpus(PathBuf),
    List,
}

struct Args {
    mode: Mode,
    secs: f64,
    seed: Option<u64>,
    targets: Vec<&'static Target>,
    /// With `--iteration`: where to write the input made.
    write_input: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        mode: Mode::Fuzz,
        secs: 20.0,
        seed: None,
        targets: Vec::new(),
        write_input: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--secs" => {
                let v = value("--secs")?;
                out.secs = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or(format!("--secs {v}: expected a number of seconds"))?;
            }
            "--seed" => {
                let v = value("--seed")?;
                out.seed = Some(
                    v.parse()
                        .map_err(|_| format!("--seed {v}: expected a u64"))?,
                );
            }
            "--target" => {
                let v = value("--target")?;
                let t = find(&v).ok_or_else(|| {
                    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                    format!("unknown target {v}: expected one of {}", names.join(", "))
                })?;
                out.targets.push(t);
            }
            "--reproduce" => out.mode = Mode::Reproduce(value("--reproduce")?.into()),
            "--iteration" => {
                let v = value("--iteration")?;
                out.mode = Mode::Iteration(
                    v.parse()
                        .map_err(|_| format!("--iteration {v}: expected a u64"))?,
                );
            }
            "--write-input" => out.write_input = Some(value("--write-input")?.into()),
            "--write-corpus" => out.mode = Mode::WriteCorpus(corpus::corpus_dir()),
            "--list" => out.mode = Mode::List,
            "-h" | "--help" => return Err(String::new()),
            other => {
                if let Mode::WriteCorpus(dir) = &mut out.mode {
                    *dir = other.into();
                } else {
                    return Err(format!("unexpected argument {other}"));
                }
            }
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("engram-fuzz: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.mode {
        Mode::List => {
            for t in &TARGETS {
                println!("{:14} {}", t.name, t.covers);
            }
            ExitCode::SUCCESS
        }
        Mode::WriteCorpus(dir) => match corpus::write_seeds(&dir) {
            Ok((files, bytes)) => {
                println!(
                    "wrote {files} seed files ({bytes} bytes) under {}",
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "engram-fuzz: writing the corpus under {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        },
        Mode::Reproduce(file) => {
            let [target] = args.targets[..] else {
                eprintln!("engram-fuzz: --reproduce needs exactly one --target\n\n{USAGE}");
                return ExitCode::from(2);
            };
            let data = match std::fs::read(&file) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("engram-fuzz: reading {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            guard::set_verbose(true);
            if one(target, &data, Origin::File(&file)) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Mode::Iteration(iteration) => {
            let ([target], Some(seed)) = (&args.targets[..], args.seed) else {
                eprintln!("engram-fuzz: --iteration needs one --target and a --seed\n\n{USAGE}");
                return ExitCode::from(2);
            };
            let seeds = match corpus::seeds_of(target.name) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("engram-fuzz: reading the corpus of {}: {e}", target.name);
                    return ExitCode::FAILURE;
                }
            };
            let data = runner::input(target, &seeds, seed, iteration);
            if let Some(path) = &args.write_input {
                if let Err(e) = std::fs::write(path, &data) {
                    eprintln!("engram-fuzz: writing {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("input written to {}", path.display());
            }
            guard::set_verbose(true);
            if !one(target, &data, Origin::Iteration { seed, iteration }) {
                return ExitCode::SUCCESS;
            }
            match guard::save_input(&corpus::crashes_dir(), target.name, &data) {
                Ok(p) => println!("input saved to {}", p.display()),
                Err(e) => eprintln!("engram-fuzz: could not save the input: {e}"),
            }
            ExitCode::FAILURE
        }
        Mode::Fuzz => fuzz(args),
    }
}

/// Runs one input and says how it went; true if it crashed.
fn one(target: &Target, data: &[u8], origin: Origin<'_>) -> bool {
    match runner::check(target, data, origin, &corpus::crashes_dir()) {
        None => {
            println!("{}: {} bytes: no crash", target.name, data.len());
            false
        }
        Some(problem) => {
            println!("{}: {} bytes: {problem}", target.name, data.len());
            true
        }
    }
}

fn fuzz(args: Args) -> ExitCode {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let targets: Vec<&'static Target> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        args.targets
    };
    println!(
        "engram-fuzz: {} target(s), {} s each, seed {seed} (pass --seed {seed} to repeat this run)",
        targets.len(),
        args.secs
    );
    let settings = Settings {
        seed,
        duration: Some(Duration::from_secs_f64(args.secs)),
        iterations: None,
        crash_dir: corpus::crashes_dir(),
        watchdog: true,
    };
    let mut reports = Vec::new();
    for target in targets {
        let seeds = match corpus::seeds_of(target.name) {
            Ok(s) if !s.is_empty() => s,
            Ok(_) => {
                eprintln!(
                    "engram-fuzz: no seed corpus for {} under {}: run --write-corpus",
                    target.name,
                    corpus::corpus_dir().display()
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("engram-fuzz: reading the corpus of {}: {e}", target.name);
                return ExitCode::FAILURE;
            }
        };
        let report = runner::fuzz(target, &seeds, &settings);
        println!("{}", report.line());
        for f in &report.findings {
            println!(
                "  crash at iteration {} ({} input(s) like it): {}",
                f.iteration, f.count, f.problem
            );
            match &f.saved {
                Ok(path) => {
                    println!("    saved: {}", path.display());
                    println!(
                        "    reproduce: {}",
                        guard::reproduce_command(target.name, path)
                    );
                }
                Err(e) => println!("    (could not save the input: {e})"),
            }
            println!(
                "    or regenerate: engram-fuzz --target {} --seed {seed} --iteration {}",
                target.name, f.iteration
            );
        }
        reports.push(report);
    }
    let inputs: u64 = reports.iter().map(|r| r.inputs).sum();
    let crashes: u64 = reports.iter().map(|r| r.crashes).sum();
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| r.crashes > 0)
        .map(|r| r.target)
        .collect();
    if failed.is_empty() {
        println!(
            "fuzz: {} targets, {inputs} inputs, 0 crashes (seed {seed})",
            reports.len()
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "fuzz: FAILED: {crashes} crashing inputs in {} (seed {seed}); {inputs} inputs in all",
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}
