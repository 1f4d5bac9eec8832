//! The `continuum-agent` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::AgentError;
use crate::identity::Identity;
use crate::paths::default_state_dir;
use crate::run::RunOptions;

/// The Continuum site agent: joins a control plane, keeps a secure link to it, and runs
/// what the central team deploys here.
#[derive(Debug, Parser)]
#[command(name = "continuum-agent", version = crate::VERSION, about, propagate_version = true)]
pub struct Cli {
    /// Where the agent keeps its key, certificate and state
    /// (default: /var/lib/continuum-agent as root, else ~/.local/state/continuum-agent).
    #[arg(long, global = true, env = "CONTINUUM_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `info,quinn=warn`.
    #[arg(
        long,
        global = true,
        env = "CONTINUUM_AGENT_LOG",
        default_value = "info"
    )]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Table,
    /// For programs.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this site with the control plane that issued TOKEN.
    Join {
        /// The join token from `continuum token create`.
        #[arg(env = "CONTINUUM_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The site's name (default: the token's name, or NAME-hostname under a fleet token).
        #[arg(long)]
        name: Option<String>,
        /// SHA-256 of the image repository's first root, obtained out of band from the
        /// release managers: then not even a compromised control plane can make this site
        /// trust another root.
        #[arg(long)]
        image_root_sha256: Option<String>,
    },
    /// Connect to the control plane and stay connected (the service's main command).
    Run {
        /// First reconnect delay (the delay doubles per failure, with jitter).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        reconnect_base: Duration,
        /// Longest reconnect delay.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        reconnect_max: Duration,
        /// The container engine: a Docker Engine API socket (Docker, or Podman's
        /// compatible socket such as unix:///run/podman/podman.sock); `none` deploys
        /// nothing. Default: $DOCKER_HOST, else unix:///var/run/docker.sock.
        #[arg(long, env = "CONTINUUM_ENGINE")]
        engine: Option<String>,
        /// Time between reconcile passes when nothing is in flight.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        reconcile_interval: Duration,
        /// Time between metric samples (host, agent, services).
        #[arg(long, default_value = "60s", value_parser = parse_interval)]
        metrics_interval: Duration,
        /// Join first with the token in this file if this site has not joined yet (for
        /// containers and orchestrators that hand the token over as a file).
        #[arg(long, env = "CONTINUUM_JOIN_TOKEN_FILE")]
        join_token_file: Option<PathBuf>,
        /// Most bytes of telemetry kept while the control plane is unreachable; beyond
        /// it the oldest samples are dropped first, then the oldest events (e.g. 16MiB).
        #[arg(long, default_value = "16MiB", value_parser = parse_outbox_size)]
        outbox_size: u64,
        /// Where opened secrets wait, as read-only files, for the containers that mount
        /// them; it must be on a tmpfs. Default: a directory of this state directory's
        /// own under /run when that is a tmpfs, else under /dev/shm.
        #[arg(long, env = "CONTINUUM_AGENT_SECRETS_DIR")]
        secrets_dir: Option<PathBuf>,
    },
    /// Run the agent the way services do: start it, start it again when it exits, and
    /// take back a new agent binary that does not prove itself within its trial.
    Launch {
        /// The agent binary that self-updates replace.
        #[arg(long)]
        agent: PathBuf,
        /// How long a new agent binary has to reconnect, verify the desired state and
        /// report healthy before the previous one is put back.
        #[arg(long, default_value = "3min", value_parser = humantime::parse_duration)]
        trial_timeout: Duration,
        /// The agent's own arguments, after `--` (e.g. `-- run --engine none`).
        #[arg(last = true, required = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Defer rollouts to this site until `unlock` (the central team sees the reason).
    Lock {
        /// Why, for the central team.
        #[arg(long)]
        reason: String,
    },
    /// Release the update lock.
    Unlock,
    /// Show this site's identity and link state, from local files.
    Status {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < Duration::from_millis(100) {
        return Err("at least 100ms".into());
    }
    Ok(interval)
}

fn parse_outbox_size(text: &str) -> Result<u64, String> {
    let size = continuum_shared::manifest::units::parse_size(text)?;
    if size < 4 * 1024 {
        return Err("at least 4KiB, room for a few records".into());
    }
    Ok(size)
}

/// Exit code of a run that stopped because the site was revoked (systemd units list it
/// in `RestartPreventExitStatus`, so a revoked site is not restarted forever).
pub const EXIT_REVOKED: u8 = 3;

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<u8, AgentError> {
    let state_dir = cli.state_dir.unwrap_or_else(default_state_dir);
    match cli.command {
        Command::Join {
            token,
            name,
            image_root_sha256,
        } => {
            let options = crate::join::JoinOptions {
                name,
                image_root_sha256,
            };
            let identity = crate::join::join(&token, options, &state_dir).await?;
            println!(
                "Joined as site {:?} (state in {}).",
                identity.site,
                state_dir.display()
            );
            println!("Start the agent with:  continuum-agent run");
            Ok(0)
        }
        Command::Run {
            reconnect_base,
            reconnect_max,
            engine,
            reconcile_interval,
            metrics_interval,
            outbox_size,
            join_token_file,
            secrets_dir,
        } => {
            if let Some(file) = join_token_file
                && !crate::identity::Identity::exists(&state_dir)
            {
                let token = std::fs::read_to_string(&file).map_err(|e| {
                    AgentError::State(format!("reading the join token {}: {e}", file.display()))
                })?;
                let options = crate::join::JoinOptions {
                    name: None,
                    image_root_sha256: None,
                };
                let identity = crate::join::join(token.trim(), options, &state_dir).await?;
                tracing::info!(site = %identity.site, "joined with the token file");
            }
            let engine = engine.unwrap_or_else(crate::engine::default_address);
            let services = if engine == "none" {
                crate::run::Services::None
            } else {
                crate::run::Services::Engine(crate::deploy::Settings {
                    engine,
                    interval: reconcile_interval.max(Duration::from_millis(100)),
                    secrets_dir: secrets_dir
                        .unwrap_or_else(|| crate::secrets::default_dir(&state_dir)),
                })
            };
            let options = RunOptions {
                state_dir,
                reconnect_base,
                reconnect_max,
                services,
                telemetry: crate::telemetry::Settings {
                    interval: metrics_interval,
                    outbox_limit: outbox_size,
                },
            };
            let state_dir = options.state_dir.clone();
            match crate::run::run(options, shutdown_signal()).await {
                Ok(()) => Ok(0),
                Err(AgentError::Revoked(reason)) => {
                    let decommissioned = crate::decommission::pending(&state_dir)
                        .is_some_and(|order| order.report.is_some());
                    if decommissioned {
                        // Whatever the wipe says, the agent stays stopped: status 3.
                        match crate::decommission::wipe(&state_dir) {
                            Ok(wiped) => eprintln!("this site is decommissioned: {wiped}"),
                            Err(e) => eprintln!("this site is decommissioned, but: {e}"),
                        }
                    } else {
                        eprintln!("error: this site was revoked by the central team: {reason}");
                    }
                    Ok(EXIT_REVOKED)
                }
                Err(AgentError::Restart) => Ok(crate::upgrade::launch::RESTART_STATUS as u8),
                Err(e) => Err(e),
            }
        }
        Command::Launch {
            agent,
            trial_timeout,
            args,
        } => {
            let options = crate::upgrade::launch::LaunchOptions {
                agent,
                state_dir,
                trial_timeout,
                restart_base: Duration::from_secs(1),
                restart_max: Duration::from_secs(60),
                args,
            };
            crate::upgrade::launch::launch(options, shutdown_signal())
                .await
                .map_err(AgentError::State)
        }
        Command::Lock { reason } => {
            crate::lock::take(&state_dir, &reason)?;
            println!(
                "locked: rollouts to this site wait until `continuum-agent unlock` ({reason})"
            );
            Ok(0)
        }
        Command::Unlock => {
            crate::lock::release(&state_dir)?;
            println!("unlocked: rollouts to this site may proceed");
            Ok(0)
        }
        Command::Status { output } => {
            let identity = Identity::load(&state_dir)?;
            let report = crate::status::report(&state_dir, identity.as_ref());
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                ),
                Output::Table => print!("{}", crate::status::render(&report)),
            }
            Ok(if identity.is_some() { 0 } else { 1 })
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
