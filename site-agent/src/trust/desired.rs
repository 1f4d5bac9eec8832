//! The desired state in force at this site: the last one that verified, stored in
//! `<state dir>/desired.json` (0600) and replaced only by another that verified.

use std::collections::BTreeMap;
use std::path::Path;

use continuum_shared::manifest::{ImageArchive, Release};
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

const FILE: &str = "desired.json";

/// One verified release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifiedRelease {
    /// Its image-repository target name.
    pub target: String,
    /// SHA-256 of its manifest, as both repositories list it.
    pub sha256: String,
    /// The manifest.
    pub release: Release,
    /// The image archive shipped with it, when it is not pulled from a registry.
    #[serde(default)]
    pub archive: Option<ImageArchive>,
    /// The versions of the secrets it uses, as the desired state sealed them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, u64>,
}

impl VerifiedRelease {
    /// What a deploy of it is: the manifest, with the versions of its secrets. A new
    /// version of a secret is a new deploy, tried and kept or undone like a release.
    pub fn key(&self) -> String {
        let mut key = self.sha256.clone();
        for (name, version) in &self.secrets {
            key.push_str(&format!("+{name}@{version}"));
        }
        key
    }
}

/// The agent binary the director asks this site to run, as the image repository
/// vouches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBinary {
    /// Its image-repository target name.
    pub target: String,
    /// The agent version.
    pub version: String,
    /// SHA-256 of the binary, hex.
    pub sha256: String,
    /// Its length in bytes.
    pub length: u64,
}

/// A verified desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// The director's generation (its targets version).
    pub generation: u64,
    /// What this site should run.
    pub releases: Vec<VerifiedRelease>,
    /// The agent build this site should run, if the director names one.
    #[serde(default)]
    pub agent: Option<AgentBinary>,
    /// The secrets the director sealed to this site's own key, by name.
    #[serde(default)]
    pub secrets: continuum_shared::secrets::SealedSecrets,
    /// When it verified, Unix seconds.
    pub verified_at: i64,
}

impl DesiredState {
    /// The state in force, if any.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, AgentError> {
        let path = state_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| AgentError::State(format!("{} is damaged: {e}", path.display()))),
            Err(_) => Ok(None),
        }
    }

    /// Makes this the state in force (atomically).
    pub fn save(&self, state_dir: &Path) -> Result<(), AgentError> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| AgentError::State(e.to_string()))?;
        continuum_shared::files::write_private(&state_dir.join(FILE), &bytes)?;
        Ok(())
    }
}
