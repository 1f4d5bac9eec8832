//! Agent releases: agent binaries, one per target triple, signed into the image
//! repository as `agents/continuum-agent/VERSION/TRIPLE` and rolled out like any
//! release, as the reserved service `continuum-agent`. Each site gets the binary of
//! the target triple its agent reports.

use std::collections::HashMap;

use continuum_shared::labels::Labels;
use continuum_shared::manifest::{self, AGENT_SERVICE};
use serde_json::Value;

use crate::archives::Stored;
use crate::error::StoreError;
use crate::model::{AgentBinaryRecord, ReleaseRecord};
use crate::plane::{ControlPlane, rfc3339};
use crate::store::{StoreExt, Tree};
use crate::tuf::TufError;
use crate::tuf::image::target_for_hash;

/// The largest agent binary accepted.
pub const MAX_BINARY: u64 = 256 << 20;

/// The target triple this control plane was built for: the default of
/// `continuum agent-release publish`.
pub const BUILD_TARGET: &str = env!("CONTINUUM_TARGET");

/// Why an agent binary was not published.
#[derive(Debug, thiserror::Error)]
pub enum AgentReleaseError {
    /// The request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The repository refused it or failed.
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// Storing the record failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a version and target triple from a request.
pub fn check(version: &str, triple: &str) -> Result<(), AgentReleaseError> {
    if !manifest::version_ok(version) {
        return Err(AgentReleaseError::Invalid(format!(
            "version {version:?}: 1 to 64 letters, digits, . _ + -, starting with a letter or digit"
        )));
    }
    if !manifest::triple_ok(triple) {
        return Err(AgentReleaseError::Invalid(format!(
            "target {triple:?} is not a target triple such as x86_64-unknown-linux-gnu"
        )));
    }
    Ok(())
}

/// Publishes the uploaded binary `stored` as agent `version` for `triple`. The same
/// binary again is a no-op; another binary under a published name is refused.
pub async fn publish(
    cp: &ControlPlane,
    version: &str,
    triple: &str,
    stored: &Stored,
    actor: &str,
) -> Result<ReleaseRecord, AgentReleaseError> {
    check(version, triple)?;
    if !cp.image.holds_release_key() {
        return Err(AgentReleaseError::Invalid(
            "the image repository's release key is offline; agent binaries are signed with it online (`continuum keys` shows where it is)".into(),
        ));
    }
    // One publish at a time: the release record collects the binaries of all triples.
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE.lock().await;
    if let Some(refusal) = crate::releases::get(cp, AGENT_SERVICE, version)?
        .as_ref()
        .and_then(ReleaseRecord::refusal)
    {
        return Err(AgentReleaseError::Invalid(refusal));
    }
    let name = manifest::agent_target_name(version, triple);
    let custom = HashMap::from([
        ("kind".to_owned(), Value::from("agent-binary")),
        ("version".to_owned(), Value::from(version)),
        ("target".to_owned(), Value::from(triple)),
    ]);
    let entry = target_for_hash(stored.sha256, stored.length, custom);
    cp.image
        .publish_entries(vec![(name.clone(), entry)], None)
        .await?;
    let sha256 = continuum_shared::tls::hex(&stored.sha256);
    let key = format!("{AGENT_SERVICE}/{version}");
    let _record = crate::releases::RECORD_CHANGES
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut record = cp
        .store
        .get_json::<ReleaseRecord>(Tree::Releases, key.as_bytes())?
        .unwrap_or_else(|| ReleaseRecord {
            service: AGENT_SERVICE.to_owned(),
            version: version.to_owned(),
            target: name.clone(),
            sha256: sha256.clone(),
            length: stored.length,
            image: "agent binary".into(),
            published_at: rfc3339(continuum_shared::unix_now()),
            published_by: actor.to_owned(),
            signed_by: "control-plane".into(),
            archive: None,
            agent_binaries: Default::default(),
            yanked: None,
            secrets: Vec::new(),
        });
    record.agent_binaries.insert(
        triple.to_owned(),
        AgentBinaryRecord {
            target: name,
            sha256,
            length: stored.length,
        },
    );
    cp.store.put_json(Tree::Releases, key.as_bytes(), &record)?;
    cp.store.flush()?;
    tracing::info!(%version, %triple, "agent binary published");
    Ok(record)
}

/// The target triple a site's agent reports. Agents too old to report one cannot
/// update themselves (they would take the binary for a manifest).
pub fn site_triple(labels: &Labels) -> Option<&str> {
    labels.get("agent_target").and_then(|v| v.as_text())
}

/// The binary of `release` for a site with `labels`, or why there is none.
pub fn binary_for<'a>(
    release: &'a ReleaseRecord,
    labels: &Labels,
) -> Result<&'a AgentBinaryRecord, String> {
    let triple = site_triple(labels)
        .ok_or("its agent is too old to update itself; reinstall it with the one-line install")?;
    release.agent_binaries.get(triple).ok_or_else(|| {
        format!(
            "agent {} has no binary for {triple} (it has: {})",
            release.version,
            release
                .agent_binaries
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}
