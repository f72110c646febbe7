//! HTTP/2: h2c with prior knowledge downstream, HTTP/2 to upstreams configured with `protocol = "h2"`, and many
//! concurrent streams on one connection.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;

#[tokio::test]
async fn h2c_prior_knowledge_multiplexes_streams_to_an_h2_upstream() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "protocol = \"h2\"")).await;
    let tcp = tokio::net::TcpStream::connect(p.addr("web").await).await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for i in 0..50 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let req = http::Request::post(format!("http://test.local/stream/{i}"))
                .body(Full::new(Bytes::from(vec![b'x'; 1000 + i])))?;
            let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
            assert_eq!(response.status(), 200);
            assert_eq!(response.version(), http::Version::HTTP_2);
            let body = response.into_body().collect().await?.to_bytes();
            let echo: serde_json::Value = serde_json::from_slice(&body)?;
            assert_eq!(echo["path"], format!("/stream/{i}"));
            assert_eq!(echo["body_len"], 1000 + i);
            assert_eq!(echo["version"], "HTTP/2.0", "the upstream hop is HTTP/2");
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for s in streams {
        s.await??;
    }
    assert_eq!(upstream.hits(), 50);
    Ok(())
}

#[tokio::test]
async fn http1_clients_reach_an_http1_upstream() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let echo = get(p.addr("web").await, "/one").await?.json();
    assert_eq!(echo["version"], "HTTP/1.1");
    Ok(())
}

/// HTTP/2 rapid reset (CVE-2023-44487) once requests are under way: a client that opens streams to a slow path
/// and resets each a few milliseconds later is sent a GOAWAY once its cancels pass the free allowance, instead
/// of keeping hundreds of upstream requests (and upstream connections) going at once.
#[tokio::test]
async fn a_client_resetting_its_streams_is_sent_away() -> TestResult {
    let upstream = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_secs(5))).await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let tcp = tokio::net::TcpStream::connect(p.addr("web").await).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    const ATTEMPTS: usize = 1000;
    let mut started = 0;
    while started < ATTEMPTS && !conn.is_finished() {
        if sender.ready().await.is_err() {
            break;
        }
        let request = http::Request::get(format!("http://a/slow/{started}")).body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request);
        // Dropping the response future resets its stream (RST_STREAM CANCEL).
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(5), response).await;
        });
        started += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), conn).await.is_ok();
    assert!(closed, "the connection is still open after {started} cancelled requests");
    assert!(started < ATTEMPTS, "every one of the {ATTEMPTS} requests was sent before the connection closed");
    let hits = upstream.hits();
    assert!(hits <= 300, "{hits} requests reached the upstream");
    let metrics = get(p.admin, "/metrics").await?;
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .contains("portico_connections_closed_for_cancels_total{listener=\"web\"} 1"),
        "the close is counted"
    );
    Ok(())
}

/// Cancels that are a small share of a connection's requests cost it nothing, even past the free allowance:
/// here a third of 450 requests.
#[tokio::test]
async fn a_client_cancelling_some_requests_keeps_its_connection() -> TestResult {
    let upstream = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_millis(200))).await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let tcp = tokio::net::TcpStream::connect(p.addr("web").await).await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    for wave in 0..15 {
        let mut requests = Vec::new();
        for i in 0..30 {
            let mut sender = sender.clone();
            let request = http::Request::get(format!("http://a/w{wave}/{i}")).body(Empty::<Bytes>::new())?;
            let response = sender.send_request(request);
            let cancel = i % 3 == 0;
            requests.push(tokio::spawn(async move {
                if cancel {
                    let _ = tokio::time::timeout(Duration::from_millis(50), response).await;
                    return Ok(());
                }
                let response = tokio::time::timeout(Duration::from_secs(10), response).await??;
                assert_eq!(response.status(), 200);
                response.into_body().collect().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        for request in requests {
            request.await??;
        }
    }
    assert!(!conn.is_finished(), "the connection was closed");
    let mut sender = sender;
    let request = http::Request::get("http://a/after").body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await??;
    assert_eq!(response.status(), 200);
    Ok(())
}
