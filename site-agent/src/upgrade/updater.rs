//! The running agent's half of a self-update. When the verified desired state names
//! another agent build, the updater fetches it through the artifact path (verified
//! against the signed length and SHA-256, resumed after a broken link), keeps a copy
//! of this binary, records the trial, swaps the new binary in atomically with
//! self_update's move, and asks the launcher to start it. It also reports the agent to
//! the control plane as the service `continuum-agent`, so rollouts follow it like any
//! other service.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use continuum_shared::manifest::AGENT_SERVICE;
use continuum_shared::protocol::{HealthState, ServicePhase, ServiceReport};
use continuum_shared::unix_now;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::launch::LAUNCHED_ENV;
use super::state::{Build, Trial, UpgradeDir, install_binary, sha256_file};
use crate::trust::artifact::{self, ArtifactError};
use crate::trust::{AgentBinary, DesiredState, LinkSlot};

/// How long to wait before fetching again after the link or the disk failed.
const RETRY: Duration = Duration::from_secs(30);
/// How long to wait before fetching again after a download did not match its signature.
const RETRY_TAMPERED: Duration = Duration::from_secs(300);

/// Fault injection for the crash tests (`CONTINUUM_AGENT_CRASH_AT`): `upgrade-staged`
/// (downloaded, nothing replaced), `upgrade-trial` (trial recorded, not swapped) and
/// `upgrade-swapped` (swapped, not restarted) and `upgrade-before-commit` (the new
/// binary on trial, verified but not committed).
pub fn crash_point(step: &str) {
    if std::env::var("CONTINUUM_AGENT_CRASH_AT").is_ok_and(|at| at == step) {
        eprintln!("crash point {step}: aborting as asked by CONTINUUM_AGENT_CRASH_AT");
        std::process::abort();
    }
}

/// Whether a launcher runs this agent, so that a swapped-in binary can be taken back.
pub fn launched() -> bool {
    std::env::var_os(LAUNCHED_ENV).is_some()
}

/// Commits the trial of this build, if it is on trial: called once it has reconnected,
/// verified the desired state and reported. Returns whether there was one.
pub fn commit(upgrade: &UpgradeDir) -> bool {
    match upgrade.trial() {
        Ok(Some(mut trial)) if !trial.committed && trial.to.version == crate::VERSION => {
            trial.committed = true;
            match upgrade.save_trial(&trial) {
                Ok(()) => {
                    info!(from = %trial.from.version, to = %trial.to.version, "this agent build proved itself; update committed");
                    true
                }
                Err(e) => {
                    warn!(error = %e, "cannot commit the update");
                    false
                }
            }
        }
        _ => false,
    }
}

/// Whether this build is on an uncommitted trial.
pub fn on_trial(upgrade: &UpgradeDir) -> bool {
    matches!(upgrade.trial(), Ok(Some(t)) if !t.committed && t.to.version == crate::VERSION)
}

/// Whether any trial is unsettled (uncommitted, or unreadable): no other update starts
/// until the launcher has settled it.
fn trial_pending(upgrade: &UpgradeDir) -> bool {
    !matches!(
        upgrade.trial(),
        Ok(None)
            | Ok(Some(Trial {
                committed: true,
                ..
            }))
    )
}

/// How often the report is looked at again while this build is on trial, so that the
/// commit shows at once.
const TRIAL_RECHECK: Duration = Duration::from_secs(1);

/// What the updater needs.
pub struct Updater {
    /// The upgrade directory.
    pub upgrade: UpgradeDir,
    /// The link to fetch through.
    pub link: LinkSlot,
    /// The verified desired state.
    pub desired: watch::Receiver<Option<DesiredState>>,
    /// The agent's own service report.
    pub report: watch::Sender<Option<ServiceReport>>,
    /// Notified once a new binary is in place and the agent should exit for it.
    pub restart: Arc<Notify>,
    /// The executable to replace.
    pub binary: PathBuf,
}

/// What to do after looking at the desired state.
enum Next {
    Wait,
    Retry(Duration),
    Restart,
}

