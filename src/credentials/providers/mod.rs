//! The kubelet's credential-provider plugins (`--image-credential-provider-config`,
//! `--image-credential-provider-bin-dir`), run the way the kubelet runs them, so pullgate tries
//! the credentials a node would get from, say, `ecr-credential-provider`.
//!
//! Sources followed (kubernetes/kubernetes `pkg/credentialprovider/plugin/`):
//! - `config.go` reading and validation: `config.rs`, `validate.rs`;
//! - `plugin.go` `RegisterCredentialProviderPlugins` (the bin dir and every executable checked at
//!   start): [`CredentialProviders::load`];
//! - `plugin.go` `pluginProvider.provide` (`isImageAllowed`, the cache, `singleflight`) and
//!   `execPlugin`: `cache.rs`, `exec.rs`;
//! - `plugins.go` `externalCredentialProviderKeyring.Lookup`: every provider's answer added to
//!   one `BasicDockerKeyring`, which is then looked up for the image: [`CredentialProviders::credentials`].
//!
//! As in the kubelet, a plugin that fails (exits non-zero, times out, answers something it would
//! not accept) gives no credentials, and the image is tried with what the others gave; here the
//! failure is also returned, so a review can say why.
//!
//! Providers with `tokenAttributes` (KEP-4412) are sent a token of the workload's
//! ServiceAccount when pullgate may request one ([`CredentialProviders::with_service_account_tokens`],
//! off by default); `account.rs` follows the kubelet's rules for them, and keeps every answer
//! and every run within one ServiceAccount.

mod account;
mod cache;
mod config;
mod duration;
mod exec;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::join_all;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use self::account::{Identity, Plan, Scope, TokenAttrs, TokenCacheType};
use self::cache::{AuthCache, Found};
use self::duration::GoDuration;
use self::exec::{PLUGIN_TIMEOUT, Plugin, Response};
use super::keyring::urls_match_str;
use super::tokens::PodAccount;
use super::{DockerConfig, Keyring, ServiceAccountTokens};
use crate::io::ReadError;
use crate::registry::Credential;

/// Plugin processes one provider runs at once; more asks wait (within their deadline).
const MAX_CONCURRENT_RUNS: usize = 32;

/// Why the credential provider configuration cannot be used. The kubelet does not start with
/// any of these.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("plugin binary directory {} did not exist", dir.display())]
    BinDirMissing { dir: PathBuf },
    #[error("error inspecting binary directory {}: {source}", dir.display())]
    BinDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to access path {}: {source}", path.display())]
    ConfigAccess {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no configuration files found in directory {}", dir.display())]
    NoConfigFiles { dir: PathBuf },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("error decoding config {}: {detail}", file.display())]
    Syntax { file: PathBuf, detail: String },
    #[error("error decoding config {}: {message}", file.display())]
    Kind { file: PathBuf, message: String },
    #[error("duplicate provider name {name:?} found in configuration file(s)")]
    DuplicateName { name: String },
    #[error("failed to validate credential provider config {}: {}", config.display(), errors.join("; "))]
    Invalid {
        config: PathBuf,
        errors: Vec<String>,
    },
    #[error("plugin binary executable {} did not exist", path.display())]
    PluginMissing { path: PathBuf },
    #[error("error inspecting binary executable {}: {reason}", path.display())]
    PluginNotExecutable { path: PathBuf, reason: String },
}

/// One provider that gave nothing for an image, and why. `reason` never holds anything the
/// plugin printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    pub provider: String,
    pub reason: String,
}

impl fmt::Display for ProviderFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "credential provider {}: {}", self.provider, self.reason)
    }
}

/// What the plugins gave for one image.
#[derive(Debug, Clone, Default)]
pub struct Provided {
    /// The credentials the kubelet would try, in its order (`BasicDockerKeyring.Lookup` over
    /// every provider's answer); each `source` is `credential provider <name>`.
    pub credentials: Vec<Credential>,
    /// Providers that match the image but gave nothing.
    pub failures: Vec<ProviderFailure>,
}

/// The configured plugins; `Default` is none.
#[derive(Clone, Default)]
pub struct CredentialProviders {
    providers: Vec<Arc<Provider>>,
    /// Where providers with `tokenAttributes` get their tokens; `None` skips them.
    tokens: Option<ServiceAccountTokens>,
}

impl fmt::Debug for CredentialProviders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| &p.name))
            .finish()
    }
}

