//! Issue 15: a forward listener cannot reach Portico itself or loopback, connections that send no request are
//! closed, and the CL+TE guard checks every request on a connection.

use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `raw`, then reads until the server closes (or `limit` passes); returns what was read.
pub(crate) async fn exchange(addr: SocketAddr, raw: &[u8], limit: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw).await?;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut reply)).await;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Reads until the server closes the connection; false if it is still open after `limit`.
pub(crate) async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.is_ok()
}

#[tokio::test]
async fn forward_listener_refuses_portico_itself_and_loopback() -> TestResult {
    let target = TestUpstream::start("inside").await;
    let p = Portico::start(&forward_config(443, "")).await;
    let egress = p.addr("egress").await;
    let admin = p.admin;

    let reply = exchange(
        egress,
        format!("GET http://{admin}/config HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await?;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(reply.contains("destination_forbidden"), "{reply}");
    assert!(!reply.contains("listener"), "the config must not leak: {reply}");

    // A name is resolved before the check: localhost is loopback too.
    let port = target.addr.port();
    let reply = exchange(
        egress,
        format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await?;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert_eq!(target.hits(), 0);
    Ok(())
}

/// With an admin token set, neither reads nor writes reach the admin API through a forward listener.
#[tokio::test]
async fn forward_listener_reaches_no_admin_route_with_a_token_set() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let config = forward_config(443, "").replace("[admin]\n", "[admin]\ntoken = \"secret\"\n")
        + &format!("\n[[upstream]]\nname = \"app\"\nendpoints = [\"{}\"]\n", upstream.addr);
    let p = Portico::start(&config).await;
    let (egress, admin, ep) = (p.addr("egress").await, p.admin, upstream.addr);
    for (method, path) in [
        ("GET", "/config".to_string()),
        ("GET", "/upstreams".to_string()),
        ("GET", "/metrics".to_string()),
        ("GET", "/plugins".to_string()),
        ("POST", format!("/upstreams/app/endpoints/{ep}/drain")),
        ("POST", "/config/reload".to_string()),
    ] {
        let raw = format!(
            "{method} http://{admin}{path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let reply = exchange(egress, raw.as_bytes(), Duration::from_secs(10)).await?;
        assert!(
            reply.starts_with("HTTP/1.1 403") && reply.contains("destination_forbidden"),
            "{method} {path}: {reply}"
        );
    }
    let groups = get(admin, "/upstreams").await?.json();
    assert_eq!(groups[0]["endpoints"][0]["status"], "healthy", "the endpoint was drained: {groups}");
    Ok(())
}

/// CONNECT is checked the same way, even to a port listed in `connect_ports`.
#[tokio::test]
async fn forward_connect_to_the_admin_port_is_refused() -> TestResult {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let admin_port = probe.local_addr()?.port();
    drop(probe);
    let config = forward_config(admin_port, r#"allow = ["127.0.0.0/8"]"#).replace(
        "listen = \"127.0.0.1:0\"\n\n[[listener]]",
        &format!("listen = \"127.0.0.1:{admin_port}\"\n\n[[listener]]"),
    );
    let p = Portico::start(&config).await;
    let egress = p.addr("egress").await;
    let target = p.admin;
    let reply = exchange(
        egress,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await?;
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    Ok(())
}

/// `allow` opens loopback for an operator, but Portico's own listeners stay refused unless listed exactly.
#[tokio::test]
async fn forward_allow_permits_loopback_but_not_portico_itself() -> TestResult {
    let target = TestUpstream::start("inside").await;
    let p = Portico::start(&forward_config(443, r#"allow = ["127.0.0.0/8"]"#)).await;
    let egress = p.addr("egress").await;
    let t = target.addr;
    let reply = exchange(
        egress,
        format!("GET http://{t}/ok HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    for own in [p.admin, egress] {
        let reply = exchange(
            egress,
            format!("GET http://{own}/config HTTP/1.1\r\nHost: {own}\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        )
        .await?;
        assert!(reply.starts_with("HTTP/1.1 403"), "{own}: {reply}");
    }
    Ok(())
}

fn timeouts(endpoints: &[String], header_read: &str, idle: &str) -> String {
    reverse_config(endpoints, "").replace(
        "upstream = \"app\"\n",
        &format!("upstream = \"app\"\nheader_read_timeout = \"{header_read}\"\nidle_timeout = \"{idle}\"\n"),
    )
}

fn short_timeouts(endpoints: &[String]) -> String {
    timeouts(endpoints, "300ms", "300ms")
}

#[tokio::test]
async fn connections_without_a_request_are_closed() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&short_timeouts(&quoted(&[&upstream]))).await;
    let web = p.addr("web").await;
    for sent in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n"] {
        let mut stream = TcpStream::connect(web).await?;
        stream.write_all(sent).await?;
        assert!(closed_by_server(&mut stream, Duration::from_secs(10)).await, "still open after {sent:?}");
    }
    Ok(())
}

/// Two thousand connections that send nothing are all closed by the header-read timeout.
#[tokio::test]
async fn two_thousand_idle_connections_are_all_closed() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&short_timeouts(&quoted(&[&upstream]))).await;
    let web = p.addr("web").await;
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(TcpStream::connect(web).await?);
    }
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(closed_by_server(stream, Duration::from_secs(30)).await, "connection {i} still open");
    }
    Ok(())
}

/// A TLS client that stops in the middle of its handshake is closed by the header-read timeout too.
#[tokio::test]
async fn a_stalled_tls_handshake_is_closed() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let certs = crate::tls::tls_setup(dir.path(), upstream.addr)?;
    let config = certs.config.replace("upstream = \"app\"\n", "upstream = \"app\"\nheader_read_timeout = \"300ms\"\n");
    let p = Portico::start(&config).await;
    let mut stream = TcpStream::connect(p.addr("web").await).await?;
    // The first bytes of a TLS record carrying a ClientHello, and no more.
    stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await?;
    assert!(closed_by_server(&mut stream, Duration::from_secs(10)).await, "a half-done handshake is still open");
    Ok(())
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    // A long header-read timeout, so that it is `idle_timeout` that closes the connection.
    let p = Portico::start(&timeouts(&quoted(&[&upstream]), "60s", "300ms")).await;
    let web = p.addr("web").await;
    let mut stream = TcpStream::connect(web).await?;
    stream.write_all(b"GET /once HTTP/1.1\r\nHost: a\r\n\r\n").await?;
    assert!(closed_by_server(&mut stream, Duration::from_secs(10)).await, "idle connection still open");
    assert_eq!(upstream.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn idle_h2_connections_are_closed() -> TestResult {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&timeouts(&quoted(&[&upstream]), "60s", "300ms")).await;
    let tcp = TcpStream::connect(p.addr("web").await).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let request = http::Request::builder().uri("http://a/h2").body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), 200);
    response.into_body().collect().await?;
    // The client connection task ends when the server closes the connection.
    assert!(tokio::time::timeout(Duration::from_secs(10), conn).await.is_ok(), "idle h2 connection still open");
    Ok(())
}

