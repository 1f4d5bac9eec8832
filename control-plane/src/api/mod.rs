//! The operators' HTTPS API (JSON), used by the CLI and, later, the console.
//!
//! Every `/v1` call needs a bearer credential; every write is authorized by role and
//! recorded in the audit log, whether it was allowed or not. `/openapi.json` describes
//! the API; `/healthz` answers without a credential for load balancers and probes.

mod agent_releases;
mod auth;
mod error;
mod handlers;
mod https;
pub mod rollouts;
mod secrets;
pub mod telemetry;
mod yank;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post, put};
use utoipa::OpenApi;

pub use auth::Caller;
pub use error::ApiError;
pub use https::serve;

use crate::plane::ControlPlane;

/// The API's routes.
pub fn router(cp: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/install.sh", get(crate::install::script))
        .route("/agent/linux/{arch}", get(crate::install::binary))
        .route("/agent/linux/{arch}/sha256", get(crate::install::digest))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/whoami", get(handlers::whoami))
        .route("/v1/sites", get(handlers::list_sites))
        .route("/v1/sites/{name}", get(handlers::get_site))
        .route("/v1/sites/{name}/revoke", post(handlers::revoke_site))
        .route(
            "/v1/sites/{name}/decommission",
            post(handlers::decommission_site),
        )
        .route(
            "/v1/tokens",
            get(handlers::list_tokens).post(handlers::create_token),
        )
        .route(
            "/v1/operators",
            get(handlers::list_operators).post(handlers::create_operator),
        )
        .route("/v1/audit", get(handlers::audit_log))
        .route("/v1/backup", get(handlers::backup))
        .route(
            "/v1/releases",
            get(handlers::list_releases).post(handlers::publish_release),
        )
        .route("/v1/releases/{service}/{version}/yank", post(yank::yank))
        .route("/v1/archives", post(handlers::upload_archive))
        .route(
            "/v1/agent-releases/{version}/{target}",
            post(agent_releases::publish),
        )
        .route("/v1/policies", get(handlers::policies))
        .route("/v1/secrets", get(secrets::list))
        .route(
            "/v1/secrets/{name}",
            put(secrets::set).delete(secrets::remove),
        )
        .route("/v1/events", get(telemetry::events))
        .route("/v1/sites/{name}/telemetry", get(telemetry::site_telemetry))
        .route(
            "/v1/sites/{name}/services/{service}/logs",
            get(telemetry::service_logs),
        )
        .route("/v1/rollouts", get(rollouts::list).post(rollouts::start))
        .route("/v1/rollouts/plan", post(rollouts::plan))
        .route("/v1/services/{service}/remove", post(rollouts::remove))
        .route(
            "/v1/services/{service}/remove/plan",
            post(rollouts::plan_removal),
        )
        .route("/v1/rollouts/{id}", get(rollouts::get))
        .route("/v1/rollouts/{id}/{action}", post(rollouts::act))
        .route("/v1/repository/image/targets", get(handlers::signing_base))
        .route("/v1/sites/{name}/assign", post(handlers::assign))
        .route("/v1/sites/{name}/desired", get(handlers::get_desired))
        .route("/v1/repository/keys", get(handlers::keys))
        .route(
            "/v1/repository/image/online-key",
            post(handlers::prepare_online_key),
        )
        .route(
            "/v1/repository/image/root",
            post(handlers::rotate_image_root),
        )
        .route(
            "/v1/repository/director/rotate",
            post(handlers::rotate_director),
        )
        .layer(axum::extract::DefaultBodyLimit::max(4 << 20))
        .with_state(cp)
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// The OpenAPI description of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Continuum control plane API", description = "Fleet state and operations. Every /v1 call needs `Authorization: Bearer <credential>`."),
    paths(
        handlers::whoami,
        handlers::list_sites,
        handlers::get_site,
        handlers::revoke_site,
        handlers::decommission_site,
        handlers::list_tokens,
        handlers::create_token,
        handlers::list_operators,
        handlers::create_operator,
        handlers::audit_log,
        handlers::backup,
        handlers::list_releases,
        handlers::publish_release,
        yank::yank,
        handlers::upload_archive,
        agent_releases::publish,
        handlers::policies,
        secrets::list,
        secrets::set,
        secrets::remove,
        telemetry::events,
        telemetry::site_telemetry,
        telemetry::service_logs,
        rollouts::plan,
        rollouts::plan_removal,
        rollouts::remove,
        rollouts::start,
        rollouts::list,
        rollouts::get,
        rollouts::act,
        handlers::signing_base,
        handlers::assign,
        handlers::get_desired,
        handlers::keys,
        handlers::prepare_online_key,
        handlers::rotate_image_root,
        handlers::rotate_director,
    ),
    components(schemas(
        crate::views::ErrorBody,
        crate::views::SiteView,
        crate::views::TokenCreate,
        crate::views::TokenCreated,
        crate::views::TokenView,
        crate::views::OperatorCreate,
        crate::views::OperatorCreated,
        crate::views::OperatorView,
        crate::views::WhoAmI,
        crate::model::AuditEntry,
        crate::model::Role,
        crate::model::Outcome,
        crate::model::ReleaseRecord,
        crate::model::Yank,
        crate::yank::YankOutcome,
        crate::yank::YankRequest,
        crate::model::AgentBinaryRecord,
        crate::model::DesiredRecord,
        crate::model::DesiredRelease,
        crate::model::TrustReport,
        crate::model::SiteLock,
        crate::model::Decommission,
        crate::decommission::DecommissionRequest,
        crate::views::ReleasePublish,
        crate::views::ArchiveUploaded,
        crate::views::PoliciesView,
        crate::views::RolloutPolicyView,
        crate::views::WaveView,
        crate::views::WindowView,
        crate::views::ExcludeView,
        crate::policy::file::Rejection,
        crate::secrets::SecretView,
        crate::secrets::Scope,
        crate::secrets::SetRequest,
        crate::secrets::SetOutcome,
        crate::telemetry::event::EventView,
        telemetry::SiteTelemetryView,
        rollouts::RolloutStart,
        rollouts::RolloutPlan,
        rollouts::ServiceRemove,
        crate::rollout::Rollout,
        crate::rollout::Gates,
        crate::rollout::WaveRun,
        crate::rollout::RolloutState,
        crate::rollout::SiteProgress,
        crate::views::SigningBase,
        crate::views::Assign,
        crate::views::KeysView,
        crate::views::RootProposal,
        crate::views::DirectorRotated,
        crate::tuf::rotate::Rotated,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_v1_route_is_described() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for route in [
            "/v1/whoami",
            "/v1/sites",
            "/v1/sites/{name}",
            "/v1/sites/{name}/revoke",
            "/v1/tokens",
            "/v1/operators",
            "/v1/audit",
            "/v1/backup",
            "/v1/releases",
            "/v1/archives",
            "/v1/policies",
            "/v1/events",
            "/v1/sites/{name}/telemetry",
            "/v1/sites/{name}/services/{service}/logs",
            "/v1/rollouts",
            "/v1/rollouts/plan",
            "/v1/rollouts/{id}",
            "/v1/rollouts/{id}/{action}",
            "/v1/repository/image/targets",
            "/v1/sites/{name}/assign",
            "/v1/sites/{name}/desired",
            "/v1/repository/keys",
            "/v1/repository/image/online-key",
            "/v1/repository/image/root",
            "/v1/repository/director/rotate",
        ] {
            assert!(
                paths.contains(&route),
                "{route} missing from the OpenAPI description"
            );
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
