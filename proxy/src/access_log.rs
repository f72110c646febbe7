//! Access logs: one line per request a listener answered, as nginx's `access_log`, HAProxy's `log` and Envoy's
//! access loggers write them, to a file a listener names. A line is written when the response has been sent
//! whole (or given up), so it carries the bytes sent and the whole duration.
//!
//! No request waits on the disk: a worker hands a finished request's facts to one writer thread over a bounded
//! channel and moves on; the thread formats the lines and writes them through a buffer, flushed whenever it
//! runs out of lines to write. When the disk cannot keep up and the channel is full, lines are dropped and
//! counted (`portico_access_log_dropped_total`) rather than slowing requests down. A reload (`SIGHUP`,
//! `POST /config/reload`) reopens the files, so logrotate's `postrotate` can send `SIGHUP` as it sends nginx
//! `USR1`.

use crate::body::{BodyGuard, ResponseBody};
use crate::config::file::ListenerMode;
use crate::config::{AccessLogConfig, AccessLogFormat, ListenerConfig};
use crate::listen::ConnInfo;
use http::{header, Request};
use prometheus::{IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer at most; more are dropped (a few MiB of memory at worst).
const QUEUE: usize = 16 * 1024;

/// Why an access log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The file cannot be opened for appending.
    #[error("access log {path:?} cannot be opened for appending")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("access log writer thread could not be started")]
    Thread(#[source] std::io::Error),
}

/// The process's access log writer: started with the first listener that logs, shared by all of them.
pub struct AccessLogs {
    sender: OnceLock<SyncSender<Message>>,
    dropped: IntCounterVec,
}

impl std::fmt::Debug for AccessLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogs").field("started", &self.sender.get().is_some()).finish()
    }
}

impl AccessLogs {
    /// Registers the drop counter; no thread runs until a listener asks for a log.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let dropped = IntCounterVec::new(
            Opts::new(
                "portico_access_log_dropped_total",
                "access log lines not written: the writer was behind (queue full) or the file could not be written",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(AccessLogs { sender: OnceLock::new(), dropped })
    }

    /// A listener's log, its file checked to open for appending now, so a configuration naming a file Portico
    /// cannot write is refused with the reason instead of losing its lines.
    pub fn open(&self, listener: &ListenerConfig, config: &AccessLogConfig) -> Result<AccessLog, AccessLogError> {
        open_append(&config.path).map_err(|source| AccessLogError::Open { path: config.path.clone(), source })?;
        let sender = match self.sender.get() {
            Some(sender) => sender.clone(),
            None => {
                let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
                let dropped = self.dropped.clone();
                std::thread::Builder::new()
                    .name("portico-access-log".into())
                    .spawn(move || write_lines(&receiver, &dropped))
                    .map_err(AccessLogError::Thread)?;
                // Two listeners opening at once: the loser's thread ends when its sender is dropped here.
                self.sender.get_or_init(|| sender).clone()
            }
        };
        Ok(AccessLog {
            target: Arc::new(Target {
                path: config.path.clone(),
                format: config.format,
                listener: listener.name.as_str().into(),
                forward: listener.mode == ListenerMode::Forward,
            }),
            sender,
            dropped: self.dropped.clone(),
        })
    }

