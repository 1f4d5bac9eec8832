//! The rollout endpoints: plan (dry run), start, list, show, and operators' commands.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, Caller};
use crate::model::Role;
use crate::plane::ControlPlane;
use crate::rollout::controller::{self, Command, RolloutError};
use crate::rollout::{Gates, Rollout, WaveRun};

type Cp = State<Arc<ControlPlane>>;

/// A request to move a service to a release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutStart {
    /// The service.
    pub service: String,
    /// The release to move to.
    pub version: String,
    /// The rollout policy; the release's own (`placement.rollout`) when absent.
    #[serde(default)]
    pub policy: Option<String>,
}

/// What a rollout would do: its gates, each wave's sites, the sites left out and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutPlan {
    /// The service.
    pub service: String,
    /// The release (empty for a removal).
    pub version: String,
    /// Gates and budget from the policy.
    pub gates: Gates,
    /// Waves with their sites, in order.
    pub waves: Vec<WaveRun>,
    /// Sites left out, with why.
    pub excluded: std::collections::BTreeMap<String, String>,
}

fn error(e: RolloutError) -> ApiError {
    match e {
        RolloutError::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// Plans a rollout without starting it: exactly what `POST /v1/rollouts` would do now.
#[utoipa::path(post, path = "/v1/rollouts/plan", request_body = RolloutStart,
    responses((status = 200, body = RolloutPlan), (status = 400, body = crate::views::ErrorBody)))]
pub async fn plan(
    State(cp): Cp,
    caller: Caller,
    Json(body): Json<RolloutStart>,
) -> Result<Json<RolloutPlan>, ApiError> {
    caller.may_read(Role::Viewer)?;
    let (gates, planned) = tokio::task::block_in_place(|| {
        controller::dry_run(
            &cp,
            &body.service,
            &body.version,
            body.policy.as_deref(),
            None,
        )
    })
    .map_err(error)?;
    Ok(Json(RolloutPlan {
        service: body.service,
        version: body.version,
        gates,
        waves: planned.waves,
        excluded: planned.excluded,
    }))
}

/// Starts a rollout (superseding a running one of the same service).
#[utoipa::path(post, path = "/v1/rollouts", request_body = RolloutStart,
    responses((status = 200, body = Rollout), (status = 400, body = crate::views::ErrorBody), (status = 403, body = crate::views::ErrorBody)))]
pub async fn start(
    State(cp): Cp,
    caller: Caller,
    Json(body): Json<RolloutStart>,
) -> Result<Json<Rollout>, ApiError> {
    let target = format!("{} {}", body.service, body.version);
    let rollout = caller
        .write(&cp, Role::Operator, "rollout.start", &target, async {
            controller::start(
                &cp,
                &body.service,
                &body.version,
                body.policy.as_deref(),
                None,
                &caller.actor.name,
            )
            .await
            .map_err(error)
        })
        .await?;
    Ok(Json(rollout))
}

/// Every rollout, oldest first.
#[utoipa::path(get, path = "/v1/rollouts", responses((status = 200, body = [Rollout])))]
pub async fn list(State(cp): Cp, caller: Caller) -> Result<Json<Vec<Rollout>>, ApiError> {
    caller.may_read(Role::Viewer)?;
    Ok(Json(tokio::task::block_in_place(|| controller::list(&cp))?))
}

/// One rollout.
#[utoipa::path(get, path = "/v1/rollouts/{id}", params(("id" = String, Path, description = "rollout id")),
    responses((status = 200, body = Rollout), (status = 404, body = crate::views::ErrorBody)))]
pub async fn get(
    State(cp): Cp,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    caller.may_read(Role::Viewer)?;
    tokio::task::block_in_place(|| controller::get(&cp, &id))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))
}

/// Pauses, resumes, rolls back or cancels a rollout.
#[utoipa::path(post, path = "/v1/rollouts/{id}/{action}", params(("id" = String, Path, description = "rollout id"), ("action" = String, Path, description = "pause, resume, rollback or cancel")),
    responses((status = 200, body = Rollout), (status = 400, body = crate::views::ErrorBody), (status = 403, body = crate::views::ErrorBody)))]
pub async fn act(
    State(cp): Cp,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Rollout>, ApiError> {
    let command = match action.as_str() {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "rollback" => Command::Rollback,
        "cancel" => Command::Cancel,
        other => {
            return Err(ApiError::not_found(format!(
                "no rollout action {other:?}: use pause, resume, rollback or cancel"
            )));
        }
    };
    let rollout = caller
        .write(
            &cp,
            Role::Operator,
            &format!("rollout.{action}"),
            &id,
            async { controller::command(&cp, &id, command).await.map_err(error) },
        )
        .await?;
    Ok(Json(rollout))
}

/// A request to take a service off sites.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceRemove {
    /// Only the sites this expression selects (among those whose desired state names
    /// the service); all of them when absent.
    #[serde(default)]
    pub select: Option<String>,
    /// The rollout policy whose waves and gates the removal runs by (`default`).
    #[serde(default)]
    pub policy: Option<String>,
}

/// Plans a removal without starting it: exactly what `POST /v1/services/{service}/remove`
/// would do now.
#[utoipa::path(post, path = "/v1/services/{service}/remove/plan", request_body = ServiceRemove,
    params(("service" = String, Path)),
    responses((status = 200, body = RolloutPlan), (status = 400, body = crate::views::ErrorBody)))]
pub async fn plan_removal(
    State(cp): Cp,
    caller: Caller,
    Path(service): Path<String>,
    Json(body): Json<ServiceRemove>,
) -> Result<Json<RolloutPlan>, ApiError> {
    caller.may_read(Role::Viewer)?;
    let (gates, planned) = tokio::task::block_in_place(|| {
        crate::rollout::removal::plan_removal(
            &cp,
            &service,
            body.select.as_deref(),
            body.policy.as_deref(),
        )
    })
    .map_err(error)?;
    Ok(Json(RolloutPlan {
        service,
        version: String::new(),
        gates,
        waves: planned.waves,
        excluded: planned.excluded,
    }))
}

/// Takes a service off sites by a rollout (waves, gates, pause, cancel; a rollback
/// puts it back): each site's agent removes its containers.
#[utoipa::path(post, path = "/v1/services/{service}/remove", request_body = ServiceRemove,
    params(("service" = String, Path)),
    responses((status = 200, body = Rollout), (status = 400, body = crate::views::ErrorBody),
        (status = 403, body = crate::views::ErrorBody)))]
pub async fn remove(
    State(cp): Cp,
    caller: Caller,
    Path(service): Path<String>,
    Json(body): Json<ServiceRemove>,
) -> Result<Json<Rollout>, ApiError> {
    let rollout = caller
        .write(&cp, Role::Operator, "service.remove", &service, async {
            controller::start_removal(
                &cp,
                &service,
                body.select.as_deref(),
                body.policy.as_deref(),
                &caller.actor.name,
            )
            .await
            .map_err(error)
        })
        .await?;
    Ok(Json(rollout))
}
