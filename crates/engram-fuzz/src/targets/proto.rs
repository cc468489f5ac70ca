//! `proto_convert`: protobuf messages (package engram.v1) as the gRPC
//! services receive them.
//!
//! The input is decoded (prost) as every request message that carries
//! client data — `Episode`, `Cue`, `ObserveRequest`, `FlowRequest`,
//! `RecallRequest`, `RememberRequest`, `CreateSpaceRequest` — and each
//! message that decodes goes through the server's conversions
//! (`grpc/convert.rs`: timestamps, optional fields, enums; the oneofs as
//! `grpc/streaming.rs` maps them) and then the engine's validation of what
//! they yield. A message that decodes must also re-encode to the same
//! length after a second decode (its map fields have no fixed order, so
//! lengths, not bytes, are compared).

use engram_core::model::SpaceId;
use engram_proto::v1 as pb;
use engram_server::fuzzing as server;
use prost::Message;

pub fn run(data: &[u8]) {
    exercise::<pb::Episode>(data, episode);
    exercise::<pb::Cue>(data, |c| cue(Some(c)));
    exercise::<pb::ObserveRequest>(data, observe);
    exercise::<pb::FlowRequest>(data, flow);
    exercise::<pb::RecallRequest>(data, recall);
    exercise::<pb::RememberRequest>(data, remember);
    exercise::<pb::CreateSpaceRequest>(data, create_space);
}

/// Decodes `data` as an `M`; when it decodes, checks the re-encoding and
/// follows the message into the server.
fn exercise<M: Message + Default>(data: &[u8], follow: impl FnOnce(M)) {
    let Ok(m) = M::decode(data) else {
        return;
    };
    let bytes = m.encode_to_vec();
    let again = M::decode(bytes.as_slice()).unwrap_or_else(|e| {
        panic!(
            "a decoded {} does not decode from its own encoding: {e}",
            std::any::type_name::<M>()
        )
    });
    assert_eq!(
        again.encoded_len(),
        bytes.len(),
        "a decoded {} re-encodes to another length",
        std::any::type_name::<M>()
    );
    follow(m);
}

fn space_id(id: &str) {
    let _ = SpaceId::parse(id);
}

fn episode(e: pb::Episode) {
    if let Ok(input) = server::episode_input(e) {
        let _ = input.validate();
    }
}

fn cue(c: Option<pb::Cue>) {
    if let Ok(cue) = server::cue(c) {
        let _ = cue.validate();
    }
}

/// As `grpc/streaming.rs` maps each kind of request into the stream
/// protocol.
fn observe(r: pb::ObserveRequest) {
    use pb::observe_request::Request as R;
    match r.request {
        Some(R::Init(init)) => space_id(&init.memory_space_id),
        Some(R::Observation(obs)) => {
            let _ = server::priority(obs.priority);
            if let Some(e) = obs.episode {
                episode(e);
            }
        }
        Some(R::Flow(f)) => {
            let _ = pb::flow_control::Action::try_from(f.action);
        }
        Some(R::Close(_)) | None => {}
    }
}

fn flow(r: pb::FlowRequest) {
    match r.request {
        Some(pb::flow_request::Request::Observe(o)) => observe(o),
        Some(pb::flow_request::Request::Recall(r)) => recall(r),
        None => {}
    }
}

fn recall(r: pb::RecallRequest) {
    if !r.memory_space_id.is_empty() {
        space_id(&r.memory_space_id);
    }
    cue(r.cue);
}

fn remember(r: pb::RememberRequest) {
    space_id(&r.memory_space_id);
    let _ = server::priority(r.priority);
    if let Some(e) = r.episode {
        episode(e);
    }
}

fn create_space(r: pb::CreateSpaceRequest) {
    space_id(&r.memory_space_id);
    let _ = server::vector_storage_request(r.vector_storage);
    let _ = server::default_ttl_request(r.default_ttl_seconds);
}

