//! How the commands reach registries, shared by `check`, `serve` and `review`: CA files, TLS
//! verification, node-level docker configs, and the errors of setting that up.

use std::fmt;
use std::path::PathBuf;

use clap::Args;

use crate::credentials::{Keyring, KeyringError, docker_config};
use crate::io::{ReadError, read_file};
use crate::registry::{ClientError, ClientOptions};

/// Why the registry side of a command could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    DockerConfig(#[from] KeyringError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Docker config files are small; a larger file is a mistake, not a config.
const MAX_DOCKER_CONFIG: u64 = 1024 * 1024;

/// How registries are reached and which node-level credentials apply.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Docker config.json / .dockerconfigjson with registry credentials, matched per image like
    /// the kubelet does; repeatable.
    #[arg(
        long = "docker-config",
        value_name = "FILE",
        env = "PULLGATE_DOCKER_CONFIG",
        value_delimiter = ','
    )]
    pub docker_configs: Vec<PathBuf>,
    /// Extra CA certificates (PEM) to trust for registries.
    #[arg(long = "ca-file", value_name = "PEM", env = "PULLGATE_CA_FILE")]
    pub ca_files: Vec<PathBuf>,
    /// Do not verify registry certificates.
    #[arg(long, env = "PULLGATE_INSECURE_SKIP_TLS_VERIFY")]
    pub insecure_skip_tls_verify: bool,
}

impl RegistryArgs {
    /// Client options with the extra CAs loaded.
    pub fn client_options(&self) -> Result<ClientOptions, SetupError> {
        let mut extra_roots = Vec::new();
        for path in &self.ca_files {
            extra_roots.extend(ClientOptions::load_ca_file(path)?);
        }
        Ok(ClientOptions {
            extra_roots,
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
            ..ClientOptions::default()
        })
    }
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

impl UserPass {
    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn password(&self) -> &str {
        &self.password
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

/// Loads docker config files into one keyring, as the node's config would be.
pub(super) fn load_keyring(paths: &[PathBuf]) -> Result<Keyring, SetupError> {
    let mut ring = Keyring::default();
    for path in paths {
        let bytes = read_file(path, MAX_DOCKER_CONFIG, "docker config")?;
        let source = format!("--docker-config {}", path.display());
        ring.add(&docker_config::parse_docker_config(&bytes, &source)?);
    }
    Ok(ring)
}
