//! Node-to-node transport: Raft RPCs as JSON over HTTP/1.1 on the cluster listener, one kept-alive connection
//! per peer, each request carrying the shared token. A fault-injection switch cuts this node off (outgoing RPCs
//! fail as unreachable, incoming ones are refused) so partitions can be tested without root.

use crate::types::{NodeId, TypeConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The header that carries the shared cluster token.
pub const TOKEN_HEADER: &str = "x-portico-cluster-token";

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made (or this node is cut off): Raft backs off.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer answered with an error status.
    #[error("peer answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its body.
        body: String,
    },
    /// The exchange failed half-way or the answer was not understood.
    #[error("{0}")]
    Failed(String),
}

/// Settings every outgoing call shares.
#[derive(Debug, Clone)]
pub struct Transport {
    token: Option<Arc<str>>,
    /// Set by the fault-injection switch: this node neither sends nor accepts Raft traffic.
    pub isolated: Arc<AtomicBool>,
}

impl Transport {
    /// A transport with this token (peers refuse calls without it).
    pub fn new(token: Option<String>) -> Transport {
        Transport { token: token.map(Arc::from), isolated: Arc::new(AtomicBool::new(false)) }
    }

    /// The token peers must present, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// One POST of `request` as JSON, answered with JSON, on `conn` (reconnecting if it is gone).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        conn: &mut Option<SendRequest<Full<Bytes>>>,
        address: &str,
        path: &str,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, TransportError> {
        if self.isolated.load(Ordering::Relaxed) {
            return Err(TransportError::Unreachable("this node is isolated by the fault-injection switch".into()));
        }
        let body = serde_json::to_vec(request).map_err(|e| TransportError::Failed(e.to_string()))?;
        let exchange = async {
            let mut sender = match conn.take() {
                Some(mut s) => match s.ready().await {
                    Ok(()) => s,
                    Err(_) => connect(address).await?,
                },
                None => connect(address).await?,
            };
            let mut req = http::Request::post(path)
                .header(http::header::HOST, address)
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some(token) = &self.token {
                req = req.header(TOKEN_HEADER, token.as_ref());
            }
            let req = req.body(Full::new(Bytes::from(body))).map_err(|e| TransportError::Failed(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| TransportError::Failed(e.to_string()))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| TransportError::Failed(e.to_string()))?;
            *conn = Some(sender);
            Ok::<_, TransportError>((status, bytes.to_bytes()))
        };
        let (status, bytes) =
            tokio::time::timeout(deadline, exchange).await.map_err(|_| TransportError::Timeout(deadline))??;
        if !status.is_success() {
            return Err(TransportError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| TransportError::Failed(format!("bad answer: {e}")))
    }
}

async fn connect(address: &str) -> Result<SendRequest<Full<Bytes>>, TransportError> {
    let stream =
        tokio::net::TcpStream::connect(address).await.map_err(|e| TransportError::Unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| TransportError::Unreachable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Makes one [`PeerClient`] per target, as openraft asks.
#[derive(Debug, Clone)]
pub struct Network {
    /// Shared transport settings.
    pub transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient { target, address: node.addr.clone(), transport: self.transport.clone(), conn: None }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    target: NodeId,
    address: String,
    transport: Transport,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl PeerClient {
    async fn rpc<Req, Resp, E>(
        &mut self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Result<Resp, RaftError<NodeId, E>>, TransportError> =
            self.transport.call(&mut self.conn, &self.address, path, request, option.hard_ttl()).await;
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e @ TransportError::Unreachable(_)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.rpc("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/raft/vote", &rpc, &option).await
    }
}
