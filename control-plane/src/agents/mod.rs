//! The agent-facing listener: QUIC connections from sites.
//!
//! A connection that presents a site certificate may open a control stream (one
//! session) and enroll streams (renewals). A connection without one may only enroll:
//! join with a token, or renew an expired certificate by proof of possession. Anything
//! else is answered with a refusal and the connection is closed; other sites never
//! notice.

mod enroll;
pub mod fetch;
mod session;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use continuum_shared::link::{FramedStream, Link, LinkError};
use continuum_shared::protocol::{
    CloseCode, EnrollResponse, FetchResponse, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Refusal,
    RefusalCode, ServerMessage, StreamKind, is_supported,
};
use continuum_shared::tls::{provider, transport_config};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::datadir::ServerIdentity;
use crate::error::PkiError;
use crate::model::SiteRecord;
use crate::plane::ControlPlane;
use crate::sites;

/// How long a QUIC handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer has to send a stream's preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection without a certificate may stay open.
const ENROLL_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How many streams a connection without a certificate may open.
const ENROLL_CONNECTION_STREAMS: usize = 4;
/// Most connections without a certificate (joins, expired renewals) served at once;
/// more are refused until some finish, so a flood cannot crowd out enrolled sites.
const MAX_ENROLL_CONNECTIONS: usize = 1024;
/// Time given to a refused peer to read the refusal before the connection closes.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// The QUIC server configuration: TLS 1.3, ALPN `continuum/1`, client certificates
/// verified against the CA when presented (optional, so that joins and expired sites
/// can still reach the enroll path).
pub fn quic_server_config(
    identity: &ServerIdentity,
    ca_der: &rustls::pki_types::CertificateDer<'static>,
) -> Result<quinn::ServerConfig, PkiError> {
    let tls = server_tls(
        identity,
        ca_der,
        vec![continuum_shared::protocol::ALPN.to_vec()],
    )?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(false)));
    Ok(config)
}

/// A rustls server configuration with optional client authentication under the CA.
pub fn server_tls(
    identity: &ServerIdentity,
    ca_der: &rustls::pki_types::CertificateDer<'static>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = alpn;
    Ok(tls)
}

/// Receive buffer asked for on the agents' UDP socket. When a whole fleet reconnects at
/// once (a restart, a network recovering), handshakes arrive in a burst; the kernel's
/// default buffer (~200 KiB) drops much of it and every drop costs a retransmit timeout.
pub const UDP_RECEIVE_BUFFER: usize = 8 << 20;

/// Binds the agents' QUIC endpoint on `addr` with a large receive buffer. Returns the
/// endpoint and the buffer size the kernel granted (capped by `net.core.rmem_max`).
pub fn bind_endpoint(
    config: quinn::ServerConfig,
    addr: std::net::SocketAddr,
) -> std::io::Result<(quinn::Endpoint, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok((endpoint, granted))
}

/// Accepts agent connections until `shutdown` turns true, then closes them all.
pub async fn serve(
    cp: Arc<ControlPlane>,
    endpoint: quinn::Endpoint,
    mut shutdown: watch::Receiver<bool>,
) {
    let enroll_slots = Arc::new(Semaphore::new(MAX_ENROLL_CONNECTIONS));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tokio::spawn(handle_incoming(cp.clone(), incoming, enroll_slots.clone()));
            }
            _ = crate::server::stopping(&mut shutdown) => break,
        }
    }
    let reason = "the control plane is restarting; reconnect shortly";
    for (site, view) in cp.fleet.disconnect_all(CloseCode::ShuttingDown, reason) {
        sites::record_last_seen(&cp, &site, view.last_heartbeat);
    }
    endpoint.close(
        quinn::VarInt::from_u32(CloseCode::ShuttingDown as u32),
        reason.as_bytes(),
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn handle_incoming(
    cp: Arc<ControlPlane>,
    incoming: quinn::Incoming,
    enroll_slots: Arc<Semaphore>,
) {
    let remote = incoming.remote_address();
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "agent handshake failed");
            return;
        }
        Err(_) => {
            debug!(%remote, "agent handshake timed out");
            return;
        }
    };
    let link = Link::Quic(connection);
    let identity = {
        let (cp, link) = (cp.clone(), link.clone());
        tokio::task::spawn_blocking(move || sites::identify(&cp, &link)).await
    };
    match identity {
        Ok(Ok(Some(site))) => serve_site(cp, link, site).await,
        Ok(Ok(None)) => match enroll_slots.try_acquire_owned() {
            Ok(_slot) => serve_enrollment(cp, link).await,
            Err(_) => {
                warn!(%remote, "too many enrollment connections at once; refusing one");
                link.close(
                    CloseCode::ShuttingDown,
                    "the control plane is busy enrolling sites; retry shortly",
                );
            }
        },
        Ok(Err(refusal)) => {
            info!(%remote, reason = %refusal.message, "refused a site certificate");
            refuse_first_stream(&link, refusal).await;
        }
        Err(e) => warn!(%remote, error = %e, "identifying a site failed"),
    }
}

