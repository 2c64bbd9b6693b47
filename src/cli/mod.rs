//! The `pullgate` command line: flags (each with an environment variable) parsed once into
//! typed values, one file a command: [`check`], [`serve`] and [`review`], with what they
//! share to reach registries in [`registry`].

pub mod audit;
mod check;
mod registry;
pub mod review;
mod serve;

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

pub use check::{CheckArgs, check};
pub use registry::{RegistryArgs, SetupError, UserPass};
pub use serve::{ServeArgs, serve};

use crate::server::{ServerError, TlsError};

#[derive(Debug, Parser)]
#[command(
    name = "pullgate",
    version,
    about = "Refuses workloads whose images cannot really be pulled",
    after_help = ENVIRONMENT_HELP,
    after_long_help = ENVIRONMENT_HELP
)]
pub struct Cli {
    /// Log format on stderr: text for people, json (one object a line) for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t = LogFormat::Text,
        env = "PULLGATE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Said under every `--help`: how the environment is read.
pub const ENVIRONMENT_HELP: &str = "\
Environment:
  Every flag can be given as the environment variable its help shows ([env: PULLGATE_...]);
  a flag given on the command line wins. Flags that take several values (repeat the flag)
  take them comma-separated in their variable, e.g. PULLGATE_DOCKER_CONFIG=/a.json,/b.json.
  PULLGATE_LOG  log filter, tracing's EnvFilter syntax (e.g. info,pullgate=debug);
                default info for serve, warn for check and review.";

/// One line on standard error, after `pullgate: `. A closed standard error is ignored: a tool
/// whose reader went away goes quiet instead of failing.
pub fn say(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "pullgate: {message}");
}

/// An error writing output because its reader went away (`| head`, `| true`): Unix tools stop
/// quietly then, with the status of a SIGPIPE (141).
pub fn is_closed_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Probe image references the way the kubelet would pull them; exit 0 only when every
    /// image is pullable.
    #[command(after_help = ENVIRONMENT_HELP)]
    Check(CheckArgs),
    /// Run the admission webhook. With no flags: the embedded default policy and a generated
    /// development certificate whose CA is written out and printed.
    #[command(after_help = ENVIRONMENT_HELP)]
    Serve(Box<ServeArgs>),
    /// Review manifests (or AdmissionReviews) offline, as the webhook would decide them; exit 0
    /// when every workload is admitted, 1 when any is refused, 2 on an error (no workload
    /// found included, unless --allow-empty).
    #[command(after_help = ENVIRONMENT_HELP)]
    Review(review::ReviewArgs),
    /// Audit what already runs: every workload's images probed as the webhook would now;
    /// exit 0 when it would admit them all, 1 when it would refuse any, 2 on an error.
    #[command(after_help = ENVIRONMENT_HELP)]
    Audit(audit::AuditArgs),
}

/// Why `check` or `serve` stopped.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot write the development CA to {}: {source}", path.display())]
    DevCa {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl CliError {
    /// The output's reader went away: stop quietly.
    pub fn is_closed_output(&self) -> bool {
        matches!(self, CliError::Output(e) if is_closed_pipe(e))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// What the help promises: every flag of every command has an environment variable, and
    /// every flag taking several values takes them comma-separated there.
    #[test]
    fn every_flag_has_an_environment_variable_and_lists_are_comma_separated() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        let commands = std::iter::once(&cli).chain(cli.get_subcommands());
        for command in commands {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_env().is_none() {
                    missing.push(format!("{} --{id}", command.get_name()));
                }
                let many = matches!(arg.get_action(), clap::ArgAction::Append)
                    || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
                if many && arg.get_value_delimiter() != Some(',') {
                    missing.push(format!("{} --{id}: no comma delimiter", command.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:?}");
        let mut cli = cli;
        for name in ["check", "serve", "review", "audit"] {
            let help = cli
                .find_subcommand_mut(name)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(help.contains("PULLGATE_LOG"), "{name}: {help}");
            assert!(help.contains("comma-separated"), "{name}: {help}");
        }
        let help = cli.render_long_help().to_string();
        assert!(help.contains("PULLGATE_LOG"), "{help}");
    }
}
