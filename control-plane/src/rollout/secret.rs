//! Where rollouts meet secrets: the sites whose services use a secret (a changed
//! secret is rolled out to them), and the sites a release's secrets keep it off (a site
//! outside a secret's scope could never start it).

use std::collections::{BTreeMap, BTreeSet};

use super::controller::RolloutError;
use crate::error::StoreError;
use crate::model::{DesiredRecord, SiteRecord};
use crate::plane::ControlPlane;
use crate::store::{StoreExt, Tree};

/// Service → the sites whose desired release of it uses secret `name`.
pub fn sites_using(
    cp: &ControlPlane,
    name: &str,
) -> Result<BTreeMap<String, BTreeSet<String>>, StoreError> {
    let mut uses: BTreeMap<(String, String), bool> = BTreeMap::new();
    let mut using: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for desired in cp.store.list_json::<DesiredRecord>(Tree::Desired)? {
        for (service, release) in &desired.releases {
            let key = (service.clone(), release.version.clone());
            let named = match uses.get(&key) {
                Some(named) => *named,
                None => {
                    let named = crate::releases::get(cp, service, &release.version)?
                        .is_some_and(|r| r.secrets.iter().any(|s| s == name));
                    uses.insert(key, named);
                    named
                }
            };
            if named {
                using
                    .entry(service.clone())
                    .or_default()
                    .insert(desired.site.clone());
            }
        }
    }
    Ok(using)
}

/// The sites that may not get a release naming `secrets`, with why: those outside a
/// secret's scope. A secret that does not exist refuses the whole rollout.
pub fn unfit(
    cp: &ControlPlane,
    secrets: &[String],
    sites: &[SiteRecord],
) -> Result<BTreeMap<String, String>, RolloutError> {
    let mut unfit = BTreeMap::new();
    for name in secrets {
        let secret = crate::secrets::get(cp, name)?.ok_or_else(|| {
            RolloutError::Invalid(format!(
                "the release uses secret {name:?}, which is not set; `continuum secret set {name} …` first"
            ))
        })?;
        for site in sites.iter().filter(|s| !secret.scope.covers(s)) {
            unfit.entry(site.name.clone()).or_insert_with(|| {
                format!(
                    "outside the scope of secret {name:?} ({})",
                    secret.scope.describe()
                )
            });
        }
    }
    Ok(unfit)
}

/// The rollout policy named by the release of `service` that the first of `sites` runs
/// (its `placement.rollout`).
pub fn release_policy(
    cp: &ControlPlane,
    service: &str,
    sites: &BTreeSet<String>,
) -> Result<String, RolloutError> {
    let version = sites
        .iter()
        .find_map(|site| {
            crate::desired::get(cp, site)
                .ok()
                .flatten()
                .and_then(|d| d.releases.get(service).map(|r| r.version.clone()))
        })
        .ok_or_else(|| RolloutError::Invalid(format!("no site runs {service} any more")))?;
    let release = crate::releases::get(cp, service, &version)?.ok_or_else(|| {
        RolloutError::Invalid(format!("release {service} {version} is not published"))
    })?;
    Ok(super::controller::read_manifest(cp, &release)?
        .placement
        .rollout)
}
