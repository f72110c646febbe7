//! `builtin:router` (plugins/builtin/router.c) driven through the real host: on_request_headers sets
//! `portico.route.upstream` (read back with `routed_upstream()`) and rewrites :path / :authority.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use crate::support::TestServices;
use portico_plugins::{builtin, router_upstreams, FilterAction, Plugin, PluginError, PluginSpec, RequestInfo};

const EXAMPLE: &str = r#"{ "routes": [
  { "match": { "headers": { "x-canary": "1" } }, "upstream": "canary" },
  { "match": { "path_prefix": "/api/" }, "upstream": "api", "strip_prefix": false },
  { "match": { "path_prefix": "/shop/" }, "split": [{ "upstream": "stable", "weight": 90 }, { "upstream": "canary", "weight": 10 }], "sticky": "header:x-user" },
  { "match": { "host": "static.example.com" }, "upstream": "static", "host_rewrite": "static.internal" },
  { "match": { "path_prefix": "/" }, "upstream": "stable" } ] }"#;

fn load(config: &str) -> Result<Arc<Plugin>, PluginError> {
    let mut spec = PluginSpec::new("router", builtin("router").unwrap());
    spec.config = config.to_string();
    spec.instances = 1;
    Plugin::load(&crate::support::engine(), spec, Arc::new(TestServices::default()))
}

fn router(config: &str) -> Arc<Plugin> {
    load(config).unwrap()
}

struct Req<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

const GET: Req<'static> = Req { method: "GET", host: "example.com", path: "/", headers: &[] };

/// Run request headers; returns (routed upstream, request headers as the plugin left them).
fn route(p: &Arc<Plugin>, r: &Req<'_>) -> (Option<String>, Vec<(String, String)>) {
    let mut h: Vec<(String, String)> =
        [(":method", r.method), (":path", r.path), (":authority", r.host), (":scheme", "https")]
            .iter()
            .chain(r.headers)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let mut s = p.new_stream(RequestInfo::default()).unwrap();
    assert_eq!(s.on_request_headers(&mut h, true).unwrap(), FilterAction::Continue);
    (s.routed_upstream().map(str::to_string), h)
}

fn upstream(p: &Arc<Plugin>, r: &Req<'_>) -> Option<String> {
    route(p, r).0
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    crate::support::header(h, name)
}

#[test]
fn each_match_kind() {
    let p = router(
        r#"{ "routes": [
        { "match": { "host": "Static.Example.com" }, "upstream": "by-host" },
        { "match": { "path": "/exact" }, "upstream": "by-path" },
        { "match": { "path_prefix": "/pre/" }, "upstream": "by-prefix" },
        { "match": { "method": "DELETE" }, "upstream": "by-method" },
        { "match": { "headers": { "X-Tenant": "blue" } }, "upstream": "by-header" },
        { "match": { "query": { "v": "2", "beta": "" } }, "upstream": "by-query" } ] }"#,
    );
    let up = |r: Req<'_>| upstream(&p, &r);
    assert_eq!(up(Req { host: "static.example.com", ..GET }).as_deref(), Some("by-host"));
    assert_eq!(up(Req { host: "STATIC.example.COM:8443", ..GET }).as_deref(), Some("by-host"), "port stripped");
    assert_eq!(up(Req { host: "static.example.com.evil", ..GET }), None);
    assert_eq!(up(Req { path: "/exact", ..GET }).as_deref(), Some("by-path"));
    assert_eq!(up(Req { path: "/exact?x=1", ..GET }).as_deref(), Some("by-path"), "query ignored");
    assert_eq!(up(Req { path: "/exact/more", ..GET }), None);
    assert_eq!(up(Req { path: "/pre/a/b?q", ..GET }).as_deref(), Some("by-prefix"));
    assert_eq!(up(Req { path: "/pre", ..GET }), None);
    assert_eq!(up(Req { method: "DELETE", ..GET }).as_deref(), Some("by-method"));
    assert_eq!(up(Req { headers: &[("x-tenant", "blue")], ..GET }).as_deref(), Some("by-header"));
    assert_eq!(up(Req { headers: &[("x-tenant", "blue2")], ..GET }), None);
    assert_eq!(up(Req { path: "/q?a=1&v=2&beta", ..GET }).as_deref(), Some("by-query"));
    assert_eq!(up(Req { path: "/q?beta=&v=2", ..GET }).as_deref(), Some("by-query"));
    assert_eq!(up(Req { path: "/q?v=2", ..GET }), None, "all query conditions must hold");
    assert_eq!(up(Req { path: "/q?v=20&beta", ..GET }), None);
}

