//! The running agent's status, kept in `<state dir>/status.json` so that
//! `continuum-agent status` can answer from local files alone: with the control plane
//! down, and whether or not the agent process is running.

use std::path::{Path, PathBuf};

use continuum_shared::files::write_private_fast;
use continuum_shared::unix_now;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;

const STATUS_FILE: &str = "status.json";
/// How many recent reconnect delays are kept, to show the backoff at work.
const RECENT_DELAYS: usize = 10;

/// What the connection loop is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// Starting up.
    #[default]
    Starting,
    /// Dialing the control plane.
    Connecting,
    /// In a session with the control plane.
    Online,
    /// Waiting before the next attempt.
    Waiting,
    /// Revoked by the central team; the agent stopped.
    Revoked,
    /// Stopped by a signal.
    Stopped,
}

/// The status the run loop publishes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// Process id of the running agent.
    pub pid: u32,
    /// Its version.
    pub agent_version: String,
    /// When it started.
    pub started_at: i64,
    /// When this file was last written.
    pub updated_at: i64,
    /// What it is doing.
    pub state: LinkState,
    /// The control-plane address of the current session.
    pub server: Option<String>,
    /// Transport of the current session.
    pub transport: Option<String>,
    /// Protocol version of the current session.
    pub protocol_version: Option<u16>,
    /// When the current session began.
    pub connected_since: Option<i64>,
    /// The last heartbeat sent.
    pub last_heartbeat: Option<i64>,
    /// Heartbeats sent in the current session.
    pub heartbeats: u64,
    /// Sessions started since the process started.
    pub sessions: u64,
    /// Bytes the current session's link sent (headers included), as of the last
    /// heartbeat.
    #[serde(default)]
    pub link_bytes_sent: u64,
    /// Bytes it received.
    #[serde(default)]
    pub link_bytes_received: u64,
    /// Why the last session or attempt ended.
    pub last_error: Option<String>,
    /// Delay before the next attempt, while waiting.
    pub retry_in_ms: Option<u64>,
    /// The most recent reconnect delays, newest last.
    pub recent_retry_delays_ms: Vec<u64>,
    /// The newest desired-state generation the control plane announced.
    #[serde(default)]
    pub wanted_generation: u64,
    /// How the last attempt to take on desired state ended: verified, refused or stale.
    #[serde(default)]
    pub trust_state: Option<String>,
    /// Why, when it did not verify.
    #[serde(default)]
    pub trust_reason: Option<String>,
    /// When that attempt ended.
    #[serde(default)]
    pub trust_at: Option<i64>,
}

/// Writes the status file as the run loop changes state.
pub struct StatusFile {
    path: PathBuf,
    status: RunStatus,
}

impl StatusFile {
    /// A fresh status for this process.
    pub fn new(state_dir: &Path) -> Self {
        let now = unix_now();
        StatusFile {
            path: state_dir.join(STATUS_FILE),
            status: RunStatus {
                pid: std::process::id(),
                agent_version: crate::VERSION.into(),
                started_at: now,
                updated_at: now,
                ..RunStatus::default()
            },
        }
    }

    /// Applies a change and writes the file. A failed write is logged, never fatal:
    /// status is for display only.
    pub fn update(&mut self, change: impl FnOnce(&mut RunStatus)) {
        change(&mut self.status);
        self.status.updated_at = unix_now();
        let bytes = serde_json::to_vec_pretty(&self.status).unwrap_or_default();
        if let Err(e) = write_private_fast(&self.path, &bytes) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
    }

    /// Records a reconnect delay.
    pub fn waiting(&mut self, delay_ms: u64, error: String) {
        self.update(|s| {
            s.state = LinkState::Waiting;
            s.retry_in_ms = Some(delay_ms);
            s.last_error = Some(error);
            s.connected_since = None;
            s.server = None;
            s.transport = None;
            s.recent_retry_delays_ms.push(delay_ms);
            let excess = s.recent_retry_delays_ms.len().saturating_sub(RECENT_DELAYS);
            s.recent_retry_delays_ms.drain(..excess);
        });
    }
}

