//! Properties: `proxy_get_property`, `proxy_set_property`. The Envoy-style attributes (`request.*`,
//! `source.*`, `plugin_*`, ...), the upstream-selection extension's `portico.*` names, and values set by the
//! host or the plugin.

use std::time::UNIX_EPOCH;

use wasmtime::Result;

use super::headers::header_get;
use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::candidates::{address_hash, candidate_fingerprint};
use crate::memory::{self as mem, Ctx};
use crate::store::{HostState, StreamState};

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_get_property", |mut c: Ctx<'_>, pp: i32, pn: i32, rp: i32, rs: i32| -> Result<i32> {
        const WHAT: &str = "proxy_get_property";
        let mut path = std::mem::take(&mut c.data_mut().scratch_key);
        mem::read_property_path(&c, pp, pn, WHAT, &mut path)?;
        let r = mem::return_scratch(&mut c, rp, rs, WHAT, |st, out| {
            if get_property(st, &path, out) {
                Ok(())
            } else {
                Err(NOT_FOUND)
            }
        });
        c.data_mut().scratch_key = path;
        r
    });
    wrap!(l, E, "proxy_set_property", |mut c: Ctx<'_>, pp: i32, pn: i32, vp: i32, vn: i32| -> Result<i32> {
        const WHAT: &str = "proxy_set_property";
        let st = c.data_mut();
        let (mut path, mut value) = (std::mem::take(&mut st.scratch_key), std::mem::take(&mut st.scratch_value));
        mem::read_property_path(&c, pp, pn, WHAT, &mut path)?;
        mem::read_into(&c, vp, vn, WHAT, &mut value)?;
        let st = c.data_mut();
        if let Some(s) = st.streams.get_mut(&st.current) {
            match path.as_str() {
                "portico.upstream.selected" => set_choice(&mut s.selected_upstream, &value),
                "portico.route.upstream" => set_choice(&mut s.routed_upstream, &value),
                _ => {
                    s.properties.insert(path.clone(), value.clone());
                }
            }
        } else {
            st.root_properties.insert(path.clone(), value.clone());
        }
        (st.scratch_key, st.scratch_value) = (path, value);
        Ok(OK)
    });
    Ok(())
}

/// A routing or balancing choice a plugin set (`portico.route.upstream`, `portico.upstream.selected`): the
/// value trimmed; empty clears it. The string's buffer is reused when the choice is already set.
fn set_choice(choice: &mut Option<String>, value: &[u8]) {
    let text = String::from_utf8_lossy(value);
    let text = text.trim();
    match choice {
        _ if text.is_empty() => *choice = None,
        Some(current) => {
            current.clear();
            current.push_str(text);
        }
        None => *choice = Some(text.to_string()),
    }
}

/// What a plugin reads as `portico.upstream.candidates_version`: the set's version mixed with the group's
/// name, so that two groups offering the same endpoints still differ and a balancer can find its tables by
/// the version alone, without reading the group's name too (one hostcall and one allocation fewer per pick).
fn group_version(group: &str, set_version: u64) -> u64 {
    candidate_fingerprint(address_hash(group), 0) ^ set_version
}

/// Where the per-candidate load properties start: `portico.upstream.active_requests.<address>` and
/// `portico.upstream.latency_us.<address>`.
const LOAD_PREFIX: &str = "portico.upstream.";

/// `portico.upstream.active_requests.<address>` or `portico.upstream.latency_us.<address>` during an upstream
/// selection, when the address is a candidate. A balancer that compares a few endpoints' loads (power of two
/// choices) reads two of these instead of the whole candidate list.
fn candidate_load(s: &StreamState, path: &str) -> Option<i64> {
    let select = s.select.as_ref()?;
    let rest = path.strip_prefix(LOAD_PREFIX)?;
    if let Some(address) = rest.strip_prefix("active_requests.") {
        return select.source.load(address).map(|l| i64::from(l.active_requests));
    }
    let address = rest.strip_prefix("latency_us.")?;
    select.source.load(address).map(|l| i64::try_from(l.latency.as_micros()).unwrap_or(i64::MAX))
}

