//! Buffers: request and response bodies, a callout's answer, the VM and plugin configuration
//! (`proxy_get_buffer_bytes`, `proxy_get_buffer_status`, `proxy_set_buffer_bytes`, and the 0.1.0-era
//! `proxy_get_configuration`). Reads clamp instead of failing: the Rust SDK asks for `(0, usize::MAX)`.

use bytes::Bytes;
use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::memory::{self as mem, Ctx};

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_get_configuration", |mut c: Ctx<'_>, rp: i32, rs: i32| -> Result<i32> {
        let cfg = c.data().core.config.clone();
        mem::return_bytes(&mut c, &cfg, rp, rs, "proxy_get_configuration")
    });
    wrap!(l, E, "proxy_get_buffer_bytes", |mut c: Ctx<'_>,
                                           t: i32,
                                           start: i32,
                                           max: i32,
                                           rp: i32,
                                           rs: i32|
     -> Result<i32> {
        let (buf, _) = match c.data().buffer(t) {
            Ok(b) => b,
            Err(s) => return Ok(s),
        };
        // Clamp instead of BAD_ARGUMENT: the Rust SDK asks for (0, usize::MAX) and panics on errors.
        let start = (start as u32 as usize).min(buf.len());
        let end = start.saturating_add(max as u32 as usize).min(buf.len());
        mem::return_bytes(&mut c, &buf[start..end], rp, rs, "proxy_get_buffer_bytes")
    });
    wrap!(l, E, "proxy_get_buffer_status", |mut c: Ctx<'_>, t: i32, rlen: i32, rflags: i32| -> Result<i32> {
        let (buf, eos) = match c.data().buffer(t) {
            Ok(b) => b,
            Err(s) => return Ok(s),
        };
        mem::write_u32(&mut c, rlen, buf.len() as u32, "proxy_get_buffer_status")?;
        mem::write_u32(&mut c, rflags, u32::from(eos), "proxy_get_buffer_status")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_set_buffer_bytes", |mut c: Ctx<'_>,
                                           t: i32,
                                           start: i32,
                                           size: i32,
                                           p: i32,
                                           n: i32|
     -> Result<i32> {
        let data = mem::read(&mut c, p, n, "proxy_set_buffer_bytes")?;
        let st = c.data_mut();
        let target = match (t, st.callout.as_mut()) {
            (BUF_HTTP_CALL_RESPONSE_BODY, Some(co)) => &mut co.body,
            (BUF_HTTP_CALL_RESPONSE_BODY, None) => return Ok(NOT_FOUND),
            _ => {
                let Some(s) = st.stream() else { return Ok(NOT_FOUND) };
                match t {
                    BUF_REQUEST_BODY => &mut s.request_body,
                    BUF_RESPONSE_BODY => &mut s.response_body,
                    2..=8 => return Ok(NOT_FOUND),
                    _ => return Ok(BAD_ARGUMENT),
                }
            }
        };
        // Splice [start, start+size) with the new bytes (covers Envoy's prepend/replace/append cases).
        let start = (start as u32 as usize).min(target.len());
        let end = start.saturating_add(size as u32 as usize).min(target.len());
        let mut out = Vec::with_capacity(target.len() - (end - start) + data.len());
        out.extend_from_slice(&target[..start]);
        out.extend_from_slice(&data);
        out.extend_from_slice(&target[end..]);
        *target = Bytes::from(out);
        Ok(OK)
    });
    Ok(())
}
