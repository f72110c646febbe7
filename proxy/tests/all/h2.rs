//! HTTP/2: h2c with prior knowledge downstream, HTTP/2 to upstreams configured with `protocol = "h2"`, and many
//! concurrent streams on one connection.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
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
