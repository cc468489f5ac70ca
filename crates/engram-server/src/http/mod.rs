//! The HTTP listener: REST for the unary operations, the WebSocket stream
//! (`/v1/stream`, in `ws`), health endpoints and metrics.
//! Handlers are thin adapters: parse, convert to engine types, call the
//! engine, map the error (in `error`).

mod error;
mod rest;
pub mod ws;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use engram_core::queue::QueueConfig;
use engram_core::Engine;
use serde_json::json;

use crate::auth::Auth;

pub use error::ApiError;

/// Where the server is in its life; readiness follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Recovering = 0,
    Ready = 1,
    ShuttingDown = 2,
}

/// Shared by every handler. The engine appears once recovery finishes;
/// until then every data route answers 503.
#[derive(Clone, Default)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Default)]
struct StateInner {
    engine: OnceLock<Engine>,
    cluster: OnceLock<crate::cluster::Cluster>,
    phase: AtomicU8,
    auth: Auth,
}

impl AppState {
    /// A server whose calls `auth` checks.
    pub fn new(auth: Auth) -> Self {
        AppState {
            inner: Arc::new(StateInner {
                auth,
                ..StateInner::default()
            }),
        }
    }

    /// The keys and limits every call is checked against.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub fn set_engine(&self, engine: Engine) {
        let _ = self.inner.engine.set(engine);
    }

    /// Cluster mode: the node's membership, set once it joined.
    pub fn set_cluster(&self, cluster: crate::cluster::Cluster) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// The cluster this node serves in; `None` on a single node.
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.inner.cluster.get()
    }

    pub fn set_phase(&self, phase: Phase) {
        self.inner.phase.store(phase as u8, Ordering::Release);
    }

    pub fn phase(&self) -> Phase {
        match self.inner.phase.load(Ordering::Acquire) {
            0 => Phase::Recovering,
            1 => Phase::Ready,
            _ => Phase::ShuttingDown,
        }
    }

    /// The engine, once recovery has finished.
    pub fn ready_engine(&self) -> Option<&Engine> {
        self.inner.engine.get()
    }

    /// The engine that answers for `space`: the node's engine, or in
    /// cluster mode the engine of the space's partition when this node
    /// owns it, once it has applied the write `after` names (the cluster
    /// proxy sends calls on other partitions to their owner first).
    ///
    /// # Errors
    /// 503 while recovering, or (cluster mode) while the partition is not
    /// served here, naming its owner.
    pub async fn space_engine(
        &self,
        space: &str,
        after: Option<&engram_proto::v1::ConsistencyToken>,
    ) -> Result<Engine, ApiError> {
        let Some(cluster) = self.cluster() else {
            return self.engine().cloned();
        };
        if self.ready_engine().is_none() {
            return Err(ApiError::not_ready("recovering its data"));
        }
        match cluster.route(space, after, true).await? {
            crate::cluster::Route::Local(engine) => {
                cluster.ensure_local_space(&engine, space).await?;
                Ok(engine)
            }
            crate::cluster::Route::Forward { owner, .. } => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the space's partition is owned by {owner}; retry"),
            )),
        }
    }

    /// The engine, once recovery has finished.
    ///
    /// # Errors
    /// 503 while recovering; 501 `not_in_cluster_mode` in cluster mode,
    /// for the admin routes (they act on one engine); the others answer
    /// from the cluster.
    pub fn engine(&self) -> Result<&Engine, ApiError> {
        if self.cluster().is_some() {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_in_cluster_mode",
                "in cluster mode a node serves the data routes (spaces and memories), the streams (gRPC Streaming and the WebSocket /v1/stream) and GET /v1/cluster; the admin routes (fault injection, indexing pause, integrity checks) act on one engine and are not available in cluster mode",
            ));
        }
        self.inner
            .engine
            .get()
            .ok_or_else(|| ApiError::not_ready("recovering its data"))
    }
}

