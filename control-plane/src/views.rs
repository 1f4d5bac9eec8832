//! The JSON shapes of the HTTPS API, shared by the server that renders them and the
//! CLI that reads them.

use std::collections::BTreeMap;

use continuum_shared::labels::Labels;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::fleet::LiveView;
use crate::model::{OperatorRecord, Role, SiteRecord, TokenRecord};
use crate::plane::rfc3339;

/// An error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// A site as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SiteView {
    /// Site name.
    pub name: String,
    /// Detected facts and given labels; numeric facts are numbers.
    #[schema(value_type = Object)]
    pub labels: Labels,
    /// `online`, `offline` or `revoked`.
    pub status: String,
    /// Whether the site is connected now.
    pub online: bool,
    /// Last time it was heard from (RFC 3339).
    pub last_seen: Option<String>,
    /// Agent version from its latest hello.
    pub agent_version: Option<String>,
    /// Protocol version of its latest session.
    pub protocol_version: Option<u16>,
    /// Address of the current (or latest) session.
    pub remote_address: Option<String>,
    /// Transport of the current session (`quic`).
    pub transport: Option<String>,
    /// Start of the current session.
    pub connected_since: Option<String>,
    /// Heartbeats received in the current session.
    pub heartbeats: u64,
    /// When it joined.
    pub enrolled_at: String,
    /// When its current certificate expires.
    pub certificate_expires: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
    /// What the site last reported about its desired state.
    pub trust: Option<crate::model::TrustReport>,
    /// Each service's desired and running release, phase, health and last failure.
    #[schema(value_type = Object)]
    pub services: std::collections::BTreeMap<String, continuum_shared::protocol::ServiceReport>,
    /// The site admin's update lock, if held (rollouts wait for this site).
    pub lock: Option<crate::model::SiteLock>,
    /// An agent version that failed its trial at this site and why (it is not tried
    /// again there).
    pub agent_failed: Option<String>,
    /// A decommission ordered for the site, and what the site reported it removed.
    pub decommission: Option<crate::model::Decommission>,
}

impl SiteView {
    /// Combines the stored record with the live session, if any.
    pub fn new(record: &SiteRecord, live: Option<&LiveView>) -> Self {
        let decommission = record.decommission.as_ref();
        let status = match (record.revoked_at, live) {
            (Some(_), _) if decommission.is_some_and(|d| d.done_at.is_some()) => "decommissioned",
            (Some(_), _) => "revoked",
            (None, _) if decommission.is_some() => "decommissioning",
            (None, Some(_)) => "online",
            (None, None) => "offline",
        };
        let last_seen = live.map(|l| l.last_heartbeat).or(record.last_seen);
        SiteView {
            name: record.name.clone(),
            labels: record.labels(),
            status: status.into(),
            online: live.is_some() && record.revoked_at.is_none(),
            last_seen: last_seen.map(rfc3339),
            agent_version: record.agent_version.clone(),
            protocol_version: live.map(|l| l.protocol_version).or(record.protocol_version),
            remote_address: live
                .map(|l| l.address.to_string())
                .or_else(|| record.last_address.clone()),
            transport: live.map(|l| l.transport.to_owned()),
            connected_since: live.map(|l| rfc3339(l.connected_at)),
            heartbeats: live.map_or(0, |l| l.heartbeats),
            enrolled_at: rfc3339(record.enrolled_at),
            certificate_expires: rfc3339(record.cert_not_after),
            revoked_at: record.revoked_at.map(rfc3339),
            trust: record.trust.clone(),
            services: record.services.clone(),
            lock: record.lock.clone(),
            decommission: record.decommission.clone(),
            agent_failed: record
                .services
                .get(continuum_shared::manifest::AGENT_SERVICE)
                .and_then(|r| {
                    let version = r.failed.as_ref()?;
                    Some(match &r.failure {
                        Some(why) => format!("{version}: {why}"),
                        None => version.clone(),
                    })
                }),
        }
    }
}

/// A request for a join token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreate {
    /// Site name, or name prefix for a fleet token.
    pub name: String,
    /// Labels for the sites it enrolls.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Lifetime, e.g. `1h`, `30m`, `7days` (default `1h`).
    #[serde(default)]
    pub ttl: Option<String>,
    /// How many sites it may enroll (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
}

