//! `POST /upstreams/{name}/endpoints` (register or renew) and `DELETE /upstreams/{name}/endpoints/{address}`
//! (deregister): endpoints that announce themselves, as services do with Consul. Bad input is a 400 naming the
//! problem and changes nothing. On a cluster member the change is replicated like a weight change: committed
//! through the leader, applied by every node.

use super::routes::{error, json};
use crate::body::ResponseBody;
use crate::discovery::registry::RegisterRequest;
use crate::discovery::Registered;
use crate::server::Server;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portico_cluster::{Command, Proposal, RegistrationChange};
use std::net::SocketAddr;

/// Largest registration body accepted.
const MAX_BODY: usize = 16 * 1024;

/// `POST /upstreams/{name}/endpoints`.
pub async fn register(server: &Server, upstream: &str, req: Request<Incoming>) -> Response<ResponseBody> {
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than 16 KiB or cut short: {e}")),
    };
    let request = match RegisterRequest::parse(&body) {
        Ok(r) => r,
        Err(reason) => return error(StatusCode::BAD_REQUEST, format!("{reason}; nothing changed")),
    };
    if let Err(refusal) = check_group(server, upstream, request.address) {
        return refusal;
    }
    if let Some(link) = server.cluster.get() {
        let change = RegistrationChange::Register {
            weight: request.weight,
            ttl_ms: request.ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        let command = Command::Registration { upstream: upstream.into(), address: request.address.to_string(), change };
        return match link.write(Proposal::plain(command)).await {
            Ok(applied) => {
                server.shared.refresh_upstream(upstream).await;
                answer(server, upstream, serde_json::json!({ "status": "committed", "index": applied.index }))
            }
            Err(e) => super::cluster_routes::failure(&e),
        };
    }
    let Some(outcome) = server.shared.discovery.register(upstream, &request) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}"));
    };
    server.shared.refresh_upstream(upstream).await;
    let status = match outcome {
        Registered::New => {
            tracing::info!(upstream, endpoint = %request.address, weight = request.weight, ttl = ?request.ttl, "endpoint registered");
            "registered"
        }
        Registered::Renewed => "renewed",
    };
    answer(server, upstream, serde_json::json!({ "status": status }))
}

/// `DELETE /upstreams/{name}/endpoints/{address}`.
pub async fn deregister(server: &Server, upstream: &str, address: &str) -> Response<ResponseBody> {
    let Ok(address) = address.parse::<SocketAddr>() else {
        return error(StatusCode::BAD_REQUEST, format!("{address:?} is not ip:port; nothing changed"));
    };
    let Some(group) = server.shared.snapshot.load().upstreams.get(upstream).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}"));
    };
    if !server.shared.discovery.is_registered(upstream, address) {
        let listed = group.endpoint(&address.to_string()).is_some();
        return match listed {
            true => error(
                StatusCode::CONFLICT,
                format!("{address} is not a registered endpoint of {upstream:?} (it comes from the configuration or DNS): drain it instead"),
            ),
            false => error(StatusCode::NOT_FOUND, format!("{address} is not registered in upstream {upstream:?}")),
        };
    }
    if let Some(link) = server.cluster.get() {
        let command = Command::Registration {
            upstream: upstream.into(),
            address: address.to_string(),
            change: RegistrationChange::Deregister,
        };
        return match link.write(Proposal::plain(command)).await {
            Ok(applied) => {
                server.shared.refresh_upstream(upstream).await;
                answer(server, upstream, serde_json::json!({ "status": "committed", "index": applied.index }))
            }
            Err(e) => super::cluster_routes::failure(&e),
        };
    }
    server.shared.discovery.deregister(upstream, address);
    server.shared.refresh_upstream(upstream).await;
    tracing::info!(upstream, endpoint = %address, "endpoint deregistered; draining");
    answer(server, upstream, serde_json::json!({ "status": "deregistered" }))
}

/// Refuses a registration for a group that does not exist (404) or an address the group already has from
/// the configuration or DNS (409: one address, one source).
#[allow(clippy::result_large_err)]
fn check_group(server: &Server, upstream: &str, address: SocketAddr) -> Result<(), Response<ResponseBody>> {
    let snapshot = server.shared.snapshot.load();
    let Some(group) = snapshot.upstreams.get(upstream) else {
        return Err(error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}")));
    };
    let index = group.index_of(&address.to_string());
    let other = index.and_then(|i| group.members.get(i)).filter(|m| m.origin != crate::upstream::Origin::Registered);
    if let Some(member) = other {
        return Err(error(
            StatusCode::CONFLICT,
            format!("{address} is already an endpoint of {upstream:?} from {}; nothing changed", member.origin.kind()),
        ));
    }
    Ok(())
}

fn answer(server: &Server, upstream: &str, mut status: serde_json::Value) -> Response<ResponseBody> {
    let group = server.shared.snapshot.load().upstreams.get(upstream).cloned();
    status["upstream"] = group.map(|g| server.shared.discovery.describe(&g)).unwrap_or_default();
    json(StatusCode::OK, status)
}
