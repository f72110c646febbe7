//! HTTP callouts: `proxy_http_call` (started by [`crate::HostServices::http_call`], answered through the
//! [`crate::CalloutResponder`]), `proxy_get_status`, and the gRPC calls Portico does not support (statuses the
//! SDKs handle without panicking).

use std::time::Duration;

use bytes::Bytes;
use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::callout::{CalloutResponder, HttpCallRejected, HttpCallRequest};
use crate::codec;
use crate::memory::{self as mem, Ctx};
use crate::request_head::MapRef;
use crate::store::CalloutOwner;

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_http_call", |mut c: Ctx<'_>,
                                    up: i32,
                                    un: i32,
                                    hp: i32,
                                    hn: i32,
                                    bp: i32,
                                    bn: i32,
                                    tp: i32,
                                    tn: i32,
                                    timeout: i32,
                                    ret: i32|
     -> Result<i32> {
        let upstream = mem::read_str(&mut c, up, un, "proxy_http_call")?;
        let hraw = mem::read(&mut c, hp, hn, "proxy_http_call")?;
        let body = mem::read(&mut c, bp, bn, "proxy_http_call")?;
        let traw = mem::read(&mut c, tp, tn, "proxy_http_call")?;
        mem::check(&mut c, ret, 4, "proxy_http_call")?;
        let (Some(headers), Some(trailers)) = (codec::deserialize_map(&hraw), codec::deserialize_map(&traw)) else {
            return Ok(BAD_ARGUMENT);
        };
        for required in [":method", ":path", ":authority"] {
            if MapRef::List(&headers).get(required.as_bytes()).is_none() {
                return Ok(BAD_ARGUMENT);
            }
        }
        let st = c.data();
        let core = st.core.clone();
        let token = core.next_token();
        let owner = CalloutOwner { slot: st.slot, generation: st.generation, context: st.current };
        core.callouts.lock().insert(token, owner);
        if let Some(s) = c.data_mut().streams.get_mut(owner.context) {
            s.called_out = true;
        }
        let request = HttpCallRequest {
            plugin: core.name.clone(),
            token,
            upstream,
            headers,
            body: Bytes::from(body),
            trailers,
            timeout: Duration::from_millis(u64::from(timeout as u32)),
            responder: CalloutResponder::new(core.callout_sink.clone(), token),
        };
        match core.services.http_call(request) {
            Ok(()) => {
                mem::write_u32(&mut c, ret, token, "proxy_http_call")?;
                Ok(OK)
            }
            Err(e) => {
                core.callouts.lock().remove(&token);
                tracing::debug!(plugin = %core.name, error = %e, "proxy_http_call refused");
                Ok(match e {
                    HttpCallRejected::UnknownUpstream(_) => BAD_ARGUMENT,
                    HttpCallRejected::Internal(_) => INTERNAL_FAILURE,
                })
            }
        }
    });
    wrap!(l, E, "proxy_get_status", |mut c: Ctx<'_>, rcode: i32, rp: i32, rs: i32| -> Result<i32> {
        let code = match c.data().callout.as_ref() {
            Some(co) => MapRef::List(&co.headers)
                .get(b":status")
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u32>().ok())
                .unwrap_or(0),
            None => return Ok(NOT_FOUND),
        };
        mem::write_u32(&mut c, rcode, code, "proxy_get_status")?;
        mem::return_bytes(&mut c, &[], rp, rs, "proxy_get_status")
    });
    // gRPC callouts are not supported by Portico's HostServices: statuses the SDKs handle without panicking.
    wrap!(l, E, "proxy_grpc_call", |c: Ctx<'_>,
                                    _a: i32,
                                    _b: i32,
                                    _d: i32,
                                    _e: i32,
                                    _f: i32,
                                    _g: i32,
                                    _h: i32,
                                    _i: i32,
                                    _j: i32,
                                    _k: i32,
                                    _t: i32,
                                    _r: i32|
     -> i32 {
        tracing::warn!(plugin = %c.data().plugin_name(), "proxy_grpc_call is not supported");
        INTERNAL_FAILURE
    });
    wrap!(l, E, "proxy_grpc_stream", |c: Ctx<'_>,
                                      _a: i32,
                                      _b: i32,
                                      _d: i32,
                                      _e: i32,
                                      _f: i32,
                                      _g: i32,
                                      _h: i32,
                                      _i: i32,
                                      _r: i32|
     -> i32 {
        tracing::warn!(plugin = %c.data().plugin_name(), "proxy_grpc_stream is not supported");
        INTERNAL_FAILURE
    });
    wrap!(l, E, "proxy_grpc_send", |_c: Ctx<'_>, _t: i32, _p: i32, _n: i32, _e: i32| -> i32 { NOT_FOUND });
    wrap!(l, E, "proxy_grpc_cancel", |_c: Ctx<'_>, _t: i32| -> i32 { NOT_FOUND });
    wrap!(l, E, "proxy_grpc_close", |_c: Ctx<'_>, _t: i32| -> i32 { NOT_FOUND });
    Ok(())
}
