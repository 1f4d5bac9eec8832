//! Dialing the control plane: each address of the identity (or token) in order, each
//! resolved and tried with a deadline, over QUIC.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use continuum_shared::link::Link;
use continuum_shared::tls::{quic_client, server_name, split_address};

use crate::error::AgentError;

/// How long one address gets to complete a handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A live connection and the endpoint that carries it (dropping the endpoint would end
/// the connection).
pub struct Connection {
    /// The connection.
    pub link: Link,
    /// Which address answered.
    pub address: String,
    _endpoint: quinn::Endpoint,
}

/// Connects to the first address that completes a handshake with `tls`.
pub async fn dial(
    addresses: &[String],
    tls: rustls::ClientConfig,
) -> Result<Connection, AgentError> {
    let config = quic_client(tls).map_err(|e| AgentError::Crypto(e.to_string()))?;
    let mut failures = Vec::new();
    for address in addresses {
        match dial_one(address, &config).await {
            Ok(connection) => return Ok(connection),
            Err(reason) => failures.push(format!("{address}: {reason}")),
        }
    }
    Err(AgentError::Unreachable(failures.join("; ")))
}

async fn dial_one(address: &str, config: &quinn::ClientConfig) -> Result<Connection, String> {
    let (host, port) = split_address(address).ok_or("not of the form host:port")?;
    let name = server_name(&host)?;
    let targets: Vec<SocketAddr> = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map_err(|_| "name lookup timed out".to_owned())?
    .map_err(|e| format!("name lookup failed: {e}"))?
    .collect();
    let mut last = String::from("the name resolves to no address");
    for target in targets {
        let local: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint =
            quinn::Endpoint::client(local).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        let connecting = endpoint
            .connect_with(config.clone(), target, &name.to_str())
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => {
                return Ok(Connection {
                    link: Link::Quic(connection),
                    address: address.to_owned(),
                    _endpoint: endpoint,
                });
            }
            Ok(Err(e)) => last = continuum_shared::link::quic_closed(&e).to_string(),
            Err(_) => {
                last = format!(
                    "no QUIC handshake within {}s (is UDP {port} open?)",
                    CONNECT_TIMEOUT.as_secs()
                )
            }
        }
    }
    Err(last)
}
