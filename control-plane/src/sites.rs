//! Sites: enrollment with a join token, certificate renewal by proof of possession,
//! identification of a connecting agent, hello bookkeeping, and revocation.

use continuum_shared::labels::{Labels, check_labels};
use continuum_shared::link::Link;
use continuum_shared::names::check_name;
use continuum_shared::protocol::{
    CloseCode, Hello, IssuedCertificate, JoinRequest, RENEWAL_EXPORTER_LABEL, Refusal, RefusalCode,
    RenewRequest, renewal_proof_message,
};
use continuum_shared::tls::{hex, sha256};
use continuum_shared::unix_now;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::ca::{SiteKey, verify_site_signature};
use crate::error::StoreError;
use crate::model::SiteRecord;
use crate::plane::ControlPlane;
use crate::store::{StoreExt, Tree, decode, encode};
use crate::tokens;

fn refuse(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "control plane failure while serving a site");
    refuse(
        RefusalCode::Internal,
        "the control plane failed to store the result; try again later",
    )
}

/// Shortest site certificate lifetime (tests use a few seconds; production uses days).
const MIN_CERT_TTL_SECS: u64 = 5;

fn validity(cp: &ControlPlane) -> time::Duration {
    time::Duration::seconds(cp.settings.site_cert_ttl.as_secs().max(MIN_CERT_TTL_SECS) as i64)
}

/// Enrolls a new site: checks the token, names the site, issues its certificate and
/// spends one use of the token.
pub fn join(cp: &ControlPlane, request: &JoinRequest) -> Result<IssuedCertificate, Refusal> {
    let token = tokens::check(cp, &request.token_id, &request.token_secret)?;
    let key =
        SiteKey::from_csr(&request.csr_der).map_err(|m| refuse(RefusalCode::BadRequest, m))?;
    let name = tokens::site_name(&token, request.name.as_deref(), &request.hostname);
    check_name("site", &name).map_err(|e| refuse(RefusalCode::BadRequest, e.to_string()))?;

    let issued = cp
        .ca
        .issue_site(&name, key.public_key(), validity(cp))
        .map_err(internal)?;
    let public_key = B64.encode(key.raw());
    let record = SiteRecord {
        name: name.clone(),
        given_labels: token.labels.clone(),
        detected_labels: Labels::new(),
        public_key: public_key.clone(),
        cert_sha256: hex(&issued.sha256()),
        previous_cert_sha256: None,
        cert_not_after: issued.not_after,
        enrolled_at: unix_now(),
        token_id: token.id.clone(),
        agent_version: None,
        protocol_version: None,
        last_seen: None,
        last_address: None,
        revoked_at: None,
        revoked_by: None,
        trust: None,
        services: Default::default(),
        lock: None,
        secrets_recipient: None,
        decommission: None,
    };

    // Claim the name atomically. A retry by the same site (same key, same token, e.g.
    // after a crash before it stored its certificate) gets a fresh certificate.
    let new_value = encode(&record).map_err(internal)?;
    let mut retry_of: Option<SiteRecord> = None;
    let mut taken = false;
    cp.store
        .update(Tree::Sites, name.as_bytes(), &mut |old| {
            // This closure may run again under contention: decide afresh each time.
            retry_of = None;
            taken = false;
            match old {
                None => Some(new_value.clone()),
                Some(old) => {
                    let existing: Option<SiteRecord> = decode(Tree::Sites, b"", old).ok();
                    match existing {
                        Some(e)
                            if e.public_key == public_key
                                && e.token_id == token.id
                                && e.revoked_at.is_none() =>
                        {
                            let mut updated = e.clone();
                            updated.previous_cert_sha256 = Some(e.cert_sha256.clone());
                            updated.cert_sha256 = record.cert_sha256.clone();
                            updated.cert_not_after = record.cert_not_after;
                            retry_of = Some(e);
                            encode(&updated).ok().or_else(|| Some(old.to_vec()))
                        }
                        _ => {
                            taken = true;
                            Some(old.to_vec())
                        }
                    }
                }
            }
        })
        .map_err(internal)?;
    if taken {
        return Err(refuse(
            RefusalCode::NameTaken,
            format!("a site named {name:?} is already enrolled; join with another --name"),
        ));
    }
    if retry_of.is_none()
        && let Err(refusal) = tokens::spend(cp, &token.id, &name)
    {
        let _ = cp.store.remove(Tree::Sites, name.as_bytes());
        return Err(refusal);
    }
    cp.store
        .insert(Tree::CertIndex, &issued.sha256(), name.as_bytes())
        .and_then(|()| cp.store.flush())
        .map_err(internal)?;
    tracing::info!(site = %name, token = %token.id, "site enrolled");
    Ok(IssuedCertificate {
        site: name,
        cert_der: issued.der.to_vec(),
        ca_der: cp.ca.cert_der().to_vec(),
        not_before: issued.not_before,
        not_after: issued.not_after,
        labels: token.labels,
    })
}

