//! `/v1/stream`: the stream protocol over WebSocket, as JSON text messages
//! with a `type` field (docs/api/websocket.md is the contract).
//!
//! An adapter only, like the gRPC one: it decodes JSON into the engine's
//! stream protocol ([`engram_core::stream`]), which decides acks, order,
//! status, backpressure and why a stream ends, and encodes what comes back.
//! What is WebSocket's own lives here: pings (every 30 s by default), answers to
//! unreadable messages that keep the socket open, the size limit (close
//! 1009) and the close codes (1008 policy, 1011 internal, 1013 try again
//! later).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use engram_core::session::{Ack, Answer, RejectReason};
use engram_core::stream::{
    self, FlowAction, Inbound, Outbound, RecallRequest, StreamError, StreamErrorKind, StreamHost,
    StreamInit, StreamLimits,
};
use engram_core::{Engine, Priority};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::rest::{format_time, recalled_out, CueJson, EpisodeJson, RecalledOut};
use super::AppState;
use crate::auth::{AuthError, Principal};

/// Close codes (RFC 6455 section 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_INTERNAL: u16 = 1011;
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// What every WebSocket stream runs with.
#[derive(Clone)]
pub struct WsSettings {
    pub max_message_bytes: usize,
    /// How often the server pings the socket (`http.ws_ping_interval_secs`).
    pub ping_interval: Duration,
    /// How long a socket opened without a key has to send its `init` with
    /// `api_key` when the server needs keys (`http.ws_auth_timeout_secs`).
    pub auth_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Held by every open socket: shutdown waits until all are gone (each
    /// ends within [`LINGER`] of its stream), so the process does not exit
    /// under a client still reading its last messages.
    pub open_sockets: mpsc::Sender<()>,
}

/// The subprotocol the server selects (browsers fail a connection that
/// offered subprotocols when the server selects none).
pub const SUBPROTOCOL: &str = "engram.v1";
/// Offered subprotocol that carries the API key: `bearer.<KEY>`.
const KEY_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// `GET /v1/stream` (upgrade). The API key, when the server needs one,
/// comes in the `authorization` header, as an offered subprotocol
/// `bearer.<KEY>` (browsers cannot set headers), or in the `init`
/// message's `api_key`. A key given on the upgrade request and not valid
/// is refused with 401 before the upgrade.
pub async fn stream(
    ws: WebSocketUpgrade,
    headers: axum::http::HeaderMap,
    state: AppState,
    settings: WsSettings,
) -> Response {
    let upgrade = upgrade_key(&headers).map(|k| k.map(str::to_owned));
    let principal = if !state.auth().enabled() {
        // No keys: whatever credentials a client or proxy sends are not
        // ours to judge (REST ignores them too).
        Some((Principal::Open, None))
    } else {
        match upgrade {
            Some(key) => {
                match key.and_then(|k| state.auth().authenticate_key(&k).map(|p| (p, k))) {
                    Ok((p, k)) => Some((p, Some(k))),
                    Err(e) => return super::ApiError::from(e).into_response(),
                }
            }
            None => None,
        }
    };
    let limit = settings.max_message_bytes;
    ws.protocols([SUBPROTOCOL])
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve_socket(socket, state, settings, principal))
}

/// The key on the upgrade request: `authorization: Bearer KEY`, else an
/// offered subprotocol `bearer.KEY`. None when neither is there;
/// Some(Err) for a malformed authorization header.
fn upgrade_key(headers: &axum::http::HeaderMap) -> Option<Result<&str, AuthError>> {
    if let Some(h) = headers.get(axum::http::header::AUTHORIZATION) {
        let key = h
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, key)| scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty())
            .map(|(_, key)| key.trim());
        return Some(key.ok_or_else(|| {
            AuthError::Unauthenticated(
                "malformed authorization header: expected 'Bearer <key>'".into(),
            )
        }));
    }
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(KEY_SUBPROTOCOL_PREFIX))
        .map(Ok)
}

type Tx = SplitSink<WebSocket, Message>;

