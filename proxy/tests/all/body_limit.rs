//! `max_request_body` (nginx's `client_max_body_size`): a body announced larger than the listener takes is
//! refused 413 before anything goes upstream; one that grows past it while streaming (chunked, HTTP/2 without a
//! length) fails with 413 when it does; bodies within the limit pass whole. Reverse and forward listeners,
//! HTTP/1 (Portico's own server and hyper's) and HTTP/2.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The limit the tests configure.
const LIMIT: usize = 20 * 1024;

fn limited(config: String) -> String {
    config.replacen(
        "listen = \"127.0.0.1:0\"\nupstream",
        "listen = \"127.0.0.1:0\"\nmax_request_body = \"20KiB\"\nupstream",
        1,
    )
}

/// A POST of `len` bytes with its `Content-Length`: the status, and the upstream's `body_len` when it answered.
async fn post(addr: SocketAddr, target: &str, len: usize) -> Result<(u16, serde_json::Value), String> {
    let answer = send(addr, "POST", target, &[], &"x".repeat(len)).await?;
    Ok((answer.status.as_u16(), answer.json()))
}

/// A chunked POST of `chunks` chunks of 4 KiB written raw; the status line of the answer.
async fn post_chunked(addr: SocketAddr, chunks: usize) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!("POST /up HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    let chunk = [b"1000\r\n".as_slice(), &[b'x'; 4096], b"\r\n"].concat();
    for _ in 0..chunks {
        // Portico may answer and close once the limit is passed; what is left unsent does not matter.
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    Ok(reply.lines().next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn reverse_http1_bodies_over_the_limit_get_413() -> TestResult {
    let up = TestUpstream::start("app").await;
    let p = Portico::start(&limited(reverse_config(&quoted(&[&up]), ""))).await;
    let web = p.addr("web").await;
    // Exactly the limit passes, whole (a body this size is read by hyper, past Portico's own server's buffer).
    let (status, echo) = post(web, "/up", LIMIT).await?;
    assert_eq!((status, echo["body_len"].as_u64()), (200, Some(LIMIT as u64)), "{echo}");
    // One byte more is refused from its Content-Length: the upstream never sees it.
    let hits = up.hits();
    let answer = send(web, "POST", "/up", &[], &"x".repeat(LIMIT + 1)).await?;
    assert_eq!(answer.status, 413, "{:?}", answer.body);
    assert_eq!(answer.json()["error"], "payload_too_large");
    assert_eq!(up.hits(), hits, "a refused body reached the upstream");
    // Chunked, no length to refuse up front: 4 KiB chunks fail once they pass 20 KiB.
    assert!(post_chunked(web, 8).await?.starts_with("HTTP/1.1 413"));
    assert!(post_chunked(web, 5).await?.starts_with("HTTP/1.1 200"));
    // The listener still serves after the refusals.
    assert_eq!(post(web, "/up", 10).await?.0, 200);
    Ok(())
}

/// A client that sends its whole upload before reading (most do, without `Expect: 100-continue`) gets its
/// 413: the rest of a refused HTTP/1 body is read and thrown away for a while, as nginx's lingering close does,
/// rather than the connection closed on unread bytes, which resets it and loses the answer.
#[tokio::test]
async fn a_refused_upload_is_read_to_its_end_so_its_413_is_not_lost() -> TestResult {
    let up = TestUpstream::start("app").await;
    let p = Portico::start(&limited(reverse_config(&quoted(&[&up]), ""))).await;
    let web = p.addr("web").await;
    for chunked in [false, true] {
        let mut stream = TcpStream::connect(web).await?;
        let size = 4 << 20;
        let framing =
            if chunked { "Transfer-Encoding: chunked".to_string() } else { format!("Content-Length: {size}") };
        stream.write_all(format!("POST /up HTTP/1.1\r\nHost: {web}\r\n{framing}\r\n\r\n").as_bytes()).await?;
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..size / block.len() {
            let framed = if chunked { [b"10000\r\n".as_slice(), &block, b"\r\n"].concat() } else { block.clone() };
            stream.write_all(&framed).await.map_err(|e| format!("chunked={chunked}: upload cut off: {e}"))?;
        }
        if chunked {
            stream.write_all(b"0\r\n\r\n").await?;
        }
        let mut reply = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut reply)).await??;
        let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
        assert!(reply.starts_with("HTTP/1.1 413"), "chunked={chunked}: {reply}");
    }
    Ok(())
}

#[tokio::test]
async fn small_limits_hold_for_bodies_read_with_their_head() -> TestResult {
    // Bodies of up to 16 KiB arrive with their head and are read by Portico's own HTTP/1 server.
    let up = TestUpstream::start("app").await;
    let config = reverse_config(&quoted(&[&up]), "").replacen(
        "listen = \"127.0.0.1:0\"\nupstream",
        "listen = \"127.0.0.1:0\"\nmax_request_body = 100\nupstream",
        1,
    );
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;
    assert_eq!(post(web, "/up", 100).await?.0, 200);
    assert_eq!(post(web, "/up", 101).await?.0, 413);
    assert_eq!(post(web, "/up", 0).await?.0, 200);
    // 0 is no limit, as nginx reads it.
    let unlimited = config.replace("max_request_body = 100", "max_request_body = 0");
    let p = Portico::start(&unlimited).await;
    assert_eq!(post(p.addr("web").await, "/up", 100_000).await?.0, 200);
    Ok(())
}

/// An HTTP/2 request whose body comes as `frames` 4 KiB DATA frames, with or without a `content-length`.
async fn h2_post(
    addr: SocketAddr,
    frames: usize,
    with_length: bool,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let chunks = (0..frames).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 4096]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let mut request = http::Request::post(format!("http://{addr}/up"));
    if with_length {
        request = request.header("content-length", frames * 4096);
    }
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request.body(body)?)).await??;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[tokio::test]
async fn reverse_http2_bodies_over_the_limit_get_413() -> TestResult {
    let up = TestUpstream::start("app").await;
    let p = Portico::start(&limited(reverse_config(&quoted(&[&up]), ""))).await;
    let web = p.addr("web").await;
    assert_eq!(h2_post(web, 5, false).await?, 200);
    assert_eq!(h2_post(web, 5, true).await?, 200);
    let hits = up.hits();
    assert_eq!(h2_post(web, 8, true).await?, 413);
    assert_eq!(up.hits(), hits, "a body refused by its content-length reached the upstream");
    assert_eq!(h2_post(web, 8, false).await?, 413);
    Ok(())
}

