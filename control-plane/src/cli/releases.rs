//! `continuum release publish|yank`, `continuum releases` and `continuum site assign`.

use std::num::NonZeroU64;
use std::path::Path;

use anyhow::{Context, bail};
use continuum_shared::manifest::{self, ImageArchive, ImageSource};
use tough::TargetName;
use tough::schema::{Root, Signed, Targets};

use super::output::print;
use super::{Output, ReleaseCommand};
use crate::client::ApiClient;
use crate::model::{DesiredRecord, ReleaseRecord};
use crate::tuf::keys::SigningKey;
use crate::tuf::{Lifetimes, expires_in, next, sign};
use crate::views::{ArchiveUploaded, Assign, ReleasePublish, SigningBase};
use crate::yank::{YankOutcome, YankRequest};

/// Runs `continuum release …`.
pub async fn run(api: &ApiClient, out: Output, command: ReleaseCommand) -> anyhow::Result<()> {
    match command {
        ReleaseCommand::Publish {
            file,
            key,
            image_archive,
        } => publish(api, out, &file, key.as_deref(), image_archive.as_deref()).await,
        ReleaseCommand::Yank {
            service,
            version,
            reason,
        } => yank(api, out, &service, &version, &reason).await,
    }
}

async fn yank(
    api: &ApiClient,
    out: Output,
    service: &str,
    version: &str,
    reason: &str,
) -> anyhow::Result<()> {
    continuum_shared::names::check_name("service", service)?;
    let path = format!("/v1/releases/{service}/{version}/yank");
    let outcome: YankOutcome = api
        .post(
            &path,
            &YankRequest {
                reason: reason.to_owned(),
            },
        )
        .await?;
    if out == Output::Json {
        print(out, &outcome, &[], vec![]);
        return Ok(());
    }
    println!("yanked {service} {version}: {reason}");
    match (&outcome.rollout, &outcome.moving_to) {
        (Some(id), Some(to)) => println!(
            "{} site(s) run it; rollout {id} moves them to {to} (`continuum rollout status {id}`)",
            outcome.sites.len()
        ),
        _ if outcome.sites.is_empty() => println!("no site runs it"),
        _ => {}
    }
    for id in &outcome.stopped {
        println!("rollout {id} of {version} cancelled");
    }
    if let Some(note) = &outcome.note {
        println!("{note}");
    }
    Ok(())
}

/// `continuum agent-release publish`: uploads the binary, which the control plane signs.
pub async fn publish_agent(
    api: &ApiClient,
    out: Output,
    binary: &Path,
    version: &str,
    target: &str,
) -> anyhow::Result<()> {
    crate::agent_releases::check(version, target).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let path = format!("/v1/agent-releases/{version}/{target}");
    let record: ReleaseRecord = api
        .post_bytes(&path, "application/octet-stream", bytes)
        .await?;
    match out {
        Output::Json => print(out, &record, &[], vec![]),
        Output::Table => {
            let binary = record.agent_binaries.get(target);
            println!(
                "published agent {version} for {target} ({} bytes, sha256 {}); roll it out with `continuum rollout start {} {version}`",
                binary.map_or(0, |b| b.length),
                binary.map_or("?", |b| b.sha256.as_str()),
                record.service
            );
        }
    }
    Ok(())
}

async fn publish(
    api: &ApiClient,
    out: Output,
    file: &Path,
    key: Option<&Path>,
    image_archive: Option<&Path>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let shown = file.display().to_string();
    let source = if image_archive.is_some() {
        ImageSource::Archive
    } else {
        ImageSource::Registry
    };
    // Every problem is reported here, before anything is signed or sent.
    let release = manifest::parse(&shown, &text, source).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::releases::check_placement(&shown, &text, &release)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (uploaded, archive) = match image_archive {
        Some(path) => {
            let (uploaded, archive) = upload_archive(api, &release, path).await?;
            (Some(uploaded), Some(archive))
        }
        None => (None, None),
    };
    let targets = match key {
        Some(key) => Some(sign_offline(api, &release, &text, archive.as_ref(), key).await?),
        None => None,
    };
    let request = ReleasePublish {
        file: shown,
        manifest: text,
        targets,
        archive: uploaded,
    };
    let record: ReleaseRecord = api.post("/v1/releases", &request).await?;
    match out {
        Output::Json => print(out, &record, &[], vec![]),
        Output::Table => println!(
            "published {} {} (manifest sha256 {}{}, signed by the {} release key)",
            record.service,
            record.version,
            record.sha256,
            record
                .archive
                .as_ref()
                .map(|a| format!(
                    ", image {} shipped as a {}-byte archive",
                    a.image_id, a.length
                ))
                .unwrap_or_default(),
            if record.signed_by == "offline" {
                "offline"
            } else {
                "control plane's"
            }
        ),
    }
    Ok(())
}