async fn serve_socket(
    socket: WebSocket,
    state: AppState,
    settings: WsSettings,
    principal: Option<(Principal, Option<String>)>,
) {
    let open = settings.open_sockets.clone();
    let (mut tx, rx) = socket.split();
    let engine: Option<Engine> = if *settings.shutdown.borrow() {
        None
    } else {
        state.ready_engine().cloned()
    };
    let Some(engine) = engine else {
        let e = StreamError::new(
            StreamErrorKind::Unavailable,
            "the server is not ready (recovering its data or shutting down); reconnect with backoff",
        );
        end_with(&mut tx, &e).await;
        return;
    };
    let limit = settings.max_message_bytes;
    let (in_tx, in_rx) = mpsc::channel(INBOUND_BUFFER);
    let (key_tx, key_rx) = oneshot::channel();
    tokio::spawn(read_socket(rx, in_tx, limit, open, key_tx));
    let inbound = ReceiverStream::new(in_rx);
    let auth = state.auth().clone();
    let principal = match principal {
        Some(p) => Ok(p),
        // No key on the upgrade: the init message must carry it.
        None => match tokio::time::timeout(settings.auth_timeout, key_rx).await {
            Ok(Ok(Some(key))) => auth.authenticate_key(&key).map(|p| (p, Some(key))),
            Ok(_) => Err(AuthError::Unauthenticated(
                "missing API key: send it in init.api_key, as the subprotocol 'bearer.<key>', or as 'authorization: Bearer <key>'".into(),
            )),
            Err(_) => Err(AuthError::Unauthenticated(format!(
                "no init with api_key within {} s",
                settings.auth_timeout.as_secs()
            ))),
        },
    };
    let ((principal, key), _guard) =
        match principal.and_then(|(p, k)| auth.open_stream(&p).map(|g| ((p, k), g))) {
            Ok(held) => held,
            Err(e) => {
                end_with(&mut tx, &auth_stream_error(e)).await;
                return;
            }
        };
    let limits = StreamLimits::new(limit).with_access(auth.stream_access(&principal));
    let host: Arc<dyn StreamHost> = match state.cluster() {
        // Cluster mode: the node's sessions and write path; recalls
        // forwarded to an owner carry the stream's key.
        Some(cluster) => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Some(v) = key.and_then(|k| format!("Bearer {k}").parse().ok()) {
                metadata.insert("authorization", v);
            }
            cluster.stream_host(metadata)
        }
        None => Arc::new(engine),
    };
    let mut out = stream::run_on(host, inbound, limits, settings.shutdown.clone());
    let every = settings.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            item = out.recv() => match item {
                Some(Ok(m)) => {
                    // Write what is ready, then flush once.
                    if tx.feed(Message::Text(encode(&m))).await.is_err() {
                        return;
                    }
                    let mut end = None;
                    while let Ok(next) = out.try_recv() {
                        match next {
                            Ok(m) => {
                                if tx.feed(Message::Text(encode(&m))).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                end = Some(e);
                                break;
                            }
                        }
                    }
                    if tx.flush().await.is_err() {
                        return;
                    }
                    if let Some(e) = end {
                        end_with(&mut tx, &e).await;
                        return;
                    }
                }
                Some(Err(e)) => {
                    end_with(&mut tx, &e).await;
                    return;
                }
                None => {
                    close(&mut tx, CLOSE_NORMAL, "stream ended").await;
                    return;
                }
            },
            _ = ping.tick() => {
                if tx.send(Message::Ping(Vec::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Decoded messages waiting for the stream; when full, the reader stops
/// reading and TCP flow control pushes back on the client.
const INBOUND_BUFFER: usize = 16;
/// How long the socket stays open after the stream ended, so that the
/// client reads the server's last messages and close frame before the
/// connection goes. Closing a socket with unread data in it resets the
/// connection, and a reset can overtake what was sent before it: a client
/// still sending (an oversized message, observations in flight at shutdown)
/// would see an abnormal close (1006) instead of the close code.
const LINGER: Duration = Duration::from_secs(2);

/// Reads the socket for the stream. Once the stream has ended (or cannot
/// read any more), keeps the connection open for up to [`LINGER`], reading
/// and dropping what the client still sends, until the client closes.
///
/// The first text message's `api_key` (if any) goes to `first_key` before
/// the message itself goes on to the stream.
async fn read_socket(
    mut rx: SplitStream<WebSocket>,
    tx: mpsc::Sender<Result<Inbound, StreamError>>,
    limit: usize,
    _open: mpsc::Sender<()>,
    first_key: oneshot::Sender<Option<String>>,
) {
    let mut first_key = Some(first_key);
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        let next = match linger_until {
            None => tokio::select! {
                next = rx.next() => next,
                () = tx.closed() => {
                    linger_until = Some(tokio::time::Instant::now() + LINGER);
                    continue;
                }
            },
            Some(until) => match tokio::time::timeout_at(until, rx.next()).await {
                Ok(next) => next,
                Err(_) => return,
            },
        };
        let item = match next {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(text))) => {
                if let Some(k) = first_key.take() {
                    let _ = k.send(init_api_key(&text));
                }
                Ok(decode(&text))
            }
            Some(Ok(Message::Binary(_))) => Ok(Inbound::Unreadable(StreamError::invalid(
                "binary messages are not part of this protocol: send JSON text messages",
            ))),
            Some(Err(e)) => {
                // Nothing more can be read (an oversized message stays
                // unread): end the stream, and hold the connection while the
                // error and the close frame go out.
                let _ = tx.send(Err(read_error(e, limit))).await;
                tokio::time::sleep(LINGER).await;
                return;
            }
        };
        if linger_until.is_none() && tx.send(item).await.is_err() {
            linger_until = Some(tokio::time::Instant::now() + LINGER);
        }
    }
}

