//! Starting rollouts, operators' commands on them, and the loop that steps every active
//! rollout each second and makes the desired-state changes the step decides. Every
//! change is stored before the next step, so a restarted control plane continues where
//! it stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use continuum_shared::unix_now;
use tracing::{info, warn};

use super::plan::{Candidate, Plan, plan};
use super::step::{SiteNow, step};
use super::{Gates, Rollout, RolloutState, SiteProgress};
use crate::error::StoreError;
use crate::plane::{ControlPlane, rfc3339};
use crate::policy::selector::Selector;
use crate::store::{StoreExt, Tree};
use crate::{desired, releases, sites};

/// One change at a time: the loop's step and operators' commands never interleave.
static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Wakes the loop at once when a rollout starts or an operator acts on one.
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// How often active rollouts are stepped.
const TICK: Duration = Duration::from_secs(1);

/// Why a rollout command failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// Bad request: no such release, policy or rollout, or a command that does not apply.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an operator can do to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop starting new sites.
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Put every site it updated back on its previous release.
    Rollback,
    /// Stop for good; sites keep what they run.
    Cancel,
}

/// Plans a rollout of `service` `version` by `policy` (the release's own when absent).
pub fn dry_run(
    cp: &ControlPlane,
    service: &str,
    version: &str,
    policy: Option<&str>,
    only: Option<&BTreeSet<String>>,
) -> Result<(Gates, Plan), RolloutError> {
    let release = releases::get(cp, service, version)?.ok_or_else(|| {
        RolloutError::Invalid(format!(
            "release {service} {version} is not published; see `continuum releases`"
        ))
    })?;
    if let Some(refusal) = release.refusal() {
        return Err(RolloutError::Invalid(format!(
            "{refusal}; it cannot be rolled out"
        )));
    }
    let agent = service == continuum_shared::manifest::AGENT_SERVICE;
    // Agent releases have no manifest: the default policy, and no placement of their own.
    let (own_policy, require_text) = if agent {
        ("default".to_owned(), None)
    } else {
        let manifest = read_manifest(cp, &release)?;
        (manifest.placement.rollout, manifest.placement.require)
    };
    let policy_name = policy.unwrap_or(&own_policy).to_owned();
    let snapshot = cp.policies.snapshot();
    let policy = snapshot.rollout(&policy_name).ok_or_else(|| {
        RolloutError::Invalid(format!(
            "no rollout policy named {policy_name:?} is in force; see `continuum policies`"
        ))
    })?;
    let require = match &require_text {
        Some(text) => Some(Selector::compile(text).map_err(|e| {
            RolloutError::Invalid(format!(
                "the release's placement.require: the expression {e}"
            ))
        })?),
        None => None,
    };
    let all = sites::list(cp)?;
    let outside = super::secret::unfit(cp, &release.secrets, &all)?;
    let mut unfit = std::collections::BTreeMap::new();
    let candidates: Vec<Candidate> = all
        .into_iter()
        .filter(|s| !outside.contains_key(&s.name))
        .filter(|s| only.is_none_or(|only| only.contains(&s.name)))
        .filter(|s| {
            if s.revoked_at.is_none() && s.decommission.is_some() {
                unfit.insert(s.name.clone(), "being decommissioned".to_owned());
                return false;
            }
            if !agent || s.revoked_at.is_some() {
                return true;
            }
            match crate::agent_releases::binary_for(&release, &s.labels()) {
                Ok(_) => true,
                Err(why) => {
                    unfit.insert(s.name.clone(), why);
                    false
                }
            }
        })
        .map(|s| Candidate {
            labels: s.labels(),
            revoked: s.revoked_at.is_some(),
            name: s.name,
        })
        .collect();
    let mut planned = plan(
        service,
        version,
        &candidates,
        require.as_ref(),
        &snapshot.excludes().collect::<Vec<_>>(),
        policy,
    );
    planned.excluded.extend(unfit);
    // Sites a secret cannot reach, unless excluded for another reason already.
    for (site, why) in outside {
        if only.is_none_or(|only| only.contains(&site)) {
            planned.excluded.entry(site).or_insert(why);
        }
    }
    Ok((gates_of(policy), planned))
}

