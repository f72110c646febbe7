//! Issue 15, parts 4 to 6: a client's broken body is the client's fault (400/408, never a 502, never counted
//! against the endpoint, never retried elsewhere), 5xx answers name no endpoint address, a reverse listener
//! refuses or normalises the request heads it cannot forward safely, and slow HTTP/2 and HTTP/1 readers do not
//! pin upstream slots (the send timeout).

use crate::hardening::exchange;
use crate::support::*;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two endpoints, outlier detection that ejects after 3 consecutive failures, retries on.
fn ejecting_config(endpoints: &[String], request_timeout: &str) -> String {
    reverse_config(
        endpoints,
        &format!(
            "retries = 2\nrequest_timeout = \"{request_timeout}\"\n\
             outlier_detection = {{ consecutive_5xx = 3, base_ejection_time = \"60s\", max_ejection_percent = 100 }}"
        ),
    )
}

async fn all_healthy(admin: std::net::SocketAddr) -> Result<bool, String> {
    let groups = get(admin, "/upstreams").await?.json();
    Ok(groups[0]["endpoints"].as_array().is_some_and(|e| e.iter().all(|e| e["status"] == "healthy")))
}

#[tokio::test]
async fn a_broken_client_body_is_the_clients_fault() -> TestResult {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let p = Portico::start(&ejecting_config(&quoted(&[&a, &b]), "15s")).await;
    let web = p.addr("web").await;
    for i in 0..6 {
        // An invalid chunk size.
        let raw =
            format!("POST /zz{i} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
        let reply = exchange(web, raw.as_bytes(), Duration::from_secs(20)).await?;
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 400"), "invalid chunk {i}: {reply}");
        // A Content-Length body cut short: 10 of 1,000 bytes, then the client stops sending.
        let mut stream = TcpStream::connect(web).await?;
        stream.write_all(b"POST /short HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789").await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 400"), "short body {i}: {reply}");
    }
    // Twelve broken bodies, each sent upstream at most once: nothing was retried on the other endpoint.
    assert!(a.hits() + b.hits() <= 12, "retried: a {} b {}", a.hits(), b.hits());
    assert!(all_healthy(p.admin).await?, "{}", get(p.admin, "/upstreams").await?.json());
    let scrape = String::from_utf8_lossy(&get(p.admin, "/metrics").await?.body).into_owned();
    assert!(!scrape.lines().any(|l| l.starts_with("portico_upstream_ejections_total{")), "{scrape}");
    assert_eq!(get(web, "/after").await?.status, 200);
    Ok(())
}

/// Through a forward listener too, a broken body is answered 400, not 502.
#[tokio::test]
async fn a_broken_client_body_through_a_forward_listener_is_a_400() -> TestResult {
    let origin = TestUpstream::start("origin").await;
    let p = Portico::start(&forward_config(443, r#"allow = ["127.0.0.0/8"]"#)).await;
    let o = origin.addr;
    let raw = format!(
        "POST http://{o}/zz HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    );
    let reply = exchange(p.addr("egress").await, raw.as_bytes(), Duration::from_secs(20)).await?;
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 400"), "{reply}");
    Ok(())
}

/// A client that sends part of its body and then nothing: the upstream waits on the client, so the request
/// timeout is the client's (408), and the endpoint is not blamed.
#[tokio::test]
async fn a_stalled_client_body_times_out_as_the_clients_fault() -> TestResult {
    let a = TestUpstream::start("a").await;
    let p = Portico::start(&ejecting_config(&quoted(&[&a]), "300ms")).await;
    let web = p.addr("web").await;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut stream = TcpStream::connect(web).await?;
        stream.write_all(b"POST /stall HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789").await?;
        let mut reply = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut reply)).await??;
        let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
        assert!(reply.starts_with("HTTP/1.1 408"), "stall {i}: {reply}");
        held.push(stream);
    }
    assert!(all_healthy(p.admin).await?, "{}", get(p.admin, "/upstreams").await?.json());
    assert_eq!(get(web, "/after").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_gateway_error_names_no_endpoint_address() -> TestResult {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dead = closed.local_addr()?;
    drop(closed);
    let p = Portico::start(&reverse_config(&[format!("\"{dead}\"")], "retries = 0")).await;
    let answer = get(p.addr("web").await, "/").await?;
    assert_eq!(answer.status, 502);
    let body = String::from_utf8_lossy(&answer.body);
    assert!(!body.contains("127.0.0.1") && !body.contains(&dead.port().to_string()), "{body}");
    assert!(body.contains("upstream_failed") && body.contains("\\\"app\\\""), "{body}");
    Ok(())
}

/// Every head a reverse listener must not pass on as it came.
#[tokio::test]
async fn a_reverse_listener_refuses_or_normalises_unsafe_heads() -> TestResult {
    let up = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&up]), "")).await;
    let web = p.addr("web").await;
    let limit = Duration::from_secs(10);

    for (raw, status) in [
        ("GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n", "400"),
        ("GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", "400"),
        ("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", "405"),
    ] {
        let reply = exchange(web, raw.as_bytes(), limit).await?;
        assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{raw:?}: {reply}");
    }
    assert_eq!(up.hits(), 0, "nothing of a refused request may reach the upstream");

    // Absolute-form: the target's authority replaces a different Host (RFC 9112 §3.2.2).
    let reply = exchange(
        web,
        b"GET http://internal.example/abs HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""host":"internal.example""#), "{reply}");
    assert!(!reply.contains("public.example"), "{reply}");

    // An h2c upgrade is dropped: plain HTTP/1.1 goes upstream, without Upgrade or HTTP2-Settings.
    let reply = exchange(
        web,
        b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        limit,
    )
    .await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let lower = reply.to_ascii_lowercase();
    assert!(!lower.contains("\"upgrade\"") && !lower.contains("http2-settings"), "{reply}");
    assert_eq!(up.hits(), 2);
    Ok(())
}

