//! One session with the control plane: hello, welcome, then heartbeats, certificate
//! renewal and desired-state verification until the link ends.

use std::path::Path;
use std::time::Duration;

use continuum_shared::labels::Labels;
use continuum_shared::link::{FrameWriter, Link, LinkError};
use continuum_shared::protocol::{
    AgentMessage, CloseCode, Heartbeat, Hello, PROTOCOL_VERSION, RefusalCode, ServerMessage,
    ServiceReport, StreamKind, TrustState, TrustStatus,
};
use continuum_shared::unix_now;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::deploy::Reports;
use crate::error::AgentError;
use crate::identity::{Identity, SiteKey};
use crate::renew::renew_over;
use crate::status::{LinkState, StatusFile};
use crate::telemetry::Telemetry;
use crate::trust::{self, DesiredState, FetchLimits, LinkSlot, LinkTransport, TrustError};
use continuum_shared::telemetry::EventKind;

const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed renewal, try again this much later.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// After desired state could not be fetched, try again this much later.
const VERIFY_RETRY: Duration = Duration::from_secs(20);
/// After a telemetry stream failed on a live link, open another this much later.
const TELEMETRY_RETRY: Duration = Duration::from_secs(10);

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The link was lost or closed; reconnect. `welcomed` says whether the session got
    /// as far as the control plane's welcome.
    Lost {
        /// Why.
        reason: String,
        /// Whether the session was accepted before it ended.
        welcomed: bool,
    },
    /// The site was revoked: stop.
    Revoked(String),
    /// The central team ordered the site decommissioned; the order is recorded.
    Decommission,
}

/// What a session needs.
pub struct SessionContext<'a> {
    /// The site's identity (updated in place on renewal).
    pub identity: &'a mut Identity,
    /// The site key.
    pub key: &'a SiteKey,
    /// Where state lives.
    pub state_dir: &'a Path,
    /// Detected facts for the hello.
    pub labels: &'a Labels,
    /// When the process started.
    pub started_at: i64,
    /// The status file.
    pub status: &'a mut StatusFile,
    /// The current link, for downloads that must survive a reconnect.
    pub slot: LinkSlot,
    /// Where newly verified desired state goes into force.
    pub desired: &'a tokio::sync::watch::Sender<Option<DesiredState>>,
    /// The reconciler's service reports.
    pub reports: tokio::sync::watch::Receiver<Reports>,
    /// The agent's own report (the service `continuum-agent`).
    pub agent_report: tokio::sync::watch::Receiver<Option<ServiceReport>>,
    /// The site admin's update lock.
    pub lock: tokio::sync::watch::Receiver<Option<String>>,
    /// Telemetry to deliver while the session lasts.
    pub telemetry: Telemetry,
    /// The container engine, for logs the control plane asks for.
    pub engine: Option<String>,
    /// The public half of the site's secrets key, announced to the control plane.
    pub secrets_recipient: &'a str,
    /// In decommission mode, what was removed: reported at the start of the session.
    pub decommissioned: Option<&'a str>,
}

/// Runs a session on `link` until it ends.
pub async fn run(link: &Link, server: &str, ctx: SessionContext<'_>) -> SessionEnd {
    match serve(link, server, ctx).await {
        Ok(end) => end,
        Err(AgentError::Revoked(reason)) => SessionEnd::Revoked(reason),
        Err(AgentError::Link(LinkError::Closed(closed)))
            if closed.code == Some(CloseCode::Revoked) =>
        {
            SessionEnd::Revoked(closed.reason)
        }
        Err(e) => SessionEnd::Lost {
            reason: e.to_string(),
            welcomed: false,
        },
    }
}

