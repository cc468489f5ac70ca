//! The `[cluster]` section: present (or `--cluster nats://...`), the node
//! joins a cluster instead of serving its embedded single-node engine.

use serde::{Deserialize, Serialize};

/// Default partition count. Each space hashes to one partition; a
/// partition has one owner at a time, so P bounds how many nodes share the
/// indexing work (docs/operations/cluster.md says how to size it).
pub const DEFAULT_PARTITIONS: u32 = 8;
/// Default lease time to live: longer than a JetStream leader election
/// (a few seconds), so an owner renewing through a NATS failover keeps
/// its lease.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 10;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs (any of the cluster's servers; the client finds
    /// the others).
    pub nats: Vec<String>,
    /// This node's name: letters, digits, `-` and `_`, unique in the
    /// cluster. Required.
    pub node_id: String,
    /// Partition streams (fixed for the life of the cluster: changing it
    /// moves spaces between partitions).
    pub partitions: u32,
    /// JetStream replicas of every stream, KV bucket and the object store
    /// (3 on a 3-server NATS cluster; 1 for a single NATS server).
    pub replicas: usize,
    /// Seconds a partition lease lives without renewal; an owner renews
    /// every quarter of it. A dead owner's partitions are taken over after
    /// at most this long.
    pub lease_ttl_secs: u64,
    /// The gRPC address other nodes forward recalls to (`host:port`);
    /// empty: `grpc.addr` as bound.
    pub grpc_advertise: String,
    /// The HTTP address shown in the cluster map; empty: `http.addr`.
    pub http_advertise: String,
    /// Seconds between snapshots an owner writes to the object store
    /// (when its partition changed). Bounds what a new owner replays.
    pub snapshot_interval_secs: u64,
    /// Milliseconds a recall carrying a consistency token waits for the
    /// owner to apply it before answering UNAVAILABLE.
    pub read_wait_ms: u64,
    /// Writes this node may have in flight to JetStream at once; one more
    /// is refused with RESOURCE_EXHAUSTED (the publish path's admission).
    pub max_pending_publishes: usize,
    /// Records a partition's owner may be behind the partition's stream
    /// before writes to it are refused with RESOURCE_EXHAUSTED and a
    /// retry-after (the owners' backpressure on writers, as the indexing
    /// queue's on one node); 0: no limit.
    pub max_partition_lag: u64,
    /// Milliseconds a write keeps retrying its publish (same message id,
    /// so retries are idempotent) through a NATS failover before it
    /// answers UNAVAILABLE.
    pub publish_timeout_ms: u64,
    /// Seconds the node keeps trying to reach NATS and set up the streams
    /// and buckets at start; then it exits with the cause.
    pub join_timeout_secs: u64,
    /// PEM file of the CA that signed the nodes' TLS certificates. A node
    /// with `security.tls_cert` serves only TLS, so nodes forward to each
    /// other over TLS (gRPC and REST) and verify the peer against this CA:
    /// required then, and only then. Every node's certificate must name
    /// the host it advertises (`grpc_advertise`, `http_advertise`, or the
    /// bound address). All nodes of a cluster use TLS, or none.
    pub peer_ca: Option<std::path::PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: vec!["nats://127.0.0.1:4222".to_owned()],
            node_id: String::new(),
            partitions: DEFAULT_PARTITIONS,
            replicas: 3,
            lease_ttl_secs: DEFAULT_LEASE_TTL_SECS,
            grpc_advertise: String::new(),
            http_advertise: String::new(),
            snapshot_interval_secs: 30,
            read_wait_ms: 5_000,
            max_pending_publishes: 4_096,
            max_partition_lag: 100_000,
            publish_timeout_ms: 15_000,
            join_timeout_secs: 30,
            peer_ca: None,
        }
    }
}

impl ClusterConfig {
    /// # Errors
    /// A message naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.node_id.is_empty()
            && self.node_id.len() <= 64
            && self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            return Err(format!(
                "cluster.node_id {:?}: expected 1 to 64 letters, digits, '-' or '_' (--node-id)",
                self.node_id
            ));
        }
        if self.nats.is_empty() {
            return Err("cluster.nats: give at least one NATS server URL".to_owned());
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err("cluster.partitions must be 1 to 1024".to_owned());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err("cluster.replicas must be 1 to 5 (JetStream's limit)".to_owned());
        }
        if !(2..=3600).contains(&self.lease_ttl_secs) {
            return Err("cluster.lease_ttl_secs must be 2 to 3600".to_owned());
        }
        if self.snapshot_interval_secs == 0 {
            return Err("cluster.snapshot_interval_secs must be at least 1".to_owned());
        }
        if self.publish_timeout_ms < 100 {
            return Err("cluster.publish_timeout_ms must be at least 100".to_owned());
        }
        if self.join_timeout_secs == 0 {
            return Err("cluster.join_timeout_secs must be at least 1".to_owned());
        }
        if self.max_pending_publishes == 0 {
            return Err("cluster.max_pending_publishes must be at least 1".to_owned());
        }
        Ok(())
    }
}
