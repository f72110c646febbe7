//! Admin API routes. Answers are JSON except `/metrics` (Prometheus text) and `/healthz` (plain text).

use crate::body::ResponseBody;
use crate::config;
use crate::server::{Server, ServerError};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn json(status: StatusCode, value: serde_json::Value) -> Response<ResponseBody> {
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

fn error(status: StatusCode, message: impl Into<String>) -> Response<ResponseBody> {
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
pub async fn route(server: Arc<Server>, req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD && !authorized(&server, &req) {
        return Ok(error(StatusCode::UNAUTHORIZED, "this call needs Authorization: Bearer <admin token>"));
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
                .map(|u| u.describe())
                .collect();
            json(StatusCode::OK, serde_json::Value::Array(list))
        }
        (&Method::POST, ["config", "reload"]) => match server.reload_from_file().await {
            Ok(()) => json(StatusCode::OK, serde_json::json!({ "status": "reloaded" })),
            Err(ServerError::Config(issues)) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "invalid configuration; the running one keeps serving", "issues": issues.iter().map(|i| i.to_string()).collect::<Vec<_>>() }),
            ),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("{e}; the running configuration keeps serving")),
        },
        (&Method::POST, ["upstreams", upstream, "endpoints", endpoint, action @ ("drain" | "undrain")]) => {
            endpoint_action(&server, upstream, endpoint, |e| e.set_drained(*action == "drain"), action)
        }
        (&Method::PUT | &Method::POST, ["upstreams", upstream, "endpoints", endpoint, "weight"]) => {
            let (upstream, endpoint) = (upstream.to_string(), endpoint.to_string());
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let weight = body
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("weight").and_then(|w| w.as_u64()));
            match weight.and_then(|w| u32::try_from(w).ok()).filter(|w| (1..=1000).contains(w)) {
                Some(w) => endpoint_action(&server, &upstream, &endpoint, |e| e.set_weight(w), "weight"),
                None => error(StatusCode::BAD_REQUEST, "body must be {\"weight\": N} with N in 1..=1000"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, format!("no admin route {method} {path}")),
    };
    Ok(response)
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
