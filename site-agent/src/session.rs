//! One session with the control plane: hello, welcome, then heartbeats and certificate
//! renewal until the link ends.

use std::path::Path;
use std::time::Duration;

use continuum_shared::labels::Labels;
use continuum_shared::link::{FramedStream, Link, LinkError};
use continuum_shared::protocol::{
    AgentMessage, CloseCode, Heartbeat, Hello, PROTOCOL_VERSION, RefusalCode, ServerMessage,
    StreamKind,
};
use continuum_shared::unix_now;
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::error::AgentError;
use crate::identity::{Identity, SiteKey};
use crate::renew::renew_over;
use crate::status::{LinkState, StatusFile};

const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed renewal, try again this much later.
const RENEW_RETRY: Duration = Duration::from_secs(60);

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
    let reason = heartbeat_loop(link, &mut stream, interval, ctx).await;
    Ok(match reason {
        Err(AgentError::Revoked(reason)) => SessionEnd::Revoked(reason),
        Err(e) => SessionEnd::Lost {
            reason: e.to_string(),
            welcomed: true,
        },
        Ok(end) => end,
    })
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

async fn heartbeat_loop(
    link: &Link,
    stream: &mut FramedStream,
    interval: Duration,
    ctx: SessionContext<'_>,
) -> Result<SessionEnd, AgentError> {
    let mut seq = 0u64;
    let mut next_beat = Instant::now() + interval;
    let mut renew_at = renewal_deadline(ctx.identity);
    loop {
        tokio::select! {
            _ = sleep_until(next_beat) => {
                seq += 1;
                let uptime = (unix_now() - ctx.started_at).max(0) as u64;
                stream.send(&AgentMessage::Heartbeat(Heartbeat { seq, uptime_secs: uptime })).await.map_err(|e| closed_or(link, e))?;
                let now = unix_now();
                ctx.status.update(|s| {
                    s.last_heartbeat = Some(now);
                    s.heartbeats = seq;
                });
                next_beat += interval;
            }
            _ = sleep_until(renew_at) => {
                match renew_over(link, ctx.identity, ctx.key, ctx.state_dir).await {
                    Ok(()) => renew_at = renewal_deadline(ctx.identity),
                    Err(AgentError::Revoked(reason)) => return Err(AgentError::Revoked(reason)),
                    Err(e) => {
                        warn!(error = %e, "certificate renewal failed; retrying in a minute");
                        renew_at = Instant::now() + RENEW_RETRY;
                    }
                }
            }
            message = stream.recv::<ServerMessage>() => match message {
                Ok(Some(ServerMessage::Refused(refusal))) if refusal.code == RefusalCode::Revoked => {
                    return Err(AgentError::Revoked(refusal.message));
                }
                Ok(Some(other)) => warn!(message = ?other, "unexpected message from the control plane; ignored"),
                Ok(None) => return Ok(SessionEnd::Lost { reason: "the control plane ended the session".into(), welcomed: true }),
                Err(e) => return Err(closed_or(link, e)),
            },
            closed = link.closed() => {
                if closed.code == Some(CloseCode::Revoked) {
                    return Err(AgentError::Revoked(closed.reason));
                }
                return Ok(SessionEnd::Lost { reason: closed.to_string(), welcomed: true });
            }
        }
    }
}
