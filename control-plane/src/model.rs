//! The records the control plane keeps, as stored and as the API shows them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use continuum_shared::labels::Labels;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An enrolled site as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// The site's name (its certificate's common name).
    pub name: String,
    /// Labels the operator gave through the join token.
    #[serde(default)]
    pub given_labels: Labels,
    /// Facts the agent detected, as of its latest hello.
    #[serde(default)]
    pub detected_labels: Labels,
    /// The site's registered public key: base64 of the raw ECDSA P-256 point.
    pub public_key: String,
    /// SHA-256 (hex) of the site's current certificate.
    pub cert_sha256: String,
    /// SHA-256 (hex) of the certificate it replaced, still valid until it expires.
    #[serde(default)]
    pub previous_cert_sha256: Option<String>,
    /// When the current certificate expires, Unix seconds.
    pub cert_not_after: i64,
    /// When the site joined.
    pub enrolled_at: i64,
    /// The join token it used.
    pub token_id: String,
    /// Agent version from the latest hello.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// Protocol version of the latest session.
    #[serde(default)]
    pub protocol_version: Option<u16>,
    /// Last time the site was heard from.
    #[serde(default)]
    pub last_seen: Option<i64>,
    /// Address the latest session came from.
    #[serde(default)]
    pub last_address: Option<String>,
    /// When an operator revoked the site, if they did.
    #[serde(default)]
    pub revoked_at: Option<i64>,
    /// Who revoked it.
    #[serde(default)]
    pub revoked_by: Option<String>,
    /// What the site last reported about its desired state.
    #[serde(default)]
    pub trust: Option<TrustReport>,
    /// The state of each service at the site, as it last reported.
    #[serde(default)]
    pub services: std::collections::BTreeMap<String, continuum_shared::protocol::ServiceReport>,
    /// The site admin's update lock, if held: rollouts wait for this site.
    #[serde(default)]
    pub lock: Option<SiteLock>,
    /// The public half of the site's secrets key (`age1…`), as the site announced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_recipient: Option<String>,
    /// A decommission ordered for the site, and its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decommission: Option<Decommission>,
}

/// A decommission ordered for a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Decommission {
    /// Keep the services' named volumes and images at the site.
    pub keep_data: bool,
    /// When it was ordered (RFC 3339).
    pub ordered_at: String,
    /// Who ordered it.
    pub ordered_by: String,
    /// The site is revoked without its word after this (Unix seconds).
    pub deadline: i64,
    /// When the site reported it carried out (RFC 3339).
    #[serde(default)]
    pub done_at: Option<String>,
    /// What the site reported it removed.
    #[serde(default)]
    pub report: Option<String>,
}

/// An update lock held at a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SiteLock {
    /// Why, as the site admin said.
    pub reason: String,
    /// When the control plane learned of it (RFC 3339).
    pub since: String,
}

impl SiteRecord {
    /// Detected facts overlaid with the operator's labels (token labels never use the
    /// names of detected facts, so nothing is shadowed).
    pub fn labels(&self) -> Labels {
        let mut labels = self.detected_labels.clone();
        labels.extend(
            self.given_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        labels
    }
}

/// A join token as stored: only the secret's hash is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public identifier.
    pub id: String,
    /// SHA-256 (hex) of the secret.
    pub secret_sha256: String,
    /// Name given at creation: the site name, or the prefix of names under a fleet token.
    pub name: String,
    /// Labels every site enrolled with it gets.
    #[serde(default)]
    pub labels: Labels,
    /// When it was created.
    pub created_at: i64,
    /// When it stops working.
    pub expires_at: i64,
    /// How many sites it may enroll.
    pub uses: u32,
    /// Sites enrolled with it so far, in order.
    #[serde(default)]
    pub enrolled: Vec<String>,
    /// Who created it.
    pub created_by: String,
}

impl TokenRecord {
    /// Uses left.
    pub fn uses_left(&self) -> u32 {
        self.uses.saturating_sub(self.enrolled.len() as u32)
    }
}