async fn serve(
    link: &Link,
    server: &str,
    ctx: SessionContext<'_>,
) -> Result<SessionEnd, AgentError> {
    let mut stream = link.open(StreamKind::Control, PROTOCOL_VERSION).await?;
    let hello = Hello {
        agent_version: crate::VERSION.into(),
        labels: ctx.labels.clone(),
        started_at: ctx.started_at,
    };
    stream.send(&hello).await?;
    let welcome = match stream.recv_within::<ServerMessage>(WELCOME_TIMEOUT).await {
        Ok(ServerMessage::Welcome(welcome)) => welcome,
        Ok(ServerMessage::Refused(refusal)) if refusal.code == RefusalCode::Revoked => {
            return Err(AgentError::Revoked(refusal.message));
        }
        Ok(ServerMessage::Refused(refusal)) => return Err(AgentError::Refused(refusal)),
        Ok(other) => {
            return Err(AgentError::State(format!(
                "expected a welcome, got {other:?}"
            )));
        }
        Err(e) => return Err(closed_or(link, e)),
    };
    let now = unix_now();
    info!(site = %welcome.site, server, protocol = welcome.protocol_version, "online");
    ctx.status.update(|s| {
        s.state = LinkState::Online;
        s.server = Some(server.to_owned());
        s.transport = Some(link.transport().to_owned());
        s.protocol_version = Some(welcome.protocol_version);
        s.connected_since = Some(now);
        s.heartbeats = 0;
        s.sessions += 1;
        s.retry_in_ms = None;
    });
    let interval = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)));
    // Telemetry and logs streams exist from protocol version 3 on.
    let _side_streams = (welcome.protocol_version >= 3).then(|| {
        AbortOnDrop(vec![
            tokio::spawn(deliver_telemetry(ctx.telemetry.clone(), link.clone())),
            tokio::spawn(crate::logs::serve(
                link.clone(),
                ctx.engine.clone(),
                ctx.identity.site.clone(),
            )),
        ])
    });
    let (writer, reader) = stream.split();
    let messages = reader.spawn::<ServerMessage>();
    let upgrade = crate::upgrade::state::UpgradeDir::new(ctx.state_dir);
    let mut session = Session {
        link,
        writer,
        ctx,
        wanted: 0,
        verifying: None,
        retry_at: None,
        sent: Reports::new(),
        upgrade,
        protocol: welcome.protocol_version,
    };
    match session.run(messages, interval).await {
        Err(AgentError::Revoked(reason)) => Ok(SessionEnd::Revoked(reason)),
        Err(e) => Ok(SessionEnd::Lost {
            reason: e.to_string(),
            welcomed: true,
        }),
        Ok(end) => Ok(end),
    }
}

/// Tasks that live exactly as long as the session.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Delivers telemetry for as long as the link lasts; a failed stream is reopened after
/// a pause (the session notices a broken link on its own).
async fn deliver_telemetry(telemetry: Telemetry, link: Link) {
    loop {
        if let Err(e) = telemetry.deliver(link.clone()).await {
            if link.close_reason().is_some() {
                return;
            }
            warn!(error = %e, "telemetry delivery stopped; retrying shortly");
        }
        tokio::time::sleep(TELEMETRY_RETRY).await;
    }
}

/// If the link is gone, its close reason says more than the stream error.
fn closed_or(link: &Link, error: LinkError) -> AgentError {
    match link.close_reason() {
        Some(closed) if closed.code == Some(CloseCode::Revoked) => {
            AgentError::Revoked(closed.reason)
        }
        Some(closed) => AgentError::Link(LinkError::Closed(closed)),
        None => AgentError::Link(error),
    }
}

fn renewal_deadline(identity: &Identity) -> Instant {
    let wait = (identity.renew_at() - unix_now()).max(0) as u64;
    Instant::now() + Duration::from_secs(wait)
}

struct Session<'a, 'b> {
    link: &'a Link,
    writer: FrameWriter,
    ctx: SessionContext<'b>,
    /// The newest generation the control plane announced.
    wanted: u64,
    verifying: Option<JoinHandle<Result<DesiredState, TrustError>>>,
    retry_at: Option<Instant>,
    /// The service reports this session has sent.
    sent: Reports,
    /// Where a trial of this build is recorded.
    upgrade: crate::upgrade::state::UpgradeDir,
    /// The protocol version of the session.
    protocol: u16,
}

