//! `continuum-agent launch`: the small supervisor that services run. It starts the
//! installed agent binary and restarts it when it exits (with jittered backoff, never
//! giving up, so a crash loop cannot park the site), and it owns the trial of a newly
//! swapped-in binary: the new binary must commit within the trial timeout, or the
//! launcher puts the previous binary back, records why, and starts that instead.
//!
//! The launcher is a separate copy of the agent that self-updates never replace, so the
//! revert never depends on the new binary running at all. Everything it decides comes
//! from files (the trial record, the binaries' hashes), so a launcher killed and
//! started again by systemd takes up exactly where it stopped.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use continuum_shared::backoff::Backoff;
use continuum_shared::unix_now;
use tracing::{error, info, warn};

use super::state::{Failed, Trial, UpgradeDir, install_binary, sha256_file};

/// The exit status with which the agent asks to be started again at once: it has
/// swapped in a new binary.
pub const RESTART_STATUS: i32 = 75;
/// The exit status of a revoked site: not restarted.
pub const REVOKED_STATUS: i32 = 3;
/// Set in the agent's environment by the launcher: the agent updates itself only when
/// something can take the update back.
pub const LAUNCHED_ENV: &str = "CONTINUUM_AGENT_LAUNCHED";

/// How often a trial's record is looked at.
const TRIAL_POLL: Duration = Duration::from_millis(500);
/// How long the agent has to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Settings of the launcher.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The agent binary that self-updates replace.
    pub agent: PathBuf,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// How long a new binary has to commit.
    pub trial_timeout: Duration,
    /// First restart delay after the agent exits.
    pub restart_base: Duration,
    /// Longest restart delay.
    pub restart_max: Duration,
    /// The agent's arguments (`run …`).
    pub args: Vec<OsString>,
}

/// How one run of the agent ended.
enum End {
    Exited(ExitStatus),
    TrialExpired,
    Shutdown,
}

/// Runs the agent until `shutdown` resolves or the site is revoked; returns the exit
/// status for the launcher itself.
pub async fn launch(
    options: LaunchOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<u8, String> {
    let dir = UpgradeDir::new(&options.state_dir);
    let mut backoff = Backoff::new(options.restart_base, options.restart_max);
    tokio::pin!(shutdown);
    loop {
        let mut deadline = settle(&options, &dir);
        let mut child = match spawn(&options) {
            Ok(child) => child,
            Err(e) if deadline.is_some() => {
                revert(&options, &dir, &format!("could not be started: {e}"));
                continue;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                error!(error = %e, delay = ?delay, "cannot start the agent; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = &mut shutdown => return Ok(0),
                }
            }
        };
        let end = loop {
            tokio::select! {
                status = child.wait() => {
                    break End::Exited(status.map_err(|e| format!("waiting for the agent: {e}"))?);
                }
                _ = tokio::time::sleep(TRIAL_POLL), if deadline.is_some() => {
                    if deadline.as_ref().is_some_and(|d| committed(&dir, &d.sha256)) {
                        dir.clear_trial();
                        info!("the new agent binary committed; its trial is over");
                        deadline = None;
                    } else if deadline.as_ref().is_some_and(|d| unix_now() >= d.at) {
                        break End::TrialExpired;
                    }
                }
                _ = &mut shutdown => break End::Shutdown,
            }
        };
        match end {
            End::Shutdown => {
                stop(&mut child).await;
                return Ok(0);
            }
            End::TrialExpired => {
                stop(&mut child).await;
                let reason = format!(
                    "did not reconnect, verify its desired state and report healthy within {}",
                    humantime::format_duration(options.trial_timeout)
                );
                revert(&options, &dir, &reason);
                backoff.reset();
            }
            End::Exited(status) if status.code() == Some(REVOKED_STATUS) => {
                // Revoked (or decommissioned) is final, on trial or not: going back to
                // the previous build would be revoked too.
                warn!("the site is revoked; the agent stays stopped");
                return Ok(REVOKED_STATUS as u8);
            }
            End::Exited(status) => {
                if deadline
                    .as_ref()
                    .is_some_and(|d| !committed(&dir, &d.sha256))
                {
                    revert(&options, &dir, &format!("{status} during its trial"));
                    backoff.reset();
                    continue;
                }
                match status.code() {
                    Some(RESTART_STATUS) => {
                        info!("the agent swapped in a new binary; starting it");
                        backoff.reset();
                    }
                    _ => {
                        let delay = backoff.next_delay();
                        warn!(%status, delay = ?delay, "the agent exited; starting it again");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = &mut shutdown => return Ok(0),
                        }
                    }
                }
            }
        }
    }
}

