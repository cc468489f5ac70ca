//! `engram config` prints the effective configuration.

use std::process::Command;

#[test]
fn config_prints_defaults_with_env_and_flag_overrides() {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["config", "--queue-capacity", "1234", "--wal-sync", "none"])
        .env("ENGRAM_WORKERS", "3")
        .env_remove("ENGRAM_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "capacity = 1234",
        "workers = 3",
        "sync = \"none\"",
        "addr = \"127.0.0.1:8080\"",
        "data_dir = \"./engram-data\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn bad_flag_values_fail_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["config", "--wal-sync", "sometimes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("always") && err.contains("interval"), "{err}");
}

#[test]
fn vector_storage_flag_and_variable_set_the_engine_default() {
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engram"));
        cmd.arg("config")
            .args(args)
            .env_remove("ENGRAM_CONFIG")
            .env_remove("ENGRAM_VECTOR_STORAGE");
        if let Some(v) = env {
            cmd.env("ENGRAM_VECTOR_STORAGE", v);
        }
        cmd.output().unwrap()
    };
    let text = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let default = text(run(&[], None));
    assert!(default.contains("vector_storage = \"memory\""), "{default}");
    let flag = text(run(&["--vector-storage", "compact"], None));
    assert!(flag.contains("vector_storage = \"compact\""), "{flag}");
    let env = text(run(&[], Some("compact")));
    assert!(env.contains("vector_storage = \"compact\""), "{env}");
    let wins = text(run(&["--vector-storage", "memory"], Some("compact")));
    assert!(wins.contains("vector_storage = \"memory\""), "{wins}");

    let bad = run(&["--vector-storage", "disk"], None);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("vector_storage") && err.contains("'memory' or 'compact'"),
        "{err}"
    );
}

/// The binary's allocator runs with jemalloc's background threads (freed
/// memory goes back to the OS even when the threads that freed it go
/// quiet): the compiled-in `_rjem_malloc_conf` is read. jemalloc prints its
/// options at exit when asked to.
#[cfg(target_os = "linux")]
#[test]
fn the_allocator_runs_with_background_purging() {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["config"])
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .env_remove("ENGRAM_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(
        stats.contains("opt.background_thread: true"),
        "jemalloc options at exit:\n{}",
        stats
            .lines()
            .filter(|l| l.contains("opt."))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
