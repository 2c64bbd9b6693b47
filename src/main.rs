//! The `pullgate` binary: parses the command line, sets up logging, runs a command.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use pullgate::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

// glibc's malloc keeps the memory of every short-lived probe in per-thread arenas that it
// seldom returns, so a full verdict cache cost about twice its live size in RSS; mimalloc
// also takes a tenth off the CPU of a cached review. Its v2 line (the `v2` feature) left
// 68.6 MiB with 100,000 cached verdicts where v3 left 76.3 (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PULLGATE_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default_log_level(&cli.command))),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Log collectors want one object a line, with the event's fields at the top level.
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
        // Colour codes are noise in a pod's log or a CI job's output.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    // An output whose reader went away ends the command quietly, with a SIGPIPE's status, as
    // Unix tools end; everything else is said on stderr, exit 2.
    let result: Result<ExitCode, Failure> = match cli.command {
        Command::Check(args) => pullgate::cli::check(args)
            .await
            .map_err(|e| Failure::new(e.is_closed_output(), e)),
        Command::Serve(args) => pullgate::cli::serve(args)
            .await
            .map_err(|e| Failure::new(e.is_closed_output(), e)),
        Command::Review(args) => pullgate::cli::review::run(args)
            .await
            .map_err(|e| Failure::new(e.is_closed_output(), e)),
        Command::Audit(args) => pullgate::cli::audit::run(args)
            .await
            .map_err(|e| Failure::new(e.is_closed_output(), e)),
    };
    match result {
        Ok(code) => code,
        Err(Failure::ClosedOutput) => ExitCode::from(141),
        Err(Failure::Error(e)) => {
            pullgate::cli::say(format_args!("{e}"));
            ExitCode::from(2)
        }
    }
}

enum Failure {
    ClosedOutput,
    Error(Box<dyn std::error::Error>),
}

impl Failure {
    fn new(closed_output: bool, e: impl std::error::Error + 'static) -> Self {
        if closed_output {
            Failure::ClosedOutput
        } else {
            Failure::Error(Box::new(e))
        }
    }
}

/// `serve` logs its decisions; `check` and `review` print their own output and log only
/// problems.
fn default_log_level(command: &Command) -> &'static str {
    match command {
        Command::Serve(_) => "info",
        Command::Check(_) | Command::Review(_) | Command::Audit(_) => "warn",
    }
}
