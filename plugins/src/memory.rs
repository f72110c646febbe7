//! Guest linear-memory access for hostcalls: bounds-checked reads/writes and the re-entrant allocation protocol.

use wasmtime::{Caller, Result};

use crate::abi;
use crate::error::HostTrap;
use crate::store::HostState;

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

/// The guest bytes at `ptr`, borrowed: for a hostcall that only looks at them. Same checks as [`read`].
fn view<'c>(c: &'c Ctx<'_>, ptr: i32, len: i32, what: &'static str) -> Result<&'c [u8]> {
    let len = len as u32 as usize;
    if len == 0 {
        return Ok(&[]);
    }
    let mem = c.data().memory.ok_or(HostTrap::BadPointer(what))?;
    let r = range(ptr, len).ok_or(HostTrap::BadPointer(what))?;
    Ok(mem.data(c).get(r).ok_or(HostTrap::BadPointer(what))?)
}

/// Appends `bytes` to `out` as text, invalid UTF-8 replaced (as [`read_str`] does).
fn push_text(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// [`read_str`] into a buffer the caller reuses: the hot hostcalls (a header value, a property) read their
/// key this way instead of allocating a `String` per call.
pub(crate) fn read_str_into(c: &Ctx<'_>, ptr: i32, len: i32, what: &'static str, out: &mut String) -> Result<()> {
    out.clear();
    push_text(out, view(c, ptr, len, what)?);
    Ok(())
}

/// [`read`] into a buffer the caller reuses.
pub(crate) fn read_into(c: &Ctx<'_>, ptr: i32, len: i32, what: &'static str, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    out.extend_from_slice(view(c, ptr, len, what)?);
    Ok(())
}

/// A well-known property path a balancing or routing plugin reads or writes on every request (see
/// [`HOT_PATHS`]): which one, so that a hostcall branches on it without comparing its spelling again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hot {
    CandidatesVersion,
    Selected,
    Route,
    Upstream,
    Candidates,
    Failed,
}

/// The [`Hot`] paths in their serialized form (`a\0b\0c`, as every SDK sends them) and as
/// [`read_property_path`] would spell them. Matching the guest's bytes against these copies nothing; any
/// other path (or one sent with '.' separators) takes the general [`read_property_path`].
const HOT_PATHS: [(&[u8], &[u8], Hot); 6] = [
    (b"portico\0upstream\0candidates_version", b"portico.upstream.candidates_version", Hot::CandidatesVersion),
    (b"portico\0upstream\0selected", b"portico.upstream.selected", Hot::Selected),
    (b"portico\0route\0upstream", b"portico.route.upstream", Hot::Route),
    (b"portico\0upstream", b"portico.upstream", Hot::Upstream),
    (b"portico\0upstream\0candidates", b"portico.upstream.candidates", Hot::Candidates),
    (b"portico\0upstream\0failed", b"portico.upstream.failed", Hot::Failed),
];

/// The well-known property path at `ptr` (see [`HOT_PATHS`]) and its dotted spelling, or `None` to read it
/// with [`read_property_path`]. Traps on out-of-bounds like every read.
pub(crate) fn hot_property_path(
    c: &Ctx<'_>,
    ptr: i32,
    len: i32,
    what: &'static str,
) -> Result<Option<(Hot, &'static [u8])>> {
    let raw = view(c, ptr, len, what)?;
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    Ok(HOT_PATHS.iter().find(|(serialized, ..)| *serialized == raw).map(|&(_, dotted, hot)| (hot, dotted)))
}

/// Runs `f` over the guest bytes at `ptr` and the host state together, copying nothing: for a hostcall that
/// stores a small value it was passed (a plugin's routing or balancing choice). Same checks as [`read`].
pub(crate) fn with_bytes_and_state<T>(
    c: &mut Ctx<'_>,
    ptr: i32,
    len: i32,
    what: &'static str,
    f: impl FnOnce(&[u8], &mut HostState) -> T,
) -> Result<T> {
    let len = len as u32 as usize;
    let mem = c.data().memory.ok_or(HostTrap::BadPointer(what))?;
    let (data, state) = mem.data_and_store_mut(&mut *c);
    let bytes = match len {
        0 => &[][..],
        _ => data.get(range(ptr, len).ok_or(HostTrap::BadPointer(what))?).ok_or(HostTrap::BadPointer(what))?,
    };
    Ok(f(bytes, state))
}

