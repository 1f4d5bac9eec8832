//! One agent session on its control stream: hello, welcome, then heartbeats, desired
//! state notices and trust reports until the link ends, the agent goes quiet, or an
//! operator revokes the site.

use std::sync::Arc;
use std::time::Duration;

use continuum_shared::link::{FrameWriter, FramedStream, Link, LinkError};
use continuum_shared::protocol::{AgentMessage, CloseCode, Hello, ServerMessage, Welcome, v1, v3};
use continuum_shared::unix_now;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span};

use super::{REFUSAL_LINGER, close_code, protocol_violation};
use crate::fleet::LiveView;
use crate::model::SiteRecord;
use crate::plane::ControlPlane;
use crate::{desired, sites};

/// How long an agent has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a session to its end.
pub async fn run(cp: Arc<ControlPlane>, link: Link, site: SiteRecord, stream: FramedStream) {
    let span = info_span!("session", site = %site.name, remote = %link.remote_address());
    serve(cp, link, site, stream).instrument(span).await
}

async fn read_hello(stream: &mut FramedStream) -> Result<Hello, LinkError> {
    match stream.version() {
        1 => stream
            .recv_within::<v1::Hello>(HELLO_TIMEOUT)
            .await
            .map(Hello::from),
        _ => stream.recv_within::<Hello>(HELLO_TIMEOUT).await,
    }
}

async fn serve(cp: Arc<ControlPlane>, link: Link, site: SiteRecord, mut stream: FramedStream) {
    let hello = match read_hello(&mut stream).await {
        Ok(hello) => hello,
        Err(e) => return protocol_violation(&link, &format!("hello: {e}")),
    };
    let version = stream.version();
    let address = link.remote_address();
    if let Err(refusal) =
        sites::record_hello(&cp, &site.name, &hello, version, &address.to_string())
    {
        let _ = stream.send(&ServerMessage::Refused(refusal.clone())).await;
        stream.finish().await;
        link.close_after(REFUSAL_LINGER, close_code(refusal.code), &refusal.message)
            .await;
        return;
    }
    let now = unix_now();
    let view = LiveView {
        connected_at: now,
        address,
        transport: link.transport(),
        protocol_version: version,
        last_heartbeat: now,
        heartbeats: 0,
    };
    let generation = desired::generation(&cp, &site.name);
    let (id, notices) = cp.fleet.attach(&site.name, link.clone(), view, generation);
    let heartbeat = cp.settings.heartbeat;
    let welcome = Welcome {
        site: site.name.clone(),
        protocol_version: version,
        heartbeat_secs: heartbeat.as_secs().max(1) as u32,
        server_time: now,
    };
    let (mut writer, reader) = stream.split();
    if writer.send(&ServerMessage::Welcome(welcome)).await.is_ok() {
        info!(agent_version = %hello.agent_version, protocol = version, "site online");
        let session = Session {
            cp: &cp,
            link: &link,
            site: &site.name,
            id,
            version,
        };
        let messages = match version {
            1..=3 => reader.spawn_as::<v3::AgentMessage, AgentMessage>(),
            _ => reader.spawn::<AgentMessage>(),
        };
        let ended = session.run(&mut writer, messages, notices, heartbeat).await;
        info!(reason = %ended, "site offline");
    }
    if let Some(view) = cp.fleet.detach(&site.name, id) {
        sites::record_last_seen(&cp, &site.name, view.last_heartbeat);
    }
}

struct Session<'a> {
    cp: &'a ControlPlane,
    link: &'a Link,
    site: &'a str,
    id: u64,
    version: u16,
}

impl Session<'_> {
    /// Serves the session until it ends; returns why it ended.
    async fn run(
        &self,
        writer: &mut FrameWriter,
        mut messages: mpsc::Receiver<Result<Option<AgentMessage>, LinkError>>,
        mut notices: watch::Receiver<u64>,
        interval: Duration,
    ) -> String {
        // Version-1 agents know nothing of desired state.
        let notify = self.version >= 2;
        if notify {
            let generation = *notices.borrow_and_update();
            if let Some(message) = self.notice(generation)
                && writer.send(&message).await.is_err()
            {
                return "the link broke while sending the desired state".into();
            }
        }
        // Three missed beats and the agent is presumed gone, even if QUIC still answers.
        let silence = interval * 3 + Duration::from_secs(2);
        let mut deadline = tokio::time::Instant::now() + silence;
        loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Some(Ok(Some(message))) => {
                        deadline = tokio::time::Instant::now() + silence;
                        self.handle(message).await;
                    }
                    Some(Ok(None)) | None => {
                        self.link.close(CloseCode::Normal, "session ended by the agent");
                        return "the agent ended its session".into();
                    }
                    Some(Err(LinkError::Closed(closed))) => return closed.to_string(),
                    Some(Err(e)) => {
                        protocol_violation(self.link, &format!("control stream: {e}"));
                        return format!("protocol violation: {e}");
                    }
                },
                changed = notices.changed(), if notify => {
                    if changed.is_err() {
                        return "replaced by a newer session".into();
                    }
                    let generation = *notices.borrow_and_update();
                    if let Some(message) = self.notice(generation)
                        && writer.send(&message).await.is_err()
                    {
                        return "the link broke while sending a notice".into();
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.link.close(CloseCode::Protocol, "no heartbeat received in time");
                    return format!("no heartbeat for {}s", silence.as_secs());
                }
                closed = self.link.closed() => return closed.to_string(),
            }
        }
    }

    /// What a notice tells the agent: a standing decommission order (from version 4
    /// on), else its desired state's generation, if it has one.
    fn notice(&self, generation: u64) -> Option<ServerMessage> {
        if self.version >= 4
            && let Some(order) = crate::decommission::pending(self.cp, self.site)
        {
            return Some(ServerMessage::Decommission {
                keep_data: order.keep_data,
            });
        }
        (generation > 0).then_some(ServerMessage::DesiredState { generation })
    }

    async fn handle(&self, message: AgentMessage) {
        match message {
            AgentMessage::Heartbeat(_) => self.cp.fleet.heartbeat(self.site, self.id, unix_now()),
            AgentMessage::Trust(status) => {
                info!(generation = status.verified_generation, state = ?status.state, reason = ?status.reason, "site reported its desired state");
                sites::record_trust(self.cp, self.site, &status);
            }
            AgentMessage::Lock(reason) => {
                info!(lock = ?reason, "site reported its update lock");
                sites::record_lock(self.cp, self.site, reason.as_deref());
            }
            AgentMessage::Service(report) => {
                info!(service = %report.service, phase = ?report.phase, health = ?report.health, running = ?report.running, "site reported a service");
                sites::record_service(self.cp, self.site, &report);
            }
            AgentMessage::SecretsKey(recipient) => {
                crate::secrets::record_site_key(self.cp, self.site, &recipient).await;
            }
            AgentMessage::Decommissioned(report) => {
                crate::decommission::done(self.cp, self.site, &report);
            }
        }
    }
}