/// A token just created: the only time its text is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// The token to pass to `continuum-agent join`.
    pub token: String,
    /// Its id.
    pub id: String,
    /// The name it enrolls under.
    pub name: String,
    /// When it expires.
    pub expires_at: String,
    /// How many sites it may enroll.
    pub uses: u32,
    /// The control-plane addresses it carries.
    pub addresses: Vec<String>,
    /// The line to paste at the site: downloads the installer over the pinned HTTPS
    /// channel and runs it with this token (absent when no agent binary is on offer).
    #[serde(default)]
    pub install: Option<String>,
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Its id.
    pub id: String,
    /// The name it enrolls under.
    pub name: String,
    /// Labels it gives.
    #[schema(value_type = Object)]
    pub labels: Labels,
    /// When it was created.
    pub created_at: String,
    /// When it expires.
    pub expires_at: String,
    /// Whether it has expired.
    pub expired: bool,
    /// How many sites it may enroll.
    pub uses: u32,
    /// Sites enrolled with it.
    pub enrolled: Vec<String>,
    /// Who created it.
    pub created_by: String,
}

impl TokenView {
    /// The listing form of a stored token.
    pub fn new(record: &TokenRecord, now: i64) -> Self {
        TokenView {
            id: record.id.clone(),
            name: record.name.clone(),
            labels: record.labels.clone(),
            created_at: rfc3339(record.created_at),
            expires_at: rfc3339(record.expires_at),
            expired: now >= record.expires_at,
            uses: record.uses,
            enrolled: record.enrolled.clone(),
            created_by: record.created_by.clone(),
        }
    }
}

/// A request for a new operator.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperatorCreate {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// An operator just created, with its credential (shown once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperatorCreated {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Bearer credential for the CLI (`--token`) and the API.
    pub credential: String,
}

/// An operator as listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperatorView {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When created.
    pub created_at: String,
    /// By whom.
    pub created_by: String,
}

impl From<&OperatorRecord> for OperatorView {
    fn from(record: &OperatorRecord) -> Self {
        OperatorView {
            name: record.name.clone(),
            role: record.role,
            created_at: rfc3339(record.created_at),
            created_by: record.created_by.clone(),
        }
    }
}

/// Who the caller is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// Operator name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// A release to publish.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleasePublish {
    /// The manifest's file name, for error messages.
    pub file: String,
    /// The manifest (TOML).
    pub manifest: String,
    /// Image targets metadata signed offline by the release key(s), listing the manifest;
    /// absent to have the control plane sign with its own release key.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub targets: Option<serde_json::Value>,
    /// The image archive shipped with the release, uploaded first to `/v1/archives`.
    #[serde(default)]
    pub archive: Option<ArchiveUploaded>,
}

/// An image archive the control plane holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArchiveUploaded {
    /// SHA-256 of the archive, lower-case hex.
    pub sha256: String,
    /// Its length in bytes.
    pub length: u64,
    /// The id of the image it holds.
    #[serde(default)]
    pub image_id: String,
    /// The tags it carries.
    #[serde(default)]
    pub repo_tags: Vec<String>,
}

/// What release managers sign the next targets metadata against.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SigningBase {
    /// The image repository's newest root (signed).
    #[schema(value_type = Object)]
    pub root: serde_json::Value,
    /// Its current targets (signed).
    #[schema(value_type = Object)]
    pub targets: serde_json::Value,
}

/// A manual assignment of a release to a site.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Assign {
    /// Service name.
    pub service: String,
    /// Release version.
    pub version: String,
}

/// The signing keys of the repositories, as `continuum keys show` prints them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeysView {
    /// SHA-256 of the image repository's first root: what sites pin with
    /// `continuum-agent join --image-root-sha256`.
    pub image_first_root_sha256: String,
    /// The image repository's current root version.
    pub image_root_version: u64,
    /// Key ids and threshold per image role.
    #[schema(value_type = Object)]
    pub image_roles: serde_json::Value,
    /// Whether this control plane holds an image root key.
    pub holds_root_key: bool,
    /// Whether this control plane holds a release key.
    pub holds_release_key: bool,
    /// The director repository's current root version.
    pub director_root_version: u64,
}

