//! The operator commands: each is one or two API calls and a printout.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};

use super::output::{or_dash, print, table};
use super::{Command, GlobalArgs, OperatorCommand, Output, SiteCommand, TokenCommand};
use crate::client::{ApiClient, config};
use crate::datadir::DataDir;
use crate::model::AuditEntry;
use crate::views::{
    OperatorCreate, OperatorCreated, OperatorView, SiteView, TokenCreate, TokenCreated, TokenView,
    WhoAmI,
};

/// Runs a command that talks to the API.
pub async fn remote(global: &GlobalArgs, command: Command) -> anyhow::Result<()> {
    let endpoint = config::resolve(
        global.server.as_deref(),
        global.token.as_deref(),
        global.ca.as_deref(),
    )?;
    let api = ApiClient::new(&endpoint)?;
    let out = global.output;
    match command {
        Command::Sites => sites(&api, out).await,
        Command::Site(SiteCommand::Show { name }) => {
            let site: SiteView = api
                .get(&format!("/v1/sites/{}", path_segment(&name)?))
                .await?;
            show_site(out, &site);
            Ok(())
        }
        Command::Site(SiteCommand::Revoke { name }) => {
            let site: SiteView = api
                .post(&format!("/v1/sites/{}/revoke", path_segment(&name)?), &())
                .await?;
            match out {
                Output::Json => print(out, &site, &[], vec![]),
                Output::Table => println!(
                    "site {} revoked: its connection is closed and its certificate refused",
                    site.name
                ),
            }
            Ok(())
        }
        Command::Site(SiteCommand::Decommission {
            name,
            keep_data,
            deadline,
        }) => {
            let body = crate::decommission::DecommissionRequest {
                keep_data,
                deadline: Some(deadline),
            };
            let site: SiteView = api
                .post(
                    &format!("/v1/sites/{}/decommission", path_segment(&name)?),
                    &body,
                )
                .await?;
            match out {
                Output::Json => print(out, &site, &[], vec![]),
                Output::Table if site.online => println!(
                    "site {} is told to decommission itself now; `continuum site show {}` shows its report",
                    site.name, site.name
                ),
                Output::Table => println!(
                    "site {} is offline: it decommissions itself when it returns, or is revoked at {}",
                    site.name,
                    site.decommission
                        .as_ref()
                        .map(|d| crate::plane::rfc3339(d.deadline))
                        .unwrap_or_default()
                ),
            }
            Ok(())
        }
        Command::Release(command) => super::releases::run(&api, out, command).await,
        Command::Releases => super::releases::list(&api, out).await,
        Command::AgentRelease(super::AgentReleaseCommand::Publish {
            binary,
            version,
            target,
        }) => super::releases::publish_agent(&api, out, &binary, &version, &target).await,
        Command::Policies => policies(&api, out).await,
        Command::Site(SiteCommand::Telemetry { name }) => {
            super::telemetry::site(&api, out, path_segment(&name)?).await
        }
        Command::Events {
            site,
            service,
            limit,
            follow,
        } => {
            let filter = super::telemetry::EventsFilter {
                site,
                service,
                limit,
                follow,
            };
            super::telemetry::events(&api, out, filter).await
        }
        Command::Logs {
            site,
            service,
            tail,
            follow,
        } => super::telemetry::logs(&api, &site, &service, tail, follow).await,
        Command::Site(SiteCommand::Desired { name }) => {
            let desired: crate::model::DesiredRecord = api
                .get(&format!("/v1/sites/{}/desired", path_segment(&name)?))
                .await?;
            // A release yanked since it was given is marked, with why.
            let releases: Vec<crate::model::ReleaseRecord> = match out {
                Output::Table => api.get("/v1/releases").await?,
                Output::Json => Vec::new(),
            };
            let yanked = |service: &str, version: &str| {
                releases
                    .iter()
                    .find(|r| r.service == service && r.version == version)
                    .and_then(|r| r.yanked.as_ref())
                    .map_or_else(String::new, |y| format!("yanked: {}", y.reason))
            };
            let rows = desired
                .releases
                .iter()
                .map(|(service, r)| {
                    vec![
                        service.clone(),
                        r.version.clone(),
                        if r.pinned { "pinned" } else { "rollout" }.to_owned(),
                        yanked(service, &r.version),
                    ]
                })
                .collect();
            print(out, &desired, &["SERVICE", "VERSION", "BY", "YANKED"], rows);
            Ok(())
        }
        Command::Rollout(command) => super::rollouts::run(&api, out, command).await,
        Command::Service(command) => super::rollouts::run_service(&api, out, command).await,
        Command::Secret(command) => super::secrets::run(&api, out, command).await,
        Command::Keys(command) => super::keys::run(&api, out, command).await,
        Command::Site(SiteCommand::Assign {
            site,
            service,
            release,
        }) => super::releases::assign(&api, out, &site, &service, &release).await,
        Command::Token(TokenCommand::Create {
            name,
            labels,
            ttl,
            uses,
            save,
        }) => create_token(&api, out, name, labels, ttl, uses, save.as_deref()).await,
        Command::Token(TokenCommand::List) => {
            let tokens: Vec<TokenView> = api.get("/v1/tokens").await?;
            let rows = tokens
                .iter()
                .map(|t| {
                    let state = if t.expired { "expired" } else { "valid" };
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        format!("{}/{}", t.enrolled.len(), t.uses),
                        state.into(),
                        t.expires_at.clone(),
                        t.created_by.clone(),
                    ]
                })
                .collect();
            print(
                out,
                &tokens,
                &["ID", "NAME", "USED", "STATE", "EXPIRES", "CREATED BY"],
                rows,
            );
            Ok(())
        }
        Command::Operator(OperatorCommand::Create { name, role }) => {
            let created: OperatorCreated = api
                .post("/v1/operators", &OperatorCreate { name, role })
                .await?;
            match out {
                Output::Json => print(out, &created, &[], vec![]),
                Output::Table => {
                    println!(
                        "Operator {} ({}) created. Its credential, shown only now:\n",
                        created.name, created.role
                    );
                    println!("  {}\n", created.credential);
                    println!("Use it with --token or CONTINUUM_TOKEN.");
                }
            }
            Ok(())
        }
        Command::Operator(OperatorCommand::List) => {
            let operators: Vec<OperatorView> = api.get("/v1/operators").await?;
            let rows = operators
                .iter()
                .map(|o| {
                    vec![
                        o.name.clone(),
                        o.role.to_string(),
                        o.created_at.clone(),
                        o.created_by.clone(),
                    ]
                })
                .collect();
            print(
                out,
                &operators,
                &["NAME", "ROLE", "CREATED", "CREATED BY"],
                rows,
            );
            Ok(())
        }
        Command::Audit { limit } => {
            let entries: Vec<AuditEntry> = api.get(&format!("/v1/audit?limit={limit}")).await?;
            let rows = entries
                .iter()
                .map(|e| {
                    vec![
                        e.at.clone(),
                        e.actor.clone(),
                        e.role.to_string(),
                        e.action.clone(),
                        e.target.clone(),
                        e.from.clone(),
                        format!("{:?}", e.outcome).to_lowercase(),
                        e.detail.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print(
                out,
                &entries,
                &[
                    "AT", "WHO", "ROLE", "ACTION", "TARGET", "FROM", "OUTCOME", "DETAIL",
                ],
                rows,
            );
            Ok(())
        }
        Command::Whoami => {
            let me: WhoAmI = api.get("/v1/whoami").await?;
            let rows = vec![vec![
                me.name.clone(),
                me.role.to_string(),
                endpoint.server.clone(),
            ]];
            print(out, &me, &["NAME", "ROLE", "SERVER"], rows);
            Ok(())
        }
        Command::Backup { file } => {
            let archive = api.get_bytes("/v1/backup").await?;
            continuum_shared::files::write_private(&file, &archive)?;
            eprintln!(
                "backup written to {} ({} bytes, mode 0600); it holds the CA key: store it as safely as the control plane",
                file.display(),
                archive.len()
            );
            Ok(())
        }
        Command::Serve(_) | Command::Restore { .. } => unreachable_command(),
    }
}

fn unreachable_command() -> anyhow::Result<()> {
    bail!("this command does not talk to the API")
}

/// Site names go into URL paths; refuse anything that is not a plain name.
fn path_segment(name: &str) -> anyhow::Result<&str> {
    continuum_shared::names::check_name("site", name)?;
    Ok(name)
}

async fn sites(api: &ApiClient, out: Output) -> anyhow::Result<()> {
    let sites: Vec<SiteView> = api.get("/v1/sites").await?;
    let rows = sites
        .iter()
        .map(|s| {
            let labels = s
                .labels
                .iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "hostname" | "agent_version" | "agent_target")
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            vec![
                s.name.clone(),
                if s.lock.is_some() {
                    format!("{} (locked)", s.status)
                } else {
                    s.status.clone()
                },
                match (&s.agent_version, &s.agent_failed) {
                    (Some(v), Some(failed)) => format!(
                        "{v} ({} failed)",
                        failed.split(':').next().unwrap_or(failed)
                    ),
                    (version, _) => or_dash(version.as_ref()),
                },
                or_dash(s.last_seen.as_ref()),
                or_dash(s.remote_address.as_ref()),
                service_summary(s),
                labels,
            ]
        })
        .collect();
    print(
        out,
        &sites,
        &[
            "NAME",
            "STATUS",
            "AGENT",
            "LAST SEEN",
            "ADDRESS",
            "SERVICES",
            "LABELS",
        ],
        rows,
    );
    Ok(())
}

/// `3 (1 failing)`: how many services a site runs, and how many are not as desired.
fn service_summary(site: &SiteView) -> String {
    use continuum_shared::protocol::{HealthState, ServicePhase};
    let total = site.services.len();
    let failing = site
        .services
        .values()
        .filter(|s| {
            matches!(
                s.phase,
                ServicePhase::RolledBack | ServicePhase::Failed | ServicePhase::Refused
            ) || s.health == HealthState::Unhealthy
        })
        .count();
    match (total, failing) {
        (0, _) => "-".into(),
        (n, 0) => n.to_string(),
        (n, f) => format!("{n} ({f} failing)"),
    }
}

async fn policies(api: &ApiClient, out: Output) -> anyhow::Result<()> {
    let view: crate::views::PoliciesView = api.get("/v1/policies").await?;
    if out == Output::Json {
        print(out, &view, &[], vec![]);
        return Ok(());
    }
    println!("policies directory: {}", view.dir);
    let rows = view
        .rollouts
        .iter()
        .map(|r| {
            let waves = r
                .waves
                .iter()
                .map(|w| match &w.select {
                    Some(s) => format!("{} {} [{s}]", w.name, w.size),
                    None => format!("{} {}", w.name, w.size),
                })
                .collect::<Vec<_>>()
                .join(" → ");
            vec![
                r.name.clone(),
                waves,
                r.bake.clone(),
                r.max_parallel.to_string(),
                format!("{} then {}", r.failure_budget, r.on_failure),
                r.file.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print!(
        "{}",
        table(
            &["ROLLOUT", "WAVES", "BAKE", "PARALLEL", "FAILURES", "FILE"],
            &rows
        )
    );
    for w in &view.windows {
        println!(
            "window: {} for {} ({})",
            w.when,
            w.select.as_deref().unwrap_or("all sites"),
            w.file
        );
    }
    for x in &view.excludes {
        println!(
            "exclude: {}{} ({})",
            x.select,
            x.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            x.file
        );
    }
    for r in &view.rejected {
        println!("REJECTED {}:{}: {}", r.file, r.line, r.reason);
    }
    Ok(())
}

fn show_site(out: Output, site: &SiteView) {
    if out == Output::Json {
        return print(out, site, &[], vec![]);
    }
    let mut rows = vec![
        vec!["name".into(), site.name.clone()],
        vec!["status".into(), site.status.clone()],
        vec!["agent version".into(), or_dash(site.agent_version.as_ref())],
        vec!["failed upgrade".into(), or_dash(site.agent_failed.as_ref())],
        vec!["protocol".into(), or_dash(site.protocol_version)],
        vec!["address".into(), or_dash(site.remote_address.as_ref())],
        vec!["transport".into(), or_dash(site.transport.as_ref())],
        vec![
            "connected since".into(),
            or_dash(site.connected_since.as_ref()),
        ],
        vec!["last seen".into(), or_dash(site.last_seen.as_ref())],
        vec!["enrolled".into(), site.enrolled_at.clone()],
        vec![
            "certificate expires".into(),
            site.certificate_expires.clone(),
        ],
    ];
    if let Some(revoked) = &site.revoked_at {
        rows.push(vec!["revoked".into(), revoked.clone()]);
    }
    if let Some(order) = &site.decommission {
        let state = match (&order.done_at, &order.report) {
            (Some(at), Some(report)) => format!("done at {at}: {report}"),
            _ => format!(
                "ordered at {} by {}, revoked at {} unless the site does it first",
                order.ordered_at,
                order.ordered_by,
                crate::plane::rfc3339(order.deadline)
            ),
        };
        rows.push(vec!["decommission".into(), state]);
    }
    if let Some(lock) = &site.lock {
        rows.push(vec![
            "update lock".into(),
            format!("{} (since {})", lock.reason, lock.since),
        ]);
    }
    for (k, v) in &site.labels {
        rows.push(vec![format!("label {k}"), v.to_string()]);
    }
    print!("{}", table(&["FIELD", "VALUE"], &rows));
    if site.services.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = site
        .services
        .values()
        .map(|s| {
            vec![
                s.service.clone(),
                or_dash(s.desired.as_ref()),
                or_dash(s.running.as_ref()),
                s.phase.name().to_owned(),
                s.health.name().to_owned(),
                s.restarts.to_string(),
                s.failure
                    .as_ref()
                    .or(s.last_error.as_ref())
                    .map(|t| t.lines().next().unwrap_or_default().to_owned())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        table(
            &[
                "SERVICE", "DESIRED", "RUNNING", "PHASE", "HEALTH", "RESTARTS", "PROBLEM"
            ],
            &rows
        )
    );
}

async fn create_token(
    api: &ApiClient,
    out: Output,
    name: String,
    labels: Vec<String>,
    ttl: String,
    uses: u32,
    save: Option<&Path>,
) -> anyhow::Result<()> {
    let labels = labels
        .iter()
        .map(|arg| {
            arg.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--label {arg:?} is not of the form key=value"))
        })
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let request = TokenCreate {
        name,
        labels,
        ttl: Some(ttl),
        uses: Some(uses),
    };
    let created: TokenCreated = api.post("/v1/tokens", &request).await?;
    if let Some(file) = save {
        continuum_shared::files::write_private(file, created.token.as_bytes())
            .with_context(|| format!("saving the token to {}", file.display()))?;
    }
    match out {
        Output::Json => print(out, &created, &[], vec![]),
        Output::Table => {
            let scope = if created.uses == 1 {
                format!("site {:?}, one use", created.name)
            } else {
                format!(
                    "up to {} sites named {}-<hostname>",
                    created.uses, created.name
                )
            };
            println!("Join token ({scope}, expires {}):\n", created.expires_at);
            println!("  {}\n", created.token);
            if let Some(line) = &created.install {
                println!("At the site, install the agent (as root, or as any user) with:\n");
                println!("  {line}\n");
                println!("Or, with continuum-agent already installed:\n");
            } else {
                println!("At the site, run:\n");
            }
            println!("  continuum-agent join '{}'", created.token);
            println!("  continuum-agent run");
        }
    }
    Ok(())
}

/// `continuum restore`: a local operation on a new data directory.
pub fn restore(file: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let dir = DataDir::new(data_dir);
    let ca = crate::backup::restore(file, &dir, 64 << 20)?;
    println!("Restored into {} (CA sha256 {ca}).", dir.root().display());
    println!(
        "Start it with:  continuum serve --data-dir {}",
        dir.root().display()
    );
    println!(
        "Sites reconnect by themselves once it is reachable at the same address; operators keep their credentials."
    );
    Ok(())
}
