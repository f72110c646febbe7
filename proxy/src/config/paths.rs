//! A reverse listener's request-path rules (`normalize_path`, `merge_slashes`, `escaped_slashes`), applied by
//! [`crate::forward::request_path`], which says why they exist; and what it does with header names that hold
//! an underscore (`underscores_in_headers`, applied by [`crate::forward::request_head::underscored_fields`]).

use serde::{Deserialize, Serialize};

/// What to do with `%2F` and `%5C` in a request path (`escaped_slashes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// Forwarded encoded (as `%2F` / `%5C`): a path segment's data.
    #[default]
    Keep,
    /// The request is refused (400).
    Reject,
    /// Decoded to `/` before dot segments are resolved, so routing sees the path a decoding origin sees.
    Unescape,
}

/// A reverse listener's path rules (`normalize_path`, `merge_slashes`, `escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Decode unreserved percent-encodings, upper-case the rest, remove dot segments.
    pub normalize: bool,
    /// Merge runs of `/`.
    pub merge_slashes: bool,
    /// `%2F` and `%5C`.
    pub escaped_slashes: EscapedSlashes,
}

impl PathRules {
    /// Whether percent-encodings are read at all: to decode them, or to act on encoded slashes.
    pub fn reads_percent(self) -> bool {
        self.normalize || self.escaped_slashes != EscapedSlashes::Keep
    }
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules { normalize: true, merge_slashes: true, escaped_slashes: EscapedSlashes::Keep }
    }
}

/// What a reverse listener does with request header fields whose name holds `_` (`underscores_in_headers`).
/// CGI, WSGI and PHP origins read `X_Forwarded_For` and `X-Forwarded-For` as one variable, so a client's
/// `X_Forwarded_For` (or `Transfer_Encoding`) can stand in for a field Portico sets or checks. nginx drops such
/// fields by default (`underscores_in_headers off`); Envoy keeps them unless told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    /// The fields are removed before plugins and the upstream see the request.
    #[default]
    Drop,
    /// The request is refused (400).
    Reject,
    /// The fields go on as sent.
    Keep,
}
