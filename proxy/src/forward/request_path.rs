//! A reverse listener's request path, made the one path every later reader sees: plugins that route or refuse
//! by path, and the upstream. Without this a path such as `/public/../admin` or `/public/%2e%2e/admin` is
//! matched by a prefix rule as `/public/...` while an origin that resolves it serves `/admin`: access control
//! and routing by path prefix are bypassed. nginx resolves the path for its location matching, Envoy with
//! `normalize_path`; Portico forwards the resolved path too, so routing and the origin cannot disagree.
//!
//! The steps, in order (RFC 3986 §6.2.2 and §5.2.4):
//! 1. percent-encodings of unreserved characters (`%41` = `A`, `%2E` = `.`) are decoded, other
//!    percent-encodings get upper-case hex digits, and a `%` not followed by two hex digits is refused (400);
//! 2. `%2F` and `%5C` (an encoded `/` or `\`) are kept, refused or decoded to `/`, by the listener's
//!    `escaped_slashes` (kept by default: RFC 3986 makes them data, not separators, and APIs use them in
//!    names; an origin that decodes them before resolving the path needs `"reject"` or `"unescape"`);
//! 3. runs of `/` are merged (`merge_slashes`, on by default, as in nginx);
//! 4. `.` and `..` segments are removed; `..` never climbs above the root. A segment that is `.` or `..`
//!    followed by `;` parameters (`..;x`) is one too: Java servlet containers strip the parameters before they
//!    resolve the path, so `/public/..;/admin` is their `/admin`.
//!
//! A raw `\` is refused (400) while normalising: it is no URI character (RFC 3986 §2), browsers send `/` for
//! it, and origins that read it as a separator (IIS, WHATWG URL parsers) would resolve `/public/..\admin` to
//! `/admin` behind a rule that saw `/public/`. Other `;` parameters are kept (`;jsessionid=` is in real URLs),
//! so a prefix rule in front of such an origin sees `/admin;x/` as another path than `/admin/`.
//!
//! The query is left as sent. A path that needs none of this (no `%`, `\`, `/.` or `//`) is found so in one
//! pass and not copied. A plugin that rewrites the path has its rewrite resolved again (see
//! [`crate::plugin::FilterChain::request_headers`]).

pub use crate::config::paths::{EscapedSlashes, PathRules};

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    BadPercent,
    /// `%2F` or `%5C` on a listener with `escaped_slashes = "reject"`.
    EscapedSlash,
    /// A raw `\`.
    Backslash,
}

impl PathError {
    /// The detail given to the client.
    pub fn detail(self) -> &'static str {
        match self {
            PathError::BadPercent => "the request path has a % not followed by two hex digits",
            PathError::EscapedSlash => "the request path has an encoded slash (%2F or %5C), refused on this listener",
            PathError::Backslash => "the request path has a backslash, which is not a URI character (send / or %5C)",
        }
    }
}

/// The path `path` (without its query) under `rules`: `Ok(None)` when it is already so.
pub fn normalize(path: &str, rules: PathRules) -> Result<Option<String>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || !needs_work(bytes, rules) {
        return Ok(None);
    }
    if rules.normalize && bytes.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    let decoded = if rules.reads_percent() { decode(bytes, rules)? } else { path.to_string() };
    let resolved = if rules.normalize || rules.merge_slashes { resolve(&decoded, rules) } else { decoded };
    Ok((resolved != path).then_some(resolved))
}

/// Whether any step could change the path: a `%`, a `\`, or a `/` followed by `.` or (merging) by `/`.
fn needs_work(bytes: &[u8], rules: PathRules) -> bool {
    let percent = rules.reads_percent();
    let mut prev = 0u8;
    for &b in bytes {
        if (b == b'%' && percent)
            || (b == b'\\' && rules.normalize)
            || prev == b'/' && ((b == b'.' && rules.normalize) || (b == b'/' && rules.merge_slashes))
        {
            return true;
        }
        prev = b;
    }
    false
}

/// Step 1 and 2: percent-encodings.
fn decode(bytes: &[u8], rules: PathRules) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        // Everything before the `%` is copied as it is (it came from a `&str`, so it splits at a char boundary:
        // `%` is ASCII).
        out.push_str(&String::from_utf8_lossy(&rest[..at]));
        let (Some(hi), Some(lo)) = (rest.get(at + 1).and_then(hex), rest.get(at + 2).and_then(hex)) else {
            return Err(PathError::BadPercent);
        };
        let byte = hi << 4 | lo;
        match byte {
            b'/' | b'\\' => match rules.escaped_slashes {
                EscapedSlashes::Keep => push_encoded(&mut out, byte, rules.normalize, &rest[at..at + 3]),
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Unescape => out.push('/'),
            },
            b if rules.normalize && (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')) => {
                out.push(char::from(b));
            }
            _ => push_encoded(&mut out, byte, rules.normalize, &rest[at..at + 3]),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(&String::from_utf8_lossy(rest));
    Ok(out)
}

/// A percent-encoding kept: upper-case hex when normalising, else as sent.
fn push_encoded(out: &mut String, byte: u8, normalize: bool, sent: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if normalize {
        out.push('%');
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 15)]));
    } else {
        out.push_str(&String::from_utf8_lossy(sent));
    }
}

