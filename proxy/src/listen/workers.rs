//! Thread-per-core serving. Each data-path worker is an OS thread running its own single-threaded tokio
//! runtime. A client connection is handed to one worker when it is accepted, and from then on it, the tasks
//! hyper spawns for it and the upstream connections its requests use (each worker has its own pool lane, see
//! [`crate::upstream::Upstream::send`]) all live on that thread: a proxied request never has to wake
//! another thread. This is the model of nginx's worker processes and of Pingora; tokio's work-stealing
//! runtime instead hands a request between threads (the client connection, the pooled upstream connection's
//! task and the response channel can each sit on a different worker) and pays a cross-thread wake-up for it.
//!
//! The control plane (admin API, health checks, reloads, cluster, anomaly detection) stays on the main
//! runtime, lane 0.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::oneshot;

thread_local! {
    /// 1 + the worker index on a data-path worker thread; 0 on any other thread.
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// The connection-pool lane of the calling thread: `1 + worker index` on a data-path worker, 0 elsewhere.
/// Upstream groups keep one pool per lane so that a worker only ever reuses connections its own runtime
/// drives.
pub fn lane() -> usize {
    LANE.with(Cell::get)
}

/// Makes the calling thread count as lane `lane`, for unit tests of per-lane state.
#[cfg(test)]
pub fn set_lane_for_test(lane: usize) {
    LANE.with(|cell| cell.set(lane));
}

/// How many connection-pool lanes a server with these workers needs: one per worker, plus lane 0.
pub fn lanes(workers: Option<&Workers>) -> usize {
    workers.map_or(0, Workers::count) + 1
}

/// How many data-path workers to run when nothing says otherwise: one per core the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The running worker threads. Dropping it stops them; tasks still running on them are cancelled.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (at least one), each a thread named `portico-worker-N`.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let count = count.max(1);
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new().name(format!("portico-worker-{index}")).spawn(move || {
                LANE.with(|lane| lane.set(index + 1));
                // With one plugin instance per core (the default) each worker owns a VM of its own.
                portico_plugins::enter_worker(index, count);
                // Runs the worker's tasks until the `Workers` is dropped (the sender goes away).
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })?;
        }
        Ok(Workers { handles, stops, next: AtomicUsize::new(0) })
    }

    /// The number of workers.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// The workers' runtimes, for tasks that must run on each of them (a plugin's ticker per worker).
    pub fn handles(&self) -> &[tokio::runtime::Handle] {
        &self.handles
    }

    /// Runs a connection's future on the next worker, round robin. The future must create its socket there
    /// (`TcpStream::from_std`) so that the socket is registered with that worker's reactor.
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(connection);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_runs_its_tasks_on_its_own_lane() {
        let workers = Workers::start(2).expect("workers start");
        assert_eq!(workers.count(), 2);
        assert_eq!(lane(), 0, "the test thread is not a worker");
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                let _ = tx.send((lane(), std::thread::current().name().map(str::to_string)));
            });
        }
        let mut seen: Vec<(usize, Option<String>)> =
            (0..4).map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).expect("task ran")).collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (1, Some("portico-worker-0".to_string())),
                (1, Some("portico-worker-0".to_string())),
                (2, Some("portico-worker-1".to_string())),
                (2, Some("portico-worker-1".to_string())),
            ],
            "round robin over the workers, each task on its worker's lane"
        );
    }
}
