//! The REST routes (listed in the README's "REST API"). JSON bodies are
//! shaped like the gRPC messages (snake_case); `when` fields are RFC 3339
//! timestamps.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{FromRequest, FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engram_core::model::{MemoryFilter, MetadataCondition, Remembered, VectorStorage};
use engram_core::{Cue, EpisodeInput, RecalledMemory, SpaceInfo};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, AppState};
use crate::auth::{Need, Principal};

/// `axum::Json` whose rejections become our JSON errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathParams<T>(pub T);

/// `Episode` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    what: String,
    embedding: Vec<f32>,
    #[serde(default)]
    encoding_confidence: Option<f32>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// RFC 3339; at most one of this and `ttl_seconds`.
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<f64>,
}

/// `Cue` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CueJson {
    embedding: Vec<f32>,
    #[serde(default)]
    max_results: Option<usize>,
    #[serde(default)]
    similarity_threshold: Option<f32>,
    #[serde(default)]
    when_from: Option<String>,
    #[serde(default)]
    when_to: Option<String>,
    /// Search breadth for this recall (1-4096); absent: the server's.
    #[serde(default)]
    ef_search: Option<usize>,
    /// Tags and metadata the memories must have; absent: all memories.
    #[serde(default)]
    filter: Option<FilterJson>,
    /// Rank by similarity x 0.5^(age / half-life); absent: by similarity.
    #[serde(default)]
    recency_half_life_seconds: Option<f64>,
}

/// `{"tags_all": [...], "tags_any": [...], "tags_none": [...],
/// "metadata": {"user": "ada", "source": ["chat", "mail"]}}`: a metadata
/// value is one string (equals) or a list (in).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterJson {
    #[serde(default)]
    tags_all: Vec<String>,
    #[serde(default)]
    tags_any: Vec<String>,
    #[serde(default)]
    tags_none: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl FilterJson {
    fn into_filter(self) -> MemoryFilter {
        MemoryFilter {
            tags_all: self.tags_all,
            tags_any: self.tags_any,
            tags_none: self.tags_none,
            metadata: self
                .metadata
                .into_iter()
                .map(|(key, v)| MetadataCondition {
                    key,
                    values: match v {
                        OneOrMany::One(s) => vec![s],
                        OneOrMany::Many(v) => v,
                    },
                })
                .collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSpaceJson {
    #[serde(default)]
    dimension: Option<usize>,
    /// `"memory"` or `"compact"`; absent or null: the engine's default.
    /// Parsed by `VectorStorage::from_str`, so that a bad value is answered
    /// with the engine's `invalid vector_storage: ...` message.
    #[serde(default)]
    vector_storage: Option<String>,
    /// Seconds; absent: unspecified (an existing space matches any), 0: none.
    #[serde(default)]
    default_ttl_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecallQuery {
    #[serde(default)]
    include_embeddings: bool,
    /// Cluster mode: `<partition>.<sequence>`, an ack's token; the recall
    /// sees that write (read-after-ack on any node).
    #[serde(default)]
    after: Option<String>,
}

impl RecallQuery {
    fn after(&self) -> Result<Option<engram_proto::v1::ConsistencyToken>, ApiError> {
        let Some(raw) = &self.after else {
            return Ok(None);
        };
        let parsed = raw
            .split_once('.')
            .and_then(|(p, s)| Some((p.parse().ok()?, s.parse().ok()?)));
        match parsed {
            Some((partition, sequence)) => Ok(Some(engram_proto::v1::ConsistencyToken {
                partition,
                sequence,
            })),
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!(
                    "invalid after {raw:?}: expected <partition>.<sequence>, as an ack's token"
                ),
            )),
        }
    }
}

fn parse_time(field: &'static str, s: &str) -> Result<i64, ApiError> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("invalid {field}: '{s}' is not an RFC 3339 timestamp ({e}); expected e.g. 2026-01-31T12:00:00Z"),
        )
    })?;
    let d = t.duration_since(UNIX_EPOCH).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("invalid {field}: '{s}' is before 1970"),
        )
    })?;
    i64::try_from(d.as_nanos()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("invalid {field}: '{s}' is after 2262"),
        )
    })
}