/// [`return_scratch`] for a hostcall whose answer depends on guest bytes it was passed (a header name): `fill`
/// sees them in place, with the host state, so they are neither copied nor checked as text first.
pub(crate) fn return_scratch_for(
    c: &mut Ctx<'_>,
    (ptr, len): (i32, i32),
    ret_ptr: i32,
    ret_size: i32,
    what: &'static str,
    fill: impl FnOnce(&[u8], &HostState, &mut Vec<u8>) -> Result<(), i32>,
) -> Result<i32> {
    let mut out = std::mem::take(&mut c.data_mut().scratch_out);
    out.clear();
    let filled = with_bytes_and_state(c, ptr, len, what, |bytes, st| fill(bytes, st, &mut out));
    let r = match filled {
        Ok(Ok(())) => return_bytes(c, &out, ret_ptr, ret_size, what),
        Ok(Err(status)) => Ok(status),
        Err(trap) => Err(trap),
    };
    c.data_mut().scratch_out = out;
    r
}

/// A serialized property path (`a\0b\0c`, trailing NUL optional) read as `a.b.c` into a reused buffer, as
/// bytes: the well-known names are matched as bytes, so the hot path checks no UTF-8.
pub(crate) fn read_property_path(c: &Ctx<'_>, ptr: i32, len: i32, what: &'static str, out: &mut Vec<u8>) -> Result<()> {
    let raw = view(c, ptr, len, what)?;
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    out.clear();
    out.extend_from_slice(raw);
    // Every byte rewritten, the separators to '.': a loop without a branch, which the compiler vectorizes
    // (filtering for the NULs first cost ~6 instructions a byte, ~200 a path).
    for b in out.iter_mut() {
        *b = if *b == 0 { b'.' } else { *b };
    }
    Ok(())
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

/// Hand `data` to the guest and store its pointer and size at `ret_ptr`/`ret_size`. The bytes go into the
/// guest's return arena when it registered one and they fit (Portico's extension, see
/// [`crate::store::Arena`]); otherwise into memory from its allocator, `proxy_on_memory_allocate`/`malloc` (a
/// re-entrant call into the guest), which the guest then owns. Empty data is returned as (0, 0) without
/// allocating, as cpp-host does. Returns the ABI status.
pub(crate) fn return_bytes(
    c: &mut Ctx<'_>,
    data: &[u8],
    ret_ptr: i32,
    ret_size: i32,
    what: &'static str,
) -> Result<i32> {
    let Ok(len) = i32::try_from(data.len()) else {
        return Ok(abi::INVALID_MEMORY_ACCESS);
    };
    let in_arena = match c.data_mut().arena.as_mut() {
        _ if data.is_empty() => Some(0),
        Some(arena) => arena.take(data.len()),
        None => None,
    };
    let ptr = match in_arena {
        Some(at) => at as i32,
        None => {
            // Out-parameters are checked before the guest allocates anything.
            check(c, ret_ptr, 4, what)?;
            check(c, ret_size, 4, what)?;
            // An `Arc` clone: cloning the `TypedFunc` itself would clone its registered type (registry refcounts).
            let Some(alloc) = c.data().alloc.clone() else {
                return Ok(abi::INVALID_MEMORY_ACCESS);
            };
            let ptr = alloc.call(&mut *c, len)?;
            if ptr == 0 {
                return Ok(abi::INVALID_MEMORY_ACCESS);
            }
            ptr
        }
    };
    // The allocator may have grown memory: the view is fetched after it ran. One view for the three writes.
    let mem = c.data().memory.ok_or(HostTrap::BadPointer(what))?;
    let memory = mem.data_mut(&mut *c);
    let mut put = |at: i32, bytes: &[u8]| -> Result<()> {
        let r = range(at, bytes.len()).ok_or(HostTrap::BadPointer(what))?;
        memory.get_mut(r).ok_or(HostTrap::BadPointer(what))?.copy_from_slice(bytes);
        Ok(())
    };
    put(ret_ptr, &(ptr as u32).to_le_bytes())?;
    put(ret_size, &(len as u32).to_le_bytes())?;
    put(ptr, data)?;
    Ok(abi::OK)
}

/// [`return_bytes`] for a hostcall whose answer is built in the instance's reused output buffer
/// ([`crate::store::HostState::scratch_out`]): `fill` writes the answer into it, or returns the status to
/// answer with instead (`NOT_FOUND`, `BAD_ARGUMENT`) when there is nothing to return. No allocation on the
/// host once the buffer has grown.
pub(crate) fn return_scratch(
    c: &mut Ctx<'_>,
    ret_ptr: i32,
    ret_size: i32,
    what: &'static str,
    fill: impl FnOnce(&HostState, &mut Vec<u8>) -> Result<(), i32>,
) -> Result<i32> {
    let mut out = std::mem::take(&mut c.data_mut().scratch_out);
    out.clear();
    let r = match fill(c.data(), &mut out) {
        Ok(()) => return_bytes(c, &out, ret_ptr, ret_size, what),
        Err(status) => Ok(status),
    };
    c.data_mut().scratch_out = out;
    r
}