/// Streams of a connection that presented a valid site certificate.
async fn serve_site(cp: Arc<ControlPlane>, link: Link, site: SiteRecord) {
    let mut session_started = false;
    loop {
        let incoming = match link.accept().await {
            Ok(incoming) => incoming,
            Err(_) => return,
        };
        let Some(stream) = open_stream(&link, incoming).await else {
            return;
        };
        match stream.kind() {
            StreamKind::Control if !session_started => {
                session_started = true;
                tokio::spawn(session::run(cp.clone(), link.clone(), site.clone(), stream));
            }
            StreamKind::Control => {
                protocol_violation(&link, "a second control stream on one connection");
                return;
            }
            StreamKind::Enroll => {
                tokio::spawn(enroll::serve(
                    cp.clone(),
                    link.clone(),
                    stream,
                    Some(site.name.clone()),
                ));
            }
            StreamKind::Fetch => {
                tokio::spawn(fetch::serve(
                    cp.clone(),
                    link.clone(),
                    stream,
                    site.name.clone(),
                ));
            }
            StreamKind::Telemetry => {
                tokio::spawn(telemetry::serve(cp.clone(), stream, site.name.clone()));
            }
            StreamKind::Logs => {
                protocol_violation(&link, "agents do not open logs streams");
                return;
            }
        }
    }
}

/// Streams of a connection without a certificate: a few enroll streams, briefly.
async fn serve_enrollment(cp: Arc<ControlPlane>, link: Link) {
    let accept_streams = async {
        for _ in 0..ENROLL_CONNECTION_STREAMS {
            let Ok(incoming) = link.accept().await else {
                return;
            };
            let Some(mut stream) = open_stream(&link, incoming).await else {
                return;
            };
            match stream.kind() {
                StreamKind::Enroll => {
                    tokio::spawn(enroll::serve(cp.clone(), link.clone(), stream, None));
                }
                StreamKind::Control
                | StreamKind::Fetch
                | StreamKind::Telemetry
                | StreamKind::Logs => {
                    let refusal = Refusal {
                        code: RefusalCode::Unauthenticated,
                        message: "this connection has no site certificate; join with a token first"
                            .into(),
                    };
                    send_refusal(&mut stream, &refusal).await;
                    link.close_after(REFUSAL_LINGER, CloseCode::Unauthorized, &refusal.message)
                        .await;
                    return;
                }
            }
        }
        link.closed().await;
    };
    if tokio::time::timeout(ENROLL_CONNECTION_LIFETIME, accept_streams)
        .await
        .is_err()
    {
        link.close(
            CloseCode::Unauthorized,
            "enrollment connection held open too long",
        );
    }
}

/// Reads a stream's preamble and checks its version; on failure the link is closed
/// with a reason and `None` is returned.
async fn open_stream(
    link: &Link,
    incoming: continuum_shared::link::IncomingStream,
) -> Option<FramedStream> {
    let mut stream = match incoming.preamble(PREAMBLE_TIMEOUT).await {
        Ok(stream) => stream,
        Err(LinkError::Closed(_)) => return None,
        Err(e) => {
            protocol_violation(link, &e.to_string());
            return None;
        }
    };
    if !is_supported(stream.version()) {
        let refusal = Refusal {
            code: RefusalCode::UnsupportedVersion,
            message: format!(
                "this control plane speaks protocol versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}, the agent speaks {}; install an agent release this control plane supports",
                stream.version()
            ),
        };
        info!(remote = %link.remote_address(), version = stream.version(), "refused an unsupported protocol version");
        send_refusal(&mut stream, &refusal).await;
        link.close_after(REFUSAL_LINGER, CloseCode::Version, &refusal.message)
            .await;
        return None;
    }
    Some(stream)
}

/// Sends a refusal in the shape the stream's kind expects (both shapes read the same on
/// every protocol version).
async fn send_refusal(stream: &mut FramedStream, refusal: &Refusal) {
    let _ = match stream.kind() {
        StreamKind::Control => stream.send(&ServerMessage::Refused(refusal.clone())).await,
        StreamKind::Enroll => stream.send(&EnrollResponse::Refused(refusal.clone())).await,
        StreamKind::Fetch => stream.send(&FetchResponse::Refused(refusal.clone())).await,
        StreamKind::Telemetry => {
            let reply = continuum_shared::telemetry::TelemetryReply::Refused(refusal.clone());
            stream.send(&reply).await
        }
        StreamKind::Logs => {
            let reply = continuum_shared::protocol::LogFrame::Refused(refusal.clone());
            stream.send(&reply).await
        }
    };
    stream.finish().await;
}

/// Refuses a connection on the first stream it opens, then closes it.
async fn refuse_first_stream(link: &Link, refusal: Refusal) {
    let code = close_code(refusal.code);
    if let Ok(Ok(incoming)) = tokio::time::timeout(PREAMBLE_TIMEOUT, link.accept()).await
        && let Ok(mut stream) = incoming.preamble(PREAMBLE_TIMEOUT).await
    {
        send_refusal(&mut stream, &refusal).await;
    }
    link.close_after(REFUSAL_LINGER, code, &refusal.message)
        .await;
}

/// Closes a link whose peer broke the protocol.
fn protocol_violation(link: &Link, what: &str) {
    warn!(remote = %link.remote_address(), what, "protocol violation; closing the connection");
    link.close(CloseCode::Protocol, &format!("protocol violation: {what}"));
}

/// The close code that goes with a refusal.
fn close_code(code: RefusalCode) -> CloseCode {
    match code {
        RefusalCode::Revoked => CloseCode::Revoked,
        RefusalCode::UnsupportedVersion => CloseCode::Version,
        RefusalCode::BadRequest => CloseCode::Protocol,
        RefusalCode::Internal => CloseCode::Internal,
        _ => CloseCode::Unauthorized,
    }
}
