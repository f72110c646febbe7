//! Request paths are resolved before plugins route on them: a client cannot reach a path a prefix rule guards
//! by writing it another way (`/public/../admin`, `%2e%2e`, `//admin`), and the upstream is sent the path the
//! router matched.

use crate::hardening::exchange;
use crate::support::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;

/// `builtin:router` sending `/admin/` to the `admin` group and everything else to `public`; `listener` lines
/// go into the listener's table.
fn guarded(public: &TestUpstream, admin: &TestUpstream, listener: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "public"
filters = ["router"]
{listener}

[[plugin]]
name = "router"
wasm = "builtin:router"
cpu_limit = "2s"
config = {{ routes = [
  {{ match = {{ path_prefix = "/admin/" }}, upstream = "admin" }},
  {{ match = {{ path_prefix = "/api" }}, upstream = "public", strip_prefix = true }},
  {{ match = {{ path_prefix = "/" }}, upstream = "public" }},
] }}

[[upstream]]
name = "public"
endpoints = ["{}"]

[[upstream]]
name = "admin"
endpoints = ["{}"]
"#,
        public.addr, admin.addr
    )
}

/// The upstream that answered a raw HTTP/1.1 request for `target`, and the path it was sent.
async fn routed(web: std::net::SocketAddr, target: &str) -> Result<(String, String), String> {
    let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let reply = exchange(web, raw.as_bytes(), Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    if !reply.starts_with("HTTP/1.1 200") {
        return Err(format!("{target}: {reply}"));
    }
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let echo: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("{target}: {e}: {reply}"))?;
    Ok((echo["upstream"].as_str().unwrap_or_default().into(), echo["path"].as_str().unwrap_or_default().into()))
}

#[tokio::test]
async fn a_path_written_another_way_routes_as_the_path_it_is() -> TestResult {
    let (public, admin) = (TestUpstream::start("public").await, TestUpstream::start("admin").await);
    let p = Portico::start(&guarded(&public, &admin, "")).await;
    let web = p.addr("web").await;
    for (target, path) in [
        ("/public/../admin/users", "/admin/users"),
        ("/public/%2e%2e/admin/users", "/admin/users"),
        ("/public/./.%2E/admin/./users", "/admin/users"),
        ("//admin//users", "/admin/users"),
        ("/%61dmin/users", "/admin/users"),
        ("/../../admin/users?next=/../x", "/admin/users?next=/../x"),
        ("http://a/public/../admin/users", "/admin/users"),
        ("/public/..;/admin/users", "/admin/users"),
    ] {
        assert_eq!(routed(web, target).await?, ("admin".to_string(), path.to_string()), "{target}");
    }
    // An encoded slash is a segment's data by default: no dot segment here, and sent on as written.
    let kept = routed(web, "/public/..%2fadmin/users").await?;
    assert_eq!(kept, ("public".to_string(), "/public/..%2Fadmin/users".to_string()));
    assert_eq!(routed(web, "/public/a.b/c").await?, ("public".to_string(), "/public/a.b/c".to_string()));
    // A plugin's rewrite is resolved too: stripping `/api` from `/api../admin/x` leaves `/../admin/x`.
    assert_eq!(routed(web, "/api../admin/x").await?, ("public".to_string(), "/admin/x".to_string()));
    // An empty path before a query is `/` (RFC 9112 §3.2.1), never a `?q` request target.
    assert_eq!(routed(web, "http://a?q=1").await?, ("public".to_string(), "/?q=1".to_string()));

    // Over HTTP/2 too: `:path` is resolved the same way.
    let tcp = tokio::net::TcpStream::connect(web).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("http://a/public/%2E%2E/admin/users").body(Empty::<bytes::Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upstream"], "admin");
    let echo: serde_json::Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    assert_eq!(echo["path"], "/admin/users");

    // A broken percent-encoding is refused before anything reads the path.
    let hits = public.hits() + admin.hits();
    for (target, why) in
        [("/admin%zz/users", "two hex digits"), ("/a%4", "two hex digits"), ("/public/..\\admin/users", "backslash")]
    {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let reply = exchange(web, raw.as_bytes(), Duration::from_secs(10)).await?;
        assert!(reply.starts_with("HTTP/1.1 400"), "{target}: {reply}");
        assert!(reply.contains(why), "{target}: {reply}");
    }
    assert_eq!(public.hits() + admin.hits(), hits, "nothing refused reaches an upstream");
    Ok(())
}

#[tokio::test]
async fn encoded_slashes_are_refused_or_decoded_when_told_and_rules_can_be_off() -> TestResult {
    let (public, admin) = (TestUpstream::start("public").await, TestUpstream::start("admin").await);
    let p = Portico::start(&guarded(&public, &admin, "escaped_slashes = \"reject\"")).await;
    let raw = "GET /public/..%2Fadmin/users HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let reply = exchange(p.addr("web").await, raw.as_bytes(), Duration::from_secs(10)).await?;
    assert!(reply.starts_with("HTTP/1.1 400") && reply.contains("encoded slash"), "{reply}");
    assert_eq!(public.hits() + admin.hits(), 0);
    drop(p);

    let p = Portico::start(&guarded(&public, &admin, "escaped_slashes = \"unescape\"")).await;
    let decoded = routed(p.addr("web").await, "/public/..%2Fadmin/users").await?;
    assert_eq!(decoded, ("admin".to_string(), "/admin/users".to_string()));
    drop(p);

    // Off: the path goes on as sent, for origins that give `..` or `//` a meaning of their own.
    let p = Portico::start(&guarded(&public, &admin, "normalize_path = false\nmerge_slashes = false")).await;
    let web = p.addr("web").await;
    assert_eq!(routed(web, "/public/../admin/users").await?, ("public".into(), "/public/../admin/users".into()));
    assert_eq!(routed(web, "//admin/users").await?, ("public".into(), "//admin/users".into()));
    Ok(())
}
