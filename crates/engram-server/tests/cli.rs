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