fn hex(b: &u8) -> Option<u8> {
    char::from(*b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Steps 3 and 4 on a path that starts with `/`: a stack of segments.
fn resolve(path: &str, rules: PathRules) -> String {
    let mut kept: Vec<&str> = Vec::new();
    // Whether the path ends in a directory: after a `.` or `..` as the last segment, or a trailing `/`.
    let mut directory = false;
    for segment in path[1..].split('/') {
        directory = false;
        // `..;params` is `..` to a servlet container (see the module doc).
        let dots = segment.split(';').next().unwrap_or(segment);
        match dots {
            "." if rules.normalize => directory = true,
            ".." if rules.normalize => {
                kept.pop();
                directory = true;
            }
            "" if rules.merge_slashes && segment.is_empty() => directory = true,
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || directory {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        norm_with(path, PathRules::default())
    }

    fn norm_with(path: &str, rules: PathRules) -> Result<String, PathError> {
        normalize(path, rules).map(|p| p.unwrap_or_else(|| path.to_string()))
    }

    #[test]
    fn dot_segments_are_removed_and_never_climb_above_the_root() {
        for (given, want) in [
            ("/public/../admin", "/admin"),
            ("/public/./../admin/x", "/admin/x"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/..b/c.", "/a/..b/c."),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/...", "/a/..."),
            ("/public/..;/admin/users", "/admin/users"),
            ("/public/..;x=1/admin", "/admin"),
            ("/a/.;jsessionid=1/b", "/a/b"),
            ("/a;jsessionid=1/b", "/a;jsessionid=1/b"),
            ("/a/%2e%2e;/b", "/b"),
        ] {
            assert_eq!(norm(given), Ok(want.to_string()), "{given}");
        }
    }

    #[test]
    fn percent_encodings_are_made_canonical_before_dots_are_resolved() {
        for (given, want) in [
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/.%2E/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%7eb", "/a~b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/%2F", "/%2F"),
            ("/public/..%2fadmin", "/public/..%2Fadmin"),
        ] {
            assert_eq!(norm(given), Ok(want.to_string()), "{given}");
        }
        for bad in ["/a%", "/a%4", "/a%zz", "/a%4g/b"] {
            assert_eq!(norm(bad), Err(PathError::BadPercent), "{bad}");
        }
        for bad in ["/public/..\\admin", "/a\\b"] {
            assert_eq!(norm(bad), Err(PathError::Backslash), "{bad}");
        }
    }

    #[test]
    fn slashes_merge_unless_told_not_to() {
        assert_eq!(norm("//admin//x/"), Ok("/admin/x/".to_string()));
        assert_eq!(norm("///"), Ok("/".to_string()));
        let keep = PathRules { merge_slashes: false, ..PathRules::default() };
        assert_eq!(norm_with("//admin//x/", keep), Ok("//admin//x/".to_string()));
        assert_eq!(norm_with("/a//../b", keep), Ok("/a/b".to_string()), "as RFC 3986 §5.2.4 reads it");
    }

    #[test]
    fn escaped_slashes_are_kept_refused_or_decoded() {
        let with = |escaped_slashes| PathRules { escaped_slashes, ..PathRules::default() };
        assert_eq!(norm_with("/a%2fb", with(EscapedSlashes::Keep)), Ok("/a%2Fb".to_string()));
        assert_eq!(norm_with("/a%2fb", with(EscapedSlashes::Reject)), Err(PathError::EscapedSlash));
        assert_eq!(norm_with("/a%5Cb", with(EscapedSlashes::Reject)), Err(PathError::EscapedSlash));
        let unescape = with(EscapedSlashes::Unescape);
        assert_eq!(norm_with("/public/..%2fadmin", unescape), Ok("/admin".to_string()));
        assert_eq!(norm_with("/public/..%5c..%5cadmin", unescape), Ok("/admin".to_string()));
    }

    #[test]
    fn off_leaves_the_path_as_sent() {
        let off = PathRules { normalize: false, merge_slashes: false, escaped_slashes: EscapedSlashes::Keep };
        for path in ["/public/../admin", "//a", "/a%2e%2e/%zz", "/a%2fb"] {
            assert_eq!(normalize(path, off), Ok(None), "{path}");
        }
        let merge_only = PathRules { merge_slashes: true, ..off };
        assert_eq!(normalize("//a%zz\\b/../c", merge_only), Ok(Some("/a%zz\\b/../c".to_string())), "nothing decoded");
        let only_reject = PathRules { escaped_slashes: EscapedSlashes::Reject, ..off };
        assert_eq!(normalize("/a/../%2f", only_reject), Err(PathError::EscapedSlash));
        assert_eq!(normalize("/a/../%2e", only_reject), Ok(None), "no decoding asked for");
    }

    #[test]
    fn a_normal_path_is_not_copied() {
        for path in ["/", "/index.html", "/v1.2/items", "/a-b_c~d/e", "*", ""] {
            assert_eq!(normalize(path, PathRules::default()), Ok(None), "{path}");
        }
    }
}
