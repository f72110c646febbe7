//! The admin API: token on mutating calls, drain and weight changes steering traffic, redaction, readiness.

use crate::support::*;

fn with_token(endpoints: &[String]) -> String {
    reverse_config(endpoints, "")
        .replace("[admin]\nlisten = \"127.0.0.1:0\"", "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"")
}

#[tokio::test]
async fn mutating_calls_need_the_token_and_reads_are_redacted() -> TestResult {
    let a = TestUpstream::start("a").await;
    let p = Portico::start(&with_token(&quoted(&[&a]))).await;
    assert_eq!(get(p.admin, "/healthz").await?.status, 200);
    assert_eq!(get(p.admin, "/readyz").await?.status, 200);
    let refused = send(p.admin, "POST", "/config/reload", &[], "").await?;
    assert_eq!(refused.status, 401);
    let wrong = send(p.admin, "POST", "/config/reload", &[("authorization", "Bearer nope")], "").await?;
    assert_eq!(wrong.status, 401);
    let ok = send(p.admin, "POST", "/config/reload", &[("authorization", "Bearer s3cret")], "").await?;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let config = get(p.admin, "/config").await?;
    assert_eq!(config.json()["admin"]["token"], "<redacted>");
    assert!(!String::from_utf8_lossy(&config.body).contains("s3cret"));
    assert_eq!(get(p.admin, "/no/such/route").await?.status, 404);
    Ok(())
}

#[tokio::test]
async fn drain_and_weight_steer_traffic() -> TestResult {
    let (a, b) = (TestUpstream::start("a").await, TestUpstream::start("b").await);
    let p = Portico::start(&with_token(&quoted(&[&a, &b]))).await;
    let web = p.addr("web").await;
    let auth = [("authorization", "Bearer s3cret")];

    let drained = send(p.admin, "POST", &format!("/upstreams/app/endpoints/{}/drain", a.addr), &auth, "").await?;
    assert_eq!(drained.status, 200, "{:?}", drained.body);
    assert_eq!(drained.json()["endpoints"][0]["status"], "drained");
    for _ in 0..10 {
        assert_eq!(get(web, "/").await?.header("x-upstream"), "b");
    }
    assert_eq!(a.hits(), 0);

    let path = format!("/upstreams/app/endpoints/{}/undrain", a.addr);
    assert_eq!(send(p.admin, "POST", &path, &auth, "").await?.status, 200);
    let path = format!("/upstreams/app/endpoints/{}/weight", a.addr);
    assert_eq!(send(p.admin, "PUT", &path, &auth, r#"{"weight": 3}"#).await?.status, 200);
    assert_eq!(send(p.admin, "PUT", &path, &auth, r#"{"weight": 0}"#).await?.status, 400);
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..40 {
        assert_eq!(get(web, "/").await?.status, 200);
    }
    assert_eq!((a.hits() - a0, b.hits() - b0), (30, 10));

    let missing = send(p.admin, "POST", "/upstreams/app/endpoints/10.9.9.9:1/drain", &auth, "").await?;
    assert_eq!(missing.status, 404);
    Ok(())
}

#[tokio::test]
async fn admin_answers_on_a_unix_socket() -> TestResult {
    let a = TestUpstream::start("a").await;
    let p = Portico::start(&reverse_config(&quoted(&[&a]), "")).await;
    let path = p.dir.path().join("admin.sock");
    portico::admin::serve_unix(p.server.clone(), &path).await?;
    let stream = tokio::net::UnixStream::connect(&path).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req =
        http::Request::get("/healthz").header("host", "portico").body(http_body_util::Empty::<bytes::Bytes>::new())?;
    assert_eq!(sender.send_request(req).await?.status(), 200);
    Ok(())
}

/// A web page in a browser on the admin's host cannot change anything through the admin API: a change another
/// site's page asks for is refused (403) even without a token (a `text/plain` POST needs no preflight), and
/// without a token so is one from a page whose name was made to resolve to 127.0.0.1 (DNS rebinding: its
/// requests are then same-origin), nor read anything. Clients that are not browsers go on as before.
#[tokio::test]
async fn a_browser_page_cannot_change_a_tokenless_admin_api() -> TestResult {
    let a = TestUpstream::start("a").await;
    let p = Portico::start(&reverse_config(&quoted(&[&a]), "")).await;
    let drain = format!("/upstreams/app/endpoints/{}/drain", a.addr);
    let page = [("origin", "http://attacker.example"), ("content-type", "text/plain")];
    let refused = send(p.admin, "POST", &drain, &page, "").await?;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    let rebound = [("host", "attacker.example:9901"), ("origin", "http://attacker.example:9901")];
    assert_eq!(send(p.admin, "POST", &drain, &rebound, "").await?.status, 403);
    let groups = get(p.admin, "/upstreams").await?.json();
    assert_eq!(groups[0]["endpoints"][0]["status"], "healthy", "nothing was drained");
    assert_eq!(get(p.addr("web").await, "/").await?.status, 200);
    // A rebinding page's reads carry no Origin, only its own name: refused too, without a token.
    let read = send(p.admin, "GET", "/config", &[("host", "attacker.example:9901")], "").await?;
    assert_eq!(read.status, 403, "{:?}", read.body);
    assert_eq!(send(p.admin, "GET", "/config", &[("host", "localhost")], "").await?.status, 200);
    let drained = send(p.admin, "POST", &drain, &[], "").await?;
    assert_eq!(drained.status, 200, "a client that is not a browser: {:?}", drained.body);
    Ok(())
}