#[test]
fn all_conditions_must_hold_and_first_match_wins() {
    let p = router(
        r#"{ "routes": [
        { "match": { "path_prefix": "/api/", "method": "POST", "headers": { "x-a": "1" } }, "upstream": "narrow" },
        { "match": { "path_prefix": "/api/" }, "upstream": "wide" },
        { "match": { "path_prefix": "/api/v2/" }, "upstream": "never" },
        { "match": {}, "upstream": "catch-all" } ] }"#,
    );
    let up = |r: Req<'_>| upstream(&p, &r);
    assert_eq!(up(Req { method: "POST", path: "/api/x", headers: &[("x-a", "1")], ..GET }).as_deref(), Some("narrow"));
    assert_eq!(up(Req { method: "GET", path: "/api/x", headers: &[("x-a", "1")], ..GET }).as_deref(), Some("wide"));
    assert_eq!(up(Req { path: "/api/v2/x", ..GET }).as_deref(), Some("wide"));
    assert_eq!(up(Req { path: "/other", ..GET }).as_deref(), Some("catch-all"));
}

#[test]
fn example_configuration() {
    let p = router(EXAMPLE);
    let up = |r: Req<'_>| upstream(&p, &r);
    assert_eq!(up(Req { path: "/api/x", headers: &[("x-canary", "1")], ..GET }).as_deref(), Some("canary"));
    let (u, h) = route(&p, &Req { path: "/api/users", ..GET });
    assert_eq!((u.as_deref(), header(&h, ":path")), (Some("api"), Some("/api/users")), "strip_prefix false");
    let (u, h) = route(&p, &Req { host: "static.example.com:443", path: "/logo.png", ..GET });
    assert_eq!(u.as_deref(), Some("static"));
    assert_eq!(header(&h, ":authority"), Some("static.internal"));
    assert_eq!(up(Req { path: "/anything", ..GET }).as_deref(), Some("stable"));
    assert_eq!(router_upstreams(EXAMPLE).unwrap(), vec!["canary", "api", "stable", "static"]);
}

#[test]
fn no_match_sets_nothing() {
    let p = router(r#"{ "routes": [{ "match": { "path_prefix": "/api/" }, "upstream": "api" }] }"#);
    let (u, h) = route(&p, &Req { path: "/web", ..GET });
    assert_eq!(u, None);
    assert_eq!(header(&h, ":path"), Some("/web"));
}

#[test]
fn strip_prefix_and_host_rewrite_edit_the_request() {
    let p = router(
        r#"{ "routes": [
        { "match": { "path_prefix": "/api/" }, "upstream": "api", "strip_prefix": true, "host_rewrite": "api.internal:8080" },
        { "match": { "path_prefix": "/svc" }, "upstream": "svc", "strip_prefix": true } ] }"#,
    );
    let (u, h) = route(&p, &Req { path: "/api/users?id=7", headers: &[("host", "example.com")], ..GET });
    assert_eq!(u.as_deref(), Some("api"));
    assert_eq!(header(&h, ":path"), Some("/users?id=7"));
    assert_eq!(header(&h, ":authority"), Some("api.internal:8080"));
    assert_eq!(header(&h, "host"), Some("api.internal:8080"), "a host header is rewritten too");
    assert_eq!(header(&route(&p, &Req { path: "/api/", ..GET }).1, ":path"), Some("/"));
    assert_eq!(header(&route(&p, &Req { path: "/svc", ..GET }).1, ":path"), Some("/"));
    assert_eq!(header(&route(&p, &Req { path: "/svc?a=b", ..GET }).1, ":path"), Some("/?a=b"));
    assert_eq!(header(&route(&p, &Req { path: "/svc/x/y", ..GET }).1, ":path"), Some("/x/y"));
    let (_, h) = route(&p, &Req { path: "/svc/x", ..GET });
    assert_eq!(header(&h, ":authority"), Some("example.com"), "no host_rewrite on that route");
    assert_eq!(header(&h, "host"), None, "no host header is added");
}

