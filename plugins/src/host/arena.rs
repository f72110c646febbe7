//! Portico's extensions to the memory protocol, places in guest memory the host writes into instead of
//! answering a hostcall:
//! - `portico_set_return_arena(ptr, len)` registers a region where hostcalls put the values they return,
//!   instead of calling the guest's allocator for each one (see [`crate::store::Arena`]). `len == 0`
//!   unregisters it.
//! - `portico_set_select_version_slot(ptr)` registers 8 bytes where the host writes the candidate set's
//!   version (`portico.upstream.candidates_version`) before each `portico_on_upstream_select`. `ptr == 0`
//!   unregisters it.
//!
//! The bundled plugins use both; SDK plugins never call them and see the ABI unchanged.

use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::memory::{self as mem, Ctx};
use crate::store::Arena;

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    wrap!(l, ENV, "portico_set_return_arena", |mut c: Ctx<'_>, ptr: i32, len: i32| -> Result<i32> {
        let len = len as u32;
        if len == 0 {
            c.data_mut().arena = None;
            return Ok(OK);
        }
        // The region must lie in memory now; memory never shrinks, so it stays valid.
        mem::check(&mut c, ptr, len as usize, "portico_set_return_arena")?;
        c.data_mut().arena = Some(Arena { base: ptr as u32, len, used: 0 });
        Ok(OK)
    });
    wrap!(l, ENV, "portico_set_select_version_slot", |mut c: Ctx<'_>, ptr: i32| -> Result<i32> {
        if ptr == 0 {
            c.data_mut().select_version_slot = None;
            return Ok(OK);
        }
        // As for the arena: in memory now, so always (memory never shrinks).
        mem::check(&mut c, ptr, 8, "portico_set_select_version_slot")?;
        c.data_mut().select_version_slot = Some(ptr as u32);
        Ok(OK)
    });
    Ok(())
}
