//! Secrets: values the central team sets once (`continuum secret set`) and that reach
//! only the sites in their scope, sealed to each site's own key.
//!
//! At rest every version is sealed with age to the control plane's own secrets key
//! (`secrets.key` in the data directory, 0600); the plaintext exists only in memory,
//! while a site's desired state is signed. The last [`KEPT_VERSIONS`] versions are
//! kept, so a rollout of a new value can put sites back on the one before. A secret's
//! value never appears in a listing, an audit entry, a log or an API answer.

use std::collections::{BTreeMap, BTreeSet};

use continuum_shared::secrets::{MAX_SECRET, Sealed, SealedSecrets, SecretsKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::StoreError;
use crate::model::SiteRecord;
use crate::plane::{ControlPlane, rfc3339};
use crate::policy::selector::Selector;
use crate::store::{StoreExt, Tree};

/// Versions of each secret kept (the newest and the ones a rollback may need).
pub const KEPT_VERSIONS: usize = 5;

/// Most secrets a control plane keeps.
pub const MAX_SECRETS: usize = 10_000;

/// Most sites a `--site` scope names.
pub const MAX_SCOPE_SITES: usize = 1000;

/// The control plane's own secrets key, which seals every value at rest.
pub struct Vault {
    key: SecretsKey,
}

impl Vault {
    /// Reads `secrets.key` from the data directory, creating it (0600) on first start;
    /// returns whether it was created.
    pub fn open(data_dir: &crate::datadir::DataDir) -> Result<(Vault, bool), String> {
        SecretsKey::load_or_create(&data_dir.file("secrets.key"))
            .map(|(key, created)| (Vault { key }, created))
            .map_err(|e| e.to_string())
    }

    fn seal(&self, value: &[u8]) -> Result<String, SecretError> {
        continuum_shared::secrets::seal(&self.key.recipient(), value)
            .map_err(|e| SecretError::Crypto(e.to_string()))
    }

    fn open_value(&self, sealed: &str) -> Result<Vec<u8>, SecretError> {
        self.key
            .open(sealed)
            .map_err(|e| SecretError::Crypto(format!("a stored secret cannot be opened: {e}")))
    }
}

/// Which sites a secret reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every site.
    All,
    /// The sites whose labels match an expression.
    Select(String),
    /// The sites named.
    Sites(Vec<String>),
}

impl Scope {
    /// Whether `site` is entitled to the secret.
    pub fn covers(&self, site: &SiteRecord) -> bool {
        match self {
            Scope::All => true,
            Scope::Select(text) => Selector::compile(text).is_ok_and(|s| s.matches(&site.labels())),
            Scope::Sites(names) => names.contains(&site.name),
        }
    }

    /// The scope for people: `all sites`, `select: EXPR`, `sites: a, b`.
    pub fn describe(&self) -> String {
        match self {
            Scope::All => "all sites".into(),
            Scope::Select(text) => format!("select: {text}"),
            Scope::Sites(names) => format!("sites: {}", names.join(", ")),
        }
    }

    fn check(&self) -> Result<(), SecretError> {
        match self {
            Scope::All => Ok(()),
            Scope::Select(text) => Selector::compile(text)
                .map(drop)
                .map_err(|e| SecretError::Invalid(format!("--select: the expression {e}"))),
            Scope::Sites(names) if names.is_empty() || names.len() > MAX_SCOPE_SITES => Err(
                SecretError::Invalid(format!("--site names 1 to {MAX_SCOPE_SITES} sites")),
            ),
            Scope::Sites(names) => names.iter().try_for_each(|n| {
                continuum_shared::names::check_name("site", n)
                    .map_err(|e| SecretError::Invalid(e.to_string()))
            }),
        }
    }
}

/// One version of a secret, sealed to the control plane's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// The version (1, 2, …).
    pub version: u64,
    /// The value, sealed with age to the control plane's secrets key (base64).
    pub sealed: String,
    /// When it was set (RFC 3339).
    pub set_at: String,
}

/// A secret as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Its name.
    pub name: String,
    /// Which sites receive it.
    pub scope: Scope,
    /// The kept versions, oldest first.
    pub versions: Vec<StoredVersion>,
    /// When it was last set (RFC 3339).
    pub updated_at: String,
    /// Who set it last.
    pub updated_by: String,
    /// The highest version it ever had: versions are never used twice, not even after a
    /// removal (a site could mistake a new value for one it already holds).
    #[serde(default)]
    pub last_version: u64,
    /// When it was removed; its record stays, without values, to keep `last_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<String>,
}

impl SecretRecord {
    /// The newest version.
    pub fn latest(&self) -> u64 {
        self.versions
            .last()
            .map_or(0, |v| v.version)
            .max(self.last_version)
    }

