//! TLS identity and QUIC settings common to both ends.
//!
//! One crypto provider (ring) for the whole workspace, installed explicitly by each
//! binary. On first contact an agent has no CA certificate, only the SHA-256 in its join
//! token: [`PinnedCaVerifier`] accepts a server only if the chain it presents includes a
//! CA with exactly that fingerprint and the server certificate verifies against it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::protocol::ALPN;

/// How long a connection may stay silent before it counts as lost. Agents send QUIC
/// keep-alives well inside it, so only a dead peer or path reaches it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often an idle connection sends a keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Most bidirectional streams a peer may have open on one connection at once.
pub const MAX_STREAMS: u32 = 16;

/// Installs ring as the process-wide rustls provider. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The process-wide provider (installing it if needed).
pub fn provider() -> Arc<CryptoProvider> {
    install_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Accepts a server whose chain includes the CA with a given SHA-256 fingerprint.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    ca_sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier pinned to the CA whose DER has this SHA-256.
    pub fn new(ca_sha256: [u8; 32]) -> Self {
        PinnedCaVerifier {
            ca_sha256,
            provider: provider(),
        }
    }
}

fn pin_mismatch() -> rustls::Error {
    rustls::Error::General(
        "the server's CA does not match the fingerprint in the join token: this is not the control plane that issued the token".into(),
    )
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| sha256(cert) == self.ca_sha256)
            .ok_or_else(pin_mismatch)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How an agent authenticates the server.
pub enum ServerTrust {
    /// First contact: only the CA fingerprint from the join token is known.
    Pinned([u8; 32]),
    /// After join: the CA certificate itself.
    Ca(CertificateDer<'static>),
}

/// The client side of a Continuum TLS session, for QUIC or TLS over TCP.
pub fn client_tls(
    trust: ServerTrust,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match trust {
        ServerTrust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pin))),
        ServerTrust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca)?;
            builder.with_root_certificates(roots)
        }
    };
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// QUIC transport limits shared by both ends.
pub fn transport_config(keep_alive: bool) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
                .unwrap_or(quinn::VarInt::from_u32(20_000).into()),
        ))
        .keep_alive_interval(keep_alive.then_some(KEEP_ALIVE));
    transport
}

/// A QUIC client configuration from a TLS client configuration.
pub fn quic_client(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, rustls::Error> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(true)));
    Ok(config)
}

/// Splits `host:port` (or `[v6]:port`) into the TLS server name and the port.
pub fn split_address(address: &str) -> Option<(String, u16)> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Some((socket.ip().to_string(), socket.port()));
    }
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port))
}

/// The TLS server name for a host string (an IP address or a DNS name).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|_| format!("{host:?} is not a valid host name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split() {
        assert_eq!(
            split_address("127.0.0.1:7443"),
            Some(("127.0.0.1".into(), 7443))
        );
        assert_eq!(split_address("[::1]:7443"), Some(("::1".into(), 7443)));
        assert_eq!(
            split_address("cp.example.org:7443"),
            Some(("cp.example.org".into(), 7443))
        );
        assert_eq!(split_address("cp.example.org"), None);
        assert_eq!(split_address(":7443"), None);
    }

    #[test]
    fn hex_and_sha() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
