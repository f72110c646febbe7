//! Byte tunnels: protocol upgrades (WebSocket) on reverse-proxy listeners and CONNECT on forward-proxy
//! listeners. Once both sides have switched, bytes are copied in both directions until either closes.

use crate::body::ResponseBody;
use crate::server::Shared;
use http::{Response, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// Answers the client with the upstream's 101 and, once both connections are upgraded, splices them.
pub fn splice_upgrade(
    shared: &Arc<Shared>,
    mut upstream_response: Response<Incoming>,
    client: OnUpgrade,
    _version: Version,
) -> Response<ResponseBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut upstream_response);
    let shared = shared.clone();
    tokio::spawn(async move {
        let (Ok(client_io), Ok(upstream_io)) = (client.await, upstream_upgrade.await) else {
            tracing::debug!("upgrade did not complete on both sides");
            return;
        };
        shared.metrics.tunnels.with_label_values(&["upgrade"]).inc();
        let mut client_io = TokioIo::new(client_io);
        let mut upstream_io = TokioIo::new(upstream_io);
        let _ = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await;
    });
    let (parts, _) = upstream_response.into_parts();
    Response::from_parts(parts, ResponseBody::empty())
}
