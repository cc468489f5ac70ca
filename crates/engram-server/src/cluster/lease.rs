//! Partition leases: who owns which partition.
//!
//! A lease is a key `p.<n>` in the `engram_leases` KV bucket, whose
//! `max_age` is the lease TTL: a key not rewritten within a TTL vanishes.
//! - Acquire: `create` (compare-and-set on "absent"); the revision it
//!   returns is the owner's epoch, larger than every earlier one.
//! - Renew: `update` with the revision last written (compare-and-set), every
//!   quarter TTL. A renewal that finds another revision means the lease was
//!   lost: the owner stops at once.
//! - Fence: an owner that could not renew for 3/4 of a TTL stops serving
//!   (checked on every recall, not only here), a quarter TTL before anyone
//!   else can acquire the lease.
//! - Who tries first: the nodes rank themselves per partition by rendezvous
//!   hashing over the live nodes; the k-th waits k × 2 s after seeing the
//!   partition unowned, so partitions spread evenly and a restarted node
//!   gets its share back (an owner hands a partition to its preferred node
//!   once both have been up a while).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Operation;
use serde::{Deserialize, Serialize};

use super::owner::{self, Owned, StopReason};
use super::{fnv1a, partition_key, Cluster};

/// Wait per rank before trying to acquire an unowned partition.
const RANK_DELAY: Duration = Duration::from_secs(2);
/// A partition is handed to its preferred node only after the current
/// owner held it this long, and the preferred node has been up this long.
const REBALANCE_AFTER: Duration = Duration::from_secs(20);
/// A node acquires nothing in its first moments: the other nodes'
/// registry entries are read first, so that a cluster starting together
/// spreads its partitions at once.
const JOIN_SETTLE: Duration = Duration::from_secs(3);

/// The lease loop, supervised: a panic in one pass is logged and the loop
/// starts again (a lease loop that died would let every lease expire).
pub(crate) async fn run(cluster: Cluster) {
    let restarts = cluster.clone();
    supervise(
        move || lease_loop(cluster.clone()),
        move || {
            tracing::error!("cluster lease loop panicked; restarting it");
            restarts.inner.metrics.lease_loop_restarts.inc();
        },
    )
    .await;
}

/// Runs the task `make` builds until it returns; builds and runs it again
/// after each panic (`on_panic` is told first).
pub(crate) async fn supervise<F, Fut>(make: F, on_panic: impl Fn())
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(make()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                on_panic();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return,
        }
    }
}

async fn lease_loop(cluster: Cluster) {
    let inner = &cluster.inner;
    let ttl = Duration::from_secs(inner.cfg.lease_ttl_secs);
    let heartbeat = ttl / 4;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = inner.stop.clone();
    let mut last_heartbeat = Instant::now();
    let mut last_refresh: Option<Instant> = None;
    let joined = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if last_heartbeat.elapsed() >= heartbeat {
            cluster.register().await;
            last_heartbeat = Instant::now();
        }
        if last_refresh.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            cluster.refresh_nodes().await;
            cluster.exchange_progress().await;
            last_refresh = Some(Instant::now());
        }
        let settled = joined.elapsed() >= JOIN_SETTLE;
        for p in 0..inner.cfg.partitions {
            if *stop.borrow() {
                return;
            }
            step(&cluster, p, ttl, settled).await;
        }
    }
}

