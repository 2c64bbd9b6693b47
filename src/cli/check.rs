//! `pullgate check`: probes image references the way the kubelet would pull them and prints
//! the verdicts; exit 0 only when every image is pullable.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures_util::future::join_all;

use super::CliError;
use super::registry::{RegistryArgs, SetupError, UserPass, load_keyring};
use crate::oci::platform::Platform;
use crate::oci::reference::ImageRef;
use crate::policy::Policy;
use crate::probe::{self, ProbeOptions, Report, Verdict};
use crate::registry::{Credential, RegistryClient};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON instead of a table.
    #[arg(long, env = "PULLGATE_JSON")]
    pub json: bool,
    /// Platform to check; repeat or comma-separate for several (each must be pullable).
    #[arg(
        long = "platform",
        value_name = "OS/ARCH[/VARIANT]",
        default_value = "linux/amd64",
        value_delimiter = ',',
        env = "PULLGATE_PLATFORM"
    )]
    pub platforms: Vec<Platform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Credentials tried first for every image.
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "PULLGATE_CREDS",
        hide_env_values = true
    )]
    pub creds: Option<UserPass>,
    /// Deadline for each image's probe (e.g. 10s, 1m).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = humantime::parse_duration, env = "PULLGATE_TIMEOUT")]
    pub timeout: Duration,
    /// Image references, e.g. nginx:1.27 or registry.example.com/team/app@sha256:…
    #[arg(required = true, value_name = "REF")]
    pub references: Vec<String>,
}

/// Runs `pullgate check`; the exit code is 0 only when every image is pullable.
pub async fn check(args: CheckArgs) -> Result<ExitCode, CliError> {
    let client = RegistryClient::new(args.registry.client_options()?).map_err(SetupError::from)?;
    let ring = load_keyring(&args.registry.docker_configs)?;
    let providers = args.registry.credential_providers()?;
    let explicit = args
        .creds
        .as_ref()
        .map(|c| Credential::new(c.username(), c.password(), "--creds"));
    let hosts = args.registry.node_hosts()?;
    let options = ProbeOptions {
        platforms: args.platforms.clone(),
        rules: hosts.platform_rules(),
        hosts: std::sync::Arc::new(hosts),
        timeout: args.timeout,
        ..ProbeOptions::default()
    };
    let reports = join_all(args.references.iter().map(|input| {
        let (client, ring, explicit, options) = (&client, &ring, &explicit, &options);
        let providers = &providers;
        async move {
            match ImageRef::parse(input) {
                Err(e) => probe::invalid_reference(input, &e),
                Ok(image) => {
                    let mut creds: Vec<Credential> = explicit.iter().cloned().collect();
                    creds.extend(ring.lookup(&image.name()));
                    // The node's plugins after its docker configs, as the kubelet orders them.
                    let deadline = std::time::Instant::now() + options.timeout;
                    let plugins = providers.credentials(&image.name(), None, deadline).await;
                    creds.extend(plugins.credentials);
                    // Docker Hub counts the GETs as pulls: the report says how many it spent
                    // and what the registry says is left.
                    let options = ProbeOptions {
                        metered: Policy::default().metered(&image),
                        ..options.clone()
                    };
                    let mut report = probe::probe(client, &image, &creds, &options).await;
                    for failure in &plugins.failures {
                        super::say(format_args!(
                            "credential provider {} failed for {}: {}",
                            failure.provider, report.reference, failure.reason
                        ));
                    }
                    // The node may still get the credential the plugin did not give here.
                    if let Some(failure) = plugins.failures.first()
                        && report.verdict == Verdict::Unauthorized
                    {
                        report.verdict = Verdict::Unavailable;
                        report.reason = format!(
                            "{} (not conclusive: credential provider {} failed)",
                            report.reason, failure.provider
                        );
                    }
                    report
                }
            }
        }
    }))
    .await;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &reports).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &reports)?;
    }
    let all_pullable = reports.iter().all(|r| r.verdict == Verdict::Pullable);
    Ok(if all_pullable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The human table: one line per image and platform, then the failing blob if any.
pub(super) fn write_table(out: &mut impl Write, reports: &[Report]) -> std::io::Result<()> {
    let width = reports
        .iter()
        .map(|r| r.reference.len())
        .max()
        .unwrap_or(9)
        .max(9);
    writeln!(
        out,
        "{:<width$}  {:<12}  {:<14}  {:>8}  {:>8}  REASON",
        "REFERENCE", "VERDICT", "PLATFORM", "REQUESTS", "TIME"
    )?;
    for r in reports {
        let platforms = r
            .platforms
            .iter()
            .map(|p| p.chosen().unwrap_or_else(|| p.platform.to_string()))
            .collect::<Vec<_>>()
            .join(",");
        writeln!(
            out,
            "{:<width$}  {:<12}  {:<14}  {:>8}  {:>6}ms  {}",
            r.reference,
            r.verdict.as_str(),
            if platforms.is_empty() {
                "-".to_owned()
            } else {
                platforms
            },
            r.requests,
            r.elapsed_ms,
            r.reason
        )?;
    }
    Ok(())
}
