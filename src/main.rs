//! The `pullgate` binary: parses the command line, sets up logging, runs a command.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use pullgate::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PULLGATE_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default_log_level(&cli.command))),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Check(args) => pullgate::cli::check(args).await,
        Command::Serve(args) => pullgate::cli::serve(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pullgate: {e}");
            ExitCode::from(2)
        }
    }
}

/// `serve` logs its decisions; `check` prints its own output and logs only problems.
fn default_log_level(command: &Command) -> &'static str {
    match command {
        Command::Serve(_) => "info",
        Command::Check(_) => "warn",
    }
}
