//! What the agent must remember about each service across restarts, in its sled store:
//! the last-known-good release, a release on trial and its deadline, and a release that
//! failed here (not retried until the desired state changes).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::trust::VerifiedRelease;

/// sled's page cache for the agent's store; its default (1 GiB) is far beyond an agent.
const CACHE_BYTES: u64 = 4 << 20;

/// A release on trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// What is tried ([`VerifiedRelease::key`]: the manifest hash, with the versions of
    /// its secrets).
    #[serde(rename = "sha256")]
    pub key: String,
    /// Its version.
    pub version: String,
    /// It must be healthy by then (Unix seconds) or the site goes back.
    pub deadline: i64,
}

/// A release that failed at this site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// What failed ([`VerifiedRelease::key`]).
    #[serde(rename = "sha256")]
    pub key: String,
    /// Its version.
    pub version: String,
    /// Why, with the container's last log lines.
    pub reason: String,
}

/// One service's memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The last release that proved healthy here.
    pub last_known_good: Option<VerifiedRelease>,
    /// The release being tried, if any.
    pub trial: Option<Trial>,
    /// The release that failed, if any.
    pub failed: Option<Failed>,
}

/// The agent's store of service records.
pub struct Ledger {
    db: sled::Db,
    services: sled::Tree,
    images: sled::Tree,
    sizes: sled::Tree,
}

impl Ledger {
    /// Opens (or creates) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Ledger, AgentError> {
        let path = state_dir.join("agent.sled");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| AgentError::State(format!("{}: {e}", path.display())))?;
        let services = db
            .open_tree("services")
            .map_err(|e| AgentError::State(e.to_string()))?;
        let images = db
            .open_tree("images")
            .map_err(|e| AgentError::State(e.to_string()))?;
        let sizes = db
            .open_tree("image-sizes")
            .map_err(|e| AgentError::State(e.to_string()))?;
        Ok(Ledger {
            db,
            services,
            images,
            sizes,
        })
    }

    /// The record of `service` (empty if none).
    pub fn get(&self, service: &str) -> Result<ServiceRecord, AgentError> {
        match self.services.get(service).map_err(store_error)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AgentError::State(format!("the record of {service} is damaged: {e}"))),
            None => Ok(ServiceRecord::default()),
        }
    }

    /// Stores the record of `service`, durably.
    pub fn put(&self, service: &str, record: &ServiceRecord) -> Result<(), AgentError> {
        let bytes = serde_json::to_vec(record).map_err(|e| AgentError::State(e.to_string()))?;
        self.services.insert(service, bytes).map_err(store_error)?;
        self.db.flush().map_err(store_error)?;
        Ok(())
    }

    /// Forgets `service`.
    pub fn remove(&self, service: &str) -> Result<(), AgentError> {
        self.services.remove(service).map_err(store_error)?;
        self.db.flush().map_err(store_error)?;
        Ok(())
    }

    /// Every service with a record.
    pub fn services(&self) -> Vec<String> {
        self.services
            .iter()
            .keys()
            .filter_map(Result::ok)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }
}

impl Ledger {
    /// Remembers that this agent brought `image` onto the engine (so it may remove it).
    pub fn track_image(&self, image: &str) -> Result<(), AgentError> {
        if self.images.contains_key(image).map_err(store_error)? {
            return Ok(());
        }
        self.images.insert(image, &[]).map_err(store_error)?;
        self.db.flush().map_err(store_error)?;
        Ok(())
    }

    /// Remembers how large a pulled image is, for the site's disk budget (kept after the
    /// image is removed, so a refused image is not pulled again to learn its size).
    pub fn record_size(&self, image: &str, bytes: u64) -> Result<(), AgentError> {
        self.sizes
            .insert(image, &bytes.to_le_bytes())
            .map_err(store_error)?;
        Ok(())
    }

    /// The recorded size of a pulled image.
    pub fn size_of(&self, image: &str) -> Option<u64> {
        let bytes = self.sizes.get(image).ok()??;
        Some(u64::from_le_bytes(bytes.as_ref().try_into().ok()?))
    }

    /// Forgets an image this agent brought.
    pub fn untrack_image(&self, image: &str) -> Result<(), AgentError> {
        self.images.remove(image).map_err(store_error)?;
        Ok(())
    }

    /// Every image this agent brought and has not removed.
    pub fn tracked_images(&self) -> Vec<String> {
        self.images
            .iter()
            .keys()
            .filter_map(Result::ok)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }
}

fn store_error(e: sled::Error) -> AgentError {
    AgentError::State(format!("the agent's store: {e}"))
}
