//! Admin API routes. Answers are JSON except `/metrics` (Prometheus text), `/healthz` (plain text) and the
//! dashboard's page and assets.

use super::{cluster_routes, dashboard, endpoint_routes, plugin_routes};
use crate::body::ResponseBody;
use crate::config;
use crate::server::{Server, ServerError};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portico_cluster::EndpointChange;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Largest module `PUT /plugins/{name}` accepts.
pub(super) const MAX_PLUGIN_BYTES: usize = 64 * 1024 * 1024;
/// Largest configuration `PUT /config` accepts.
pub(super) const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;
/// Largest body any other admin route accepts: they take small JSON documents.
pub(super) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The body limit of a route: every route has one, so no request can make the admin API buffer without bound.
fn body_limit(method: &Method, segments: &[&str]) -> usize {
    match (method, segments) {
        (&Method::PUT, ["plugins", _]) => MAX_PLUGIN_BYTES,
        (&Method::PUT, ["config"]) => MAX_CONFIG_BYTES,
        _ => MAX_BODY_BYTES,
    }
}

/// Reads a request body of at most `limit` bytes; the error is the answer (413 past the limit).
pub(super) async fn read_body(body: Incoming, limit: usize) -> Result<bytes::Bytes, Response<ResponseBody>> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body exceeds {limit} bytes")))
        }
        Err(e) => Err(error(StatusCode::BAD_REQUEST, format!("the request body could not be read: {e}"))),
    }
}

