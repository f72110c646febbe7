//! Forward proxying: absolute-form `http://` requests are sent where they point, and CONNECT opens a TCP
//! tunnel, but only to ports listed in the listener's `connect_ports`.

use super::destination::{self, Refusal};
use super::headers;
use super::local::{error_response, LocalError};
use super::RequestMeta;
use crate::body::ClientBody;
use crate::body::{RequestBody, ResponseBody};
use crate::listen::{ConnInfo, ListenerRuntime};
use crate::server::Shared;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Handles one request on a forward-proxy listener.
pub async fn handle(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    listener: &ListenerRuntime,
    req: Request<ClientBody>,
    meta: &RequestMeta,
) -> Response<ResponseBody> {
    let response = if req.method() == Method::CONNECT {
        connect(shared, conn, listener, req, meta).await
    } else {
        absolute(shared, conn, listener, req, meta).await
    };
    shared.metrics.observe_request(&listener.config.name, "", response.status().as_u16(), None);
    response
}

/// A target authority a forward listener goes to: a host (no userinfo, a port of at most 65535; see
/// [`super::request_head::valid_host`]), and not an empty one.
fn valid_target(authority: &http::uri::Authority) -> bool {
    !authority.host().is_empty() && super::request_head::valid_host(authority.as_str().as_bytes())
}

async fn connect(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    listener: &ListenerRuntime,
    mut req: Request<ClientBody>,
    meta: &RequestMeta,
) -> Response<ResponseBody> {
    let Some(authority) = req.uri().authority().cloned() else {
        return error_response(LocalError::BadRequest, "CONNECT needs host:port", &meta.request_id);
    };
    // Authority-form only (RFC 9110 §9.3.6: `host:port`, no scheme, path or userinfo): a target such as
    // `http://a:443/` or `user@a:443` is not one host the checks below and the logs can agree on.
    let authority_form = req.uri().scheme().is_none() && req.uri().path_and_query().is_none();
    if !authority_form || !valid_target(&authority) {
        return error_response(LocalError::BadRequest, "CONNECT needs a host:port target", &meta.request_id);
    }
    let Some(port) = authority.port_u16() else {
        return error_response(LocalError::BadRequest, "CONNECT needs host:port", &meta.request_id);
    };
    if !listener.config.connect_ports.contains(&port) {
        return error_response(
            LocalError::ForbiddenPort,
            &format!("CONNECT to port {port} is not allowed"),
            &meta.request_id,
        );
    }
    let addr = match permitted(shared, listener, authority.host(), port, meta).await {
        Ok(addr) => addr,
        Err(response) => return response,
    };
    let target = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return error_response(
                LocalError::UpstreamFailed,
                &format!("cannot connect to {authority}: {e}"),
                &meta.request_id,
            )
        }
        Err(_) => {
            return error_response(
                LocalError::UpstreamTimeout,
                &format!("connecting to {authority} timed out"),
                &meta.request_id,
            )
        }
    };
    let _ = target.set_nodelay(true);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shared = shared.clone();
    let name = listener.config.name.clone();
    let limits = super::tunnel::TunnelLimits::of(conn);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        shared.metrics.tunnels.with_label_values(&[&name]).inc();
        let mut client = TokioIo::new(upgraded);
        let mut target = target;
        super::tunnel::splice(&mut client, &mut target, &limits).await;
    });
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// Resolves and checks a destination; the error is the answer to send.
async fn permitted(
    shared: &Shared,
    listener: &ListenerRuntime,
    host: &str,
    port: u16,
    meta: &RequestMeta,
) -> Result<std::net::SocketAddr, Response<ResponseBody>> {
    destination::resolve_permitted(shared, &listener.config.allow, host, port).await.map_err(|refusal| match refusal {
        Refusal::Forbidden(detail) => error_response(LocalError::ForbiddenDestination, &detail, &meta.request_id),
        Refusal::Unresolved(detail) => error_response(LocalError::UpstreamFailed, &detail, &meta.request_id),
    })
}

