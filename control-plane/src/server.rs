//! The server: the agent listener and the API side by side, handed their sockets and a
//! shutdown signal (they never bind anything themselves, so tests pass `127.0.0.1:0`).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::plane::ControlPlane;
use crate::{agents, api};

/// The sockets the server runs on.
pub struct Listeners {
    /// QUIC endpoint for agents.
    pub quic: quinn::Endpoint,
    /// TCP listener for the HTTPS API.
    pub https: TcpListener,
    /// TCP listener for Prometheus scrapes, when enabled.
    pub metrics: Option<TcpListener>,
}

/// Runs until `shutdown` completes, then closes every session and flushes state.
pub async fn run(
    cp: Arc<ControlPlane>,
    listeners: Listeners,
    https_tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let agents = tokio::spawn(agents::serve(cp.clone(), listeners.quic, stopped.clone()));
    let api = tokio::spawn(api::serve(
        listeners.https,
        https_tls,
        api::router(cp.clone()),
        stopped.clone(),
    ));
    let metrics = listeners.metrics.map(|listener| {
        tokio::spawn(crate::telemetry::prometheus::serve(
            cp.clone(),
            listener,
            stopped.clone(),
        ))
    });
    let retention = tokio::spawn(cp.telemetry.clone().keep_retention());
    let refresher = tokio::spawn(refresh_signatures(cp.clone(), stopped));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    let _ = agents.await;
    let _ = api.await;
    let _ = refresher.await;
    retention.abort();
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    if let Err(e) = cp.telemetry.flush().await {
        tracing::error!(error = %e, "flushing telemetry at shutdown failed");
    }
    if let Err(e) = cp.store.flush() {
        tracing::error!(error = %e, "flushing state at shutdown failed");
    }
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub async fn stopping(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// Re-signs timestamps and snapshots before they expire, for the image repository and
/// every site's director metadata, until shutdown.
async fn refresh_signatures(cp: Arc<ControlPlane>, mut shutdown: watch::Receiver<bool>) {
    let period = (cp.settings.timestamp_ttl / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(600),
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopping(&mut shutdown) => return,
        }
        if let Err(e) = cp.image.refresh(false).await {
            tracing::error!(error = %e, "re-signing the image repository's timestamp failed");
        }
        match cp.director.refresh_all(false).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(sites = n, "re-signed director timestamps"),
            Err(e) => tracing::error!(error = %e, "re-signing director timestamps failed"),
        }
    }
}
