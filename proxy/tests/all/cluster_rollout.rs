//! A progressive rollout on a three-node cluster of real `portico` processes: the candidate and the rollout
//! reach every node; a candidate answering 503, meeting traffic on one follower only, is rolled back on every
//! node from that follower's figures; a good one steps and is promoted on every node, through a `kill -9` of the
//! leader (the next leader continues) and a restart of the killed node mid-rollout (it follows the rollout).

use crate::cluster::{confirmed_leader, eventually_async, three_nodes, Node};
use crate::plugins::{marking_plugin, reqwest_put};
use crate::rollout::refusing_plugin;
use crate::support::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every wait here is a hang guard: the conditions come true in seconds on a quiet machine.
const HANG: Duration = Duration::from_secs(30);

async fn rollout_of(node: &Node) -> serde_json::Value {
    match get(node.admin, "/plugins/mark/rollout").await {
        Ok(answer) if answer.status == 200 => answer.json(),
        _ => serde_json::Value::Null,
    }
}

/// Gives the replicated `mark` plugin a `rollout` table, through `PUT /config` on one node.
async fn set_rollout_table(node: &Node, config: &std::path::Path, table: &str) -> TestResult {
    let file = std::fs::read_to_string(config)?;
    let text = file.replace("fail = \"open\"\n", &format!("fail = \"open\"\nrollout = {{ {table} }}\n"));
    assert_ne!(text, file);
    let answer = send(node.admin, "PUT", "/config", &[], &text).await?;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    Ok(())
}

/// Clients sending requests to `addr` until `stop`; counts answers and failed ones (not 200).
fn load(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let tasks = (0..4)
        .map(|_| {
            let (sent, failed, stop) = (sent.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ok = get(addr, "/").await.is_ok_and(|a| a.status == 200);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (sent, failed, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_candidate_seen_by_one_follower_is_rolled_back_on_every_node() -> TestResult {
    let cluster = three_nodes(false).await?;
    let (nodes, leader) = (&cluster.nodes, cluster.leader);
    for node in nodes {
        assert!(eventually_async(HANG, || async { node.marker().await.as_deref() == Some("v1") }).await);
    }
    // Steps long enough that only a guard ends this rollout.
    set_rollout_table(&nodes[0], &nodes[0].config_path(), "steps = [20, 100], step_interval = \"10m\"").await?;

    let follower = nodes.iter().find(|n| n.id != leader).ok_or("follower")?;
    let answer = reqwest_put(follower.admin, "/plugins/mark?rollout=20", refusing_plugin()).await?;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let candidate = answer.json()["candidate_sha256"].as_str().ok_or("candidate sha")?.to_string();
    for node in nodes {
        let running = eventually_async(HANG, || async {
            let r = rollout_of(node).await;
            r["state"] == "running" && r["percent"] == 20.0 && r["candidate_sha256"] == candidate.as_str()
        })
        .await;
        assert!(running, "node {} runs the rollout: {}", node.id, rollout_of(node).await);
    }

    // Traffic through the follower only: its guards see the candidate's 503s, nobody else's do.
    let stop = Arc::new(AtomicBool::new(false));
    let started = std::time::Instant::now();
    let (sent, failed, tasks) = load(follower.web, stop.clone());
    for node in nodes {
        let rolled = eventually_async(HANG, || async { rollout_of(node).await["state"] == "rolled_back" }).await;
        assert!(rolled, "node {} rolled back: {}", node.id, rollout_of(node).await);
    }
    println!(
        "cluster rollout at 20 %: rolled back on all three nodes {:.2} s after the traffic started; {} of {} requests failed by then",
        started.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    assert!(failed.load(Ordering::Relaxed) > 0, "the candidate met some of the follower's requests");
    let reason = rollout_of(follower).await["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.starts_with(&format!("node {}:", follower.id)), "decided from the follower's figures: {reason}");
    for node in nodes {
        assert_eq!(rollout_of(node).await["reason"], reason.as_str(), "node {}", node.id);
        // After the rollback every node answers with the stable version.
        for _ in 0..20 {
            assert_eq!(node.marker().await.as_deref(), Some("v1"), "node {}", node.id);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_candidate_is_promoted_on_every_node_through_a_killed_leader_and_a_restart() -> TestResult {
    let mut cluster = three_nodes(false).await?;
    let leader = cluster.leader;
    for node in &cluster.nodes {
        assert!(eventually_async(HANG, || async { node.marker().await.as_deref() == Some("v1") }).await);
    }
    let config = cluster.nodes[0].config_path();
    set_rollout_table(&cluster.nodes[0], &config, "steps = [20, 50, 100], step_interval = \"4s\"").await?;
    let follower_id = cluster.nodes.iter().find(|n| n.id != leader).ok_or("follower")?.id;
    let follower = |nodes: &[Node]| nodes.iter().position(|n| n.id == follower_id).unwrap_or(0);

    // Traffic through a follower that stays up the whole time: no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let web = cluster.nodes[follower(&cluster.nodes)].web;
    let (sent, failed, tasks) = load(web, stop.clone());

    let admin = cluster.nodes[follower(&cluster.nodes)].admin;
    let answer = reqwest_put(admin, "/plugins/mark?rollout=20", marking_plugin("v2")).await?;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));

    // The leader steps it for everyone; pause it at the second step and kill the leader.
    for node in &cluster.nodes {
        let second = eventually_async(HANG, || async { rollout_of(node).await["step"].as_u64() >= Some(2) }).await;
        assert!(second, "node {} reached the second step: {}", node.id, rollout_of(node).await);
    }
    let paused = send(admin, "POST", "/plugins/mark/rollout/pause", &[], "").await?;
    assert_eq!(paused.status, 200, "{}", String::from_utf8_lossy(&paused.body));
    let step = paused.json()["step"].as_u64().ok_or("step")?;
    let old_leader = cluster.nodes.iter().position(|n| n.id == leader).ok_or("leader")?;
    cluster.nodes[old_leader].kill();
    let survivors: Vec<&Node> = cluster.nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = confirmed_leader(&survivors, HANG).await.ok_or("the survivors elect a leader")?;
    assert_ne!(new_leader, leader);
    for node in &survivors {
        let same = eventually_async(HANG, || async {
            let r = rollout_of(node).await;
            r["state"] == "running" && r["paused"] == true && r["step"] == step
        })
        .await;
        assert!(same, "node {}: {}", node.id, rollout_of(node).await);
    }

    // The killed node restarts mid-rollout and follows it from the replicated state.
    cluster.nodes[old_leader].spawn()?;
    let restarted = &cluster.nodes[old_leader];
    let follows = eventually_async(HANG, || async {
        let r = rollout_of(restarted).await;
        r["state"] == "running" && r["replicated"] == true && r["paused"] == true && r["step"] == step
    })
    .await;
    assert!(follows, "the restarted node follows the rollout: {} {}", rollout_of(restarted).await, restarted.logs());

    // Resumed, the new leader finishes it: promoted on every node, every node serves the candidate.
    let resumed = send(admin, "POST", "/plugins/mark/rollout/resume", &[], "").await?;
    assert_eq!(resumed.status, 200, "{}", String::from_utf8_lossy(&resumed.body));
    for node in &cluster.nodes {
        let promoted = eventually_async(HANG, || async {
            rollout_of(node).await["state"] == "promoted" && node.marker().await.as_deref() == Some("v2")
        })
        .await;
        assert!(promoted, "node {} promoted: {} {}", node.id, rollout_of(node).await, node.logs());
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request through the follower failed");
    Ok(())
}
