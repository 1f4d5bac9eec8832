//! The HTTPS listener: TLS via rustls, HTTP/1.1 via hyper, routes via axum. Handshakes
//! and request headers are time-bounded and connections are capped, so slow or
//! numerous clients cannot starve the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::debug;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 1024;

/// Serves `router` on `listener` with `tls` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "accepting an HTTPS connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::server::stopping(&mut shutdown) => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%remote, "too many HTTPS connections; dropping one");
            continue;
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%remote, error = %e, "HTTPS handshake failed"),
                Err(_) => return debug!(%remote, "HTTPS handshake timed out"),
            };
            serve_connection(tls, remote, router).await;
        });
    }
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    remote: SocketAddr,
    router: Router,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = result {
        debug!(%remote, error = %e, "HTTPS connection ended with an error");
    }
}
