//! Entry points for the fuzzing harness (`crates/engram-fuzz`): the
//! server's decoders of untrusted bytes that are not public API.
//!
//! Not for production use, and not a stable interface: hidden from the
//! docs, and only wrappers that call the real decoders, so that what is
//! fuzzed is exactly what the transports run. A conversion's
//! `tonic::Status` becomes its message, so the harness needs no tonic.

use engram_core::model::VectorStorage;
use engram_core::stream::Inbound;
use engram_core::{Cue, EpisodeInput, Priority};
use engram_proto::v1 as pb;

use crate::grpc::convert;

/// One WebSocket text message into the stream protocol (`/v1/stream`).
pub fn ws_decode(text: &str) -> Inbound {
    crate::http::ws::decode(text)
}

/// A protobuf `Episode` as the engine's input (before validation).
///
/// # Errors
/// The INVALID_ARGUMENT message gRPC would answer.
pub fn episode_input(e: pb::Episode) -> Result<EpisodeInput, String> {
    convert::episode_input(e).map_err(|st| st.message().to_owned())
}

/// A protobuf `Cue` (or its absence) as the engine's cue (before validation).
///
/// # Errors
/// The INVALID_ARGUMENT message gRPC would answer.
pub fn cue(c: Option<pb::Cue>) -> Result<Cue, String> {
    convert::cue(c).map_err(|st| st.message().to_owned())
}

/// A protobuf `Priority` number as the queue's priority.
pub fn priority(p: i32) -> Priority {
    convert::priority(p)
}

/// A create-space request's `vector_storage` number.
///
/// # Errors
/// The INVALID_ARGUMENT message gRPC would answer.
pub fn vector_storage_request(v: i32) -> Result<Option<VectorStorage>, String> {
    convert::vector_storage_request(v).map_err(|st| st.message().to_owned())
}

/// See `grpc::convert::default_ttl_request`.
///
/// # Errors
/// The INVALID_ARGUMENT message.
pub fn default_ttl_request(
    secs: Option<f64>,
) -> Result<Option<Option<std::time::Duration>>, String> {
    convert::default_ttl_request(secs).map_err(|st| st.message().to_owned())
}