/// Checks an image archive here, uploads it, and checks the control plane read the same
/// image from it.
async fn upload_archive(
    api: &ApiClient,
    release: &manifest::Release,
    path: &Path,
) -> anyhow::Result<(ArchiveUploaded, ImageArchive)> {
    let image =
        crate::archives::inspect(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if !crate::archives::names(&image, &release.container.image) {
        bail!(
            "{}: container.image is {:?}, but the archive holds {:?}; tag the image with the name the manifest uses before saving it",
            path.display(),
            release.container.image,
            image.repo_tags
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = continuum_shared::tls::hex(&continuum_shared::tls::sha256(&bytes));
    let length = bytes.len() as u64;
    let uploaded: ArchiveUploaded = api
        .post_bytes("/v1/archives", "application/x-tar", bytes)
        .await?;
    if uploaded.sha256 != sha256 || uploaded.image_id != image.image_id {
        bail!(
            "the control plane stored the archive as {} holding {}, not {sha256} holding {}: the upload was altered",
            uploaded.sha256,
            uploaded.image_id,
            image.image_id
        );
    }
    let archive = ImageArchive {
        target: manifest::archive_target_name(&release.service, &release.version),
        sha256,
        length,
        image_id: image.image_id,
    };
    Ok((uploaded, archive))
}

/// Builds the next image targets metadata with the release added and signs it with the
/// release key here, so the key never leaves the release manager's machine.
async fn sign_offline(
    api: &ApiClient,
    release: &manifest::Release,
    text: &str,
    archive: Option<&ImageArchive>,
    key: &Path,
) -> anyhow::Result<serde_json::Value> {
    let key = SigningKey::load(key)?;
    let base: SigningBase = api.get("/v1/repository/image/targets").await?;
    let root: Signed<Root> =
        serde_json::from_value(base.root).context("the control plane sent an unreadable root")?;
    let current: Signed<Targets> = serde_json::from_value(base.targets)
        .context("the control plane sent unreadable targets")?;
    root.signed
        .verify_role(&current)
        .context("the control plane's current targets are not signed by the release keys its root names; do not sign on top of them")?;
    if !root
        .signed
        .keys(tough::schema::RoleType::Targets)
        .any(|k| k == key.public())
    {
        bail!(
            "this key is not a release key of the image repository (its root names other targets keys)"
        );
    }
    let mut targets = current.signed.clone();
    targets.version = next(targets.version);
    targets.expires = expires_in(Lifetimes::default().targets);
    for (name, entry) in crate::releases::entries(release, text.as_bytes(), archive)? {
        targets.targets.insert(
            TargetName::new(name).map_err(|e| anyhow::anyhow!("{e}"))?,
            entry,
        );
    }
    let _: NonZeroU64 = targets.version;
    let signed = sign(targets, &root.signed, &[&key]).await?;
    Ok(serde_json::to_value(signed.signed())?)
}

/// Runs `continuum releases`.
pub async fn list(api: &ApiClient, out: Output) -> anyhow::Result<()> {
    let releases: Vec<ReleaseRecord> = api.get("/v1/releases").await?;
    let rows = releases
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                r.version.clone(),
                r.image.clone(),
                r.published_at.clone(),
                r.published_by.clone(),
                r.signed_by.clone(),
                r.yanked
                    .as_ref()
                    .map_or_else(String::new, |y| format!("yanked: {}", y.reason)),
            ]
        })
        .collect();
    print(
        out,
        &releases,
        &[
            "SERVICE",
            "VERSION",
            "IMAGE",
            "PUBLISHED",
            "BY",
            "SIGNED BY",
            "YANKED",
        ],
        rows,
    );
    Ok(())
}

/// Runs `continuum site assign`.
pub async fn assign(
    api: &ApiClient,
    out: Output,
    site: &str,
    service: &str,
    version: &str,
) -> anyhow::Result<()> {
    continuum_shared::names::check_name("site", site)?;
    let body = Assign {
        service: service.to_owned(),
        version: version.to_owned(),
    };
    let desired: DesiredRecord = api.post(&format!("/v1/sites/{site}/assign"), &body).await?;
    match out {
        Output::Json => print(out, &desired, &[], vec![]),
        Output::Table => println!(
            "site {site} pinned to {service} {version} (desired state generation {})",
            desired.generation
        ),
    }
    Ok(())
}