pub(super) fn json(status: StatusCode, value: serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response<ResponseBody> {
    json(status, serde_json::json!({ "error": message.into() }))
}

fn authorized(server: &Server, req: &Request<Incoming>) -> bool {
    let snapshot = server.shared.snapshot.load();
    let Some(token) = snapshot.config.admin.token.as_deref() else { return true };
    let expected = format!("Bearer {token}");
    req.headers().get(header::AUTHORIZATION).is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Dispatches one admin request.
pub async fn route(
    server: Arc<Server>,
    req: Request<Incoming>,
    transport: super::Transport,
) -> Result<Response<ResponseBody>, Infallible> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let token_set = server.shared.snapshot.load().config.admin.token.is_some();
    let refusal = match transport {
        super::Transport::Tcp => super::browser::refusal(&method, req.uri(), req.headers(), token_set),
        super::Transport::Unix => None,
    };
    if let Some(why) = refusal {
        return Ok(error(StatusCode::FORBIDDEN, why));
    }
    if method != Method::GET && method != Method::HEAD && !authorized(&server, &req) {
        return Ok(error(StatusCode::UNAUTHORIZED, "this call needs Authorization: Bearer <admin token>"));
    }
    let limit = body_limit(&method, &segments);
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let mut answer = error(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body exceeds {limit} bytes"));
        // The body is not read: close rather than take it for the next request.
        answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(answer);
    }
    let response = match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, ["readyz"]) => {
            if server.shared.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                text(StatusCode::OK, "text/plain", "ready\n")
            }
        }
        (&Method::GET, ["metrics"]) => {
            for upstream in server.shared.snapshot.load().upstreams.values() {
                upstream.export_gauges(&server.shared.metrics);
            }
            if let Some(watch) = server.watch.lock().await.as_ref() {
                watch.export_gauges(&server.shared.watch_metrics);
            }
            if let Some(link) = server.cluster.get() {
                link.export_gauges();
            }
            text(StatusCode::OK, "text/plain; version=0.0.4", server.shared.metrics.encode())
        }
        (&Method::GET, ["config"]) => {
            let snapshot = server.shared.snapshot.load();
            match serde_json::to_value(config::redacted(&snapshot.config.source)) {
                Ok(v) => json(StatusCode::OK, v),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (&Method::GET, ["upstreams"]) => {
            let snapshot = server.shared.snapshot.load();
            let list: Vec<_> = snapshot
                .config
                .upstreams
                .iter()
                .filter_map(|u| snapshot.upstreams.get(&u.name))
                .map(|u| server.shared.discovery.describe(u))
                .collect();
            json(StatusCode::OK, serde_json::Value::Array(list))
        }
        (&Method::GET, ["dashboard"]) => dashboard::asset(None),
        (&Method::GET, ["dashboard", name]) => dashboard::asset(Some(name)),
        (&Method::GET, ["stats"]) => dashboard::stats(&server, req.uri().query().unwrap_or("")),
        (&Method::POST, ["upstreams", upstream, "endpoints"]) => {
            let upstream = upstream.to_string();
            endpoint_routes::register(&server, &upstream, req).await
        }
        (&Method::DELETE, ["upstreams", upstream, "endpoints", endpoint]) => {
            endpoint_routes::deregister(&server, upstream, &percent_decode(endpoint)).await
        }
        (&Method::GET, ["cluster"]) => cluster_routes::status(&server),
        (_, ["cluster", ..]) => cluster_routes::route(&server, &method, &segments, req).await,
        (&Method::PUT, ["config"]) => cluster_routes::put_config(&server, req).await,
        (&Method::POST, ["config", "reload"]) => match server.reload_from_file().await {
            Ok(()) => json(StatusCode::OK, serde_json::json!({ "status": "reloaded" })),
            Err(ServerError::Cluster(e)) => {
                error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; the running configuration keeps serving"))
            }
            Err(ServerError::Config(issues)) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "invalid configuration; the running one keeps serving", "issues": issues.iter().map(|i| i.to_string()).collect::<Vec<_>>() }),
            ),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("{e}; the running configuration keeps serving")),
        },
        (&Method::POST, ["upstreams", upstream, "endpoints", endpoint, action @ ("drain" | "undrain")]) => {
            if let Some(link) = server.cluster.get() {
                let change = if *action == "drain" { EndpointChange::Drain } else { EndpointChange::Undrain };
                return Ok(cluster_routes::endpoint(link, &server, upstream, &percent_decode(endpoint), change).await);
            }
            endpoint_action(&server, upstream, endpoint, |e| e.set_drained(*action == "drain"), action)
        }
        (&Method::PUT | &Method::POST, ["upstreams", upstream, "endpoints", endpoint, "weight"]) => {
            let (upstream, endpoint) = (upstream.to_string(), endpoint.to_string());
            let body = match read_body(req.into_body(), MAX_BODY_BYTES).await {
                Ok(body) => body,
                Err(answer) => return Ok(answer),
            };
            let weight = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("weight").and_then(|w| w.as_u64()));
            match weight.and_then(|w| u32::try_from(w).ok()).filter(|w| (1..=1000).contains(w)) {
                Some(w) => match server.cluster.get() {
                    Some(link) => {
                        let endpoint = percent_decode(&endpoint);
                        cluster_routes::endpoint(link, &server, &upstream, &endpoint, EndpointChange::Weight(w)).await
                    }
                    None => endpoint_action(&server, &upstream, &endpoint, |e| e.set_weight(w), "weight"),
                },
                None => error(StatusCode::BAD_REQUEST, "body must be {\"weight\": N} with N in 1..=1000"),
            }
        }
        (&Method::GET, ["plugins"]) => {
            let snapshot = server.shared.snapshot.load();
            let mut failures = crate::plugin::failure_counts(&server.shared.metrics.registry);
            let list: Vec<_> = snapshot
                .config
                .plugins
                .iter()
                .filter_map(|p| snapshot.plugins.get(&p.name))
                .map(|slot| {
                    let mut described = slot.describe();
                    if let Some(fields) = described.as_object_mut() {
                        let counted = failures.remove(&slot.config.name).unwrap_or_default();
                        fields.insert("failures".into(), serde_json::Value::Object(counted));
                    }
                    described
                })
                .collect();
            json(StatusCode::OK, serde_json::Value::Array(list))
        }
        (&Method::PUT, ["plugins", name]) => {
            let name = name.to_string();
            plugin_routes::upload(&server, &name, req).await
        }
        (&Method::GET, ["plugins", name, "rollout"]) => plugin_routes::status(&server, name),
        (&Method::POST, ["plugins", name, "rollout", action]) => plugin_routes::action(&server, name, action).await,
        (&Method::POST, ["plugins", name, "rollback"]) => {
            let slot = server.shared.snapshot.load().plugins.get(*name).cloned();
            match (slot, server.cluster.get()) {
                (None, _) => error(StatusCode::NOT_FOUND, format!("no plugin named {name:?} in the configuration")),
                (Some(_), Some(link)) => cluster_routes::rollback(link, &server, name).await,
                (Some(slot), None) => match server.shared.plugins.rollback(&slot).await {
                    Ok(()) => json(StatusCode::OK, slot.describe()),
                    Err(e) => error(StatusCode::CONFLICT, e.to_string()),
                },
            }
        }
        (&Method::GET, ["anomaly", what]) => {
            let query = req.uri().query().unwrap_or("").to_string();
            anomaly_route(&server, what, &query).await
        }
        _ => error(StatusCode::NOT_FOUND, format!("no admin route {method} {path}")),
    };
    Ok(response)
}

