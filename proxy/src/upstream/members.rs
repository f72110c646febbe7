//! A group's members: the endpoints it is built from, where each came from, and how a new member list maps onto
//! the live [`Endpoint`]s of the group it replaces (reused, so health, ejections, load and warm connections
//! carry over; new; or departing, to be retired once the new group is in force).

use super::endpoint::Endpoint;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Notify;

/// Where a member comes from, as `GET /upstreams` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A literal address in the configuration, or a name resolved once at load.
    Static,
    /// An address a DNS entry returned (the entry's name, as `GET /upstreams` shows it).
    Dns(String),
    /// Registered through the admin API.
    Registered,
}

impl Origin {
    /// `static`, `dns` or `registered`.
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Static => "static",
            Origin::Dns(_) => "dns",
            Origin::Registered => "registered",
        }
    }
}

/// One endpoint a group is built with.
#[derive(Debug, Clone)]
pub struct Member {
    /// The address as shown and matched (`ip:port` for discovered and registered members).
    pub name: String,
    /// Where to connect.
    pub address: SocketAddr,
    /// The weight its source gave it.
    pub weight: u32,
    /// Where it comes from.
    pub origin: Origin,
    /// An address its source no longer lists, kept serving while every replacement still waits for its first
    /// health check, so that a wholesale address change never leaves the group with nothing to send to.
    pub leaving: bool,
    /// For DNS members: the entry to wake when a connect to it fails.
    pub rediscover: Option<Arc<Notify>>,
}

impl Member {
    /// A member from the configuration's fixed endpoints.
    pub fn fixed(name: String, address: SocketAddr, weight: u32) -> Member {
        Member { name, address, weight, origin: Origin::Static, leaving: false, rediscover: None }
    }

    /// What makes two member lists equal: a group is rebuilt only when this changes.
    pub fn key(&self) -> (&str, SocketAddr, u32, &Origin, bool) {
        (&self.name, self.address, self.weight, &self.origin, self.leaving)
    }
}

/// Whether a member list differs from the one a group was built with.
pub fn differ(a: &[Member], b: &[Member]) -> bool {
    a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.key() != y.key())
}

/// Why a group is being built, which decides what a reused endpoint's weight becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// A configuration (re)load: weights are set from the configuration, as they always were.
    Load,
    /// Discovery or registration changed the member list: a reused endpoint keeps its weight (an operator may
    /// have changed it) unless its source now gives another.
    Membership,
}

/// The endpoint for each member, and the previous endpoints no member reuses (departing).
pub type Reconciled = (Vec<Arc<Endpoint>>, Vec<Arc<Endpoint>>);

/// Maps `members` onto the endpoints of `previous` (each with the member it was built from).
pub fn reconcile(
    members: &[Member],
    previous: &[(Arc<Endpoint>, Option<&Member>)],
    pending_when_new: bool,
    rebuild: Rebuild,
    lanes: usize,
) -> Result<Reconciled, http::uri::InvalidUri> {
    let mut used = vec![false; previous.len()];
    let mut endpoints = Vec::with_capacity(members.len());
    for m in members {
        let found = previous
            .iter()
            .enumerate()
            .find(|(i, (e, _))| !used[*i] && e.address == m.address && e.name == m.name)
            .map(|(i, _)| i);
        let endpoint = match found {
            Some(i) => {
                used[i] = true;
                let (e, old) = &previous[i];
                if rebuild == Rebuild::Load || old.is_none_or(|o| o.weight != m.weight) {
                    e.set_weight(m.weight);
                }
                e.clone()
            }
            None if pending_when_new && m.origin != Origin::Static => {
                Arc::new(Endpoint::new_pending(m.name.clone(), m.address, m.weight, lanes)?)
            }
            None => Arc::new(Endpoint::new(m.name.clone(), m.address, m.weight, lanes)?),
        };
        if let Some(notify) = &m.rediscover {
            endpoint.set_rediscover(notify.clone());
        }
        endpoints.push(endpoint);
    }
    let departing = previous.iter().zip(used).filter(|(_, used)| !used).map(|((e, _), _)| e.clone()).collect();
    Ok((endpoints, departing))
}