/// The gates a rollout runs by, from its policy.
pub fn gates_of(policy: &crate::policy::file::RolloutPolicy) -> Gates {
    Gates {
        policy: policy.name.clone(),
        bake_secs: policy.bake.as_secs(),
        healthy_for_secs: policy.healthy_for.as_secs(),
        max_parallel: policy.max_parallel,
        failure_budget: policy.failure_budget,
        on_failure: policy.on_failure,
    }
}

pub(super) fn read_manifest(
    cp: &ControlPlane,
    release: &crate::model::ReleaseRecord,
) -> Result<continuum_shared::manifest::Release, RolloutError> {
    let bytes = cp
        .image
        .blob(&release.sha256)
        .and_then(|path| std::fs::read(path).ok())
        .ok_or_else(|| {
            RolloutError::Invalid(format!(
                "the manifest of {} {} is missing from the repository",
                release.service, release.version
            ))
        })?;
    let text = String::from_utf8_lossy(&bytes);
    continuum_shared::manifest::parse(
        &release.target,
        &text,
        continuum_shared::manifest::ImageSource::Archive,
    )
    .map_err(|e| RolloutError::Invalid(e.to_string()))
}

/// Starts a rollout over every site, or `only` those named; a running rollout of the
/// same service is superseded.
pub async fn start(
    cp: &ControlPlane,
    service: &str,
    version: &str,
    policy: Option<&str>,
    only: Option<&BTreeSet<String>>,
    actor: &str,
) -> Result<Rollout, RolloutError> {
    let _one = CHANGES.lock().await;
    let (gates, planned) = dry_run(cp, service, version, policy, only)?;
    begin(cp, service, Some(version), None, gates, planned, actor)
}

/// Starts taking `service` off the sites that `select` picks among those whose desired
/// state names it, in the waves of `policy` (`default` when absent); a running rollout
/// of the service is superseded.
pub async fn start_removal(
    cp: &ControlPlane,
    service: &str,
    select: Option<&str>,
    policy: Option<&str>,
    actor: &str,
) -> Result<Rollout, RolloutError> {
    let _one = CHANGES.lock().await;
    // A removal of some sites must not cut short a rollout of the service elsewhere.
    if let Some(other) = list(cp)?
        .into_iter()
        .find(|r| r.service == service && r.state.active())
    {
        return Err(RolloutError::Invalid(format!(
            "rollout {} ({}) is under way: let it finish or cancel it first",
            other.id,
            other.describe()
        )));
    }
    let (gates, planned) = super::removal::plan_removal(cp, service, select, policy)?;
    begin(cp, service, None, None, gates, planned, actor)
}

/// Starts, for each service whose sites' desired state uses secret `name`, a rollout
/// that moves those sites to `version` of it in the waves of `policy` (when absent,
/// the policy the service's release names). Returns per service the rollout's id, or why none started (a rollout of
/// the service is under way: it is not cut short).
pub async fn start_secret(
    cp: &ControlPlane,
    name: &str,
    version: u64,
    policy: Option<&str>,
    actor: &str,
) -> Result<Vec<(String, Result<String, String>)>, RolloutError> {
    let _one = CHANGES.lock().await;
    let snapshot = cp.policies.snapshot();
    if let Some(name) = policy
        && snapshot.rollout(name).is_none()
    {
        return Err(RolloutError::Invalid(format!(
            "no rollout policy named {name:?} is in force; see `continuum policies`"
        )));
    }
    let Some(secret) = crate::secrets::get(cp, name)? else {
        return Ok(Vec::new());
    };
    let active = list(cp)?;
    let mut started = Vec::new();
    for (service, using) in super::secret::sites_using(cp, name)? {
        // The policy asked for, else the one the release of the service names.
        let policy_name = match policy {
            Some(name) => name.to_owned(),
            None => match super::secret::release_policy(cp, &service, &using) {
                Ok(name) => name,
                Err(e) => {
                    started.push((service, Err(e.to_string())));
                    continue;
                }
            },
        };
        let Some(policy) = snapshot.rollout(&policy_name) else {
            started.push((
                service,
                Err(format!(
                    "its release names rollout policy {policy_name:?}, which is not in force"
                )),
            ));
            continue;
        };
        if let Some(other) = active
            .iter()
            .find(|r| r.service == service && r.state.active() && r.secret.as_deref() != Some(name))
        {
            started.push((
                service,
                Err(format!(
                    "rollout {} ({}) is under way; set the secret again once it is done",
                    other.id,
                    other.describe()
                )),
            ));
            continue;
        }
        let candidates: Vec<Candidate> = sites::list(cp)?
            .into_iter()
            .filter(|s| using.contains(&s.name) && secret.scope.covers(s))
            .map(|s| Candidate {
                labels: s.labels(),
                revoked: s.revoked_at.is_some(),
                name: s.name,
            })
            .collect();
        let label = format!("secret {name} v{version}");
        let planned = plan(&service, &label, &candidates, None, &[], policy);
        if planned.waves.iter().all(|w| w.sites.is_empty()) {
            started.push((service, Err("no site in the secret's scope runs it".into())));
            continue;
        }
        let rollout = begin(
            cp,
            &service,
            Some(&version.to_string()),
            Some(name),
            gates_of(policy),
            planned,
            actor,
        )?;
        started.push((service, Ok(rollout.id)));
    }
    Ok(started)
}

