//! `continuum-agent run`: keep a session with the control plane for as long as the
//! process lives. Lost links are retried with jittered exponential backoff; an expired
//! certificate is renewed by proof of possession; a revoked site stops.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use continuum_shared::backoff::Backoff;
use continuum_shared::protocol::CloseCode;
use continuum_shared::tls::{ServerTrust, client_tls};
use continuum_shared::unix_now;
use tracing::{info, warn};

use crate::connect::dial;
use crate::deploy::Reconciler;
use crate::error::AgentError;
use crate::identity::{Identity, SiteKey};
use crate::renew::renew_expired;
use crate::session::{self, SessionContext, SessionEnd};
use crate::status::{LinkState, StatusFile};
use crate::telemetry::Telemetry;
use crate::trust::DesiredState;
use continuum_shared::telemetry::EventKind;

/// Settings of the run loop.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The state directory.
    pub state_dir: PathBuf,
    /// First reconnect delay ceiling.
    pub reconnect_base: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// What runs the services of the desired state.
    pub services: Services,
    /// How telemetry is taken and kept.
    pub telemetry: crate::telemetry::Settings,
}

/// What runs the services that the verified desired state names.
#[derive(Clone)]
pub enum Services {
    /// Nothing: the agent verifies and keeps the desired state, and updates itself.
    None,
    /// Containers through the engine, reconciled by the agent.
    Engine(crate::deploy::Settings),
    /// Something outside the agent runs them and says how they stand: it is handed
    /// each desired state that goes into force and answers with the reports to send.
    /// The fleet simulator models thousands of sites in one process this way.
    Reported(Arc<dyn Fn(&DesiredState) -> crate::deploy::Reports + Send + Sync>),
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Services::None => f.write_str("None"),
            Services::Engine(settings) => f.debug_tuple("Engine").field(settings).finish(),
            Services::Reported(_) => f.write_str("Reported"),
        }
    }
}

/// Runs until `shutdown` resolves (Ok) or the site is revoked (Err).
pub async fn run(
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut status = StatusFile::new(&options.state_dir);
    let identity = Identity::require(&options.state_dir)?;
    let site = identity.site.clone();
    let (slot, links) = tokio::sync::watch::channel(None);
    let in_force = DesiredState::load(&options.state_dir).unwrap_or_else(|e| {
        warn!(error = %e, "the desired state in force is unreadable; deploying nothing until a new one verifies");
        None
    });
    let (desired, desired_rx) = tokio::sync::watch::channel(in_force);
    let (reports_tx, reports) = tokio::sync::watch::channel(crate::deploy::Reports::new());
    let (policy_tx, policy) = tokio::sync::watch::channel(site_policy(&options.state_dir));
    let (policy_errors, _) = tokio::sync::watch::channel(None);
    if let Err(e) = crate::admission::watch(options.state_dir.clone(), policy_tx, policy_errors) {
        warn!(error = %e, "cannot watch the site policy file; changes apply at the next start");
    }
    let telemetry = Telemetry::open(&options.state_dir, &options.telemetry)?;
    let secrets_key = crate::secrets::load_or_create(&options.state_dir)?;
    let secrets_recipient = secrets_key.recipient();
    let started_at = unix_now();
    telemetry.event(
        EventKind::AgentStarted,
        None,
        None,
        format!("agent {} started", crate::VERSION),
    );
    let engine = match &options.services {
        Services::Engine(settings) => Some(settings.engine.clone()),
        _ => None,
    };
    let background = [
        tokio::spawn(telemetry.clone().keep_flushed()),
        tokio::spawn(crate::telemetry::collect(
            telemetry.clone(),
            options.telemetry.clone(),
            crate::telemetry::Sources {
                site: identity.site.clone(),
                state_dir: options.state_dir.clone(),
                engine: engine.clone(),
                reports: reports.clone(),
                started_at,
            },
        )),
    ];
    // A site being decommissioned runs nothing: it removes what is ours, reports it and
    // waits to be revoked.
    let decommissioned = match crate::decommission::pending(&options.state_dir) {
        Some(order) => Some(carry_out(&options, &identity.site, order).await?),
        None => None,
    };
    let services = match decommissioned {
        Some(_) => Services::None,
        None => options.services.clone(),
    };
    let mut reconciler = match services {
        Services::Engine(settings) => {
            let reconciler = Reconciler::new(
                identity.site.clone(),
                options.state_dir.clone(),
                settings,
                crate::deploy::Wiring {
                    link: links,
                    desired: desired_rx,
                    reports: reports_tx,
                    policy,
                    telemetry: telemetry.clone(),
                    secrets_key,
                },
            )?;
            Some(tokio::spawn(reconciler.run()))
        }
        Services::Reported(report) => Some(tokio::spawn(follow(desired_rx, reports_tx, report))),
        Services::None => None,
    };
    let (agent_report_tx, agent_report) = tokio::sync::watch::channel(None);
    let restart = std::sync::Arc::new(tokio::sync::Notify::new());
    let binary = std::env::current_exe()
        .map_err(|e| AgentError::State(format!("cannot tell where this binary is: {e}")))?;
    let mut updater = decommissioned.is_none().then(|| {
        tokio::spawn(
            crate::upgrade::updater::Updater {
                upgrade: crate::upgrade::state::UpgradeDir::new(&options.state_dir),
                link: slot.subscribe(),
                desired: desired.subscribe(),
                report: agent_report_tx,
                restart: restart.clone(),
                binary,
            }
            .run(),
        )
    });
    let mut channels = Channels {
        slot,
        desired,
        reports,
        agent_report,
        lock: watch_lock(&options.state_dir),
        telemetry: telemetry.clone(),
        engine,
        started_at,
        secrets_recipient,
        decommissioned,
    };
    let mut result = tokio::select! {
        result = connect_loop(&options, identity, &channels, &mut status) => result,
        _ = restart.notified() => Err(AgentError::Restart),
        _ = &mut shutdown => Ok(()),
    };
    if matches!(result, Err(AgentError::Decommission)) {
        // Ordered during this run: nothing may deploy or update any more, then the
        // order is carried out and reported over a new session.
        for task in [updater.take(), reconciler.take()].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        let order = crate::decommission::pending(&options.state_dir).unwrap_or(
            crate::decommission::Order {
                keep_data: true,
                report: None,
            },
        );
        result = match carry_out(&options, &site, order).await {
            Ok(report) => {
                channels.decommissioned = Some(report);
                let identity = Identity::require(&options.state_dir)?;
                tokio::select! {
                    result = connect_loop(&options, identity, &channels, &mut status) => result,
                    _ = &mut shutdown => Ok(()),
                }
            }
            Err(e) => Err(e),
        };
    }
    if let Some(updater) = updater {
        updater.abort();
    }
    if let Some(reconciler) = reconciler {
        reconciler.abort();
    }
    for task in background {
        task.abort();
    }
    if let Err(e) = telemetry.outbox().flush() {
        warn!(error = %e, "cannot flush the telemetry outbox");
    }
    let final_state = if matches!(result, Err(AgentError::Revoked(_))) {
        LinkState::Revoked
    } else {
        LinkState::Stopped
    };
    status.update(|s| {
        s.state = final_state;
        if let Err(e) = &result {
            s.last_error = Some(e.to_string());
        }
    });
    result
}

