//! A request's filter chain: the plugins its listener names, each with a stream context for this request.
//! Requests meet them in order, responses in reverse order. A plugin may answer itself, rewrite headers
//! (including `:path`, `:authority`, `:method`, `:status`), choose the upstream group (routing) and the endpoint
//! (balancing). A plugin that fails is handled by its `fail` policy: closed answers 503, open skips it for the
//! rest of this request.

use super::header_list::{apply_response, response_to_abi, return_spare_list, take_spare_list};
use super::rollout::request::failed_counted;
use super::rollout::{Rollout, Version};
use super::spares;
use super::PluginSlot;
use crate::config::paths::PathRules;
use crate::forward::local::{error_response, LocalError};
use crate::forward::request_head::resolve_path;
use crate::listen::ConnInfo;
use crate::trace_context::RequestId;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use portico_plugins::{
    FailPolicy, FilterAction, HttpStream, LocalResponse, Plugin, PluginFailure, RequestFacts, TrafficDirection,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// A response a plugin phase answers with instead of going on (boxed: it is the rare path).
pub type Refusal = Box<Response<crate::body::ResponseBody>>;

/// One plugin's part in a request: its stream, which also names the plugin version and its failure policy.
/// (The stream counts its reference on the worker's own [`portico_plugins::PluginHandle`]; a link holds no
/// other shared reference, so opening a chain touches no reference count another worker also touches.)
pub(super) struct Link {
    pub(super) stream: HttpStream,
}

impl Link {
    pub(super) fn plugin(&self) -> &Plugin {
        self.stream.plugin()
    }
}

/// What the request path does after a chain phase.
pub enum Verdict {
    /// Go on with the (possibly rewritten) request or response.
    Continue,
    /// Answer with this instead (boxed: the rare case, so that the common one is a word, not an answer's
    /// two hundred bytes, as it is passed back).
    Respond(Box<Response<crate::body::ResponseBody>>),
}

/// The streams of one request, in filter order.
#[derive(Default)]
pub struct FilterChain {
    pub(super) links: Vec<Link>,
    /// The versions this request met of plugins under a rollout, to count its outcome for the guards.
    pub(super) rollouts: Vec<(Arc<Rollout>, Version)>,
    /// When the chain started (only kept when `rollouts` is not empty).
    pub(super) started: Option<Instant>,
    /// The request's facts, shared with its streams: kept to be reused by a later request on this worker once
    /// every stream has let go of them.
    facts: Option<Arc<ChainFacts>>,
}

/// What plugins may ask about a request beyond its headers (`request.id`, `source.address`, ...): copied from
/// what the connection and the request already hold, and read only when a guest asks for such a property.
struct ChainFacts {
    peer: SocketAddr,
    local: SocketAddr,
    /// The request's id as the proxy holds it (one it made is 32 bytes inline: no allocation per request).
    request_id: RequestId,
    version: http::Version,
    start: Instant,
}

impl RequestFacts for ChainFacts {
    fn request_id(&self) -> Option<&str> {
        Some(&self.request_id)
    }
    fn protocol(&self) -> &str {
        crate::forward::headers::protocol_name(self.version)
    }
    fn start_time(&self) -> Option<SystemTime> {
        SystemTime::now().checked_sub(self.start.elapsed())
    }
    fn source_address(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
    fn destination_address(&self) -> Option<SocketAddr> {
        Some(self.local)
    }
    fn direction(&self) -> TrafficDirection {
        TrafficDirection::Inbound
    }
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.links.iter().map(|l| l.plugin().name())).finish()
    }
}