/// Sends the fatal error, then the close frame that fits it.
async fn end_with(tx: &mut Tx, e: &StreamError) {
    let msg = ServerMsg::Error {
        code: error_code(e.kind),
        message: &e.message,
        request_id: None,
        retry_after_ms: retry_after_ms(e.kind),
        fatal: true,
    };
    let _ = tx.send(Message::Text(to_json(&msg))).await;
    let code = match e.kind {
        StreamErrorKind::MessageTooLarge { .. } => CLOSE_TOO_BIG,
        StreamErrorKind::ResourceExhausted { .. } | StreamErrorKind::Unavailable => {
            CLOSE_TRY_AGAIN_LATER
        }
        StreamErrorKind::Internal => CLOSE_INTERNAL,
        StreamErrorKind::InvalidArgument
        | StreamErrorKind::Malformed
        | StreamErrorKind::NotFound
        | StreamErrorKind::Aborted
        | StreamErrorKind::Unauthenticated
        | StreamErrorKind::PermissionDenied => CLOSE_POLICY,
    };
    close(tx, code, &e.message).await;
}

async fn close(tx: &mut Tx, code: u16, reason: &str) {
    // A close reason is at most 123 bytes; cut on a char boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: Cow::Owned(reason[..end].to_owned()),
    };
    let _ = tx.send(Message::Close(Some(frame))).await;
}

/// A failed read: over the size limit, or a broken connection.
fn read_error(e: axum::Error, limit: usize) -> StreamError {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(te) => match *te {
            tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
                size,
                ..
            }) => StreamError::too_large(Some(size), limit, "http.max_ws_message_bytes"),
            other => StreamError::new(
                StreamErrorKind::Aborted,
                format!("the connection broke: {other}"),
            ),
        },
        Err(other) => StreamError::new(
            StreamErrorKind::Aborted,
            format!("the connection broke: {other}"),
        ),
    }
}

