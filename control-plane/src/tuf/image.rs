//! The image repository: every release as a TUF target.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tough::TargetName;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{Hashes, RoleKeys, RoleType, Root, Signed, Target, Targets};

use super::keys::SigningKey;
use super::metadir::{commit_targets, refresh, to_bytes};
use super::{Lifetimes, MetaDir, SPEC_VERSION, TufError, expires_in, next, sign};

/// The image repository and the keys this control plane holds for it.
pub struct ImageRepo {
    meta: MetaDir,
    blobs: PathBuf,
    keys: KeyFiles,
    lifetimes: Lifetimes,
    writer: tokio::sync::Mutex<()>,
}

/// Where the image repository's keys live in the data directory.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// Root key (embedded default only).
    pub root: PathBuf,
    /// Release (targets) key (embedded default only).
    pub release: PathBuf,
    /// Online snapshot and timestamp key.
    pub online: PathBuf,
    /// A new online key, prepared for rotation until a signed root names it.
    pub online_next: PathBuf,
}

impl KeyFiles {
    fn in_dir(data_dir: &Path) -> Self {
        let keys = data_dir.join("keys");
        KeyFiles {
            root: keys.join("image-root.key"),
            release: keys.join("release.key"),
            online: keys.join("image-online.key"),
            online_next: keys.join("image-online.next.key"),
        }
    }
}

/// A root naming `root` keys (with `threshold`), the `release` key for targets and the
/// `online` key for snapshot and timestamp.
pub fn make_root(
    version: NonZeroU64,
    root: &[&SigningKey],
    threshold: u64,
    release: &[&SigningKey],
    online: &SigningKey,
    lifetimes: &Lifetimes,
) -> Root {
    let public = |keys: &[&SigningKey]| keys.iter().map(|k| k.public().clone()).collect::<Vec<_>>();
    root_from_keys(
        version,
        &public(root),
        threshold,
        &public(release),
        online.public(),
        lifetimes,
    )
}

/// The entry for `name` in a targets listing already loaded, if it lists it.
pub fn target_in(targets: &Signed<Targets>, name: &str) -> Result<Option<Target>, TufError> {
    let name = target_name(name)?;
    Ok(targets.signed.targets.get(&name).cloned())
}

/// The same from public keys alone (what release managers build new roots from).
pub fn root_from_keys(
    version: NonZeroU64,
    root: &[Key],
    threshold: u64,
    release: &[Key],
    online: &Key,
    lifetimes: &Lifetimes,
) -> Root {
    let mut keys = HashMap::new();
    let mut ids = |list: &[Key]| -> Vec<Decoded<Hex>> {
        list.iter()
            .filter_map(|k| {
                let id = k.key_id().ok()?;
                keys.insert(id.clone(), k.clone());
                Some(id)
            })
            .collect()
    };
    let role = |keyids: Vec<Decoded<Hex>>, threshold: u64| RoleKeys {
        keyids,
        threshold: NonZeroU64::new(threshold).unwrap_or(NonZeroU64::MIN),
        _extra: HashMap::new(),
    };
    let root_ids = ids(root);
    let release_ids = ids(release);
    let online_ids = ids(std::slice::from_ref(online));
    let mut roles = HashMap::new();
    roles.insert(RoleType::Root, role(root_ids, threshold));
    roles.insert(RoleType::Targets, role(release_ids, 1));
    roles.insert(RoleType::Snapshot, role(online_ids.clone(), 1));
    roles.insert(RoleType::Timestamp, role(online_ids, 1));
    Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version,
        expires: expires_in(lifetimes.root),
        keys,
        roles,
        _extra: HashMap::new(),
    }
}

/// A target entry for some bytes.
pub fn target_for(bytes: &[u8], custom: HashMap<String, Value>) -> Target {
    Target {
        length: bytes.len() as u64,
        hashes: Hashes {
            sha256: Decoded::<Hex>::from(continuum_shared::tls::sha256(bytes).to_vec()),
            _extra: HashMap::new(),
        },
        custom,
        _extra: HashMap::new(),
    }
}

/// A target entry for content known by its SHA-256 and length (a stored upload).
pub fn target_for_hash(sha256: [u8; 32], length: u64, custom: HashMap<String, Value>) -> Target {
    Target {
        length,
        hashes: Hashes {
            sha256: Decoded::<Hex>::from(sha256.to_vec()),
            _extra: HashMap::new(),
        },
        custom,
        _extra: HashMap::new(),
    }
}

fn target_name(name: &str) -> Result<TargetName, TufError> {
    TargetName::new(name).map_err(|e| TufError::Rejected(format!("target name {name:?}: {e}")))
}

