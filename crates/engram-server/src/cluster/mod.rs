//! Cluster mode: memory spaces partitioned over several engram nodes, with
//! NATS JetStream as the replicated log (docs/design/cluster.md).
//!
//! - Each space hashes to one of P partitions ([`partition_of`]); each
//!   partition is a JetStream stream replicated over the NATS servers.
//! - Writes ([`Cluster::remember`], in `write`): any node validates,
//!   publishes with a message id (retries are idempotent) and acks after
//!   JetStream's PubAck, with a consistency token (partition, sequence).
//! - Ownership (`lease`): one node per partition holds a lease in a
//!   JetStream KV bucket; the revision it acquired the lease at is its
//!   epoch.
//! - The owner (`owner`) loads the newest snapshot from the object store,
//!   replays the stream from its sequence into a local engine, applies new
//!   writes as they arrive, serves recall and writes snapshots.
//! - Other nodes forward recalls to the owner (`route`).
//! - Streaming sessions (`sessions`) live on the node their stream is
//!   attached to and publish each observation as a write.

// tonic::Status is large, but it is what the gRPC handlers return anyway.
#![allow(clippy::result_large_err)]

mod config;
mod lease;
mod metrics;
mod owner;
pub mod proxy;
mod route;
mod sessions;
mod write;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, object_store, stream};
use engram_core::EngineConfig;
use engram_proto::v1 as pb;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use config::ClusterConfig;
pub use route::{forward_failed, OwnerAt, Route, FORWARDED_HEADER};

use owner::Owned;

/// How long a write waits for one PubAck before publishing again.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// KV bucket of partition leases: key `p.<n>`, value the owner's node id.
const LEASES: &str = "engram_leases";
/// KV bucket of live nodes: key node id, value [`NodeEntry`] as JSON.
const NODES: &str = "engram_nodes";
/// KV bucket of spaces: key the hex of the space id, value [`SpaceEntry`].
const SPACES: &str = "engram_spaces";
/// KV bucket of snapshot pointers: key `p.<n>`, value [`SnapshotPointer`].
const SNAPSHOT_POINTERS: &str = "engram_snapshot_pointers";
/// Key in [`SPACES`] holding the cluster's partition count (not hex, so
/// no space's key).
const PARTITION_COUNT_KEY: &str = "partitions";
/// KV bucket of owners' progress: key `p.<n>`, value [`Progress`].
const PROGRESS: &str = "engram_progress";
/// Object store bucket holding the snapshot files.
const SNAPSHOTS: &str = "engram_snapshots";

/// The stream of partition `p`.
fn stream_name(p: u32) -> String {
    format!("ENGRAM_P{p}")
}

/// The subject writes to partition `p` are published on.
fn subject(p: u32) -> String {
    format!("engram.p.{p}")
}

fn partition_key(p: u32) -> String {
    format!("p.{p}")
}

/// 64-bit FNV-1a: stable across nodes, builds and Rust versions (the
/// partition of a space must never change while the cluster lives).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The partition a space belongs to.
pub fn partition_of(space: &str, partitions: u32) -> u32 {
    (fnv1a(space.as_bytes()) % u64::from(partitions)) as u32
}

/// A node as it registers itself (refreshed every quarter lease TTL; it
/// disappears a TTL after the node stops).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeEntry {
    pub grpc: String,
    pub http: String,
    /// Unix milliseconds the node started (rebalancing waits for a new
    /// node to settle).
    pub started_ms: u64,
}

/// A space as the cluster knows it; written when the space is created
/// (explicitly or by its first observation), replaced by a tombstone when
/// it is deleted, and by a new entry (a new generation: the KV revision)
/// when it is created again.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SpaceEntry {
    pub dimension: usize,
    #[serde(default)]
    pub vector_storage: Option<engram_core::model::VectorStorage>,
    #[serde(default)]
    pub default_ttl_secs: Option<f64>,
    /// A tombstone: the space was deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// A tombstone whose delete record the owner has applied: the space
    /// may be created again (before that, creating answers UNAVAILABLE, so
    /// that no record of a new generation precedes the delete in the log).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
    /// A tombstone: the generation it deleted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deleted_generation: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Where a partition's newest snapshot is: only ever moved forward in
/// (epoch, sequence), by compare-and-set on its KV revision.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SnapshotPointer {
    pub epoch: u64,
    /// The last stream sequence the snapshot holds.
    pub sequence: u64,
    /// The object's name in the object store.
    pub object: String,
    /// The snapshot file's own name (the engine reads its WAL position
    /// from it).
    pub file: String,
    pub bytes: u64,
}

