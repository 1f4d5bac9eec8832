//! Publishing releases into the image repository, and listing them.

use std::collections::HashMap;

use continuum_shared::manifest::{self, ImageArchive, ImageSource, Release};
use serde_json::Value;
use tough::schema::{Signed, Target, Targets};

use crate::error::StoreError;
use crate::model::ReleaseRecord;
use crate::plane::{ControlPlane, rfc3339};
use crate::store::{StoreExt, Tree};
use crate::tuf::TufError;
use crate::tuf::image::{target_for, target_for_hash};
use crate::views::ArchiveUploaded;

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
    /// The image archive is missing or does not match the manifest.
    #[error("{0}")]
    Archive(String),
}

/// Checks and publishes a manifest, with the image archive uploaded for it if any.
/// `signed_targets` is the new image targets metadata signed offline by the release
/// managers; without it this control plane signs.
pub async fn publish(
    cp: &ControlPlane,
    file: &str,
    text: &str,
    signed_targets: Option<Signed<Targets>>,
    archive: Option<&ArchiveUploaded>,
    actor: &str,
) -> Result<ReleaseRecord, PublishError> {
    let source = if archive.is_some() {
        ImageSource::Archive
    } else {
        ImageSource::Registry
    };
    let release = manifest::parse(file, text, source)?;
    check_placement(file, text, &release)?;
    let archive = match archive {
        Some(uploaded) => Some(archive_record(cp, &release, uploaded)?),
        None => None,
    };
    let name = manifest::target_name(&release.service, &release.version);
    let offline = signed_targets.is_some();
    let entries = entries(&release, text.as_bytes(), archive.as_ref())?;
    cp.image.store_content(text.as_bytes())?;
    let published = cp.image.publish_entries(entries, signed_targets).await?;
    let target = published
        .last()
        .ok_or_else(|| TufError::Io("nothing was published".into()))?;
    let key = format!("{}/{}", release.service, release.version);
    if let Some(existing) = cp
        .store
        .get_json::<ReleaseRecord>(Tree::Releases, key.as_bytes())?
    {
        return Ok(existing);
    }
    let secrets = release.secret_names().map(str::to_owned).collect();
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
        archive,
        agent_binaries: Default::default(),
        yanked: None,
        secrets,
    };
    cp.store.put_json(Tree::Releases, key.as_bytes(), &record)?;
    cp.store.flush()?;
    tracing::info!(service = %record.service, version = %record.version, signed_by = %record.signed_by, "release published");
    Ok(record)
}

/// Checks the release's `[placement] require` expression (the manifest parser, which
/// sites run too, does not evaluate expressions): an expression that does not parse or
/// calls an unknown function is refused with its line in the manifest.
pub fn check_placement(
    file: &str,
    text: &str,
    release: &Release,
) -> Result<(), manifest::ManifestError> {
    let Some(require) = &release.placement.require else {
        return Ok(());
    };
    let Err(error) = crate::policy::selector::Selector::compile(require) else {
        return Ok(());
    };
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("require"))
        .map_or(1, |i| i + 1);
    Err(manifest::ManifestError {
        file: file.to_owned(),
        problems: vec![manifest::Problem {
            line,
            field: "placement.require".into(),
            message: format!("the expression {error}"),
        }],
    })
}

/// The image-repository entries of a release: its archive (if any), then its manifest,
/// whose custom field records the archive's hash and image id. The CLI builds the same
/// entries when release managers sign offline.
pub fn entries(
    release: &Release,
    manifest_bytes: &[u8],
    archive: Option<&ImageArchive>,
) -> Result<Vec<(String, Target)>, PublishError> {
    let mut entries = Vec::new();
    if let Some(archive) = archive {
        let sha256 = unhex32(&archive.sha256).ok_or_else(|| {
            PublishError::Archive("the archive's sha256 is not 64 hex digits".into())
        })?;
        let custom = HashMap::from([
            ("kind".to_owned(), Value::from("image-archive")),
            ("service".to_owned(), Value::from(release.service.clone())),
            ("version".to_owned(), Value::from(release.version.clone())),
        ]);
        entries.push((
            archive.target.clone(),
            target_for_hash(sha256, archive.length, custom),
        ));
    }
    let mut custom = custom(release);
    if let Some(archive) = archive {
        let value =
            serde_json::to_value(archive).map_err(|e| PublishError::Archive(e.to_string()))?;
        custom.insert("archive".to_owned(), value);
    }
    entries.push((
        manifest::target_name(&release.service, &release.version),
        target_for(manifest_bytes, custom),
    ));
    Ok(entries)
}

/// The archive record of a release from an upload this control plane holds: the image
/// it holds must be the one the manifest names.
pub fn archive_record(
    cp: &ControlPlane,
    release: &Release,
    uploaded: &ArchiveUploaded,
) -> Result<ImageArchive, PublishError> {
    let path = cp.image.blob(&uploaded.sha256).ok_or_else(|| {
        PublishError::Archive(format!(
            "no uploaded archive has SHA-256 {}: upload it first (continuum release publish --image-archive does)",
            uploaded.sha256
        ))
    })?;
    let image = crate::archives::inspect(&path).map_err(PublishError::Archive)?;
    if !crate::archives::names(&image, &release.container.image) {
        return Err(PublishError::Archive(format!(
            "container.image is {:?}, but the archive holds {:?}: tag the image with the name the manifest uses before saving it",
            release.container.image, image.repo_tags
        )));
    }
    let length = std::fs::metadata(&path)
        .map_err(|e| PublishError::Archive(e.to_string()))?
        .len();
    let archive = ImageArchive {
        target: manifest::archive_target_name(&release.service, &release.version),
        sha256: uploaded.sha256.clone(),
        length,
        image_id: image.image_id,
    };
    archive
        .check(&release.service, &release.version)
        .map_err(PublishError::Archive)?;
    Ok(archive)
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The `custom` field of a release target: what it is, for people reading metadata.
pub fn custom(release: &Release) -> HashMap<String, Value> {
    HashMap::from([
        ("kind".to_owned(), Value::from("release")),
        ("service".to_owned(), Value::from(release.service.clone())),
        ("version".to_owned(), Value::from(release.version.clone())),
    ])
}

/// Held while a stored release record is read, changed and written back (a yank, an
/// agent binary added), so that neither change overwrites the other.
pub static RECORD_CHANGES: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
