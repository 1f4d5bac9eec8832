//! One step of a rollout: a pure function of the rollout, what each site reports now,
//! and the time. It moves sites along (updating → healthy → done, or failed), starts
//! the next sites of the current wave up to `max_parallel` (inside their windows, not
//! while they are locked), waits out the bake time between waves, and spends the
//! failure budget. It returns the desired-state changes for the controller to make.

use std::collections::BTreeMap;

use continuum_shared::protocol::{HealthState, ServicePhase, ServiceReport};

use super::{Rollout, RolloutState, SiteProgress};
use crate::policy::file::OnFailure;

/// What a step knows about one site now.
#[derive(Debug, Clone, Default)]
pub struct SiteNow {
    /// Whether it is connected.
    pub online: bool,
    /// What it last reported about the rollout's service.
    pub report: Option<ServiceReport>,
    /// Whether it may be updated now (no window applies, or one is open).
    pub window_open: bool,
    /// Why updates are deferred at the site, if its admin locked it.
    pub lock: Option<String>,
    /// Whether the site verified its current desired state: until then, a service it
    /// does not report may simply not have reached it.
    pub caught_up: bool,
}

/// A change the controller must make: the site's desired release of the service
/// (`None`: the service is taken off the site).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRelease {
    /// The site.
    pub site: String,
    /// The release it should run.
    pub version: Option<String>,
}

/// Steps `rollout` at `now` (Unix seconds); returns the desired-state changes to make.
pub fn step(rollout: &mut Rollout, fleet: &BTreeMap<String, SiteNow>, now: i64) -> Vec<SetRelease> {
    let mut actions = Vec::new();
    match rollout.state {
        RolloutState::Running | RolloutState::Paused(_) => {
            track(rollout, fleet, now, &mut actions);
        }
        RolloutState::RollingBack(ref reason) => {
            let reason = reason.clone();
            revert(rollout, &mut actions);
            rollout.state = RolloutState::RolledBack(reason);
            rollout.updated_at = now;
            return actions;
        }
        _ => return actions,
    }
    let failures = rollout.failures();
    if rollout.state == RolloutState::Running && failures > rollout.gates.failure_budget as usize {
        let reason = format!(
            "{failures} site(s) failed, more than the failure budget of {}",
            rollout.gates.failure_budget
        );
        rollout.updated_at = now;
        match rollout.gates.on_failure {
            OnFailure::Pause => rollout.state = RolloutState::Paused(reason),
            OnFailure::Rollback => {
                revert(rollout, &mut actions);
                rollout.state = RolloutState::RolledBack(reason);
            }
        }
        return actions;
    }
    if rollout.state == RolloutState::Running {
        advance(rollout, fleet, now, &mut actions);
    }
    actions
}

/// Moves updating and healthy sites along by what they report.
fn track(
    rollout: &mut Rollout,
    fleet: &BTreeMap<String, SiteNow>,
    now: i64,
    actions: &mut Vec<SetRelease>,
) {
    let version = rollout.version.clone();
    let removal = rollout.removal;
    let secret = rollout
        .secret_target()
        .map(|(name, version)| (name.to_owned(), version));
    // A report speaks of the new secret once the site's desired state carries it.
    let on_new_secret = |r: &ServiceReport| {
        secret
            .as_ref()
            .is_some_and(|(name, version)| r.secrets.get(name) == Some(version))
    };
    let healthy_for = rollout.gates.healthy_for_secs as i64;
    for (site, progress) in rollout.sites.iter_mut() {
        let report = fleet.get(site).and_then(|s| s.report.as_ref());
        // A removal is done once the site, having verified the desired state without
        // the service, reports it gone (the control plane forgets a service reported
        // removed).
        let caught_up = fleet.get(site).is_some_and(|s| s.caught_up);
        let runs_healthy = match (&secret, removal) {
            (Some(_), _) => report.is_some_and(|r| {
                on_new_secret(r)
                    && r.failed.is_none()
                    && r.phase == ServicePhase::Running
                    && r.health == HealthState::Healthy
            }),
            (None, true) => caught_up && report.is_none_or(|r| r.phase == ServicePhase::Removed),
            (None, false) => report.is_some_and(|r| {
                r.running.as_deref() == Some(&version)
                    && r.phase == ServicePhase::Running
                    && r.health == HealthState::Healthy
            }),
        };
        let failed = report.filter(|r| match (&secret, removal) {
            // The release did not come up with the new value.
            (Some(_), _) => on_new_secret(r) && r.failed.is_some(),
            // The agent could not take it off (its containers would not go).
            (None, true) => r.desired.is_none() && r.phase == ServicePhase::Failed,
            (None, false) => r.failed.as_deref() == Some(&version),
        });
        let next = match progress {
            SiteProgress::Updating { .. } | SiteProgress::Healthy { .. } if failed.is_some() => {
                let r = failed.map(|r| {
                    r.failure
                        .clone()
                        .unwrap_or_else(|| format!("{:?}", r.phase))
                });
                actions.push(SetRelease {
                    site: site.clone(),
                    version: rollout.previous.get(site).cloned().flatten(),
                });
                Some(SiteProgress::Failed {
                    reason: r.unwrap_or_default(),
                })
            }
            SiteProgress::Updating { .. } if runs_healthy => {
                Some(SiteProgress::Healthy { since: now })
            }
            // Healthy, then not: it must prove itself again from the start.
            SiteProgress::Healthy { .. } if !runs_healthy => {
                Some(SiteProgress::Updating { since: now })
            }
            SiteProgress::Healthy { since } if now - *since >= healthy_for => {
                Some(SiteProgress::Done)
            }
            _ => None,
        };
        if let Some(next) = next {
            *progress = next;
            rollout.updated_at = now;
        }
    }
}

