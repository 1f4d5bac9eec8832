//! `continuum rollout …`: start (or plan), status with progress per wave, and
//! operators' commands.

use std::time::Duration;

use clap::Subcommand;

use super::Output;
use super::output::{print, table};
use crate::api::rollouts::{RolloutPlan, RolloutStart, ServiceRemove};
use crate::client::ApiClient;
use crate::rollout::{Rollout, RolloutState, SiteProgress, WaveRun};

/// `continuum rollout …`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start moving SERVICE to VERSION (a running rollout of it is superseded).
    Start {
        /// The service.
        service: String,
        /// The release.
        #[arg(value_name = "VERSION")]
        release: String,
        /// The rollout policy (default: the release's own `placement.rollout`).
        #[arg(long)]
        policy: Option<String>,
        /// Print the plan (which sites in which wave, which are left out and why) and
        /// start nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show rollouts, or one with its waves and sites.
    Status {
        /// The rollout (default: all, newest last).
        id: Option<String>,
        /// Keep showing it until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Stop starting new sites.
    Pause {
        /// The rollout.
        id: String,
    },
    /// Continue a paused rollout.
    Resume {
        /// The rollout.
        id: String,
    },
    /// Put every site it updated back on its previous release.
    Rollback {
        /// The rollout.
        id: String,
    },
    /// Stop for good; sites keep what they run.
    Cancel {
        /// The rollout.
        id: String,
    },
}

/// `continuum service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Take SERVICE off sites by a rollout (waves, gates, pause, cancel; a rollback
    /// puts it back): each site's agent removes its containers, and its images and
    /// volumes as the site policy says.
    Remove {
        /// The service.
        service: String,
        /// Only the sites this expression selects (default: every site that has it).
        #[arg(long, value_name = "EXPR")]
        select: Option<String>,
        /// The rollout policy whose waves and gates the removal runs by.
        #[arg(long, default_value = "default")]
        policy: String,
        /// Print the plan and start nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs `continuum service …`.
pub async fn run_service(
    api: &ApiClient,
    out: Output,
    command: ServiceCommand,
) -> anyhow::Result<()> {
    let ServiceCommand::Remove {
        service,
        select,
        policy,
        dry_run,
    } = command;
    continuum_shared::names::check_name("service", &service)?;
    let body = ServiceRemove {
        select,
        policy: Some(policy),
    };
    if dry_run {
        let path = format!("/v1/services/{service}/remove/plan");
        let plan: RolloutPlan = api.post(&path, &body).await?;
        match out {
            Output::Json => print(out, &plan, &[], vec![]),
            Output::Table => print!("{}", render_plan(&plan)),
        }
    } else {
        let path = format!("/v1/services/{service}/remove");
        let rollout: Rollout = api.post(&path, &body).await?;
        show(out, &rollout);
    }
    Ok(())
}

/// Runs `continuum rollout …`.
pub async fn run(api: &ApiClient, out: Output, command: RolloutCommand) -> anyhow::Result<()> {
    let act = |id: String, action: &'static str| async move {
        continuum_shared::names::check_name("rollout", &id)?;
        let rollout: Rollout = api
            .post(&format!("/v1/rollouts/{id}/{action}"), &())
            .await?;
        anyhow::Ok(rollout)
    };
    match command {
        RolloutCommand::Start {
            service,
            release,
            policy,
            dry_run,
        } => {
            let body = RolloutStart {
                service,
                version: release,
                policy,
            };
            if dry_run {
                let plan: RolloutPlan = api.post("/v1/rollouts/plan", &body).await?;
                match out {
                    Output::Json => print(out, &plan, &[], vec![]),
                    Output::Table => print!("{}", render_plan(&plan)),
                }
            } else {
                let rollout: Rollout = api.post("/v1/rollouts", &body).await?;
                show(out, &rollout);
            }
        }
        RolloutCommand::Status { id: None, .. } => {
            let all: Vec<Rollout> = api.get("/v1/rollouts").await?;
            let rows = all
                .iter()
                .map(|r| {
                    let done = r
                        .sites
                        .values()
                        .filter(|p| **p == SiteProgress::Done)
                        .count();
                    vec![
                        r.id.clone(),
                        r.service.clone(),
                        shown_version(r),
                        state_name(&r.state),
                        format!("{done}/{}", r.sites.len()),
                        r.failures().to_string(),
                        r.started_at.clone(),
                    ]
                })
                .collect();
            print(
                out,
                &all,
                &[
                    "ID", "SERVICE", "VERSION", "STATE", "DONE", "FAILED", "STARTED",
                ],
                rows,
            );
        }
        RolloutCommand::Status {
            id: Some(id),
            watch,
        } => {
            continuum_shared::names::check_name("rollout", &id)?;
            // Bounded by the rollout itself: the watch ends when the rollout does.
            loop {
                let rollout: Rollout = api.get(&format!("/v1/rollouts/{id}")).await?;
                show(out, &rollout);
                if !watch || !rollout.state.active() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                println!();
            }
        }
        RolloutCommand::Pause { id } => show(out, &act(id, "pause").await?),
        RolloutCommand::Resume { id } => show(out, &act(id, "resume").await?),
        RolloutCommand::Rollback { id } => show(out, &act(id, "rollback").await?),
        RolloutCommand::Cancel { id } => show(out, &act(id, "cancel").await?),
    }
    Ok(())
}

fn state_name(state: &RolloutState) -> String {
    let value = serde_json::to_value(state).unwrap_or_default();
    match value["reason"].as_str() {
        Some(reason) => format!("{} ({reason})", value["state"].as_str().unwrap_or_default()),
        None => value["state"].as_str().unwrap_or_default().to_owned(),
    }
}

/// The release a rollout moves to, or `(removed)`.
fn shown_version(rollout: &Rollout) -> String {
    match rollout.removal {
        true => "(removed)".to_owned(),
        false => rollout.version.clone(),
    }
}

fn render_plan(plan: &RolloutPlan) -> String {
    let version = match plan.version.as_str() {
        "" => "removal",
        version => version,
    };
    let mut text = format!(
        "plan: {} {version} by policy {} (bake {}s, healthy for {}s, at most {} at once, failure budget {} then {:?})\n",
        plan.service,
        plan.gates.policy,
        plan.gates.bake_secs,
        plan.gates.healthy_for_secs,
        plan.gates.max_parallel,
        plan.gates.failure_budget,
        plan.gates.on_failure
    );
    for (i, wave) in plan.waves.iter().enumerate() {
        text.push_str(&format!(
            "wave {} {} ({} sites): {}\n",
            i + 1,
            wave.name,
            wave.sites.len(),
            wave.sites.join(", ")
        ));
    }
    for (site, why) in &plan.excluded {
        text.push_str(&format!("left out: {site}: {why}\n"));
    }
    text
}

fn show(out: Output, rollout: &Rollout) {
    if out == Output::Json {
        return print(out, rollout, &[], vec![]);
    }
    println!(
        "rollout {}: {} → {} by policy {}: {}",
        rollout.id,
        rollout.service,
        shown_version(rollout),
        rollout.gates.policy,
        state_name(&rollout.state)
    );
    let rows: Vec<Vec<String>> = rollout
        .waves
        .iter()
        .enumerate()
        .map(|(i, wave)| wave_row(rollout, i, wave))
        .collect();
    print!(
        "{}",
        table(
            &["WAVE", "PROGRESS", "DONE", "UPDATING", "WAITING", "FAILED"],
            &rows
        )
    );
    for (site, progress) in &rollout.sites {
        match progress {
            SiteProgress::Waiting { reason } => println!("waiting: {site}: {reason}"),
            SiteProgress::Failed { reason } => {
                println!(
                    "failed: {site}: {}",
                    reason.lines().next().unwrap_or_default()
                )
            }
            _ => {}
        }
    }
}

fn wave_row(rollout: &Rollout, index: usize, wave: &WaveRun) -> Vec<String> {
    let count = |f: fn(&SiteProgress) -> bool| {
        wave.sites
            .iter()
            .filter(|s| rollout.sites.get(*s).is_some_and(f))
            .count()
    };
    let done = count(|p| matches!(p, SiteProgress::Done));
    let failed = count(|p| matches!(p, SiteProgress::Failed { .. }));
    let updating = count(|p| {
        matches!(
            p,
            SiteProgress::Updating { .. } | SiteProgress::Healthy { .. }
        )
    });
    let waiting = count(|p| matches!(p, SiteProgress::Waiting { .. }));
    let total = wave.sites.len().max(1);
    let filled = (done + failed) * 20 / total;
    let marker = if index == rollout.wave && rollout.state.active() {
        "▶ "
    } else {
        "  "
    };
    vec![
        format!("{marker}{}", wave.name),
        format!("[{}{}]", "#".repeat(filled), "-".repeat(20 - filled)),
        format!("{done}/{}", wave.sites.len()),
        updating.to_string(),
        waiting.to_string(),
        failed.to_string(),
    ]
}
