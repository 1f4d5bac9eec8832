//! The `continuum` command line: `serve` runs the control plane; every other command
//! is an operator's call to its HTTPS API.

mod commands;
mod keys;
mod output;
mod releases;
mod rollouts;
mod secrets;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::Role;

/// Continuum: run services across a whole computing continuum from one place.
#[derive(Debug, Parser)]
#[command(name = "continuum", version, about, propagate_version = true)]
pub struct Cli {
    /// Options shared by all commands.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options for reaching the API, and output.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// API URL of the control plane, e.g. `https://cp.example.org:8443`.
    #[arg(long, global = true, env = "CONTINUUM_SERVER")]
    pub server: Option<String>,
    /// Operator credential.
    #[arg(long, global = true, env = "CONTINUUM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust the control plane with. Default: the client
    /// file's, else the system's roots (a control plane with a public certificate).
    #[arg(long, global = true, env = "CONTINUUM_CA")]
    pub ca: Option<PathBuf>,
    /// Output format of listings.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Log filter, e.g. `info` or `info,quinn=warn`.
    #[arg(long, global = true, env = "CONTINUUM_LOG", default_value = "info")]
    pub log: String,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (with no options: the embedded default in ./continuum-data).
    Serve(Box<ServeArgs>),
    /// List enrolled sites.
    Sites,
    /// Act on one site.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Join tokens for new sites.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Operators and their roles.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Publish and list releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Publish agent binaries, rolled out as the service `continuum-agent`.
    #[command(subcommand, name = "agent-release")]
    AgentRelease(AgentReleaseCommand),
    /// List published releases.
    Releases,
    /// Show the rollout policies in force and any rejected policy files.
    Policies,
    /// Move a service to a release across the fleet, in waves.
    #[command(subcommand)]
    Rollout(rollouts::RolloutCommand),
    /// Take a service off sites.
    #[command(subcommand)]
    Service(rollouts::ServiceCommand),
    /// Secrets: values that reach only the sites in their scope, sealed to each.
    #[command(subcommand)]
    Secret(secrets::SecretCommand),
    /// The signing keys of the release and desired-state repositories.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Show the audit log.
    Audit {
        /// How many of the newest entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// List what happened across the fleet (deploys, rollbacks, health changes,
    /// refusals, agent restarts, telemetry loss), oldest first.
    Events {
        /// Only this site's events.
        #[arg(long)]
        site: Option<String>,
        /// Only this service's events.
        #[arg(long)]
        service: Option<String>,
        /// How many of the newest to show first.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Keep printing events as they arrive (JSON lines with `-o json`).
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Show a service's container output, streamed live from its site.
    Logs {
        /// The site.
        site: String,
        /// The service.
        service: String,
        /// Lines from the end to start with.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Keep streaming new output until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Show who the credential belongs to.
    Whoami,
    /// Save the CA, keys and state to an archive (admin; keep it safe: it holds keys).
    Backup {
        /// Archive to write (mode 0600).
        file: PathBuf,
    },
    /// Restore an archive into a new data directory (run on the new machine, server stopped).
    Restore {
        /// Archive made by `continuum backup`.
        file: PathBuf,
        /// Data directory to create.
        #[arg(long, env = "CONTINUUM_DATA_DIR", default_value = "continuum-data")]
        data_dir: PathBuf,
    },
}

/// Options of `continuum serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where keys and state live.
    #[arg(long, env = "CONTINUUM_DATA_DIR", default_value = "continuum-data")]
    pub data_dir: PathBuf,
    /// UDP address for agents (QUIC).
    #[arg(long, env = "CONTINUUM_QUIC_LISTEN", default_value = "0.0.0.0:7443")]
    pub quic_listen: SocketAddr,
    /// TCP address for operators and the console (HTTPS).
    #[arg(long, env = "CONTINUUM_HTTP_LISTEN", default_value = "0.0.0.0:8443")]
    pub http_listen: SocketAddr,
    /// Names or addresses agents reach this server by; they go into the server
    /// certificate and into join tokens. Default: this host's name and 127.0.0.1.
    #[arg(long = "advertise", env = "CONTINUUM_ADVERTISE", value_delimiter = ',')]
    pub advertise: Vec<String>,
    /// Lifetime of site certificates (agents renew when a third is left).
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub site_cert_ttl: Duration,
    /// How often agents send heartbeats.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// How long signed timestamps stay valid: the longest an attacker between a site and
    /// this control plane can hide new desired state from it. Re-signed at half-life.
    #[arg(long, default_value = "1day", value_parser = humantime::parse_duration)]
    pub timestamp_ttl: Duration,
    /// Page cache of the state store, in MiB.
    #[arg(long, default_value_t = 64)]
    pub state_cache_mb: u64,
    /// The policies directory (rollout strategies, windows, exclusions), reloaded when
    /// it changes. Default: `<data dir>/policies`, created with the default policy.
    #[arg(long, env = "CONTINUUM_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Plain-HTTP listener for Prometheus (`/metrics`), or `none`.
    #[arg(
        long,
        env = "CONTINUUM_METRICS_LISTEN",
        default_value = "127.0.0.1:9464",
        value_parser = crate::telemetry::prometheus::parse_listen
    )]
    pub metrics_listen: crate::telemetry::prometheus::Listen,
    /// Export metrics and events over OTLP/HTTP (protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318.
    #[arg(long, env = "CONTINUUM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Where agent binaries for the one-line installer are, named
    /// `continuum-agent-linux-ARCH` (ARCH as `uname -m` says: x86_64, aarch64, …).
    /// Default: the `continuum-agent` beside this executable, for this architecture.
    #[arg(long, env = "CONTINUUM_AGENT_DIR")]
    pub agent_dir: Option<PathBuf>,
    /// How long telemetry (samples and events) is kept.
    #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
    pub telemetry_retention: Duration,
    /// A publicly trusted certificate chain (PEM, leaf first) for the HTTPS listener,
    /// in place of one from this control plane's own CA. It must cover the advertised
    /// names; it is read again when the file changes (renewals need no restart). The
    /// install line is then a plain `curl https://…` with no pin, and CLIs trust the
    /// listener through their system's roots.
    #[arg(long, env = "CONTINUUM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "CONTINUUM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `continuum site …`.
#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Show one site.
    Show {
        /// Site name.
        name: String,
    },
    /// Show a site's newest metrics (host, agent, services) and telemetry counts.
    Telemetry {
        /// Site name.
        name: String,
    },
    /// Show what a site should run (its signed desired state).
    Desired {
        /// Site name.
        name: String,
    },
    /// Revoke a site: its connection closes now and its certificate is refused from now on.
    Revoke {
        /// Site name.
        name: String,
    },
    /// Take a site out of the fleet for good: its agent stops and removes every
    /// container of ours (their volumes and images too, unless --keep-data), wipes its
    /// secrets and state, uninstalls itself if the installer put it there, and the site
    /// is revoked. An offline site does it when it returns, or is revoked at the deadline.
    Decommission {
        /// Site name.
        name: String,
        /// Keep the services' named volumes and images at the site.
        #[arg(long)]
        keep_data: bool,
        /// How long an offline site has to return before it is revoked anyway.
        #[arg(long, default_value = "14days")]
        deadline: String,
    },
    /// Pin a site to a release of a service (kept until changed).
    Assign {
        /// Site name.
        site: String,
        /// Service name.
        service: String,
        /// Release version.
        #[arg(value_name = "VERSION")]
        release: String,
    },
}

