//! An in-process QUIC peer that speaks raw preambles and frames: a hostile client, a
//! client without a certificate, or an agent of the previous protocol version.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use continuum_agent::identity::SiteKey;
use continuum_shared::link::{Link, LinkClosed};
use continuum_shared::protocol::{
    EnrollRequest, EnrollResponse, IssuedCertificate, JoinRequest, StreamKind,
};
use continuum_shared::tls::{ServerTrust, client_tls, quic_client};
use continuum_shared::token::JoinToken;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A raw connection to a control plane.
pub struct Peer {
    /// The connection.
    pub link: Link,
    _endpoint: quinn::Endpoint,
}

/// The CA certificate of a data directory.
pub fn ca_of(data_dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(data_dir.join("ca.crt")).expect("CA certificate")
}

impl Peer {
    /// Connects, trusting the server as `trust` says, presenting `identity` if given.
    pub async fn connect(
        server: SocketAddr,
        trust: ServerTrust,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Peer, String> {
        continuum_shared::tls::install_crypto_provider();
        let tls = client_tls(trust, identity).map_err(|e| e.to_string())?;
        let config = quic_client(tls).map_err(|e| e.to_string())?;
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("address"))
            .map_err(|e| e.to_string())?;
        let connecting = endpoint
            .connect_with(config, server, "127.0.0.1")
            .map_err(|e| e.to_string())?;
        let connection = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| continuum_shared::link::quic_closed(&e).to_string())?;
        Ok(Peer {
            link: Link::Quic(connection),
            _endpoint: endpoint,
        })
    }

    /// Connects without a client certificate, trusting the given CA.
    pub async fn anonymous(server: SocketAddr, ca: CertificateDer<'static>) -> Peer {
        Self::connect(server, ServerTrust::Ca(ca), None)
            .await
            .expect("connects")
    }

    /// Waits (at most 10 s) for the server to close the connection and says why.
    pub async fn closed(&self) -> LinkClosed {
        tokio::time::timeout(Duration::from_secs(10), self.link.closed())
            .await
            .expect("the server closes the connection")
    }
}

/// Joins like an agent speaking protocol `version`; returns the key and certificate.
pub async fn join_as(
    server: SocketAddr,
    ca: CertificateDer<'static>,
    token: &str,
    name: &str,
    version: u16,
    key_dir: &Path,
) -> Result<(SiteKey, IssuedCertificate), String> {
    let token = JoinToken::parse(token).map_err(|e| e.to_string())?;
    let key = SiteKey::load_or_create(key_dir).map_err(|e| e.to_string())?;
    let peer = Peer::anonymous(server, ca).await;
    let mut stream = peer
        .link
        .open(StreamKind::Enroll, version)
        .await
        .map_err(|e| e.to_string())?;
    let request = EnrollRequest::Join(JoinRequest {
        token_id: token.id,
        token_secret: token.secret,
        name: Some(name.to_owned()),
        hostname: "test-host".into(),
        csr_der: key.certificate_request(name).map_err(|e| e.to_string())?,
    });
    stream.send(&request).await.map_err(|e| e.to_string())?;
    match stream
        .recv_within::<EnrollResponse>(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?
    {
        EnrollResponse::Issued(issued) => Ok((key, issued)),
        EnrollResponse::Refused(refusal) => Err(refusal.message),
    }
}
