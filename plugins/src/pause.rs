//! Pausing and resuming a stream. A phase returns [`FilterAction::Pause`] when the guest stops the stream and
//! has not continued it during the callback; [`HttpStream::resumed`] then waits for the resumption another
//! callback of the same instance posts (`proxy_continue_stream`, `proxy_send_local_response`,
//! `proxy_close_stream`, or the instance failing). While it waits on the instance's owner thread it also runs
//! the work that other threads left for that instance (a callout answered elsewhere), so a pause never waits
//! for a ticker.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;

use crate::abi::{MAP_REQUEST_HEADERS, MAP_RESPONSE_HEADERS};
use crate::context::{Routed, StreamSignal};
use crate::error::{FailureKind, PluginFailure};
use crate::request_head::{Head, HeadView, MapRef};
use crate::stream::HttpStream;
use crate::types::{FilterAction, HeaderMap, Resumption};

impl HttpStream {
    /// The stream's signal, made on first use.
    fn signal(&mut self) -> Result<Arc<StreamSignal>, PluginFailure> {
        if let Some(signal) = &self.signal {
            return Ok(signal.clone());
        }
        let signal = self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.signal().clone()))?;
        self.signal = Some(signal.clone());
        Ok(signal)
    }

    /// Wait until a paused stream is resumed by an out-of-band callback (`proxy_continue_stream`,
    /// `proxy_send_local_response`, `proxy_close_stream` from `on_http_call_response`, a tick or a queue).
    /// Holds no lock; wrap it in `tokio::time::timeout` to bound the pause.
    pub async fn resumed(&mut self) -> Resumption {
        let signal = match self.signal() {
            Ok(signal) => signal,
            Err(failure) => return Resumption::Failed(failure),
        };
        let (plugin, i) = (&self.handle.plugin, self.slot);
        let mail = &plugin.slots[i].mail;
        loop {
            let mut woken = pin!(signal.notify.notified());
            let mut delivered = pin!(mail.notified());
            // Interest is registered before looking, so a post in between is not missed.
            woken.as_mut().enable();
            delivered.as_mut().enable();
            plugin.dispatch_slot(i);
            if let Some(r) = signal.state.lock().take() {
                return r;
            }
            std::future::poll_fn(|cx| {
                if woken.as_mut().poll(cx).is_ready() || delivered.as_mut().poll(cx).is_ready() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// Non-blocking check for a resumption posted since the last callback.
    pub fn try_resumed(&mut self) -> Option<Resumption> {
        self.handle.plugin.dispatch_slot(self.slot);
        let signal = self.signal().ok()?;
        let r = signal.state.lock().take();
        r
    }

    /// Current request headers as the plugin left them (re-read after a resumption).
    pub fn request_headers(&mut self) -> Result<HeaderMap, PluginFailure> {
        let (headers, routed, preselected) = self.with_instance(|inst, ctx| {
            let s = inst.stream(ctx)?;
            let headers = s.map(MAP_REQUEST_HEADERS).map(MapRef::to_list).unwrap_or_default();
            Ok((headers, s.routed_upstream.get().map(Routed::new), s.selected_upstream.get().is_some()))
        })?;
        // The callback that resumed the stream may have routed it.
        (self.routed, self.preselected) = (routed, preselected);
        Ok(headers)
    }

    /// Current response headers as the plugin left them.
    pub fn response_headers(&mut self) -> Result<HeaderMap, PluginFailure> {
        self.with_instance(|inst, ctx| {
            Ok(inst.stream(ctx)?.map(MAP_RESPONSE_HEADERS).map(MapRef::to_list).unwrap_or_default())
        })
    }

    /// The request body as the plugin left it: re-read after a body callback that paused at end of stream was
    /// resumed, since the plugin may have replaced it (`proxy_set_buffer_bytes`) from another callback.
    pub fn request_body(&mut self) -> Result<Bytes, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.request_body.clone()))
    }

    /// The response body as the plugin left it (see [`HttpStream::request_body`]).
    pub fn response_body(&mut self) -> Result<Bytes, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.response_body.clone()))
    }

    /// Request headers callback plus, on `Pause`, waiting for the resumption; returns Continue (with `headers`
    /// refreshed), LocalResponse or Close — never Pause.
    pub async fn run_request_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        let action = self.on_request_headers(headers, end_of_stream)?;
        self.finish_pause(action, true, |list| *headers = list).await
    }

    /// [`HttpStream::run_request_headers`] with the caller's head lent and read in place (see
    /// [`HttpStream::on_request_head`]); after a resumption the head is what the plugin left.
    pub async fn run_request_head(
        &mut self,
        head: &mut Head,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        match self.on_request_head(head, end_of_stream)? {
            FilterAction::Pause => self.resume_request_head(head).await,
            action => Ok(action),
        }
    }

    /// The second half of [`HttpStream::run_request_head`], for a caller that ran
    /// [`HttpStream::on_request_head`] itself and got `Pause`: waits for the resumption and leaves the head as
    /// the plugin did. (Most callbacks do not pause; a caller that tries the callback first builds no future
    /// for them.)
    pub async fn resume_request_head(&mut self, head: &mut Head) -> Result<FilterAction, PluginFailure> {
        self.finish_pause(FilterAction::Pause, true, |list| head.apply(&list)).await
    }

    /// Response-side twin of [`HttpStream::run_request_headers`].
    pub async fn run_response_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        let action = self.on_response_headers(headers, end_of_stream)?;
        self.finish_pause(action, false, |list| *headers = list).await
    }

    /// After a phase: on `Pause`, waits for the resumption; on Continue the request's (or the response's)
    /// headers as the plugin left them go to `refresh`, which puts them in the caller's.
    async fn finish_pause(
        &mut self,
        action: FilterAction,
        request: bool,
        refresh: impl FnOnce(HeaderMap),
    ) -> Result<FilterAction, PluginFailure> {
        if action != FilterAction::Pause {
            return Ok(action);
        }
        // Without a limit, a plugin that never resumed held the request, and its connection, for as long as
        // the client waited. (A paused body is bounded by the upstream's `request_timeout` instead.)
        let limit = self.plugin().pause_timeout;
        let Ok(resumed) = tokio::time::timeout(limit, self.resumed()).await else {
            let core = &self.plugin().core;
            core.metrics.failures.with_label_values(&[core.name.as_str(), FailureKind::Timeout.as_str()]).inc();
            return Err(core.failure(FailureKind::Timeout, format!("paused headers were not resumed within {limit:?}")));
        };
        match resumed {
            Resumption::Continue => {
                refresh(if request { self.request_headers()? } else { self.response_headers()? });
                self.changed = true;
                Ok(FilterAction::Continue)
            }
            Resumption::LocalResponse(r) => Ok(FilterAction::LocalResponse(r)),
            Resumption::Close => Ok(FilterAction::Close),
            Resumption::Failed(f) => Err(f),
        }
    }
}
