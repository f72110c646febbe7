//! Hot reload: a good file swaps atomically without disturbing in-flight requests, a bad one is refused with
//! its reasons and the running configuration keeps serving, listeners come and go.

use crate::support::*;
use std::time::Duration;

#[tokio::test]
async fn good_reload_swaps_and_in_flight_requests_finish() -> TestResult {
    let slow = TestUpstream::start_with("old", Behavior::Delay(Duration::from_millis(800))).await;
    let new = TestUpstream::start("new").await;
    let p = Portico::start(&reverse_config(&quoted(&[&slow]), "")).await;
    let web = p.addr("web").await;

    let in_flight = tokio::spawn(get(web, "/slow"));
    // The request is in flight once the old upstream has it (not after a guessed sleep).
    assert!(eventually(Duration::from_secs(30), || slow.hits() == 1).await, "the request reached the old upstream");
    p.rewrite(&reverse_config(&quoted(&[&new]), ""));
    let reload = send(p.admin, "POST", "/config/reload", &[], "").await?;
    assert_eq!(reload.status, 200, "{:?}", reload.body);

    let answer = in_flight.await??;
    assert_eq!(answer.status, 200, "the in-flight request finished on the old upstream");
    assert_eq!(answer.header("x-upstream"), "old");
    let answer = get(web, "/").await?;
    assert_eq!(answer.header("x-upstream"), "new");
    assert_eq!(p.addr("web").await, web, "the listening socket was kept");
    Ok(())
}

#[tokio::test]
async fn bad_reload_is_refused_with_reasons_and_old_config_serves() -> TestResult {
    let a = TestUpstream::start("a").await;
    let p = Portico::start(&reverse_config(&quoted(&[&a]), "")).await;
    let web = p.addr("web").await;

    p.rewrite(&reverse_config(&quoted(&[&a]), "retries = \"many\"\nconnect_timout = \"1s\""));
    let refused = send(p.admin, "POST", "/config/reload", &[], "").await?;
    assert_eq!(refused.status, 400);
    let body = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(body.contains("keeps serving"), "{body}");
    assert!(body.contains("line"), "the reason names the line: {body}");

    // A file that parses but cannot be served (a TLS file that does not exist) is refused too.
    let missing_tls = reverse_config(&quoted(&[&a]), "").replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\ntls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }\n",
    );
    p.rewrite(&missing_tls);
    let refused = send(p.admin, "POST", "/config/reload", &[], "").await?;
    assert_eq!(refused.status, 400);
    assert!(String::from_utf8_lossy(&refused.body).contains("/nonexistent/c.pem"));

    let answer = get(web, "/").await?;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-upstream"), "a");
    let scrape = String::from_utf8(get(p.admin, "/metrics").await?.body.to_vec())?;
    assert!(scrape.contains(r#"portico_config_reloads_total{result="refused"} 2"#), "{scrape}");
    Ok(())
}

#[tokio::test]
async fn reload_adds_and_removes_listeners() -> TestResult {
    let a = TestUpstream::start("a").await;
    let base = reverse_config(&quoted(&[&a]), "");
    let p = Portico::start(&base).await;
    let with_api = format!("{base}\n[[listener]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n");
    p.rewrite(&with_api);
    assert_eq!(send(p.admin, "POST", "/config/reload", &[], "").await?.status, 200);
    let api = p.addr("api").await;
    assert_eq!(get(api, "/").await?.status, 200);

    p.rewrite(&base);
    assert_eq!(send(p.admin, "POST", "/config/reload", &[], "").await?.status, 200);
    assert!(!p.server.bound_addresses().await.contains_key("api"));
    let gone = eventually(Duration::from_secs(3), || std::net::TcpStream::connect(api).is_err()).await;
    assert!(gone, "the removed listener still accepts");
    assert_eq!(get(p.addr("web").await, "/").await?.status, 200);
    Ok(())
}