/// Every HTTP route.
pub fn router(state: AppState, max_body_bytes: usize, ws: ws::WsSettings) -> Router {
    let ws_state = state.clone();
    Router::new()
        .route(
            "/v1/stream",
            get(
                move |upgrade: axum::extract::WebSocketUpgrade, headers: axum::http::HeaderMap| {
                    ws::stream(upgrade, headers, ws_state.clone(), ws.clone())
                },
            ),
        )
        .route("/health/live", get(live))
        .route("/v1/cluster", get(cluster_status))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/spaces", get(rest::list_spaces))
        .route(
            "/v1/spaces/:space_id",
            put(rest::create_space)
                .get(rest::describe_space)
                .delete(rest::delete_space),
        )
        .route(
            "/v1/spaces/:space_id/memories",
            post(rest::remember).get(rest::list_memories),
        )
        .route(
            "/v1/spaces/:space_id/memories/:memory_id",
            axum::routing::delete(rest::forget),
        )
        .route("/v1/spaces/:space_id/recall", post(rest::recall))
        .route("/v1/admin/indexing/:action", post(admin_indexing))
        .route("/v1/admin/faults", post(admin_faults))
        .route(
            "/v1/admin/spaces/:space_id/integrity",
            post(admin_integrity),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            crate::cluster::proxy::ProxyState {
                app: state.clone(),
                max_body_bytes,
            },
            crate::cluster::proxy::to_owner,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// `GET /v1/cluster`: nodes, partitions, owners, epochs, applied lag.
/// Any valid key may read it (it names nodes and partitions, no data).
async fn cluster_status(
    State(state): State<AppState>,
    caller: rest::Caller,
) -> Result<axum::response::Response, ApiError> {
    state.auth().authorize_any(&caller.0)?;
    let Some(cluster) = state.cluster() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_in_cluster_mode",
            "this server runs as a single node (no [cluster] section)",
        ));
    };
    let s = cluster.status();
    Ok(Json(json!({
        "node_id": s.node_id,
        "partition_count": s.partition_count,
        "nodes": s.nodes.iter().map(|n| json!({
            "node_id": n.node_id,
            "grpc_addr": n.grpc_addr,
            "http_addr": n.http_addr,
            "partitions": n.partitions,
        })).collect::<Vec<_>>(),
        "partitions": s.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "owner": p.owner,
            "epoch": p.epoch,
            "state": p.state,
            "stream_sequence": p.stream_sequence,
            "applied_sequence": p.applied_sequence,
            "lag": p.lag,
            "snapshot_sequence": p.snapshot_sequence,
            "snapshot_epoch": p.snapshot_epoch,
        })).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn live() -> impl IntoResponse {
    Json(json!({"status": "live"}))
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.phase() {
        Phase::Ready | Phase::ShuttingDown if state.engine().is_ok_and(|e| e.fatal().is_some()) => {
            let cause = state.engine().ok().and_then(|e| e.fatal());
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "failed", "cause": cause})),
            )
        }
        Phase::Ready => {
            // A worker the watchdog reports stuck is named in the detail;
            // with every worker stuck nothing is being indexed, and the
            // server is not ready (acks would go on until the queue fills).
            let stuck = state
                .engine()
                .map(|e| (e.stuck_workers(), e.indexer().workers()))
                .unwrap_or_default();
            if stuck.0.is_empty() {
                return (StatusCode::OK, Json(json!({"status": "ready"})));
            }
            let detail: Vec<_> = stuck
                .0
                .iter()
                .map(
                    |s| json!({"worker": s.worker, "stuck_for_seconds": s.stuck_for.as_secs_f64()}),
                )
                .collect();
            let all = stuck.0.len() >= stuck.1;
            (
                if all {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                },
                Json(json!({
                    "status": if all { "stalled" } else { "degraded" },
                    "stuck_workers": detail,
                    "message": "indexing workers stuck on one observation past engine.worker_stuck_after_secs; see the log",
                })),
            )
        }
        Phase::Recovering => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "recovering"})),
        ),
        Phase::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        ),
    }
}

/// The engine of an admin route: every `/v1/admin/...` route works only
/// with `engine.fault_injection` (tests and drills), and answers 403
/// `forbidden`, naming the setting, without it.
///
/// # Errors
/// 503 while recovering; 403 with fault injection off.
fn admin_engine(state: &AppState) -> Result<&Engine, ApiError> {
    let engine = state.engine()?;
    if engine.faults().is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "admin routes are disabled; start the server with --fault-injection (engine.fault_injection = true) to enable them",
        ));
    }
    Ok(engine)
}

/// `POST /v1/admin/indexing/{pause|resume}`, only with `engine.fault_injection`.
async fn admin_indexing(
    State(state): State<AppState>,
    caller: rest::Caller,
    rest::PathParams(action): rest::PathParams<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth().authorize_server_admin(&caller.0)?;
    let engine = admin_engine(&state)?;
    match action.as_str() {
        "pause" => engine.pause_indexing(),
        "resume" => engine.resume_indexing(),
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown indexing action '{other}'; expected 'pause' or 'resume'"),
            ))
        }
    }
    Ok(Json(
        json!({"indexing": action, "queue_depth": engine.queue_depth()}),
    ))
}

