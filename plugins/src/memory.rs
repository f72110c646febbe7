//! Guest linear-memory access for hostcalls: bounds-checked reads/writes and the re-entrant allocation protocol.

use wasmtime::{Caller, Result};

use crate::error::HostTrap;
use crate::host::HostState;
use crate::types::abi;

pub(crate) type Ctx<'a> = Caller<'a, HostState>;

fn range(ptr: i32, len: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    Some(start..start.checked_add(len)?)
}

/// Copy `len` bytes at `ptr` out of guest memory. `len == 0` is always valid (the SDKs pass null for absent
/// values). Out of bounds traps the guest with [`HostTrap::BadPointer`].
pub(crate) fn read(c: &mut Ctx<'_>, ptr: i32, len: i32, what: &'static str) -> Result<Vec<u8>> {
    let len = len as u32 as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = c.data().memory.ok_or(HostTrap::BadPointer(what))?;
    let data = mem.data(&*c);
    let r = range(ptr, len).ok_or(HostTrap::BadPointer(what))?;
    Ok(data.get(r).ok_or(HostTrap::BadPointer(what))?.to_vec())
}

/// Like [`read`] but as text; invalid UTF-8 is replaced rather than failing the guest.
pub(crate) fn read_str(c: &mut Ctx<'_>, ptr: i32, len: i32, what: &'static str) -> Result<String> {
    let bytes = read(c, ptr, len, what)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Write bytes at `ptr`, trapping on out-of-bounds.
pub(crate) fn write(c: &mut Ctx<'_>, ptr: i32, bytes: &[u8], what: &'static str) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mem = c.data().memory.ok_or(HostTrap::BadPointer(what))?;
    let data = mem.data_mut(&mut *c);
    let r = range(ptr, bytes.len()).ok_or(HostTrap::BadPointer(what))?;
    data.get_mut(r).ok_or(HostTrap::BadPointer(what))?.copy_from_slice(bytes);
    Ok(())
}

/// Write a little-endian u32 (the `return_*` out-parameters).
pub(crate) fn write_u32(c: &mut Ctx<'_>, ptr: i32, v: u32, what: &'static str) -> Result<()> {
    write(c, ptr, &v.to_le_bytes(), what)
}

/// Write a little-endian u64.
pub(crate) fn write_u64(c: &mut Ctx<'_>, ptr: i32, v: u64, what: &'static str) -> Result<()> {
    write(c, ptr, &v.to_le_bytes(), what)
}

/// Check that `len` bytes at `ptr` are addressable without touching them (validate out-params up front).
pub(crate) fn check(c: &mut Ctx<'_>, ptr: i32, len: usize, what: &'static str) -> Result<()> {
    let mem = c.data().memory.ok_or(HostTrap::BadPointer(what))?;
    let size = mem.data_size(&*c);
    match range(ptr, len) {
        Some(r) if r.end <= size => Ok(()),
        _ => Err(HostTrap::BadPointer(what).into()),
    }
}

/// Hand `data` to the guest: allocate through `proxy_on_memory_allocate`/`malloc` (re-entrant call into the
/// guest), copy, then store pointer and size at `ret_ptr`/`ret_size`. Empty data is returned as (0, 0) without
/// allocating, as cpp-host does. Returns the ABI status.
pub(crate) fn return_bytes(
    c: &mut Ctx<'_>,
    data: &[u8],
    ret_ptr: i32,
    ret_size: i32,
    what: &'static str,
) -> Result<i32> {
    check(c, ret_ptr, 4, what)?;
    check(c, ret_size, 4, what)?;
    if data.is_empty() {
        write_u32(c, ret_ptr, 0, what)?;
        write_u32(c, ret_size, 0, what)?;
        return Ok(abi::OK);
    }
    // An `Arc` clone: cloning the `TypedFunc` itself would clone its registered type (registry refcounts).
    let Some(alloc) = c.data().alloc.clone() else {
        return Ok(abi::INVALID_MEMORY_ACCESS);
    };
    let Ok(len) = i32::try_from(data.len()) else {
        return Ok(abi::INVALID_MEMORY_ACCESS);
    };
    let ptr = alloc.call(&mut *c, len)?;
    if ptr == 0 {
        return Ok(abi::INVALID_MEMORY_ACCESS);
    }
    // The allocator may have grown memory: `write` re-fetches the memory view.
    write(c, ptr, data, what)?;
    write_u32(c, ret_ptr, ptr as u32, what)?;
    write_u32(c, ret_size, len as u32, what)?;
    Ok(abi::OK)
}
