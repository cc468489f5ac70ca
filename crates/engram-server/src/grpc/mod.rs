//! The gRPC listener (package `engram.v1`): `Streaming`, `Memory`, the
//! standard health service and server reflection (v1 and v1alpha).
//! Handlers are thin adapters over the engine; errors map to statuses in
//! `status`, messages convert in `convert`.

// tonic::Status is large, but it is what every handler returns anyway.
#![allow(clippy::result_large_err)]

mod cluster;
pub(crate) mod convert;
mod memory;
pub(crate) mod status;
mod streaming;

use engram_proto::v1::memory_server::MemoryServer;
use engram_proto::v1::streaming_server::StreamingServer;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::auth::{Auth, Principal};
use crate::http::AppState;

/// Authenticates every engram.v1 call by its `authorization: Bearer KEY`
/// metadata (UNAUTHENTICATED without a valid key) and hands the handlers
/// the [`Principal`], which they check against the space they touch.
/// Health and reflection are not behind it.
#[derive(Clone)]
pub struct Authenticate(Auth);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let principal = self.0.authenticate(header).map_err(status::auth_status)?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The principal [`Authenticate`] put on the request.
fn principal<T>(req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::internal("the call was not authenticated (a server bug)"))
}

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
    let authenticate = Authenticate(state.auth().clone());
    let streaming = StreamingServer::new(streaming::StreamingService {
        state: state.clone(),
        max_message_bytes,
        shutdown,
    })
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(usize::MAX);
    let streaming =
        tonic::service::interceptor::InterceptedService::new(streaming, authenticate.clone());
    let cluster = engram_proto::v1::cluster_server::ClusterServer::new(cluster::ClusterService {
        state: state.clone(),
    });
    let cluster =
        tonic::service::interceptor::InterceptedService::new(cluster, authenticate.clone());
    let memory = MemoryServer::new(memory::MemoryService { state })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    let memory = tonic::service::interceptor::InterceptedService::new(memory, authenticate);
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(streaming)
        .add_service(memory)
        .add_service(cluster);
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
