//! Taking on new desired state, safely: TUF on two repositories, as Uptane splits them.
//!
//! The director repository says what this site should run (signed online by the control
//! plane, bound to this site by name); the image repository says what the release
//! managers signed. A release is accepted only when both agree on its name, length and
//! hashes, and its manifest's bytes match them. Anything less is refused with a reason,
//! and the state in force stays as it was.
//!
//! Trusted metadata lives in `<state dir>/tuf/{image,director}/` (tough's datastore), so
//! rollback protection holds across restarts; the initial roots, received at join over
//! the channel the token's CA pin protects, in `<state dir>/tuf/*-initial-root.json`.
//! Expired metadata stops new state from being accepted, never what already runs.

pub mod artifact;
pub mod desired;
mod image_cache;
pub mod transport;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use continuum_shared::manifest::{self, ImageArchive, ImageSource};
use continuum_shared::secrets::SealedSecrets;
use tough::schema::{Signed, Targets};
use tough::{ExpirationEnforcement, Limits, Repository, RepositoryLoader};
use url::Url;

pub use desired::{AgentBinary, DesiredState, VerifiedRelease};
pub use transport::{FetchLimits, LinkSlot, LinkTransport};

/// Which of the two repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repo {
    /// Releases, signed by the release keys.
    Image,
    /// This site's desired state, signed by the director.
    Director,
}

impl Repo {
    fn host(self) -> &'static str {
        match self {
            Repo::Image => "image",
            Repo::Director => "director",
        }
    }
}

/// Where trusted metadata lives.
pub fn datastore(state_dir: &Path, repo: Repo) -> PathBuf {
    state_dir.join("tuf").join(repo.host())
}

/// Where the initial root received at join is kept.
pub fn initial_root_path(state_dir: &Path, repo: Repo) -> PathBuf {
    state_dir
        .join("tuf")
        .join(format!("{}-initial-root.json", repo.host()))
}

/// Why new desired state was not taken on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Something does not verify: the state is refused until it changes.
    #[error("{0}")]
    Refused(String),
    /// Nothing could be verified right now (link down, metadata expired): keep running the
    /// last verified state and try again later.
    #[error("{0}")]
    Stale(String),
}

/// The metadata limits against endless-data attacks.
pub fn limits() -> Limits {
    Limits {
        max_root_size: 1 << 20,
        max_targets_size: 16 << 20,
        max_timestamp_size: 64 << 10,
        max_snapshot_size: 1 << 20,
        max_root_updates: 1024,
    }
}

/// Classifies tough's errors. Expired metadata, and trouble reaching the control
/// plane (marked by the transport, or a file it does not serve), make the state stale:
/// keep what runs and try again. Everything else (bad signatures, hashes, sizes,
/// versions) is a refusal.
fn classify(repo: Repo, error: tough::error::Error) -> TrustError {
    let text = error.to_string();
    let which = repo.host();
    let unreachable = match &error {
        tough::error::Error::Transport { source, .. } => {
            source.kind() == tough::TransportErrorKind::FileNotFound
                || text.contains(transport::LINK_TROUBLE)
        }
        _ => false,
    };
    if text.to_lowercase().contains("expired") {
        TrustError::Stale(format!(
            "the {which} repository's metadata has expired (is the control plane re-signing it?): {text}"
        ))
    } else if unreachable {
        TrustError::Stale(format!("cannot fetch the {which} repository: {text}"))
    } else {
        TrustError::Refused(format!("the {which} repository does not verify: {text}"))
    }
}

/// Loads and verifies a TUF repository the way this agent does (its size limits,
/// expiry enforced, trusted metadata kept in `datastore`), starting from `root`. This is
/// the code the TUF conformance suite exercises.
pub async fn load_repository<T: tough::Transport + Clone + 'static>(
    root: &[u8],
    datastore: &Path,
    metadata: Url,
    targets: Url,
    transport: T,
) -> Result<Repository, tough::error::Error> {
    RepositoryLoader::new(&root, metadata, targets)
        .transport(transport)
        .datastore(datastore)
        .limits(limits())
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
}

