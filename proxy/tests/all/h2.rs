//! HTTP/2: h2c with prior knowledge downstream, HTTP/2 to upstreams configured with `protocol = "h2"`, and many
//! concurrent streams on one connection.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
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

/// Sends `GET /slow/{n}` and resets its stream a few milliseconds later (dropping the response future sends
/// RST_STREAM CANCEL); false when the connection takes no more streams.
async fn send_and_reset(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    n: usize,
) -> Result<bool, http::Error> {
    if sender.ready().await.is_err() {
        return Ok(false);
    }
    let response = sender.send_request(http::Request::get(format!("http://a/slow/{n}")).body(Empty::<Bytes>::new())?);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_millis(5), response).await;
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(true)
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
        if !send_and_reset(&mut sender, started).await? {
            break;
        }
        started += 1;
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

/// A raw HTTP/2 client that opens streams for `GET /slow/N` and resets each at once, and never answers the
/// server's PINGs (so a graceful shutdown never completes). Returns how many it sent before the server closed
/// the connection, or `None` if it was still open after `limit`.
async fn resets_ignoring_pings(
    addr: std::net::SocketAddr,
    limit: Duration,
    batch: u32,
    gap: Duration,
) -> std::io::Result<Option<u32>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut read, mut write) = tcp.into_split();
    // Read and drop everything the server sends; the task ends when the server closes.
    let closed = tokio::spawn(async move {
        let mut buf = [0u8; 16 * 1024];
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    write.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    write.write_all(&frame(4, 0, 0, &[])).await?; // SETTINGS
    write.write_all(&frame(4, 1, 0, &[])).await?; // ACK of the server's SETTINGS
    let deadline = tokio::time::Instant::now() + limit;
    let mut sent = 0u32;
    while tokio::time::Instant::now() < deadline {
        if closed.is_finished() {
            return Ok(Some(sent));
        }
        // `batch` streams opened, then all reset `gap` later.
        let (mut opens, mut resets) = (Vec::new(), Vec::new());
        for n in sent..sent + batch {
            let stream = 1 + 2 * n;
            let path = format!("/slow/{n}");
            // HPACK: :method GET (2), :scheme http (6), :path literal (name 4), :authority literal (name 1).
            let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
            block.extend_from_slice(path.as_bytes());
            block.extend_from_slice(&[0x01, 0x01, b'a']);
            opens.extend(frame(1, 0x5, stream, &block)); // HEADERS, END_STREAM | END_HEADERS
            resets.extend(frame(3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
        }
        if write.write_all(&opens).await.is_err() {
            return Ok(Some(sent));
        }
        tokio::time::sleep(gap).await;
        if write.write_all(&resets).await.is_err() {
            return Ok(Some(sent));
        }
        sent += batch;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(None)
}

/// The close a connection's cancels ask for is not left to the client: one that never answers the shutdown's
/// PING (so HTTP/2's graceful shutdown never completes) is closed outright soon after.
#[tokio::test]
async fn a_client_ignoring_the_shutdown_ping_is_closed_all_the_same() -> TestResult {
    let upstream = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_secs(5))).await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let sent = resets_ignoring_pings(p.addr("web").await, Duration::from_secs(30), 1, Duration::from_millis(2)).await?;
    let sent = sent.ok_or("the connection was still open after 30 s of resets")?;
    // ~100 free cancels, then at most CLOSE_WITHIN (2 s) of streams at a few hundred a second.
    assert!(sent < 3000, "{sent} streams were taken before the close");
    Ok(())
}

/// Until that close, the streams such a client opens are answered 429 by Portico itself, not sent upstream:
/// a probe opening 100 streams every 20 ms had 4,900 requests reach the upstream in those two seconds.
#[tokio::test]
async fn a_connection_closing_for_its_cancels_sends_nothing_more_upstream() -> TestResult {
    let upstream = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_secs(5))).await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let sent =
        resets_ignoring_pings(p.addr("web").await, Duration::from_secs(30), 50, Duration::from_millis(50)).await?;
    let sent = sent.ok_or("the connection was still open after 30 s of resets")?;
    let hits = upstream.hits();
    assert!(hits <= 500, "{hits} of the {sent} requests reached the upstream");
    Ok(())
}

/// A cheap request the proxy refuses itself, slipped between resets, does not keep the cancels at half of
/// the connection's requests.
#[tokio::test]
async fn refused_requests_between_resets_do_not_hide_them() -> TestResult {
    let upstream = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_secs(5))).await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let tcp = tokio::net::TcpStream::connect(p.addr("web").await).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let mut started = 0;
    while started < 1000 && !conn.is_finished() {
        // First a path with a backslash: 400 from Portico, nothing upstream.
        if sender.ready().await.is_err() {
            break;
        }
        let refused = http::Request::get("http://a/a\\b").body(Empty::<Bytes>::new())?;
        match tokio::time::timeout(Duration::from_secs(5), sender.send_request(refused)).await {
            // 429 once the connection is closing for its cancels.
            Ok(Ok(answer)) => assert!(matches!(answer.status().as_u16(), 400 | 429), "{}", answer.status()),
            Ok(Err(e)) if started == 0 => return Err(format!("the refused request was not sent: {e}").into()),
            _ => {}
        }
        // Then a request reset at once.
        if !send_and_reset(&mut sender, started).await? {
            break;
        }
        started += 1;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), conn).await.is_ok();
    assert!(closed && started < 1000, "the connection is still open after {started} resets");
    Ok(())
}

