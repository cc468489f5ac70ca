//! Server configuration: defaults, then a TOML file, then the environment
//! and flags (`ENGRAM_*` variables and `--flags` are the same settings; a
//! flag wins over its variable). `engram config` prints the result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use engram_core::model::VectorStorage;
use engram_core::wal::SyncPolicy;
use engram_core::EngineConfig;
use serde::{Deserialize, Serialize};

/// Largest HTTP request body. A 64 KiB text plus an 8192-d embedding as JSON
/// is well under 1 MiB; 4 MiB leaves room without letting one request pin
/// much memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Largest WebSocket message on `/v1/stream`: one observation as JSON (64
/// KiB text, an 8192-d embedding at ~12 bytes a number) is under 200 KiB.
pub const DEFAULT_MAX_WS_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Seconds between the server's WebSocket pings.
pub const DEFAULT_WS_PING_INTERVAL_SECS: u64 = 30;
/// Seconds a WebSocket without a key has to send `init` with its key.
pub const DEFAULT_WS_AUTH_TIMEOUT_SECS: u64 = 30;
/// How long shutdown waits for in-flight requests before closing them.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// REST, the WebSocket stream, health and metrics. Port 0 picks a free port.
    pub addr: SocketAddr,
    pub max_body_bytes: usize,
    /// Larger WebSocket messages close the socket with 1009 (message too big).
    pub max_ws_message_bytes: usize,
    /// Seconds between WebSocket pings the server sends on `/v1/stream`
    /// (keeps proxies from closing quiet connections, finds dead peers).
    pub ws_ping_interval_secs: u64,
    /// Seconds a WebSocket opened without an API key has to send its
    /// `init` with `api_key` (servers with keys); then it is closed as
    /// unauthenticated, so sockets that say nothing do not linger.
    pub ws_auth_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:8080".parse().expect("valid default address"),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_ws_message_bytes: DEFAULT_MAX_WS_MESSAGE_BYTES,
            ws_ping_interval_secs: DEFAULT_WS_PING_INTERVAL_SECS,
            ws_auth_timeout_secs: DEFAULT_WS_AUTH_TIMEOUT_SECS,
        }
    }
}

/// Largest gRPC message the server accepts: one observation (64 KiB text,
/// an 8192-d embedding) is well under 1 MiB.
pub const DEFAULT_GRPC_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// engram.v1 Streaming and Memory, health, reflection. Port 0 picks a free port.
    pub addr: SocketAddr,
    /// Larger messages end their stream (or call) with RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            addr: "127.0.0.1:50051".parse().expect("valid default address"),
            max_message_bytes: DEFAULT_GRPC_MAX_MESSAGE_BYTES,
        }
    }
}

/// Who may connect and how (docs/operations/security.md).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// The API keys file (TOML: names, hashed keys, roles, spaces),
    /// reloaded on SIGHUP. Without it every call is allowed, and the server
    /// listens only on loopback addresses unless `allow_unauthenticated`.
    pub api_keys: Option<PathBuf>,
    /// Listen on a non-loopback address without API keys. Without this,
    /// such a configuration refuses to start.
    pub allow_unauthenticated: bool,
    /// PEM certificate chain: both listeners (gRPC, HTTP) speak TLS only.
    /// Reloaded, with the key, on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// Default of `limits.max_sessions_per_key`.
pub const DEFAULT_MAX_SESSIONS_PER_KEY: usize = 256;

/// Limits per API key (they apply to calls made with a key; a server
/// without keys has only the engine's limits).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open streams (gRPC ObserveStream / MemoryFlow, WebSocket) one key
    /// may hold at once; one more is refused with RESOURCE_EXHAUSTED.
    pub max_sessions_per_key: usize,
    /// Requests per second one key may make, as a token bucket: each unary
    /// call, stream message (observation, recall) and REST request takes a
    /// token. Over it: RESOURCE_EXHAUSTED / 429 `rate_limited` with a
    /// retry-after; on a stream the observation is rejected as overloaded.
    /// 0: unlimited.
    pub requests_per_second_per_key: f64,
    /// Tokens the bucket holds (a burst above the rate); 0: one second's
    /// worth of `requests_per_second_per_key` (at least 1).
    pub burst_per_key: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_sessions_per_key: DEFAULT_MAX_SESSIONS_PER_KEY,
            requests_per_second_per_key: 0.0,
            burst_per_key: 0,
        }
    }
}

/// Everything `engram serve` runs with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Seconds to wait for in-flight requests at shutdown.
    pub shutdown_grace_secs: u64,
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub security: SecurityConfig,
    pub limits: LimitsConfig,
    pub engine: EngineConfig,
    /// Cluster mode (docs/operations/cluster.md); absent: the embedded
    /// single node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
            security: SecurityConfig::default(),
            limits: LimitsConfig::default(),
            engine: EngineConfig::default(),
            cluster: None,
        }
    }
}

