//! Each site's desired state: which release of which service it should run. Changes
//! are signed into the site's director metadata and announced to the site if it is
//! connected.

use std::collections::{BTreeMap, HashMap};

use crate::error::StoreError;
use crate::model::{DesiredRecord, DesiredRelease};
use crate::plane::{ControlPlane, rfc3339};
use crate::store::{StoreExt, Tree};
use crate::tuf::TufError;
use crate::tuf::director::Entry;
use crate::{releases, sites};
use tough::schema::{Signed, Targets};

/// Why a change of desired state failed.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// No such site, or it is revoked.
    #[error("{0}")]
    Site(String),
    /// No such release.
    #[error("release {0} is not published; see `continuum releases`")]
    NoRelease(String),
    /// The release may not be given to sites (it is yanked).
    #[error("{0}")]
    Refused(String),
    /// Signing failed.
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// A secret could not be sealed for the site.
    #[error("{0}")]
    Secret(String),
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
    match releases::get(cp, service, version)? {
        None => return Err(DesiredError::NoRelease(format!("{service} {version}"))),
        Some(release) => {
            if let Some(refusal) = release.refusal() {
                return Err(DesiredError::Refused(refusal));
            }
            // Its secrets must exist and reach this site.
            let unfit = crate::rollout::secret::unfit(cp, &release.secrets, &[record])
                .map_err(|e| DesiredError::Refused(e.to_string()))?;
            if let Some(why) = unfit.into_values().next() {
                return Err(DesiredError::Refused(format!("site {site:?} is {why}")));
            }
        }
    }
    let mut desired = get(cp, site)?.unwrap_or_else(|| blank(site));
    desired.releases.insert(
        service.to_owned(),
        DesiredRelease {
            version: version.to_owned(),
            pinned: true,
        },
    );
    apply(cp, desired, actor).await
}

/// Signs `site`'s desired state again as a new generation, unchanged (its secrets are
/// sealed afresh: the site's key changed).
pub async fn refresh(cp: &ControlPlane, site: &str, actor: &str) -> Result<(), DesiredError> {
    let lock = site_lock(site);
    let _one = lock.lock().await;
    match get(cp, site)? {
        Some(desired) => apply(cp, desired, actor).await.map(drop),
        None => Ok(()),
    }
}

fn blank(site: &str) -> DesiredRecord {
    DesiredRecord {
        site: site.to_owned(),
        generation: 0,
        releases: BTreeMap::new(),
        secrets: BTreeMap::new(),
        updated_at: String::new(),
        updated_by: String::new(),
    }
}

/// One change to one site's desired state, as rollouts make them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// The release of a service it should run (`None`: the service is taken off).
    Release {
        /// The service.
        service: String,
        /// The release, if any.
        version: Option<String>,
    },
    /// The version of a secret it should be given (a rollout of a changed secret).
    Secret {
        /// The secret's name.
        name: String,
        /// The version.
        version: u64,
    },
}

/// How many sites are signed at once.
const PARALLEL_SIGNING: usize = 8;

/// Sets the release of `service` that each site should run, as a rollout does (`None`
/// takes the service off the site); returns one result per change, in order. See
/// [`change`].
pub async fn set_releases(
    cp: &ControlPlane,
    service: &str,
    changes: &[(String, Option<String>)],
    actor: &str,
) -> Vec<Result<(), DesiredError>> {
    let changes: Vec<(String, Change)> = changes
        .iter()
        .map(|(site, version)| {
            let change = Change::Release {
                service: service.to_owned(),
                version: version.clone(),
            };
            (site.clone(), change)
        })
        .collect();
    change(cp, &changes, actor).await
}