    fn kept(&self, version: u64) -> Option<&StoredVersion> {
        self.versions.iter().find(|v| v.version == version)
    }
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretView {
    /// Its name.
    pub name: String,
    /// The newest version.
    pub version: u64,
    /// The versions kept for rollbacks.
    pub kept_versions: Vec<u64>,
    /// Which sites receive it.
    pub scope: Scope,
    /// The services whose published releases name it.
    pub used_by: Vec<String>,
    /// When it was last set (RFC 3339).
    pub updated_at: String,
    /// Who set it last.
    pub updated_by: String,
}

/// What `secret set` asks for (the API's request body).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetRequest {
    /// The value, standard base64.
    pub value_base64: String,
    /// Which sites receive it.
    pub scope: Scope,
    /// The rollout policy for the services that use it (when absent, the one each
    /// service's release names).
    #[serde(default)]
    pub policy: Option<String>,
}

/// What `secret set` did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetOutcome {
    /// The secret as it is now.
    pub secret: SecretView,
    /// The rollouts that take the new value to the services using it, by service.
    pub rollouts: BTreeMap<String, String>,
    /// Services whose sites could not be moved now, with why.
    pub not_rolled: BTreeMap<String, String>,
}

/// Why a secret command failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Bad name, value or scope.
    #[error("{0}")]
    Invalid(String),
    /// No such secret.
    #[error("no secret named {0:?}; see `continuum secret list`")]
    NotFound(String),
    /// Still needed.
    #[error("{0}")]
    InUse(String),
    /// Sealing or opening failed.
    #[error("{0}")]
    Crypto(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One secret change at a time.
static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The stored secret named `name`.
pub fn get(cp: &ControlPlane, name: &str) -> Result<Option<SecretRecord>, StoreError> {
    Ok(stored(cp, name)?.filter(|r| r.removed_at.is_none()))
}

/// The record kept for `name`, removed or not.
fn stored(cp: &ControlPlane, name: &str) -> Result<Option<SecretRecord>, StoreError> {
    cp.store.get_json(Tree::Secrets, name.as_bytes())
}

/// Every secret, as listed.
pub fn list(cp: &ControlPlane) -> Result<Vec<SecretView>, StoreError> {
    let users = users(cp)?;
    let all: Vec<SecretRecord> = cp.store.list_json(Tree::Secrets)?;
    Ok(all
        .iter()
        .filter(|r| r.removed_at.is_none())
        .map(|r| view(r, &users))
        .collect())
}

fn view(record: &SecretRecord, users: &BTreeMap<String, BTreeSet<String>>) -> SecretView {
    SecretView {
        name: record.name.clone(),
        version: record.latest(),
        kept_versions: record.versions.iter().map(|v| v.version).collect(),
        scope: record.scope.clone(),
        used_by: users
            .get(&record.name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default(),
        updated_at: record.updated_at.clone(),
        updated_by: record.updated_by.clone(),
    }
}

/// Secret name → the services whose published releases name it.
fn users(cp: &ControlPlane) -> Result<BTreeMap<String, BTreeSet<String>>, StoreError> {
    let mut users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for release in crate::releases::list(cp)? {
        for name in &release.secrets {
            users
                .entry(name.clone())
                .or_default()
                .insert(release.service.clone());
        }
    }
    Ok(users)
}

/// Sets `name` to `value` for `scope` as a new version. When it replaced an earlier
/// value, the services using it get the new one by a rollout each under `policy`.
pub async fn set(
    cp: &ControlPlane,
    name: &str,
    value: &[u8],
    scope: Scope,
    policy: Option<&str>,
    actor: &str,
) -> Result<SetOutcome, SecretError> {
    continuum_shared::names::check_name("secret", name)
        .map_err(|e| SecretError::Invalid(e.to_string()))?;
    if value.is_empty() || value.len() > MAX_SECRET {
        return Err(SecretError::Invalid(format!(
            "a secret holds 1 to {MAX_SECRET} bytes; this value has {}",
            value.len()
        )));
    }
    scope.check()?;
    if let Some(name) = policy
        && cp.policies.snapshot().rollout(name).is_none()
    {
        return Err(SecretError::Invalid(format!(
            "--policy: no rollout policy named {name:?} is in force; see `continuum policies`"
        )));
    }
    let _one = CHANGES.lock().await;
    let now = rfc3339(continuum_shared::unix_now());
    let existing = stored(cp, name)?;
    if existing.is_none() && cp.store.scan(Tree::Secrets)?.len() >= MAX_SECRETS {
        return Err(SecretError::Invalid(format!(
            "at most {MAX_SECRETS} secrets are kept"
        )));
    }
    let replaced = existing.as_ref().is_some_and(|r| r.removed_at.is_none());
    let mut record = existing.unwrap_or_else(|| SecretRecord {
        name: name.to_owned(),
        scope: scope.clone(),
        versions: Vec::new(),
        updated_at: now.clone(),
        updated_by: actor.to_owned(),
        last_version: 0,
        removed_at: None,
    });
    let version = record.latest() + 1;
    record.last_version = version;
    record.removed_at = None;
    record.versions.push(StoredVersion {
        version,
        sealed: cp.vault.seal(value)?,
        set_at: now.clone(),
    });
    let extra = record.versions.len().saturating_sub(KEPT_VERSIONS);
    record.versions.drain(..extra);
    record.scope = scope;
    record.updated_at = now;
    record.updated_by = actor.to_owned();
    cp.store.put_json(Tree::Secrets, name.as_bytes(), &record)?;
    cp.store.flush()?;
    tracing::info!(secret = %name, version, scope = %record.scope.describe(), "secret set");
    let mut rollouts = BTreeMap::new();
    let mut not_rolled = BTreeMap::new();
    if replaced {
        for (service, result) in
            crate::rollout::controller::start_secret(cp, name, version, policy, actor)
                .await
                .map_err(|e| SecretError::Invalid(e.to_string()))?
        {
            match result {
                Ok(id) => rollouts.insert(service, id),
                Err(why) => not_rolled.insert(service, why),
            };
        }
    }
    Ok(SetOutcome {
        secret: view(&record, &users(cp)?),
        rollouts,
        not_rolled,
    })
}

/// Removes `name`, unless a site's desired state still uses it.
pub async fn remove(cp: &ControlPlane, name: &str) -> Result<(), SecretError> {
    let _one = CHANGES.lock().await;
    if get(cp, name)?.is_none() {
        return Err(SecretError::NotFound(name.to_owned()));
    }
    // Every site whose desired releases name it, whether it was delivered or not.
    let mut using: Vec<String> = crate::rollout::secret::sites_using(cp, name)?
        .into_values()
        .flatten()
        .collect();
    using.sort_unstable();
    using.dedup();
    if !using.is_empty() {
        let shown: Vec<&str> = using.iter().take(5).map(String::as_str).collect();
        return Err(SecretError::InUse(format!(
            "{} site(s) run services that use secret {name:?} ({}{}); remove those services or roll out releases without it first",
            using.len(),
            shown.join(", "),
            if using.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )));
    }
    // The record stays, without values, so that its versions are never used again.
    if let Some(mut record) = stored(cp, name)? {
        record.last_version = record.latest();
        record.versions.clear();
        record.removed_at = Some(rfc3339(continuum_shared::unix_now()));
        cp.store.put_json(Tree::Secrets, name.as_bytes(), &record)?;
    }
    cp.store.flush()?;
    tracing::info!(secret = %name, "secret removed");
    Ok(())
}

/// Seals for `site` the secrets `names`, each at its pinned version when that is still
/// kept, else at the newest; returns them and the versions used. Secrets the site is
/// not entitled to, or that do not exist, are left out (its agent says which are
/// missing), as is everything while the site has not announced its key.
pub fn seal_for(
    cp: &ControlPlane,
    site: &SiteRecord,
    names: &BTreeSet<String>,
    pins: &BTreeMap<String, u64>,
) -> Result<(SealedSecrets, BTreeMap<String, u64>), SecretError> {
    let mut sealed = SealedSecrets::new();
    let mut used = BTreeMap::new();
    let Some(recipient) = &site.secrets_recipient else {
        return Ok((sealed, used));
    };
    for name in names {
        let Some(record) = get(cp, name)? else {
            continue;
        };
        if !record.scope.covers(site) {
            continue;
        }
        let stored = pins
            .get(name)
            .and_then(|v| record.kept(*v))
            .or_else(|| record.versions.last());
        let Some(stored) = stored else {
            continue;
        };
        let value = cp.vault.open_value(&stored.sealed)?;
        let for_site = continuum_shared::secrets::seal(recipient, &value)
            .map_err(|e| SecretError::Crypto(format!("site {:?}: {e}", site.name)))?;
        sealed.insert(
            name.clone(),
            Sealed {
                version: stored.version,
                sealed: for_site,
            },
        );
        used.insert(name.clone(), stored.version);
    }
    Ok((sealed, used))
}

/// Records the key a site announced. A site whose key changed, and whose desired state
/// names secrets, has it signed again so the secrets are sealed to the new key.
pub async fn record_site_key(cp: &ControlPlane, site: &str, recipient: &str) {
    if let Err(e) = continuum_shared::secrets::check_recipient(recipient) {
        tracing::warn!(site, error = %e, "the site announced an unusable secrets key");
        return;
    }
    let changed = match crate::sites::record_secrets_key(cp, site, recipient) {
        Ok(changed) => changed,
        Err(e) => {
            tracing::warn!(site, error = %e, "could not record the site's secrets key");
            return;
        }
    };
    let needs = crate::desired::get(cp, site)
        .ok()
        .flatten()
        .is_some_and(|d| !d.releases.is_empty());
    if changed && needs {
        tracing::info!(
            site,
            "the site's secrets key changed; signing its desired state again"
        );
        if let Err(e) = crate::desired::refresh(cp, site, "secrets key").await {
            tracing::warn!(site, error = %e, "could not sign the site's desired state again");
        }
    }
}
