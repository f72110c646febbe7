//! Properties: `proxy_get_property`, `proxy_set_property`. The Envoy-style attributes (`request.*`,
//! `source.*`, `plugin_*`, ...), the upstream-selection extension's `portico.*` names, and values set by the
//! host or the plugin.

use std::time::UNIX_EPOCH;

use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::candidates::group_version;
use crate::context::StreamState;
use crate::memory::{self as mem, Ctx, Hot};
use crate::store::HostState;
use crate::types::TrafficDirection;

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_get_property", |mut c: Ctx<'_>, pp: i32, pn: i32, rp: i32, rs: i32| -> Result<i32> {
        const WHAT: &str = "proxy_get_property";
        let mut path = std::mem::take(&mut c.data_mut().scratch_path);
        let key = match mem::hot_property_path(&c, pp, pn, WHAT)? {
            Some((_, dotted)) => dotted,
            None => {
                mem::read_property_path(&c, pp, pn, WHAT, &mut path)?;
                &path[..]
            }
        };
        let r = mem::return_scratch(&mut c, rp, rs, WHAT, |st, out| {
            get_property(st, key, out).then_some(()).ok_or(NOT_FOUND)
        });
        c.data_mut().scratch_path = path;
        r
    });
    wrap!(l, E, "proxy_set_property", |mut c: Ctx<'_>, pp: i32, pn: i32, vp: i32, vn: i32| -> Result<i32> {
        const WHAT: &str = "proxy_set_property";
        // A routing or balancing choice, made on every request: stored straight from guest memory.
        let choice = match mem::hot_property_path(&c, pp, pn, WHAT)? {
            Some((Hot::Selected, _)) => Some(true),
            Some((Hot::Route, _)) => Some(false),
            _ => None,
        };
        if let Some(selected) = choice {
            let stored = mem::with_bytes_and_state(&mut c, vp, vn, WHAT, |value, st| {
                let Some(s) = st.streams.get_mut(st.current) else { return false };
                let made = if selected { &mut s.selected_upstream } else { &mut s.routed_upstream };
                made.set(value);
                true
            })?;
            if stored {
                return Ok(OK);
            }
        }
        let st = c.data_mut();
        let (mut path, mut value) = (std::mem::take(&mut st.scratch_path), std::mem::take(&mut st.scratch_value));
        mem::read_property_path(&c, pp, pn, WHAT, &mut path)?;
        mem::read_into(&c, vp, vn, WHAT, &mut value)?;
        let st = c.data_mut();
        let name = || String::from_utf8_lossy(&path).into_owned();
        if let Some(s) = st.streams.get_mut(st.current) {
            match path.as_slice() {
                b"portico.upstream.selected" => s.selected_upstream.set(&value),
                b"portico.route.upstream" => s.routed_upstream.set(&value),
                _ => {
                    s.properties.insert(name(), value.clone());
                }
            }
        } else {
            st.root_properties.insert(name(), value.clone());
        }
        (st.scratch_path, st.scratch_value) = (path, value);
        Ok(OK)
    });
    Ok(())
}

/// Where the per-candidate load properties start: `portico.upstream.active_requests.<address>` and
/// `portico.upstream.latency_us.<address>`.
const LOAD_PREFIX: &[u8] = b"portico.upstream.";

/// `portico.upstream.active_requests.<address>` or `portico.upstream.latency_us.<address>` during an upstream
/// selection, when the address is a candidate. A balancer that compares a few endpoints' loads (power of two
/// choices) reads two of these instead of the whole candidate list.
fn candidate_load(s: &StreamState, path: &[u8]) -> Option<i64> {
    let source = s.select.source.as_ref().filter(|_| s.select.active)?;
    let rest = path.strip_prefix(LOAD_PREFIX)?;
    if let Some(address) = rest.strip_prefix(b"active_requests.") {
        return source.load(std::str::from_utf8(address).ok()?).map(|l| i64::from(l.active_requests));
    }
    let address = std::str::from_utf8(rest.strip_prefix(b"latency_us.")?).ok()?;
    source.load(address).map(|l| i64::try_from(l.latency.as_micros()).unwrap_or(i64::MAX))
}

