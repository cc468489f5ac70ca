//! `engram.v1.Streaming`: ObserveStream, RecallStream and MemoryFlow.
//!
//! An adapter only: it decodes the client's messages into the engine's
//! stream protocol ([`engram_core::stream`]), which decides acks, order,
//! status, backpressure and why a stream ends, and encodes what comes back.
//! The WebSocket endpoint (`http::ws`) is the same adapter for JSON.

use std::pin::Pin;
use std::sync::Arc;

use engram_core::model::ConsistencyToken;
use engram_core::session::{Ack, Answer, RejectReason};
use engram_core::stream::{
    self, FlowAction, Inbound, Outbound, RecallRequest, RecallStart, StreamError, StreamErrorKind,
    StreamHost, StreamInit, StreamLimits, StreamState, StreamStatus,
};
use engram_proto::v1 as pb;
use engram_proto::v1::streaming_server::Streaming;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::status::{auth_status, not_ready};
use super::{convert, principal};
use crate::auth::{Need, StreamGuard};
use crate::http::AppState;

use pb::flow_control::Action;
use pb::observation_ack::{Reason, Status as AckStatus};
use pb::stream_status::State;

pub struct StreamingService {
    pub state: AppState,
    pub max_message_bytes: usize,
    /// Becomes true when the server shuts down: streams stop taking
    /// observations, answer what they hold and end with UNAVAILABLE.
    pub shutdown: watch::Receiver<bool>,
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl StreamingService {
    /// What a stream runs on: the engine, or in cluster mode this node's
    /// sessions and write path (recalls forwarded to an owner carry the
    /// stream's credentials, from `metadata`).
    fn host(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Arc<dyn StreamHost>, Status> {
        let engine = self.state.ready_engine().cloned().ok_or_else(not_ready)?;
        Ok(match self.state.cluster() {
            Some(cluster) => cluster.stream_host(metadata.clone()),
            None => Arc::new(engine),
        })
    }

    /// Authenticates a stream as it opens: its key's place among the
    /// key's open streams (held until the stream ends), and what its
    /// messages may do.
    fn open_guarded<T>(&self, req: &Request<T>) -> Result<(StreamLimits, StreamGuard), Status> {
        let principal = principal(req)?;
        let auth = self.state.auth();
        let guard = auth.open_stream(&principal).map_err(auth_status)?;
        let limits =
            StreamLimits::new(self.max_message_bytes).with_access(auth.stream_access(&principal));
        Ok((limits, guard))
    }

    fn run<T, I>(
        &self,
        host: Arc<dyn StreamHost>,
        inbound: I,
        (limits, guard): (StreamLimits, StreamGuard),
        encode: fn(Outbound) -> Option<T>,
    ) -> Responses<T>
    where
        T: Send + 'static,
        I: Stream<Item = Result<Inbound, StreamError>> + Send + Unpin + 'static,
    {
        let out = stream::run_on(host, inbound, limits, self.shutdown.clone());
        Box::pin(ReceiverStream::new(out).filter_map(move |item| {
            // The stream holds its key's place until its responses end.
            let _held = &guard;
            std::future::ready(match item {
                Ok(m) => encode(m).map(Ok),
                Err(e) => Some(Err(stream_status(e))),
            })
        }))
    }
}

#[tonic::async_trait]
impl Streaming for StreamingService {
    type ObserveStreamStream = Responses<pb::ObserveResponse>;
    type RecallStreamStream = ReceiverStream<Result<pb::RecallResponse, Status>>;
    type MemoryFlowStream = Responses<pb::FlowResponse>;

    async fn observe_stream(
        &self,
        req: Request<tonic::Streaming<pb::ObserveRequest>>,
    ) -> Result<Response<Self::ObserveStreamStream>, Status> {
        let host = self.host(req.metadata())?;
        let opened = self.open_guarded(&req)?;
        let limit = self.max_message_bytes;
        let inbound = req.into_inner().map(move |r| {
            r.map_err(|st| inbound_error(st, limit))
                .and_then(observe_request)
        });
        Ok(Response::new(self.run(host, inbound, opened, |m| {
            observe_response(m).map(|response| pb::ObserveResponse {
                response: Some(response),
            })
        })))
    }

    async fn recall_stream(
        &self,
        req: Request<pb::RecallRequest>,
    ) -> Result<Response<Self::RecallStreamStream>, Status> {
        let host = self.host(req.metadata())?;
        self.state
            .auth()
            .authorize(
                &principal(&req)?,
                &req.get_ref().memory_space_id,
                Need::Read,
            )
            .map_err(auth_status)?;
        // Errors in the request itself fail the call before any batch.
        let req = recall_request(req.into_inner()).map_err(stream_status)?;
        let include = req.include_embeddings;
        let mut batches = match host.start_recall(req) {
            RecallStart::Ready(started) => started,
            RecallStart::Later(starting) => starting.await,
        }
        .map_err(stream_status)?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            while let Some(b) = batches.next().await {
                let msg = b
                    .map(|b| recall_response(&b, include))
                    .map_err(stream_status);
                if tx.send(msg).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn memory_flow(
        &self,
        req: Request<tonic::Streaming<pb::FlowRequest>>,
    ) -> Result<Response<Self::MemoryFlowStream>, Status> {
        let host = self.host(req.metadata())?;
        let opened = self.open_guarded(&req)?;
        let limit = self.max_message_bytes;
        let inbound = req.into_inner().map(move |r| {
            r.map_err(|st| inbound_error(st, limit))
                .and_then(flow_request)
        });
        Ok(Response::new(self.run(
            host,
            inbound,
            opened,
            flow_response,
        )))
    }
}

/// A failed read of the client's stream. tonic's decoder answers a message
/// over `max_decoding_message_size` with OUT_OF_RANGE (and uses that code
/// for nothing else on a read).
fn inbound_error(st: Status, limit: usize) -> StreamError {
    match st.code() {
        Code::OutOfRange => StreamError::too_large(None, limit, "grpc.max_message_bytes"),
        Code::Cancelled => StreamError::new(StreamErrorKind::Aborted, st.message()),
        Code::InvalidArgument => StreamError::invalid(st.message()),
        Code::Unavailable => StreamError::new(StreamErrorKind::Unavailable, st.message()),
        // Undecodable protobuf, a broken HTTP/2 stream.
        _ => StreamError::new(StreamErrorKind::Internal, st.message()),
    }
}

fn observe_request(req: pb::ObserveRequest) -> Result<Inbound, StreamError> {
    use pb::observe_request::Request as R;
    match req.request {
        Some(R::Init(init)) => Ok(Inbound::Init(StreamInit {
            memory_space_id: init.memory_space_id,
            resume_session_id: Some(init.resume_session_id).filter(|s| !s.is_empty()),
            enable_backpressure: init.enable_backpressure,
        })),
        Some(R::Observation(obs)) => Ok(Inbound::Observation {
            sequence_number: obs.sequence_number,
            episode: match obs.episode {
                None => Err("missing episode: expected an Episode with an embedding".into()),
                Some(e) => convert::episode_input(e).map_err(|st| st.message().to_owned()),
            },
            priority: convert::priority(obs.priority),
        }),
        Some(R::Flow(flow)) => Ok(Inbound::Flow(
            match Action::try_from(flow.action).unwrap_or(Action::Unspecified) {
                Action::Pause => FlowAction::Pause,
                Action::Resume => FlowAction::Resume,
                Action::BufferStatus | Action::Unspecified => FlowAction::BufferStatus,
            },
        )),
        Some(R::Close(close)) => Ok(Inbound::Close { drain: close.drain }),
        None => Err(StreamError::invalid(
            "ObserveRequest without a request: expected init, observation, flow or close",
        )),
    }
}

fn flow_request(f: pb::FlowRequest) -> Result<Inbound, StreamError> {
    match f.request {
        Some(pb::flow_request::Request::Observe(o)) => observe_request(o),
        Some(pb::flow_request::Request::Recall(r)) => Ok(Inbound::Recall {
            request_id: f.request_id,
            request: recall_request(r),
        }),
        None => Err(StreamError::invalid(
            "FlowRequest without a request: expected 'observe' or 'recall'",
        )),
    }
}

fn recall_request(r: pb::RecallRequest) -> Result<RecallRequest, StreamError> {
    Ok(RecallRequest {
        memory_space_id: r.memory_space_id,
        cue: convert::cue(r.cue).map_err(|st| StreamError::invalid(st.message()))?,
        batch_size: r.batch_size as usize,
        include_embeddings: r.include_embeddings,
        after: r.after.map(|t| ConsistencyToken {
            partition: t.partition,
            sequence: t.sequence,
        }),
    })
}

/// The observe half of what a stream sends; None for what ObserveStream
/// does not carry.
fn observe_response(m: Outbound) -> Option<pb::observe_response::Response> {
    use pb::observe_response::Response as R;
    Some(match m {
        Outbound::InitAck(a) => R::InitAck(pb::StreamInitAck {
            session_id: a.session_id,
            last_acked_sequence: a.last_acked_sequence,
            capabilities: Some(pb::StreamCapabilities {
                queue_capacity: a.capabilities.queue_capacity,
                dimension: a.capabilities.dimension,
                max_message_size: a.capabilities.max_message_size,
                max_recalls_per_stream: a.capabilities.max_recalls_per_stream,
            }),
        }),
        Outbound::Ack(ack) => R::Ack(ack_message(ack)),
        Outbound::Status(s) => R::Status(status_message(s)),
        Outbound::Closed(c) => R::Closed(pb::StreamClosed {
            final_sequence: c.final_sequence,
            accepted: c.accepted,
            rejected: c.rejected,
        }),
        // gRPC has HTTP/2 pings; recalls and read errors come only on
        // MemoryFlow (and a gRPC read error ends the stream).
        Outbound::Heartbeat
        | Outbound::Recall { .. }
        | Outbound::RecallFailed { .. }
        | Outbound::Error(_) => return None,
    })
}

fn flow_response(m: Outbound) -> Option<pb::FlowResponse> {
    use pb::flow_response::Response as R;
    let (request_id, response) = match m {
        Outbound::Recall {
            request_id,
            batch,
            include_embeddings,
        } => (
            request_id,
            R::Recall(recall_response(&batch, include_embeddings)),
        ),
        Outbound::RecallFailed { request_id, error } => (request_id, R::Error(flow_error(&error))),
        Outbound::Error(error) => (String::new(), R::Error(flow_error(&error))),
        other => (
            String::new(),
            R::Observe(pb::ObserveResponse {
                response: Some(observe_response(other)?),
            }),
        ),
    };
    Some(pb::FlowResponse {
        request_id,
        response: Some(response),
    })
}

fn flow_error(e: &StreamError) -> pb::FlowError {
    pb::FlowError {
        code: code_name(grpc_code(e.kind)),
        message: e.message.clone(),
    }
}

fn recall_response(b: &engram_core::recall::RecallBatch, include: bool) -> pb::RecallResponse {
    pb::RecallResponse {
        memories: b
            .memories
            .iter()
            .map(|m| convert::recalled(m, include))
            .collect(),
        more: b.more,
        snapshot_sequence: b.snapshot_sequence,
    }
}

fn grpc_code(kind: StreamErrorKind) -> Code {
    match kind {
        StreamErrorKind::InvalidArgument | StreamErrorKind::Malformed => Code::InvalidArgument,
        StreamErrorKind::NotFound => Code::NotFound,
        StreamErrorKind::ResourceExhausted { .. } | StreamErrorKind::MessageTooLarge { .. } => {
            Code::ResourceExhausted
        }
        StreamErrorKind::Unavailable => Code::Unavailable,
        StreamErrorKind::Aborted => Code::Aborted,
        StreamErrorKind::Internal => Code::Internal,
        StreamErrorKind::Unauthenticated => Code::Unauthenticated,
        StreamErrorKind::PermissionDenied => Code::PermissionDenied,
    }
}

/// The status that ends a stream.
fn stream_status(e: StreamError) -> Status {
    match e.kind {
        // RetryInfo tells clients this is our admission control, not one of
        // gRPC's own resource limits.
        StreamErrorKind::ResourceExhausted {
            retry_after: Some(after),
        } => Status::with_error_details(
            Code::ResourceExhausted,
            e.message,
            ErrorDetails::with_retry_info(Some(after)),
        ),
        kind => Status::new(grpc_code(kind), e.message),
    }
}

/// "INVALID_ARGUMENT" for Code::InvalidArgument.
fn code_name(c: Code) -> String {
    format!("{c:?}")
        .chars()
        .flat_map(|ch| {
            if ch.is_uppercase() {
                vec!['_', ch]
            } else {
                vec![ch.to_ascii_uppercase()]
            }
        })
        .skip(1)
        .collect()
}

fn status_message(s: StreamStatus) -> pb::StreamStatus {
    pb::StreamStatus {
        state: match s.state {
            StreamState::Active => State::Active,
            StreamState::Paused => State::Paused,
            StreamState::Backpressure => State::Backpressure,
            StreamState::Overloaded => State::Overloaded,
            StreamState::Closing => State::Closing,
        } as i32,
        queue_depth: s.queue_depth,
        queue_capacity: s.queue_capacity,
        pressure: s.pressure,
        suggested_rate: s.suggested_rate,
        message: s.message,
    }
}

fn ack_message(ack: Ack) -> pb::ObservationAck {
    let mut out = pb::ObservationAck {
        sequence_number: ack.sequence_number,
        replayed: ack.replayed,
        ..Default::default()
    };
    match ack.answer {
        Answer::Accepted(r) => {
            out.status = AckStatus::AckAccepted as i32;
            out.memory_id = r.memory_id;
            out.server_sequence = r.server_sequence;
            out.committed_at = Some(convert::timestamp(r.committed_at_unix_nanos));
            out.duplicate = r.duplicate;
            out.token = r.token.map(|t| pb::ConsistencyToken {
                partition: t.partition,
                sequence: t.sequence,
            });
        }
        Answer::Rejected {
            reason,
            message,
            retry_after,
        } => {
            out.status = AckStatus::AckRejected as i32;
            out.reason = match reason {
                RejectReason::Overloaded => Reason::RejectOverloaded,
                RejectReason::Invalid => Reason::RejectInvalid,
                RejectReason::OutOfOrder => Reason::RejectOutOfOrder,
                RejectReason::Closed => Reason::RejectClosed,
                RejectReason::Unavailable => Reason::RejectUnavailable,
                RejectReason::Unauthorized => Reason::RejectUnauthorized,
            } as i32;
            out.retry_after_ms = retry_after.map_or(0, |d| d.as_millis().max(1) as u64);
            out.message = message;
        }
    }
    out
}
