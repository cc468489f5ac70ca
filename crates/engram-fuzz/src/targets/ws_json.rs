//! `ws_json`: WebSocket text messages (`/v1/stream`, docs/api/websocket.md).
//!
//! The input, as UTF-8 text (invalid sequences replaced, as a text frame
//! cannot carry them), goes through the server's decoder
//! (`http/ws.rs` `decode`: serde into the message enum, the episode and
//! cue conversions with their RFC 3339 timestamps, and the second parse
//! that words the answer to an unreadable message), and what it yields
//! goes through the engine's validation, as the stream protocol would
//! send it: the space id, the episode, the cue.

use engram_core::model::SpaceId;
use engram_core::stream::Inbound;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    validate(engram_server::fuzzing::ws_decode(&text));
}

/// What the engine checks of a decoded message before acting on it.
pub(crate) fn validate(m: Inbound) {
    match m {
        Inbound::Init(init) => {
            let _ = SpaceId::parse(&init.memory_space_id);
        }
        Inbound::Observation {
            episode: Ok(episode),
            ..
        } => {
            let _ = episode.validate();
        }
        Inbound::Recall {
            request: Ok(request),
            ..
        } => {
            if !request.memory_space_id.is_empty() {
                let _ = SpaceId::parse(&request.memory_space_id);
            }
            let _ = request.cue.validate();
        }
        _ => {}
    }
}

/// Seeds: every message type of the protocol, with every field a client
/// may send, and the minimal form of each.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let messages: [(&str, &str); 14] = [
        (
            "init",
            r#"{"type":"init","memory_space_id":"demo","enable_backpressure":true}"#,
        ),
        (
            "init-resume",
            r#"{"type":"init","memory_space_id":"demo","resume_session_id":"5f0c2a9e-1d2b-4c3d-8e4f-5a6b7c8d9e0f","enable_backpressure":false}"#,
        ),
        (
            "observation",
            r#"{"type":"observation","sequence_number":1,"priority":"high","episode":{"id":"coffee","when":"2026-12-05T10:00:00.123456789Z","what":"had coffee with Ada","embedding":[0.9,0.1,0.0],"encoding_confidence":0.8,"tags":["social","morning"],"metadata":{"place":"office","mood":"good"}}}"#,
        ),
        (
            "observation-minimal",
            r#"{"type":"observation","sequence_number":2,"episode":{"embedding":[1,2]}}"#,
        ),
        (
            "observation-low",
            r#"{"type":"observation","sequence_number":3,"priority":"low","episode":{"what":"later","embedding":[-0.5,0.25,1e-3],"when":"1970-01-01T00:00:00Z"}}"#,
        ),
        ("flow-pause", r#"{"type":"flow_control","action":"pause"}"#),
        (
            "flow-resume",
            r#"{"type":"flow_control","action":"resume","buffer_remaining":128}"#,
        ),
        (
            "flow-buffer-status",
            r#"{"type":"flow_control","action":"buffer_status"}"#,
        ),
        (
            "recall",
            r#"{"type":"recall","request_id":"r1","memory_space_id":"demo","cue":{"embedding":[1,0,0],"max_results":5,"similarity_threshold":0.2,"when_from":"2026-01-01T00:00:00Z","when_to":"2026-12-31T23:59:59Z","ef_search":64},"batch_size":2,"include_embeddings":true}"#,
        ),
        (
            "recall-minimal",
            r#"{"type":"recall","request_id":"r2","cue":{"embedding":[1,0,0]}}"#,
        ),
        ("heartbeat", r#"{"type":"heartbeat"}"#),
        ("close-drain", r#"{"type":"close","drain":true}"#),
        ("close", r#"{"type":"close"}"#),
        (
            "observation-bad-episode",
            r#"{"type":"observation","sequence_number":7,"episode":{"embedding":"x"}}"#,
        ),
    ];
    messages
        .iter()
        .map(|(name, text)| (format!("{name}.json"), text.as_bytes().to_vec()))
        .collect()
}

/// A seed decodes as the message it names: not as unreadable (except the
/// seed of a bad episode, which must keep its sequence number).
pub fn check_seed(name: &str, bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let m = engram_server::fuzzing::ws_decode(text);
    let ok = match &m {
        Inbound::Unreadable(_) => false,
        Inbound::Observation { episode, .. } => {
            episode.is_ok() != name.starts_with("observation-bad")
        }
        Inbound::Recall { request, .. } => request.is_ok(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("decoded as {m:?}"))
    }
}
