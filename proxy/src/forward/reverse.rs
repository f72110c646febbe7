//! Reverse proxying: pick an endpoint, forward the request with its body streamed, retry idempotent bodiless
//! requests on another endpoint within the retry budget, and feed passive outlier detection. Plugins with
//! body callbacks see the bodies on the way (see [`crate::plugin::body`]).

use super::headers::{self, ForwardedFor};
use super::local::{error_response, LocalError};
use super::{tunnel, RequestMeta};
use crate::body::ClientBody;
use crate::body::{BodyGuard, RawFieldsSlot as _, RequestBody, ResponseBody, UpstreamCloser};
use crate::listen::{ConnInfo, ListenerRuntime};
use crate::plugin::body::{self, BodyPipe, Direction};
use crate::plugin::chain::{FilterChain, Verdict};
use crate::route;
use crate::server::Shared;
use crate::telemetry::span::PluginDecisions;
use crate::upstream::held::{ActiveRequest, Held};
use crate::upstream::pool::{ConnectionChoice, SendError};
use crate::upstream::Upstream;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use portico_plugins::Head;
use std::borrow::Cow;
use std::sync::Arc;

/// Proxies one request to its upstream group, through the listener's plugin chain if it has one.
pub async fn handle(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    listener: &ListenerRuntime,
    parts: &mut Head,
    body: ClientBody,
    meta: &mut RequestMeta,
) -> Response<ResponseBody> {
    // The configuration is only looked at (arc-swap's guard: no count written, and so no cache line moved
    // between the workers) while nothing can make the request wait. A chain with plugins, whose callbacks may,
    // lets go of it before them and looks again to route: the configuration of that moment, and still no count
    // on the snapshot every worker shares (holding it counted cost two atomic operations a request on a cache
    // line both workers write).
    let guard = shared.snapshot.load();
    let mut chain = FilterChain::start(&listener.config.filters, &guard.plugins, parts, conn, &meta.request_id);
    if chain.is_empty() {
        let selected = route::select(&guard, listener, None);
        drop(guard);
        let Some(upstream) = selected else {
            let answer = error_response(LocalError::NoRoute, "no upstream for this request", &meta.request_id);
            return logged(finish(shared, listener, "", answer, meta), chain);
        };
        return proxied(shared, conn, listener, parts, body, meta, chain, upstream).await;
    }
    drop(guard);
    if let Verdict::Respond(answer) =
        chain.request_headers(parts, body.is_end_stream(), &meta.request_id, listener.config.paths).await
    {
        note_plugins(meta, |d| d.answered = true);
        return logged(finish(shared, listener, "", *answer, meta), chain);
    }
    let routed = chain.routed_upstream();
    note_plugins(meta, |d| d.routed = routed.is_some());
    let snapshot = shared.snapshot.load();
    let Some(upstream) = route::select(&snapshot, listener, routed) else {
        let detail = match chain.routed_upstream() {
            Some(group) => format!("a plugin routed to upstream {group:?}, which does not exist"),
            None => "no upstream for this request".to_string(),
        };
        let answer = error_response(LocalError::NoRoute, &detail, &meta.request_id);
        return logged(finish(shared, listener, "", answer, meta), chain);
    };
    drop(snapshot);
    proxied(shared, conn, listener, parts, body, meta, chain, upstream).await
}