impl Session<'_, '_> {
    async fn run(
        &mut self,
        mut messages: tokio::sync::mpsc::Receiver<Result<Option<ServerMessage>, LinkError>>,
        interval: Duration,
    ) -> Result<SessionEnd, AgentError> {
        let mut seq = 0u64;
        let mut next_beat = Instant::now() + interval;
        let mut renew_at = renewal_deadline(self.ctx.identity);
        if let Some(report) = self.ctx.decommissioned {
            info!(%report, "reporting the decommission carried out");
            self.writer
                .send(&AgentMessage::Decommissioned(report.to_owned()))
                .await
                .map_err(|e| closed_or(self.link, e))?;
        }
        if self.protocol >= 4 {
            let recipient = self.ctx.secrets_recipient.to_owned();
            self.writer
                .send(&AgentMessage::SecretsKey(recipient))
                .await
                .map_err(|e| closed_or(self.link, e))?;
        }
        self.send_reports().await?;
        self.send_lock().await?;
        // A build on trial proves itself by verifying the desired state afresh.
        self.maybe_verify().await;
        let (mut reports_open, mut lock_open, mut agent_open) = (true, true, true);
        loop {
            let retry_at = self
                .retry_at
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = sleep_until(next_beat) => {
                    seq += 1;
                    let uptime = (unix_now() - self.ctx.started_at).max(0) as u64;
                    let beat = AgentMessage::Heartbeat(Heartbeat { seq, uptime_secs: uptime });
                    self.writer.send(&beat).await.map_err(|e| closed_or(self.link, e))?;
                    let now = unix_now();
                    let (sent, received) = self.link.traffic();
                    self.ctx.status.update(|s| {
                        s.last_heartbeat = Some(now);
                        s.heartbeats = seq;
                        s.link_bytes_sent = sent;
                        s.link_bytes_received = received;
                    });
                    next_beat += interval;
                }
                _ = sleep_until(renew_at) => {
                    match renew_over(self.link, self.ctx.identity, self.ctx.key, self.ctx.state_dir).await {
                        Ok(()) => renew_at = renewal_deadline(self.ctx.identity),
                        Err(AgentError::Revoked(reason)) => return Err(AgentError::Revoked(reason)),
                        Err(e) => {
                            warn!(error = %e, "certificate renewal failed; retrying in a minute");
                            renew_at = Instant::now() + RENEW_RETRY;
                        }
                    }
                }
                message = messages.recv() => match message {
                    Some(Ok(Some(ServerMessage::DesiredState { generation }))) => {
                        self.wanted = self.wanted.max(generation);
                        self.maybe_verify().await;
                    }
                    Some(Ok(Some(ServerMessage::Refused(refusal)))) if refusal.code == RefusalCode::Revoked => {
                        return Err(AgentError::Revoked(refusal.message));
                    }
                    Some(Ok(Some(ServerMessage::Decommission { keep_data }))) => {
                        // Told again while carrying it out: the report is on its way.
                        if self.ctx.decommissioned.is_none() {
                            let order = crate::decommission::Order { keep_data, report: None };
                            crate::decommission::save(self.ctx.state_dir, &order)?;
                            warn!(keep_data, "the central team ordered this site decommissioned");
                            return Ok(SessionEnd::Decommission);
                        }
                    }
                    Some(Ok(Some(other))) => warn!(message = ?other, "unexpected message from the control plane; ignored"),
                    Some(Ok(None)) | None => {
                        return Ok(SessionEnd::Lost { reason: "the control plane ended the session".into(), welcomed: true });
                    }
                    Some(Err(e)) => return Err(closed_or(self.link, e)),
                },
                outcome = wait(&mut self.verifying) => {
                    self.verifying = None;
                    self.finish_verify(outcome).await?;
                }
                // A closed channel (no reconciler, no lock watcher) is never ready again.
                changed = self.ctx.reports.changed(), if reports_open => match changed {
                    Ok(()) => self.send_reports().await?,
                    Err(_) => reports_open = false,
                },
                changed = self.ctx.agent_report.changed(), if agent_open => match changed {
                    Ok(()) => self.send_reports().await?,
                    Err(_) => agent_open = false,
                },
                changed = self.ctx.lock.changed(), if lock_open => match changed {
                    Ok(()) => self.send_lock().await?,
                    Err(_) => lock_open = false,
                },
                _ = sleep_until(retry_at), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.maybe_verify().await;
                }
                closed = self.link.closed() => {
                    if closed.code == Some(CloseCode::Revoked) {
                        return Err(AgentError::Revoked(closed.reason));
                    }
                    return Ok(SessionEnd::Lost { reason: closed.to_string(), welcomed: true });
                }
            }
        }
    }

    fn in_force(&self) -> u64 {
        DesiredState::load(self.ctx.state_dir)
            .ok()
            .flatten()
            .map_or(0, |d| d.generation)
    }

    /// Starts verifying the announced generation if it is newer than the one in force
    /// and no verification is running.
    async fn maybe_verify(&mut self) {
        let trial = crate::upgrade::updater::on_trial(&self.upgrade);
        if self.verifying.is_some() || (self.wanted <= self.in_force() && !trial) {
            return;
        }
        if let Err(e) = self.ensure_roots().await {
            self.report(TrustState::Refused, Some(e.to_string())).await;
            return;
        }
        let (dir, site) = (
            self.ctx.state_dir.to_path_buf(),
            self.ctx.identity.site.clone(),
        );
        let transport = LinkTransport::new(self.ctx.slot.clone(), FetchLimits::default());
        info!(generation = self.wanted, "verifying new desired state");
        self.verifying = Some(tokio::spawn(async move {
            trust::verify(&dir, &site, transport).await
        }));
    }

    async fn finish_verify(
        &mut self,
        outcome: Result<DesiredState, TrustError>,
    ) -> Result<(), AgentError> {
        match outcome {
            Ok(state) if state.generation > self.in_force() => {
                state.save(self.ctx.state_dir)?;
                self.ctx.desired.send_replace(Some(state.clone()));
                self.ctx.telemetry.event(
                    EventKind::DesiredState,
                    None,
                    None,
                    format!(
                        "generation {} verified and in force ({} releases)",
                        state.generation,
                        state.releases.len()
                    ),
                );
                info!(
                    generation = state.generation,
                    releases = state.releases.len(),
                    "desired state verified and in force"
                );
                self.report(TrustState::Verified, None).await;
                self.commit_trial().await?;
            }
            Ok(state)
                if state.generation == self.in_force()
                    && crate::upgrade::updater::on_trial(&self.upgrade) =>
            {
                self.report(TrustState::Verified, None).await;
                self.commit_trial().await?;
            }
            Ok(state) => {
                let reason = format!(
                    "the director offered generation {}, not newer than the one in force ({}); keeping it",
                    state.generation,
                    self.in_force()
                );
                warn!(%reason, "desired state refused");
                self.report(TrustState::Refused, Some(reason)).await;
            }
            Err(TrustError::Refused(reason)) => {
                warn!(%reason, "desired state refused; the state in force is untouched");
                let message = format!("generation {} refused: {reason}", self.wanted);
                self.ctx
                    .telemetry
                    .event(EventKind::TrustRefused, None, None, message);
                self.report(TrustState::Refused, Some(reason)).await;
            }
            Err(TrustError::Stale(reason)) => {
                warn!(%reason, "desired state not available; keeping the state in force");
                self.report(TrustState::Stale, Some(reason)).await;
                self.retry_at = Some(Instant::now() + VERIFY_RETRY);
            }
        }
        Ok(())
    }

    /// Commits this build's trial, if it is on one: it reconnected and verified the
    /// desired state; it reports itself, and the launcher keeps it.
    async fn commit_trial(&mut self) -> Result<(), AgentError> {
        if !crate::upgrade::updater::on_trial(&self.upgrade) {
            return Ok(());
        }
        self.send_reports().await?;
        crate::upgrade::updater::crash_point("upgrade-before-commit");
        let from = self.upgrade.trial().ok().flatten().map(|t| t.from.version);
        if crate::upgrade::updater::commit(&self.upgrade) {
            self.ctx.telemetry.event(
                EventKind::AgentUpdated,
                Some(continuum_shared::manifest::AGENT_SERVICE),
                Some(crate::VERSION),
                format!(
                    "agent updated from {} to {} and committed",
                    from.as_deref().unwrap_or("?"),
                    crate::VERSION
                ),
            );
        }
        Ok(())
    }

    /// Tells the control plane about the update lock as it is now.
    async fn send_lock(&mut self) -> Result<(), AgentError> {
        let lock = self.ctx.lock.borrow_and_update().clone();
        self.writer
            .send(&AgentMessage::Lock(lock))
            .await
            .map_err(|e| closed_or(self.link, e))
    }

    /// Sends the control plane each service report that changed since it last heard.
    async fn send_reports(&mut self) -> Result<(), AgentError> {
        let mut current = self.ctx.reports.borrow_and_update().clone();
        let agent: Option<ServiceReport> = self.ctx.agent_report.borrow_and_update().clone();
        if let Some(agent) = agent {
            current.insert(agent.service.clone(), agent);
        }
        for (name, report) in current {
            let known = self
                .sent
                .get(&name)
                .is_some_and(|sent| crate::deploy::same_report(sent, &report));
            if !known {
                self.writer
                    .send(&AgentMessage::Service(report.clone()))
                    .await
                    .map_err(|e| closed_or(self.link, e))?;
                self.sent.insert(name, report);
            }
        }
        Ok(())
    }

    /// Tells the control plane and the status file how the last attempt went.
    async fn report(&mut self, state: TrustState, reason: Option<String>) {
        let verified_generation = self.in_force();
        let wanted = self.wanted;
        let shown = reason.clone();
        self.ctx.status.update(|s| {
            s.trust_state = Some(format!("{state:?}").to_lowercase());
            s.trust_reason = shown;
            s.trust_at = Some(unix_now());
            s.wanted_generation = wanted;
        });
        let status = TrustStatus {
            verified_generation,
            state,
            reason,
        };
        if let Err(e) = self.writer.send(&AgentMessage::Trust(status)).await {
            warn!(error = %e, "could not report the desired state to the control plane");
        }
    }

    /// Fetches the initial roots of both repositories if this site has none yet (its
    /// first session), checking the image root against the pin given at join.
    async fn ensure_roots(&mut self) -> Result<(), AgentError> {
        for repo in [trust::Repo::Image, trust::Repo::Director] {
            let path = trust::initial_root_path(self.ctx.state_dir, repo);
            if path.exists() {
                continue;
            }
            let bytes = fetch_initial_root(self.link, repo).await?;
            if repo == trust::Repo::Image
                && let Some(pin) = &self.ctx.identity.image_root_sha256
            {
                let actual = continuum_shared::tls::hex(&continuum_shared::tls::sha256(&bytes));
                if !actual.eq_ignore_ascii_case(pin) {
                    return Err(AgentError::Crypto(format!(
                        "the control plane's image root has SHA-256 {actual}, not the {pin} this site pinned at join: refusing to trust it"
                    )));
                }
            }
            if let Some(dir) = path.parent() {
                continuum_shared::files::create_private_dir(dir)?;
            }
            continuum_shared::files::write_private(&path, &bytes)?;
        }
        Ok(())
    }
}

