//! `continuum-agent join TOKEN`: enroll this site with the control plane that issued
//! the token.

use std::path::Path;
use std::time::Duration;

use continuum_shared::protocol::{
    CloseCode, EnrollRequest, EnrollResponse, JoinRequest, PROTOCOL_VERSION, StreamKind,
};
use continuum_shared::tls::{ServerTrust, client_tls, sha256};
use continuum_shared::token::JoinToken;

use crate::connect::dial;
use crate::error::AgentError;
use crate::identity::{Identity, SiteKey};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Joins with `token` and stores the identity in `state_dir`. The key pair is made
/// here (or reused from an interrupted earlier attempt) and never leaves the site.
///
/// A join that fails before its request reached the control plane, or that the control
/// plane refused, leaves no trace: what this attempt created is removed again. A join
/// whose answer was lost keeps the key, so that retrying with the same token works.
pub async fn join(
    token: &str,
    options: JoinOptions,
    state_dir: &Path,
) -> Result<Identity, AgentError> {
    let token = JoinToken::parse(token)?;
    let JoinOptions {
        name,
        image_root_sha256,
    } = options;
    if let Some(pin) = &image_root_sha256
        && (pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(AgentError::State(
            "--image-root-sha256 takes the 64 hex digits of a SHA-256".into(),
        ));
    }
    if let Some(existing) = Identity::load(state_dir)? {
        return Err(AgentError::AlreadyJoined {
            site: existing.site,
            dir: state_dir.display().to_string(),
        });
    }
    if let Some(name) = &name {
        continuum_shared::names::check_name("site", name)
            .map_err(|e| AgentError::State(e.to_string()))?;
    }
    let dir_existed = state_dir.exists();
    let key_existed = state_dir.join("site.key").exists();
    let mut answer_pending = false;
    let result = enroll(
        token,
        name,
        image_root_sha256,
        state_dir,
        &mut answer_pending,
    )
    .await;
    if result.is_err() && !answer_pending {
        if !key_existed {
            let _ = std::fs::remove_file(state_dir.join("site.key"));
        }
        if !dir_existed {
            let _ = std::fs::remove_dir(state_dir);
        }
    }
    result
}

/// Options of a join.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// The site name to ask for.
    pub name: Option<String>,
    /// SHA-256 (hex) of the image repository's first root, pinned out of band.
    pub image_root_sha256: Option<String>,
}

async fn enroll(
    token: JoinToken,
    name: Option<String>,
    image_root_sha256: Option<String>,
    state_dir: &Path,
    answer_pending: &mut bool,
) -> Result<Identity, AgentError> {
    let pin: [u8; 32] = token
        .ca_sha256
        .as_slice()
        .try_into()
        .map_err(|_| AgentError::State("the token's CA fingerprint is malformed".into()))?;
    let key = SiteKey::load_or_create(state_dir)?;
    let hostname = continuum_shared::names::local_hostname();
    let csr = key.certificate_request(name.as_deref().unwrap_or(&hostname))?;

    let tls = client_tls(ServerTrust::Pinned(pin), None)
        .map_err(|e| AgentError::Crypto(e.to_string()))?;
    let connection = dial(&token.addresses, tls).await?;
    let request = EnrollRequest::Join(JoinRequest {
        token_id: token.id.clone(),
        token_secret: token.secret.clone(),
        name,
        hostname,
        csr_der: csr,
    });
    let mut stream = connection
        .link
        .open(StreamKind::Enroll, PROTOCOL_VERSION)
        .await?;
    stream.send(&request).await?;
    *answer_pending = true;
    let answer = stream.recv_within::<EnrollResponse>(ANSWER_TIMEOUT).await;
    connection.link.close(CloseCode::Normal, "join finished");
    match answer? {
        EnrollResponse::Issued(issued) => {
            if sha256(&issued.ca_der) != pin {
                return Err(AgentError::Crypto(
                    "the control plane sent a CA other than the one the token pins".into(),
                ));
            }
            let mut identity = Identity::from_issued(issued, token.addresses);
            identity.image_root_sha256 = image_root_sha256.map(|p| p.to_lowercase());
            identity.save(state_dir)?;
            Ok(identity)
        }
        EnrollResponse::Refused(refusal) => {
            *answer_pending = false;
            Err(AgentError::Refused(refusal))
        }
    }
}
