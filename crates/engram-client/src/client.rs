//! [`StreamingClient`]: the connection, observe sessions, streaming recall
//! and the unary `Memory` calls.

use engram_proto::v1::memory_client::MemoryClient as GrpcMemory;
use engram_proto::v1::streaming_client::StreamingClient as GrpcStreaming;
use engram_proto::v1::{
    CreateSpaceRequest, CreateSpaceResponse, Cue, DeleteSpaceRequest, DescribeSpaceRequest,
    Episode, ForgetRequest, ListMemoriesRequest, ListMemoriesResponse, ListSpacesRequest, Priority,
    RecallRequest, RecallResponse, RememberRequest, RememberResponse, SpaceInfo, VectorStorage,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{ClientError, Result};
use crate::observe::{AckStream, ObserveSender};
use crate::options::ClientOptions;
use crate::recall::RecallStream;
use crate::session;

/// A client of one engram server, over one HTTP/2 connection (re-established
/// by itself when it drops). Cheap to clone: clones share the connection,
/// so observing on one clone while recalling on another is the normal use.
///
/// ```no_run
/// use engram_client::{cue, episode, StreamingClient};
///
/// # async fn run() -> Result<(), engram_client::ClientError> {
/// let client = StreamingClient::connect("http://127.0.0.1:50051").await?;
/// let (sender, mut acks) = client.observe_stream("notes").await?;
/// sender.send(episode("had coffee with Ada", vec![0.9, 0.1, 0.0])).await?;
/// let answer = acks.recv().await.expect("one answer per send")?;
/// println!("stored as {:?}", answer.accepted().map(|a| &a.memory_id));
///
/// let found = client.recall_stream("notes", cue(vec![1.0, 0.0, 0.0], 5)).await?.collect_all().await?;
/// println!("{} memories, snapshot {}", found.memories.len(), found.snapshot_sequence);
/// sender.close(true).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StreamingClient {
    endpoint: Endpoint,
    streaming: GrpcStreaming<AuthChannel>,
    memory: GrpcMemory<AuthChannel>,
    options: ClientOptions,
}

/// The connection with the API key put on every call.
pub type AuthChannel = InterceptedService<Channel, BearerKey>;

/// Adds `authorization: Bearer <key>` to every call (nothing without a key).
#[derive(Clone, Default)]
pub struct BearerKey(Option<MetadataValue<Ascii>>);

impl BearerKey {
    fn new(options: &ClientOptions) -> Result<Self> {
        let Some(key) = &options.api_key else {
            return Ok(BearerKey(None));
        };
        let value = format!("Bearer {}", key.0).parse().map_err(|_| {
            ClientError::InvalidArgument(
                "the API key has characters that cannot go in a header".into(),
            )
        })?;
        Ok(BearerKey(Some(value)))
    }
}

impl tonic::service::Interceptor for BearerKey {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl std::fmt::Debug for StreamingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingClient")
            .field("uri", self.endpoint.uri())
            .field("options", &self.options)
            .finish()
    }
}

impl StreamingClient {
    /// Connects to the server at `url`, e.g. `"http://localhost:50051"`
    /// (`"localhost:50051"` means the same), with default options.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidUrl`] for an unparsable address,
    /// [`ClientError::Transport`] when nothing answers there.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Like [`connect`](Self::connect), with options (including the
    /// transport ones: connect timeout, keepalive).
    pub async fn connect_with(url: impl Into<String>, options: ClientOptions) -> Result<Self> {
        let endpoint = endpoint(url.into(), &options)?;
        let channel = endpoint.connect().await?;
        Self::from_channel(endpoint, channel, options)
    }

    /// Replaces the options. Stream and retry settings apply to sessions
    /// opened from now on; the connection is re-made (lazily, on the next
    /// call) with the new transport settings.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an API key that cannot go in a
    /// header, [`ClientError::Transport`] for unusable TLS settings.
    pub fn with_options(self, options: ClientOptions) -> Result<Self> {
        let endpoint = configure(self.endpoint, &options)?;
        let channel = endpoint.connect_lazy();
        Self::from_channel(endpoint, channel, options)
    }

