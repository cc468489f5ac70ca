//! The engram server: configuration, transports over the engine, lifecycle.
//!
//! - [`bench`] — `engram bench`: a load generator against a running server.
//! - [`cluster`] — cluster mode: partitions on NATS JetStream, leases,
//!   takeover, forwarding.
//! - [`config`] — `ServerConfig`: defaults, TOML file, environment, flags.
//! - [`grpc`] — engram.v1 Streaming and Memory, health, reflection (tonic).
//! - [`http`] — REST routes and health endpoints (axum).
//! - [`server`] — bind listeners, recover, serve, shut down in order.

pub mod auth;
pub mod bench;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod server;
pub mod tls;

pub use config::ServerConfig;
pub use server::serve;
