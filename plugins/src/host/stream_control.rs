//! Stream control: resuming or resetting a paused stream (`proxy_continue_stream`, `proxy_close_stream`, and
//! the 0.1.0-era `proxy_continue_request/_response`), answering locally (`proxy_send_local_response`),
//! switching the context hostcalls act on (`proxy_set_effective_context`), `proxy_done`,
//! `proxy_clear_route_cache`.
//!
//! During the stream's own callback these only record the decision, which the phase then returns; from another
//! callback (a callout answer, a tick, a queue) they post it to the paused stream's signal.

use bytes::Bytes;
use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::codec;
use crate::memory::{self as mem, Ctx};
use crate::types::{LocalResponse, Resumption};

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    fn cont(c: &mut Ctx<'_>) -> i32 {
        if let Some(s) = c.data_mut().stream() {
            if s.in_band {
                s.continued = true;
            } else {
                s.post(Resumption::Continue);
            }
            OK
        } else {
            NOT_FOUND
        }
    }
    fn close(c: &mut Ctx<'_>) -> i32 {
        if let Some(s) = c.data_mut().stream() {
            s.close = true;
            if !s.in_band {
                s.post(Resumption::Close);
            }
            OK
        } else {
            NOT_FOUND
        }
    }
    wrap!(l, E, "proxy_continue_stream", |mut c: Ctx<'_>, t: i32| -> i32 {
        if t != STREAM_HTTP_REQUEST && t != STREAM_HTTP_RESPONSE {
            return BAD_ARGUMENT;
        }
        cont(&mut c)
    });
    wrap!(l, E, "proxy_close_stream", |mut c: Ctx<'_>, t: i32| -> i32 {
        if t != STREAM_HTTP_REQUEST && t != STREAM_HTTP_RESPONSE {
            return BAD_ARGUMENT;
        }
        close(&mut c)
    });
    wrap!(l, E, "proxy_continue_request", |mut c: Ctx<'_>| -> i32 { cont(&mut c) });
    wrap!(l, E, "proxy_continue_response", |mut c: Ctx<'_>| -> i32 { cont(&mut c) });
    // Portico computes the route after the plugin's header phase, so there is no cached route to clear.
    wrap!(l, E, "proxy_clear_route_cache", |_c: Ctx<'_>| -> i32 { OK });
    wrap!(l, E, "proxy_done", |_c: Ctx<'_>| -> i32 { OK });
    wrap!(l, E, "proxy_set_effective_context", |mut c: Ctx<'_>, id: i32| -> i32 {
        let st = c.data_mut();
        let id = id as u32;
        if id == st.root_context || st.streams.contains(id) {
            st.current = id;
            OK
        } else {
            BAD_ARGUMENT
        }
    });
    wrap!(l, E, "proxy_send_local_response", |mut c: Ctx<'_>,
                                              code: i32,
                                              dp: i32,
                                              dn: i32,
                                              bp: i32,
                                              bn: i32,
                                              hp: i32,
                                              hn: i32,
                                              grpc: i32|
     -> Result<i32> {
        let details = mem::read_str(&mut c, dp, dn, "proxy_send_local_response")?;
        let body = mem::read(&mut c, bp, bn, "proxy_send_local_response")?;
        let raw = mem::read(&mut c, hp, hn, "proxy_send_local_response")?;
        let Some(headers) = codec::deserialize_map(&raw) else { return Ok(BAD_ARGUMENT) };
        let Ok(status) = u16::try_from(code) else { return Ok(BAD_ARGUMENT) };
        if !(100..=999).contains(&status) {
            return Ok(BAD_ARGUMENT);
        }
        // Pseudo-headers are not response headers: the status is the `code` argument. Plugins built for Envoy
        // pass `:status` among the extra headers (Google's Service Extensions local-reply sample does).
        let resp = LocalResponse {
            status,
            headers: headers
                .into_iter()
                .filter(|(k, _)| !k.starts_with(':'))
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            body: Bytes::from(body),
            grpc_status: (grpc >= 0).then_some(grpc),
            details,
        };
        let Some(s) = c.data_mut().stream() else { return Ok(NOT_FOUND) };
        if s.in_band {
            s.local_response = Some(resp);
        } else {
            s.post(Resumption::LocalResponse(resp));
        }
        Ok(OK)
    });
    Ok(())
}
