//! Certificate renewal: a fresh certificate for the site's registered key, earned by
//! signing keying material of the current TLS session (so the proof is bound to this
//! connection and cannot be replayed). It works over the live mutual-TLS connection, or
//! over a connection without a client certificate when the certificate has expired.

use std::time::Duration;

use continuum_shared::link::Link;
use continuum_shared::protocol::{
    EnrollRequest, EnrollResponse, PROTOCOL_VERSION, RENEWAL_EXPORTER_LABEL, RefusalCode,
    RenewRequest, StreamKind, renewal_proof_message,
};
use continuum_shared::tls::{ServerTrust, client_tls};

use crate::connect::dial;
use crate::error::AgentError;
use crate::identity::{Identity, SiteKey};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Renews over `link` and stores the new certificate in `identity` and on disk.
pub async fn renew_over(
    link: &Link,
    identity: &mut Identity,
    key: &SiteKey,
    state_dir: &std::path::Path,
) -> Result<(), AgentError> {
    let exported = link
        .export_keying_material(RENEWAL_EXPORTER_LABEL, b"")
        .ok_or_else(|| AgentError::Crypto("cannot export TLS keying material".into()))?;
    let proof = key.sign(&renewal_proof_message(&identity.site, &exported))?;
    let request = EnrollRequest::Renew(RenewRequest {
        site: identity.site.clone(),
        csr_der: key.certificate_request(&identity.site)?,
        proof,
    });
    let mut stream = link.open(StreamKind::Enroll, PROTOCOL_VERSION).await?;
    stream.send(&request).await?;
    match stream.recv_within::<EnrollResponse>(ANSWER_TIMEOUT).await? {
        EnrollResponse::Issued(issued) => {
            identity.renewed(issued);
            identity.save(state_dir)?;
            tracing::info!(site = %identity.site, not_after = identity.not_after, "certificate renewed");
            Ok(())
        }
        EnrollResponse::Refused(refusal) if refusal.code == RefusalCode::Revoked => {
            Err(AgentError::Revoked(refusal.message))
        }
        EnrollResponse::Refused(refusal) => Err(AgentError::Refused(refusal)),
    }
}

/// Renews an expired certificate: connects without a client certificate (still
/// verifying the server against the CA) and proves possession of the key.
pub async fn renew_expired(
    identity: &mut Identity,
    key: &SiteKey,
    state_dir: &std::path::Path,
) -> Result<(), AgentError> {
    let tls = client_tls(ServerTrust::Ca(identity.ca()), None)
        .map_err(|e| AgentError::Crypto(e.to_string()))?;
    let connection = dial(&identity.addresses, tls).await?;
    let result = renew_over(&connection.link, identity, key, state_dir).await;
    connection.link.close(
        continuum_shared::protocol::CloseCode::Normal,
        "renewal done",
    );
    result
}