    fn from_channel(endpoint: Endpoint, channel: Channel, options: ClientOptions) -> Result<Self> {
        let key = BearerKey::new(&options)?;
        Ok(StreamingClient {
            endpoint,
            streaming: GrpcStreaming::with_interceptor(channel.clone(), key.clone()),
            memory: GrpcMemory::with_interceptor(channel, key),
            options,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Opens an observe session on `space`: returns a sender of episodes and
    /// the stream of their answers (one per send, in order).
    ///
    /// The session survives broken streams: the client reconnects with
    /// backoff and resumes the session, resending whatever has no answer
    /// yet (the server replays answers it had already given, storing
    /// nothing twice). If the server lost the session (it keeps sessions in
    /// memory, so a restart loses them), the client opens a new one and
    /// sends the unanswered observations again under new numbers; the
    /// server then recognises already-stored ones by episode id, which is
    /// why episodes without an id get a client-made UUID
    /// ([`ClientOptions::assign_episode_ids`]). Either way the caller sees
    /// each answer exactly once, and an accepted observation is never
    /// reported as lost.
    ///
    /// # Errors
    ///
    /// Returns once the server acknowledged the session; fails with the
    /// server's status otherwise, e.g. [`ClientError::NotFound`] for an
    /// unknown space when the server does not create spaces on first use,
    /// [`ClientError::InvalidArgument`] for a malformed space id.
    pub async fn observe_stream(&self, space: &str) -> Result<(ObserveSender, AckStream)> {
        let mut grpc = self.streaming.clone();
        let conn = session::open(&mut grpc, space, None, &self.options).await?;
        Ok(session::spawn(grpc, space, self.options.clone(), conn))
    }

    /// Recalls the memories of `space` most similar to `cue`, as a stream of
    /// batches (all with the same `snapshot_sequence`; the last has
    /// `more == false`). Batch size: [`ClientOptions::recall_batch_size`].
    ///
    /// # Errors
    ///
    /// The server's status for a bad cue or unknown space, either here or
    /// as the stream's first item.
    pub async fn recall_stream(&self, space: &str, cue: Cue) -> Result<RecallStream> {
        self.recall_stream_with(RecallRequest {
            memory_space_id: space.to_owned(),
            cue: Some(cue),
            batch_size: self.options.recall_batch_size,
            include_embeddings: false,
            after: None,
        })
        .await
    }

    /// [`recall_stream`](Self::recall_stream) with every field of the
    /// request under the caller's control (batch size, embeddings).
    pub async fn recall_stream_with(&self, request: RecallRequest) -> Result<RecallStream> {
        let inner = self
            .streaming
            .clone()
            .recall_stream(request)
            .await?
            .into_inner();
        Ok(RecallStream::new(inner))
    }

    /// Stores one episode (unary). Over capacity this fails with
    /// [`ClientError::Overloaded`] and its `retry_after`; it is not retried.
    pub async fn remember(&self, space: &str, episode: Episode) -> Result<RememberResponse> {
        self.remember_with_priority(space, episode, Priority::Normal)
            .await
    }

    /// [`remember`](Self::remember) with an indexing priority.
    pub async fn remember_with_priority(
        &self,
        space: &str,
        episode: Episode,
        priority: Priority,
    ) -> Result<RememberResponse> {
        let request = RememberRequest {
            memory_space_id: space.to_owned(),
            episode: Some(episode),
            priority: priority as i32,
        };
        Ok(self.memory.clone().remember(request).await?.into_inner())
    }

    /// Recalls in one response (unary).
    pub async fn recall(&self, space: &str, cue: Cue) -> Result<RecallResponse> {
        self.recall_after(space, cue, None).await
    }

    /// [`recall`](Self::recall) that, in cluster mode, sees at least the
    /// write whose ack carried `token` (`RememberResponse::token`), on
    /// whichever node it is asked: the partition's owner waits, bounded,
    /// until it has applied that write.
    pub async fn recall_after(
        &self,
        space: &str,
        cue: Cue,
        token: Option<engram_proto::v1::ConsistencyToken>,
    ) -> Result<RecallResponse> {
        let request = RecallRequest {
            memory_space_id: space.to_owned(),
            cue: Some(cue),
            batch_size: 0,
            include_embeddings: false,
            after: token,
        };
        Ok(self.memory.clone().recall(request).await?.into_inner())
    }

    /// Deletes one memory.
    pub async fn forget(&self, space: &str, memory_id: &str) -> Result<()> {
        let request = ForgetRequest {
            memory_space_id: space.to_owned(),
            memory_id: memory_id.to_owned(),
        };
        self.memory.clone().forget(request).await?;
        Ok(())
    }

    /// Creates a space of `dimension` (0: the server default, 768) with the
    /// server's default vector storage. The response says whether it was
    /// `created` or already existed.
    pub async fn create_space(&self, space: &str, dimension: u32) -> Result<CreateSpaceResponse> {
        self.create_space_with(space, dimension, VectorStorage::Unspecified)
            .await
    }

    /// [`create_space`](Self::create_space) with a vector storage:
    /// [`VectorStorage::Compact`] keeps the exact vectors of indexed
    /// memories in a file on the server's disk instead of RAM,
    /// [`VectorStorage::Memory`] in RAM, [`VectorStorage::Unspecified`]
    /// takes the server's default (`engine.vector_storage`). The response's
    /// `space.vector_storage()` is the storage the space has. A space that
    /// exists with another storage is an error (`ALREADY_EXISTS`).
    pub async fn create_space_with(
        &self,
        space: &str,
        dimension: u32,
        vector_storage: VectorStorage,
    ) -> Result<CreateSpaceResponse> {
        let request = CreateSpaceRequest {
            memory_space_id: space.to_owned(),
            dimension,
            vector_storage: vector_storage as i32,
            default_ttl_seconds: None,
        };
        self.create_space_from(request).await
    }

    /// [`create_space_with`](Self::create_space_with) with a default time
    /// to live: memories observed without their own expiry
    /// (`Episode::expires_at` / `ttl_seconds`) expire this long after the
    /// server accepts them (`Duration::ZERO`: never). A space that exists
    /// with another default TTL is an error (`ALREADY_EXISTS`).
    pub async fn create_space_with_ttl(
        &self,
        space: &str,
        dimension: u32,
        vector_storage: VectorStorage,
        default_ttl: std::time::Duration,
    ) -> Result<CreateSpaceResponse> {
        let request = CreateSpaceRequest {
            memory_space_id: space.to_owned(),
            dimension,
            vector_storage: vector_storage as i32,
            default_ttl_seconds: Some(default_ttl.as_secs_f64()),
        };
        self.create_space_from(request).await
    }

    /// Sends a `CreateSpace` request as given.
    pub async fn create_space_from(
        &self,
        request: CreateSpaceRequest,
    ) -> Result<CreateSpaceResponse> {
        Ok(self
            .memory
            .clone()
            .create_space(request)
            .await?
            .into_inner())
    }

    /// Every space with its counts.
    pub async fn list_spaces(&self) -> Result<Vec<SpaceInfo>> {
        Ok(self
            .memory
            .clone()
            .list_spaces(ListSpacesRequest {})
            .await?
            .into_inner()
            .spaces)
    }

    /// Dimension, vector storage, counts, queue depth, index lag and memory
    /// of a space.
    pub async fn describe_space(&self, space: &str) -> Result<SpaceInfo> {
        let request = DescribeSpaceRequest {
            memory_space_id: space.to_owned(),
        };
        self.memory
            .clone()
            .describe_space(request)
            .await?
            .into_inner()
            .space
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "DescribeSpace for {space:?} answered without a space"
                ))
            })
    }

    /// Deletes a space and everything in it.
    pub async fn delete_space(&self, space: &str) -> Result<()> {
        let request = DeleteSpaceRequest {
            memory_space_id: space.to_owned(),
        };
        self.memory.clone().delete_space(request).await?;
        Ok(())
    }

    /// One page of a space's memories in server-sequence order (with
    /// `request.filter`, only matching ones). Pass the answer's
    /// `next_page_token` as the next request's `page_token`; it is empty
    /// on the last page. Paging stays correct while memories arrive.
    pub async fn list_memories(
        &self,
        request: ListMemoriesRequest,
    ) -> Result<ListMemoriesResponse> {
        Ok(self
            .memory
            .clone()
            .list_memories(request)
            .await?
            .into_inner())
    }

    /// The generated `engram.v1.Streaming` client on this connection, for
    /// what this wrapper does not cover (e.g. `MemoryFlow`).
    pub fn raw_streaming(&self) -> GrpcStreaming<AuthChannel> {
        self.streaming.clone()
    }

    /// The generated `engram.v1.Memory` client on this connection.
    pub fn raw_memory(&self) -> GrpcMemory<AuthChannel> {
        self.memory.clone()
    }
}