/// Makes one change to each site named; returns one result per change, in order. A
/// site that already has what it is given spends no generation.
///
/// The changes are one batch: every site's metadata is signed side by side without
/// waiting for the disk, one sync of the file system makes all of it durable, the
/// records are stored with one flush, and only then are the sites told.
pub async fn change(
    cp: &ControlPlane,
    changes: &[(String, Change)],
    actor: &str,
) -> Vec<Result<(), DesiredError>> {
    use futures_util::StreamExt;
    let mut sites: Vec<&str> = changes.iter().map(|(site, _)| site.as_str()).collect();
    sites.sort_unstable();
    sites.dedup();
    if sites.len() != changes.len() {
        // A rollout step changes each site once; two changes of one site would race.
        return changes
            .iter()
            .map(|(site, _)| {
                Err(DesiredError::Site(format!(
                    "site {site:?} is changed twice in one batch"
                )))
            })
            .collect();
    }
    // In name order, so that two batches never wait for each other crosswise.
    let locks: Vec<_> = sites.iter().map(|site| site_lock(site)).collect();
    let mut guards = Vec::with_capacity(locks.len());
    for lock in &locks {
        guards.push(lock.lock().await);
    }
    // The image repository's listing, read once for the whole batch.
    let image = match cp.image.targets() {
        Ok(image) => image,
        Err(e) => {
            let e = e.to_string();
            return changes
                .iter()
                .map(|_| Err(DesiredError::Tuf(TufError::Io(e.clone()))))
                .collect();
        }
    };
    // A yanked release is never given to a site again, not even as the release a
    // failed or rolled-back site goes back to.
    let mut refused = HashMap::new();
    for change in changes.iter().map(|(_, c)| c) {
        if let Change::Release {
            service,
            version: Some(version),
        } = change
            && !refused.contains_key(change)
            && let Ok(Some(release)) = releases::get(cp, service, version)
            && let Some(refusal) = release.refusal()
        {
            refused.insert(change.clone(), refusal);
        }
    }
    let signing: Vec<_> = changes
        .iter()
        .map(|(site, change)| changed(cp, &image, site, change, refused.get(change), actor))
        .collect();
    let signed: Vec<Result<Option<DesiredRecord>, DesiredError>> =
        futures_util::stream::iter(signing)
            .buffered(PARALLEL_SIGNING)
            .collect()
            .await;
    let fresh: Vec<&DesiredRecord> = signed.iter().flatten().flatten().collect();
    let stored = match fresh.is_empty() {
        true => Ok(()),
        false => store_all(cp, &fresh).await,
    };
    if stored.is_ok() {
        for desired in &fresh {
            cp.fleet.notify(&desired.site, desired.generation);
        }
    }
    drop(guards);
    let failed = stored.err().map(|e| e.to_string());
    signed
        .into_iter()
        .map(|result| match (&failed, result) {
            (_, Err(e)) => Err(e),
            (Some(e), Ok(Some(_))) => Err(DesiredError::Tuf(TufError::Io(e.clone()))),
            (_, Ok(_)) => Ok(()),
        })
        .collect()
}

/// Signs `site`'s next generation with `change` made, without waiting for the disk;
/// `None` when the site already has that.
async fn changed(
    cp: &ControlPlane,
    image: &Signed<Targets>,
    site: &str,
    change: &Change,
    refusal: Option<&String>,
    actor: &str,
) -> Result<Option<DesiredRecord>, DesiredError> {
    if let Some(refusal) = refusal {
        return Err(DesiredError::Refused(refusal.clone()));
    }
    let mut desired = get(cp, site)?.unwrap_or_else(|| blank(site));
    match change {
        Change::Release { service, version } => {
            let current = desired.releases.get(service).map(|r| r.version.as_str());
            if current == version.as_deref() {
                return Ok(None);
            }
            match version {
                Some(version) => {
                    desired.releases.insert(
                        service.clone(),
                        DesiredRelease {
                            version: version.clone(),
                            pinned: false,
                        },
                    );
                }
                None => {
                    desired.releases.remove(service);
                }
            }
        }
        Change::Secret { name, version } => {
            if desired.secrets.get(name) == Some(version) {
                return Ok(None);
            }
            desired.secrets.insert(name.clone(), *version);
        }
    }
    sign(cp, image, &mut desired, actor, false).await?;
    Ok(Some(desired))
}

