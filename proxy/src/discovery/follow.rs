//! One DNS entry's resolution loop, on the control runtime: resolve, record, wait for the interval or for a
//! connect failure to one of the entry's addresses (at most one early re-resolution a second), again.

use super::dns::Resolver;
use super::Discovery;
use crate::config::DiscoveredEntry;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The shortest time between two resolutions of one name when connect failures ask for early ones, so a dead
/// address under load does not turn into a stream of DNS queries.
const EARLY_RESOLUTION_GAP: Duration = Duration::from_secs(1);

/// Starts the loop; it ends when aborted (reload, shutdown) or when `discovery` is gone.
pub fn spawn(
    discovery: Weak<Discovery>,
    group: String,
    entry: DiscoveredEntry,
    resolver: Result<Resolver, String>,
    rediscover: Arc<Notify>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let resolved_at = Instant::now();
            let result = match &resolver {
                Ok(resolver) => resolver.lookup(&entry.name, entry.weight).await.map_err(|e| error_text(&e)),
                Err(e) => Err(e.clone()),
            };
            let Some(discovery) = discovery.upgrade() else { return };
            discovery.record(&group, &entry.name, result);
            drop(discovery);
            let mut next = resolved_at + entry.interval;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => break,
                    () = rediscover.notified() => {
                        next = next.min((resolved_at + EARLY_RESOLUTION_GAP).max(Instant::now()));
                    }
                }
            }
        }
    })
}

/// The error with its causes, as `GET /upstreams` shows it.
pub(super) fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
