//! The control plane's shared state, handed to the agent listener and the API alike.

use std::sync::Arc;
use std::time::Duration;

use crate::ca::CertificateAuthority;
use crate::datadir::DataDir;
use crate::fleet::Fleet;
use crate::store::Store;
use crate::tuf::director::Director;
use crate::tuf::image::ImageRepo;

/// Run-time knobs that the server's parts need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port` QUIC addresses that join tokens carry, in the order agents try them.
    pub agent_addresses: Vec<String>,
    /// Lifetime of site certificates; agents renew when a third of it is left.
    pub site_cert_ttl: Duration,
    /// How often agents send heartbeats.
    pub heartbeat: Duration,
    /// Lifetime of signed timestamps.
    pub timestamp_ttl: Duration,
    /// `https://host:port` addresses sites reach the HTTPS listener by.
    pub install_urls: Vec<String>,
    /// curl's pin of the HTTPS listener's key (`sha256//…`); `None` when the listener
    /// has a publicly trusted certificate, which curl checks by itself.
    pub tls_pin: Option<String>,
    /// Agent binaries on offer to the installer.
    pub agents: crate::install::AgentBinaries,
}

/// Everything a request or a session needs.
pub struct ControlPlane {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The CA that issues site certificates.
    pub ca: CertificateAuthority,
    /// Sites connected right now.
    pub fleet: Fleet,
    /// Run-time knobs.
    pub settings: Settings,
    /// Where keys live (for backups).
    pub data_dir: DataDir,
    /// The image repository (releases).
    pub image: ImageRepo,
    /// The director repository (desired state per site).
    pub director: Director,
    /// The rollout policies in force.
    pub policies: Arc<crate::policy::set::Policies>,
    /// Telemetry from the fleet.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The key that seals secrets at rest.
    pub vault: crate::secrets::Vault,
}

/// A Unix timestamp as RFC 3339 (UTC), the time format of the API and CLI.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Random bytes from the system's secure generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes
}

/// A credential-like random string: a prefix and 32 random bytes in base64url.
pub fn random_secret(prefix: &str) -> String {
    use base64::Engine as _;
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}