pub(crate) fn format_time(nanos: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

impl EpisodeJson {
    pub(crate) fn into_input(self) -> Result<EpisodeInput, ApiError> {
        let expires_at = self
            .expires_at
            .as_deref()
            .map(|t| parse_time("episode.expires_at", t))
            .transpose()?;
        let expiry = engram_core::model::Expiry::from_wire(expires_at, self.ttl_seconds)?;
        Ok(EpisodeInput {
            expiry,
            id: self.id,
            when_unix_nanos: self
                .when
                .as_deref()
                .map(|w| parse_time("episode.when", w))
                .transpose()?,
            what: self.what,
            embedding: self.embedding,
            encoding_confidence: self.encoding_confidence,
            tags: self.tags,
            metadata: self.metadata,
        })
    }
}

impl CueJson {
    pub(crate) fn into_cue(self) -> Result<Cue, ApiError> {
        Ok(Cue {
            embedding: self.embedding,
            max_results: self.max_results,
            similarity_threshold: self.similarity_threshold,
            when_from: self
                .when_from
                .as_deref()
                .map(|w| parse_time("cue.when_from", w))
                .transpose()?,
            when_to: self
                .when_to
                .as_deref()
                .map(|w| parse_time("cue.when_to", w))
                .transpose()?,
            ef_search: self.ef_search,
            filter: self.filter.map(FilterJson::into_filter).unwrap_or_default(),
            recency_half_life_secs: self.recency_half_life_seconds,
        })
    }
}

#[derive(Serialize)]
pub(crate) struct EpisodeOut<'a> {
    id: &'a str,
    when: String,
    what: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<&'a [f32]>,
    encoding_confidence: f32,
    tags: &'a [String],
    metadata: &'a BTreeMap<String, String>,
    /// RFC 3339, when the memory expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct RecalledOut<'a> {
    episode: EpisodeOut<'a>,
    similarity: f32,
    /// What the recall ranked by (similarity x recency_weight).
    score: f32,
    recency_weight: f32,
    confidence: f32,
    server_sequence: u64,
    indexed: bool,
}

pub(crate) fn recalled_out(m: &RecalledMemory, include_embeddings: bool) -> RecalledOut<'_> {
    let e = &m.episode;
    RecalledOut {
        episode: EpisodeOut {
            id: &e.id,
            when: format_time(e.when_unix_nanos),
            what: &e.what,
            embedding: include_embeddings.then_some(&m.embedding[..]),
            encoding_confidence: e.encoding_confidence,
            tags: &e.tags,
            metadata: &e.metadata,
            expires_at: e.expires_at_unix_nanos.map(format_time),
        },
        similarity: m.similarity,
        score: m.score,
        recency_weight: m.recency_weight,
        confidence: m.confidence,
        server_sequence: e.server_sequence,
        indexed: m.indexed,
    }
}

fn space_json(info: &SpaceInfo) -> serde_json::Value {
    json!({
        "memory_space_id": info.memory_space_id,
        "dimension": info.dimension,
        "count": info.count,
        "indexed_count": info.indexed_count,
        "queue_depth": info.queue_depth,
        "last_sequence": info.last_sequence,
        "index_lag_seconds": info.index_lag_seconds,
        "quarantined_count": info.quarantined_count,
        "memory_bytes": info.memory,
        "vector_storage": info.vector_storage,
        "default_ttl_seconds": info.default_ttl.map_or(0.0, |t| t.as_secs_f64()),
        "expired_count": info.expired_count,
    })
}

fn remembered_json(r: &Remembered) -> serde_json::Value {
    json!({
        "memory_id": r.memory_id,
        "server_sequence": r.server_sequence,
        "committed_at": format_time(r.committed_at_unix_nanos),
        "duplicate": r.duplicate,
    })
}

/// The caller of a REST route, authenticated by `Authorization: Bearer
/// KEY` (401 `unauthenticated` without a valid key when the server has
/// keys). Routes then check it against the space they touch with
/// [`Caller::may`].
pub struct Caller(pub Principal);

#[axum::async_trait]
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Ok(Caller(state.auth().authenticate(header)?))
    }
}

impl Caller {
    /// 403 `permission_denied` unless the key may do `need` on `space`;
    /// 429 `rate_limited` over its rate.
    pub fn may(&self, state: &AppState, space: &str, need: Need) -> Result<(), ApiError> {
        Ok(state.auth().authorize(&self.0, space, need)?)
    }
}

