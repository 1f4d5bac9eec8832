//! `continuum keys`: moving the image repository's root and release keys offline, and
//! rotating every key. New roots are built and signed here, with keys the release
//! managers hold; the control plane adds its own signature only where it still holds an
//! old root key, and checks both thresholds before installing them.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use tough::schema::key::Key;
use tough::schema::{RoleType, Root, Signed, Targets};

use super::Output;
use super::output::print;
use crate::client::ApiClient;
use crate::tuf::image::root_from_keys;
use crate::tuf::keys::SigningKey;
use crate::tuf::rotate::{Rotated, add_signature};
use crate::tuf::{Lifetimes, expires_in, next, sign};
use crate::views::{DirectorRotated, KeysView, RootProposal, SigningBase};

/// `continuum keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Show the repositories' keys, and the image root hash that sites can pin.
    Show,
    /// Make new root keys and a release key in DIR (files 0600) and move the image
    /// repository onto them; the control plane then holds only its online keys.
    Init {
        /// Where the new keys go; keep it offline.
        #[arg(long)]
        dir: PathBuf,
        /// Root signatures needed for a new root.
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        /// Root keys to make.
        #[arg(long, default_value_t = 1)]
        keys: u64,
        /// Current root keys held offline, to sign the change (not needed while the
        /// control plane still holds the root key).
        #[arg(long = "root-key")]
        root_keys: Vec<PathBuf>,
    },
    /// Rotate a key.
    #[command(subcommand)]
    Rotate(RotateCommand),
}

/// `continuum keys rotate …`.
#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// A new release key, written to OUT; the targets are re-signed with it.
    Release {
        /// Where the new release key goes (0600).
        #[arg(long)]
        out: PathBuf,
        /// Root keys to sign the new root with.
        #[arg(long = "root-key")]
        root_keys: Vec<PathBuf>,
    },
    /// A new online key for snapshot and timestamp, made by the control plane.
    Online {
        /// Root keys to sign the new root with.
        #[arg(long = "root-key")]
        root_keys: Vec<PathBuf>,
    },
    /// A new director key; every site's desired state is signed again.
    Director,
}

fn load_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<SigningKey>> {
    paths.iter().map(|p| Ok(SigningKey::load(p)?)).collect()
}

fn role_keys(root: &Root, role: RoleType) -> Vec<Key> {
    root.keys(role).cloned().collect()
}

fn threshold(root: &Root, role: RoleType) -> u64 {
    root.roles.get(&role).map_or(1, |r| r.threshold.get())
}