impl ImageRepo {
    /// Opens the repository in `data_dir`, creating keys and the first metadata on first
    /// start (the embedded default). Returns what was created.
    pub async fn open(
        data_dir: &Path,
        lifetimes: Lifetimes,
    ) -> Result<(Self, Vec<&'static str>), TufError> {
        let base = data_dir.join("tuf").join("image");
        let repo = ImageRepo {
            meta: MetaDir::new(base.join("metadata")),
            blobs: base.join("blobs"),
            keys: KeyFiles::in_dir(data_dir),
            lifetimes,
            writer: tokio::sync::Mutex::new(()),
        };
        let mut created = Vec::new();
        let (online, new_online) = SigningKey::load_or_create(&repo.keys.online)?;
        if new_online {
            created.push("image online key");
        }
        if repo.meta.latest("root.json").is_none() {
            let (root_key, _) = SigningKey::load_or_create(&repo.keys.root)?;
            let (release, _) = SigningKey::load_or_create(&repo.keys.release)?;
            created.extend(["image root key", "release key"]);
            let root = make_root(
                NonZeroU64::MIN,
                &[&root_key],
                1,
                &[&release],
                &online,
                &repo.lifetimes,
            );
            let signed = sign(root.clone(), &root, &[&root_key]).await?;
            repo.meta.write("1.root.json", signed.buffer())?;
            let targets = Targets::new(
                SPEC_VERSION.into(),
                NonZeroU64::MIN,
                expires_in(repo.lifetimes.targets),
            );
            let targets = sign(targets, &root, &[&release]).await?;
            commit_targets(
                &repo.meta,
                &root,
                targets.buffer(),
                NonZeroU64::MIN,
                &online,
                &repo.lifetimes,
            )
            .await?;
            created.push("image repository");
        }
        Ok((repo, created))
    }

    /// Serializes changes to the repository.
    pub(super) fn writer(&self) -> &tokio::sync::Mutex<()> {
        &self.writer
    }

    /// Where its keys live.
    pub fn keys(&self) -> &KeyFiles {
        &self.keys
    }

    /// How long what it signs stays valid.
    pub fn lifetimes(&self) -> &Lifetimes {
        &self.lifetimes
    }

    /// Its metadata directory (for serving).
    pub fn metadata(&self) -> &MetaDir {
        &self.meta
    }

    /// The stored content with this SHA-256 (lower-case hex), if any.
    pub fn blob(&self, sha256_hex: &str) -> Option<PathBuf> {
        let ok = sha256_hex.len() == 64
            && sha256_hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        let path = self.blobs.join(sha256_hex);
        (ok && path.is_file()).then_some(path)
    }

    /// Adds `bytes` to the content store (by their hash).
    pub fn store_content(&self, bytes: &[u8]) -> Result<(), TufError> {
        self.store_blob(bytes)
    }

    fn store_blob(&self, bytes: &[u8]) -> Result<(), TufError> {
        continuum_shared::files::create_private_dir(&self.blobs)
            .map_err(|e| TufError::Io(e.to_string()))?;
        let name = continuum_shared::tls::hex(&continuum_shared::tls::sha256(bytes));
        continuum_shared::files::write_private(&self.blobs.join(name), bytes)
            .map_err(|e| TufError::Io(e.to_string()))
    }

    /// The newest root and its bytes.
    pub fn root(&self) -> Result<super::metadir::RootFile, TufError> {
        self.meta
            .latest_root()?
            .ok_or_else(|| TufError::Io("the image repository has no root".into()))
    }

    /// The first root, which agents start their chain of trust from.
    pub fn first_root(&self) -> Result<Vec<u8>, TufError> {
        self.meta
            .read("1.root.json")
            .ok_or_else(|| TufError::Io("the image repository has no first root".into()))
    }

    /// The current targets metadata.
    pub fn targets(&self) -> Result<Signed<Targets>, TufError> {
        let version = self
            .meta
            .targets_version()?
            .ok_or_else(|| TufError::Io("the image repository has no targets".into()))?;
        self.meta
            .load(&format!("{version}.targets.json"))?
            .ok_or_else(|| TufError::Io(format!("{version}.targets.json is missing")))
    }

    /// The current entry for `name`, if published.
    pub fn target(&self, name: &str) -> Result<Option<Target>, TufError> {
        target_in(&self.targets()?, name)
    }

    /// Whether this control plane holds the release key (the embedded default).
    pub fn holds_release_key(&self) -> bool {
        self.keys.release.exists()
    }

    /// Publishes `bytes` as target `name`. With `signed_targets` (signed offline by the
    /// release managers) that metadata is checked and used; without it this control
    /// plane signs with its own release key. Publishing the same bytes again is a no-op;
    /// different bytes under a published name are refused.
    pub async fn publish(
        &self,
        name: &str,
        bytes: &[u8],
        custom: HashMap<String, Value>,
        signed_targets: Option<Signed<Targets>>,
    ) -> Result<Target, TufError> {
        self.store_blob(bytes)?;
        let entry = target_for(bytes, custom);
        let mut published = self
            .publish_entries(vec![(name.to_owned(), entry)], signed_targets)
            .await?;
        published
            .pop()
            .ok_or_else(|| TufError::Io("nothing was published".into()))
    }

