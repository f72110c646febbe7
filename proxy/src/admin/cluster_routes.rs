//! Admin routes of a cluster member: `GET /cluster`, membership, the fault-injection switch, `PUT /config`,
//! and the cluster versions of the mutating calls (endpoint changes, plugin upload and rollback). Each write is
//! validated here, committed through the leader, and answered once this node applied it; a node without a
//! quorum answers 503 and changes nothing.

use super::routes::{error, json};
use crate::body::ResponseBody;
use crate::cluster::ClusterLink;
use crate::server::{Server, ServerError};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use portico_cluster::{ClusterError, Command, EndpointChange, MembershipChange, Module, Proposal};

/// The status a cluster failure maps to: 409 for a command the state refused, 503 for everything that means
/// "not now" (no leader, no quorum, not committed in time), 502 when the leader could not be reached.
pub(super) fn failure(e: &ClusterError) -> Response<ResponseBody> {
    let status = match e {
        ClusterError::Rejected(_) => StatusCode::CONFLICT,
        ClusterError::Forward { .. } => StatusCode::BAD_GATEWAY,
        ClusterError::Settings(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, format!("{e}; nothing changed"))
}

fn committed(index: u64, extra: serde_json::Value) -> Response<ResponseBody> {
    json(StatusCode::OK, serde_json::json!({ "status": "committed", "index": index, "result": extra }))
}

/// `GET /cluster`.
pub fn status(server: &Server) -> Response<ResponseBody> {
    match server.cluster.get() {
        Some(link) => {
            let mut status = serde_json::to_value(link.cluster.status()).unwrap_or_default();
            if let Some(fields) = status.as_object_mut() {
                fields.insert("config_refused".into(), serde_json::to_value(link.refusal()).unwrap_or_default());
                let registrations = serde_json::to_value(&link.cluster.state().registrations).unwrap_or_default();
                fields.insert("registrations".into(), registrations);
            }
            json(StatusCode::OK, status)
        }
        None => error(StatusCode::NOT_FOUND, "this node is not in a cluster (no [cluster] table)"),
    }
}

/// `POST /cluster/members`, `DELETE /cluster/members/{id}`, `POST /cluster/isolate`.
pub async fn route(
    server: &Server,
    method: &Method,
    segments: &[&str],
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let Some(link) = server.cluster.get() else {
        return error(StatusCode::NOT_FOUND, "this node is not in a cluster (no [cluster] table)");
    };
    match (method, segments) {
        (&Method::POST, ["cluster", "members"]) => {
            let body = match read_json(req).await {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            let id = body.get("node_id").and_then(|v| v.as_u64()).filter(|id| *id > 0);
            let address = body.get("address").and_then(|v| v.as_str()).map(str::to_string);
            let (Some(node_id), Some(address)) = (id, address) else {
                return error(StatusCode::BAD_REQUEST, "body must be {\"node_id\": N, \"address\": \"host:port\"}");
            };
            match link.cluster.change_membership(MembershipChange::Add { node_id, address }).await {
                Ok(a) => json(StatusCode::OK, serde_json::json!({ "status": "committed", "index": a.index })),
                Err(e) => failure(&e),
            }
        }
        (&Method::DELETE, ["cluster", "members", id]) => match id.parse::<u64>() {
            Ok(node_id) => match link.cluster.change_membership(MembershipChange::Remove { node_id }).await {
                Ok(a) => json(StatusCode::OK, serde_json::json!({ "status": "committed", "index": a.index })),
                Err(e) => failure(&e),
            },
            Err(_) => error(StatusCode::BAD_REQUEST, "the member id must be a number"),
        },
        (&Method::POST, ["cluster", "isolate"]) => {
            if !link.fault_injection() {
                return error(StatusCode::FORBIDDEN, "fault injection is off; set cluster.fault_injection = true");
            }
            let isolated = match read_json(req).await {
                Ok(body) => body.get("isolated").and_then(|v| v.as_bool()).unwrap_or(true),
                Err(answer) => return answer,
            };
            link.cluster.set_isolated(isolated);
            json(StatusCode::OK, serde_json::json!({ "isolated": isolated }))
        }
        _ => error(StatusCode::NOT_FOUND, "no such cluster route"),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, Response<ResponseBody>> {
    let bytes = super::routes::read_body(req.into_body(), super::routes::MAX_BODY_BYTES).await?;
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}

/// `PUT /config`: propose configuration text (validated here, plugins started off to the side first).
pub async fn put_config(server: &Server, req: Request<Incoming>) -> Response<ResponseBody> {
    let Some(link) = server.cluster.get() else {
        return error(
            StatusCode::CONFLICT,
            "PUT /config replicates a configuration to a cluster; a standalone node reloads its file with POST /config/reload",
        );
    };
    let body = match super::routes::read_body(req.into_body(), super::routes::MAX_CONFIG_BYTES).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the configuration must be UTF-8 TOML");
    };
    match link.propose_config(server, text).await {
        Ok(a) => committed(a.index, serde_json::Value::Null),
        Err(ServerError::Cluster(e)) => failure(&e),
        Err(ServerError::Config(issues)) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid configuration; nothing was proposed",
                                "issues": issues.iter().map(|i| i.to_string()).collect::<Vec<_>>() }),
        ),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}; nothing was proposed")),
    }
}

/// Drain, undrain or reweight an endpoint on every node.
pub async fn endpoint(
    link: &ClusterLink,
    server: &Server,
    upstream: &str,
    endpoint: &str,
    change: EndpointChange,
) -> Response<ResponseBody> {
    let known = server.shared.snapshot.load().upstreams.get(upstream).map(|u| u.endpoint(endpoint).is_some());
    match known {
        None => return error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}")),
        Some(false) => {
            return error(StatusCode::NOT_FOUND, format!("upstream {upstream:?} has no endpoint {endpoint:?}"))
        }
        Some(true) => {}
    }
    let command = Command::Endpoint { upstream: upstream.into(), endpoint: endpoint.into(), change };
    match link.write(Proposal::plain(command)).await {
        Ok(a) => {
            let group = server.shared.snapshot.load().upstreams.get(upstream).map(|u| u.describe());
            committed(a.index, group.unwrap_or_default())
        }
        Err(e) => failure(&e),
    }
}

/// `PUT /plugins/{name}` on a cluster member: the module must start here before it is proposed.
pub async fn upload(link: &ClusterLink, server: &Server, name: &str, bytes: Vec<u8>) -> Response<ResponseBody> {
    let Some(slot) = server.shared.snapshot.load().plugins.get(name).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("no plugin named {name:?} in the configuration"));
    };
    if let Err(e) = server.shared.plugins.check(&slot.config, bytes.clone()).await {
        return error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}; nothing was proposed"));
    }
    let module = Module::new(bytes);
    let command = Command::PutPlugin { name: name.into(), sha256: module.sha256.clone() };
    plugin_write(link, server, name, Proposal { command, modules: vec![module] }).await
}

/// `POST /plugins/{name}/rollback` on a cluster member.
pub async fn rollback(link: &ClusterLink, server: &Server, name: &str) -> Response<ResponseBody> {
    plugin_write(link, server, name, Proposal::plain(Command::RollbackPlugin { name: name.into() })).await
}

async fn plugin_write(link: &ClusterLink, server: &Server, name: &str, proposal: Proposal) -> Response<ResponseBody> {
    match link.write(proposal).await {
        Ok(a) => {
            let slot = server.shared.snapshot.load().plugins.get(name).cloned();
            committed(a.index, slot.map(|s| s.describe()).unwrap_or_default())
        }
        Err(e) => failure(&e),
    }
}