/// Hands each desired state that goes into force to `report` and sends what it says.
async fn follow(
    mut desired: tokio::sync::watch::Receiver<Option<DesiredState>>,
    reports: tokio::sync::watch::Sender<crate::deploy::Reports>,
    report: Arc<dyn Fn(&DesiredState) -> crate::deploy::Reports + Send + Sync>,
) {
    loop {
        // Cloned, so that the channel is not held while the reporter works.
        let state = desired.borrow_and_update().clone();
        if let Some(state) = state {
            reports.send_replace(report(&state));
        }
        if desired.changed().await.is_err() {
            return;
        }
    }
}

/// The site policy at start. One that does not parse admits nothing new until it is
/// fixed (what runs keeps running).
fn site_policy(state_dir: &std::path::Path) -> crate::admission::SitePolicy {
    crate::admission::load(state_dir).unwrap_or_else(|e| {
        warn!(error = %e, "the site policy is invalid; admitting no new release until it is fixed");
        crate::admission::SitePolicy {
            allowed_registries: Some(Vec::new()),
            ..Default::default()
        }
    })
}

/// What the run loop shares with sessions and the reconciler.
struct Channels {
    /// The current link, for downloads.
    slot: tokio::sync::watch::Sender<Option<continuum_shared::link::Link>>,
    /// The desired state in force, for the reconciler.
    desired: tokio::sync::watch::Sender<Option<DesiredState>>,
    /// The reconciler's service reports, for the control plane.
    reports: tokio::sync::watch::Receiver<crate::deploy::Reports>,
    /// The agent's own report, for the control plane.
    agent_report: tokio::sync::watch::Receiver<Option<continuum_shared::protocol::ServiceReport>>,
    /// The site admin's update lock, for the control plane.
    lock: tokio::sync::watch::Receiver<Option<String>>,
    /// Telemetry, delivered by each session.
    telemetry: Telemetry,
    /// The container engine, for logs on demand.
    engine: Option<String>,
    /// When the agent started, Unix seconds.
    started_at: i64,
    /// The public half of the site's secrets key.
    secrets_recipient: String,
    /// In decommission mode: what was removed, to report.
    decommissioned: Option<String>,
}

/// Carries out the removal part of a decommission order (once: the report is kept with
/// the order) and returns the report.
async fn carry_out(
    options: &RunOptions,
    site: &str,
    order: crate::decommission::Order,
) -> Result<String, AgentError> {
    if let Some(report) = order.report {
        return Ok(report);
    }
    warn!(
        keep_data = order.keep_data,
        "decommissioning this site as the central team ordered"
    );
    let (engine, secrets_dir) = match &options.services {
        Services::Engine(settings) => {
            (Some(settings.engine.as_str()), settings.secrets_dir.clone())
        }
        _ => (None, crate::secrets::default_dir(&options.state_dir)),
    };
    let report = crate::decommission::clean(engine, site, order.keep_data, &secrets_dir).await;
    crate::decommission::save(
        &options.state_dir,
        &crate::decommission::Order {
            keep_data: order.keep_data,
            report: Some(report.clone()),
        },
    )?;
    Ok(report)
}