/// Records and wakes a planned rollout to `version` (`None`: a removal) of `service`,
/// or of its `secret`.
fn begin(
    cp: &ControlPlane,
    service: &str,
    version: Option<&str>,
    secret: Option<&str>,
    gates: Gates,
    planned: Plan,
    actor: &str,
) -> Result<Rollout, RolloutError> {
    let now = unix_now();
    let id = format!(
        "r{:012x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    );
    for mut old in list(cp)?
        .into_iter()
        .filter(|r| r.service == service && r.state.active())
    {
        info!(rollout = %old.id, by = %id, "rollout superseded");
        old.state = RolloutState::Superseded(id.clone());
        old.updated_at = now;
        save(cp, &old)?;
    }
    let mut sites = BTreeMap::new();
    let mut previous = BTreeMap::new();
    for wave in &planned.waves {
        for site in &wave.sites {
            sites.insert(site.clone(), SiteProgress::Pending);
            let desired = desired::get(cp, site)?;
            let had = match secret {
                Some(name) => desired.and_then(|d| d.secrets.get(name).map(u64::to_string)),
                None => desired.and_then(|d| d.releases.get(service).map(|r| r.version.clone())),
            };
            previous.insert(site.clone(), had);
        }
    }
    let rollout = Rollout {
        id,
        service: service.to_owned(),
        version: version.unwrap_or_default().to_owned(),
        removal: version.is_none(),
        secret: secret.map(str::to_owned),
        gates,
        waves: planned.waves,
        excluded: planned.excluded,
        sites,
        previous,
        state: RolloutState::Running,
        wave: 0,
        started_by: actor.to_owned(),
        started_at: rfc3339(now),
        updated_at: now,
    };
    save(cp, &rollout)?;
    info!(rollout = %rollout.id, what = %rollout.describe(), sites = rollout.sites.len(), "rollout started");
    WAKE.notify_one();
    Ok(rollout)
}

/// The desired-state change that tells a site `version`: of the service's release, or
/// of the secret a rollout of a changed secret moves. A site that had no version of
/// the secret before has none to go back to: nothing changes there.
fn change_of(rollout: &Rollout, version: Option<String>) -> Option<desired::Change> {
    match &rollout.secret {
        Some(name) => Some(desired::Change::Secret {
            name: name.clone(),
            version: version?.parse().ok()?,
        }),
        None => Some(desired::Change::Release {
            service: rollout.service.clone(),
            version,
        }),
    }
}

/// Waits for a rollout step under way to finish, so that a change made before (a
/// release yanked) is seen by every step after.
pub async fn settle() {
    let _one = CHANGES.lock().await;
}

/// Applies an operator's command.
pub async fn command(
    cp: &ControlPlane,
    id: &str,
    command: Command,
) -> Result<Rollout, RolloutError> {
    let _one = CHANGES.lock().await;
    let mut rollout =
        get(cp, id)?.ok_or_else(|| RolloutError::Invalid(format!("no rollout {id}")))?;
    let next = match (command, &rollout.state) {
        (Command::Pause, RolloutState::Running) => {
            RolloutState::Paused("paused by an operator".into())
        }
        (Command::Resume, RolloutState::Paused(_)) => RolloutState::Running,
        (Command::Rollback, s) if s.active() || *s == RolloutState::Completed => {
            RolloutState::RollingBack("rolled back by an operator".into())
        }
        (Command::Cancel, s) if s.active() => RolloutState::Cancelled,
        (_, state) => {
            return Err(RolloutError::Invalid(format!(
                "rollout {id} is {}; that command does not apply",
                serde_json::to_value(state)
                    .ok()
                    .and_then(|v| v["state"].as_str().map(str::to_owned))
                    .unwrap_or_default()
            )));
        }
    };
    rollout.state = next;
    rollout.updated_at = unix_now();
    save(cp, &rollout)?;
    WAKE.notify_one();
    Ok(rollout)
}

/// Every rollout, oldest first.
pub fn list(cp: &ControlPlane) -> Result<Vec<Rollout>, StoreError> {
    cp.store.list_json(Tree::Rollouts)
}

/// One rollout.
pub fn get(cp: &ControlPlane, id: &str) -> Result<Option<Rollout>, StoreError> {
    cp.store.get_json(Tree::Rollouts, id.as_bytes())
}

fn save(cp: &ControlPlane, rollout: &Rollout) -> Result<(), StoreError> {
    cp.store
        .put_json(Tree::Rollouts, rollout.id.as_bytes(), rollout)?;
    cp.store.flush()
}

/// Steps every active rollout each second, for as long as the runtime runs.
pub fn spawn(cp: Arc<ControlPlane>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = WAKE.notified() => {}
            }
            if let Err(e) = tick(&cp).await {
                warn!(error = %e, "rollout step failed; trying again");
            }
        }
    });
}