/// A proposed image root, with targets re-signed when the release keys change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RootProposal {
    /// The new root, signed by the keys the caller holds.
    #[schema(value_type = Object)]
    pub root: serde_json::Value,
    /// The current targets re-signed with the new release key (next version).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub targets: Option<serde_json::Value>,
}

/// A director key rotation's result.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DirectorRotated {
    /// The director's new root version.
    pub root_version: u64,
    /// Sites whose desired state was signed again.
    pub sites_resigned: usize,
}

/// The policies in force, as `continuum policies` shows them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoliciesView {
    /// The policies directory.
    pub dir: String,
    /// Rollout strategies.
    pub rollouts: Vec<RolloutPolicyView>,
    /// Maintenance windows.
    pub windows: Vec<WindowView>,
    /// Fleet-wide exclusions.
    pub excludes: Vec<ExcludeView>,
    /// Files rejected at the last load (their previous version, if any, stays in force).
    pub rejected: Vec<crate::policy::file::Rejection>,
}

/// One rollout strategy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutPolicyView {
    /// Its name.
    pub name: String,
    /// The file it is in.
    pub file: String,
    /// Its waves, in order.
    pub waves: Vec<WaveView>,
    /// Bake time after each wave.
    pub bake: String,
    /// How long a site must be healthy to count as done.
    pub healthy_for: String,
    /// Most sites updating at once.
    pub max_parallel: u32,
    /// Failed sites tolerated.
    pub failure_budget: u32,
    /// `pause` or `rollback`.
    pub on_failure: String,
}

/// One wave.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WaveView {
    /// Its name.
    pub name: String,
    /// `count N` or `N%` (cumulative).
    pub size: String,
    /// The sites it may take, if restricted.
    pub select: Option<String>,
}

/// One maintenance window.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WindowView {
    /// The file it is in.
    pub file: String,
    /// The sites it applies to (all when absent).
    pub select: Option<String>,
    /// Days, hours and time zone.
    pub when: String,
}

/// One exclusion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExcludeView {
    /// The file it is in.
    pub file: String,
    /// The sites it excludes.
    pub select: String,
    /// Why.
    pub reason: Option<String>,
}

impl PoliciesView {
    /// What `policies` holds now.
    pub fn new(policies: &crate::policy::set::Policies) -> Self {
        use crate::policy::file::{OnFailure, WaveSize};
        let snapshot = policies.snapshot();
        let human = |d: std::time::Duration| humantime::format_duration(d).to_string();
        PoliciesView {
            dir: policies.dir().display().to_string(),
            rollouts: snapshot
                .rollouts()
                .map(|r| RolloutPolicyView {
                    name: r.name.clone(),
                    file: r.file.clone(),
                    waves: r
                        .waves
                        .iter()
                        .map(|w| WaveView {
                            name: w.name.clone(),
                            size: match w.size {
                                WaveSize::Count(n) => format!("count {n}"),
                                WaveSize::Percent(p) => format!("{p}%"),
                            },
                            select: w.select.as_ref().map(|s| s.text().to_owned()),
                        })
                        .collect(),
                    bake: human(r.bake),
                    healthy_for: human(r.healthy_for),
                    max_parallel: r.max_parallel,
                    failure_budget: r.failure_budget,
                    on_failure: match r.on_failure {
                        OnFailure::Pause => "pause".into(),
                        OnFailure::Rollback => "rollback".into(),
                    },
                })
                .collect(),
            windows: snapshot
                .windows()
                .map(|w| WindowView {
                    file: w.file.clone(),
                    select: w.select.as_ref().map(|s| s.text().to_owned()),
                    when: w.text.clone(),
                })
                .collect(),
            excludes: snapshot
                .excludes()
                .map(|x| ExcludeView {
                    file: x.file.clone(),
                    select: x.select.text().to_owned(),
                    reason: x.reason.clone(),
                })
                .collect(),
            rejected: snapshot.rejected.clone(),
        }
    }
}
