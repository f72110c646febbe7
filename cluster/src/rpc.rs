//! The cluster listener: Raft RPCs from peers and writes forwarded by followers, JSON over HTTP/1.1. Every call
//! must carry the shared token when one is configured; an isolated node (fault injection) refuses all of them.

use crate::network::TOKEN_HEADER;
use crate::node::{Cluster, ForwardedAnswer, MembershipChange};
use crate::types::{Command, NodeId, TypeConfig};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// Largest RPC body accepted (a snapshot chunk or a log batch carrying plugin modules).
const MAX_BODY: usize = 256 << 20;

/// Accepts peer connections until the cluster is dropped.
pub(crate) async fn serve(listener: tokio::net::TcpListener, cluster: Weak<Cluster>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "cluster listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let weak = cluster.clone();
        if weak.upgrade().is_none() {
            return;
        }
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(weak.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => reply(StatusCode::OK, body),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string().into_bytes()),
    }
}

async fn read<T: DeserializeOwned>(req: hyper::Request<Incoming>) -> Result<T, Response<Full<Bytes>>> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| reply(StatusCode::PAYLOAD_TOO_LARGE, e.to_string().into_bytes()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| reply(StatusCode::BAD_REQUEST, e.to_string().into_bytes()))
}

async fn handle(cluster: Weak<Cluster>, req: hyper::Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(cluster) = cluster.upgrade() else {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, b"shutting down".to_vec()));
    };
    if cluster.transport.isolated.load(Ordering::Relaxed) {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, b"isolated by the fault-injection switch".to_vec()));
    }
    if let Some(token) = cluster.transport.token() {
        let presented = req.headers().get(TOKEN_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if !constant_time_eq(presented, token.as_bytes()) {
            tracing::warn!("refused a cluster call without the right token");
            return Ok(reply(StatusCode::UNAUTHORIZED, b"cluster token required".to_vec()));
        }
    }
    let path = req.uri().path().to_string();
    Ok(route(&cluster, &path, req).await.unwrap_or_else(|e| e))
}

async fn route(
    cluster: &Arc<Cluster>,
    path: &str,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Response<Full<Bytes>>> {
    Ok(match path {
        "/raft/append" => {
            let rpc: AppendEntriesRequest<TypeConfig> = read(req).await?;
            json(&cluster.raft.append_entries(rpc).await)
        }
        "/raft/vote" => {
            let rpc: VoteRequest<NodeId> = read(req).await?;
            json(&cluster.raft.vote(rpc).await)
        }
        "/raft/snapshot" => {
            let rpc: InstallSnapshotRequest<TypeConfig> = read(req).await?;
            json(&cluster.raft.install_snapshot(rpc).await)
        }
        "/cluster/write" => {
            let command: Command = read(req).await?;
            json(&ForwardedAnswer::from(cluster.write_as_leader(command).await))
        }
        "/cluster/membership" => {
            let change: MembershipChange = read(req).await?;
            json(&ForwardedAnswer::from(cluster.change_membership_as_leader(change).await))
        }
        _ => reply(StatusCode::NOT_FOUND, b"no such cluster route".to_vec()),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
