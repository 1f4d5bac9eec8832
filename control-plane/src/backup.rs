//! Backup and restore: the CA, keys, TUF repositories and state in one tar archive, so
//! that losing the control-plane machine never means visiting every site. Sites keep
//! trusting the same CA and the same TUF roots; operators keep their credentials.
//!
//! ```text
//! continuum-backup.json   format version, time, version, CA fingerprint
//! files/<path>            every file of the data directory but the live store and client.toml
//! state.json              every state tree, keys and values in base64
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use continuum_shared::files::{create_private_dir, write_private};
use continuum_shared::tls::hex;
use serde::{Deserialize, Serialize};

use crate::datadir::DataDir;
use crate::plane::{ControlPlane, rfc3339};
use crate::store::{SledStore, Store, Tree};

const MANIFEST: &str = "continuum-backup.json";
const STATE: &str = "state.json";
const FILES: &str = "files/";
const FORMAT: u32 = 2;
/// Largest archive `restore` reads.
const MAX_ARCHIVE: u64 = 4 << 30;

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(String),
    /// The archive is not a Continuum backup or is damaged.
    #[error("{0}")]
    Invalid(String),
    /// The target data directory is in use.
    #[error("{0} already holds a control plane; restore into a new, empty data directory")]
    NotEmpty(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] crate::error::StoreError),
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    created_at: String,
    version: String,
    ca_sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    trees: BTreeMap<String, Vec<(String, String)>>,
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    bytes: &[u8],
) -> Result<(), BackupError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(continuum_shared::unix_now().max(0) as u64);
    header.set_cksum();
    builder
        .append_data(&mut header, path, bytes)
        .map_err(|e| BackupError::Io(format!("building the archive: {e}")))
}

/// Every file of the data directory that a backup carries, relative to it: everything
/// but the live state store (dumped separately), the client file (it holds the
/// operator's credential) and temporary files.
fn data_files(root: &Path) -> Result<Vec<PathBuf>, BackupError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let name = relative.to_string_lossy();
            if name == "state" || name == "client.toml" || name.contains(".tmp.") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if path.is_file() {
                out.push(relative);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, root, &mut files)
        .map_err(|e| BackupError::Io(format!("reading {}: {e}", root.display())))?;
    files.sort();
    Ok(files)
}

/// Builds a backup archive of a running control plane.
pub fn create(cp: &ControlPlane) -> Result<Vec<u8>, BackupError> {
    cp.store.flush()?;
    let mut builder = tar::Builder::new(Vec::new());
    let manifest = Manifest {
        format: FORMAT,
        created_at: rfc3339(continuum_shared::unix_now()),
        version: env!("CARGO_PKG_VERSION").into(),
        ca_sha256: hex(&cp.ca.fingerprint()),
    };
    append(
        &mut builder,
        MANIFEST,
        &serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )?;
    let root = cp.data_dir.root();
    for relative in data_files(root)? {
        let path = root.join(&relative);
        let bytes = std::fs::read(&path)
            .map_err(|e| BackupError::Io(format!("reading {}: {e}", path.display())))?;
        append(
            &mut builder,
            &format!("{FILES}{}", relative.to_string_lossy()),
            &bytes,
        )?;
    }
    let mut state = State::default();
    for tree in Tree::ALL {
        let entries = cp
            .store
            .scan(tree)?
            .into_iter()
            .map(|(k, v)| (B64.encode(k), B64.encode(v)))
            .collect();
        state.trees.insert(tree.name().to_owned(), entries);
    }
    append(
        &mut builder,
        STATE,
        &serde_json::to_vec(&state).unwrap_or_default(),
    )?;
    builder
        .into_inner()
        .map_err(|e| BackupError::Io(format!("finishing the archive: {e}")))
}

/// A relative path inside the data directory, or `None` for anything that could
/// escape it or touch the live store.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let candidate = Path::new(path);
    let normal = candidate
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    let first = candidate.components().next()?;
    (normal && first.as_os_str() != "state").then(|| candidate.to_path_buf())
}

/// Restores an archive into a new data directory, which must not hold a control plane.
/// Returns the CA fingerprint, for the operator to compare.
pub fn restore(archive_path: &Path, dir: &DataDir, sled_cache: u64) -> Result<String, BackupError> {
    if dir.is_initialized() || dir.state().exists() {
        return Err(BackupError::NotEmpty(dir.root().display().to_string()));
    }
    let file = std::fs::File::open(archive_path)
        .map_err(|e| BackupError::Io(format!("{}: {e}", archive_path.display())))?;
    let mut archive = tar::Archive::new(file.take(MAX_ARCHIVE));
    let mut manifest: Option<Manifest> = None;
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut state: Option<State> = None;
    let damaged = |e: std::io::Error| {
        BackupError::Invalid(format!("{} is damaged: {e}", archive_path.display()))
    };
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path = entry
            .path()
            .map_err(damaged)?
            .to_string_lossy()
            .into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(damaged)?;
        if path == MANIFEST {
            manifest = Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| BackupError::Invalid(format!("{MANIFEST}: {e}")))?,
            );
        } else if path == STATE {
            state = Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| BackupError::Invalid(format!("{STATE}: {e}")))?,
            );
        } else if let Some(relative) = path.strip_prefix(FILES).and_then(safe_relative) {
            files.push((relative, bytes));
        } else {
            return Err(BackupError::Invalid(format!(
                "unexpected entry {path:?} in the archive"
            )));
        }
    }
    let manifest = manifest
        .ok_or_else(|| BackupError::Invalid("not a Continuum backup (no manifest)".into()))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Invalid(format!(
            "backup format {} is not supported by this version (format {FORMAT})",
            manifest.format
        )));
    }
    let state = state.ok_or_else(|| BackupError::Invalid("the archive holds no state".into()))?;
    for required in ["ca.crt", "ca.key"] {
        if !files.iter().any(|(p, _)| p == Path::new(required)) {
            return Err(BackupError::Invalid(format!(
                "the archive lacks {required}"
            )));
        }
    }

    create_private_dir(dir.root()).map_err(|e| BackupError::Io(e.to_string()))?;
    let store = SledStore::open(&dir.state(), sled_cache)?;
    for (name, entries) in &state.trees {
        let tree = Tree::from_name(name)
            .ok_or_else(|| BackupError::Invalid(format!("unknown state tree {name:?}")))?;
        for (k, v) in entries {
            let decode = |s: &str| {
                B64.decode(s)
                    .map_err(|_| BackupError::Invalid(format!("state tree {name}: bad base64")))
            };
            store.insert(tree, &decode(k)?, &decode(v)?)?;
        }
    }
    store.flush()?;
    // The CA key last: a data directory counts as initialized only once it exists.
    files.sort_by_key(|(p, _)| p == Path::new("ca.key"));
    for (relative, bytes) in files {
        let path = dir.root().join(&relative);
        if let Some(parent) = path.parent() {
            create_private_dir(parent).map_err(|e| BackupError::Io(e.to_string()))?;
        }
        write_private(&path, &bytes).map_err(|e| BackupError::Io(e.to_string()))?;
    }
    Ok(manifest.ca_sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_paths_cannot_escape_or_touch_the_store() {
        assert!(safe_relative("tuf/image/metadata/1.root.json").is_some());
        assert!(safe_relative("../etc/passwd").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("keys/../../x").is_none());
        assert!(safe_relative("state/db").is_none());
        assert!(safe_relative("").is_none());
    }
}
