//! The site's secrets: its own age key (`secrets.key`, 0600, made on first start), and
//! the tmpfs directory where an opened secret waits as a read-only file for the
//! container that mounts it. A secret's value is never written to a disk at the site:
//! the directory must be on tmpfs or ramfs, or no secret is opened at all.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use continuum_shared::manifest::Release;
use continuum_shared::secrets::{RegistryLogin, SealedSecrets, SecretsKey};

use crate::error::AgentError;

/// The key's file in the state directory.
pub const KEY_FILE: &str = "secrets.key";

const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// The site's secrets key, made on first use.
pub fn load_or_create(state_dir: &Path) -> Result<SecretsKey, AgentError> {
    let path = state_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => SecretsKey::parse(&text)
            .map_err(|e| AgentError::State(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretsKey::generate();
            continuum_shared::files::write_private(&path, key.to_text().as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(AgentError::State(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Where opened secrets go by default: a directory of this state directory's own on
/// `/run` when that is a tmpfs, else on `/dev/shm`.
pub fn default_dir(state_dir: &Path) -> PathBuf {
    let base = if on_tmpfs(Path::new("/run")) {
        Path::new("/run")
    } else {
        Path::new("/dev/shm")
    };
    let absolute = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let digest = continuum_shared::tls::sha256(absolute.as_os_str().as_encoded_bytes());
    let tag = continuum_shared::tls::hex(&digest[..6]);
    base.join(format!("continuum-agent-secrets-{tag}"))
}

fn on_tmpfs(path: &Path) -> bool {
    rustix::fs::statfs(path)
        .map(|s| matches!(s.f_type as u64, TMPFS_MAGIC | RAMFS_MAGIC))
        .unwrap_or(false)
}

/// A secret placed for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The secret's name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// The file on the tmpfs.
    pub host: PathBuf,
    /// Where the container sees it.
    pub target: String,
}

/// Opens secrets and places them on the tmpfs.
#[derive(Clone)]
pub struct SecretFiles {
    dir: PathBuf,
    key: Arc<SecretsKey>,
}

impl SecretFiles {
    /// Secrets opened with `key` and placed under `dir`.
    pub fn new(dir: PathBuf, key: SecretsKey) -> Self {
        SecretFiles {
            dir,
            key: Arc::new(key),
        }
    }

    /// Opens one secret the desired state carries.
    fn open(&self, sealed: &SealedSecrets, name: &str) -> Result<(u64, Vec<u8>), String> {
        let secret = sealed.get(name).ok_or_else(|| {
            format!("secret {name:?} was not delivered to this site: it does not exist, or this site is outside its scope (see `continuum secret list`)")
        })?;
        let value = self
            .key
            .open(&secret.sealed)
            .map_err(|e| format!("secret {name:?}: {e}"))?;
        Ok((secret.version, value))
    }

    /// The registry login `release` names, opened.
    pub fn registry_login(
        &self,
        sealed: &SealedSecrets,
        release: &Release,
    ) -> Result<Option<RegistryLogin>, String> {
        let Some(name) = &release.container.registry_secret else {
            return Ok(None);
        };
        let (_, value) = self.open(sealed, name)?;
        RegistryLogin::parse(&value)
            .map(Some)
            .map_err(|e| format!("secret {name:?}: {e}"))
    }

    /// Opens the secrets `release` mounts and places each as a read-only file, unless
    /// that version is already there.
    pub fn place(&self, sealed: &SealedSecrets, release: &Release) -> Result<Vec<Placed>, String> {
        if release.secrets.is_empty() {
            return Ok(Vec::new());
        }
        let dir = self.service_dir(&release.service)?;
        let mut placed = Vec::with_capacity(release.secrets.len());
        for file in &release.secrets {
            let version = sealed.get(&file.name).map(|s| s.version);
            let host = dir.join(format!("{}.v{}", file.name, version.unwrap_or(0)));
            let version = match version {
                Some(version) if host.is_file() => version,
                _ => {
                    let (version, value) = self.open(sealed, &file.name)?;
                    write_read_only(&host, &value)
                        .map_err(|e| format!("placing secret {:?}: {e}", file.name))?;
                    version
                }
            };
            placed.push(Placed {
                name: file.name.clone(),
                version,
                host,
                target: file.path.clone(),
            });
        }
        Ok(placed)
    }

    /// Removes the files of `service` that `keep` does not name (a replaced container's
    /// old versions); with nothing to keep, the service's directory goes.
    pub fn prune(&self, service: &str, keep: &[Placed]) {
        let dir = self.dir.join(service);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !keep.iter().any(|p| p.host == path) {
                let _ = std::fs::remove_file(&path);
            }
        }
        if keep.is_empty() {
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// Removes every placed secret (the site is being decommissioned).
    pub fn wipe(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The service's directory, made private, after checking that the base is ours and
    /// on a tmpfs.
    fn service_dir(&self, service: &str) -> Result<PathBuf, String> {
        private_dir(&self.dir)?;
        if !on_tmpfs(&self.dir) {
            return Err(format!(
                "{} is not on a tmpfs; secrets are never written to a disk (set --secrets-dir to a tmpfs directory)",
                self.dir.display()
            ));
        }
        let dir = self.dir.join(service);
        private_dir(&dir)?;
        Ok(dir)
    }
}

/// Makes `dir` (0700) if missing, and refuses one that another user could have put there
/// (it may sit in a world-writable place such as `/dev/shm`).
fn private_dir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(dir)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(format!("cannot make {shown}: {e}"));
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{shown}: {e}"))?;
    let euid = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != euid {
        return Err(format!(
            "{shown} is not a directory of this user; refusing to place secrets there"
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{shown}: {e}"))?;
    }
    Ok(())
}

/// Writes `value` as a new read-only file at `path`, whole or not at all.
fn write_read_only(path: &Path, value: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o444)
            .open(&tmp)?;
        file.write_all(value)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use continuum_shared::manifest::{self, ImageSource};
    use continuum_shared::secrets::{Sealed, seal};

    fn release(extra: &str) -> Release {
        let digest = "0".repeat(64);
        let text = format!(
            "[service]\nname = \"web\"\nversion = \"1\"\n[container]\nimage = \"web@sha256:{digest}\"\n[health]\ntcp = \"127.0.0.1:80\"\n{extra}"
        );
        manifest::parse("web.toml", &text, ImageSource::Registry).unwrap()
    }

    fn tmpfs_dir() -> tempfile::TempDir {
        tempfile::Builder::new().tempdir_in("/dev/shm").unwrap()
    }

    #[test]
    fn the_key_is_made_once_private_and_kept() {
        let state = tempfile::tempdir().unwrap();
        let first = load_or_create(state.path()).unwrap();
        let mode = std::fs::metadata(state.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(state.path()).unwrap();
        assert_eq!(first.recipient(), again.recipient());
    }

    #[test]
    fn placed_secrets_are_read_only_files_and_old_versions_are_pruned() {
        let base = tmpfs_dir();
        let key = SecretsKey::generate();
        let recipient = key.recipient();
        let files = SecretFiles::new(base.path().join("s"), key);
        let release = release("[[secrets]]\nname = \"db\"\n");
        let sealed = |version, value: &[u8]| {
            SealedSecrets::from([(
                "db".to_owned(),
                Sealed {
                    version,
                    sealed: seal(&recipient, value).unwrap(),
                },
            )])
        };
        let one = files.place(&sealed(1, b"first"), &release).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].target, "/run/secrets/db");
        assert_eq!(std::fs::read(&one[0].host).unwrap(), b"first");
        let mode = std::fs::metadata(&one[0].host)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        let two = files.place(&sealed(2, b"second"), &release).unwrap();
        assert_ne!(one[0].host, two[0].host);
        files.prune("web", &two);
        assert!(!one[0].host.exists());
        assert_eq!(std::fs::read(&two[0].host).unwrap(), b"second");
        files.prune("web", &[]);
        assert!(!base.path().join("s").join("web").exists());
    }

    #[test]
    fn a_missing_secret_or_a_disk_directory_is_refused_with_the_reason() {
        let base = tmpfs_dir();
        let files = SecretFiles::new(base.path().join("s"), SecretsKey::generate());
        let release = release("[[secrets]]\nname = \"db\"\n");
        let missing = files.place(&SealedSecrets::new(), &release).unwrap_err();
        assert!(missing.contains("not delivered"), "{missing}");

        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        if !on_tmpfs(disk.path()) {
            let files = SecretFiles::new(disk.path().join("s"), SecretsKey::generate());
            let refused = files.place(&SealedSecrets::new(), &release).unwrap_err();
            assert!(refused.contains("not on a tmpfs"), "{refused}");
        }
    }
}