/// Waits for a running verification; pending forever when none runs.
async fn wait(
    task: &mut Option<JoinHandle<Result<DesiredState, TrustError>>>,
) -> Result<DesiredState, TrustError> {
    match task {
        Some(handle) => handle
            .await
            .unwrap_or_else(|e| Err(TrustError::Stale(format!("verification failed: {e}")))),
        None => std::future::pending().await,
    }
}

/// Fetches `1.root.json` of a repository over the (CA-pinned, mutually authenticated)
/// link.
async fn fetch_initial_root(link: &Link, repo: trust::Repo) -> Result<Vec<u8>, AgentError> {
    use continuum_shared::protocol::{FetchRequest, FetchResponse, Repository};
    use tokio::io::AsyncReadExt;
    let repository = match repo {
        trust::Repo::Image => Repository::Image,
        trust::Repo::Director => Repository::Director,
    };
    let mut stream = link.open(StreamKind::Fetch, PROTOCOL_VERSION).await?;
    let request = FetchRequest {
        repository,
        path: "metadata/1.root.json".into(),
        offset: 0,
    };
    stream.send(&request).await?;
    let length = match stream.recv_within::<FetchResponse>(WELCOME_TIMEOUT).await? {
        FetchResponse::Found { length } if length <= trust::limits().max_root_size => length,
        FetchResponse::Found { length } => {
            return Err(AgentError::State(format!(
                "the initial root is {length} bytes, too large"
            )));
        }
        FetchResponse::NotFound => {
            return Err(AgentError::State(
                "the control plane has no initial root".into(),
            ));
        }
        FetchResponse::Refused(r) => return Err(AgentError::Refused(r)),
    };
    let mut bytes = Vec::with_capacity(length as usize);
    let mut reader = stream.into_raw_reader().take(length);
    let read = reader.read_to_end(&mut bytes);
    tokio::time::timeout(WELCOME_TIMEOUT, read)
        .await
        .map_err(|_| AgentError::State("timed out fetching the initial root".into()))?
        .map_err(|e| AgentError::State(e.to_string()))?;
    if bytes.len() as u64 != length {
        return Err(AgentError::State(
            "the initial root arrived incomplete".into(),
        ));
    }
    Ok(bytes)
}
