//! Getting a release's image onto the engine: loaded from the signed image archive
//! (fetched over the control-plane link, checked against the SHA-256 and image id the
//! release managers signed) or pulled from a registry by its pinned digest.

use std::path::{Path, PathBuf};

use continuum_shared::manifest::ImageArchive;

use crate::engine::{Engine, EngineError};
use crate::trust::artifact::{self, ArtifactError};
use crate::trust::{LinkSlot, VerifiedRelease};

/// Why an image is not there.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The engine failed or is unreachable.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The archive could not be fetched now (link down, disk): try again later.
    #[error("fetching the image archive: {0}")]
    Fetch(String),
    /// What arrived is not what was signed: refused.
    #[error("{0}")]
    Tampered(String),
    /// The registry refused the release's login (or its lack of one): the release
    /// cannot run here until its registry secret is right.
    #[error("the registry refused the pull: {0}")]
    Denied(String),
}

/// Whether the engine's pull error is the registry turning the login away.
fn denied(error: &EngineError) -> bool {
    let EngineError::Refused(text) = error else {
        return false;
    };
    let text = text.to_ascii_lowercase();
    [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied: requested access",
    ]
    .iter()
    .any(|word| text.contains(word))
}

/// Makes sure the engine holds the image `verified` runs; returns its id.
pub async fn ensure(
    engine: &Engine,
    state_dir: &Path,
    link: &LinkSlot,
    verified: &VerifiedRelease,
    login: Option<continuum_shared::secrets::RegistryLogin>,
) -> Result<String, ImageError> {
    match &verified.archive {
        Some(archive) => {
            if engine.image_id(&archive.image_id).await?.is_some() {
                return Ok(archive.image_id.clone());
            }
            let file = fetch_archive(state_dir, link, archive).await?;
            super::crash_point("after-fetch");
            let loaded = engine.load(&file).await;
            let _ = std::fs::remove_file(&file);
            loaded?;
            super::crash_point("after-load");
            match engine.image_id(&archive.image_id).await? {
                Some(id) => Ok(id),
                None => Err(ImageError::Tampered(format!(
                    "the archive {} loaded, but it does not hold the signed image {}",
                    archive.target, archive.image_id
                ))),
            }
        }
        None => {
            let reference = &verified.release.container.image;
            if let Some(id) = engine.image_id(reference).await? {
                return Ok(id);
            }
            let credentials = login.map(|login| bollard::auth::DockerCredentials {
                username: Some(login.username),
                password: Some(login.password),
                ..Default::default()
            });
            match engine.pull(reference, credentials).await {
                Err(e) if denied(&e) => return Err(ImageError::Denied(e.to_string())),
                pulled => pulled?,
            }
            engine.image_id(reference).await?.ok_or_else(|| {
                ImageError::Engine(EngineError::Refused(format!(
                    "{reference} was pulled but the engine does not show it"
                )))
            })
        }
    }
}

/// Where archives are staged while they download.
fn staging(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

/// Downloads an archive through the control-plane link into the staging directory.
async fn fetch_archive(
    state_dir: &Path,
    link: &LinkSlot,
    archive: &ImageArchive,
) -> Result<PathBuf, ImageError> {
    let dir = staging(state_dir);
    continuum_shared::files::create_private_dir(&dir)
        .map_err(|e| ImageError::Fetch(e.to_string()))?;
    let path = dir.join(format!("{}.tar", archive.sha256));
    let target = artifact::Signed {
        name: &archive.target,
        sha256: &archive.sha256,
        length: archive.length,
    };
    match artifact::fetch(link, target, &path).await {
        Ok(()) => Ok(path),
        Err(ArtifactError::Unavailable(e)) => Err(ImageError::Fetch(e)),
        Err(ArtifactError::Tampered(e)) => Err(ImageError::Tampered(format!("the archive {e}"))),
    }
}
