//! engram's gRPC wire contract, generated from `proto/engram/v1/*.proto`.
//!
//! `engram_proto::v1::streaming_client::StreamingClient` is the generated
//! streaming client; `v1::FILE_DESCRIPTOR_SET` feeds server reflection.

/// Package `engram.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("engram.v1");

    /// The encoded descriptors of every engram.v1 file, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("engram_descriptor");
}