impl FilterChain {
    /// Opens a stream on the current version of each named plugin (or the version a rollout chose). Its
    /// context is made by its first callback, whose failure that phase handles by the plugin's policy, so
    /// opening the chain cannot fail.
    pub fn start(
        filters: &[String],
        plugins: &crate::config::ByName<Arc<PluginSlot>>,
        parts: &http::request::Parts,
        conn: &ConnInfo,
        request_id: &RequestId,
    ) -> FilterChain {
        let mut chain = FilterChain::default();
        if filters.is_empty() {
            return chain;
        }
        let (links, spare_facts) = spares::take(&SPARE_CHAINS).unwrap_or_default();
        chain.links = links;
        chain.links.reserve(filters.len());
        // One set shared by every plugin of the chain; the method, path, authority and scheme are the
        // pseudo-headers plugins read anyway.
        let made = ChainFacts {
            peer: conn.peer,
            local: conn.local,
            request_id: request_id.clone(),
            version: parts.version,
            start: crate::clock::now(),
        };
        // Only facts no stream held any more were kept, so the spare is this chain's alone.
        let facts = match spare_facts {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                Some(mine) => {
                    *mine = made;
                    spare
                }
                None => Arc::new(made),
            },
            None => Arc::new(made),
        };
        chain.facts = Some(facts.clone());
        let facts: Arc<dyn RequestFacts> = facts;
        for name in filters {
            let Some(slot) = plugins.get(name) else { continue };
            let handle = match chain.choose_version(slot, parts, conn.peer) {
                Some(Version::Candidate) => chain.rollouts.last().map(|(r, _)| r.candidate_handle()),
                _ => None,
            };
            let handle = handle.unwrap_or_else(|| slot.handle());
            chain.links.push(Link { stream: handle.into_stream(facts.clone()) });
        }
        chain
    }

    /// Whether any plugin has a callback that runs once the answer is known (and so could read its fields;
    /// see [`portico_plugins::Plugin::handles_response`]).
    pub fn sees_response(&self) -> bool {
        self.links.iter().any(|l| l.stream.plugin().handles_response())
    }

    /// Whether any plugin takes part.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Runs the request headers through every plugin that takes part (see
    /// [`Plugin::handles_request_headers`]) and applies their rewrites to `parts`. The head is lent to each
    /// plugin and read in place: no header list is built unless a plugin changes the headers (see
    /// [`HttpStream::on_request_head`]). A path a plugin rewrote is resolved again by the listener's `paths`
    /// before the next plugin or the upstream reads it (a router's `strip_prefix` of `/api` from
    /// `/api../admin` leaves `/../admin`; see [`crate::forward::request_path`]).
    pub async fn request_headers(
        &mut self,
        parts: &mut portico_plugins::Head,
        end_of_stream: bool,
        request_id: &str,
        paths: PathRules,
    ) -> Verdict {
        let takes_part = |l: &Link| l.plugin().handles_request_headers();
        if !self.links.iter().any(takes_part) {
            return Verdict::Continue;
        }
        let mut i = 0;
        while i < self.links.len() {
            let link = &mut self.links[i];
            if !takes_part(link) {
                i += 1;
                continue;
            }
            // The callback runs here; only a stream that paused gets a future to wait in.
            let action = match link.stream.on_request_head(parts, end_of_stream) {
                Ok(FilterAction::Pause) => link.stream.resume_request_head(parts).await,
                done => done,
            };
            match action {
                Ok(FilterAction::Continue | FilterAction::Pause) => {
                    if link.stream.data_changed() {
                        if let Err(refused) = resolve_path(parts, paths) {
                            let answer = error_response(refused.error, refused.detail, request_id);
                            return Verdict::Respond(Box::new(answer));
                        }
                    }
                    i += 1;
                }
                Ok(FilterAction::LocalResponse(local)) => {
                    return Verdict::Respond(Box::new(local_answer(local, request_id)))
                }
                Ok(FilterAction::Close) => return Verdict::Respond(Box::new(closed(link.plugin(), request_id))),
                Err(failure) => match failed_counted(&self.rollouts, link.plugin(), &failure, request_id) {
                    Some(answer) => return Verdict::Respond(Box::new(answer)),
                    None => {
                        self.links.remove(i);
                    }
                },
            }
        }
        Verdict::Continue
    }

    /// The upstream group a routing plugin chose; later plugins override earlier ones. Kept by each stream
    /// since its request headers phase, so this reads no plugin instance, cannot fail and copies nothing.
    pub fn routed_upstream(&self) -> Option<&str> {
        self.links.iter().rev().find_map(|l| l.stream.routed_upstream())
    }

    /// Asks the chain's balancing plugins (those with `portico_on_upstream_select`, or that chose in their
    /// request headers callback) for an endpoint of `upstream`: the first plugin that decides wins.
    /// `Ok(None)` means no plugin decided and native balancing applies. The plugins read the request as it
    /// goes upstream (`parts`), lent to them in place.
    pub fn select_endpoint(
        &mut self,
        parts: &mut portico_plugins::Head,
        upstream: &Arc<Upstream>,
        tried: &[usize],
        attempt: u32,
        request_id: &str,
    ) -> Result<Option<usize>, Refusal> {
        if self.links.is_empty() || !upstream.any_available() {
            return Ok(None);
        }
        // Shared by every plugin in the chain; the list itself is built only if a plugin reads it.
        let offered = upstream.offered();
        let failed_address = tried.last().map(|&i| upstream.endpoints[i].name.as_str());
        let mut i = 0;
        while i < self.links.len() {
            let link = &mut self.links[i];
            if !(link.plugin().selects_upstream() || link.stream.preselected()) {
                i += 1;
                continue;
            }
            match link.stream.select_endpoint_for(parts, upstream.name(), &offered, attempt, failed_address) {
                Ok(Some(index)) => return Ok(Some(index)),
                Ok(None) => i += 1,
                Err(failure) => {
                    if let Some(answer) = failed_counted(&self.rollouts, link.plugin(), &failure, request_id) {
                        return Err(Box::new(answer));
                    }
                    self.links.remove(i);
                }
            }
        }
        Ok(None)
    }

    /// Tells the plugins which endpoint the request went to (`upstream.address`). Only plugins with a
    /// response-side callback could read it, so only they are told.
    pub fn set_upstream_address(&mut self, address: &str) {
        for link in &mut self.links {
            if link.stream.plugin().handles_response() {
                let _ = link.stream.set_property("upstream.address", address.as_bytes().to_vec());
            }
        }
    }

    /// Runs the response headers through the plugins in reverse order and applies their rewrites.
    pub async fn response_headers(
        &mut self,
        response: Response<crate::body::ResponseBody>,
        request_id: &str,
    ) -> Response<crate::body::ResponseBody> {
        // A plugin with no response-side callback (the bundled router and balancer) never sees the response:
        // no header list is built for it, no lock taken.
        if !self.sees_response() {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let end_of_stream = http_body::Body::is_end_stream(&body);
        let mut headers = take_spare_list();
        response_to_abi(&parts, &mut headers);
        let mut changed = false;
        let mut i = self.links.len();
        while i > 0 {
            i -= 1;
            let link = &mut self.links[i];
            if !link.stream.plugin().handles_response() {
                continue;
            }
            let result = link.stream.run_response_headers(&mut headers, end_of_stream).await;
            changed |= link.stream.data_changed();
            match result {
                Ok(FilterAction::Continue | FilterAction::Pause) => {}
                Ok(FilterAction::LocalResponse(local)) => return local_answer(local, request_id),
                Ok(FilterAction::Close) => return closed(link.plugin(), request_id),
                Err(failure) => {
                    if let Some(answer) = failed_counted(&self.rollouts, link.plugin(), &failure, request_id) {
                        return answer;
                    }
                    self.links.remove(i);
                }
            }
        }
        if changed {
            apply_response(&mut parts, &headers);
        }
        return_spare_list(headers);
        Response::from_parts(parts, body)
    }

    /// `proxy_on_done`/`proxy_on_log` for every plugin, then the streams are deleted. Called once the response
    /// has been handed over (or the request abandoned).
    pub fn log(mut self) {
        for link in &mut self.links {
            if let Err(failure) = link.stream.on_log() {
                tracing::warn!(plugin = %failure.plugin, error = %failure, "plugin failed in on_log");
            }
        }
        // The streams go first (deleting their contexts, which let go of the facts), then their list and the
        // facts are kept for the next request.
        let mut links = std::mem::take(&mut self.links);
        links.clear();
        let facts = self.facts.take().and_then(|mut facts| Arc::get_mut(&mut facts).is_some().then_some(facts));
        if links.capacity() > 0 || facts.is_some() {
            spares::keep(&SPARE_CHAINS, (links, facts));
        }
    }
}

