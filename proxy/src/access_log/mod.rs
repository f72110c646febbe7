//! Access logs: one line per request a listener answered, as nginx's `access_log`, HAProxy's `log` and Envoy's
//! access loggers write them, to a file a listener names. A line is written when the response has been sent
//! whole, given up or left by the client, so it carries the bytes sent and the whole duration.
//!
//! No request waits on the disk: a worker hands a finished request's facts to one writer thread
//! ([`writer`]) over a bounded queue and moves on; the thread takes them in batches (every 100 ms, or sooner
//! when many wait), formats the lines ([`format`]) and writes them through a buffer, flushed after each
//! batch. When the disk cannot keep up and the queue is full (in lines, or in the bytes of request text it
//! holds), lines are dropped and counted (`portico_access_log_dropped_total`) rather than slowing requests
//! down. Every reload asked for (`SIGHUP`,
//! `POST /config/reload`) reopens the files, so logrotate's `postrotate` can send `SIGHUP` as it sends nginx
//! `USR1`.

mod format;
mod writer;

use crate::body::{BodyGuard, ResponseBody};
use crate::config::file::ListenerMode;
use crate::config::{AccessLogConfig, AccessLogFormat, ListenerConfig};
use crate::listen::ConnInfo;
use http::{header, Request};
use prometheus::{IntCounterVec, Opts, Registry};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Lines waiting for the writer at most; more are dropped.
const QUEUE: usize = 16 * 1024;
/// Bytes of request text (targets, names) waiting for the writer at most: long targets and user agents fill
/// this before [`QUEUE`] does, so the queue's memory stays bounded whatever clients send.
const QUEUE_BYTES: usize = 32 << 20;
/// The longest text a line keeps of one request field (a target, a user agent); the rest is cut, as HAProxy
/// cuts long lines.
const MAX_FIELD: usize = 4096;
/// How long a stop waits for the writer to write what is queued.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Why an access log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The file cannot be opened for appending.
    #[error("access log {path:?} cannot be opened for appending: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("access log writer thread could not be started: {0}")]
    Thread(#[source] std::io::Error),
}

/// The queue's lines, and the writer's reading of them.
struct Queue {
    lines: Vec<(Arc<Target>, Box<Entry>)>,
    /// [`Entry::weight`] of the lines queued.
    bytes: usize,
    /// [`AccessLogs::close`] asked the writer to write what is queued and stop.
    stopping: bool,
    /// It did.
    stopped: bool,
}

/// What the writer thread and the listeners' logs share.
struct Shared {
    dropped: IntCounterVec,
    /// Bumped by [`AccessLogs::reopen`]; the writer opens its files again when it sees a new one.
    generation: AtomicU64,
    queue: parking_lot::Mutex<Queue>,
    /// The writer waits on it for lines (see [`writer::WAKE_AT`]), and a stop for the writer.
    ready: parking_lot::Condvar,
    /// The files the configuration names (see [`AccessLogs::configured`]).
    configured: parking_lot::Mutex<std::collections::HashSet<PathBuf>>,
}

/// The process's access log writer: started with the first listener that logs, shared by all of them.
pub struct AccessLogs {
    started: OnceLock<()>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AccessLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogs").field("started", &self.started.get().is_some()).finish()
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
        let queue = Queue { lines: Vec::new(), bytes: 0, stopping: false, stopped: false };
        let shared = Arc::new(Shared {
            dropped,
            generation: AtomicU64::new(0),
            queue: parking_lot::Mutex::new(queue),
            ready: parking_lot::Condvar::new(),
            configured: parking_lot::Mutex::default(),
        });
        Ok(AccessLogs { started: OnceLock::new(), shared })
    }

    /// A listener's log, its file checked to open for appending now, so a configuration naming a file Portico
    /// cannot write is refused with the reason instead of losing its lines.
    pub fn open(&self, listener: &ListenerConfig, config: &AccessLogConfig) -> Result<AccessLog, AccessLogError> {
        open_append(&config.path).map_err(|source| AccessLogError::Open { path: config.path.clone(), source })?;
        if self.started.get().is_none() {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("portico-access-log".into())
                .spawn(move || writer::write_lines(&shared))
                .map_err(AccessLogError::Thread)?;
            // Listeners are opened one at a time (under the server's listener lock): one thread.
            let _ = self.started.set(());
        }
        Ok(AccessLog(Arc::new(Target {
            path: config.path.clone(),
            format: config.format,
            listener: listener.name.as_str().into(),
            forward: listener.mode == ListenerMode::Forward,
            shared: self.shared.clone(),
        })))
    }

    /// Has the writer open its files again under their names (after logrotate moved them away). Asked for on
    /// every reload, whether or not the configuration changed or was taken.
    pub fn reopen(&self) {
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// The files the configuration now names, at a reload's commit: the writer closes the others (a listener
    /// removed, or given another file) instead of keeping, and reopening, them for the life of the process.
    pub fn configured(&self, paths: impl IntoIterator<Item = PathBuf>) {
        *self.shared.configured.lock() = paths.into_iter().collect();
        self.reopen();
    }

    /// Writes out what is queued (waiting up to 5 s), at shutdown; lines after that are dropped. Blocks: call
    /// it off the async workers.
    pub fn close(&self) {
        if self.started.get().is_none() {
            return;
        }
        let mut queue = self.shared.queue.lock();
        queue.stopping = true;
        self.shared.ready.notify_all();
        let deadline = Instant::now() + STOP_WAIT;
        while !queue.stopped && !self.shared.ready.wait_until(&mut queue, deadline).timed_out() {}
    }
}