/// Everything `continuum-agent status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The enrolled site name, if joined.
    pub site: Option<String>,
    /// The state directory.
    pub state_dir: String,
    /// Control-plane addresses.
    pub control_plane: Vec<String>,
    /// When the site certificate expires (Unix seconds).
    pub certificate_expires: Option<i64>,
    /// When the agent will renew it.
    pub certificate_renews: Option<i64>,
    /// Labels given by the central team.
    pub labels: continuum_shared::labels::Labels,
    /// Whether an agent process is running for this state directory.
    pub running: bool,
    /// The version of this binary.
    pub binary_version: String,
    /// What the running (or last) agent process reported.
    pub run: Option<RunStatus>,
    /// The verified desired state in force.
    pub desired: Option<crate::trust::DesiredState>,
    /// When the director's timestamp (the freshness of desired state) expires; after
    /// that the state in force keeps running but is stale until the link returns.
    pub desired_fresh_until: Option<String>,
    /// Whether that time has passed.
    pub desired_stale: bool,
    /// Each service: desired and running release, phase, health, last failure.
    pub services: crate::deploy::Reports,
    /// The site policy file as it reads now, or why it does not.
    pub site_policy: Result<crate::admission::SitePolicy, String>,
    /// The update lock, if held.
    pub lock: Option<crate::lock::Lock>,
}

/// When the trusted director timestamp expires, if there is one.
fn director_expiry(state_dir: &Path) -> Option<jiff::Timestamp> {
    let path =
        crate::trust::datastore(state_dir, crate::trust::Repo::Director).join("timestamp.json");
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    value["signed"]["expires"].as_str()?.parse().ok()
}

