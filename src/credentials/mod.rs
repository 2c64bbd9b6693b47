//! Credentials the way the kubelet finds them: docker configs, its keyring matching, pull
//! secrets read through the Kubernetes API, and its credential-provider plugins.

pub mod docker_config;
mod go_glob;
mod go_url;
mod keyring;
pub mod providers;
mod pull_secrets;
mod tokens;

#[cfg(test)]
mod tests;

pub use docker_config::{DockerConfig, KeyringError};
pub use keyring::{Keyring, lookup_all};
pub use providers::{CredentialProviders, Provided, ProviderError, ProviderFailure};
pub use pull_secrets::{PodCredentials, PullSecretRefs, SecretOptions, SecretStore};
pub use tokens::{PodAccount, ServiceAccountTokens};