/// Rapid reset with requests that carry a body: each stream announces a body, reaches the upstream, and is
/// reset before the body comes. Portico answers those 400 (the body broke), and they count as cancels: counted
/// as refusals, 20,000 of them reached the upstream over one connection without a GOAWAY.
#[tokio::test]
async fn resets_of_requests_whose_body_is_owed_are_cancels() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let tcp = tokio::net::TcpStream::connect(p.addr("web").await).await?;
    type Owed = StreamBody<futures_util::stream::Pending<Result<hyper::body::Frame<Bytes>, std::io::Error>>>;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, Owed>(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let mut started = 0;
    while started < 1000 && !conn.is_finished() {
        if sender.ready().await.is_err() {
            break;
        }
        let request = http::Request::post(format!("http://a/owed/{started}"))
            .header("content-length", "10")
            .body(StreamBody::new(futures_util::stream::pending()))?;
        let response = sender.send_request(request);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(5), response).await;
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        started += 1;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), conn).await.is_ok();
    assert!(closed && started < 1000, "the connection is still open after {started} resets");
    Ok(())
}

/// An HTTP/2 client's cookie crumbs (browsers split `cookie` for header compression) reach an HTTP/1.1 upstream
/// as one field, joined with `; ` (RFC 9113 §8.2.3); the upstream saw 120 `cookie` lines before.
#[tokio::test]
async fn cookie_crumbs_reach_an_http1_upstream_as_one_field() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let tcp = tokio::net::TcpStream::connect(p.addr("web").await).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut request = http::Request::get("http://a/crumbs");
    for crumb in ["a=1", "b=2", "c=3"] {
        request = request.header("cookie", crumb);
    }
    let answer = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
    let echo: serde_json::Value = serde_json::from_slice(&answer.into_body().collect().await?.to_bytes())?;
    assert_eq!(echo["headers"]["cookie"], "a=1; b=2; c=3", "{echo}");
    Ok(())
}

/// A client sending WINDOW_UPDATE frames and nothing else (they cost Portico work and carry no request) is cut
/// off once it has sent far more of them than of requests, as nginx's flood check does; a probe kept a core
/// ~90 % busy that way for as long as the connection lived.
#[tokio::test]
async fn a_control_frame_flood_is_cut_off() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let mut tcp = tokio::net::TcpStream::connect(p.addr("web").await).await?;
    // The preface, an empty SETTINGS, then WINDOW_UPDATE +1 on the connection, 64 KiB of them a write.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await?;
    let update = [0u8, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let batch: Vec<u8> = update.iter().copied().cycle().take(update.len() * 5000).collect();
    let (mut reader, mut writer) = tcp.into_split();
    let drained = tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let mut sent = 0usize;
    while sent < 256 << 20 {
        if writer.write_all(&batch).await.is_err() {
            break;
        }
        sent += batch.len();
    }
    assert!(sent < 64 << 20, "{sent} bytes of WINDOW_UPDATE frames were taken");
    tokio::time::timeout(Duration::from_secs(10), drained).await??;
    let metrics = get(p.admin, "/metrics").await?;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("portico_http2_floods_total{listener=\"web\"} 1"), "the close is counted");
    // Clients that send requests are not floods: a few hundred on one connection, and the connection stays.
    let tcp = tokio::net::TcpStream::connect(p.addr("web").await).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    for i in 0..300 {
        sender.ready().await?;
        let answer =
            sender.send_request(http::Request::get(format!("http://a/{i}")).body(Empty::<Bytes>::new())?).await?;
        assert_eq!(answer.status(), 200);
        answer.into_body().collect().await?;
    }
    assert!(!conn.is_finished());
    Ok(())
}

/// What HTTP/1.1's parser refuses is refused on HTTP/2 too, before the upstream sees it: more than 100 header
/// fields (431; cookie crumbs count as the one field they are joined into), and a value with whitespace at an
/// end (400; RFC 9113 §8.2.1 calls the request malformed).
#[tokio::test]
async fn http2_heads_http1_would_refuse_are_refused() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let tcp = tokio::net::TcpStream::connect(p.addr("web").await).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut send = async |fields: usize,
                          crumbs: usize,
                          extra: Option<&'static str>|
           -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
        let mut request = http::Request::get("http://a/fields");
        for i in 0..fields {
            request = request.header(format!("x-field-{i}"), "v");
        }
        for i in 0..crumbs {
            request = request.header("cookie", format!("c{i}=1"));
        }
        if let Some(value) = extra {
            request = request.header("x-padded", value);
        }
        sender.ready().await?;
        let answer = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    assert_eq!(send(90, 0, None).await?.0, 200);
    assert_eq!(send(10, 150, None).await?.0, 200, "crumbs are one field");
    let hits = upstream.hits();
    // Portico's own answers (an upstream's hyper would refuse so many fields with a 431 of its own).
    let (status, body) = send(101, 0, None).await?;
    assert!(status == 431 && body.contains("header_fields_too_large"), "{status} {body}");
    for padded in [" leading", "trailing\t"] {
        let (status, body) = send(1, 0, Some(padded)).await?;
        assert!(status == 400 && body.contains("whitespace"), "{status} {body}");
    }
    assert_eq!(upstream.hits(), hits, "a refused request reached the upstream");
    Ok(())
}