#[test]
fn weighted_split_within_five_sigma() {
    let p = router(
        r#"{ "routes": [{ "match": { "path_prefix": "/" },
            "split": [{ "upstream": "stable", "weight": 90 }, { "upstream": "canary", "weight": 10 }, { "upstream": "off", "weight": 0 }] }] }"#,
    );
    let mut c: HashMap<String, usize> = HashMap::new();
    for _ in 0..10_000 {
        *c.entry(upstream(&p, &GET).unwrap()).or_default() += 1;
    }
    let sigma = (10_000.0f64 * 0.9 * 0.1).sqrt();
    let stable = c["stable"] as f64;
    assert!((stable - 9000.0).abs() < 5.0 * sigma, "{c:?}");
    assert_eq!(c["stable"] + c["canary"], 10_000, "weight 0 never chosen: {c:?}");
}

#[test]
fn sticky_split_keeps_a_user_on_one_upstream() {
    let p = router(EXAMPLE);
    let mut c: HashMap<String, usize> = HashMap::new();
    for u in 0..2000 {
        let user = format!("user-{u}");
        let first = upstream(&p, &Req { path: "/shop/cart", headers: &[("x-user", &user)], ..GET }).unwrap();
        for _ in 0..3 {
            let again = upstream(&p, &Req { path: "/shop/item", headers: &[("x-user", &user)], ..GET }).unwrap();
            assert_eq!(again, first, "{user}");
        }
        *c.entry(first).or_default() += 1;
    }
    let canary = c["canary"] as f64 / 2000.0;
    assert!((0.05..0.15).contains(&canary), "users spread ~10% to canary: {c:?}");
    // Sticky by cookie.
    let p = router(
        r#"{ "routes": [{ "split": [{ "upstream": "a", "weight": 1 }, { "upstream": "b", "weight": 1 }], "sticky": "cookie:sid" }] }"#,
    );
    for sid in ["1", "2", "3", "abc", "zzz"] {
        let cookie = format!("other=x; sid={sid}");
        let first = upstream(&p, &Req { headers: &[("cookie", &cookie)], ..GET });
        assert!((0..10).all(|_| upstream(&p, &Req { headers: &[("cookie", &cookie)], ..GET }) == first));
    }
}

#[test]
fn bad_configurations_are_refused_with_the_reason() {
    for (config, needle) in [
        ("", "router: configuration is empty"),
        ("{", "router: configuration is not valid JSON"),
        (r#"{"routes": []}"#, "router: routes must be a non-empty array"),
        (r#"{"routes": [{"upstream": "a"}], "x": 1}"#, r#"router: unknown option "x""#),
        (
            r#"{"routes": [{"upstream": "a"}, {"upstream": "b"}, {"split": [{"upstream": "a", "weight": 0}]}]}"#,
            "router: routes[2].split weights must sum to > 0",
        ),
        (
            r#"{"routes": [{"split": [{"upstream": "a", "weight": -1}]}]}"#,
            "routes[0].split[0].weight must be an integer",
        ),
        (r#"{"routes": [{"split": [{"upstream": "a", "weight": 1.5}]}]}"#, "routes[0].split[0].weight"),
        (r#"{"routes": [{"match": {"paht": "/"}, "upstream": "a"}]}"#, r#"routes[0].match: unknown key "paht""#),
        (r#"{"routes": [{"match": {}, "upstraem": "a"}]}"#, r#"routes[0]: unknown key "upstraem""#),
        (r#"{"routes": [{"match": {"path_prefix": "/"}}]}"#, "routes[0] needs upstream or split"),
        (r#"{"routes": [{"upstream": "a", "split": [{"upstream": "b", "weight": 1}]}]}"#, "both upstream and split"),
        (r#"{"routes": [{"upstream": "a", "strip_prefix": true}]}"#, "strip_prefix needs match.path_prefix"),
        (r#"{"routes": [{"upstream": "a", "sticky": "header:x"}]}"#, "sticky only applies to split"),
        (r#"{"routes": [{"split": [{"upstream": "a", "weight": 1}], "sticky": "ip"}]}"#, "sticky must be"),
        (r#"{"routes": [{"match": {"headers": {"x": 1}}, "upstream": "a"}]}"#, "match.headers.x must be a string"),
        (r#"{"routes": [{"match": {"path": "api"}, "upstream": "a"}]}"#, "match.path must start with '/'"),
        (r#"{"routes": [{"match": {"host": ""}, "upstream": "a"}]}"#, "match.host must be a non-empty string"),
    ] {
        let err = load(config).unwrap_err();
        assert!(matches!(err, PluginError::Configure { .. }), "{config}: {err}");
        assert!(err.to_string().contains(needle), "{config}: {err}");
    }
}