/// A node's score for a partition (highest wins): FNV-1a of the node id
/// mixed with the partition through splitmix64's finalizer, so that
/// nearly equal ids ("e1", "e2") still win different partitions.
fn rendezvous(node: &str, p: u32) -> u64 {
    let mut z = fnv1a(node.as_bytes()) ^ u64::from(p).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// This node's rank for partition `p` among the live nodes (0: preferred).
fn rank(cluster: &Cluster, p: u32) -> (usize, String) {
    let view = cluster.inner.node_view.read();
    let mut nodes: Vec<(u64, &String)> = view.keys().map(|n| (rendezvous(n, p), n)).collect();
    nodes.sort_by(|a, b| b.cmp(a));
    let me = cluster.node_id();
    let rank = nodes
        .iter()
        .position(|(_, n)| *n == me)
        .unwrap_or(nodes.len());
    let preferred = nodes.first().map(|(_, n)| (*n).clone()).unwrap_or_default();
    (rank, preferred)
}

async fn step(cluster: &Cluster, p: u32, ttl: Duration, may_acquire: bool) {
    let inner = &cluster.inner;
    let part = &inner.parts[p as usize];
    let key = partition_key(p);
    let owned = part.owned.read().clone();
    let entry = match inner.leases.entry(&key).await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(partition = p, error = %e, "reading a lease failed");
            if let Some(o) = owned {
                if !o.lease_valid() {
                    lose(cluster, p, &o, "its lease could not be renewed");
                }
            }
            return;
        }
    };
    let lease = lease_of(entry);
    *part.lease.write() = lease.as_ref().map(|(owner, epoch, _)| super::LeaseView {
        owner: owner.clone(),
        epoch: *epoch,
    });
    if let Some(o) = owned {
        // A read may be answered by a replica that lags (KV direct gets):
        // what it shows never ends an ownership by itself. The renewal, a
        // compare-and-set on the revision this node last wrote, decides;
        // a read that does not show this node's lease only renews now.
        let shows_ours = lease
            .as_ref()
            .is_some_and(|(owner, epoch, _)| owner == cluster.node_id() && *epoch == o.epoch);
        if !shows_ours || o.since_renewed() >= ttl / 4 {
            renew(cluster, p, &o).await;
        }
        if part
            .owned
            .read()
            .as_ref()
            .is_some_and(|x| Arc::ptr_eq(x, &o))
        {
            maybe_rebalance(cluster, p, &o).await;
        }
        return;
    }
    if lease.is_some() {
        *part.unowned_since.lock() = None;
        return;
    }
    let since = *part.unowned_since.lock().get_or_insert_with(Instant::now);
    let (rank, _) = rank(cluster, p);
    if !may_acquire || since.elapsed() < RANK_DELAY * rank as u32 {
        return;
    }
    let value = serde_json::to_vec(&LeaseValue {
        owner: cluster.node_id().to_owned(),
        epoch: 0,
    })
    .expect("a lease serializes");
    match inner.leases.create(&key, value.into()).await {
        Ok(revision) => {
            *part.unowned_since.lock() = None;
            tracing::info!(
                partition = p,
                epoch = revision,
                node = %cluster.node_id(),
                "acquired partition lease"
            );
            inner.metrics.ownership_changes.inc();
            let o = Owned::new(revision, ttl);
            *part.owned.write() = Some(o.clone());
            *part.lease.write() = Some(super::LeaseView {
                owner: cluster.node_id().to_owned(),
                epoch: revision,
            });
            tokio::spawn(owner::run(cluster.clone(), p, o));
        }
        Err(e) => {
            tracing::debug!(partition = p, error = %e, "another node acquired the lease first");
        }
    }
}

/// (owner, epoch, revision) of a lease entry; `None` when deleted.
fn lease_of(entry: Option<async_nats::jetstream::kv::Entry>) -> Option<(String, u64, u64)> {
    entry
        .filter(|e| e.operation == Operation::Put)
        .and_then(|e| {
            let v: LeaseValue = serde_json::from_slice(&e.value).ok()?;
            let epoch = if v.epoch == 0 { e.revision } else { v.epoch };
            Some((v.owner, epoch, e.revision))
        })
}

/// Reads the lease of `p` now (the lease loop's view may be up to a tick
/// old) and updates the view.
pub(crate) async fn read_lease(cluster: &Cluster, p: u32) -> Option<super::LeaseView> {
    let entry = cluster.inner.leases.entry(partition_key(p)).await.ok()?;
    let view = lease_of(entry).map(|(owner, epoch, _)| super::LeaseView { owner, epoch });
    *cluster.inner.parts[p as usize].lease.write() = view.clone();
    view
}

/// Renews the lease of `p`: an update expecting the revision this node
/// last wrote. Another revision there means the lease was written by
/// someone else, unless it is this node's own at its epoch (a renewal
/// whose reply was lost): then that revision is adopted and the update
/// tried again.
async fn renew(cluster: &Cluster, p: u32, o: &Arc<Owned>) {
    use async_nats::jetstream::kv::UpdateErrorKind;
    use std::sync::atomic::Ordering;
    let value: bytes::Bytes = serde_json::to_vec(&LeaseValue {
        owner: cluster.node_id().to_owned(),
        epoch: o.epoch,
    })
    .expect("a lease serializes")
    .into();
    let key = partition_key(p);
    let leases = &cluster.inner.leases;
    for attempt in 0..2 {
        let expected = o.revision.load(Ordering::Acquire);
        match leases.update(&key, value.clone(), expected).await {
            Ok(revision) => {
                o.revision.store(revision, Ordering::Release);
                o.renewed();
                return;
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                let current = leases.entry(&key).await.ok().flatten();
                let revision = current.as_ref().map(|e| e.revision);
                let ours = lease_of(current).is_some_and(|(owner, epoch, _)| {
                    owner == cluster.node_id() && epoch == o.epoch
                });
                match revision {
                    Some(r) if ours && attempt == 0 && r != expected => {
                        o.revision.store(r, Ordering::Release);
                    }
                    _ => {
                        lose(
                            cluster,
                            p,
                            o,
                            "its lease was written by another node or expired",
                        );
                        return;
                    }
                }
            }
            Err(e) => {
                if !o.lease_valid() {
                    lose(
                        cluster,
                        p,
                        o,
                        &format!("its lease could not be renewed: {e}"),
                    );
                } else {
                    tracing::warn!(partition = p, error = %e, "renewing a lease failed; retrying");
                }
                return;
            }
        }
    }
}

