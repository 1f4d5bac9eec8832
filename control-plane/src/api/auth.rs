//! Who is calling, and may they do this: bearer credentials, roles, and the audit
//! record of every write.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::ApiError;
use crate::audit::{self, Actor};
use crate::model::{Outcome, Role};
use crate::operators;
use crate::plane::ControlPlane;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who, with role and address.
    pub actor: Actor,
}

impl FromRequestParts<Arc<ControlPlane>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        cp: &Arc<ControlPlane>,
    ) -> Result<Self, Self::Rejection> {
        let from = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "no credential: send `Authorization: Bearer <credential>` (the CLI takes --token or CONTINUUM_TOKEN)",
                )
            })?;
        let credential = header.strip_prefix("Bearer ").unwrap_or_default().trim();
        let operator = tokio::task::block_in_place(|| operators::authenticate(cp, credential))?
            .ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "the credential is not recognised")
            })?;
        Ok(Caller {
            actor: Actor {
                name: operator.name,
                role: operator.role,
                from,
            },
        })
    }
}

impl Caller {
    /// Checks a read permission (not audited).
    pub fn may_read(&self, needed: Role) -> Result<(), ApiError> {
        if self.actor.role >= needed {
            Ok(())
        } else {
            Err(denied(needed))
        }
    }

    /// Runs a write: refused (and audited as denied) below `needed`, otherwise done and
    /// audited as ok or failed. The audit entry is durable before the answer is sent.
    pub async fn write<T>(
        &self,
        cp: &ControlPlane,
        needed: Role,
        action: &str,
        target: &str,
        op: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        if self.actor.role < needed {
            let detail = format!("needs role {needed}, has {}", self.actor.role);
            tokio::task::block_in_place(|| {
                audit::record(
                    cp.store.as_ref(),
                    &self.actor,
                    action,
                    target,
                    Outcome::Denied,
                    Some(detail),
                )
            })?;
            tracing::warn!(operator = %self.actor.name, action, target, "write denied by role");
            return Err(denied(needed));
        }
        let result = op.await;
        let (outcome, detail) = match &result {
            Ok(_) => (Outcome::Ok, None),
            Err(e) => (Outcome::Failed, Some(e.message.clone())),
        };
        tokio::task::block_in_place(|| {
            audit::record(
                cp.store.as_ref(),
                &self.actor,
                action,
                target,
                outcome,
                detail,
            )
        })?;
        result
    }
}

fn denied(needed: Role) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "this needs the {needed} role; ask an admin (`continuum operator create NAME --role {needed}`)"
        ),
    )
}