// ---- decoding ----

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMsg {
    Init {
        memory_space_id: String,
        #[serde(default)]
        resume_session_id: Option<String>,
        #[serde(default)]
        enable_backpressure: bool,
        /// The API key, for clients that cannot send it on the upgrade;
        /// read by [`init_api_key`] before decoding, not part of the stream.
        #[serde(default)]
        #[allow(dead_code)]
        api_key: Option<String>,
    },
    Observation {
        sequence_number: u64,
        episode: EpisodeJson,
        #[serde(default)]
        priority: PriorityJson,
    },
    FlowControl {
        action: ActionJson,
        #[serde(default)]
        #[allow(dead_code)]
        buffer_remaining: Option<u64>,
    },
    Recall {
        #[serde(default)]
        request_id: String,
        #[serde(default)]
        memory_space_id: String,
        cue: CueJson,
        #[serde(default)]
        batch_size: usize,
        #[serde(default)]
        include_embeddings: bool,
        /// Cluster mode: an ack's `token`; the recall sees that write.
        #[serde(default)]
        after: Option<TokenIn>,
    },
    Heartbeat {},
    Close {
        #[serde(default)]
        drain: bool,
    },
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum PriorityJson {
    #[default]
    Normal,
    High,
    Low,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ActionJson {
    Pause,
    Resume,
    BufferStatus,
}

/// One text message into the protocol. A message that cannot be read is
/// answered, never fatal: an observation whose number can be read is
/// rejected as invalid under that number (as on gRPC), a recall whose id
/// can be read fails as that recall, anything else gets an `error`.
pub(crate) fn decode(text: &str) -> Inbound {
    match serde_json::from_str::<ClientMsg>(text) {
        Ok(m) => inbound(m),
        Err(e) => unreadable(text, &e),
    }
}

fn inbound(m: ClientMsg) -> Inbound {
    match m {
        ClientMsg::Init {
            memory_space_id,
            resume_session_id,
            enable_backpressure,
            ..
        } => Inbound::Init(StreamInit {
            memory_space_id,
            resume_session_id: resume_session_id.filter(|s| !s.is_empty()),
            enable_backpressure,
        }),
        ClientMsg::Observation {
            sequence_number,
            episode,
            priority,
        } => Inbound::Observation {
            sequence_number,
            episode: episode.into_input().map_err(|e| e.message),
            priority: match priority {
                PriorityJson::Normal => Priority::Normal,
                PriorityJson::High => Priority::High,
                PriorityJson::Low => Priority::Low,
            },
        },
        ClientMsg::FlowControl { action, .. } => Inbound::Flow(match action {
            ActionJson::Pause => FlowAction::Pause,
            ActionJson::Resume => FlowAction::Resume,
            ActionJson::BufferStatus => FlowAction::BufferStatus,
        }),
        ClientMsg::Recall {
            request_id,
            memory_space_id,
            cue,
            batch_size,
            include_embeddings,
            after,
        } => Inbound::Recall {
            request_id,
            request: cue
                .into_cue()
                .map(|cue| RecallRequest {
                    memory_space_id,
                    cue,
                    batch_size,
                    include_embeddings,
                    after: after.map(|t| engram_core::model::ConsistencyToken {
                        partition: t.partition,
                        sequence: t.sequence,
                    }),
                })
                .map_err(|e| StreamError::invalid(e.message)),
        },
        ClientMsg::Heartbeat {} => Inbound::Heartbeat,
        ClientMsg::Close { drain } => Inbound::Close { drain },
    }
}

/// The `api_key` of an `init` message, if the text is one and has it.
fn init_api_key(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct InitKey {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        api_key: Option<String>,
    }
    serde_json::from_str::<InitKey>(text)
        .ok()
        .filter(|m| m.kind == "init")
        .and_then(|m| m.api_key)
}

/// A refused key as the stream error that ends the socket.
fn auth_stream_error(e: AuthError) -> StreamError {
    match e {
        AuthError::Unauthenticated(m) => StreamError::new(StreamErrorKind::Unauthenticated, m),
        AuthError::PermissionDenied(m) => StreamError::new(StreamErrorKind::PermissionDenied, m),
        AuthError::TooManySessions(m) => {
            StreamError::new(StreamErrorKind::ResourceExhausted { retry_after: None }, m)
        }
        AuthError::RateLimited {
            message,
            retry_after,
        } => StreamError::new(
            StreamErrorKind::ResourceExhausted {
                retry_after: Some(retry_after),
            },
            message,
        ),
    }
}

fn unreadable(text: &str, e: &serde_json::Error) -> Inbound {
    let parsed = serde_json::from_str::<serde_json::Value>(text);
    let Ok(serde_json::Value::Object(v)) = parsed else {
        let what = if parsed.is_ok() {
            "a JSON value that is not an object".to_owned()
        } else {
            format!("not JSON ({e})")
        };
        return Inbound::Unreadable(StreamError::new(
            StreamErrorKind::Malformed,
            format!("expected a JSON object with a \"type\" field; got {what}"),
        ));
    };
    let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or_default();
    let problem = format!("invalid '{kind}' message: {e}");
    match kind {
        "observation" => {
            if let Some(seq) = v.get("sequence_number").and_then(|n| n.as_u64()) {
                return Inbound::Observation {
                    sequence_number: seq,
                    episode: Err(problem),
                    priority: Priority::Normal,
                };
            }
        }
        "recall" => {
            if let Some(id) = v.get("request_id").and_then(|n| n.as_str()) {
                return Inbound::Recall {
                    request_id: id.to_owned(),
                    request: Err(StreamError::invalid(problem)),
                };
            }
        }
        _ => {}
    }
    let problem = if v.contains_key("type") {
        problem
    } else {
        format!("a message needs a \"type\" field (init, observation, flow_control, recall, heartbeat or close): {e}")
    };
    Inbound::Unreadable(StreamError::invalid(problem))
}

// ---- encoding ----

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMsg<'a> {
    InitAck {
        session_id: &'a str,
        last_acked_sequence: u64,
        capabilities: CapabilitiesJson,
    },
    Ack(AckJson<'a>),
    Status {
        state: &'static str,
        queue_depth: u64,
        queue_capacity: u64,
        pressure: f32,
        suggested_rate: f32,
        message: &'a str,
    },
    RecallResult {
        request_id: &'a str,
        memories: Vec<RecalledOut<'a>>,
        more: bool,
        snapshot_sequence: u64,
    },
    Heartbeat {},
    Closed {
        final_sequence: u64,
        accepted: u64,
        rejected: u64,
    },
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        fatal: bool,
    },
}

#[derive(Serialize)]
struct CapabilitiesJson {
    queue_capacity: u64,
    dimension: u32,
    max_message_size: u64,
    max_recalls_per_stream: u32,
}

#[derive(Serialize)]
struct AckJson<'a> {
    sequence_number: u64,
    status: &'static str,
    replayed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    committed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    /// Cluster mode: where the write is stored (a recall's `after`).
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<TokenJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// A token as a client sends it back (`after`): the ack's `token`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenIn {
    partition: u32,
    sequence: u64,
}

