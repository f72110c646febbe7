//! Routing: which upstream group a request goes to. Natively that is the listener's default group; routing
//! plugins may override it (see the plugin host's upstream-selection extension).

use crate::listen::ListenerRuntime;
use crate::server::Snapshot;
use crate::upstream::held::Held;

/// The group for a request: `override_group` if a plugin chose one, else the listener's default; held through
/// the calling worker's handle (see [`crate::upstream::held`]).
pub fn select(snapshot: &Snapshot, listener: &ListenerRuntime, override_group: Option<&str>) -> Option<Held> {
    let name = override_group.or(listener.config.upstream.as_deref())?;
    snapshot.held.get(name).map(|handles| handles.mine())
}
