//! `POST /v1/releases/{service}/{version}/yank`: withdraw a release for good and move
//! the sites that run it.

use super::{ApiError, Caller};
use crate::model::Role;
use crate::yank::{YankError, YankOutcome, YankRequest};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

/// Yanks a release: no new rollout or assignment may name it, rollouts of it stop, and
/// the sites that run it move to the newest release that is not yanked.
#[utoipa::path(post, path = "/v1/releases/{service}/{version}/yank", request_body = YankRequest,
    params(("service" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = YankOutcome), (status = 400, body = crate::views::ErrorBody),
        (status = 403, body = crate::views::ErrorBody), (status = 404, body = crate::views::ErrorBody),
        (status = 409, body = crate::views::ErrorBody)))]
pub async fn yank(
    State(cp): State<std::sync::Arc<crate::plane::ControlPlane>>,
    caller: Caller,
    Path((service, version)): Path<(String, String)>,
    Json(body): Json<YankRequest>,
) -> Result<Json<YankOutcome>, ApiError> {
    let what = format!("{service} {version}: {}", body.reason);
    let outcome = caller
        .write(&cp, Role::Operator, "release.yank", &what, async {
            crate::yank::yank(&cp, &service, &version, &body.reason, &caller.actor.name)
                .await
                .map_err(|e| match e {
                    YankError::NotFound(_) => ApiError::not_found(e.to_string()),
                    YankError::Invalid(m) => ApiError::bad_request(m),
                    YankError::Already(m) => ApiError::new(StatusCode::CONFLICT, m),
                    other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
                })
        })
        .await?;
    Ok(Json(outcome))
}
