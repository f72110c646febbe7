//! Byte tunnels: protocol upgrades (WebSocket) on reverse-proxy listeners and CONNECT on forward-proxy
//! listeners. Once both sides have switched, bytes are copied in both directions until either closes.

use crate::body::{ResponseBody, UpstreamBody};
use crate::server::Shared;
use http::{Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Answers the client with the upstream's 101 and, once the client's connection is upgraded, splices the two.
/// Bytes of the new protocol the upstream sent along with its 101 go to the client first.
pub fn splice_upgrade(
    shared: &Arc<Shared>,
    upstream_response: Response<UpstreamBody>,
    client: OnUpgrade,
    _version: Version,
) -> Response<ResponseBody> {
    let (parts, body) = upstream_response.into_parts();
    let shared = shared.clone();
    tokio::spawn(async move {
        let Ok(client_io) = client.await else {
            tracing::debug!("upgrade did not complete on the client's side");
            return;
        };
        let mut client_io = TokioIo::new(client_io);
        shared.metrics.tunnels.with_label_values(&["upgrade"]).inc();
        match body {
            UpstreamBody::H1(body) => {
                let Some((mut upstream_io, early)) = body.into_upgraded() else { return };
                if !early.is_empty() && client_io.write_all(&early).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await;
            }
            UpstreamBody::Hyper(body) => {
                let Some(incoming) = body.into_incoming() else { return };
                let mut response = Response::new(incoming);
                let Ok(upstream_io) = hyper::upgrade::on(&mut response).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut client_io, &mut TokioIo::new(upstream_io)).await;
            }
        }
    });
    Response::from_parts(parts, ResponseBody::empty())
}
