//! `/v1/secrets`: set, list and remove secrets. Values go in and never come out: a
//! listing shows names, scopes, versions and users only, and the audit log records the
//! name and scope of a change, not the value.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;

use super::{ApiError, Caller};
use crate::model::Role;
use crate::plane::ControlPlane;
use crate::secrets::{SecretError, SecretView, SetOutcome, SetRequest};

fn api_error(error: SecretError) -> ApiError {
    match error {
        SecretError::Invalid(m) => ApiError::bad_request(m),
        SecretError::NotFound(_) => ApiError::not_found(error.to_string()),
        SecretError::InUse(m) => ApiError::new(StatusCode::CONFLICT, m),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// Every secret: names, scopes, versions and the services that use them; never values.
#[utoipa::path(get, path = "/v1/secrets",
    responses((status = 200, body = Vec<SecretView>), (status = 403, body = crate::views::ErrorBody)))]
pub async fn list(
    State(cp): State<Arc<ControlPlane>>,
    caller: Caller,
) -> Result<Json<Vec<SecretView>>, ApiError> {
    caller.may_read(Role::Operator)?;
    Ok(Json(tokio::task::block_in_place(|| {
        crate::secrets::list(&cp)
    })?))
}

/// Sets a secret as a new version; the services using an earlier value get the new one
/// by rollouts.
#[utoipa::path(put, path = "/v1/secrets/{name}", request_body = SetRequest,
    params(("name" = String, Path)),
    responses((status = 200, body = SetOutcome), (status = 400, body = crate::views::ErrorBody),
        (status = 403, body = crate::views::ErrorBody)))]
pub async fn set(
    State(cp): State<Arc<ControlPlane>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<SetRequest>,
) -> Result<Json<SetOutcome>, ApiError> {
    let what = format!("{name} ({})", body.scope.describe());
    let outcome = caller
        .write(&cp, Role::Operator, "secret.set", &what, async {
            let value = base64::engine::general_purpose::STANDARD
                .decode(body.value_base64.as_bytes())
                .map_err(|_| ApiError::bad_request("value_base64 is not standard base64"))?;
            crate::secrets::set(
                &cp,
                &name,
                &value,
                body.scope.clone(),
                body.policy.as_deref(),
                &caller.actor.name,
            )
            .await
            .map_err(api_error)
        })
        .await?;
    Ok(Json(outcome))
}

/// Removes a secret that no site's desired state uses any more.
#[utoipa::path(delete, path = "/v1/secrets/{name}", params(("name" = String, Path)),
    responses((status = 200), (status = 403, body = crate::views::ErrorBody),
        (status = 404, body = crate::views::ErrorBody), (status = 409, body = crate::views::ErrorBody)))]
pub async fn remove(
    State(cp): State<Arc<ControlPlane>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    caller
        .write(&cp, Role::Operator, "secret.remove", &name, async {
            crate::secrets::remove(&cp, &name).await.map_err(api_error)
        })
        .await?;
    Ok(Json(BTreeMap::from([("removed".to_owned(), name)])))
}
