//! Recovery: the one place that turns a data directory into a committer
//! ready to run. It loads the newest readable snapshot (`snapshot.rs` sets
//! an unreadable one aside and falls back to the previous one), replays the
//! WAL from that snapshot's LSN (a missing part is a gap, and recovery
//! fails rather than lose acknowledged data), queues every episode that no
//! loaded index holds, and publishes the spaces. Nothing is started here:
//! the engine starts its threads only once this has returned `Ok`.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::commit::{CommitSettings, Committer, SpaceMap};
use crate::config::EngineConfig;
use crate::error::Result;
use crate::fault::Faults;
use crate::fs::FileSystem;
use crate::indexer::Queue;
use crate::metrics::Metrics;
use crate::record::WalRecord;
use crate::snapshot;
use crate::wal::{Wal, WalOptions};

/// What recovery found, for the startup log.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub snapshot: Option<PathBuf>,
    pub snapshot_episodes: usize,
    pub wal_records: usize,
    pub spaces: usize,
    pub to_index: usize,
    pub took: Duration,
}

/// A recovered engine state, not yet running.
pub(crate) struct Recovered {
    pub committer: Committer,
    /// The spaces as readers see them (published).
    pub spaces: Arc<SpaceMap>,
    pub report: RecoveryReport,
    /// The WAL's count of durability points ([`Wal::durable_points`]).
    pub wal_durable_points: Arc<AtomicU64>,
}

/// Loads the snapshot and the WAL of `config.data_dir`. Episodes to index
/// go into `queue` without reservations (nothing replayed is dropped, even
/// above capacity).
///
/// # Errors
/// [`crate::Error::Storage`] when the WAL cannot be opened or read (a gap,
/// mid-log corruption) or a record cannot be applied.
pub(crate) fn recover(
    fs: &Arc<dyn FileSystem>,
    config: &EngineConfig,
    queue: Arc<Queue>,
    faults: Option<Arc<Faults>>,
    metrics: Option<Arc<Metrics>>,
) -> Result<Recovered> {
    let spaces: Arc<SpaceMap> = Arc::default();
    let mut report = RecoveryReport::default();

    let loaded = snapshot::load_latest(&**fs, &config.data_dir, &config.vector_dir())?;
    let from_lsn = loaded.as_ref().map_or(1, |l| l.next_lsn);
    let (wal, records) = Wal::open_on(
        fs.clone(),
        &config.data_dir.join("wal"),
        WalOptions {
            segment_bytes: config.wal.segment_bytes,
        },
        from_lsn,
    )?;
    let wal_durable_points = wal.durable_points();
    let mut committer = Committer::new(
        wal,
        CommitSettings {
            policy: config.wal.sync,
            sync_interval: Duration::from_millis(config.wal.sync_interval_ms),
            max_batch: config.max_commit_batch,
            params: config.index.clone(),
            vector_storage: config.vector_storage,
            vector_dir: config.vector_dir(),
            max_spaces: config.max_spaces,
            faults,
            metrics,
            clock: config.clock.clone(),
        },
        spaces.clone(),
        queue.clone(),
    );
    if let Some(loaded) = loaded {
        report.snapshot = Some(loaded.path);
        for ls in loaded.spaces {
            let space = ls.space;
            {
                let mut meta = space.commit_meta();
                meta.last_seq = ls.last_seq;
                for e in &ls.episodes {
                    meta.by_id.insert(&e.id, e.server_sequence);
                }
            }
            report.snapshot_episodes += ls.episodes.len();
            for e in ls.episodes {
                committer.apply_observe(&space, Arc::new(e), None);
            }
            space.restore_last_sequence(ls.last_seq);
            committer.restore_space(space);
        }
    }
    report.wal_records = records.len();
    for (_, bytes) in records {
        committer.replay(WalRecord::decode(&bytes)?)?;
    }
    committer.publish_all();
    // Replayed records are not in a snapshot yet: let the next one run.
    committer.set_last_capture(from_lsn);
    report.spaces = spaces.read().len();
    report.to_index = queue.depth();
    Ok(Recovered {
        committer,
        spaces,
        report,
        wal_durable_points,
    })
}
