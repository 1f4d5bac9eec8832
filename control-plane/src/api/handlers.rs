//! The API's handlers. Reads need the viewer role; writes go through
//! [`Caller::write`], which authorizes and audits them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use continuum_shared::labels::{LabelValue, Labels};
use continuum_shared::unix_now;
use serde::Deserialize;

use super::{ApiError, Caller};
use crate::model::{AuditEntry, DesiredRecord, ReleaseRecord, Role};
use crate::plane::{ControlPlane, rfc3339};
use crate::tokens::{TokenRequest, TokenRequestError};
use crate::views::{
    ArchiveUploaded, Assign, DirectorRotated, KeysView, OperatorCreate, OperatorCreated,
    OperatorView, ReleasePublish, RootProposal, SigningBase, SiteView, TokenCreate, TokenCreated,
    TokenView, WhoAmI,
};
use crate::{audit, backup, desired, operators, releases, sites, tokens};

type Cp = State<Arc<ControlPlane>>;

/// Runs blocking work (state store writes, flushes) when awaited, off the async path.
async fn blocking<T>(work: impl FnOnce() -> Result<T, ApiError>) -> Result<T, ApiError> {
    tokio::task::block_in_place(work)
}

/// Who the credential belongs to.
#[utoipa::path(get, path = "/v1/whoami", responses((status = 200, body = WhoAmI)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.actor.name,
        role: caller.actor.role,
    })
}

/// Every enrolled site with its live state.
#[utoipa::path(get, path = "/v1/sites", responses((status = 200, body = [SiteView])))]
pub async fn list_sites(State(cp): Cp, caller: Caller) -> Result<Json<Vec<SiteView>>, ApiError> {
    caller.may_read(Role::Viewer)?;
    let records = tokio::task::block_in_place(|| sites::list(&cp))?;
    let live = cp.fleet.snapshot();
    Ok(Json(
        records
            .iter()
            .map(|r| SiteView::new(r, live.get(&r.name)))
            .collect(),
    ))
}

/// One site.
#[utoipa::path(get, path = "/v1/sites/{name}", params(("name" = String, Path, description = "site name")),
    responses((status = 200, body = SiteView), (status = 404, body = crate::views::ErrorBody)))]
pub async fn get_site(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<SiteView>, ApiError> {
    caller.may_read(Role::Viewer)?;
    let record = tokio::task::block_in_place(|| sites::get(&cp, &name))?
        .ok_or_else(|| ApiError::not_found(format!("no site named {name:?}")))?;
    Ok(Json(SiteView::new(&record, cp.fleet.live(&name).as_ref())))
}

/// Revokes a site: its connection closes now and its certificate is refused from now on.
#[utoipa::path(post, path = "/v1/sites/{name}/revoke", params(("name" = String, Path, description = "site name")),
    responses((status = 200, body = SiteView), (status = 403, body = crate::views::ErrorBody), (status = 404, body = crate::views::ErrorBody)))]
pub async fn revoke_site(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<SiteView>, ApiError> {
    let record = caller
        .write(
            &cp,
            Role::Operator,
            "site.revoke",
            &name,
            blocking(|| {
                sites::revoke(&cp, &name, &caller.actor.name).map_err(|e| match e {
                    sites::RevokeError::NotFound(_) => ApiError::not_found(e.to_string()),
                    sites::RevokeError::Store(e) => e.into(),
                })
            }),
        )
        .await?;
    Ok(Json(SiteView::new(&record, None)))
}

/// Orders a site decommissioned: its agent removes everything of ours, reports it and is
/// revoked; an offline site does it when it returns, or is revoked after the deadline.
#[utoipa::path(post, path = "/v1/sites/{name}/decommission", params(("name" = String, Path)),
    request_body = crate::decommission::DecommissionRequest,
    responses((status = 200, body = SiteView), (status = 400, body = crate::views::ErrorBody),
        (status = 403, body = crate::views::ErrorBody), (status = 404, body = crate::views::ErrorBody)))]
pub async fn decommission_site(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<crate::decommission::DecommissionRequest>,
) -> Result<Json<SiteView>, ApiError> {
    use crate::decommission::DecommissionError;
    let what = format!("{name} (keep data: {})", body.keep_data);
    let record = caller
        .write(
            &cp,
            Role::Operator,
            "site.decommission",
            &what,
            blocking(|| {
                crate::decommission::order(&cp, &name, &body, &caller.actor.name).map_err(|e| {
                    match e {
                        DecommissionError::NotFound(_) => ApiError::not_found(e.to_string()),
                        DecommissionError::Invalid(m) => ApiError::bad_request(m),
                        DecommissionError::Store(e) => e.into(),
                    }
                })
            }),
        )
        .await?;
    let live = cp.fleet.live(&name);
    Ok(Json(SiteView::new(&record, live.as_ref())))
}