impl CredentialProviders {
    /// Reads and validates the configuration (a file, or a directory of them) as the kubelet
    /// does at start, and checks that every plugin is an executable in `bin_dir`.
    pub fn load(config: &Path, bin_dir: &Path) -> Result<Self, ProviderError> {
        if let Err(source) = std::fs::metadata(bin_dir) {
            return Err(if source.kind() == std::io::ErrorKind::NotFound {
                ProviderError::BinDirMissing {
                    dir: bin_dir.to_owned(),
                }
            } else {
                ProviderError::BinDir {
                    dir: bin_dir.to_owned(),
                    source,
                }
            });
        }
        let docs = config::read_config(config)?;
        let specs = validate::validate(docs).map_err(|errors| ProviderError::Invalid {
            config: config.to_owned(),
            errors,
        })?;
        let mut providers = Vec::with_capacity(specs.len());
        for spec in specs {
            let path = bin_dir.join(&spec.name);
            check_executable(&path)?;
            providers.push(Arc::new(Provider {
                token: spec.token_attributes.map(TokenAttrs::from_doc),
                plugin: Plugin {
                    path,
                    api_version: spec.api_version,
                    args: spec.args,
                    env: spec.env,
                },
                name: spec.name,
                match_images: spec.match_images,
                default_cache_duration: spec.default_cache_duration,
                cache: AuthCache::new(),
                runs: Semaphore::new(MAX_CONCURRENT_RUNS),
            }));
        }
        Ok(CredentialProviders {
            providers,
            tokens: None,
        })
    }

