//! WASI preview1, linked under `wasi_snapshot_preview1` and `wasi_unstable` so modules from any SDK instantiate:
//! stdout and stderr go to the log, clocks and randomness are real, `poll_oneoff` never blocks, and the
//! filesystem and sockets answer EBADF. Also the Emscripten-era `env` extras proxy-wasm's C++ host provides.

use std::sync::OnceLock;

use parking_lot::Mutex;
use wasmtime::Result;

use super::time::{monotonic_nanos, realtime_nanos};
use super::{wrap, Imports, ENV};
use crate::error::HostTrap;
use crate::memory::{self as mem, Ctx};
use crate::types::LogLevel;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_IO: i32 = 29;
const ERRNO_NOSYS: i32 = 52;
const ERRNO_NOTSUP: i32 = 58;

#[allow(clippy::too_many_lines)]
pub(super) fn link(l: &mut Imports<'_>, m: &str) -> Result<()> {
    wrap!(l, m, "fd_write", |mut c: Ctx<'_>, fd: i32, iovs: i32, n: i32, ret: i32| -> Result<i32> {
        if fd != 1 && fd != 2 {
            return Ok(ERRNO_BADF);
        }
        let n = (n as u32).min(1024) as i32;
        let table = mem::read(&mut c, iovs, n.saturating_mul(8), "fd_write")?;
        let mut out = Vec::new();
        for iov in table.chunks_exact(8) {
            let p = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            out.extend(mem::read(&mut c, p, len, "fd_write")?);
        }
        let text = String::from_utf8_lossy(&out);
        let text = text.trim_end_matches('\n');
        if !text.is_empty() {
            let st = c.data();
            let level = if fd == 1 { LogLevel::Info } else { LogLevel::Error };
            st.core.services.log(&st.core.name, level, &super::log::printable(text));
        }
        mem::write_u32(&mut c, ret, out.len() as u32, "fd_write")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "fd_read", |_c: Ctx<'_>, fd: i32, _i: i32, _n: i32, _r: i32| -> i32 {
        if fd == 0 {
            ERRNO_NOSYS
        } else {
            ERRNO_BADF
        }
    });
    wrap!(l, m, "fd_close", |_c: Ctx<'_>, _fd: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_seek", |_c: Ctx<'_>, _fd: i32, _o: i64, _w: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_fdstat_get", |mut c: Ctx<'_>, fd: i32, ret: i32| -> Result<i32> {
        if !(0..=2).contains(&fd) {
            return Ok(ERRNO_BADF);
        }
        // filetype u8 (2 = character device), flags u16 @2, rights_base u64 @8, rights_inheriting u64 @16.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 }; // fd_read / fd_write
        stat[8..16].copy_from_slice(&rights.to_le_bytes());
        mem::write(&mut c, ret, &stat, "fd_fdstat_get")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "fd_fdstat_set_flags", |_c: Ctx<'_>, _fd: i32, _f: i32| -> i32 { ERRNO_NOSYS });
    wrap!(l, m, "fd_fdstat_set_rights", |_c: Ctx<'_>, _fd: i32, _a: i64, _b: i64| -> i32 { ERRNO_NOSYS });
    wrap!(l, m, "fd_prestat_get", |_c: Ctx<'_>, _fd: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_prestat_dir_name", |_c: Ctx<'_>, _fd: i32, _p: i32, _n: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_advise", |_c: Ctx<'_>, _fd: i32, _o: i64, _n: i64, _a: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_allocate", |_c: Ctx<'_>, _fd: i32, _o: i64, _n: i64| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_datasync", |_c: Ctx<'_>, _fd: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_sync", |_c: Ctx<'_>, _fd: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_filestat_get", |_c: Ctx<'_>, _fd: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_filestat_set_size", |_c: Ctx<'_>, _fd: i32, _s: i64| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_filestat_set_times", |_c: Ctx<'_>, _fd: i32, _a: i64, _b: i64, _f: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_pread", |_c: Ctx<'_>, _fd: i32, _i: i32, _n: i32, _o: i64, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_pwrite", |_c: Ctx<'_>, _fd: i32, _i: i32, _n: i32, _o: i64, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_readdir", |_c: Ctx<'_>, _fd: i32, _b: i32, _n: i32, _k: i64, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_renumber", |_c: Ctx<'_>, _a: i32, _b: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_tell", |_c: Ctx<'_>, _fd: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_create_directory", |_c: Ctx<'_>, _fd: i32, _p: i32, _n: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_filestat_get", |_c: Ctx<'_>, _fd: i32, _f: i32, _p: i32, _n: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_filestat_set_times", |_c: Ctx<'_>,
                                            _fd: i32,
                                            _f: i32,
                                            _p: i32,
                                            _n: i32,
                                            _a: i64,
                                            _b: i64,
                                            _g: i32|
     -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_link", |_c: Ctx<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32, _h: i32| -> i32 {
        ERRNO_BADF
    });
    wrap!(l, m, "path_open", |_c: Ctx<'_>,
                              _fd: i32,
                              _df: i32,
                              _p: i32,
                              _n: i32,
                              _o: i32,
                              _rb: i64,
                              _ri: i64,
                              _ff: i32,
                              _r: i32|
     -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_readlink", |_c: Ctx<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32| -> i32 {
        ERRNO_BADF
    });
    wrap!(l, m, "path_remove_directory", |_c: Ctx<'_>, _fd: i32, _p: i32, _n: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_rename", |_c: Ctx<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32| -> i32 {
        ERRNO_BADF
    });
    wrap!(l, m, "path_symlink", |_c: Ctx<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_unlink_file", |_c: Ctx<'_>, _fd: i32, _p: i32, _n: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "poll_oneoff", |mut c: Ctx<'_>, inp: i32, outp: i32, n: i32, ret: i32| -> Result<i32> {
        // Never block a proxy worker: clock subscriptions fire immediately, fd subscriptions report EBADF.
        let n = n as u32;
        if n == 0 || n > 1024 {
            return Ok(ERRNO_INVAL);
        }
        let subs = mem::read(&mut c, inp, (n * 48) as i32, "poll_oneoff")?;
        let mut events = vec![0u8; (n * 32) as usize];
        for (sub, ev) in subs.chunks_exact(48).zip(events.chunks_exact_mut(32)) {
            ev[0..8].copy_from_slice(&sub[0..8]);
            let tag = sub[8];
            let errno: u16 = if tag == 0 { 0 } else { ERRNO_BADF as u16 };
            ev[8..10].copy_from_slice(&errno.to_le_bytes());
            ev[10] = tag;
        }
        mem::write(&mut c, outp, &events, "poll_oneoff")?;
        mem::write_u32(&mut c, ret, n, "poll_oneoff")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "proc_exit", |mut c: Ctx<'_>, code: i32| -> Result<()> {
        c.data_mut().exit_code = Some(code);
        Err(HostTrap::Exit(code).into())
    });
    wrap!(l, m, "proc_raise", |_c: Ctx<'_>, _s: i32| -> i32 { ERRNO_NOSYS });
    wrap!(l, m, "sched_yield", |_c: Ctx<'_>| -> i32 { ERRNO_SUCCESS });
    wrap!(l, m, "random_get", |mut c: Ctx<'_>, p: i32, n: i32| -> Result<i32> {
        let n = n as u32 as usize;
        if n > 64 * 1024 {
            return Ok(ERRNO_INVAL);
        }
        let mut buf = vec![0u8; n];
        if !fill_random(&mut buf) {
            return Ok(ERRNO_IO);
        }
        mem::write(&mut c, p, &buf, "random_get")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "clock_time_get", |mut c: Ctx<'_>, id: i32, _precision: i64, ret: i32| -> Result<i32> {
        let t = match id {
            0 => realtime_nanos(c.data()),
            1..=3 => monotonic_nanos(),
            _ => return Ok(ERRNO_NOTSUP),
        };
        mem::write_u64(&mut c, ret, t, "clock_time_get")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "clock_res_get", |mut c: Ctx<'_>, id: i32, ret: i32| -> Result<i32> {
        if !(0..=3).contains(&id) {
            return Ok(ERRNO_NOTSUP);
        }
        mem::write_u64(&mut c, ret, 1_000, "clock_res_get")?;
        Ok(ERRNO_SUCCESS)
    });
    for (name, what) in [("environ_sizes_get", "environ_sizes_get"), ("args_sizes_get", "args_sizes_get")] {
        l.func_wrap(m, name, move |mut c: Ctx<'_>, count: i32, size: i32| -> Result<i32> {
            mem::write_u32(&mut c, count, 0, what)?;
            mem::write_u32(&mut c, size, 0, what)?;
            Ok(ERRNO_SUCCESS)
        })?;
    }
    wrap!(l, m, "environ_get", |_c: Ctx<'_>, _a: i32, _b: i32| -> i32 { ERRNO_SUCCESS });
    wrap!(l, m, "args_get", |_c: Ctx<'_>, _a: i32, _b: i32| -> i32 { ERRNO_SUCCESS });
    wrap!(l, m, "sock_accept", |_c: Ctx<'_>, _fd: i32, _f: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "sock_recv", |_c: Ctx<'_>, _fd: i32, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32| -> i32 {
        ERRNO_BADF
    });
    wrap!(l, m, "sock_send", |_c: Ctx<'_>, _fd: i32, _a: i32, _b: i32, _d: i32, _e: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "sock_shutdown", |_c: Ctx<'_>, _fd: i32, _h: i32| -> i32 { ERRNO_BADF });
    Ok(())
}

/// Emscripten-era extras cpp-host provides.
pub(super) fn link_emscripten(l: &mut Imports<'_>) -> Result<()> {
    wrap!(l, ENV, "pthread_equal", |_c: Ctx<'_>, a: i32, b: i32| -> i32 { i32::from(a == b) });
    wrap!(l, ENV, "emscripten_notify_memory_growth", |_c: Ctx<'_>, _i: i32| {});
    Ok(())
}

fn fill_random(buf: &mut [u8]) -> bool {
    use std::io::Read;
    static URANDOM: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    match URANDOM.get_or_init(|| std::fs::File::open("/dev/urandom").ok().map(Mutex::new)) {
        Some(f) => f.lock().read_exact(buf).is_ok(),
        None => false,
    }
}