/// Body of `POST /v1/admin/faults`; every field optional.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsJson {
    /// Kill this indexing worker at its next batch.
    #[serde(default)]
    kill_worker: Option<usize>,
    /// Kill whichever worker takes the next batch, this many times.
    #[serde(default)]
    kill_any: Option<u32>,
    /// Sleep before indexing each observation (0 turns it off).
    #[serde(default)]
    index_delay_ms: Option<u64>,
    /// Sleep before each group commit (0 turns it off).
    #[serde(default)]
    accept_delay_ms: Option<u64>,
    /// The next `count` HNSW inserts into `space` panic inside the insert.
    #[serde(default)]
    insert_panics: Option<InsertPanicsJson>,
    /// Every insert of this memory panics (a poison task) until a restart.
    #[serde(default)]
    poison: Option<PoisonJson>,
    /// The commit thread panics before its next commit: the engine fails
    /// stop and the server exits non-zero.
    #[serde(default)]
    kill_commit: bool,
    /// Moves the engine's expiry clock forward by this many seconds
    /// (cumulative; it never goes back): memories whose expiry it passes
    /// stop being recalled at once and are purged within a second.
    #[serde(default)]
    advance_clock_seconds: Option<f64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InsertPanicsJson {
    space: String,
    count: u32,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PoisonJson {
    space: String,
    memory_id: String,
}

/// `POST /v1/admin/faults`, only with `engine.fault_injection`.
async fn admin_faults(
    State(state): State<AppState>,
    caller: rest::Caller,
    rest::JsonBody(body): rest::JsonBody<FaultsJson>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth().authorize_server_admin(&caller.0)?;
    let engine = admin_engine(&state)?;
    let faults = engine
        .faults()
        .expect("admin_engine checked fault injection");
    // Checked before anything is armed: a bad body changes nothing.
    if let Some(secs) = body.advance_clock_seconds {
        if !secs.is_finite() || !(0.0..=engram_core::model::MAX_TTL.as_secs_f64()).contains(&secs) {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("invalid advance_clock_seconds: {secs}; expected 0 to 100 years in seconds (the clock only moves forward)"),
            ));
        }
    }
    if let Some(w) = body.kill_worker {
        faults.kill_worker(w);
    }
    for _ in 0..body.kill_any.unwrap_or(0) {
        faults.kill_any_worker();
    }
    if let Some(ms) = body.index_delay_ms {
        faults.set_index_delay(std::time::Duration::from_millis(ms));
    }
    if let Some(ms) = body.accept_delay_ms {
        faults.set_accept_delay(std::time::Duration::from_millis(ms));
    }
    if let Some(p) = &body.insert_panics {
        engine.inject_insert_panics(&p.space, p.count)?;
    }
    if let Some(p) = &body.poison {
        engine.inject_poison(&p.space, &p.memory_id)?;
    }
    if body.kill_commit {
        faults.kill_commit_thread();
    }
    if let Some(secs) = body.advance_clock_seconds {
        engine
            .clock()
            .advance(std::time::Duration::from_secs_f64(secs));
    }
    Ok(Json(json!({
        "clock_offset_seconds": engine.clock().offset().as_secs_f64(),
        "kills_armed": faults.kills_armed(),
        "worker_restarts": engine.worker_restarts(),
        "queue_depth": engine.queue_depth(),
    })))
}

/// `POST /v1/admin/spaces/{space_id}/integrity`, only with
/// `engine.fault_injection`: the index integrity check (graph invariants,
/// every stored vector findable, every live memory in exactly one tier).
/// Read-only but CPU-heavy (it searches for every stored vector: seconds
/// for 100K), so it is a test and drill tool like the other admin routes,
/// not something any client may start, and not part of health checks.
/// 200 `{"ok": true, "took_ms"}`, or 500 with code `integrity_violation`
/// and the first violation.
async fn admin_integrity(
    State(state): State<AppState>,
    caller: rest::Caller,
    rest::PathParams(space_id): rest::PathParams<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth().authorize_server_admin(&caller.0)?;
    let engine = admin_engine(&state)?.clone();
    if let Err(e) = engine.describe_space(&space_id) {
        return Err(e.into());
    }
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || engine.check_integrity(&space_id))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("integrity task failed: {e}"),
            )
        })?;
    match result {
        Ok(()) => Ok(Json(
            json!({"ok": true, "took_ms": started.elapsed().as_millis() as u64}),
        )),
        Err(violation) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "integrity_violation",
            violation,
        )),
    }
}

/// `GET /metrics`: Prometheus text format: the engine's metrics, then the
/// backpressure marks this server runs with. Open, unless the keys file
/// names a `[metrics]` key (then that key or an admin key on every space).
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.auth().authorize_metrics(header)?;
    let engine = state
        .ready_engine()
        .ok_or_else(|| ApiError::not_ready("recovering its data"))?;
    let Some(mut text) = engine.render_metrics() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are disabled (engine.metrics = false)",
        ));
    };
    text.push_str(&backpressure_marks(&engine.config().queue));
    if let Some(cluster) = state.cluster() {
        text.push_str(&cluster.render_metrics());
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The queue-pressure marks of `engine.queue` as gauges, so that alert
/// rules and dashboards compare `sum(engram_streaming_queue_depth) /
/// engram_streaming_queue_capacity` with the marks this server enforces,
/// not with copies of the defaults. They are configuration, fixed for the
/// life of the process, so they are written here from the configuration
/// rather than kept in the engine's registry.
fn backpressure_marks(queue: &QueueConfig) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "engram_streaming_queue_slow_down_ratio",
            "Queue pressure (depth / capacity) from which writers are told to slow down (engine.queue.slow_down_at).",
            queue.slow_down_at,
        ),
        (
            "engram_streaming_queue_overloaded_ratio",
            "Queue pressure (depth / capacity) from which NORMAL and LOW observations are rejected as overloaded (engine.queue.reject_at).",
            queue.reject_at,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    }
    out
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not supported on {}", uri.path()),
    )
}
