//! The policies in force: every `*.toml` file of the policies directory, loaded at start
//! and reloaded when the directory changes. A file that does not parse or check is
//! rejected with its line and reason, and the last good version of that file stays in
//! force; a file that was never good contributes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use super::file::{self, Exclusion, PolicyFile, Rejection, RolloutPolicy, Window};

/// The policy file the control plane writes into a new policies directory.
pub const DEFAULT_FILE: &str = include_str!("../../../policies/default.toml");

/// Largest policy file read.
const MAX_FILE: u64 = 1 << 20;

/// What is in force now.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Each good file, by file name.
    pub files: BTreeMap<String, Arc<PolicyFile>>,
    /// Files rejected at the last load, with why.
    pub rejected: Vec<Rejection>,
}

impl Snapshot {
    /// The rollout policy called `name`.
    pub fn rollout(&self, name: &str) -> Option<&RolloutPolicy> {
        self.files.values().find_map(|f| f.rollouts.get(name))
    }

    /// Every rollout policy.
    pub fn rollouts(&self) -> impl Iterator<Item = &RolloutPolicy> {
        self.files.values().flat_map(|f| f.rollouts.values())
    }

    /// Every maintenance window.
    pub fn windows(&self) -> impl Iterator<Item = &Window> {
        self.files.values().flat_map(|f| f.windows.iter())
    }

    /// Every fleet-wide exclusion.
    pub fn excludes(&self) -> impl Iterator<Item = &Exclusion> {
        self.files.values().flat_map(|f| f.excludes.iter())
    }
}

/// The policies directory and what it holds.
pub struct Policies {
    dir: PathBuf,
    current: RwLock<Arc<Snapshot>>,
}

impl Policies {
    /// Loads `dir`, creating it with the default policy if it does not exist.
    pub fn open(dir: &Path) -> Result<Arc<Policies>, String> {
        if !dir.exists() {
            continuum_shared::files::create_private_dir(dir).map_err(|e| e.to_string())?;
            continuum_shared::files::write_private(
                &dir.join("default.toml"),
                DEFAULT_FILE.as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        }
        let policies = Arc::new(Policies {
            dir: dir.to_owned(),
            current: RwLock::new(Arc::new(Snapshot::default())),
        });
        policies.reload();
        Ok(policies)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What is in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Reads the directory again.
    pub fn reload(&self) {
        let previous = self.snapshot();
        let mut files = BTreeMap::new();
        let mut rejected = Vec::new();
        for (name, text) in self.read_dir(&mut rejected) {
            match file::parse(&name, &text) {
                Ok(parsed) => {
                    let clash = parsed.rollouts.keys().find_map(|r| {
                        files
                            .iter()
                            .find(|(_, f): &(&String, &Arc<PolicyFile>)| f.rollouts.contains_key(r))
                            .map(|(other, _)| (r.clone(), other.clone()))
                    });
                    match clash {
                        Some((rollout, other)) => {
                            let line = text
                                [..text.find(&format!("rollout.{rollout}")).unwrap_or(0)]
                                .matches('\n')
                                .count()
                                + 1;
                            rejected.push(Rejection {
                                file: name.clone(),
                                line,
                                reason: format!("rollout.{rollout} is already defined in {other}"),
                            });
                            if let Some(old) = previous.files.get(&name) {
                                files.insert(name, old.clone());
                            }
                        }
                        None => {
                            files.insert(name, Arc::new(parsed));
                        }
                    }
                }
                Err(rejection) => {
                    warn!(file = %rejection.file, line = rejection.line, reason = %rejection.reason, "policy file rejected; its previous version stays in force");
                    if let Some(old) = previous.files.get(&name) {
                        files.insert(name, old.clone());
                    }
                    rejected.push(rejection);
                }
            }
        }
        info!(
            files = files.len(),
            rejected = rejected.len(),
            "policies loaded"
        );
        let snapshot = Arc::new(Snapshot { files, rejected });
        match self.current.write() {
            Ok(mut current) => *current = snapshot,
            Err(e) => *e.into_inner() = snapshot,
        }
    }

    fn read_dir(&self, rejected: &mut Vec<Rejection>) -> Vec<(String, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            rejected.push(Rejection {
                file: self.dir.display().to_string(),
                line: 1,
                reason: "the policies directory cannot be read".into(),
            });
            return Vec::new();
        };
        let mut found: Vec<(String, String)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let fail = |reason: &str| Rejection {
                    file: name.clone(),
                    line: 1,
                    reason: reason.to_owned(),
                };
                match e.metadata() {
                    Ok(m) if m.len() > MAX_FILE => {
                        rejected.push(fail("larger than 1 MiB"));
                        None
                    }
                    _ => match std::fs::read_to_string(e.path()) {
                        Ok(text) => Some((name, text)),
                        Err(err) => {
                            rejected.push(fail(&format!("unreadable: {err}")));
                            None
                        }
                    },
                }
            })
            .collect();
        found.sort();
        found
    }

    /// Reloads whenever a policy file in the directory changes, for as long as the
    /// runtime runs.
    pub fn watch(self: &Arc<Self>) -> Result<(), String> {
        let mut changes = continuum_shared::watch::watch_dir(&self.dir, |p| {
            p.extension().is_some_and(|x| x == "toml")
        })?;
        let policies = self.clone();
        tokio::spawn(async move {
            while changes.next().await.is_some() {
                let policies = policies.clone();
                let _ = tokio::task::spawn_blocking(move || policies.reload()).await;
            }
        });
        Ok(())
    }
}
