//! How the commands reach registries, shared by `check`, `serve` and `review`: CA files, TLS
//! verification, node-level docker configs, the nodes' registry hosts (mirrors), and the
//! errors of setting that up.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::admission::{Reviewer, ReviewerConfig};
use crate::credentials::{
    CredentialProviders, Keyring, KeyringError, ProviderError, SecretStore, docker_config,
};
use crate::io::{ReadError, read_file};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError};
use crate::probe::{CacheOptions, ManifestStore, PullBudgets};
use crate::registry::{ClientError, ClientOptions, HostsError, NodeHosts, RegistryClient};
use crate::reload::Reloading;

/// Why the registry side of a command could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    DockerConfig(#[from] KeyringError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the nodes' registry hosts: {0}")]
    Hosts(#[from] HostsError),
    #[error("credential providers: {0}")]
    Providers(#[from] ProviderError),
    #[error(
        "--image-credential-provider-config and --image-credential-provider-bin-dir go together, as on the kubelet"
    )]
    ProvidersHalfSet,
    #[error("no Kubernetes API (a kubeconfig or the in-cluster environment is needed): {reason}")]
    NoApi { reason: String },
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(
        "--provider-service-account-tokens needs the Kubernetes API (a kubeconfig or the in-cluster environment), to request the tokens: {reason}"
    )]
    TokensWithoutApi { reason: String },
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
    /// Extra CA certificates (PEM) to trust for registries; repeatable.
    #[arg(
        long = "ca-file",
        value_name = "PEM",
        env = "PULLGATE_CA_FILE",
        value_delimiter = ','
    )]
    pub ca_files: Vec<PathBuf>,
    /// Do not verify registry certificates.
    #[arg(long, env = "PULLGATE_INSECURE_SKIP_TLS_VERIFY")]
    pub insecure_skip_tls_verify: bool,
    /// The nodes' containerd registry hosts directory (`config_path`, e.g.
    /// /etc/containerd/certs.d): images are probed through the mirrors and with the settings
    /// its `hosts.toml` files give, in containerd's order and with its fallback.
    #[arg(
        long = "hosts-dir",
        value_name = "DIR",
        env = "PULLGATE_HOSTS_DIR",
        conflicts_with = "registries_conf"
    )]
    pub hosts_dir: Option<PathBuf>,
    /// The nodes' containers-registries.conf (CRI-O, e.g. /etc/containers/registries.conf):
    /// mirrors, prefix rewrites, `blocked` and `insecure` as CRI-O applies them, and
    /// containers/image's platform rules.
    #[arg(
        long = "registries-conf",
        value_name = "FILE",
        env = "PULLGATE_REGISTRIES_CONF"
    )]
    pub registries_conf: Option<PathBuf>,
    /// The kubelet's CredentialProviderConfig (its --image-credential-provider-config): node
    /// credentials from plugins (ecr-credential-provider, auth-provider-gcp,
    /// acr-credential-provider), run as the kubelet runs them.
    #[arg(
        long = "image-credential-provider-config",
        value_name = "FILE",
        env = "PULLGATE_IMAGE_CREDENTIAL_PROVIDER_CONFIG"
    )]
    pub credential_provider_config: Option<PathBuf>,
    /// The directory of the credential-provider plugin executables (the kubelet's
    /// --image-credential-provider-bin-dir).
    #[arg(
        long = "image-credential-provider-bin-dir",
        value_name = "DIR",
        env = "PULLGATE_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR"
    )]
    pub credential_provider_bin_dir: Option<PathBuf>,
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

impl RegistryArgs {
    /// The reviewer of a one-shot command (`review`, `audit`): these registry settings, the
    /// default caches, `secrets` when there is an API server to read pull secrets from.
    pub(crate) fn reviewer(
        &self,
        policy: Arc<Reloading<Policy, PolicyError>>,
        secrets: Option<SecretStore>,
        probe_timeout: Duration,
    ) -> Result<Reviewer, SetupError> {
        let hosts = self.node_hosts()?;
        Ok(Reviewer::new(ReviewerConfig {
            registry: RegistryClient::new(self.client_options()?)?,
            secrets,
            node: Arc::new(load_keyring(&self.docker_configs)?),
            cache: CacheOptions::default(),
            policy,
            metrics: Arc::new(Metrics::new()),
            probe_timeout,
            store: ManifestStore::default(),
            budgets: PullBudgets::default(),
            rules: hosts.platform_rules(),
            hosts: Arc::new(hosts),
            providers: self.credential_providers()?,
        }))
    }

    /// The kubelet's credential-provider plugins, loaded and checked as the kubelet does at
    /// start-up; none when neither flag is given.
    pub fn credential_providers(&self) -> Result<CredentialProviders, SetupError> {
        match (
            &self.credential_provider_config,
            &self.credential_provider_bin_dir,
        ) {
            (Some(config), Some(bin_dir)) => Ok(CredentialProviders::load(config, bin_dir)?),
            (None, None) => Ok(CredentialProviders::default()),
            _ => Err(SetupError::ProvidersHalfSet),
        }
    }

    /// The nodes' host configuration, read once; nothing when neither flag is given.
    pub fn node_hosts(&self) -> Result<NodeHosts, SetupError> {
        let hosts = match (&self.hosts_dir, &self.registries_conf) {
            (Some(dir), _) => NodeHosts::load_hosts_dir(dir)?,
            (None, Some(file)) => NodeHosts::load_registries_conf(file)?,
            (None, None) => NodeHosts::default(),
        };
        Ok(hosts)
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
