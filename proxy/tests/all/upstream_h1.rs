//! Portico's own HTTP/1 client against upstreams that answer with exact bytes: every way a response body can
//! be framed reaches the client intact and leaves the pooled connection reusable (or closed, when it must be),
//! ambiguous answers are a 502, request bodies go out with the framing Portico chose, and an upgrade is spliced
//! with the bytes the upstream sent along with its 101.

use crate::support::*;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a [`RawUpstream`] does with a request: the bytes it answers, and whether it closes afterwards.
type Script = fn(method: &str, path: &str) -> (&'static [u8], After);

#[derive(Clone, Copy, PartialEq)]
enum After {
    KeepOpen,
    Close,
    /// Echo everything that comes next (an upgraded connection).
    Echo,
}

/// An upstream that answers from a script, and records the raw requests it got and the connections it took.
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawUpstream {
    async fn start(script: Script) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind raw upstream");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (count, log) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script, log.clone()));
            }
        });
        RawUpstream { addr, connections, requests }
    }

    fn config(&self) -> String {
        reverse_config(&[format!("\"{}\"", self.addr)], "")
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, script: Script, log: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else { return };
        let line = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_string();
        let mut words = line.split(' ');
        let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let (answer, after) = script(method, path);
        log.lock().push(request);
        if stream.write_all(answer).await.is_err() {
            return;
        }
        match after {
            After::KeepOpen => {}
            After::Close => return,
            After::Echo => {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
                return;
            }
        }
    }
}