impl crate::body::BodyGuard for FilterChain {
    fn finish(&mut self, _ok: bool) {
        std::mem::take(self).log();
    }
}

/// Applies the plugin's failure policy: `Some(503)` when it fails closed, `None` to skip it.
pub(super) fn failed(
    plugin: &Plugin,
    failure: &PluginFailure,
    request_id: &str,
) -> Option<Response<crate::body::ResponseBody>> {
    let name = plugin.name();
    if plugin.fail_policy() == FailPolicy::Closed {
        tracing::warn!(plugin = %name, kind = %failure.kind, error = %failure.message, request_id, "plugin failed; failing the request closed");
        Some(error_response(LocalError::PluginFailed, &format!("plugin {name} failed ({})", failure.kind), request_id))
    } else {
        tracing::warn!(plugin = %name, kind = %failure.kind, error = %failure.message, request_id, "plugin failed; skipping it (fail open)");
        None
    }
}

/// The answer when a plugin closed the stream (`proxy_close_stream`): 503 and the connection closes.
pub(super) fn closed(plugin: &Plugin, request_id: &str) -> Response<crate::body::ResponseBody> {
    let mut answer =
        error_response(LocalError::PluginFailed, &format!("plugin {} closed the stream", plugin.name()), request_id);
    answer.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// A plugin's `proxy_send_local_response`, with the request id.
pub(super) fn local_answer(local: LocalResponse, request_id: &str) -> Response<crate::body::ResponseBody> {
    let mut answer = Response::new(crate::body::ResponseBody::full(Bytes::clone(&local.body)));
    *answer.status_mut() = StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &local.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            answer.headers_mut().append(n, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        answer.headers_mut().insert(crate::forward::headers::X_REQUEST_ID.clone(), v);
    }
    answer
}

/// A chain's link list and facts, kept for the next request on the thread (see `SPARE_CHAINS`).
type SpareChain = (Vec<Link>, Option<Arc<ChainFacts>>);

thread_local! {
    /// Link lists and request facts kept between requests on this worker thread, together: a request with
    /// plugins allocated both (two allocations and two frees of ~100 instructions each), and keeping them as
    /// one pair takes one visit to the thread's spares at each end of a request rather than two.
    static SPARE_CHAINS: std::cell::RefCell<Vec<SpareChain>> = const { std::cell::RefCell::new(Vec::new()) };
}
