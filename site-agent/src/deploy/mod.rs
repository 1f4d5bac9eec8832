//! Bringing the site's containers to the verified desired state, and keeping them there.
//!
//! Each pass lists the containers that carry this site's label and, per service,
//! compares them with the release that should run: it gets the image, creates and
//! starts the container (stopping the old one first or after, by the release's
//! strategy), starts a container stopped by hand, recreates one removed by hand, and
//! removes containers of ours that nothing asks for. A new release is on trial until its
//! health check passes; if it does not within `healthy_within`, the site goes back to the
//! last-known-good release by itself and reports why, with the container's last log
//! lines. The ledger (sled) remembers last-known-good releases and trials, so a restarted
//! agent picks up where it stopped and never stops a healthy service to do so.
//!
//! Passes run every `interval` or when a health probe is due, at once when the desired
//! state or the site policy changes, and every second while something is in flight (a
//! deploy or a trial).

mod cleanup;
pub mod health;
pub mod images;
pub mod ledger;
pub(crate) mod report;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use continuum_shared::manifest::{Health, Strategy};
use continuum_shared::protocol::{HealthState, ServicePhase, ServiceReport};
use continuum_shared::unix_now;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::admission::{SitePolicy, Usage};
use crate::engine::{Engine, EngineError, Ours};
use crate::secrets::SecretFiles;
use crate::telemetry::{Telemetry, service_events};
use crate::trust::{DesiredState, LinkSlot, VerifiedRelease};
use continuum_shared::secrets::SealedSecrets;
use health::Tracker;
use images::ImageError;
use ledger::{Failed, Ledger, ServiceRecord, Trial};
pub use report::{Reports, load_reports, same_report};

/// Log lines kept from a failed container.
const LOG_LINES: usize = 20;
/// Grace given to a container to stop.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Fault injection for the crash tests: when `CONTINUUM_AGENT_CRASH_AT` names this
/// step of a deploy, the process aborts there, as a `kill -9` would stop it. Steps:
/// `after-fetch`, `after-load`, `after-stop`, `after-create`, `before-commit`.
fn crash_point(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("CONTINUUM_AGENT_CRASH_AT").ok());
    if at.as_deref() == Some(step) {
        eprintln!("crash point {step}: aborting as asked by CONTINUUM_AGENT_CRASH_AT");
        std::process::abort();
    }
}

/// How the reconciler reaches the engine and how often it looks.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The engine address (`unix:///var/run/docker.sock`).
    pub engine: String,
    /// Time between passes when nothing is in flight.
    pub interval: Duration,
    /// The tmpfs directory where opened secrets wait for their containers.
    pub secrets_dir: PathBuf,
}

/// The reconcile loop of one site.
pub struct Reconciler {
    site: String,
    state_dir: PathBuf,
    settings: Settings,
    engine: Option<Engine>,
    ledger: Ledger,
    link: LinkSlot,
    desired: watch::Receiver<Option<DesiredState>>,
    reports: watch::Sender<Reports>,
    probes: HashMap<String, Tracker>,
    errors: HashMap<String, String>,
    policy: watch::Receiver<SitePolicy>,
    telemetry: Telemetry,
    secrets: SecretFiles,
}

/// What one service's step produced.
struct Step {
    report: ServiceReport,
    busy: bool,
}

/// What the reconciler reads from and reports to, beside the engine.
pub struct Wiring {
    /// The current link, for image archive downloads.
    pub link: LinkSlot,
    /// The desired state in force.
    pub desired: watch::Receiver<Option<DesiredState>>,
    /// Where service reports go.
    pub reports: watch::Sender<Reports>,
    /// The site's own admission policy.
    pub policy: watch::Receiver<SitePolicy>,
    /// Where events go.
    pub telemetry: Telemetry,
    /// The site's secrets key, to open the secrets its containers mount.
    pub secrets_key: continuum_shared::secrets::SecretsKey,
}

