//! Yanking a release: it is withdrawn for good. No rollout or assignment may name it
//! again, a rollout of it under way stops, and the sites whose desired state names it
//! move to the most recently published release of the service that is not yanked, by a
//! rollout of just those sites under that release's own policy (waves, gates, cancel).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::StoreError;
use crate::model::{DesiredRecord, ReleaseRecord, Yank};
use crate::plane::{ControlPlane, rfc3339};
use crate::releases;
use crate::rollout::controller::{self, Command};
use crate::store::{StoreExt, Tree};

/// Longest reason kept.
pub const MAX_REASON: usize = 500;

/// Why a release is yanked (the API's request body).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct YankRequest {
    /// Shown wherever the release appears (one line).
    pub reason: String,
}

/// What a yank did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct YankOutcome {
    /// The release, now yanked.
    pub release: ReleaseRecord,
    /// The sites whose desired state named it.
    pub sites: Vec<String>,
    /// The release they move to, if there is one that is not yanked.
    pub moving_to: Option<String>,
    /// The rollout that moves them.
    pub rollout: Option<String>,
    /// Rollouts of the yanked release that were stopped.
    pub stopped: Vec<String>,
    /// What is left for an operator to do, if anything.
    pub note: Option<String>,
}

/// Why a yank was refused.
#[derive(Debug, thiserror::Error)]
pub enum YankError {
    /// No such release.
    #[error("release {0} is not published; see `continuum releases`")]
    NotFound(String),
    /// Yanked before.
    #[error("{0}")]
    Already(String),
    /// The reason is missing or too long.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Yanks `service` `version` for `reason`, and moves the sites that run it.
pub async fn yank(
    cp: &ControlPlane,
    service: &str,
    version: &str,
    reason: &str,
    actor: &str,
) -> Result<YankOutcome, YankError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(YankError::Invalid(
            "--reason is required: it is shown wherever the release appears".into(),
        ));
    }
    if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(YankError::Invalid(format!(
            "the reason must be one line of at most {MAX_REASON} characters"
        )));
    }
    let release = {
        let _record = releases::RECORD_CHANGES
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut release = releases::get(cp, service, version)?
            .ok_or_else(|| YankError::NotFound(format!("{service} {version}")))?;
        if let Some(refusal) = release.refusal() {
            return Err(YankError::Already(refusal));
        }
        release.yanked = Some(Yank {
            reason: reason.to_owned(),
            by: actor.to_owned(),
            at: rfc3339(continuum_shared::unix_now()),
        });
        let key = format!("{service}/{version}");
        cp.store
            .put_json(Tree::Releases, key.as_bytes(), &release)?;
        cp.store.flush()?;
        release
    };
    tracing::warn!(service, version, reason, by = actor, "release yanked");
    // From here on the yank stands whatever happens: what could not be done is said in
    // the answer, for an operator to finish by hand.
    controller::settle().await;
    let mut outcome = YankOutcome {
        release,
        sites: Vec::new(),
        moving_to: None,
        rollout: None,
        stopped: Vec::new(),
        note: None,
    };
    let mut notes = Vec::new();
    let mut others = Vec::new();
    match controller::list(cp) {
        Ok(all) => {
            for rollout in all
                .into_iter()
                .filter(|r| r.service == service && r.state.active())
            {
                if rollout.version != version || rollout.secret.is_some() {
                    others.push(rollout);
                    continue;
                }
                match controller::command(cp, &rollout.id, Command::Cancel).await {
                    Ok(_) => outcome.stopped.push(rollout.id),
                    Err(e) => notes.push(format!("rollout {} was not cancelled: {e}", rollout.id)),
                }
            }
        }
        Err(e) => notes.push(format!("the rollouts could not be read: {e}")),
    }
    let sites: BTreeSet<String> = match cp.store.list_json::<DesiredRecord>(Tree::Desired) {
        Ok(all) => all
            .into_iter()
            .filter(|d| {
                d.releases
                    .get(service)
                    .is_some_and(|r| r.version == version)
            })
            .map(|d| d.site)
            .collect(),
        Err(e) => {
            notes.push(format!("the sites running it could not be listed: {e}"));
            BTreeSet::new()
        }
    };
    outcome.sites = sites.iter().cloned().collect();
    let moving_to = releases::list(cp)
        .ok()
        .and_then(|all| replacement(&all, service));
    outcome.moving_to = moving_to.as_ref().map(|r| r.version.clone());
    let actor = format!("yank of {service} {version} by {actor}");
    match (&moving_to, others.first()) {
        _ if sites.is_empty() => {}
        (None, _) => notes.push(format!(
            "no release of {service} is left that is not yanked: the sites keep running {version} until one is published and rolled out"
        )),
        (Some(to), Some(other)) => notes.push(format!(
            "rollout {} ({}) is under way and was left alone; once it is done, roll out {} to move the sites on {version}",
            other.id, other.describe(), to.version
        )),
        (Some(to), None) => {
            match controller::start(cp, service, &to.version, None, Some(&sites), &actor).await {
                Ok(rollout) => {
                    let left: Vec<&String> = sites
                        .iter()
                        .filter(|s| !rollout.sites.contains_key(*s))
                        .collect();
                    if !left.is_empty() {
                        notes.push(format!(
                            "{} site(s) may not run {} and keep {version} (see the rollout's excluded sites)",
                            left.len(),
                            to.version
                        ));
                    }
                    outcome.rollout = Some(rollout.id);
                }
                Err(e) => notes.push(format!(
                    "the sites running it could not be moved to {}: {e}; start a rollout by hand",
                    to.version
                )),
            }
        }
    }
    if !notes.is_empty() {
        outcome.note = Some(notes.join("; "));
    }
    Ok(outcome)
}