/// The admin API closes a connection that sends nothing, too little to tell its version, or a partial head.
#[tokio::test]
async fn admin_connections_without_a_request_are_closed() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let held = [&b""[..], b"P", b"GET /healthz HTTP/1.1\r\nHost: a\r\n"].map(|sent| async move {
        let mut stream = TcpStream::connect(p.admin).await?;
        stream.write_all(sent).await?;
        // The admin header-read timeout is 10 s, from accept.
        Ok::<_, std::io::Error>((sent, closed_by_server(&mut stream, Duration::from_secs(30)).await))
    });
    for outcome in futures_util::future::join_all(held).await {
        let (sent, closed) = outcome?;
        assert!(closed, "admin connection still open after {sent:?}");
    }
    Ok(())
}

/// Idle connections at `max_connections` cannot lock other clients out: they are closed at the header-read
/// timeout, and the clients waiting in the backlog are served.
#[tokio::test]
async fn idle_connections_at_the_connection_cap_do_not_lock_clients_out() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let config = short_timeouts(&quoted(&[&upstream]))
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nmax_connections = 20\n");
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(web).await?);
    }
    let answer = tokio::time::timeout(Duration::from_secs(60), get(web, "/waited")).await??;
    assert_eq!(answer.status, 200);
    drop(idle);
    Ok(())
}

