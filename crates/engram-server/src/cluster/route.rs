//! Where a call for a space is served: on this node when it owns the
//! space's partition, else forwarded to the owner over gRPC.

use std::time::Duration;

use engram_proto::v1 as pb;
use engram_proto::v1::memory_client::MemoryClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use super::Cluster;

/// Set on a call one node forwards to another: the receiver answers it
/// itself or refuses, never forwards it again (no loops while ownership
/// moves).
pub const FORWARDED_HEADER: &str = "engram-forwarded";

/// Where to serve a call.
pub enum Route {
    /// This node owns the partition: use this engine (it has applied
    /// everything the call's token asked for).
    Local(engram_core::Engine),
    /// Forward to the owner.
    Forward {
        owner: String,
        client: MemoryClient<Channel>,
    },
}

/// Who owns a partition, as far as this node can tell now.
pub enum OwnerAt {
    Here,
    Node { id: String, http: String },
    Nobody,
}

/// A connection to another node (lazy; reconnects by itself).
pub(crate) struct Peer {
    addr: String,
    client: MemoryClient<Channel>,
}

impl Cluster {
    /// Routes a call on `space`. On the owner, waits (up to
    /// `cluster.read_wait_ms`) until the partition is served and the
    /// token's write is applied.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a token of another partition; UNAVAILABLE,
    /// naming the owner, while the partition has no owner, is being taken
    /// over, or has not applied the token in time.
    pub async fn route(
        &self,
        space: &str,
        after: Option<&pb::ConsistencyToken>,
        forwarded: bool,
    ) -> Result<Route, Status> {
        let p = self.partition(space);
        if let Some(t) = after {
            if t.partition != p {
                return Err(Status::invalid_argument(format!(
                    "invalid after: the token is of partition {}, space {space:?} is in partition {p}",
                    t.partition
                )));
            }
        }
        let part = &self.inner.parts[p as usize];
        let owned = part.owned.read().clone();
        if let Some(o) = owned {
            let need = after.map_or(0, |t| t.sequence);
            let wait = Duration::from_millis(self.inner.cfg.read_wait_ms);
            if !o.wait_ready(need, wait).await {
                return Err(Status::unavailable(format!(
                    "partition {p}: owner {} has applied up to sequence {} (asked: {need}, serving: {}) after {} ms; retry",
                    self.node_id(),
                    o.applied(),
                    o.is_serving(),
                    wait.as_millis()
                )));
            }
            return o.engine().map(Route::Local).ok_or_else(|| {
                Status::unavailable(format!("partition {p}: this node is handing it on; retry"))
            });
        }
        let mut lease = part.lease.read().clone();
        if lease.as_ref().is_none_or(|l| l.owner == self.node_id()) {
            // The view may be a tick old (an owner acquired it since, or
            // this node just lost it): ask the lease itself.
            lease = super::lease::read_lease(self, p).await;
        }
        match lease {
            None => Err(Status::unavailable(format!(
                "partition {p} has no owner at the moment (a takeover is running); retry"
            ))),
            Some(l) if l.owner == self.node_id() => Err(Status::unavailable(format!(
                "partition {p}: this node is taking it over; retry"
            ))),
            Some(l) if forwarded => Err(Status::unavailable(format!(
                "partition {p} is owned by {} (epoch {}), not by this node; retry there",
                l.owner, l.epoch
            ))),
            Some(l) => {
                let client = self.peer(&l.owner)?;
                Ok(Route::Forward {
                    owner: l.owner,
                    client,
                })
            }
        }
    }

    /// Who owns partition `p` (reading the lease when the view has no
    /// owner, or names this node without it owning).
    pub async fn owner_at(&self, p: u32) -> OwnerAt {
        let part = &self.inner.parts[p as usize];
        if part.owned.read().is_some() {
            return OwnerAt::Here;
        }
        let mut lease = part.lease.read().clone();
        if lease.as_ref().is_none_or(|l| l.owner == self.node_id()) {
            lease = super::lease::read_lease(self, p).await;
        }
        match lease {
            Some(l) if l.owner != self.node_id() => {
                match self.inner.node_view.read().get(&l.owner) {
                    Some(n) => OwnerAt::Node {
                        id: l.owner.clone(),
                        http: n.http.clone(),
                    },
                    None => OwnerAt::Nobody,
                }
            }
            // This node holds the lease but is not serving (taking it
            // over): answered here, with the owner's wait.
            Some(_) => OwnerAt::Here,
            None => OwnerAt::Nobody,
        }
    }

    fn peer(&self, node: &str) -> Result<MemoryClient<Channel>, Status> {
        let addr = self
            .inner
            .node_view
            .read()
            .get(node)
            .map(|n| n.grpc.clone())
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "the owner {node} is not in the node registry (it may have stopped); retry"
                ))
            })?;
        let mut peers = self.inner.peers.lock();
        if let Some(p) = peers.get(node) {
            if p.addr == addr {
                return Ok(p.client.clone());
            }
        }
        let tls = &self.inner.peers_tls;
        let mut endpoint = Endpoint::from_shared(format!("{}://{addr}", tls.scheme()))
            .map_err(|e| Status::internal(format!("address of {node}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(ca) = &tls.ca_pem {
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                )
                .map_err(|e| Status::internal(format!("TLS to {node}: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        let client = MemoryClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        peers.insert(
            node.to_owned(),
            Peer {
                addr,
                client: client.clone(),
            },
        );
        Ok(client)
    }

    /// A forwarded request: the caller's message and credentials, marked
    /// as forwarded, with a deadline a little past the owner's read wait.
    pub fn forward_request<T>(
        &self,
        message: T,
        from: &tonic::metadata::MetadataMap,
    ) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        for key in ["authorization", "x-api-key"] {
            if let Some(v) = from.get(key) {
                req.metadata_mut().insert(key, v.clone());
            }
        }
        req.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::try_from(self.node_id())
                .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("1")),
        );
        req.set_timeout(Duration::from_millis(self.inner.cfg.read_wait_ms + 5_000));
        req
    }
}

/// A transport failure reaching the owner, as the caller sees it.
pub fn forward_failed(owner: &str, s: Status) -> Status {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            Status::unavailable(format!(
                "forwarding to the owner {owner}: {}; retry",
                s.message()
            ))
        }
        _ => s,
    }
}
