//! Logging: `proxy_log`, `proxy_get_log_level`. Lines go to [`crate::HostServices::log`]; the last error-level line
//! is kept so a refused configuration can say why.

use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::memory::{self as mem, Ctx};
use crate::types::LogLevel;

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_log", |mut c: Ctx<'_>, level: i32, p: i32, n: i32| -> Result<i32> {
        let msg = mem::read_str(&mut c, p, n, "proxy_log")?;
        if !(0..=5).contains(&level) {
            return Ok(BAD_ARGUMENT);
        }
        let level = LogLevel::from_abi(level);
        let st = c.data();
        st.core.services.log(&st.core.name, level, &printable(&msg));
        if level >= LogLevel::Error {
            // Quoted in Portico's own log and answers when a configuration is refused: escaped too.
            c.data_mut().last_error_log = Some(printable(&msg).into_owned());
        }
        Ok(OK)
    });
    wrap!(l, E, "proxy_get_log_level", |mut c: Ctx<'_>, ret: i32| -> Result<i32> {
        let level = c.data().core.services.log_level();
        mem::write_u32(&mut c, ret, level.as_abi() as u32, "proxy_get_log_level")?;
        Ok(OK)
    });
    Ok(())
}

/// A guest's message as a log line may carry it: control characters (a newline, a carriage return, NUL, an
/// escape) written as escapes, so a plugin cannot start a line of its own that reads as Portico's (tab stays).
pub(super) fn printable(message: &str) -> std::borrow::Cow<'_, str> {
    if !message.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_cannot_start_a_line() {
        assert_eq!(super::printable("ok\ttab"), "ok\ttab");
        assert_eq!(
            super::printable("a\n2099-01-01T00:00:00Z INFO forged\r\0\u{1b}[31m"),
            "a\\n2099-01-01T00:00:00Z INFO forged\\r\\u{0}\\u{1b}[31m"
        );
    }
}