#[tokio::test]
async fn slow_h2_readers_do_not_pin_upstream_slots() -> TestResult {
    let up = TestUpstream::start_with("big", Behavior::Large(256 * 1024)).await;
    let config = reverse_config(&quoted(&[&up]), "connect_timeout = \"200ms\"\npool = { max_connections = 4 }")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nsend_timeout = \"500ms\"\n");
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;

    let stalled = stalled_h2_answers(web, 4).await?;
    // The four stalled streams held every upstream slot; the send timeout gives them back.
    assert!(eventually_served(web, "/other").await, "other clients are still refused");
    let released = async {
        for _ in 0..600 {
            let groups = get(p.admin, "/upstreams").await.map(|a| a.json()).unwrap_or_default();
            if groups[0]["endpoints"][0]["active_requests"] == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(released.await, "stalled responses still count as active upstream requests");
    drop(stalled);
    Ok(())
}

/// The HTTP/1 side of the send timeout, through Portico's own HTTP/1 server: clients that ask for a large
/// answer and then read nothing hold every upstream slot only until `send_timeout`; then other clients are
/// served, the stalled requests no longer count as in flight, and `idle_timeout` closes the stalled
/// connections (they have nothing else to do).
#[tokio::test]
async fn slow_http1_readers_do_not_pin_upstream_slots() -> TestResult {
    // Larger than every socket buffer between the upstream and a client whose receive buffer is small
    // (loopback autotunes up to a few MiB each way), so the answer cannot complete unread.
    let up = TestUpstream::start_with("big", Behavior::Large(24 * 1024 * 1024)).await;
    let config = reverse_config(&quoted(&[&up]), "connect_timeout = \"200ms\"\npool = { max_connections = 4 }")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nsend_timeout = \"500ms\"\nidle_timeout = \"2s\"\n");
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;

    let mut stalled = Vec::new();
    for i in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let mut stream = socket.connect(web).await?;
        stream.write_all(format!("GET /big{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut head)).await??;
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "stalled {i}: {:?}", String::from_utf8_lossy(&head[..n]));
        stalled.push(stream);
    }
    assert!(eventually_served(web, "/other").await, "other clients are still refused");
    let released = async {
        for _ in 0..600 {
            let groups = get(p.admin, "/upstreams").await.map(|a| a.json()).unwrap_or_default();
            if groups[0]["endpoints"][0]["active_requests"] == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(released.await, "stalled responses still count as active upstream requests");

    // Each stalled connection ends: what it was sent so far drains, then it is closed, short of the answer.
    for (i, mut stream) in stalled.into_iter().enumerate() {
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "stalled connection {i} was never closed ({got} bytes read)");
        assert!(got < 24 * 1024 * 1024, "stalled connection {i} got the whole answer after its send timeout");
    }
    Ok(())
}

/// An HTTP/2 upstream connection carries many requests, which share its flow-control window: an answer the
/// client reads nothing of keeps the part of the window its unread data holds. The send timeout used to release
/// only such answers' pool slots; it now drops their upstream streams (reset, their data given back to the
/// window). With a stream's window as large as the connection's, a stalled reader holds all of it, and only
/// that drop lets a reader's answer over the same connection through.
#[tokio::test]
async fn slow_readers_do_not_stall_a_shared_h2_upstream_connection() -> TestResult {
    let up = TestUpstream::start_with("big", Behavior::Large(BIG)).await;
    let windows = "protocol = \"h2\"\npool = { h2_stream_window = \"1MiB\", h2_connection_window = \"1MiB\" }";
    let config = reverse_config(&quoted(&[&up]), windows)
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nsend_timeout = \"1s\"\n");
    // One worker: every request goes over its one connection to the upstream.
    let p = Portico::start_with_workers(&config, 1).await;
    let web = p.addr("web").await;
    let stalled = stalled_h2_answers(web, 2).await?;
    reader_gets_whole_answer(web, "/reader").await?;
    assert_eq!(up.connections(), 1, "one upstream connection carried them all");
    drop(stalled);
    Ok(())
}