/// Builds the report from the state directory.
pub fn report(state_dir: &Path, identity: Option<&Identity>) -> StatusReport {
    let run: Option<RunStatus> = std::fs::read(state_dir.join(STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let running = run.as_ref().is_some_and(|r| {
        !matches!(r.state, LinkState::Stopped | LinkState::Revoked) && process_alive(r.pid)
    });
    let expiry = director_expiry(state_dir);
    StatusReport {
        desired: crate::trust::DesiredState::load(state_dir).ok().flatten(),
        desired_fresh_until: expiry.map(|t| t.to_string()),
        desired_stale: expiry.is_some_and(|t| t < jiff::Timestamp::now()),
        services: crate::deploy::load_reports(state_dir),
        site_policy: crate::admission::load(state_dir),
        lock: crate::lock::read(state_dir),
        site: identity.map(|i| i.site.clone()),
        state_dir: state_dir.display().to_string(),
        control_plane: identity.map(|i| i.addresses.clone()).unwrap_or_default(),
        certificate_expires: identity.map(|i| i.not_after),
        certificate_renews: identity.map(Identity::renew_at),
        labels: identity.map(|i| i.labels.clone()).unwrap_or_default(),
        running,
        binary_version: crate::VERSION.into(),
        run,
    }
}

/// The report as lines for people.
pub fn render(report: &StatusReport) -> String {
    let time = |t: i64| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
        let ago = continuum_shared::unix_now() - t;
        let when = humantime::format_rfc3339_seconds(at);
        if ago >= 0 {
            format!("{when} ({ago}s ago)")
        } else {
            format!("{when} (in {}s)", -ago)
        }
    };
    let mut lines = vec![
        (
            "site",
            report
                .site
                .clone()
                .unwrap_or_else(|| "not joined (run `continuum-agent join TOKEN`)".into()),
        ),
        ("state directory", report.state_dir.clone()),
        ("control plane", report.control_plane.join(", ")),
        ("agent version", report.binary_version.clone()),
    ];
    if let Some(expires) = report.certificate_expires {
        lines.push(("certificate expires", time(expires)));
    }
    if let Some(renews) = report.certificate_renews {
        lines.push(("certificate renews", time(renews)));
    }
    for (k, v) in &report.labels {
        lines.push(("label", format!("{k}={v}")));
    }
    match &report.desired {
        None => lines.push(("desired state", "none verified yet".into())),
        Some(desired) => {
            let freshness = match (&report.desired_fresh_until, report.desired_stale) {
                (Some(until), true) => format!(
                    ", STALE since {until} (kept running; new state needs the control plane)"
                ),
                (Some(until), false) => format!(", fresh until {until}"),
                (None, _) => String::new(),
            };
            lines.push((
                "desired state",
                format!(
                    "generation {} verified {}{freshness}",
                    desired.generation,
                    time(desired.verified_at)
                ),
            ));
            for r in &desired.releases {
                lines.push((
                    "release",
                    format!(
                        "{} {} ({})",
                        r.release.service, r.release.version, r.release.container.image
                    ),
                ));
            }
        }
    }
    if let Some(lock) = &report.lock {
        lines.push((
            "update lock",
            format!(
                "{} (since {}; `continuum-agent unlock` releases it)",
                lock.reason,
                time(lock.since)
            ),
        ));
    }
    match &report.site_policy {
        Ok(policy) if *policy == crate::admission::SitePolicy::default() => {
            lines.push(("site policy", "default (no site-policy.toml)".into()));
        }
        Ok(_) => lines.push(("site policy", crate::admission::FILE.into())),
        Err(e) => lines.push((
            "site policy",
            format!("REJECTED, previous one in force: {e}"),
        )),
    }
    for service in report.services.values() {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let problem = service
            .failure
            .as_ref()
            .or(service.last_error.as_ref())
            .and_then(|t| t.lines().next())
            .map(|t| format!("; {t}"))
            .unwrap_or_default();
        lines.push((
            "service",
            format!(
                "{}: desired {}, running {}, {}, {}{problem}",
                service.service,
                dash(&service.desired),
                dash(&service.running),
                service.phase.name(),
                service.health.name()
            ),
        ));
    }
    if let Some(run) = &report.run
        && let (Some(state), Some(at)) = (&run.trust_state, run.trust_at)
    {
        let why = run
            .trust_reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        lines.push((
            "last check",
            format!(
                "{state} at {} (generation {} announced){why}",
                time(at),
                run.wanted_generation
            ),
        ));
    }
    match &report.run {
        None => lines.push(("agent process", "never ran".into())),
        Some(run) => {
            let state = if report.running {
                format!("{:?}", run.state).to_lowercase()
            } else {
                format!("not running (last: {:?})", run.state).to_lowercase()
            };
            lines.push(("link", state));
            if let Some(server) = &run.server {
                lines.push((
                    "connected to",
                    format!(
                        "{server} over {}",
                        run.transport.clone().unwrap_or_default()
                    ),
                ));
            }
            if let Some(since) = run.connected_since {
                lines.push(("connected since", time(since)));
            }
            if let Some(beat) = run.last_heartbeat {
                lines.push(("last heartbeat", time(beat)));
            }
            if let Some(error) = &run.last_error {
                lines.push(("last error", error.clone()));
            }
            if let Some(retry) = run.retry_in_ms {
                lines.push(("next attempt in", format!("{retry} ms")));
            }
        }
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    #[allow(unsafe_code)]
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_file_round_trips_and_keeps_recent_delays() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StatusFile::new(dir.path());
        for delay in 0..15 {
            file.waiting(delay, "down".into());
        }
        let report = report(dir.path(), None);
        assert!(report.running, "this process is alive and waiting");
        let run = report.run.unwrap();
        assert_eq!(run.recent_retry_delays_ms, (5..15).collect::<Vec<_>>());
        assert_eq!(run.state, LinkState::Waiting);
        file.update(|s| s.state = LinkState::Stopped);
        assert!(!super::report(dir.path(), None).running);
    }
}