/// How far an owner has applied its partition (written every second):
/// what other nodes report as the partition's lag and admit writes by.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub epoch: u64,
    pub applied: u64,
    pub stream_last: u64,
}

/// A lease as this node last read it.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseView {
    pub owner: String,
    /// The revision the owner acquired the lease at.
    pub epoch: u64,
}

/// This node's view of one partition.
pub(crate) struct Part {
    pub lease: RwLock<Option<LeaseView>>,
    /// Set while this node owns the partition.
    pub owned: RwLock<Option<Arc<Owned>>>,
    /// Last stream sequence seen (from PubAcks here, stream info and the
    /// owner's progress).
    pub stream_last: AtomicU64,
    /// The owner's applied sequence, from its progress (other nodes).
    pub remote_applied: AtomicU64,
    /// The newest snapshot pointer seen: (sequence, epoch).
    pub snapshot: Mutex<(u64, u64)>,
    /// Since when this node has seen the partition without a lease.
    pub unowned_since: Mutex<Option<Instant>>,
}

pub(crate) struct Inner {
    pub cfg: ClusterConfig,
    pub js: jetstream::Context,
    /// [`Inner::js`] with a short PubAck timeout, for writes.
    pub publisher: jetstream::Context,
    pub leases: kv::Store,
    pub nodes: kv::Store,
    pub spaces: kv::Store,
    pub pointers: kv::Store,
    pub progress: kv::Store,
    pub objects: object_store::ObjectStore,
    pub parts: Vec<Part>,
    /// The space registry as this node last saw it: entry and KV
    /// revision (the space's generation), kept current by a watch.
    pub space_cache: RwLock<HashMap<String, (SpaceEntry, u64)>>,
    /// When the owner last read a space's registry entry past the cache
    /// (to decide skips at apply).
    pub registry_read_at: Mutex<HashMap<String, Instant>>,
    pub node_view: RwLock<HashMap<String, NodeEntry>>,
    pub peers: Mutex<HashMap<String, route::Peer>>,
    pub publish_permits: Arc<tokio::sync::Semaphore>,
    pub metrics: metrics::ClusterMetrics,
    /// This node's streaming sessions and the write pressure they see.
    pub streams: sessions::Streams,
    /// The engine settings every partition engine starts from.
    pub engine: EngineConfig,
    /// Partition engines live under here (scratch: the streams and the
    /// object store are what is durable).
    pub dir: PathBuf,
    pub me: NodeEntry,
    pub stop: watch::Receiver<bool>,
    /// How this node dials the others (TLS with `cluster.peer_ca`).
    pub peers_tls: PeerTls,
}

/// How nodes reach each other: plain, or TLS verified against the
/// cluster's CA (`cluster.peer_ca`).
pub(crate) struct PeerTls {
    /// The CA's PEM; None: plain.
    pub ca_pem: Option<Vec<u8>>,
    /// The client REST requests passed to an owner go through (its
    /// connections are kept and reused).
    pub http: reqwest::Client,
}

impl PeerTls {
    fn new(ca: Option<&std::path::Path>) -> Result<PeerTls, String> {
        let Some(path) = ca else {
            return Ok(PeerTls {
                ca_pem: None,
                http: reqwest::Client::new(),
            });
        };
        let pem = std::fs::read(path)
            .map_err(|e| format!("reading cluster.peer_ca {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("cluster.peer_ca {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "cluster.peer_ca {}: no PEM certificate in it",
                path.display()
            ));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
        let http = builder
            .build()
            .map_err(|e| format!("an HTTPS client for cluster.peer_ca: {e}"))?;
        Ok(PeerTls {
            ca_pem: Some(pem),
            http,
        })
    }

    /// The URL scheme peers are dialed with.
    pub fn scheme(&self) -> &'static str {
        if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// A handle on this node's membership in the cluster.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<Inner>,
}

/// Failures while joining.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("connecting to NATS at {urls}: {message}")]
    Connect { urls: String, message: String },
    #[error("setting up JetStream {what}: {message}")]
    Setup { what: String, message: String },
    /// Told to stop (SIGTERM) while joining.
    #[error("stopped while joining the cluster")]
    Stopped,
}

