//! Body callbacks on the data path: `proxy_on_request_body` in filter order, `proxy_on_response_body` in
//! reverse order, with Envoy's meaning of the returned action (PAUSE = StopIterationAndBuffer: hold the chunk,
//! call again with the grown buffer; CONTINUE = pass the possibly replaced buffer on to the next filter).
//!
//! Only plugins whose module exports the callback take part ([`portico_plugins::Plugin::handles_request_body`]);
//! a chain without any keeps the zero-copy streaming path untouched.
//!
//! Decisions, and why:
//! * **Request bodies are filtered before the upstream is connected**, and the result is sent as one buffer
//!   with its exact `content-length`. Portico's plugins route and balance, so a decision a plugin takes on the
//!   body (a WAF verdict, a route) comes before any upstream is chosen; a local answer or a failure never
//!   leaves a half-sent request behind; and the upstream never sees a body the plugin later rejects (in Envoy
//!   the headers are already upstream by then). The cost: such requests hold at most [`BODY_BUFFER_LIMIT`]
//!   bytes; a larger body is refused with 413.
//! * **Response bodies stream.** Chunks are filtered until the first bytes are ready to go to the client. If
//!   the whole body was seen by then, the client gets it with its exact `content-length` (and a local answer,
//!   a failure or an oversized buffer can still replace it with a JSON error); otherwise `content-length` is
//!   removed before the headers go out (hyper chunks HTTP/1.1), since a later chunk may change size, and the
//!   rest is pumped through the filters by a task. A failure after that point can only abort the body.
//! * A plugin that buffers more than [`BODY_BUFFER_LIMIT`] bytes fails the request: 413 for requests, 502 for
//!   responses whose headers are not sent yet, an aborted body otherwise.
//! * PAUSE at end of stream waits (bounded by the upstream's request timeout) for `proxy_continue_stream`
//!   from another callback, as header pauses do, then re-reads the body the plugin may have replaced.
//! * Trailers are not offered to plugins and are not forwarded on filtered bodies.

use super::chain::{closed, local_answer, FilterChain};
use super::rollout::request::failed_counted;
use crate::body::{BodyAborted, RequestBody, ResponseBody};
use crate::body::{ClientBody, ClientBodyError};
use crate::forward::local::{error_response, LocalError};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use portico_plugins::{FailureKind, FilterAction, PluginFailure, Resumption};
use std::time::Duration;
use tokio::sync::mpsc;

/// Most body bytes the plugins of one request may make Portico hold, per direction (1 MiB, as Envoy's default
/// per-connection buffer limit).
pub const BODY_BUFFER_LIMIT: usize = 1 << 20;

/// Which body a pipe filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream: filters in order.
    Request,
    /// Upstream to client: filters in reverse order.
    Response,
}

/// Why filtering a body stopped the request.
pub enum BodyStop {
    /// Answer with this (a plugin's local answer, a closed stream, a plugin failed closed); boxed, as the
    /// rare case.
    Respond(Box<Response<ResponseBody>>),
    /// More than [`BODY_BUFFER_LIMIT`] bytes would have been held.
    TooLarge,
}

impl BodyStop {
    /// The answer for the client while its response has not started.
    fn into_response(self, direction: Direction, request_id: &str) -> Response<ResponseBody> {
        match (self, direction) {
            (BodyStop::Respond(answer), _) => *answer,
            (BodyStop::TooLarge, Direction::Request) => error_response(
                LocalError::PayloadTooLarge,
                &format!("request body exceeds the {BODY_BUFFER_LIMIT} bytes plugins may buffer"),
                request_id,
            ),
            (BodyStop::TooLarge, Direction::Response) => error_response(
                LocalError::UpstreamFailed,
                &format!("response body exceeds the {BODY_BUFFER_LIMIT} bytes plugins may buffer"),
                request_id,
            ),
        }
    }
}

/// One body-filtering plugin: its index in the chain and what it asked to hold so far.
struct Stage {
    link: usize,
    held: Bytes,
}

/// The body filters of one direction, with their buffers.
pub struct BodyPipe {
    direction: Direction,
    stages: Vec<Stage>,
    pause_limit: Duration,
}