impl Updater {
    /// Follows the desired state until the process ends or a new binary is in place.
    pub async fn run(mut self) {
        loop {
            let wanted = self
                .desired
                .borrow_and_update()
                .as_ref()
                .and_then(|d| d.agent.clone());
            let next = self.consider(wanted.as_ref()).await;
            let delay = match next {
                Next::Restart => {
                    self.restart.notify_one();
                    return;
                }
                Next::Wait => Duration::from_secs(3600),
                Next::Retry(delay) => delay,
            };
            tokio::select! {
                changed = self.desired.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn consider(&mut self, wanted: Option<&AgentBinary>) -> Next {
        let mut report = ServiceReport {
            service: AGENT_SERVICE.to_owned(),
            desired: wanted.map(|w| w.version.clone()),
            running: Some(crate::VERSION.to_owned()),
            last_known_good: (!on_trial(&self.upgrade)).then(|| crate::VERSION.to_owned()),
            phase: ServicePhase::Running,
            health: HealthState::Healthy,
            restarts: 0,
            last_error: None,
            failed: None,
            failure: None,
            at: unix_now(),
            secrets: Default::default(),
        };
        let Some(wanted) = wanted else {
            // No agent release is rolled out to this site: nothing to report.
            return Next::Wait;
        };
        if on_trial(&self.upgrade) {
            // Not healthy for a rollout until committed: the launcher may still take
            // this build back.
            report.phase = ServicePhase::Trial;
            self.publish(report);
            return Next::Retry(TRIAL_RECHECK);
        }
        if wanted.version == crate::VERSION {
            self.publish(report);
            return Next::Wait;
        }
        if let Some(failed) = self.upgrade.has_failed(&wanted.sha256) {
            report.phase = ServicePhase::RolledBack;
            report.failed = Some(failed.build.version);
            report.failure = Some(failed.reason);
            self.publish(report);
            return Next::Wait;
        }
        if !launched() {
            report.phase = ServicePhase::Refused;
            report.last_error = Some(
                "this agent runs without its launcher (`continuum-agent launch`, which the installer sets up), so it cannot update itself safely".into(),
            );
            self.publish(report);
            return Next::Wait;
        }
        if trial_pending(&self.upgrade) {
            // A swap is unsettled (this build is not the one on trial, e.g. it was
            // published under another version than it reports): the launcher decides.
            report.phase = ServicePhase::Failed;
            report.last_error = Some(format!(
                "an update is still on trial here; this binary reports version {}, not {}",
                crate::VERSION,
                wanted.version
            ));
            self.publish(report);
            return Next::Retry(TRIAL_RECHECK);
        }
        report.phase = ServicePhase::Deploying;
        self.publish(report.clone());
        match self.install(wanted).await {
            Ok(()) => Next::Restart,
            Err(ArtifactError::Unavailable(e)) => {
                warn!(error = %e, version = %wanted.version, "cannot fetch the new agent binary yet");
                report.last_error = Some(e);
                self.publish(report);
                Next::Retry(RETRY)
            }
            Err(ArtifactError::Tampered(e)) => {
                warn!(error = %e, "the new agent binary did not match its signature; nothing replaced");
                report.phase = ServicePhase::Failed;
                report.last_error = Some(e);
                self.publish(report);
                Next::Retry(RETRY_TAMPERED)
            }
        }
    }

    fn publish(&self, report: ServiceReport) {
        self.report.send_if_modified(|current| {
            let same = current
                .as_ref()
                .is_some_and(|c| crate::deploy::same_report(c, &report));
            if !same {
                *current = Some(report);
            }
            !same
        });
    }

    /// Fetches, stages and swaps in `wanted`.
    async fn install(&self, wanted: &AgentBinary) -> Result<(), ArtifactError> {
        let local = |what: &str, e: &dyn std::fmt::Display| {
            ArtifactError::Unavailable(format!("{what}: {e}"))
        };
        self.upgrade
            .create()
            .map_err(|e| local("the upgrade directory", &e))?;
        let staged = self.upgrade.staged(&wanted.sha256);
        info!(version = %wanted.version, "fetching the new agent binary");
        let target = artifact::Signed {
            name: &wanted.target,
            sha256: &wanted.sha256,
            length: wanted.length,
        };
        artifact::fetch(&self.link, target, &staged).await?;
        crash_point("upgrade-staged");
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| local("the staged binary", &e))?;
        let from = Build {
            version: crate::VERSION.to_owned(),
            sha256: sha256_file(&self.binary).map_err(|e| local("this binary", &e))?,
        };
        install_binary(&self.binary, &self.upgrade.previous())
            .map_err(|e| local("keeping a copy of this binary", &e))?;
        let trial = Trial {
            from,
            to: Build {
                version: wanted.version.clone(),
                sha256: wanted.sha256.clone(),
            },
            binary: self.binary.clone(),
            started_at: None,
            committed: false,
        };
        self.upgrade
            .save_trial(&trial)
            .map_err(|e| local("recording the trial", &e))?;
        crash_point("upgrade-trial");
        // self_update's move: one rename, or a copy beside the binary and one rename.
        if let Err(e) = self_update::Move::from_source(&staged).to_dest(&self.binary) {
            self.upgrade.clear_trial();
            return Err(local("swapping in the new binary", &e));
        }
        crash_point("upgrade-swapped");
        let _ = std::fs::remove_file(&staged);
        info!(from = %trial.from.version, to = %trial.to.version, "new agent binary in place; restarting into it");
        Ok(())
    }
}
