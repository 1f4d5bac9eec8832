//! One agent session on its control stream: hello, welcome, then heartbeats until the
//! link ends, the agent goes quiet, or an operator revokes the site.

use std::sync::Arc;
use std::time::Duration;

use continuum_shared::link::{FramedStream, Link, LinkError};
use continuum_shared::protocol::{AgentMessage, CloseCode, Hello, ServerMessage, Welcome, v1};
use continuum_shared::unix_now;
use tracing::{Instrument, info, info_span};

use super::{REFUSAL_LINGER, close_code, protocol_violation};
use crate::fleet::LiveView;
use crate::model::SiteRecord;
use crate::plane::ControlPlane;
use crate::sites;

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
    let id = cp.fleet.attach(&site.name, link.clone(), view);
    let heartbeat = cp.settings.heartbeat;
    let welcome = Welcome {
        site: site.name.clone(),
        protocol_version: version,
        heartbeat_secs: heartbeat.as_secs().max(1) as u32,
        server_time: now,
    };
    if stream.send(&ServerMessage::Welcome(welcome)).await.is_ok() {
        info!(agent_version = %hello.agent_version, protocol = version, "site online");
        let ended = heartbeats(&cp, &link, &site.name, id, &mut stream, heartbeat).await;
        info!(reason = %ended, "site offline");
    }
    if let Some(view) = cp.fleet.detach(&site.name, id) {
        sites::record_last_seen(&cp, &site.name, view.last_heartbeat);
    }
}

/// Receives heartbeats until the session ends; returns why it ended.
async fn heartbeats(
    cp: &ControlPlane,
    link: &Link,
    site: &str,
    id: u64,
    stream: &mut FramedStream,
    interval: Duration,
) -> String {
    // Three missed beats and the agent is presumed gone, even if QUIC still answers.
    let silence = interval * 3 + Duration::from_secs(2);
    loop {
        tokio::select! {
            message = tokio::time::timeout(silence, stream.recv::<AgentMessage>()) => match message {
                Ok(Ok(Some(AgentMessage::Heartbeat(_)))) => cp.fleet.heartbeat(site, id, unix_now()),
                Ok(Ok(None)) => {
                    link.close(CloseCode::Normal, "session ended by the agent");
                    return "the agent ended its session".into();
                }
                Ok(Err(LinkError::Closed(closed))) => return closed.to_string(),
                Ok(Err(e)) => {
                    protocol_violation(link, &format!("control stream: {e}"));
                    return format!("protocol violation: {e}");
                }
                Err(_) => {
                    link.close(CloseCode::Protocol, "no heartbeat received in time");
                    return format!("no heartbeat for {}s", silence.as_secs());
                }
            },
            closed = link.closed() => return closed.to_string(),
        }
    }
}