/// Every join token (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", responses((status = 200, body = [TokenView])))]
pub async fn list_tokens(State(cp): Cp, caller: Caller) -> Result<Json<Vec<TokenView>>, ApiError> {
    caller.may_read(Role::Operator)?;
    let now = unix_now();
    let records = tokio::task::block_in_place(|| tokens::list(&cp))?;
    Ok(Json(
        records.iter().map(|r| TokenView::new(r, now)).collect(),
    ))
}

/// Creates a join token; its text is in this answer only.
#[utoipa::path(post, path = "/v1/tokens", request_body = TokenCreate,
    responses((status = 200, body = TokenCreated), (status = 400, body = crate::views::ErrorBody), (status = 403, body = crate::views::ErrorBody)))]
pub async fn create_token(
    State(cp): Cp,
    caller: Caller,
    Json(body): Json<TokenCreate>,
) -> Result<Json<TokenCreated>, ApiError> {
    let created = caller
        .write(
            &cp,
            Role::Operator,
            "token.create",
            &body.name,
            blocking(|| {
                let ttl = humantime::parse_duration(body.ttl.as_deref().unwrap_or("1h"))
                    .map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?;
                let labels: Labels = body
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), LabelValue::Text(v.clone())))
                    .collect();
                let request = TokenRequest {
                    name: body.name.clone(),
                    labels,
                    ttl,
                    uses: body.uses.unwrap_or(1),
                };
                tokens::create(&cp, request, &caller.actor.name).map_err(|e| match e {
                    TokenRequestError::Invalid(m) => ApiError::bad_request(m),
                    TokenRequestError::Store(e) => e.into(),
                })
            }),
        )
        .await?;
    let (record, token) = created;
    let install = cp
        .settings
        .install_urls
        .first()
        .filter(|_| !cp.settings.agents.arches().is_empty())
        .map(|url| crate::install::one_liner(url, cp.settings.tls_pin.as_deref(), &token));
    Ok(Json(TokenCreated {
        token,
        id: record.id,
        name: record.name,
        expires_at: rfc3339(record.expires_at),
        uses: record.uses,
        addresses: cp.settings.agent_addresses.clone(),
        install,
    }))
}

/// Every operator.
#[utoipa::path(get, path = "/v1/operators", responses((status = 200, body = [OperatorView])))]
pub async fn list_operators(
    State(cp): Cp,
    caller: Caller,
) -> Result<Json<Vec<OperatorView>>, ApiError> {
    caller.may_read(Role::Admin)?;
    let records = tokio::task::block_in_place(|| operators::list(cp.store.as_ref()))?;
    Ok(Json(records.iter().map(OperatorView::from).collect()))
}

/// Creates an operator; the credential is in this answer only.
#[utoipa::path(post, path = "/v1/operators", request_body = OperatorCreate,
    responses((status = 200, body = OperatorCreated), (status = 403, body = crate::views::ErrorBody), (status = 409, body = crate::views::ErrorBody)))]
pub async fn create_operator(
    State(cp): Cp,
    caller: Caller,
    Json(body): Json<OperatorCreate>,
) -> Result<Json<OperatorCreated>, ApiError> {
    let (record, credential) = caller
        .write(
            &cp,
            Role::Admin,
            "operator.create",
            &body.name,
            blocking(|| {
                operators::create(cp.store.as_ref(), &body.name, body.role, &caller.actor.name)
                    .map_err(|e| match e {
                        operators::OperatorError::InvalidName(m) => ApiError::bad_request(m),
                        operators::OperatorError::Exists(_) => {
                            ApiError::new(StatusCode::CONFLICT, e.to_string())
                        }
                        operators::OperatorError::Store(e) => e.into(),
                    })
            }),
        )
        .await?;
    Ok(Json(OperatorCreated {
        name: record.name,
        role: record.role,
        credential,
    }))
}

/// How many audit entries to return.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Newest entries to return (default 100, at most 10000).
    pub limit: Option<usize>,
}

/// The newest audit entries, oldest first.
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), responses((status = 200, body = [AuditEntry])))]
pub async fn audit_log(
    State(cp): Cp,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.may_read(Role::Operator)?;
    let limit = query.limit.unwrap_or(100).min(10_000);
    Ok(Json(tokio::task::block_in_place(|| {
        audit::recent(cp.store.as_ref(), limit)
    })?))
}

/// A backup archive (tar) of the CA, keys and state. It holds private keys: keep it
/// as safe as the control plane itself.
#[utoipa::path(get, path = "/v1/backup", responses((status = 200, content_type = "application/x-tar", description = "backup archive")))]
pub async fn backup(State(cp): Cp, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    let archive = caller
        .write(
            &cp,
            Role::Admin,
            "backup.create",
            "control-plane",
            blocking(|| {
                backup::create(&cp)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
            }),
        )
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], archive))
}

