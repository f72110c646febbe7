//! The response's headers as plugins see them: a list of (name, value) with `:status` first, built from the
//! proxy's `http` parts for a phase and written back only when a plugin changed it. Each worker thread keeps
//! spent lists and refills their strings' buffers instead of allocating two strings per header per phase.
//! (The request's head is lent to plugins and read in place: [`portico_plugins::HttpStream::on_request_head`].)

use super::spares;
use http::{HeaderName, HeaderValue, StatusCode};

thread_local! {
    /// Several lists: concurrent requests on the worker each hold one during their response phase.
    static SPARE_LISTS: std::cell::RefCell<Vec<Vec<(String, String)>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bigger lists are dropped rather than kept for the next request.
const SPARE_LIST_MAX_BYTES: usize = 16 * 1024;

/// A list to fill, kept from an earlier request if there is one.
pub(super) fn take_spare_list() -> Vec<(String, String)> {
    spares::take(&SPARE_LISTS).unwrap_or_default()
}

/// Keeps `list` for a later request unless it grew large.
pub(super) fn return_spare_list(list: Vec<(String, String)>) {
    if list.capacity() == 0 {
        return;
    }
    let bytes: usize = list.iter().map(|(n, v)| n.capacity() + v.capacity()).sum();
    if bytes <= SPARE_LIST_MAX_BYTES {
        spares::keep(&SPARE_LISTS, list);
    }
}

/// Sets entry `i` of `out` to `name: value`, reusing the entry's buffers.
fn put(out: &mut Vec<(String, String)>, i: usize, name: &str, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => put_str(out, i, name, text),
        Err(_) => put_str(out, i, name, &String::from_utf8_lossy(value)),
    }
}

/// [`put`] for a value that is text already (the pseudo-headers): no second UTF-8 check.
fn put_str(out: &mut Vec<(String, String)>, i: usize, name: &str, value: &str) {
    if i == out.len() {
        out.push((String::new(), String::new()));
    }
    let (n, v) = &mut out[i];
    n.clear();
    n.push_str(name);
    v.clear();
    v.push_str(value);
}

pub(super) fn response_to_abi(parts: &http::response::Parts, out: &mut Vec<(String, String)>) {
    put_str(out, 0, ":status", parts.status.as_str());
    let mut i = 1;
    for (name, value) in &parts.headers {
        put(out, i, name.as_str(), value.as_bytes());
        i += 1;
    }
    out.truncate(i);
}

pub(super) fn apply_response(parts: &mut http::response::Parts, headers: &[(String, String)]) {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        match name.as_str() {
            ":status" => {
                if let Some(status) = value.parse::<u16>().ok().and_then(|s| StatusCode::from_u16(s).ok()) {
                    parts.status = status;
                }
            }
            n if n.starts_with(':') => {}
            n => append(&mut map, n, value),
        }
    }
    parts.headers = map;
}

fn append(map: &mut http::HeaderMap, name: &str, value: &str) {
    match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
        (Ok(n), Ok(v)) => {
            map.append(n, v);
        }
        _ => tracing::debug!(header = name, "plugin left a header that is not valid HTTP; dropped"),
    }
}