    /// Closes the open files, so the next line opens its file again (after logrotate moved it away).
    pub fn reopen(&self) {
        if let Some(sender) = self.sender.get() {
            // Full queue: the files are reopened a little later, at the next reload.
            let _ = sender.try_send(Message::Reopen);
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Where and how one listener's lines go.
#[derive(Debug)]
struct Target {
    path: PathBuf,
    format: AccessLogFormat,
    listener: Box<str>,
    /// A forward listener's requests are logged with their whole target (`http://origin/path`, `host:443`),
    /// a reverse listener's with the path and query.
    forward: bool,
}

enum Message {
    Line(Arc<Target>, Box<Entry>),
    Reopen,
}

/// One listener's access log, kept with its settings.
#[derive(Clone)]
pub struct AccessLog {
    target: Arc<Target>,
    sender: SyncSender<Message>,
    dropped: IntCounterVec,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("target", &self.target).finish()
    }
}

impl AccessLog {
    /// What the line needs of the request, read before the request path takes it.
    pub fn begin<B>(
        &self,
        req: &Request<B>,
        conn: &ConnInfo,
        request_id: &str,
        trace_id: &dyn std::fmt::Display,
    ) -> Box<Entry> {
        let field = |name: header::HeaderName| {
            req.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let host = req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| field(header::HOST));
        Box::new(Entry {
            time: SystemTime::now(),
            started: Instant::now(),
            client: conn.peer,
            method: req.method().as_str().into(),
            target: match req.uri().path_and_query() {
                Some(path) if !self.target.forward => path.as_str().to_string(),
                _ => req.uri().to_string(),
            },
            version: req.version(),
            host,
            user_agent: field(header::USER_AGENT),
            referer: field(header::REFERER),
            request_id: request_id.into(),
            trace_id: trace_id.to_string().into(),
            status: 0,
            bytes: 0,
            complete: true,
            duration_us: 0,
            upstream: None,
            endpoint: None,
            upstream_time_us: None,
        })
    }

    /// Writes the line once the response has been sent: now, for an answer whole in memory; when its body
    /// ends, for one that streams (the bytes then counted as they go).
    pub fn finish(&self, mut entry: Box<Entry>, response: &mut http::Response<ResponseBody>) {
        entry.status = response.status().as_u16();
        let body = response.body_mut();
        match body.guard_slot() {
            Some(slot) => {
                let inner = slot.take();
                *slot = Some(Box::new(Logged { log: self.clone(), entry: Some(entry), inner }));
            }
            None => {
                entry.bytes = http_body::Body::size_hint(body).exact().unwrap_or(0);
                self.write(entry);
            }
        }
    }

    fn write(&self, mut entry: Box<Entry>) {
        entry.duration_us = micros(entry.started.elapsed());
        match self.sender.try_send(Message::Line(self.target.clone(), entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.with_label_values(&[&self.target.listener, "queue_full"]).inc(),
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.with_label_values(&[&self.target.listener, "writer_gone"]).inc();
            }
        }
    }
}

/// One request as its line tells it.
#[derive(Debug)]
pub struct Entry {
    time: SystemTime,
    started: Instant,
    client: std::net::SocketAddr,
    method: Box<str>,
    target: String,
    version: http::Version,
    host: Option<String>,
    user_agent: Option<String>,
    referer: Option<String>,
    request_id: Box<str>,
    trace_id: Box<str>,
    status: u16,
    bytes: u64,
    /// The body was sent to its end (not cut off by an upstream failure, a timeout or the client leaving).
    complete: bool,
    duration_us: u64,
    upstream: Option<Box<str>>,
    endpoint: Option<Box<str>>,
    upstream_time_us: Option<u64>,
}

impl Entry {
    /// The upstream group and endpoint that answered, and how long after the request's start its head came.
    pub fn served_by(&mut self, upstream: &str, endpoint: &str) {
        self.upstream = Some(upstream.into());
        self.endpoint = Some(endpoint.into());
        self.upstream_time_us = Some(micros(self.started.elapsed()));
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Rides on a streaming body: counts what is handed to the client, and writes the line when the body ends.
struct Logged {
    log: AccessLog,
    entry: Option<Box<Entry>>,
    inner: Option<Box<dyn BodyGuard>>,
}

impl BodyGuard for Logged {
    fn finish(&mut self, ok: bool) {
        if let Some(mut inner) = self.inner.take() {
            inner.finish(ok);
        }
        if let Some(mut entry) = self.entry.take() {
            entry.complete = ok;
            self.log.write(entry);
        }
    }

    fn progress(&mut self, handed: Option<usize>) {
        if let (Some(n), Some(entry)) = (handed, self.entry.as_mut()) {
            entry.bytes += n as u64;
        }
        if let Some(inner) = self.inner.as_mut() {
            inner.progress(handed);
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A body dropped before its end (the client went away): the line says so.
        self.finish(false);
    }
}

/// The writer thread: formats and writes lines until every sender is gone.
fn write_lines(receiver: &Receiver<Message>, dropped: &IntCounterVec) {
    let mut files: HashMap<PathBuf, BufWriter<File>> = HashMap::new();
    let mut line = String::with_capacity(512);
    while let Ok(mut message) = receiver.recv() {
        loop {
            match message {
                Message::Reopen => {
                    for (_, mut file) in files.drain() {
                        let _ = file.flush();
                    }
                }
                Message::Line(target, entry) => {
                    line.clear();
                    match target.format {
                        AccessLogFormat::Json => json_line(&entry, &target.listener, &mut line),
                        AccessLogFormat::Combined => combined_line(&entry, &mut line),
                    }
                    let written = match files.entry(target.path.clone()) {
                        std::collections::hash_map::Entry::Occupied(file) => file.into_mut().write_all(line.as_bytes()),
                        std::collections::hash_map::Entry::Vacant(slot) => match open_append(&target.path) {
                            Ok(file) => {
                                slot.insert(BufWriter::with_capacity(64 * 1024, file)).write_all(line.as_bytes())
                            }
                            Err(e) => Err(e),
                        },
                    };
                    if let Err(error) = written {
                        dropped.with_label_values(&[&target.listener, "write_failed"]).inc();
                        tracing::warn!(path = %target.path.display(), %error, "access log line not written");
                        // Opened again for the next line: the disk may have room by then.
                        files.remove(&target.path);
                    }
                }
            }
            match receiver.try_recv() {
                Ok(next) => message = next,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        for file in files.values_mut() {
            let _ = file.flush();
        }
    }
}

fn version_text(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One JSON object a line: every field, named as Envoy's and OpenTelemetry's are where they have one.
fn json_line(e: &Entry, listener: &str, out: &mut String) {
    let value = serde_json::json!({
        "time": portico_anomaly::time::rfc3339(unix_ms(e.time)),
        "listener": listener,
        "client": e.client.to_string(),
        "method": &*e.method,
        "target": e.target,
        "protocol": version_text(e.version),
        "host": e.host,
        "status": e.status,
        "bytes_sent": e.bytes,
        "complete": e.complete,
        "duration_ms": e.duration_us as f64 / 1000.0,
        "upstream": e.upstream.as_deref(),
        "endpoint": e.endpoint.as_deref(),
        "upstream_response_ms": e.upstream_time_us.map(|us| us as f64 / 1000.0),
        "user_agent": e.user_agent,
        "referer": e.referer,
        "request_id": &*e.request_id,
        "trace_id": &*e.trace_id,
    });
    let _ = write!(out, "{value}");
    out.push('\n');
}

/// nginx's and Apache's `combined` format, which log analysers read as it is:
/// `client - - [time] "request" status bytes "referer" "user agent"`.
fn combined_line(e: &Entry, out: &mut String) {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = unix_ms(e.time).div_euclid(1000);
    let (y, m, d) = portico_anomaly::time::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let month = MONTHS[(m as usize).saturating_sub(1) % 12];
    let _ = write!(
        out,
        "{} - - [{d:02}/{month}/{y:04}:{:02}:{:02}:{:02} +0000] \"",
        e.client.ip(),
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    quoted(out, &format!("{} {} {}", e.method, e.target, version_text(e.version)));
    let _ = write!(out, "\" {} {} \"", e.status, e.bytes);
    quoted(out, e.referer.as_deref().unwrap_or("-"));
    out.push_str("\" \"");
    quoted(out, e.user_agent.as_deref().unwrap_or("-"));
    out.push_str("\"\n");
}

/// Writes `text` for a double-quoted field, escaped as nginx escapes it: `"`, `\` and bytes outside printable
/// ASCII as `\xHH`, so a client cannot forge a line or a field.
fn quoted(out: &mut String, text: &str) {
    for b in text.bytes() {
        match b {
            b'"' | b'\\' => {
                let _ = write!(out, "\\x{b:02X}");
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: UNIX_EPOCH + std::time::Duration::from_millis(1_764_936_000_123),
            started: Instant::now(),
            client: "127.0.0.1:5000".parse().expect("address"),
            method: "GET".into(),
            target: "/a?b=\"c\"".into(),
            version: http::Version::HTTP_11,
            host: Some("example.test".into()),
            user_agent: Some("curl/8\n\u{e9}".into()),
            referer: None,
            request_id: "r1".into(),
            trace_id: "t1".into(),
            status: 200,
            bytes: 12,
            complete: true,
            duration_us: 1500,
            upstream: Some("app".into()),
            endpoint: Some("127.0.0.1:8081".into()),
            upstream_time_us: Some(1000),
        }
    }

    #[test]
    fn combined_lines_escape_what_a_client_sent() {
        let mut line = String::new();
        combined_line(&entry(), &mut line);
        assert_eq!(
            line,
            "127.0.0.1 - - [05/Dec/2025:12:00:00 +0000] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 12 \"-\" \"curl/8\\x0A\\xC3\\xA9\"\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let mut line = String::new();
        json_line(&entry(), "web", &mut line);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["time"], "2025-12-05T12:00:00.123Z");
        assert_eq!(value["status"], 200);
        assert_eq!(value["duration_ms"], 1.5);
        assert_eq!(value["endpoint"], "127.0.0.1:8081");
        assert_eq!(value["user_agent"], "curl/8\n\u{e9}");
    }
}
