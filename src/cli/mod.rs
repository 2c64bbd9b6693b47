//! The `pullgate` command line: flags (each with an environment variable) parsed once into
//! typed values, one file a command: [`check`], [`serve`] and [`review`], with what they
//! share to reach registries in [`registry`].

mod check;
mod registry;
pub mod review;
mod serve;

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

pub use check::{CheckArgs, check};
pub use registry::{RegistryArgs, SetupError, UserPass};
pub use serve::{ServeArgs, serve, serve_config};

use crate::server::{ServerError, TlsError};

#[derive(Debug, Parser)]
#[command(
    name = "pullgate",
    version,
    about = "Refuses workloads whose images cannot really be pulled"
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
    Check(CheckArgs),
    /// Run the admission webhook. With no flags: the embedded default policy and a generated
    /// development certificate whose CA is written out and printed.
    Serve(Box<ServeArgs>),
    /// Review manifests (or AdmissionReviews) offline, as the webhook would decide them; exit 0
    /// when every workload is admitted, 1 when any is refused.
    Review(review::ReviewArgs),
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
}