/// Loads and verifies one repository through `transport`, starting from the newest root
/// trusted so far.
pub async fn load<T: tough::Transport + Clone + 'static>(
    state_dir: &Path,
    repo: Repo,
    transport: T,
) -> Result<Repository, TrustError> {
    let store = datastore(state_dir, repo);
    continuum_shared::files::create_private_dir(&store)
        .map_err(|e| TrustError::Stale(e.to_string()))?;
    // The newest root trusted so far, unless a write cut short left it damaged: then
    // the root pinned at join, from which the chain of roots is walked again.
    let stored = std::fs::read(store.join("root.json")).ok().filter(|bytes| {
        let whole = serde_json::from_slice::<serde_json::Value>(bytes).is_ok();
        if !whole {
            tracing::warn!(
                repository = repo.host(),
                "the stored root is damaged; starting again from the root pinned at join"
            );
        }
        whole
    });
    // Damaged copies of the other roles only weaken the rollback check for one load;
    // kept, they would refuse every load.
    for name in ["timestamp.json", "snapshot.json", "targets.json"] {
        let path = store.join(name);
        if let Ok(bytes) = std::fs::read(&path)
            && serde_json::from_slice::<serde_json::Value>(&bytes).is_err()
        {
            tracing::warn!(
                repository = repo.host(),
                file = name,
                "a stored role is damaged; loading it afresh"
            );
            let _ = std::fs::remove_file(&path);
        }
    }
    let root = match stored {
        Some(bytes) => bytes,
        None => std::fs::read(initial_root_path(state_dir, repo)).map_err(|_| {
            TrustError::Stale(format!(
                "no trusted {} root yet (it arrives after join)",
                repo.host()
            ))
        })?,
    };
    let base = |kind: &str| {
        Url::parse(&format!("continuum://{}/{kind}/", repo.host()))
            .map_err(|e| TrustError::Refused(e.to_string()))
    };
    load_repository(
        &root,
        &store,
        base("metadata")?,
        base("targets")?,
        transport,
    )
    .await
    .map_err(|e| classify(repo, e))
}

/// The site a director targets file is bound to.
fn bound_site(targets: &Signed<Targets>) -> Option<&str> {
    targets
        .signed
        ._extra
        .get("continuum")?
        .get("site")?
        .as_str()
}

/// The sealed secrets a director targets file carries, checked for shape and bounds
/// (they are opened only when a container needs them).
fn sealed_secrets(targets: &Signed<Targets>) -> Result<SealedSecrets, TrustError> {
    let Some(value) = targets
        .signed
        ._extra
        .get("continuum")
        .and_then(|c| c.get("secrets"))
    else {
        return Ok(SealedSecrets::new());
    };
    let secrets: SealedSecrets = serde_json::from_value(value.clone())
        .map_err(|e| TrustError::Refused(format!("the director's secrets are malformed: {e}")))?;
    if secrets.len() > continuum_shared::secrets::MAX_SECRETS_PER_SITE {
        return Err(TrustError::Refused(format!(
            "the director names {} secrets; at most {} are accepted",
            secrets.len(),
            continuum_shared::secrets::MAX_SECRETS_PER_SITE
        )));
    }
    if let Some(bad) = secrets
        .keys()
        .find(|name| continuum_shared::names::check_name("secret", name).is_err())
    {
        return Err(TrustError::Refused(format!(
            "the director names a secret {bad:?}, which is not a secret name"
        )));
    }
    Ok(secrets)
}

/// The image archive a release's signed entry names: well formed, and listed in the
/// image repository with the same length and hash.
fn signed_archive(
    image: &Repository,
    value: &serde_json::Value,
    release: &manifest::Release,
) -> Result<ImageArchive, TrustError> {
    let archive: ImageArchive = serde_json::from_value(value.clone()).map_err(|e| {
        TrustError::Refused(format!(
            "{} {}: the signed archive record is unreadable: {e}",
            release.service, release.version
        ))
    })?;
    archive
        .check(&release.service, &release.version)
        .map_err(TrustError::Refused)?;
    let listed = tough::TargetName::new(&archive.target)
        .ok()
        .and_then(|name| image.targets().signed.targets.get(&name).cloned());
    match listed {
        Some(t)
            if t.length == archive.length
                && continuum_shared::tls::hex(&t.hashes.sha256) == archive.sha256 =>
        {
            Ok(archive)
        }
        _ => Err(TrustError::Refused(format!(
            "{} {}: the image archive {} is not in the image repository with the length and hash the release records",
            release.service, release.version, archive.target
        ))),
    }
}

/// Fetches a release manifest from the image repository (tough checks its length and
/// hashes against the signed targets) and parses it.
async fn read_manifest(
    image: &Repository,
    name: &tough::TargetName,
) -> Result<manifest::Release, TrustError> {
    let stream = image
        .read_target(name)
        .await
        .map_err(|e| classify(Repo::Image, e))?
        .ok_or_else(|| {
            TrustError::Refused(format!("{:?} is not in the image repository", name.raw()))
        })?;
    let bytes = tough::IntoVec::into_vec(stream)
        .await
        .map_err(|e| classify(Repo::Image, e))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| TrustError::Refused(format!("{:?} is not UTF-8 text", name.raw())))?;
    manifest::parse(name.raw(), &text, ImageSource::Archive)
        .map_err(|e| TrustError::Refused(e.to_string()))
}