    /// Publishes several targets in one targets version; their content must already be
    /// in the content store. Returns the entries as published (an entry published
    /// before with the same content stays as it was).
    pub async fn publish_entries(
        &self,
        entries: Vec<(String, Target)>,
        signed_targets: Option<Signed<Targets>>,
    ) -> Result<Vec<Target>, TufError> {
        let _writer = self.writer.lock().await;
        let (root, _) = self.root()?;
        let current = self.targets()?;
        let mut fresh = Vec::new();
        let mut published = Vec::new();
        for (name, entry) in entries {
            let tname = target_name(&name)?;
            if self
                .blob(&continuum_shared::tls::hex(&entry.hashes.sha256))
                .is_none()
            {
                return Err(TufError::Rejected(format!(
                    "the content of {name} has not been uploaded"
                )));
            }
            match current.signed.targets.get(&tname) {
                Some(existing)
                    if existing.hashes.sha256 == entry.hashes.sha256
                        && existing.length == entry.length =>
                {
                    published.push(existing.clone());
                }
                Some(_) => {
                    return Err(TufError::Rejected(format!(
                        "{name} is already published with other content; publish a new version instead"
                    )));
                }
                None => {
                    published.push(entry.clone());
                    fresh.push((tname, entry));
                }
            }
        }
        if fresh.is_empty() {
            return Ok(published);
        }
        let version = next(current.signed.version);
        let targets_bytes = match signed_targets {
            Some(signed) => {
                self.check_offline_targets(&root.signed, &signed, version, &fresh)?;
                to_bytes(&signed)?
            }
            None => {
                let release = SigningKey::load(&self.keys.release).map_err(|_| {
                    TufError::Rejected(
                        "this control plane holds no release key (it is kept offline): sign with `continuum release publish --key FILE`".into(),
                    )
                })?;
                let mut targets = current.signed.clone();
                targets.version = version;
                targets.expires = expires_in(self.lifetimes.targets);
                targets.targets.extend(fresh);
                sign(targets, &root.signed, &[&release])
                    .await?
                    .buffer()
                    .clone()
            }
        };
        let online = SigningKey::load(&self.keys.online)?;
        commit_targets(
            &self.meta,
            &root.signed,
            &targets_bytes,
            version,
            &online,
            &self.lifetimes,
        )
        .await?;
        Ok(published)
    }

    /// Where uploads are staged before they join the content store.
    pub fn staging_dir(&self) -> Result<PathBuf, TufError> {
        let dir = self.blobs.join("staging");
        continuum_shared::files::create_private_dir(&dir)
            .map_err(|e| TufError::Io(e.to_string()))?;
        Ok(dir)
    }

    /// Moves a fully written, hashed upload into the content store.
    pub fn adopt_blob(&self, staged: &Path, sha256_hex: &str) -> Result<PathBuf, TufError> {
        let path = self.blobs.join(sha256_hex);
        std::fs::rename(staged, &path).map_err(|e| TufError::Io(e.to_string()))?;
        Ok(path)
    }

    fn check_offline_targets(
        &self,
        root: &Root,
        signed: &Signed<Targets>,
        version: NonZeroU64,
        fresh: &[(TargetName, Target)],
    ) -> Result<(), TufError> {
        root.verify_role(signed)
            .map_err(|e| TufError::Rejected(format!("the targets metadata is not signed by the release key(s) this repository's root names: {e}")))?;
        if signed.signed.version != version {
            return Err(TufError::Rejected(format!(
                "the targets metadata has version {}, expected {version} (someone published in between: sign again)",
                signed.signed.version
            )));
        }
        if signed.signed.expires <= jiff::Timestamp::now() {
            return Err(TufError::Rejected(
                "the targets metadata is already expired".into(),
            ));
        }
        for (name, entry) in fresh {
            match signed.signed.targets.get(name) {
                Some(t) if t.length == entry.length && t.hashes.sha256 == entry.hashes.sha256 => {}
                _ => {
                    return Err(TufError::Rejected(format!(
                        "the signed targets do not list {:?} with the uploaded content's length and hash",
                        name.raw()
                    )));
                }
            }
        }
        for (other, target) in &signed.signed.targets {
            if self
                .blob(&continuum_shared::tls::hex(&target.hashes.sha256))
                .is_none()
            {
                return Err(TufError::Rejected(format!(
                    "the signed targets list {:?}, whose content this control plane does not hold",
                    other.raw()
                )));
            }
        }
        Ok(())
    }

    /// Re-signs snapshot and timestamp when they near expiry.
    pub async fn refresh(&self, force: bool) -> Result<bool, TufError> {
        let _writer = self.writer.lock().await;
        let (root, _) = self.root()?;
        let online = SigningKey::load(&self.keys.online)?;
        refresh(&self.meta, &root.signed, &online, &self.lifetimes, force).await
    }
}