/// What an operator may do. Each role may do everything the ones before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the fleet's state.
    Viewer,
    /// Also changes the fleet: tokens, rollouts, revocations.
    Operator,
    /// Also manages operators and takes backups.
    Admin,
}

impl Role {
    /// The role's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: use viewer, operator or admin"
            )),
        }
    }
}

/// An operator as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorRecord {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// SHA-256 (hex) of the current credential.
    pub credential_sha256: String,
    /// When created.
    pub created_at: i64,
    /// Who created it (`serve` for the first admin).
    pub created_by: String,
}

/// How an audited request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It was done.
    Ok,
    /// The caller's role does not allow it.
    Denied,
    /// It was allowed but failed.
    Failed,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Sequence number, increasing.
    pub seq: u64,
    /// When, RFC 3339.
    pub at: String,
    /// Who: the operator's name.
    pub actor: String,
    /// Their role at the time.
    pub role: Role,
    /// What they asked for, e.g. `site.revoke`.
    pub action: String,
    /// What it was done to, e.g. the site name.
    pub target: String,
    /// The address the request came from.
    pub from: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was denied or failed, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A published release as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseRecord {
    /// Service name.
    pub service: String,
    /// Release version.
    pub version: String,
    /// Image-repository target name of its manifest.
    pub target: String,
    /// SHA-256 (hex) of the manifest.
    pub sha256: String,
    /// Length of the manifest in bytes.
    pub length: u64,
    /// The container image it runs.
    pub image: String,
    /// When it was published (RFC 3339).
    pub published_at: String,
    /// Who published it.
    pub published_by: String,
    /// Whether the release key that signed it is held offline (`offline`) or by this
    /// control plane (`control-plane`).
    pub signed_by: String,
    /// The image archive shipped with the release, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub archive: Option<continuum_shared::manifest::ImageArchive>,
    /// Of an agent release (service `continuum-agent`): its binaries by target triple.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_binaries: BTreeMap<String, AgentBinaryRecord>,
    /// Set once the release is yanked: no rollout or assignment may name it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yanked: Option<Yank>,
    /// The secrets it needs (files and registry login), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// Why and when a release was withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Yank {
    /// The operator's reason, shown wherever the release appears.
    pub reason: String,
    /// Who yanked it.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

impl ReleaseRecord {
    /// Why this release may not be rolled out or assigned, if it is yanked.
    pub fn refusal(&self) -> Option<String> {
        self.yanked.as_ref().map(|y| {
            format!(
                "release {} {} was yanked by {} at {}: {}",
                self.service, self.version, y.by, y.at, y.reason
            )
        })
    }
}

/// One agent binary of an agent release, as the image repository lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentBinaryRecord {
    /// Its image-repository target name (`agents/continuum-agent/VERSION/TRIPLE`).
    pub target: String,
    /// SHA-256 of the binary, hex.
    pub sha256: String,
    /// Its length in bytes.
    pub length: u64,
}

/// One release in a site's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesiredRelease {
    /// Release version.
    pub version: String,
    /// Whether an operator pinned it with `continuum site assign`.
    pub pinned: bool,
}

/// A site's desired state as stored; the generation is its director targets version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DesiredRecord {
    /// The site.
    pub site: String,
    /// Increases with every change.
    pub generation: u64,
    /// Service name to release.
    pub releases: std::collections::BTreeMap<String, DesiredRelease>,
    /// The version of each secret its releases use that the site was last given:
    /// versions move only by a rollout of a changed secret.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: std::collections::BTreeMap<String, u64>,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Who changed it.
    pub updated_by: String,
}

/// What a site last reported about its desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrustReport {
    /// The generation the site verified last (0: none yet).
    pub verified_generation: u64,
    /// `verified`, `refused` or `stale`.
    pub state: String,
    /// Why, when not verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the site reported it (RFC 3339).
    pub at: String,
}
