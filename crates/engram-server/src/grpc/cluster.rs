//! `engram.v1.Cluster`: what this node knows of the cluster.

use engram_proto::v1 as pb;
use engram_proto::v1::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use super::principal;
use super::status::auth_status;
use crate::http::AppState;

pub struct ClusterService {
    pub state: AppState,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.state
            .auth()
            .authorize_any(&principal(&req)?)
            .map_err(auth_status)?;
        let cluster = self.state.cluster().ok_or_else(|| {
            Status::failed_precondition("this server runs as a single node (no [cluster] section)")
        })?;
        Ok(Response::new(cluster.status()))
    }
}