#[tokio::test]
async fn every_request_on_a_connection_gets_the_cl_te_check() -> TestResult {
    let upstream = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&upstream]), "")).await;
    let web = p.addr("web").await;
    let cl_te = "POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    for first in ["GET /first HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n", "GET /lf1 HTTP/1.1\nHost: a\n\n"] {
        let before = upstream.hits();
        let reply = exchange(web, format!("{first}{cl_te}").as_bytes(), Duration::from_secs(10)).await?;
        assert!(reply.contains("HTTP/1.1 400"), "after {first:?}: {reply}");
        assert!(!reply.contains("/second"), "after {first:?}: {reply}");
        assert_eq!(upstream.hits(), before + 1, "only the first request may be forwarded, after {first:?}");
    }
    Ok(())
}

/// A client that completes the TLS handshake and then sends nothing is closed by the header-read timeout.
#[tokio::test]
async fn tls_connection_without_a_request_is_closed() -> TestResult {
    use tokio::io::AsyncReadExt as _;
    let upstream = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let certs = crate::tls::tls_setup(dir.path(), upstream.addr)?;
    let config = certs.config.replace("upstream = \"app\"\n", "upstream = \"app\"\nheader_read_timeout = \"300ms\"\n");
    let p = Portico::start(&config).await;
    let mut tls = crate::tls::handshake(
        p.addr("web").await,
        "default.test",
        std::slice::from_ref(&certs.default_der),
        &rustls::version::TLS13,
        &[b"http/1.1"],
    )
    .await?;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "TLS connection without a request still open");
    Ok(())
}

/// The host the upstream gets is the one Portico checked and routed by: a `Host` that is not a host is refused
/// (400, RFC 9110 §7.2), so is a target only CONNECT or OPTIONS may use, and a client cannot have `Host`
/// removed by naming it in `Connection`. A request with no host at all (HTTP/1.0) goes with an empty one.
#[tokio::test]
async fn the_upstream_gets_the_host_portico_checked() -> TestResult {
    let up = TestUpstream::start("app").await;
    let p = Portico::start(&reverse_config(&quoted(&[&up]), "")).await;
    let web = p.addr("web").await;
    let limit = Duration::from_secs(10);
    for head in [
        "GET / HTTP/1.1\r\nHost: a b\r\n",
        "GET / HTTP/1.1\r\nHost: user@evil.example\r\n",
        "GET / HTTP/1.1\r\nHost: a/b?c\r\n",
        "GET / HTTP/1.1\r\nHost: a:65536\r\n",
        "GET http://user:pw@evil.example/ HTTP/1.1\r\nHost: a\r\n",
        "GET evil.example:80 HTTP/1.1\r\nHost: a\r\n",
        "GET * HTTP/1.1\r\nHost: a\r\n",
    ] {
        let reply = exchange(web, format!("{head}Connection: close\r\n\r\n").as_bytes(), limit).await?;
        assert!(reply.starts_with("HTTP/1.1 400"), "{head:?}: {reply}");
    }
    assert_eq!(up.hits(), 0, "nothing refused reached the upstream");

    let reply =
        exchange(web, b"GET /c HTTP/1.1\r\nHost: app.example\r\nConnection: host, close\r\n\r\n", limit).await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"host\":\"app.example\""), "Host survived being named in Connection: {reply}");
    let reply = exchange(web, b"GET /old HTTP/1.0\r\n\r\n", limit).await?;
    assert!(reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.contains("\"host\":\"\""), "an empty Host for a request with none: {reply}");
    Ok(())
}

/// A 101 the client did not ask for is not passed on (RFC 9110 §15.2.2): a proxy in front would switch to
/// tunnelling while Portico went on reading requests on the connection. The client gets a 502.
#[tokio::test]
async fn an_unasked_switch_of_protocols_is_a_bad_gateway() -> TestResult {
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = origin.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = origin.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
                    .await;
                let _ = socket.read(&mut buf).await;
            });
        }
    });
    let p = Portico::start(&reverse_config(&[format!("\"{addr}\"")], "")).await;
    let reply = exchange(
        p.addr("web").await,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await?;
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    Ok(())
}
