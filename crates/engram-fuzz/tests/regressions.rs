//! The fuzz harness under `cargo test`: every target on every corpus and
//! regression file, the seed corpus checked against the writers, a short
//! fixed-seed fuzz run of every target, the harness's own guards, and one
//! named test per decoder bug the fuzzer found (or that its findings
//! showed next to them), asserting the error that replaced the crash.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engram_core::commit::{Capture, SpaceCapture};
use engram_core::fs::{FileSystem, SimFs};
use engram_core::index::HnswParams;
use engram_core::model::{SpaceId, StoredEpisode, VectorStorage};
use engram_core::record::WalRecord;
use engram_core::space::Space;
use engram_core::wal::{RawRecord, Wal, WalError, WalOptions, MAX_LSN};
use engram_fuzz::corpus::{corpus_dir, crashes_dir, files, regressions_dir};
use engram_fuzz::guard::{GuardedAlloc, Origin};
use engram_fuzz::mutate::Shape;
use engram_fuzz::runner::{self, Problem, Settings};
use engram_fuzz::targets::{data_dir, machine, recover, seed_episode, seed_vector, wal};
use engram_fuzz::{Target, TARGETS};

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// The seed of the fixed fuzz run.
const SEED: u64 = 20_260_101;
/// Inputs per target in the fixed fuzz run.
const ITERATIONS: u64 = 2_000;

