//! `PUT /plugins/{name}` (a new version, swapped in at once or, with `?rollout=PERCENT`, rolled out as a
//! candidate beside the running one) and the rollout routes: `GET /plugins/{name}/rollout` and
//! `POST /plugins/{name}/rollout/{promote,abort,pause,resume}`.

use super::cluster_routes;
use super::routes::{error, json, read_body, MAX_PLUGIN_BYTES};
use crate::body::ResponseBody;
use crate::cluster::rollout::describe_record;
use crate::cluster::ClusterLink;
use crate::config::rollout::valid_percent;
use crate::plugin::rollout::{self, State};
use crate::plugin::{PluginLoadError, PluginSlot};
use crate::server::Server;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use portico_cluster::{Command, Module, Proposal, RolloutDecision, RolloutState};
use std::sync::Arc;

fn slot(server: &Server, name: &str) -> Option<Arc<PluginSlot>> {
    server.shared.snapshot.load().plugins.get(name).cloned()
}

fn no_such_plugin(name: &str) -> Response<ResponseBody> {
    error(StatusCode::NOT_FOUND, format!("no plugin named {name:?} in the configuration"))
}

/// The `rollout` query parameter, if given: a percentage in (0, 100]. The error is the message.
fn rollout_percent(query: Option<&str>) -> Result<Option<f64>, String> {
    let Some(value) = query.unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("rollout=")) else {
        return Ok(None);
    };
    match value.parse::<f64>() {
        Ok(percent) if valid_percent(percent) => Ok(Some(percent)),
        _ => Err(format!("rollout={value}: give a percentage in (0, 100]")),
    }
}

/// `PUT /plugins/{name}[?rollout=PERCENT]`.
pub(super) async fn upload(server: &Server, name: &str, req: Request<Incoming>) -> Response<ResponseBody> {
    let Some(slot) = slot(server, name) else { return no_such_plugin(name) };
    let percent = match rollout_percent(req.uri().query()) {
        Ok(percent) => percent,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let body = match read_body(req.into_body(), MAX_PLUGIN_BYTES).await {
        Ok(body) => body.to_vec(),
        Err(answer) => return answer,
    };
    let refused =
        |e: PluginLoadError| error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}; the running version keeps serving"));
    match (percent, server.cluster.get()) {
        (Some(percent), Some(link)) => {
            if let Err(e) = server.shared.plugins.check(&slot.config, body.clone()).await {
                return error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}; nothing was proposed"));
            }
            let module = Module::new(body);
            let first_share = (percent * 100.0).round() as u32;
            let command = Command::StartRollout { name: name.into(), sha256: module.sha256.clone(), first_share };
            match link.write(Proposal { command, modules: vec![module] }).await {
                Ok(_) => status(server, name),
                Err(e) => cluster_routes::failure(&e),
            }
        }
        (None, Some(link)) => cluster_routes::upload(link, server, name, body).await,
        (None, None) => match server.shared.plugins.upload(&slot, body).await {
            Ok(()) => json(StatusCode::OK, slot.describe()),
            Err(e) => refused(e),
        },
        (Some(percent), None) => match server.shared.plugins.start_rollout(&slot, body, percent).await {
            Ok(rollout) => json(StatusCode::OK, rollout.describe()),
            Err(e) => refused(e),
        },
    }
}

/// `GET /plugins/{name}/rollout`.
pub(super) fn status(server: &Server, name: &str) -> Response<ResponseBody> {
    let Some(slot) = slot(server, name) else { return no_such_plugin(name) };
    let local = slot.rollout();
    if let Some(link) = server.cluster.get() {
        // The cluster's record is the truth; this node's copy of it has the figures.
        let state = link.cluster.state();
        if let Some(record) = state.rollouts.get(name) {
            if let Some(rollout) = local.filter(|r| r.serial() == Some(record.serial)) {
                return json(StatusCode::OK, rollout.describe());
            }
            let versions = state.plugins.get(name);
            let stable = match record.state {
                RolloutState::Promoted => versions.and_then(|v| v.previous.as_ref()).map(|m| m.sha256.clone()),
                _ => Some(slot.sha256()),
            };
            return json(StatusCode::OK, describe_record(name, record, stable.as_deref()));
        }
        return error(StatusCode::NOT_FOUND, PluginLoadError::NoRollout(name.to_string()).to_string());
    }
    match local {
        Some(rollout) => json(StatusCode::OK, rollout.describe()),
        None => error(StatusCode::NOT_FOUND, PluginLoadError::NoRollout(name.to_string()).to_string()),
    }
}

/// `POST /plugins/{name}/rollout/{action}` on a cluster member: the decision is proposed for every node.
async fn cluster_action(server: &Server, link: &ClusterLink, name: &str, action: &str) -> Response<ResponseBody> {
    let decision = match action {
        "promote" => RolloutDecision::Promote { reason: "promoted through the admin API".into() },
        "abort" => RolloutDecision::Abort { reason: "aborted through the admin API".into() },
        "pause" | "resume" => RolloutDecision::Pause { paused: action == "pause" },
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no rollout action {other:?} (use promote, abort, pause or resume)"),
            )
        }
    };
    let Some(serial) = link.cluster.state().rollouts.get(name).map(|r| r.serial) else {
        return error(StatusCode::NOT_FOUND, PluginLoadError::NoRollout(name.to_string()).to_string());
    };
    match link.write(Proposal::plain(Command::Rollout { name: name.into(), serial, decision })).await {
        Ok(_) => status(server, name),
        Err(e) => cluster_routes::failure(&e),
    }
}

/// `POST /plugins/{name}/rollout/{promote,abort,pause,resume}`.
pub(super) async fn action(server: &Server, name: &str, action: &str) -> Response<ResponseBody> {
    let Some(slot) = slot(server, name) else { return no_such_plugin(name) };
    if let Some(link) = server.cluster.get() {
        return cluster_action(server, link, name, action).await;
    }
    let outcome = match action {
        "promote" => server.shared.plugins.promote_rollout(&slot).await,
        "abort" => rollout::running(&slot).and_then(|r| {
            if r.finish(State::Aborted, "aborted through the admin API") {
                Ok(r)
            } else {
                Err(PluginLoadError::RolloutEnded { plugin: name.to_string(), state: r.state().name() })
            }
        }),
        "pause" | "resume" => rollout::running(&slot).and_then(|r| match r.pause(action == "pause") {
            Ok(()) => Ok(r),
            Err(state) => Err(PluginLoadError::RolloutEnded { plugin: name.to_string(), state: state.name() }),
        }),
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no rollout action {other:?} (use promote, abort, pause or resume)"),
            )
        }
    };
    match outcome {
        Ok(rollout) => json(StatusCode::OK, rollout.describe()),
        Err(e @ PluginLoadError::NoRollout(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}
