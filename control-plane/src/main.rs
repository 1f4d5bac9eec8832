//! `continuum`: the control plane (`continuum serve`) and the operator CLI.

use std::process::ExitCode;

use clap::Parser;
use continuum::cli::{Cli, Command, init_tracing};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if matches!(cli.command, Command::Serve(_)) {
        cli.global.log.clone()
    } else {
        "warn".to_owned()
    };
    init_tracing(&filter);
    continuum_shared::tls::install_crypto_provider();
    continuum_shared::files::private_umask();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(continuum::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