impl BodyPipe {
    /// The plugins of `chain` that export the direction's body callback, in the order the body meets them;
    /// `None` when there is none, so the caller keeps streaming. `pause_limit` bounds a pause at end of stream.
    pub fn new(chain: &FilterChain, direction: Direction, pause_limit: Duration) -> Option<BodyPipe> {
        let handles = |i: &usize| {
            let plugin = chain.links[*i].stream.plugin();
            match direction {
                Direction::Request => plugin.handles_request_body(),
                Direction::Response => plugin.handles_response_body(),
            }
        };
        // Asked for every request with plugins, and nearly always answered `None`: that is found out without
        // building the (empty) order.
        if !(0..chain.links.len()).any(|i| handles(&i)) {
            return None;
        }
        let mut order: Vec<usize> = (0..chain.links.len()).filter(handles).collect();
        if direction == Direction::Response {
            order.reverse();
        }
        let stages = order.into_iter().map(|link| Stage { link, held: Bytes::new() }).collect();
        Some(BodyPipe { direction, stages, pause_limit })
    }

    /// Runs one chunk through the filters and returns the bytes ready to forward (empty while a filter buffers).
    pub async fn push(
        &mut self,
        chain: &mut FilterChain,
        chunk: Bytes,
        end_of_stream: bool,
        request_id: &str,
    ) -> Result<Bytes, BodyStop> {
        let mut data = chunk;
        let mut i = 0;
        while i < self.stages.len() {
            let body = joined(std::mem::take(&mut self.stages[i].held), data);
            if body.len() > BODY_BUFFER_LIMIT {
                return Err(BodyStop::TooLarge);
            }
            let link = self.stages[i].link;
            let (outcome, body_after) = self.run(chain, link, body.clone(), end_of_stream).await;
            match outcome {
                Ok(FilterAction::Continue) => data = body_after,
                Ok(FilterAction::Pause) => {
                    self.stages[i].held = body_after;
                    return Ok(Bytes::new());
                }
                Ok(FilterAction::LocalResponse(local)) => {
                    return Err(BodyStop::Respond(Box::new(local_answer(local, request_id))));
                }
                Ok(FilterAction::Close) => {
                    return Err(BodyStop::Respond(Box::new(closed(chain.links[link].plugin(), request_id))))
                }
                Err(failure) => match failed_counted(&chain.rollouts, chain.links[link].plugin(), &failure, request_id)
                {
                    Some(answer) => return Err(BodyStop::Respond(Box::new(answer))),
                    None => {
                        // Fail open: the plugin is skipped for the rest of the request and its input passes on.
                        self.skip(chain, i);
                        data = body;
                        continue;
                    }
                },
            }
            i += 1;
        }
        Ok(data)
    }

    /// One body callback of the plugin at `link`; a PAUSE at end of stream waits for its resumption.
    async fn run(
        &self,
        chain: &mut FilterChain,
        link: usize,
        mut body: Bytes,
        end_of_stream: bool,
    ) -> (Result<FilterAction, PluginFailure>, Bytes) {
        let stream = &mut chain.links[link].stream;
        let action = match self.direction {
            Direction::Request => stream.on_request_body(&mut body, end_of_stream),
            Direction::Response => stream.on_response_body(&mut body, end_of_stream),
        };
        if !(end_of_stream && matches!(action, Ok(FilterAction::Pause))) {
            return (action, body);
        }
        let resumed = match tokio::time::timeout(self.pause_limit, stream.resumed()).await {
            Ok(resumed) => resumed,
            Err(_) => {
                let plugin = stream.plugin().name().to_string();
                let message = format!("paused body was not resumed within {:?}", self.pause_limit);
                return (Err(PluginFailure { plugin, kind: FailureKind::Timeout, message }), body);
            }
        };
        let action = match resumed {
            Resumption::Continue => {
                let reread = match self.direction {
                    Direction::Request => stream.request_body(),
                    Direction::Response => stream.response_body(),
                };
                match reread {
                    Ok(replaced) => body = replaced,
                    Err(failure) => return (Err(failure), body),
                }
                Ok(FilterAction::Continue)
            }
            Resumption::LocalResponse(local) => Ok(FilterAction::LocalResponse(local)),
            Resumption::Close => Ok(FilterAction::Close),
            Resumption::Failed(failure) => Err(failure),
        };
        (action, body)
    }