/// Whether `path` opens for appending (created if missing), as a listener's log will open it: `portico
/// check` refuses what `run` would, as `nginx -t` opens its logs.
pub fn check_file(path: &Path) -> Result<(), AccessLogError> {
    open_append(path).map(drop).map_err(|source| AccessLogError::Open { path: path.to_path_buf(), source })
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Where and how one listener's lines go.
struct Target {
    path: PathBuf,
    format: AccessLogFormat,
    listener: Box<str>,
    /// A forward listener's requests are logged with their whole target (`http://origin/path`, `host:443`),
    /// a reverse listener's with the path and query.
    forward: bool,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("path", &self.path).field("listener", &self.listener).finish()
    }
}

/// One listener's access log, kept with its settings: one reference count, taken once a logged request (the
/// line goes to the queue with it).
#[derive(Clone, Debug)]
pub struct AccessLog(Arc<Target>);

impl AccessLog {
    /// What the line needs of the request (which arrived at `started`), read before the request path takes
    /// it; the line is written with status 499 if the request is dropped before it has a response (the client
    /// went away), as nginx does.
    pub fn begin<B>(
        &self,
        req: &Request<B>,
        conn: &ConnInfo,
        started: Instant,
        request_id: &str,
        trace_id: &dyn std::fmt::Display,
    ) -> Pending {
        let field =
            |name: header::HeaderName| req.headers().get(name).map(|v| cut(&String::from_utf8_lossy(v.as_bytes())));
        let host = req.uri().authority().map(|a| cut(a.as_str())).or_else(|| field(header::HOST));
        let entry = Box::new(Entry {
            time: SystemTime::now(),
            started,
            client: conn.peer,
            method: req.method().as_str().into(),
            target: match req.uri().path_and_query() {
                Some(path) if !self.0.forward => cut(path.as_str()),
                _ => cut(&req.uri().to_string()),
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
        });
        Pending { line: Some((self.clone(), entry)) }
    }

    /// Writes the line once the response has been sent: now, for an answer whole in memory; when its body
    /// ends or is given up, for one that streams. Call it before the body's other guards are attached, so that
    /// the send timeout, which finishes the guards under it when it gives a body up, writes the line then; the
    /// bytes are counted by the [`Sent`] it returns, which goes outside every guard ([`Sent::count`]).
    fn finish(self, mut entry: Box<Entry>, response: &mut http::Response<ResponseBody>) -> Option<Sent> {
        entry.status = response.status().as_u16();
        let head = entry.method.as_ref() == "HEAD";
        let body = response.body_mut();
        match body.guard_slot() {
            Some(slot) => {
                let sent = Sent(Arc::new(AtomicU64::new(0)));
                let inner = slot.take();
                *slot = Some(Box::new(Logged { line: Some((self, entry)), sent: sent.clone(), inner }));
                Some(sent)
            }
            None => {
                // A HEAD answer's body (a local error's) is never sent.
                entry.bytes = if head { 0 } else { http_body::Body::size_hint(body).exact().unwrap_or(0) };
                self.write(entry);
                None
            }
        }
    }

    fn write(self, mut entry: Box<Entry>) {
        entry.duration_us = entry.since_start();
        let target = self.0;
        let shared = target.shared.clone();
        let weight = entry.weight();
        let queued = {
            let mut queue = shared.queue.lock();
            if queue.stopping {
                Err((target, "writer_stopped"))
            } else if queue.lines.len() >= QUEUE || queue.bytes + weight > QUEUE_BYTES {
                Err((target, "queue_full"))
            } else {
                queue.lines.push((target, entry));
                queue.bytes += weight;
                Ok(queue.lines.len() == writer::WAKE_AT)
            }
        };
        match queued {
            Ok(true) => {
                shared.ready.notify_one();
            }
            Ok(false) => {}
            Err((target, reason)) => shared.dropped.with_label_values(&[&target.listener, reason]).inc(),
        }
    }
}

/// At most [`MAX_FIELD`] bytes of `text`, cut at a character boundary, with `...` when cut.
fn cut(text: &str) -> String {
    if text.len() <= MAX_FIELD {
        return text.to_string();
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A request's line until its response is known (see [`AccessLog::begin`]).
#[derive(Debug)]
pub struct Pending {
    line: Option<(AccessLog, Box<Entry>)>,
}

impl Pending {
    /// See [`Entry::attempt`].
    pub fn attempt(&mut self, upstream: &str, endpoint: &str) {
        if let Some((_, entry)) = self.line.as_mut() {
            entry.attempt(upstream, endpoint);
        }
    }

    /// See [`Entry::answered`].
    pub fn answered(&mut self) {
        if let Some((_, entry)) = self.line.as_mut() {
            entry.answered();
        }
    }

    /// The response is known: see [`AccessLog::finish`].
    pub fn finish(mut self, response: &mut http::Response<ResponseBody>) -> Option<Sent> {
        let (log, entry) = self.line.take()?;
        log.finish(entry, response)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((log, mut entry)) = self.line.take() {
            // nginx's "client closed request".
            entry.status = 499;
            entry.complete = false;
            log.write(entry);
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
    /// The memory a queued entry holds, roughly: what [`QUEUE_BYTES`] counts.
    fn weight(&self) -> usize {
        let text = |t: &Option<String>| t.as_ref().map_or(0, String::len);
        std::mem::size_of::<Entry>()
            + self.target.len()
            + text(&self.host)
            + text(&self.user_agent)
            + text(&self.referer)
            + self.request_id.len()
            + self.trace_id.len()
    }

    /// The upstream group and endpoint an attempt goes to: the line names the last one tried, as nginx's
    /// `$upstream_addr` ends with it.
    fn attempt(&mut self, upstream: &str, endpoint: &str) {
        if self.upstream.as_deref() != Some(upstream) {
            self.upstream = Some(upstream.into());
        }
        self.endpoint = Some(endpoint.into());
        self.upstream_time_us = None;
    }

    /// The attempt's response head came: how long after the request's start.
    fn answered(&mut self) {
        self.upstream_time_us = Some(self.since_start());
    }

    /// Microseconds since the request arrived, on the clock the request path reads (the task's poll time).
    fn since_start(&self) -> u64 {
        let elapsed = crate::clock::now().saturating_duration_since(self.started);
        u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
    }
}

/// The bytes of a streaming body handed to the client so far: counted by a guard outside all the others (each
/// frame's `progress` reaches only the outermost one), read by the guard that writes the line.
#[derive(Clone)]
pub struct Sent(Arc<AtomicU64>);

impl Sent {
    /// Puts the counter outside every guard of the body.
    pub fn count(self, body: &mut ResponseBody) {
        if let Some(slot) = body.guard_slot() {
            let inner = slot.take();
            *slot = Some(Box::new(Counting { sent: self, inner }));
        }
    }
}

/// Counts each frame's bytes and passes `progress` and the end on.
struct Counting {
    sent: Sent,
    inner: Option<Box<dyn BodyGuard>>,
}

impl BodyGuard for Counting {
    fn finish(&mut self, ok: bool) {
        if let Some(mut inner) = self.inner.take() {
            inner.finish(ok);
        }
    }

    fn progress(&mut self, handed: Option<usize>) {
        if let Some(n) = handed {
            self.sent.0.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(inner) = self.inner.as_mut() {
            inner.progress(handed);
        }
    }
}

/// Writes the line when the body ends, is given up, or is dropped.
struct Logged {
    line: Option<(AccessLog, Box<Entry>)>,
    sent: Sent,
    inner: Option<Box<dyn BodyGuard>>,
}

impl BodyGuard for Logged {
    fn finish(&mut self, ok: bool) {
        if let Some(mut inner) = self.inner.take() {
            inner.finish(ok);
        }
        if let Some((log, mut entry)) = self.line.take() {
            entry.complete = ok;
            entry.bytes = self.sent.0.load(Ordering::Relaxed);
            log.write(entry);
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A body dropped before its end (the client went away): the line says so.
        self.finish(false);
    }
}