/// One step of every active rollout.
pub async fn tick(cp: &ControlPlane) -> Result<(), RolloutError> {
    let _one = CHANGES.lock().await;
    let active: Vec<Rollout> = list(cp)?.into_iter().filter(|r| r.state.active()).collect();
    if active.is_empty() {
        return Ok(());
    }
    let records: BTreeMap<String, crate::model::SiteRecord> = sites::list(cp)?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let snapshot = cp.policies.snapshot();
    let now = jiff::Timestamp::now();
    for mut rollout in active {
        let fleet: BTreeMap<String, SiteNow> = rollout
            .sites
            .keys()
            .map(|site| {
                let record = records.get(site);
                let labels = record.map(|r| r.labels()).unwrap_or_default();
                let windows: Vec<_> = snapshot
                    .windows()
                    .filter(|w| w.select.as_ref().is_none_or(|s| s.matches(&labels)))
                    .collect();
                let view = SiteNow {
                    online: cp.fleet.live(site).is_some(),
                    report: record.and_then(|r| r.services.get(&rollout.service).cloned()),
                    window_open: windows.is_empty() || windows.iter().any(|w| w.open_at(now)),
                    lock: record.and_then(|r| r.lock.as_ref().map(|l| l.reason.clone())),
                    caught_up: record
                        .and_then(|r| r.trust.as_ref())
                        .is_some_and(|t| t.verified_generation >= desired::generation(cp, site)),
                };
                (site.clone(), view)
            })
            .collect();
        let before = rollout.clone();
        let actions = step(&mut rollout, &fleet, now.as_second());
        let actor = format!("rollout {}", rollout.id);
        // One batch: sites are signed side by side and made durable together.
        let planned: Vec<(&super::step::SetRelease, desired::Change)> = actions
            .iter()
            .filter_map(|a| change_of(&rollout, a.version.clone()).map(|c| (a, c)))
            .collect();
        let changes: Vec<(String, desired::Change)> = planned
            .iter()
            .map(|(a, c)| (a.site.clone(), c.clone()))
            .collect();
        let results = desired::change(cp, &changes, &actor).await;
        for ((action, _), result) in planned.iter().zip(results) {
            if let Err(e) = result {
                warn!(rollout = %rollout.id, site = %action.site, error = %e, "could not change the site's desired state; trying again");
                match rollout.sites.get_mut(&action.site) {
                    // Not started after all: the next step starts it again.
                    Some(progress @ SiteProgress::Updating { .. }) => {
                        *progress = SiteProgress::Pending;
                    }
                    // Not put back (its previous release is yanked, say): said so.
                    Some(progress @ SiteProgress::Reverted) => {
                        *progress = SiteProgress::Failed {
                            reason: format!("could not be put back: {e}"),
                        };
                    }
                    _ => {}
                }
            }
        }
        if rollout != before {
            if rollout.state != before.state {
                info!(rollout = %rollout.id, state = ?rollout.state, "rollout state changed");
            }
            save(cp, &rollout)?;
        }
    }
    Ok(())
}