/// The rollout policies in force, and any policy file rejected with its line and
/// reason.
#[utoipa::path(get, path = "/v1/policies", responses((status = 200, body = crate::views::PoliciesView)))]
pub async fn policies(
    State(cp): Cp,
    caller: Caller,
) -> Result<Json<crate::views::PoliciesView>, ApiError> {
    caller.may_read(Role::Viewer)?;
    Ok(Json(crate::views::PoliciesView::new(&cp.policies)))
}

/// Every published release.
#[utoipa::path(get, path = "/v1/releases", responses((status = 200, body = [ReleaseRecord])))]
pub async fn list_releases(
    State(cp): Cp,
    caller: Caller,
) -> Result<Json<Vec<ReleaseRecord>>, ApiError> {
    caller.may_read(Role::Viewer)?;
    Ok(Json(tokio::task::block_in_place(|| releases::list(&cp))?))
}

/// Uploads an image archive (`docker save` format) for a release to ship: stored by its
/// SHA-256, and answered with the image it holds. Publishing the release signs it.
#[utoipa::path(post, path = "/v1/archives", request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 200, body = ArchiveUploaded), (status = 400, body = crate::views::ErrorBody), (status = 403, body = crate::views::ErrorBody)))]
pub async fn upload_archive(
    State(cp): Cp,
    caller: Caller,
    body: axum::body::Body,
) -> Result<Json<ArchiveUploaded>, ApiError> {
    let uploaded = caller
        .write(
            &cp,
            Role::Operator,
            "archive.upload",
            "image archive",
            async {
                let stream = body.into_data_stream();
                let stored =
                    crate::archives::store(&cp.image, stream, crate::archives::MAX_ARCHIVE)
                        .await
                        .map_err(ApiError::bad_request)?;
                let sha256 = continuum_shared::tls::hex(&stored.sha256);
                let path = stored.path.clone();
                let image = tokio::task::spawn_blocking(move || crate::archives::inspect(&path))
                    .await
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "the upload is not a usable image archive: {e}"
                        ))
                    })?;
                Ok(ArchiveUploaded {
                    sha256,
                    length: stored.length,
                    image_id: image.image_id,
                    repo_tags: image.repo_tags,
                })
            },
        )
        .await?;
    Ok(Json(uploaded))
}

/// Publishes a release: its manifest is checked (every problem is reported with file,
/// line and field) and signed into the image repository, either with the targets
/// metadata the release managers signed offline or with this control plane's release key.
#[utoipa::path(post, path = "/v1/releases", request_body = ReleasePublish,
    responses((status = 200, body = ReleaseRecord), (status = 400, body = crate::views::ErrorBody), (status = 403, body = crate::views::ErrorBody)))]
pub async fn publish_release(
    State(cp): Cp,
    caller: Caller,
    Json(body): Json<ReleasePublish>,
) -> Result<Json<ReleaseRecord>, ApiError> {
    let target = body.file.clone();
    let record = caller
        .write(&cp, Role::Operator, "release.publish", &target, async {
            let signed = body
                .targets
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| {
                    ApiError::bad_request(format!("targets: not TUF targets metadata: {e}"))
                })?;
            releases::publish(
                &cp,
                &body.file,
                &body.manifest,
                signed,
                body.archive.as_ref(),
                &caller.actor.name,
            )
            .await
            .map_err(|e| match e {
                releases::PublishError::Manifest(m) => ApiError::bad_request(m.to_string()),
                releases::PublishError::Archive(m) => ApiError::bad_request(m),
                releases::PublishError::Tuf(crate::tuf::TufError::Rejected(m)) => {
                    ApiError::new(StatusCode::CONFLICT, m)
                }
                other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
            })
        })
        .await?;
    Ok(Json(record))
}

/// The image repository's current root and targets, for release managers to sign the
/// next targets offline.
#[utoipa::path(get, path = "/v1/repository/image/targets", responses((status = 200, body = SigningBase)))]
pub async fn signing_base(State(cp): Cp, caller: Caller) -> Result<Json<SigningBase>, ApiError> {
    caller.may_read(Role::Operator)?;
    let internal =
        |e: crate::tuf::TufError| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let (root, _) = cp.image.root().map_err(internal)?;
    let targets = cp.image.targets().map_err(internal)?;
    Ok(Json(SigningBase {
        root: serde_json::to_value(root)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        targets: serde_json::to_value(targets)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    }))
}

