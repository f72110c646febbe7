//! The `date` field of answers (RFC 9110 §6.6.1), formatted once a second per thread rather than once an
//! answer, as hyper and nginx do.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// An IMF-fixdate is always this long (`Sun, 06 Nov 1994 08:49:37 GMT`).
const LEN: usize = 29;

thread_local! {
    static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
}

/// Appends the current date, formatted.
pub fn append_now(out: &mut Vec<u8>) {
    with_now(|now| out.extend_from_slice(now));
}

/// Calls `f` with the current date, formatted.
pub fn with_now<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == LEN {
                text.copy_from_slice(formatted.as_bytes());
                *cached_second = second;
            }
        }
        f(&text[..])
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_date_is_an_imf_fixdate_of_now() {
        let text = super::with_now(|d| String::from_utf8_lossy(d).into_owned());
        let parsed = httpdate::parse_http_date(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let skew = std::time::SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(skew.as_secs() <= 2, "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
    }
}