/// Verifies the newest desired state for `site`: both repositories, Uptane's agreement
/// rule, and each release manifest's bytes. Nothing is stored here.
pub async fn verify<T: tough::Transport + Clone + 'static>(
    state_dir: &Path,
    site: &str,
    transport: T,
) -> Result<DesiredState, TrustError> {
    // One verification at a time per agent: a session's verification may still run
    // when the next session starts one, and both would write the same trusted files.
    let one = {
        static VERIFYING: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
            LazyLock::new(Default::default);
        let mut all = VERIFYING.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(state_dir.to_path_buf()).or_default().clone()
    };
    let _one = one.lock().await;
    let director = load(state_dir, Repo::Director, transport.clone()).await?;
    let image = match image_cache::reuse(state_dir, &transport).await {
        image_cache::Lookup::Hit(image) => *image,
        image_cache::Lookup::Miss(served) => {
            let prefetched = image_cache::Prefetched::new(transport, served.clone());
            let image = load(state_dir, Repo::Image, prefetched).await?;
            if let Some(timestamp) = served {
                image_cache::remember(state_dir, timestamp, &image);
            }
            image
        }
    };
    // Manifests already verified, by target name and hash: their bytes need no refetch.
    let known: Vec<VerifiedRelease> = DesiredState::load(state_dir)
        .ok()
        .flatten()
        .map(|d| d.releases)
        .unwrap_or_default();
    let wanted = director.targets();
    match bound_site(wanted) {
        Some(bound) if bound == site => {}
        Some(other) => {
            return Err(TrustError::Refused(format!(
                "the director metadata is for site {other:?}, not this site ({site:?}): refusing another site's desired state"
            )));
        }
        None => {
            return Err(TrustError::Refused(
                "the director metadata names no site".into(),
            ));
        }
    }
    let generation = wanted.signed.version.get();
    let secrets = sealed_secrets(wanted)?;
    let mut releases = Vec::new();
    let mut agent = None;
    for (name, entry) in &wanted.signed.targets {
        let vouched = image.targets().signed.targets.get(name);
        let agrees = vouched
            .is_some_and(|t| t.length == entry.length && t.hashes.sha256 == entry.hashes.sha256);
        if !agrees {
            return Err(TrustError::Refused(format!(
                "the director lists {:?}, which the image repository does not vouch for with the same length and hashes",
                name.raw()
            )));
        }
        if let Some((version, triple)) = manifest::parse_agent_target_name(name.raw()) {
            if triple != crate::TARGET {
                return Err(TrustError::Refused(format!(
                    "the director names the agent binary for {triple}; this agent is built for {}",
                    crate::TARGET
                )));
            }
            if agent.is_some() {
                return Err(TrustError::Refused(
                    "the director names more than one agent binary".into(),
                ));
            }
            agent = Some(AgentBinary {
                target: name.raw().to_owned(),
                version: version.to_owned(),
                sha256: continuum_shared::tls::hex(&entry.hashes.sha256),
                length: entry.length,
            });
            continue;
        }
        let sha256 = continuum_shared::tls::hex(&entry.hashes.sha256);
        let release = match known
            .iter()
            .find(|k| k.target == name.raw() && k.sha256 == sha256)
        {
            Some(known) => known.release.clone(),
            None => read_manifest(&image, name).await?,
        };
        if manifest::target_name(&release.service, &release.version) != name.raw() {
            return Err(TrustError::Refused(format!(
                "{:?} holds the manifest of {} {}, not what its name says",
                name.raw(),
                release.service,
                release.version
            )));
        }
        let archive = match vouched.and_then(|t| t.custom.get("archive")) {
            None => None,
            Some(value) => Some(signed_archive(&image, value, &release)?),
        };
        let secret_versions = release
            .secret_names()
            .filter_map(|n| secrets.get(n).map(|s| (n.to_owned(), s.version)))
            .collect();
        releases.push(VerifiedRelease {
            target: name.raw().to_owned(),
            sha256,
            release,
            archive,
            secrets: secret_versions,
        });
    }
    Ok(DesiredState {
        generation,
        releases,
        agent,
        secrets,
        verified_at: continuum_shared::unix_now(),
    })
}