    /// Drops stage `i` and its plugin from the chain (fail open), keeping the other stages' indices right.
    fn skip(&mut self, chain: &mut FilterChain, i: usize) {
        let link = self.stages.remove(i).link;
        chain.links.remove(link);
        for stage in &mut self.stages {
            if stage.link > link {
                stage.link -= 1;
            }
        }
    }
}

/// `held` followed by `data`, copying only when both hold bytes.
fn joined(held: Bytes, data: Bytes) -> Bytes {
    if held.is_empty() {
        return data;
    }
    if data.is_empty() {
        return held;
    }
    let mut both = BytesMut::with_capacity(held.len() + data.len());
    both.extend_from_slice(&held);
    both.extend_from_slice(&data);
    both.freeze()
}

/// The next data chunk of a body and whether it is the last; trailers are skipped, the end is an empty last
/// chunk (the callback is told about the end of stream even when it carries no bytes).
async fn next_chunk<B>(body: &mut B) -> Result<(Bytes, bool), B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    loop {
        match body.frame().await {
            None => return Ok((Bytes::new(), true)),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok((data, body.is_end_stream()));
                }
            }
        }
    }
}

/// Runs the whole request body through the request body filters before the upstream is picked, and sets the
/// exact `content-length` of the result. Returns the body unchanged (still streaming) when no plugin of the
/// chain exports `proxy_on_request_body` or the request has no body.
pub async fn filter_request_body(
    chain: &mut FilterChain,
    parts: &mut http::request::Parts,
    body: ClientBody,
    timeout: Duration,
    request_id: &str,
) -> Result<RequestBody, Response<ResponseBody>> {
    if body.is_end_stream() {
        return Ok(RequestBody::Stream(body));
    }
    let Some(mut pipe) = BodyPipe::new(chain, Direction::Request, timeout) else {
        return Ok(RequestBody::Stream(body));
    };
    let filtered = match tokio::time::timeout(timeout, collect(&mut pipe, chain, body, request_id)).await {
        Ok(filtered) => filtered?,
        Err(_) => {
            let detail = format!("request body did not arrive within {timeout:?}");
            return Err(error_response(LocalError::RequestTimeout, &detail, request_id));
        }
    };
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(filtered.len()));
    Ok(RequestBody::Full(Some(filtered)))
}

/// Reads the request body to its end through the pipe; what the filters pass on is kept, up to the limit.
async fn collect(
    pipe: &mut BodyPipe,
    chain: &mut FilterChain,
    mut body: ClientBody,
    request_id: &str,
) -> Result<Bytes, Response<ResponseBody>> {
    let mut out = BytesMut::new();
    loop {
        let (chunk, eos) = next_chunk(&mut body).await.map_err(|e| match e {
            ClientBodyError::TooLarge => {
                error_response(LocalError::PayloadTooLarge, crate::forward::TOO_LARGE, request_id)
            }
            ClientBodyError::Read(e) => {
                crate::forward::local::body_broken(&format!("request body could not be read: {e}"), request_id)
            }
        })?;
        let passed = pipe
            .push(chain, chunk, eos, request_id)
            .await
            .map_err(|stop| stop.into_response(Direction::Request, request_id))?;
        if out.len() + passed.len() > BODY_BUFFER_LIMIT {
            return Err(BodyStop::TooLarge.into_response(Direction::Request, request_id));
        }
        out.extend_from_slice(&passed);
        if eos {
            return Ok(out.freeze());
        }
    }
}

