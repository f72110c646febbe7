//! Three in-process nodes on 127.0.0.1 with real sockets and real data directories.

use portico_cluster::{Cluster, ClusterError, ClusterSettings, Command, EndpointChange};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn settings(id: u64, ports: &BTreeMap<u64, u16>, dir: &std::path::Path) -> ClusterSettings {
    ClusterSettings {
        node_id: id,
        listen: format!("127.0.0.1:{}", ports[&id]),
        peers: ports.iter().filter(|(p, _)| **p != id).map(|(p, port)| (*p, format!("127.0.0.1:{port}"))).collect(),
        data_dir: dir.join(format!("node{id}")),
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: Duration::from_millis(400),
        token: Some("secret".into()),
        write_timeout: Duration::from_secs(3),
        on_become_leader: Vec::new(),
        on_lose_leadership: Vec::new(),
        hook_timeout: Duration::from_secs(2),
    }
}

async fn confirmed_leader(nodes: &[&Arc<Cluster>], within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(n) = nodes.iter().find(|n| n.status().leader_confirmed) {
            return Some(n.node_id());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn weight(upstream: &str, w: u32) -> Command {
    Command::Endpoint { upstream: upstream.into(), endpoint: "e".into(), change: EndpointChange::Weight(w) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_survive_partition_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: BTreeMap<u64, u16> = (1..=3).map(|id| (id, free_port())).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let bootstrap = (id == 1).then(|| Command::SetConfig { config: "boot".into(), modules: BTreeMap::new() });
        nodes.push(Cluster::start(settings(id, &ports, dir.path()), bootstrap).await.expect("start"));
    }
    let refs: Vec<&Arc<Cluster>> = nodes.iter().collect();
    let leader = confirmed_leader(&refs, Duration::from_secs(5)).await.expect("a leader is elected");

    // A write through a follower is forwarded, committed, and applied everywhere.
    let follower = nodes.iter().find(|n| n.node_id() != leader).expect("follower");
    let applied = follower.write(weight("app", 7)).await.expect("write through follower");
    for n in &nodes {
        assert!(n.wait_applied(applied.index, Duration::from_secs(3)).await, "node {} applied", n.node_id());
        assert_eq!(n.state().endpoints["app/e"].weight, Some(7));
    }

    // Cut the leader off: it refuses writes; the other two elect a leader and keep taking writes.
    let old = nodes.iter().find(|n| n.node_id() == leader).expect("leader").clone();
    old.set_isolated(true);
    let refused = old.write(weight("app", 8)).await;
    assert!(matches!(refused, Err(ClusterError::NoQuorum(_) | ClusterError::NoLeader)), "{refused:?}");
    let rest: Vec<&Arc<Cluster>> = nodes.iter().filter(|n| n.node_id() != leader).collect();
    let new_leader = confirmed_leader(&rest, Duration::from_secs(5)).await.expect("survivors elect a leader");
    assert_ne!(new_leader, leader);
    let applied = rest[0].write(weight("app", 9)).await.expect("majority write");
    assert_eq!(old.state().endpoints["app/e"].weight, Some(7), "the cut-off node never applies what it cannot see");

    // Heal: the old leader catches up.
    old.set_isolated(false);
    assert!(old.wait_applied(applied.index, Duration::from_secs(5)).await, "old leader catches up");
    assert_eq!(old.state().endpoints["app/e"].weight, Some(9));

    // Restart every node from disk: the state is rebuilt before any quorum exists.
    let expected = nodes[0].state();
    for n in &nodes {
        n.shutdown().await;
    }
    drop(refs);
    drop(rest);
    drop(old);
    drop(nodes);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alone = Cluster::start(settings(2, &ports, dir.path()), None).await.expect("restart alone");
    assert_eq!(alone.state().endpoints, expected.endpoints, "state rebuilt without a quorum");
    assert_eq!(alone.state().config.as_deref(), Some("boot"));
    let refused = alone.write(weight("app", 10)).await;
    assert!(refused.is_err(), "no quorum, no write: {refused:?}");
    alone.shutdown().await;
}