impl Cluster {
    /// Connects to NATS, creates the partition streams and the buckets if
    /// they are missing, registers this node and starts its loops (lease,
    /// node registry). `grpc` and `http` are the bound addresses.
    ///
    /// # Errors
    /// NATS unreachable, or JetStream refusing a stream or bucket (e.g. a
    /// replica count above the number of NATS servers).
    pub async fn join(
        cfg: ClusterConfig,
        engine: EngineConfig,
        grpc: std::net::SocketAddr,
        http: std::net::SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> Result<Cluster, JoinError> {
        // A stop while joining (NATS unreachable, JetStream refusing)
        // ends the join at once, not after join_timeout_secs.
        let mut stopping = stop.clone();
        tokio::select! {
            joined = Self::join_now(cfg, engine, grpc, http, stop) => joined,
            _ = stopping.wait_for(|s| *s) => Err(JoinError::Stopped),
        }
    }

    async fn join_now(
        cfg: ClusterConfig,
        engine: EngineConfig,
        grpc: std::net::SocketAddr,
        http: std::net::SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> Result<Cluster, JoinError> {
        let urls = cfg.nats.join(",");
        let peers_tls =
            PeerTls::new(cfg.peer_ca.as_deref()).map_err(|message| JoinError::Setup {
                what: "cluster.peer_ca".to_owned(),
                message,
            })?;
        let deadline = Instant::now() + Duration::from_secs(cfg.join_timeout_secs);
        // Bounded: a node that cannot reach NATS exits with the cause
        // (a supervisor restarts it) instead of hanging unready.
        let client = retry_setup(deadline, || {
            async_nats::ConnectOptions::new()
                .name(format!("engram-{}", cfg.node_id))
                .connection_timeout(Duration::from_secs(5))
                .request_timeout(Some(Duration::from_secs(5)))
                .connect(cfg.nats.clone())
        })
        .await
        .map_err(|e| JoinError::Connect {
            urls: urls.clone(),
            message: e.to_string(),
        })?;
        // Writes publish through their own context: a PubAck that does
        // not come within PUBLISH_ACK_TIMEOUT (its stream's leader died) is
        // given up and the publish retried with the same message id,
        // instead of waiting out the client's 30 s default.
        let publisher = jetstream::ContextBuilder::new()
            .ack_timeout(PUBLISH_ACK_TIMEOUT)
            .build(client.clone());
        let js = jetstream::new(client);
        let setup = |what: &str, e: &dyn std::fmt::Display| JoinError::Setup {
            what: what.to_owned(),
            message: e.to_string(),
        };
        let ttl = Duration::from_secs(cfg.lease_ttl_secs);
        for p in 0..cfg.partitions {
            // Retried: right after a NATS server starts, JetStream may not
            // have a meta leader yet.
            let config = stream::Config {
                name: stream_name(p),
                subjects: vec![subject(p)],
                num_replicas: cfg.replicas,
                storage: stream::StorageType::File,
                // Publishes retried within this window with the same id
                // are stored once; later retries are caught by the owner
                // (episode ids are unique per space).
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            retry_setup(deadline, || js.get_or_create_stream(config.clone()))
                .await
                .map_err(|e| setup(&stream_name(p), &e))?;
        }
        let kv = |bucket: &str, max_age: Duration, history: i64| kv::Config {
            bucket: bucket.to_owned(),
            history,
            max_age,
            num_replicas: cfg.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let leases = retry_setup(deadline, || js.create_key_value(kv(LEASES, ttl, 1)))
            .await
            .map_err(|e| setup(LEASES, &e))?;
        let nodes = retry_setup(deadline, || js.create_key_value(kv(NODES, ttl, 1)))
            .await
            .map_err(|e| setup(NODES, &e))?;
        let spaces = retry_setup(deadline, || {
            js.create_key_value(kv(SPACES, Duration::ZERO, 1))
        })
        .await
        .map_err(|e| setup(SPACES, &e))?;
        let pointers = retry_setup(deadline, || {
            js.create_key_value(kv(SNAPSHOT_POINTERS, Duration::ZERO, 1))
        })
        .await
        .map_err(|e| setup(SNAPSHOT_POINTERS, &e))?;
        // The partition count is the cluster's, fixed: a node configured
        // with another count would put spaces in other partitions.
        let count = cfg.partitions.to_string();
        let held = loop {
            if spaces
                .create(PARTITION_COUNT_KEY, count.clone().into())
                .await
                .is_ok()
            {
                break count.clone();
            }
            match spaces.get(PARTITION_COUNT_KEY).await {
                Ok(Some(v)) => break String::from_utf8_lossy(&v).into_owned(),
                Ok(None) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(None) => return Err(setup(SPACES, &"the partition count vanished")),
                Err(e) => return Err(setup(SPACES, &e)),
            }
        };
        if held != count {
            return Err(JoinError::Setup {
                what: "the partition count".to_owned(),
                message: format!(
                    "this node has cluster.partitions = {count}, the cluster has {held}; every node must use the cluster's"
                ),
            });
        }
        let progress = retry_setup(deadline, || {
            js.create_key_value(kv(PROGRESS, Duration::ZERO, 1))
        })
        .await
        .map_err(|e| setup(PROGRESS, &e))?;
        let objects = retry_setup(deadline, || {
            js.create_object_store(object_store::Config {
                bucket: SNAPSHOTS.to_owned(),
                num_replicas: cfg.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
        })
        .await
        .map_err(|e| setup(SNAPSHOTS, &e))?;
        let advertise = |given: &str, bound: std::net::SocketAddr| {
            if given.is_empty() {
                bound.to_string()
            } else {
                given.to_owned()
            }
        };
        let me = NodeEntry {
            grpc: advertise(&cfg.grpc_advertise, grpc),
            http: advertise(&cfg.http_advertise, http),
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let dir = engine.data_dir.join("cluster").join(&cfg.node_id);
        // Whatever a previous run left is stale: the streams and snapshots
        // are the state.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| setup("partition directory", &e))?;
        let parts = (0..cfg.partitions)
            .map(|_| Part {
                lease: RwLock::new(None),
                owned: RwLock::new(None),
                stream_last: AtomicU64::new(0),
                remote_applied: AtomicU64::new(0),
                snapshot: Mutex::new((0, 0)),
                unowned_since: Mutex::new(None),
            })
            .collect();
        let inner = Arc::new(Inner {
            metrics: metrics::ClusterMetrics::new(cfg.partitions),
            publish_permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_pending_publishes)),
            streams: sessions::Streams::new(&engine, cfg.max_pending_publishes),
            cfg,
            js,
            publisher,
            leases,
            nodes,
            spaces,
            pointers,
            progress,
            objects,
            parts,
            space_cache: RwLock::new(HashMap::new()),
            registry_read_at: Mutex::new(HashMap::new()),
            node_view: RwLock::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            engine,
            dir,
            me,
            stop,
            peers_tls,
        });
        let cluster = Cluster { inner };
        cluster.register().await;
        tokio::spawn(lease::run(cluster.clone()));
        let watcher = cluster.clone();
        tokio::spawn(lease::supervise(
            move || watcher.clone().watch_spaces(),
            || tracing::error!("the space registry watch panicked; restarted"),
        ));
        let streams = cluster.clone();
        tokio::spawn(lease::supervise(
            move || streams.clone().stream_loop(),
            || {
                tracing::error!(
                    "the cluster stream loop (pressure, session sweep) panicked; restarted"
                )
            },
        ));
        tracing::info!(
            node = %cluster.inner.cfg.node_id,
            partitions = cluster.inner.cfg.partitions,
            nats = %urls,
            "joined the cluster"
        );
        Ok(cluster)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.cfg
    }

    pub fn node_id(&self) -> &str {
        &self.inner.cfg.node_id
    }

    /// The partition a space belongs to.
    pub fn partition(&self, space: &str) -> u32 {
        partition_of(space, self.inner.cfg.partitions)
    }

    /// Writes this node's registry entry (its lease-TTL-long heartbeat).
    async fn register(&self) {
        let value = serde_json::to_vec(&self.inner.me).expect("a node entry serializes");
        if let Err(e) = self
            .inner
            .nodes
            .put(&self.inner.cfg.node_id, value.into())
            .await
        {
            tracing::warn!(error = %e, "cluster node registry: heartbeat failed");
        }
    }

    /// Reads the node registry into `node_view`.
    async fn refresh_nodes(&self) {
        use futures::StreamExt;
        let Ok(mut keys) = self.inner.nodes.keys().await else {
            return;
        };
        let mut view = HashMap::new();
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(value)) = self.inner.nodes.get(&key).await {
                if let Ok(entry) = serde_json::from_slice::<NodeEntry>(&value) {
                    view.insert(key, entry);
                }
            }
        }
        // This node is live whatever the read missed.
        view.insert(self.inner.cfg.node_id.clone(), self.inner.me.clone());
        *self.inner.node_view.write() = view;
    }

    /// What this node knows of the cluster (`GET /v1/cluster`,
    /// `engram.v1.Cluster/Status`).
    pub fn status(&self) -> pb::ClusterStatusResponse {
        let inner = &self.inner;
        let view = inner.node_view.read().clone();
        let mut nodes: Vec<pb::ClusterNode> = view
            .iter()
            .map(|(id, n)| pb::ClusterNode {
                node_id: id.clone(),
                grpc_addr: n.grpc.clone(),
                http_addr: n.http.clone(),
                partitions: Vec::new(),
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let mut partitions = Vec::with_capacity(inner.parts.len());
        for (p, part) in inner.parts.iter().enumerate() {
            let p = p as u32;
            let lease = part.lease.read().clone();
            let owned = part.owned.read().clone();
            let stream_sequence = part.stream_last.load(Ordering::Relaxed);
            let (snapshot_sequence, snapshot_epoch) = *part.snapshot.lock();
            let (state, applied) = match (&lease, &owned) {
                (_, Some(o)) => (
                    if o.is_serving() { "serving" } else { "loading" },
                    o.applied(),
                ),
                (Some(_), None) => ("remote", part.remote_applied.load(Ordering::Relaxed)),
                (None, None) => ("unowned", 0),
            };
            let stream_sequence = stream_sequence.max(applied);
            if let Some(l) = &lease {
                if let Some(n) = nodes.iter_mut().find(|n| n.node_id == l.owner) {
                    n.partitions.push(p);
                }
            }
            partitions.push(pb::ClusterPartition {
                partition: p,
                owner: lease.as_ref().map(|l| l.owner.clone()).unwrap_or_default(),
                epoch: owned
                    .as_ref()
                    .map(|o| o.epoch)
                    .or(lease.as_ref().map(|l| l.epoch))
                    .unwrap_or(0),
                state: state.to_owned(),
                stream_sequence,
                applied_sequence: applied,
                lag: if lease.is_some() || owned.is_some() {
                    stream_sequence.saturating_sub(applied)
                } else {
                    0
                },
                snapshot_sequence,
                snapshot_epoch,
            });
        }
        pb::ClusterStatusResponse {
            node_id: inner.cfg.node_id.clone(),
            partition_count: inner.cfg.partitions,
            nodes,
            partitions,
        }
    }

    /// Publishes the progress of every partition this node owns and reads
    /// the others' (the lease loop, every second).
    async fn exchange_progress(&self) {
        for (p, part) in self.inner.parts.iter().enumerate() {
            let key = partition_key(p as u32);
            let owned = part.owned.read().clone();
            if let Some(o) = owned {
                let progress = Progress {
                    epoch: o.epoch,
                    applied: o.applied(),
                    stream_last: part.stream_last.load(Ordering::Relaxed),
                };
                let value = serde_json::to_vec(&progress).expect("progress serializes");
                let _ = self.inner.progress.put(&key, value.into()).await;
                continue;
            }
            if let Ok(Some(value)) = self.inner.progress.get(&key).await {
                if let Ok(progress) = serde_json::from_slice::<Progress>(&value) {
                    part.remote_applied
                        .store(progress.applied, Ordering::Relaxed);
                    part.stream_last
                        .fetch_max(progress.stream_last, Ordering::Relaxed);
                }
            }
        }
    }

    /// Records partition `p` has that its owner has not applied yet, as
    /// this node knows (its own writes' PubAcks, the owner's progress).
    pub(crate) fn lag(&self, p: u32) -> u64 {
        let part = &self.inner.parts[p as usize];
        let applied = match part.owned.read().as_ref() {
            Some(o) => o.applied(),
            None => part.remote_applied.load(Ordering::Relaxed),
        };
        part.stream_last
            .load(Ordering::Relaxed)
            .saturating_sub(applied)
    }

    /// The cluster's metrics, in the Prometheus text format (appended to
    /// `/metrics`).
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render(self)
    }

    /// Stops owning every partition (each owner finishes applying, writes
    /// a last snapshot and gives its lease back) so that other nodes take
    /// over at once instead of after a lease TTL.
    pub async fn leave(&self) {
        let owned: Vec<(u32, Arc<Owned>)> = self
            .inner
            .parts
            .iter()
            .enumerate()
            .filter_map(|(p, part)| part.owned.read().clone().map(|o| (p as u32, o)))
            .collect();
        for (p, o) in owned {
            lease::release(self, p, &o, "shutdown").await;
        }
        let _ = self.inner.nodes.delete(&self.inner.cfg.node_id).await;
    }
}

/// Retries a connection or JetStream setup call until `deadline`
/// (`cluster.join_timeout_secs` after the start): a NATS cluster that has
/// just started elects its JetStream meta leader first.
async fn retry_setup<T, E: std::fmt::Display, F, Fut>(
    deadline: Instant,
    mut call: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "JetStream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Pinned: a change here would move every space to another
        // partition on upgrade.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[partition_of(&format!("space-{i}"), 8) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