/// `PUT /v1/spaces/{space_id}`: 201 when created, 200 when it already
/// existed with the same dimension (and the same vector storage, when the
/// body names one). An empty body means the default dimension and storage.
pub async fn create_space(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(space_id): PathParams<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.may(&state, &space_id, Need::Write)?;
    let req: CreateSpaceJson = if body.is_empty() {
        CreateSpaceJson::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            let code = if e.is_syntax() || e.is_eof() {
                "malformed_json"
            } else {
                "invalid_argument"
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                code,
                format!("the body is not a valid CreateSpace request: {e}"),
            )
        })?
    };
    let vector_storage = req
        .vector_storage
        .as_deref()
        .map(str::parse::<VectorStorage>)
        .transpose()?;
    let default_ttl = engram_core::model::default_ttl_from_secs(req.default_ttl_seconds)?;
    if let Some(cluster) = state.cluster() {
        let (info, created) = cluster
            .create_space(&space_id, req.dimension, vector_storage, default_ttl)
            .await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, Json(registered_space_json(&info))).into_response());
    }
    let (info, created) = state
        .engine()?
        .create_space_with_ttl(&space_id, req.dimension, vector_storage, default_ttl)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(space_json(&info))).into_response())
}

/// `GET /v1/spaces`
///
/// Lists only the spaces the caller's key covers.
pub async fn list_spaces(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    state.auth().authorize_any(&caller.0)?;
    if let Some(cluster) = state.cluster() {
        let spaces: Vec<_> = cluster
            .list_spaces()
            .await?
            .iter()
            .filter(|s| state.auth().covers(&caller.0, &s.memory_space_id))
            .map(registered_space_json)
            .collect();
        return Ok(Json(json!({ "spaces": spaces })).into_response());
    }
    let spaces: Vec<_> = state
        .engine()?
        .list_spaces()
        .iter()
        .filter(|s| state.auth().covers(&caller.0, &s.memory_space_id))
        .map(space_json)
        .collect();
    Ok(Json(json!({ "spaces": spaces })).into_response())
}

/// A space as the cluster's registry holds it (counts are answered by
/// `GET /v1/spaces/{id}`, from the space's owner).
fn registered_space_json(s: &engram_proto::v1::SpaceInfo) -> serde_json::Value {
    json!({
        "memory_space_id": s.memory_space_id,
        "dimension": s.dimension,
        "default_ttl_seconds": (s.default_ttl_seconds > 0.0).then_some(s.default_ttl_seconds),
    })
}

/// `GET /v1/spaces/{space_id}`
pub async fn describe_space(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(space_id): PathParams<String>,
) -> Result<Response, ApiError> {
    caller.may(&state, &space_id, Need::Read)?;
    let info = state
        .space_engine(&space_id, None)
        .await?
        .describe_space(&space_id)?;
    Ok(Json(space_json(&info)).into_response())
}

/// `DELETE /v1/spaces/{space_id}`
pub async fn delete_space(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(space_id): PathParams<String>,
) -> Result<Response, ApiError> {
    caller.may(&state, &space_id, Need::Admin)?;
    match state.cluster() {
        // The cluster proxy sent it here, to the owner.
        Some(cluster) => cluster.delete_space(&space_id).await?,
        None => state.engine()?.delete_space(&space_id).await?,
    }
    Ok(Json(json!({})).into_response())
}

/// `POST /v1/spaces/{space_id}/memories`: 201 with the memory id and server
/// sequence once the observation is durable and visible; 200 with
/// `"duplicate": true` when an episode with this id already exists.
pub async fn remember(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(space_id): PathParams<String>,
    JsonBody(episode): JsonBody<EpisodeJson>,
) -> Result<Response, ApiError> {
    caller.may(&state, &space_id, Need::Write)?;
    if let Some(cluster) = state.cluster() {
        if state.ready_engine().is_none() {
            return Err(ApiError::not_ready("recovering its data"));
        }
        let done = cluster.remember(&space_id, episode.into_input()?).await?;
        let token = done.token.unwrap_or_default();
        let status = if done.duplicate {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        return Ok((
            status,
            Json(json!({
                "memory_id": done.memory_id,
                "server_sequence": 0,
                "committed_at": format_time(engram_core::model::now_unix_nanos()),
                "duplicate": done.duplicate,
                "token": {"partition": token.partition, "sequence": token.sequence},
            })),
        )
            .into_response());
    }
    let engine = state.engine()?;
    let done = engine.remember(&space_id, episode.into_input()?).await?;
    let status = if done.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(remembered_json(&done))).into_response())
}