/// One request (head, and a body framed by Content-Length or chunked) off the front of the stream.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let end = if head.contains("transfer-encoding: chunked") {
                // The last chunk (`0` at the start of a line; the test bodies hold no such line) and the
                // trailer section after it, up to the empty line.
                let body = &buf[head_end..];
                let last = if body.starts_with(b"0\r\n") {
                    Some(0)
                } else {
                    body.windows(5).position(|w| w == b"\r\n0\r\n").map(|i| i + 2)
                };
                last.and_then(|at| {
                    body[at + 1..].windows(4).position(|w| w == b"\r\n\r\n").map(|i| head_end + at + i + 5)
                })
            } else {
                Some(head_end + length.unwrap_or(0)).filter(|end| *end <= buf.len())
            };
            if let Some(end) = end {
                return Some(buf.drain(..end).collect());
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn framings(method: &str, path: &str) -> (&'static [u8], After) {
    match (method, path) {
        ("HEAD", _) => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", After::KeepOpen),
        (_, "/fixed") => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfixed", After::KeepOpen),
        (_, "/chunked") => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=\"a b\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n",
            After::KeepOpen,
        ),
        (_, "/interim") => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            After::KeepOpen,
        ),
        (_, "/no-content") => (b"HTTP/1.1 204 No Content\r\n\r\n", After::KeepOpen),
        (_, "/not-modified") => (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", After::KeepOpen),
        (_, "/old") => (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold", After::KeepOpen),
        (_, "/until-close") => (b"HTTP/1.1 200 OK\r\n\r\nuntil close", After::Close),
        _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", After::KeepOpen),
    }
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_and_keeps_or_closes_the_connection() -> TestResult {
    let up = RawUpstream::start(framings).await;
    // One worker: one pool lane, so which connection each request takes is known.
    let p = Portico::start_with_workers(&up.config(), 1).await;
    let web = p.addr("web").await;
    for (method, path, status, body) in [
        ("GET", "/fixed", 200, "fixed"),
        ("GET", "/chunked", 200, "hello world"),
        ("GET", "/interim", 200, "ok"),
        ("GET", "/no-content", 204, ""),
        ("GET", "/not-modified", 304, ""),
        ("HEAD", "/fixed", 200, ""),
        ("GET", "/fixed", 200, "fixed"),
    ] {
        let answer = send(web, method, path, &[], "").await?;
        assert_eq!((answer.status.as_u16(), &answer.body[..]), (status, body.as_bytes()), "{method} {path}");
    }
    assert_eq!(up.connections(), 1, "every one of those answers left the connection reusable");
    // An HTTP/1.0 answer without keep-alive, and a body that ends when the upstream closes: both end their
    // connection, so each request after them needs a new one.
    for (path, body, connections) in [("/old", "old", 1), ("/fixed", "fixed", 2), ("/until-close", "until close", 2)] {
        let answer = get(web, path).await?;
        assert_eq!((answer.status.as_u16(), &answer.body[..]), (200, body.as_bytes()), "{path}");
        assert_eq!(up.connections(), connections, "after {path}");
    }
    assert_eq!(get(web, "/fixed").await?.body, "fixed");
    assert_eq!(up.connections(), 3);
    Ok(())
}

fn ambiguous(_method: &str, path: &str) -> (&'static [u8], After) {
    match path {
        "/cl-te" => {
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", After::KeepOpen)
        }
        "/two-lengths" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", After::KeepOpen),
        "/folded" => (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n", After::KeepOpen),
        "/bad-chunk" => {
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", After::KeepOpen)
        }
        "/short" => (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nonly this", After::Close),
        "/gzip-chunked" => {
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", After::KeepOpen)
        }
        "/claims" => (b"HTTP/1.1 204 No Content\r\nContent-Length: 62\r\n\r\n", After::KeepOpen),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", After::KeepOpen),
    }
}

#[tokio::test]
async fn ambiguous_or_broken_answers_never_reach_the_client_as_good_ones() -> TestResult {
    let up = RawUpstream::start(ambiguous).await;
    let p = Portico::start_with_workers(&up.config(), 1).await;
    let web = p.addr("web").await;
    // A transfer coding Portico does not apply (gzip under chunked) would reach the client decoded of chunked
    // only, under a label that no longer says it is gzip: refused as nginx does.
    for path in ["/cl-te", "/two-lengths", "/folded", "/gzip-chunked"] {
        let answer = get(web, path).await?;
        assert_eq!(answer.status, 502, "{path}: {:?}", answer.body);
        assert_eq!(answer.json()["detail"], "upstream \"app\": invalid response", "{path}");
    }
    // Broken after the head went out: the client sees the body fail, never a clean short body.
    for path in ["/bad-chunk", "/short"] {
        assert!(get(web, path).await.is_err(), "{path} was delivered as if whole");
    }
    // A 204 with a Content-Length is answered, but its server may send a body after it all the same, which the
    // next request on the connection would read as its answer: the connection is not reused.
    assert_eq!(get(web, "/claims").await?.status, 204);
    // None of those connections is reused: each request above had a connection of its own.
    assert_eq!(get(web, "/ok").await?.body, "ok");
    assert_eq!(up.connections(), 8);
    Ok(())
}

fn recorder(_method: &str, _path: &str) -> (&'static [u8], After) {
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", After::KeepOpen)
}

#[tokio::test]
async fn request_bodies_go_out_with_the_framing_portico_chose() -> TestResult {
    let up = RawUpstream::start(recorder).await;
    let p = Portico::start_with_workers(&up.config(), 1).await;
    let web = p.addr("web").await;
    // A chunked request (with a chunk extension the upstream need not see) is sent chunked; a sized one with
    // its length; a bodiless POST with `content-length: 0`; a chunked one's trailers go along, minus the
    // fields a trailer must not carry (framing, routing, request modifiers, authentication: RFC 9110 §6.5.1).
    let mut client = TcpStream::connect(web).await?;
    client
        .write_all(
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world\
              POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n\
              POST /d HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\
              X-Sum: 1\r\nContent-Length: 99\r\nHost: elsewhere\r\nAuthorization: x\r\nTE: trailers\r\n\
              Cache-Control: no-store\r\nMax-Forwards: 3\r\nIf-Match: \"v\"\r\nCookie: c=1\r\n\r\n",
        )
        .await?;
    let seen = async {
        while up.requests.lock().len() < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), seen).await?;
    let requests: Vec<String> = up.requests.lock().iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    let chunked = &requests[0];
    assert!(
        chunked.starts_with("POST /a HTTP/1.1\r\n") && chunked.contains("transfer-encoding: chunked\r\n"),
        "{chunked}"
    );
    assert!(!chunked.contains("content-length") && !chunked.contains("x=1"), "{chunked}");
    let data: String = chunked.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    assert!(data.contains("hello") && data.contains(" world") && chunked.ends_with("\r\n0\r\n\r\n"), "{chunked}");
    let sized = &requests[1];
    assert!(sized.contains("content-length: 11\r\n") && sized.ends_with("\r\n\r\nhello world"), "{sized}");
    assert!(!sized.contains("transfer-encoding"), "{sized}");
    assert!(requests[2].contains("content-length: 0\r\n"), "{}", requests[2]);
    let trailed = &requests[3];
    assert!(trailed.ends_with("\r\n0\r\nx-sum: 1\r\n\r\n"), "{trailed}");
    // Nowhere in the request either (the trailer section is pinned above): not merged into the head.
    let lowercase = trailed.to_ascii_lowercase();
    for forbidden in [
        "content-length: 99",
        "elsewhere",
        "authorization",
        "te: trailers",
        "cache-control",
        "max-forwards",
        "if-match",
        "cookie",
    ] {
        assert!(!lowercase.contains(forbidden), "{forbidden} in {trailed}");
    }
    assert_eq!(up.connections(), 1, "the four requests shared one upstream connection");
    Ok(())
}

/// Sized bodies of up to 16 KiB that arrive with their heads are taken by Portico's own server (one that looks
/// like a request head among them), bodiless requests of other methods too; a body arriving later, or a
/// chunked one, hands the connection to hyper's server, which serves what follows. Each request goes out with
/// exactly its bytes, and every answer comes back in order.
#[tokio::test]
async fn sized_bodies_are_taken_whole_and_a_chunked_one_after_them_still_served() -> TestResult {
    let up = RawUpstream::start(recorder).await;
    let p = Portico::start_with_workers(&up.config(), 1).await;
    let web = p.addr("web").await;
    let mut client = TcpStream::connect(web).await?;
    client
        .write_all(
            b"PUT /1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nGET /\
              DELETE /2 HTTP/1.1\r\nHost: t\r\n\r\n\
              POST /3 HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello",
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .write_all(
            b" worldGET /4 HTTP/1.1\r\nHost: t\r\n\r\n\
              POST /5 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              PATCH /6 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz",
        )
        .await?;
    let mut answers = Vec::new();
    let six_answers = |got: &[u8]| got.windows(2).filter(|w| w == b"ok").count() >= 6;
    tokio::time::timeout(Duration::from_secs(30), read_until(&mut client, &mut answers, six_answers)).await??;
    let text = String::from_utf8_lossy(&answers);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 6, "{text}");
    let requests: Vec<String> = up.requests.lock().iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    let starts: Vec<&str> = requests.iter().map(|r| r.lines().next().unwrap_or_default()).collect();
    assert_eq!(
        starts,
        [
            "PUT /1 HTTP/1.1",
            "DELETE /2 HTTP/1.1",
            "POST /3 HTTP/1.1",
            "GET /4 HTTP/1.1",
            "POST /5 HTTP/1.1",
            "PATCH /6 HTTP/1.1"
        ]
    );
    let sized = |i: usize, body: &str| {
        let r = &requests[i];
        assert!(r.contains(&format!("content-length: {}\r\n", body.len())), "{r}");
        assert!(r.ends_with(&format!("\r\n\r\n{body}")) && !r.contains("transfer-encoding"), "{r}");
    };
    sized(0, "GET /");
    sized(2, "hello world");
    sized(5, "xyz");
    assert!(!requests[1].contains("content-length") || requests[1].contains("content-length: 0\r\n"));
    assert!(!requests[3].contains("content-length") || requests[3].contains("content-length: 0\r\n"));
    assert!(requests[4].contains("transfer-encoding: chunked\r\n") && requests[4].ends_with("3\r\nabc\r\n0\r\n\r\n"));
    Ok(())
}

/// HTTP/1.0 clients keep a connection only when they ask (`Connection: keep-alive`), and are told it stays;
/// the first request without the ask gets its answer and the connection closes after it.
#[tokio::test]
async fn http_1_0_clients_keep_the_connection_only_when_they_ask() -> TestResult {
    let up = RawUpstream::start(recorder).await;
    let p = Portico::start_with_workers(&up.config(), 1).await;
    let web = p.addr("web").await;
    let mut client = TcpStream::connect(web).await?;
    client
        .write_all(
            b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
              POST /2 HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 3\r\n\r\nabc\
              GET /3 HTTP/1.0\r\n\r\n\
              GET /never HTTP/1.0\r\n\r\n",
        )
        .await?;
    let mut answers = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answers)).await??;
    let text = String::from_utf8_lossy(&answers);
    let heads: Vec<&str> = text.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(heads.len(), 3, "{text}");
    assert!(
        heads[0].contains("connection: keep-alive\r\n") && heads[1].contains("connection: keep-alive\r\n"),
        "{text}"
    );
    assert!(heads[2].contains("connection: close\r\n") && heads[2].ends_with("\r\n\r\nok"), "{text}");
    let requests: Vec<String> = up.requests.lock().iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    assert_eq!(requests.len(), 3, "nothing after the request that closed: {requests:?}");
    assert!(requests[1].starts_with("POST /2 HTTP/1.1\r\n") && requests[1].ends_with("\r\n\r\nabc"), "{}", requests[1]);
    Ok(())
}

fn upgrading(_method: &str, _path: &str) -> (&'static [u8], After) {
    (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly;", After::Echo)
}

#[tokio::test]
async fn an_upgrade_is_spliced_with_the_bytes_sent_along_with_the_101() -> TestResult {
    let up = RawUpstream::start(upgrading).await;
    let p = Portico::start(&up.config()).await;
    let web = p.addr("web").await;
    let mut client = TcpStream::connect(web).await?;
    client.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await?;
    let mut got = Vec::new();
    let holds = |what: &'static [u8]| move |got: &[u8]| got.windows(what.len()).any(|w| w == what);
    let exchange = async {
        read_until(&mut client, &mut got, holds(b"early;")).await?;
        client.write_all(b"ping").await?;
        read_until(&mut client, &mut got, holds(b"early;ping")).await
    };
    tokio::time::timeout(Duration::from_secs(30), exchange).await??;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.ends_with("\r\n\r\nearly;ping"), "{text}");
    let forwarded = String::from_utf8_lossy(&up.requests.lock()[0]).to_ascii_lowercase();
    assert!(forwarded.contains("upgrade: echo\r\n") && forwarded.contains("connection: upgrade\r\n"), "{forwarded}");
    Ok(())
}

fn fields(_method: &str, _path: &str) -> (&'static [u8], After) {
    (
        b"HTTP/1.1 200 OK\r\nServer: origin\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nVia: 1.0 edge\r\n\
          X-Request-Id: theirs\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nX-Custom: A  b\r\nTrailer: x-sum\r\n\
          Upgrade: nothing\r\nProxy-Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        After::KeepOpen,
    )
}

/// Reads from `stream` into `got` until `done(got)` or the stream ends.
async fn read_until(
    stream: &mut TcpStream,
    got: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> Result<(), std::io::Error> {
    let mut chunk = [0u8; 4096];
    while !done(got) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// One exchange on a fresh connection, read until the server closes it: the head's lines and the rest.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<(Vec<String>, String), std::io::Error> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.lines().map(str::to_string).collect(), rest.to_string()))
}

/// The end-to-end fields of an answer's head, names lowercased, in order.
fn end_to_end(head: &[String]) -> Vec<(String, String)> {
    head.iter()
        .skip(1)
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
        .filter(|(name, _)| !matches!(name.as_str(), "connection" | "transfer-encoding" | "content-length"))
        .collect()
}

/// Portico's own server writes an upstream's fields as the upstream wrote them (order, spelling, spacing),
/// leaving out this hop's fields, with its `via` hop joined and its `x-request-id` in place of the
/// upstream's; hyper's server, which gets them as a map, sends the same fields.
#[tokio::test]
async fn an_upstreams_fields_pass_on_as_written_but_for_this_hops() -> TestResult {
    let up = RawUpstream::start(fields).await;
    let p = Portico::start(&up.config()).await;
    let web = p.addr("web").await;
    // A plain HTTP/1.1 GET: Portico's own server.
    let (own, own_body) = exchange(web, b"GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    assert_eq!(own[0], "HTTP/1.1 200 OK");
    for written in
        ["Server: origin", "Date: Thu, 01 Jan 2026 00:00:00 GMT", "X-Custom: A  b", "Via: 1.0 edge, 1.1 portico"]
    {
        assert!(own.iter().any(|l| l == written), "{written:?} in {own:?}");
    }
    for dropped in ["keep-alive:", "trailer:", "upgrade:", "proxy-connection:"] {
        assert!(!own.iter().any(|l| l.to_ascii_lowercase().starts_with(dropped)), "{dropped} in {own:?}");
    }
    let ids: Vec<&String> = own.iter().filter(|l| l.to_ascii_lowercase().starts_with("x-request-id:")).collect();
    assert_eq!(ids.len(), 1, "{own:?}");
    assert!(!ids[0].ends_with("theirs"), "Portico's request id replaces the upstream's: {own:?}");
    assert_eq!(own.iter().filter(|l| l.to_ascii_lowercase().starts_with("date:")).count(), 1, "{own:?}");
    assert!(own.iter().any(|l| l == "transfer-encoding: chunked"), "{own:?}");
    assert_eq!(own_body, "2\r\nok\r\n0\r\n\r\n");
    // HTTP/1.0, which knows no chunked coding: the same fields, the body ended by closing.
    let (old, old_body) = exchange(web, b"GET /f HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    assert_eq!(old_body, "ok");
    assert!(old.iter().any(|l| l == "connection: close"), "{old:?}");
    assert!(!old.iter().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding")), "{old:?}");
    // A chunked request body: hyper's server, from the map.
    let (hyper, hyper_body) = exchange(
        web,
        b"GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await?;
    assert_eq!(hyper_body, "2\r\nok\r\n0\r\n\r\n");
    let without_ids = |fields: Vec<(String, String)>| -> Vec<(String, String)> {
        let mut fields: Vec<_> = fields.into_iter().filter(|(name, _)| name != "x-request-id").collect();
        fields.sort();
        fields
    };
    assert_eq!(without_ids(end_to_end(&own)), without_ids(end_to_end(&hyper)), "own {own:?}, hyper {hyper:?}");
    assert_eq!(without_ids(end_to_end(&own)), without_ids(end_to_end(&old)), "own {own:?}, 1.0 {old:?}");
    assert_eq!(end_to_end(&hyper).iter().filter(|(name, _)| name == "x-request-id").count(), 1, "{hyper:?}");
    Ok(())
}
