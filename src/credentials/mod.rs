//! Credentials the way the kubelet finds them: docker configs, its keyring matching, and pull
//! secrets read through the Kubernetes API.

pub mod docker_config;
mod go_glob;
mod go_url;
mod keyring;
mod pull_secrets;

#[cfg(test)]
mod tests;

pub use docker_config::{DockerConfig, KeyringError};
pub use keyring::{Keyring, lookup_all};
pub use pull_secrets::{PodCredentials, PullSecretRefs, SecretOptions, SecretStore};
