//! The director repository: each site's desired state as its own targets metadata,
//! signed online with the director key.
//!
//! Every site's targets carry `"continuum": {"site": NAME}` at the top level, so an
//! agent refuses another site's desired state even though the same key signed it, and
//! under `"secrets"` the secrets sealed to that site's own key.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tough::TargetName;
use tough::schema::{Root, Signed, Target, Targets};

use super::image::make_root;
use super::keys::SigningKey;
use super::metadir::{commit_targets, refresh};
use super::{Lifetimes, MetaDir, SPEC_VERSION, TufError, expires_in, sign};

/// The director repository.
pub struct Director {
    roots: MetaDir,
    sites: PathBuf,
    key: PathBuf,
    lifetimes: Lifetimes,
    /// Site changes share it (each site's files are its own); a key rotation or a
    /// refresh of every site holds it alone.
    writer: tokio::sync::RwLock<()>,
    /// The root and key in force, read once rather than for every site signed; a key
    /// rotation drops it.
    signer: std::sync::Mutex<Option<Arc<Signer>>>,
}

/// The director root and the key that signs under it.
struct Signer {
    root: Signed<Root>,
    key: SigningKey,
}

/// One release in a site's desired state.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Image-repository target name of the release manifest.
    pub name: String,
    /// The image repository's entry for it (length and hashes are copied).
    pub target: Target,
    /// Service and version, for the agent's display.
    pub service: String,
    /// Release version.
    pub version: String,
}

impl Director {
    /// Opens the director repository, creating its root on first start. All director
    /// roles use the director key (`director.key`), which is online by design.
    pub async fn open(
        data_dir: &Path,
        lifetimes: Lifetimes,
    ) -> Result<(Self, Vec<&'static str>), TufError> {
        let base = data_dir.join("tuf").join("director");
        let director = Director {
            roots: MetaDir::new(base.join("metadata")),
            sites: base.join("sites"),
            key: data_dir.join("director.key"),
            lifetimes,
            writer: tokio::sync::RwLock::new(()),
            signer: std::sync::Mutex::new(None),
        };
        let mut created = Vec::new();
        if director.roots.latest("root.json").is_none() {
            let (key, _) = SigningKey::load_or_create(&director.key)?;
            let root = make_root(
                NonZeroU64::MIN,
                &[&key],
                1,
                &[&key],
                &key,
                &director.lifetimes,
            );
            let signed = sign(root.clone(), &root, &[&key]).await?;
            director.roots.write("1.root.json", signed.buffer())?;
            created.push("director repository");
        }
        Ok((director, created))
    }

    /// The shared root directory.
    pub fn roots(&self) -> &MetaDir {
        &self.roots
    }

    /// The metadata directory of one site.
    pub fn site(&self, site: &str) -> MetaDir {
        MetaDir::new(self.sites.join(site))
    }

    /// The newest root.
    pub fn root(&self) -> Result<super::metadir::RootFile, TufError> {
        self.roots
            .latest_root()?
            .ok_or_else(|| TufError::Io("the director repository has no root".into()))
    }

    /// The root and key in force.
    fn signer(&self) -> Result<Arc<Signer>, TufError> {
        let mut cached = self.signer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(signer) = cached.as_ref() {
            return Ok(signer.clone());
        }
        let (root, _) = self.root()?;
        let key = SigningKey::load(&self.key)?;
        let signer = Arc::new(Signer { root, key });
        *cached = Some(signer.clone());
        Ok(signer)
    }

