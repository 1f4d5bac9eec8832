//! Health probes from the release: `http` and `tcp` run by the agent against the
//! published port or the container's own address, `exec` inside the container.
//!
//! The host `container` in an `http` URL or `tcp` address stands for the container's
//! address on its engine network, for services that publish no host port.

use std::time::Duration;

use continuum_shared::manifest::{Health, HealthCheck};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::engine::Engine;

/// Host name that stands for the container's own address.
pub const CONTAINER_HOST: &str = "container";

/// The health of one running container, probe after probe (in memory: an agent restart
/// starts over, inside the release's start period again).
pub struct Tracker {
    /// The container probed.
    pub container: String,
    started: Instant,
    next_at: Instant,
    successes: u32,
    /// The threshold of consecutive passes was reached and nothing failed since.
    pub healthy: bool,
    /// A probe failed after the start period.
    pub unhealthy: bool,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
    /// Restarts of the container, as the engine counts them.
    pub restarts: u32,
}

impl Tracker {
    /// Starts tracking `container`, first seen running at `now`.
    pub fn new(container: &str, now: Instant) -> Tracker {
        Tracker {
            container: container.to_owned(),
            started: now,
            next_at: now,
            successes: 0,
            healthy: false,
            unhealthy: false,
            last_error: None,
            restarts: 0,
        }
    }

    /// When the next probe is due.
    pub fn due_at(&self) -> Instant {
        self.next_at
    }

    /// Probes when the release's interval is due; returns whether the container is
    /// healthy. Failures inside the start period do not count against it.
    pub async fn observe(&mut self, engine: &Engine, health: &Health) -> bool {
        let now = Instant::now();
        if now < self.next_at {
            return self.healthy;
        }
        self.next_at = now + health.interval;
        let in_start_period = now < self.started + health.start_period;
        // One inspect per probe gives both the restart count and the address.
        let mut ip = None;
        if let Ok(inspected) = engine.inspect(&self.container).await {
            let count = inspected.restart_count.unwrap_or(0);
            self.restarts = count.clamp(0, i64::from(u32::MAX)) as u32;
            ip = address_of(inspected);
        }
        let result = probe(
            engine,
            &self.container,
            ip.as_deref(),
            &health.check,
            health.timeout,
        )
        .await;
        match result {
            Ok(()) => {
                self.successes += 1;
                self.last_error = None;
                if self.successes >= health.healthy_after {
                    self.healthy = true;
                    self.unhealthy = false;
                }
            }
            Err(e) => {
                self.successes = 0;
                self.last_error = Some(e);
                if !in_start_period {
                    self.healthy = false;
                    self.unhealthy = true;
                }
            }
        }
        self.healthy
    }
}

/// Runs one probe of `check` against container `id` (whose network address is `ip`, if
/// it has one), within `timeout`.
pub async fn probe(
    engine: &Engine,
    id: &str,
    ip: Option<&str>,
    check: &HealthCheck,
    timeout: Duration,
) -> Result<(), String> {
    let run = async {
        match check {
            HealthCheck::Http(url) => http(ip, url).await,
            HealthCheck::Tcp(address) => {
                let address = resolve(ip, address)?;
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

/// The container's address on its engine network, if it has one.
fn address_of(inspected: bollard::models::ContainerInspectResponse) -> Option<String> {
    inspected
        .network_settings?
        .networks?
        .into_values()
        .filter_map(|e| e.ip_address)
        .find(|ip| !ip.is_empty())
}

/// `host:port` with the container placeholder replaced by the container's address.
fn resolve(ip: Option<&str>, address: &str) -> Result<String, String> {
    let Some(port) = address
        .strip_prefix(CONTAINER_HOST)
        .and_then(|r| r.strip_prefix(':'))
    else {
        return Ok(address.to_owned());
    };
    let ip = ip.ok_or("the container has no network address")?;
    Ok(format!("{ip}:{port}"))
}

async fn http(ip: Option<&str>, url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!("{url}: only http:// health checks are supported"));
    }
    let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let address = resolve(ip, &format!("{host}:{port}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_host_stands_for_the_containers_address() {
        assert_eq!(
            resolve(Some("172.17.0.2"), "container:80").unwrap(),
            "172.17.0.2:80"
        );
        assert_eq!(resolve(None, "127.0.0.1:8080").unwrap(), "127.0.0.1:8080");
        assert!(resolve(None, "container:80").is_err());
    }
}