/// Stops owning `p` at once (someone else may own it already): no last
/// snapshot, no lease release.
fn lose(cluster: &Cluster, p: u32, o: &Arc<Owned>, why: &str) {
    let part = &cluster.inner.parts[p as usize];
    let mut owned = part.owned.write();
    if owned.as_ref().is_some_and(|x| Arc::ptr_eq(x, o)) {
        *owned = None;
        drop(owned);
        tracing::warn!(partition = p, epoch = o.epoch, why, "lost partition lease");
        cluster.inner.metrics.ownership_changes.inc();
        o.stop(StopReason::Lost);
    }
}

/// Hands `p` on: the owner applies what it has, writes a last snapshot
/// and deletes its lease (only its own revision), so the next owner starts
/// at once from an up-to-date snapshot.
pub(crate) async fn release(cluster: &Cluster, p: u32, o: &Arc<Owned>, why: &str) {
    tracing::info!(partition = p, epoch = o.epoch, why, "releasing partition");
    o.stop(StopReason::Release);
    o.finished().await;
    let part = &cluster.inner.parts[p as usize];
    {
        let mut owned = part.owned.write();
        if owned.as_ref().is_some_and(|x| Arc::ptr_eq(x, o)) {
            *owned = None;
        }
    }
    delete_if_ours(cluster, p, o).await;
    cluster.inner.metrics.ownership_changes.inc();
}

/// Deletes the lease of `p` only while it is still this node's
/// (compare-and-set on the revision it last wrote, else on the one a read
/// shows, if that read shows this node's lease at its epoch): never
/// another owner's. A delete that loses a race leaves the lease to
/// expire.
pub(crate) async fn delete_if_ours(cluster: &Cluster, p: u32, o: &Owned) {
    let key = partition_key(p);
    let leases = &cluster.inner.leases;
    let last = o.revision.load(std::sync::atomic::Ordering::Acquire);
    if leases
        .delete_expect_revision(&key, Some(last))
        .await
        .is_ok()
    {
        return;
    }
    let Ok(entry) = leases.entry(&key).await else {
        return;
    };
    let Some(revision) = entry.as_ref().map(|e| e.revision) else {
        return;
    };
    let ours =
        lease_of(entry).is_some_and(|(owner, e, _)| owner == cluster.node_id() && e == o.epoch);
    if ours {
        let _ = leases.delete_expect_revision(&key, Some(revision)).await;
    }
}

async fn maybe_rebalance(cluster: &Cluster, p: u32, o: &Arc<Owned>) {
    if o.since.elapsed() < REBALANCE_AFTER || !o.is_serving() {
        return;
    }
    let (rank, preferred) = rank(cluster, p);
    if rank == 0 || preferred.is_empty() {
        return;
    }
    let settled = cluster
        .inner
        .node_view
        .read()
        .get(&preferred)
        .is_some_and(|n| {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            now_ms.saturating_sub(n.started_ms) >= REBALANCE_AFTER.as_millis() as u64
        });
    if settled {
        let cluster = cluster.clone();
        let o = o.clone();
        // Off the lease loop: the last snapshot may take a while, and the
        // other leases must be renewed meanwhile.
        tokio::spawn(async move {
            release(&cluster, p, &o, &format!("handing it to {preferred}")).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{rendezvous, supervise};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_panicking_loop_is_restarted_until_it_returns() {
        let runs = Arc::new(AtomicU32::new(0));
        let panics = Arc::new(AtomicU32::new(0));
        let (r, p) = (runs.clone(), panics.clone());
        supervise(
            move || {
                let r = r.clone();
                async move {
                    // Panics in its first two runs, returns in the third.
                    if r.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("injected");
                    }
                }
            },
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(panics.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn similar_node_ids_share_the_partitions() {
        let nodes = ["e1", "e2", "e3"];
        let mut wins = [0usize; 3];
        for p in 0..64 {
            let best = (0..3).max_by_key(|i| rendezvous(nodes[*i], p)).unwrap();
            wins[best] += 1;
        }
        for w in wins {
            assert!((12..=32).contains(&w), "uneven: {wins:?}");
        }
    }
}

/// A lease's value.
#[derive(Serialize, Deserialize)]
struct LeaseValue {
    owner: String,
    /// The revision the lease was acquired at; 0 in the acquiring write
    /// itself (whose revision it is).
    epoch: u64,
}