async fn absolute(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    listener: &ListenerRuntime,
    req: Request<ClientBody>,
    meta: &RequestMeta,
) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    match parts.uri.scheme_str() {
        Some("http") if parts.uri.authority().is_some() => {}
        Some(_) => {
            return error_response(
                LocalError::BadRequest,
                "only http:// targets are proxied; use CONNECT for TLS",
                &meta.request_id,
            )
        }
        None => {
            return error_response(
                LocalError::BadRequest,
                "a forward proxy needs an absolute-form target",
                &meta.request_id,
            )
        }
    }
    let Some(authority) = parts.uri.authority().cloned() else {
        return error_response(
            LocalError::BadRequest,
            "a forward proxy needs an absolute-form target",
            &meta.request_id,
        );
    };
    // No userinfo, a port of at most 65535 (a bad one was read as the default port), nothing the origin could
    // read as another host.
    if !valid_target(&authority) {
        return error_response(LocalError::BadRequest, "the target's authority is not a valid host", &meta.request_id);
    }
    let addr = match permitted(shared, listener, authority.host(), authority.port_u16().unwrap_or(80), meta).await {
        Ok(addr) => addr,
        Err(response) => return response,
    };
    headers::strip_hop_by_hop(&mut parts.headers, false);
    if parts.version == http::Version::HTTP_2 {
        headers::join_cookie_crumbs(&mut parts.headers);
    }
    // The target's authority is the host, whatever `Host` the client sent (RFC 9112 §3.2.2: a proxy MUST
    // replace it), so the origin answers for the host that was checked against the allow list.
    match http::HeaderValue::from_str(authority.as_str()) {
        Ok(host) => {
            parts.headers.insert(http::header::HOST, host);
        }
        Err(_) => return error_response(LocalError::BadRequest, "bad request target", &meta.request_id),
    }
    // Connect to the address that was checked, not to a name the client could make resolve elsewhere.
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("http://{addr}{path}").parse() {
        Ok(uri) => uri,
        Err(_) => return error_response(LocalError::BadRequest, "bad request target", &meta.request_id),
    };
    headers::add_forwarding(
        &mut parts.headers,
        &headers::ForwardedFor {
            client_ip: &conn.client_ip,
            tls: conn.tls,
            version: parts.version,
            traceparent: meta.trace.traceparent().as_bytes(),
            request_id: &meta.request_id,
        },
    );
    parts.version = http::Version::HTTP_11;
    let (body, client_body) =
        if body.is_end_stream() { (RequestBody::empty(), None) } else { RequestBody::Stream(body).watched() };
    let method = parts.method.clone();
    let request = Request::from_parts(parts, body);
    match tokio::time::timeout(Duration::from_secs(30), shared.forward_client.request(request)).await {
        Ok(Ok(mut response)) => {
            // What the reverse path refuses from an upstream, refused here too: hyper's client takes an answer
            // with both Content-Length and Transfer-Encoding (and passed both on), transfer codings Portico
            // does not apply (decoded of chunked, passed on unlabelled), and a 101 to a request that asked for
            // no upgrade (its `Upgrade` is removed on the way out).
            let (status, version) = (response.status(), response.version());
            let framed = crate::h1::framing::response_body(&method, status, version, response.headers());
            if status == StatusCode::SWITCHING_PROTOCOLS || framed.is_err() {
                let why = match framed {
                    Err(e) => format!("origin answered with a head Portico cannot pass on ({e})"),
                    Ok(_) => "origin switched protocols though no upgrade was asked for".to_string(),
                };
                return error_response(LocalError::UpstreamFailed, &why, &meta.request_id);
            }
            headers::strip_hop_by_hop(response.headers_mut(), false);
            let upstream_version = response.version();
            headers::append_via(response.headers_mut(), upstream_version);
            let (parts, body) = response.into_parts();
            Response::from_parts(
                parts,
                ResponseBody::Upstream(crate::body::UpstreamBody::Hyper(crate::body::HyperBody::new(body)), None),
            )
        }
        // A body the client broke, or sent more of than the listener takes, is the client's fault, not the
        // origin's.
        Ok(Err(_)) if client_body.as_ref().is_some_and(|w| w.too_large()) => {
            error_response(LocalError::PayloadTooLarge, super::TOO_LARGE, &meta.request_id)
        }
        Ok(Err(_)) if client_body.as_ref().is_some_and(|w| w.client_failed()) => {
            super::local::body_broken("the request body could not be read", &meta.request_id)
        }
        Ok(Err(e)) => error_response(LocalError::UpstreamFailed, &e.to_string(), &meta.request_id),
        Err(_) => error_response(LocalError::UpstreamTimeout, "origin did not answer in time", &meta.request_id),
    }
}