    /// Lets providers with `tokenAttributes` be sent a token of the workload's ServiceAccount,
    /// requested through `tokens` (which needs `create` on `serviceaccounts/token`).
    pub fn with_service_account_tokens(mut self, tokens: ServiceAccountTokens) -> Self {
        self.tokens = Some(tokens);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The names of the providers that send their plugin a service-account token.
    pub fn token_providers(&self) -> Vec<&str> {
        self.providers
            .iter()
            .filter(|p| p.token.is_some())
            .map(|p| p.name.as_str())
            .collect()
    }

    /// What the plugins give for `image`, providers asked concurrently but combined in config
    /// order. `image` is what the kubelet passes: the repository as its `ParseImageName` gives it,
    /// without tag or digest (`ImageRef::name()`), e.g.
    /// `123456789012.dkr.ecr.eu-west-1.amazonaws.com/app` or `docker.io/library/nginx`.
    ///
    /// Asks still waiting at `deadline` give a failure; a plugin run started for an ask runs on
    /// (to the earlier of its starter's deadline and the kubelet's one minute) and its answer is
    /// kept for later asks.
    ///
    /// `account` is the workload's ServiceAccount, for providers with `tokenAttributes`; `None`
    /// where there is no pod (`pullgate check`).
    pub async fn credentials(
        &self,
        image: &str,
        account: Option<&PodAccount>,
        deadline: std::time::Instant,
    ) -> Provided {
        if self.providers.is_empty() {
            return Provided::default();
        }
        // Measured from now, so it holds on tokio's clock too, which tests may have moved.
        let deadline =
            Instant::now() + deadline.saturating_duration_since(std::time::Instant::now());
        let tokens = self.tokens.as_ref();
        let answers = join_all(
            self.providers
                .iter()
                .map(|p| p.provide(image, account, tokens, deadline)),
        )
        .await;
        let mut keyring = Keyring::default();
        let mut failures = Vec::new();
        for (provider, answer) in self.providers.iter().zip(answers) {
            match answer {
                Ok(Some(config)) => keyring.add(&config),
                Ok(None) => {}
                Err(reason) => failures.push(ProviderFailure {
                    provider: provider.name.clone(),
                    reason: reason.to_string(),
                }),
            }
        }
        Provided {
            credentials: keyring.lookup(image),
            failures,
        }
    }
}

/// kubelet's `exec.LookPath` of `bin_dir/name` at start: it must exist, not be a directory, and
/// have an execute bit.
fn check_executable(path: &Path) -> Result<(), ProviderError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProviderError::PluginMissing {
                path: path.to_owned(),
            });
        }
        Err(e) => {
            return Err(ProviderError::PluginNotExecutable {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    if meta.is_dir() || !has_execute_bit(&meta) {
        return Err(ProviderError::PluginNotExecutable {
            path: path.to_owned(),
            reason: "permission denied (a directory, or no execute bit)".to_owned(),
        });
    }
    Ok(())
}

#[cfg(unix)]
fn has_execute_bit(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn has_execute_bit(_meta: &std::fs::Metadata) -> bool {
    true
}

/// One configured plugin: the kubelet's `pluginProvider`.
struct Provider {
    name: String,
    match_images: Vec<String>,
    default_cache_duration: GoDuration,
    /// `tokenAttributes`, for a provider whose plugin is sent a service-account token.
    token: Option<TokenAttrs>,
    plugin: Plugin,
    cache: AuthCache,
    runs: Semaphore,
}

impl Provider {
    /// kubelet's `pluginProvider.provide`: `None` for an image outside `matchImages`, or when
    /// the kubelet would not run the plugin for this ServiceAccount.
    async fn provide(
        self: &Arc<Self>,
        image: &str,
        account: Option<&PodAccount>,
        tokens: Option<&ServiceAccountTokens>,
        deadline: Instant,
    ) -> Result<Option<Arc<DockerConfig>>, Arc<str>> {
        // isImageAllowed
        if !self
            .match_images
            .iter()
            .any(|pattern| urls_match_str(pattern, image))
        {
            return Ok(None);
        }
        let identity = match &self.token {
            None => None,
            Some(attrs) => {
                let plan = tokio::time::timeout_at(deadline, account::plan(attrs, account, tokens))
                    .await
                    .map_err(|_| {
                        Arc::<str>::from(
                            "its ServiceAccount or token could not be read before the deadline",
                        )
                    })??;
                match plan {
                    Plan::Skip => return Ok(None),
                    Plan::Run(identity) => identity.map(Arc::new),
                }
            }
        };
        let scope = identity
            .as_ref()
            .map(|i| i.scope.clone())
            .unwrap_or_default();
        let run = match self.cache.find_or_start(image, &scope, || {
            self.start(image, identity.clone(), deadline)
        }) {
            Found::Cached(config) => return Ok(Some(config)),
            Found::Running(run) => run,
        };
        match tokio::time::timeout_at(deadline, run).await {
            Ok(outcome) => outcome.map(Some),
            Err(_) => Err(Arc::from(
                "no answer before the deadline (a run that ends later still keeps its answer for later asks)",
            )),
        }
    }

    /// Starts the one run every ask for `image` (within one ServiceAccount's scope) joins, as a
    /// task of its own so that it ends, is kept and leaves the in-flight map whichever asks
    /// stop waiting.
    fn start(
        self: &Arc<Self>,
        image: &str,
        identity: Option<Arc<Identity>>,
        deadline: Instant,
    ) -> cache::SharedRun {
        let this = Arc::clone(self);
        let image = image.to_owned();
        let deadline = deadline.min(Instant::now() + PLUGIN_TIMEOUT);
        let task = tokio::spawn(async move {
            let scope = identity
                .as_ref()
                .map(|i| i.scope.clone())
                .unwrap_or_default();
            let mut finished = Finish {
                provider: &this,
                image: &image,
                scope: &scope,
                done: false,
            };
            let outcome = this.run(&image, identity.as_deref(), deadline).await;
            let keep = match &outcome {
                Ok((response, config)) => this
                    .cache_duration(response)
                    .map(|ttl| (response.cache_key_type, Arc::clone(config), ttl)),
                Err(reason) => {
                    tracing::warn!(
                        provider = %this.name,
                        image = %image,
                        %reason,
                        "credential provider plugin gave no credentials; as the kubelet, trying the image without them"
                    );
                    None
                }
            };
            this.cache.finish(&image, &scope, keep);
            finished.done = true;
            outcome.map(|(_, config)| config)
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(Arc::<str>::from(format!("the plugin run failed: {e}"))))
        }
        .boxed()
        .shared()
    }

    async fn run(
        &self,
        image: &str,
        identity: Option<&Identity>,
        deadline: Instant,
    ) -> Result<(Response, Arc<DockerConfig>), Arc<str>> {
        let _permit = tokio::time::timeout_at(deadline, self.runs.acquire())
            .await
            .map_err(|_| Arc::<str>::from("no free plugin slot before the deadline"))?
            .expect("the semaphore is never closed");
        let response = self
            .plugin
            .run(image, identity, deadline)
            .await
            .map_err(|e| Arc::<str>::from(e.to_string()))?;
        // The kubelet refuses an answer that hands the token back as the password unless
        // answers are kept per token: kept per ServiceAccount, it would outlive the token.
        if let (Some(identity), Some(attrs)) = (identity, &self.token)
            && attrs.cache_type != TokenCacheType::Token
            && response
                .auth
                .iter()
                .any(|(_, _, password)| password == identity.token.expose())
        {
            return Err(Arc::from(
                "the plugin answered with the service-account token as a password, which the kubelet accepts only with tokenAttributes.cacheType Token",
            ));
        }
        let source = format!("credential provider {}", self.name);
        let entries = response
            .auth
            .iter()
            .map(|(key, username, password)| {
                (
                    key.clone(),
                    Credential::new(username.as_str(), password.as_str(), source.as_str()),
                )
            })
            .collect();
        Ok((
            response,
            Arc::new(DockerConfig::from_entries(source, entries)),
        ))
    }

    /// How long an answer is kept: the response's `cacheDuration`, else `defaultCacheDuration`;
    /// zero (and a negative duration, expired at once in the kubelet) keeps nothing.
    fn cache_duration(&self, response: &Response) -> Option<std::time::Duration> {
        response
            .cache_duration
            .unwrap_or(self.default_cache_duration)
            .positive()
    }
}

/// Ends the run's in-flight entry even if the task panics, so later asks start a new run.
struct Finish<'a> {
    provider: &'a Provider,
    image: &'a str,
    scope: &'a Scope,
    done: bool,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.provider.cache.finish(self.image, self.scope, None);
        }
    }
}
