//! The request path: from a parsed client request to a response. Reverse proxying lives in [`reverse`],
//! forward proxying (absolute-form and CONNECT) in [`forward_proxy`], protocol upgrades and tunnels in
//! [`tunnel`]; header rewriting in [`headers`]; locally made answers in [`local`].

pub mod destination;
pub mod forward_proxy;
pub mod headers;
pub mod local;
pub mod request_head;
pub mod request_path;
pub mod reverse;
pub mod tunnel;

use crate::body::ClientBody;
use crate::body::ResponseBody;
use crate::config::file::ListenerMode;
use crate::listen::ConnInfo;
use crate::server::Shared;
use crate::telemetry::span::RequestSpan;
use crate::trace_context::{RequestId, RequestIds, TraceContext};
use http::{Request, Response};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

/// What every stage of one request knows about it.
#[derive(Debug)]
pub struct RequestMeta {
    /// When the request head arrived.
    pub start: Instant,
    /// W3C trace context for this hop.
    pub trace: TraceContext,
    /// `x-request-id` returned to the client.
    pub request_id: RequestId,
    /// The request's spans, when traces are exported and it is sampled: stages note what they decided and
    /// each upstream attempt; it is handed to the exporter when the response head is ready.
    pub span: Option<Box<RequestSpan>>,
    /// The request's access log line, when its listener logs: the reverse path notes which endpoint answered.
    pub log: Option<crate::access_log::Pending>,
}

/// The detail of a 413 for a body larger than the listener's `max_request_body`.
pub(crate) const TOO_LARGE: &str = "the request body is larger than the listener's max_request_body";

/// hyper's service entry point for client requests on any listener.
pub async fn handle(
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    mut req: Request<ClientBody>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = crate::clock::now();
    let (traceparent, given_id) = headers::id_fields(req.headers());
    let RequestIds { mut trace, request_id } = RequestIds::new(traceparent, given_id);
    let listener = conn.settings();
    let span = shared.telemetry.start(&mut trace, start, &req, conn, &listener);
    let log = listener.access_log.as_ref().map(|log| log.begin(&req, conn, start, &request_id, &trace.trace_id));
    let mut meta = RequestMeta { start, trace, request_id, span, log };
    let in_flight = conn.activity.begin();
    let refusal = if req.version() <= http::Version::HTTP_11 && conn.guard.next_request_is_refused() {
        tracing::warn!(trace_id = %meta.trace.trace_id, peer = %conn.peer, "refused request: framing the smuggling guard cannot trust (CL+TE, a transfer coding other than chunked, a head too large to check, or bytes it could not follow)");
        Some((
            local::LocalError::BadRequest,
            "request framing refused: both Content-Length and Transfer-Encoding, a transfer coding other than chunked, a head too large to check, or an earlier request on the connection that could not be framed",
        ))
    } else if conn.activity.cancelled_too_many() {
        Some((
            local::LocalError::TooManyCancels,
            "this connection cancelled too many requests and is closing: open a new one",
        ))
    } else if let Some(limit) = listener.config.max_request_body {
        let body = std::mem::replace(req.body_mut(), ClientBody::Empty);
        match body.capped(limit, req.version() <= http::Version::HTTP_11) {
            Ok(capped) => {
                *req.body_mut() = capped;
                None
            }
            Err(_) => {
                tracing::debug!(trace_id = %meta.trace.trace_id, peer = %conn.peer, limit, "refused request: body larger than max_request_body");
                Some((local::LocalError::PayloadTooLarge, TOO_LARGE))
            }
        }
    } else {
        None
    };
    if let Some((error, detail)) = refusal {
        let mut response = local::error_response(error, detail, &meta.request_id);
        shared.metrics.observe_request(&listener.config.name, "", response.status().as_u16(), None);
        in_flight.refused();
        let _whole = logged(&mut meta, &mut response);
        in_flight.attach(response.body_mut());
        traced(shared, &mut meta, &response);
        return Ok(response);
    }
    let mut response = match listener.config.mode {
        ListenerMode::Forward => forward_proxy::handle(shared, conn, &listener, req, &meta).await,
        ListenerMode::Reverse => {
            // The head is lent down the request path rather than moved through it (each move copied its
            // 224 bytes); its box and map go back to the thread's spares at the end (see `h1::maps`).
            let (parts, body) = req.into_parts();
            let mut parts = crate::h1::maps::GivenBack::new(parts);
            let (paths, underscores) = (listener.config.paths, listener.config.underscores);
            match request_head::check_reverse(parts.head(), paths, underscores) {
                Ok(()) => reverse::handle(shared, conn, &listener, parts.head(), body, &mut meta).await,
                Err(refused) => {
                    tracing::debug!(trace_id = %meta.trace.trace_id, peer = %conn.peer, detail = refused.detail, "request head refused");
                    shared.metrics.observe_request(&listener.config.name, "", 400, None);
                    local::error_response(refused.error, refused.detail, &meta.request_id)
                }
            }
        }
    };
    if response.status().is_client_error() {
        if response.extensions().get::<crate::body::BodyBroken>().is_some() {
            in_flight.broken_by_client();
        } else {
            in_flight.refused();
        }
    }
    let sent = logged(&mut meta, &mut response);
    in_flight.attach(response.body_mut());
    conn.activity.watch_send(response.body_mut());
    if let Some(sent) = sent {
        sent.count(response.body_mut());
    }
    traced(shared, &mut meta, &response);
    Ok(response)
}

/// Hands the request's line to its listener's access log, written once the response has gone out (see
/// [`crate::access_log::AccessLog`]'s `finish` for where its guards go).
fn logged(meta: &mut RequestMeta, response: &mut Response<ResponseBody>) -> Option<crate::access_log::Sent> {
    meta.log.take().and_then(|pending| pending.finish(response))
}

/// Ends the request's server span at its response head and hands it to the exporter (never waiting).
fn traced(shared: &Shared, meta: &mut RequestMeta, response: &Response<ResponseBody>) {
    if let Some(mut span) = meta.span.take() {
        span.finish(response.status().as_u16());
        shared.telemetry.submit(span);
    }
}
