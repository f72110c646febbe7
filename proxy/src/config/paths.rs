//! A reverse listener's request-path rules (`normalize_path`, `merge_slashes`, `escaped_slashes`); applied by
//! [`crate::forward::request_path`], which says why they exist.

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

impl Default for PathRules {
    fn default() -> Self {
        PathRules { normalize: true, merge_slashes: true, escaped_slashes: EscapedSlashes::Keep }
    }
}
