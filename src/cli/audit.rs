//! `pullgate audit`: one pass over what already runs in the cluster of the current kubeconfig
//! (or the in-cluster environment, for a CronJob), decided as the webhook would decide it now.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::CliError;
use super::registry::{RegistryArgs, SetupError};
use crate::audit::{self, Scope};
use crate::credentials::{SecretOptions, SecretStore};
use crate::policy::Policy;
use crate::reload::Reloading;

/// How the result is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum AuditOutput {
    /// Images that are not pullable, then a summary line.
    #[default]
    Table,
    /// Every image of every workload.
    Json,
    Yaml,
}

/// Flags of `pullgate audit`; every one has an environment variable.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Namespaces to audit; repeatable or comma-separated. Without it, all namespaces.
    #[arg(
        short = 'n',
        long = "namespace",
        value_name = "NAMESPACE",
        value_delimiter = ',',
        env = "PULLGATE_AUDIT_NAMESPACES",
        conflicts_with = "all_namespaces"
    )]
    pub namespaces: Vec<String>,
    /// Audit every namespace (the default when no --namespace is given).
    #[arg(short = 'A', long, env = "PULLGATE_AUDIT_ALL_NAMESPACES")]
    pub all_namespaces: bool,
    /// Only workloads (and bare Pods) with these labels, as `kubectl get -l`.
    #[arg(
        short = 'l',
        long,
        value_name = "SELECTOR",
        env = "PULLGATE_AUDIT_SELECTOR"
    )]
    pub selector: Option<String>,
    /// Objects a list page holds at most, as `kubectl get --chunk-size`.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..), env = "PULLGATE_AUDIT_CHUNK_SIZE")]
    pub chunk_size: u32,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = AuditOutput::Table, env = "PULLGATE_AUDIT_OUTPUT")]
    pub output: AuditOutput,
    /// Policy file (YAML); its namespace and image exemptions apply. Without it, the
    /// embedded default policy.
    #[arg(long, value_name = "FILE", env = "PULLGATE_POLICY")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Time each workload's images get to be probed.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration, env = "PULLGATE_TIMEOUT")]
    pub timeout: Duration,
}

/// Runs `pullgate audit`: exit 0 when the webhook would admit every workload now, 1 when it
/// would refuse any, 2 on an error.
pub async fn run(args: AuditArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(path) => Policy::load(path).map_err(SetupError::from)?,
        None => Policy::default(),
    };
    let client = kube::Client::try_default()
        .await
        .map_err(|e| SetupError::NoApi {
            reason: e.to_string(),
        })?;
    let policy = Arc::new(Reloading::fixed("policy", policy));
    let secrets = SecretStore::new(client.clone(), SecretOptions::default());
    let reviewer = args
        .registry
        .reviewer(policy.clone(), Some(secrets), args.timeout)?;
    let scope = Scope {
        namespaces: args.namespaces,
        selector: args.selector,
        page_size: args.chunk_size,
    };
    let terminal = std::io::stderr().is_terminal();
    let progress = move |done: usize, total: usize| {
        if terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{done} of {total} images probed");
            if done == total {
                let _ = writeln!(err);
            }
        }
    };
    let pass = audit::pass(
        &client,
        &reviewer,
        &policy.current(),
        &scope,
        args.timeout,
        &progress,
    )
    .await
    .map_err(SetupError::from)?;
    let pass = audit::Pass {
        peak_rss_bytes: audit::peak_rss_bytes(),
        ..pass
    };
    let mut out = std::io::stdout().lock();
    match args.output {
        AuditOutput::Table => audit::write_table(&mut out, &pass)?,
        AuditOutput::Json => audit::write_json(&mut out, &pass)?,
        AuditOutput::Yaml => audit::write_yaml(&mut out, &pass)?,
    }
    out.flush()?;
    Ok(if pass.denied == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