#[derive(Serialize)]
struct TokenJson {
    partition: u32,
    sequence: u64,
}

fn ack_json(ack: &Ack) -> AckJson<'_> {
    let mut out = AckJson {
        sequence_number: ack.sequence_number,
        status: "accepted",
        replayed: ack.replayed,
        memory_id: None,
        server_sequence: None,
        committed_at: None,
        duplicate: None,
        token: None,
        reason: None,
        message: None,
        retry_after_ms: None,
    };
    match &ack.answer {
        Answer::Accepted(r) => {
            out.memory_id = Some(&r.memory_id);
            out.server_sequence = Some(r.server_sequence);
            out.committed_at = Some(format_time(r.committed_at_unix_nanos));
            out.duplicate = Some(r.duplicate);
            out.token = r.token.map(|t| TokenJson {
                partition: t.partition,
                sequence: t.sequence,
            });
        }
        Answer::Rejected {
            reason,
            message,
            retry_after,
        } => {
            out.status = "rejected";
            out.reason = Some(match reason {
                RejectReason::Overloaded => "overloaded",
                RejectReason::Invalid => "invalid",
                RejectReason::OutOfOrder => "out_of_order",
                RejectReason::Closed => "closed",
                RejectReason::Unavailable => "unavailable",
                RejectReason::Unauthorized => "unauthorized",
            });
            out.message = Some(message);
            out.retry_after_ms = retry_after.map(|d| d.as_millis().max(1) as u64);
        }
    }
    out
}

fn error_code(kind: StreamErrorKind) -> &'static str {
    match kind {
        StreamErrorKind::Malformed => "malformed_json",
        other => other.code(),
    }
}

fn retry_after_ms(kind: StreamErrorKind) -> Option<u64> {
    match kind {
        StreamErrorKind::ResourceExhausted {
            retry_after: Some(d),
        } => Some(d.as_millis().max(1) as u64),
        _ => None,
    }
}