/// `GET /anomaly/{series,scores,alerts,incidents,actions,stats,events}`.
async fn anomaly_route(server: &Server, what: &str, query: &str) -> Response<ResponseBody> {
    let Some(detector) = server.watch.lock().await.as_ref().map(|w| w.detector.clone()) else {
        if let Some(reason) = server.watch_error.lock().clone() {
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("anomaly detection failed to start: {reason}"));
        }
        return error(StatusCode::NOT_FOUND, "anomaly detection is not configured (add an [anomaly] table)");
    };
    let param = |name: &str| {
        query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    match what {
        "series" => {
            let since = param("since").and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            let format = param("format").unwrap_or_else(|| "json".into());
            let exported = match format.as_str() {
                "arrow" => {
                    let d = detector.clone();
                    tokio::task::spawn_blocking(move || d.export_arrow(since))
                        .await
                        .map(|r| r.map(|bytes| text(StatusCode::OK, "application/vnd.apache.arrow.stream", bytes)))
                }
                "json" => {
                    let d = detector.clone();
                    tokio::task::spawn_blocking(move || d.export_json(since))
                        .await
                        .map(|r| r.map(|v| json(StatusCode::OK, v)))
                }
                other => return error(StatusCode::BAD_REQUEST, format!("format must be arrow or json, not {other:?}")),
            };
            match exported {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "export thread failed"),
            }
        }
        "scores" => json(StatusCode::OK, serde_json::to_value(detector.scores()).unwrap_or_default()),
        "alerts" => json(
            StatusCode::OK,
            serde_json::json!({ "active": detector.active_alerts(), "history": detector.alert_history() }),
        ),
        "incidents" => json(StatusCode::OK, serde_json::to_value(detector.incidents()).unwrap_or_default()),
        "actions" => json(StatusCode::OK, serde_json::to_value(detector.actions()).unwrap_or_default()),
        "stats" => {
            json(StatusCode::OK, serde_json::json!({ "detector": detector.stats(), "model": detector.model_meta() }))
        }
        "events" => {
            let Ok(place) = server.event_streams.clone().try_acquire_owned() else {
                let why = format!("{} event streams are open already", super::MAX_EVENT_STREAMS);
                return error(StatusCode::SERVICE_UNAVAILABLE, why);
            };
            let mut events = detector.subscribe();
            let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
            tokio::spawn(async move {
                // Held while the stream lasts: it ends when the client goes away.
                let _place = place;
                if tx.send(bytes::Bytes::from_static(b": portico anomaly events\n\n")).await.is_err() {
                    return;
                }
                loop {
                    let event = match events.recv().await {
                        Ok(event) => event,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    let kind = match &event {
                        portico_anomaly::AnomalyEvent::Scores { .. } => "scores",
                        portico_anomaly::AnomalyEvent::Alert(_) => "alert",
                        portico_anomaly::AnomalyEvent::Incident(_) => "incident",
                    };
                    let Ok(data) = serde_json::to_string(&event) else { continue };
                    let frame = format!("event: {kind}\ndata: {data}\n\n");
                    if tx.send(bytes::Bytes::from(frame)).await.is_err() {
                        return; // the client went away
                    }
                }
            });
            let mut r = Response::new(ResponseBody::Channel(rx));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        other => error(StatusCode::NOT_FOUND, format!("no admin route /anomaly/{other}")),
    }
}

fn endpoint_action(
    server: &Server,
    upstream: &str,
    endpoint: &str,
    act: impl FnOnce(&crate::upstream::endpoint::Endpoint),
    what: &str,
) -> Response<ResponseBody> {
    let snapshot = server.shared.snapshot.load();
    let Some(group) = snapshot.upstreams.get(upstream) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}"));
    };
    let decoded = percent_decode(endpoint);
    let Some(ep) = group.endpoint(&decoded) else {
        return error(StatusCode::NOT_FOUND, format!("upstream {upstream:?} has no endpoint {decoded:?}"));
    };
    act(ep);
    tracing::info!(upstream, endpoint = %decoded, action = what, "endpoint changed through the admin API");
    json(StatusCode::OK, group.describe())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