/// Runs `continuum keys …`.
pub async fn run(api: &ApiClient, out: Output, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Show => {
            let keys: KeysView = api.get("/v1/repository/keys").await?;
            match out {
                Output::Json => print(out, &keys, &[], vec![]),
                Output::Table => {
                    println!("image repository root: version {}", keys.image_root_version);
                    println!(
                        "  first root sha256 (for `continuum-agent join --image-root-sha256`): {}",
                        keys.image_first_root_sha256
                    );
                    println!("  roles: {}", keys.image_roles);
                    println!(
                        "  this control plane holds a root key: {}, a release key: {}",
                        keys.holds_root_key, keys.holds_release_key
                    );
                    println!(
                        "director repository root: version {}",
                        keys.director_root_version
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Init {
            dir,
            threshold,
            keys,
            root_keys,
        } => init(api, out, &dir, threshold, keys, &root_keys).await,
        KeysCommand::Rotate(RotateCommand::Release {
            out: file,
            root_keys,
        }) => rotate_release(api, out, &file, &root_keys).await,
        KeysCommand::Rotate(RotateCommand::Online { root_keys }) => {
            let base: SigningBase = api.get("/v1/repository/image/targets").await?;
            let current: Signed<Root> = serde_json::from_value(base.root)?;
            let online: Key =
                serde_json::from_value(api.post("/v1/repository/image/online-key", &()).await?)?;
            let root = root_from_keys(
                next(current.signed.version),
                &role_keys(&current.signed, RoleType::Root),
                threshold(&current.signed, RoleType::Root),
                &role_keys(&current.signed, RoleType::Targets),
                &online,
                &Lifetimes::default(),
            );
            let proposal = signed_proposal(root, &load_keys(&root_keys)?, &[], None).await?;
            report(out, api.post("/v1/repository/image/root", &proposal).await?)
        }
        KeysCommand::Rotate(RotateCommand::Director) => {
            let rotated: DirectorRotated = api.post("/v1/repository/director/rotate", &()).await?;
            match out {
                Output::Json => print(out, &rotated, &[], vec![]),
                Output::Table => println!(
                    "director key rotated (root version {}); desired state of {} site(s) signed again",
                    rotated.root_version, rotated.sites_resigned
                ),
            }
            Ok(())
        }
    }
}

/// A root signed by `own` (its new root keys) and `old` (the current root keys held
/// here), with targets re-signed by `release` when given.
async fn signed_proposal(
    root: Root,
    old: &[SigningKey],
    own: &[SigningKey],
    release: Option<(&SigningKey, Signed<Targets>)>,
) -> anyhow::Result<RootProposal> {
    let mut signed = Signed {
        signed: root,
        signatures: Vec::new(),
    };
    for key in old.iter().chain(own) {
        add_signature(&mut signed, key).await?;
    }
    let targets = match release {
        Some((key, current)) => {
            let mut targets = current.signed;
            targets.version = next(targets.version);
            targets.expires = expires_in(Lifetimes::default().targets);
            Some(serde_json::to_value(
                sign(targets, &signed.signed, &[key]).await?.signed(),
            )?)
        }
        None => None,
    };
    Ok(RootProposal {
        root: serde_json::to_value(&signed)?,
        targets,
    })
}

fn report(out: Output, rotated: Rotated) -> anyhow::Result<()> {
    match out {
        Output::Json => print(out, &rotated, &[], vec![]),
        Output::Table => {
            println!(
                "image repository root is now version {}",
                rotated.root_version
            );
            if rotated.online_rotated {
                println!("  the online (snapshot and timestamp) key was replaced");
            }
            if rotated.targets_resigned {
                println!("  the targets were re-signed with the new release key");
            }
            for key in &rotated.deleted_keys {
                println!("  the control plane deleted its copy of {key}");
            }
            println!("Sites follow the new root by themselves.");
        }
    }
    Ok(())
}

fn fresh_file(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!("{} already exists; not overwriting a key", path.display());
    }
    Ok(())
}

async fn init(
    api: &ApiClient,
    out: Output,
    dir: &Path,
    threshold: u64,
    count: u64,
    old: &[PathBuf],
) -> anyhow::Result<()> {
    if count == 0 || count > 16 || threshold == 0 || threshold > count {
        bail!("use between 1 and 16 root keys, and a threshold between 1 and their number");
    }
    let base: SigningBase = api.get("/v1/repository/image/targets").await?;
    let current: Signed<Root> =
        serde_json::from_value(base.root).context("the control plane sent an unreadable root")?;
    let targets: Signed<Targets> = serde_json::from_value(base.targets)
        .context("the control plane sent unreadable targets")?;
    let root_paths: Vec<PathBuf> = (1..=count)
        .map(|i| dir.join(format!("root-{i}.key")))
        .collect();
    let release_path = dir.join("release.key");
    for path in root_paths.iter().chain(std::iter::once(&release_path)) {
        fresh_file(path)?;
    }
    let new_roots = root_paths
        .iter()
        .map(|p| {
            let key = SigningKey::generate()?;
            key.save(p)?;
            Ok(key)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let release = SigningKey::generate()?;
    release.save(&release_path)?;
    let online = role_keys(&current.signed, RoleType::Timestamp)
        .into_iter()
        .next()
        .context("the current root names no online key")?;
    let root = root_from_keys(
        next(current.signed.version),
        &new_roots
            .iter()
            .map(|k| k.public().clone())
            .collect::<Vec<_>>(),
        threshold,
        &[release.public().clone()],
        &online,
        &Lifetimes::default(),
    );
    let proposal = signed_proposal(
        root,
        &load_keys(old)?,
        &new_roots,
        Some((&release, targets)),
    )
    .await?;
    let rotated: Rotated = match api.post("/v1/repository/image/root", &proposal).await {
        Ok(rotated) => rotated,
        Err(e) => {
            // The new keys were never installed: leave nothing behind.
            for path in root_paths.iter().chain(std::iter::once(&release_path)) {
                let _ = std::fs::remove_file(path);
            }
            return Err(e.into());
        }
    };
    report(out, rotated)?;
    if out == Output::Table {
        println!(
            "New root keys ({threshold} of {count} needed) and the release key are in {}: keep them offline.",
            dir.display()
        );
        println!(
            "Publish from now on with:  continuum release publish FILE --key {}",
            release_path.display()
        );
    }
    Ok(())
}

async fn rotate_release(
    api: &ApiClient,
    out: Output,
    file: &Path,
    root_keys: &[PathBuf],
) -> anyhow::Result<()> {
    fresh_file(file)?;
    let base: SigningBase = api.get("/v1/repository/image/targets").await?;
    let current: Signed<Root> = serde_json::from_value(base.root)?;
    let targets: Signed<Targets> = serde_json::from_value(base.targets)?;
    let release = SigningKey::generate()?;
    let online = role_keys(&current.signed, RoleType::Timestamp)
        .into_iter()
        .next()
        .context("the current root names no online key")?;
    let root = root_from_keys(
        next(current.signed.version),
        &role_keys(&current.signed, RoleType::Root),
        threshold(&current.signed, RoleType::Root),
        &[release.public().clone()],
        &online,
        &Lifetimes::default(),
    );
    let proposal =
        signed_proposal(root, &load_keys(root_keys)?, &[], Some((&release, targets))).await?;
    // The key is on disk before the root that names it is installed, never after.
    release.save(file)?;
    let rotated: Rotated = match api.post("/v1/repository/image/root", &proposal).await {
        Ok(rotated) => rotated,
        Err(e) => {
            let _ = std::fs::remove_file(file);
            return Err(e.into());
        }
    };
    report(out, rotated)?;
    if out == Output::Table {
        println!(
            "The new release key is {}: publish with --key {}",
            file.display(),
            file.display()
        );
    }
    Ok(())
}