impl Reconciler {
    /// A reconciler for `site`, reading desired state from `wiring.desired` and
    /// publishing service reports on `wiring.reports`.
    pub fn new(
        site: String,
        state_dir: PathBuf,
        settings: Settings,
        wiring: Wiring,
    ) -> Result<Reconciler, crate::error::AgentError> {
        let Wiring {
            link,
            desired,
            reports,
            policy,
            telemetry,
            secrets_key,
        } = wiring;
        let secrets = SecretFiles::new(settings.secrets_dir.clone(), secrets_key);
        let ledger = Ledger::open(&state_dir)?;
        // A trial interrupted by an agent restart gets its full time again: the agent
        // being down is not the release's fault.
        for service in ledger.services() {
            let mut record = ledger.get(&service)?;
            if let (Some(trial), Some(desired)) = (&mut record.trial, desired.borrow().as_ref())
                && let Some(r) = desired.releases.iter().find(|r| r.key() == trial.key)
            {
                trial.deadline = unix_now() + r.release.update.healthy_within.as_secs() as i64;
                ledger.put(&service, &record)?;
            }
        }
        Ok(Reconciler {
            site,
            state_dir,
            settings,
            engine: None,
            ledger,
            link,
            desired,
            reports,
            probes: HashMap::new(),
            errors: HashMap::new(),
            policy,
            telemetry,
            secrets,
        })
    }