/// `POST /v1/spaces/{space_id}/recall[?include_embeddings=true]`
pub async fn recall(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(space_id): PathParams<String>,
    query: Result<Query<RecallQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(cue): JsonBody<CueJson>,
) -> Result<Response, ApiError> {
    caller.may(&state, &space_id, Need::Read)?;
    let Query(query) = query?;
    let after = query.after()?;
    let engine = state.space_engine(&space_id, after.as_ref()).await?;
    let cue = cue.into_cue()?;
    // Search is CPU work: keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || engine.recall(&space_id, cue))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("recall task failed: {e}"),
            )
        })??;
    let memories: Vec<_> = result
        .memories
        .iter()
        .map(|m| recalled_out(m, query.include_embeddings))
        .collect();
    Ok(Json(json!({
        "memories": memories,
        "snapshot_sequence": result.snapshot_sequence,
    }))
    .into_response())
}

/// `DELETE /v1/spaces/{space_id}/memories/{memory_id}`
pub async fn forget(
    State(state): State<AppState>,
    caller: Caller,
    PathParams((space_id, memory_id)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    caller.may(&state, &space_id, Need::Write)?;
    match state.cluster() {
        // The cluster proxy sent it here, to the owner (or the owner is
        // changing: the call answers UNAVAILABLE).
        Some(cluster) => cluster.forget(&space_id, &memory_id).await?,
        None => state.engine()?.forget(&space_id, &memory_id).await?,
    }
    Ok(Json(json!({})).into_response())
}

/// `GET /v1/spaces/{space_id}/memories`: the space's memories in
/// server-sequence order, a page at a time. Query parameters:
/// `page_size` (1-1000, 100), `page_token` (a previous answer's
/// `next_page_token`), `include_embeddings`, and the filter: `tags_all`,
/// `tags_any`, `tags_none` (each repeated for several tags) and
/// `metadata.<key>` (repeated for several values: in). Answers
/// `{"memories": [{"episode", "server_sequence"}], "next_page_token"}`,
/// the token absent on the last page.
pub async fn list_memories(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(space_id): PathParams<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    caller.may(&state, &space_id, Need::Read)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", m);
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|e| bad(format!("the query string cannot be read: {e}")))?;
    let mut filter = MemoryFilter::default();
    let mut metadata: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut page_size, mut token, mut include) = (None, String::new(), false);
    for (k, v) in pairs {
        match k.as_str() {
            "page_size" => {
                page_size = Some(v.parse::<usize>().map_err(|_| {
                    bad(format!("page_size is '{v}'; expected a number from 1 to 1000"))
                })?)
            }
            "page_token" => token = v,
            "include_embeddings" => {
                include = v.parse::<bool>().map_err(|_| {
                    bad(format!("include_embeddings is '{v}'; expected true or false"))
                })?
            }
            "tags_all" => filter.tags_all.push(v),
            "tags_any" => filter.tags_any.push(v),
            "tags_none" => filter.tags_none.push(v),
            other => match other.strip_prefix("metadata.") {
                Some(key) => metadata.entry(key.to_owned()).or_default().push(v),
                None => {
                    return Err(bad(format!(
                        "unknown query parameter '{other}'; expected page_size, page_token, include_embeddings, tags_all, tags_any, tags_none or metadata.<key>"
                    )))
                }
            },
        }
    }
    filter.metadata = metadata
        .into_iter()
        .map(|(key, values)| MetadataCondition { key, values })
        .collect();
    let after = crate::grpc::convert::page_after(&token).map_err(bad)?;
    let limit = page_size.unwrap_or(engram_core::model::DEFAULT_LIST_PAGE);
    let engine = state.space_engine(&space_id, None).await?;
    let page = tokio::task::spawn_blocking(move || {
        engine.list_memories(&space_id, &filter, after, limit, include)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("listing task failed: {e}"),
        )
    })??;
    let memories: Vec<_> = page
        .memories
        .iter()
        .map(|(e, v)| {
            json!({
                "episode": EpisodeOut {
                    id: &e.id,
                    when: format_time(e.when_unix_nanos),
                    what: &e.what,
                    embedding: v.as_deref(),
                    encoding_confidence: e.encoding_confidence,
                    tags: &e.tags,
                    metadata: &e.metadata,
                    expires_at: e.expires_at_unix_nanos.map(format_time),
                },
                "server_sequence": e.server_sequence,
            })
        })
        .collect();
    let mut body = json!({ "memories": memories });
    if let Some(after) = page.next_after {
        body["next_page_token"] = json!(crate::grpc::convert::page_token(after));
    }
    Ok(Json(body).into_response())
}
