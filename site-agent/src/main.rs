//! `continuum-agent`: the site agent.

use std::process::ExitCode;

use clap::Parser;
use continuum_agent::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.command {
        Command::Run { .. } | Command::Launch { .. } => cli.log.clone(),
        _ => "warn".to_owned(),
    };
    init_tracing(&filter);
    continuum_shared::tls::install_crypto_provider();
    continuum_shared::files::private_umask();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(continuum_agent::cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
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