/// Issues a fresh certificate to an enrolled site that proves, on this very connection,
/// that it holds its registered key. Works with an expired certificate, or none.
pub fn renew(
    cp: &ControlPlane,
    request: &RenewRequest,
    link: &Link,
) -> Result<IssuedCertificate, Refusal> {
    let unknown = || {
        refuse(
            RefusalCode::UnknownSite,
            format!("no site named {:?} with this key is enrolled", request.site),
        )
    };
    let site: SiteRecord = cp
        .store
        .get_json(Tree::Sites, request.site.as_bytes())
        .map_err(internal)?
        .ok_or_else(unknown)?;
    if site.revoked_at.is_some() {
        return Err(revoked_refusal(&site.name));
    }
    let key =
        SiteKey::from_csr(&request.csr_der).map_err(|m| refuse(RefusalCode::BadRequest, m))?;
    let registered = B64.decode(&site.public_key).map_err(internal)?;
    if key.raw() != registered.as_slice() {
        return Err(unknown());
    }
    let exported = link
        .export_keying_material(RENEWAL_EXPORTER_LABEL, b"")
        .ok_or_else(|| internal("keying material export failed"))?;
    let message = renewal_proof_message(&site.name, &exported);
    if !verify_site_signature(&registered, &message, &request.proof) {
        return Err(refuse(
            RefusalCode::Unauthenticated,
            "the renewal proof does not verify against the site's registered key",
        ));
    }

    let issued = cp
        .ca
        .issue_site(&site.name, key.public_key(), validity(cp))
        .map_err(internal)?;
    let new_sha = hex(&issued.sha256());
    let mut dropped = None;
    cp.store
        .update(Tree::Sites, site.name.as_bytes(), &mut |old| {
            let mut record: SiteRecord = decode(Tree::Sites, b"", old?).ok()?;
            dropped = record.previous_cert_sha256.take();
            record.previous_cert_sha256 =
                Some(std::mem::replace(&mut record.cert_sha256, new_sha.clone()));
            record.cert_not_after = issued.not_after;
            encode(&record).ok()
        })
        .map_err(internal)?;
    let store_index = || -> Result<(), StoreError> {
        cp.store
            .insert(Tree::CertIndex, &issued.sha256(), site.name.as_bytes())?;
        if let Some(old) = dropped.as_deref().and_then(unhex) {
            cp.store.remove(Tree::CertIndex, &old)?;
        }
        cp.store.flush()
    };
    store_index().map_err(internal)?;
    tracing::info!(site = %site.name, not_after = issued.not_after, "site certificate renewed");
    Ok(IssuedCertificate {
        site: site.name,
        cert_der: issued.der.to_vec(),
        ca_der: cp.ca.cert_der().to_vec(),
        not_before: issued.not_before,
        not_after: issued.not_after,
        labels: site.given_labels,
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

fn revoked_refusal(site: &str) -> Refusal {
    refuse(
        RefusalCode::Revoked,
        format!(
            "site {site:?} has been revoked by an operator; it can only come back by joining again with a new token"
        ),
    )
}

/// Who is on the other end of a connection: the site whose current or previous
/// certificate it presented, `None` if it presented none.
pub fn identify(cp: &ControlPlane, link: &Link) -> Result<Option<SiteRecord>, Refusal> {
    let Some(chain) = link.peer_certificates() else {
        return Ok(None);
    };
    let Some(leaf) = chain.first() else {
        return Ok(None);
    };
    let fingerprint = sha256(leaf);
    let unknown = || {
        refuse(
            RefusalCode::UnknownSite,
            "this certificate no longer belongs to any enrolled site; join again with a new token",
        )
    };
    let name = cp
        .store
        .get(Tree::CertIndex, &fingerprint)
        .map_err(internal)?
        .ok_or_else(unknown)?;
    let site: SiteRecord = cp
        .store
        .get_json(Tree::Sites, &name)
        .map_err(internal)?
        .ok_or_else(unknown)?;
    if site.revoked_at.is_some() {
        return Err(revoked_refusal(&site.name));
    }
    let fp = hex(&fingerprint);
    if site.cert_sha256 != fp && site.previous_cert_sha256.as_deref() != Some(fp.as_str()) {
        return Err(unknown());
    }
    Ok(Some(site))
}

/// Records what an agent said in its hello. Bad labels are refused, not stored.
pub fn record_hello(
    cp: &ControlPlane,
    site: &str,
    hello: &Hello,
    protocol: u16,
    address: &str,
) -> Result<(), Refusal> {
    check_labels(&hello.labels)
        .map_err(|m| refuse(RefusalCode::BadRequest, format!("hello: {m}")))?;
    if hello.agent_version.is_empty() || hello.agent_version.len() > 64 {
        return Err(refuse(
            RefusalCode::BadRequest,
            "hello: the agent version must be 1 to 64 bytes",
        ));
    }
    let now = unix_now();
    cp.store
        .update(Tree::Sites, site.as_bytes(), &mut |old| {
            let mut record: SiteRecord = decode(Tree::Sites, b"", old?).ok()?;
            record.detected_labels = hello.labels.clone();
            record.agent_version = Some(hello.agent_version.clone());
            record.protocol_version = Some(protocol);
            record.last_seen = Some(now);
            record.last_address = Some(address.to_owned());
            encode(&record).ok()
        })
        .map_err(internal)?;
    Ok(())
}

/// Remembers when a site was last heard from (at the end of a session).
pub fn record_last_seen(cp: &ControlPlane, site: &str, when: i64) {
    let result = cp.store.update(Tree::Sites, site.as_bytes(), &mut |old| {
        let mut record: SiteRecord = decode(Tree::Sites, b"", old?).ok()?;
        record.last_seen = Some(record.last_seen.unwrap_or(0).max(when));
        encode(&record).ok()
    });
    if let Err(e) = result {
        tracing::warn!(site, error = %e, "could not record when the site was last seen");
    }
}

/// Why a revocation failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No such site.
    #[error("no site named {0:?}")]
    NotFound(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Revokes a site: its certificates are refused from now on and its live connection is
/// closed at once. Revoking twice is harmless.
pub fn revoke(cp: &ControlPlane, site: &str, by: &str) -> Result<SiteRecord, RevokeError> {
    let now = unix_now();
    let mut found = false;
    let new = cp.store.update(Tree::Sites, site.as_bytes(), &mut |old| {
        let old = old?;
        found = true;
        let mut record: SiteRecord = decode(Tree::Sites, b"", old).ok()?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            record.revoked_by = Some(by.to_owned());
        }
        encode(&record).ok().or_else(|| Some(old.to_vec()))
    })?;
    if !found || new.is_none() {
        return Err(RevokeError::NotFound(site.to_owned()));
    }
    cp.store.flush()?;
    cp.fleet
        .disconnect(site, CloseCode::Revoked, &revoked_refusal(site).message);
    tracing::info!(site, by, "site revoked");
    let record: Option<SiteRecord> = cp.store.get_json(Tree::Sites, site.as_bytes())?;
    record.ok_or_else(|| RevokeError::NotFound(site.to_owned()))
}

/// One site by name.
pub fn get(cp: &ControlPlane, site: &str) -> Result<Option<SiteRecord>, StoreError> {
    cp.store.get_json(Tree::Sites, site.as_bytes())
}

/// Most services one site may report; reports beyond it are dropped.
pub const MAX_SERVICES_PER_SITE: usize = 256;

/// Records what a site reported about one of its services. Text is bounded and the
/// number of services per site capped, so a hostile agent cannot grow the record; a
/// removed service is forgotten.
pub fn record_service(
    cp: &ControlPlane,
    site: &str,
    report: &continuum_shared::protocol::ServiceReport,
) {
    use continuum_shared::protocol::{MAX_REPORT_TEXT, ServicePhase};
    if continuum_shared::names::check_name("service", &report.service).is_err() {
        tracing::warn!(
            site,
            "a service report with an invalid service name was ignored"
        );
        return;
    }
    let cut = |t: &Option<String>| {
        t.as_ref()
            .map(|t| t.chars().take(MAX_REPORT_TEXT).collect())
    };
    let short = |t: &Option<String>| t.as_ref().map(|t| t.chars().take(64).collect());
    let report = continuum_shared::protocol::ServiceReport {
        desired: short(&report.desired),
        running: short(&report.running),
        last_known_good: short(&report.last_known_good),
        failed: short(&report.failed),
        last_error: cut(&report.last_error),
        failure: cut(&report.failure),
        secrets: report
            .secrets
            .iter()
            .filter(|(name, _)| continuum_shared::names::check_name("secret", name).is_ok())
            .take(continuum_shared::manifest::MAX_RELEASE_SECRETS + 1)
            .map(|(name, version)| (name.clone(), *version))
            .collect(),
        ..report.clone()
    };
    let result = cp.store.update(Tree::Sites, site.as_bytes(), &mut |old| {
        let mut record: SiteRecord = decode(Tree::Sites, b"", old?).ok()?;
        if report.phase == ServicePhase::Removed {
            record.services.remove(&report.service);
        } else if record.services.len() < MAX_SERVICES_PER_SITE
            || record.services.contains_key(&report.service)
        {
            record
                .services
                .insert(report.service.clone(), report.clone());
        }
        encode(&record).ok()
    });
    if let Err(e) = result {
        tracing::warn!(site, error = %e, "could not record the site's service report");
    }
}

/// Records the site's update lock (bounded), or its release.
pub fn record_lock(cp: &ControlPlane, site: &str, reason: Option<&str>) {
    let lock = reason.map(|r| crate::model::SiteLock {
        reason: r
            .chars()
            .take(continuum_shared::protocol::MAX_LOCK_REASON)
            .collect(),
        since: crate::plane::rfc3339(unix_now()),
    });
    let result = cp.store.update(Tree::Sites, site.as_bytes(), &mut |old| {
        let mut record: SiteRecord = decode(Tree::Sites, b"", old?).ok()?;
        // Keep the time it was first seen while the reason stays the same.
        let same = record.lock.as_ref().map(|l| &l.reason) == lock.as_ref().map(|l| &l.reason);
        if !same {
            record.lock = lock.clone();
        }
        encode(&record).ok()
    });
    if let Err(e) = result {
        tracing::warn!(site, error = %e, "could not record the site's lock");
    }
}

/// Records the secrets key a site announced; returns whether it differs from the one
/// on record.
pub fn record_secrets_key(
    cp: &ControlPlane,
    site: &str,
    recipient: &str,
) -> Result<bool, StoreError> {
    let mut changed = false;
    cp.store.update(Tree::Sites, site.as_bytes(), &mut |old| {
        let mut record: SiteRecord = decode(Tree::Sites, b"", old?).ok()?;
        changed = record.secrets_recipient.as_deref() != Some(recipient);
        record.secrets_recipient = Some(recipient.to_owned());
        encode(&record).ok()
    })?;
    if changed {
        cp.store.flush()?;
    }
    Ok(changed)
}

/// Every site, by name.
pub fn list(cp: &ControlPlane) -> Result<Vec<SiteRecord>, StoreError> {
    cp.store.list_json(Tree::Sites)
}

/// Records what a site reported about its desired state. A report with a reason is
/// bounded, so a hostile agent cannot grow the record.
pub fn record_trust(
    cp: &ControlPlane,
    site: &str,
    status: &continuum_shared::protocol::TrustStatus,
) {
    use continuum_shared::protocol::TrustState;
    let state = match status.state {
        TrustState::Verified => "verified",
        TrustState::Refused => "refused",
        TrustState::Stale => "stale",
    };
    let reason = status
        .reason
        .as_ref()
        .map(|r| r.chars().take(1024).collect::<String>());
    let report = crate::model::TrustReport {
        verified_generation: status.verified_generation,
        state: state.into(),
        reason,
        at: crate::plane::rfc3339(unix_now()),
    };
    let result = cp.store.update(Tree::Sites, site.as_bytes(), &mut |old| {
        let mut record: SiteRecord = decode(Tree::Sites, b"", old?).ok()?;
        record.trust = Some(report.clone());
        encode(&record).ok()
    });
    if let Err(e) = result {
        tracing::warn!(site, error = %e, "could not record the site's trust report");
    }
}
