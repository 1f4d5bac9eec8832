//! `continuum-agent run`: keep a session with the control plane for as long as the
//! process lives. Lost links are retried with jittered exponential backoff; an expired
//! certificate is renewed by proof of possession; a revoked site stops.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use continuum_shared::backoff::Backoff;
use continuum_shared::protocol::CloseCode;
use continuum_shared::tls::{ServerTrust, client_tls};
use continuum_shared::unix_now;
use tracing::{info, warn};

use crate::connect::dial;
use crate::error::AgentError;
use crate::identity::{Identity, SiteKey};
use crate::renew::renew_expired;
use crate::session::{self, SessionContext, SessionEnd};
use crate::status::{LinkState, StatusFile};

/// Settings of the run loop.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The state directory.
    pub state_dir: PathBuf,
    /// First reconnect delay ceiling.
    pub reconnect_base: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
}

/// Runs until `shutdown` resolves (Ok) or the site is revoked (Err).
pub async fn run(
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut status = StatusFile::new(&options.state_dir);
    let result = tokio::select! {
        result = connect_loop(&options, &mut status) => result,
        _ = shutdown => Ok(()),
    };
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

async fn connect_loop(options: &RunOptions, status: &mut StatusFile) -> Result<(), AgentError> {
    let dir = &options.state_dir;
    let mut identity = Identity::require(dir)?;
    let key = SiteKey::load(dir)?;
    let labels = crate::labels::detect();
    let started_at = unix_now();
    let mut backoff = Backoff::new(options.reconnect_base, options.reconnect_max);
    let (slot, _) = tokio::sync::watch::channel(None);
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
            &slot,
        )
        .await
        {
            Attempt::Revoked(reason) => {
                warn!(%reason, "this site was revoked; stopping");
                return Err(AgentError::Revoked(reason));
            }
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
}

async fn attempt(
    identity: &mut Identity,
    key: &SiteKey,
    labels: &continuum_shared::labels::Labels,
    started_at: i64,
    options: &RunOptions,
    status: &mut StatusFile,
    slot: &tokio::sync::watch::Sender<Option<continuum_shared::link::Link>>,
) -> Attempt {
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
    };
    let end = session::run(&connection.link, &connection.address, ctx).await;
    slot.send_replace(None);
    connection
        .link
        .close(CloseCode::Normal, "agent session over");
    match end {
        SessionEnd::Revoked(reason) => Attempt::Revoked(reason),
        SessionEnd::Lost { reason, welcomed } => Attempt::Ended { reason, welcomed },
    }
}
