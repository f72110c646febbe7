//! Leader hooks for sites without keepalived: an argument vector run when this node's leadership is confirmed
//! by a quorum and when it ends. Runs are serialised in order (a "lose" never overtakes the "become" before it),
//! bounded by a timeout, and never block Raft.

use std::time::Duration;

/// The configured hooks of one node, run one at a time in the order of the edges by a worker task.
#[derive(Debug, Clone)]
pub struct LeaderHooks {
    queue: tokio::sync::mpsc::UnboundedSender<(bool, u64)>,
}

impl LeaderHooks {
    /// Starts the worker for this node's hooks; empty argument vectors run nothing. Needs a tokio runtime.
    pub fn new(node_id: u64, become_leader: Vec<String>, lose_leadership: Vec<String>, timeout: Duration) -> Self {
        let (queue, mut edges) = tokio::sync::mpsc::unbounded_channel::<(bool, u64)>();
        tokio::spawn(async move {
            while let Some((became, term)) = edges.recv().await {
                let (argv, event) =
                    if became { (&become_leader, "become_leader") } else { (&lose_leadership, "lose_leadership") };
                if !argv.is_empty() {
                    run(argv, event, node_id, term, timeout).await;
                }
            }
        });
        LeaderHooks { queue }
    }

    /// Queues the hook for a leadership edge.
    pub fn fire(&self, became: bool, term: u64) {
        let _ = self.queue.send((became, term));
    }
}

async fn run(argv: &[String], event: &str, node_id: u64, term: u64, timeout: Duration) {
    let Some((program, args)) = argv.split_first() else { return };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("PORTICO_EVENT", event)
        .env("PORTICO_NODE_ID", node_id.to_string())
        .env("PORTICO_TERM", term.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let outcome = match command.spawn() {
        Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("exited with {status}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                let _ = child.kill().await;
                Err(format!("killed after {timeout:?}"))
            }
        },
        Err(e) => Err(format!("cannot start {program}: {e}")),
    };
    match outcome {
        Ok(()) => tracing::info!(event, program = %program, "leader hook ran"),
        Err(reason) => tracing::error!(event, program = %program, %reason, "leader hook failed"),
    }
}