/// `continuum release …`.
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Check a release manifest, sign it into the image repository and upload it.
    Publish {
        /// The manifest (TOML).
        file: PathBuf,
        /// Release key (PEM) to sign with here, for control planes that keep no release key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// An image archive (`docker save IMAGE > app.tar`) to ship with the release, for
        /// sites that reach no registry; `container.image` names the tag it holds.
        #[arg(long, value_name = "TAR")]
        image_archive: Option<PathBuf>,
    },
    /// Withdraw a release for good: no rollout may target it again, and the sites that
    /// run it move to the newest release of the service that is not yanked.
    #[command(disable_version_flag = true)]
    Yank {
        /// The service.
        service: String,
        /// The release version.
        #[arg(value_name = "VERSION")]
        version: String,
        /// Why (shown wherever the release appears).
        #[arg(long)]
        reason: String,
    },
}

/// `continuum agent-release …`.
#[derive(Debug, Subcommand)]
pub enum AgentReleaseCommand {
    /// Upload an agent binary and sign it into the image repository; then
    /// `continuum rollout start continuum-agent VERSION` updates the fleet.
    #[command(disable_version_flag = true)]
    Publish {
        /// The `continuum-agent` binary.
        binary: PathBuf,
        /// Its version (what `continuum-agent --version` of that binary says).
        #[arg(long)]
        version: String,
        /// The target triple it was built for (default: this CLI's own).
        #[arg(long, default_value = crate::agent_releases::BUILD_TARGET)]
        target: String,
    },
}

/// `continuum token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it with the command to run at the site.
    Create {
        /// Site name, or name prefix of the sites a fleet token enrolls.
        #[arg(long)]
        name: String,
        /// A label for the site(s), key=value; repeat for more.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Lifetime, e.g. 30m, 1h, 7days.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many sites it may enroll (a fleet token for a batch of devices).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Also write the token to this file (mode 0600), for automation.
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// List tokens (never their secrets).
    List,
}

/// `continuum operator …`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Create an operator and print its credential (shown once).
    Create {
        /// Operator name.
        name: String,
        /// What it may do.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List operators.
    List,
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => crate::serve::run_serve(*args).await,
        Command::Restore { file, data_dir } => commands::restore(&file, &data_dir),
        command => commands::remote(&cli.global, command).await,
    }
}

/// Starts logging to stderr with a filter like `info,quinn=warn`.
pub fn init_tracing(filter: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let targets: Targets = filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(targets)
        .try_init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
