//! Header maps: `proxy_get/set_header_map_pairs`, `proxy_get_header_map_size`, and the single-value calls
//! (`get`, `add`, `replace`, `remove`). Keys are lowercased on write and matched case-insensitively; names and
//! values with CR, LF or NUL are refused.

use wasmtime::Result;

use super::{status, wrap, Imports, ENV};
use crate::abi::*;
use crate::codec;
use crate::memory::{self as mem, Ctx};
use crate::types::HeaderMap;

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_get_header_map_pairs", |mut c: Ctx<'_>, t: i32, rp: i32, rs: i32| -> Result<i32> {
        let bytes = match c.data().map(t) {
            Ok(Some(m)) => m.serialize(),
            Ok(None) => codec::serialize_map(&[]),
            Err(s) => return Ok(s),
        };
        mem::return_bytes(&mut c, &bytes, rp, rs, "proxy_get_header_map_pairs")
    });
    wrap!(l, E, "proxy_get_header_map_size", |mut c: Ctx<'_>, t: i32, rs: i32| -> Result<i32> {
        let size = match c.data().map(t) {
            Ok(Some(m)) => m.serialized_size(),
            Ok(None) => 4,
            Err(s) => return Ok(s),
        };
        mem::write_u32(&mut c, rs, size as u32, "proxy_get_header_map_size")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_set_header_map_pairs", |mut c: Ctx<'_>, t: i32, p: i32, n: i32| -> Result<i32> {
        let raw = mem::read(&mut c, p, n, "proxy_set_header_map_pairs")?;
        let Some(pairs) = codec::deserialize_map(&raw) else { return Ok(BAD_ARGUMENT) };
        if !pairs.iter().all(|(k, v)| valid_header(k, v)) {
            return Ok(BAD_ARGUMENT);
        }
        let st = c.data_mut();
        Ok(status(st.map_mut(t).map(|m| {
            *m = pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        })))
    });
    wrap!(l, E, "proxy_get_header_map_value", |mut c: Ctx<'_>,
                                               t: i32,
                                               kp: i32,
                                               kn: i32,
                                               rp: i32,
                                               rs: i32|
     -> Result<i32> {
        const WHAT: &str = "proxy_get_header_map_value";
        // The name is compared in guest memory: names in a map are ASCII tokens, so a name that is not valid
        // text matches none, as it did when it was read as text first.
        mem::return_scratch_for(&mut c, (kp, kn), rp, rs, WHAT, |key, st, out| {
            let value = st.map(t)?.and_then(|m| m.get(key)).ok_or(NOT_FOUND)?;
            out.extend_from_slice(value);
            Ok(())
        })
    });
    wrap!(l, E, "proxy_add_header_map_value", |mut c: Ctx<'_>,
                                               t: i32,
                                               kp: i32,
                                               kn: i32,
                                               vp: i32,
                                               vn: i32|
     -> Result<i32> {
        let mut key = mem::read_str(&mut c, kp, kn, "proxy_add_header_map_value")?;
        let value = mem::read_str(&mut c, vp, vn, "proxy_add_header_map_value")?;
        if !valid_header(&key, &value) {
            return Ok(BAD_ARGUMENT);
        }
        key.make_ascii_lowercase();
        Ok(status(c.data_mut().map_mut(t).map(|m| m.push((key, value)))))
    });
    wrap!(l, E, "proxy_replace_header_map_value", |mut c: Ctx<'_>,
                                                   t: i32,
                                                   kp: i32,
                                                   kn: i32,
                                                   vp: i32,
                                                   vn: i32|
     -> Result<i32> {
        const WHAT: &str = "proxy_replace_header_map_value";
        let (mut key, mut value) = (std::mem::take(&mut c.data_mut().scratch_key), String::new());
        mem::read_str_into(&c, kp, kn, WHAT, &mut key)?;
        mem::read_str_into(&c, vp, vn, WHAT, &mut value)?;
        let r = if valid_header(&key, &value) {
            status(c.data_mut().map_mut(t).map(|m| header_replace(m, &key, &value)))
        } else {
            BAD_ARGUMENT
        };
        c.data_mut().scratch_key = key;
        Ok(r)
    });
    wrap!(l, E, "proxy_remove_header_map_value", |mut c: Ctx<'_>, t: i32, kp: i32, kn: i32| -> Result<i32> {
        let key = mem::read_str(&mut c, kp, kn, "proxy_remove_header_map_value")?;
        Ok(status(c.data_mut().map_mut(t).map(|m| m.retain(|(k, _)| !k.eq_ignore_ascii_case(&key)))))
    });
    Ok(())
}

/// Reject header names/values that could smuggle extra headers or break framing (CR, LF, NUL). Checked as
/// bytes: the three are ASCII, so no UTF-8 decoding is needed.
pub(super) fn valid_header(key: &str, value: &str) -> bool {
    let bad = |s: &str| s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0));
    !key.is_empty() && !bad(key) && !bad(value)
}

pub(crate) fn header_replace(map: &mut HeaderMap, key: &str, value: &str) {
    let mut found = false;
    map.retain_mut(|(k, v)| {
        if k.eq_ignore_ascii_case(key) {
            if found {
                return false;
            }
            found = true;
            v.clear();
            v.push_str(value);
        }
        true
    });
    if !found {
        map.push((key.to_ascii_lowercase(), value.to_string()));
    }
}
