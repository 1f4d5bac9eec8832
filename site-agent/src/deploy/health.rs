//! Health probes from the release: `http` and `tcp` run by the agent against the
//! published port or the container's own address, `exec` inside the container.
//!
//! The host `container` in an `http` URL or `tcp` address stands for the container's
//! address on its engine network, for services that publish no host port.

use std::time::Duration;

use continuum_shared::manifest::HealthCheck;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::engine::Engine;

/// Host name that stands for the container's own address.
pub const CONTAINER_HOST: &str = "container";

/// Runs one probe of `check` against container `id`, within `timeout`.
pub async fn probe(
    engine: &Engine,
    id: &str,
    check: &HealthCheck,
    timeout: Duration,
) -> Result<(), String> {
    let run = async {
        match check {
            HealthCheck::Http(url) => http(engine, id, url).await,
            HealthCheck::Tcp(address) => {
                let address = resolve(engine, id, address).await?;
                TcpStream::connect(&address)
                    .await
                    .map(drop)
                    .map_err(|e| format!("tcp {address}: {e}"))
            }
            HealthCheck::Exec(command) => match engine.exec(id, command).await {
                Ok(0) => Ok(()),
                Ok(code) => Err(format!("{command:?} exited with {code}")),
                Err(e) => Err(format!("{command:?}: {e}")),
            },
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// `host:port` with the container placeholder replaced by the container's address.
async fn resolve(engine: &Engine, id: &str, address: &str) -> Result<String, String> {
    let Some(port) = address
        .strip_prefix(CONTAINER_HOST)
        .and_then(|r| r.strip_prefix(':'))
    else {
        return Ok(address.to_owned());
    };
    let inspected = engine.inspect(id).await.map_err(|e| e.to_string())?;
    let ip = inspected
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|networks| {
            networks
                .into_values()
                .filter_map(|e| e.ip_address)
                .find(|ip| !ip.is_empty())
        })
        .ok_or("the container has no network address")?;
    Ok(format!("{ip}:{port}"))
}

async fn http(engine: &Engine, id: &str, url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!("{url}: only http:// health checks are supported"));
    }
    let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let address = resolve(engine, id, &format!("{host}:{port}")).await?;
    let stream = TcpStream::connect(&address)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let driver = tokio::spawn(connection);
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::USER_AGENT, "continuum-agent health check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let response = sender.send_request(request).await;
    driver.abort();
    let status = response.map_err(|e| format!("GET {url}: {e}"))?.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("GET {url} answered {status}"))
    }
}
