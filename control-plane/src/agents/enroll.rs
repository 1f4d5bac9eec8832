//! The enroll stream: one request (join or renew), one answer.

use std::sync::Arc;
use std::time::Duration;

use continuum_shared::link::{FramedStream, Link};
use continuum_shared::protocol::{EnrollRequest, EnrollResponse, Refusal, RefusalCode};
use tracing::{info, warn};

use super::{REFUSAL_LINGER, close_code, protocol_violation};
use crate::plane::ControlPlane;
use crate::sites;

/// How long the peer has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one enroll stream. `site` is the name of the certificate the connection
/// presented, if any: such a connection may renew only itself and may not join again.
pub async fn serve(
    cp: Arc<ControlPlane>,
    link: Link,
    mut stream: FramedStream,
    site: Option<String>,
) {
    let request: EnrollRequest = match stream.recv_within(REQUEST_TIMEOUT).await {
        Ok(request) => request,
        Err(e) => {
            protocol_violation(&link, &format!("enroll request: {e}"));
            return;
        }
    };
    let result = {
        let (cp, link) = (cp.clone(), link.clone());
        tokio::task::spawn_blocking(move || match (&request, site) {
            (EnrollRequest::Join(_), Some(site)) => Err(Refusal {
                code: RefusalCode::BadRequest,
                message: format!("this connection is already enrolled as site {site:?}"),
            }),
            (EnrollRequest::Renew(renew), Some(site)) if renew.site != site => Err(Refusal {
                code: RefusalCode::BadRequest,
                message: format!(
                    "site {site:?} cannot renew the certificate of {:?}",
                    renew.site
                ),
            }),
            (EnrollRequest::Join(join), None) => sites::join(&cp, join),
            (EnrollRequest::Renew(renew), _) => sites::renew(&cp, renew, &link),
        })
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "enrollment task failed");
            Err(Refusal {
                code: RefusalCode::Internal,
                message: "the control plane failed; try again later".into(),
            })
        })
    };
    match result {
        Ok(issued) => {
            let _ = stream.send(&EnrollResponse::Issued(issued)).await;
            stream.finish().await;
        }
        Err(refusal) => {
            info!(remote = %link.remote_address(), code = ?refusal.code, reason = %refusal.message, "enrollment refused");
            let _ = stream.send(&EnrollResponse::Refused(refusal.clone())).await;
            stream.finish().await;
            link.close_after(REFUSAL_LINGER, close_code(refusal.code), &refusal.message)
                .await;
        }
    }
}
