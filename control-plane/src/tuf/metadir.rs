//! One directory of TUF metadata, and the online half of publishing into it: a new
//! targets file is followed by a new snapshot and timestamp signed with the online key.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Hashes, Metafile, Root, Signed, Snapshot, Timestamp};

use super::keys::SigningKey;
use super::{Lifetimes, SPEC_VERSION, TufError, expires_in, needs_refresh, next, sign};

/// A root as parsed, with the exact bytes it was stored as.
pub type RootFile = (Signed<Root>, Vec<u8>);

/// A metadata directory.
#[derive(Debug, Clone)]
pub struct MetaDir {
    path: PathBuf,
    /// Whether each write waits for the disk (else the caller syncs the file system).
    durable: bool,
}

/// Whether a file name is one a repository serves: `N.role.json` or `role.json`, plain
/// characters only, never a path.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl MetaDir {
    /// The directory at `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        MetaDir {
            path: path.into(),
            durable: true,
        }
    }

    /// The same directory, written without waiting for the disk: for batches that sync
    /// the whole file system once before anyone is told of them.
    pub fn deferred(mut self) -> Self {
        self.durable = false;
        self
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file `name`, if it exists and is a servable name.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        let path = self.path.join(name);
        (safe_name(name) && path.is_file()).then_some(path)
    }

    /// The bytes of `name`.
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.file(name)?).ok()
    }

    /// Parses `name` as signed metadata.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<Signed<T>>, TufError> {
        self.read(name)
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| TufError::Metadata(format!("{name}: {e}")))
            })
            .transpose()
    }

    /// Writes `name` atomically (0600).
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), TufError> {
        continuum_shared::files::create_private_dir(&self.path)
            .map_err(|e| TufError::Io(e.to_string()))?;
        let path = self.path.join(name);
        let written = if self.durable {
            continuum_shared::files::write_private(&path, bytes)
        } else {
            continuum_shared::files::write_private_fast(&path, bytes)
        };
        written.map_err(|e| TufError::Io(e.to_string()))
    }

    /// The highest N for which `N.<suffix>` exists.
    pub fn latest(&self, suffix: &str) -> Option<u64> {
        std::fs::read_dir(&self.path)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(&format!(".{suffix}"))?
                    .parse::<u64>()
                    .ok()
            })
            .max()
    }

    /// The newest root, parsed, with its bytes.
    pub fn latest_root(&self) -> Result<Option<RootFile>, TufError> {
        let Some(version) = self.latest("root.json") else {
            return Ok(None);
        };
        let name = format!("{version}.root.json");
        let bytes = self
            .read(&name)
            .ok_or_else(|| TufError::Io(format!("{name} vanished")))?;
        let root = serde_json::from_slice(&bytes)
            .map_err(|e| TufError::Metadata(format!("{name}: {e}")))?;
        Ok(Some((root, bytes)))
    }

    /// The current timestamp, if any.
    pub fn timestamp(&self) -> Result<Option<Signed<Timestamp>>, TufError> {
        self.load("timestamp.json")
    }

    /// The current snapshot (the one the timestamp names), if any.
    pub fn snapshot(&self) -> Result<Option<Signed<Snapshot>>, TufError> {
        let Some(timestamp) = self.timestamp()? else {
            return Ok(None);
        };
        let Some(meta) = timestamp.signed.meta.get("snapshot.json") else {
            return Ok(None);
        };
        self.load(&format!("{}.snapshot.json", meta.version))
    }

    /// The current targets version (the one the snapshot names), if any.
    pub fn targets_version(&self) -> Result<Option<NonZeroU64>, TufError> {
        Ok(self
            .snapshot()?
            .and_then(|s| s.signed.meta.get("targets.json").map(|m| m.version)))
    }
}

fn metafile(bytes: &[u8], version: NonZeroU64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::<Hex>::from(continuum_shared::tls::sha256(bytes).to_vec()),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

/// Serializes signed metadata the way it is stored and hashed.
pub fn to_bytes<T: serde::Serialize>(signed: &Signed<T>) -> Result<Vec<u8>, TufError> {
    let mut bytes =
        serde_json::to_vec_pretty(signed).map_err(|e| TufError::Metadata(e.to_string()))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Stores `N.targets.json` and makes it current: a new snapshot naming it and a new
/// timestamp naming that snapshot, both signed with `online`.
pub async fn commit_targets(
    dir: &MetaDir,
    root: &Root,
    targets: &[u8],
    version: NonZeroU64,
    online: &SigningKey,
    lifetimes: &Lifetimes,
) -> Result<(), TufError> {
    dir.write(&format!("{version}.targets.json"), targets)?;
    let snapshot_version = dir
        .snapshot()?
        .map_or(NonZeroU64::MIN, |s| next(s.signed.version));
    let mut snapshot = Snapshot::new(
        SPEC_VERSION.into(),
        snapshot_version,
        expires_in(lifetimes.snapshot),
    );
    snapshot
        .meta
        .insert("targets.json".into(), metafile(targets, version));
    let snapshot = sign(snapshot, root, &[online]).await?;
    dir.write(
        &format!("{snapshot_version}.snapshot.json"),
        snapshot.buffer(),
    )?;
    write_timestamp(
        dir,
        root,
        snapshot.buffer(),
        snapshot_version,
        online,
        lifetimes,
    )
    .await
}

async fn write_timestamp(
    dir: &MetaDir,
    root: &Root,
    snapshot: &[u8],
    snapshot_version: NonZeroU64,
    online: &SigningKey,
    lifetimes: &Lifetimes,
) -> Result<(), TufError> {
    let version = dir
        .timestamp()?
        .map_or(NonZeroU64::MIN, |t| next(t.signed.version));
    let mut timestamp = Timestamp::new(
        SPEC_VERSION.into(),
        version,
        expires_in(lifetimes.timestamp),
    );
    timestamp
        .meta
        .insert("snapshot.json".into(), metafile(snapshot, snapshot_version));
    let timestamp = sign(timestamp, root, &[online]).await?;
    dir.write("timestamp.json", timestamp.buffer())
}

/// Re-signs the snapshot and timestamp when they near expiry (or when `force`, after an
/// online key rotation). Returns whether anything was signed.
pub async fn refresh(
    dir: &MetaDir,
    root: &Root,
    online: &SigningKey,
    lifetimes: &Lifetimes,
    force: bool,
) -> Result<bool, TufError> {
    let (Some(timestamp), Some(snapshot)) = (dir.timestamp()?, dir.snapshot()?) else {
        return Ok(false);
    };
    if force || needs_refresh(snapshot.signed.expires, lifetimes.snapshot) {
        let mut fresh = snapshot.signed.clone();
        fresh.version = next(fresh.version);
        fresh.expires = expires_in(lifetimes.snapshot);
        let signed = sign(fresh, root, &[online]).await?;
        let version = signed.signed().signed.version;
        dir.write(&format!("{version}.snapshot.json"), signed.buffer())?;
        write_timestamp(dir, root, signed.buffer(), version, online, lifetimes).await?;
        return Ok(true);
    }
    if needs_refresh(timestamp.signed.expires, lifetimes.timestamp) {
        let version = snapshot.signed.version;
        let bytes = dir
            .read(&format!("{version}.snapshot.json"))
            .ok_or_else(|| TufError::Io("the current snapshot file is missing".into()))?;
        write_timestamp(dir, root, &bytes, version, online, lifetimes).await?;
        return Ok(true);
    }
    Ok(false)
}
