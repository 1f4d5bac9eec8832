//! Key rotation: a new root, signed by the old root's threshold and by its own, and
//! whatever it makes necessary (targets re-signed under a new release key, snapshot and
//! timestamp re-signed under a new online key). Sites follow the chain of roots by
//! themselves.

use std::collections::HashSet;
use std::num::NonZeroU64;

use serde::Serialize;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Role, RoleType, Root, Signature, Signed, Targets};

use super::image::ImageRepo;
use super::keys::SigningKey;
use super::metadir::{commit_targets, refresh, to_bytes};
use super::{TufError, next};

/// Canonical form of a role, the bytes signatures cover.
pub fn canonical<T: Serialize>(role: &T) -> Result<Vec<u8>, TufError> {
    let mut data = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut data, olpc_cjson::CanonicalFormatter::new());
    role.serialize(&mut ser)
        .map_err(|e| TufError::Metadata(e.to_string()))?;
    Ok(data)
}

/// Adds `key`'s signature over `signed` (replacing an earlier one by the same key).
pub async fn add_signature<T: Role + Serialize>(
    signed: &mut Signed<T>,
    key: &SigningKey,
) -> Result<(), TufError> {
    let data = canonical(&signed.signed)?;
    let signer = tough::key_source::KeySource::as_sign(key)
        .await
        .map_err(|e| TufError::Metadata(e.to_string()))?;
    let sig = signer
        .sign(&data, &aws_lc_rs::rand::SystemRandom::new())
        .await
        .map_err(|e| TufError::Metadata(e.to_string()))?;
    signed.signatures.retain(|s| &s.keyid != key.key_id());
    signed.signatures.push(Signature {
        keyid: key.key_id().clone(),
        sig: sig.into(),
    });
    Ok(())
}

fn key_ids(root: &Root, role: RoleType) -> HashSet<Decoded<Hex>> {
    root.roles
        .get(&role)
        .map(|r| r.keyids.iter().cloned().collect())
        .unwrap_or_default()
}

/// What a rotation changed, for the operator.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Rotated {
    /// The new root version.
    pub root_version: u64,
    /// Whether the targets were re-signed under a new release key.
    pub targets_resigned: bool,
    /// Whether the online key changed.
    pub online_rotated: bool,
    /// Key files this control plane deleted because the new root no longer names them.
    pub deleted_keys: Vec<String>,
}

impl ImageRepo {
    /// Installs `proposed` as the next root. This control plane adds its own root
    /// signature if it still holds a root key the old root names; the root must then
    /// carry the old root's threshold and its own. `targets`, required when the release
    /// keys change, must verify under the new root. A new online key must be the one
    /// prepared with [`ImageRepo::prepare_online_key`].
    pub async fn rotate(
        &self,
        mut proposed: Signed<Root>,
        targets: Option<Signed<Targets>>,
    ) -> Result<Rotated, TufError> {
        let _writer = self.writer().lock().await;
        let (current, _) = self.root()?;
        let reject = |m: String| Err(TufError::Rejected(m));
        if proposed.signed.version != next(current.signed.version) {
            return reject(format!(
                "the new root must have version {}, not {}",
                next(current.signed.version),
                proposed.signed.version
            ));
        }
        if !proposed.signed.consistent_snapshot {
            return reject("the new root must keep consistent snapshots".into());
        }
        if let Ok(own) = SigningKey::load(&self.keys().root)
            && key_ids(&current.signed, RoleType::Root).contains(own.key_id())
        {
            add_signature(&mut proposed, &own).await?;
        }
        current
            .signed
            .verify_role(&proposed)
            .map_err(|e| TufError::Rejected(format!("the new root lacks the current root keys' threshold: {e} (pass --root-key for keys held offline)")))?;
        proposed.signed.verify_role(&proposed).map_err(|e| {
            TufError::Rejected(format!(
                "the new root is not signed by its own root keys' threshold: {e}"
            ))
        })?;

        // The online key: the current one, or the prepared one.
        let online_ids = key_ids(&proposed.signed, RoleType::Timestamp);
        if online_ids != key_ids(&proposed.signed, RoleType::Snapshot) {
            return reject("snapshot and timestamp must use the same online key".into());
        }
        let current_online = SigningKey::load(&self.keys().online)?;
        let online = if online_ids.contains(current_online.key_id()) {
            current_online
        } else {
            let pending = SigningKey::load(&self.keys().online_next)
                .map_err(|_| TufError::Rejected("the new root names an online key this control plane does not hold; prepare one with `continuum keys rotate online`".into()))?;
            if !online_ids.contains(pending.key_id()) {
                return reject(
                    "the new root names an online key this control plane does not hold".into(),
                );
            }
            pending
        };
        let online_rotated =
            !key_ids(&current.signed, RoleType::Timestamp).contains(online.key_id());
        let release_changed = key_ids(&current.signed, RoleType::Targets)
            != key_ids(&proposed.signed, RoleType::Targets);
        if release_changed && targets.is_none() {
            return reject("the release keys change: the current targets must be re-signed with the new release key".into());
        }
        if let Some(t) = &targets {
            proposed.signed.verify_role(t).map_err(|e| {
                TufError::Rejected(format!(
                    "the re-signed targets do not verify under the new root: {e}"
                ))
            })?;
            let current_version = self
                .metadata()
                .targets_version()?
                .unwrap_or(NonZeroU64::MIN);
            if t.signed.version != next(current_version) {
                return reject(format!(
                    "the re-signed targets must have version {}",
                    next(current_version)
                ));
            }
        }

        let version = proposed.signed.version;
        self.metadata()
            .write(&format!("{version}.root.json"), &to_bytes(&proposed)?)?;
        if online_rotated {
            continuum_shared::files::write_private(
                &self.keys().online,
                online_pem(&self.keys().online_next)?.as_bytes(),
            )
            .map_err(|e| TufError::Io(e.to_string()))?;
            let _ = std::fs::remove_file(&self.keys().online_next);
        }
        let mut rotated = Rotated {
            root_version: version.get(),
            online_rotated,
            ..Rotated::default()
        };
        if let Some(t) = targets {
            commit_targets(
                self.metadata(),
                &proposed.signed,
                &to_bytes(&t)?,
                t.signed.version,
                &online,
                self.lifetimes(),
            )
            .await?;
            rotated.targets_resigned = true;
        } else {
            refresh(
                self.metadata(),
                &proposed.signed,
                &online,
                self.lifetimes(),
                true,
            )
            .await?;
        }
        for (path, role) in [
            (&self.keys().root, RoleType::Root),
            (&self.keys().release, RoleType::Targets),
        ] {
            if let Ok(key) = SigningKey::load(path)
                && !key_ids(&proposed.signed, role).contains(key.key_id())
            {
                std::fs::remove_file(path).map_err(|e| TufError::Io(e.to_string()))?;
                rotated.deleted_keys.push(path.display().to_string());
            }
        }
        tracing::info!(
            root_version = version.get(),
            online_rotated,
            targets_resigned = rotated.targets_resigned,
            "image repository root rotated"
        );
        Ok(rotated)
    }

    /// Makes a new online key, kept aside until a signed root names it. Returns its
    /// public key for the new root.
    pub fn prepare_online_key(&self) -> Result<tough::schema::key::Key, TufError> {
        let key = SigningKey::generate()?;
        key.save(&self.keys().online_next)?;
        Ok(key.public().clone())
    }
}

fn online_pem(path: &std::path::Path) -> Result<String, TufError> {
    std::fs::read_to_string(path).map_err(|e| TufError::Io(format!("{}: {e}", path.display())))
}
