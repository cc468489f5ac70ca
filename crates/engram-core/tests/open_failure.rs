//! A recovery that fails leaves nothing running (issue 10): the indexing
//! workers and the watchdog used to start before the snapshot and WAL were
//! loaded, and kept polling for ever after `Engine::open` returned its
//! error. Alone in its own test binary, so the process's threads are its
//! own.

mod common;

use std::time::{Duration, Instant};

use common::*;
use engram_core::Engine;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_failed_recovery_leaves_no_thread_running() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the WAL directory must be: the WAL cannot be opened.
    std::fs::write(dir.path().join("wal"), b"not a directory").unwrap();
    let before = threads();
    let err = match Engine::open(config(dir.path())) {
        Err(e) => e,
        Ok(_) => panic!("opened with an unusable WAL"),
    };
    assert_eq!(err.code(), "storage_failure", "{err}");
    // Any thread the attempt started must be gone (they would poll for
    // ever otherwise); a moment is allowed for one that is exiting.
    let until = Instant::now() + Duration::from_secs(3);
    while threads() > before {
        assert!(
            Instant::now() < until,
            "{} threads left running after a failed open",
            threads() - before
        );
        std::thread::park_timeout(Duration::from_millis(10));
    }
}
