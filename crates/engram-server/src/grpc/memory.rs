//! `engram.v1.Memory`: the unary operations, thin adapters over the engine.

use engram_core::Engine;
use engram_proto::v1 as pb;
use engram_proto::v1::memory_server::Memory;
use tonic::{Request, Response, Status};

use super::status::{auth_status, not_ready, status};
use super::{convert, principal};
use crate::auth::Need;
use crate::cluster::{forward_failed, Route, FORWARDED_HEADER};
use crate::http::AppState;

/// The engine that answers `$req` (a request naming a space): the node's
/// own, or in cluster mode the partition engine this node owns; when
/// another node owns the space, returns that node's answer to the
/// forwarded request from the handler.
macro_rules! engine_or_forward {
    ($svc:expr, $req:ident, $after:expr, $method:ident) => {{
        let space = $req.get_ref().memory_space_id.clone();
        match $svc.route(&$req, &space, $after).await? {
            None => $svc.engine()?,
            Some(Route::Local(engine)) => engine,
            Some(Route::Forward { owner, mut client }) => {
                let cluster = $svc.state.cluster().expect("routed in cluster mode");
                let (md, _, message) = $req.into_parts();
                return client
                    .$method(cluster.forward_request(message, &md))
                    .await
                    .map_err(|s| forward_failed(&owner, s));
            }
        }
    }};
}

pub struct MemoryService {
    pub state: AppState,
}

impl MemoryService {
    fn engine(&self) -> Result<Engine, Status> {
        if self.state.cluster().is_some() {
            return Err(super::status::not_in_cluster_mode());
        }
        self.state.ready_engine().cloned().ok_or_else(not_ready)
    }

    /// Cluster mode: where a call on `space` is served (this node's
    /// partition engine, or the owner to forward to). `None` on a single
    /// node.
    async fn route<T>(
        &self,
        req: &Request<T>,
        space: &str,
        after: Option<&pb::ConsistencyToken>,
    ) -> Result<Option<Route>, Status> {
        let Some(cluster) = self.state.cluster() else {
            return Ok(None);
        };
        if self.state.ready_engine().is_none() {
            return Err(not_ready());
        }
        let forwarded = req.metadata().contains_key(FORWARDED_HEADER);
        let route = cluster.route(space, after, forwarded).await?;
        if let Route::Local(engine) = &route {
            cluster.ensure_local_space(engine, space).await?;
        }
        Ok(Some(route))
    }

    /// Checks the call's key for `need` on `space`.
    fn authorize<T>(&self, req: &Request<T>, space: &str, need: Need) -> Result<(), Status> {
        self.state
            .auth()
            .authorize(&principal(req)?, space, need)
            .map_err(auth_status)
    }
}

#[tonic::async_trait]
impl Memory for MemoryService {
    async fn remember(
        &self,
        req: Request<pb::RememberRequest>,
    ) -> Result<Response<pb::RememberResponse>, Status> {
        self.authorize(&req, &req.get_ref().memory_space_id, Need::Write)?;
        let req = req.into_inner();
        let episode = req.episode.ok_or_else(|| {
            Status::invalid_argument("missing episode: expected an Episode with an embedding")
        })?;
        if let Some(cluster) = self.state.cluster() {
            if self.state.ready_engine().is_none() {
                return Err(not_ready());
            }
            let input = convert::episode_input(episode)?;
            return Ok(Response::new(
                cluster.remember(&req.memory_space_id, input).await?,
            ));
        }
        let input = convert::episode_input(episode)?;
        let engine = self.engine()?;
        let done = engine
            .submit_remember(&req.memory_space_id, input, convert::priority(req.priority))
            .map_err(status)?
            .await
            .map_err(status)?;
        Ok(Response::new(convert::remembered(&done)))
    }

    async fn recall(
        &self,
        req: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        self.authorize(&req, &req.get_ref().memory_space_id, Need::Read)?;
        let engine = engine_or_forward!(self, req, req.get_ref().after.as_ref(), recall);
        let req = req.into_inner();
        let cue = convert::cue(req.cue)?;
        let space = req.memory_space_id;
        let result = tokio::task::spawn_blocking(move || engine.recall(&space, cue))
            .await
            .map_err(|e| Status::internal(format!("recall task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::RecallResponse {
            memories: result
                .memories
                .iter()
                .map(|m| convert::recalled(m, req.include_embeddings))
                .collect(),
            more: false,
            snapshot_sequence: result.snapshot_sequence,
        }))
    }

    async fn forget(
        &self,
        req: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        self.authorize(&req, &req.get_ref().memory_space_id, Need::Write)?;
        // Cluster mode: answered by the owner (it publishes the forget to
        // the partition's log and knows whether the memory existed).
        let engine = engine_or_forward!(self, req, None, forget);
        let req = req.into_inner();
        match self.state.cluster() {
            Some(cluster) => cluster
                .forget(&req.memory_space_id, &req.memory_id)
                .await
                .map_err(status)?,
            None => engine
                .forget(&req.memory_space_id, &req.memory_id)
                .await
                .map_err(status)?,
        }
        Ok(Response::new(pb::ForgetResponse {}))
    }

