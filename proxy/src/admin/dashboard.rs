//! `GET /dashboard`: one page for operators, drawn in the browser from the admin API's own JSON and its
//! anomaly event stream, and `GET /stats`, the last minutes of traffic it charts.
//!
//! Everything the page needs is embedded in the binary (`dashboard/index.html`, `app.js`, `style.css`) and
//! served from the admin listener, so it works on an edge box without internet access. The page only reads: it
//! calls GET routes, which need no token on loopback, and offers no control that changes anything. Its
//! Content-Security-Policy allows scripts, styles and connections from the admin listener alone and no inline
//! script, so markup that came from a series or plugin name cannot run as code.

use super::routes::json;
use crate::body::ResponseBody;
use crate::server::Server;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Only the admin listener itself, no inline code, no framing, no plugins, no form posts.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /dashboard` and its assets `GET /dashboard/{app.js,style.css}`.
pub(super) fn asset(name: Option<&str>) -> Response<ResponseBody> {
    let (content_type, body) = match name {
        None | Some("") | Some("index.html") => ("text/html; charset=utf-8", INDEX_HTML),
        Some("app.js") => ("text/javascript; charset=utf-8", APP_JS),
        Some("style.css") => ("text/css; charset=utf-8", STYLE_CSS),
        Some(other) => return super::routes::error(StatusCode::NOT_FOUND, format!("no dashboard file {other:?}")),
    };
    let mut response = Response::new(ResponseBody::full(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin"));
    // A new binary may bring a new page: the browser revalidates instead of running yesterday's script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /stats[?since=UNIX_MS]`: see [`crate::stats::StatsHistory::since`].
pub(super) fn stats(server: &Server, query: &str) -> Response<ResponseBody> {
    let since = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "since")
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .unwrap_or(0);
    json(StatusCode::OK, server.shared.stats.since(since))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() {
        for (name, text) in [("index.html", INDEX_HTML), ("app.js", APP_JS), ("style.css", STYLE_CSS)] {
            // The SVG namespace is a name, not a place anything is loaded from.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for outside in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(outside), "{name} refers to {outside}");
            }
        }
        assert!(!INDEX_HTML.contains("<script>"), "inline script would need 'unsafe-inline'");
        assert!(!INDEX_HTML.contains("style=\""), "inline style would need 'unsafe-inline'");
        assert!(INDEX_HTML.contains(r#"<script src="/dashboard/app.js""#));
        let page = asset(None);
        let csp = page.headers().get(header::CONTENT_SECURITY_POLICY).and_then(|v| v.to_str().ok());
        assert!(csp.is_some_and(|v| v.contains("default-src 'self'") && !v.contains("unsafe")), "{csp:?}");
        assert_eq!(asset(Some("nope")).status(), StatusCode::NOT_FOUND);
    }
}
