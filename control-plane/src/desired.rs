//! Each site's desired state: which release of which service it should run. Changes
//! are signed into the site's director metadata and announced to the site if it is
//! connected.

use std::collections::BTreeMap;

use crate::error::StoreError;
use crate::model::{DesiredRecord, DesiredRelease};
use crate::plane::{ControlPlane, rfc3339};
use crate::store::{StoreExt, Tree};
use crate::tuf::TufError;
use crate::tuf::director::Entry;
use crate::{releases, sites};

/// Why a change of desired state failed.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// No such site, or it is revoked.
    #[error("{0}")]
    Site(String),
    /// No such release.
    #[error("release {0} is not published; see `continuum releases`")]
    NoRelease(String),
    /// Signing failed.
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The site's current generation (0 before it was ever given desired state).
pub fn generation(cp: &ControlPlane, site: &str) -> u64 {
    get(cp, site).ok().flatten().map_or(0, |d| d.generation)
}

/// The site's desired state, if it has any.
pub fn get(cp: &ControlPlane, site: &str) -> Result<Option<DesiredRecord>, StoreError> {
    cp.store.get_json(Tree::Desired, site.as_bytes())
}

/// Pins `site` to `version` of `service` (an operator's manual assignment).
pub async fn assign(
    cp: &ControlPlane,
    site: &str,
    service: &str,
    version: &str,
    actor: &str,
) -> Result<DesiredRecord, DesiredError> {
    let lock = site_lock(site);
    let _one = lock.lock().await;
    let record = sites::get(cp, site)?
        .ok_or_else(|| DesiredError::Site(format!("no site named {site:?}")))?;
    if record.revoked_at.is_some() {
        return Err(DesiredError::Site(format!("site {site:?} is revoked")));
    }
    if releases::get(cp, service, version)?.is_none() {
        return Err(DesiredError::NoRelease(format!("{service} {version}")));
    }
    let mut desired = get(cp, site)?.unwrap_or_else(|| DesiredRecord {
        site: site.to_owned(),
        generation: 0,
        releases: BTreeMap::new(),
        updated_at: String::new(),
        updated_by: String::new(),
    });
    desired.releases.insert(
        service.to_owned(),
        DesiredRelease {
            version: version.to_owned(),
            pinned: true,
        },
    );
    apply(cp, desired, actor).await
}

/// Sets the release of `service` that `site` should run, as a rollout does (`None`
/// takes the service off the site). Nothing changes, and no generation is spent, when
/// the site already has that.
pub async fn set_release(
    cp: &ControlPlane,
    site: &str,
    service: &str,
    version: Option<&str>,
    actor: &str,
) -> Result<(), DesiredError> {
    let lock = site_lock(site);
    let _one = lock.lock().await;
    let mut desired = get(cp, site)?.unwrap_or_else(|| DesiredRecord {
        site: site.to_owned(),
        generation: 0,
        releases: BTreeMap::new(),
        updated_at: String::new(),
        updated_by: String::new(),
    });
    let current = desired.releases.get(service).map(|r| r.version.as_str());
    if current == version {
        return Ok(());
    }
    match version {
        Some(version) => {
            desired.releases.insert(
                service.to_owned(),
                DesiredRelease {
                    version: version.to_owned(),
                    pinned: false,
                },
            );
        }
        None => {
            desired.releases.remove(service);
        }
    }
    apply(cp, desired, actor).await.map(drop)
}

/// One change at a time per site (changes to different sites run side by side).
fn site_lock(site: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks.entry(site.to_owned()).or_default().clone()
}

/// Signs `desired` as the site's next generation, stores it and tells the site.
async fn apply(
    cp: &ControlPlane,
    mut desired: DesiredRecord,
    actor: &str,
) -> Result<DesiredRecord, DesiredError> {
    desired.generation += 1;
    desired.updated_at = rfc3339(continuum_shared::unix_now());
    desired.updated_by = actor.to_owned();
    let mut entries = Vec::new();
    for (service, release) in &desired.releases {
        let name = continuum_shared::manifest::target_name(service, &release.version);
        let target = cp
            .image
            .target(&name)?
            .ok_or_else(|| DesiredError::NoRelease(format!("{service} {}", release.version)))?;
        entries.push(Entry {
            name,
            target,
            service: service.clone(),
            version: release.version.clone(),
        });
    }
    cp.director
        .set(&desired.site, desired.generation, &entries)
        .await?;
    cp.store
        .put_json(Tree::Desired, desired.site.as_bytes(), &desired)?;
    cp.store.flush()?;
    cp.fleet.notify(&desired.site, desired.generation);
    tracing::info!(site = %desired.site, generation = desired.generation, "desired state signed");
    Ok(desired)
}

/// Signs every site's desired state again as a new generation (after a director key
/// rotation), so every site moves to metadata under the new key. Returns how many.
pub async fn resign_all(cp: &ControlPlane, actor: &str) -> Result<usize, DesiredError> {
    let all: Vec<DesiredRecord> = cp.store.list_json(Tree::Desired)?;
    let count = all.len();
    for listed in all {
        let lock = site_lock(&listed.site);
        let _one = lock.lock().await;
        if let Some(desired) = get(cp, &listed.site)? {
            apply(cp, desired, actor).await?;
        }
    }
    Ok(count)
}