    async fn create_space(
        &self,
        req: Request<pb::CreateSpaceRequest>,
    ) -> Result<Response<pb::CreateSpaceResponse>, Status> {
        self.authorize(&req, &req.get_ref().memory_space_id, Need::Write)?;
        let req = req.into_inner();
        let dimension = (req.dimension > 0).then_some(req.dimension as usize);
        let vector_storage = convert::vector_storage_request(req.vector_storage)?;
        let default_ttl = convert::default_ttl_request(req.default_ttl_seconds)?;
        if let Some(cluster) = self.state.cluster() {
            let (space, created) = cluster
                .create_space(&req.memory_space_id, dimension, vector_storage, default_ttl)
                .await?;
            return Ok(Response::new(pb::CreateSpaceResponse {
                space: Some(space),
                created,
            }));
        }
        let (info, created) = self
            .engine()?
            .create_space_with_ttl(&req.memory_space_id, dimension, vector_storage, default_ttl)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateSpaceResponse {
            space: Some(convert::space_info(&info)),
            created,
        }))
    }

    async fn list_spaces(
        &self,
        req: Request<pb::ListSpacesRequest>,
    ) -> Result<Response<pb::ListSpacesResponse>, Status> {
        let principal = principal(&req)?;
        let auth = self.state.auth();
        auth.authorize_any(&principal).map_err(auth_status)?;
        if let Some(cluster) = self.state.cluster() {
            let spaces = cluster
                .list_spaces()
                .await?
                .into_iter()
                .filter(|s| auth.covers(&principal, &s.memory_space_id))
                .collect();
            return Ok(Response::new(pb::ListSpacesResponse { spaces }));
        }
        // Only the spaces the key covers: the others' names are not its
        // business either.
        let spaces = self
            .engine()?
            .list_spaces()
            .iter()
            .filter(|s| auth.covers(&principal, &s.memory_space_id))
            .map(convert::space_info)
            .collect();
        Ok(Response::new(pb::ListSpacesResponse { spaces }))
    }

    async fn describe_space(
        &self,
        req: Request<pb::DescribeSpaceRequest>,
    ) -> Result<Response<pb::DescribeSpaceResponse>, Status> {
        self.authorize(&req, &req.get_ref().memory_space_id, Need::Read)?;
        let engine = engine_or_forward!(self, req, None, describe_space);
        let info = engine
            .describe_space(&req.into_inner().memory_space_id)
            .map_err(status)?;
        Ok(Response::new(pb::DescribeSpaceResponse {
            space: Some(convert::space_info(&info)),
        }))
    }

    async fn list_memories(
        &self,
        req: Request<pb::ListMemoriesRequest>,
    ) -> Result<Response<pb::ListMemoriesResponse>, Status> {
        self.authorize(&req, &req.get_ref().memory_space_id, Need::Read)?;
        let engine = engine_or_forward!(self, req, None, list_memories);
        let req = req.into_inner();
        let after = convert::page_after(&req.page_token).map_err(Status::invalid_argument)?;
        let filter = req.filter.map(convert::memory_filter).unwrap_or_default();
        let limit = if req.page_size == 0 {
            engram_core::model::DEFAULT_LIST_PAGE
        } else {
            req.page_size as usize
        };
        let space = req.memory_space_id;
        let include = req.include_embeddings;
        let page = tokio::task::spawn_blocking(move || {
            engine.list_memories(&space, &filter, after, limit, include)
        })
        .await
        .map_err(|e| Status::internal(format!("listing task failed: {e}")))?
        .map_err(status)?;
        Ok(Response::new(pb::ListMemoriesResponse {
            memories: page
                .memories
                .iter()
                .map(|(e, v)| pb::ListedMemory {
                    episode: Some(convert::episode(e, v.as_deref())),
                    server_sequence: e.server_sequence,
                })
                .collect(),
            next_page_token: page.next_after.map(convert::page_token).unwrap_or_default(),
        }))
    }

    async fn delete_space(
        &self,
        req: Request<pb::DeleteSpaceRequest>,
    ) -> Result<Response<pb::DeleteSpaceResponse>, Status> {
        self.authorize(&req, &req.get_ref().memory_space_id, Need::Admin)?;
        // Cluster mode: answered by the owner (it tombstones the space in
        // the registry and applies the deletion from the partition's log).
        // Routed without making the space locally: a deletion interrupted
        // after it was applied must still be finishable.
        if let Some(cluster) = self.state.cluster() {
            if self.state.ready_engine().is_none() {
                return Err(not_ready());
            }
            let space = req.get_ref().memory_space_id.clone();
            let forwarded = req.metadata().contains_key(FORWARDED_HEADER);
            return match cluster.route(&space, None, forwarded).await? {
                Route::Local(_) => {
                    cluster.delete_space(&space).await.map_err(status)?;
                    Ok(Response::new(pb::DeleteSpaceResponse {}))
                }
                Route::Forward { owner, mut client } => {
                    let (md, _, message) = req.into_parts();
                    let answer = client
                        .delete_space(cluster.forward_request(message, &md))
                        .await
                        .map_err(|s| forward_failed(&owner, s));
                    // This node's next call reads the registry afresh.
                    cluster.evict_space(&space);
                    answer
                }
            };
        }
        self.engine()?
            .delete_space(&req.into_inner().memory_space_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteSpaceResponse {}))
    }
}
