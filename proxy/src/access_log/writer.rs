//! The writer thread: takes finished requests off the queue, formats their lines and appends them to their
//! files through a buffer, flushed whenever the queue runs dry. A new generation (a reload) lets go of the
//! open files first, so a file logrotate moved away is opened again under its name.

use super::format::{combined_line, json_line};
use super::{Entry, Shared, Target};
use crate::config::AccessLogFormat;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the queue carries.
pub(super) enum Message {
    Line(Arc<Target>, Box<Entry>),
    /// Flush everything and stop; the sender is told when it is done.
    Stop(SyncSender<()>),
}

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

    fn warn(&mut self, path: &std::path::Path, error: &std::io::Error) {
        let now = Instant::now();
        if self.warned.get(path).is_none_or(|at| now.duration_since(*at) >= WARN_EVERY) {
            self.warned.insert(path.to_path_buf(), now);
            tracing::warn!(path = %path.display(), %error, "access log lines not written");
        }
    }
}

/// Runs until told to stop, or until every sender is gone.
pub(super) fn write_lines(receiver: &Receiver<Message>, shared: &Shared) {
    let mut files = Files { open: HashMap::new(), generation: 0, warned: HashMap::new() };
    let mut line = String::with_capacity(512);
    while let Ok(mut message) = receiver.recv() {
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != files.generation {
            files.flush(shared);
            files.open.clear();
            files.generation = generation;
        }
        loop {
            match message {
                Message::Stop(done) => {
                    files.flush(shared);
                    let _ = done.send(());
                    return;
                }
                Message::Line(target, entry) => {
                    shared.queued_bytes.fetch_sub(entry.weight(), Ordering::Relaxed);
                    line.clear();
                    match target.format {
                        AccessLogFormat::Json => json_line(&entry, &target.listener, &mut line),
                        AccessLogFormat::Combined => combined_line(&entry, &mut line),
                    }
                    files.append(&target, &line, shared);
                }
            }
            match receiver.try_recv() {
                Ok(next) => message = next,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        files.flush(shared);
    }
    files.flush(shared);
}