/// Before their send timeout (a minute by default), stalled readers hold only their streams' windows (1 MiB
/// each) of the connection's (32 MiB): the connection's other answers go on. With hyper's adaptive window
/// (the stream's as large as the connection's) one stalled reader stopped them all for that minute.
#[tokio::test]
async fn a_few_stalled_readers_leave_a_shared_h2_upstream_connection_working() -> TestResult {
    let up = TestUpstream::start_with("big", Behavior::Large(BIG)).await;
    let p = Portico::start_with_workers(&reverse_config(&quoted(&[&up]), "protocol = \"h2\""), 1).await;
    let web = p.addr("web").await;
    let stalled = stalled_h2_answers(web, 4).await?;
    reader_gets_whole_answer(web, "/reader0").await?;
    reader_gets_whole_answer(web, "/reader1").await?;
    assert_eq!(up.connections(), 1, "one upstream connection carried them all");
    drop(stalled);
    Ok(())
}

/// The size of the big answers: several stream windows.
const BIG: usize = 4 * 1024 * 1024;

/// A client that reads gets its whole [`BIG`] answer (within 30 s: a bound only a stalled connection reaches).
async fn reader_gets_whole_answer(web: std::net::SocketAddr, path: &str) -> TestResult {
    let answer = tokio::time::timeout(Duration::from_secs(30), get(web, path))
        .await
        .map_err(|_| "a reader's answer stalled behind the unread ones on the shared upstream connection")??;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), BIG, "the whole answer");
    Ok(())
}

/// `n` answers to `GET /big<i>` over one HTTP/2 connection from a client that grants no flow-control window:
/// their heads arrive, their bodies never can. Kept (not dropped) for as long as the caller holds them.
async fn stalled_h2_answers(
    web: std::net::SocketAddr,
    n: usize,
) -> Result<Vec<http::Response<hyper::body::Incoming>>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = TcpStream::connect(web).await?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.initial_stream_window_size(0);
    let (sender, conn) = builder.handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut stalled = Vec::new();
    for i in 0..n {
        let mut sender = sender.clone();
        let request = http::Request::builder().uri(format!("http://a/big{i}")).body(Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        assert_eq!(response.status(), 200);
        stalled.push(response);
    }
    Ok(stalled)
}

/// A client's `X_Forwarded_For` or `Transfer_Encoding` never reaches the upstream beside the field Portico
/// sets or checks (CGI, WSGI and PHP origins read the two names as one): dropped by default, refused or kept
/// when told.
#[tokio::test]
async fn underscored_header_names_are_dropped_unless_told_otherwise() -> TestResult {
    let up = TestUpstream::start("app").await;
    let spoof = [("x_forwarded_for", "6.6.6.6"), ("transfer_encoding", "chunked"), ("x-kept", "1")];
    let p = Portico::start(&reverse_config(&quoted(&[&up]), "")).await;
    let answer = send(p.addr("web").await, "GET", "/u", &spoof, "").await?;
    assert_eq!(answer.status, 200);
    let seen = &answer.json()["headers"];
    assert!(seen.get("x_forwarded_for").is_none() && seen.get("transfer_encoding").is_none(), "{seen}");
    assert_eq!(seen["x-kept"], "1");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    drop(p);
    for (rule, status) in [("reject", 400), ("keep", 200)] {
        let config = reverse_config(&quoted(&[&up]), "")
            .replace("upstream = \"app\"\n", &format!("upstream = \"app\"\nunderscores_in_headers = \"{rule}\"\n"));
        let p = Portico::start(&config).await;
        let answer = send(p.addr("web").await, "GET", "/u", &spoof, "").await?;
        assert_eq!(answer.status, status, "{rule}: {:?}", answer.body);
        if status == 200 {
            assert_eq!(answer.json()["headers"]["x_forwarded_for"], "6.6.6.6", "{rule}");
        }
    }
    Ok(())
}

/// Requests a client pipelined before closing its side of the connection are still answered (as hyper does):
/// only a client that closes with nothing left to answer has its request dropped.
#[tokio::test]
async fn pipelined_requests_before_a_half_close_are_answered() -> TestResult {
    let up = TestUpstream::start_with("app", Behavior::Delay(Duration::from_millis(200))).await;
    let p = Portico::start(&reverse_config(&quoted(&[&up]), "")).await;
    let web = p.addr("web").await;
    let mut stream = TcpStream::connect(web).await?;
    let requests = format!("GET /one HTTP/1.1\r\nHost: {web}\r\n\r\nGET /two HTTP/1.1\r\nHost: {web}\r\n\r\n");
    stream.write_all(requests.as_bytes()).await?;
    stream.shutdown().await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply)).await??;
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
    Ok(())
}
