//! Forward-proxy mode: CONNECT tunnels limited to `connect_ports`, and absolute-form requests.

use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The test targets run on loopback, which a forward listener refuses unless allowed.
const ALLOW_LOOPBACK: &str = r#"allow = ["127.0.0.0/8"]"#;

/// Reads until the end of a response head, returning it.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn connect_through(proxy: SocketAddr, target: &str) -> std::io::Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await?;
    let head = read_head(&mut stream).await?;
    Ok((stream, head))
}

#[tokio::test]
async fn connect_tunnels_bytes_both_ways() -> TestResult {
    let target = TestUpstream::start("inside").await;
    let p = Portico::start(&forward_config(target.addr.port(), ALLOW_LOOPBACK)).await;
    let (mut tunnel, head) = connect_through(p.addr("egress").await, &target.addr.to_string()).await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Speak HTTP to the target through the tunnel.
    tunnel.write_all(b"GET /through HTTP/1.1\r\nHost: inside\r\nConnection: close\r\n\r\n").await?;
    let mut reply = String::new();
    tunnel.read_to_string(&mut reply).await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"path\":\"/through\""), "{reply}");
    assert_eq!(target.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn connect_to_a_port_not_listed_is_forbidden() -> TestResult {
    let target = TestUpstream::start("inside").await;
    let p = Portico::start(&forward_config(443, ALLOW_LOOPBACK)).await;
    let (_, head) = connect_through(p.addr("egress").await, &target.addr.to_string()).await?;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(target.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn connect_takes_only_a_host_port_target() -> TestResult {
    let target = TestUpstream::start("inside").await;
    let p = Portico::start(&forward_config(target.addr.port(), ALLOW_LOOPBACK)).await;
    let egress = p.addr("egress").await;
    let port = target.addr.port();
    for bad in [format!("http://127.0.0.1:{port}/"), format!("user@127.0.0.1:{port}"), format!("127.0.0.1:{port}/x")] {
        let (_, head) = connect_through(egress, &bad).await?;
        assert!(head.starts_with("HTTP/1.1 400"), "{bad}: {head}");
    }
    let (_, head) = connect_through(egress, &target.addr.to_string()).await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(())
}

/// A tunnel keeps its connection's place under `max_connections` until it ends, and ends after the
/// listener's `idle_timeout` with nothing moving either way.
#[tokio::test]
async fn tunnels_count_against_max_connections_and_time_out_when_idle() -> TestResult {
    let target = TestUpstream::start("inside").await;
    let config = forward_config(target.addr.port(), ALLOW_LOOPBACK)
        .replace("mode = \"forward\"", "mode = \"forward\"\nmax_connections = 2\nidle_timeout = \"2s\"");
    let p = Portico::start(&config).await;
    let egress = p.addr("egress").await;
    let (mut first, head) = connect_through(egress, &target.addr.to_string()).await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut second, head) = connect_through(egress, &target.addr.to_string()).await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Both places are taken by tunnels: a third connection waits in the backlog.
    let inside = target.addr.to_string();
    let third = tokio::time::timeout(Duration::from_millis(1500), connect_through(egress, &inside)).await;
    assert!(third.is_err(), "a third connection was served while two tunnels held both places");

    // A tunnel in use outlives the idle timeout; one left idle is closed after it, and gives its place back.
    let mut idle_closed = false;
    let mut buf = [0u8; 4096];
    for _ in 0..12 {
        first.write_all(b"GET /keep HTTP/1.1\r\nHost: inside\r\n\r\n").await?;
        let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf)).await??;
        assert!(n > 0, "the busy tunnel was closed");
        match tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                idle_closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(idle_closed, "the idle tunnel is still open after 6 s with an idle timeout of 2 s");
    let (_, head) =
        tokio::time::timeout(Duration::from_secs(10), connect_through(egress, &target.addr.to_string())).await??;
    assert!(head.starts_with("HTTP/1.1 200"), "the idle tunnel's place is free again: {head}");
    Ok(())
}

/// An origin that answers every request with `answer` and closes.
async fn canned_origin(answer: &'static [u8]) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// What the reverse path refuses from an upstream, a forward listener refuses from an origin: both
/// Content-Length and Transfer-Encoding, a transfer coding Portico does not apply, an unasked 101.
#[tokio::test]
async fn malformed_origin_answers_are_refused() -> TestResult {
    let p = Portico::start(&forward_config(443, ALLOW_LOOPBACK)).await;
    let egress = p.addr("egress").await;
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        let origin = canned_origin(answer).await?;
        let mut stream = TcpStream::connect(egress).await?;
        let request = format!("GET http://{origin}/x HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 502"), "{}: {reply}", String::from_utf8_lossy(answer));
    }
    Ok(())
}

#[tokio::test]
async fn absolute_form_requests_are_forwarded() -> TestResult {
    let target = TestUpstream::start("origin").await;
    let p = Portico::start(&forward_config(443, ALLOW_LOOPBACK)).await;
    let mut stream = TcpStream::connect(p.addr("egress").await).await?;
    let request = format!(
        "GET http://{0}/abs?q=1 HTTP/1.1\r\nHost: {0}\r\nProxy-Connection: keep-alive\r\nConnection: close\r\n\r\n",
        target.addr
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"path\":\"/abs?q=1\""), "{reply}");
    assert!(!reply.to_ascii_lowercase().contains("proxy-connection"), "hop-by-hop header forwarded: {reply}");
    Ok(())
}

/// RFC 9112 §3.2.2: a proxy MUST replace the client's `Host` with the target's authority, so the origin answers
/// for the host the allow list checked; a target with userinfo or a port past 65535 is refused.
#[tokio::test]
async fn the_targets_authority_replaces_the_clients_host() -> TestResult {
    let target = TestUpstream::start("origin").await;
    let p = Portico::start(&forward_config(443, ALLOW_LOOPBACK)).await;
    let egress = p.addr("egress").await;
    let request =
        format!("GET http://{}/h HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n", target.addr);
    let reply = crate::hardening::exchange(egress, request.as_bytes(), std::time::Duration::from_secs(10)).await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(&format!("\"host\":\"{}\"", target.addr)), "{reply}");
    for bad in [format!("http://user:pw@{}/", target.addr), "http://127.0.0.1:65536/".to_string()] {
        let request = format!("GET {bad} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let reply = crate::hardening::exchange(egress, request.as_bytes(), std::time::Duration::from_secs(10)).await?;
        assert!(reply.starts_with("HTTP/1.1 400"), "{bad}: {reply}");
    }
    assert_eq!(target.hits(), 1);
    Ok(())
}
