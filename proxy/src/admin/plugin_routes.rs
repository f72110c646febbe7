//! `PUT /plugins/{name}` (a new version, swapped in at once or, with `?rollout=PERCENT`, rolled out as a
//! candidate beside the running one) and the rollout routes: `GET /plugins/{name}/rollout` and
//! `POST /plugins/{name}/rollout/{promote,abort,pause,resume}`.

use super::cluster_routes;
use super::routes::{error, json, read_body, MAX_PLUGIN_BYTES};
use crate::body::ResponseBody;
use crate::config::rollout::valid_percent;
use crate::plugin::rollout::{self, State};
use crate::plugin::{PluginLoadError, PluginSlot};
use crate::server::Server;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
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
        (Some(_), Some(_)) => error(
            StatusCode::NOT_IMPLEMENTED,
            "rollouts are not replicated across a cluster yet; upload without ?rollout to swap the version on every node",
        ),
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
    match slot.rollout() {
        Some(rollout) => json(StatusCode::OK, rollout.describe()),
        None => error(StatusCode::NOT_FOUND, PluginLoadError::NoRollout(name.to_string()).to_string()),
    }
}

/// `POST /plugins/{name}/rollout/{promote,abort,pause,resume}`.
pub(super) async fn action(server: &Server, name: &str, action: &str) -> Response<ResponseBody> {
    let Some(slot) = slot(server, name) else { return no_such_plugin(name) };
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
