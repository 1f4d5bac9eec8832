//! `POST /v1/agent-releases/{version}/{target}`: an agent binary, signed into the image
//! repository for rollouts of `continuum-agent`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{ApiError, Caller};
use crate::agent_releases::{self, AgentReleaseError};
use crate::model::{ReleaseRecord, Role};
use crate::tuf::TufError;

/// Uploads and publishes the agent binary of `version` for the target triple `target`.
#[utoipa::path(post, path = "/v1/agent-releases/{version}/{target}",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    params(("version" = String, Path), ("target" = String, Path, description = "target triple, e.g. x86_64-unknown-linux-gnu")),
    responses((status = 200, body = ReleaseRecord), (status = 400, body = crate::views::ErrorBody),
        (status = 403, body = crate::views::ErrorBody), (status = 409, body = crate::views::ErrorBody)))]
pub async fn publish(
    State(cp): State<std::sync::Arc<crate::plane::ControlPlane>>,
    caller: Caller,
    Path((version, target)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<Json<ReleaseRecord>, ApiError> {
    let what = format!("agent {version} for {target}");
    let record = caller
        .write(&cp, Role::Operator, "agent-release.publish", &what, async {
            agent_releases::check(&version, &target)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let stored = crate::archives::store(
                &cp.image,
                body.into_data_stream(),
                agent_releases::MAX_BINARY,
            )
            .await
            .map_err(ApiError::bad_request)?;
            agent_releases::publish(&cp, &version, &target, &stored, &caller.actor.name)
                .await
                .map_err(|e| match e {
                    AgentReleaseError::Invalid(m) => ApiError::bad_request(m),
                    AgentReleaseError::Tuf(TufError::Rejected(m)) => {
                        ApiError::new(StatusCode::CONFLICT, m)
                    }
                    other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
                })
        })
        .await?;
    Ok(Json(record))
}