/// Resolve a property path (segments already joined with '.') into `out`; false when there is no such
/// property. The request's parts come from its pseudo-headers as the plugin sees them now, the rest from the
/// request's facts, read only here.
fn get_property(st: &HostState, path: &[u8], out: &mut Vec<u8>) -> bool {
    // Appends a value and says it was found.
    let mut put = |bytes: &[u8]| {
        out.extend_from_slice(bytes);
        true
    };
    let int = |v: i64| v.to_le_bytes();
    let core = &st.core;
    match path {
        b"plugin_name" => return put(core.name.as_bytes()),
        b"plugin_root_id" => return put(core.root_id.as_bytes()),
        b"plugin_vm_id" => return put(core.vm_id.as_bytes()),
        b"node.id" => return put(core.services.node_id().as_bytes()),
        _ => {}
    }
    let Some(s) = st.streams.get(st.current) else {
        let root = std::str::from_utf8(path).ok().and_then(|p| st.root_properties.get(p));
        return root.is_some_and(|v| put(v));
    };
    let facts = s.facts.as_deref();
    let request = |name: &str| s.map(MAP_REQUEST_HEADERS).and_then(|m| m.get(name.as_bytes()));
    let select = &s.select;
    let selecting = select.active;
    let found = match path {
        b"request.path" => request(":path").is_some_and(&mut put),
        b"request.url_path" => request(":path").is_some_and(|p| put(p.split(|b| *b == b'?').next().unwrap_or(b""))),
        b"request.query" => {
            request(":path").is_some_and(|p| put(p.iter().position(|b| *b == b'?').map_or(&b""[..], |at| &p[at + 1..])))
        }
        b"request.method" => request(":method").is_some_and(&mut put),
        b"request.host" => request(":authority").is_some_and(&mut put),
        b"request.scheme" => request(":scheme").is_some_and(&mut put),
        b"request.protocol" => facts.is_some_and(|f| put(f.protocol().as_bytes())),
        b"request.id" => facts
            .and_then(|f| f.request_id())
            .map(str::as_bytes)
            .or_else(|| request("x-request-id"))
            .filter(|id| !id.is_empty())
            .is_some_and(&mut put),
        b"request.time" => facts
            .and_then(|f| f.start_time())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .is_some_and(|d| put(&int(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))),
        b"source.address" => facts.and_then(|f| f.source_address()).is_some_and(|a| put(a.to_string().as_bytes())),
        b"source.port" => facts.and_then(|f| f.source_address()).is_some_and(|a| put(&int(i64::from(a.port())))),
        b"destination.address" => {
            facts.and_then(|f| f.destination_address()).is_some_and(|a| put(a.to_string().as_bytes()))
        }
        b"destination.port" => {
            facts.and_then(|f| f.destination_address()).is_some_and(|a| put(&int(i64::from(a.port()))))
        }
        b"listener_direction" => put(&int(facts.map_or(TrafficDirection::Inbound, |f| f.direction()) as i64)),
        b"response.code" => s
            .map(MAP_RESPONSE_HEADERS)
            .and_then(|m| m.get(b":status"))
            .and_then(|c| std::str::from_utf8(c).ok()?.parse::<i64>().ok())
            .is_some_and(|c| put(&int(c))),
        b"portico.upstream" => selecting && put(select.group.as_bytes()),
        b"portico.upstream.candidates" => {
            selecting && select.source.as_ref().is_some_and(|x| put(&crate::codec::encode_candidates(&x.candidates())))
        }
        b"portico.upstream.candidates_version" => {
            selecting
                && select.source.as_ref().is_some_and(|x| put(&group_version(&select.group, x.version()).to_le_bytes()))
        }
        b"portico.upstream.failed" => selecting && select.failed.as_deref().is_some_and(|v| put(v.as_bytes())),
        b"portico.upstream.selected" => s.selected_upstream.get().is_some_and(|v| put(v.as_bytes())),
        b"portico.route.upstream" => s.routed_upstream.get().is_some_and(|v| put(v.as_bytes())),
        _ if path.starts_with(LOAD_PREFIX) => candidate_load(s, path).is_some_and(|v| put(&int(v))),
        _ => [
            (&b"request.headers."[..], MAP_REQUEST_HEADERS),
            (b"response.headers.", MAP_RESPONSE_HEADERS),
            (b"response.trailers.", MAP_RESPONSE_TRAILERS),
        ]
        .into_iter()
        .find_map(|(prefix, t)| s.map(t)?.get(path.strip_prefix(prefix)?))
        .is_some_and(&mut put),
    };
    if found {
        return true;
    }
    // Names set by the plugin or the host: only these need the path as text.
    let Ok(path) = std::str::from_utf8(path) else { return false };
    s.properties.get(path).is_some_and(|v| put(v))
        || facts.and_then(|f| f.property(path)).is_some_and(&mut put)
        || st.root_properties.get(path).is_some_and(|v| put(v))
}
