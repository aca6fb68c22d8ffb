//! Operator routes for rollouts: their state, and what operators do to them.

use axum::Json;
use axum::extract::{Path, State};
use drover_types::manifest::StoredManifest;
use drover_types::rollout::{RolloutCommand, RolloutStatus};

use crate::http::{ApiError, Caller, HttpState};

#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts", operation_id = "rollouts_list", responses((status = 200, description = "every manifest's rollout, its waves counted by outcome", body = [drover_types::rollout::RolloutStatus]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(State(s): State<HttpState>) -> Result<Json<Vec<RolloutStatus>>, ApiError> {
    Ok(Json(s.fleet.rollouts.rollouts().await?))
}

#[utoipa::path(get, path = "/api/v1/rollouts/{name}", tag = "rollouts", operation_id = "rollouts_get", params(("name" = String, Path, description = "manifest name")), responses((status = 200, description = "the manifest's rollout: state, revisions, waves counted by outcome, failing nodes", body = drover_types::rollout::RolloutStatus), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn get(
    State(s): State<HttpState>,
    Path(name): Path<String>,
) -> Result<Json<RolloutStatus>, ApiError> {
    Ok(Json(s.fleet.rollouts.rollout_status(&name).await?))
}

#[utoipa::path(get, path = "/api/v1/rollouts/{name}/history", tag = "rollouts", operation_id = "rollouts_history", params(("name" = String, Path, description = "manifest name")), responses((status = 200, description = "the manifest's kept revisions, newest first", body = [drover_types::manifest::StoredManifest]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn history(
    State(s): State<HttpState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<StoredManifest>>, ApiError> {
    Ok(Json(s.fleet.rollouts.manifest_history(&name).await?))
}

#[utoipa::path(post, path = "/api/v1/rollouts/{name}/{command}", tag = "rollouts", operation_id = "rollouts_command", params(("name" = String, Path, description = "manifest name"), ("command" = String, Path, description = "pause, resume, abort, promote (skip the bake) or undo (the whole fleet back to the previous revision)")), responses((status = 200, description = "the rollout after the command", body = drover_types::rollout::RolloutStatus), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn command(
    State(s): State<HttpState>,
    caller: Caller,
    Path((name, command)): Path<(String, String)>,
) -> Result<Json<RolloutStatus>, ApiError> {
    let Some(command) = RolloutCommand::parse(&command) else {
        return Err(ApiError::NotFound(format!(
            "no rollout command {command:?}: use pause, resume, abort, promote or undo"
        )));
    };
    Ok(Json(
        s.fleet
            .rollouts
            .rollout_command(&caller.name, &name, command)
            .await?,
    ))
}