fn timestamp(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn seed_episode() -> pb::Episode {
    pb::Episode {
        id: "coffee".to_owned(),
        when: timestamp(1_796_292_000, 123_456_789),
        what: "had coffee with Ada".to_owned(),
        embedding: vec![0.9, 0.1, 0.0],
        encoding_confidence: Some(0.8),
        tags: vec!["social".to_owned(), "morning".to_owned()],
        metadata: [("place".to_owned(), "office".to_owned())].into(),
        expires_at: None,
        ttl_seconds: 3600.0,
    }
}

fn seed_cue() -> pb::Cue {
    pb::Cue {
        embedding: vec![1.0, 0.0, 0.0],
        max_results: 5,
        similarity_threshold: 0.2,
        when_from: timestamp(1_767_225_600, 0),
        when_to: timestamp(1_798_761_599, 999_999_999),
        ef_search: 64,
        filter: Some(pb::MemoryFilter {
            tags_all: vec!["social".to_owned()],
            tags_any: vec!["morning".to_owned(), "evening".to_owned()],
            tags_none: vec!["work".to_owned()],
            metadata: vec![pb::MetadataCondition {
                key: "place".to_owned(),
                values: vec!["office".to_owned(), "home".to_owned()],
            }],
        }),
        recency_half_life_seconds: 86_400.0,
    }
}

fn seed_recall() -> pb::RecallRequest {
    pb::RecallRequest {
        memory_space_id: "demo".to_owned(),
        cue: Some(seed_cue()),
        batch_size: 2,
        include_embeddings: true,
        after: Some(pb::ConsistencyToken {
            partition: 3,
            sequence: 42,
        }),
    }
}

fn observe_request(r: pb::observe_request::Request) -> pb::ObserveRequest {
    pb::ObserveRequest { request: Some(r) }
}

/// Seeds: every request message that carries client data, with every field
/// set, and each kind of stream request.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use pb::observe_request::Request as R;
    let observation = R::Observation(pb::Observation {
        sequence_number: 1,
        episode: Some(seed_episode()),
        priority: pb::Priority::High as i32,
    });
    let messages: Vec<(&str, Vec<u8>)> = vec![
        ("episode", seed_episode().encode_to_vec()),
        ("cue", seed_cue().encode_to_vec()),
        (
            "observe-init",
            observe_request(R::Init(pb::StreamInit {
                memory_space_id: "demo".to_owned(),
                resume_session_id: "5f0c2a9e-1d2b-4c3d-8e4f-5a6b7c8d9e0f".to_owned(),
                enable_backpressure: true,
            }))
            .encode_to_vec(),
        ),
        (
            "observe-observation",
            observe_request(observation.clone()).encode_to_vec(),
        ),
        (
            "observe-flow",
            observe_request(R::Flow(pb::FlowControl {
                action: pb::flow_control::Action::Pause as i32,
                buffer_remaining: 128,
            }))
            .encode_to_vec(),
        ),
        (
            "observe-close",
            observe_request(R::Close(pb::StreamClose { drain: true })).encode_to_vec(),
        ),
        (
            "flow-observe",
            pb::FlowRequest {
                request_id: String::new(),
                request: Some(pb::flow_request::Request::Observe(observe_request(
                    observation,
                ))),
            }
            .encode_to_vec(),
        ),
        (
            "flow-recall",
            pb::FlowRequest {
                request_id: "r1".to_owned(),
                request: Some(pb::flow_request::Request::Recall(seed_recall())),
            }
            .encode_to_vec(),
        ),
        ("recall", seed_recall().encode_to_vec()),
        (
            "remember",
            pb::RememberRequest {
                memory_space_id: "demo".to_owned(),
                episode: Some(seed_episode()),
                priority: pb::Priority::Low as i32,
            }
            .encode_to_vec(),
        ),
        (
            "create-space",
            pb::CreateSpaceRequest {
                memory_space_id: "demo".to_owned(),
                dimension: 384,
                vector_storage: pb::VectorStorage::Compact as i32,
                default_ttl_seconds: Some(86_400.0),
            }
            .encode_to_vec(),
        ),
    ];
    messages
        .into_iter()
        .map(|(name, bytes)| (format!("{name}.bin"), bytes))
        .collect()
}

/// A seed decodes as the message its name starts with, and converts and
/// validates without an error.
pub fn check_seed(name: &str, bytes: &[u8]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let kind = name.split(['-', '.']).next().unwrap_or_default();
    match kind {
        "episode" => {
            let e = pb::Episode::decode(bytes).map_err(|e| err(&e))?;
            server::episode_input(e)?.validate().map_err(|e| err(&e))?;
        }
        "cue" => {
            let c = pb::Cue::decode(bytes).map_err(|e| err(&e))?;
            server::cue(Some(c))?.validate().map_err(|e| err(&e))?;
        }
        "observe" | "flow" => {
            let r = if kind == "flow" {
                pb::FlowRequest::decode(bytes).map_err(|e| err(&e))?
            } else {
                pb::FlowRequest {
                    request_id: String::new(),
                    request: Some(pb::flow_request::Request::Observe(
                        pb::ObserveRequest::decode(bytes).map_err(|e| err(&e))?,
                    )),
                }
            };
            match r.request {
                Some(pb::flow_request::Request::Observe(o)) => match o.request {
                    Some(pb::observe_request::Request::Observation(obs)) => {
                        let e = obs.episode.ok_or("an observation without an episode")?;
                        server::episode_input(e)?.validate().map_err(|e| err(&e))?;
                    }
                    Some(_) => {}
                    None => return Err("an ObserveRequest without a request".to_owned()),
                },
                Some(pb::flow_request::Request::Recall(r)) => {
                    server::cue(r.cue)?.validate().map_err(|e| err(&e))?;
                }
                None => return Err("a FlowRequest without a request".to_owned()),
            }
        }
        "recall" => {
            let r = pb::RecallRequest::decode(bytes).map_err(|e| err(&e))?;
            server::cue(r.cue)?.validate().map_err(|e| err(&e))?;
        }
        "remember" => {
            let r = pb::RememberRequest::decode(bytes).map_err(|e| err(&e))?;
            let e = r.episode.ok_or("a RememberRequest without an episode")?;
            server::episode_input(e)?.validate().map_err(|e| err(&e))?;
        }
        "create" => {
            let r = pb::CreateSpaceRequest::decode(bytes).map_err(|e| err(&e))?;
            SpaceId::parse(&r.memory_space_id).map_err(|e| err(&e))?;
            server::vector_storage_request(r.vector_storage)?.ok_or("no vector storage named")?;
        }
        other => {
            return Err(format!(
                "no message type for the seed name prefix '{other}'"
            ))
        }
    }
    Ok(())
}
