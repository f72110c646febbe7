//! Malformed and hostile requests: CL+TE ambiguity is refused and nothing reaches the upstream, oversized
//! headers get 431 (an over-long request line 414), slowloris connections are cut by the header-read timeout.

use crate::support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw).await?;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_not_forwarded() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let web = p.addr("web").await;
    // The classic CL.TE desync: a front end trusting Content-Length would forward the smuggled GET as body.
    let attack = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let reply = exchange(web, attack).await?;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(!reply.contains("/smuggled"), "{reply}");
    assert_eq!(upstream.hits(), 0, "nothing of an ambiguous request may be forwarded");

    // The same after a good request on a kept-alive connection.
    let pipelined = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    let reply = exchange(web, pipelined).await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("HTTP/1.1 400"), "{reply}");
    assert_eq!(upstream.hits(), 1);

    // Obfuscated Transfer-Encoding is no excuse either.
    let reply =
        exchange(web, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: xchunked\r\n\r\nabc")
            .await?;
    assert!(reply.starts_with("HTTP/1.1 400") || reply.starts_with("HTTP/1.1 501"), "{reply}");
    assert_eq!(upstream.hits(), 1);
    Ok(())
}

/// Portico's own HTTP/1 server answers plain requests and hands the connection to hyper at the first request
/// with a body; the guard's verdicts still name the right request: a clean upload after two plain GETs is
/// answered, the ambiguous one after it is refused, and nothing of it is forwarded.
#[tokio::test]
async fn the_guard_counts_requests_across_the_hand_over_to_hyper() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let pipelined = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
        GET /two HTTP/1.1\r\nHost: a\r\n\r\n\
        POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
        POST /four HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let reply = exchange(p.addr("web").await, pipelined).await?;
    let statuses: Vec<&str> = reply.match_indices("HTTP/1.1 ").map(|(i, _)| &reply[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "200", "200", "400"], "{reply}");
    assert_eq!(upstream.hits(), 3, "the ambiguous request must not reach the upstream");
    Ok(())
}

/// Nothing a client sends can switch the guard off for the requests after it: a chunk size hyper reads but
/// the guard did not (16 hex digits), transfer codings hyper takes but cannot pass on (`gzip, chunked`), a
/// length beside `Transfer-Encoding` that does not parse, the HTTP/2 preface after a request.
#[tokio::test]
async fn no_request_switches_the_guard_off_for_the_next() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let web = p.addr("web").await;
    let cl_te =
        "POST /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let zeros = format!(
        "POST /zeros HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000005\r\nhello\r\n0\r\n\r\n{cl_te}"
    );
    let reply = exchange(web, zeros.as_bytes()).await?;
    let statuses: Vec<&str> = reply.match_indices("HTTP/1.1 ").map(|(i, _)| &reply[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "400"], "{reply}");
    assert_eq!(upstream.hits(), 1, "only the first request reaches the upstream");

    for head in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: x",
        "Content-Length: 5, 5\r\nTransfer-Encoding: chunked",
    ] {
        let raw =
            format!("POST /coded HTTP/1.1\r\nHost: a\r\n{head}\r\n\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n");
        let reply = exchange(web, raw.as_bytes()).await?;
        assert!(reply.starts_with("HTTP/1.1 400"), "{head}: {reply}");
        assert!(!reply.contains(" 200 "), "{head}: nothing after it is served either: {reply}");
    }
    assert_eq!(upstream.hits(), 1);

    // The HTTP/2 preface after a request Portico's own server answered is no request, never a switch to HTTP/2.
    let mut stream = TcpStream::connect(web).await?;
    stream.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    // A SETTINGS frame (empty), as an HTTP/2 client sends next.
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let head_end = text.find("\r\n\r\n").map_or(0, |i| i + 4);
    let length: usize =
        text.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    let rest = &reply[(head_end + length).min(reply.len())..];
    let rest_text = String::from_utf8_lossy(rest);
    assert!(rest.is_empty() || rest_text.starts_with("HTTP/1.1 4") || rest_text.starts_with("HTTP/1.1 5"), "{text}");
    assert!(!rest.windows(9).any(|w| w == [0, 0, 0, 4, 0, 0, 0, 0, 0]), "no HTTP/2 SETTINGS came back: {rest:?}");
    assert_eq!(upstream.hits(), 2);
    Ok(())
}

#[tokio::test]
async fn oversized_headers_get_431() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let config = reverse_config(&quoted(&[&upstream]), "")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nmax_header_bytes = \"16KiB\"\n");
    let p = Portico::start(&config).await;
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(64 * 1024));
    let reply = exchange(p.addr("web").await, raw.as_bytes()).await?;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(upstream.hits(), 0);

    // A request line longer than the limit is 414 (RFC 9112 §3), however it arrives, and the connection is
    // closed: what follows cannot be read as the rest of a request.
    let web = p.addr("web").await;
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(32 * 1024));
    let reply = exchange(web, long.as_bytes()).await?;
    assert!(reply.starts_with("HTTP/1.1 414") && reply.contains("uri_too_long"), "{}", &reply[..reply.len().min(300)]);
    let mut stream = TcpStream::connect(web).await?;
    for _ in 0..20 {
        stream.write_all("u".repeat(1024).as_bytes()).await?;
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    assert!(reply.starts_with(b"HTTP/1.1 414"), "{}", String::from_utf8_lossy(&reply));
    assert_eq!(upstream.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn slowloris_is_cut_by_the_header_read_timeout() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let config = reverse_config(&quoted(&[&upstream]), "")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nheader_read_timeout = \"300ms\"\n");
    let p = Portico::start(&config).await;
    let mut stream = TcpStream::connect(p.addr("web").await).await?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await?;
    // Trickle one header byte at a time, never finishing the head.
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            // Either a 408 then close, or a plain close.
            if n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "a connection trickling headers for 2s was not cut at 300ms");
    assert_eq!(upstream.hits(), 0);
    Ok(())
}

/// After a first answer, a second head trickled in pieces is cut by the header-read timeout too, not only by
/// the (here much longer) idle timeout.
#[tokio::test]
async fn a_trickled_second_head_is_cut_by_the_header_read_timeout() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let config = reverse_config(&quoted(&[&upstream]), "").replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nheader_read_timeout = \"300ms\"\nidle_timeout = \"60s\"\n",
    );
    let p = Portico::start(&config).await;
    let mut stream = TcpStream::connect(p.addr("web").await).await?;
    stream.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await?;
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    stream.write_all(b"GET /second HTTP/1.1\r\nHost: a\r\n").await?;
    let started = std::time::Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a second head trickled for 5s was not cut at 300ms");
    assert_eq!(upstream.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_slot() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let config = reverse_config(&quoted(&[&upstream]), "")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nmax_connections = 2\n");
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;
    // Two idle keep-alive connections take both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(web).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await?;
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // A third is not served while they stay open...
    let third = tokio::spawn(get(web, "/third"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served beyond max_connections = 2");
    // ...and is served as soon as one closes.
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), third).await???;
    assert_eq!(answer.status, 200);
    Ok(())
}
