//! What a self-update keeps on disk, under `<state dir>/upgrade/`: the copy of the
//! previous binary, the trial record, and the versions that failed here. The launcher
//! and the agent both read them, so their format only ever grows.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One build of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// Its version.
    pub version: String,
    /// SHA-256 of the binary, hex.
    pub sha256: String,
}

/// A swapped-in binary on trial: written before the swap, committed by the new binary
/// once it has proved itself, reverted by the launcher otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The build that ran before.
    pub from: Build,
    /// The build on trial.
    pub to: Build,
    /// The executable that was replaced.
    pub binary: PathBuf,
    /// When the launcher first started the new build, Unix seconds.
    #[serde(default)]
    pub started_at: Option<i64>,
    /// Set by the new build once it reconnected, verified the desired state and
    /// reported healthy.
    #[serde(default)]
    pub committed: bool,
}

/// A build that failed its trial here; it is not tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// The build.
    #[serde(flatten)]
    pub build: Build,
    /// What went wrong.
    pub reason: String,
    /// When, Unix seconds.
    pub at: i64,
}

/// The upgrade directory of one state directory.
#[derive(Debug, Clone)]
pub struct UpgradeDir {
    root: PathBuf,
}

/// Most failed builds remembered (the oldest are forgotten first).
const MAX_FAILED: usize = 32;

impl UpgradeDir {
    /// The upgrade directory under `state_dir`.
    pub fn new(state_dir: &Path) -> UpgradeDir {
        UpgradeDir {
            root: state_dir.join("upgrade"),
        }
    }

    /// Creates it (0700) if missing.
    pub fn create(&self) -> std::io::Result<()> {
        continuum_shared::files::create_private_dir(&self.root).map_err(std::io::Error::other)
    }

    /// The copy of the binary that ran before the one on trial.
    pub fn previous(&self) -> PathBuf {
        self.root.join("previous")
    }

    /// Where a download of the binary with `sha256` is staged.
    pub fn staged(&self, sha256: &str) -> PathBuf {
        self.root.join(format!("staged-{sha256}"))
    }

    fn trial_path(&self) -> PathBuf {
        self.root.join("trial.json")
    }

    fn failed_path(&self) -> PathBuf {
        self.root.join("failed.json")
    }

    /// The trial in progress. A damaged record reads as an error (it is written
    /// atomically, so only tampering damages it; the launcher then keeps what runs).
    pub fn trial(&self) -> Result<Option<Trial>, String> {
        match std::fs::read(self.trial_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{} is damaged: {e}", self.trial_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.trial_path().display())),
        }
    }

    /// Records the trial (durably).
    pub fn save_trial(&self, trial: &Trial) -> std::io::Result<()> {
        self.create()?;
        let bytes = serde_json::to_vec_pretty(trial).map_err(std::io::Error::other)?;
        continuum_shared::files::write_private(&self.trial_path(), &bytes)
            .map_err(std::io::Error::other)
    }

    /// Ends the trial: the record and the previous binary go.
    pub fn clear_trial(&self) {
        let _ = std::fs::remove_file(self.trial_path());
        let _ = std::fs::remove_file(self.previous());
    }

    /// The builds that failed here, oldest first.
    pub fn failed(&self) -> Vec<Failed> {
        std::fs::read(self.failed_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Whether the build with `sha256` failed here.
    pub fn has_failed(&self, sha256: &str) -> Option<Failed> {
        self.failed().into_iter().find(|f| f.build.sha256 == sha256)
    }

    /// Remembers a failed build.
    pub fn record_failure(&self, failed: Failed) -> std::io::Result<()> {
        self.create()?;
        let mut all = self.failed();
        all.retain(|f| f.build.sha256 != failed.build.sha256);
        all.push(failed);
        let excess = all.len().saturating_sub(MAX_FAILED);
        all.drain(..excess);
        let bytes = serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?;
        continuum_shared::files::write_private(&self.failed_path(), &bytes)
            .map_err(std::io::Error::other)
    }
}

pub use continuum_shared::files::sha256_file;

/// Copies `from` to `to` as an executable (0700), durably, replacing `to` in one
/// rename so that `to` is always either the old file or the new one whole.
pub fn install_binary(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_file_name(format!(
        ".{}.new.{}",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("agent"),
        std::process::id()
    ));
    let result = (|| {
        let mut source = std::fs::File::open(from)?;
        let mut target = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o700)
            .open(&tmp)?;
        std::io::copy(&mut source, &mut target)?;
        target.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        target.flush()?;
        target.sync_all()?;
        std::fs::rename(&tmp, to)?;
        if let Some(dir) = to.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(v: &str) -> Build {
        Build {
            version: v.into(),
            sha256: format!("{v:0>64}"),
        }
    }

    #[test]
    fn trial_records_round_trip_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let upgrade = UpgradeDir::new(dir.path());
        assert_eq!(upgrade.trial(), Ok(None));
        let trial = Trial {
            from: build("1"),
            to: build("2"),
            binary: "/usr/local/bin/continuum-agent".into(),
            started_at: None,
            committed: false,
        };
        upgrade.save_trial(&trial).unwrap();
        assert_eq!(upgrade.trial(), Ok(Some(trial)));
        let mode = std::fs::metadata(dir.path().join("upgrade/trial.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("upgrade/trial.json"), "{").unwrap();
        assert!(upgrade.trial().unwrap_err().contains("damaged"));
        upgrade.clear_trial();
        assert_eq!(upgrade.trial(), Ok(None));
    }

    #[test]
    fn failures_are_remembered_once_each_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let upgrade = UpgradeDir::new(dir.path());
        for i in 0..40 {
            let failed = Failed {
                build: build(&i.to_string()),
                reason: "exited".into(),
                at: i,
            };
            upgrade.record_failure(failed.clone()).unwrap();
            upgrade.record_failure(failed).unwrap();
        }
        let all = upgrade.failed();
        assert_eq!(all.len(), MAX_FAILED);
        assert_eq!(all[0].build.version, "8");
        assert!(upgrade.has_failed(&build("39").sha256).is_some());
        assert!(upgrade.has_failed(&build("3").sha256).is_none());
    }

    #[test]
    fn a_binary_is_replaced_whole_and_executable() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("new"), dir.path().join("bin"));
        std::fs::write(&from, b"#!/bin/sh\nexit 0\n").unwrap();
        std::fs::write(&to, b"old").unwrap();
        install_binary(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"#!/bin/sh\nexit 0\n");
        let mode = std::fs::metadata(&to).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(sha256_file(&to).unwrap(), sha256_file(&from).unwrap());
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 2);
    }
}