#[tokio::test]
async fn forward_listeners_hold_bodies_to_the_limit() -> TestResult {
    let origin = TestUpstream::start("origin").await;
    let config = forward_config(443, r#"allow = ["127.0.0.0/8"]"#).replacen(
        "mode = \"forward\"",
        "mode = \"forward\"\nmax_request_body = \"20KiB\"",
        1,
    );
    let p = Portico::start(&config).await;
    let egress = p.addr("egress").await;
    let target = format!("http://{}/up", origin.addr);
    let (status, echo) = post(egress, &target, LIMIT).await?;
    assert_eq!((status, echo["body_len"].as_u64()), (200, Some(LIMIT as u64)), "{echo}");
    let hits = origin.hits();
    assert_eq!(post(egress, &target, LIMIT + 1).await?.0, 413);
    assert_eq!(origin.hits(), hits, "a refused body reached the origin");
    Ok(())
}

#[tokio::test]
async fn a_limit_that_does_not_parse_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portico.toml");
    let config = limited(reverse_config(&["\"127.0.0.1:9\"".to_string()], "")).replace("\"20KiB\"", "\"twenty\"");
    std::fs::write(&path, config).expect("write config");
    let error = format!("{:?}", portico::config::load(&path).expect_err("an unreadable size is refused"));
    assert!(error.contains("max_request_body"), "{error}");
}