/// The request's body through the plugins that take it, the exchange with the upstream, and the answer through
/// the plugins that see it.
#[allow(clippy::too_many_arguments)]
async fn proxied(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    listener: &ListenerRuntime,
    parts: &mut Head,
    body: ClientBody,
    meta: &mut RequestMeta,
    mut chain: FilterChain,
    upstream: Held,
) -> Response<ResponseBody> {
    let timeout = upstream.request_timeout();
    let body = match body::filter_request_body(&mut chain, parts, body, timeout, &meta.request_id).await {
        Ok(body) => body,
        Err(answer) => return logged(finish(shared, listener, upstream.name(), answer, meta), chain),
    };
    let mut response = proxy(shared, conn, &upstream, parts, body, meta, &mut chain).await;
    if chain.is_empty() {
        finish_in_place(shared, listener, upstream.name(), &mut response, meta);
        // No plugin is left to run `on_log` for, but one that failed open may be a rollout's candidate,
        // whose answers count (see `logged`).
        chain.answered(response.status().as_u16());
        return response;
    }
    // Plugins with response-side callbacks read and change the answer's fields as a map; for the others
    // (the bundled router and balancer) they stay raw, and the answer is not moved through the phase.
    if chain.sees_response() {
        crate::body::fields_as_map(&mut response);
        response = chain.response_headers(response, &meta.request_id).await;
    }
    if http_body::Body::is_end_stream(response.body()) {
        finish_in_place(shared, listener, upstream.name(), &mut response, meta);
        log_after_body(&mut response, chain);
        return response;
    }
    match BodyPipe::new(&chain, Direction::Response, timeout) {
        Some(pipe) => {
            let send_timeout = listener.config.send_timeout;
            let response = body::filter_response_body(chain, pipe, response, &meta.request_id, send_timeout).await;
            finish(shared, listener, upstream.name(), response, meta)
        }
        None => logged(finish(shared, listener, upstream.name(), response, meta), chain),
    }
}

/// Notes a plugin decision in the request's span, when it is recorded.
fn note_plugins(meta: &mut RequestMeta, note: impl FnOnce(&mut PluginDecisions)) {
    if let Some(span) = meta.span.as_mut() {
        note(&mut span.plugins);
    }
}

/// Runs the chain's `on_log` when the response body has been sent (or now, for a body already complete), and
/// counts the answer for plugins under a rollout.
fn logged(mut response: Response<ResponseBody>, chain: FilterChain) -> Response<ResponseBody> {
    log_after_body(&mut response, chain);
    response
}

/// [`logged`] on an answer in place (an answer is a few hundred bytes: not moved twice more per request).
fn log_after_body(response: &mut Response<ResponseBody>, mut chain: FilterChain) {
    chain.answered(response.status().as_u16());
    if chain.is_empty() {
        return;
    }
    match response.body_mut().guard_slot() {
        Some(slot) => {
            let inner = slot.take();
            *slot = Some(Box::new(ChainedGuard { chain: Some(chain), inner }));
        }
        None => chain.log(),
    }
}

/// Finishes the plugin chain after the guard it wraps.
struct ChainedGuard {
    chain: Option<FilterChain>,
    inner: Option<Box<dyn BodyGuard>>,
}

impl BodyGuard for ChainedGuard {
    fn finish(&mut self, ok: bool) {
        if let Some(mut inner) = self.inner.take() {
            inner.finish(ok);
        }
        if let Some(chain) = self.chain.take() {
            chain.log();
        }
    }
}

fn finish(
    shared: &Shared,
    listener: &ListenerRuntime,
    upstream: &str,
    mut response: Response<ResponseBody>,
    meta: &RequestMeta,
) -> Response<ResponseBody> {
    finish_in_place(shared, listener, upstream, &mut response, meta);
    response
}

