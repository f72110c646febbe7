//! Portico's extension to the memory protocol: `portico_set_return_arena(ptr, len)` registers a region of the
//! guest's memory where hostcalls put the values they return, instead of calling the guest's allocator for
//! each one (see [`crate::store::Arena`]). `len == 0` unregisters it. The bundled plugins use it; SDK plugins
//! never call it and see the ABI unchanged.

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
    Ok(())
}
