//! Decommissioning a site: the central team orders it once (`continuum site
//! decommission NAME`), and the site's agent removes everything of ours, reports what it
//! removed, and is then revoked; it wipes its state and, if the installer put it there,
//! uninstalls itself. A site that is offline is told when it returns; one that does not
//! return by the deadline is revoked without its word.

use std::sync::Arc;
use std::time::Duration;

use continuum_shared::unix_now;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::StoreError;
use crate::model::{Decommission, SiteRecord};
use crate::plane::{ControlPlane, rfc3339};
use crate::sites;
use crate::store::{Tree, decode, encode};

/// The deadline when none is given.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(14 * 24 * 3600);

/// Longest report kept from a site.
const MAX_REPORT: usize = 1024;

/// How often overdue decommissions are looked for.
const SWEEP: Duration = Duration::from_secs(10);

/// What `site decommission` asks for (the API's request body).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecommissionRequest {
    /// Keep the services' named volumes and images at the site.
    #[serde(default)]
    pub keep_data: bool,
    /// How long an offline site has to return before it is revoked anyway (e.g.
    /// `14days`, the default).
    #[serde(default)]
    pub deadline: Option<String>,
}

/// Why a decommission was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecommissionError {
    /// No such site.
    #[error("no site named {0:?}")]
    NotFound(String),
    /// Revoked already, or a bad deadline.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Orders `site` decommissioned; a connected site is told at once.
pub fn order(
    cp: &ControlPlane,
    site: &str,
    request: &DecommissionRequest,
    actor: &str,
) -> Result<SiteRecord, DecommissionError> {
    let deadline = match &request.deadline {
        None => DEFAULT_DEADLINE,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| DecommissionError::Invalid(format!("--deadline {text:?}: {e}")))?,
    };
    let now = unix_now();
    let order = Decommission {
        keep_data: request.keep_data,
        ordered_at: rfc3339(now),
        ordered_by: actor.to_owned(),
        deadline: now.saturating_add(deadline.as_secs().min(i64::MAX as u64) as i64),
        done_at: None,
        report: None,
    };
    let mut refusal = None;
    let mut found = false;
    cp.store.update(Tree::Sites, site.as_bytes(), &mut |old| {
        let old = old?;
        found = true;
        let mut record: SiteRecord = decode(Tree::Sites, b"", old).ok()?;
        refusal = record
            .revoked_at
            .is_some()
            .then(|| format!("site {site:?} is revoked already: there is nothing left to tell it"));
        if refusal.is_none() {
            record.decommission = Some(order.clone());
        }
        encode(&record).ok()
    })?;
    if !found {
        return Err(DecommissionError::NotFound(site.to_owned()));
    }
    if let Some(refusal) = refusal {
        return Err(DecommissionError::Invalid(refusal));
    }
    cp.store.flush()?;
    tracing::info!(site, keep_data = request.keep_data, "decommission ordered");
    // A connected site learns of it with its next notice.
    cp.fleet.notify(site, crate::desired::generation(cp, site));
    sites::get(cp, site)?.ok_or_else(|| DecommissionError::NotFound(site.to_owned()))
}

/// The order standing for `site`, unless it is carried out.
pub fn pending(cp: &ControlPlane, site: &str) -> Option<Decommission> {
    sites::get(cp, site)
        .ok()
        .flatten()
        .filter(|r| r.revoked_at.is_none())
        .and_then(|r| r.decommission)
        .filter(|d| d.done_at.is_none())
}

/// The site reports the order carried out: its report is kept and the site revoked.
pub fn done(cp: &ControlPlane, site: &str, report: &str) {
    if pending(cp, site).is_none() {
        tracing::warn!(
            site,
            "a site reported a decommission nobody ordered; ignored"
        );
        return;
    }
    let report: String = report
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REPORT)
        .collect();
    let result = cp.store.update(Tree::Sites, site.as_bytes(), &mut |old| {
        let mut record: SiteRecord = decode(Tree::Sites, b"", old?).ok()?;
        if let Some(order) = &mut record.decommission {
            order.done_at = Some(rfc3339(unix_now()));
            order.report = Some(report.clone());
        }
        encode(&record).ok()
    });
    if let Err(e) = result {
        tracing::warn!(site, error = %e, "could not record the decommission report");
    }
    tracing::info!(site, %report, "site decommissioned itself");
    if let Err(e) = sites::revoke(cp, site, "decommission") {
        tracing::warn!(site, error = %e, "could not revoke the decommissioned site");
    }
}

/// Revokes, every few seconds for as long as the runtime runs, the sites whose
/// decommission deadline passed without their word.
pub fn spawn(cp: Arc<ControlPlane>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SWEEP);
        loop {
            ticks.tick().await;
            let overdue: Vec<String> = match sites::list(&cp) {
                Ok(all) => all
                    .into_iter()
                    .filter(|s| s.revoked_at.is_none())
                    .filter(|s| {
                        // Overdue, or done but not revoked (that failed at the time).
                        s.decommission
                            .as_ref()
                            .is_some_and(|d| d.done_at.is_some() || d.deadline <= unix_now())
                    })
                    .map(|s| s.name)
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list sites for decommission deadlines");
                    continue;
                }
            };
            for site in overdue {
                tracing::warn!(
                    site,
                    "decommission deadline passed without the site; revoking it"
                );
                if let Err(e) = sites::revoke(&cp, &site, "decommission deadline") {
                    tracing::warn!(site, error = %e, "could not revoke the site");
                }
            }
        }
    });
}
