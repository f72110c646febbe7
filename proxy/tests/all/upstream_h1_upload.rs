//! Request bodies that are still going up when the upstream answers: a streaming echo (a 200 head at once, the
//! upload echoed as it is read) gets the whole upload while its answer streams back, an early error the upstream
//! closes on reaches the client without waiting for an upload nobody reads, and a connection whose request did
//! not all go out is never pooled.

use crate::support::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous: only a hang trips it.
const LIMIT: Duration = Duration::from_secs(30);

/// Takes the next whole chunk off the front of a chunked body: `Some(data)`, empty for the last chunk (which
/// carries no trailers here); `None` while it is incomplete.
fn take_chunk(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let size = String::from_utf8_lossy(&buf[..line_end]);
    let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16).ok()?;
    let end = line_end + 2 + size + 2;
    if buf.len() < end {
        return None;
    }
    let data = buf[line_end + 2..line_end + 2 + size].to_vec();
    buf.drain(..end);
    Some(data)
}

/// Reads from `stream` into `buf` until a head is complete; the head (the rest stays in `buf`).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            return Some(String::from_utf8_lossy(&buf.drain(..end).collect::<Vec<u8>>()).into_owned());
        }
        if read_more(stream, buf).await == 0 {
            return None;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await.unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// Starts an upstream that runs `serve` on each connection it takes, and counts them.
async fn upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("local addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    (addr, connections)
}

/// Answers each request at once with a chunked 200 head, echoes each chunk of its body as it reads it, and
/// ends the answer when the request ends; then takes the next request on the connection.
async fn streaming_echo(mut stream: TcpStream) {
    let mut buf = Vec::new();
    while read_head(&mut stream, &mut buf).await.is_some() {
        if stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await.is_err() {
            return;
        }
        loop {
            let Some(data) = take_chunk(&mut buf) else {
                if read_more(&mut stream, &mut buf).await == 0 {
                    return;
                }
                continue;
            };
            let mut echo = format!("{:x}\r\n", data.len()).into_bytes();
            echo.extend_from_slice(&data);
            echo.extend_from_slice(b"\r\n");
            if stream.write_all(&echo).await.is_err() {
                return;
            }
            if data.is_empty() {
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_streaming_echo_gets_the_whole_upload_while_its_answer_streams_back() -> TestResult {
    let (addr, connections) = upstream(streaming_echo).await;
    let p = Portico::start_with_workers(&reverse_config(&[format!("\"{addr}\"")], ""), 1).await;
    let web = p.addr("web").await;
    let mut client = TcpStream::connect(web).await?;
    let mut buf = Vec::new();
    let exchange = async {
        for round in 0..2 {
            client.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").await?;
            let head = read_head(&mut client, &mut buf).await.unwrap_or_default();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            // Each part goes up only once the echo of the one before came back: the upload and the answer
            // are in flight together.
            let mut echoed = Vec::new();
            for part in 0..4 {
                let data = format!("round {round} part {part};");
                client.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await?;
                while !String::from_utf8_lossy(&echoed).ends_with(&data) {
                    match take_chunk(&mut buf) {
                        Some(chunk) => echoed.extend_from_slice(&chunk),
                        None if read_more(&mut client, &mut buf).await == 0 => return Err("client closed".into()),
                        None => {}
                    }
                }
            }
            client.write_all(b"0\r\n\r\n").await?;
            loop {
                match take_chunk(&mut buf) {
                    Some(chunk) if chunk.is_empty() => break,
                    Some(chunk) => echoed.extend_from_slice(&chunk),
                    None if read_more(&mut client, &mut buf).await == 0 => return Err("client closed".into()),
                    None => {}
                }
            }
            let expected: String = (0..4).map(|part| format!("round {round} part {part};")).collect();
            assert_eq!(String::from_utf8_lossy(&echoed), expected);
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    tokio::time::timeout(LIMIT, exchange).await??;
    assert_eq!(connections.load(Ordering::SeqCst), 1, "a request sent whole leaves its connection reusable");
    Ok(())
}

/// Answers a request with a body before reading it: `/close` with a 413 and `Connection: close`, `/keep` with
/// a 413 on a connection it keeps open (reading what comes, answering nothing more); `/ok` with a 200.
async fn early_answers(mut stream: TcpStream) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut stream, &mut buf).await {
        let answer: &[u8] = if head.starts_with("POST /close ") {
            b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!"
        } else if head.starts_with("POST /keep ") {
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big!"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
        if head.starts_with("POST /close ") {
            let _ = stream.shutdown().await;
        }
        if head.starts_with("POST ") {
            // Read, and drop, whatever comes until Portico closes (closing with unread bytes would reset the
            // connection, and could lose the answer on its way). A request sent on this connection now would
            // never be answered.
            while read_more(&mut stream, &mut buf).await > 0 {}
            return;
        }
    }
}

/// Sends the head of a large upload and a little of its body, never the rest; the answer's head and body.
async fn upload_part_of(web: SocketAddr, path: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut client = TcpStream::connect(web).await?;
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n").into_bytes();
    request.extend(std::iter::repeat_n(b'x', 32 * 1024));
    client.write_all(&request).await?;
    let mut buf = Vec::new();
    while !buf.ends_with(b"too big!") {
        if read_more(&mut client, &mut buf).await == 0 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn an_early_error_reaches_the_client_and_its_connection_is_not_pooled() -> TestResult {
    let (addr, connections) = upstream(early_answers).await;
    let p = Portico::start_with_workers(&reverse_config(&[format!("\"{addr}\"")], ""), 1).await;
    let web = p.addr("web").await;
    // `/ok` after `/close` needs a new connection and leaves it pooled; `/keep` takes that one.
    for (path, connections_after) in [("/close", 2), ("/keep", 3)] {
        let answer = tokio::time::timeout(LIMIT, upload_part_of(web, path)).await??;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.ends_with("\r\n\r\ntoo big!"), "{path}: {answer}");
        // The upload never ended, so the connection it was on is not reused, whatever the upstream said: the
        // next request needs a new one (and would hang on the old one, which the upstream no longer answers on).
        let ok = get(web, "/ok").await?;
        assert_eq!((ok.status.as_u16(), &ok.body[..]), (200, &b"ok"[..]), "after {path}");
        assert_eq!(connections.load(Ordering::SeqCst), connections_after, "after {path}");
    }
    Ok(())
}
