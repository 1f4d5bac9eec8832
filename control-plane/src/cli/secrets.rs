//! `continuum secret …`: set a secret from a file or standard input, list secrets
//! (never their values), remove one.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Subcommand;

use super::Output;
use super::output::print;
use crate::client::ApiClient;
use crate::secrets::{MAX_SCOPE_SITES, Scope, SecretView, SetOutcome, SetRequest};

/// `continuum secret …`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set NAME to a new value, for every site or those chosen. A release names it in
    /// `[[secrets]]` (a file in the container) or `container.registry_secret`; the
    /// services already using an earlier value get the new one by a rollout.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["from_file", "stdin"])))]
    #[command(group(clap::ArgGroup::new("scope").args(["select", "site"])))]
    Set {
        /// The secret's name.
        name: String,
        /// Read the value from this file.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Read the value from standard input.
        #[arg(long)]
        stdin: bool,
        /// Only the sites this expression selects receive it.
        #[arg(long, value_name = "EXPR")]
        select: Option<String>,
        /// Only this site receives it (repeat for more).
        #[arg(long, value_name = "SITE")]
        site: Vec<String>,
        /// The rollout policy that takes a changed value to the services using it
        /// (default: the one each service's release names).
        #[arg(long)]
        policy: Option<String>,
    },
    /// List secrets: names, scopes, versions and the services that use them.
    List,
    /// Remove a secret that no site's services use any more.
    Rm {
        /// The secret's name.
        name: String,
    },
}

/// Runs `continuum secret …`.
pub async fn run(api: &ApiClient, out: Output, command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set {
            name,
            from_file,
            stdin,
            select,
            site,
            policy,
        } => {
            continuum_shared::names::check_name("secret", &name)?;
            let value = read_value(from_file, stdin)?;
            let scope = match (select, site) {
                (Some(expr), _) => Scope::Select(expr),
                (None, sites) if sites.is_empty() => Scope::All,
                (None, sites) if sites.len() > MAX_SCOPE_SITES => {
                    bail!("--site names at most {MAX_SCOPE_SITES} sites; use --select")
                }
                (None, sites) => Scope::Sites(sites),
            };
            let body = SetRequest {
                value_base64: base64::engine::general_purpose::STANDARD.encode(&value),
                scope,
                policy,
            };
            let outcome: SetOutcome = api.put(&format!("/v1/secrets/{name}"), &body).await?;
            match out {
                Output::Json => print(out, &outcome, &[], vec![]),
                Output::Table => {
                    let s = &outcome.secret;
                    println!(
                        "secret {} set: version {} for {}",
                        s.name,
                        s.version,
                        s.scope.describe()
                    );
                    for (service, id) in &outcome.rollouts {
                        println!("  {service}: rollout {id} takes the new value to its sites");
                    }
                    for (service, why) in &outcome.not_rolled {
                        println!("  {service}: not rolled out: {why}");
                    }
                }
            }
        }
        SecretCommand::List => {
            let secrets: Vec<SecretView> = api.get("/v1/secrets").await?;
            let rows = secrets
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.version.to_string(),
                        s.scope.describe(),
                        match s.used_by.is_empty() {
                            true => "-".into(),
                            false => s.used_by.join(","),
                        },
                        s.updated_at.clone(),
                        s.updated_by.clone(),
                    ]
                })
                .collect();
            print(
                out,
                &secrets,
                &["NAME", "VERSION", "SCOPE", "USED BY", "UPDATED", "BY"],
                rows,
            );
        }
        SecretCommand::Rm { name } => {
            continuum_shared::names::check_name("secret", &name)?;
            let _: serde_json::Value = api.delete(&format!("/v1/secrets/{name}")).await?;
            match out {
                Output::Json => println!("{}", serde_json::json!({ "removed": name })),
                Output::Table => println!("secret {name} removed"),
            }
        }
    }
    Ok(())
}

/// The value, from a file or standard input, bounded.
fn read_value(file: Option<PathBuf>, stdin: bool) -> anyhow::Result<Vec<u8>> {
    let limit = continuum_shared::secrets::MAX_SECRET as u64 + 1;
    let mut value = Vec::new();
    match (file, stdin) {
        (Some(path), _) => {
            std::fs::File::open(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .take(limit)
                .read_to_end(&mut value)
                .with_context(|| format!("reading {}", path.display()))?;
        }
        (None, true) => {
            std::io::stdin()
                .take(limit)
                .read_to_end(&mut value)
                .context("reading the value from standard input")?;
        }
        (None, false) => bail!("give the value with --from-file FILE or --stdin"),
    }
    if value.is_empty() {
        bail!("the value is empty");
    }
    if value.len() > continuum_shared::secrets::MAX_SECRET {
        bail!(
            "a secret holds at most {} bytes",
            continuum_shared::secrets::MAX_SECRET
        );
    }
    Ok(value)
}
