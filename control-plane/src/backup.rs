//! Backup and restore: the CA, keys and state in one tar archive, so that losing the
//! control-plane machine never means visiting every site. Sites keep trusting the same
//! CA and keep their certificates; operators keep their credentials.
//!
//! ```text
//! continuum-backup.json   format version, time, version, CA fingerprint
//! keys/<file>             the data directory's key and certificate files
//! state.json              every state tree, keys and values in base64
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use continuum_shared::files::{create_private_dir, write_private};
use continuum_shared::tls::hex;
use serde::{Deserialize, Serialize};

use crate::datadir::DataDir;
use crate::plane::{ControlPlane, rfc3339};
use crate::store::{SledStore, Store, Tree};

/// The files of a data directory that a backup carries.
pub const KEY_FILES: &[&str] = &[
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "server-cert.json",
    "director.key",
];
const MANIFEST: &str = "continuum-backup.json";
const STATE: &str = "state.json";
const FORMAT: u32 = 1;
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
    for name in KEY_FILES {
        let path = cp.data_dir.file(name);
        if path.exists() {
            let bytes = std::fs::read(&path)
                .map_err(|e| BackupError::Io(format!("reading {}: {e}", path.display())))?;
            append(&mut builder, &format!("keys/{name}"), &bytes)?;
        }
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
    let mut keys: Vec<(&'static str, Vec<u8>)> = Vec::new();
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
        } else if let Some(name) = path
            .strip_prefix("keys/")
            .and_then(|n| KEY_FILES.iter().find(|k| **k == n))
        {
            keys.push((name, bytes));
        } else {
            return Err(BackupError::Invalid(format!(
                "unexpected file {path:?} in the archive"
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
        if !keys.iter().any(|(name, _)| *name == required) {
            return Err(BackupError::Invalid(format!(
                "the archive lacks keys/{required}"
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
    // Keys last: a data directory counts as initialized only once ca.key exists.
    keys.sort_by_key(|(name, _)| *name == "ca.key");
    for (name, bytes) in keys {
        write_private(&dir.file(name), &bytes).map_err(|e| BackupError::Io(e.to_string()))?;
    }
    Ok(manifest.ca_sha256)
}