    /// Runs until the desired-state channel closes.
    pub async fn run(mut self) {
        let mut next_pass = Instant::now();
        let mut policy_open = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_pass) => {}
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                // Without a policy watcher the policy never changes; keep reconciling.
                changed = self.policy.changed(), if policy_open => {
                    policy_open = changed.is_ok();
                }
            }
            let busy = self.pass().await;
            let now = Instant::now();
            next_pass = if busy {
                now + Duration::from_secs(1)
            } else {
                // Steady state: every interval, or sooner when a health probe is due.
                self.probes
                    .values()
                    .map(Tracker::due_at)
                    .fold(now + self.settings.interval, Instant::min)
                    .max(now + Duration::from_millis(100))
            };
        }
    }

    async fn engine(&mut self) -> Result<Engine, EngineError> {
        if let Some(engine) = &self.engine {
            return Ok(engine.clone());
        }
        let engine = Engine::connect(&self.settings.engine).await?;
        info!(engine = %self.settings.engine, "connected to the container engine");
        self.engine = Some(engine.clone());
        Ok(engine)
    }

    /// One pass over every service; returns whether something is in flight.
    pub async fn pass(&mut self) -> bool {
        let Some(desired) = self.desired.borrow().clone() else {
            return false;
        };
        let engine = match self.engine().await {
            Ok(engine) => engine,
            Err(e) => return self.engine_down(&desired, e),
        };
        let requests_before = engine.requests();
        let containers = match engine.ours(&self.site).await {
            Ok(containers) => containers,
            Err(e) => return self.engine_down(&desired, e),
        };
        let mut names: BTreeSet<String> = desired
            .releases
            .iter()
            .map(|r| r.release.service.clone())
            .collect();
        names.extend(containers.iter().map(|c| c.service.clone()));
        names.extend(self.ledger.services());
        let started = Instant::now();
        let count = names.len();
        let mut reports = BTreeMap::new();
        let mut busy = false;
        for name in names {
            let theirs: Vec<&Ours> = containers.iter().filter(|c| c.service == name).collect();
            let wanted = desired.releases.iter().find(|r| r.release.service == name);
            let step = match wanted {
                Some(wanted) => {
                    self.converge(&engine, wanted, &desired.secrets, &theirs)
                        .await
                }
                None => self.retire(&engine, &desired, &name, &theirs).await,
            };
            busy |= step.busy;
            reports.insert(name, step.report);
        }
        self.publish(reports);
        if !busy && !self.policy.borrow().keep_images {
            self.sweep_images(&engine, &desired).await;
        }
        tracing::debug!(
            services = count,
            containers = containers.len(),
            busy,
            took_us = started.elapsed().as_micros() as u64,
            engine_requests = engine.requests() - requests_before,
            "reconcile pass"
        );
        busy
    }

    /// The engine cannot be reached: nothing is touched, every service reports it.
    fn engine_down(&mut self, desired: &DesiredState, error: EngineError) -> bool {
        warn!(error = %error, "container engine unavailable; will retry");
        self.engine = None;
        let text = error.to_string();
        let mut reports = self.reports.borrow().clone();
        for r in &desired.releases {
            let entry = reports
                .entry(r.release.service.clone())
                .or_insert_with(|| report::blank(&r.release.service));
            entry.desired = Some(r.release.version.clone());
            entry.last_error = Some(text.clone());
            entry.health = HealthState::Down;
        }
        self.publish(reports);
        false
    }

    fn publish(&mut self, mut reports: Reports) {
        // A service that disappeared stays listed as removed, so peers learn it is gone.
        for (name, old) in self.reports.borrow().iter() {
            reports
                .entry(name.clone())
                .or_insert_with(|| ServiceReport {
                    phase: ServicePhase::Removed,
                    desired: None,
                    running: None,
                    health: HealthState::Down,
                    last_error: None,
                    ..old.clone()
                });
        }
        let telemetry = &self.telemetry;
        let changed = self.reports.send_if_modified(|current| {
            if report::same(current, &reports) {
                false
            } else {
                for (kind, service, release, message) in service_events(current, &reports) {
                    telemetry.event(kind, Some(&service), release.as_deref(), message);
                }
                *current = reports;
                true
            }
        });
        if changed {
            report::save(&self.state_dir, &self.reports.borrow());
        }
    }

    /// Takes one desired service one step towards its release.
    async fn converge(
        &mut self,
        engine: &Engine,
        wanted: &VerifiedRelease,
        sealed: &SealedSecrets,
        theirs: &[&Ours],
    ) -> Step {
        let name = wanted.release.service.clone();
        let mut record = match self.ledger.get(&name) {
            Ok(record) => record,
            Err(e) => return self.stuck(&name, wanted, e.to_string()),
        };
        // A new desired release clears what the old one left behind.
        let key = wanted.key();
        if record.failed.as_ref().is_some_and(|f| f.key != key)
            || record.trial.as_ref().is_some_and(|t| t.key != key)
        {
            record.failed = None;
            record.trial = None;
            self.save(&name, &record);
        }
        let rolled_back = record.failed.is_some();
        let target = if rolled_back {
            record.last_known_good.clone()
        } else {
            Some(wanted.clone())
        };
        let Some(target) = target else {
            // Failed, and nothing to go back to: nothing runs.
            for c in theirs {
                self.remove(engine, c).await;
            }
            return Step {
                report: self.report(&name, wanted, &record, None, ServicePhase::Failed),
                busy: false,
            };
        };
        let on_trial =
            !rolled_back && record.last_known_good.as_ref().map(VerifiedRelease::key) != Some(key);
        let placed = match self.secrets.place(sealed, &target) {
            Ok(placed) => placed,
            Err(reason) if on_trial => {
                // The new release cannot have its secrets here: it fails, and the site
                // goes back to what worked.
                let running = theirs.iter().find(|c| c.running).copied();
                self.fail(engine, &name, &mut record, running, reason).await;
                return Step {
                    report: self.report(&name, wanted, &record, None, ServicePhase::Deploying),
                    busy: true,
                };
            }
            Err(reason) => {
                // What runs keeps running with what it has; the report says why it
                // cannot be brought up to date.
                warn!(service = %name, %reason, "cannot place the service's secrets");
                self.errors.insert(name.clone(), reason);
                let running = theirs.iter().find(|c| c.running).copied();
                return Step {
                    report: self.report(&name, wanted, &record, running, ServicePhase::Failed),
                    busy: false,
                };
            }
        };
        let mut spec = spec::build(&self.site, &target, &placed);
        let mine = theirs.iter().find(|c| c.spec == spec.hash).copied();
        if on_trial
            && mine.is_none()
            && let Err(reason) = self.admit(&target)
        {
            // The site's own policy says no: what runs stays as it is.
            warn!(service = %name, %reason, "release refused by the site policy");
            self.errors.insert(name.clone(), reason);
            let running = theirs.iter().find(|c| c.running).copied();
            return Step {
                report: self.report(&name, wanted, &record, running, ServicePhase::Refused),
                busy: false,
            };
        }
        let phase_when_up = if rolled_back {
            ServicePhase::RolledBack
        } else if on_trial {
            ServicePhase::Trial
        } else {
            ServicePhase::Running
        };
        match mine {
            None => {
                let outcome = match self.secrets.registry_login(sealed, &target.release) {
                    Ok(login) => {
                        spec.login = login;
                        self.deploy(engine, &target, &spec, theirs, on_trial, &mut record)
                            .await
                    }
                    Err(reason) => Err(reason),
                };
                let busy = match outcome {
                    Ok(started) => started,
                    Err(reason) if on_trial => {
                        self.fail(engine, &name, &mut record, None, reason).await;
                        true
                    }
                    Err(reason) => {
                        self.errors.insert(name.clone(), reason);
                        false
                    }
                };
                Step {
                    report: self.report(&name, wanted, &record, None, ServicePhase::Deploying),
                    busy,
                }
            }
            Some(c) if !c.running => {
                info!(service = %name, container = %c.name, "container found stopped; starting it again");
                if let Err(e) = engine.start(&c.id).await {
                    self.errors.insert(name.clone(), e.to_string());
                }
                Step {
                    report: self.report(&name, wanted, &record, Some(c), ServicePhase::Deploying),
                    busy: true,
                }
            }
            Some(c) => {
                let healthy = self.probe(engine, &name, c, &target.release.health).await;
                let mut busy = false;
                let mut phase = phase_when_up;
                if on_trial {
                    let deadline = record.trial.as_ref().map_or(i64::MAX, |t| t.deadline);
                    if healthy {
                        self.commit(engine, &name, &mut record, &target, theirs, c)
                            .await;
                        phase = ServicePhase::Running;
                    } else if unix_now() >= deadline {
                        let why = self.probes.get(&name).and_then(|p| p.last_error.clone());
                        let reason = format!(
                            "{} {} did not become healthy within {:?}: {}",
                            name,
                            target.release.version,
                            target.release.update.healthy_within,
                            why.unwrap_or_else(|| "no health check passed".into())
                        );
                        self.fail(engine, &name, &mut record, Some(c), reason).await;
                        phase = ServicePhase::Deploying;
                        busy = true;
                    } else {
                        busy = true;
                    }
                } else {
                    // The right container runs: anything else of this service goes,
                    // and so do the secret files only they mounted.
                    for other in theirs.iter().filter(|o| o.id != c.id) {
                        self.remove(engine, other).await;
                    }
                    self.secrets.prune(&name, &placed);
                }
                let running = (phase != ServicePhase::Deploying).then_some(c);
                Step {
                    report: self.report(&name, wanted, &record, running, phase),
                    busy,
                }
            }
        }
    }

    /// Checks `release` against the site policy, next to what the other desired services
    /// use.
    fn admit(&self, release: &VerifiedRelease) -> Result<(), String> {
        let others = self
            .desired
            .borrow()
            .as_ref()
            .map(|d| {
                d.releases
                    .iter()
                    .filter(|r| r.release.service != release.release.service)
                    .fold(Usage::default(), |sum, r| sum.plus(self.usage(r)))
            })
            .unwrap_or_default();
        self.policy
            .borrow()
            .admit(release, self.usage(release), others)
    }

    /// What a release uses, with the size of its image if this agent pulled it before.
    fn usage(&self, release: &VerifiedRelease) -> Usage {
        Usage::of(release, self.ledger.size_of(&spec::image_of(release)))
    }

    /// Gets the image, retires the old container as the strategy says, and creates and
    /// starts the new one. The trial is recorded before anything changes, so an agent
    /// killed half way resumes it. Returns whether the container started (`false`: the
    /// image is not available yet, try again at the next pass); an error is the
    /// release's own failure.
    async fn deploy(
        &mut self,
        engine: &Engine,
        target: &VerifiedRelease,
        spec: &spec::Spec,
        theirs: &[&Ours],
        on_trial: bool,
        record: &mut ServiceRecord,
    ) -> Result<bool, String> {
        let name = &target.release.service;
        info!(service = %name, version = %target.release.version, "deploying");
        match images::ensure(
            engine,
            &self.state_dir,
            &self.link,
            target,
            spec.login.clone(),
        )
        .await
        {
            Ok(_) => {
                if let Err(e) = self.ledger.track_image(&spec.image) {
                    warn!(error = %e, "could not record the image for later clean-up");
                }
                if target.archive.is_none()
                    && let Ok(Some(bytes)) = engine.image_size(&spec.image).await
                {
                    // A pulled image's size is known only now: check the disk budget.
                    let _ = self.ledger.record_size(&spec.image, bytes);
                    if let Err(reason) = self.admit(target) {
                        self.errors.insert(name.clone(), reason);
                        let _ = engine.remove_image(&spec.image).await;
                        return Ok(false);
                    }
                }
            }
            Err(e @ (ImageError::Tampered(_) | ImageError::Denied(_))) => return Err(e.to_string()),
            Err(e) => {
                // Not the release's fault (link or engine down): try again later.
                self.errors.insert(name.clone(), e.to_string());
                return Ok(false);
            }
        }
        if on_trial && record.trial.is_none() {
            record.trial = Some(Trial {
                key: target.key(),
                version: target.release.version.clone(),
                deadline: unix_now() + target.release.update.healthy_within.as_secs() as i64,
            });
            self.save(name, record);
        }
        let stop_first = !on_trial || target.release.update.strategy == Strategy::StopFirst;
        if stop_first {
            for old in theirs {
                if let Err(e) = engine.stop(&old.id, STOP_GRACE).await {
                    warn!(service = %name, error = %e, "could not stop the old container");
                }
                self.remove(engine, old).await;
            }
            if !theirs.is_empty() {
                crash_point("after-stop");
            }
        }
        // A container of the same name left half made by an earlier attempt goes first.
        let _ = engine.remove(&spec.name).await;
        let id = engine
            .create(&spec.name, spec.body.clone())
            .await
            .map_err(|e| format!("creating {}: {e}", spec.name))?;
        crash_point("after-create");
        engine
            .start(&id)
            .await
            .map_err(|e| format!("starting {}: {e}", spec.name))?;
        self.probes.remove(name);
        self.errors.remove(name);
        Ok(true)
    }

    /// The release on trial proved healthy: it becomes last-known-good.
    async fn commit(
        &mut self,
        engine: &Engine,
        name: &str,
        record: &mut ServiceRecord,
        target: &VerifiedRelease,
        theirs: &[&Ours],
        keep: &Ours,
    ) {
        crash_point("before-commit");
        info!(service = %name, version = %target.release.version, "healthy: committed as last-known-good");
        record.last_known_good = Some(target.clone());
        record.trial = None;
        self.save(name, record);
        for other in theirs.iter().filter(|o| o.id != keep.id) {
            self.remove(engine, other).await;
        }
    }

    /// The release on trial failed: remember why (with its last log lines) and take its
    /// container away; the next pass brings the last-known-good release back.
    async fn fail(
        &mut self,
        engine: &Engine,
        name: &str,
        record: &mut ServiceRecord,
        container: Option<&Ours>,
        reason: String,
    ) {
        let mut reason = reason;
        if let Some(c) = container {
            let logs = engine.log_tail(&c.id, LOG_LINES, 1024).await;
            if !logs.trim().is_empty() {
                reason.push_str("\nlast log lines:\n");
                reason.push_str(logs.trim_end());
            }
            self.remove(engine, c).await;
        }
        warn!(service = %name, %reason, "release failed; going back to the last-known-good release");
        let (key, version) = match &record.trial {
            Some(t) => (t.key.clone(), t.version.clone()),
            None => {
                let desired = self.desired.borrow();
                let release = desired
                    .as_ref()
                    .and_then(|d| d.releases.iter().find(|r| r.release.service == name));
                (
                    release.map(VerifiedRelease::key).unwrap_or_default(),
                    release
                        .map(|r| r.release.version.clone())
                        .unwrap_or_default(),
                )
            }
        };
        record.failed = Some(Failed {
            key,
            version,
            reason,
        });
        record.trial = None;
        self.save(name, record);
        self.probes.remove(name);
    }

    async fn remove(&mut self, engine: &Engine, container: &Ours) {
        if let Err(e) = engine.remove(&container.id).await {
            warn!(container = %container.name, error = %e, "could not remove a container");
            self.errors.insert(container.service.clone(), e.to_string());
        }
    }

    fn save(&mut self, name: &str, record: &ServiceRecord) {
        if let Err(e) = self.ledger.put(name, record) {
            warn!(service = %name, error = %e, "could not store the service record");
            self.errors.insert(name.to_owned(), e.to_string());
        }
    }

    fn stuck(&mut self, name: &str, wanted: &VerifiedRelease, error: String) -> Step {
        self.errors.insert(name.to_owned(), error);
        Step {
            report: self.report(
                name,
                wanted,
                &ServiceRecord::default(),
                None,
                ServicePhase::Deploying,
            ),
            busy: false,
        }
    }

    /// Probes the running container when its interval is due; returns whether it is
    /// healthy (the release's threshold of consecutive passes reached).
    async fn probe(&mut self, engine: &Engine, name: &str, c: &Ours, health: &Health) -> bool {
        let now = Instant::now();
        let tracker = self
            .probes
            .entry(name.to_owned())
            .or_insert_with(|| Tracker::new(&c.id, now));
        if tracker.container != c.id {
            *tracker = Tracker::new(&c.id, now);
        }
        tracker.observe(engine, health).await
    }

    fn report(
        &self,
        name: &str,
        wanted: &VerifiedRelease,
        record: &ServiceRecord,
        running: Option<&Ours>,
        phase: ServicePhase,
    ) -> ServiceReport {
        let probe = self.probes.get(name);
        let health = match (running, probe) {
            (None, _) => HealthState::Down,
            (Some(_), Some(p)) if p.healthy => HealthState::Healthy,
            (Some(_), Some(p)) if p.unhealthy => HealthState::Unhealthy,
            (Some(_), _) => HealthState::Starting,
        };
        let phase = match phase {
            ServicePhase::RolledBack if record.last_known_good.is_none() => ServicePhase::Failed,
            other => other,
        };
        let last_error = self
            .errors
            .get(name)
            .cloned()
            .or_else(|| probe.and_then(|p| p.last_error.clone()));
        ServiceReport {
            service: name.to_owned(),
            desired: Some(wanted.release.version.clone()),
            running: running.map(|c| c.release.clone()),
            last_known_good: record
                .last_known_good
                .as_ref()
                .map(|l| l.release.version.clone()),
            phase,
            health,
            restarts: probe.map_or(0, |p| p.restarts),
            last_error: last_error.map(report::bounded),
            failed: record.failed.as_ref().map(|f| f.version.clone()),
            secrets: wanted.secrets.clone(),
            failure: record
                .failed
                .as_ref()
                .map(|f| report::bounded(f.reason.clone())),
            at: unix_now(),
        }
    }
}
