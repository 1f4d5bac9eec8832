//! Rollouts: moving one service to one release across every eligible site, in waves,
//! gated by the health the sites report, inside their maintenance windows, and back by
//! itself when too many sites fail.
//!
//! A rollout is planned once ([`plan`]): the eligible sites (the release's placement
//! holds and no fleet-wide exclusion applies) are split into the policy's waves. The
//! [`controller`] then steps every active rollout ([`step`], a pure function of the
//! rollout, what the sites report and the time) and applies what the step decides
//! (a site's desired release). Rollouts are stored in sled after every change, so a
//! control plane restarted mid-rollout continues where it was.

pub mod controller;
pub mod plan;
pub mod removal;
pub mod secret;
pub mod step;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::policy::file::OnFailure;

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum RolloutState {
    /// Moving through its waves.
    Running,
    /// Stopped by an operator or by a spent failure budget; `resume` continues.
    Paused(String),
    /// Moving every site it updated back to the release it had.
    RollingBack(String),
    /// Every wave done.
    Completed,
    /// Every site it updated is back on its previous release.
    RolledBack(String),
    /// Stopped by an operator; sites keep what they run.
    Cancelled,
    /// A newer rollout of the same service took over.
    Superseded(String),
}

impl RolloutState {
    /// Whether the controller still works on it.
    pub fn active(&self) -> bool {
        matches!(
            self,
            RolloutState::Running | RolloutState::Paused(_) | RolloutState::RollingBack(_)
        )
    }
}

/// One site's progress in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum SiteProgress {
    /// Its wave has not reached it.
    Pending,
    /// Its turn came but it may not update now.
    Waiting {
        /// Why (outside its maintenance window, locked, offline).
        reason: String,
    },
    /// Told to run the new release, since then (Unix seconds).
    Updating {
        /// When.
        since: i64,
    },
    /// Running the new release and healthy, since then.
    Healthy {
        /// When it became healthy.
        since: i64,
    },
    /// Healthy for long enough.
    Done,
    /// It did not run the new release healthily.
    Failed {
        /// What it reported.
        reason: String,
    },
    /// Put back on its previous release.
    Reverted,
}

/// One wave as planned and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WaveRun {
    /// Its name.
    pub name: String,
    /// Its sites, in the order they update.
    pub sites: Vec<String>,
    /// When its sites were all done and its bake time began (Unix seconds).
    pub baking_since: Option<i64>,
}

/// The policy values a rollout runs by, fixed when it starts (a later edit of the
/// policy file does not change a rollout under way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Gates {
    /// The policy's name.
    pub policy: String,
    /// Bake time after each wave, seconds.
    pub bake_secs: u64,
    /// How long a site must stay healthy, seconds.
    pub healthy_for_secs: u64,
    /// Most sites updating at once.
    pub max_parallel: u32,
    /// Failed sites tolerated.
    pub failure_budget: u32,
    /// What happens when the budget is spent.
    #[schema(value_type = String)]
    pub on_failure: OnFailure,
}

/// A rollout, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    /// Its id (`r` and a sortable number).
    pub id: String,
    /// The service.
    pub service: String,
    /// The release it moves to (empty when it removes the service).
    pub version: String,
    /// Whether it takes the service off its sites instead of moving them to a release.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removal: bool,
    /// Of a rollout of a changed secret: the secret's name; `version` is then the
    /// secret's version, and `previous` each site's version before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Gates and budget.
    pub gates: Gates,
    /// The waves.
    pub waves: Vec<WaveRun>,
    /// Sites not included, with why.
    pub excluded: BTreeMap<String, String>,
    /// Each included site's progress.
    pub sites: BTreeMap<String, SiteProgress>,
    /// The release each included site had before (none: the service was not there).
    pub previous: BTreeMap<String, Option<String>>,
    /// Where it stands.
    pub state: RolloutState,
    /// The wave under way (index into `waves`).
    pub wave: usize,
    /// Who started it, and when (RFC 3339).
    pub started_by: String,
    /// When it started.
    pub started_at: String,
    /// When it last changed (Unix seconds).
    pub updated_at: i64,
}

impl Rollout {
    /// What each of its sites is told: the release, or `None` for a removal.
    pub fn target(&self) -> Option<String> {
        (!self.removal).then(|| self.version.clone())
    }

    /// What it does, for people: `web 2.0`, `removal of web`, or `secret db v3 for web`.
    pub fn describe(&self) -> String {
        match (&self.secret, self.removal) {
            (Some(name), _) => format!("secret {name} v{} for {}", self.version, self.service),
            (None, true) => format!("removal of {}", self.service),
            (None, false) => format!("{} {}", self.service, self.version),
        }
    }

    /// The secret and version a rollout of a changed secret moves its sites to.
    pub fn secret_target(&self) -> Option<(&str, u64)> {
        let name = self.secret.as_deref()?;
        self.version.parse().ok().map(|version| (name, version))
    }

    /// How many of its sites failed.
    pub fn failures(&self) -> usize {
        self.sites
            .values()
            .filter(|p| matches!(p, SiteProgress::Failed { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests;
