//! `continuum release publish`, `continuum releases` and `continuum site assign`.

use std::num::NonZeroU64;
use std::path::Path;

use anyhow::{Context, bail};
use continuum_shared::manifest::{self, ImageSource};
use tough::TargetName;
use tough::schema::{Root, Signed, Targets};

use super::output::print;
use super::{Output, ReleaseCommand};
use crate::client::ApiClient;
use crate::model::{DesiredRecord, ReleaseRecord};
use crate::tuf::image::target_for;
use crate::tuf::keys::SigningKey;
use crate::tuf::{Lifetimes, expires_in, next, sign};
use crate::views::{Assign, ReleasePublish, SigningBase};

/// Runs `continuum release …`.
pub async fn run(api: &ApiClient, out: Output, command: ReleaseCommand) -> anyhow::Result<()> {
    match command {
        ReleaseCommand::Publish { file, key } => publish(api, out, &file, key.as_deref()).await,
    }
}

async fn publish(
    api: &ApiClient,
    out: Output,
    file: &Path,
    key: Option<&Path>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let shown = file.display().to_string();
    // Every problem is reported here, before anything is signed or sent.
    let release = manifest::parse(&shown, &text, ImageSource::Registry)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let targets = match key {
        Some(key) => Some(sign_offline(api, &release, &text, key).await?),
        None => None,
    };
    let request = ReleasePublish {
        file: shown,
        manifest: text,
        targets,
    };
    let record: ReleaseRecord = api.post("/v1/releases", &request).await?;
    match out {
        Output::Json => print(out, &record, &[], vec![]),
        Output::Table => println!(
            "published {} {} (manifest sha256 {}, signed by the {} release key)",
            record.service,
            record.version,
            record.sha256,
            if record.signed_by == "offline" {
                "offline"
            } else {
                "control plane's"
            }
        ),
    }
    Ok(())
}

/// Builds the next image targets metadata with the release added and signs it with the
/// release key here, so the key never leaves the release manager's machine.
async fn sign_offline(
    api: &ApiClient,
    release: &manifest::Release,
    text: &str,
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
    let name = manifest::target_name(&release.service, &release.version);
    let mut targets = current.signed.clone();
    targets.version = next(targets.version);
    targets.expires = expires_in(Lifetimes::default().targets);
    let entry = target_for(text.as_bytes(), crate::releases::custom(release));
    targets.targets.insert(
        TargetName::new(name).map_err(|e| anyhow::anyhow!("{e}"))?,
        entry,
    );
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