/// Settings that flags and environment variables override.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "ENGRAM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the WAL and snapshots.
    #[arg(long, env = "ENGRAM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (engram.v1, health, reflection).
    #[arg(long, env = "ENGRAM_GRPC_ADDR", value_name = "HOST:PORT")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP listen address (REST, health).
    #[arg(long, env = "ENGRAM_HTTP_ADDR", value_name = "HOST:PORT")]
    pub http_addr: Option<SocketAddr>,
    /// Indexing worker threads (0 = one per core).
    #[arg(long, env = "ENGRAM_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Bound on accepted-but-not-yet-indexed observations.
    #[arg(long, env = "ENGRAM_QUEUE_CAPACITY", value_name = "N")]
    pub queue_capacity: Option<usize>,
    /// WAL sync policy.
    #[arg(long, env = "ENGRAM_WAL_SYNC", value_name = "always|interval|none")]
    pub wal_sync: Option<SyncPolicy>,
    /// Vector storage of new spaces that name none: memory (exact vectors
    /// in RAM) or compact (on disk under DATA_DIR/vectors, RAM holding
    /// 8-bit codes). Existing spaces keep theirs.
    #[arg(long, env = "ENGRAM_VECTOR_STORAGE", value_name = "memory|compact")]
    pub vector_storage: Option<VectorStorage>,
    /// Seconds between periodic snapshots (0 = only at shutdown).
    #[arg(long, env = "ENGRAM_SNAPSHOT_INTERVAL_SECS", value_name = "SECS")]
    pub snapshot_interval_secs: Option<u64>,
    /// Enable the admin fault-injection routes (tests only).
    #[arg(long, env = "ENGRAM_FAULT_INJECTION", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub fault_injection: Option<bool>,
    /// API keys file (TOML; reloaded on SIGHUP). Without one, every call is
    /// allowed and only loopback addresses may be used.
    #[arg(long, env = "ENGRAM_API_KEYS", value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// Listen on a non-loopback address without API keys.
    #[arg(long, env = "ENGRAM_ALLOW_UNAUTHENTICATED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_unauthenticated: Option<bool>,
    /// PEM certificate chain: gRPC and HTTP speak TLS only (reloaded on SIGHUP).
    #[arg(
        long,
        env = "ENGRAM_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "ENGRAM_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Join a cluster through these NATS servers (comma-separated URLs),
    /// as `[cluster] nats` does.
    #[arg(long, env = "ENGRAM_CLUSTER", value_name = "nats://HOST:PORT,...")]
    pub cluster: Option<String>,
    /// This node's id in the cluster (`[cluster] node_id`).
    #[arg(long, env = "ENGRAM_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Defaults ← file ← environment/flags.
    ///
    /// # Errors
    /// An unreadable or invalid file, or values out of range.
    pub fn load(o: &Overrides) -> Result<Self, ConfigError> {
        let mut c = match &o.config {
            Some(path) => Self::from_file(path)?,
            None => ServerConfig::default(),
        };
        if let Some(v) = &o.data_dir {
            c.engine.data_dir = v.clone();
        }
        if let Some(v) = o.grpc_addr {
            c.grpc.addr = v;
        }
        if let Some(v) = o.http_addr {
            c.http.addr = v;
        }
        if let Some(v) = o.workers {
            c.engine.workers = v;
        }
        if let Some(v) = o.queue_capacity {
            c.engine.queue.capacity = v;
        }
        if let Some(v) = o.wal_sync {
            c.engine.wal.sync = v;
        }
        if let Some(v) = o.vector_storage {
            c.engine.vector_storage = v;
        }
        if let Some(v) = o.snapshot_interval_secs {
            c.engine.snapshot_interval_secs = v;
        }
        if let Some(v) = o.fault_injection {
            c.engine.fault_injection = v;
        }
        if let Some(v) = &o.api_keys {
            c.security.api_keys = Some(v.clone());
        }
        if let Some(v) = o.allow_unauthenticated {
            c.security.allow_unauthenticated = v;
        }
        if let Some(v) = &o.tls_cert {
            c.security.tls_cert = Some(v.clone());
        }
        if let Some(v) = &o.tls_key {
            c.security.tls_key = Some(v.clone());
        }
        if let Some(urls) = &o.cluster {
            let cluster = c.cluster.get_or_insert_with(Default::default);
            cluster.nats = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(id) = &o.node_id {
            match c.cluster.as_mut() {
                Some(cluster) => cluster.node_id = id.clone(),
                None => {
                    return Err(ConfigError::Invalid(
                        "--node-id needs cluster mode (--cluster or a [cluster] section)"
                            .to_owned(),
                    ))
                }
            }
        }
        c.validate()?;
        Ok(c)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if let Some(cluster) = &self.cluster {
            cluster.validate().map_err(ConfigError::Invalid)?;
        }
        if let Err(e) = self.engine.queue.validate() {
            return Err(ConfigError::Invalid(format!("engine.queue: {e}")));
        }
        if self.engine.min_batch == 0 || self.engine.max_batch < self.engine.min_batch {
            return bad(
                "engine.min_batch must be at least 1 and engine.max_batch at least min_batch",
            );
        }
        if self.engine.index.m < 2
            || self.engine.index.ef_construction == 0
            || self.engine.index.ef_search == 0
        {
            return bad("engine.index needs m >= 2, ef_construction >= 1 and ef_search >= 1");
        }
        if self.grpc.max_message_bytes < 1024 {
            return bad("grpc.max_message_bytes must be at least 1024");
        }
        if self.http.max_body_bytes < 1024 {
            return bad("http.max_body_bytes must be at least 1024");
        }
        if self.http.max_ws_message_bytes < 1024 {
            return bad("http.max_ws_message_bytes must be at least 1024");
        }
        if self.http.ws_ping_interval_secs == 0 {
            return bad("http.ws_ping_interval_secs must be at least 1");
        }
        if self.http.ws_auth_timeout_secs == 0 {
            return bad("http.ws_auth_timeout_secs must be at least 1");
        }
        if self.security.tls_cert.is_some() != self.security.tls_key.is_some() {
            return bad("security.tls_cert and security.tls_key go together: set both or neither");
        }
        if let Some(cluster) = &self.cluster {
            match (&self.security.tls_cert, &cluster.peer_ca) {
                (Some(_), None) => {
                    return bad("cluster.peer_ca is required with security.tls_cert: the nodes serve only TLS, so they forward to each other over TLS and need the CA that signed their certificates")
                }
                (None, Some(_)) => {
                    return bad("cluster.peer_ca needs security.tls_cert: nodes speak TLS to each other only when they serve it (all nodes of a cluster use TLS, or none)")
                }
                _ => {}
            }
        }
        if !(1..=engram_core::model::MAX_DIMENSION).contains(&self.engine.max_dimension) {
            return Err(ConfigError::Invalid(format!(
                "engine.max_dimension must be 1 to {}",
                engram_core::model::MAX_DIMENSION
            )));
        }
        if self.limits.max_sessions_per_key == 0 {
            return bad("limits.max_sessions_per_key must be at least 1");
        }
        let rate = self.limits.requests_per_second_per_key;
        if !rate.is_finite() || rate < 0.0 {
            return bad("limits.requests_per_second_per_key must be 0 (unlimited) or more");
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `engram config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let f = write("shutdown_grace_secs = 5\n[engine]\nworkers = 3\n[engine.queue]\ncapacity = 10\n[engine.wal]\nsync = \"interval\"\n");
        let o = Overrides {
            config: Some(f.path().to_owned()),
            workers: Some(1),
            ..Overrides::default()
        };
        let c = ServerConfig::load(&o).unwrap();
        assert_eq!(c.shutdown_grace_secs, 5);
        assert_eq!(c.engine.queue.capacity, 10);
        assert_eq!(c.engine.workers, 1, "the flag wins");
        assert_eq!(c.engine.wal.sync, SyncPolicy::Interval);
        assert_eq!(c.http, HttpConfig::default());
    }

    #[test]
    fn partial_sections_keep_their_other_defaults() {
        let f = write("[engine.index]\nef_search = 64\n[engine.sessions]\nidle_timeout_secs = 5\n");
        let o = Overrides {
            config: Some(f.path().to_owned()),
            ..Overrides::default()
        };
        let c = ServerConfig::load(&o).unwrap();
        assert_eq!(c.engine.index.ef_search, 64);
        assert_eq!(
            c.engine.index.m,
            engram_core::index::HnswParams::default().m
        );
        assert_eq!(c.engine.sessions.idle_timeout_secs, 5);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let f = write("[engine.queue]\ncapacty = 10\n");
        let o = Overrides {
            config: Some(f.path().to_owned()),
            ..Overrides::default()
        };
        let e = ServerConfig::load(&o).unwrap_err().to_string();
        assert!(e.contains("capacty"), "{e}");
        let o = Overrides {
            queue_capacity: Some(0),
            ..Overrides::default()
        };
        assert!(ServerConfig::load(&o).is_err());
    }

    #[test]
    fn vector_storage_from_the_file_and_the_flag() {
        assert_eq!(
            ServerConfig::default().engine.vector_storage,
            VectorStorage::Memory
        );
        let f = write("[engine]\nvector_storage = \"compact\"\n");
        let from_file = Overrides {
            config: Some(f.path().to_owned()),
            ..Overrides::default()
        };
        let c = ServerConfig::load(&from_file).unwrap();
        assert_eq!(c.engine.vector_storage, VectorStorage::Compact);
        assert!(c.to_toml().contains("vector_storage = \"compact\""));
        let flag = Overrides {
            vector_storage: Some(VectorStorage::Memory),
            ..from_file
        };
        assert_eq!(
            ServerConfig::load(&flag).unwrap().engine.vector_storage,
            VectorStorage::Memory,
            "the flag wins"
        );
        let bad = write("[engine]\nvector_storage = \"disk\"\n");
        let e = ServerConfig::load(&Overrides {
            config: Some(bad.path().to_owned()),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("disk") && e.contains("compact"), "{e}");
    }

    #[test]
    fn printed_config_reads_back_identically() {
        let c = ServerConfig::default();
        let back: ServerConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }
}