fn encode(m: &Outbound) -> String {
    let msg = match m {
        Outbound::InitAck(a) => ServerMsg::InitAck {
            session_id: &a.session_id,
            last_acked_sequence: a.last_acked_sequence,
            capabilities: CapabilitiesJson {
                queue_capacity: a.capabilities.queue_capacity,
                dimension: a.capabilities.dimension,
                max_message_size: a.capabilities.max_message_size,
                max_recalls_per_stream: a.capabilities.max_recalls_per_stream,
            },
        },
        Outbound::Ack(ack) => ServerMsg::Ack(ack_json(ack)),
        Outbound::Status(s) => ServerMsg::Status {
            state: s.state.as_str(),
            queue_depth: s.queue_depth,
            queue_capacity: s.queue_capacity,
            pressure: s.pressure,
            suggested_rate: s.suggested_rate,
            message: &s.message,
        },
        Outbound::Closed(c) => ServerMsg::Closed {
            final_sequence: c.final_sequence,
            accepted: c.accepted,
            rejected: c.rejected,
        },
        Outbound::Recall {
            request_id,
            batch,
            include_embeddings,
        } => ServerMsg::RecallResult {
            request_id,
            memories: batch
                .memories
                .iter()
                .map(|m| recalled_out(m, *include_embeddings))
                .collect(),
            more: batch.more,
            snapshot_sequence: batch.snapshot_sequence,
        },
        Outbound::RecallFailed { request_id, error } => ServerMsg::Error {
            code: error_code(error.kind),
            message: &error.message,
            request_id: Some(request_id),
            retry_after_ms: retry_after_ms(error.kind),
            fatal: false,
        },
        Outbound::Heartbeat => ServerMsg::Heartbeat {},
        Outbound::Error(error) => ServerMsg::Error {
            code: error_code(error.kind),
            message: &error.message,
            request_id: None,
            retry_after_ms: retry_after_ms(error.kind),
            fatal: false,
        },
    };
    to_json(&msg)
}

fn to_json(m: &ServerMsg<'_>) -> String {
    serde_json::to_string(m).expect("server messages serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreadable_error(text: &str) -> StreamError {
        match decode(text) {
            Inbound::Unreadable(e) => e,
            other => panic!("{text}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn not_json_is_malformed_and_says_so() {
        let e = unreadable_error("{nope");
        assert_eq!(e.kind, StreamErrorKind::Malformed);
        assert!(e.message.contains("not JSON"), "{}", e.message);
        let e = unreadable_error("[1, 2]");
        assert_eq!(e.kind, StreamErrorKind::Malformed);
        assert!(e.message.contains("not an object"), "{}", e.message);
    }

    #[test]
    fn unknown_type_and_missing_type_are_named() {
        let e = unreadable_error(r#"{"type": "observe"}"#);
        assert_eq!(e.kind, StreamErrorKind::InvalidArgument);
        assert!(
            e.message.contains("unknown variant `observe`"),
            "{}",
            e.message
        );
        let e = unreadable_error(r#"{"sequence_number": 1}"#);
        assert!(e.message.contains("\"type\""), "{}", e.message);
    }

    #[test]
    fn a_bad_episode_keeps_its_sequence_number() {
        let m = decode(
            r#"{"type": "observation", "sequence_number": 7, "episode": {"embedding": "x"}}"#,
        );
        match m {
            Inbound::Observation {
                sequence_number: 7,
                episode: Err(msg),
                ..
            } => assert!(
                msg.contains("embedding") || msg.contains("invalid type"),
                "{msg}"
            ),
            other => panic!("{other:?}"),
        }
        let m = decode(
            r#"{"type": "observation", "sequence_number": 8, "episode": {"embedding": [1], "when": "yesterday"}}"#,
        );
        match m {
            Inbound::Observation {
                sequence_number: 8,
                episode: Err(msg),
                ..
            } => assert!(msg.contains("RFC 3339"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_cue_fails_its_recall_only() {
        match decode(r#"{"type": "recall", "request_id": "r9", "cue": {}}"#) {
            Inbound::Recall {
                request_id,
                request: Err(e),
            } => {
                assert_eq!(request_id, "r9");
                assert!(e.message.contains("embedding"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = unreadable_error(r#"{"type": "close", "drain": true, "drian": false}"#);
        assert!(e.message.contains("drian"), "{}", e.message);
    }

    #[test]
    fn messages_decode() {
        assert!(matches!(
            decode(r#"{"type": "init", "memory_space_id": "a", "enable_backpressure": true}"#),
            Inbound::Init(StreamInit {
                enable_backpressure: true,
                ..
            })
        ));
        assert!(matches!(
            decode(r#"{"type": "heartbeat"}"#),
            Inbound::Heartbeat
        ));
        assert!(matches!(
            decode(r#"{"type": "flow_control", "action": "pause"}"#),
            Inbound::Flow(FlowAction::Pause)
        ));
        assert!(matches!(
            decode(
                r#"{"type": "observation", "sequence_number": 1, "priority": "high", "episode": {"embedding": [1, 2]}}"#
            ),
            Inbound::Observation {
                sequence_number: 1,
                episode: Ok(_),
                priority: Priority::High
            }
        ));
    }
}