/// Runs the response body through the response body filters (the chain must have some, see [`BodyPipe::new`])
/// and answers the client; the chain's `on_log` runs when the body is done.
pub async fn filter_response_body(
    mut chain: FilterChain,
    mut pipe: BodyPipe,
    response: Response<ResponseBody>,
    request_id: &str,
    send_timeout: Duration,
) -> Response<ResponseBody> {
    let (mut parts, mut body) = response.into_parts();
    loop {
        let (chunk, eos) = match next_chunk(&mut body).await {
            Ok(next) => next,
            Err(e) => {
                let detail = format!("upstream response body failed: {e}");
                let answer = error_response(LocalError::UpstreamFailed, &detail, request_id);
                chain.answered(answer.status().as_u16());
                chain.log();
                return answer;
            }
        };
        let passed = match pipe.push(&mut chain, chunk, eos, request_id).await {
            Ok(passed) => passed,
            Err(stop) => {
                let answer = stop.into_response(Direction::Response, request_id);
                chain.answered(answer.status().as_u16());
                chain.log();
                return answer;
            }
        };
        if eos {
            chain.answered(parts.status.as_u16());
            chain.log();
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(passed.len()));
            return Response::from_parts(parts, ResponseBody::full(passed));
        }
        if !passed.is_empty() {
            // The headers go out now and later chunks may change size: let the transport frame the body.
            parts.headers.remove(header::CONTENT_LENGTH);
            chain.answered(parts.status.as_u16());
            let rx = spawn_pump(chain, pipe, body, passed, request_id.to_string(), send_timeout);
            return Response::from_parts(parts, ResponseBody::Filtered(rx, None));
        }
    }
}

/// Filters the rest of a response body on its own task, feeding the client through a small channel (so a
/// slow client slows the upstream read). Runs the chain's `on_log` at the end.
///
/// A client that takes nothing for `send_timeout` (the listener's) loses the body: the upstream body is dropped
/// (its connection closed, its pool slot released) and the client is left an abort to find when it reads again.
fn spawn_pump(
    mut chain: FilterChain,
    mut pipe: BodyPipe,
    mut body: ResponseBody,
    first: Bytes,
    request_id: String,
    send_timeout: Duration,
) -> mpsc::Receiver<Result<Bytes, BodyAborted>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let tx = SendTimeout { tx, timeout: send_timeout, timed_out: false };
        let mut tx = tx;
        if tx.send(Ok(first)).await {
            pump(&mut chain, &mut pipe, &mut body, &mut tx, &request_id).await;
        }
        drop(body);
        chain.log();
        if tx.timed_out {
            tracing::debug!(request_id, ?send_timeout, "send timeout: the client took nothing of a filtered response body; its upstream connection is released");
            // Only the channel is left: the client meets the abort when (if) it reads again.
            let _ = tx.tx.send(Err(BodyAborted("send timeout".into()))).await;
        }
    });
    rx
}

/// The pump's side of the channel, with the send timeout.
struct SendTimeout {
    tx: mpsc::Sender<Result<Bytes, BodyAborted>>,
    timeout: Duration,
    timed_out: bool,
}

impl SendTimeout {
    /// False when the client went away or took nothing for the send timeout.
    async fn send(&mut self, item: Result<Bytes, BodyAborted>) -> bool {
        match tokio::time::timeout(self.timeout, self.tx.send(item)).await {
            Ok(sent) => sent.is_ok(),
            Err(_elapsed) => {
                self.timed_out = true;
                false
            }
        }
    }
}

async fn pump(
    chain: &mut FilterChain,
    pipe: &mut BodyPipe,
    body: &mut ResponseBody,
    tx: &mut SendTimeout,
    request_id: &str,
) {
    loop {
        let next = tokio::select! {
            _ = tx.tx.closed() => return,
            next = next_chunk(body) => next,
        };
        let (chunk, eos) = match next {
            Ok(next) => next,
            Err(e) => {
                tx.send(Err(BodyAborted(format!("upstream response body failed: {e}")))).await;
                return;
            }
        };
        match pipe.push(chain, chunk, eos, request_id).await {
            Ok(passed) => {
                if !passed.is_empty() && !tx.send(Ok(passed)).await {
                    return;
                }
            }
            Err(stop) => {
                let why = match stop {
                    BodyStop::Respond(answer) => {
                        format!("a plugin answered {} after the response started", answer.status())
                    }
                    BodyStop::TooLarge => format!("plugins buffered more than {BODY_BUFFER_LIMIT} bytes"),
                };
                tracing::warn!(request_id, reason = %why, "aborting the response body");
                tx.send(Err(BodyAborted(why))).await;
                return;
            }
        }
        if eos {
            return;
        }
    }
}