/// Starts the current wave's next sites, and moves to the next wave once this one is
/// done and baked.
fn advance(
    rollout: &mut Rollout,
    fleet: &BTreeMap<String, SiteNow>,
    now: i64,
    actions: &mut Vec<SetRelease>,
) {
    loop {
        let Some(wave) = rollout.waves.get(rollout.wave) else {
            rollout.state = RolloutState::Completed;
            rollout.updated_at = now;
            return;
        };
        let mut in_flight = rollout
            .sites
            .values()
            .filter(|p| {
                matches!(
                    p,
                    SiteProgress::Updating { .. } | SiteProgress::Healthy { .. }
                )
            })
            .count();
        for site in wave.sites.clone() {
            if in_flight >= rollout.gates.max_parallel as usize {
                break;
            }
            let Some(progress) = rollout.sites.get_mut(&site) else {
                continue;
            };
            if !matches!(
                progress,
                SiteProgress::Pending | SiteProgress::Waiting { .. }
            ) {
                continue;
            }
            let state = fleet.get(&site).cloned().unwrap_or_default();
            let waiting = if let Some(lock) = &state.lock {
                Some(format!("locked at the site: {lock}"))
            } else if !state.window_open {
                Some("outside its maintenance window".to_owned())
            } else if !state.online {
                Some("offline".to_owned())
            } else {
                None
            };
            match waiting {
                Some(reason) => {
                    if *progress
                        != (SiteProgress::Waiting {
                            reason: reason.clone(),
                        })
                    {
                        *progress = SiteProgress::Waiting { reason };
                        rollout.updated_at = now;
                    }
                }
                None => {
                    *progress = SiteProgress::Updating { since: now };
                    rollout.updated_at = now;
                    in_flight += 1;
                    actions.push(SetRelease {
                        site: site.clone(),
                        version: rollout.target(),
                    });
                }
            }
        }
        let last = rollout.wave + 1 == rollout.waves.len();
        let wave = &mut rollout.waves[rollout.wave];
        let settled = wave.sites.iter().all(|s| {
            matches!(
                rollout.sites.get(s),
                Some(SiteProgress::Done | SiteProgress::Failed { .. })
            )
        });
        if !settled {
            return;
        }
        if !wave.sites.is_empty() && !last {
            let since = *wave.baking_since.get_or_insert(now);
            if now - since < rollout.gates.bake_secs as i64 {
                return;
            }
        }
        rollout.wave += 1;
        rollout.updated_at = now;
    }
}

/// Puts every site the rollout touched back on its previous release.
fn revert(rollout: &mut Rollout, actions: &mut Vec<SetRelease>) {
    for (site, progress) in rollout.sites.iter_mut() {
        if matches!(
            progress,
            SiteProgress::Updating { .. } | SiteProgress::Healthy { .. } | SiteProgress::Done
        ) {
            actions.push(SetRelease {
                site: site.clone(),
                version: rollout.previous.get(site).cloned().flatten(),
            });
            *progress = SiteProgress::Reverted;
        }
    }
}