    /// Signs `entries`, and the secrets sealed to the site, as `site`'s desired state at
    /// `generation` (the targets version). Unless `durable`, the files are written without waiting for the disk and the
    /// caller must sync the file system (see [`sync`](Self::sync)) before telling anyone.
    pub async fn set(
        &self,
        site: &str,
        generation: u64,
        entries: &[Entry],
        secrets: &continuum_shared::secrets::SealedSecrets,
        durable: bool,
    ) -> Result<(), TufError> {
        let _writer = self.writer.read().await;
        let signer = self.signer()?;
        let (root, key) = (&signer.root, &signer.key);
        let version =
            NonZeroU64::new(generation).ok_or_else(|| TufError::Rejected("generation 0".into()))?;
        let mut targets = Targets::new(
            SPEC_VERSION.into(),
            version,
            expires_in(self.lifetimes.director_targets),
        );
        let bound = match secrets.is_empty() {
            true => json!({ "site": site }),
            false => json!({ "site": site, "secrets": secrets }),
        };
        targets._extra.insert("continuum".into(), bound);
        for entry in entries {
            let name = TargetName::new(entry.name.as_str())
                .map_err(|e| TufError::Rejected(e.to_string()))?;
            let mut target = entry.target.clone();
            target.custom = HashMap::from([
                ("service".to_owned(), Value::from(entry.service.clone())),
                ("version".to_owned(), Value::from(entry.version.clone())),
            ]);
            targets.targets.insert(name, target);
        }
        let signed = sign(targets, &root.signed, &[key]).await?;
        let dir = if durable {
            self.site(site)
        } else {
            self.site(site).deferred()
        };
        commit_targets(
            &dir,
            &root.signed,
            signed.buffer(),
            version,
            key,
            &self.lifetimes,
        )
        .await
    }

    /// Makes every deferred write durable: one sync of the file system the sites'
    /// metadata lives on, instead of one per file.
    pub async fn sync(&self) -> Result<(), TufError> {
        let dir = self.sites.clone();
        tokio::task::spawn_blocking(move || {
            let handle = match std::fs::File::open(&dir) {
                Ok(handle) => handle,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            rustix::fs::syncfs(&handle).map_err(std::io::Error::from)
        })
        .await
        .map_err(|e| TufError::Io(e.to_string()))?
        .map_err(|e| TufError::Io(format!("syncing the director's metadata: {e}")))
    }

    /// Replaces the director key: a new root naming only the new key, signed by the old
    /// and the new. Every site's desired state must then be signed again (see
    /// `desired::resign_all`). Returns the new root version.
    pub async fn rotate_key(&self) -> Result<u64, TufError> {
        let _writer = self.writer.write().await;
        *self.signer.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let (current, _) = self.root()?;
        let old = SigningKey::load(&self.key)?;
        let new = SigningKey::generate()?;
        let mut root = make_root(
            super::next(current.signed.version),
            &[&new],
            1,
            &[&new],
            &new,
            &self.lifetimes,
        );
        root.consistent_snapshot = current.signed.consistent_snapshot;
        let mut signed = sign(root.clone(), &root, &[&new]).await?.signed().clone();
        super::rotate::add_signature(&mut signed, &old).await?;
        current.signed.verify_role(&signed).map_err(|e| {
            TufError::Metadata(format!("the rotated director root does not verify: {e}"))
        })?;
        let version = signed.signed.version;
        self.roots.write(
            &format!("{version}.root.json"),
            &super::metadir::to_bytes(&signed)?,
        )?;
        new.save(&self.key)?;
        // Read again at the next signing, whatever happened to the files in between.
        *self.signer.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(root_version = version.get(), "director key rotated");
        Ok(version.get())
    }

    /// Re-signs every site's snapshot and timestamp that nears expiry. Returns how many
    /// sites were refreshed.
    pub async fn refresh_all(&self, force: bool) -> Result<usize, TufError> {
        let _writer = self.writer.write().await;
        let signer = self.signer()?;
        let mut refreshed = 0;
        let Ok(entries) = std::fs::read_dir(&self.sites) else {
            return Ok(0);
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let dir = MetaDir::new(entry.path());
            if refresh(
                &dir,
                &signer.root.signed,
                &signer.key,
                &self.lifetimes,
                force,
            )
            .await?
            {
                refreshed += 1;
            }
        }
        Ok(refreshed)
    }
}