/// Resolve a property path (segments already joined with '.') into `out`; false when there is no such
/// property.
fn get_property(st: &HostState, path: &str, out: &mut Vec<u8>) -> bool {
    // Appends a value and says it was found.
    let mut put = |bytes: &[u8]| {
        out.extend_from_slice(bytes);
        true
    };
    let int = |v: i64| v.to_le_bytes();
    let core = &st.core;
    match path {
        "plugin_name" => return put(core.name.as_bytes()),
        "plugin_root_id" => return put(core.root_id.as_bytes()),
        "plugin_vm_id" => return put(core.vm_id.as_bytes()),
        "node.id" => return put(core.services.node_id().as_bytes()),
        _ => {}
    }
    let Some(s) = st.streams.get(&st.current) else {
        return st.root_properties.get(path).is_some_and(|v| put(v));
    };
    let info = &s.info;
    let request = |name: &str| header_get(&s.request_headers, name);
    let path_value = || request(":path").unwrap_or(&info.path);
    let found = match path {
        "request.path" => put(path_value().as_bytes()),
        "request.url_path" => put(path_value().split('?').next().unwrap_or("").as_bytes()),
        "request.query" => put(path_value().split_once('?').map(|(_, q)| q).unwrap_or("").as_bytes()),
        "request.method" => put(request(":method").unwrap_or(&info.method).as_bytes()),
        "request.host" => put(request(":authority").unwrap_or(&info.authority).as_bytes()),
        "request.scheme" => put(request(":scheme").unwrap_or(&info.scheme).as_bytes()),
        "request.protocol" => put(info.protocol.as_bytes()),
        "request.id" => {
            let id = if info.request_id.is_empty() { request("x-request-id").unwrap_or("") } else { &info.request_id };
            !id.is_empty() && put(id.as_bytes())
        }
        "request.time" => info
            .start_time
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|d| put(&int(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))),
        "source.address" => info.source_address.is_some_and(|a| put(a.to_string().as_bytes())),
        "source.port" => info.source_address.is_some_and(|a| put(&int(i64::from(a.port())))),
        "destination.address" => info.destination_address.is_some_and(|a| put(a.to_string().as_bytes())),
        "destination.port" => info.destination_address.is_some_and(|a| put(&int(i64::from(a.port())))),
        "listener_direction" => put(&int(info.direction as i64)),
        "response.code" => {
            header_get(&s.response_headers, ":status").and_then(|c| c.parse::<i64>().ok()).is_some_and(|c| put(&int(c)))
        }
        "portico.upstream" => s.select.as_ref().is_some_and(|x| put(x.group.as_bytes())),
        "portico.upstream.candidates" => {
            s.select.as_ref().is_some_and(|x| put(&crate::codec::encode_candidates(&x.source.candidates())))
        }
        "portico.upstream.candidates_version" => {
            s.select.as_ref().is_some_and(|x| put(&group_version(&x.group, x.source.version()).to_le_bytes()))
        }
        "portico.upstream.failed" => {
            s.select.as_ref().and_then(|x| x.failed.as_deref()).is_some_and(|v| put(v.as_bytes()))
        }
        "portico.upstream.selected" => s.selected_upstream.as_deref().is_some_and(|v| put(v.as_bytes())),
        "portico.route.upstream" => s.routed_upstream.as_deref().is_some_and(|v| put(v.as_bytes())),
        _ if path.starts_with(LOAD_PREFIX) => candidate_load(s, path).is_some_and(|v| put(&int(v))),
        _ => [
            ("request.headers.", &s.request_headers),
            ("response.headers.", &s.response_headers),
            ("response.trailers.", &s.response_trailers),
        ]
        .into_iter()
        .find_map(|(prefix, map)| header_get(map, path.strip_prefix(prefix)?))
        .is_some_and(|v| put(v.as_bytes())),
    };
    found
        || s.properties.get(path).is_some_and(|v| put(v))
        || info.properties.iter().find(|(k, _)| k == path).is_some_and(|(_, v)| put(v))
        || st.root_properties.get(path).is_some_and(|v| put(v))
}
