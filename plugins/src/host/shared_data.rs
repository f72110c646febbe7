//! Shared data: `proxy_get_shared_data`, `proxy_set_shared_data`, the key/value store with CAS scoped by
//! vm_id (see [`crate::shared`]). A write past the caps of [`crate::limits`] answers BAD_ARGUMENT (the key or
//! value alone is too large) or INTERNAL_FAILURE (the store is full), with a rate-limited warning.

use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::limits;
use crate::memory::{self as mem, Ctx};
use crate::shared::SetShared;

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_get_shared_data", |mut c: Ctx<'_>,
                                          kp: i32,
                                          kn: i32,
                                          rp: i32,
                                          rs: i32,
                                          rcas: i32|
     -> Result<i32> {
        let key = mem::read_str(&mut c, kp, kn, "proxy_get_shared_data")?;
        let st = c.data();
        let Some((value, cas)) = st.core.shared.get_shared(&st.core.vm_id, &key) else { return Ok(NOT_FOUND) };
        mem::check(&mut c, rcas, 4, "proxy_get_shared_data")?;
        let s = mem::return_bytes(&mut c, &value, rp, rs, "proxy_get_shared_data")?;
        if s == OK {
            mem::write_u32(&mut c, rcas, cas, "proxy_get_shared_data")?;
        }
        Ok(s)
    });
    wrap!(l, E, "proxy_set_shared_data", |mut c: Ctx<'_>,
                                          kp: i32,
                                          kn: i32,
                                          vp: i32,
                                          vn: i32,
                                          cas: i32|
     -> Result<i32> {
        let key = mem::read_str(&mut c, kp, kn, "proxy_set_shared_data")?;
        let value = mem::read(&mut c, vp, vn, "proxy_set_shared_data")?;
        let st = c.data();
        let (len, plugin) = (value.len(), &st.core.name);
        Ok(match st.core.shared.set_shared(&st.core.vm_id, &key, value, cas as u32) {
            SetShared::Ok => OK,
            SetShared::CasMismatch => CAS_MISMATCH,
            SetShared::TooLarge => {
                limits::refused(
                    plugin,
                    format_args!(
                        "proxy_set_shared_data refused: key ({} bytes) or value ({len} bytes) over its cap",
                        key.len()
                    ),
                );
                BAD_ARGUMENT
            }
            SetShared::Full => {
                limits::refused(
                    plugin,
                    format_args!("proxy_set_shared_data refused: shared data is full (keys or bytes)"),
                );
                INTERNAL_FAILURE
            }
        })
    });
    Ok(())
}