fn endpoint(url: String, options: &ClientOptions) -> Result<Endpoint> {
    let full = if url.contains("://") {
        url.clone()
    } else {
        format!("http://{url}")
    };
    let endpoint =
        Endpoint::from_shared(full).map_err(|source| ClientError::InvalidUrl { url, source })?;
    configure(endpoint, options)
}

fn configure(endpoint: Endpoint, options: &ClientOptions) -> Result<Endpoint> {
    let endpoint = endpoint
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    let https = endpoint.uri().scheme_str() == Some("https");
    let endpoint = match (&options.tls, https) {
        (None, false) => endpoint,
        (tls, _) => {
            let tls = tls.clone().unwrap_or_default();
            let mut config = ClientTlsConfig::new();
            config = match &tls.ca_pem {
                Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
                None => config.with_native_roots(),
            };
            if let Some(domain) = &tls.domain {
                config = config.domain_name(domain.clone());
            }
            endpoint.tls_config(config)?
        }
    };
    Ok(match options.keepalive_interval {
        Some(interval) => endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(options.keepalive_timeout)
            .keep_alive_while_idle(true),
        None => endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_a_scheme_get_http() {
        let e = endpoint("localhost:50051".into(), &ClientOptions::default()).unwrap();
        assert_eq!(e.uri().to_string(), "http://localhost:50051/");
        let e = endpoint("http://127.0.0.1:1".into(), &ClientOptions::default()).unwrap();
        assert_eq!(e.uri().port_u16(), Some(1));
    }

    #[test]
    fn a_bad_address_is_invalid_url() {
        let err = endpoint("http://bad host:1".into(), &ClientOptions::default()).unwrap_err();
        assert!(matches!(err, ClientError::InvalidUrl { .. }), "{err:?}");
        assert!(err.to_string().contains("bad host"), "{err}");
    }

    #[tokio::test]
    async fn connecting_to_nothing_is_a_transport_error() {
        // Port 1 on loopback: nothing listens there.
        let err = StreamingClient::connect("http://127.0.0.1:1")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    }
}
