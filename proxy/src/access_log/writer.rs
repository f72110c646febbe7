//! The writer thread: takes the queued lines in batches, formats them and appends them to their files through
//! a buffer, flushed after each batch. Workers never wake it for a line: it looks every [`FLUSH_EVERY`], or
//! sooner when [`WAKE_AT`] lines wait (a wake-up per line, a futex call and a switch of threads, cost more than
//! the line on two cores). A new generation (a reload) opens each file again under its name, keeping the open
//! handle when that fails, as nginx does.

use super::format::{combined_line, json_line};
use super::{Shared, Target};
use crate::config::AccessLogFormat;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a line may wait for the writer at most.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Lines waiting that make a worker wake the writer at once.
pub(super) const WAKE_AT: usize = 512;

/// A write error is logged at most this often per file (a full disk fails every line).
const WARN_EVERY: Duration = Duration::from_secs(10);

struct Files {
    /// Each open file, with the target it was opened for (whose listener a failure is counted against).
    open: HashMap<PathBuf, (BufWriter<File>, Arc<Target>)>,
    generation: u64,
    warned: HashMap<PathBuf, Instant>,
}

impl Files {
    fn append(&mut self, target: &Arc<Target>, line: &str, shared: &Shared) {
        let written = match self.open.entry(target.path.clone()) {
            std::collections::hash_map::Entry::Occupied(file) => file.into_mut().0.write_all(line.as_bytes()),
            std::collections::hash_map::Entry::Vacant(slot) => match super::open_append(&target.path) {
                Ok(file) => {
                    let (file, _) = slot.insert((BufWriter::with_capacity(64 * 1024, file), target.clone()));
                    file.write_all(line.as_bytes())
                }
                Err(e) => Err(e),
            },
        };
        if let Err(error) = written {
            shared.dropped.with_label_values(&[&target.listener, "write_failed"]).inc();
            self.warn(&target.path, &error);
            // Opened again for the next line: the disk may have room by then.
            self.open.remove(&target.path);
        }
    }

    fn flush(&mut self, shared: &Shared) {
        let mut failed = Vec::new();
        for (path, (file, target)) in &mut self.open {
            if let Err(error) = file.flush() {
                shared.dropped.with_label_values(&[&target.listener, "write_failed"]).inc();
                failed.push((path.clone(), error));
            }
        }
        for (path, error) in failed {
            self.warn(&path, &error);
            self.open.remove(&path);
        }
    }

    /// Opens every file again under its name (logrotate moved the old one away); a file that cannot be opened
    /// now keeps its handle, so its lines still go somewhere. Files the configuration no longer names close.
    fn reopen(&mut self, shared: &Shared) {
        self.flush(shared);
        {
            let configured = shared.configured.lock();
            self.open.retain(|path, _| configured.contains(path));
        }
        let mut failed = Vec::new();
        for (path, (file, _)) in &mut self.open {
            match super::open_append(path) {
                Ok(fresh) => *file = BufWriter::with_capacity(64 * 1024, fresh),
                Err(error) => failed.push((path.clone(), error)),
            }
        }
        for (path, error) in failed {
            self.warn(&path, &error);
        }
    }

    fn warn(&mut self, path: &std::path::Path, error: &std::io::Error) {
        let now = Instant::now();
        if self.warned.get(path).is_none_or(|at| now.duration_since(*at) >= WARN_EVERY) {
            self.warned.insert(path.to_path_buf(), now);
            tracing::warn!(path = %path.display(), %error, "access log lines not written");
        }
    }
}

/// Runs until [`super::AccessLogs::close`] asks it to stop, writing what is queued first.
pub(super) fn write_lines(shared: &Shared) {
    let mut files = Files { open: HashMap::new(), generation: 0, warned: HashMap::new() };
    let mut line = String::with_capacity(512);
    let mut batch = Vec::new();
    loop {
        let stopping = {
            let mut queue = shared.queue.lock();
            if queue.lines.is_empty() && !queue.stopping {
                shared.ready.wait_for(&mut queue, FLUSH_EVERY);
            }
            std::mem::swap(&mut batch, &mut queue.lines);
            queue.bytes = 0;
            queue.stopping
        };
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != files.generation {
            files.reopen(shared);
            files.generation = generation;
        }
        for (target, entry) in batch.drain(..) {
            line.clear();
            match target.format {
                AccessLogFormat::Json => json_line(&entry, &target.listener, &mut line),
                AccessLogFormat::Combined => combined_line(&entry, &mut line),
            }
            files.append(&target, &line, shared);
        }
        files.flush(shared);
        if stopping {
            shared.queue.lock().stopped = true;
            shared.ready.notify_all();
            return;
        }
    }
}