/// Pins a site to a release (an operator's manual assignment).
#[utoipa::path(post, path = "/v1/sites/{name}/assign", params(("name" = String, Path, description = "site name")), request_body = Assign,
    responses((status = 200, body = DesiredRecord), (status = 400, body = crate::views::ErrorBody), (status = 403, body = crate::views::ErrorBody)))]
pub async fn assign(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<Assign>,
) -> Result<Json<DesiredRecord>, ApiError> {
    let target = format!("{name} {} {}", body.service, body.version);
    let record = caller
        .write(&cp, Role::Operator, "site.assign", &target, async {
            desired::assign(&cp, &name, &body.service, &body.version, &caller.actor.name)
                .await
                .map_err(|e| match e {
                    desired::DesiredError::Site(m) => ApiError::not_found(m),
                    e @ (desired::DesiredError::NoRelease(_)
                    | desired::DesiredError::Refused(_)) => ApiError::bad_request(e.to_string()),
                    other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
                })
        })
        .await?;
    Ok(Json(record))
}

/// A site's desired state.
#[utoipa::path(get, path = "/v1/sites/{name}/desired", params(("name" = String, Path, description = "site name")),
    responses((status = 200, body = DesiredRecord), (status = 404, body = crate::views::ErrorBody)))]
pub async fn get_desired(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<DesiredRecord>, ApiError> {
    caller.may_read(Role::Viewer)?;
    tokio::task::block_in_place(|| desired::get(&cp, &name))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("site {name:?} has no desired state")))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn tuf_error(e: crate::tuf::TufError) -> ApiError {
    match e {
        crate::tuf::TufError::Rejected(m) => ApiError::new(StatusCode::CONFLICT, m),
        other => internal(other),
    }
}

/// The repositories' keys and roles.
#[utoipa::path(get, path = "/v1/repository/keys", responses((status = 200, body = KeysView)))]
pub async fn keys(State(cp): Cp, caller: Caller) -> Result<Json<KeysView>, ApiError> {
    caller.may_read(Role::Operator)?;
    let first = cp.image.first_root().map_err(internal)?;
    let (root, _) = cp.image.root().map_err(internal)?;
    let roles = serde_json::to_value(&root.signed.roles).map_err(internal)?;
    let (director, _) = cp.director.root().map_err(internal)?;
    Ok(Json(KeysView {
        image_first_root_sha256: continuum_shared::tls::hex(&continuum_shared::tls::sha256(&first)),
        image_root_version: root.signed.version.get(),
        image_roles: roles,
        holds_root_key: cp.image.keys().root.exists(),
        holds_release_key: cp.image.holds_release_key(),
        director_root_version: director.signed.version.get(),
    }))
}

/// Prepares a new online (snapshot and timestamp) key; a signed root must then name it.
#[utoipa::path(post, path = "/v1/repository/image/online-key", responses((status = 200, body = Object)))]
pub async fn prepare_online_key(
    State(cp): Cp,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = caller
        .write(
            &cp,
            Role::Admin,
            "keys.prepare-online",
            "image",
            blocking(|| cp.image.prepare_online_key().map_err(tuf_error)),
        )
        .await?;
    Ok(Json(serde_json::to_value(key).map_err(internal)?))
}

/// Installs a new image root (key rotation).
#[utoipa::path(post, path = "/v1/repository/image/root", request_body = RootProposal,
    responses((status = 200, body = crate::tuf::rotate::Rotated), (status = 409, body = crate::views::ErrorBody)))]
pub async fn rotate_image_root(
    State(cp): Cp,
    caller: Caller,
    Json(body): Json<RootProposal>,
) -> Result<Json<crate::tuf::rotate::Rotated>, ApiError> {
    let rotated = caller
        .write(&cp, Role::Admin, "keys.rotate-image-root", "image", async {
            let root = serde_json::from_value(body.root)
                .map_err(|e| ApiError::bad_request(format!("root: {e}")))?;
            let targets = body
                .targets
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("targets: {e}")))?;
            cp.image.rotate(root, targets).await.map_err(tuf_error)
        })
        .await?;
    Ok(Json(rotated))
}

/// Replaces the director key and signs every site's desired state again.
#[utoipa::path(post, path = "/v1/repository/director/rotate", responses((status = 200, body = DirectorRotated)))]
pub async fn rotate_director(
    State(cp): Cp,
    caller: Caller,
) -> Result<Json<DirectorRotated>, ApiError> {
    let rotated = caller
        .write(
            &cp,
            Role::Admin,
            "keys.rotate-director",
            "director",
            async {
                let root_version = cp.director.rotate_key().await.map_err(tuf_error)?;
                let sites_resigned = desired::resign_all(&cp, &caller.actor.name)
                    .await
                    .map_err(internal)?;
                Ok(DirectorRotated {
                    root_version,
                    sites_resigned,
                })
            },
        )
        .await?;
    Ok(Json(rotated))
}
