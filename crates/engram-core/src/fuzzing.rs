//! Entry points for the fuzzing harness (`crates/engram-fuzz`): the parts
//! of recovery that read untrusted bytes but are not public API.
//!
//! Not for production use, and not a stable interface: hidden from the
//! docs, and only wrappers, so that what is fuzzed is exactly the code the
//! engine runs. Nothing in the engine depends on this module.

use std::path::Path;
use std::sync::Arc;

use crate::config::EngineConfig;
use crate::error::Result;
use crate::fs::FileSystem;
use crate::indexer::Queue;
use crate::recovery::{self, RecoveryReport};

/// Runs the engine's recovery on `data_dir` exactly as [`crate::Engine::open_on`]
/// does — newest readable snapshot, WAL replay after it, each record
/// decoded and applied — and then drops the result, starting no thread.
///
/// Snapshot and WAL files are read through `fs`; compact spaces create
/// their (unnamed) vector files in `<data_dir>/vectors` on the real file
/// system, so with a [`crate::fs::SimFs`] pass a `data_dir` that is also a
/// writable real directory (a temporary one).
///
/// # Errors
/// Whatever recovery refuses: a corrupt WAL, a gap, a record that cannot
/// be decoded or applied, a compact space's vector file that fails.
pub fn recover(fs: Arc<dyn FileSystem>, data_dir: &Path) -> Result<RecoveryReport> {
    let config = EngineConfig {
        data_dir: data_dir.to_path_buf(),
        workers: 1,
        metrics: false,
        ..EngineConfig::default()
    };
    let queue: Arc<Queue> = Arc::new(Queue::new(config.queue.clone(), 1));
    let recovered = recovery::recover(&fs, &config, queue, None, None)?;
    Ok(recovered.report)
}
