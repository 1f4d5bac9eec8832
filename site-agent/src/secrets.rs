//! The site's secrets: its own age key (`secrets.key`, 0600, made on first start), and
//! the tmpfs directory where an opened secret waits as a read-only file for the
//! container that mounts it. A secret's value is never written to a disk at the site:
//! the directory must be on tmpfs or ramfs, or no secret is opened at all.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use continuum_shared::manifest::Release;

use crate::trust::VerifiedRelease;
use continuum_shared::secrets::{RegistryLogin, SealedSecrets, SecretsKey};

use crate::error::AgentError;

/// The key's file in the state directory.
pub const KEY_FILE: &str = "secrets.key";

const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// The site's secrets key, made on first use.
pub fn load_or_create(state_dir: &Path) -> Result<SecretsKey, AgentError> {
    SecretsKey::load_or_create(&state_dir.join(KEY_FILE))
        .map(|(key, _)| key)
        .map_err(|e| AgentError::State(e.to_string()))
}

/// Where opened secrets go by default: the service's runtime directory under systemd
/// (the installer's unit asks for one), else a directory of this state directory's own
/// in the user's runtime directory or `/run`, whichever is a tmpfs this process may
/// write, else in `/dev/shm`.
pub fn default_dir(state_dir: &Path) -> PathBuf {
    let usable = |dir: &Path| {
        dir.is_absolute()
            && on_tmpfs(dir)
            && rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
    };
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .filter(|d| usable(d))
    {
        return dir.join("secrets");
    }
    let base = [
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        Some(PathBuf::from("/run")),
    ]
    .into_iter()
    .flatten()
    .find(|d| usable(d))
    .unwrap_or_else(|| PathBuf::from("/dev/shm"));
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
        let secret = sealed.get(name).ok_or_else(|| not_delivered(name))?;
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

    /// Places each secret `target` mounts as a read-only file, at the version `target`
    /// was verified with: the desired one for the release the site should run, the one
    /// it ran for a last-known-good release it goes back to (whose file a trial leaves
    /// in place). A version already placed is not opened again.
    pub fn place(
        &self,
        sealed: &SealedSecrets,
        target: &VerifiedRelease,
    ) -> Result<Vec<Placed>, String> {
        let release = &target.release;
        if release.secrets.is_empty() {
            return Ok(Vec::new());
        }
        let dir = self.service_dir(&release.service)?;
        let mut placed = Vec::with_capacity(release.secrets.len());
        for file in &release.secrets {
            let version = *target
                .secrets
                .get(&file.name)
                .ok_or_else(|| not_delivered(&file.name))?;
            let host = dir.join(format!("{}.v{version}", file.name));
            if !host.is_file() {
                let (delivered, value) = self.open(sealed, &file.name)?;
                if delivered != version {
                    return Err(format!(
                        "secret {:?} version {version} is gone from this site (the desired state carries version {delivered})",
                        file.name
                    ));
                }
                write_read_only(&host, &value)
                    .map_err(|e| format!("placing secret {:?}: {e}", file.name))?;
            }
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

fn not_delivered(name: &str) -> String {
    format!(
        "secret {name:?} was not delivered to this site: it does not exist, or this site is outside its scope (see `continuum secret list`)"
    )
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

    /// A verified release of `web` mounting secret `db`, at `version` if delivered.
    fn verified(version: Option<u64>) -> VerifiedRelease {
        let digest = "0".repeat(64);
        let text = format!(
            "[service]\nname = \"web\"\nversion = \"1\"\n[container]\nimage = \"web@sha256:{digest}\"\n[health]\ntcp = \"127.0.0.1:80\"\n[[secrets]]\nname = \"db\"\n"
        );
        VerifiedRelease {
            target: "releases/web/1.toml".into(),
            sha256: "0".repeat(64),
            release: manifest::parse("web.toml", &text, ImageSource::Registry).unwrap(),
            archive: None,
            secrets: version.map(|v| ("db".to_owned(), v)).into_iter().collect(),
        }
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
    fn placed_secrets_are_read_only_files_kept_for_going_back_until_pruned() {
        let base = tmpfs_dir();
        let key = SecretsKey::generate();
        let recipient = key.recipient();
        let files = SecretFiles::new(base.path().join("s"), key);
        let sealed = |version, value: &[u8]| {
            SealedSecrets::from([(
                "db".to_owned(),
                Sealed {
                    version,
                    sealed: seal(&recipient, value).unwrap(),
                },
            )])
        };
        let one = files
            .place(&sealed(1, b"first"), &verified(Some(1)))
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].target, "/run/secrets/db");
        assert_eq!(std::fs::read(&one[0].host).unwrap(), b"first");
        let mode = std::fs::metadata(&one[0].host)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        let two = files
            .place(&sealed(2, b"second"), &verified(Some(2)))
            .unwrap();
        assert_ne!(one[0].host, two[0].host);
        // Going back to the release that ran with version 1 while the desired state
        // carries 2: the file of 1 is still there.
        let back = files
            .place(&sealed(2, b"second"), &verified(Some(1)))
            .unwrap();
        assert_eq!(std::fs::read(&back[0].host).unwrap(), b"first");
        files.prune("web", &two);
        assert!(!one[0].host.exists());
        assert_eq!(std::fs::read(&two[0].host).unwrap(), b"second");
        let gone = files
            .place(&sealed(2, b"second"), &verified(Some(1)))
            .unwrap_err();
        assert!(gone.contains("version 1 is gone"), "{gone}");
        files.prune("web", &[]);
        assert!(!base.path().join("s").join("web").exists());
    }

    #[test]
    fn a_missing_secret_or_a_disk_directory_is_refused_with_the_reason() {
        let base = tmpfs_dir();
        let files = SecretFiles::new(base.path().join("s"), SecretsKey::generate());
        let missing = files
            .place(&SealedSecrets::new(), &verified(None))
            .unwrap_err();
        assert!(missing.contains("not delivered"), "{missing}");

        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        if !on_tmpfs(disk.path()) {
            let files = SecretFiles::new(disk.path().join("s"), SecretsKey::generate());
            let refused = files
                .place(&SealedSecrets::new(), &verified(Some(1)))
                .unwrap_err();
            assert!(refused.contains("not on a tmpfs"), "{refused}");
        }
    }
}
