//! Publishing releases into the image repository, and listing them.

use std::collections::HashMap;

use continuum_shared::manifest::{self, ImageSource, Release};
use serde_json::Value;
use tough::schema::{Signed, Targets};

use crate::error::StoreError;
use crate::model::ReleaseRecord;
use crate::plane::{ControlPlane, rfc3339};
use crate::store::{StoreExt, Tree};
use crate::tuf::TufError;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The manifest has problems (each with file, line and field).
    #[error("{0}")]
    Manifest(#[from] manifest::ManifestError),
    /// The repository refused it or failed.
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// Storing the record failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks and publishes a manifest. `signed_targets` is the new image targets metadata
/// signed offline by the release managers; without it this control plane signs.
pub async fn publish(
    cp: &ControlPlane,
    file: &str,
    text: &str,
    signed_targets: Option<Signed<Targets>>,
    actor: &str,
) -> Result<ReleaseRecord, PublishError> {
    let release = manifest::parse(file, text, ImageSource::Registry)?;
    let name = manifest::target_name(&release.service, &release.version);
    let offline = signed_targets.is_some();
    let target = cp
        .image
        .publish(&name, text.as_bytes(), custom(&release), signed_targets)
        .await?;
    let key = format!("{}/{}", release.service, release.version);
    if let Some(existing) = cp
        .store
        .get_json::<ReleaseRecord>(Tree::Releases, key.as_bytes())?
    {
        return Ok(existing);
    }
    let record = ReleaseRecord {
        service: release.service,
        version: release.version,
        target: name,
        sha256: continuum_shared::tls::hex(&target.hashes.sha256),
        length: target.length,
        image: release.container.image,
        published_at: rfc3339(continuum_shared::unix_now()),
        published_by: actor.to_owned(),
        signed_by: if offline {
            "offline".into()
        } else {
            "control-plane".into()
        },
    };
    cp.store.put_json(Tree::Releases, key.as_bytes(), &record)?;
    cp.store.flush()?;
    tracing::info!(service = %record.service, version = %record.version, signed_by = %record.signed_by, "release published");
    Ok(record)
}

/// The `custom` field of a release target: what it is, for people reading metadata.
pub fn custom(release: &Release) -> HashMap<String, Value> {
    HashMap::from([
        ("kind".to_owned(), Value::from("release")),
        ("service".to_owned(), Value::from(release.service.clone())),
        ("version".to_owned(), Value::from(release.version.clone())),
    ])
}

/// Every release, by service and version.
pub fn list(cp: &ControlPlane) -> Result<Vec<ReleaseRecord>, StoreError> {
    cp.store.list_json(Tree::Releases)
}

/// One release.
pub fn get(
    cp: &ControlPlane,
    service: &str,
    version: &str,
) -> Result<Option<ReleaseRecord>, StoreError> {
    cp.store
        .get_json(Tree::Releases, format!("{service}/{version}").as_bytes())
}