/// Whether the build with `sha256` committed its trial.
fn committed(dir: &UpgradeDir, sha256: &str) -> bool {
    matches!(dir.trial(), Ok(Some(Trial { committed: true, to, .. })) if to.sha256 == sha256)
}

/// The build on trial and when its trial ends (Unix seconds).
struct Deadline {
    sha256: String,
    at: i64,
}

/// Brings the trial record and the binary into agreement before the agent starts;
/// returns the trial's deadline if a new binary is on trial. Each start of the
/// launcher gives the trial a whole window again, so a reboot or a stop of the
/// service during a trial does not fail a build that never got its chance.
fn settle(options: &LaunchOptions, dir: &UpgradeDir) -> Option<Deadline> {
    let mut trial = match dir.trial() {
        Ok(Some(trial)) => trial,
        Ok(None) => return None,
        Err(e) => {
            error!(error = %e, "the trial record is unreadable; keeping the binary in place");
            dir.clear_trial();
            return None;
        }
    };
    if trial.committed {
        dir.clear_trial();
        return None;
    }
    let current = match sha256_file(&options.agent) {
        Ok(sha) => sha,
        Err(e) => {
            error!(binary = %options.agent.display(), error = %e, "cannot read the agent binary");
            String::new()
        }
    };
    if current == trial.from.sha256 {
        info!(version = %trial.to.version, "the swap to the new binary never happened; staying on this one");
        dir.clear_trial();
        return None;
    }
    if current != trial.to.sha256 {
        // Neither build (a swap cut short by a power loss): the previous one is sure.
        revert(options, dir, "was not in place whole");
        return None;
    }
    let now = unix_now();
    if trial.started_at.is_none() {
        trial.started_at = Some(now);
        if let Err(e) = dir.save_trial(&trial) {
            warn!(error = %e, "cannot record the trial's start");
        }
    }
    info!(from = %trial.from.version, to = %trial.to.version,
        timeout = ?options.trial_timeout, "starting the new agent binary on trial");
    Some(Deadline {
        sha256: trial.to.sha256,
        at: now + options.trial_timeout.as_secs() as i64,
    })
}

/// Puts the previous binary back and remembers that the new one failed.
fn revert(options: &LaunchOptions, dir: &UpgradeDir, reason: &str) {
    let Ok(Some(trial)) = dir.trial() else {
        return;
    };
    // The failure first: a kill after the restore must not let the build be tried again.
    let reason = format!("agent {} {reason}", trial.to.version);
    if let Err(e) = dir.record_failure(Failed {
        build: trial.to.clone(),
        reason: reason.clone(),
        at: unix_now(),
    }) {
        error!(error = %e, "cannot record the failed agent version");
    }
    // The previous binary if its copy is whole, else this launcher's own executable,
    // which is an agent that works.
    let previous = dir.previous();
    let source = match sha256_file(&previous) {
        Ok(sha) if sha == trial.from.sha256 => previous,
        _ => match std::env::current_exe() {
            Ok(own) => {
                warn!(
                    "the copy of the previous binary is missing or damaged; putting the launcher's own build back"
                );
                own
            }
            Err(e) => {
                error!(error = %e, "no good binary to go back to; the trial stays open");
                return;
            }
        },
    };
    if let Err(e) = install_binary(&source, &options.agent) {
        error!(error = %e, "cannot put a good agent binary back; the trial stays open");
        return;
    }
    warn!(%reason, back_to = %trial.from.version, "the new agent binary failed its trial; back on the previous one");
    dir.clear_trial();
}

fn spawn(options: &LaunchOptions) -> Result<tokio::process::Child, String> {
    let mut command = tokio::process::Command::new(&options.agent);
    command
        .arg("--state-dir")
        .arg(&options.state_dir)
        .args(&options.args)
        .env(LAUNCHED_ENV, "1")
        .kill_on_drop(true);
    die_with_parent(&mut command);
    command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", options.agent.display()))
}

/// The agent dies with the launcher, so a launcher killed and started again never
/// finds a second agent on the same state.
fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only makes one prctl call,
    // which is async-signal-safe and allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

/// Asks the agent to stop, and makes it stop if it does not within the grace time.
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests;