/// Counts the answer, and names the request in it (`x-request-id`).
fn finish_in_place(
    shared: &Shared,
    listener: &ListenerRuntime,
    upstream: &str,
    response: &mut Response<ResponseBody>,
    meta: &RequestMeta,
) {
    let status = response.status().as_u16();
    let elapsed = crate::clock::now().saturating_duration_since(meta.start);
    let name = listener.config.name.as_str();
    shared.metrics.observe_request(name, upstream, status, Some(elapsed));
    match response.body_mut().raw_fields() {
        Some(raw) => raw.set_request_id(meta.request_id.clone()),
        None => {
            if let Ok(v) = HeaderValue::from_str(&meta.request_id) {
                response.headers_mut().insert(headers::X_REQUEST_ID.clone(), v);
            }
        }
    }
    tracing::debug!(trace_id = %meta.trace.trace_id, request_id = %meta.request_id, listener = name, upstream, status, elapsed_ms = elapsed.as_secs_f64() * 1000.0, "request");
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Releases the endpoint's request slot (its active count) when the response body ends.
struct EndpointRelease {
    _active: ActiveRequest,
    /// Closes the HTTP/1 connection the body reads (which gives it back to the pool itself when it ends), or
    /// drops the HTTP/2 stream.
    closer: Option<UpstreamCloser>,
}

impl BodyGuard for EndpointRelease {
    /// A body cut short, or abandoned by the send timeout while the client's side does not poll it, has its
    /// upstream connection closed (HTTP/1) or its stream dropped (HTTP/2) at once.
    fn finish(&mut self, ok: bool) {
        if let (false, Some(closer)) = (ok, self.closer.take()) {
            closer.close();
        }
    }
}

async fn proxy(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    held: &Held,
    parts: &mut Head,
    body: RequestBody,
    meta: &mut RequestMeta,
    chain: &mut FilterChain,
) -> Response<ResponseBody> {
    // The group, one pointer away rather than the handle's three; the handle is for taking a slot.
    let upstream: &Arc<Upstream> = held;
    if let Some(span) = meta.span.as_mut() {
        span.upstream = Some(Arc::clone(upstream));
    }
    // Only hyper's server can hand over an upgraded connection, and it marks the requests that ask for one
    // (`OnUpgrade`); Portico's own server hands those to it. So a request without the mark is not looked up
    // for `upgrade` and `connection` fields (a map lookup a request on the own server's path).
    let upgrade = parts.extensions.get::<hyper::upgrade::OnUpgrade>().is_some()
        && headers::is_upgrade_request(parts.version, &parts.headers);
    let client_upgrade = if upgrade {
        let mut probe = Request::from_parts(std::mem::replace(&mut **parts, Request::new(()).into_parts().0), ());
        let on_upgrade = hyper::upgrade::on(&mut probe);
        **parts = probe.into_parts().0;
        Some(on_upgrade)
    } else {
        None
    };
    let authority = parts.uri.authority().cloned();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::ensure_host(&mut parts.headers, parts.version, authority.as_ref());
    // The forwarding fields are written into the head as it goes upstream (see `h1::head::Added`).
    let traceparent = meta.trace.traceparent();
    let forwarded = ForwardedFor {
        client_ip: &conn.client_ip,
        tls: conn.tls,
        version: parts.version,
        traceparent: traceparent.as_bytes(),
        request_id: &meta.request_id,
    };
    if upgrade {
        parts.headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // Origin-form for the upstream; sharing the client's bytes, not copying them.
    let uri = parts.uri.path_and_query().cloned().map_or_else(|| Uri::from_static("/"), Uri::from);
    let bodiless = body.is_end_stream();
    let retryable = bodiless && is_idempotent(&parts.method) && !upgrade;
    let (body, client_body) = if bodiless { (RequestBody::empty(), None) } else { body.watched() };
    let mut body = Some(body);
    // The head as it goes upstream, kept (not copied) for another attempt; the client's version and target
    // are put back for the answer.
    let client_version = parts.version;
    parts.uri = uri;
    parts.version = match upstream.config.protocol {
        crate::config::UpstreamProtocol::H2 => Version::HTTP_2,
        crate::config::UpstreamProtocol::Http1 => Version::HTTP_11,
    };
    upstream.note_attempt();
    // On the stack: a request makes at most 1 + 10 attempts (`retries` is at most 10).
    let mut tried = arrayvec::ArrayVec::<usize, 11>::new();
    let max_attempts = if retryable { 1 + upstream.config.retries as usize } else { 1 };
    let mut last_error: (LocalError, Cow<'static, str>) =
        (LocalError::NoHealthyUpstream, Cow::Borrowed("no endpoint is available"));
    // A retry after a 502/503/504 answer takes its budget before that answer is dropped, so that when the
    // budget is spent the client gets the upstream's own answer rather than a generic 502.
    let mut retry_paid = false;
    for attempt in 0..max_attempts {
        if attempt > 0 {
            if !retry_paid && !upstream.allow_retry() {
                tracing::debug!(upstream = %upstream.name(), "retry budget exhausted");
                break;
            }
            retry_paid = false;
            shared.metrics.retries.with_label_values(&[upstream.name()]).inc();
        }
        let chosen = match chain.select_endpoint(parts, upstream, &tried, attempt as u32, &meta.request_id) {
            Ok(chosen) => chosen,
            Err(answer) => return *answer,
        };
        let Some(index) = chosen.or_else(|| upstream.pick(&tried)) else {
            last_error = (
                LocalError::NoHealthyUpstream,
                format!("upstream {:?} has no available endpoint", upstream.name()).into(),
            );
            break;
        };
        if tried.contains(&index) && attempt > 0 {
            // Only the endpoint that just failed is left; do not hammer it.
            break;
        }
        // Full only if `retries` were over its limit: the endpoint then goes unremembered, nothing worse.
        let _ = tried.try_push(index);
        let endpoint = &upstream.endpoints[index];
        let Ok(active) = held.acquire(index).await else {
            tracing::debug!(trace_id = %meta.trace.trace_id, endpoint = %endpoint.name, "no free connection (pool.max_connections)");
            last_error = (
                LocalError::NoHealthyUpstream,
                format!("upstream {:?} has no free connection", upstream.name()).into(),
            );
            continue;
        };
        chain.set_upstream_address(&endpoint.name);
        if let Some(log) = meta.log.as_mut() {
            log.attempt(upstream.name(), &endpoint.name);
        }
        // Each attempt is a span of its own when the request is recorded; the upstream sees it as its parent.
        let attempt_traceparent = meta.span.as_mut().map(|span| {
            span.plugins.picked_endpoint = chosen.is_some();
            meta.trace.traceparent_for(span.begin_attempt(index, parts.uri.path()))
        });
        let added = match &attempt_traceparent {
            Some(traceparent) => ForwardedFor { traceparent: traceparent.as_bytes(), ..forwarded }.fields(),
            None => forwarded.fields(),
        };
        let sent_at = crate::clock::now();
        let mut choice = ConnectionChoice::Pooled;
        let outcome = loop {
            let this_body =
                if retryable { RequestBody::empty() } else { body.take().unwrap_or_else(RequestBody::empty) };
            match crate::timeout::timeout(
                upstream.request_timeout(),
                upstream.send(index, parts, &added, this_body, choice),
            )
            .await
            {
                // The upstream closed the pooled connection as the request went out (its keep-alive timer
                // won the race). Not the endpoint's fault: an idempotent request goes again, once, on a new
                // connection, as nginx does. It costs neither an attempt nor the retry budget.
                Ok(Err(SendError::ReusedConnectionLost(e))) if retryable && choice == ConnectionChoice::Pooled => {
                    tracing::debug!(endpoint = %endpoint.name, error = %error_chain(&e), "pooled connection lost, sending again on a new one");
                    shared.metrics.pool_replays.with_label_values(&[upstream.name()]).inc();
                    choice = ConnectionChoice::New;
                }
                outcome => break outcome,
            }
        };
        if let Some(span) = meta.span.as_mut() {
            match &outcome {
                Err(_elapsed) => span.end_attempt(None, Some("timeout")),
                Ok(Err(e)) => span.end_attempt(None, Some(if e.is_connect() { "connect_error" } else { "send_error" })),
                Ok(Ok(response)) => span.end_attempt(Some(response.status().as_u16()), None),
            }
        }
        // Whose fault a failed exchange is: a client body that broke or stalled is the client's. It is answered
        // as such, is not retried, and does not count against the endpoint.
        let client_fault = |stalled: bool| {
            client_body.as_ref().and_then(|w| {
                if w.too_large() {
                    Some((LocalError::PayloadTooLarge, super::TOO_LARGE))
                } else if w.client_failed() {
                    Some((LocalError::BadRequest, "the request body could not be read"))
                } else if stalled && w.waiting_on_client() {
                    Some((LocalError::RequestTimeout, "the request body did not arrive in time"))
                } else {
                    None
                }
            })
        };
        // Client-facing details name the upstream group, never an endpoint address: those stay in the log.
        match outcome {
            Err(_elapsed) => {
                if let Some((error, detail)) = client_fault(true) {
                    tracing::debug!(trace_id = %meta.trace.trace_id, endpoint = %endpoint.name, detail, "client body stalled");
                    return error_response(error, detail, &meta.request_id);
                }
                upstream.report_failure(index, &shared.metrics);
                tracing::debug!(trace_id = %meta.trace.trace_id, request_id = %meta.request_id, endpoint = %endpoint.name, "upstream did not answer in time");
                return error_response(
                    LocalError::UpstreamTimeout,
                    &format!("upstream {:?} did not answer in time", upstream.name()),
                    &meta.request_id,
                );
            }
            Ok(Err(e)) => {
                if let Some((error, detail)) = client_fault(false) {
                    tracing::debug!(trace_id = %meta.trace.trace_id, endpoint = %endpoint.name, error = %error_chain(&e), "client body failed");
                    return match error {
                        LocalError::BadRequest => super::local::body_broken(detail, &meta.request_id),
                        error => error_response(error, detail, &meta.request_id),
                    };
                }
                if e.is_connect() {
                    shared.metrics.connect_errors.with_label_values(&[upstream.name()]).inc();
                }
                upstream.report_failure(index, &shared.metrics);
                tracing::debug!(trace_id = %meta.trace.trace_id, request_id = %meta.request_id, endpoint = %endpoint.name, error = %error_chain(&e), "upstream attempt failed");
                last_error =
                    (LocalError::UpstreamFailed, format!("upstream {:?}: {}", upstream.name(), e.summary()).into());
                continue;
            }
            Ok(Ok(mut response)) => {
                endpoint.record_latency(crate::clock::now().saturating_duration_since(sent_at));
                if let Some(log) = meta.log.as_mut() {
                    log.answered();
                }
                let status = response.status();
                if status.is_server_error() && client_fault(false).is_none() {
                    upstream.report_failure(index, &shared.metrics);
                } else {
                    upstream.report_success(index);
                }
                let gateway_error = matches!(status.as_u16(), 502..=504);
                if gateway_error && retryable && attempt + 1 < max_attempts && upstream.allow_retry() {
                    retry_paid = true;
                    last_error = (
                        LocalError::UpstreamFailed,
                        format!("upstream {:?} answered {}", upstream.name(), status).into(),
                    );
                    continue;
                }
                if status == http::StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_upgrade) = client_upgrade {
                        return tunnel::splice_upgrade(shared, conn, response, client_upgrade, client_version);
                    }
                    // A switch the client did not ask for (RFC 9110 §15.2.2: a server MUST NOT send one then).
                    // Passed on, a proxy in front of Portico would start tunnelling while Portico went on reading
                    // requests on the connection (smuggling through an unasked 101). The upstream connection is
                    // dropped with the answer.
                    let detail = "the upstream switched protocols the client did not ask for";
                    return error_response(LocalError::UpstreamFailed, detail, &meta.request_id);
                }
                // A body that came whole with its head has given its connection back already: the endpoint's slot
                // is free now, and nothing waits on the client.
                let release: Option<Box<dyn BodyGuard>> = if response.body().holds_upstream() {
                    Some(Box::new(EndpointRelease { _active: active, closer: response.body().closer() }))
                } else {
                    drop(active);
                    None
                };
                let upstream_version = response.version();
                match response.body_mut().raw_fields() {
                    // Hop-by-hop fields are left out as the raw fields are written.
                    Some(raw) => raw.add_via(headers::via_hop(upstream_version)),
                    None => {
                        headers::strip_hop_by_hop(response.headers_mut(), false);
                        headers::append_via(response.headers_mut(), upstream_version);
                    }
                }
                let (mut rparts, rbody) = response.into_parts();
                rparts.version = client_version;
                return Response::from_parts(rparts, ResponseBody::Upstream(rbody, release));
            }
        }
    }
    let (error, detail) = last_error;
    error_response(error, &detail, &meta.request_id)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