/// Makes a batch of signed desired states durable: one sync for the metadata, then the
/// records with one flush.
async fn store_all(cp: &ControlPlane, fresh: &[&DesiredRecord]) -> Result<(), DesiredError> {
    cp.director.sync().await?;
    for desired in fresh {
        cp.store
            .put_json(Tree::Desired, desired.site.as_bytes(), desired)?;
    }
    cp.store.flush()?;
    tracing::info!(sites = fresh.len(), "desired states signed");
    Ok(())
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
    let image = cp.image.targets()?;
    sign(cp, &image, &mut desired, actor, true).await?;
    cp.store
        .put_json(Tree::Desired, desired.site.as_bytes(), &desired)?;
    cp.store.flush()?;
    cp.fleet.notify(&desired.site, desired.generation);
    tracing::info!(site = %desired.site, generation = desired.generation, "desired state signed");
    Ok(desired)
}

/// Signs `desired` into the director as the site's next generation.
async fn sign(
    cp: &ControlPlane,
    image: &Signed<Targets>,
    desired: &mut DesiredRecord,
    actor: &str,
    durable: bool,
) -> Result<(), DesiredError> {
    // Past anything the director holds too: metadata written before a crash that kept
    // the record from being stored may have reached the site already, and a site never
    // takes a generation it has as new.
    let signed = cp
        .director
        .site(&desired.site)
        .latest("targets.json")
        .unwrap_or(0);
    desired.generation = desired.generation.max(signed) + 1;
    desired.updated_at = rfc3339(continuum_shared::unix_now());
    desired.updated_by = actor.to_owned();
    let mut entries = Vec::new();
    let mut secret_names = std::collections::BTreeSet::new();
    for (service, release) in &desired.releases {
        let name = if service == continuum_shared::manifest::AGENT_SERVICE {
            agent_binary_name(cp, &desired.site, &release.version)?
        } else {
            continuum_shared::manifest::target_name(service, &release.version)
        };
        let target = crate::tuf::image::target_in(image, &name)?
            .ok_or_else(|| DesiredError::NoRelease(format!("{service} {}", release.version)))?;
        if let Some(record) = releases::get(cp, service, &release.version)? {
            secret_names.extend(record.secrets);
        }
        entries.push(Entry {
            name,
            target,
            service: service.clone(),
            version: release.version.clone(),
        });
    }
    // Secrets the releases no longer use lose their pins.
    let pins = std::mem::take(&mut desired.secrets);
    let mut sealed = continuum_shared::secrets::SealedSecrets::new();
    if !secret_names.is_empty()
        && let Some(site) = sites::get(cp, &desired.site)?
    {
        let (for_site, used) = crate::secrets::seal_for(cp, &site, &secret_names, &pins)
            .map_err(|e| DesiredError::Secret(e.to_string()))?;
        sealed = for_site;
        desired.secrets = used;
    }
    cp.director
        .set(
            &desired.site,
            desired.generation,
            &entries,
            &sealed,
            durable,
        )
        .await?;
    Ok(())
}

/// The target name of the agent binary of `version` for `site`'s target triple.
fn agent_binary_name(cp: &ControlPlane, site: &str, version: &str) -> Result<String, DesiredError> {
    let service = continuum_shared::manifest::AGENT_SERVICE;
    let release = releases::get(cp, service, version)?
        .ok_or_else(|| DesiredError::NoRelease(format!("{service} {version}")))?;
    let labels = sites::get(cp, site)?
        .map(|s| s.labels())
        .unwrap_or_default();
    crate::agent_releases::binary_for(&release, &labels)
        .map(|b| b.target.clone())
        .map_err(|e| DesiredError::Site(format!("site {site:?}: {e}")))
}

/// Signs every site's desired state again as a new generation (after a director key
/// rotation), so every site moves to metadata under the new key. Returns how many.
pub async fn resign_all(cp: &ControlPlane, actor: &str) -> Result<usize, DesiredError> {
    let all: Vec<DesiredRecord> = cp.store.list_json(Tree::Desired)?;
    let count = all.len();
    let mut first_error = None;
    for listed in all {
        let lock = site_lock(&listed.site);
        let _one = lock.lock().await;
        // One site that cannot be signed (say, its agent binary is gone) must not leave
        // the sites after it under the old key.
        let signed = match get(cp, &listed.site) {
            Ok(Some(desired)) => apply(cp, desired, actor).await.map(drop),
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = signed {
            tracing::warn!(site = %listed.site, error = %e, "could not sign the site's desired state again");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(count),
    }
}
