//! The `pullgate` command line: flags (each with an environment variable) parsed once into
//! typed values, and the `check` command that probes images and prints the verdicts.

use std::{fmt, io::Write, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use futures_util::future::join_all;

use crate::{
    client::{ClientOptions, RegistryClient},
    keyring::{self, Credential, Keyring},
    platform::Platform,
    probe::{self, ProbeOptions, Report},
    reference::ImageRef,
    verdict::Verdict,
};

/// Docker config files are small; a larger file is a mistake, not a config.
const MAX_DOCKER_CONFIG: u64 = 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "pullgate",
    version,
    about = "Refuses workloads whose images cannot really be pulled"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Probe image references the way the kubelet would pull them; exit 0 only when every
    /// image is pullable.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON instead of a table.
    #[arg(long, env = "PULLGATE_JSON")]
    pub json: bool,
    /// Platform to check; repeat for several (each must be pullable).
    #[arg(
        long = "platform",
        value_name = "OS/ARCH[/VARIANT]",
        default_value = "linux/amd64"
    )]
    pub platforms: Vec<Platform>,
    /// Docker config.json / .dockerconfigjson with registry credentials, matched per image like
    /// the kubelet does; repeatable.
    #[arg(
        long = "docker-config",
        value_name = "FILE",
        env = "PULLGATE_DOCKER_CONFIG",
        value_delimiter = ','
    )]
    pub docker_configs: Vec<PathBuf>,
    /// Credentials tried first for every image.
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "PULLGATE_CREDS",
        hide_env_values = true
    )]
    pub creds: Option<UserPass>,
    /// Extra CA certificates (PEM) to trust for registries.
    #[arg(long = "ca-file", value_name = "PEM", env = "PULLGATE_CA_FILE")]
    pub ca_files: Vec<PathBuf>,
    /// Do not verify registry certificates.
    #[arg(long, env = "PULLGATE_INSECURE_SKIP_TLS_VERIFY")]
    pub insecure_skip_tls_verify: bool,
    /// Deadline for each image's probe (e.g. 10s, 1m).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = humantime::parse_duration, env = "PULLGATE_TIMEOUT")]
    pub timeout: Duration,
    /// Image references, e.g. nginx:1.27 or registry.example.com/team/app@sha256:…
    #[arg(required = true, value_name = "REF")]
    pub references: Vec<String>,
}

/// `user:password` from the command line; never printed.
#[derive(Clone)]
pub struct UserPass {
    username: String,
    password: String,
}

impl fmt::Debug for UserPass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserPass({}:<redacted>)", self.username)
    }
}

impl std::str::FromStr for UserPass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(UserPass {
                username: u.to_owned(),
                password: p.to_owned(),
            }),
            _ => Err("expected USER:PASS".to_owned()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read docker config {path}: {reason}")]
    DockerConfigRead { path: String, reason: String },
    #[error("docker config {path} is larger than {MAX_DOCKER_CONFIG} bytes")]
    DockerConfigTooLarge { path: String },
    #[error(transparent)]
    DockerConfig(#[from] keyring::KeyringError),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Loads docker config files into one keyring, as the node's config would be.
pub fn load_keyring(paths: &[PathBuf]) -> Result<Keyring, CliError> {
    let mut ring = Keyring::default();
    for path in paths {
        let shown = path.display().to_string();
        let read_err = |e: std::io::Error| CliError::DockerConfigRead {
            path: shown.clone(),
            reason: e.to_string(),
        };
        if std::fs::metadata(path).map_err(read_err)?.len() > MAX_DOCKER_CONFIG {
            return Err(CliError::DockerConfigTooLarge { path: shown });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let config = keyring::parse_docker_config(&bytes, &format!("--docker-config {shown}"))?;
        ring.add(&config);
    }
    Ok(ring)
}

/// Runs `pullgate check`; the exit code is 0 only when every image is pullable.
pub async fn check(args: CheckArgs) -> Result<ExitCode, CliError> {
    let mut extra_roots = Vec::new();
    for path in &args.ca_files {
        extra_roots.extend(ClientOptions::load_ca_file(path)?);
    }
    let client = RegistryClient::new(ClientOptions {
        extra_roots,
        insecure_skip_tls_verify: args.insecure_skip_tls_verify,
        ..ClientOptions::default()
    })?;
    let ring = load_keyring(&args.docker_configs)?;
    let explicit = args
        .creds
        .as_ref()
        .map(|c| Credential::new(c.username.clone(), c.password.clone(), "--creds"));
    let options = ProbeOptions {
        platforms: args.platforms.clone(),
        timeout: args.timeout,
    };
    let reports = join_all(args.references.iter().map(|input| {
        let (client, ring, explicit, options) = (&client, &ring, &explicit, &options);
        async move {
            match ImageRef::parse(input) {
                Err(e) => probe::invalid_reference(input, &e),
                Ok(image) => {
                    let mut creds: Vec<Credential> = explicit.iter().cloned().collect();
                    creds.extend(ring.lookup(&image.name()));
                    probe::probe(client, &image, &creds, options).await
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
pub fn write_table(out: &mut impl Write, reports: &[Report]) -> std::io::Result<()> {
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
            .map(|p| p.platform.to_string())
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