/// The most recently published release of `service` that is not yanked; of releases
/// published in the same second, the highest version.
fn replacement(all: &[ReleaseRecord], service: &str) -> Option<ReleaseRecord> {
    all.iter()
        .filter(|r| r.service == service && r.yanked.is_none())
        .max_by(|a, b| {
            a.published_at
                .cmp(&b.published_at)
                .then_with(|| version_order(&a.version, &b.version))
        })
        .cloned()
}

/// Orders versions part by part, numbers as numbers (`1.10` after `1.9`).
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<(u64, String)> {
        v.split(['.', '-', '+'])
            .map(|p| (p.parse().unwrap_or(0), p.to_owned()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: &str, at: &str, yanked: bool) -> ReleaseRecord {
        ReleaseRecord {
            service: "web".into(),
            version: version.into(),
            target: format!("web-{version}.toml"),
            sha256: String::new(),
            length: 0,
            image: String::new(),
            published_at: at.into(),
            published_by: "alice".into(),
            signed_by: "control-plane".into(),
            archive: None,
            agent_binaries: Default::default(),
            yanked: yanked.then(|| Yank {
                reason: "broken".into(),
                by: "bob".into(),
                at: at.into(),
            }),
            secrets: Vec::new(),
        }
    }

    #[test]
    fn the_replacement_is_the_newest_release_not_yanked() {
        let all = [
            record("1.0", "2026-01-01T00:00:00Z", false),
            record("1.1", "2026-02-01T00:00:00Z", false),
            record("2.0", "2026-03-01T00:00:00Z", true),
        ];
        assert_eq!(replacement(&all, "web").unwrap().version, "1.1");
        assert!(replacement(&all[2..], "web").is_none());
        assert!(replacement(&all, "db").is_none());
        let refusal = all[2].refusal().unwrap();
        assert!(
            refusal.contains("yanked by bob") && refusal.contains("broken"),
            "{refusal}"
        );
        assert!(all[0].refusal().is_none());
        // Published in the same second: the highest version.
        let same = [
            record("1.10.0", "2026-01-01T00:00:00Z", false),
            record("1.9.0", "2026-01-01T00:00:00Z", false),
        ];
        assert_eq!(replacement(&same, "web").unwrap().version, "1.10.0");
    }
}