/// The update lock as it is now, kept current as the site admin takes or releases it.
fn watch_lock(state_dir: &std::path::Path) -> tokio::sync::watch::Receiver<Option<String>> {
    let read = |dir: &std::path::Path| crate::lock::read(dir).map(|l| l.reason);
    let (tx, rx) = tokio::sync::watch::channel(read(state_dir));
    match continuum_shared::watch::watch_dir(state_dir, |p| {
        p.file_name().is_some_and(|n| n == crate::lock::FILE)
    }) {
        Ok(mut changes) => {
            let dir = state_dir.to_owned();
            tokio::spawn(async move {
                while changes.next().await.is_some() {
                    let now = read(&dir);
                    tx.send_if_modified(|old| {
                        let changed = *old != now;
                        *old = now.clone();
                        changed
                    });
                }
            });
        }
        Err(e) => {
            warn!(error = %e, "cannot watch the update lock; changes apply at the next start")
        }
    }
    rx
}

async fn connect_loop(
    options: &RunOptions,
    mut identity: Identity,
    channels: &Channels,
    status: &mut StatusFile,
) -> Result<(), AgentError> {
    let dir = &options.state_dir;
    let key = SiteKey::load(dir)?;
    let labels = crate::labels::detect();
    let started_at = channels.started_at;
    let mut backoff = Backoff::new(options.reconnect_base, options.reconnect_max);
    info!(site = %identity.site, version = crate::VERSION, "agent starting");
    status.update(|s| s.state = LinkState::Starting);

    loop {
        status.update(|s| s.state = LinkState::Connecting);
        let error = match attempt(
            &mut identity,
            &key,
            &labels,
            started_at,
            options,
            status,
            channels,
        )
        .await
        {
            Attempt::Revoked(reason) => {
                warn!(%reason, "this site was revoked; stopping");
                return Err(AgentError::Revoked(reason));
            }
            Attempt::Decommission => return Err(AgentError::Decommission),
            Attempt::Ended { reason, welcomed } => {
                if welcomed {
                    backoff.reset();
                }
                reason
            }
        };
        let delay = backoff.next_delay();
        warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "control plane unreachable or session lost; will retry");
        status.waiting(delay.as_millis() as u64, error);
        tokio::time::sleep(delay).await;
    }
}

enum Attempt {
    Ended { reason: String, welcomed: bool },
    Revoked(String),
    Decommission,
}

async fn attempt(
    identity: &mut Identity,
    key: &SiteKey,
    labels: &continuum_shared::labels::Labels,
    started_at: i64,
    options: &RunOptions,
    status: &mut StatusFile,
    channels: &Channels,
) -> Attempt {
    let slot = &channels.slot;
    let dir = &options.state_dir;
    if identity.expired(unix_now()) {
        info!(site = %identity.site, "certificate expired while offline; renewing by proof of key possession");
        match renew_expired(identity, key, dir).await {
            Ok(()) => {}
            Err(AgentError::Revoked(reason)) => return Attempt::Revoked(reason),
            Err(e) => {
                return Attempt::Ended {
                    reason: format!("renewing the expired certificate: {e}"),
                    welcomed: false,
                };
            }
        }
    }
    let tls = match client_tls(
        ServerTrust::Ca(identity.ca()),
        Some((identity.chain(), key.private_key_der())),
    ) {
        Ok(tls) => tls,
        Err(e) => {
            return Attempt::Ended {
                reason: format!("TLS setup: {e}"),
                welcomed: false,
            };
        }
    };
    let connection = match dial(&identity.addresses, tls).await {
        Ok(connection) => connection,
        Err(e) => {
            return Attempt::Ended {
                reason: e.to_string(),
                welcomed: false,
            };
        }
    };
    slot.send_replace(Some(connection.link.clone()));
    let ctx = SessionContext {
        identity,
        key,
        state_dir: dir,
        labels,
        started_at,
        status,
        slot: slot.subscribe(),
        desired: &channels.desired,
        reports: channels.reports.clone(),
        agent_report: channels.agent_report.clone(),
        lock: channels.lock.clone(),
        telemetry: channels.telemetry.clone(),
        engine: channels.engine.clone(),
        secrets_recipient: &channels.secrets_recipient,
        decommissioned: channels.decommissioned.as_deref(),
    };
    let end = session::run(&connection.link, &connection.address, ctx).await;
    slot.send_replace(None);
    connection
        .link
        .close(CloseCode::Normal, "agent session over");
    match end {
        SessionEnd::Revoked(reason) => Attempt::Revoked(reason),
        SessionEnd::Lost { reason, welcomed } => Attempt::Ended { reason, welcomed },
        SessionEnd::Decommission => Attempt::Decommission,
    }
}