fn regression(target: &str, name: &str) -> Vec<u8> {
    let path = regressions_dir().join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_target_survives_its_corpus_and_regressions() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for t in &TARGETS {
        for dir in [corpus_dir().join(t.name), regressions_dir().join(t.name)] {
            for (path, data) in files(&dir).unwrap() {
                ran += 1;
                if let Some(p) = runner::check(t, &data, Origin::File(&path), &crashes_dir()) {
                    failures.push(format!("{} on {}: {p}", t.name, path.display()));
                }
            }
        }
    }
    assert!(ran > 0, "no corpus or regression file found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_seed_is_valid_input() {
    for t in &TARGETS {
        let seeds = files(&corpus_dir().join(t.name)).unwrap();
        assert!(!seeds.is_empty(), "{} has no seed corpus", t.name);
        for (path, data) in seeds {
            let name = path.file_name().unwrap().to_string_lossy();
            if let Err(e) = (t.check_seed)(&name, &data) {
                panic!(
                    "{}: seed {} is not valid input: {e}",
                    t.name,
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_committed_corpus_is_what_the_writers_make() {
    for t in &TARGETS {
        let committed: Vec<(String, Vec<u8>)> = files(&corpus_dir().join(t.name))
            .unwrap()
            .into_iter()
            .map(|(p, d)| (p.file_name().unwrap().to_string_lossy().into_owned(), d))
            .collect();
        let mut made = (t.seeds)();
        made.sort();
        assert!(
            committed == made,
            "{}: the seed corpus differs from what the writers make now (a format changed?): \
             run `cargo run --profile ci -p engram-fuzz -- --write-corpus` and commit the result",
            t.name
        );
    }
}

#[test]
fn the_corpus_stays_small() {
    let total: usize = TARGETS
        .iter()
        .flat_map(|t| files(&corpus_dir().join(t.name)).unwrap())
        .map(|(_, d)| d.len())
        .sum();
    assert!(total < 200 * 1024, "the seed corpus is {total} bytes");
}

#[test]
fn a_short_fuzz_run_of_every_target_finds_nothing() {
    for t in &TARGETS {
        let seeds: Vec<Vec<u8>> = files(&corpus_dir().join(t.name))
            .unwrap()
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let report = runner::fuzz(
            t,
            &seeds,
            &Settings {
                seed: SEED,
                duration: None,
                iterations: Some(ITERATIONS),
                crash_dir: crashes_dir(),
                watchdog: false,
            },
        );
        assert_eq!(report.inputs, ITERATIONS);
        let findings: Vec<String> = report
            .findings
            .iter()
            .map(|f| format!("iteration {}: {}", f.iteration, f.problem))
            .collect();
        assert_eq!(
            report.crashes,
            0,
            "{}\n{}",
            report.line(),
            findings.join("\n")
        );
    }
}

// ---- the harness itself ----

fn panics_on_0x42(data: &[u8]) {
    if data.first() == Some(&0x42) {
        panic!("found the byte");
    }
}

fn sleeps_on_1(data: &[u8]) {
    if data.first() == Some(&1) {
        std::thread::sleep(Duration::from_millis(1050));
    }
}

fn no_seeds() -> Vec<(String, Vec<u8>)> {
    Vec::new()
}

fn any_seed(_: &str, _: &[u8]) -> Result<(), String> {
    Ok(())
}

static PANICKY: Target = Target {
    name: "selftest_panic",
    shape: Shape::Binary,
    run: panics_on_0x42,
    seeds: no_seeds,
    check_seed: any_seed,
    covers: "a target that panics on one byte",
};

static SLOW: Target = Target {
    name: "selftest_slow",
    shape: Shape::Binary,
    run: sleeps_on_1,
    seeds: no_seeds,
    check_seed: any_seed,
    covers: "a target that takes over a second on one byte",
};

#[test]
fn a_panic_is_caught_saved_and_made_again_from_its_iteration() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = vec![vec![0x40, 0, 0, 0]];
    let settings = Settings {
        seed: 5,
        duration: None,
        iterations: Some(3000),
        crash_dir: tmp.path().to_path_buf(),
        watchdog: true,
    };
    let report = runner::fuzz(&PANICKY, &corpus, &settings);
    assert!(report.crashes > 0, "{}", report.line());
    assert_eq!(report.findings.len(), 1, "one panic site, one finding");
    let f = &report.findings[0];
    match &f.problem {
        Problem::Panic(m) => assert!(
            m.starts_with("found the byte (at ") && m.contains("regressions.rs"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.count, report.crashes);
    let saved = f.saved.as_ref().unwrap();
    assert!(saved.starts_with(tmp.path().join("selftest_panic")));
    let input = std::fs::read(saved).unwrap();
    assert_eq!(input[0], 0x42);
    // The iteration makes the same input again.
    assert_eq!(runner::input(&PANICKY, &corpus, 5, f.iteration), input);
    // The report line has the documented shape.
    assert_eq!(
        report.line(),
        format!(
            "fuzz selftest_panic: 3000 inputs in {:.1} s, {} crashes",
            report.elapsed.as_secs_f64(),
            report.crashes
        )
    );
}

#[test]
fn a_slow_input_is_reported_as_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::File(Path::new("slow"));
    assert_eq!(runner::check(&SLOW, &[0], origin, tmp.path()), None);
    match runner::check(&SLOW, &[1], origin, tmp.path()) {
        Some(Problem::Slow(d)) => assert!(d > Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
}

fn allocates_512_mib_on_7(data: &[u8]) {
    if data == [7] {
        std::hint::black_box(Vec::<u8>::with_capacity(512 << 20));
    }
}

static GREEDY: Target = Target {
    name: "selftest_greedy",
    shape: Shape::Binary,
    run: allocates_512_mib_on_7,
    seeds: no_seeds,
    check_seed: any_seed,
    covers: "a target that allocates 512 MiB on one input",
};

/// Where [`child_allocates_over_the_limit`] saves its input; set only when
/// it runs as the child of the test below.
const CHILD_CRASH_DIR: &str = "ENGRAM_FUZZ_TEST_CHILD_CRASH_DIR";

/// The child process of `an_allocation_over_the_limit_saves_the_input_and_aborts`:
/// with [`CHILD_CRASH_DIR`] set (only there) it allocates over the guard's
/// limit and aborts its process; in the normal run it has nothing to do.
#[test]
fn child_allocates_over_the_limit() {
    let Some(dir) = std::env::var_os(CHILD_CRASH_DIR) else {
        return;
    };
    let origin = Origin::Iteration {
        seed: 9,
        iteration: 4,
    };
    runner::check(&GREEDY, &[7], origin, Path::new(&dir));
    unreachable!("the allocation guard lets 512 MiB through");
}

#[test]
fn an_allocation_over_the_limit_saves_the_input_and_aborts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_allocates_over_the_limit", "--exact"])
        .env(CHILD_CRASH_DIR, tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child did not abort: {stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "SIGABRT expected: {stderr}");
    }
    assert!(
        stderr.contains(
            "target selftest_greedy on iteration 4 (seed 9): one allocation of 536870912 bytes, \
             over the 256 MiB limit"
        ),
        "{stderr}"
    );
    let saved = files(&tmp.path().join("selftest_greedy")).unwrap();
    assert_eq!(saved.len(), 1, "{stderr}");
    assert_eq!(saved[0].1, [7]);
    assert!(stderr.contains(&format!("input saved to {}", saved[0].0.display())));
}

// ---- wal_record: decoder bugs the fuzzer found ----

/// Found by the fuzzer (seed 1, iteration 47): the seed log with one byte
/// of the last observation's sequence set, checksums repaired. Replay
/// applied it, and the space grew its table of episodes to 4,278,190,081
/// slots (34 GB) — an abort; a repeated sequence failed an assert instead.
/// Replay now refuses any sequence but the space's next.
#[test]
fn wal_observe_with_a_sequence_far_ahead_is_refused_not_allocated() {
    let data = wal::repair(&regression("wal_record", "observe-sequence-far-ahead"));
    let err = recover(&machine(&wal::segments(&data))).unwrap_err();
    assert!(
        err.contains(
            "WAL observes sequence 4278190081 into space 'compact', whose next sequence is 1"
        ),
        "{err}"
    );
}

fn open_wal(fs: &SimFs) -> Result<(Wal, Vec<RawRecord>), WalError> {
    let fs: Arc<dyn FileSystem> = Arc::new(fs.clone());
    Wal::open_on(fs, &data_dir().join("wal"), WalOptions::default(), 1)
}

/// Found by the fuzzer (seed 1, iteration 0): a lone segment whose header
/// is damaged, named for lsn 288230380379570177. Recovery removed it as a
/// segment whose creation a crash cut short and continued the log at that
/// lsn, silently missing every record before it; the next open then
/// refused the log with a gap. The gap is now reported at once.
#[test]
fn wal_torn_segment_after_a_gap_is_a_gap() {
    let data = regression("wal_record", "torn-segment-after-a-gap");
    match open_wal(&machine(&wal::segments(&data))) {
        Err(WalError::Gap {
            expected, found, ..
        }) => assert_eq!((expected, found), (1, 288_230_380_379_570_177)),
        Err(e) => panic!("expected a gap, got {e}"),
        Ok(_) => panic!("expected a gap, the log opened"),
    }
}

/// Found by the fuzzer (seed 1, iteration 1886): the same, named for lsn
/// `u64::MAX`. The log continued there, and the first append overflowed
/// the next lsn (a panic with overflow checks, a wrapped lsn without).
#[test]
fn wal_torn_segment_named_for_the_last_lsn_is_a_gap_not_an_overflow() {
    let data = regression("wal_record", "segment-at-the-last-lsn");
    let files = wal::segments(&data);
    assert!(files[0].0.ends_with("wal-18446744073709551615.log"));
    assert!(matches!(
        open_wal(&machine(&files)),
        Err(WalError::Gap {
            found: u64::MAX,
            ..
        })
    ));
}

/// A segment whose intact header claims a first lsn at or above
/// [`MAX_LSN`] is refused: nothing from it can run the log into overflow.
#[test]
fn wal_segment_starting_at_the_largest_lsn_is_corrupt() {
    let mut data = b"EGWL".to_vec();
    data.extend_from_slice(&1u32.to_le_bytes());
    data.extend_from_slice(&MAX_LSN.to_le_bytes());
    data.extend_from_slice(&[0; 4]);
    let data = wal::repair(&data);
    match open_wal(&machine(&wal::segments(&data))) {
        Err(WalError::Corrupt { reason, .. }) => {
            assert!(reason.contains("largest lsn ever written"), "{reason}")
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, the log opened"),
    }
}

/// A log of `records` as the real writer makes it, in `data_dir()/wal` of a
/// fresh machine.
fn written_log(records: &[WalRecord]) -> SimFs {
    let sim = SimFs::new();
    let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
    let (mut w, _) = Wal::open_on(fs, &data_dir().join("wal"), WalOptions::default(), 1).unwrap();
    for r in records {
        w.append(&r.encode()).unwrap();
    }
    w.sync().unwrap();
    sim
}

fn space(name: &str) -> SpaceId {
    SpaceId::parse(name).unwrap()
}

/// A record creating a space of 0 dimensions failed the index's assert
/// (a panic at recovery); replay now refuses it, and any dimension outside
/// what the engine ever created.
#[test]
fn wal_space_of_zero_or_too_many_dimensions_is_refused() {
    for dimension in [0, engram_core::model::MAX_DIMENSION + 1, usize::MAX] {
        let fs = written_log(&[WalRecord::CreateSpace {
            space: space("s"),
            dimension,
        }]);
        let err = recover(&fs).unwrap_err();
        assert!(
            err.contains(&format!(
                "WAL creates space 's' with {dimension} dimensions"
            )),
            "{err}"
        );
    }
}

/// A repeated sequence failed `Space::apply_observe`'s assert; a vector
/// of another dimension went into the fresh tier, where recall and
/// indexing assume the space's. Replay refuses both.
#[test]
fn wal_observe_repeating_a_sequence_or_of_another_dimension_is_refused() {
    let create = WalRecord::CreateSpace {
        space: space("s"),
        dimension: 4,
    };
    let observe = |episode: StoredEpisode| WalRecord::Observe {
        space: space("s"),
        episode,
    };
    let fs = written_log(&[
        create.clone(),
        observe(seed_episode(1, true)),
        observe(seed_episode(1, true)),
    ]);
    let err = recover(&fs).unwrap_err();
    assert!(
        err.contains("WAL observes sequence 1 into space 's', whose next sequence is 2"),
        "{err}"
    );
    let mut narrow = seed_episode(1, true);
    narrow.embedding = vec![1.0, 0.0, 0.0].into();
    let err = recover(&written_log(&[create, observe(narrow)])).unwrap_err();
    assert!(
        err.contains("WAL observes a vector of 3 dimensions into space 's' of 4"),
        "{err}"
    );
}

// ---- snapshot: decoder bugs the fuzzer found ----

/// Found by the fuzzer (seed 1, iteration 2): the version 2 seed with one
/// high byte of a string's length set. bincode's stream reader resized its
/// buffer to the 2 GiB read before reading a byte of it (an abort, or 2 GiB
/// of zeros); the loader now limits what one value may read to the file's
/// size, so the snapshot is corrupt and set aside.
#[test]
fn snapshot_string_length_past_the_end_is_corrupt_not_allocated() {
    let data = regression("snapshot", "episode-string-length-huge");
    for data in [data.clone(), engram_fuzz::targets::snapshot::repair(&data)] {
        let report = recover_snapshot(&data);
        assert!(
            report.snapshot.is_none(),
            "the snapshot should be set aside"
        );
    }
}

/// `data` as the only snapshot of a data directory, recovered.
fn recover_snapshot(data: &[u8]) -> engram_core::recovery::RecoveryReport {
    let path = data_dir().join("snapshots").join("snapshot-1.snap");
    recover(&machine(&[(path, data)])).expect("recovery sets a bad snapshot aside")
}

fn params() -> HnswParams {
    HnswParams {
        m: 4,
        ef_construction: 16,
        ef_search: 16,
        seed: 7,
    }
}

/// A space of `dimension` holding `episodes` (fresh: with their vectors),
/// captured with `last_seq`.
fn captured(dimension: usize, episodes: Vec<StoredEpisode>, last_seq: u64) -> SpaceCapture {
    let s = Space::create(
        space("s"),
        dimension,
        params(),
        VectorStorage::Memory,
        &data_dir().join("vectors"),
    )
    .unwrap();
    SpaceCapture {
        space: Arc::new(s),
        last_seq,
        episodes: episodes.into_iter().map(Arc::new).collect(),
    }
}

/// Recovers from the snapshot the real writer makes of `spaces`; whether
/// it loaded (or was set aside).
fn snapshot_loads(spaces: Vec<SpaceCapture>, next_lsn: u64) -> bool {
    let fs = SimFs::new();
    engram_core::snapshot::write(&fs, &data_dir(), &Capture { next_lsn, spaces }).unwrap();
    recover(&fs).unwrap().snapshot.is_some()
}

#[test]
fn snapshot_with_its_episodes_as_written_loads() {
    let episodes = (1..=3).map(|s| seed_episode(s, true)).collect();
    assert!(snapshot_loads(vec![captured(4, episodes, 3)], 10));
}

/// Episodes out of sequence order failed `Space::apply_observe`'s assert
/// at recovery (a panic); a snapshot holding them is now corrupt.
#[test]
fn snapshot_with_episodes_out_of_order_is_set_aside() {
    let episodes = vec![seed_episode(2, true), seed_episode(1, true)];
    assert!(!snapshot_loads(vec![captured(4, episodes, 2)], 10));
    let episodes = vec![seed_episode(1, true), seed_episode(1, true)];
    assert!(!snapshot_loads(vec![captured(4, episodes, 2)], 10));
}

/// The writer stores a space's live episodes at or below its last
/// sequence, and never lsns near the end of the `u64` range: a snapshot
/// saying otherwise is corrupt. (A last sequence itself is not bounded: a
/// space's table of episodes takes 8 bytes per sequence, so a snapshot
/// claiming a huge one still makes recovery allocate that table. The README
/// lists this as an open finding.)
#[test]
fn snapshot_with_an_episode_above_its_last_sequence_or_a_huge_lsn_is_set_aside() {
    let episodes = vec![seed_episode(5, true)];
    assert!(!snapshot_loads(vec![captured(4, episodes, 4)], 10));
    assert!(!snapshot_loads(Vec::new(), MAX_LSN));
    assert!(snapshot_loads(Vec::new(), MAX_LSN - 1));
}

/// A held vector of another dimension than the space's is corrupt: recall
/// and indexing assume the space's.
#[test]
fn snapshot_with_a_vector_of_another_dimension_is_set_aside() {
    let mut narrow = seed_episode(1, true);
    narrow.embedding = seed_vector(1)[..3].into();
    assert!(!snapshot_loads(vec![captured(4, vec![narrow], 1)], 10));
}

/// The space count is read before any space: `u32::MAX` reserved room for
/// 4 billion spaces (about 170 GB) before the first byte of one was read.
#[test]
fn snapshot_space_count_of_u32_max_is_set_aside_not_allocated() {
    let fs = SimFs::new();
    let written = engram_core::snapshot::write(
        &fs,
        &data_dir(),
        &Capture {
            next_lsn: 10,
            spaces: vec![captured(4, Vec::new(), 0)],
        },
    )
    .unwrap();
    let mut data = fs.read(&written.path).unwrap();
    data[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    let data = engram_fuzz::targets::snapshot::repair(&data);
    assert!(recover_snapshot(&data).snapshot.is_none());
}

/// Open finding F1 (found by the fuzzer, seed 11, iteration 424280, before
/// the suppression): the seed snapshot with a space's last sequence set to
/// 562,949,953,421,318, checksums repaired. Recovery sized the space's
/// table of episodes for it (4.5 PB: an abort). Not fixed (see the README);
/// the snapshot target skips such inputs, and this keeps that skip narrow:
/// it catches this input and no seed.
#[test]
fn open_finding_f1_is_skipped_and_nothing_else_is() {
    use engram_fuzz::targets::snapshot::claims_a_huge_table;
    assert!(claims_a_huge_table(&regression(
        "snapshot",
        "open-f1-last-sequence-huge"
    )));
    for (path, data) in files(&corpus_dir().join("snapshot")).unwrap() {
        assert!(!claims_a_huge_table(&data), "{}", path.display());
    }
}
