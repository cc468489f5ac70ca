//! The gRPC listener (package `engram.v1`): `Streaming`, `Memory`, the
//! standard health service and server reflection (v1 and v1alpha).
//! Handlers are thin adapters over the engine; errors map to statuses in
//! `status`, messages convert in `convert`.

// tonic::Status is large, but it is what every handler returns anyway.
#![allow(clippy::result_large_err)]

mod convert;
mod memory;
mod status;
mod streaming;

use engram_proto::v1::memory_server::MemoryServer;
use engram_proto::v1::streaming_server::StreamingServer;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::http::AppState;

/// The services health answers for, besides "" (the whole server).
pub const SERVICES: [&str; 2] = ["engram.v1.Streaming", "engram.v1.Memory"];

/// Builds the gRPC router and the health reporter (NOT_SERVING until
/// [`set_serving`] says otherwise).
pub async fn router(
    state: AppState,
    max_message_bytes: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> (Router, HealthReporter) {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_serving(&reporter, false).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(engram_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("engram's descriptors are valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(engram_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("engram's descriptors are valid");
    let streaming = StreamingServer::new(streaming::StreamingService {
        state: state.clone(),
        max_message_bytes,
        shutdown,
    })
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(usize::MAX);
    let memory = MemoryServer::new(memory::MemoryService { state })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(streaming)
        .add_service(memory);
    (router, reporter)
}

/// Health for "" and every engram service.
pub async fn set_serving(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    let mut reporter = reporter.clone();
    reporter.set_service_status("", status).await;
    for s in SERVICES {
        reporter.set_service_status(s, status).await;
    }
}
